"""The workflows' input checks, run in each bundle config's ``initialize`` before training or evaluation starts:
search.yaml (:func:`check_search_inputs`), train.yaml (:func:`check_train_inputs`), evaluate.yaml
(:func:`check_evaluate_inputs`), the settings they share (:func:`check_run_settings`) and the resume checkpoint
(:func:`resolve_resume`, :func:`check_fresh_run`).

Every problem a user can cause from the command line (no prepared dataset, a dataset without training or
validation images, an attention that cannot be searched, a missing or mismatched genotype, a checkpoint of another
architecture, inconsistent epoch counts or budgets, nothing to resume, a setting out of range) gives a clear message
here, before a network is built, a batch loaded or a file written: an :class:`~monai_nasscam.errors.InputError`
naming the key or the file, which the run reports as one line. The data lists come from
:mod:`monai_nasscam.data.datalist`, the network choice from :mod:`monai_nasscam.networks.run_folder`, the schedules
from :mod:`monai_nasscam.engines.schedule`; what a training run records is :mod:`monai_nasscam.engines.run_record`'s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn

from monai_nasscam.data.classes import NUM_CLASSES
from monai_nasscam.data.datalist import SPLITS, search_datalists, split_entries
from monai_nasscam.engines.schedule import check_schedule
from monai_nasscam.errors import input_check
from monai_nasscam.networks.attentions import attention_names
from monai_nasscam.networks.run_folder import (
    check_checkpoint,
    check_network_settings,
    check_trained_weights,
    resolve_network_choice,
)
from monai_nasscam.networks.selection import UNITS
from monai_nasscam.overrides import as_bool, as_int, check_roi_size, is_null

__all__ = [
    "CHECKPOINT_NAME",
    "TRAIN_CHECKPOINT_NAME",
    "SELECTIONS",
    "check_search_inputs",
    "check_search_attention",
    "check_selection",
    "check_device",
    "check_run_settings",
    "check_train_inputs",
    "check_annotated_nuclei",
    "check_evaluate_inputs",
    "resolve_resume",
    "check_fresh_run",
]

#: file name of the resumable search checkpoint under ``RUN/checkpoints``.
CHECKPOINT_NAME = "search_checkpoint.pt"
#: file name of the resumable training checkpoint under ``RUN/checkpoints``.
TRAIN_CHECKPOINT_NAME = "train_checkpoint.pt"
#: how a search chooses its operations (search.yaml's ``selection``).
SELECTIONS = ("alpha", "perturbation")


@input_check
def check_alpha_temperature(value: Any) -> tuple[float, float]:
    """``alpha_temperature`` as ``(start, end)``: two finite numbers > 0 (``[1.0, 1.0]``: plain softmax).

    Raises:
        ValueError: naming ``alpha_temperature`` and the value given.
    """
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value
    )
    if not ok:
        raise ValueError(
            f"alpha_temperature must be [start, end], two numbers > 0 (e.g. [1.0, 0.1]; [1.0, 1.0]: no annealing), got {value!r}."
        )
    return float(value[0]), float(value[1])


@input_check
def check_search_attention(attention: str) -> str:
    """``attention`` if it is a searchable (NAS) attention, else a ``ValueError`` naming the choices."""
    searchable = attention_names(searchable=True)
    if attention not in searchable:
        what = "is not searchable (it has no architecture to search)" if attention in attention_names() else "is unknown"
        raise ValueError(
            f"attention {attention!r} {what}; the search takes one of {list(searchable)} "
            f"(e.g. --attention nas-scam-p)."
        )
    return attention


@input_check
def check_device(device: Any, name: str = "device") -> Any:
    """``device`` as a ``torch.device`` if this machine has it, else an error naming ``name`` (a CUDA device asked
    for where CUDA is missing, or fewer GPUs; not a device string at all)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} {str(device)!r} is not a torch device; pass e.g. --{name} cpu or cuda:0.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {str(device)!r}: CUDA is not available on this machine; pass --{name} cpu.")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise ValueError(
                f"{name} {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                f"pass --{name} cuda:0."
            )
    return dev


