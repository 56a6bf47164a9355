"""Metrics on fixed masks with hand-computed values: pooled vs per-image Dice, correct PQ vs the MoNuSAC script."""

import json
import math

import numpy as np
import pytest
import torch

from monai_nasscam.metrics import (
    CLASS_NAMES,
    PooledDiceHandler,
    PooledDiceMetric,
    PooledPQMetric,
    instances_from_maps,
    instances_from_semantic,
    mean_over_scored_images,
    metrics_dict,
    monusac_official_pq,
    panoptic_quality,
    per_image_dice,
    pq_counts,
    pq_monusac_official,
    write_metrics_json,
)

# ---------------------------------------------------------------- Dice


def _dice_masks():
    """Two images (C=3, 2x2). Returns predictions and ground truths as lists of (C, 2, 2) tensors."""
    pred_a = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.float32)
    gt_a = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.float32)
    pred_b = torch.tensor([[[0, 0], [0, 0]], [[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.float32)
    gt_b = torch.tensor([[[1, 1], [1, 1]], [[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.float32)
    return [pred_a, pred_b], [gt_a, gt_b]


def test_pooled_dice_by_hand_and_differs_from_per_image():
    preds, gts = _dice_masks()
    metric = PooledDiceMetric(reduction="none")
    metric(y_pred=preds, y=gts)
    per_class = metric.aggregate()
    # class 0: I = 1 + 0, sums (2 + 0) + (1 + 4) -> 2 / 7; class 1: I = 0 + 2, sums (1 + 2) + (0 + 2) -> 4 / 5
    # class 2: empty in prediction and ground truth over the split -> NaN
    assert per_class[0].item() == pytest.approx(2 / 7)
    assert per_class[1].item() == pytest.approx(0.8)
    assert math.isnan(per_class[2].item())
    assert metric.aggregate("mean").item() == pytest.approx((2 / 7 + 0.8) / 2)

    # MONAI's per-image Dice: class 0 = mean(2/3, 0) = 1/3; class 1: image A has no ground truth, so its false
    # positive is ignored -> 1.0; class 2: no image can be scored -> NaN (MONAI's own aggregate says 0)
    per_image = per_image_dice(preds, gts)
    assert per_image[:2].tolist() == pytest.approx([1 / 3, 1.0])
    assert math.isnan(per_image[2].item())

    counted_empty = PooledDiceMetric(reduction="none", ignore_empty=False)
    counted_empty(y_pred=preds, y=gts)
    assert counted_empty.aggregate()[2].item() == 1.0


def test_pooled_dice_independent_of_batching_and_background_option():
    preds, gts = _dice_masks()
    one_batch = PooledDiceMetric()
    one_batch(y_pred=torch.stack(preds), y=torch.stack(gts))
    one_by_one = PooledDiceMetric()
    for p, g in zip(preds, gts):
        one_by_one(y_pred=p[None], y=g[None])
    assert one_batch.aggregate().item() == pytest.approx(one_by_one.aggregate().item())
    # with a background channel in front, include_background=False gives the same numbers
    with_bg = PooledDiceMetric(include_background=False, reduction="none")
    with_bg(y_pred=[torch.cat([1 - p[:1], p]) for p in preds], y=[torch.cat([1 - g[:1], g]) for g in gts])
    assert with_bg.aggregate()[:2].tolist() == pytest.approx([2 / 7, 0.8])


def test_pooled_dice_as_key_val_metric_of_a_monai_evaluator():
    from monai.engines import SupervisedEvaluator
    from monai.handlers import from_engine

    preds, gts = _dice_masks()
    data = [{"image": p[None], "label": g[None]} for p, g in zip(preds, gts)]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data,
        network=torch.nn.Identity(),  # the "image" already is the binarised prediction
        key_val_metric={
            "val_dice": PooledDiceHandler(class_names=("A", "B", "C"), output_transform=from_engine(["pred", "label"]))
        },
    )
    evaluator.run()
    metrics = evaluator.state.metrics
    assert metrics["val_dice"] == pytest.approx((2 / 7 + 0.8) / 2)
    assert metrics["val_dice_A"] == pytest.approx(2 / 7)
    assert metrics["val_dice_B"] == pytest.approx(0.8)
    assert math.isnan(metrics["val_dice_C"])
    assert evaluator.state.best_metric == pytest.approx((2 / 7 + 0.8) / 2)


# ---------------------------------------------------------------- panoptic quality


def _worked_example():
    """One class, 8x8. Ground-truth ids 1, 2, 3; predicted ids 3, 5, 7, 9."""
    gt = np.zeros((8, 8), dtype=np.int32)
    gt[0:2, 0:2] = 1
    gt[0:2, 4:6] = 2
    gt[4:6, 0:2] = 3
    pred = np.zeros((8, 8), dtype=np.int32)
    pred[0:2, 0:2] = 5  # = gt 1, IoU 1
    pred[0:2, 4:6] = 7  # = gt 2 plus two pixels, IoU 4 / 6
    pred[2, 4:6] = 7
    pred[6:8, 6:8] = 9  # a false positive
    pred[5, 1:3] = 3  # touches gt 3 by one pixel: IoU 1 / (4 + 2 - 1) = 0.2 -> gt 3 missed, pred 3 spurious
    return gt, pred


def test_pq_worked_example_correct_and_official():
    gt, pred = _worked_example()
    assert pq_counts(gt, pred).tolist() == pytest.approx([2, 2, 1, 1 + 4 / 6])
    scores = panoptic_quality(gt, pred)
    assert scores["sq"] == pytest.approx(5 / 6)  # (1 + 2/3) / 2
    assert scores["rq"] == pytest.approx(2 / 3.5)  # 2 / (2 + 2/2 + 1/2)
    assert scores["pq"] == pytest.approx(scores["sq"] * scores["rq"])
    assert scores["pq"] == pytest.approx((5 / 3) / 3.5)
    # official script: matched predictions 5 and 7 are not removed (it removes ids 1 and 2, the ground-truth
    # ids), so FP = 4 instead of 2
    assert pq_monusac_official(gt, pred) == pytest.approx((5 / 3) / (2 + 4 / 2 + 1 / 2))


def test_official_is_right_when_ids_coincide():
    gt, pred = _worked_example()
    renumbered = np.select([pred == 5, pred == 7, pred == 9, pred == 3], [1, 2, 9, 3], 0)
    assert pq_monusac_official(gt, renumbered) == pytest.approx(panoptic_quality(gt, renumbered)["pq"])
    # the correct PQ does not depend on the ids
    assert panoptic_quality(gt, renumbered)["pq"] == pytest.approx(panoptic_quality(gt, pred)["pq"])


def test_official_drops_smallest_id_without_background():
    gt = np.zeros((4, 4), dtype=np.int32)
    gt[:2] = 1
    pred = np.where(np.arange(16).reshape(4, 4) < 8, 4, 6)  # covers the whole image, no background pixel
    assert pq_counts(gt, pred).tolist() == pytest.approx([1, 1, 0, 1.0])  # correct: TP 1 (id 4), FP 1 (id 6)
    # np.unique(pred)[1:] drops id 4 (no 0 present) and only id 6 is left: FP = 1 by luck, PQ 1 / 1.5
    assert pq_monusac_official(gt, pred) == pytest.approx(1 / 1.5)


def test_instances_from_semantic_connectivity():
    mask = np.zeros((1, 4, 4), dtype=np.uint8)
    mask[0, 0, 0] = mask[0, 1, 1] = 1  # diagonal neighbours
    assert instances_from_semantic(mask, connectivity=1).max() == 2
    assert instances_from_semantic(mask, connectivity=2).max() == 1


def _pq_split():
    """Two 8x8 images, 2 classes. Ground truth as (instance, class) maps; predictions as binary (C, H, W)."""
    inst_a = np.zeros((8, 8), np.int64)
    cls_a = np.zeros((8, 8), np.int64)
    inst_a[0:2, 0:2], cls_a[0:2, 0:2] = 10, 1
    inst_a[0:2, 4:6], cls_a[0:2, 4:6] = 11, 1
    inst_a[4:7, 0:3], cls_a[4:7, 0:3] = 12, 2
    pred_a = np.zeros((2, 8, 8), np.uint8)
    pred_a[0] = cls_a == 1  # both class-1 nuclei exactly -> components 1, 2
    pred_a[1, 4:7, 0:2] = 1  # IoU 6 / 9 with nucleus 12 -> component 1
    pred_a[1, 4:6, 6:8] = 1  # false positive -> component 2
    inst_b = np.zeros((8, 8), np.int64)
    cls_b = np.zeros((8, 8), np.int64)
    inst_b[3:5, 3:5], cls_b[3:5, 3:5] = 1, 1  # one class-1 nucleus, missed; no class 2 in the ground truth
    pred_b = np.zeros((2, 8, 8), np.uint8)
    pred_b[1, 0:2, 0:2] = 1  # class-2 false positive in an image without class 2
    y = torch.as_tensor(np.stack([np.stack([inst_a, cls_a]), np.stack([inst_b, cls_b])]))
    y_pred = torch.as_tensor(np.stack([pred_a, pred_b]))
    return y_pred, y


def test_pooled_pq_metric_by_hand():
    y_pred, y = _pq_split()
    metric = PooledPQMetric(reduction="none")
    metric(y_pred=y_pred, y=y)
    # class 1: TP 2 (IoU 1, 1), FN 1 -> 2 / 2.5; class 2: TP 1 (IoU 2/3), FP 2 -> (2/3) / 2
    assert metric.counts().flatten().tolist() == pytest.approx([2, 0, 1, 2.0, 1, 2, 0, 2 / 3])
    assert metric.aggregate().tolist() == pytest.approx([0.8, 1 / 3])
    assert metric.aggregate("mean").item() == pytest.approx((0.8 + 1 / 3) / 2)
    # official: image A class 1: ids 1, 2 vs ground-truth ids 10, 11 -> FP 2 -> 2 / 3; image B class 1: 0;
    # class 2: image A: (2/3) / (1 + 2/2) = 1/3, image B skipped (no class 2 in its ground truth)
    official = metric.aggregate(variant="monusac_official")
    assert official.tolist() == pytest.approx([(2 / 3 + 0) / 2, 1 / 3])


def test_official_split_function_and_per_class_stack_input():
    y_pred, y = _pq_split()
    gt_stacks = [instances_from_maps(y[b, 1], y[b, 0], num_classes=2) for b in range(2)]
    pred_stacks = [instances_from_semantic(y_pred[b]) for b in range(2)]
    assert monusac_official_pq(gt_stacks, pred_stacks).tolist() == pytest.approx([1 / 3, 1 / 3])
    # an ambiguous region over the class-2 false positive of image A removes it from the official score
    ambiguous = np.zeros((8, 8), np.uint8)
    ambiguous[4:6, 6:8] = 1
    with_ambiguous = monusac_official_pq(gt_stacks, pred_stacks, ambiguous=[ambiguous, None])
    assert with_ambiguous[1] == pytest.approx((2 / 3) / (1 + 1 / 2))
    stacked = PooledPQMetric(reduction="none", y_format="per_class")
    stacked(y_pred=y_pred, y=torch.as_tensor(np.stack(gt_stacks)))
    assert stacked.aggregate().tolist() == pytest.approx([0.8, 1 / 3])


# ---------------------------------------------------------------- metrics.json


def test_metrics_json_format(tmp_path):
    path = tmp_path / "run" / "metrics.json"
    data = write_metrics_json(
        path,
        dice=torch.tensor([0.8, 0.7, float("nan"), 0.3]),
        pq=[0.5, 0.4, 0.2, 0.1],
        protocol={"split": "test", "threshold": 0.5},
        pq_official={"Epithelial": 0.4, "Lymphocyte": 0.3, "Neutrophil": 0.2, "Macrophage": 0.1},
    )
    loaded = json.loads(path.read_text())
    assert loaded == data
    assert list(loaded["dice"]) == list(CLASS_NAMES) + ["mean"]
    assert loaded["dice"]["Neutrophil"] is None
    assert loaded["dice"]["mean"] == pytest.approx(0.6)
    assert loaded["pq"]["mean"] == pytest.approx(0.3)
    assert loaded["protocol"] == {"split": "test", "threshold": 0.5}
    assert loaded["pq_monusac_official"]["Macrophage"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        metrics_dict([0.1, 0.2], [0.1, 0.2, 0.3, 0.4])


# ---------------------------------------------------------------- per-image Dice: NaN for a class no image scores


def test_per_image_dice_nan_by_hand_and_in_the_report():
    from monai_nasscam.handlers.evaluation import metrics_markdown

    # per image (rows) and class (columns), NaN = not scored: means over the scored images only
    values = torch.tensor([[0.5, float("nan"), float("nan")], [1.0, 0.25, float("nan")]])
    means = mean_over_scored_images(values)
    assert means[:2].tolist() == pytest.approx([0.75, 0.25]) and math.isnan(means[2].item())
    # two 1x2 images, 2 classes; class 1 is in no ground truth, only predicted: no image can score it
    preds = [torch.tensor([[[1.0, 1.0]], [[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]]])]
    gts = [torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]]), torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]]])]
    per_image = per_image_dice(preds, gts)
    assert per_image[0].item() == pytest.approx((2 / 3 + 1.0) / 2)  # Dice 2*1/(2+1) and 1
    assert math.isnan(per_image[1].item())
    # counted as in MONAI with ignore_empty=False: image A's false positive scores 0, image B (empty in both) 1
    assert per_image_dice(preds, gts, ignore_empty=False).tolist() == pytest.approx([5 / 6, 0.5])
    # NaN -> null in metrics.json, "n/a" in the table, left out of the mean over classes
    data = metrics_dict([0.5, 0.5], [0.5, 0.5], class_names=("A", "B"),
                        extra={"dice_per_image": {"A": per_image[0].item(), "B": None, "mean": per_image[0].item()}})
    json.dumps(data, allow_nan=False)
    table = metrics_markdown(data, class_names=("A", "B"))
    assert "| Dice, per image, mean over images (MONAI DiceMetric) | 83.33 | n/a | 83.33 |" in table


