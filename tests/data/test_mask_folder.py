"""Image + mask folders for `nasscam prepare`: palettes and value maps, the three mask kinds on small folders made here
(a colour JPEG with ringing, an index PNG, an instance TIFF) with known answers, pairing by name, bad input, EXIF
orientation, and evaluation of semantic-only ground truth."""

from __future__ import annotations

import csv
import io
import json
import os
import re

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageOps

from monai_nasscam.cli import main as cli_main
from monai_nasscam.data import DataError, MaskFolderSpec, parse_palette, parse_value_map, prepare_dataset
from monai_nasscam.data.mask_file import orient, read_mask
from monai_nasscam.data.instance_table import read_instance_classes
from monai_nasscam.data.mask_folder import patient_of, scan_mask_folder
from monai_nasscam.data.palette import IGNORE_ID
from tests.utils import CONFIGS, evaluate_fixed

MONUSAC = np.array([[0, 0, 0], [0, 255, 0], [255, 255, 0], [255, 0, 0], [0, 0, 255]], np.uint8)


def class_map(h=40, w=56):
    """Four nuclei of the four classes, a touching pair of Epithelial ones (columns 4-11 and 12-19)."""
    cmap = np.zeros((h, w), np.uint8)
    cmap[4:16, 4:12] = 1
    cmap[4:16, 12:20] = 1
    cmap[20:34, 6:18] = 2
    cmap[5:15, 30:44] = 3
    cmap[22:36, 30:50] = 4
    return cmap


def tissue(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal((200, 150, 190), 20, (h, w, 3)), 0, 255).astype(np.uint8)


def folder(root, pairs):
    """``pairs``: {image file name: (image array, mask file name, writer(path))} -> ROOT with images/ and masks/."""
    os.makedirs(root / "images", exist_ok=True)
    os.makedirs(root / "masks", exist_ok=True)
    for image_name, (image, mask_name, write_mask) in pairs.items():
        Image.fromarray(image).save(root / "images" / image_name, quality=95)
        write_mask(root / "masks" / mask_name)
    return root


def colour_jpeg(cmap, quality=60):
    def write(path):
        Image.fromarray(MONUSAC[cmap]).save(path, format="JPEG", quality=quality)
    return write


def index_png(values, palette=None):
    def write(path):
        im = Image.fromarray(values.astype(np.uint8), mode="P" if palette else None)
        if palette:
            im.putpalette(palette)
        im.save(path)
    return write


def prepare(src, out, spec, **kw):
    kw = {"stain": "none", "workers": 0, "progress": False, "stratify": False, **kw}
    return prepare_dataset(src, out, masks=spec, **kw)


def read_entry(out, entry):
    label = np.asarray(Image.open(out / entry["label"]))
    inst = tifffile.imread(out / entry["instance"])
    amb = np.asarray(Image.open(out / entry["ambiguous"])) if "ambiguous" in entry else np.zeros_like(label)
    return label, inst, amb


def entries(out):
    data = json.loads((out / "datalist.json").read_text())
    return {e["name"]: e for s in ("training", "validation", "test") for e in data[s]}


COLOUR = MaskFolderSpec("colour", palette=parse_palette("monusac"), min_size=0)


# ------------------------------------------------------------------------------------------------ palettes, values
def test_palette_sources_agree_and_classify_by_nearest_colour(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"background": [0, 0, 0], "Epithelial": "#00ff00", "lymphocytes": "255,255,0",
                                "Neutrophil": [255, 0, 0], "Macrophage": [[0, 0, 255], [0, 0, 200]]}))
    from_file = parse_palette(str(path))
    tokens = parse_palette(["background=0,0,0", "Epithelial=#00ff00", "Lymphocyte=255,255,0", "Neutrophil=255,0,0",
                            "Macrophage=0,0,255", "Macrophage=0,0,200"])
    assert from_file.entries == tokens.entries
    assert parse_palette("monusac").entries == tuple((tuple(c), i) for i, c in enumerate(MONUSAC.tolist()))
    # distances to the nearest colour: (0, 40, 0) -> background at 40; (0, 150, 0) -> Epithelial at 105;
    # (0, 0, 210) -> the second Macrophage colour at 10; (128, 128, 128) -> 181 from black, yellow and others
    rgb = np.array([[[0, 40, 0], [0, 150, 0], [0, 0, 210], [128, 128, 128]]], np.uint8)
    ids, far = from_file.classify(rgb, tolerance=100)
    assert ids[0, :3].tolist() == [0, 1, 4] and far.tolist() == [[False, True, False, True]]
    assert from_file.classify(rgb, tolerance=110)[1].tolist() == [[False, False, False, True]]


