"""The evaluation summary written to ``RUN/metrics.json`` (format: docs/train_evaluate.md §2)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_nasscam.data.classes import CLASS_NAMES
from monai_nasscam.fileio import atomic_write_text

__all__ = ["CLASS_NAMES", "INSTANCE_KEYS", "instance_metrics_dict", "metrics_dict", "write_metrics_json"]



def _float_or_none(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _per_class(values: Sequence[float] | Mapping[str, float] | torch.Tensor | np.ndarray,
               class_names: Sequence[str]) -> dict[str, float | None]:
    if isinstance(values, Mapping):
        missing = [n for n in class_names if n not in values]
        if missing:
            raise ValueError(f"per-class values miss {missing}.")
        items = [values[n] for n in class_names]
    else:
        items = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values,
                           dtype=np.float64).ravel().tolist()
        if len(items) != len(class_names):
            raise ValueError(f"{len(items)} per-class values for {len(class_names)} classes {tuple(class_names)}.")
    out: dict[str, float | None] = {n: _float_or_none(v) for n, v in zip(class_names, items)}
    defined = [v for v in out.values() if v is not None]
    out["mean"] = float(np.mean(defined)) if defined else None
    return out


#: the instance metrics' keys in ``metrics.json`` (beside ``dice`` and ``pq``; absent when not computed)
INSTANCE_KEYS = ("aji", "aji_plus", "f1_detection", "f1_classification", "mpq_plus")


def instance_metrics_dict(
    aji: float,
    aji_plus: float,
    f1_detection: float,
    f1_classification: Sequence[float] | Mapping[str, float] | torch.Tensor | np.ndarray,
    mpq_plus: float,
    class_names: Sequence[str] = CLASS_NAMES,
) -> dict[str, Any]:
    """
    The instance metrics' part of ``metrics.json`` (fractions in [0, 1], ``null`` where undefined):
    ``{"aji": x, "aji_plus": x, "f1_detection": x, "f1_classification": {class: x, ..., "mean": x}, "mpq_plus": x}``
    (definitions: :mod:`monai_nasscam.metrics.instance`). Pass it as ``extra`` to :func:`metrics_dict`.
    """
    def scalar(v: Any) -> float | None:
        return _float_or_none(v.item() if isinstance(v, torch.Tensor) else v)

    return {
        "aji": scalar(aji),
        "aji_plus": scalar(aji_plus),
        "f1_detection": scalar(f1_detection),
        "f1_classification": _per_class(f1_classification, class_names),
        "mpq_plus": scalar(mpq_plus),
    }


def metrics_dict(
    dice: Sequence[float] | Mapping[str, float] | torch.Tensor | np.ndarray,
    pq: Sequence[float] | Mapping[str, float] | torch.Tensor | np.ndarray,
    protocol: Mapping[str, Any] | None = None,
    pq_official: Sequence[float] | Mapping[str, float] | torch.Tensor | np.ndarray | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    The ``metrics.json`` content: ``{"dice": {class: x, ..., "mean": x}, "pq": {...}, "protocol": {...}}``.

    Args:
        dice: per-class pooled Dice as fractions in [0, 1], in class order (or a dict by class name).
        pq: per-class (correct) panoptic quality, same layout.
        protocol: how the numbers were obtained (split, inference, threshold, ...), stored as given.
        pq_official: optional per-class MoNuSAC official-script PQ, stored under ``"pq_monusac_official"``.
        class_names: class names in order (default: the MoNuSAC classes by id 1..4).
        extra: further top-level keys (must not clash with the ones above).

    ``"mean"`` is the mean over the classes with a defined value; an undefined value (NaN) is written as ``null``.
    """
    out: dict[str, Any] = {
        "dice": _per_class(dice, class_names),
        "pq": _per_class(pq, class_names),
        "protocol": dict(protocol or {}),
    }
    if pq_official is not None:
        out["pq_monusac_official"] = _per_class(pq_official, class_names)
    for key, value in (extra or {}).items():
        if key in out:
            raise ValueError(f"extra key '{key}' clashes with a reserved key.")
        out[key] = value
    return out


def write_metrics_json(path: str | os.PathLike, dice: Any, pq: Any, protocol: Mapping[str, Any] | None = None,
                       **kwargs: Any) -> dict[str, Any]:
    """Write :py:func:`metrics_dict` (same arguments) to ``path`` as JSON (strict: no NaN; NaN values are written
    as ``null``) atomically (a temporary file renamed into place), and return it."""
    data = metrics_dict(dice, pq, protocol, **kwargs)
    atomic_write_text(os.fspath(path), json.dumps(data, indent=2, allow_nan=False) + "\n")
    return data
