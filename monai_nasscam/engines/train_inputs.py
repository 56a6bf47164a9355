"""Checks of the retraining and evaluation workflows (``bundle/configs/train.yaml``, ``bundle/configs/evaluate.yaml``)
and the record of a training run's inputs.

Everything a user can get wrong on the command line -- no prepared dataset, an empty split, an unknown attention, a
missing or mismatched genotype, a checkpoint of another architecture, inconsistent budgets, a setting out of range
-- gives a clear message naming the file or the key at fault here (an :class:`~monai_nasscam.errors.InputError`,
reported as one line), in the workflow's ``initialize`` step, before a batch is loaded, a step is made or a file is
written.

A training run records the network it trained in ``RUN/network.json`` (:func:`record_run_inputs`), so that
evaluation and inference of ``RUN/models/model.pt`` build the same network without ``--attention`` /
``--genotype_path`` / ``--features`` again (:mod:`monai_nasscam.networks.run_folder` chooses, builds and checks
it; :mod:`monai_nasscam.data.datalist` reads the data lists).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch.nn as nn

from monai_nasscam.data.classes import NUM_CLASSES
from monai_nasscam.data.datalist import split_entries
from monai_nasscam.engines.search_inputs import check_run_settings
from monai_nasscam.errors import input_check
from monai_nasscam.overrides import check_roi_size, is_null
from monai_nasscam.fileio import atomic_write_text
from monai_nasscam.networks.attentions import get_attention
from monai_nasscam.networks.genotype import Genotype
from monai_nasscam.networks.run_folder import (
    NETWORK_RECORD_NAME,
    check_checkpoint,
    check_trained_weights,
    resolve_features,
    resolve_network_choice,
    warn_unconverged_genotype,
)

__all__ = [
    "TRAIN_CHECKPOINT_NAME",
    "describe_inferer",
    "check_train_inputs",
    "check_evaluate_inputs",
    "record_run_inputs",
]

#: file name of the resumable training checkpoint under ``RUN/checkpoints``.
TRAIN_CHECKPOINT_NAME = "train_checkpoint.pt"



def describe_inferer(inferer: Any) -> dict[str, Any]:
    """The settings of a whole-image inferer, for reports: its class name and window geometry.

    An :class:`~monai_nasscam.inferers.AutocastInferer` is described by the inferer it wraps, plus
    ``"fit_to_image": True`` when it shrinks windows larger than an image to the image (rounded up to a multiple
    of 16): ``roi_size`` is then the largest window, not the one every image was computed with.
    """
    fit = bool(getattr(inferer, "fit_to_image", False))
    inferer = getattr(inferer, "inferer", inferer)
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
    if fit:
        out["fit_to_image"] = True
    return out


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


@input_check
def check_train_inputs(
    dataset_dir: str | os.PathLike,
    attention: str | None = None,
    genotype_path: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    epochs: int = 1,
    batch_size: int = NUM_CLASSES,
    roi_size: Sequence[int] | int = 256,
    val_interval: int = 1,
    learning_rate: float = 1e-4,
    resume_path: str | os.PathLike | None = None,
    network: nn.Module | None = None,
    num_classes: int = NUM_CLASSES,
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
    train_mpp: Any = None,
) -> bool:
    """Keep what inference needs beside the model, so that ``inference.yaml`` needs only ``--ckpt_path``.

    Writes ``RUN/stain.json`` (the stain reference of ``PREP/manifest.json``; ``{"method": "none"}`` when the
    dataset has no manifest), for a derived network ``RUN/genotype.json`` unless that file exists already
    (a search into the same folder wrote it; it is never replaced), and ``RUN/network.json``, the network trained:
    ``{"attention": ..., "genotype": "genotype.json" | an absolute path | null, "features": [...], "dropout": ...,
    "mpp": ..., "mpp_source": ...}``
    (the network choice of :func:`~monai_nasscam.networks.run_folder.resolve_network_choice` for ``attention``, ``genotype_path`` and ``output_dir``,
    as it is before this call). A genotype whose search did not converge is named in one warning
    (:func:`~monai_nasscam.networks.run_folder.warn_unconverged_genotype`). Atomic writes, by rank 0 only (``rank``: this process's, default
    ``ignite.distributed.get_rank()``: the process group's rank, 0 without one).

    ``mpp`` is the resolution trained at, in microns per pixel, which inference rescales images to
    (:mod:`monai_nasscam.inference.resolution`): ``train_mpp`` when given, else the median resolution of the prepared
    dataset's source images (``PREP/manifest.json``'s ``resolution``), else the documented default for MoNuSAC-like
    data, :data:`~monai_nasscam.inference.resolution.DEFAULT_TRAIN_MPP` (0.25); ``mpp_source`` says which.

    Raises:
        ValueError: ``train_mpp`` is not a positive number.
    """
    from monai_nasscam.inference.resolution import DEFAULT_TRAIN_MPP, check_mpp, dataset_resolution

    mpp = check_mpp(train_mpp, "train_mpp")
    if rank is None:
        rank = idist.get_rank()
    if rank != 0:
        return False
    chosen, chosen_net, chosen_genotype = resolve_network_choice(attention, genotype_path, output_dir)
    warn_unconverged_genotype(chosen_net, chosen_genotype)  # once, at the start of training (rank 0)
    if get_attention(chosen).network is None:  # a U-Net: its widths
        features = resolve_features(features, output_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Path(dataset_dir) / "manifest.json"
    stain: Any = {"method": "none"}
    if manifest.is_file():
        stain = json.loads(manifest.read_text()).get("settings", {}).get("stain", stain)
    atomic_write_text(out / "stain.json", json.dumps(stain, indent=1) + "\n")
    genotype_path = None if is_null(genotype_path) else Path(genotype_path)  # type: ignore[arg-type]
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
    record: dict[str, Any] = {"attention": get_attention(chosen).public_name, "genotype": recorded_genotype}
    if features is not None:
        record["features"] = [int(f) for f in features]
    if dropout is not None:
        record["dropout"] = float(dropout)
    if mpp is not None:
        record["mpp"], record["mpp_source"] = mpp, "train_mpp setting"
    elif dataset_resolution(dataset_dir) is not None:
        res = json.loads(manifest.read_text())["resolution"]
        record["mpp"] = dataset_resolution(dataset_dir)
        record["mpp_source"] = (f"dataset: median of {res.get('known')} source images "
                                f"({res.get('min')}-{res.get('max')} um/px) in {manifest}")
    else:
        record["mpp"] = DEFAULT_TRAIN_MPP
        record["mpp_source"] = f"assumed: the MoNuSAC 40x default ({manifest} records no resolution)"
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
    check_trained_weights(ckpt_path)  # a search checkpoint or a text file: said first, before the network choice
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
