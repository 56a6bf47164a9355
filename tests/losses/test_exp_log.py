"""ExpLogLoss: hand-computed values, the reference preset, numerics in the edge cases of docs/method.md §6.4."""

import math

import pytest
import torch

from monai_nasscam.data.class_weights import count_labels, weights_from_frequencies
from monai_nasscam.losses import ExpLogLoss


def _sigmoid_example():
    # one sample, one channel, two pixels: p = sigmoid(logits) = [0.5, 0.75], t = [0, 1]
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    target = torch.tensor([[[0.0, 1.0]]])
    return logits, target


def test_sigmoid_value_by_hand():
    logits, target = _sigmoid_example()
    loss = ExpLogLoss(sigmoid=True)(logits, target)
    # Dice = (2 * 0.75 + 1) / (1.25 + 1 + 1) = 2.5 / 3.25
    dice_term = math.log(3.25 / 2.5) ** 0.3
    # cross: -ln(1 - 0.5) = ln 2 on the negative, -ln 0.75 on the positive; mean over the two pixels
    cross_term = (math.log(2.0) ** 0.3 + math.log(4.0 / 3.0) ** 0.3) / 2
    assert loss.item() == pytest.approx(0.8 * dice_term + 0.2 * cross_term, rel=1e-6)


def test_sigmoid_positive_class_weight_by_hand():
    logits, target = _sigmoid_example()
    loss = ExpLogLoss(sigmoid=True, w_dice=0.0, w_cross=1.0, class_weights=[5.0])(logits, target)
    # weight 5 on the positive pixel only, negatives keep weight 1
    assert loss.item() == pytest.approx((math.log(2.0) ** 0.3 + 5 * math.log(4.0 / 3.0) ** 0.3) / 2, rel=1e-6)


