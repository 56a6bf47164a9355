"""Checks, network choice and data lists of the retraining and evaluation workflows (``bundle/configs/train.yaml``,
``bundle/configs/evaluate.yaml``).

Everything a user can get wrong on the command line -- no prepared dataset, an empty split, an unknown attention, a
missing or mismatched genotype, a checkpoint of another architecture, inconsistent budgets, a setting out of range
-- gives a clear message naming the file or the key at fault here (an :class:`~monai_nasscam.errors.InputError`,
reported as one line), in the workflow's ``initialize`` step, before a batch is loaded, a step is made or a file is
written.

A training run records the network it trained in ``RUN/network.json`` (:func:`record_run_inputs`), so that
evaluation and inference of ``RUN/models/model.pt`` build the same network without ``--attention`` /
``--genotype_path`` / ``--features`` again.
"""

from __future__ import annotations

import json
import logging
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

from monai_nasscam.engines.search_inputs import check_roi_size, check_run_settings, read_datalist
from monai_nasscam.errors import input_check
from monai_nasscam.fileio import atomic_write_text
from monai_nasscam.networks.blocks import NAS_ATTENTIONS
from monai_nasscam.networks.diagnostics import CONVERGED
from monai_nasscam.networks.genotype import Genotype
from monai_nasscam.serialization import install_cpu_fallback, load_checkpoint

# checkpoints saved on a GPU load on a machine without one, whoever loads them (MONAI's ckpt_export builds its
# network through this module)
install_cpu_fallback()

__all__ = [
    "TRAIN_CHECKPOINT_NAME",
    "NETWORK_RECORD_NAME",
    "DEFAULT_FEATURES",
    "read_network_record",
    "resolve_features",
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
    "warn_unconverged_genotype",
]

#: file name of the resumable training checkpoint under ``RUN/checkpoints``.
TRAIN_CHECKPOINT_NAME = "train_checkpoint.pt"
#: file name of the record of the trained network in the run folder (written by :func:`record_run_inputs`).
NETWORK_RECORD_NAME = "network.json"
#: U-Net widths when neither the command line nor the run's record gives them.
DEFAULT_FEATURES = (16, 32, 64, 128, 256)
#: baselines of the paper's Table 2 (``unet`` is the plain U-Net, the same as attention ``none``).
BASELINE_ATTENTIONS = ("unet", "none", "cbam", "scse", "deeplabv3plus")
#: every ``attention`` value train.yaml accepts; NAS attentions need a searched genotype.
TRAIN_ATTENTIONS = BASELINE_ATTENTIONS + tuple(NAS_ATTENTIONS)


def _is_null(value: Any, nulls: tuple[str, ...] = ("", "null")) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in nulls)


@input_check
def read_network_record(run_dir: str | os.PathLike | None) -> dict[str, Any] | None:
    """The network a training run recorded in ``run_dir/network.json`` (``attention``, ``genotype``: a path relative
    to ``run_dir`` or absolute, or ``null``; ``features``, ``dropout``, ...), or ``None`` if there is no record.

    Raises:
        InputError: the file is not a JSON object with an ``attention`` (naming it).
    """
    if run_dir is None:
        return None
    path = Path(run_dir) / NETWORK_RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable network record ({e}); delete it and pass --attention.") from None
    if not isinstance(record, Mapping) or not isinstance(record.get("attention"), str):
        raise ValueError(f"{path}: not a network record (no 'attention'); delete it and pass --attention.")
    out = dict(record)
    if out.get("genotype"):
        out["genotype"] = str(Path(run_dir) / out["genotype"])  # an absolute path stays itself
    return out


def resolve_features(features: Sequence[int] | None, output_dir: str | os.PathLike | None = None) -> list[int]:
    """The U-Net widths: ``features`` when given, else those ``output_dir/network.json`` records, else
    :data:`DEFAULT_FEATURES`."""
    if _is_null(features, ("", "null", "none")):
        record = read_network_record(output_dir)
        features = (record or {}).get("features") or DEFAULT_FEATURES
    return list(features)  # type: ignore[arg-type]


