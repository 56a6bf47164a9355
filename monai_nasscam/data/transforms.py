"""MONAI dictionary transforms for the prepared MoNuSAC data (``PREP/datalist.json``); the chains that use them
(training, validation, inference) are built in :mod:`monai_nasscam.data.chains`.

Keys produced by those chains (for a batch, add a leading batch dimension):

=================  ==========================  ==============================================================
key                shape / dtype               content
=================  ==========================  ==============================================================
``image``          ``(3, H, W)`` float32       RGB scaled to [0, 1] (stain-normalised by ``nasscam prepare``)
``label``          ``(4, H, W)`` float32       multi-label target, channel ``c - 1`` = class ``c``
                                               (``label_format="multilabel"``, the default, for the
                                               4-channel sigmoid head); or ``(1, H, W)`` int64 class map
                                               0-4 with ``label_format="classmap"`` (softmax head). Training
                                               crops: -1 (:data:`~monai_nasscam.data.classes.IGNORE_VALUE`, every
                                               channel) on ambiguous pixels, which the loss leaves out
``class_map``      ``(1, H, W)`` uint8         class map 0-4 (``"multilabel"`` format only)
``crop_class``     int                         class the training crop was centred on (training only)
``instance``       ``(1, H, W)`` int32         instance ids (validation, ``load_instance=True``)
``ambiguous``      ``(1, H, W)`` uint8         ambiguous-region mask, 1 = not scored; every sample has one
                                               (zeros when its entry has no ``"ambiguous"`` file), so entries
                                               with and without it batch together
=================  ==========================  ==============================================================

A training sample holds exactly the keys above (other datalist keys, e.g. ``name`` or ``patient``, are dropped
after loading), so crops of entries with different optional keys collate into one batch.

Axis order is numpy's: ``image[:, row, col]`` is the pixel at ``(row, col)`` of the PNG, the same
pixel that ``skimage.draw.polygon`` filled for XML vertex ``(Y=row, X=col)``. (MONAI's ``PILReader``
swaps the two axes by default; the loaders here use ``reverse_indexing=False``.)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, PILReader
from monai.transforms import MapTransform, MedianSmooth, RandomizableTransform, SpatialCrop
from monai.transforms.transform import Randomizable
from monai.utils import ensure_tuple_rep

from .classes import IGNORE_VALUE, NUM_CLASSES

__all__ = [
    "AMBIGUOUS_KEY",
    "DropEmptyd",
    "EnsureAmbiguousd",
    "IgnoreAmbiguousd",
    "ExcludeAmbiguousd",
    "ClassMapToMultiLabeld",
    "RandClassCropd",
    "RandMedianSmoothd",
    "WritablePILReader",
]

#: datalist / sample key of the ambiguous-region mask (MoNuSAC's test release, ``PREP/ambiguous/NAME.png``)
AMBIGUOUS_KEY = "ambiguous"


class WritablePILReader(PILReader):
    """MONAI's ``PILReader`` whose arrays are writable.

    ``numpy.asarray`` of a PIL image is a read-only view of the image's bytes; ``LoadImage`` turns it into a tensor
    with ``torch.as_tensor``, which shares the memory and warns once per process that "The given NumPy array is not
    writable" (the tensor must not be written to). A writable copy, made here once per loaded image, silences it
    where it starts; an array that is already writable is returned as it is.
    """

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        data, meta = super().get_data(img)
        return (data if data.flags.writeable else data.copy()), meta


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, MetaTensor):
        return x.as_tensor()
    return x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))


def _source(d: Mapping[Hashable, Any], key: Hashable) -> str:
    """The file a loaded sample came from (for messages), else the key."""
    meta = getattr(d.get(key), "meta", {}) or {}
    return str(meta.get("filename_or_obj", key))


class DropEmptyd(MapTransform):
    """Remove ``keys`` whose value is ``None`` or ``""`` (an optional datalist path written as null / empty), so
    that a later ``LoadImaged(..., allow_missing_keys=True)`` treats them as absent.

    Args:
        keys: optional keys.
    """

    def __init__(self, keys: KeysCollection) -> None:
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if key in d and (d[key] is None or (isinstance(d[key], str) and not d[key].strip())):
                del d[key]
        return d


class EnsureAmbiguousd(MapTransform):
    """Give every sample an ambiguous-region mask: the loaded one as ``(1, H, W)`` uint8 0/1, or zeros of the
    reference key's spatial size when the entry has none (MoNuSAC's training release, most test images).

    Every sample then has the same keys, so samples with and without a mask collate into one batch (a batch of
    dictionaries with different keys fails with ``KeyError: 'ambiguous'``). A zero mask is a ``MetaTensor``
    carrying a copy of the reference's metadata, so the metadata of all samples collate too.

    Args:
        keys: mask keys (default ``"ambiguous"``), after ``LoadImaged`` + ``EnsureChannelFirstd``.
        ref_key: a loaded key of the same spatial size (the label).

    Raises:
        ValueError: a loaded mask whose size is not the reference's (names both files).
    """

    def __init__(self, keys: KeysCollection = AMBIGUOUS_KEY, ref_key: str = "label") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        spatial = tuple(ref.shape[1:])
        for key in self.keys:
            if key in d:
                mask = _as_tensor(d[key])
                if tuple(mask.shape[1:]) != spatial:
                    raise ValueError(
                        f"{_source(d, key)}: the {key} mask is {tuple(mask.shape[1:])} but "
                        f"{_source(d, self.ref_key)} is {spatial} (rows, columns)."
                    )
                mask = (mask[:1] != 0).to(torch.uint8)
                src = d[key]
            else:
                mask, src = torch.zeros((1, *spatial), dtype=torch.uint8), ref
            if isinstance(src, MetaTensor):
                mask = MetaTensor(mask, meta=dict(src.meta), applied_operations=list(src.applied_operations))
            d[key] = mask
        return d


class IgnoreAmbiguousd(MapTransform):
    """Mark the ambiguous pixels of a training target with ``ignore_value`` (in every channel), which
    :class:`~monai_nasscam.losses.ExpLogLoss` leaves out; the mask itself is kept as uint8 0/1.

    Run it after the spatial augmentations (the mask must have gone through the same ones as the label, with
    nearest interpolation); a mask value >= 0.5 counts as ambiguous.

    Args:
        keys: target keys (default ``"label"``).
        mask_key: the ambiguous mask; absent or all zero: the targets are unchanged.
        ignore_value: the loss's ``ignore_value``.
    """

    def __init__(
        self, keys: KeysCollection = "label", mask_key: str = AMBIGUOUS_KEY, ignore_value: float = IGNORE_VALUE
    ) -> None:
        super().__init__(keys)
        self.mask_key = mask_key
        self.ignore_value = ignore_value

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.mask_key not in d:
            return d
        src = d[self.mask_key]
        ambiguous = _as_tensor(src)[:1] >= 0.5
        mask = ambiguous.to(torch.uint8)
        if isinstance(src, MetaTensor):
            mask = MetaTensor(mask, meta=src.meta, applied_operations=src.applied_operations)
        d[self.mask_key] = mask
        if not bool(ambiguous.any()):
            return d
        for key in self.key_iterator(d):
            target = d[key]
            if target.is_floating_point() or target.dtype in (torch.int64, torch.int32, torch.int16, torch.int8):
                d[key] = torch.where(ambiguous, torch.as_tensor(self.ignore_value, dtype=target.dtype), target)
            else:
                raise ValueError(f"{key} is {target.dtype}, which cannot hold ignore_value {self.ignore_value}.")
        return d


class ExcludeAmbiguousd(MapTransform):
    """Zero ``keys`` (e.g. the binarised prediction and the label) on the ambiguous pixels, so that pixel-wise
    metrics (pooled Dice, MONAI's ``DiceMetric``) do not score them: such a pixel then adds nothing to any
    intersection or sum, whatever was predicted or annotated there. For validation / evaluation postprocessing
    (``SupervisedEvaluator(postprocessing=...)`` sees the batch's ``ambiguous`` key beside ``pred``).

    Args:
        keys: (C, H, W) tensors to mask.
        mask_key: the ``(1, H, W)`` ambiguous mask (non-zero = ambiguous); absent: the data are unchanged.
        names: write the masked tensors under these keys instead of replacing ``keys`` (one name per key).
        allow_missing_keys: do not raise when a key of ``keys`` is missing.

    Raises:
        ValueError: the mask's spatial size differs from a key's.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = AMBIGUOUS_KEY,
        names: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.names = None if names is None else ([names] if isinstance(names, str) else list(names))
        if self.names is not None and len(self.names) != len(self.keys):
            raise ValueError(f"names {self.names} should have one name per key of {list(self.keys)}.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = d.get(self.mask_key)
        for i, key in enumerate(self.keys):
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"key '{key}' is not in the data (keys: {sorted(map(str, d))}).")
            value = d[key]
            out = value
            if mask is not None:
                keep = _as_tensor(mask) == 0
                if tuple(keep.shape[-2:]) != tuple(value.shape[-2:]) or keep.ndim != value.ndim:
                    raise ValueError(f"the {self.mask_key} mask {tuple(keep.shape)} does not match {key} "
                                     f"{tuple(value.shape)}.")
                keep = keep.to(value.device)
                out = value * keep.to(value.dtype) if value.is_floating_point() else torch.where(
                    keep, value, torch.zeros_like(value))
            elif self.names is not None:
                out = value.clone() if torch.is_tensor(value) else value
            d[key if self.names is None else self.names[i]] = out
        return d


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
    With ``ignore_key``, pixels where that mask is non-zero (ambiguous regions) are not chosen as centres and do
    not make a class present, unless the class has no other pixel.

    Args:
        keys: keys to crop (e.g. ``["image", "label"]``).
        label_key: key of the ``(1, H, W)`` class map.
        spatial_size: crop size ``(rows, cols)``.
        num_classes: number of foreground classes.
        num_samples: crops per call (a list is returned when > 1).
        class_key: key of the requested / used class.
        center_key: key of a requested centre.
        ignore_key: key of a ``(1, H, W)`` mask of pixels not to centre on (``None``: none; a missing key: none).
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
        ignore_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.label_key = label_key
        self.ignore_key = ignore_key
        self.spatial_size = ensure_tuple_rep(spatial_size, 2)
        self.num_classes = num_classes
        self.num_samples = int(num_samples)
        self.class_key = class_key
        self.center_key = center_key

    def randomize(self, data: Any = None) -> None:
        """Randomness is drawn in :meth:`__call__` (centres depend on the data)."""

    def _present(self, cmap: torch.Tensor, counted: torch.Tensor | None) -> list[int]:
        values = cmap if counted is None else cmap[counted]
        present = [int(c) for c in torch.unique(values).tolist() if 0 < c <= self.num_classes]
        if not present and counted is not None:
            return self._present(cmap, None)
        return present

    def _pick_center(
        self, cmap: torch.Tensor, cls: int | None, counted: torch.Tensor | None = None
    ) -> tuple[tuple[int, int], int]:
        if cls is None:
            present = self._present(cmap, counted)
            cls = int(self.R.choice(present)) if present else 0
        if cls > 0:
            idx = torch.nonzero(cmap == cls)
            if counted is not None:
                idx_counted = torch.nonzero((cmap == cls) & counted)
                idx = idx_counted if len(idx_counted) else idx
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
        counted = None
        if self.ignore_key is not None and self.ignore_key in d:
            ignore = _as_tensor(d[self.ignore_key])[0] != 0
            counted = ~ignore if bool(ignore.any()) else None
        center = d.pop(self.center_key, None)
        requested = d.get(self.class_key)
        requested = None if requested is None else int(requested)
        results = []
        if center is not None or requested is not None or self.num_samples == 1:
            for _ in range(self.num_samples):
                if center is not None:
                    ctr, cls = tuple(int(v) for v in center), (requested if requested is not None else -1)
                else:
                    ctr, cls = self._pick_center(cmap, requested, counted)
                out = self._crop(d, ctr, shape)
                out[self.class_key] = cls
                results.append(out)
        else:
            present = self._present(cmap, counted) or [0]
            order: list[int] = []
            while len(order) < self.num_samples:
                order += [present[i] for i in self.R.permutation(len(present))]
            for cls in order[: self.num_samples]:
                ctr, cls = self._pick_center(cmap, cls, counted)
                out = self._crop(d, ctr, shape)
                out[self.class_key] = cls
                results.append(out)
        return results[0] if self.num_samples == 1 else results