def test_softmax_value_with_frequency_weights_by_hand():
    # two classes, two pixels: p(pixel 0) = [0.5, 0.5], p(pixel 1) = [0.25, 0.75]; labels [0, 1]
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]])
    target = torch.tensor([[[0, 1]]])
    loss_fn = ExpLogLoss.from_frequencies([3.0, 1.0], softmax=True, to_onehot_y=True)
    w0, w1 = math.sqrt(4.0 / 3.0), 2.0  # ((3 + 1) / f) ** 0.5
    assert loss_fn.class_weights.tolist() == pytest.approx([w0, w1])
    # class 0: I = 0.5, sums 0.75 + 1; class 1: I = 0.75, sums 1.25 + 1
    dice_term = (math.log(2.75 / 2.0) ** 0.3 + math.log(3.25 / 2.5) ** 0.3) / 2
    cross_term = (w0 * math.log(2.0) ** 0.3 + w1 * math.log(4.0 / 3.0) ** 0.3) / 2
    assert loss_fn(logits, target).item() == pytest.approx(0.8 * dice_term + 0.2 * cross_term, rel=1e-6)

    # without the background: Dice of class 1 only, background pixels weigh 0 in the cross term
    no_bg = ExpLogLoss(softmax=True, to_onehot_y=True, include_background=False, class_weights=[2.0])
    expected = 0.8 * math.log(3.25 / 2.5) ** 0.3 + 0.2 * (2.0 * math.log(4.0 / 3.0) ** 0.3) / 2
    assert no_bg(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_weights_from_monusac_frequencies():
    counts = [14539, 15654, 631, 587]  # nuclei per class in the MoNuSAC training release
    w = weights_from_frequencies(counts)
    assert w.tolist() == pytest.approx([math.sqrt(31411 / c) for c in counts], rel=1e-6)
    assert w[3].item() == pytest.approx(7.3151, abs=1e-3)
    with pytest.raises(ValueError):
        weights_from_frequencies([1.0, 0.0])


def test_count_labels_feeds_the_weights():
    maps = [torch.tensor([[0, 1], [1, 2]]), torch.tensor([[0, 0, 4, 1]])]
    assert count_labels(maps, num_classes=5).tolist() == [3, 3, 1, 0, 1]
    counts = count_labels(maps, num_classes=5, skip_background=True)
    assert counts.tolist() == [3, 1, 0, 1]
    assert ExpLogLoss.from_frequencies([3, 1, 1], sigmoid=True).class_weights.tolist() == pytest.approx(
        [math.sqrt(5 / 3), math.sqrt(5), math.sqrt(5)])
    with pytest.raises(ValueError, match="class ids"):
        count_labels([torch.tensor([5])], num_classes=5)


def test_reference_preset_is_batch_dice_only_formula():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 8, 8) * 3
    target = (torch.rand(3, 4, 8, 8) > 0.7).float()
    target[:, 2] = 0  # a class absent from the whole batch
    loss_fn = ExpLogLoss.reference()
    assert (loss_fn.sigmoid, loss_fn.batch, loss_fn.w_cross, loss_fn.w_dice, loss_fn.gamma_dice) == (
        True, True, 0.0, 1.0, 0.3)
    p = torch.sigmoid(logits).double()
    t = target.double()
    dice = (2 * (p * t).sum((0, 2, 3)) + 1) / (p.sum((0, 2, 3)) + t.sum((0, 2, 3)) + 1)
    expected = ((-torch.log(dice)) ** 0.3).mean()
    assert loss_fn(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    # per-sample Dice (batch=False) gives another value on the same data
    assert ExpLogLoss.reference(batch=False)(logits, target).item() != pytest.approx(expected.item(), rel=1e-3)


def test_reference_preset_from_bundle_config():
    from monai.bundle import ConfigParser

    parser = ConfigParser({"loss": {"_target_": "monai_nasscam.losses.ExpLogLoss.reference", "gamma_dice": 0.5}})
    loss_fn = parser.get_parsed_content("loss")
    assert isinstance(loss_fn, ExpLogLoss) and loss_fn.batch and loss_fn.gamma_dice == 0.5


def test_reductions_and_onehot_without_background_channel():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 6, 6)
    labels = torch.randint(0, 5, (2, 1, 6, 6))  # class map 0-4, channel c = class id c + 1
    multilabel = torch.cat([(labels == k).float() for k in range(1, 5)], dim=1)
    per_sample = ExpLogLoss(sigmoid=True, reduction="none")(logits, multilabel)
    assert per_sample.shape == (2,)
    mean = ExpLogLoss(sigmoid=True)(logits, multilabel)
    assert mean.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert ExpLogLoss(sigmoid=True, reduction="sum")(logits, multilabel).item() == pytest.approx(
        per_sample.sum().item(), rel=1e-6)
    onehot = ExpLogLoss(sigmoid=True, to_onehot_y=True, onehot_skip_background=True)(logits, labels)
    assert onehot.item() == pytest.approx(mean.item(), rel=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ExpLogLoss(sigmoid=True),
        lambda: ExpLogLoss(sigmoid=True, batch=True, class_weights=[1, 2, 3, 4]),
        lambda: ExpLogLoss.reference(),
        lambda: ExpLogLoss(softmax=True),
        lambda: ExpLogLoss(softmax=True, include_background=False),
    ],
)
@pytest.mark.parametrize("case", ["perfect", "empty_predicted_empty", "saturated_wrong", "saturated_mixed"])
def test_finite_loss_and_gradients(make, case):
    target = torch.zeros(2, 4, 8, 8)
    target[:, 0, :4] = 1
    target[:, 1, 4:] = 1
    target[:, 3, :, :] = 1 - target[:, 0] - target[:, 1]  # softmax needs one class per pixel; class 2 empty
    if case == "perfect":
        logits = torch.where(target > 0, 100.0, -100.0)
    elif case == "empty_predicted_empty":
        logits = torch.where(target > 0, 3.0, -100.0)
    elif case == "saturated_wrong":
        logits = torch.where(target > 0, -100.0, 100.0)
    else:
        logits = torch.where(torch.rand(2, 4, 8, 8) > 0.5, 100.0, -100.0)
    logits.requires_grad_(True)
    loss = make()(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    if case == "perfect":
        assert loss.item() == 0.0


def test_naive_formula_would_be_nan():
    """The pitfall the clamp avoids: d/dx (-ln D) ** 0.3 at D = 1 is NaN."""
    logits = torch.full((1, 1, 4, 4), -100.0, requires_grad=True)
    p = torch.sigmoid(logits)
    dice = (2 * p.sum() * 0 + 1) / (p.sum() + 1)
    ((-torch.log(dice)) ** 0.3).backward()
    assert not torch.isfinite(logits.grad).all()
    logits.grad = None
    loss = ExpLogLoss.reference()(logits, torch.zeros(1, 1, 4, 4))
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_gradient_step_lowers_loss():
    torch.manual_seed(2)
    target = (torch.rand(2, 4, 16, 16) > 0.8).float()
    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    loss_fn = ExpLogLoss(sigmoid=True)
    before = loss_fn(logits, target)
    before.backward()
    with torch.no_grad():
        after = loss_fn(logits - 50.0 * logits.grad, target)
    assert after.item() < before.item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_give_the_float32_loss(dtype):
    # under autocast the logits arrive in half precision; the loss and its gradient are computed in float32
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 8, 8).to(dtype)
    target = (torch.rand(2, 4, 8, 8) > 0.7).float()
    half = logits.clone().requires_grad_(True)
    loss = ExpLogLoss(sigmoid=True)(half, target)
    loss.backward()
    assert loss.dtype == torch.float32 and half.grad.dtype == dtype
    assert loss.item() == ExpLogLoss(sigmoid=True)(logits.float(), target).item()