@pytest.mark.parametrize("spec, message", [
    (["Epithelial=0,255,0"], "palette (command line): no background colour; add background=R,G,B"),
    (["background=0,0,0", "Epithelial=0,0,0"], "palette (command line): colour (0, 0, 0) is given to both background and Epithelial"),
    (["background=0,0,0", "Epithelial=0,256,0"], "palette (command line), Epithelial: '0,256,0' is not an RGB colour"),
    (["background=0,0,0", "Stroma=1,2,3"], "palette (command line): unknown class 'Stroma'"),
    ("nosuch", "palette 'nosuch': neither a preset (monusac) nor a JSON file"),
])
def test_palette_errors(spec, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_palette(spec)


def test_value_map_is_explicit():
    default = parse_value_map()
    assert default.describe() == "mask value -> class: 0 background, 1 Epithelial, 2 Lymphocyte, 3 Neutrophil, 4 Macrophage"
    ids, unknown = default.classify(np.array([[0, 1, 4, 255, 255]]))
    assert ids.tolist() == [[0, 1, 4, 0, 0]] and unknown == {255: 2}
    vm = parse_value_map("0:background 255:ignore 7:macrophages")
    assert vm.classify(np.array([[7, 255, 0]]))[0].tolist() == [[4, IGNORE_ID, 0]]
    with pytest.raises(ValueError, match="value 1 is given twice"):
        parse_value_map(["1:Epithelial", "1:Lymphocyte"])


def test_patient_rule():
    assert patient_of("TCGA-2Z-A9JG-01Z-00-DX1_3") == "TCGA-2Z-A9JG"
    assert patient_of("TCGA-2Z-A9JG-01Z-00-DX2_001") == "TCGA-2Z-A9JG"  # another slide of the same patient
    assert patient_of("case_12_b") == "case_12"
    assert patient_of("slide7") == "slide7"
    assert patient_of("P03-x", r"^(P\d+)-") == "P03"
    assert patient_of("x", r"^P\d+") is None


def test_orient_matches_pil_exif_transpose():
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", exif=exif.tobytes())
        buf.seek(0)
        assert np.array_equal(orient(arr, o), np.asarray(ImageOps.exif_transpose(Image.open(buf)))), o


# ------------------------------------------------------------------------------------------------ the three kinds
def test_colour_jpeg_with_ringing_is_read_by_nearest_colour(tmp_path):
    cmap = class_map()
    src = folder(tmp_path / "src", {f"P{i}_1.jpg": (tissue(seed=i), f"P{i}_1.jpg", colour_jpeg(cmap)) for i in range(3)})
    decoded = np.asarray(Image.open(src / "masks" / "P0_1.jpg").convert("RGB")).astype(int)
    assert len(np.unique(decoded.reshape(-1, 3), axis=0)) > 20  # the JPEG rings: not 5 colours
    manifest = prepare(src, tmp_path / "prep", COLOUR)
    out = tmp_path / "prep"
    dist = np.sqrt(((decoded[..., None, :] - MONUSAC.astype(int)) ** 2).sum(-1))
    nearest, far = dist.argmin(-1), dist.min(-1) > 100
    label, inst, amb = read_entry(out, entries(out)["P0_1"])
    assert far.any() and np.array_equal(amb > 0, far)  # left out exactly where no colour is within 100
    assert np.array_equal(label, np.where(far, 0, nearest))
    from scipy.ndimage import binary_erosion
    interior = np.any([binary_erosion(cmap == c, np.ones((5, 5)), border_value=1) for c in range(5)], axis=0)
    assert np.array_equal(label[interior], cmap[interior])  # 2 px or more away from edges: the drawn classes
    # semantic masks: the touching Epithelial pair is one region; four regions, one per class
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2, 3, 4]
    assert entries(out)["P0_1"]["semantic_only"] is True
    assert manifest["counts"]["total"]["nuclei"] == {"Epithelial": 3, "Lymphocyte": 3, "Neutrophil": 3, "Macrophage": 3}
    assert manifest["counts"]["total"]["left_out_pixels"] == 3 * int(far.sum())
    assert manifest["settings"]["masks"]["kind"] == "colour"
    assert sorted(p for s in manifest["patients"].values() for p in s) == ["P0", "P1", "P2"]


