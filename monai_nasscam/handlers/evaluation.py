"""The evaluation report of ``bundle/configs/evaluate.yaml``: ``RUN/metrics.json`` (docs/train_evaluate.md §2) and a Markdown
table ``RUN/metrics.md``, written when the evaluator completes."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_nasscam.fileio import atomic_write_text
from monai_nasscam.metrics import (
    CLASS_NAMES,
    instance_metrics_dict,
    mean_over_scored_images,
    mpq_plus,
    write_metrics_json,
)

__all__ = ["MetricsReportWriter", "metrics_markdown", "SEMANTIC_ONLY_KEY"]

#: the ``metrics.json`` key that says why the instance metrics are left out (semantic-only ground truth)
SEMANTIC_ONLY_KEY = "instance_metrics_left_out"
#: protocol entries that describe the instance metrics (dropped with them)
_INSTANCE_PROTOCOL = ("pq", "pq_monusac_official", "instance_metrics")

_ROWS = (
    ("dice", "Dice, pooled over the split (paper protocol)"),
    ("dice_per_image", "Dice, per image, mean over images (MONAI DiceMetric)"),
    ("pq", "PQ, pooled counts (correct)"),
    ("pq_monusac_official", "PQ, MoNuSAC 2020 official script (with its known bugs)"),
    ("f1_classification", "F1 of classification, HoVer-Net rule (centroid pairing)"),
)

#: split-level instance metrics (one value each), in the second table
_SCALAR_ROWS = (
    ("mpq_plus", "mPQ+ (per-class PQ from pooled counts, mean over classes)"),
    ("aji", "AJI (Kumar et al. 2017), mean over images"),
    ("aji_plus", "AJI+ (one-to-one pairing), mean over images"),
    ("f1_detection", "F1 of detection, HoVer-Net rule (centroid pairing)"),
)


def _values(x: Any) -> list[float]:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64).ravel().tolist()


def _per_class(values: Any, class_names: Sequence[str]) -> dict[str, float | None]:
    items = _values(values)
    if len(items) != len(class_names):
        raise ValueError(f"{len(items)} per-class values for {len(class_names)} classes {tuple(class_names)}.")
    out: dict[str, float | None] = {n: (None if math.isnan(v) else v) for n, v in zip(class_names, items)}
    defined = [v for v in out.values() if v is not None]
    out["mean"] = float(np.mean(defined)) if defined else None
    return out


def _mean_over_images(metric_fn: Any) -> np.ndarray:
    """Per-class mean of a MONAI ``DiceMetric``'s per-image values over the images that scored the class (NaN
    where none did; MONAI's own ``aggregate`` reports 0 there), as :func:`~monai_nasscam.metrics.per_image_dice`."""
    return mean_over_scored_images(metric_fn.get_buffer()).numpy()


def _size(item: Mapping) -> int:
    """The number of images in a sample or collated batch: the leading size of its image (1 when unknown)."""
    image = item.get("image")
    return int(image.shape[0]) if isinstance(image, torch.Tensor) and image.ndim == 4 else 1


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}"