@input_check
def resolve_network_choice(
    attention: str | None = None,
    genotype_path: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
) -> tuple[str, Genotype | None, str | None]:
    """Which network train.yaml builds: ``(attention, genotype or None, genotype file or None)``.

    - ``genotype_path`` given: the derived (searched) network; ``attention``, when also given, must be the genotype's.
    - ``attention`` a baseline (``unet``/``none``, ``cbam``, ``scse``, ``deeplabv3plus``): that baseline, no genotype.
    - neither given and ``output_dir/network.json`` (written by a training run into ``output_dir``): the network it
      records (so evaluation and inference of a trained run need no network settings).
    - ``attention`` a NAS attention without ``genotype_path``, or neither given: the search's genotype
      ``output_dir/genotype.json`` (so ``search.yaml`` then ``train.yaml`` with the same ``--output_dir`` chain).

    Raises:
        InputError: unknown attention, a baseline given a genotype, or a genotype of another attention (naming the
            file); ``MissingInputError`` (a ``FileNotFoundError``): no genotype where one is needed (naming the
            path looked at).
    """
    attention = None if _is_null(attention) else str(attention).strip().lower()
    genotype_path = None if _is_null(genotype_path, ("", "null", "none")) else str(genotype_path)
    if attention is None and genotype_path is None:
        record = read_network_record(output_dir)
        if record is not None:
            attention = record["attention"].strip().lower()
            genotype_path = record.get("genotype") or None
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
    if attention is None and looked_at is not None:
        where = (f": {looked_at.parent} has no {NETWORK_RECORD_NAME} (written by train.yaml) and there is no "
                 f"{looked_at} (written by search.yaml)")
    else:
        where = f"; there is no {looked_at}" if looked_at is not None else ""
    return (
        f"{what}{where}. Pass --genotype_path RUN/genotype.json (written by search.yaml), or a baseline with "
        f"--attention {'|'.join(BASELINE_ATTENTIONS[:1] + BASELINE_ATTENTIONS[2:])}."
    )


@input_check
def build_network(
    attention: str | None = None,
    genotype_path: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    spatial_dims: int = 2,
    in_channels: int = 3,
    out_channels: int = 4,
    features: Sequence[int] | None = DEFAULT_FEATURES,
    dropout: float = 0.2,
    backbone: str = "resnet18",
) -> nn.Module:
    """The network of train.yaml's ``network_def`` (see :func:`resolve_network_choice` for the choice).

    U-Net variants are :class:`~monai_nasscam.networks.NASSCAMUNet` (``features``, ``dropout``); ``deeplabv3plus`` is
    :class:`~monai_nasscam.networks.DeepLabV3Plus` (``backbone``). Both return logits. ``features`` ``None``: the
    widths ``output_dir/network.json`` records (inference of a trained run), else :data:`DEFAULT_FEATURES`.

    Raises:
        InputError: a bad network choice or setting (see :func:`resolve_network_choice`), naming it.
    """
    from monai_nasscam.networks import DeepLabV3Plus, NASSCAMUNet

    features = resolve_features(features, output_dir)
    check_run_settings(features=features, dropout=dropout)
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


@input_check
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


@input_check
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


@input_check
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


