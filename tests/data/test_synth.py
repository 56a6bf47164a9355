"""The synthetic MoNuSAC generator: format, determinism, exact parse-back, class frequencies and cues."""

import filecmp
import json
import os

import numpy as np
import pytest
import tifffile

from monai_nasscam.cli import main as cli_main
from monai_nasscam.data import load_case, read_imagescope_xml, scan_monusac
from monai_nasscam.data.synth import iter_synth_tiles, synth_tile

ARGS = dict(n_images=6, n_patients=3, seed=11, min_size=64, max_size=300)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "raw"
    rc = cli_main(["synth", str(out), "--images", "6", "--patients", "3", "--seed", "11", "--svs", "--min-size", "64", "--max-size", "300"])
    assert rc == 0
    return out


def test_layout_and_xml_format(synth_dir):
    patients = sorted(p for p in os.listdir(synth_dir) if os.path.isdir(synth_dir / p))
    assert len(patients) == 3 and all(p.startswith("TCGA-") for p in patients)
    for p in patients:
        stems = {os.path.splitext(f)[0] for f in os.listdir(synth_dir / p)}
        for stem in stems:
            for ext in (".tif", ".svs", ".xml"):
                assert (synth_dir / p / (stem + ext)).exists()
    xml = next((synth_dir / patients[0]).glob("*.xml")).read_text()
    assert '<Annotation Id="1" Name=""' in xml and "<RegionAttributeHeaders>" in xml
    assert '<Attribute Name="' in xml and 'MicronsPerPixel="' in xml
    assert any("." in v.split('"')[0] for v in xml.split('X="')[1:6])  # float vertices
    summary = json.loads((synth_dir / "synth.json").read_text())
    assert summary["n_images"] == 6 and sum(summary["nuclei"].values()) > 0


def test_svs_is_a_whole_slide_tiff(synth_dir):
    from monai.data import WSIReader

    svs = sorted(synth_dir.glob("*/*.svs"))[0]
    with tifffile.TiffFile(svs) as tif:
        assert tif.is_svs and tif.pages[0].is_tiled
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG
    reader = WSIReader(backend="tifffile", level=0)
    arr, _ = reader.get_data(reader.read(str(svs)))
    tif_img = tifffile.imread(svs.with_suffix(".tif"))
    assert np.moveaxis(np.asarray(arr), 0, -1).shape == tif_img.shape
    assert np.abs(np.moveaxis(np.asarray(arr), 0, -1).astype(int) - tif_img).mean() < 6


def test_every_file_of_a_tile_records_the_same_resolution(synth_dir):
    """.tif (TIFF resolution tags), .svs (Aperio MPP) and .xml (MicronsPerPixel) all say 0.2521 µm/px."""
    from monai_nasscam.data.tiff_format import tiff_mpp
    from monai_nasscam.data.synth import SYNTH_MPP

    tif = sorted(synth_dir.glob("*/*.tif"))[0]
    for path in (tif, tif.with_suffix(".svs")):
        with tifffile.TiffFile(path) as f:
            assert tiff_mpp(f, f.pages[0]) == pytest.approx(SYNTH_MPP, rel=1e-6), path
    assert read_imagescope_xml(tif.with_suffix(".xml")).microns_per_pixel == pytest.approx(SYNTH_MPP)


def test_deterministic_per_seed(synth_dir, tmp_path):
    again = tmp_path / "again"
    cli_main(["synth", str(again), "--images", "6", "--patients", "3", "--seed", "11", "--svs", "--min-size", "64", "--max-size", "300"])
    for f in sorted(synth_dir.glob("*/*.*")):
        assert filecmp.cmp(f, again / f.relative_to(synth_dir), shallow=False), f
    other = next(iter_synth_tiles(**{**ARGS, "seed": 12}))[2]
    first = next(iter_synth_tiles(**ARGS))[2]
    assert other.image.shape != first.image.shape or not np.array_equal(other.image, first.image)


def test_refuses_to_mix_two_sets_and_overwrites_on_request(tmp_path, capsys):
    out = tmp_path / "raw"
    small = ["synth", str(out), "--images", "2", "--patients", "1", "--min-size", "64", "--max-size", "96"]
    assert cli_main(small) == 0
    before = sorted(p.name for p in out.rglob("*"))
    assert cli_main([*small, "--seed", "5"]) != 0  # a second set into the same folder is refused ...
    err = capsys.readouterr().err
    assert f"{out}: output folder is not empty (use --overwrite" in err
    assert sorted(p.name for p in out.rglob("*")) == before  # ... and the first one is untouched
    assert cli_main([*small, "--seed", "5", "--overwrite"]) == 0
    assert json.loads((out / "synth.json").read_text())["seed"] == 5
    assert len(list(out.rglob("*.tif"))) == 2 and not list(tmp_path.glob(".raw.tmp-*"))  # replaced, no leftovers