def test_per_image_dice_metric_logs_what_metrics_json_holds():
    """The logged dice_per_image is the file's: per class over the images holding it, then over the classes.
    Two 1x2 images, 2 classes: image A holds both (Dice 1 and 0), image B only class 0 (Dice 1). MONAI's
    ``reduction="mean"`` averages each image over its classes, then the images: (0.5 + 1) / 2; per class over the
    images, then over the classes: (1 + 0) / 2."""
    from monai.handlers import IgniteMetricHandler
    from monai.metrics import DiceMetric

    from monai_nasscam.metrics import PerImageDiceMetric

    preds = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]], [[[1.0, 1.0]], [[0.0, 0.0]]]])
    gts = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]], [[[1.0, 1.0]], [[0.0, 0.0]]]])
    monai_mean = DiceMetric(include_background=True, reduction="mean")
    monai_mean(preds, gts)
    assert monai_mean.aggregate().item() == pytest.approx(0.75)
    metric = PerImageDiceMetric()
    metric(preds[:1], gts[:1])
    metric(preds[1:], gts[1:])
    assert metric.aggregate().item() == pytest.approx(0.5)
    assert mean_over_scored_images(metric.get_buffer()).tolist() == pytest.approx([1.0, 0.0])
    handler = IgniteMetricHandler(metric_fn=PerImageDiceMetric(), save_details=False)
    handler.update((preds, gts))
    assert handler.compute() == pytest.approx(0.5)
    empty = PerImageDiceMetric()
    empty(torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 1, 2))  # no class in any ground truth
    assert math.isnan(empty.aggregate().item())


