"""MONAI dictionary transforms for the prepared MoNuSAC data (``PREP/datalist.json``), and chain builders.

Keys produced by the chains built here (for a batch, add a leading batch dimension):

=================  ==========================  ==============================================================
key                shape / dtype               content
=================  ==========================  ==============================================================
``image``          ``(3, H, W)`` float32       RGB scaled to [0, 1] (stain-normalised by ``nasscam prepare``)
``label``          ``(4, H, W)`` float32       multi-label target, channel ``c - 1`` = class ``c``
                                               (``label_format="multilabel"``, the default, for the
                                               4-channel sigmoid head); or ``(1, H, W)`` int64 class map
                                               0-4 with ``label_format="classmap"`` (softmax head)
``class_map``      ``(1, H, W)`` uint8         class map 0-4 (``"multilabel"`` format only)
``crop_class``     int                         class the training crop was centred on (training only)
``instance``       ``(1, H, W)`` int32         instance ids (validation, ``load_instance=True``)
``ambiguous``      ``(1, H, W)`` uint8         ambiguous-region mask (validation, ``load_ambiguous=True``)
=================  ==========================  ==============================================================

Axis order is numpy's: ``image[:, row, col]`` is the pixel at ``(row, col)`` of the PNG, the same
pixel that ``skimage.draw.polygon`` filled for XML vertex ``(Y=row, X=col)``. (MONAI's ``PILReader``
swaps the two axes by default; the loaders here use ``reverse_indexing=False``.)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, PILReader
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    MapTransform,
    MedianSmooth,
    Rand2DElasticd,
    RandFlipd,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandRotate90d,
    RandRotated,
    ScaleIntensityRanged,
    SpatialCrop,
    SpatialPadd,
    DivisiblePadd,
)
from monai.transforms.transform import Randomizable
from monai.utils import ensure_tuple_rep

from .classes import NUM_CLASSES

__all__ = [
    "ClassMapToMultiLabeld",
    "RandClassCropd",
    "RandMedianSmoothd",
    "AUGMENTATION_DEFAULTS",
    "load_transforms",
    "train_transforms",
    "val_transforms",
    "inference_transforms",
]

#: default probability of each augmentation of :func:`train_transforms` (the patent's list)
AUGMENTATION_DEFAULTS: dict[str, float] = {
    "rot90_prob": 0.5,  # rotation by a multiple of 90 degrees (lossless)
    "rotate_prob": 0.25,  # rotation by any angle in [-180, 180) degrees (bilinear image, nearest label)
    "flip_prob": 0.5,  # flip, drawn independently for each of the two axes
    "gaussian_blur_prob": 0.2,  # Gaussian blur, sigma in [0.5, 1.5] px
    "median_blur_prob": 0.2,  # 3 x 3 median blur
    "elastic_prob": 0.2,  # elastic deformation
}


class ClassMapToMultiLabeld(MapTransform):
    """Class map ``(1, H, W)`` with ids ``0..num_classes`` -> multi-label ``(num_classes, H, W)`` float32.

    Channel ``c - 1`` is 1 where the class map equals ``c``; background has no channel (the network's
    4-channel sigmoid head). The class map is kept (as uint8) under ``class_map_key``.

    Args:
        keys: keys of class maps to convert.
        num_classes: number of foreground classes.
        class_map_key: where to keep the class map (``None``: not kept); with several keys, the key name
            is suffixed with ``_<key>`` for all but the first.
        allow_missing_keys: do not raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int = NUM_CLASSES,
        class_map_key: str | None = "class_map",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = num_classes
        self.class_map_key = class_map_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for i, key in enumerate(self.key_iterator(d)):
            src = d[key]
            cmap = src.as_tensor() if isinstance(src, MetaTensor) else torch.as_tensor(src)
            cm = torch.round(cmap.float()).to(torch.uint8) if cmap.is_floating_point() else cmap.to(torch.uint8)
            ids = torch.arange(1, self.num_classes + 1, dtype=torch.uint8, device=cm.device)
            multi = (cm == ids.view(-1, *([1] * (cm.ndim - 1)))).to(torch.float32)
            if isinstance(src, MetaTensor):
                multi = MetaTensor(multi, meta=src.meta, applied_operations=src.applied_operations)
                cm = MetaTensor(cm, meta=src.meta, applied_operations=src.applied_operations)
            d[key] = multi
            if self.class_map_key:
                d[self.class_map_key if i == 0 else f"{self.class_map_key}_{key}"] = cm
        return d


