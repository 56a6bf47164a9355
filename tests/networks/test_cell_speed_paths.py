"""The faster execution paths of the search step: the cell's per-dilation fusion of its one-channel output edges,
its channels-last convolutions on CPU and the U-Net's BitsDropout. Each is checked against its plain definition."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from monai_nasscam.networks.cell import EDGES, OUTPUT_NODE, NASAttentionCell
from monai_nasscam.networks.nets.nasscam_unet import BitsDropout, DoubleConv


def test_searchable_sam_plan_has_no_one_channel_or_odd_convolutions():
    cell = NASAttentionCell("sam", 2, 16, hidden_channels=32)
    widths = []
    for groups, _ in cell._plan:
        widths.append([sum(cell.node_channels[EDGES[e][1]] for e, _ in g.entries) for g in groups])
    # n0: 5 ops into n1 + n2 (64 channels each), then the output edge's ops per dilation: conv1/3/5 (3), dil3/5 (2)
    assert widths == [[64] * 5 + [3, 2], [32] * 5 + [3, 2], [3, 2]]
    sigmoid_groups = [g for groups, _ in cell._plan for g in groups if EDGES[g.entries[0][0]][1] == OUTPUT_NODE]
    assert {(g.kernel, g.dilation, g.padding) for g in sigmoid_groups} == {(5, 1, 2), (5, 2, 4)}


def test_fused_dilation_family_kernel_places_each_op_on_its_taps():
    """Each row of the fused dil_conv3 + dil_conv5 kernel, run with the group's dilation, is that op's own conv."""
    torch.manual_seed(0)
    cell = NASAttentionCell("sam", 2, 3, hidden_channels=4)
    groups, _ = cell._plan[2]
    x = torch.randn(2, 4, 13, 11)
    for group in groups:
        convs = [cell.edges[e][name][0] for e, name in group.entries]
        kernel = cell._fused_kernel(group, convs)
        assert kernel.shape[-1] == group.kernel
        for row, conv in enumerate(convs):
            fused = F.conv2d(x, kernel[row : row + 1], conv.bias, padding=group.padding, dilation=group.dilation)
            torch.testing.assert_close(fused, conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_forward_equals_reference_under_autocast(mode, dtype):
    """The fused forward equals the edge-by-edge definition, also in bf16 autocast (to bf16 rounding)."""
    torch.manual_seed(1)
    cell = NASAttentionCell("sam", 2, 5, hidden_channels=8).train()
    cell(torch.randn(2, 5, 12, 12))
    with torch.no_grad():
        cell.alpha.normal_(0.0, 1.0)
    x = torch.randn(2, 5, 12, 12)
    fused, reference = copy.deepcopy(cell), copy.deepcopy(cell)
    getattr(fused, mode)(), getattr(reference, mode)()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        a, b = fused(x).float(), reference.reference_forward(x).float()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("dims,shape", [(2, (2, 6, 9, 11)), (3, (1, 4, 5, 6, 4))])
def test_sam_cell_convolves_channels_last_on_cpu_with_the_definitions_gradients(monkeypatch, dims, shape):
    """On CPU every convolution of a spatial cell reads a channels-last tensor; outputs and gradients (input, conv
    weights, alphas) equal the edge-by-edge definition's, which runs in the default layout."""
    from monai_nasscam.networks import cell as cell_module

    torch.manual_seed(2)
    cell = NASAttentionCell("sam", dims, shape[1], hidden_channels=8).train()
    with torch.no_grad():
        cell.alpha.normal_(0.0, 1.0)
    reference = copy.deepcopy(cell)
    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    seen = []
    conv = cell_module.CONV_FUNCTIONS[dims]
    monkeypatch.setitem(cell_module.CONV_FUNCTIONS, dims, lambda x, *a, **k: seen.append(x.is_contiguous(memory_format=layout)) or conv(x, *a, **k))
    x = torch.randn(shape)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    weight = torch.randn(shape[0], 1, *shape[2:])
    out = cell(xa)
    (out * weight).sum().backward()
    (reference.reference_forward(xb) * weight).sum().backward()
    assert seen and all(seen) and out.is_contiguous()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
    for (name, a), (_, b) in zip(cell.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_bits_dropout_drops_at_its_rate_in_every_bit_lane():
    torch.manual_seed(0)
    m = BitsDropout(0.2).train()
    assert m.drop_count == 13107 and m.scale == pytest.approx(65536 / (65536 - 13107))
    n = 4 * 2**20
    y = m(torch.ones(n))
    dropped = y == 0
    p = 13107 / 65536
    sd = (p * (1 - p) / (n / 4)) ** 0.5
    for lane in range(4):  # the four 16-bit integers of each 64-bit draw
        assert abs(dropped[lane::4].float().mean().item() - p) < 5 * sd
    assert torch.all(y[~dropped] == m.scale)
    assert abs(y.mean().item() - 1.0) < 0.01


def test_bits_dropout_gradient_eval_seed_and_errors():
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    m = BitsDropout(0.3).train()
    torch.manual_seed(5)
    y = m(x)
    y.sum().backward()
    keep = y != 0
    torch.testing.assert_close(x.grad, keep.float() * m.scale)  # d(out)/d(in): the mask, scaled
    torch.manual_seed(5)
    torch.testing.assert_close(m(x), y)  # the default generator's seed fixes the mask
    assert m.eval()(x) is x
    assert BitsDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        BitsDropout(1.0)
    scripted = torch.jit.script(BitsDropout(0.5).train())  # TorchScript falls back to F.dropout
    assert scripted(torch.ones(1000)).eq(0).any()
    block = DoubleConv(2, 3, 8, ("group", {"num_groups": 4}), 0.2)
    assert isinstance(block.conv_0.adn.D, BitsDropout) and block.conv_0.adn.D.p == 0.2
