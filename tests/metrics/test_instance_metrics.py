"""Instance metrics (AJI, AJI+, HoVer-Net detection / classification F1, mPQ+) and the instance separation, on
worked examples whose values are computed by hand in the comments."""

import ast
import math

import numpy as np
import pytest
import torch

from monai_nasscam.handlers.evaluation import metrics_markdown
from monai_nasscam.inference.instances import (
    InstanceSeparator,
    instances_from_class_map,
    separate_instances,
    watershed_instances,
)
from monai_nasscam.metrics import (
    InstanceMetric,
    PooledPQMetric,
    aggregated_jaccard_index,
    detection_counts,
    f1_from_counts,
    flatten_instances,
    instance_metrics_dict,
    metrics_dict,
    mpq_plus,
    pair_centroids,
)
from tests.utils import REPO, evaluate_fixed


def _touching_image():
    """Image 1 (6 x 12, 3 classes): two touching 4 x 4 ground-truth nuclei of class 1 (A: rows 1-4, cols 1-4; B:
    rows 1-4, cols 5-8), predicted as one 4 x 8 nucleus P (what connected components make of them)."""
    gt = np.zeros((3, 6, 12), np.int64)
    gt[0, 1:5, 1:5], gt[0, 1:5, 5:9] = 1, 2
    pred = np.zeros((3, 6, 12), np.int64)
    pred[0, 1:5, 1:9] = 1
    return gt, pred


def _classes_image():
    """Image 2 (6 x 16, 3 classes): a class-1 nucleus found exactly; a class-2 nucleus found at the right place
    but as class 1 (class 2: ground truth, no prediction); class 3: neither ground truth nor prediction."""
    gt = np.zeros((3, 6, 16), np.int64)
    gt[0, 1:4, 1:4] = 1
    gt[1, 1:4, 10:13] = 1
    pred = np.zeros((3, 6, 16), np.int64)
    pred[0, 1:4, 1:4] = 1
    pred[0, 1:4, 10:13] = 2
    return gt, pred


def test_aji_touching_nuclei():
    gt, pred = _touching_image()
    g, p = flatten_instances(gt), flatten_instances(pred)
    # AJI: A and B both take P (IoU 16 / 32 each): C = 16 + 16, U = 32 + 32 -> 0.5
    assert aggregated_jaccard_index(g, p) == pytest.approx(0.5)
    # AJI+: P pairs with one of them only: C = 16, U = 32 + 16 (the unpaired one) -> 1/3
    assert aggregated_jaccard_index(g, p, plus=True) == pytest.approx(1 / 3)
    # no overlap at all: C = 0, U = both areas
    assert aggregated_jaccard_index(g, np.roll(p, 4, axis=0) * 0) == 0.0
    assert math.isnan(aggregated_jaccard_index(np.zeros((3, 3)), np.zeros((3, 3))))


def test_detection_and_classification_counts():
    gt, pred = _touching_image()
    # centroids A (2.5, 2.5), B (2.5, 6.5), P (2.5, 4.5): both at 2 px, one pair; B unpaired
    c = detection_counts(gt, pred)
    assert c[:3].tolist() == [1, 0, 1]
    assert c[3:8].tolist() == [1, 0, 0, 0, 1]  # class 1: tp 1, fn_d 1
    gt2, pred2 = _classes_image()
    c2 = detection_counts(gt2, pred2)
    assert c2[:3].tolist() == [2, 0, 0]
    assert c2[3:8].tolist() == [1, 1, 0, 0, 0]  # class 1: one right, one predicted 1 for a 2 (fp_c)
    assert c2[8:13].tolist() == [0, 0, 1, 0, 0]  # class 2: fn_c 1
    assert c2[13:18].tolist() == [0, 0, 0, 0, 0]  # class 3: nothing
    f1_d, f1_c = f1_from_counts(c2)
    assert f1_d == 1.0
    assert f1_c[0] == pytest.approx(2 / (2 + 2))  # 2 tp / (2 tp + 2 fp_c)
    assert f1_c[1] == 0.0  # ground truth but no prediction of the class
    assert math.isnan(f1_c[2])  # empty class: undefined


