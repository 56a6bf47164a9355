"""Inference workflow (bundle/configs/inference.yaml, monai_nasscam.inference): end to end on tiny synthetic images,
block-wise == whole-image, nuclei / GeoJSON consistency, stain normalisation per tile, network preparation, and bad
inputs named while the other images are still processed."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.inferers import SlidingWindowInferer
from PIL import Image

from monai_nasscam.data import CLASS_NAMES, DataError, MacenkoNormalizer, read_rgb
from monai_nasscam.data.slide import ArrayRegionReader, open_image
from monai_nasscam.data.synth import synth_tile, write_svs
from monai_nasscam.data.tiff_reader import TiffRegionReader
from monai_nasscam.networks.run_folder import build_network
from monai_nasscam.inference import (
    ClassMapNiftiWriter,
    ClassMapPNGWriter,
    InferenceError,
    NucleiCSVWriter,
    NucleiGeoJSONWriter,
    NucleiPredictor,
    SlideStainNormalizer,
    check_inference_inputs,
    count_components,
    iter_nuclei,
    load_weights,
    plan_blocks,
    predict_class_map,
    prepare_network,
)
from monai_nasscam.allocator import tune_allocator
from monai_nasscam.networks import POSITIONS, Genotype
from tests.utils import REPO

CONFIG = REPO / "bundle" / "configs" / "inference.yaml"
FEATURES = [4, 8, 8, 8, 8]
ROI = 64
SAM = ["conv3", "conv1", "conv3", "dil_conv3", "conv5", "none"]
CAM = ["conv3", "conv9", "none", "conv5", "conv1", "dil_conv5"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one torch thread is faster, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tile(seed: int, h: int, w: int) -> np.ndarray:
    return synth_tile(np.random.default_rng(seed), h, w).image


def _genotype(attention: str = "nas-scam-p") -> Genotype:
    return Genotype(attention, True, [{"position": p, "sam": SAM, "cam": CAM} for p in POSITIONS])


def _randomise_norms(net: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _network(genotype_path: str | None = None, attention: str | None = None, features=FEATURES) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_network(attention=attention, genotype_path=genotype_path, features=features)
    _randomise_norms(net)
    with torch.no_grad():  # a few nuclei-sized blobs rather than noise everywhere
        net.final_conv.bias.fill_(-0.4)
    return net.eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """RUN/genotype.json + RUN/models/model.pt (a tiny derived NAS-SCAM-P network) + RUN/manifest.json (stain)."""
    run = tmp_path_factory.mktemp("run")
    _genotype().save(run / "genotype.json")
    (run / "models").mkdir()
    torch.save(_network(str(run / "genotype.json")).state_dict(), run / "models" / "model.pt")
    reference = MacenkoNormalizer().fit([_tile(5, 160, 160)]).to_dict()
    (run / "prep").mkdir()
    (run / "prep" / "manifest.json").write_text(json.dumps({"settings": {"stain": reference}}))
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A PNG, a strip TIFF in a sub-folder, a tiled JPEG SVS, and a corrupt PNG."""
    root = tmp_path_factory.mktemp("images")
    Image.fromarray(_tile(1, 150, 200)).save(root / "a.png")
    (root / "sub").mkdir()
    tifffile.imwrite(root / "sub" / "b.tif", _tile(2, 130, 170), photometric="rgb")
    write_svs(str(root / "c.svs"), _tile(3, 300, 260), tile=64)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


def _inferer(batch: int = 4) -> SlidingWindowInferer:
    return SlidingWindowInferer(roi_size=(ROI, ROI), sw_batch_size=batch, overlap=0.5, cval=1.0)


