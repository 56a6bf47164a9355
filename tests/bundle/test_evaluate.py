"""evaluate.yaml's metric wiring on fixed masks with hand-computed values, and the centre-stitching inferer."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_nasscam.inference.stitching import CentreStitchingInferer
from tests.utils import evaluate_fixed


# ------------------------------------------------------------------------------------------ metrics of evaluate.yaml
def _fixed_images():
    """Two 8 x 8 images, 4 classes (channel c = class id c + 1); predictions given as +-10 logits.

    Image A: Epithelial nucleus (instance 1) predicted exactly, plus an Epithelial false positive; a Lymphocyte
    false positive (no Lymphocyte in A's ground truth). Image B: Epithelial nucleus (instance 2) missed; Lymphocyte
    nucleus (instance 3, 4 px) predicted with 2 extra pixels (IoU 4 / 6).
    """
    items = []
    for name in "AB":
        cmap = np.zeros((8, 8), np.int32)
        inst = np.zeros((8, 8), np.int32)
        pred = np.zeros((4, 8, 8), np.float32)
        if name == "A":
            cmap[0:2, 0:2], inst[0:2, 0:2] = 1, 1
            pred[0, 0:2, 0:2] = 1
            pred[0, 5:7, 5:7] = 1
            pred[1, 0:2, 5:7] = 1
        else:
            cmap[3:5, 3:5], inst[3:5, 3:5] = 1, 2
            cmap[6:8, 0:2], inst[6:8, 0:2] = 2, 3
            pred[1, 6:8, 0:3] = 1
        label = np.stack([(cmap == c).astype(np.float32) for c in range(1, 5)])
        items.append(
            {
                "image": torch.as_tensor(20 * pred - 10)[None],  # the "network" is the identity
                "label": torch.as_tensor(label)[None],
                "instance": torch.as_tensor(inst)[None, None],
                "class_map": torch.as_tensor(cmap.astype(np.uint8))[None, None],
                "name": [name],
            }
        )
    return items


def test_evaluate_metrics_by_hand(tmp_path):
    # the paper's nuclei: the 2 x 2 ones below are kept whole
    metrics, _ = evaluate_fixed(tmp_path, _fixed_images(), instance_method="connected_components")

    # pooled Dice: Epithelial I = 4 + 0, |P| = 8 + 0, |G| = 4 + 4 -> 8 / 16; Lymphocyte I = 0 + 4, |P| = 4 + 6,
    # |G| = 0 + 4 -> 8 / 14; Neutrophil and Macrophage are empty everywhere -> undefined, left out of the mean
    assert metrics["dice"] == pytest.approx(
        {"Epithelial": 0.5, "Lymphocyte": 4 / 7, "Neutrophil": None, "Macrophage": None, "mean": (0.5 + 4 / 7) / 2}
    )
    # the pooled Dice's own counts per image, [intersection, prediction, ground truth] per class, for resampling
    assert metrics["per_image"] == {
        "names": ["A", "B"],
        "dice_counts": [[[4, 8, 4], [0, 4, 0], [0, 0, 0], [0, 0, 0]], [[0, 0, 4], [4, 6, 4], [0, 0, 0], [0, 0, 0]]],
    }
    # per image (MONAI DiceMetric): Epithelial mean(8 / 12, 0); Lymphocyte: image A has no Lymphocyte, so its false
    # positive is not counted -> B only, 8 / 10. Pooled and per-image Dice differ.
    assert metrics["dice_per_image"] == pytest.approx(
        {"Epithelial": 1 / 3, "Lymphocyte": 0.8, "Neutrophil": None, "Macrophage": None, "mean": (1 / 3 + 0.8) / 2}
    )
    # correct PQ, counts pooled: Epithelial TP 1 (IoU 1), FP 1, FN 1 -> 1 / (1 + 0.5 + 0.5);
    # Lymphocyte TP 1 (IoU 4 / 6), FP 1 (in A) -> (2 / 3) / 1.5
    assert metrics["pq"] == pytest.approx(
        {"Epithelial": 0.5, "Lymphocyte": 4 / 9, "Neutrophil": None, "Macrophage": None, "mean": (0.5 + 4 / 9) / 2}
    )
    # the official variant: per image, only over images whose ground truth has the class (A's Lymphocyte false
    # positive is ignored). Epithelial: A gives 1 / 1.5, B gives 0 -> 1 / 3. Lymphocyte: only B; ground-truth
    # nucleus 3 matches prediction 1 (IoU 2/3), but the script then drops prediction id 3 -- the ground-truth id --
    # instead of 1, so the matched prediction also counts as a false positive: (2/3) / (1 + 1/2) = 4 / 9
    # (a correct PQ of image B alone is 2 / 3).
    assert metrics["pq_monusac_official"] == pytest.approx(
        {"Epithelial": 1 / 3, "Lymphocyte": 4 / 9, "Neutrophil": None, "Macrophage": None, "mean": 7 / 18}
    )
    assert metrics["protocol"] == {"split": "fixed", "images": 2}
    table = (tmp_path / "metrics.md").read_text()
    assert "| Dice, pooled over the split (paper protocol) | 50.00 | 57.14 | n/a | n/a | 53.57 |" in table
    assert "| PQ, MoNuSAC 2020 official script (with its known bugs) | 33.33 | 44.44 | n/a | n/a | 38.89 |" in table


# --------------------------------------------------------------------------------------------- centre stitching
@pytest.mark.parametrize("shape", [(1, 3, 37, 50), (2, 1, 16, 8), (1, 2, 5, 70)])
def test_centre_stitching_covers_every_pixel_once(shape):
    x = torch.rand(shape)
    out = CentreStitchingInferer(roi_size=16, stride=8, sw_batch_size=3)(x, lambda w: w * 2)
    torch.testing.assert_close(out, 2 * x)


def test_centre_stitching_gives_each_pixel_its_centred_context():
    """With a 3 x 3 mean filter, every kept pixel sees its full neighbourhood inside its window (margin 4 >= 1), so
    the stitched result equals the filter applied to the whole (zero-padded) image; blending windows would not."""
    x = torch.rand(1, 1, 29, 41)
    box = torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
    out = CentreStitchingInferer(roi_size=(16, 16), stride=(8, 8), cval=0.0)(x, box)
    torch.testing.assert_close(out, box(x))
    # the window edges differ from the whole-image result: the check above is not trivial
    assert not torch.allclose(box(x[..., :16, :16]), box(x)[..., :16, :16])


def test_centre_stitching_pads_with_cval_and_checks_geometry():
    x = torch.zeros(1, 1, 4, 4)
    seen = []
    CentreStitchingInferer(roi_size=8, stride=4, cval=1.0)(x, lambda w: seen.append(w) or w[:, :1])
    assert seen[0].shape == (1, 1, 8, 8) and float(seen[0][0, 0, 0, 0]) == 1.0 and float(seen[0][0, 0, 2, 2]) == 0.0
    with pytest.raises(ValueError, match="even difference"):
        CentreStitchingInferer(roi_size=8, stride=3)(x, lambda w: w)


def test_centre_stitching_of_a_network_equals_reference_protocol():
    """256 / 128 as in the reference code, on a network with context: each output pixel is the one of the window
    whose centre block holds it."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 2, 5, padding=2)
    x = torch.rand(1, 3, 300, 260)
    with torch.no_grad():
        out = CentreStitchingInferer(roi_size=256, stride=128, cval=1.0)(x, net)
        padded = F.pad(x, (64, 64 + 2 * 128 - 260, 64, 64 + 3 * 128 - 300), value=1.0)
        # output pixel (200, 140) lies in centre block (1, 1): the window starting at padded (128, 128)
        window = net(padded[..., 128:384, 128:384])
        torch.testing.assert_close(out[..., 200, 140], window[..., 64 + 200 - 128, 64 + 140 - 128])
    assert out.shape == (1, 2, 300, 260)
