"""Ambiguous regions (MoNuSAC's test release) and entries with and without optional datalist keys.

A prepared dataset in which some entries have an ``ambiguous`` mask and others not must train, search and evaluate
(it used to fail in batch collation with ``KeyError: 'ambiguous'``), and an ambiguous pixel must change neither the
loss nor the score. Unit parts use hand-made 40 x 40 PNGs; the workflow parts share one tiny synthetic set.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.data import DataLoader, list_data_collate
from PIL import Image

from monai_nasscam.data import (
    ClassBalancedCropDataset,
    EnsureAmbiguousd,
    ExcludeAmbiguousd,
    train_transforms,
    val_transforms,
)
from monai_nasscam.data.chains import AUGMENTATION_DEFAULTS
from monai_nasscam.losses import ExpLogLoss
from tests.utils import REPO

CONFIGS = REPO / "bundle" / "configs"
META = str(CONFIGS / "metadata.json")
NO_AUG = {k: 0.0 for k in AUGMENTATION_DEFAULTS}
TINY = {"roi_size": [32, 32], "features": [4, 4, 8, 8, 16], "num_workers": 0, "progress": False, "sw_batch_size": 16}


# ------------------------------------------------------------------------------------------------ hand-made tiles
def _tile(root: Path, name: str, ambiguous: np.ndarray | None, extra: dict | None = None) -> dict:
    """A 40 x 40 tile: class 1 in rows 0-9 (under the ambiguous band when there is one), class 2 in rows 20-29."""
    rng = np.random.default_rng(len(name))
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    label = np.zeros((40, 40), np.uint8)
    label[0:10, 5:15] = 1
    label[20:30, 5:15] = 2
    label[20:30, 25:35] = 3
    label[32:38, 25:35] = 4
    instance = np.zeros((40, 40), np.int32)
    for k, c in enumerate((1, 2, 3, 4), start=1):
        instance[label == c] = k
    for sub in ("images", "labels", "instances", "ambiguous"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    Image.fromarray(label).save(root / "labels" / f"{name}.png")
    tifffile.imwrite(root / "instances" / f"{name}.tif", instance)
    entry = {"image": str(root / "images" / f"{name}.png"), "label": str(root / "labels" / f"{name}.png"),
             "instance": str(root / "instances" / f"{name}.tif"), "name": name, "patient": "P1"}
    if ambiguous is not None:
        Image.fromarray(ambiguous).save(root / "ambiguous" / f"{name}.png")
        entry["ambiguous"] = str(root / "ambiguous" / f"{name}.png")
    entry.update(extra or {})
    return entry


def _band() -> np.ndarray:
    amb = np.zeros((40, 40), np.uint8)
    amb[0:10, :] = 1  # rows 0-9: over all of class 1 except nothing else
    return amb


@pytest.fixture
def mixed_entries(tmp_path) -> list[dict]:
    """Entries with and without ``ambiguous``, one with a null one, one without ``patient``, one with an extra key."""
    with_mask = _tile(tmp_path, "a", _band())
    without = _tile(tmp_path, "b", None)
    null_mask = _tile(tmp_path, "c", None, {"ambiguous": None, "notes": "re-scanned"})
    no_patient = _tile(tmp_path, "d", _band())
    del no_patient["patient"]
    return [with_mask, without, null_mask, no_patient]


def test_training_samples_collate_and_mark_ambiguous_pixels(mixed_entries):
    chain = train_transforms(roi_size=(40, 40), **NO_AUG)  # the crop is the whole tile: known pixels
    samples = [chain(dict(e)) for e in mixed_entries]
    for entry, s in zip(mixed_entries, samples):
        assert sorted(s) == ["ambiguous", "class_map", "crop_class", "image", "label"]
        assert s["ambiguous"].shape == (1, 40, 40) and s["ambiguous"].dtype == torch.uint8
        expected = torch.as_tensor(_band() if entry.get("ambiguous") else np.zeros((40, 40), np.uint8))
        assert torch.equal(s["ambiguous"][0].as_tensor(), expected)
        # every channel of the target is -1 exactly on the ambiguous pixels, the annotation elsewhere
        ignored = s["label"] == -1
        assert torch.equal(ignored.any(0), expected.bool()) and torch.equal(ignored.all(0), expected.bool())
        assert s["label"][1, 20:30, 5:15].eq(1).all() and s["class_map"][0, 0:10, 5:15].eq(1).all()
    batch = list_data_collate(samples)  # KeyError: 'ambiguous' before
    assert batch["label"].shape == (4, 4, 40, 40) and batch["ambiguous"].shape == (4, 1, 40, 40)
    assert batch["ambiguous"].sum().item() == 2 * 400
    # the loss of such a batch is the loss without the ambiguous pixels, whatever is predicted there
    logits = torch.randn(4, 4, 40, 40, generator=torch.Generator().manual_seed(0))
    loss = ExpLogLoss(sigmoid=True, batch=True)
    value = loss(logits, batch["label"].as_tensor())
    changed = logits.clone()
    changed[[0, 3], :, 0:10] = -changed[[0, 3], :, 0:10] + 5.0  # the ambiguous band of tiles a and d
    assert loss(changed, batch["label"].as_tensor()).item() == pytest.approx(value.item(), rel=1e-6)
    clean = torch.where(batch["label"] == -1, torch.zeros_like(batch["label"]), batch["label"]).as_tensor()
    keep = (batch["ambiguous"] == 0).as_tensor()
    assert loss(logits, clean, mask=keep).item() == pytest.approx(value.item(), rel=1e-6)
    assert loss(logits, clean).item() != pytest.approx(value.item(), rel=1e-3)  # the pixels did count before


def test_class_balanced_loader_over_mixed_entries(mixed_entries):
    ds = ClassBalancedCropDataset(mixed_entries, train_transforms(roi_size=(16, 16)), mode="pixel",
                                  roi_size=(16, 16), num_groups=6, seed=0)
    # class 1 lies only under the ambiguous band of tiles a and d: only tiles b and c (100 pixels each) are drawn
    images, counts = ds._pools[0]
    assert images.tolist() == [1, 2] and counts.tolist() == [100.0, 100.0]
    loader = DataLoader(ds, batch_size=3, num_workers=0)
    n = 0
    for batch in loader:
        assert batch["label"].shape == (12, 4, 16, 16)
        assert torch.equal((batch["label"] == -1).any(1, keepdim=True), batch["ambiguous"].bool())
        n += 1
    assert n == 2


def test_validation_chain_masks_and_exclusion(mixed_entries, tmp_path):
    chain = val_transforms(load_instance=True)
    a, b, c = (chain(dict(e)) for e in mixed_entries[:3])
    assert torch.equal(a["ambiguous"][0].as_tensor(), torch.as_tensor(_band()))
    assert b["ambiguous"].sum() == 0 and c["ambiguous"].sum() == 0 and b["ambiguous"].dtype == torch.uint8
    assert a["label"][0, 0:10, 5:15].eq(1).all()  # the validation label stays as annotated
    # scoring: prediction and label zeroed on the ambiguous pixels, or copied under new names
    pred = torch.ones(4, 40, 40)
    out = ExcludeAmbiguousd(["pred", "label"], names=["p", "l"])({**a, "pred": pred})
    assert out["p"][:, 0:10].sum() == 0 and out["p"][:, 10:].eq(1).all() and out["l"][0, 0:10].sum() == 0
    assert out["pred"] is pred and a["label"][0, 0:10, 5:15].eq(1).all()
    assert torch.equal(ExcludeAmbiguousd(["pred"])({"pred": pred})["pred"], pred)  # no mask: unchanged
    # a mask of another size than its label is named in the error
    bad = _tile(tmp_path / "bad", "e", np.ones((20, 40), np.uint8))
    with pytest.raises(RuntimeError) as excinfo:  # MONAI wraps the transform's error
        chain(dict(bad))
    message = str(excinfo.value.__cause__)
    assert "ambiguous/e.png: the ambiguous mask is (20, 40) but" in message and "labels/e.png is (40, 40)" in message
    with pytest.raises(ValueError, match="does not match"):
        ExcludeAmbiguousd(["pred"])({"pred": torch.ones(4, 30, 40), "ambiguous": a["ambiguous"]})
    # without a reference key the mask cannot be sized
    with pytest.raises(KeyError):
        EnsureAmbiguousd()({"image": torch.zeros(3, 4, 4)})


# --------------------------------------------------------------------------------------------------- workflows
def _run(config_file, **overrides) -> None:
    from monai.bundle import run

    run(config_file=config_file, meta_file=META, **overrides)


@pytest.fixture(scope="module")
def mixed_prep(tmp_path_factory) -> Path:
    """8 synthetic tiles prepared; some entries of each split get an ambiguous band over their top rows (in training:
    one of the search's weight images and one of its architecture images)."""
    from monai_nasscam.data import generate_dataset, prepare_dataset

    root = tmp_path_factory.mktemp("ambiguous_prep")
    generate_dataset(root / "raw", n_images=8, n_patients=4, seed=0, min_size=64, max_size=128)
    prep = root / "prep"
    prepare_dataset(root / "raw", prep, workers=0, progress=False)
    from monai_nasscam.data.datalist import search_datalists

    parts = search_datalists(str(prep), 0.5, 0)  # the search's weight / architecture images (seed 0)
    marked = {Path(part[0]["image"]).stem for part in (parts["training"], parts["architecture"])}
    datalist = json.loads((prep / "datalist.json").read_text())
    (prep / "ambiguous").mkdir(exist_ok=True)
    for split in ("training", "validation", "test"):
        for i, entry in enumerate(datalist[split]):
            if (entry["name"] in marked) if split == "training" else (i % 2 == 0):
                h, w = np.asarray(Image.open(prep / entry["label"])).shape
                mask = np.zeros((h, w), np.uint8)
                mask[: h // 3, : w // 2] = 1
                Image.fromarray(mask).save(prep / "ambiguous" / f"{entry['name']}.png")
                entry["ambiguous"] = f"ambiguous/{entry['name']}.png"
    has_mask = ["ambiguous" in e for e in datalist["training"]]
    assert any(has_mask) and not all(has_mask)
    (prep / "datalist.json").write_text(json.dumps(datalist))
    return prep


@pytest.fixture(scope="module")
def mixed_trained(mixed_prep) -> Path:
    """train.yaml on the mixed set: 2 iterations of 8 crops, each batch drawn from tiles with and without a mask."""
    out = mixed_prep.parent / "run_unet"
    _run(str(CONFIGS / "train.yaml"), dataset_dir=str(mixed_prep), output_dir=str(out), attention="unet", epochs=1,
         batch_size=8, epoch_crops=16, **TINY)
    return out


def test_train_on_mixed_ambiguous_entries(mixed_trained):
    assert (mixed_trained / "models" / "model.pt").is_file()


def test_search_on_mixed_ambiguous_entries(mixed_prep):
    from monai_nasscam.data.datalist import search_datalists

    parts = search_datalists(str(mixed_prep), 0.5, 0)
    for part in ("training", "architecture"):  # both loaders batch tiles with and without a mask
        assert sorted("ambiguous" in e for e in parts[part]) == [False, True], part
    out = mixed_prep.parent / "run_search"
    _run([str(CONFIGS / "train.yaml"), str(CONFIGS / "search.yaml")], dataset_dir=str(mixed_prep), output_dir=str(out), epochs=1, warmup_epochs=0,
         batch_size=8, epoch_crops=8, **{**TINY, "roi_size": [64, 64], "features": [4, 8, 8, 8, 8]})
    assert (out / "genotype.json").is_file()


def test_evaluate_on_mixed_entries_ignores_what_is_annotated_in_ambiguous_regions(mixed_prep, mixed_trained):
    """The same model scored on the set and on a copy whose test labels gain a nucleus filling each ambiguous
    region: pooled Dice, per-image Dice and PQ are identical (and differ when the copy is scored without its masks,
    so the change would have counted)."""
    altered = mixed_prep.parent / "prep_altered"
    shutil.copytree(mixed_prep, altered)
    datalist = json.loads((altered / "datalist.json").read_text())
    n_altered = 0
    for entry in datalist["test"]:
        if "ambiguous" not in entry:
            continue
        amb = np.asarray(Image.open(altered / entry["ambiguous"])) != 0
        label = np.asarray(Image.open(altered / entry["label"])).copy()
        instance = tifffile.imread(altered / entry["instance"])
        label[amb], instance[amb] = 1, instance.max() + 1  # an epithelial nucleus that is not there
        Image.fromarray(label).save(altered / entry["label"])
        tifffile.imwrite(altered / entry["instance"], instance)
        n_altered += 1
    assert n_altered >= 1
    unmasked = mixed_prep.parent / "prep_altered_unmasked"
    shutil.copytree(altered, unmasked)
    for split in datalist.values():
        for entry in split if isinstance(split, list) else []:
            entry.pop("ambiguous", None)
    (unmasked / "datalist.json").write_text(json.dumps(datalist))
    common = {k: v for k, v in TINY.items() if k != "progress"}
    results = []
    for prep, name in ((mixed_prep, "metrics"), (altered, "metrics_altered"), (unmasked, "metrics_unmasked")):
        metrics_dir = mixed_prep.parent / name
        _run([str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")], dataset_dir=str(prep),
             output_dir=str(mixed_trained), attention="unet", metrics_dir=str(metrics_dir), **common)
        results.append(json.loads((metrics_dir / "metrics.json").read_text()))
    original, changed, unmasked_result = results
    assert original["protocol"]["images"] == 2 and "ambiguous" in original["protocol"]
    for key in ("dice", "dice_per_image", "pq"):
        assert changed[key] == original[key], key
    assert unmasked_result["dice"]["Epithelial"] != original["dice"]["Epithelial"]
    assert unmasked_result["pq"]["Epithelial"] != original["pq"]["Epithelial"] or (
        unmasked_result["dice_per_image"]["Epithelial"] != original["dice_per_image"]["Epithelial"])