# ------------------------------------------------------------------------------------------------ end to end
def test_bundle_end_to_end_from_another_directory(run_dir: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIG),
        "--input_dir", os.path.relpath(images, cwd), "--output_dir", "../out",
        "--ckpt_path", str(run_dir / "models" / "model.pt"),  # genotype: RUN/genotype.json next to models/
        "--dataset_dir", str(run_dir / "prep"),  # stain: auto -> PREP/manifest.json
        "--features", json.dumps(FEATURES), "--roi_size", json.dumps([ROI, ROI]), "--batch_size", "4",
        "--optimize", "eager", "--progress", "false", "--num_workers", "1", "--num_threads", "1",
        # the random stand-in network's few blobs pass the threshold near window borders, where the plain average
        # keeps them and the default Gaussian blending (tests/inference/test_overlay_blending.py) weighs them down
        "--sw_mode", "constant",
    ]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "broken.png" in log and "could not process" in log  # the bad file is named; the others go on

    with open(out / "counts.csv") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"a.png", "broken.png", "c.svs", os.path.join("sub", "b.tif")}
    assert rows["broken.png"]["status"] == "error" and "broken.png" in rows["broken.png"]["message"]
    assert not (out / "broken").exists()  # the corrupt image leaves no (empty) folder
    assert not (out / ".nasscam.lock").exists()  # the run released its folder
    summary = json.loads((out / "summary.json").read_text())
    assert summary["succeeded"] == 3 and summary["settings"]["stain"]["method"] == "macenko"

    for rel, shape in (("a", (150, 200)), ("sub/b", (130, 170)), ("c", (300, 260))):
        name = Path(rel).name
        folder = out / rel
        class_map = np.asarray(Image.open(folder / f"{name}_classmap.png"))
        assert class_map.shape == shape and class_map.dtype == np.uint8 and class_map.max() <= 4
        assert class_map.any()
        row = rows[[k for k in rows if k.startswith(rel)][0]]
        # nuclei: the watershed splits components (never merges them), and every file counts the same ones
        with open(folder / f"{name}_nuclei.csv") as f:
            table = list(csv.DictReader(f))
        expected = {c: sum(int(r["class_id"]) == c for r in table) for c in range(1, 5)}
        components = count_components(class_map)
        assert all(expected[c] >= components[c] for c in range(1, 5))
        assert [int(row[n]) for n in CLASS_NAMES] == [expected[c] for c in range(1, 5)]
        assert int(row["total"]) == sum(expected.values()) == len(table)
        assert sum(int(r["area_px"]) for r in table) == int((class_map > 0).sum())  # dropped nuclei are erased

        import nibabel as nib

        nifti = np.asarray(nib.load(folder / f"{name}_classmap.nii.gz").dataobj)
        np.testing.assert_array_equal(nifti[..., 0, 0].T, class_map)  # (x, y, 1, 1)

        overlay = Image.open(folder / f"{name}_overlay.png")
        assert overlay.mode in ("RGB", "RGBA") and overlay.size[0] >= shape[1] and overlay.size[1] > shape[0]

        geo = json.loads((folder / f"{name}_nuclei.geojson").read_text())
        assert geo["type"] == "FeatureCollection" and len(geo["features"]) == sum(expected.values())
        _check_polygons(geo["features"], class_map)


def _check_polygons(features: list[dict], class_map: np.ndarray) -> None:
    """Each polygon rasterises back onto its component; areas roughly match; QuPath's properties."""
    from skimage.draw import polygon as fill
    raster = np.zeros_like(class_map)
    names = {n: i for i, n in enumerate(CLASS_NAMES, start=1)}
    for feat in features:
        props = feat["properties"]
        assert props["objectType"] == "detection" and len(props["classification"]["color"]) == 3
        cid = names[props["classification"]["name"]]
        geometry = feat["geometry"]
        assert geometry["type"] in ("Polygon", "MultiPolygon")  # a MultiPolygon: a nucleus in pieces
        polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
        area, rings = 0.0, 0
        for polygon in polygons:
            exterior = np.asarray(polygon[0])
            assert np.allclose(exterior[0], exterior[-1])
            rr, cc = fill(exterior[:, 1] - 0.5, exterior[:, 0] - 0.5, class_map.shape)
            raster[rr, cc] = cid
            area += sum((-1 if k else 1) * 0.5 * abs(np.dot(r[:, 0], np.roll(r[:, 1], -1)) - np.dot(np.roll(r[:, 0], -1), r[:, 1]))
                        for k, r in enumerate(np.asarray(r) for r in polygon))
            rings += len(polygon)
        pixels = props["measurements"]["Area px"]
        assert area <= pixels + rings  # a contour passes half a pixel inside the outline (outside holes)
        if pixels >= 40:
            assert area >= 0.5 * pixels
    fg = class_map > 0
    assert (raster[fg] == class_map[fg]).mean() > 0.97
    assert (raster[~fg] == 0).mean() > 0.97