def test_index_png_palette_mode_values_and_ignore(tmp_path):
    cmap = class_map().astype(np.int64)
    values = cmap.copy()
    values[0, :] = 255  # an "ignore" border, as VOC-style masks have
    # a palette whose luminance is nothing like the indices: reading luminance would give other classes
    palette = [0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200, 90, 90, 90] + [255, 255, 255] * 251
    src = folder(tmp_path / "src", {f"P{i}_1.png": (tissue(seed=i), f"P{i}_1.png", index_png(values, palette))
                                    for i in range(3)})
    assert Image.open(src / "masks" / "P0_1.png").mode == "P"
    with pytest.raises(DataError, match=r"P0_1.png: value\(s\) 255 \(56 px\) not in the value map: say their class "
                                        r"with --mask-values VALUE:CLASS \(CLASS may be ignore\); mask value -> class: 0 "):
        prepare(src, tmp_path / "bad", MaskFolderSpec("index", values=parse_value_map()), on_error="fail")
    assert not (tmp_path / "bad").exists()
    spec = MaskFolderSpec("index", values=parse_value_map("0:background 1:Epithelial 2:Lymphocyte 3:Neutrophil "
                                                          "4:Macrophage 255:ignore"))
    prepare(src, tmp_path / "prep", spec)
    label, inst, amb = read_entry(tmp_path / "prep", entries(tmp_path / "prep")["P1_1"])
    expected = cmap.copy()
    expected[0, :] = 0
    assert np.array_equal(label, expected) and amb[0].all() and not amb[1:].any()


def test_palette_tiff_gives_indices_or_its_colours(tmp_path):
    cmap = class_map()
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :5] = MONUSAC.T.astype(np.uint16) * 257  # TIFF colour maps are 16-bit
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, cmap, photometric="palette", colormap=colormap)
    assert np.array_equal(read_mask(path, colour=False), cmap)
    assert np.array_equal(read_mask(path, colour=True), MONUSAC[cmap])


def test_sixteen_bit_index_values_are_not_cut(tmp_path):
    values = class_map().astype(np.uint16) * 300  # 300 -> Epithelial ...; cut to 8 bits 300 would read as 44
    path = tmp_path / "m.png"
    Image.fromarray(values).save(path)
    assert read_mask(path, colour=False).max() == 1200
    vm = parse_value_map("0:background 300:Epithelial 600:Lymphocyte 900:Neutrophil 1200:Macrophage")
    assert np.array_equal(vm.classify(read_mask(path, colour=False))[0], class_map())


def test_instance_tiff_with_class_table(tmp_path):
    cmap = class_map()
    inst = np.zeros(cmap.shape, np.int32)
    inst[4:16, 4:12], inst[4:16, 12:20] = 7, 9  # two touching Epithelial nuclei stay two
    inst[20:34, 6:18], inst[5:15, 30:44], inst[22:36, 30:50] = 70000, 3, 4
    table = tmp_path / "classes.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "instance", "class"])
        for name in ("P0_1", "P1_1", "P2_1"):
            w.writerows([[name, 7, "Epithelial"], [name, 9, "epithelial"], [name, 70000, "Lymphocyte"],
                         [name, 3, "Neutrophil"], [name, 4, "ignore"]])

    def write(path):
        tifffile.imwrite(path, inst)

    src = folder(tmp_path / "src", {f"P{i}_1.png": (tissue(seed=i), f"P{i}_1.tif", write) for i in range(3)})
    spec = MaskFolderSpec("instance", instance_classes=read_instance_classes(table), instance_table=str(table))
    manifest = prepare(src, tmp_path / "prep", spec)
    e = entries(tmp_path / "prep")["P2_1"]
    label, out_inst, amb = read_entry(tmp_path / "prep", e)
    expected = np.where(cmap == 4, 0, cmap)
    assert np.array_equal(label, expected) and np.array_equal(amb > 0, cmap == 4)
    assert len(np.unique(out_inst[4:16, 4:20])) == 2  # the touching pair: two ids
    assert "semantic_only" not in e
    assert manifest["counts"]["total"]["nuclei"] == {"Epithelial": 6, "Lymphocyte": 3, "Neutrophil": 3, "Macrophage": 0}
    # an instance without a class is refused, naming the mask and the table
    inst[0, 0] = 5
    tifffile.imwrite(src / "masks" / "P0_1.tif", inst)
    with pytest.raises(DataError, match=r"P0_1.tif: instance\(s\) 5 have no class in .*classes.csv"):
        prepare(src, tmp_path / "bad", spec, on_error="fail")


