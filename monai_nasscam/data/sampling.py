"""Class-balanced training crops: every item is one crop per class, so every batch is balanced."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, apply_transform
from monai.transforms.transform import Randomizable, RandomizableTrait, Transform
from monai.utils import ensure_tuple_rep
from torch.utils.data import Dataset as _TorchDataset

from .classes import NUM_CLASSES

__all__ = ["ClassBalancedCropDataset", "grid_windows"]


def grid_windows(size: Sequence[int], roi_size: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int]]:
    """Top-left corners of overlapping ``roi_size`` windows every ``stride`` covering an image of ``size``.

    The last window of each axis is aligned with the image end (the paper's 256 / stride 128 crops).
    """
    starts = []
    for n, r, s in zip(size, roi_size, stride):
        last = max(int(n) - int(r), 0)
        axis = list(range(0, last + 1, int(s)))
        if axis[-1] != last:
            axis.append(last)
        starts.append(axis)
    return [(a, b) for a in starts[0] for b in starts[1]]


class ClassBalancedCropDataset(Randomizable, _TorchDataset):
    """A dataset whose every item is a list of ``num_classes`` crops, the k-th containing class k + 1.

    With MONAI's ``DataLoader`` (``list_data_collate`` flattens the lists), a batch of ``B`` items holds
    ``B * num_classes`` crops, exactly ``B`` per class; ``batch_size=1`` is the reference setting (4 crops,
    one per class). The deterministic head of ``transform`` (everything before its first random
    transform: loading and padding) is run once per image at construction and cached; the rest (the
    :class:`~monai_nasscam.data.transforms.RandClassCropd` crop and the augmentations) runs per crop.

    Modes:

    - ``"pixel"``: the crop is centred on a pixel drawn uniformly among all pixels of the class in the
      training set (the image is drawn with probability proportional to its pixel count of the class);
    - ``"grid"``: the paper's crops: the overlapping ``roi_size`` windows every ``stride`` of every image;
      the crop is drawn uniformly among the windows that contain the class.

    Pixels of the ``ignore_key`` mask (ambiguous regions, left out of the loss) are not sampled: pixel mode
    counts and draws only the other pixels of a class, and grid mode keeps a window for a class only when it
    holds such a pixel of it. A class absent from every image (or present only in ambiguous regions) is
    replaced by a random present class (with a warning).

    Args:
        data: datalist entries (``{"image", "label", ...}`` with absolute paths, e.g. from
            ``monai.data.load_decathlon_datalist``).
        transform: a chain from :func:`~monai_nasscam.data.chains.train_transforms` (or any chain whose
            crop reads ``crop_class`` / ``crop_center``).
        num_classes: number of foreground classes.
        num_groups: items per epoch (default: the number of images).
        mode: ``"pixel"`` or ``"grid"``.
        roi_size: crop size (grid mode).
        stride: window stride (grid mode).
        label_key: key of the class map (after the cached head: ``(1, H, W)``).
        class_key: key that tells the crop transform which class to centre on.
        center_key: key that tells the crop transform where to centre (grid mode).
        ignore_key: key of the ``(1, H, W)`` mask of pixels not to sample (after the cached head; a sample
            without it has none); ``None``: every pixel is sampled.
        seed: random seed of the sampler (the DataLoader's ``worker_init_fn`` reseeds workers).
    """

    def __init__(
        self,
        data: Sequence[dict],
        transform: Compose | Sequence[Callable],
        num_classes: int = NUM_CLASSES,
        num_groups: int | None = None,
        mode: str = "pixel",
        roi_size: Sequence[int] | int = (256, 256),
        stride: Sequence[int] | int = (128, 128),
        label_key: str = "label",
        class_key: str = "crop_class",
        center_key: str = "crop_center",
        ignore_key: str | None = "ambiguous",
        seed: int = 0,
    ) -> None:
        if mode not in ("pixel", "grid"):
            raise ValueError(f"mode must be 'pixel' or 'grid', got {mode!r}")
        if not len(data):
            raise ValueError("ClassBalancedCropDataset needs at least one image")
        self.transform = transform if isinstance(transform, Compose) else Compose(list(transform))
        ts = list(self.transform.transforms)
        first_random = next(
            (i for i, t in enumerate(ts) if isinstance(t, RandomizableTrait) or not isinstance(t, Transform)), len(ts)
        )
        self._head, self._tail = Compose(ts[:first_random]), Compose(ts[first_random:])
        if any(getattr(t, "num_samples", 1) != 1 for t in ts[first_random:]):
            raise ValueError("the crop transform must return one crop (num_samples=1): the dataset draws the classes")
        self.num_classes, self.mode = num_classes, mode
        self.roi_size, self.stride = ensure_tuple_rep(roi_size, 2), ensure_tuple_rep(stride, 2)
        self.label_key, self.class_key, self.center_key = label_key, class_key, center_key
        self.ignore_key = ignore_key
        self.num_groups = int(num_groups) if num_groups else len(data)
        self._cache = [apply_transform(self._head, dict(item)) for item in data]
        self._pools: list[tuple[np.ndarray, np.ndarray | None]] = []
        for c in range(1, num_classes + 1):
            self._pools.append(self._build_pool(c))
        missing = [c for c, (imgs, _) in enumerate(self._pools, start=1) if len(imgs) == 0]
        self.present = [c for c in range(1, num_classes + 1) if c not in missing]
        if not self.present:
            raise ValueError("no image of the dataset contains any annotated nucleus")
        if missing:
            warnings.warn(
                f"classes {missing} occur in no training image (outside ambiguous regions); their crops use other "
                "classes",
                stacklevel=2,
            )
        self.set_random_state(seed)

    def _class_map(self, i: int) -> torch.Tensor:
        lab = self._cache[i][self.label_key]
        lab = lab.as_tensor() if hasattr(lab, "as_tensor") else torch.as_tensor(lab)
        return lab[0]

    def _class_mask(self, i: int, c: int) -> torch.Tensor:
        """Pixels of class ``c`` in image ``i`` that may be sampled (not in the ``ignore_key`` mask)."""
        mask = self._class_map(i) == c
        ignore = self._cache[i].get(self.ignore_key) if self.ignore_key is not None else None
        if ignore is not None:
            ignore = ignore.as_tensor() if hasattr(ignore, "as_tensor") else torch.as_tensor(ignore)
            mask = mask & (ignore[0] == 0)
        return mask

    def _build_pool(self, c: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixel mode: (image indices, pixel counts); grid mode: (image indices, window centres)."""
        if self.mode == "pixel":
            counts = np.array([int(self._class_mask(i, c).sum()) for i in range(len(self._cache))])
            idx = np.nonzero(counts)[0]
            return idx, counts[idx].astype(np.float64)
        images, centres = [], []
        for i in range(len(self._cache)):
            mask = self._class_mask(i, c).numpy()
            if not mask.any():
                continue
            # windows containing c: integral image for O(1) per window
            ii = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            for r, q in grid_windows(mask.shape, self.roi_size, self.stride):
                r1, q1 = min(r + self.roi_size[0], mask.shape[0]), min(q + self.roi_size[1], mask.shape[1])
                if ii[r1, q1] - ii[r, q1] - ii[r1, q] + ii[r, q] > 0:
                    images.append(i)
                    centres.append((r + self.roi_size[0] // 2, q + self.roi_size[1] // 2))
        return np.asarray(images, dtype=np.int64), np.asarray(centres, dtype=np.int64).reshape(-1, 2)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Randomizable:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed=int(self.R.randint(2**31)))
        return self

    def randomize(self, data: Any = None) -> None:
        """Sampling is drawn in :meth:`__getitem__`."""

    def __len__(self) -> int:
        return self.num_groups

    def _sample(self, c: int) -> dict:
        if c not in self.present:
            c = int(self.R.choice(self.present))
        images, extra = self._pools[c - 1]
        if self.mode == "pixel":
            i = int(images[self.R.choice(len(images), p=extra / extra.sum())])
            d = dict(self._cache[i])
        else:
            k = int(self.R.randint(len(images)))
            d = dict(self._cache[int(images[k])])
            d[self.center_key] = tuple(int(v) for v in extra[k])
        d[self.class_key] = c
        return d

    def __getitem__(self, index: int) -> list[dict]:
        if not 0 <= int(index) < len(self):
            raise IndexError(index)
        return [apply_transform(self._tail, self._sample(c)) for c in range(1, self.num_classes + 1)]
