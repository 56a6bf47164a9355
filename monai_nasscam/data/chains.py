"""The transform chains of the prepared MoNuSAC data (``PREP/datalist.json``): loading, training (class-centred crops,
augmentations, target), validation and inference; built from MONAI's transforms and those of
:mod:`monai_nasscam.data.transforms`, whose docstring lists the keys, shapes and dtypes of their samples."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    DivisiblePadd,
    EnsureChannelFirstd,
    LoadImaged,
    MapTransform,
    Rand2DElasticd,
    RandFlipd,
    RandGaussianSmoothd,
    RandRotate90d,
    RandRotated,
    ScaleIntensityRanged,
    SelectItemsd,
    SpatialPadd,
)
from monai.utils import ensure_tuple_rep

from .classes import IGNORE_VALUE, NUM_CLASSES
from .transforms import (
    AMBIGUOUS_KEY,
    ClassMapToMultiLabeld,
    DropEmptyd,
    EnsureAmbiguousd,
    IgnoreAmbiguousd,
    RandClassCropd,
    RandMedianSmoothd,
    WritablePILReader,
)

__all__ = ["AUGMENTATION_DEFAULTS", "load_transforms", "train_transforms", "val_transforms", "inference_transforms"]

#: default probability of each augmentation of :func:`train_transforms` (the patent's list)
AUGMENTATION_DEFAULTS: dict[str, float] = {
    "rot90_prob": 0.5,  # rotation by a multiple of 90 degrees (lossless)
    "rotate_prob": 0.25,  # rotation by any angle in [-180, 180) degrees (bilinear image, nearest label)
    "flip_prob": 0.5,  # flip, drawn independently for each of the two axes
    "gaussian_blur_prob": 0.2,  # Gaussian blur, sigma in [0.5, 1.5] px
    "median_blur_prob": 0.2,  # 3 x 3 median blur
    "elastic_prob": 0.2,  # elastic deformation
}



def load_transforms(
    keys: Sequence[str] = ("image", "label"), allow_missing_keys: bool = False
) -> list[MapTransform]:
    """Load PNG / TIFF files with numpy axis order (:class:`WritablePILReader` with ``reverse_indexing=False``),
    channel first.

    Pixel types are kept (uint8 image and class map, int32 instances).
    """
    return [
        LoadImaged(
            keys=list(keys),
            reader=WritablePILReader(reverse_indexing=False),
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
    ignore_ambiguous: bool = True,
) -> Compose:
    """Training chain: load, pad small tiles, class-centred crop, augment, build the target.

    Order: ``LoadImaged`` + ``EnsureChannelFirstd`` (numpy axis order) of the image, the label and, when the
    entry has one, the ``ambiguous`` mask (:class:`EnsureAmbiguousd`: zeros otherwise), ``SpatialPadd`` to at
    least ``roi_size`` (image with white ``pad_value``, label and mask with 0), :class:`RandClassCropd` (not
    centred on ambiguous pixels), scale to [0, 1], then the patent's augmentations, each applied with its own
    probability (the mask follows the label's spatial transforms, nearest interpolation):

    - ``rot90_prob``: rotation by 90, 180 or 270 degrees (image and label);
    - ``rotate_prob``: rotation by an angle uniform in ``[-rotate_range, rotate_range]`` (bilinear image,
      nearest label, reflection padding);
    - ``flip_prob``: flip along rows, and independently along columns;
    - ``elastic_prob``: elastic deformation (control points every ``elastic_spacing`` px, magnitude
      ``elastic_magnitude``; bilinear image, nearest label);
    - ``gaussian_blur_prob``: Gaussian blur of the image, sigma uniform in ``gaussian_sigma``;
    - ``median_blur_prob``: median blur of the image (radius ``median_radius``).

    Finally the label is converted to ``label_format`` (see the module docstring for the keys), its ambiguous
    pixels are set to -1 (:class:`IgnoreAmbiguousd`; :class:`~monai_nasscam.losses.ExpLogLoss` leaves them
    out), and only the chain's own keys are kept (``image``, ``label``, ``ambiguous``, ``class_map`` with the
    multi-label format, ``crop_class``), so entries with and without optional keys batch together.
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
        ignore_ambiguous: mark the ambiguous pixels of the target with -1 (False: keep the label as annotated;
            the ``ambiguous`` mask is still produced).

    Returns:
        a MONAI ``Compose``.
    """
    roi = ensure_tuple_rep(roi_size, 2)
    amb = AMBIGUOUS_KEY
    keys = ["image", "label", amb]
    xforms: list = [
        DropEmptyd(amb),
        *load_transforms(["image", "label"]),
        *load_transforms([amb], allow_missing_keys=True),
        EnsureAmbiguousd(amb, ref_key="label"),
        SpatialPadd(keys="image", spatial_size=roi, method="symmetric", mode="constant", value=pad_value),
        SpatialPadd(keys=["label", amb], spatial_size=roi, method="symmetric", mode="constant", value=0),
        RandClassCropd(
            keys=keys,
            label_key="label",
            spatial_size=roi,
            num_classes=num_classes,
            num_samples=num_samples,
            ignore_key=amb,
        ),
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, dtype=np.float32),
        CastToTyped(keys=["label", amb], dtype=torch.float32),
        RandRotate90d(keys=keys, prob=rot90_prob, max_k=3, spatial_axes=(0, 1)),
        RandRotated(
            keys=keys,
            range_x=rotate_range,
            prob=rotate_prob,
            keep_size=True,
            mode=("bilinear", "nearest", "nearest"),
            padding_mode="reflection",
        ),
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=0),
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=1),
        Rand2DElasticd(
            keys=keys,
            spacing=ensure_tuple_rep(elastic_spacing, 2),
            magnitude_range=tuple(elastic_magnitude),
            prob=elastic_prob,
            mode=("bilinear", "nearest", "nearest"),
            padding_mode="reflection",
        ),
        RandGaussianSmoothd(
            keys="image", sigma_x=tuple(gaussian_sigma), sigma_y=tuple(gaussian_sigma), prob=gaussian_blur_prob
        ),
        RandMedianSmoothd(keys="image", radius=median_radius, prob=median_blur_prob),
        *_label_format(label_format, num_classes, "label"),
    ]
    if ignore_ambiguous:
        xforms.append(IgnoreAmbiguousd("label", mask_key=amb, ignore_value=IGNORE_VALUE))
    else:  # the mask as uint8 0/1 all the same
        xforms.append(CastToTyped(keys=amb, dtype=torch.uint8))
    kept = ["image", "label", amb, "crop_class"] + (["class_map"] if label_format == "multilabel" else [])
    xforms.append(SelectItemsd(keys=kept))
    return Compose(xforms)


def val_transforms(
    num_classes: int = NUM_CLASSES,
    label_format: str = "multilabel",
    divisible: int | None = None,
    load_instance: bool = False,
    load_ambiguous: bool = True,
) -> Compose:
    """Validation / evaluation chain on whole images: load, scale to [0, 1], build the target.

    The label is kept as annotated; to leave the ambiguous pixels out of the scores, postprocess with
    :class:`ExcludeAmbiguousd` (pixel metrics) and give the mask to
    :class:`~monai_nasscam.metrics.PooledPQMetric` (as the bundle configs do).

    Args:
        num_classes: number of foreground classes.
        label_format: ``"multilabel"`` or ``"classmap"`` (see the module docstring).
        divisible: pad (at the end of each axis, white image / background label) so that both sides are
            divisible by this number; ``None`` keeps the size (a ``SlidingWindowInferer`` pads by itself).
        load_instance: also load ``instance`` (int32 instance map; every entry must have one).
        load_ambiguous: give every sample an ``ambiguous`` mask: the entry's file when it has one (test
            release), zeros otherwise (:class:`EnsureAmbiguousd`).

    Returns:
        a MONAI ``Compose``.
    """
    keys = ["image", "label"] + (["instance"] if load_instance else [])
    extra = [AMBIGUOUS_KEY] if load_ambiguous else []
    xforms: list = [*load_transforms(keys)]
    if load_ambiguous:
        xforms = [
            DropEmptyd(AMBIGUOUS_KEY),
            *xforms,
            *load_transforms([AMBIGUOUS_KEY], allow_missing_keys=True),
            EnsureAmbiguousd(AMBIGUOUS_KEY, ref_key="label"),
        ]
    extra = keys[2:] + extra
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