def _float(value: Any, name: str, low: float, high: float, low_open: bool = False, high_open: bool = True) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    ok = (number > low if low_open else number >= low) and (number < high if high_open else number <= high)
    if not ok:
        if low == 0 and low_open and high == float("inf"):
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}.")
    return number


@input_check
def check_run_settings(
    device: Any = None,
    seed: Any = None,
    learning_rate: Any = None,
    arch_learning_rate: Any = None,
    val_interval: Any = None,
    epochs: Any = None,
    features: Any = None,
    dropout: Any = None,
    epoch_crops: Any = None,
    arch_epoch_crops: Any = None,
    crop_mode: Any = None,
    num_workers: Any = None,
    sw_batch_size: Any = None,
    sw_overlap: Any = None,
    epoch_cycle: Any = None,
    progress: Any = None,
    exclude_none: Any = None,
) -> bool:
    """Check the settings search.yaml and train.yaml share; ``None`` leaves a setting unchecked. ``True`` if all
    are valid.

    Args:
        device: a device this machine has (:func:`check_device`).
        seed: an integer.
        learning_rate: a positive number.
        arch_learning_rate: a positive number or ``"auto"``.
        val_interval: an integer in ``[1, epochs]`` (``epochs`` given).
        epochs: an integer >= 1.
        features: 5 positive integers (the U-Net's input block and 4 down blocks).
        dropout: a number in ``[0, 1)``.
        epoch_crops, arch_epoch_crops: ``None`` (the paper's epoch) or an integer >= 1.
        crop_mode: ``grid`` or ``pixel``.
        num_workers: an integer >= 0.
        sw_batch_size: an integer >= 1.
        sw_overlap: a number in ``[0, 1)``.
        epoch_cycle: an integer >= 2 (the epoch schedule trains weights one epoch in ``epoch_cycle``).
        progress, exclude_none: true or false.

    Raises:
        InputError: naming the setting, its value and what it must be.
    """
    if device is not None:
        check_device(device)
    if seed is not None:
        as_int(seed, "seed")
    if learning_rate is not None:
        _float(learning_rate, "learning_rate", 0.0, float("inf"), low_open=True)
    if arch_learning_rate is not None and not (
        isinstance(arch_learning_rate, str) and arch_learning_rate.strip().lower() == "auto"
    ):
        try:
            _float(arch_learning_rate, "arch_learning_rate", 0.0, float("inf"), low_open=True)
        except ValueError:
            raise ValueError(
                f"arch_learning_rate must be a positive number or 'auto', got {arch_learning_rate!r}."
            ) from None
    if epochs is not None:
        as_int(epochs, "epochs", 1)
    if val_interval is not None:
        interval = as_int(val_interval, "val_interval", 1)
        if epochs is not None and interval > int(epochs):
            raise ValueError(
                f"val_interval must lie in [1, epochs={epochs}] (validation picks the best result), got {val_interval}."
            )
    check_network_settings(features=features, dropout=dropout)
    for name, value in (("epoch_crops", epoch_crops), ("arch_epoch_crops", arch_epoch_crops)):
        if not is_null(value, ("null", "none")):
            as_int(value, name, 1)
    if crop_mode is not None and crop_mode not in ("grid", "pixel"):
        raise ValueError(f"crop_mode must be 'grid' (the paper's windows) or 'pixel', got {crop_mode!r}.")
    if num_workers is not None:
        as_int(num_workers, "num_workers", 0)
    if sw_batch_size is not None:
        as_int(sw_batch_size, "sw_batch_size", 1)
    if sw_overlap is not None:
        _float(sw_overlap, "sw_overlap", 0.0, 1.0)
    if epoch_cycle is not None:
        as_int(epoch_cycle, "epoch_cycle", 2)
    if progress is not None:
        as_bool(progress, "progress")
    if exclude_none is not None:
        as_bool(exclude_none, "exclude_none")
    return True