def test_bad_arguments():
    with pytest.raises(ValueError):
        ExpLogLoss(sigmoid=True, softmax=True)
    with pytest.raises(ValueError, match="logits"):
        ExpLogLoss()  # the cross term needs sigmoid or softmax
    ExpLogLoss(w_cross=0.0)  # Dice only on probabilities is fine
    with pytest.raises(ValueError):
        ExpLogLoss(sigmoid=True, smooth=0.0)
    with pytest.raises(ValueError, match="class_weights"):
        ExpLogLoss(sigmoid=True, class_weights=[1.0, 2.0])(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        ExpLogLoss(sigmoid=True)(torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 2, 2))


# ------------------------------------------------------------------------------------- ignored (ambiguous) pixels
def test_ignored_pixel_changes_nothing_by_hand():
    # the two-pixel example of test_sigmoid_value_by_hand plus a third pixel marked -1 (ambiguous): same value
    logits, target = _sigmoid_example()
    dice_term = math.log(3.25 / 2.5) ** 0.3
    cross_term = (math.log(2.0) ** 0.3 + math.log(4.0 / 3.0) ** 0.3) / 2
    expected = 0.8 * dice_term + 0.2 * cross_term
    for extra_logit in (-7.0, 0.0, 3.0):
        logits3 = torch.cat([logits, torch.full((1, 1, 1), extra_logit)], dim=-1).requires_grad_(True)
        target3 = torch.cat([target, torch.full((1, 1, 1), -1.0)], dim=-1)
        loss = ExpLogLoss(sigmoid=True)(logits3, target3)
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        loss.backward()
        assert logits3.grad[0, 0, 2].item() == 0.0 and logits3.grad[0, 0, :2].abs().sum().item() > 0
    # the same pixel left out by the mask argument instead, whatever its label
    for label in (0.0, 1.0):
        logits3 = torch.cat([logits, torch.full((1, 1, 1), 2.0)], dim=-1)
        target3 = torch.cat([target, torch.full((1, 1, 1), label)], dim=-1)
        mask = torch.tensor([[[1.0, 1.0, 0.0]]])
        assert ExpLogLoss(sigmoid=True)(logits3, target3, mask=mask).item() == pytest.approx(expected, rel=1e-6)
    # without ignore_value, -1 is used as a (meaningless) target: the value differs
    logits3 = torch.cat([logits, torch.zeros(1, 1, 1)], dim=-1)
    target3 = torch.cat([target, torch.full((1, 1, 1), -1.0)], dim=-1)
    assert ExpLogLoss(sigmoid=True, ignore_value=None)(logits3, target3).item() != pytest.approx(expected, rel=1e-3)


