"""DeepLabV3Plus baseline: output stride, ASPP rates, decoder wiring, 2-D/3-D, TorchScript."""

import pytest
import torch

from monai_nasscam.networks.nets.deeplabv3plus import DeepLabASPP, DeepLabV3Plus

SMALL = {"widen_factor": 0.25, "aspp_channels": 32, "low_level_channels": 8, "decoder_channels": 32}


def _feature_shapes(net, x):
    """Spatial shapes of the ASPP input (deepest features) and of the low-level features."""
    shapes = {}
    hooks = [
        net.aspp.register_forward_hook(lambda m, i, o: shapes.__setitem__("aspp_in", tuple(i[0].shape[2:]))),
        net.encoder.layer1.register_forward_hook(lambda m, i, o: shapes.__setitem__("low", tuple(o.shape[2:]))),
    ]
    out = net(x)
    for h in hooks:
        h.remove()
    return out, shapes


@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_stride_and_full_resolution_logits(output_stride):
    net = DeepLabV3Plus(2, 3, 4, output_stride=output_stride, **SMALL).eval()
    out, shapes = _feature_shapes(net, torch.randn(1, 3, 64, 96))
    assert shapes["aspp_in"] == (64 // output_stride, 96 // output_stride)
    assert shapes["low"] == (16, 24)  # stride 4
    assert out.shape == (1, 4, 64, 96)
    # an input size that is not a multiple of the stride still gives logits at the input size
    assert net(torch.randn(1, 3, 70, 45)).shape == (1, 4, 70, 45)


def test_aspp_rates_and_dilated_backbone():
    net = DeepLabV3Plus(2, 3, 4, **SMALL)
    dilations = [branch.conv.dilation for branch in net.aspp.branches]
    assert dilations == [(1, 1), (6, 6), (12, 12), (18, 18)]
    assert [branch.conv.kernel_size for branch in net.aspp.branches] == [(1, 1)] + [(3, 3)] * 3
    layer4_3x3 = [m for m in net.encoder.layer4.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert layer4_3x3 and all(m.dilation == (2, 2) and m.stride == (1, 1) for m in layer4_3x3)


def test_every_part_gets_gradients_and_batch_of_one_trains():
    net = DeepLabV3Plus(2, 3, 4, **SMALL).train()
    out = net(torch.randn(1, 3, 64, 64))  # batch 1: the image-pooling branch has no batch norm
    out.sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert net.decoder.low_level.conv.weight.grad.abs().sum() > 0  # the low-level features reach the output


def test_low_level_features_change_the_output():
    """The decoder uses the stride-4 features: perturbing only them changes the logits."""
    net = DeepLabV3Plus(2, 3, 4, **SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    low = {}

    def grab(m, i, o):
        low["x"] = o

    h = net.encoder.layer1.register_forward_hook(grab)
    base = net(x)
    h.remove()
    with torch.no_grad():
        deep = net.aspp(net.encoder.layer4(net.encoder.layer3(net.encoder.layer2(low["x"]))))
        a = net.decoder(deep, low["x"])
        b = net.decoder(deep, low["x"] + 1.0)
    assert not torch.allclose(a, b)
    assert base.shape == (1, 4, 64, 64)


def test_3d():
    net = DeepLabV3Plus(3, 1, 2, widen_factor=0.125, aspp_channels=8, low_level_channels=4, decoder_channels=8)
    out, shapes = _feature_shapes(net.eval(), torch.randn(1, 1, 32, 32, 16))
    assert out.shape == (1, 2, 32, 32, 16)
    assert shapes["aspp_in"] == (2, 2, 1)


def test_torchscript_and_trace_match_eager():
    net = DeepLabV3Plus(2, 3, 4, **SMALL).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        eager = net(x)
        scripted = torch.jit.script(net)(x)
        traced = torch.jit.trace(net, x, check_trace=False)(x)
    assert torch.allclose(eager, scripted, atol=1e-5)
    assert torch.allclose(eager, traced, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError):
        DeepLabV3Plus(2, 3, 4, backbone="vgg16")
    with pytest.raises(ValueError):
        DeepLabV3Plus(2, 3, 4, output_stride=32)
    with pytest.raises(ValueError, match="input channels"):
        DeepLabV3Plus(2, 3, 4, **SMALL)(torch.randn(1, 1, 32, 32))


def test_no_short_name_clash_with_monai():
    """MONAI's config resolver indexes every monai* module: our short names must be unique there."""
    from monai.bundle import ComponentLocator, ConfigParser

    locator = ComponentLocator()
    for name in ("DeepLabV3Plus", "DeepLabASPP", "DeepLabDecoder"):
        assert isinstance(locator.get_component_module_name(name), str), name
    net = ConfigParser(
        {"net": {"_target_": "monai_nasscam.networks.nets.deeplabv3plus.DeepLabV3Plus", "spatial_dims": 2,
                 "in_channels": 3, "out_channels": 4, "widen_factor": 0.125}}
    ).get_parsed_content("net")
    assert isinstance(net, DeepLabV3Plus)
    assert isinstance(net.aspp, DeepLabASPP)