def test_parses_back_to_the_generated_masks(synth_dir):
    cases, problems = scan_monusac(synth_dir)
    assert not problems and len(cases) == 6
    by_stem = {c.name: c for c in cases}
    for patient, stem, tile in iter_synth_tiles(**ARGS):
        case = by_stem[stem]
        assert case.patient == patient and case.image.endswith(".svs")
        image, masks, ann = load_case(case)
        np.testing.assert_array_equal(masks.class_map, tile.masks.class_map)
        np.testing.assert_array_equal(masks.instance_map, tile.masks.instance_map)
        np.testing.assert_array_equal(tifffile.imread(os.path.splitext(case.image)[0] + ".tif"), tile.image)
        assert not ann.warnings
        assert [name for name, _ in tile.layers] == list(dict.fromkeys(r.label for r in read_imagescope_xml(case.xml).regions))


def test_class_frequencies_sizes_and_cues():
    """MoNuSAC-like frequencies (rare macrophages/neutrophils), small tiles, and per-class cues that overlap."""
    counts = dict.fromkeys(("Epithelial", "Lymphocyte", "Neutrophil", "Macrophage"), 0)
    small = 0
    area = {k: [] for k in counts}
    dark = {k: [] for k in counts}
    ids = {"Epithelial": 1, "Lymphocyte": 2, "Neutrophil": 3, "Macrophage": 4}
    for _, _, tile in iter_synth_tiles(n_images=24, n_patients=6, seed=0, min_size=96, max_size=320):
        small += min(tile.image.shape[:2]) < 256
        for k, v in tile.counts.items():
            counts[k] += v
        gray = tile.image.mean(-1)
        inst, cls = tile.masks.instance_map, tile.masks.class_map
        for i in np.unique(inst)[1:]:
            m = inst == i
            name = next(k for k, v in ids.items() if v == cls[m][0])
            area[name].append(m.sum())
            dark[name].append(gray[m].mean())
    total = sum(counts.values())
    assert counts["Epithelial"] / total > 0.25 and counts["Lymphocyte"] / total > 0.25
    assert 0 < counts["Neutrophil"] / total < 0.1 and 0 < counts["Macrophage"] / total < 0.1
    assert small >= 3
    # lymphocytes: smallest and darkest on average; macrophages: large and paler; ranges overlap
    assert np.mean(area["Lymphocyte"]) < np.mean(area["Epithelial"]) and np.mean(area["Lymphocyte"]) < np.mean(area["Macrophage"])
    assert np.mean(dark["Lymphocyte"]) < np.mean(dark["Macrophage"]) and np.mean(dark["Lymphocyte"]) < np.mean(dark["Epithelial"])
    assert np.percentile(area["Lymphocyte"], 95) > np.percentile(area["Neutrophil"], 5)
    assert np.percentile(dark["Epithelial"], 90) > np.percentile(dark["Macrophage"], 10)


def test_touching_and_overlapping_nuclei():
    rng = np.random.default_rng(4)
    tile = synth_tile(rng, 256, 256, class_weights={"Epithelial": 1.0}, density=900)
    # overlaps: some later polygon hides part of an earlier one, so pixel counts < polygon areas
    from skimage.draw import polygon

    hidden = 0
    for k, (_, polys) in enumerate(tile.layers):
        start = sum(len(p) for _, p in tile.layers[:k])
        for j, v in enumerate(polys):
            rr, cc = polygon(v[:, 1], v[:, 0], (256, 256))
            hidden += (tile.masks.instance_map[rr, cc] != start + j + 1).sum() > 0
    assert hidden >= 3


def test_tile_sizes_are_checked_before_anything_is_written(tmp_path):
    from monai_nasscam.data.synth import generate_dataset

    with pytest.raises(ValueError, match=r"--min-size must be at least 16 and at most --max-size, got 200 and 100"):
        generate_dataset(tmp_path / "raw", n_images=2, min_size=200, max_size=100)
    assert not (tmp_path / "raw").exists()


def test_a_file_is_never_replaced_by_the_set(tmp_path, capsys):
    target = tmp_path / "f.txt"
    target.write_text("x\n")
    small = ["synth", str(target), "--images", "1", "--min-size", "64", "--max-size", "64"]
    for extra in ([], ["--overwrite"]):
        assert cli_main([*small, *extra]) == 1
        assert capsys.readouterr().err == (
            f"nasscam synth: error: {target}: is a file, not a folder: OUT_DIR is the folder to write the set into "
            "(--overwrite replaces a folder, never a file)\n")
        assert target.read_text() == "x\n" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


@pytest.mark.parametrize("counts, message", [
    (["--images", "0"], "--images must be at least 1, got 0."),
    (["--images", "2", "--patients", "0"], "--patients must be at least 1 and at most --images (2), got 0: every "
                                           "patient folder holds at least one tile."),
    (["--images", "2", "--patients", "5"], "--patients must be at least 1 and at most --images (2), got 5: every "
                                           "patient folder holds at least one tile."),
])
def test_tile_and_patient_counts_are_checked_before_anything_is_written(tmp_path, capsys, counts, message):
    assert cli_main(["synth", str(tmp_path / "raw"), *counts, "--min-size", "64", "--max-size", "64"]) == 1
    assert capsys.readouterr().err == f"nasscam synth: error: {message}\n"
    assert not list(tmp_path.iterdir())