def test_specks_take_the_class_of_their_surroundings(tmp_path):
    values = class_map().astype(np.uint8)
    values[8:10, 6:8] = 2  # a 4 px Lymphocyte speck inside the Epithelial nucleus
    values[38, 54] = 3  # a 1 px Neutrophil speck on background
    path = tmp_path / "src"
    folder(path, {f"P{i}_1.png": (tissue(seed=i), f"P{i}_1.png", index_png(values)) for i in range(3)})
    manifest = prepare(path, tmp_path / "prep", MaskFolderSpec("index", values=parse_value_map(), min_size=5))
    label, _, _ = read_entry(tmp_path / "prep", entries(tmp_path / "prep")["P0_1"])
    assert np.array_equal(label, class_map())
    assert manifest["counts"]["total"]["specks_removed"] == 6


# ---------------------------------------------------------------------------------------------- pairing, bad input
def test_pairing_by_name_not_by_listing_order(tmp_path):
    cmap = class_map()
    src = folder(tmp_path / "src", {
        "b_1.tif": (tissue(seed=1), "b_1.tiff", colour_jpeg(cmap)),  # listing order would pair a with b
        "a_1.jpg": (tissue(seed=2), "a_1.png", lambda p: Image.fromarray(MONUSAC[np.fliplr(cmap)]).save(p)),
        "c_1.png": (tissue(seed=3), "c_1.jpg", colour_jpeg(cmap)),
    })
    cases, problems = scan_mask_folder(src)
    assert [(c.name, os.path.basename(c.mask)) for c in cases] == [("a_1", "a_1.png"), ("b_1", "b_1.tiff"),
                                                                   ("c_1", "c_1.jpg")]
    assert problems == []
    prepare(src, tmp_path / "prep", COLOUR)
    label, _, _ = read_entry(tmp_path / "prep", entries(tmp_path / "prep")["a_1"])
    assert np.array_equal(label, np.fliplr(cmap))


def test_mask_suffix_and_unpaired_files(tmp_path):
    cmap = class_map()
    src = folder(tmp_path / "src", {f"P{i}_1.jpg": (tissue(seed=i), f"P{i}_1_mask.png", index_png(cmap))
                                    for i in range(3)})
    _, problems = scan_mask_folder(src)
    assert str(problems[0]) == (f"{src / 'images' / 'P0_1.jpg'}: no mask masks/P0_1.(png|tif|tiff|jpg|jpeg) "
                                "(the masks' names end in '_mask': give --mask-suffix)")
    assert str(problems[-1]) == f"{src / 'masks' / 'P2_1_mask.png'}: mask without image (no images/P2_1_mask.*)"
    cases, problems = scan_mask_folder(src, mask_suffix="_mask")
    assert len(cases) == 3 and problems == []
    os.remove(src / "images" / "P2_1.jpg")
    (src / "masks" / "notes.txt").write_text("x")
    _, problems = scan_mask_folder(src, mask_suffix="_mask")
    assert [str(p) for p in problems] == [
        f"{src / 'masks' / 'notes.txt'}: not a PNG, TIFF or JPEG file (.png, .tif, .tiff, .jpg, .jpeg)",
        f"{src / 'masks' / 'P2_1_mask.png'}: mask without image (no images/P2_1.*)"]