def test_pair_centroids_radius():
    pairs, un_gt, un_pred = pair_centroids(np.array([[0.0, 0.0]]), np.array([[0.0, 12.0]]))
    assert pairs.tolist() == [[0, 0]] and un_gt.size == 0 and un_pred.size == 0
    pairs, un_gt, un_pred = pair_centroids(np.array([[0.0, 0.0]]), np.array([[0.0, 12.5]]))
    assert pairs.shape == (0, 2) and un_gt.tolist() == [0] and un_pred.tolist() == [0]
    pairs, _, _ = pair_centroids(np.zeros((0, 2)), np.array([[1.0, 1.0]]))
    assert pairs.shape == (0, 2)


def _accumulate(metric, images):
    for gt, pred in images:
        metric(torch.as_tensor(pred[None] > 0), torch.as_tensor(np.concatenate([gt, np.zeros_like(gt[:1])])[None]))
    return metric


def test_instance_metric_pooled_over_two_images():
    images = [_touching_image(), _classes_image()]
    # predictions are given as their own instance stacks, so that the hand-made instances are scored as they are
    stacks = iter([p for _, p in images] * 2)
    metric = _accumulate(InstanceMetric(instance_fn=lambda m: next(stacks), y_format="per_class"), images)
    r = metric.results()
    assert float(r["aji"]) == pytest.approx((0.5 + 1.0) / 2)  # image 2 is perfect class-agnostically: 18 / 18
    assert float(r["aji_plus"]) == pytest.approx((1 / 3 + 1.0) / 2)
    assert float(metric.aggregate()) == pytest.approx(0.75)
    assert float(r["f1_detection"]) == pytest.approx(2 * 3 / (2 * 3 + 0 + 1))  # tp 1 + 2, fn 1
    f1_c = r["f1_classification"].numpy()
    assert f1_c[0] == pytest.approx(4 / (4 + 2 + 1))  # tp 2, fp_c 1, fn_d 1
    assert f1_c[1] == 0.0 and math.isnan(f1_c[2])
    pq = _accumulate(PooledPQMetric(instance_fn=lambda m: next(stacks), y_format="per_class"), images)
    # class 1: image 1 tp 0 fp 1 fn 2 (IoU 0.5 is not > 0.5), image 2 tp 1 (IoU 1) fp 1 -> 1 / (1 + 1.5 + 1)
    # (pooled: tp 1, fp 2, fn 2 -> 1 / 3); class 2: fn 1 -> 0; class 3: undefined -> mPQ+ = (1/3 + 0) / 2
    assert mpq_plus(pq.counts()) == pytest.approx(1 / 6)
    assert mpq_plus(pq.counts()) == pytest.approx(float(pq.aggregate()))


def test_instance_metric_default_is_connected_components():
    gt, pred = _touching_image()
    metric = _accumulate(InstanceMetric(y_format="per_class"), [(gt, pred)])
    assert float(metric.aggregate()) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="radius"):
        InstanceMetric(radius=0)


