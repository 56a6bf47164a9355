"""The prepared dataset's data lists: ``PREP/datalist.json`` read with absolute paths, one split of it, the search's
weight / architecture parts, the number of items per training epoch and the class weights of the training labels.

These are what the bundle configs feed their datasets and losses with (``search.yaml``, ``train.yaml``,
``evaluate.yaml``); every problem with the datalist gives an :class:`~monai_nasscam.errors.InputError` naming the
file, reported as one line.
"""

from __future__ import annotations

import json
import math
import os
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_nasscam.data.class_weights import count_labels, weights_from_frequencies
from monai_nasscam.data.classes import NUM_CLASSES
from monai_nasscam.errors import input_check

__all__ = [
    "PATH_KEYS",
    "SPLITS",
    "read_datalist",
    "split_entries",
    "semantic_only_split",
    "split_architecture",
    "search_datalists",
    "epoch_groups",
    "label_class_weights",
]

#: datalist keys that hold paths relative to the prepared dataset folder.
PATH_KEYS = ("image", "label", "instance", "ambiguous")
#: the splits of a datalist.
SPLITS = ("training", "validation", "test")


@input_check
def read_datalist(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``dataset_dir/datalist.json`` (docs/data.md §2) with paths made absolute.

    Args:
        dataset_dir: a folder written by ``nasscam prepare``.

    Returns:
        the datalist, each split a list of entries (``image``, ``label``, ... as absolute paths).

    Raises:
        MissingInputError: no dataset folder or no ``datalist.json`` in it (also a ``FileNotFoundError``).
        InputError: ``dataset_dir`` is a file, not a folder.
        InputError: the file is not valid JSON or not a datalist.
    """
    root = Path(dataset_dir).expanduser()
    path = root / "datalist.json"
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(
            f"dataset_dir {str(root)!r} is a file, not a folder; pass --dataset_dir PREP, the folder written by "
            f"`nasscam prepare --data-dir RAW --out-dir PREP`."
        )
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset_dir {str(root)!r} does not exist; prepare a dataset with `nasscam prepare --data-dir RAW "
            f"--out-dir PREP` and pass --dataset_dir PREP."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: dataset_dir must be a folder written by `nasscam prepare --data-dir RAW --out-dir PREP`."
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a JSON object with 'training' and 'validation' lists.")
    out: dict[str, Any] = dict(data)
    for split in SPLITS:
        entries = data.get(split, [])
        if not isinstance(entries, list):
            raise ValueError(f"{path}: {split!r} must be a list, got {type(entries).__name__}.")
        fixed = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or "image" not in entry or "label" not in entry:
                raise ValueError(f"{path}: {split}[{i}] must be an object with 'image' and 'label'.")
            item = dict(entry)
            for key in PATH_KEYS:
                if isinstance(item.get(key), str):
                    item[key] = str(root / item[key])
            fixed.append(item)
        out[split] = fixed
    return out


@input_check
def split_entries(dataset_dir: str | os.PathLike, split: str) -> list[dict]:
    """The entries of one split of ``dataset_dir/datalist.json`` (paths absolute); ``"all"``: every split, e.g. to
    evaluate on a whole prepared test release.

    Raises:
        InputError: unknown or empty split (naming the datalist).
    """
    if split not in (*SPLITS, "all"):
        raise ValueError(f"split must be one of {[*SPLITS, 'all']}, got {split!r}.")
    data = read_datalist(dataset_dir)
    entries = [e for s in (SPLITS if split == "all" else (split,)) for e in (data.get(s) or [])]
    if not entries:
        raise ValueError(
            f"{Path(dataset_dir) / 'datalist.json'} lists no {split} images; re-run `nasscam prepare` with more "
            "images or another split"
            + (", or evaluate another split (--eval_split validation)." if split == "test" else ".")
        )
    return entries


def semantic_only_split(dataset_dir: str | os.PathLike, split: str) -> bool:
    """Whether every entry of ``split`` in ``dataset_dir/datalist.json`` is marked ``"semantic_only": true`` (an image
    + mask folder whose masks merge touching nuclei of a class): evaluation then skips the instance metrics, which
    would score merged regions as nuclei. ``False`` when the datalist cannot be read or the split is empty (the
    workflow's input checks report those); the evaluation report still checks each evaluated entry's flag.
    """
    try:
        entries = split_entries(dataset_dir, split)
    except (OSError, ValueError):
        return False
    return all(bool(e.get("semantic_only", False)) for e in entries)


@input_check
def split_architecture(
    training: Sequence[Mapping], arch_fraction: float = 0.5, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Split the training images into weight and architecture parts (seeded, disjoint, both non-empty).

    Args:
        training: the datalist's training entries.
        arch_fraction: share of the images held out for the alpha steps (rounded, at least one each side).
        seed: the split's seed.

    Returns:
        ``(weight entries, architecture entries)``, each in datalist order; the same for the same images and seed
        whatever the datalist's order.
    """
    if not 0.0 < float(arch_fraction) < 1.0:
        raise ValueError(f"arch_fraction must lie strictly between 0 and 1, got {arch_fraction}.")
    items = [dict(t) for t in training]
    if len(items) < 2:
        raise ValueError(
            f"the search needs at least 2 training images (one for the weights, one held out for the "
            f"architecture), the dataset has {len(items)}."
        )
    order = sorted(range(len(items)), key=lambda i: str(items[i].get("name", items[i]["image"])))
    random.Random(int(seed)).shuffle(order)
    n_arch = min(max(1, round(len(items) * float(arch_fraction))), len(items) - 1)
    arch = sorted(order[:n_arch])
    weights = sorted(order[n_arch:])
    return [items[i] for i in weights], [items[i] for i in arch]


@input_check
def search_datalists(dataset_dir: str | os.PathLike, arch_fraction: float = 0.5, seed: int = 0) -> dict[str, list]:
    """The search's data lists: ``{"training": [...], "architecture": [...], "validation": [...]}``.

    ``training`` feeds the weight steps and ``architecture`` (a seeded held-out part of the datalist's training
    images, :func:`split_architecture`) the alpha steps; ``validation`` picks the best genotype. Paths are absolute.

    Raises:
        InputError: no training or no validation images (naming the datalist), or too few to split.
    """
    data = read_datalist(dataset_dir)
    path = Path(dataset_dir) / "datalist.json"
    if not data.get("training"):
        raise ValueError(f"{path} lists no training images; the search needs training images to learn from.")
    if not data.get("validation"):
        raise ValueError(
            f"{path} lists no validation images; the search picks its genotype on validation Dice "
            "(re-run `nasscam prepare` with more images or another split)."
        )
    weights, arch = split_architecture(data["training"], arch_fraction, seed)
    return {"training": weights, "architecture": arch, "validation": list(data["validation"])}


def _image_size(path: str) -> tuple[int, int]:
    """``(height, width)`` of an image file, read from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


@input_check
def epoch_groups(
    entries: Sequence[Mapping],
    roi_size: Sequence[int] | int,
    stride: Sequence[int] | int | None = None,
    epoch_crops: int | None = None,
    num_classes: int = NUM_CLASSES,
) -> int:
    """Items per training epoch of :class:`~monai_nasscam.data.ClassBalancedCropDataset` (``num_classes`` crops each).

    ``epoch_crops`` crops per epoch, rounded up to whole items (with a warning); ``None`` means the paper's epoch: as
    many crops as there are overlapping ``roi_size`` windows every ``stride`` (default: half the window) in the
    training images (4,803 for MoNuSAC's 120 training images at 256 / 128).

    Raises:
        InputError: ``epoch_crops`` below 1.
    """
    from monai.utils import ensure_tuple_rep

    from monai_nasscam.data.sampling import grid_windows

    roi = ensure_tuple_rep(roi_size, 2)
    step = ensure_tuple_rep(stride, 2) if stride is not None else tuple(max(1, int(r) // 2) for r in roi)
    if epoch_crops is None:
        epoch_crops = sum(len(grid_windows(_image_size(e["image"]), roi, step)) for e in entries)
    crops = int(epoch_crops)
    if crops < 1:
        raise ValueError(f"epoch_crops must be >= 1, got {epoch_crops}.")
    groups = math.ceil(crops / num_classes)
    if groups * num_classes != crops:
        warnings.warn(f"epoch_crops {epoch_crops} is not a whole number of class-balanced groups of {num_classes} "
                      f"crops (one per class): an epoch is {groups * num_classes} crops.", stacklevel=2)
    return groups


def label_class_weights(entries: Sequence[Mapping], num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Wong et al.'s class weights ``((sum_k f_k) / f_l) ** 0.5`` of the nucleus classes, ``f`` the pixel counts
    in the training label maps (``entry["label"]``). A class absent from every map gets the largest weight of the
    present ones (with a warning); no nucleus at all gives weights 1.

    Returns:
        a float tensor of shape ``(num_classes,)``.
    """
    from PIL import Image

    maps = []
    for entry in entries:
        with Image.open(entry["label"]) as im:
            maps.append(np.asarray(im))
    counts = count_labels(maps, num_classes + 1, skip_background=True).double()
    present = counts > 0
    if not bool(present.any()):
        warnings.warn("no nucleus in the training labels; using class weights 1.", stacklevel=2)
        return torch.ones(num_classes)
    weights = torch.zeros(num_classes)
    weights[present] = weights_from_frequencies(counts[present])
    if not bool(present.all()):
        missing = [int(i) + 1 for i in torch.nonzero(~present).flatten()]
        warnings.warn(f"class ids {missing} occur in no training label; they get the largest weight.", stacklevel=2)
        weights[~present] = weights[present].max()
    return weights
