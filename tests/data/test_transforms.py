"""Training / validation transforms: orientation, padding, targets, class-balanced crops, augmentations."""

import json

import numpy as np
import pytest
import tifffile
import torch
from monai.data import DataLoader, load_decathlon_datalist
from skimage.draw import polygon as sk_polygon

from monai_nasscam.data import (
    ClassBalancedCropDataset,
    ClassMapToMultiLabeld,
    RandClassCropd,
    RandMedianSmoothd,
    generate_dataset,
    grid_windows,
    prepare_dataset,
    train_transforms,
    val_transforms,
)
from monai_nasscam.data.chains import AUGMENTATION_DEFAULTS

NO_AUG = {k: 0.0 for k in AUGMENTATION_DEFAULTS}


@pytest.fixture(scope="module")
def asym(tmp_path_factory):
    """A 48 x 80 tile with one asymmetric (L-shaped) nucleus, prepared without stain normalisation."""
    root = tmp_path_factory.mktemp("asym")
    raw = root / "raw" / "TCGA-XX-0001-01Z-00-DX1"
    raw.mkdir(parents=True)
    h, w = 48, 80
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    tifffile.imwrite(raw / "a_1.tif", image, photometric="rgb")
    verts = [(5.0, 4.0), (60.0, 4.0), (60.0, 14.0), (16.0, 14.0), (16.0, 40.0), (5.0, 40.0)]  # (x, y)
    vx = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in verts)
    (raw / "a_1.xml").write_text(
        '<Annotations><Annotation Name=""><Attributes><Attribute Name="Neutrophil"/></Attributes><Regions>'
        f'<RegionAttributeHeaders/><Region Id="1"><Vertices>{vx}</Vertices></Region></Regions></Annotation></Annotations>'
    )
    prep = root / "prep"
    prepare_dataset(root / "raw", prep, split="image", stain="none", workers=0, progress=False)
    v = np.asarray(verts)
    expected = np.zeros((h, w), np.uint8)
    rr, cc = sk_polygon(v[:, 1], v[:, 0], (h, w))
    expected[rr, cc] = 3
    entry = next(e for s in ("training", "validation", "test") for e in json.loads((prep / "datalist.json").read_text())[s])
    item = {k: str(prep / entry[k]) for k in ("image", "label", "instance")}
    return item, image, expected


def test_asymmetric_polygon_lands_on_same_pixels(asym):
    item, image, expected = asym
    assert expected[5, 55] == 3 and expected[35, 8] == 3 and expected[35, 55] == 0  # really asymmetric
    out = val_transforms(load_instance=True)(dict(item))
    assert out["image"].shape == (3, 48, 80) and out["label"].shape == (4, 48, 80)
    np.testing.assert_array_equal(out["class_map"][0].numpy(), expected)
    np.testing.assert_array_equal(out["label"][2].numpy(), (expected == 3).astype(np.float32))
    np.testing.assert_array_equal(out["instance"][0].numpy(), (expected > 0).astype(np.int32))
    np.testing.assert_allclose(out["image"].numpy(), np.moveaxis(image, -1, 0) / 255.0, atol=1e-6)
    # the training chain without augmentation, crop = whole tile
    tr = train_transforms(roi_size=(48, 80), **NO_AUG)
    tr.set_random_state(0)
    t = tr(dict(item))
    np.testing.assert_array_equal(t["class_map"][0].numpy(), expected)
    np.testing.assert_allclose(t["image"].numpy(), np.moveaxis(image, -1, 0) / 255.0, atol=1e-6)
    # a crop at a requested centre is the same window of the tile
    tr = train_transforms(roi_size=(16, 32), **NO_AUG)
    t = tr({**item, "crop_center": (20, 30)})
    np.testing.assert_array_equal(t["class_map"][0].numpy(), expected[12:28, 14:46])