def _two_discs(radius=10, gap=18):
    """Two touching discs of one class (each 317 px); ground truth cut at the middle column."""
    yy, xx = np.mgrid[:40, :64]
    left = (yy - 20) ** 2 + (xx - 18) ** 2 <= radius**2
    right = (yy - 20) ** 2 + (xx - 18 - gap) ** 2 <= radius**2
    gt = np.where(left & (xx <= 18 + gap // 2), 1, np.where(right, 2, np.where(left, 1, 0)))
    return left | right, gt


def test_watershed_separates_touching_discs_and_raises_pq():
    mask, gt = _two_discs()
    ws = watershed_instances(mask)
    assert ws.max() == 2 and ((ws > 0) == mask).all()
    stack_gt = np.stack([gt, np.zeros_like(gt)])[None]
    pred = torch.as_tensor(np.stack([mask, np.zeros_like(mask)])[None])
    pq_cc = PooledPQMetric(y_format="per_class", reduction="none")
    pq_ws = PooledPQMetric(y_format="per_class", reduction="none", instance_fn=InstanceSeparator("watershed"))
    for m in (pq_cc, pq_ws):
        m(pred, torch.as_tensor(stack_gt))
    # connected components: one nucleus of IoU ~0.51 with one disc, the other disc missed -> PQ ~ 0.51 / 1.5
    assert float(pq_cc.aggregate()[0]) < 0.4
    assert float(pq_ws.aggregate()[0]) > 0.9


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(yy - centre[0], xx - centre[1]) <= radius


@pytest.mark.parametrize("hole", [0.5, 2, 5, 7.5])  # holes of 1, 13, 81 and 177 pixels
def test_a_nucleus_with_a_pale_centre_stays_one_nucleus(hole):
    """A holed nucleus (a ring of distance maxima around the hole) is one nucleus, kept by min_size: before, it
    split into 4-8 pieces under 200 px each and vanished."""
    shape = (64, 64)
    mask = _disc(shape, (32, 32), 13) & ~_disc(shape, (32, 32), hole)
    ws = watershed_instances(mask)
    assert ws.max() == 1 and ((ws > 0) == mask).all()  # the hole stays background
    assert InstanceSeparator("watershed")(mask[None].astype(np.uint8)).max() == 1


def test_holes_are_filled_for_the_split_only_up_to_a_nucleus_size():
    shape = (96, 96)
    two = _disc(shape, (48, 36), 12) | _disc(shape, (48, 58), 12)
    holed = two & ~_disc(shape, (48, 36), 3) & ~_disc(shape, (48, 58), 3)
    ws = watershed_instances(holed)
    assert ws.max() == 2 and ((ws > 0) == holed).all()
    # six touching nuclei around a lumen of 279 px (over WATERSHED_HOLE_AREA): the lumen is not filled, six nuclei
    angles = np.arange(6) * np.pi / 3
    gland = np.zeros(shape, bool)
    for a in angles:
        gland |= _disc(shape, (48 + 19 * np.sin(a), 48 + 19 * np.cos(a)), 10.5)
    assert watershed_instances(gland).max() == 6


def test_separator_options_and_errors():
    mask, _ = _two_discs()
    cc = InstanceSeparator("connected_components")
    assert cc(mask[None]).max() == 1 and cc.params == {}
    assert "connected components" in cc.describe()
    assert "watershed" in InstanceSeparator().describe()
    # large h: no maximum is deep enough except the components' own -> nothing split, nothing lost
    big = watershed_instances(mask, h=50)
    assert big.max() == 1 and ((big > 0) == mask).all()
    # min_distance larger than the disc spacing keeps one marker
    assert watershed_instances(mask, min_distance=30).max() == 1
    assert separate_instances(np.zeros((2, 5, 5)), "watershed").max() == 0
    with pytest.raises(ValueError, match="instance_method"):
        InstanceSeparator("otsu")
    with pytest.raises(ValueError, match="h must be > 0"):
        InstanceSeparator(h=0)
    with pytest.raises(ValueError, match="unknown watershed parameters"):
        separate_instances(mask[None], "watershed", radius=3)
    assert InstanceSeparator.from_config({"method": "connected_components"}).method == "connected_components"


def test_instances_from_class_map():
    mask, _ = _two_discs()
    class_map = np.where(mask, 2, 0).astype(np.uint8)
    class_map[:3, :3] = 4
    inst, classes = instances_from_class_map(class_map, separator=InstanceSeparator(min_size=0))
    assert inst.max() == 3 and classes.tolist() == [2, 2, 4]
    assert (inst[:3, :3] == 3).all()
    inst, classes = instances_from_class_map(class_map)  # the default drops the 9-px speck (min_size 200)
    assert inst.max() == 2 and classes.tolist() == [2, 2] and not inst[:3, :3].any()
    assert InstanceSeparator("connected_components").min_size == 0


def test_metrics_json_and_markdown_rows():
    extra = instance_metrics_dict(0.5, 1 / 3, 6 / 7, [4 / 7, 0.0, float("nan")], 1 / 6, class_names=("a", "b", "c"))
    data = metrics_dict([1, 1, 1], [1, 1, 1], class_names=("a", "b", "c"), extra=extra)
    assert data["f1_classification"] == {"a": pytest.approx(4 / 7), "b": 0.0, "c": None, "mean": pytest.approx(2 / 7)}
    assert data["mpq_plus"] == pytest.approx(1 / 6) and set(data) >= {"dice", "pq", "aji", "aji_plus", "f1_detection"}
    text = metrics_markdown(data, ("a", "b", "c"))
    assert "| AJI (Kumar et al. 2017), mean over images | 50.00 |" in text
    assert "F1 of classification" in text and "| mPQ+" in text


def test_metrics_package_does_not_import_inference():
    root = REPO / "monai_nasscam" / "metrics"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any("inference" in n for n in names), f"{path.name} imports inference"


def test_evaluate_yaml_scores_touching_discs_with_watershed_and_instance_metrics(tmp_path):
    mask, gt = _two_discs()
    pred = np.zeros((4, *mask.shape), np.float32)
    pred[1] = mask  # two touching Lymphocytes, predicted exactly as one blob
    cmap = np.where(gt > 0, 2, 0).astype(np.uint8)
    items = [{
        "image": torch.as_tensor(20 * pred - 10)[None],  # the "network" is the identity
        "label": torch.as_tensor(np.stack([(cmap == c).astype(np.float32) for c in range(1, 5)]))[None],
        "instance": torch.as_tensor(gt.astype(np.int32))[None, None],
        "class_map": torch.as_tensor(cmap)[None, None],
    }]
    ws, table = evaluate_fixed(tmp_path / "ws", items)
    cc, _ = evaluate_fixed(tmp_path / "cc", items, instance_method="connected_components")
    assert ws["dice"] == cc["dice"]  # the pixels are the same, only the nuclei differ
    assert ws["pq"]["Lymphocyte"] > 0.9 and cc["pq"]["Lymphocyte"] < 0.4
    assert ws["pq"]["Epithelial"] is None and ws["f1_classification"]["Epithelial"] is None
    assert ws["f1_detection"] == 1.0 and ws["f1_classification"]["Lymphocyte"] == 1.0
    # connected components: the blob's centroid is 9 px from both discs' -> one pair, one miss: 2 / 3
    assert cc["f1_detection"] == pytest.approx(2 / 3)
    assert ws["aji"] > 0.9 and cc["aji"] == pytest.approx(1.0 * mask.sum() / (2 * mask.sum()))
    assert ws["mpq_plus"] == pytest.approx(ws["pq"]["mean"])
    assert "| AJI (Kumar et al. 2017), mean over images |" in table


def test_min_size_drops_specks_with_either_method():
    mask = np.zeros((1, 20, 20), bool)
    mask[0, 2:12, 2:12] = True  # 100 px
    mask[0, 15:17, 15:17] = True  # a 4-px speck
    for method in ("connected_components", "watershed"):
        assert InstanceSeparator(method, min_size=0)(mask).max() == 2
        kept = InstanceSeparator(method, min_size=5)(mask)
        assert kept.max() == 1 and kept[0, 15:17, 15:17].max() == 0 and (kept[0, 2:12, 2:12] == 1).all()
    assert "under 5 px dropped" in InstanceSeparator(min_size=5).describe()
    with pytest.raises(ValueError, match="min_size"):
        InstanceSeparator(min_size=-1)


def test_watershed_of_a_block_equals_the_whole_image():
    """Each component is split on its own: a block holding components whole gives the same nuclei."""
    yy, xx = np.mgrid[:60, :90]
    mask = np.zeros((60, 90), bool)
    for cy, cx in ((15, 15), (15, 31), (45, 20), (40, 60), (48, 74), (30, 86)):
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 81
    whole = watershed_instances(mask)
    assert whole.max() >= 5
    block = (slice(0, 60), slice(0, 50))  # the two left pairs whole, nothing of the right ones cut
    assert not mask[:, 49].any()
    part = watershed_instances(mask[block])
    pairs = {(a, b) for a, b in zip(whole[block].ravel(), part.ravel())}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})  # the same partition