@input_check
def check_search_inputs(
    dataset_dir: str | os.PathLike,
    attention: str = "nas-scam-p",
    epochs: int = 1,
    warmup_epochs: int = 0,
    arch_fraction: float = 0.5,
    seed: int = 0,
    synchronous: Any = True,
    roi_size: Sequence[int] | int | None = None,
    batch_size: int | None = None,
    schedule: str = "iteration",
    resume_path: str | None = None,
    alpha_temperature: Any = (1.0, 1.0),
    alpha_entropy_weight: Any = 0.0,
    selection: Any = "alpha",
    selection_crops: Any = 8,
    selection_interval: Any = 1,
    selection_unit: Any = "cell",
    arch_accumulation: Any = 1,
    **settings: Any,
) -> bool:
    """Raise a clear error for anything that would make the search fail later; ``True`` otherwise.

    Checks the attention, ``synchronous``, the ``schedule`` (a name of
    :data:`~monai_nasscam.engines.schedule.SCHEDULES`), the epoch counts (at least one epoch after the
    ``warmup_epochs``: without an alpha step the genotype would be a random pick), the crop size (multiples of 16, the
    U-Net's 4 poolings), the batch size (whole groups of one crop per class), the dataset (``datalist.json``
    present, training images that can be split into weight and architecture parts, validation images, the first
    image of each part on disk), and the further ``settings`` of :func:`check_run_settings` (device, learning
    rates, widths, ...), and the DARTS remedies (``alpha_temperature``: two finite temperatures > 0, start and
    end; ``alpha_entropy_weight``: a finite number >= 0), the architecture selection (``selection``: ``alpha`` or
    ``perturbation``; with ``perturbation``, ``warmup_epochs`` may equal ``epochs``, the frozen-alpha variant,
    ``selection_crops`` an integer >= 2, ``selection_interval`` an integer >= 0, ``selection_unit`` ``cell`` or
    ``edge``), ``arch_accumulation`` (architecture batches per alpha step) an integer >= 1; ``resume_path`` is
    only reported.

    Raises:
        InputError: naming the setting or the file (``MissingInputError``, also a ``FileNotFoundError``, for a
            file or folder that does not exist).
    """
    check_run_settings(seed=seed, epochs=epochs, **settings)
    as_int(warmup_epochs, "warmup_epochs", 0)
    if roi_size is not None:
        check_roi_size(roi_size)
    if batch_size is not None:
        as_int(batch_size, "batch_size", 1)
    check_search_attention(attention)
    as_bool(synchronous, "synchronous")
    check_alpha_temperature(alpha_temperature)
    as_int(arch_accumulation, "arch_accumulation", 1)
    if isinstance(alpha_entropy_weight, bool) or not isinstance(alpha_entropy_weight, (int, float)) or not (
        math.isfinite(alpha_entropy_weight) and alpha_entropy_weight >= 0
    ):
        raise ValueError(f"alpha_entropy_weight must be a finite number >= 0 (0: no penalty), got {alpha_entropy_weight!r}.")
    check_schedule(schedule)
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if not 0 <= int(warmup_epochs) <= int(epochs):
        raise ValueError(f"warmup_epochs must lie in [0, epochs={epochs}], got {warmup_epochs}.")
    check_selection(selection, selection_crops, selection_interval, selection_unit)
    if int(warmup_epochs) == int(epochs) and selection != "perturbation":
        raise ValueError(
            f"warmup_epochs ({int(warmup_epochs)}) must be smaller than epochs ({int(epochs)}): no alpha step would "
            "run, and the genotype would be a random pick (with --selection perturbation it is the frozen-alpha "
            "variant)."
        )
    if batch_size is not None and (int(batch_size) < NUM_CLASSES or int(batch_size) % NUM_CLASSES):
        raise ValueError(f"batch_size must be a multiple of {NUM_CLASSES} (one crop per nucleus class), got {batch_size}.")
    lists = search_datalists(dataset_dir, arch_fraction, seed)
    for split, entries in lists.items():
        for entry in entries[:1]:
            if not Path(entry["image"]).is_file():
                raise FileNotFoundError(f"{split} image {entry['image']} listed in the datalist does not exist.")
    # the weight and architecture steps each draw class-balanced crops, centred on nuclei
    check_annotated_nuclei(lists["training"] + lists["architecture"], dataset_dir, what="training")
    return True


