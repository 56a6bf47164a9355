"""The writing part of the inference workflow (:class:`~monai_nasscam.inference.predictor.NucleiPredictor`): the
output folder of a run -- each image's folder and file prefix (MONAI ``SaveImage``'s layout), the per-image output
writers, the completion marker that a re-run skips an image by (resume), and the run's tables (``counts.csv``,
``counts_summary.csv``, ``summary.json``)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_nasscam.data.classes import CLASS_NAMES
from monai_nasscam.errors import InputError
from monai_nasscam.fileio import atomic_write_text
from monai_nasscam.inference.outputs import (
    ClassMapPNGWriter,
    InferredImage,
    NucleiCSVWriter,
    NucleiGeoJSONWriter,
    OutputWriter,
    OverlayWriter,
    write_csv,
)

__all__ = ["OutputFolder", "COMPLETE_SUFFIX", "COUNT_FIELDS", "write_counts_csv", "write_summary"]

logger = logging.getLogger("monai_nasscam.inference")

#: the per-image completion marker ``OUT/[sub/]NAME/NAME_complete.json``, written last (atomically) once every output
#: of the image is in place: a re-run skips the image while the marker and every file it lists are there
COMPLETE_SUFFIX = "_complete.json"
COMPLETE_FORMAT = "monai-nasscam-inference-complete"
#: the columns of ``counts.csv``, one row per input image
COUNT_FIELDS = ["image", "name", "status", "height", "width", *CLASS_NAMES, "total", "seconds", "message"]


def write_counts_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per input image: nuclei per class (``status`` ``ok`` or ``error`` with the ``message``)."""
    write_csv(path, COUNT_FIELDS, rows)


