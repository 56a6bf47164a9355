"""Scanning a MoNuSAC release, `nasscam prepare` (atomic, datalist contract), bad inputs, splits, stain."""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from monai_nasscam.cli import main as cli_main
from monai_nasscam.data import (
    DataError,
    MacenkoNormalizer,
    ReinhardNormalizer,
    generate_dataset,
    load_case,
    make_split,
    prepare_dataset,
    scan_monusac,
    split_by_image,
    split_by_patient,
    stain_normalizer_from_dict,
)
from monai_nasscam.data.split import split_counts

SPLITS = ("training", "validation", "test")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A tiny synthetic release inside a folder whose name has spaces (like the test release)."""
    root = tmp_path_factory.mktemp("raw") / "MoNuSAC Testing Data and Annotations"
    generate_dataset(root, n_images=9, n_patients=4, seed=3, min_size=64, max_size=160, small_fraction=0.3)
    return root


def copy_raw(raw, tmp_path):
    dst = tmp_path / "release copy"
    shutil.copytree(raw, dst)
    return dst


def test_scan_pairs_stems_and_patients(raw):
    cases, problems = scan_monusac(raw)
    assert len(cases) == 9 and not problems
    stems = [c.name for c in cases]
    assert any(s.endswith("_1") for s in stems) and any(s.endswith("_001") for s in stems)
    assert any(s.endswith("-1") for s in stems)
    for c in cases:
        assert os.path.basename(os.path.dirname(c.xml)) == c.patient
        assert os.path.splitext(c.image)[0] == os.path.splitext(c.xml)[0]


def test_scan_prefers_svs_and_reads_rgba(tmp_path):
    folder = tmp_path / "TCGA-AA-0000-01Z-00-DX1"
    folder.mkdir()
    yy, xx = np.mgrid[0:20, 0:30]
    rgb = np.stack([200 - 3 * yy, 120 + 2 * xx, 150 + yy + xx], -1).astype(np.uint8)  # smooth, JPEG-friendly
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 255, np.uint8)], -1)
    tifffile.imwrite(folder / "x_1.tif", rgba[..., [2, 1, 0, 3]])  # a BGR(A) copy
    from monai_nasscam.data.synth import write_svs

    write_svs(str(folder / "x_1.svs"), rgb)
    (folder / "x_1.xml").write_text(
        '<Annotations><Annotation><Attributes><Attribute Name="Epithelial"/></Attributes><Regions><Region Id="1">'
        '<Vertices><Vertex X="2" Y="2"/><Vertex X="9" Y="2"/><Vertex X="9" Y="9"/></Vertices></Region>'
        "</Regions></Annotation></Annotations>"
    )
    (case,), _ = scan_monusac(tmp_path)
    assert case.image.endswith(".svs")
    image, masks, _ = load_case(case)
    assert image.shape == (20, 30, 3) and masks.class_map.shape == (20, 30)
    assert np.abs(image.astype(int) - rgb).mean() < 6  # JPEG tiles
    os.remove(folder / "x_1.svs")
    (case,), _ = scan_monusac(tmp_path)
    image, _, _ = load_case(case, tif_bgr=True)  # .tif fallback: RGBA -> RGB, B/R swapped back
    np.testing.assert_array_equal(image, rgb)


def test_prepare_contract(raw, tmp_path):
    prep = tmp_path / "PREP"
    manifest = prepare_dataset(raw, prep, seed=1, workers=0, progress=False)
    datalist = json.loads((prep / "datalist.json").read_text())
    assert datalist["labels"] == {"0": "background", "1": "Epithelial", "2": "Lymphocyte", "3": "Neutrophil", "4": "Macrophage"}
    entries = [e for s in SPLITS for e in datalist[s]]
    assert len(entries) == 9 and all(datalist[s] for s in SPLITS)
    names = {e["name"] for e in entries}
    assert len(names) == 9
    for e in entries:
        assert set(e) == {"image", "label", "instance", "name", "patient"}
        img = np.asarray(Image.open(prep / e["image"]))
        lab = np.asarray(Image.open(prep / e["label"]))
        inst = tifffile.imread(prep / e["instance"])
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert lab.dtype == np.uint8 and lab.shape == img.shape[:2] and lab.max() <= 4
        assert np.issubdtype(inst.dtype, np.integer) and inst.shape == lab.shape
        assert ((inst > 0) == (lab > 0)).all()
        assert not os.path.isabs(e["image"])
    # patient-level split: no patient in two splits
    patients = {s: {e["patient"] for e in datalist[s]} for s in SPLITS}
    assert not (patients["training"] & patients["validation"]) and not (patients["training"] & patients["test"])
    assert not (patients["validation"] & patients["test"])
    assert manifest == json.loads((prep / "manifest.json").read_text())
    assert manifest["counts"]["total"]["images"] == 9
    assert sum(manifest["counts"][s]["images"] for s in SPLITS) == 9
    assert set(manifest["counts"]["training"]["nuclei"]) == {"Epithelial", "Lymphocyte", "Neutrophil", "Macrophage"}
    assert manifest["settings"]["stain"]["method"] == "macenko" and manifest["settings"]["stain"]["reference_images"]
    # the source images' resolution (the synthetic SVS record MPP = 0.2521), which training records for inference
    assert manifest["resolution"] == {"mpp": 0.2521, "min": 0.2521, "max": 0.2521, "known": 9, "unknown": 0}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "temporary folder left behind"


def test_prepare_refuses_existing_output_and_overwrites(raw, tmp_path):
    prep = tmp_path / "PREP"
    prep.mkdir()
    (prep / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="already exists"):
        prepare_dataset(raw, prep, workers=0, progress=False, stain="none")
    assert os.listdir(prep) == ["keep.txt"]
    prepare_dataset(raw, prep, workers=2, progress=False, stain="none", overwrite=True)
    assert sorted(os.listdir(prep)) == ["datalist.json", "images", "instances", "labels", "manifest.json"]
    assert sorted(os.listdir(tmp_path)) == ["PREP"]
    # a file there is never replaced, with or without --overwrite
    target = tmp_path / "notes.txt"
    target.write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(DataError, match=r"notes\.txt: is a file, not a folder: --out-dir is the folder to write"):
            prepare_dataset(raw, target, workers=0, progress=False, stain="none", overwrite=overwrite)
    assert target.read_text() == "precious" and sorted(os.listdir(tmp_path)) == ["PREP", "notes.txt"]


def test_prepare_is_reproducible_and_image_split(raw, tmp_path):
    a = prepare_dataset(raw, tmp_path / "a", split="image", seed=5, workers=0, progress=False, stain="none")
    b = prepare_dataset(raw, tmp_path / "b", split="image", seed=5, workers=0, progress=False, stain="none")
    assert json.loads((tmp_path / "a" / "datalist.json").read_text()) == json.loads((tmp_path / "b" / "datalist.json").read_text())
    assert a["counts"] == b["counts"]
    assert [a["counts"][s]["images"] for s in SPLITS] == list(split_counts(9))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir would make it, not mkdtemp's 0700


def test_bad_inputs_skip_or_fail(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    cases, _ = scan_monusac(src)
    # malformed XML, empty XML, unreadable image, XML without image, image without XML
    (open(cases[0].xml, "w")).write("<Annotations><Annotation>")
    open(cases[1].xml, "w").close()
    with open(cases[2].image, "wb") as f:
        f.write(b"II*\x00garbage")
    os.remove(cases[3].image)
    os.remove(cases[4].xml)
    for on_error in ("fail",):
        out = tmp_path / "PREP_fail"
        with pytest.raises(DataError):
            prepare_dataset(src, out, on_error=on_error, workers=0, progress=False, stain="none")
        assert not out.exists()
        assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    manifest = prepare_dataset(src, tmp_path / "PREP", on_error="skip", workers=0, progress=False, stain="none")
    problems = {os.path.basename(s["file"]): s["problem"] for s in manifest["skipped"]}
    assert problems[os.path.basename(cases[0].xml)].startswith("malformed XML")
    assert problems[os.path.basename(cases[1].xml)].startswith("empty annotation file")
    assert problems[os.path.basename(cases[2].image)].startswith("unreadable image")
    assert problems[os.path.basename(cases[3].xml)].startswith("annotation file without image")
    assert problems[os.path.basename(cases[4].image)].startswith("image without annotation file")
    assert manifest["counts"]["total"]["images"] == 4


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_cli_missing_or_empty_data_folder(tmp_path, capsys, make):
    data = tmp_path / "nowhere"
    if make == "empty":
        data.mkdir()
    rc = cli_main(["prepare", "--data-dir", str(data), "--out-dir", str(tmp_path / "PREP")])
    err = capsys.readouterr().err
    assert rc == 1 and str(data) in err
    assert ("does not exist" in err) if make == "missing" else ("no MoNuSAC annotation files" in err)
    assert err.count("\n") == 1  # one clear message
    assert not (tmp_path / "PREP").exists()


def test_cli_fail_names_file(raw, tmp_path, capsys):
    src = copy_raw(raw, tmp_path)
    cases, _ = scan_monusac(src)
    open(cases[0].xml, "w").write("<not xml")
    rc = cli_main(["prepare", "--data-dir", str(src), "--out-dir", str(tmp_path / "P"), "--on-error", "fail", "--stain", "none"])
    err = capsys.readouterr().err
    assert rc == 1 and cases[0].xml in err and "malformed XML" in err
    assert not (tmp_path / "P").exists()


def test_cli_remap_and_help(raw, tmp_path, capsys):
    rc = cli_main(
        ["prepare", "--data-dir", str(raw), "--out-dir", str(tmp_path / "P"), "--stain", "reinhard", "--remap", "3:4", "4:3", "--workers", "0"]
    )
    assert rc == 0
    datalist = json.loads((tmp_path / "P" / "datalist.json").read_text())
    assert datalist["labels"]["3"] == "Macrophage" and datalist["labels"]["4"] == "Neutrophil"
    with pytest.raises(SystemExit):
        cli_main(["prepare", "--help"])
    out = capsys.readouterr().out
    for opt in ("--data-dir", "--out-dir", "--split", "--seed", "--stain", "--on-error", "--overwrite", "--remap"):
        assert opt in out


def test_splits_disjoint_reproducible():
    names = [f"img{i:03d}" for i in range(209)]
    patients = [f"p{i // 5}" for i in range(209)]
    a = split_by_image(names, seed=0)
    assert a == split_by_image(list(reversed(names)), seed=0)
    assert [sum(v == s for v in a.values()) for s in SPLITS] == [120, 39, 50]
    assert a != split_by_image(names, seed=1)
    p = split_by_patient(names, patients, seed=0)
    assert p == make_split(names, patients, "patient", 0)
    owner = {}
    for n, pt in zip(names, patients):
        owner.setdefault(pt, set()).add(p[n])
    assert all(len(s) == 1 for s in owner.values())
    counts = [sum(v == s for v in p.values()) for s in SPLITS]
    assert abs(counts[0] - 120) <= 5 and abs(counts[1] - 39) <= 5 and abs(counts[2] - 50) <= 5
    few = split_by_patient(["a", "b", "c", "d"], ["x", "y", "z", "z"], seed=2)
    assert set(few.values()) == set(SPLITS)
    with pytest.warns(UserWarning, match="patient-level split is impossible"):
        split_by_patient(["a", "b", "c"], ["x", "x", "y"])


def test_split_stratified_by_classes():
    names = [f"img{i:02d}" for i in range(20)]
    patients = [f"p{i // 2}" for i in range(20)]
    common = {"Epithelial", "Lymphocyte"}
    # the rare class in 3 of 10 patients: the first draw (seed 0) misses it somewhere, a redraw holds it everywhere
    classes = {n: common | ({"Neutrophil"} if n in ("img00", "img07", "img13") else set()) for n in names}
    plain = make_split(names, patients, "patient", seed=0)
    assert {plain[n] for n in ("img00", "img07", "img13")} != set(SPLITS)
    split = make_split(names, patients, "patient", seed=0, classes=classes)
    assert {split[n] for n in ("img00", "img07", "img13")} == set(SPLITS)
    assert split == make_split(names, patients, "patient", seed=0, classes=classes)  # reproducible
    assert all(split[names[i]] == split[names[i + 1]] for i in range(0, 20, 2))  # patients kept whole
    # a split that already covers every class is kept unchanged
    assert make_split(names, patients, "patient", seed=0, classes=dict.fromkeys(names, common)) == plain
    # impossible: the rare class in one image only -> the best draw, with a warning naming what is missing
    one = {n: common | ({"Macrophage"} if n == "img05" else set()) for n in names}
    with pytest.warns(UserWarning, match=r"lacks Macrophage"):
        make_split(names, patients, "image", seed=0, classes=one)


def test_stain_normalisers():
    rng = np.random.default_rng(0)
    he = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
    conc = np.stack([rng.uniform(0, 1.5, (48, 48)), rng.uniform(0.2, 1.0, (48, 48))], -1)
    tile = np.clip(240 * np.exp(-conc @ he.T), 0, 255).astype(np.uint8)
    background = np.full((16, 16, 3), 245, np.uint8)
    for norm in (MacenkoNormalizer(), ReinhardNormalizer()):
        norm.fit([tile])
        out, note = norm.apply(tile)
        assert out.shape == tile.shape and out.dtype == np.uint8 and note is None
        same, note = norm.apply(background)  # background only: identity with a note
        np.testing.assert_array_equal(same, background)
        assert "unchanged" in note
        again = stain_normalizer_from_dict(json.loads(json.dumps(norm.to_dict())))
        np.testing.assert_allclose(again(tile).astype(int), out.astype(int), atol=1)


def test_fast_macenko_matches_monai():
    from monai.apps.pathology.transforms import NormalizeHEStains

    from monai_nasscam.data.stain import _NormalizeHEStainsFast

    rng = np.random.default_rng(1)
    he = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    conc = np.stack([rng.gamma(2.0, 0.3, (64, 64)), rng.gamma(3.0, 0.2, (64, 64))], -1)
    tile = np.clip(240 * np.exp(-conc @ he.T) + rng.normal(0, 2, (64, 64, 3)), 0, 255).astype(np.uint8)
    ref = NormalizeHEStains()(tile).astype(int)
    fast = _NormalizeHEStainsFast()(tile).astype(int)
    assert np.abs(ref - fast).max() <= 1


def test_prepared_folder_inside_release_is_ignored(raw, tmp_path):
    src = copy_raw(raw, tmp_path)
    prepare_dataset(src, src / "PREP", workers=0, progress=False, stain="none")
    cases, problems = scan_monusac(src)
    assert len(cases) == 9 and not problems


def test_cli_takes_the_bundle_spelling_and_flags_after_the_command(raw, tmp_path, capsys):
    """`--data_dir` / `--output_dir` (monai.bundle run's spelling) and `-v` / `--debug` after COMMAND work."""
    rc = cli_main(["prepare", "--data_dir", str(raw), "--output_dir", str(tmp_path / "P"), "--stain", "none",
                   "--workers", "0", "-v"])
    assert rc == 0 and (tmp_path / "P" / "datalist.json").is_file()
    for debug_first in (True, False):  # --debug before or after COMMAND: the traceback, not one line
        argv = ["prepare", "--data-dir", str(raw), "--out-dir", str(tmp_path / "P")]
        with pytest.raises(DataError, match="output folder already exists"):
            cli_main(["--debug", *argv] if debug_first else [*argv, "--debug"])
    assert cli_main(["prepare", "--data-dir", str(raw), "--out-dir", str(tmp_path / "P")]) == 1


def test_split_warnings_are_kept_in_the_manifest(tmp_path, caplog):
    """Two images of two patients: no patient-level split, and nothing left for validation and test; prepare says
    so and keeps the notes in manifest.json."""
    raw = tmp_path / "raw"
    generate_dataset(raw, n_images=2, n_patients=2, seed=1, min_size=96, max_size=128)
    with caplog.at_level("WARNING"):
        manifest = prepare_dataset(str(raw), str(tmp_path / "P"), stain="none", workers=0)
    notes = manifest["split_notes"]
    assert notes == json.loads((tmp_path / "P" / "manifest.json").read_text())["split_notes"]
    assert any("patient-level split is impossible" in n for n in notes)
    assert ("the validation split is empty: search and training will refuse this dataset (validation keeps the "
            "best model); give more images or patients, or use --split image") in notes
    assert any(n.startswith("the test split is empty: evaluation will refuse") for n in notes)
    assert [r.getMessage() for r in caplog.records if "split" in r.getMessage()] == notes


def test_epoch_crops_not_a_whole_number_of_groups_warns():
    from monai_nasscam.data.datalist import epoch_groups

    with pytest.warns(UserWarning, match=r"^epoch_crops 2 is not a whole number of class-balanced groups of 4 crops "
                                         r"\(one per class\): an epoch is 4 crops\.$"):
        assert epoch_groups([], 64, epoch_crops=2) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a whole number of groups: no warning
        assert epoch_groups([], 64, epoch_crops=8) == 2
