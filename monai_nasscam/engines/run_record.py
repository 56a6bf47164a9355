"""The record of a run: what a training run keeps beside its model so that evaluation, export and inference build
the same network (``RUN/network.json``, ``RUN/genotype.json``, ``RUN/stain.json``: :func:`record_run_inputs`), and the
description of an inferer for the evaluation's report (:func:`describe_inferer`).

The network recorded is the run's network choice (:func:`~monai_nasscam.networks.run_folder.resolve_network_choice`),
which :mod:`monai_nasscam.networks.run_folder` reads back; the input checks are :mod:`monai_nasscam.engines.checks`'.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist

from monai_nasscam.fileio import atomic_write_text
from monai_nasscam.networks.attentions import get_attention
from monai_nasscam.networks.genotype import Genotype
from monai_nasscam.networks.run_folder import (
    NETWORK_RECORD_NAME,
    resolve_features,
    resolve_network_choice,
    warn_unconverged_genotype,
)
from monai_nasscam.overrides import is_null

__all__ = ["describe_inferer", "record_run_inputs"]


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


def record_run_inputs(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    genotype_path: str | os.PathLike | None = None,
    rank: int | None = None,
    attention: str | None = None,
    features: Sequence[int] | None = None,
    dropout: float | None = None,
    train_mpp: Any = None,
    choice: tuple | None = None,
) -> bool:
    """Keep what inference needs beside the model, so that ``inference.yaml`` needs only ``--ckpt_path``.

    Writes ``RUN/stain.json`` (the stain reference of ``PREP/manifest.json``; ``{"method": "none"}`` when the
    dataset has no manifest), for a derived network ``RUN/genotype.json`` unless that file exists already
    (a search into the same folder wrote it; it is never replaced), and ``RUN/network.json``, the network trained:
    ``{"attention": ..., "genotype": "genotype.json" | an absolute path | null, "features": [...], "dropout": ...,
    "mpp": ..., "mpp_source": ...}``: the network choice ``choice`` (the result of
    :func:`~monai_nasscam.networks.run_folder.resolve_network_choice`: train.yaml resolves it once, as
    ``network_choice``, before anything is written) or, without it, that function's choice for ``attention``,
    ``genotype_path`` and ``output_dir`` as it is before this call. A genotype whose search did not converge is named
    in one warning (:func:`~monai_nasscam.networks.run_folder.warn_unconverged_genotype`). Atomic writes, by rank 0
    only (``rank``: this process's, default ``ignite.distributed.get_rank()``: the process group's rank, 0 without
    one).

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
    if choice is None:
        choice = resolve_network_choice(attention, genotype_path, output_dir)
    chosen, genotype, genotype_file = choice
    warn_unconverged_genotype(genotype, genotype_file)  # once, at the start of training (rank 0)
    if get_attention(chosen).network is None:  # a U-Net: its widths
        features = resolve_features(features, output_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Path(dataset_dir) / "manifest.json"
    stain: Any = {"method": "none"}
    if manifest.is_file():
        stain = json.loads(manifest.read_text()).get("settings", {}).get("stain", stain)
    atomic_write_text(out / "stain.json", json.dumps(stain, indent=1) + "\n")
    target = out / "genotype.json"
    if not is_null(genotype_path) and genotype is not None and not target.exists():
        genotype.save(target)  # the given --genotype_path's
    recorded_genotype: str | None = None
    if genotype is not None:
        same = target.is_file() and Genotype.load(target) == genotype
        recorded_genotype = "genotype.json" if same else str(Path(genotype_file).resolve())
        if not same and target.is_file():
            warnings.warn(
                f"{target} (kept) differs from the trained genotype {genotype_file}; {out / NETWORK_RECORD_NAME} "
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