def test_bad_files_skip_or_fail(tmp_path):
    cmap = class_map()
    pairs = {f"P{i}_1.png": (tissue(seed=i), f"P{i}_1.png", index_png(cmap)) for i in range(4)}
    src = folder(tmp_path / "src", pairs)
    Image.fromarray(cmap[:30]).save(src / "masks" / "P1_1.png")  # another size
    data = (src / "masks" / "P2_1.png").read_bytes()
    (src / "masks" / "P2_1.png").write_bytes(data[: len(data) // 2])  # truncated
    Image.fromarray(cmap * 255 // 4).save(src / "masks" / "P3_1.png")  # values 0, 63, 127, 191, 255
    spec = MaskFolderSpec("index", values=parse_value_map())
    with pytest.raises(DataError, match=r"P1_1.png: mask is 56x30 px but its image .*P1_1.png is 56x40 \(width x height\)"):
        prepare(src, tmp_path / "fail", spec, on_error="fail")
    assert not (tmp_path / "fail").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    manifest = prepare(src, tmp_path / "skip", spec)
    problems = {os.path.basename(s["file"]): s["problem"] for s in manifest["skipped"]}
    assert problems["P1_1.png"].startswith("mask is 56x30 px but its image")
    assert problems["P2_1.png"].startswith("unreadable mask (")
    assert problems["P3_1.png"].startswith("value(s) 63 (")
    assert list(entries(tmp_path / "skip")) == ["P0_1"]


def test_on_error_fail_stops_at_the_first_bad_file_before_the_split(tmp_path, capsys, caplog):
    cmap = class_map()
    epithelial = np.where(cmap == 1, 1, 0).astype(np.uint8)
    pairs = {f"P{i}_1.png": (tissue(seed=i), f"P{i}_1.png", index_png(cmap if i == 0 else epithelial))
             for i in range(5)}
    src = folder(tmp_path / "src", pairs)
    Image.fromarray(cmap[:30]).save(src / "masks" / "P1_1.png")  # another size: found from the image's header
    data = (src / "masks" / "P2_1.png").read_bytes()
    (src / "masks" / "P2_1.png").write_bytes(data[: len(data) // 2])  # truncated
    command = ["prepare", "--data-dir", str(src), "--index-masks", "--stain", "none", "--workers", "0"]
    split_warning = "no split of 200 draws holds every class in every split: test lacks Lymphocyte, Macrophage, Neutrophil"
    with caplog.at_level("WARNING"):
        assert cli_main([*command, "--out-dir", str(tmp_path / "fail"), "--on-error", "fail"]) == 1
    assert split_warning not in caplog.messages  # no split was drawn: no "no split of 200 draws ..." warning
    err = capsys.readouterr().err
    assert err == (f"nasscam prepare: error: {src / 'masks' / 'P1_1.png'}: mask is 56x30 px but its image "
                   f"{src / 'images' / 'P1_1.png'} is 56x40 (width x height)\n")
    assert sorted(os.listdir(tmp_path)) == ["src"]
    with caplog.at_level("WARNING"):  # skip: reported, skipped, and the split's warning shown and kept
        assert cli_main([*command, "--out-dir", str(tmp_path / "skip")]) == 0
    assert caplog.messages[-1] == split_warning
    assert json.loads((tmp_path / "skip" / "manifest.json").read_text())["split_notes"] == [split_warning]
    assert sorted(entries(tmp_path / "skip")) == ["P0_1", "P3_1", "P4_1"]


def test_single_channel_masks_given_to_a_colour_palette_are_refused(tmp_path, capsys):
    cmap = class_map()
    single = "a single-channel (grey) image, while --palette reads colour masks: read class-index masks with --index-masks"
    writers = {
        "P0_1.png": ("P0_1.png", lambda p: Image.fromarray(cmap).save(p)),  # L: class indices 0-4
        "P1_1.png": ("P1_1.png", lambda p: Image.fromarray(cmap.astype(np.uint16)).save(p)),  # I;16
        "P2_1.png": ("P2_1.tif", lambda p: Image.fromarray(cmap.astype(np.int32)).save(p)),  # I (32-bit TIFF)
        "P3_1.png": ("P3_1.png", lambda p: Image.fromarray(MONUSAC[cmap]).convert("L").save(p)),  # colour saved grey
        "P4_1.png": ("P4_1.tif", lambda p: tifffile.imwrite(p, cmap)),  # grey TIFF
        "P5_1.png": ("P5_1.png", lambda p: Image.fromarray(np.dstack([cmap, np.full_like(cmap, 255)])).save(p)),  # LA
    }
    src = folder(tmp_path / "src", {k: (tissue(seed=i), *w) for i, (k, w) in enumerate(writers.items())})
    from monai_nasscam.data.mask_folder import load_folder_case
    for case in scan_mask_folder(src)[0]:
        with pytest.raises(DataError, match="^" + re.escape(f"{case.mask}: {single}") + "$"):
            load_folder_case(case, COLOUR)
    command = ["prepare", "--data-dir", str(src), "--palette", "monusac", "--stain", "none", "--workers", "0"]
    assert cli_main([*command, "--out-dir", str(tmp_path / "fail"), "--on-error", "fail"]) == 1
    assert capsys.readouterr().err == f"nasscam prepare: error: {src / 'masks' / 'P0_1.png'}: {single}\n"
    Image.fromarray(MONUSAC[cmap]).save(src / "masks" / "P0_1.png")  # one colour mask: the others are skipped
    assert cli_main([*command, "--out-dir", str(tmp_path / "skip")]) == 0
    skipped = json.loads((tmp_path / "skip" / "manifest.json").read_text())["skipped"]
    assert skipped == [{"file": str(src / "masks" / m), "problem": single}
                       for m in ("P1_1.png", "P2_1.tif", "P3_1.png", "P4_1.tif", "P5_1.png")]
    assert sorted(os.listdir(tmp_path)) == ["skip", "src"]
    # a palette of grey colours reads grey masks: their values are the colours
    grey = MaskFolderSpec("colour", palette=parse_palette(["background=0,0,0", "Epithelial=1,1,1", "Lymphocyte=2,2,2",
                                                           "Neutrophil=3,3,3", "Macrophage=4,4,4", "ignore=255,0,0"]),
                          tolerance=0.5, min_size=0)
    case = {c.name: c for c in scan_mask_folder(src)[0]}["P4_1"]
    assert np.array_equal(load_folder_case(case, grey)[1].class_map, cmap)


def test_no_annotated_nucleus_is_refused_before_anything_is_written(tmp_path, capsys):
    black = np.zeros((40, 56, 3), np.uint8)
    src = folder(tmp_path / "src", {f"P{i}_1.png": (tissue(seed=i), f"P{i}_1.png", lambda p: Image.fromarray(black).save(p))
                                    for i in range(3)})
    assert cli_main(["prepare", "--data-dir", str(src), "--out-dir", str(tmp_path / "prep"), "--palette", "monusac",
                     "--stain", "none", "--workers", "0"]) == 1
    assert capsys.readouterr().err == (
        f"nasscam prepare: error: {src}: no annotated nucleus in any image: the label maps of all 3 image(s) read are "
        "background (do the masks hold what the mask option says? --palette reads colours, --index-masks class "
        "indices (--mask-values))\n")
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_binary_and_colour_masks_given_as_indices_are_refused(tmp_path):
    cmap = class_map()
    src = folder(tmp_path / "src", {
        "P0_1.png": (tissue(), "P0_1.png", lambda p: Image.fromarray(((cmap > 0) * 255).astype(np.uint8)).save(p)),
        "P1_1.png": (tissue(), "P1_1.png", lambda p: Image.fromarray(MONUSAC[cmap]).save(p)),
        "P2_1.png": (tissue(), "P2_1.jpg", colour_jpeg(cmap)),
    })
    spec = MaskFolderSpec("index", values=parse_value_map())
    with pytest.raises(DataError, match="no usable annotated image"):  # every file is refused
        prepare(src, tmp_path / "prep", spec)
    from monai_nasscam.data.mask_folder import load_folder_case
    cases = {c.name: c for c in scan_mask_folder(src)[0]}
    with pytest.raises(DataError, match=r"value\(s\) 255 \(\d+ px\) not in the value map \(a 0/255 binary mask\?\)"):
        load_folder_case(cases["P0_1"], spec)
    with pytest.raises(DataError, match=r"a colour mask \(its R, G, B differ\), not class indices: read colour masks "
                                        "with --palette"):
        load_folder_case(cases["P1_1"], spec)
    with pytest.raises(DataError, match="a JPEG cannot hold exact class indices"):
        load_folder_case(cases["P2_1"], spec)


def test_alpha_band_and_missing_palette_colour(tmp_path):
    cmap = class_map()
    rgba = np.dstack([MONUSAC[cmap], np.full(cmap.shape, 255, np.uint8)])
    src = folder(tmp_path / "src", {"P0_1.png": (tissue(), "P0_1.png", lambda p: Image.fromarray(rgba).save(p))})
    from monai_nasscam.data.mask_folder import load_folder_case
    case = scan_mask_folder(src)[0][0]
    assert np.array_equal(load_folder_case(case, COLOUR)[1].class_map, cmap)  # constant alpha: dropped
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(case.mask)
    with pytest.raises(DataError, match="alpha band varies"):
        load_folder_case(case, COLOUR)
    no_blue = MaskFolderSpec("colour", palette=parse_palette(["background=0,0,0", "Epithelial=0,255,0",
                                                              "Lymphocyte=255,255,0", "Neutrophil=255,0,0"]))
    Image.fromarray(MONUSAC[cmap]).save(case.mask)
    with pytest.raises(DataError, match=r"280 pixels match no colour of \(command line\) within 100, some in solid "
                                        r"regions \(most common there: \(0, 0, 255\)\): a colour missing"):
        load_folder_case(case, no_blue)


def test_exif_orientation_is_resolved_by_size_or_refused(tmp_path):
    from monai_nasscam.data.mask_folder import load_folder_case
    cmap = class_map()  # 40 x 56: not square
    image = tissue()
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "masks")
    Image.fromarray(image).save(tmp_path / "images" / "a_1.jpg", exif=exif.tobytes(), quality=95)
    # a mask drawn on the displayed image: the image is turned to match it
    Image.fromarray(np.rot90(cmap, -1).copy()).save(tmp_path / "masks" / "a_1.png")
    case = scan_mask_folder(tmp_path)[0][0]
    img, masks = load_folder_case(case, MaskFolderSpec("index", values=parse_value_map()))
    assert img.shape[:2] == (56, 40) and np.array_equal(masks.class_map, np.rot90(cmap, -1))
    assert "turned as displayed" in masks.warnings[0]
    # a mask drawn on the stored pixels: used as stored
    Image.fromarray(cmap).save(tmp_path / "masks" / "a_1.png")
    img, masks = load_folder_case(case, MaskFolderSpec("index", values=parse_value_map()))
    assert img.shape[:2] == (40, 56) and np.array_equal(masks.class_map, cmap)
    # a square pair matches both ways: refused
    Image.fromarray(image[:40, :40]).save(case.image, exif=exif.tobytes(), quality=95)
    Image.fromarray(cmap[:40, :40]).save(case.mask)
    with pytest.raises(DataError, match=r"a_1.jpg: EXIF orientation 6 \(turned 90 degrees clockwise for display\), "
                                        "its mask no EXIF orientation: the pair matches both"):
        load_folder_case(case, MaskFolderSpec("index", values=parse_value_map()))


# ------------------------------------------------------------------------------------------------------------ CLI
def test_cli_prints_the_value_map_and_records_mpp(tmp_path, capsys):
    cmap = class_map()
    src = folder(tmp_path / "src", {f"TCGA-AA-000{i}-01Z-00-DX1_1.png": (tissue(seed=i), f"TCGA-AA-000{i}-01Z-00-DX1_1.png",
                                                                        index_png(cmap)) for i in range(3)})
    out = tmp_path / "prep"
    assert cli_main(["prepare", "--data-dir", str(src), "--out-dir", str(out), "--index-masks", "--mpp", "0.5",
                     "--stain", "none", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("index masks, mask value -> class: 0 background, 1 Epithelial, 2 Lymphocyte, "
                              "3 Neutrophil, 4 Macrophage (change with --mask-values)\n")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resolution"]["mpp"] == 0.5 and manifest["settings"]["mpp"] == 0.5
    assert sorted(p for s in manifest["patients"].values() for p in s) == ["TCGA-AA-0000", "TCGA-AA-0001", "TCGA-AA-0002"]
    # no mask kind: one line saying which options exist; a misplaced option: one line
    assert cli_main(["prepare", "--data-dir", str(src), "--out-dir", str(tmp_path / "x")]) == 1
    assert "an image + mask folder (images/, masks/): say how its masks give classes with --palette" in capsys.readouterr().err
    assert cli_main(["prepare", "--data-dir", str(src), "--out-dir", str(tmp_path / "x"), "--palette", "monusac",
                     "--mask-values", "1:Epithelial"]) == 1
    assert "--mask-values applies to index masks only (--index-masks)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- semantic evaluation
def test_evaluation_of_semantic_only_ground_truth_leaves_instance_metrics_out(tmp_path):
    cmap = np.zeros((8, 8), np.uint8)
    cmap[0:2, 0:2] = 1
    label = torch.as_tensor(np.stack([(cmap == c).astype(np.float32) for c in range(1, 5)]))[None]
    batch = {"image": 20 * label - 10, "label": label, "instance": torch.as_tensor(cmap.astype(np.int32))[None, None],
             "class_map": torch.as_tensor(cmap)[None, None], "semantic_only": torch.tensor([True])}
    protocol = {"split": "fixed", "pq": "x", "instance_metrics": "y"}
    metrics, _ = evaluate_fixed(tmp_path, [batch, dict(batch)], **{"validate#protocol": protocol})
    assert metrics["dice"]["Epithelial"] == 1.0
    assert metrics["pq"] == {"Epithelial": None, "Lymphocyte": None, "Neutrophil": None, "Macrophage": None, "mean": None}
    assert not {"aji", "aji_plus", "f1_detection", "f1_classification", "mpq_plus", "pq_monusac_official"} & set(metrics)
    assert metrics["instance_metrics_left_out"].startswith("left out: the ground truth of 2 of 2 images is semantic-only")
    assert metrics["protocol"] == {"split": "fixed", "images": 2}
    table = (tmp_path / "metrics.md").read_text()
    assert "Instance metrics (PQ, AJI, F1, mPQ+): left out: the ground truth of 2 of 2 images" in table
    assert "| PQ" not in table
    # a split known to be semantic-only (evaluate.yaml's semantic_only: no instance metric computed) says the same
    metrics, _ = evaluate_fixed(tmp_path / "known", [batch, dict(batch)], **{"validate#protocol": protocol, "semantic_only": True})
    assert metrics["instance_metrics_left_out"].startswith("left out: the ground truth of 2 of 2 images is semantic-only")


def test_evaluate_yaml_skips_instance_metrics_for_a_semantic_only_split(tmp_path):
    """A split whose entries are all semantic-only: evaluate.yaml attaches no PQ / AJI metric (nothing computed);
    a dataset with instance ground truth (or none readable) keeps them."""
    from monai.bundle import ConfigParser

    from monai_nasscam.data.datalist import semantic_only_split

    src = folder(tmp_path / "src", {f"P{i}_1.jpg": (tissue(seed=i), f"P{i}_1.jpg", colour_jpeg(class_map())) for i in range(3)})
    prepare(src, tmp_path / "prep", COLOUR)
    assert semantic_only_split(tmp_path / "prep", "all") is True
    assert semantic_only_split(tmp_path / "missing", "test") is False
    data = json.loads((tmp_path / "prep" / "datalist.json").read_text())
    data["training"][0].pop("semantic_only")  # one entry with instance ground truth
    (tmp_path / "prep" / "datalist.json").write_text(json.dumps(data))
    assert semantic_only_split(tmp_path / "prep", "all") is False

    for split, expected in (("validation", ["dice_per_image"]), ("training", ["dice_per_image", "pq", "aji"])):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")])
        parser["dataset_dir"], parser["eval_split"] = str(tmp_path / "prep"), split
        parser["attention"], parser["output_dir"] = "unet", str(tmp_path / "run")
        assert sorted(parser.get_parsed_content("validate#additional_metrics")) == sorted(expected)
        writer = parser.get_parsed_content("validate#handlers")[-1]
        assert writer.semantic_only is (True if split == "validation" else None)


def test_pictures_use_the_monusac_mask_colours():
    """Overlays, GeoJSON and figures colour each class as the MoNuSAC colour masks do (the ``monusac`` preset)."""
    from monai_nasscam.data.classes import CLASS_COLORS, CLASS_IDS
    from monai_nasscam.data.palette import PALETTE_PRESETS

    assert {name: CLASS_COLORS[i] for name, i in CLASS_IDS.items()} == {
        k: v for k, v in PALETTE_PRESETS["monusac"].items() if k in CLASS_IDS}
