"""CPU mixed precision (monai_nasscam.inferers): the autocast inferer, the precision and val_roi_size settings."""

from __future__ import annotations

import io
from contextlib import redirect_stderr

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer
from torch import nn

from monai_nasscam.errors import InputError, find_input_error, nasscam_excepthook
from monai_nasscam.inferers import (
    AutocastInferer,
    AutocastNetwork,
    autocast_dtype,
    check_inferer_inputs,
    check_precision,
    cpu_supports_bf16,
    describe_precision,
    validation_roi_size,
)
from tests.utils import REPO

CONFIGS = REPO / "bundle" / "configs"
META = str(CONFIGS / "metadata.json")


class Recorder(nn.Module):
    """A conv net that records, per call, whether CPU autocast is on, its conv output's dtype and input shape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.calls: list[tuple[bool, torch.dtype, tuple]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.calls.append((torch.is_autocast_enabled("cpu"), y.dtype, tuple(x.shape)))
        return y


class Mixed(nn.Module):
    """Two convs mixed by softmax(alpha), as a NAS-SCAM edge: weights and an architecture parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.alpha = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.alpha, 0)
        return w[0] * self.a(x) + w[1] * self.b(x)


def test_bf16_runs_the_network_under_autocast_and_returns_float32():
    net = Recorder()
    x = torch.rand(2, 3, 16, 16)
    pred = AutocastInferer(SimpleInferer(), precision="bf16")(x, net)
    assert pred.dtype == torch.float32
    assert net.calls == [(True, torch.bfloat16, (2, 3, 16, 16))]
    assert not torch.is_autocast_enabled("cpu")  # left on exit
    # close to the float32 result (bfloat16 keeps 8 bits of mantissa), but not equal: it did compute in bf16
    ref = net(x)
    assert not torch.equal(pred, ref)
    assert torch.allclose(pred, ref, atol=0.05, rtol=0.05)


def test_fp32_is_the_wrapped_inferer_unchanged():
    net = Recorder()
    x = torch.rand(1, 3, 40, 24)
    inferer = AutocastInferer(SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=2, overlap=0.5), "fp32")
    assert not inferer.enabled and inferer.roi_size == (16, 16)  # the wrapped inferer's attributes show through
    pred = inferer(x, net)
    ref = SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=2, overlap=0.5)(x, net)
    assert torch.equal(pred, ref)
    assert all(not on and dtype == torch.float32 for on, dtype, _ in net.calls)


def test_sliding_window_aggregates_float32_window_outputs():
    net = Recorder()
    x = torch.rand(1, 3, 48, 48)
    pred = AutocastInferer(SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=3, overlap=0.5), "bf16")(x, net)
    assert pred.dtype == torch.float32 and pred.shape == (1, 2, 48, 48)
    assert {(on, dtype) for on, dtype, _ in net.calls} == {(True, torch.bfloat16)}


def test_fit_to_image_shrinks_the_window_to_a_small_image_rounded_up_to_16():
    net = Recorder()
    x = torch.rand(1, 3, 40, 300)
    inferer = AutocastInferer(SlidingWindowInferer(roi_size=[256, 256], sw_batch_size=4, overlap=0.5), "fp32",
                              fit_to_image=True)
    pred = inferer(x, net)
    assert pred.shape == (1, 2, 40, 300)
    assert {shape[2:] for _, _, shape in net.calls} == {(48, 256)}  # 40 -> 48; 300 keeps the 256 window
    assert inferer.inferer.roi_size == [256, 256]  # the configured window is not changed


def test_gradients_reach_float32_weights_and_alphas_in_bf16():
    torch.manual_seed(0)
    net = Mixed()
    x, target = torch.rand(2, 3, 16, 16), torch.rand(2, 4, 16, 16)
    pred = AutocastInferer(SimpleInferer(), "bf16")(x, net)
    loss = nn.functional.mse_loss(pred, target)  # outside autocast: float32
    assert loss.dtype == torch.float32
    loss.backward()
    for name, p in net.named_parameters():
        assert p.dtype == torch.float32, name
        assert p.grad is not None and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0, name
    # an optimiser step keeps float32 weights
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    opt.step()
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())


def test_autocast_network_proxies_attributes_and_passes_through_without_dtype():
    class Prepared:
        description = "eager"

        def __call__(self, x):
            return x * 2

    wrapped = AutocastNetwork(Prepared(), None)
    assert wrapped.description == "eager"
    assert torch.equal(wrapped(torch.ones(2)), torch.full((2,), 2.0))
    out = AutocastNetwork(lambda x: {"a": x.bfloat16(), "b": (x.half(), 3)}, torch.bfloat16)(torch.ones(2))
    assert out["a"].dtype == torch.float32 and out["b"][0].dtype == torch.float32 and out["b"][1] == 3


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_network_sees_plain_tensors_and_the_prediction_keeps_the_metadata(precision):
    """MetaTensor inputs reach the network as plain tensors (no MONAI ``__torch_function__`` per operation), with the
    same values; the sliding window's prediction carries the input's metadata, equal to the plain input's result."""
    from monai.data import MetaTensor

    seen = []

    class Types(Recorder):
        def forward(self, x):
            seen.append(type(x))
            return super().forward(x)

    torch.manual_seed(0)
    net, x = Types(), torch.rand(1, 3, 40, 24)
    affine = torch.diag(torch.tensor([0.25, 0.25, 1.0, 1.0], dtype=torch.float64))
    inferer = AutocastInferer(SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=2, overlap=0.5), precision)
    pred = inferer(MetaTensor(x, affine=affine, meta={"filename_or_obj": "tile.png"}), net)
    assert seen and set(seen) == {torch.Tensor}
    assert isinstance(pred, MetaTensor) and pred.meta["filename_or_obj"] == "tile.png"
    assert torch.equal(pred.affine, affine)
    assert torch.equal(pred.as_tensor(), inferer(x, net))
    seen.clear()
    simple = AutocastInferer(SimpleInferer(), precision)(MetaTensor(x), net)  # the training step's inferer
    assert seen == [torch.Tensor] and torch.equal(simple, AutocastInferer(SimpleInferer(), precision)(x, net))