# ---------------------------------------------------------------- ambiguous regions are not scored


def test_pooled_dice_leaves_ambiguous_pixels_out_by_hand():
    from monai_nasscam.data import ExcludeAmbiguousd

    preds, gts = _dice_masks()
    amb_a = torch.tensor([[[0, 1], [0, 0]]], dtype=torch.uint8)  # over image A's class-0 false positive
    amb_b = torch.zeros(1, 2, 2, dtype=torch.uint8)
    metric = PooledDiceMetric(reduction="none")
    metric(y_pred=preds, y=gts, mask=[amb_a, amb_b])
    # class 0: image A counts I 1, P 1, G 1; image B I 0, P 0, G 4 -> 2 / 6; class 1 unchanged 4 / 5
    assert metric.aggregate()[:2].tolist() == pytest.approx([1 / 3, 0.8])
    # whatever is predicted or annotated on the ambiguous pixel, the score is the same
    for value in (0.0, 1.0):
        p, g = preds[0].clone(), gts[0].clone()
        p[:, 0, 1], g[:, 0, 1] = value, 1.0 - value
        other = PooledDiceMetric(reduction="none")
        other(y_pred=torch.stack([p, preds[1]]), y=torch.stack([g, gts[1]]), mask=torch.stack([amb_a, amb_b]))
        assert other.aggregate()[:2].tolist() == pytest.approx([1 / 3, 0.8])
        # the configs' way: zero prediction and label there (postprocessing), same numbers
        masked = [ExcludeAmbiguousd(["pred", "label"])({"pred": pp, "label": gg, "ambiguous": aa})
                  for pp, gg, aa in ((p, g, amb_a), (preds[1], gts[1], amb_b))]
        zeroed = PooledDiceMetric(reduction="none")
        zeroed(y_pred=[m["pred"] for m in masked], y=[m["label"] for m in masked])
        assert zeroed.aggregate()[:2].tolist() == pytest.approx([1 / 3, 0.8])
    with pytest.raises(ValueError, match="mask should have shape"):
        PooledDiceMetric()(y_pred=torch.stack(preds), y=torch.stack(gts), mask=torch.zeros(2, 1, 3, 2))