# ---------------------------------------------------------------------------------------- tiled == whole image
def test_block_wise_equals_whole_image(run_dir: Path, tmp_path: Path) -> None:
    image = _tile(7, 190, 250)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, image, photometric="rgb", tile=(32, 32), compression="zlib")
    net = _network(str(run_dir / "genotype.json"))
    reference = json.loads((run_dir / "prep" / "manifest.json").read_text())["settings"]["stain"]
    inferer = _inferer(3)
    forward = prepare_network(net, "none")

    with open_image(path) as whole_reader:
        assert isinstance(whole_reader, ArrayRegionReader)
        whole, info = predict_class_map(whole_reader, forward, inferer, SlideStainNormalizer(reference))
    assert info["blocks"] == 1 and whole.any()
    with open_image(path, tiled=True) as tiled_reader:
        assert isinstance(tiled_reader, TiffRegionReader)
        out = np.memmap(tmp_path / "map.u8", dtype=np.uint8, mode="w+", shape=tiled_reader.shape)
        tiled, info = predict_class_map(tiled_reader, forward, inferer, SlideStainNormalizer(reference), out=out,
                                        block_size=96, prefetch=2, overview_step=3)
    assert info["blocks"] == 6 and info["overview"].shape == (64, 84, 3)
    np.testing.assert_array_equal(np.asarray(tiled), whole)


def test_predictor_tiled_path_matches(run_dir: Path, tmp_path: Path) -> None:
    """Through NucleiPredictor: a slide forced through the block-wise path gives the same files' content."""
    src = tmp_path / "in"
    src.mkdir()
    write_svs(str(src / "s.svs"), _tile(8, 200, 230), tile=64)
    net = _network(str(run_dir / "genotype.json"))
    results = {}
    import nibabel as nib
    from monai.transforms import SaveImage

    for mode, kwargs in (("whole", {}), ("tiled", {"tiled": True, "max_whole_pixels": 1, "block_size": 64})):
        out = tmp_path / mode
        saver = SaveImage(output_dir=out, output_postfix="classmap", output_ext=".nii.gz", output_dtype=np.uint8,
                          resample=False, squeeze_end_dims=False, data_root_dir=src, print_log=False)
        outputs = [NucleiGeoJSONWriter(), NucleiCSVWriter(), ClassMapPNGWriter(), ClassMapNiftiWriter(saver)]
        NucleiPredictor(net, _inferer(), src, out, outputs=outputs, stain="none", optimize="none", progress=False,
                        tune_malloc=False, **kwargs).run()
        nifti = nib.load(out / "s" / "s_classmap.nii.gz")  # SaveImage (whole) / streamed by nibabel (tiled)
        results[mode] = (
            (np.asarray(nifti.dataobj), nifti.affine.tolist(), nifti.get_data_dtype().str),
            np.asarray(Image.open(out / "s" / "s_classmap.png")),
            (out / "counts.csv").read_text().splitlines()[1].split(",")[5:10],
            len(json.loads((out / "s" / "s_nuclei.geojson").read_text())["features"]),
        )
        assert not list((out / "s").glob(".classmap-*"))  # the memory map is removed
    np.testing.assert_array_equal(results["tiled"][0][0], results["whole"][0][0])
    assert results["tiled"][0][1:] == results["whole"][0][1:]
    np.testing.assert_array_equal(results["tiled"][1], results["whole"][1])
    assert results["tiled"][2:] == results["whole"][2:]