def test_precision_values():
    assert check_precision(" BF16 ") == "bf16"
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert autocast_dtype("auto", "cpu") is (torch.bfloat16 if cpu_supports_bf16() else None)
    assert autocast_dtype("bf16", "cuda") is None  # CUDA keeps the engines' amp
    assert describe_precision("fp32", "cpu") == "fp32 (fp32)"
    assert describe_precision("bf16", "cpu") == "bf16 autocast (bf16)"
    assert describe_precision("auto", "cuda", amp=True) == "fp16 autocast (amp)"
    for bad in ("fp16", "half", "", None, 16, True):
        with pytest.raises(InputError, match="precision must be one of auto, bf16, fp32"):
            check_precision(bad)
    with pytest.raises(InputError, match="^precision"):
        AutocastInferer(SimpleInferer(), precision="float16")


def test_validation_window():
    assert validation_roi_size(None, [64, 64]) == [512, 512]
    assert validation_roi_size(None, 768) == [768, 768]
    assert validation_roi_size("null", [64, 640]) == [512, 640]
    assert validation_roi_size(128, [64, 64]) == [128, 128]
    assert validation_roi_size([512, 256], [64, 64]) == [512, 256]
    for bad in ([100, 100], [256], [256, 256, 256], 0, -16, "big", [256.0, 256], True):
        with pytest.raises(InputError, match="^val_roi_size must be null"):
            validation_roi_size(bad, [64, 64])
    assert check_inferer_inputs("auto", None, [64, 64])


@pytest.mark.parametrize(
    "config, overrides, key",
    [
        ("train", {"attention": "unet", "precision": "fp16"}, "precision"),
        ("train", {"attention": "unet", "val_roi_size": [100, 100]}, "val_roi_size"),
        ("search", {"precision": "half", "warmup_epochs": 0}, "precision"),
    ],
)
def test_a_bad_setting_stops_the_workflow_with_one_line_naming_it(tiny_dataset, tmp_path, config, overrides, key):
    from monai.bundle import run

    out = tmp_path / "out"
    settings = {"dataset_dir": str(tiny_dataset), "epochs": 1, "roi_size": [32, 32], "features": [4, 4, 8, 8, 16],
                "num_workers": 0, "epoch_crops": 8, "progress": False, **overrides}
    with pytest.raises(Exception) as info:
        files = [str(CONFIGS / n) for n in (["train.yaml"] + (["search.yaml"] if config == "search" else []))]
        run(config_file=files, meta_file=META, logging_file=False, output_dir=str(out), **settings)
    assert find_input_error(info.value) is not None, f"not an input error: {info.value!r}"
    stream = io.StringIO()
    with redirect_stderr(stream):
        nasscam_excepthook(type(info.value), info.value, info.value.__traceback__)
    line = stream.getvalue()
    assert line.count("\n") == 1 and line.startswith(f"error: {key} must be"), line
    assert not out.exists()


@pytest.mark.parametrize("optimize", ["none", "trace"])
def test_inference_runs_every_worker_under_autocast_and_blends_float32(tmp_path, optimize):
    from monai_nasscam.inference import NucleiPredictor

    torch.manual_seed(0)
    net = Recorder()
    inferer = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=4, overlap=0.5)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
    outs = {}
    for precision in ("fp32", "bf16"):
        predictor = NucleiPredictor(net, inferer, tmp_path, tmp_path / "out", stain="none", optimize=optimize,
                                    progress=False, tune_malloc=False, parallel=2, precision=precision)
        predictor.setup()
        net.calls.clear()
        outs[precision] = predictor.prediction.forward(x)
        assert outs[precision].dtype == torch.float32
        assert predictor.prediction.forward.description.endswith("bf16 autocast") == (precision == "bf16")
        if optimize == "none":  # the eager network records itself, in each of the 2 worker threads
            assert len(net.calls) == 4
            assert {(on, dtype) for on, dtype, _ in net.calls} == (
                {(True, torch.bfloat16)} if precision == "bf16" else {(False, torch.float32)})
        predictor.prediction.forward.close()
    assert torch.allclose(outs["fp32"], ref, atol=1e-5)
    assert not torch.equal(outs["bf16"], outs["fp32"]) and torch.allclose(outs["bf16"], ref, atol=0.05, rtol=0.05)
    with pytest.raises(InputError, match="^precision"):
        NucleiPredictor(net, inferer, tmp_path, tmp_path / "out", precision="int8")