@input_check
def check_checkpoint(path: str | os.PathLike, network: nn.Module, key: str | None = None) -> bool:
    """Check that ``path`` holds weights for ``network`` (same parameter names and shapes); ``True`` if so.

    Args:
        path: a state dict saved by ``torch.save`` (e.g. ``RUN/models/model.pt``), or a dict of state dicts.
        network: the network the workflow built.
        key: the entry of a nested checkpoint holding the network (e.g. ``"network"`` in the resume checkpoint);
            ``None`` accepts a plain state dict or one under ``"model"`` / ``"network"``.

    Raises:
        MissingInputError: no such file (also a ``FileNotFoundError``).
        InputError: not a checkpoint, or weights of another architecture (which keys or shapes differ).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; train first (train.yaml writes RUN/models/model.pt) "
            "or pass --ckpt_path."
        )
    try:
        state = load_checkpoint(path)  # CPU tensors, whatever device they were saved from
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
    check_run_settings(epochs=epochs, val_interval=val_interval, learning_rate=learning_rate)
    check_roi_size(roi_size)
    if not isinstance(batch_size, (int, float, str)) or not str(batch_size).strip().lstrip("-").isdigit():
        raise ValueError(f"batch_size must be an integer multiple of {num_classes}, got {batch_size!r}.")
    if int(batch_size) < num_classes or int(batch_size) % num_classes:
        raise ValueError(
            f"batch_size counts crops and every batch holds the same number of crops of each of the {num_classes} "
            f"classes: it must be a multiple of {num_classes}, got {batch_size}."
        )


def warn_unconverged_genotype(genotype: Genotype | None, path: str | os.PathLike | None) -> str | None:
    """Log one warning when ``genotype`` records a search whose verdict is not ``"converged"``.

    A version-2 genotype file holds a ``search`` section (:attr:`~monai_nasscam.networks.genotype.Genotype.search`)
    with the verdict of the alphas it was derived from; retraining a genotype whose search did not converge (or
    collapsed) is allowed, but said once at the start of training. A genotype without that section (version 1, a
    hand-made file) or without a verdict is not warned about.

    Args:
        genotype: the genotype to be trained, or ``None`` (a baseline: nothing to say).
        path: the genotype file, named in the message.

    Returns:
        the message logged, or ``None`` when there is nothing to warn about.
    """
    if genotype is None or not genotype.search:
        return None
    verdict = genotype.search.get("verdict")
    if verdict is None or verdict == CONVERGED:
        return None
    message = (
        f"{path}: the genotype comes from a search whose verdict is {verdict!r}, not 'converged'; a genotype from a "
        "search that did not converge is close to a random pick; see docs/search.md"
    )
    logging.getLogger(__name__).warning(message)
    return message


@input_check
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
    **settings: Any,
) -> bool:
    """Raise a clear error for anything that would make train.yaml fail later; ``True`` otherwise.

    Checks the budget (epochs, crops per batch, validation interval, crop size, learning rate), the further
    ``settings`` of :func:`~monai_nasscam.engines.search_inputs.check_run_settings` (device, seed, widths, dropout,
    crops per epoch, ...), the network choice (attention, genotype file), the dataset (datalist with training and
    validation images that exist) and, when resuming with ``network`` given, that the resume checkpoint holds
    weights of ``network``. (train.yaml checks the resume checkpoint in a second step, after the seed is set,
    because building the network draws its initial weights.)

    Raises:
        InputError: naming the setting or the file (``MissingInputError``, also a ``FileNotFoundError``, for a
            file or folder that does not exist).
    """
    _check_budget(epochs, batch_size, roi_size, val_interval, learning_rate, num_classes)
    check_run_settings(**settings)
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
    attention: str | None = None,
    features: Sequence[int] | None = None,
    dropout: float | None = None,
) -> bool:
    """Keep what inference needs beside the model, so that ``inference.yaml`` needs only ``--ckpt_path``.

    Writes ``RUN/stain.json`` (the stain reference of ``PREP/manifest.json``; ``{"method": "none"}`` when the
    dataset has no manifest), for a derived network ``RUN/genotype.json`` unless that file exists already
    (a search into the same folder wrote it; it is never replaced), and ``RUN/network.json``, the network trained:
    ``{"attention": ..., "genotype": "genotype.json" | an absolute path | null, "features": [...], "dropout": ...}``
    (the network choice of :func:`resolve_network_choice` for ``attention``, ``genotype_path`` and ``output_dir``,
    as it is before this call). A genotype whose search did not converge is named in one warning
    (:func:`warn_unconverged_genotype`). Atomic writes, by rank 0 only (``rank``: this process's, default
    ``ignite.distributed.get_rank()``: the process group's rank, 0 without one).
    """
    if rank is None:
        rank = idist.get_rank()
    if rank != 0:
        return False
    chosen, chosen_net, chosen_genotype = resolve_network_choice(attention, genotype_path, output_dir)
    warn_unconverged_genotype(chosen_net, chosen_genotype)  # once, at the start of training (rank 0)
    if chosen != "deeplabv3plus":
        features = resolve_features(features, output_dir)
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
    recorded_genotype: str | None = None
    if chosen_genotype is not None:
        same = target.is_file() and Genotype.load(target) == Genotype.load(chosen_genotype)
        recorded_genotype = "genotype.json" if same else str(Path(chosen_genotype).resolve())
        if not same and target.is_file():
            warnings.warn(
                f"{target} (kept) differs from the trained genotype {chosen_genotype}; {out / NETWORK_RECORD_NAME} "
                f"points inference at {recorded_genotype}.",
                stacklevel=2,
            )
    record: dict[str, Any] = {"attention": "unet" if chosen == "none" else chosen, "genotype": recorded_genotype}
    if features is not None:
        record["features"] = [int(f) for f in features]
    if dropout is not None:
        record["dropout"] = float(dropout)
    atomic_write_text(out / NETWORK_RECORD_NAME, json.dumps(record, indent=1) + "\n")
    return True


@input_check
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
    choice, the split (present, not empty, with instance maps for PQ) and the checkpoint (exists, same architecture).

    Raises:
        InputError: naming the setting or the file.
    """
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