def test_region_readers_match_whole_image(images: Path, tmp_path: Path) -> None:
    strips = tmp_path / "strips.tif"
    image = _tile(9, 97, 131)
    tifffile.imwrite(strips, image, photometric="rgb", rowsperstrip=10, compression="zlib")
    for path in (images / "c.svs", images / "sub" / "b.tif", strips):
        whole = read_rgb(path)
        with TiffRegionReader(path, cache_bytes=20_000) as reader:
            assert reader.shape == whole.shape[:2]
            rng = np.random.default_rng(0)
            for _ in range(10):
                y0, x0 = rng.integers(0, whole.shape[0] - 1), rng.integers(0, whole.shape[1] - 1)
                y1, x1 = rng.integers(y0 + 1, whole.shape[0] + 1), rng.integers(x0 + 1, whole.shape[1] + 1)
                np.testing.assert_array_equal(reader.read(y0, y1, x0, x1), whole[y0:y1, x0:x1])
    with TiffRegionReader(images / "c.svs") as reader:
        assert reader.mpp == pytest.approx(0.2521)
    # the prefetching threads share one reader: concurrent reads must not interleave on the file handle
    from concurrent.futures import ThreadPoolExecutor

    whole = read_rgb(images / "c.svs")
    with TiffRegionReader(images / "c.svs", cache_bytes=1) as reader:
        def check(seed: int) -> bool:
            rng = np.random.default_rng(seed)
            for _ in range(60):
                y0, x0 = rng.integers(0, 250), rng.integers(0, 200)
                if not (reader.read(y0, y0 + 50, x0, x0 + 60) == whole[y0 : y0 + 50, x0 : x0 + 60]).all():
                    return False
            return True

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads often: without the reader's lock this fails reliably
        try:
            with ThreadPoolExecutor(8) as pool:
                assert all(pool.map(check, range(16)))
        finally:
            sys.setswitchinterval(interval)


def test_plan_blocks_cover_the_image_once() -> None:
    for shape, block in (((190, 250), 96), ((64, 64), 32), ((1000, 70), 256), ((50, 300), None)):
        cover = np.zeros(shape, int)
        for b in plan_blocks(shape, (64, 64), (32, 32), block):
            cover[b.y0 : b.y1, b.x0 : b.x1] += 1
            assert (b.ry1 - b.ry0 - 64) % 32 == 0 and (b.rx1 - b.rx0 - 64) % 32 == 0 and b.ry0 % 32 == 0
        assert (cover == 1).all()


# ------------------------------------------------------------------------------------------ nuclei, stain, net
def test_banded_nuclei_match_connected_components() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(0)
    seeds = rng.integers(0, 5, (90, 70)) * (rng.random((90, 70)) < 0.05)
    class_map = ndimage.grey_dilation(seeds, size=(5, 3)).astype(np.uint8)
    class_map[10:80, 30] = 2  # a tall component spanning several bands
    expected = count_components(class_map)
    for band, margin in ((7, 1), (16, 4), (2048, 256)):
        nuclei = list(iter_nuclei(class_map.copy(), band_rows=band, margin=margin))
        counts = {c: sum(n.class_id == c for n in nuclei) for c in range(1, 5)}
        assert counts == expected
        assert sum(n.area for n in nuclei) == int((class_map > 0).sum())
    erased = class_map.copy()
    kept = list(iter_nuclei(erased, band_rows=9, margin=2, min_area=6))
    assert all(n.area >= 6 for n in kept) and sum(count_components(erased).values()) == len(kept)