def write_summary(
    csv_path: str,
    json_path: str,
    rows: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    images_found: int | None = None,
    complete: bool = True,
) -> dict:
    """Totals per class over the images that succeeded (CSV, one row per class) and ``summary.json``.

    Args:
        csv_path: the per-class table (``counts_summary.csv``).
        json_path: ``summary.json``.
        rows: one row per image processed so far (``counts.csv``).
        settings: the run's settings, recorded under ``settings``.
        images_found: the images the run found (``None``: ``len(rows)``).
        complete: ``False`` while the run is still going (the tables are rewritten after every image), so that the
            files of an interrupted run say so.
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    table = []
    for cid, name in enumerate(CLASS_NAMES, start=1):
        values = [int(r.get(name, 0)) for r in ok]
        table.append({
            "class_id": cid,
            "class": name,
            "nuclei": int(sum(values)),
            "images_with_class": int(sum(v > 0 for v in values)),
            "mean_per_image": round(float(np.mean(values)), 3) if values else 0.0,
        })
    write_csv(csv_path, list(table[0]), table)
    summary = {
        "complete": bool(complete),
        "images_found": len(rows) if images_found is None else int(images_found),
        "images": len(rows),
        "succeeded": len(ok),
        "failed": [{"image": r["image"], "message": r.get("message", "")} for r in rows if r.get("status") != "ok"],
        "nuclei": {t["class"]: t["nuclei"] for t in table},
        "total_nuclei": int(sum(t["nuclei"] for t in table)),
        "settings": dict(settings),
    }
    atomic_write_text(json_path, json.dumps(summary, indent=2, default=str))
    return summary


class OutputFolder:
    """The output folder of an inference run.

    Args:
        output_dir: the folder.
        root: the folder the input images' names are relative to (``OUT/[sub/]NAME/`` mirrors ``root/[sub/]NAME.ext``).
        writers: the per-image output writers, called in this order (``None`` entries, e.g. disabled ones of a
            bundle, are skipped); ``None``: the nuclei GeoJSON and CSV, the class map PNG and the overlay.
        overwrite: redo images whose outputs are complete (``False``: :meth:`completed` finds them).

    Raises:
        InputError: a writer that is no :class:`~monai_nasscam.inference.outputs.OutputWriter`.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        root: str,
        writers: Sequence[OutputWriter | None] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.output_dir = os.path.abspath(os.fspath(output_dir))
        self.root = root
        if writers is None:
            writers = [NucleiGeoJSONWriter(), NucleiCSVWriter(), ClassMapPNGWriter(), OverlayWriter()]
        self.writers: list[OutputWriter] = [w for w in writers if w is not None]
        for writer in self.writers:
            if not isinstance(writer, OutputWriter):
                raise InputError(
                    f"outputs must be OutputWriter objects (monai_nasscam.inference.outputs), got {writer!r}."
                )
        self.overwrite = bool(overwrite)

    # ------------------------------------------------------------------------------------------- one image
    def base(self, path: str) -> str:
        """``OUT/[sub/]NAME/NAME`` -- the folder layout of ``SaveImage`` (``data_root_dir`` = the input folder);
        the folder is made."""
        from monai.data.utils import create_file_basename

        return create_file_basename("", path, self.output_dir, data_root_dir=self.root, separate_folder=True, makedirs=True)

    def name(self, path: str) -> str:
        """``[sub/]NAME``, the image's name in the tables and the overlay's title."""
        return os.path.dirname(os.path.relpath(self.base(path), self.output_dir))

    @property
    def streams_nuclei(self) -> bool:
        """Whether a writer takes the nuclei (which then need outlines and class probabilities)."""
        return any(w.streams_nuclei for w in self.writers)

    def write(self, image: InferredImage) -> None:
        """Every writer's files of ``image``, in order (on a failure the caller calls :meth:`abort`)."""
        for writer in self.writers:
            writer.write(image)

    def abort(self) -> None:
        """Drop what the writers started for the current image, also the files of those that wrote (no partial
        file stays)."""
        for writer in self.writers:
            writer.abort()

    def remove_if_empty(self, folder: str) -> None:
        """Remove ``folder`` and its parents below the output folder while they are empty."""
        while os.path.commonpath([folder, self.output_dir]) == self.output_dir and folder != self.output_dir:
            try:
                os.rmdir(folder)  # only succeeds on an empty folder
            except OSError:
                return
            folder = os.path.dirname(folder)

    # ---------------------------------------------------------------------------------------------- resume
    def marker(self, path: str) -> str:
        """The completion marker of ``path``'s outputs (:data:`COMPLETE_SUFFIX`)."""
        return self.base(path) + COMPLETE_SUFFIX

    def completed(self, path: str, fingerprint: Mapping[str, Any]) -> dict[str, Any] | None:
        """The completion record of ``path``'s outputs when they are complete and current: the marker exists, the
        input file and the settings (``fingerprint``) are those it records, and every output file it lists is there
        with its size; else ``None`` (always ``None`` with ``overwrite``)."""
        if self.overwrite:
            return None
        marker = self.marker(path)
        try:
            record = json.loads(Path(marker).read_text())
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("format") != COMPLETE_FORMAT:
            return None
        if record.get("source") != [st.st_size, st.st_mtime_ns]:
            return None
        if record.get("settings") != fingerprint:
            logger.info("%s: outputs made with other settings; redone", path)
            return None
        folder = os.path.dirname(marker)
        for name, size in (record.get("files") or {}).items():
            try:
                if os.path.getsize(os.path.join(folder, name)) != size:
                    return None
            except OSError:
                return None
        return record if record.get("files") and isinstance(record.get("row"), dict) else None

    def unmark(self, path: str) -> None:
        """Remove the completion marker of an image being redone: it is complete again only once every output is
        rewritten."""
        marker = self.marker(path)
        if os.path.exists(marker):
            os.remove(marker)

    def mark_complete(
        self, path: str, row: Mapping[str, Any], fingerprint: Mapping[str, Any], resolution: Mapping[str, Any] | None
    ) -> None:
        """Write the completion marker, last and atomically: the image's output files (name and size), the input's
        size and modification time, the settings (``fingerprint``), its ``counts.csv`` row and its resolution."""
        marker = self.marker(path)
        folder, stem = os.path.dirname(marker), os.path.basename(self.base(path))
        files = {
            f: os.path.getsize(os.path.join(folder, f)) for f in sorted(os.listdir(folder))
            if f.startswith(stem + "_") and not f.endswith(COMPLETE_SUFFIX) and os.path.isfile(os.path.join(folder, f))
        }
        st = os.stat(path)
        record = {"format": COMPLETE_FORMAT, "version": 1, "source": [st.st_size, st.st_mtime_ns],
                  "settings": fingerprint, "files": files, "row": row, "resolution": resolution}
        atomic_write_text(marker, json.dumps(record, indent=1, default=str) + "\n")

    # ------------------------------------------------------------------------------------------------ run
    def write_tables(
        self, rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], images_found: int, complete: bool = True
    ) -> dict[str, Any]:
        """``counts.csv``, ``counts_summary.csv`` and ``summary.json`` of the images so far (``complete``: all);
        returns the summary."""
        write_counts_csv(os.path.join(self.output_dir, "counts.csv"), rows)
        return write_summary(
            os.path.join(self.output_dir, "counts_summary.csv"),
            os.path.join(self.output_dir, "summary.json"),
            rows,
            settings,
            images_found=images_found,
            complete=complete,
        )