def test_exclude_ambiguous_instances_majority_rule():
    from monai_nasscam.metrics import exclude_ambiguous_instances

    inst = np.zeros((4, 6), np.int32)
    inst[0:2, 0:2] = 1  # 2 of 4 pixels ambiguous: exactly half, kept
    inst[0:2, 3:5] = 2  # 3 of 4 pixels ambiguous: removed
    inst[3, 0:3] = 3  # no ambiguous pixel: kept
    amb = np.zeros((4, 6), np.uint8)
    amb[0:2, 1] = 1
    amb[0:2, 3] = 1
    amb[0, 4] = 1
    out = exclude_ambiguous_instances(inst, amb)
    assert sorted(np.unique(out).tolist()) == [0, 1, 3]
    np.testing.assert_array_equal(out[inst == 1], 1)  # kept whole, its ambiguous pixels included
    # a class instance stack: per channel; no mask: unchanged copy
    stack = np.stack([inst, np.where(inst == 2, 7, 0)])
    assert [sorted(np.unique(c).tolist()) for c in exclude_ambiguous_instances(stack, amb)] == [[0, 1, 3], [0]]
    assert np.array_equal(exclude_ambiguous_instances(stack, None), stack)
    gt = np.where(inst == 3, 3, 0)
    scores = panoptic_quality(gt, inst, ambiguous=amb)  # prediction 1 is a false positive, 2 is not scored
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 0)