def test_small_tiles_are_padded(asym):
    item, image, expected = asym
    tr = train_transforms(roi_size=(64, 96), **NO_AUG)
    t = tr(dict(item))
    assert t["image"].shape == (3, 64, 96) and t["label"].shape == (4, 64, 96)
    # symmetric padding: 8 rows above, 8 columns left, white image and background label
    np.testing.assert_array_equal(t["class_map"][0, 8:56, 8:88].numpy(), expected)
    assert float(t["image"][:, :8].min()) == 1.0 and int(t["class_map"][0, :8].max()) == 0


def test_targets_and_dtypes(asym):
    item, _, _ = asym
    t = train_transforms(roi_size=(32, 32))(dict(item))
    assert t["image"].dtype == torch.float32 and 0.0 <= float(t["image"].min()) and float(t["image"].max()) <= 1.0
    assert t["label"].dtype == torch.float32 and t["label"].shape == (4, 32, 32)
    assert t["class_map"].dtype == torch.uint8
    assert float(t["label"].sum(0).max()) <= 1.0
    onehot = torch.stack([(t["class_map"][0] == c).float() for c in range(1, 5)])
    assert torch.equal(t["label"].as_tensor() if hasattr(t["label"], "as_tensor") else t["label"], onehot)
    c = train_transforms(roi_size=(32, 32), label_format="classmap")(dict(item))
    assert c["label"].shape == (1, 32, 32) and c["label"].dtype == torch.int64
    with pytest.raises(ValueError, match="label_format"):
        train_transforms(label_format="softmax")


def test_class_map_to_multilabel_and_median():
    d = ClassMapToMultiLabeld(keys="label")({"label": torch.tensor([[[0, 1], [3, 4]]], dtype=torch.uint8)})
    assert d["label"].shape == (4, 2, 2) and d["label"][0, 0, 1] == 1 and d["label"][2, 1, 0] == 1 and d["label"][:, 0, 0].sum() == 0
    img = torch.zeros(1, 5, 5)
    img[0, 2, 2] = 1.0
    m = RandMedianSmoothd(keys="img", radius=1, prob=1.0)({"img": img})
    assert float(m["img"].max()) == 0.0  # isolated spike removed
    assert torch.equal(RandMedianSmoothd(keys="img", prob=0.0)({"img": img})["img"], img)


def test_rand_class_crop_cycles_present_classes():
    cmap = torch.zeros(1, 40, 40, dtype=torch.uint8)
    cmap[0, 2:5, 2:5] = 1
    cmap[0, 30:33, 30:33] = 4
    crop = RandClassCropd(keys=["label"], label_key="label", spatial_size=(8, 8), num_samples=4)
    crop.set_random_state(0)
    outs = crop({"label": cmap})
    assert sorted(o["crop_class"] for o in outs) == [1, 1, 4, 4]
    for o in outs:
        assert o["label"].shape == (1, 8, 8) and (o["label"] == o["crop_class"]).any()


def test_grid_windows():
    w = grid_windows((600, 256), (256, 256), (128, 128))
    assert sorted({r for r, _ in w}) == [0, 128, 256, 344] and {c for _, c in w} == {0}
    assert grid_windows((100, 120), (256, 256), (128, 128)) == [(0, 0)]


@pytest.fixture(scope="module")
def balanced_prep(tmp_path_factory):
    root = tmp_path_factory.mktemp("bal")
    generate_dataset(
        root / "raw", n_images=6, n_patients=3, seed=2, min_size=96, max_size=200,
        class_frequencies={"Epithelial": 1, "Lymphocyte": 1, "Neutrophil": 1, "Macrophage": 1},
    )
    prepare_dataset(root / "raw", root / "prep", split="image", stain="none", workers=0, progress=False)
    dl = []
    for s in ("training", "validation", "test"):
        dl += load_decathlon_datalist(str(root / "prep" / "datalist.json"), data_list_key=s, base_dir=str(root / "prep"))
    return dl