class RandMedianSmoothd(RandomizableTransform, MapTransform):
    """With probability ``prob``, apply a median filter of ``radius`` (MONAI ``MedianSmooth``) to ``keys``.

    Args:
        keys: keys of images to filter.
        radius: filter radius (1 = 3 x 3).
        prob: probability of filtering.
        allow_missing_keys: do not raise when a key is missing.
    """

    def __init__(
        self, keys: KeysCollection, radius: int | Sequence[int] = 1, prob: float = 0.1, allow_missing_keys: bool = False
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.smooth = MedianSmooth(radius)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self.smooth(d[key])
        return d


class RandClassCropd(Randomizable, MapTransform):
    """Crop ``spatial_size`` around a pixel of a chosen class (class-balanced crop sampling).

    Where the crop is centred, in order of precedence:

    1. ``data[center_key]`` (``(row, col)``), set by a sampler such as
       :class:`monai_nasscam.data.ClassBalancedCropDataset` (grid mode);
    2. a random pixel of class ``data[class_key]`` (set by that sampler, pixel mode);
    3. otherwise a random pixel of a class drawn among those present in the image (each present class
       equally likely; with ``num_samples > 1`` the classes present are cycled in random order); an image
       without any nucleus gives a random crop.

    The centre is then moved, if needed, so that the crop lies inside the image (pad small images to at
    least ``spatial_size`` first, e.g. with ``SpatialPadd``). The class used is stored in ``class_key``.

    Args:
        keys: keys to crop (e.g. ``["image", "label"]``).
        label_key: key of the ``(1, H, W)`` class map.
        spatial_size: crop size ``(rows, cols)``.
        num_classes: number of foreground classes.
        num_samples: crops per call (a list is returned when > 1).
        class_key: key of the requested / used class.
        center_key: key of a requested centre.
        allow_missing_keys: do not raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        spatial_size: Sequence[int] | int = (256, 256),
        num_classes: int = NUM_CLASSES,
        num_samples: int = 1,
        class_key: str = "crop_class",
        center_key: str = "crop_center",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.label_key = label_key
        self.spatial_size = ensure_tuple_rep(spatial_size, 2)
        self.num_classes = num_classes
        self.num_samples = int(num_samples)
        self.class_key = class_key
        self.center_key = center_key

    def randomize(self, data: Any = None) -> None:
        """Randomness is drawn in :meth:`__call__` (centres depend on the data)."""

    def _pick_center(self, cmap: torch.Tensor, cls: int | None) -> tuple[tuple[int, int], int]:
        if cls is None:
            present = [int(c) for c in torch.unique(cmap).tolist() if 0 < c <= self.num_classes]
            cls = int(self.R.choice(present)) if present else 0
        if cls > 0:
            idx = torch.nonzero(cmap == cls)
            if len(idx):
                r, c = idx[int(self.R.randint(len(idx)))].tolist()
                return (r, c), cls
        h, w = cmap.shape
        return (int(self.R.randint(h)), int(self.R.randint(w))), cls

    def _crop(self, d: dict, center: Sequence[int], shape: Sequence[int]) -> dict:
        out = dict(d)
        start = [
            int(min(max(int(center[i]) - self.spatial_size[i] // 2, 0), max(shape[i] - self.spatial_size[i], 0)))
            for i in range(2)
        ]
        end = [min(start[i] + self.spatial_size[i], shape[i]) for i in range(2)]
        cropper = SpatialCrop(roi_start=start, roi_end=end)
        for key in self.key_iterator(out):
            out[key] = cropper(out[key])
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any] | list[dict[Hashable, Any]]:
        d = dict(data)
        label = d[self.label_key]
        cmap = (label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label))[0]
        shape = tuple(cmap.shape)
        center = d.pop(self.center_key, None)
        requested = d.get(self.class_key)
        requested = None if requested is None else int(requested)
        results = []
        if center is not None or requested is not None or self.num_samples == 1:
            for _ in range(self.num_samples):
                if center is not None:
                    ctr, cls = tuple(int(v) for v in center), (requested if requested is not None else -1)
                else:
                    ctr, cls = self._pick_center(cmap, requested)
                out = self._crop(d, ctr, shape)
                out[self.class_key] = cls
                results.append(out)
        else:
            present = [int(c) for c in torch.unique(cmap).tolist() if 0 < c <= self.num_classes] or [0]
            order: list[int] = []
            while len(order) < self.num_samples:
                order += [present[i] for i in self.R.permutation(len(present))]
            for cls in order[: self.num_samples]:
                ctr, cls = self._pick_center(cmap, cls)
                out = self._crop(d, ctr, shape)
                out[self.class_key] = cls
                results.append(out)
        return results[0] if self.num_samples == 1 else results


def load_transforms(
    keys: Sequence[str] = ("image", "label"), allow_missing_keys: bool = False
) -> list[MapTransform]:
    """Load PNG / TIFF files with numpy axis order (``PILReader(reverse_indexing=False)``), channel first.

    Pixel types are kept (uint8 image and class map, int32 instances).
    """
    return [
        LoadImaged(
            keys=list(keys),
            reader=PILReader(reverse_indexing=False),
            dtype=None,
            image_only=True,
            allow_missing_keys=allow_missing_keys,
        ),
        EnsureChannelFirstd(keys=list(keys), allow_missing_keys=allow_missing_keys),
    ]


def _label_format(label_format: str, num_classes: int, label_key: str) -> list:
    if label_format == "multilabel":
        return [ClassMapToMultiLabeld(keys=label_key, num_classes=num_classes)]
    if label_format == "classmap":
        return [CastToTyped(keys=label_key, dtype=torch.int64)]
    raise ValueError(f"label_format must be 'multilabel' or 'classmap', got {label_format!r}")


def train_transforms(
    roi_size: Sequence[int] | int = (256, 256),
    num_classes: int = NUM_CLASSES,
    label_format: str = "multilabel",
    num_samples: int = 1,
    rot90_prob: float = AUGMENTATION_DEFAULTS["rot90_prob"],
    rotate_prob: float = AUGMENTATION_DEFAULTS["rotate_prob"],
    flip_prob: float = AUGMENTATION_DEFAULTS["flip_prob"],
    gaussian_blur_prob: float = AUGMENTATION_DEFAULTS["gaussian_blur_prob"],
    median_blur_prob: float = AUGMENTATION_DEFAULTS["median_blur_prob"],
    elastic_prob: float = AUGMENTATION_DEFAULTS["elastic_prob"],
    rotate_range: float = math.pi,
    gaussian_sigma: Sequence[float] = (0.5, 1.5),
    median_radius: int = 1,
    elastic_spacing: Sequence[int] | int = (32, 32),
    elastic_magnitude: Sequence[float] = (1.0, 3.0),
    pad_value: float = 255,
) -> Compose:
    """Training chain: load, pad small tiles, class-centred crop, augment, build the target.

    Order: ``LoadImaged`` + ``EnsureChannelFirstd`` (numpy axis order), ``SpatialPadd`` to at least
    ``roi_size`` (image with white ``pad_value``, label with background), :class:`RandClassCropd`,
    scale to [0, 1], then the patent's augmentations, each applied with its own probability:

    - ``rot90_prob``: rotation by 90, 180 or 270 degrees (image and label);
    - ``rotate_prob``: rotation by an angle uniform in ``[-rotate_range, rotate_range]`` (bilinear image,
      nearest label, reflection padding);
    - ``flip_prob``: flip along rows, and independently along columns;
    - ``elastic_prob``: elastic deformation (control points every ``elastic_spacing`` px, magnitude
      ``elastic_magnitude``; bilinear image, nearest label);
    - ``gaussian_blur_prob``: Gaussian blur of the image, sigma uniform in ``gaussian_sigma``;
    - ``median_blur_prob``: median blur of the image (radius ``median_radius``).

    Finally the label is converted to ``label_format`` (see the module docstring for the keys).
    Everything before the crop is deterministic, so ``CacheDataset`` and
    :class:`~monai_nasscam.data.ClassBalancedCropDataset` cache it. Used alone (e.g. with a plain
    ``Dataset``), each crop is centred on a class present in its image; for crops balanced per batch
    wrap it in ``ClassBalancedCropDataset``.

    Args:
        roi_size: crop size.
        num_classes: number of foreground classes.
        label_format: ``"multilabel"`` or ``"classmap"``.
        num_samples: crops per image when used without ``ClassBalancedCropDataset`` (must be 1 with it).
        rot90_prob, rotate_prob, flip_prob, gaussian_blur_prob, median_blur_prob, elastic_prob: see above.
        rotate_range: maximum absolute rotation angle (radians).
        gaussian_sigma: range of the Gaussian blur sigma (px).
        median_radius: radius of the median filter.
        elastic_spacing: distance between elastic control points (px).
        elastic_magnitude: range of the elastic displacement magnitude.
        pad_value: image value used to pad small tiles (white).

    Returns:
        a MONAI ``Compose``.
    """
    roi = ensure_tuple_rep(roi_size, 2)
    keys = ["image", "label"]
    xforms: list = [
        *load_transforms(keys),
        SpatialPadd(keys="image", spatial_size=roi, method="symmetric", mode="constant", value=pad_value),
        SpatialPadd(keys="label", spatial_size=roi, method="symmetric", mode="constant", value=0),
        RandClassCropd(keys=keys, label_key="label", spatial_size=roi, num_classes=num_classes, num_samples=num_samples),
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, dtype=np.float32),
        CastToTyped(keys="label", dtype=torch.float32),
        RandRotate90d(keys=keys, prob=rot90_prob, max_k=3, spatial_axes=(0, 1)),
        RandRotated(
            keys=keys,
            range_x=rotate_range,
            prob=rotate_prob,
            keep_size=True,
            mode=("bilinear", "nearest"),
            padding_mode="reflection",
        ),
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=0),
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=1),
        Rand2DElasticd(
            keys=keys,
            spacing=ensure_tuple_rep(elastic_spacing, 2),
            magnitude_range=tuple(elastic_magnitude),
            prob=elastic_prob,
            mode=("bilinear", "nearest"),
            padding_mode="reflection",
        ),
        RandGaussianSmoothd(
            keys="image", sigma_x=tuple(gaussian_sigma), sigma_y=tuple(gaussian_sigma), prob=gaussian_blur_prob
        ),
        RandMedianSmoothd(keys="image", radius=median_radius, prob=median_blur_prob),
        *_label_format(label_format, num_classes, "label"),
    ]
    return Compose(xforms)


def val_transforms(
    num_classes: int = NUM_CLASSES,
    label_format: str = "multilabel",
    divisible: int | None = None,
    load_instance: bool = False,
    load_ambiguous: bool = False,
) -> Compose:
    """Validation / evaluation chain on whole images: load, scale to [0, 1], build the target.

    Args:
        num_classes: number of foreground classes.
        label_format: ``"multilabel"`` or ``"classmap"`` (see the module docstring).
        divisible: pad (at the end of each axis, white image / background label) so that both sides are
            divisible by this number; ``None`` keeps the size (a ``SlidingWindowInferer`` pads by itself).
        load_instance: also load ``instance`` (int32 instance map).
        load_ambiguous: also load ``ambiguous`` when the entry has it (test release).

    Returns:
        a MONAI ``Compose``.
    """
    keys = ["image", "label"]
    extra = (["instance"] if load_instance else []) + (["ambiguous"] if load_ambiguous else [])
    xforms: list = [*load_transforms(keys + extra, allow_missing_keys=bool(extra))]
    if divisible:
        xforms += [
            DivisiblePadd(keys="image", k=divisible, method="end", mode="constant", value=255),
            DivisiblePadd(keys=["label", *extra], k=divisible, method="end", mode="constant", value=0, allow_missing_keys=True),
        ]
    xforms += [
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, dtype=np.float32),
        *_label_format(label_format, num_classes, "label"),
    ]
    return Compose(xforms)


def inference_transforms(divisible: int | None = None) -> Compose:
    """Image-only chain for inference on prepared PNGs: load (numpy axis order), channel first, [0, 1]."""
    xforms: list = [*load_transforms(["image"])]
    if divisible:
        xforms.append(DivisiblePadd(keys="image", k=divisible, method="end", mode="constant", value=255))
    xforms.append(ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, dtype=np.float32))
    return Compose(xforms)