def test_ignored_pixels_multilabel_batch_dice_and_mean_over_counted():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 6) * 2
    target = (torch.rand(2, 4, 6, 6) > 0.6).float()
    ignored = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    ignored[0, :, :2, :3] = True
    ignored[1, :, 4:, :] = True
    marked = torch.where(ignored, torch.full_like(target, -1.0), target)
    weights = [1.0, 2.0, 3.0, 4.0]
    for batch in (True, False):
        loss_fn = ExpLogLoss(sigmoid=True, batch=batch, class_weights=weights, reduction="none")
        got = loss_fn(logits, marked)
        # by hand: Dice sums over the counted pixels, cross term mean over each sample's counted elements
        keep = (~ignored).float()
        p, t = torch.sigmoid(logits) * keep, target * keep
        axes = [0, 2, 3] if batch else [2, 3]
        dice = (torch.log(p.sum(axes) + t.sum(axes) + 1) - torch.log(2 * (p * t).sum(axes) + 1)).clamp(min=0) ** 0.3
        dice_term = dice.mean().expand(2) if batch else dice.mean(1)
        e = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        w = target * torch.tensor(weights).view(1, 4, 1, 1) + (1 - target)
        cross = (w * e ** 0.3 * keep).sum((1, 2, 3)) / (keep.expand_as(e)).sum((1, 2, 3))
        torch.testing.assert_close(got, 0.8 * dice_term + 0.2 * cross, rtol=1e-5, atol=1e-6)
        # the mask argument gives the same value, and the ignored labels / logits change nothing
        torch.testing.assert_close(loss_fn(logits, target, mask=keep), got)
        torch.testing.assert_close(loss_fn(torch.where(ignored, -logits, logits), marked), got)


def test_ignored_class_index_softmax_by_hand():
    # test_softmax_value_with_frequency_weights_by_hand with a third pixel of class index -1: same value
    logits = torch.tensor([[[0.0, 0.0, 5.0], [0.0, math.log(3.0), -2.0]]])
    target = torch.tensor([[[0, 1, -1]]])
    loss_fn = ExpLogLoss.from_frequencies([3.0, 1.0], softmax=True, to_onehot_y=True)
    w0, w1 = math.sqrt(4.0 / 3.0), 2.0
    dice_term = (math.log(2.75 / 2.0) ** 0.3 + math.log(3.25 / 2.5) ** 0.3) / 2
    cross_term = (w0 * math.log(2.0) ** 0.3 + w1 * math.log(4.0 / 3.0) ** 0.3) / 2
    assert loss_fn(logits, target).item() == pytest.approx(0.8 * dice_term + 0.2 * cross_term, rel=1e-6)


def test_fully_ignored_sample_and_bad_mask():
    logits = torch.randn(2, 4, 4, 4)
    target = torch.zeros(2, 4, 4, 4)
    target[0] = -1.0  # every pixel of sample 0 ignored: no Dice sums, cross term 0
    loss = ExpLogLoss(sigmoid=True, reduction="none", w_dice=0.0, w_cross=1.0)(logits, target)
    assert loss[0].item() == 0.0 and loss[1].item() > 0
    with pytest.raises(ValueError, match="mask should have shape"):
        ExpLogLoss(sigmoid=True)(logits, target.clamp(min=0), mask=torch.ones(2, 4, 3, 4))
