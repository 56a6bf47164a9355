"""Image resolution at inference: segment every image at the resolution the network was trained at.

A network trained on MoNuSAC (40x, about 0.25 µm per pixel) sees nuclei of a given size in pixels; a 20x image
(0.5 µm/px) shows them half as large, and is otherwise segmented at the wrong scale. So:

- the **training resolution** is recorded by ``train.yaml`` in ``RUN/network.json`` (``mpp`` and ``mpp_source``:
  the prepared dataset's median resolution, the ``train_mpp`` setting, or the documented default
  :data:`DEFAULT_TRAIN_MPP` for MoNuSAC-like data) and read back here (:func:`train_resolution`);
- an **image's resolution** is the one its file records (:func:`monai_nasscam.data.slide.open_image`'s ``mpp``:
  Aperio description, OME-XML ``PhysicalSizeX``, TIFF resolution tags, OpenSlide's ``openslide.mpp-x``) or, for
  files that record none, the ``mpp`` the user gives;
- when the two differ by more than :data:`MPP_TOLERANCE` (relative), each sliding window is read in the image's own
  pixels with the side that covers the training window's field of view (``roi * train_mpp / image_mpp``, rounded to
  a multiple of 16), resized to the training window (bilinear, antialiased when shrinking) before the network, and
  the network's logits are resized back to the window in the image's pixels (:class:`RescaledNetwork`). Blending,
  blocks, class map, probabilities, nuclei and GeoJSON coordinates therefore all stay in the original image's pixel
  grid; the watershed's parameters (tuned in training pixels) are scaled to image pixels
  (:func:`scaled_separator`);
- when the image's resolution is unknown, it is segmented as if it were at the training resolution, and the
  inference workflow says so once for that image (a warning naming the file, and ``summary.json``).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from monai_nasscam.inference.instances import InstanceSeparator

__all__ = [
    "DEFAULT_TRAIN_MPP",
    "MPP_TOLERANCE",
    "ResolutionPlan",
    "plan_resolution",
    "train_resolution",
    "dataset_resolution",
    "rescaled_inferer",
    "RescaledNetwork",
    "scaled_separator",
    "check_mpp",
]

#: microns per pixel assumed for the training data when neither the dataset nor the ``train_mpp`` setting gives
#: one: MoNuSAC's 40x scans are 0.2425-0.2527 µm/px
DEFAULT_TRAIN_MPP = 0.25
#: resolutions whose ratio is within this relative difference of 1 are treated as equal (no rescaling)
MPP_TOLERANCE = 0.10


def check_mpp(value: Any, name: str) -> float | None:
    """``None`` for a null setting, else a positive number of microns per pixel.

    Raises:
        ValueError: naming ``name``, for a value that is not a positive number.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be microns per pixel (e.g. 0.25 at 40x, 0.5 at 20x), got {value!r}.") from None
    if not math.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"{name} must be a positive number of microns per pixel, got {value!r}.")
    return mpp


def dataset_resolution(dataset_dir: str | os.PathLike | None) -> float | None:
    """The median microns per pixel of a prepared dataset's source images (``manifest.json``'s
    ``resolution.mpp``), or ``None`` when the manifest does not record one."""
    if dataset_dir is None:
        return None
    manifest = Path(dataset_dir) / "manifest.json"
    try:
        record = json.loads(manifest.read_text()).get("resolution") or {}
        return check_mpp(record.get("mpp"), f"{manifest} resolution.mpp")
    except (OSError, ValueError, AttributeError):
        return None


def train_resolution(run_dir: str | os.PathLike | None, train_mpp: Any = None) -> tuple[float, str]:
    """The resolution the network was trained at, and where it comes from.

    Args:
        run_dir: the training run folder (its ``network.json``), or ``None``.
        train_mpp: an explicit value (the inference setting ``train_mpp``), which wins.

    Returns:
        ``(mpp, source)``: from ``train_mpp`` (``"train_mpp setting"``), from ``RUN/network.json`` (its
        ``mpp_source``), else :data:`DEFAULT_TRAIN_MPP` (``"assumed ..."``).

    Raises:
        ValueError: ``train_mpp`` or the recorded value is not a positive number.
    """
    explicit = check_mpp(train_mpp, "train_mpp")
    if explicit is not None:
        return explicit, "train_mpp setting"
    if run_dir is not None:
        path = Path(run_dir) / "network.json"
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                record = {}
            recorded = check_mpp(record.get("mpp") if isinstance(record, dict) else None, f"{path} mpp")
            if recorded is not None:
                return recorded, f"{path.name}: {record.get('mpp_source', 'recorded')}"
    return DEFAULT_TRAIN_MPP, f"assumed (MoNuSAC 40x default; no training resolution recorded in {run_dir})"


