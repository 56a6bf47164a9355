"""Checks, network choice and data lists of the retraining and evaluation workflows (``bundle/configs/train.yaml``,
``bundle/configs/evaluate.yaml``).

Everything a user can get wrong on the command line -- no prepared dataset, an empty split, an unknown attention, a
missing or mismatched genotype, a checkpoint of another architecture, inconsistent budgets -- gives a clear message
naming the file at fault here, in the workflow's ``initialize`` step, before a batch is loaded or a step is made.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn as nn

from monai_nasscam.engines.search_inputs import read_datalist
from monai_nasscam.fileio import atomic_write_text
from monai_nasscam.networks.blocks import NAS_ATTENTIONS
from monai_nasscam.networks.genotype import Genotype

__all__ = [
    "TRAIN_CHECKPOINT_NAME",
    "BASELINE_ATTENTIONS",
    "TRAIN_ATTENTIONS",
    "resolve_network_choice",
    "build_network",
    "describe_network",
    "describe_inferer",
    "split_entries",
    "epoch_groups",
    "label_class_weights",
    "check_checkpoint",
    "check_train_inputs",
    "check_evaluate_inputs",
    "record_run_inputs",
]

#: file name of the resumable training checkpoint under ``RUN/checkpoints``.
TRAIN_CHECKPOINT_NAME = "train_checkpoint.pt"
#: baselines of the paper's Table 2 (``unet`` is the plain U-Net, the same as attention ``none``).
BASELINE_ATTENTIONS = ("unet", "none", "cbam", "scse", "deeplabv3plus")
#: every ``attention`` value train.yaml accepts; NAS attentions need a searched genotype.
TRAIN_ATTENTIONS = BASELINE_ATTENTIONS + tuple(NAS_ATTENTIONS)


def _is_null(value: Any, nulls: tuple[str, ...] = ("", "null")) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in nulls)


def resolve_network_choice(
    attention: str | None = None,
    genotype_path: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
) -> tuple[str, Genotype | None, str | None]:
    """Which network train.yaml builds: ``(attention, genotype or None, genotype file or None)``.

    - ``genotype_path`` given: the derived (searched) network; ``attention``, when also given, must be the genotype's.
    - ``attention`` a baseline (``unet``/``none``, ``cbam``, ``scse``, ``deeplabv3plus``): that baseline, no genotype.
    - ``attention`` a NAS attention without ``genotype_path``, or neither given: the search's genotype
      ``output_dir/genotype.json`` (so ``search.yaml`` then ``train.yaml`` with the same ``--output_dir`` chain).

    Raises:
        ValueError: unknown attention, a baseline given a genotype, or a genotype of another attention (naming the
            file).
        FileNotFoundError: no genotype where one is needed (naming the path looked at).
    """
    attention = None if _is_null(attention) else str(attention).strip().lower()
    genotype_path = None if _is_null(genotype_path, ("", "null", "none")) else str(genotype_path)
    if attention is not None and attention not in TRAIN_ATTENTIONS:
        raise ValueError(
            f"unknown attention {attention!r}; train.yaml takes one of {list(TRAIN_ATTENTIONS)} "
            "(NAS attentions with --genotype_path RUN/genotype.json from search.yaml)."
        )
    if attention in BASELINE_ATTENTIONS:
        if genotype_path is not None:
            raise ValueError(
                f"attention {attention!r} is a baseline without a searched architecture, but --genotype_path "
                f"{genotype_path} was given; pass only one of them (a genotype picks its own attention)."
            )
        return ("none" if attention == "unet" else attention), None, None
    if genotype_path is None:
        if output_dir is None:
            raise FileNotFoundError(_no_genotype_message(attention, None))
        candidate = Path(output_dir) / "genotype.json"
        if not candidate.is_file():
            raise FileNotFoundError(_no_genotype_message(attention, candidate))
        genotype_path = str(candidate)
    genotype = Genotype.load(genotype_path)  # FileNotFoundError / ValueError naming the file
    if attention is not None and attention != genotype.attention:
        raise ValueError(
            f"genotype file {genotype_path} was searched for attention {genotype.attention!r}, not {attention!r}; "
            f"drop --attention (the genotype sets it) or pass a {attention} genotype."
        )
    return genotype.attention, genotype, genotype_path


def _no_genotype_message(attention: str | None, looked_at: Path | None) -> str:
    what = f"attention {attention!r} needs a searched genotype" if attention else "no network chosen"
    where = f"; there is no {looked_at}" if looked_at is not None else ""
    return (
        f"{what}{where}. Pass --genotype_path RUN/genotype.json (written by search.yaml), or a baseline with "
        f"--attention {'|'.join(BASELINE_ATTENTIONS[:1] + BASELINE_ATTENTIONS[2:])}."
    )


def build_network(
    attention: str | None = None,
    genotype_path: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    spatial_dims: int = 2,
    in_channels: int = 3,
    out_channels: int = 4,
    features: Sequence[int] = (16, 32, 64, 128, 256),
    dropout: float = 0.2,
    backbone: str = "resnet18",
) -> nn.Module:
    """The network of train.yaml's ``network_def`` (see :func:`resolve_network_choice` for the choice).

    U-Net variants are :class:`~monai_nasscam.networks.NASSCAMUNet` (``features``, ``dropout``); ``deeplabv3plus`` is
    :class:`~monai_nasscam.networks.DeepLabV3Plus` (``backbone``). Both return logits.
    """
    from monai_nasscam.networks import DeepLabV3Plus, NASSCAMUNet

    attention, genotype, _ = resolve_network_choice(attention, genotype_path, output_dir)
    if attention == "deeplabv3plus":
        return DeepLabV3Plus(spatial_dims, in_channels, out_channels, backbone=backbone)
    return NASSCAMUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        attention=attention,
        genotype=genotype,
        features=tuple(int(f) for f in features),
        dropout=dropout,
    )


def describe_network(
    attention: str | None = None,
    genotype_path: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """``{"attention": ..., "genotype": path or None, "synchronous": ...}`` of the chosen network, for reports."""
    attention, genotype, path = resolve_network_choice(attention, genotype_path, output_dir)
    out: dict[str, Any] = {"attention": "unet" if attention == "none" else attention, "genotype": path}
    if genotype is not None:
        out["synchronous"] = genotype.synchronous
    return out


def describe_inferer(inferer: Any) -> dict[str, Any]:
    """The settings of a whole-image inferer, for reports: its class name and window geometry."""
    out: dict[str, Any] = {"name": type(inferer).__name__}
    for key in ("roi_size", "stride", "overlap", "mode", "sw_batch_size", "cval"):
        value = getattr(inferer, key, None)
        if value is None:
            continue
        if isinstance(value, Sequence) and not isinstance(value, str):
            value = [int(v) for v in value]
        elif hasattr(value, "value"):  # enums
            value = value.value
        out[key] = value
    return out


def split_entries(dataset_dir: str | os.PathLike, split: str) -> list[dict]:
    """The entries of one split of ``dataset_dir/datalist.json`` (paths absolute); ``"all"``: every split, e.g. to
    evaluate on a whole prepared test release.

    Raises:
        ValueError: unknown or empty split (naming the datalist).
    """
    splits = ("training", "validation", "test")
    if split not in (*splits, "all"):
        raise ValueError(f"split must be one of {[*splits, 'all']}, got {split!r}.")
    data = read_datalist(dataset_dir)
    entries = [e for s in (splits if split == "all" else (split,)) for e in (data.get(s) or [])]
    if not entries:
        raise ValueError(
            f"{Path(dataset_dir) / 'datalist.json'} lists no {split} images; re-run `nasscam prepare` with more "
            "images or another split"
            + (", or evaluate another split (--eval_split validation)." if split == "test" else ".")
        )
    return entries


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def epoch_groups(
    entries: Sequence[Mapping],
    roi_size: Sequence[int] | int,
    stride: Sequence[int] | int | None = None,
    epoch_crops: int | None = None,
    num_classes: int = 4,
) -> int:
    """Items per training epoch of :class:`~monai_nasscam.data.ClassBalancedCropDataset` (``num_classes`` crops each).

    ``epoch_crops`` crops per epoch, rounded up to whole items; ``None`` means the paper's epoch: as many crops as
    there are overlapping ``roi_size`` windows every ``stride`` (default: half the window) in the training images
    (4,803 for MoNuSAC's 120 training images at 256 / 128).
    """
    from monai.utils import ensure_tuple_rep

    from monai_nasscam.data.sampling import grid_windows

    roi = ensure_tuple_rep(roi_size, 2)
    step = ensure_tuple_rep(stride, 2) if stride is not None else tuple(max(1, int(r) // 2) for r in roi)
    if epoch_crops is None:
        epoch_crops = sum(len(grid_windows(_image_size(e["image"]), roi, step)) for e in entries)
    if int(epoch_crops) < 1:
        raise ValueError(f"epoch_crops must be >= 1, got {epoch_crops}.")
    return max(1, math.ceil(int(epoch_crops) / num_classes))


def label_class_weights(entries: Sequence[Mapping], num_classes: int = 4) -> torch.Tensor:
    """Wong et al.'s class weights ``((sum_k f_k) / f_l) ** 0.5`` of the 4 nucleus classes, ``f`` the pixel counts
    in the training label maps (``entry["label"]``). A class absent from every map gets the largest weight of the
    present ones (with a warning); no nucleus at all gives weights 1."""
    from PIL import Image

    from monai_nasscam.losses import ExpLogLoss

    maps = []
    for entry in entries:
        with Image.open(entry["label"]) as im:
            maps.append(np.asarray(im))
    counts = ExpLogLoss.count_labels(maps, num_classes + 1, skip_background=True).double()
    present = counts > 0
    if not bool(present.any()):
        warnings.warn("no nucleus in the training labels; using class weights 1.", stacklevel=2)
        return torch.ones(num_classes)
    weights = torch.zeros(num_classes)
    weights[present] = ExpLogLoss.weights_from_frequencies(counts[present])
    if not bool(present.all()):
        missing = [int(i) + 1 for i in torch.nonzero(~present).flatten()]
        warnings.warn(f"class ids {missing} occur in no training label; they get the largest weight.", stacklevel=2)
        weights[~present] = weights[present].max()
    return weights


def check_checkpoint(path: str | os.PathLike, network: nn.Module, key: str | None = None) -> bool:
    """Check that ``path`` holds weights for ``network`` (same parameter names and shapes); ``True`` if so.

    Args:
        path: a state dict saved by ``torch.save`` (e.g. ``RUN/models/model.pt``), or a dict of state dicts.
        network: the network the workflow built.
        key: the entry of a nested checkpoint holding the network (e.g. ``"network"`` in the resume checkpoint);
            ``None`` accepts a plain state dict or one under ``"model"`` / ``"network"``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint, or weights of another architecture (which keys or shapes differ).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; train first (train.yaml writes RUN/models/model.pt) "
            "or pass --ckpt_path."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling error means "not a weights file"
        raise ValueError(f"{path} is not a weights-only PyTorch checkpoint ({type(e).__name__}: {e}).") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
    if key is not None:
        if key not in state:
            raise ValueError(f"{path} has no {key!r} entry (it has {sorted(state)[:8]}).")
        state = state[key]
    else:
        for candidate in ("model", "network"):
            if candidate in state and isinstance(state[candidate], Mapping):
                state = state[candidate]
                break
    module = network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing weights (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} weights of another shape (e.g. {'; '.join(wrong[:3])})")
        raise ValueError(
            f"checkpoint {path} was saved from another architecture than the {type(module).__name__} built here: "
            f"{', '.join(parts)}. Pass the --attention / --genotype_path / --features it was trained with."
        )
    return True


def _check_budget(epochs: int, batch_size: int, roi_size: Sequence[int] | int, val_interval: int,
                  learning_rate: float, num_classes: int) -> None:
    from monai.utils import ensure_tuple_rep

    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if int(batch_size) < num_classes or int(batch_size) % num_classes:
        raise ValueError(
            f"batch_size counts crops and every batch holds the same number of crops of each of the {num_classes} "
            f"classes: it must be a multiple of {num_classes}, got {batch_size}."
        )
    if not 1 <= int(val_interval) <= int(epochs):
        raise ValueError(
            f"val_interval must lie in [1, epochs={epochs}] (the best model is picked on validation Dice), "
            f"got {val_interval}."
        )
    for r in ensure_tuple_rep(roi_size, 2):
        if int(r) < 16 or int(r) % 16:
            raise ValueError(f"roi_size must be a multiple of 16 (the U-Net pools 4 times), got {roi_size}.")
    if not float(learning_rate) > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")


def check_train_inputs(
    dataset_dir: str | os.PathLike,
    attention: str | None = None,
    genotype_path: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    epochs: int = 1,
    batch_size: int = 4,
    roi_size: Sequence[int] | int = 256,
    val_interval: int = 1,
    learning_rate: float = 1e-4,
    resume_path: str | os.PathLike | None = None,
    network: nn.Module | None = None,
    num_classes: int = 4,
) -> bool:
    """Raise a clear error for anything that would make train.yaml fail later; ``True`` otherwise.

    Checks the budget (epochs, crops per batch, validation interval, crop size, learning rate), the network choice
    (attention, genotype file), the dataset (datalist with training and validation images that exist) and, when
    resuming, that the resume checkpoint holds weights of ``network``.
    """
    _check_budget(epochs, batch_size, roi_size, val_interval, learning_rate, num_classes)
    resolve_network_choice(attention, genotype_path, output_dir)
    for split in ("training", "validation"):
        entries = split_entries(dataset_dir, split)
        for key in ("image", "label"):
            if not Path(entries[0][key]).is_file():
                raise FileNotFoundError(f"{split} {key} {entries[0][key]} listed in the datalist does not exist.")
    if resume_path is not None and network is not None:
        check_checkpoint(resume_path, network, key="network")
    return True


def record_run_inputs(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    genotype_path: str | os.PathLike | None = None,
    rank: int | None = None,
) -> bool:
    """Keep what inference needs beside the model, so that ``inference.yaml`` needs only ``--ckpt_path``.

    Writes ``RUN/stain.json`` (the stain reference of ``PREP/manifest.json``; ``{"method": "none"}`` when the
    dataset has no manifest) and, for a derived network, ``RUN/genotype.json`` unless that file exists already
    (a search into the same folder wrote it; it is never replaced). Atomic writes, by rank 0 only (``rank``: this
    process's, default ``ignite.distributed.get_rank()``: the process group's rank, 0 without one).
    """
    if rank is None:
        rank = idist.get_rank()
    if rank != 0:
        return False
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Path(dataset_dir) / "manifest.json"
    stain: Any = {"method": "none"}
    if manifest.is_file():
        stain = json.loads(manifest.read_text()).get("settings", {}).get("stain", stain)
    atomic_write_text(out / "stain.json", json.dumps(stain, indent=1) + "\n")
    genotype_path = None if _is_null(genotype_path, ("", "null", "none")) else Path(genotype_path)  # type: ignore[arg-type]
    target = out / "genotype.json"
    if genotype_path is not None and not target.exists():
        Genotype.load(genotype_path).save(target)
    elif genotype_path is not None and target.resolve() != genotype_path.resolve():
        if Genotype.load(target) != Genotype.load(genotype_path):
            warnings.warn(
                f"{target} (kept) differs from the trained genotype {genotype_path}: pass --genotype_path "
                f"{genotype_path} to inference.yaml.",
                stacklevel=2,
            )
    return True


def check_evaluate_inputs(
    dataset_dir: str | os.PathLike,
    split: str,
    ckpt_path: str | os.PathLike,
    network: nn.Module,
    attention: str | None = None,
    genotype_path: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
) -> bool:
    """Raise a clear error for anything that would make evaluate.yaml fail later; ``True`` otherwise: the network
    choice, the split (present, not empty, with instance maps for PQ) and the checkpoint (exists, same architecture)."""
    resolve_network_choice(attention, genotype_path, output_dir)
    entries = split_entries(dataset_dir, split)
    for key in ("image", "label", "instance"):
        if key not in entries[0]:
            raise ValueError(
                f"{split} entries of {Path(dataset_dir) / 'datalist.json'} have no {key!r} (re-run `nasscam prepare`)."
            )
        if not Path(entries[0][key]).is_file():
            raise FileNotFoundError(f"{split} {key} {entries[0][key]} listed in the datalist does not exist.")
    check_checkpoint(ckpt_path, network)
    return True
