"""`nasscam prepare` on the real MoNuSAC 2020 images + lossy JPEG colour masks kept beside the repository
(``../shared/real_tissue``, or the folder in ``NASSCAM_REAL_TISSUE``); skipped, saying so, where it is absent: the
set is CC BY-NC-SA and never part of the project."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_nasscam.data import MaskFolderSpec, parse_palette, prepare_dataset
from monai_nasscam.data.palette import PALETTE_PRESETS
from tests.utils import REPO

REAL = Path(os.environ.get("NASSCAM_REAL_TISSUE") or REPO / ".." / "shared" / "real_tissue")

pytestmark = pytest.mark.skipif(
    not (REAL / "images").is_dir() or not (REAL / "masks").is_dir(),
    reason=f"no real tissue set at {REAL.resolve()} (set NASSCAM_REAL_TISSUE to its folder)",
)


def test_real_tissue_prepares_into_a_patient_split_that_agrees_with_a_nearest_colour_reading(tmp_path):
    from skimage.measure import label as components

    out = tmp_path / "prep"
    spec = MaskFolderSpec("colour", palette=parse_palette("monusac"))
    manifest = prepare_dataset(REAL, out, masks=spec, stain="none", workers=0, progress=False, mpp=0.25)
    data = json.loads((out / "datalist.json").read_text())
    names = sorted(p.stem for p in (REAL / "images").iterdir() if not p.name.startswith("."))
    assert sorted(e["name"] for s in ("training", "validation", "test") for e in data[s]) == names
    assert manifest["skipped"] == [] and manifest["counts"]["total"]["images"] == len(names)
    patients = manifest["patients"]
    assert all(patients.values()) and sum(map(len, patients.values())) == len(set().union(*patients.values()))
    palette = np.asarray(list(PALETTE_PRESETS["monusac"].values()), dtype=np.int32)
    for entry in (e for s in ("training", "validation", "test") for e in data[s]):
        assert entry["semantic_only"] is True
        mask = np.asarray(Image.open(REAL / "masks" / f"{entry['name']}.jpg").convert("RGB")).astype(np.int32)
        squared = sum((mask[..., c, None] - palette[:, c]) ** 2 for c in range(3))  # (H, W, colours)
        nearest, far = squared.argmin(-1), squared.min(-1) > spec.tolerance**2
        nearest[far] = 0
        regions = components(nearest, background=0, connectivity=2)
        specks = (np.bincount(regions.ravel()) < spec.min_size)[regions] & (regions > 0)
        written = np.asarray(Image.open(out / entry["label"]))
        ambiguous = np.asarray(Image.open(out / entry["ambiguous"])) > 0 if "ambiguous" in entry else np.zeros_like(far)
        assert np.array_equal(ambiguous, far), entry["name"]
        assert np.array_equal(written[~specks], nearest[~specks]), entry["name"]