@dataclass
class ResolutionPlan:
    """How one image is brought to the training resolution.

    Attributes:
        image_mpp: the image's microns per pixel, ``None`` when unknown.
        source: ``"file"`` (its metadata), ``"setting"`` (the user's ``mpp``) or ``"unknown"``.
        train_mpp: the training resolution.
        scale: training pixels per image pixel (``image_mpp / train_mpp`` as realised by the window sizes; 1: as is).
        window: sliding-window side in image pixels (the training ``roi`` when not rescaled).
        roi: the network's window side (training pixels).
        rescaled: the windows are resized before the network.
        note: one line for logs and tables ("" when the image is at the training resolution).
    """

    image_mpp: float | None
    source: str
    train_mpp: float
    scale: float
    window: tuple[int, int]
    roi: tuple[int, int]
    rescaled: bool
    note: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["window"], out["roi"] = list(self.window), list(self.roi)
        return out


def plan_resolution(
    image_mpp: float | None,
    source: str,
    train_mpp: float,
    roi: Sequence[int],
    tolerance: float = MPP_TOLERANCE,
) -> ResolutionPlan:
    """Decide whether an image is rescaled and the window side in its pixels.

    Args:
        image_mpp: the image's microns per pixel (``None``: unknown).
        source: where ``image_mpp`` comes from (``"file"``, ``"setting"``; ignored when unknown).
        train_mpp: the training resolution.
        roi: the network's window ``(h, w)`` in training pixels (multiples of 16).
        tolerance: relative difference under which the resolutions are treated as equal.

    Returns:
        the :class:`ResolutionPlan`; the window in image pixels is ``roi * train_mpp / image_mpp`` rounded to a
        multiple of 16 (at least 16), so the realised scale is within ``8 / window`` of the exact one.
    """
    roi = (int(roi[0]), int(roi[1]))
    if image_mpp is None:
        return ResolutionPlan(None, "unknown", train_mpp, 1.0, roi, roi, False,
                              f"resolution unknown (no microns per pixel in the file, no mpp setting): segmented "
                              f"as if at the training resolution {train_mpp:g} µm/px")
    ratio = float(image_mpp) / float(train_mpp)
    if abs(ratio - 1.0) <= tolerance:
        return ResolutionPlan(float(image_mpp), source, train_mpp, 1.0, roi, roi, False, "")
    window = tuple(max(16, int(round(r / ratio / 16.0)) * 16) for r in roi)
    scale = roi[0] / window[0]
    note = (f"{image_mpp:g} µm/px ({source}) rescaled x{scale:.3g} to the training resolution {train_mpp:g} µm/px "
            f"(windows of {window[0]} x {window[1]} px resized to {roi[0]} x {roi[1]})")
    return ResolutionPlan(float(image_mpp), source, train_mpp, scale, window, roi, True, note)  # type: ignore[arg-type]


def rescaled_inferer(inferer: Any, window: Sequence[int]) -> Any:
    """A copy of a MONAI ``SlidingWindowInferer`` whose windows are ``window`` (image pixels); the overlap, blending
    (a Gaussian's sigma is a fraction of the window) and batch size stay those of ``inferer``."""
    out = copy.copy(inferer)
    out.roi_size = [int(w) for w in window]
    if hasattr(out, "roi_weight_map"):
        out.roi_weight_map = None  # a cached importance map is for the original window size
    return out


class RescaledNetwork:
    """Calls ``network`` at the training resolution on windows cut at the image's.

    Args:
        network: the callable network (``(n, 3, *roi)`` -> ``(n, C, *roi)`` logits).
        roi: the network's window ``(h, w)``.

    A ``(n, 3, h, w)`` batch of windows in image pixels is resized to ``roi`` (bilinear, antialiased when
    shrinking), run through ``network``, and its logits are resized back to ``(h, w)`` (bilinear, antialiased when
    shrinking), so the inferer blends them on the image's pixel grid.
    """

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor], roi: Sequence[int]) -> None:
        self.network = network
        self.roi = (int(roi[0]), int(roi[1]))
        self.description = f"{getattr(network, 'description', type(network).__name__)}, windows resized to {self.roi}"

    @staticmethod
    def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(x.shape[-2]), int(x.shape[-1]))
        logits = self.network(self._resize(x, self.roi))
        return self._resize(logits.float(), size)

    def close(self) -> None:
        close = getattr(self.network, "close", None)
        if close is not None:
            close()


def scaled_separator(separator: InstanceSeparator, scale: float) -> InstanceSeparator:
    """The instance separation of ``separator`` (parameters in training pixels) for an image with ``scale``
    training pixels per image pixel: distances (``h``, ``min_distance``, ``sigma``) divided by ``scale``, the
    minimum size by ``scale ** 2``. ``scale == 1`` returns ``separator`` itself."""
    if scale == 1.0 or separator.method != "watershed":
        if scale == 1.0 or separator.min_size == 0:
            return separator
        return InstanceSeparator(separator.method, connectivity=separator.connectivity,
                                 min_size=int(round(separator.min_size / scale**2)))
    return InstanceSeparator(
        "watershed",
        h=separator.h / scale,
        min_distance=int(round(separator.min_distance / scale)),
        sigma=separator.sigma / scale,
        connectivity=separator.connectivity,
        min_size=int(round(separator.min_size / scale**2)),
    )