def test_stain_per_tile_equals_whole_image_and_training(run_dir: Path) -> None:
    reference = json.loads((run_dir / "prep" / "manifest.json").read_text())["settings"]["stain"]
    image = _tile(11, 120, 140)
    norm = SlideStainNormalizer(reference).fit_source(image)
    whole = norm.apply(image)
    tiles = np.concatenate([np.concatenate([norm.apply(image[y : y + 40, x : x + 35]) for x in range(0, 140, 35)], 1)
                            for y in range(0, 120, 40)], 0)
    np.testing.assert_array_equal(tiles, whole)
    trained = MacenkoNormalizer(**{k: v for k, v in reference.items() if k != "method"}).apply(image)[0]
    diff = np.abs(trained.astype(int) - whole.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # as `nasscam prepare` normalised the training images
    glass = np.full((50, 50, 3), 250, np.uint8)
    blank = SlideStainNormalizer(reference).fit_source(glass)
    assert blank.note and (blank.apply(glass) == glass).all()
    rein = SlideStainNormalizer({"method": "reinhard"}).fit_source(image)
    np.testing.assert_array_equal(rein.apply(image[:60]), rein.apply(image)[:60])


@pytest.mark.parametrize("attention", ["nas-scam-p", "nas-scam-s"])
def test_prepared_network_computes_the_same(attention: str) -> None:
    torch.manual_seed(0)
    from monai_nasscam.networks import NASSCAMUNet

    net = NASSCAMUNet(2, 3, 4, attention=None, genotype=_genotype(attention), features=FEATURES)
    _randomise_norms(net)
    net.eval()
    x = torch.rand(3, 3, ROI, ROI)
    with torch.no_grad():
        ref = net(x)
    for mode, workers in (("eager", 1), ("trace", 1), ("eager", 2), ("trace", 2)):
        prepared = prepare_network(net, mode, (4 // workers * workers, 3, ROI, ROI), workers=workers)
        with torch.inference_mode():
            out = prepared(x)  # 3 windows: split between the workers and (trace) padded to the traced batch
        prepared.close()
        torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref)  # the original network is untouched
    assert tune_allocator(True) and tune_allocator(False)  # glibc: set, then restore the defaults


# ------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_are_named(run_dir: Path, images: Path, tmp_path: Path) -> None:
    ckpt = run_dir / "models" / "model.pt"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        check_inference_inputs(empty, ckpt, stain="none")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        check_inference_inputs(images, tmp_path / "nope.pt", stain="none")
    # a NAS attention with no genotype next to the checkpoint
    lonely = tmp_path / "lonely" / "models"
    lonely.mkdir(parents=True)
    (lonely / "model.pt").write_bytes(ckpt.read_bytes())
    with pytest.raises(FileNotFoundError, match="genotype.json"):
        check_inference_inputs(images, lonely / "model.pt", attention="nas-scam-p", stain="none")
    # a genotype of another attention
    serial = tmp_path / "serial.json"
    _genotype("nas-scam-s").save(serial)
    with pytest.raises(ValueError, match="serial.json"):
        check_inference_inputs(images, ckpt, attention="nas-scam-p", genotype_path=serial, stain="none")
    # no stain reference for stain: auto
    with pytest.raises(FileNotFoundError, match="--stain"):
        check_inference_inputs(images, ckpt)
    # a checkpoint of another architecture
    with pytest.raises(ValueError, match="model.pt.*another architecture"):
        load_weights(_network(attention="unet"), ckpt)
    # nothing readable: the run fails, naming the files
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.svs").write_bytes(b"II*\x00garbage")
    (bad / "y.png").write_bytes(b"")
    predictor = NucleiPredictor(_network(attention="unet"), _inferer(), bad, tmp_path / "o", stain="none",
                                optimize="none", progress=False, tune_malloc=False)
    with pytest.raises(InferenceError, match="x.svs"):
        predictor.run()
    rows = list(csv.DictReader(open(tmp_path / "o" / "counts.csv")))
    assert [r["status"] for r in rows] == ["error", "error"] and "0 bytes" in rows[1]["message"]
    with pytest.raises(DataError, match="x.svs"):
        open_image(bad / "x.svs")


def test_bundle_fails_clearly_on_an_empty_folder(run_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIG), "--input_dir", str(empty),
           "--output_dir", str(tmp_path / "o"), "--ckpt_path", str(run_dir / "models" / "model.pt"), "--stain", "none",
           "--num_threads", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"input folder {empty} holds no image" in proc.stdout + proc.stderr


def _bundle_line(cmd: list[str], cwd: Path) -> tuple[int, str]:
    """Run an inference command as a user does; its exit status and the one line it ended with (no traceback)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("NASSCAM_TRACEBACK", None)
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert "Traceback" not in proc.stdout + proc.stderr and "ConfigExpression" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    return proc.returncode, errors[0]


def test_bundle_ends_with_one_line_when_no_image_can_be_processed(run_dir: Path, tmp_path: Path) -> None:
    """The reported case: a truncated PNG and a text file named .jpg; the run ended in a two-part traceback."""
    folder = tmp_path / "D"
    folder.mkdir()
    whole = tmp_path / "whole.png"
    Image.fromarray(_tile(1, 64, 64)).save(whole)
    data = whole.read_bytes()
    (folder / "trunc.png").write_bytes(data[: len(data) // 2])
    (folder / "x.jpg").write_text("not a JPEG")
    out = tmp_path / "O"
    base = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIG), "--output_dir", str(out),
            "--ckpt_path", str(run_dir / "models" / "model.pt"), "--features", json.dumps(FEATURES),
            "--roi_size", json.dumps([ROI, ROI]), "--stain", "none", "--progress", "false", "--num_workers", "0",
            "--num_threads", "1", "--optimize", "none"]
    status, line = _bundle_line([*base, "--input_dir", str(folder)], tmp_path)
    assert status == 1
    assert line == (
        f"error: no image could be processed (2 failed): {folder / 'trunc.png'}: unreadable image (OSError: image "
        f"file is truncated); {folder / 'x.jpg'}: unreadable image (UnidentifiedImageError: cannot identify image "
        f"file '{folder / 'x.jpg'}')"
    )
    # only the run's tables, which name the failures; no image folder
    assert sorted(p.name for p in out.iterdir()) == ["counts.csv", "counts_summary.csv", "summary.json"]

    # one file that is no image, given as --input_dir: refused before anything is written
    text = tmp_path / "some_file.txt"
    text.write_text("notes")
    out2 = tmp_path / "O2"
    status, line = _bundle_line([*base[:7], str(out2), *base[8:], "--input_dir", str(text)], tmp_path)
    assert status == 1
    assert line == (
        f"error: input file {text} is not an image this workflow reads (its suffix is none of .png, .jpg, .jpeg, "
        ".bmp, .svs, .tif, .tiff, .ndpi, .vms, .vmu, .mrxs, .scn, .bif, .svslide); pass an image file or a folder of "
        "images as --input_dir."
    )
    assert not out2.exists()


def test_an_output_folder_inside_the_input_folder_is_not_searched(run_dir: Path, tmp_path: Path) -> None:
    """The reported case: --output_dir inside --input_dir; a second run took the first one's class maps and
    overlays for images (pred/pred/..._overlay_overlay.png, counted in counts.csv and summary.json)."""
    folder = tmp_path / "D"
    folder.mkdir()
    Image.fromarray(_tile(1, 96, 80)).save(folder / "a.png")
    out = folder / "pred"

    def run() -> dict:
        predictor = NucleiPredictor(_network(str(run_dir / "genotype.json")), _inferer(), folder, out, stain="none",
                                    optimize="none", progress=False, tune_malloc=False)
        return predictor.run()

    first = run()
    assert (out / "a" / "a_classmap.png").is_file() and (out / "a" / "a_overlay.png").is_file()
    second = run()
    assert first["succeeded"] == second["succeeded"] == 1 and second["failed"] == []
    rows = list(csv.DictReader(open(out / "counts.csv")))
    assert [r["image"] for r in rows] == ["a.png"]
    assert not (out / "pred").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "a", "counts.csv", "counts_summary.csv", "summary.json"
    ], sorted(out.rglob("*"))
    # the input checks leave it out as well: a folder whose only images are in the output folder holds none
    (folder / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"input folder {folder} holds no image"):
        check_inference_inputs(folder, run_dir / "models" / "model.pt", stain="none", output_dir=out)
    # the output folder given as a relative path is recognised too
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(FileNotFoundError, match="holds no image"):
            check_inference_inputs("D", run_dir / "models" / "model.pt", stain="none", output_dir="D/pred")
    finally:
        os.chdir(cwd)
