"""Mixed precision on the CPU: the ``precision`` setting of the workflows and an inferer that applies it.

MONAI's engines (``SupervisedTrainer``, ``SupervisedEvaluator``) and :class:`~monai_nasscam.engines.BilevelSearchTrainer`
autocast only on CUDA (their ``amp`` flag). On a CPU with native bfloat16 arithmetic (AVX-512 BF16 or AMX), the
convolutions of a search or training step run about 1.7 times faster under ``torch.autocast("cpu",
dtype=torch.bfloat16)`` (bench/README.md). :class:`AutocastInferer` wraps any MONAI inferer so that only the
*network* runs under autocast: every call of the network returns a float32 tensor, so the sliding-window
aggregation, the loss and the metrics stay in float32, and the weights and the optimiser state are never cast (the
engines keep them in float32; autocast casts copies of the weights for each bfloat16 convolution). Gradients flow
back through the casts to the float32 weights and to the architecture parameters (alphas) alike.

The ``precision`` setting of train.yaml, search.yaml, evaluate.yaml and inference.yaml:

- ``auto`` (default): bfloat16 on a CPU device whose processor has native bfloat16 instructions
  (:func:`cpu_supports_bf16`), float32 otherwise. On CUDA the workflows keep their ``amp`` setting (float16
  autocast and gradient scaling inside MONAI's engines) and ``precision`` adds nothing.
- ``bf16``: bfloat16 autocast on the CPU even without native support (emulated by oneDNN: slower than float32,
  for tests and comparisons).
- ``fp32``: no autocast, exactly the float32 computation of before.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from monai_nasscam.errors import InputError
from monai_nasscam.overrides import check_roi_size

__all__ = [
    "PRECISIONS",
    "AutocastInferer",
    "AutocastNetwork",
    "autocast_dtype",
    "check_precision",
    "cpu_supports_bf16",
    "describe_precision",
    "float32_output",
    "check_inferer_inputs",
    "validation_roi_size",
    "WINDOW_MULTIPLE",
]

logger = logging.getLogger(__name__)

#: window sides must be multiples of this (the U-Net's four 2x downsamplings)
WINDOW_MULTIPLE = 16
#: the smallest default validation window side
DEFAULT_VAL_WINDOW = 512

#: the values of the ``precision`` setting
PRECISIONS = ("auto", "bf16", "fp32")


def cpu_supports_bf16() -> bool:
    """Whether this machine's CPU computes bfloat16 natively, so that CPU autocast to bfloat16 pays.

    True when PyTorch has oneDNN (``torch.backends.mkldnn.is_available()``), oneDNN accepts bfloat16
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``) and the processor has the AVX-512 BF16 or AMX instructions
    (``torch.cpu._is_avx512_bf16_supported()`` / ``torch.cpu._is_amx_tile_supported()``, PyTorch's own cpuinfo
    probes). oneDNN's own check alone is also true on AVX-512 processors without BF16, where bfloat16 is emulated
    and slower than float32. Any probe missing from the installed PyTorch counts as "no".
    """
    try:
        if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return bool(avx512_bf16 or amx)
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision: Any, key: str = "precision") -> str:
    """``precision`` normalised (``auto``, ``bf16`` or ``fp32``, case and spaces ignored).

    Raises:
        InputError: any other value; the message names ``key``.
    """
    value = str(precision).strip().lower() if isinstance(precision, str) else None
    if value not in PRECISIONS:
        raise InputError(f"{key} must be one of {', '.join(PRECISIONS)} (auto: bf16 on a CPU with native bfloat16, "
                         f"else fp32), got {precision!r}.")
    return value


def autocast_dtype(precision: Any, device: Any = "cpu", key: str = "precision") -> torch.dtype | None:
    """The dtype to autocast the network to on ``device``, or ``None`` for no autocast (float32).

    Args:
        precision: ``auto``, ``bf16`` or ``fp32`` (see the module docstring).
        device: the workflow's device (``torch.device`` or string). Only a CPU device gets autocast here; CUDA keeps
            the engines' ``amp`` setting.
        key: the setting's name, for the error message.

    Returns:
        ``torch.bfloat16`` or ``None``.

    Raises:
        InputError: a bad ``precision`` (naming ``key``).
    """
    value = check_precision(precision, key)
    if torch.device(device).type != "cpu" or value == "fp32":
        return None
    if value == "bf16" or cpu_supports_bf16():
        return torch.bfloat16
    return None


def describe_precision(precision: Any, device: Any = "cpu", amp: bool = False) -> str:
    """One line for logs and reports: what the network computes in on ``device``, e.g. ``bf16 autocast (auto)``."""
    value = check_precision(precision)
    if torch.device(device).type == "cuda":
        return "fp16 autocast (amp)" if amp else "fp32"
    dtype = autocast_dtype(value, device)
    return f"{'bf16 autocast' if dtype is not None else 'fp32'} ({value})"


def validation_roi_size(val_roi_size: Any, roi_size: Any, key: str = "val_roi_size") -> list[int]:
    """The sliding window of validation and evaluation: ``val_roi_size``, or by default the larger of the training
    crop and 512 in each dimension.

    The networks are fully convolutional, so the window need not be the training crop; a larger window computes far
    fewer overlapping pixels per image (at 50 % overlap a 64-pixel window computes each pixel about 4 times). Windows
    larger than an image are shrunk to it by :class:`AutocastInferer` (``fit_to_image``).

    Args:
        val_roi_size: ``None`` (the default above), an integer or a sequence of 2 integers, multiples of 16.
        roi_size: the training crop (an integer or 2 integers).
        key: the setting's name, for the error message.

    Returns:
        the window, 2 integers.

    Raises:
        InputError: a value that is not 2 positive multiples of 16, naming ``key`` (or ``roi_size``, by default).
    """
    if val_roi_size is None or (isinstance(val_roi_size, str) and val_roi_size.strip().lower() in ("", "none", "null")):
        return [max(DEFAULT_VAL_WINDOW, r) for r in check_roi_size(roi_size, multiple=WINDOW_MULTIPLE)]
    values = list(val_roi_size) if isinstance(val_roi_size, (list, tuple)) else [val_roi_size, val_roi_size]
    ok = len(values) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 and v % WINDOW_MULTIPLE == 0 for v in values
    )
    if not ok:
        raise InputError(
            f"{key} must be null (the training roi_size, at least 512) or 1 or 2 positive integers, multiples of "
            f"{WINDOW_MULTIPLE} (the networks downsample 4 times), e.g. [256, 256]; got {val_roi_size!r}."
        )
    return [int(v) for v in values]


def check_inferer_inputs(precision: Any = "auto", val_roi_size: Any = None, roi_size: Any = 256) -> bool:
    """Check the ``precision`` and ``val_roi_size`` settings of a workflow; ``True`` if both are good.

    Raises:
        InputError: naming the bad setting.
    """
    check_precision(precision)
    validation_roi_size(val_roi_size, roi_size)
    return True


def float32_output(out: Any) -> Any:
    """``out`` with every floating-point tensor in it (tensors, tuples, lists, dicts) cast to float32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() and out.dtype != torch.float32 else out
    if isinstance(out, Mapping):
        return {k: float32_output(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(float32_output(v) for v in out)
    return out


class AutocastNetwork:
    """``network`` called under ``torch.autocast(device_type, dtype)``, its output cast back to float32.

    A plain callable (not a module), so it does not register ``network`` a second time; autocast is entered on every
    call, in the calling thread (autocast state is per thread). MONAI ``MetaTensor`` arguments reach the network as
    plain tensors (``as_tensor()``, no copy): their metadata would send every operation of the forward pass through
    ``MetaTensor.__torch_function__``, 2-9 % of a training step on the CPU (``bench/meta_tensor_step.py``), for
    nothing the network uses.
    MONAI's inferers give the prediction the input's metadata back (``sliding_window_inference`` does).

    Args:
        network: any callable taking and returning tensors (an ``nn.Module``, a traced module, ...).
        dtype: the autocast dtype; ``None``: call ``network`` as it is.
        device_type: ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, network: Callable, dtype: torch.dtype | None, device_type: str = "cpu") -> None:
        self.network = network
        self.dtype = dtype
        self.device_type = device_type

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args = tuple(a.as_tensor() if isinstance(a, MetaTensor) else a for a in args)
        if self.dtype is None:
            return self.network(*args, **kwargs)
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.network(*args, **kwargs)
        return float32_output(out)

    def __getattr__(self, name: str) -> Any:  # e.g. .description, .close of a prepared network
        if name == "network":
            raise AttributeError(name)
        return getattr(self.network, name)


class AutocastInferer(Inferer):
    """Run ``inferer`` with its network under CPU autocast; the prediction is float32.

    The wrapped inferer (``SimpleInferer``, ``SlidingWindowInferer``, ...) calls an :class:`AutocastNetwork`
    instead of the network (also in fp32, where it only passes ``MetaTensor`` inputs on as plain tensors), so only
    the network's forward pass is in reduced precision: a sliding window
    aggregates float32 window outputs, and the loss (computed by the engine on the returned prediction) is float32
    by construction. Backward works through it: autocast's casts are differentiable, and the float32 weights (and
    architecture parameters) receive float32 gradients.

    Args:
        inferer: the MONAI inferer to wrap.
        precision: ``auto``, ``bf16`` or ``fp32`` (see :func:`autocast_dtype`).
        device: the workflow's device; only a CPU device gets autocast (CUDA keeps the engines' ``amp``).
        fit_to_image: shrink a sliding window (an inferer with a ``roi_size``, e.g. ``SlidingWindowInferer``) that
            is larger than the image to the image's size rounded up to a multiple of 16, per call: one window per
            small image instead of a mostly padded one.

    Raises:
        InputError: a bad ``precision``, naming the ``precision`` key.

    Attributes of the wrapped inferer (``roi_size``, ``sw_batch_size``, ...) are readable on the wrapper.

    Example::

        inferer = AutocastInferer(SlidingWindowInferer(roi_size=256, sw_batch_size=4), precision="bf16")
        pred = inferer(images, network)  # float32, network computed in bfloat16
    """

    def __init__(self, inferer: Inferer, precision: Any = "auto", device: Any = "cpu", fit_to_image: bool = False) -> None:
        super().__init__()
        self.inferer = inferer
        self.fit_to_image = bool(fit_to_image)
        self.precision = check_precision(precision)
        self.device_type = torch.device(device).type
        self.dtype = autocast_dtype(self.precision, device)
        self._announced = False

    @property
    def enabled(self) -> bool:
        """Whether the network runs under autocast."""
        return self.dtype is not None

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        """The wrapped inferer's prediction of ``inputs`` (float32 when autocast is on)."""
        inferer = self._fitted(inputs) if self.fit_to_image else self.inferer
        if not self._announced:  # once per inferer: which precision the run really uses (auto is decided here)
            self._announced = True
            mode = "bf16 autocast" if self.dtype is not None else "fp32"
            logger.info(f"{type(self.inferer).__name__}: the network computes in {mode} (precision {self.precision})")
        out = inferer(inputs, AutocastNetwork(network, self.dtype, self.device_type), *args, **kwargs)
        return out if self.dtype is None else float32_output(out)

    def _fitted(self, inputs: torch.Tensor) -> Inferer:
        roi = getattr(self.inferer, "roi_size", None)
        if roi is None:
            return self.inferer
        spatial = inputs.shape[2:]
        roi = list(roi) if isinstance(roi, (list, tuple)) else [roi] * len(spatial)
        fitted = [min(int(r), -(-int(s) // WINDOW_MULTIPLE) * WINDOW_MULTIPLE) for r, s in zip(roi, spatial)]
        if fitted == [int(r) for r in roi]:
            return self.inferer
        inferer = copy.copy(self.inferer)
        inferer.roi_size = fitted
        return inferer

    def __getattr__(self, name: str) -> Any:
        if name in ("inferer", "dtype", "precision", "device_type", "fit_to_image", "_announced"):
            raise AttributeError(name)
        return getattr(self.inferer, name)

    def __repr__(self) -> str:
        mode = "bf16 autocast" if self.dtype is not None else "fp32"
        return f"AutocastInferer({self.inferer!r}, {mode}, precision={self.precision!r})"