def check_selection(selection: Any, crops: Any = 8, interval: Any = 1, unit: Any = "cell") -> bool:
    """Check search.yaml's architecture selection settings (see :func:`check_search_inputs`); ``True`` if valid.

    Raises:
        ValueError: naming the setting and the valid values.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {list(SELECTIONS)}, got {selection!r}.")
    if isinstance(crops, bool) or not isinstance(crops, int) or crops < 2:
        raise ValueError(f"selection_crops must be an integer >= 2 (the intervals resample the crops), got {crops!r}.")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
        raise ValueError(f"selection_interval must be an integer >= 0 (weight steps between decisions), got {interval!r}.")
    if unit not in UNITS:
        raise ValueError(f"selection_unit must be 'cell' or 'edge', got {unit!r}.")
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


@input_check
def check_annotated_nuclei(
    entries: Sequence[dict], dataset_dir: str | os.PathLike, num_classes: int = NUM_CLASSES, what: str = "training"
) -> bool:
    """Raise an error unless some label map of ``entries`` holds a nucleus (a pixel of class ``1..num_classes``
    outside the entry's ``ambiguous`` mask, where it has one): the class-balanced crops
    (:class:`~monai_nasscam.data.ClassBalancedCropDataset`) are centred on nuclei, so without one there is nothing to
    train on. The label maps are read until the first nucleus (usually the first map).

    Raises:
        InputError: naming the datalist and the split (``what``).
    """
    import numpy as np
    from PIL import Image

    ambiguous_seen = False
    for entry in entries:
        with Image.open(entry["label"]) as im:
            label = np.asarray(im)
        nuclei = (label >= 1) & (label <= num_classes)
        if not nuclei.any():
            continue
        if isinstance(entry.get("ambiguous"), str) and Path(entry["ambiguous"]).is_file():
            with Image.open(entry["ambiguous"]) as im:
                ambiguous = np.asarray(im)
            if ambiguous.shape[:2] == nuclei.shape[:2]:
                ambiguous_seen = True
                nuclei &= (ambiguous.reshape(*ambiguous.shape[:2], -1) == 0).all(axis=-1)
        if nuclei.any():
            return True
    where = " outside the ambiguous regions" if ambiguous_seen else ""
    raise ValueError(
        f"no {what} image of {Path(dataset_dir) / 'datalist.json'} holds an annotated nucleus: its {len(entries)} "
        f"label map(s) are background (0) everywhere{where}, so there is nothing to train on (the crops are centred "
        "on nuclei). Check the raw data's annotations and run `nasscam prepare` again."
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
    choice: tuple | None = None,
    **settings: Any,
) -> bool:
    """Raise a clear error for anything that would make train.yaml fail later; ``True`` otherwise.

    Checks the budget (epochs, crops per batch, validation interval, crop size, learning rate), the further
    ``settings`` of :func:`check_run_settings` (device, seed, widths, dropout, crops per epoch, ...), the network
    choice (attention, genotype file: :func:`~monai_nasscam.networks.run_folder.resolve_network_choice`, unless
    ``choice`` is that function's result already: train.yaml resolves it once, as ``network_choice``, for this check,
    the network and the run's record), the dataset (datalist with training and validation images that exist;
    some training label map holds an annotated nucleus: :func:`check_annotated_nuclei`) and,
    when resuming with ``network`` given, that the resume checkpoint holds weights of ``network``. (train.yaml
    checks the resume checkpoint in a second step, after the seed is set, because building the network draws its
    initial weights.)

    Raises:
        InputError: naming the setting or the file (``MissingInputError``, also a ``FileNotFoundError``, for a
            file or folder that does not exist).
    """
    _check_budget(epochs, batch_size, roi_size, val_interval, learning_rate, num_classes)
    check_run_settings(**settings)
    if choice is None:
        resolve_network_choice(attention, genotype_path, output_dir)
    for split in ("training", "validation"):
        entries = split_entries(dataset_dir, split)
        for key in ("image", "label"):
            if not Path(entries[0][key]).is_file():
                raise FileNotFoundError(f"{split} {key} {entries[0][key]} listed in the datalist does not exist.")
        if split == "training":
            check_annotated_nuclei(entries, dataset_dir, num_classes)
    if resume_path is not None and network is not None:
        check_checkpoint(resume_path, network, key="network")
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
    choice: tuple | None = None,
) -> bool:
    """Raise a clear error for anything that would make evaluate.yaml fail later; ``True`` otherwise: the network
    choice (resolved from ``attention``, ``genotype_path`` and ``output_dir`` unless ``choice`` is it already, as in
    :func:`check_train_inputs`), the split (present, not empty, with instance maps for PQ) and the checkpoint
    (exists, same architecture).

    Raises:
        InputError: naming the setting or the file.
    """
    check_trained_weights(ckpt_path)  # a search checkpoint or a text file: said first, before the network choice
    if choice is None:
        resolve_network_choice(attention, genotype_path, output_dir)
    if split not in (*SPLITS, "all"):
        raise ValueError(f"--eval_split must be one of {', '.join([*SPLITS, 'all'])}, got {split!r}.")
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


@input_check
def resolve_resume(resume: Any, output_dir: str | os.PathLike, filename: str = CHECKPOINT_NAME) -> str | None:
    """The checkpoint to resume from: ``None`` for ``resume`` false/None/"", ``OUTPUT/checkpoints/<filename>``
    for ``True`` (or "true", "auto"), else ``resume`` itself as a path.

    Raises:
        FileNotFoundError: the checkpoint to resume from does not exist.
    """
    if resume is None or resume is False or (isinstance(resume, str) and resume.strip().lower() in ("", "false", "no", "0")):
        return None
    if resume is True or (isinstance(resume, str) and resume.strip().lower() in ("true", "yes", "1", "auto")):
        path = Path(output_dir) / "checkpoints" / filename
        what = f"--resume true looks for {path}"
    else:
        path = Path(resume).expanduser()
        what = f"--resume {resume}"
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {what}, which does not exist.")
    return str(path)


@input_check
def check_fresh_run(output_dir: str | os.PathLike, resume_path: str | None, filename: str = CHECKPOINT_NAME) -> bool:
    """Refuse to start a run afresh over the resumable checkpoint of an earlier one in the same folder.

    A fresh run would overwrite ``OUTPUT/checkpoints/<filename>`` (the earlier run could no longer be continued)
    and its outputs, and would mix its per-epoch files with the earlier ones.

    Args:
        output_dir: the run folder.
        resume_path: the checkpoint this run resumes from (:func:`resolve_resume`); ``None`` for a fresh run.
        filename: the workflow's checkpoint file name.

    Raises:
        InputError: a fresh run (``resume_path`` ``None``) and ``OUTPUT/checkpoints/<filename>`` exists.
    """
    checkpoint = Path(output_dir) / "checkpoints" / filename
    if resume_path is None and checkpoint.is_file():
        raise ValueError(
            f"{checkpoint} exists: {output_dir} holds an earlier run. --resume true continues it (a larger --epochs "
            f"extends it); to start afresh, pass another --output_dir or delete {checkpoint}."
        )
    return True