def test_pooled_pq_ambiguous_channel_by_hand():
    y_pred, y = _pq_split()
    amb = torch.zeros(2, 1, 8, 8, dtype=y.dtype)
    amb[0, 0, 4:6, 6:8] = 1  # over image A's class-2 false positive
    metric = PooledPQMetric(reduction="none")
    metric(y_pred=y_pred, y=torch.cat([y, amb], dim=1))
    # class 1 unchanged (2 / 2.5); class 2: TP 1 (IoU 2/3), FP 1 (image B) -> (2/3) / 1.5
    assert metric.aggregate().tolist() == pytest.approx([0.8, 4 / 9])
    # official variant: the script's rule (predicted pixels zeroed) -> class 2 image A (2/3) / 1.5
    assert metric.aggregate(variant="monusac_official").tolist() == pytest.approx([1 / 3, 4 / 9])
    # a further prediction anywhere inside the ambiguous region changes neither score
    more = y_pred.clone()
    more[0, 0, 4:6, 6:8] = 1
    again = PooledPQMetric(reduction="none")
    again(y_pred=more, y=torch.cat([y, amb], dim=1))
    assert again.aggregate().tolist() == pytest.approx([0.8, 4 / 9])
    assert again.aggregate(variant="monusac_official").tolist() == pytest.approx([1 / 3, 4 / 9])
    # a ground-truth nucleus under an ambiguous region is not scored either (nucleus 11 of image A and its match)
    amb11 = torch.zeros_like(amb)
    amb11[0, 0, 0:2, 4:6] = 1
    gt_out = PooledPQMetric(reduction="none")
    gt_out(y_pred=y_pred, y=torch.cat([y, amb11], dim=1))
    assert gt_out.counts()[0].tolist() == pytest.approx([1, 0, 1, 1.0])
    # per-class stacks take the mask as a last channel; an all-zero mask changes nothing
    stacks = torch.as_tensor(np.stack([instances_from_maps(y[b, 1], y[b, 0], num_classes=2) for b in range(2)]))
    per_class = PooledPQMetric(reduction="none", y_format="per_class")
    per_class(y_pred=y_pred, y=torch.cat([stacks, amb], dim=1))
    assert per_class.aggregate().tolist() == pytest.approx([0.8, 4 / 9])
    zero = PooledPQMetric(reduction="none")
    zero(y_pred=y_pred, y=torch.cat([y, torch.zeros_like(amb)], dim=1))
    assert zero.aggregate().tolist() == pytest.approx([0.8, 1 / 3])
    with pytest.raises(ValueError, match="2 channels"):
        PooledPQMetric()(y_pred=y_pred, y=torch.cat([y, amb, amb], dim=1))