@pytest.mark.parametrize("mode", ["pixel", "grid"])
def test_class_balance_over_many_batches(balanced_prep, mode):
    tr = train_transforms(roi_size=(48, 48), **NO_AUG)
    ds = ClassBalancedCropDataset(balanced_prep, tr, num_groups=40, mode=mode, roi_size=(48, 48), stride=(24, 24), seed=1)
    loader = DataLoader(ds, batch_size=2, num_workers=0)
    seen = centred = 0
    for batch in loader:
        assert batch["image"].shape == (8, 3, 48, 48) and batch["label"].shape == (8, 4, 48, 48)
        counts = torch.bincount(batch["crop_class"], minlength=5)[1:]
        assert counts.tolist() == [2, 2, 2, 2]
        for k in range(8):  # every crop contains the class it was drawn for
            assert batch["label"][k, int(batch["crop_class"][k]) - 1].sum() > 0
            centred += int(batch["class_map"][k, 0, 24, 24]) == int(batch["crop_class"][k])
        seen += 1
    assert seen == 20
    if mode == "pixel":  # centred on a pixel of the class unless moved to stay inside the tile
        assert centred > 0.5 * 160


def test_balanced_dataset_with_augmentation_is_seeded(balanced_prep):
    def first(seed):
        ds = ClassBalancedCropDataset(balanced_prep, train_transforms(roi_size=(48, 48)), num_groups=3, seed=seed)
        return [ds[i] for i in range(3)]

    a, b, c = first(0), first(0), first(5)
    for ga, gb in zip(a, b):
        for x, y in zip(ga, gb):
            assert torch.equal(torch.as_tensor(x["image"]), torch.as_tensor(y["image"]))
            assert torch.equal(torch.as_tensor(x["label"]), torch.as_tensor(y["label"]))
    assert any(not torch.equal(torch.as_tensor(x["image"]), torch.as_tensor(y["image"])) for g, h in zip(a, c) for x, y in zip(g, h))
    assert [x["crop_class"] for g in a for x in g] == [1, 2, 3, 4] * 3


def test_bundle_style_instantiation(balanced_prep):
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {
            "roi": [48, 48],
            "train": {"_target_": "monai_nasscam.data.chains.train_transforms", "roi_size": "@roi", "elastic_prob": 0.5},
            "val": {"_target_": "monai_nasscam.data.chains.val_transforms"},
            "ds": {
                "_target_": "monai_nasscam.data.ClassBalancedCropDataset",
                "data": "$@data",
                "transform": "@train",
                "num_groups": 2,
            },
            "data": balanced_prep[:3],
        }
    )
    ds = parser.get_parsed_content("ds")
    assert len(ds) == 2 and len(ds[0]) == 4 and ds[0][0]["image"].shape == (3, 48, 48)
    assert parser.get_parsed_content("val") is not None


def test_balanced_dataset_rejects_multi_sample_crop(balanced_prep):
    with pytest.raises(ValueError, match="num_samples=1"):
        ClassBalancedCropDataset(balanced_prep[:2], train_transforms(roi_size=(48, 48), num_samples=4))


def test_loaded_images_are_writable_arrays_so_torch_does_not_warn(tmp_path):
    # numpy.asarray of a PIL image is a read-only view; torch.as_tensor of it warns "The given NumPy array is not
    # writable" (once per process, so the warning itself cannot be caught reliably here: the arrays are checked)
    from monai.data import PILReader
    from PIL import Image

    from monai_nasscam.data.chains import load_transforms
    from monai_nasscam.data.transforms import WritablePILReader

    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert not PILReader(reverse_indexing=False).get_data(Image.open(tmp_path / "a.png"))[0].flags.writeable
    data, _ = WritablePILReader(reverse_indexing=False).get_data(Image.open(tmp_path / "a.png"))
    assert data.flags.writeable and np.array_equal(data, pixels)
    loaded = {"image": str(tmp_path / "a.png")}
    for t in load_transforms(keys=("image",)):
        loaded = t(loaded)
    assert loaded["image"].shape == (3, 4, 5) and torch.equal(loaded["image"].as_tensor(), torch.as_tensor(pixels).permute(2, 0, 1))