def metrics_markdown(
    metrics: Mapping[str, Any], class_names: Sequence[str] = CLASS_NAMES, title: str | None = None
) -> str:
    """Markdown tables (values in %) of the per-class metrics in a ``metrics.json`` dict and of its split-level
    instance metrics (when present), then its protocol."""
    protocol = dict(metrics.get("protocol", {}))
    lines = [f"# {title or 'Evaluation'}", ""]
    header = ["metric (%)", *class_names, "mean"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    left_out = metrics.get(SEMANTIC_ONLY_KEY)
    for key, label in _ROWS:
        row = metrics.get(key)
        if isinstance(row, Mapping) and not (left_out and key == "pq"):
            lines.append("| " + " | ".join([label, *[_cell(row.get(n)) for n in [*class_names, "mean"]]]) + " |")
    scalars = [(label, metrics[key]) for key, label in _SCALAR_ROWS if key in metrics]
    if scalars:
        lines += ["", "| instance metric (%) | value |", "|---|---:|"]
        lines += [f"| {label} | {_cell(value)} |" for label, value in scalars]
    if left_out:
        lines += ["", f"Instance metrics (PQ, AJI, F1, mPQ+): {left_out}"]
    lines += [
        "",
        "n/a: undefined, left out of the mean (pooled metrics: the class is in neither prediction nor ground truth of "
        "the split; per-image Dice and official PQ: no image's ground truth has the class).",
        "",
    ]
    if protocol:
        lines += ["Protocol:", ""]
        for k, v in protocol.items():
            lines.append(f"- {k}: {v}")
        lines.append("")
    return "\n".join(lines)


class MetricsReportWriter:
    """When the evaluator completes, write ``output_dir/metrics.json`` and ``output_dir/metrics.md``.

    ``metrics.json`` holds (fractions in [0, 1], ``null`` where undefined, ``mean`` over the defined classes):

    - ``dice``: per-class Dice with intersections and sums pooled over all images (the paper's protocol);
    - ``pq``: per-class panoptic quality with TP / FP / FN / IoU sums pooled over all images (correct PQ);
    - ``pq_monusac_official``: the MoNuSAC 2020 official script's per-class PQ, bugs included (labelled as such);
    - ``dice_per_image``: MONAI ``DiceMetric`` per image, averaged over the images whose ground truth has the class
      (``null`` when no image has it);
    - with ``instance`` given: ``aji``, ``aji_plus`` (means over the images), ``f1_detection``,
      ``f1_classification`` (per class, with ``mean``) and ``mpq_plus`` (the mean over classes of the pooled PQ)
      (definitions: :mod:`monai_nasscam.metrics.instance`);
    - ``protocol``: how the numbers were obtained (``protocol`` as given, plus the number of images);
    - ``per_image``: ``{"names": [...], "dice_counts": [[[intersection, prediction sum, ground-truth sum] per class]
      per image]}`` in evaluation order (the pooled Dice's own counts, so that ``nasscam compare`` can resample the
      images); the names are those of the datalist entries, left out when the batches carry none.

    When the ground truth of any evaluated image is semantic-only (its datalist entry has ``"semantic_only": true``:
    an image + mask folder whose masks merge touching nuclei of a class, see docs/data.md), the instance metrics
    would score merged regions as nuclei and mean nothing: ``pq`` is written with ``null`` values, the other
    instance metrics and their protocol entries are left out, and :data:`SEMANTIC_ONLY_KEY` says why (also logged
    as one line).

    Args:
        output_dir: where to write.
        dice: the :class:`~monai_nasscam.metrics.PooledDiceHandler` of the evaluator.
        pq: an ``IgniteMetricHandler`` of :class:`~monai_nasscam.metrics.PooledPQMetric`.
        dice_per_image: an ``IgniteMetricHandler`` of MONAI ``DiceMetric`` (optional).
        instance: an ``IgniteMetricHandler`` of :class:`~monai_nasscam.metrics.InstanceMetric` (optional): adds the
            instance metrics.
        protocol: the evaluation settings to record.
        class_names: class names in channel order.
        json_name, markdown_name: file names.
        title: title of the Markdown file.
        semantic_only: leave the instance metrics out (``True``), keep them (``False``), or decide from the
            evaluated samples' ``semantic_only`` key (``None``, default).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        dice: Any,
        pq: Any,
        dice_per_image: Any = None,
        protocol: Mapping[str, Any] | None = None,
        class_names: Sequence[str] = CLASS_NAMES,
        json_name: str = "metrics.json",
        markdown_name: str = "metrics.md",
        title: str | None = None,
        instance: Any = None,
        semantic_only: bool | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.semantic_only = semantic_only
        self._images = self._semantic = 0
        self.instance = instance
        self.dice = dice
        self.pq = pq
        self.dice_per_image = dice_per_image
        self.protocol = dict(protocol or {})
        self.class_names = tuple(class_names)
        self.json_name = json_name
        self.markdown_name = markdown_name
        self.title = title
        self.metrics: dict[str, Any] | None = None
        self._names: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        engine.add_event_handler(Events.COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._images = self._semantic = 0
        self._names.clear()

    def _count(self, engine: Engine) -> None:
        """Count the evaluated images and those whose entry is marked ``semantic_only``, and keep their names (a
        decollated batch is a list of samples, a collated one a dict of batched values)."""
        batch = engine.state.batch
        for item in batch if isinstance(batch, (list, tuple)) else [batch]:
            if not isinstance(item, Mapping):
                continue
            flags = _values(item.get("semantic_only", False)) if "semantic_only" in item else [0.0] * _size(item)
            self._images += len(flags)
            self._semantic += int(sum(bool(f) for f in flags))
            names = item.get("name")
            self._names.extend([names] if isinstance(names, str) else list(names or []))

    def _left_out(self) -> str | None:
        """Why the instance metrics are left out, or ``None`` when they are reported."""
        if self.semantic_only is False or (self.semantic_only is None and not self._semantic):
            return None
        which = f"{self._semantic} of {self._images} images" if self._images else "the images"
        return (f"left out: the ground truth of {which} is semantic-only (its masks merge touching nuclei of a class "
                "into one region), so PQ, AJI, F1 and mPQ+ would score merged regions as nuclei; Dice is unaffected")

    def __call__(self, engine: Engine) -> None:
        dice_fn = self.dice.metric_fn
        pq_fn = self.pq.metric_fn
        counts = dice_fn.get_buffer()
        n_images = int(counts.shape[0]) if isinstance(counts, torch.Tensor) else 0
        extra: dict[str, Any] = {}
        if n_images:
            extra["per_image"] = {"dice_counts": counts.double().tolist()}
            if len(self._names) == n_images:
                extra["per_image"] = {"names": [str(n) for n in self._names], **extra["per_image"]}
        if self.dice_per_image is not None:
            extra["dice_per_image"] = _per_class(_mean_over_images(self.dice_per_image.metric_fn), self.class_names)
        left_out = self._left_out()
        if left_out:
            extra[SEMANTIC_ONLY_KEY] = left_out
        elif self.instance is not None:
            result = self.instance.metric_fn.results()
            extra.update(instance_metrics_dict(
                aji=result["aji"], aji_plus=result["aji_plus"], f1_detection=result["f1_detection"],
                f1_classification=_values(result["f1_classification"]), mpq_plus=mpq_plus(pq_fn.counts()),
                class_names=self.class_names,
            ))
        protocol = {k: v for k, v in self.protocol.items() if not (left_out and k in _INSTANCE_PROTOCOL)}
        protocol["images"] = n_images
        undefined = [math.nan] * len(self.class_names)
        self.metrics = write_metrics_json(
            self.output_dir / self.json_name,
            dice=_values(dice_fn.aggregate(reduction="none")),
            pq=undefined if left_out else _values(pq_fn.aggregate(reduction="none", variant="pooled")),
            protocol=protocol,
            pq_official=None if left_out else _values(pq_fn.aggregate(reduction="none", variant="monusac_official")),
            class_names=self.class_names,
            extra=extra,
        )
        split = protocol.get("split")
        title = self.title or f"Evaluation on {f'the {split} split' if split else 'the split'} ({n_images} images)"
        atomic_write_text(self.output_dir / self.markdown_name, metrics_markdown(self.metrics, self.class_names, title))
        if left_out:
            engine.logger.warning(f"instance metrics (PQ, AJI, F1, mPQ+) {left_out}")
        engine.logger.info(
            f"wrote {self.output_dir / self.json_name} and {self.output_dir / self.markdown_name}: pooled Dice mean "
            f"{_cell(self.metrics['dice']['mean'])} %"
            + ("" if left_out else f", PQ mean {_cell(self.metrics['pq']['mean'])} %")
        )
