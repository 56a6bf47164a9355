"""The inference workflow of ``bundle/configs/inference.yaml``: a folder of images -> class maps, overlays, nucleus
counts and QuPath polygons.

Per input image ``IN/[sub/]NAME.ext`` its output writers (``outputs``, :mod:`monai_nasscam.inference.outputs`) write,
in ``OUT/[sub/]NAME/`` (MONAI ``SaveImage``'s layout), by default:

- ``NAME_classmap.png``: uint8 class map, 0 background, 1 Epithelial, 2 Lymphocyte, 3 Neutrophil, 4 Macrophage;
- ``NAME_classmap.nii.gz``: the same through MONAI ``SaveImage`` (axes ``(x, y)``, spacing in mm when known);
- ``NAME_overlay.png``: the image with the classes in colour and a legend with the counts (a subsampled
  overview for images larger than ``overlay_max_size``);
- ``NAME_nuclei.geojson``: one Polygon per nucleus (a MultiPolygon for a nucleus the watershed left in pieces),
  QuPath ``detection`` or ``annotation`` objects with their class
  name and colour and their measurements (centroid, area in px and µm², class probabilities), in full-resolution
  pixel coordinates;
- ``NAME_nuclei.csv``: one row per nucleus with the same measurements;

Nuclei are the connected components of each class in the class map, split by the instance separation of evaluation
(``instance_method``: the marker-controlled watershed by default, or ``connected_components``; see
:mod:`monai_nasscam.inference.instances`).

and ``NAME_complete.json``, written last: the completion marker of the image's outputs. For the run
``OUT/counts.csv`` (one row per image), ``OUT/counts_summary.csv`` (one row per class) and ``OUT/summary.json``
(totals, failures, settings, each image's resolution and what was done about it, the images skipped as complete).

Resolution: an image whose resolution (its file's, else the ``mpp`` setting) differs from the training one by more
than ``mpp_tolerance`` is segmented at the training resolution and its outputs stay in its own pixels; an image of
unknown resolution is named in a warning, once (:mod:`monai_nasscam.inference.resolution`).

Resume: a re-run over the same folder skips (``skipped (complete)`` in the log) every image whose completion marker
and the output files it lists are in place, with the same input file and settings; ``overwrite=True`` redoes them. A bad image is reported (log, ``counts.csv`` and
``summary.json`` name the file and the problem) and the others are still processed; the run fails (non-zero exit)
only when the input folder holds no image or no image could be processed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from monai_nasscam.data.classes import CLASS_NAMES
from monai_nasscam.errors import DataError, InferenceError, InputError, RunInterrupted, input_check
from monai_nasscam.overrides import as_bool, is_null
from monai_nasscam.inference.instances import INSTANCE_METHODS, WATERSHED_DEFAULTS, WATERSHED_MIN_SIZE, InstanceSeparator
from monai_nasscam.inference.nuclei import iter_nuclei
from monai_nasscam.inference.outputs import (
    InferredImage,
    OutputWriter,
    default_outputs,
    write_counts_csv,
    write_summary,
)
from monai_nasscam.fileio import atomic_write_text
from monai_nasscam.runlock import claim_output_dir
from monai_nasscam.inferers import AutocastNetwork, autocast_dtype, check_precision, describe_precision
from monai_nasscam.inference.regions import IMAGE_SUFFIXES, open_region_reader
from monai_nasscam.inference.resolution import (
    MPP_TOLERANCE,
    RescaledNetwork,
    ResolutionPlan,
    check_mpp,
    plan_resolution,
    rescaled_inferer,
    scaled_separator,
    train_resolution,
)
from monai_nasscam.inference.stain import SlideStainNormalizer, load_stain_reference, resolve_stain_spec
from monai_nasscam.inference.tiling import predict_class_map

__all__ = ["NucleiPredictor", "check_inference_inputs", "find_images", "load_weights", "run_dir_of", "COMPLETE_SUFFIX"]

logger = logging.getLogger("monai_nasscam.inference")


#: the per-image completion marker ``OUT/[sub/]NAME/NAME_complete.json``, written last (atomically) once every output
#: of the image is in place: a re-run skips the image while the marker and every file it lists are there
COMPLETE_SUFFIX = "_complete.json"
COMPLETE_FORMAT = "monai-nasscam-inference-complete"


def run_dir_of(ckpt_path: str | os.PathLike) -> str:
    """The training run folder of a checkpoint: ``RUN`` for ``RUN/models/model.pt`` and
    ``RUN/checkpoints/train_checkpoint.pt``, else the file's folder."""
    path = Path(ckpt_path).absolute()
    return str(path.parent.parent if path.parent.name in ("models", "checkpoints") else path.parent)


def find_images(input_dir: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Image files under ``input_dir`` (or the file itself), sorted; where ``NAME.svs`` and ``NAME.tif`` sit side by
    side (the MoNuSAC release), only the ``.svs`` (the source of truth) is kept.

    Raises:
        FileNotFoundError: ``input_dir`` does not exist, or holds no image (the message names it).
    """
    root = Path(input_dir)
    if root.is_file():
        return [str(root)]
    if not root.is_dir():
        raise FileNotFoundError(f"input folder {root} does not exist.")
    walker = root.rglob("*") if recursive else root.glob("*")
    files = sorted(str(p) for p in walker if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    svs = {os.path.splitext(f)[0] for f in files if f.lower().endswith(".svs")}
    files = [f for f in files if f.lower().endswith(".svs") or os.path.splitext(f)[0] not in svs]
    if not files:
        raise FileNotFoundError(
            f"input folder {root} holds no image ({', '.join(IMAGE_SUFFIXES)}){'' if recursive else ' (not searched recursively)'}."
        )
    return files


def load_weights(network: nn.Module, ckpt_path: str | os.PathLike) -> nn.Module:
    """Load a weights-only checkpoint (``RUN/models/model.pt``: a state dict, or one under ``model``/``network``).

    Raises:
        FileNotFoundError / ValueError: naming the checkpoint, and for another architecture which weights differ.
    """
    from monai_nasscam.networks.run_folder import check_checkpoint

    check_checkpoint(ckpt_path, network)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    for key in ("model", "network"):
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    network.load_state_dict(state, strict=True)
    return network


class NucleiPredictor:
    """Run a trained network over a folder of H&E images (see the module docstring for the outputs).

    Args:
        network: the network (``network_def`` of the bundle), weights loaded from ``ckpt_path`` here.
        inferer: a MONAI ``SlidingWindowInferer`` (roi_size, overlap, sw_batch_size, mode).
        input_dir: a folder of images (searched recursively) or one image file.
        output_dir: where the outputs go.
        ckpt_path: weights (``RUN/models/model.pt``); ``None`` keeps the network's weights (tests).
        outputs: the per-image files, a sequence of :class:`~monai_nasscam.inference.outputs.OutputWriter` called in
            this order (``None`` entries, e.g. disabled ones of a bundle, are skipped); default
            :func:`~monai_nasscam.inference.outputs.default_outputs` of ``saver`` and ``object_type``.
        saver: without ``outputs``: a MONAI ``SaveImage`` for the class map (NIfTI); ``None`` writes no NIfTI.
        stain: the stain reference: ``auto`` (``RUN/stain.json``, ``RUN/manifest.json`` or ``dataset_dir``'s
            ``manifest.json``), a ``manifest.json`` path, a JSON file / dict with the reference, or
            ``macenko`` / ``reinhard`` (default references) / ``none``.
        dataset_dir: the prepared dataset the model was trained on (for ``stain: auto``).
        device: torch device of the network.
        threshold: sigmoid threshold of each class channel.
        tiled: ``auto`` (TIFF / SVS larger than ``max_whole_pixels`` are read and inferred block by block), ``True``
            (every TIFF / SVS block by block) or ``False``.
        max_whole_pixels: larger images are inferred block by block (and TIFFs read segment by segment).
        block_size: core size of a block (rounded down to a multiple of the window stride).
        skip_empty: blocks without a stained pixel are not inferred (class 0).
        num_workers: threads that read and normalise the next blocks while one is inferred.
        tif_bgr: ``.tif`` files store B, G, R (MoNuSAC ``.tif`` copies); ``.svs`` are always RGB.
        recursive: search ``input_dir`` recursively.
        object_type: without ``outputs``: QuPath object type of the polygons, ``detection`` (light, the default) or
            ``annotation``.
        polygon_tolerance: Douglas-Peucker simplification of the polygons in pixels (0: exact contours).
        min_area: nuclei smaller than this many pixels are removed (from the class map too).
        instance_method: how the class map becomes nuclei: ``watershed`` (default: each connected component of a
            class split by the marker-controlled watershed that evaluation uses) or ``connected_components`` (one
            nucleus per component, the paper's protocol).
        watershed: the watershed's parameters in pixels, a mapping with any of ``h``, ``min_distance``, ``sigma`` and
            ``min_size`` (nuclei under ``min_size`` pixels are dropped, with the watershed only); missing keys take
            :data:`~monai_nasscam.inference.instances.WATERSHED_DEFAULTS` and
            :data:`~monai_nasscam.inference.instances.WATERSHED_MIN_SIZE`.
        overlay_max_size: longest side of the overview image the writers get (the overlay PNG); larger images are
            shown subsampled.
        optimize: network preparation, see :func:`monai_nasscam.inference.optimize.prepare_network`.
        progress: progress bars.
        num_threads: torch intra-op threads (``None``: torch's default, one per core; 1 when ``parallel`` > 1).
        parallel: windows of a batch computed in this many threads at once (``auto``: one per CPU core on CPU,
            1 on GPU); see :class:`~monai_nasscam.inference.optimize.PreparedNetwork`.
        tune_malloc: on CPU, keep freed memory for reuse (:func:`~monai_nasscam.inference.optimize.tune_allocator`).
        mpp: microns per pixel of the images whose file records none (``None``: such images' resolution is unknown,
            which is said once per image); a file's own resolution always wins.
        train_mpp: the resolution the network was trained at (``None``: the one ``RUN/network.json`` records, else
            :data:`~monai_nasscam.inference.resolution.DEFAULT_TRAIN_MPP`).
        mpp_tolerance: relative difference under which an image's resolution counts as the training one; images
            further off are rescaled to it (see :mod:`monai_nasscam.inference.resolution`).
        overwrite: redo images whose outputs are complete (``False``: they are skipped, see :data:`COMPLETE_SUFFIX`).
        precision: ``auto`` (bfloat16 autocast on a CPU with native bfloat16, else float32), ``bf16`` or ``fp32``
            (see :mod:`monai_nasscam.inferers`). Only the network's forward pass: its outputs are cast back to
            float32 before the windows are blended, so the probabilities are float32 (then quantised as always).
    """

    def __init__(
        self,
        network: nn.Module,
        inferer: Any,
        input_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        ckpt_path: str | os.PathLike | None = None,
        outputs: Sequence[OutputWriter | None] | None = None,
        saver: Any = None,
        stain: Any = "auto",
        dataset_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        threshold: float = 0.5,
        tiled: Any = "auto",
        max_whole_pixels: int = 4096 * 4096,
        block_size: int = 2048,
        skip_empty: Any = True,
        num_workers: int = 0,
        tif_bgr: Any = False,
        recursive: Any = True,
        object_type: str = "detection",
        polygon_tolerance: float = 0.0,
        min_area: int = 0,
        overlay_max_size: int = 4096,
        optimize: str = "auto",
        progress: Any = True,
        num_threads: int | None = None,
        parallel: Any = "auto",
        tune_malloc: Any = True,
        instance_method: str = "watershed",
        watershed: Mapping[str, Any] | None = None,
        mpp: Any = None,
        train_mpp: Any = None,
        mpp_tolerance: float = MPP_TOLERANCE,
        overwrite: Any = False,
        precision: Any = "auto",
    ) -> None:
        self.network = network
        self.inferer = inferer
        self.input_dir = os.path.abspath(os.fspath(input_dir))
        self.output_dir = os.path.abspath(os.fspath(output_dir))
        self.ckpt_path = None if is_null(ckpt_path) else os.fspath(ckpt_path)  # type: ignore[arg-type]
        if outputs is None:
            outputs = default_outputs(saver, object_type)
        self.outputs: list[OutputWriter] = [w for w in outputs if w is not None]
        for writer in self.outputs:
            if not isinstance(writer, OutputWriter):
                raise InputError(
                    f"outputs must be OutputWriter objects (monai_nasscam.inference.outputs), got {writer!r}."
                )
        self.stain = stain
        self.dataset_dir = None if is_null(dataset_dir) else os.fspath(dataset_dir)  # type: ignore[arg-type]
        self.device = torch.device(device)
        self.threshold = float(threshold)
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold must lie in (0, 1), got {threshold}.")
        self.tiled: bool | str = "auto" if str(tiled).strip().lower() == "auto" else as_bool(tiled, "tiled")
        self.max_whole_pixels = int(max_whole_pixels)
        self.block_size = int(block_size)
        self.skip_empty = as_bool(skip_empty, "skip_empty")
        self.num_workers = max(0, int(num_workers))
        self.tif_bgr = as_bool(tif_bgr, "tif_bgr")
        self.recursive = as_bool(recursive, "recursive")
        self.polygon_tolerance = float(polygon_tolerance)
        self.min_area = int(min_area)
        self.separator = self._separator(instance_method, watershed)
        self.overlay_max_size = int(overlay_max_size)
        self.optimize = optimize
        self.progress = as_bool(progress, "progress")
        self.num_threads = None if is_null(num_threads) else int(num_threads)  # type: ignore[arg-type]
        self.parallel = parallel
        self.tune_malloc = as_bool(tune_malloc, "tune_malloc")
        try:
            self.mpp = check_mpp(mpp, "mpp")
            self.train_mpp_setting = check_mpp(train_mpp, "train_mpp")
        except ValueError as e:
            raise InputError(str(e)) from None
        self.mpp_tolerance = float(mpp_tolerance)
        if not 0.0 <= self.mpp_tolerance < 1.0:
            raise InputError(f"mpp_tolerance must lie in [0, 1) (a relative difference), got {mpp_tolerance}.")
        self.overwrite = as_bool(overwrite, "overwrite")
        self.precision = check_precision(precision)
        self.train_mpp: float | None = None
        self.train_mpp_source = ""
        self.resolutions: dict[str, dict[str, Any]] = {}
        self.skipped: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self._forward: Any = None
        self._reference: dict[str, Any] | None = None

    @staticmethod
    def _separator(method: Any, watershed: Mapping[str, Any] | None) -> InstanceSeparator:
        """The :class:`InstanceSeparator` of ``instance_method`` and ``watershed`` (errors name the setting)."""
        method = str(method).strip().lower()
        if method not in INSTANCE_METHODS:
            raise InputError(f"instance_method must be one of {', '.join(INSTANCE_METHODS)}, got {method!r}.")
        params: dict[str, Any] = {**WATERSHED_DEFAULTS, "min_size": WATERSHED_MIN_SIZE}
        if not is_null(watershed):
            if not isinstance(watershed, Mapping):
                raise InputError(f"watershed must be a mapping of {sorted(params)}, got {watershed!r}.")
            unknown = sorted(set(watershed) - set(params))
            if unknown:
                raise InputError(f"watershed: unknown key(s) {unknown}; expected some of {sorted(params)}.")
            params.update({k: v for k, v in watershed.items() if not is_null(v)})
        try:
            if method == "connected_components":
                return InstanceSeparator(method, min_size=0)
            return InstanceSeparator(method, h=float(params["h"]), min_distance=int(params["min_distance"]),
                                     sigma=float(params["sigma"]), min_size=int(params["min_size"]))
        except (TypeError, ValueError) as e:
            raise InputError(f"watershed: {e}") from None

    # --------------------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Load the weights, prepare the network and the stain reference (errors here stop the run)."""
        from monai_nasscam.allocator import tune_allocator
        from monai_nasscam.inference.optimize import default_workers, prepare_network

        auto = str(self.parallel).strip().lower() == "auto"
        workers = default_workers(self.device) if auto else max(1, int(self.parallel))
        if self.num_threads is not None:
            torch.set_num_threads(max(1, self.num_threads))
        elif workers > 1 and self.device.type == "cpu":
            torch.set_num_threads(1)  # the workers run in parallel, each single-threaded
        if self.tune_malloc and self.device.type == "cpu":
            tune_allocator(True)
        if self.ckpt_path is not None:
            load_weights(self.network, self.ckpt_path)
        run_dir = run_dir_of(self.ckpt_path) if self.ckpt_path is not None else None
        self.train_mpp, self.train_mpp_source = train_resolution(run_dir, self.train_mpp_setting)
        logger.info("training resolution %g µm/px (%s)", self.train_mpp, self.train_mpp_source)
        self._reference = load_stain_reference(resolve_stain_spec(self.stain, self.dataset_dir, run_dir))
        self.network.to(self.device).eval()
        roi = [int(r) for r in np.broadcast_to(np.asarray(self.inferer.roi_size), (2,))]
        self._forward = prepare_network(
            self.network, self.optimize, (int(self.inferer.sw_batch_size), 3, *roi), self.device, workers=workers
        )
        dtype = autocast_dtype(self.precision, self.device)
        if dtype is not None:  # in the module the (possibly parallel) workers call: autocast is per thread
            self._forward.module = AutocastNetwork(self._forward.module, dtype, self.device.type)
            self._forward.description += ", bf16 autocast"
        logger.info("stain reference: %s; network preparation: %s", self._reference.get("method"), self._forward.description)

    # ----------------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Process every image; returns the summary (also ``OUT/summary.json``).

        The output folder is claimed for the run (:func:`~monai_nasscam.runlock.claim_output_dir`): a second run
        into it at the same time is refused, and the first is not touched.

        Raises:
            FileNotFoundError: no input image.
            OutputDirInUse: another run is writing into ``output_dir`` (:mod:`monai_nasscam.runlock`).
            InferenceError: not a single image could be processed.
            RunInterrupted: Ctrl-C (a ``KeyboardInterrupt``); the message says what is kept and how to go on.
        """
        images = find_images(self.input_dir, self.recursive)
        with claim_output_dir(self.output_dir, "inference"):
            try:
                return self._run(images)
            except RunInterrupted:
                raise
            except KeyboardInterrupt:
                done = sum(r.get("status") == "ok" for r in self.rows)
                raise RunInterrupted(
                    f"interrupted after {done} of {len(images)} images; their outputs are complete and kept "
                    f"({os.path.join(self.output_dir, 'summary.json')} says complete: false). The same command "
                    "continues: finished images are skipped."
                ) from None

    def _run(self, images: list[str]) -> dict[str, Any]:
        self.rows = []
        self.skipped = []
        self.resolutions = {}
        self.setup()
        root = self.input_dir if os.path.isdir(self.input_dir) else os.path.dirname(self.input_dir)
        for i, path in enumerate(images, start=1):
            rel = os.path.relpath(path, root)
            start = time.perf_counter()
            done = None if self.overwrite else self._completed(path)
            if done is not None:
                logger.info("[%d/%d] %s: skipped (complete)", i, len(images), rel)
                self.rows.append(done["row"])
                if done.get("resolution"):
                    self.resolutions[done["row"].get("name", rel)] = done["resolution"]
                self.skipped.append(rel)
                continue
            logger.info("[%d/%d] %s", i, len(images), rel)
            try:
                row = self.process(path)
            except BaseException as e:
                self._remove_if_empty(os.path.dirname(self._base(path)))  # a failed image leaves no empty folder
                if not isinstance(e, (DataError, OSError, ValueError, RuntimeError, MemoryError)):
                    raise
                first = (str(e).strip().splitlines() or [""])[0][:500]
                message = str(e) if isinstance(e, DataError) else f"{path}: {type(e).__name__}: {first}"
                logger.error("could not process %s", message)
                logger.debug("details", exc_info=True)
                row = {"name": os.path.splitext(rel)[0], "status": "error", "message": message}
            row.update(image=rel, seconds=round(time.perf_counter() - start, 2))
            self.rows.append(row)
            if row.get("status") == "ok":
                self._mark_complete(path, row)
            self._write_tables(len(images), complete=False)
        self._forward.close()
        self._forward = None
        summary = self._write_tables(len(images))
        ok = summary["succeeded"]
        logger.info("%d of %d images processed (%d skipped as complete), %d nuclei; outputs in %s", ok, len(images),
                    len(self.skipped), summary["total_nuclei"], self.output_dir)
        if ok == 0:
            failed = "; ".join(f"{f['message']}" for f in summary["failed"][:5])
            raise InferenceError(f"no image could be processed ({len(images)} failed): {failed}")
        return summary

    def _settings(self) -> dict[str, Any]:
        roi = getattr(self.inferer, "roi_size", None)
        return {
            "input_dir": self.input_dir,
            "checkpoint": self.ckpt_path,
            "stain": self._reference,
            "threshold": self.threshold,
            "roi_size": [int(r) for r in np.broadcast_to(np.asarray(roi), (2,))] if roi is not None else None,
            "overlap": getattr(self.inferer, "overlap", None),
            "blend_mode": getattr(getattr(self.inferer, "mode", None), "value", getattr(self.inferer, "mode", None)),
            "sigma_scale": getattr(self.inferer, "sigma_scale", None),
            "sw_batch_size": getattr(self.inferer, "sw_batch_size", None),
            "precision": describe_precision(self.precision, self.device),
            "block_size": self.block_size,
            "max_whole_pixels": self.max_whole_pixels,
            "min_area": self.min_area,
            "instance_separation": self.separator.describe(),
            "classes": {str(i): n for i, n in enumerate(CLASS_NAMES, start=1)},
            "resolution": {
                "train_mpp": self.train_mpp,
                "train_mpp_source": self.train_mpp_source,
                "mpp_setting": self.mpp,
                "tolerance": self.mpp_tolerance,
                "unknown": sorted(n for n, r in self.resolutions.items() if r.get("source") == "unknown"),
                "rescaled": sorted(n for n, r in self.resolutions.items() if r.get("rescaled")),
                "images": self.resolutions,
            },
            "resume": {"overwrite": self.overwrite, "skipped_complete": list(self.skipped)},
        }

    # ------------------------------------------------------------------------------------------- resume
    def _fingerprint(self) -> dict[str, Any]:
        """What the outputs depend on besides the image: outputs made with other settings are not complete."""
        ckpt = None
        if self.ckpt_path is not None and os.path.isfile(self.ckpt_path):
            st = os.stat(self.ckpt_path)
            ckpt = [os.path.abspath(self.ckpt_path), st.st_size, st.st_mtime_ns]
        settings = self._settings()
        keep = ("threshold", "roi_size", "overlap", "blend_mode", "sigma_scale", "min_area", "instance_separation")
        return json.loads(json.dumps({
            "checkpoint": ckpt,
            **{k: settings.get(k) for k in keep},
            "polygon_tolerance": self.polygon_tolerance,
            "stain": (self._reference or {}).get("method"),
            "outputs": [type(w).__name__ for w in self.outputs],
            "mpp": self.mpp, "train_mpp": self.train_mpp, "mpp_tolerance": self.mpp_tolerance,
        }, default=str))

    def _marker(self, path: str) -> str:
        return self._base(path) + COMPLETE_SUFFIX

    def _completed(self, path: str) -> dict[str, Any] | None:
        """The completion record of ``path``'s outputs when they are complete and current: the marker exists, the
        input file and the settings are those it records, and every output file it lists is there with its size;
        else ``None``."""
        marker = self._marker(path)
        try:
            record = json.loads(Path(marker).read_text())
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("format") != COMPLETE_FORMAT:
            return None
        if record.get("source") != [st.st_size, st.st_mtime_ns]:
            return None
        if record.get("settings") != self._fingerprint():
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

    def _mark_complete(self, path: str, row: dict[str, Any]) -> None:
        """Write the completion marker, last and atomically: the image's output files (name and size), the input's
        size and modification time, the settings and its ``counts.csv`` row."""
        marker = self._marker(path)
        folder, stem = os.path.dirname(marker), os.path.basename(self._base(path))
        files = {
            f: os.path.getsize(os.path.join(folder, f)) for f in sorted(os.listdir(folder))
            if f.startswith(stem + "_") and not f.endswith(COMPLETE_SUFFIX) and os.path.isfile(os.path.join(folder, f))
        }
        st = os.stat(path)
        record = {"format": COMPLETE_FORMAT, "version": 1, "source": [st.st_size, st.st_mtime_ns],
                  "settings": self._fingerprint(), "files": files, "row": row,
                  "resolution": self.resolutions.get(row.get("name", ""))}
        atomic_write_text(marker, json.dumps(record, indent=1, default=str) + "\n")

    def _write_tables(self, images_found: int, complete: bool = True) -> dict[str, Any]:
        """``counts.csv``, ``counts_summary.csv`` and ``summary.json`` of the images so far (``complete``: all)."""
        write_counts_csv(os.path.join(self.output_dir, "counts.csv"), self.rows)
        return write_summary(
            os.path.join(self.output_dir, "counts_summary.csv"),
            os.path.join(self.output_dir, "summary.json"),
            self.rows,
            self._settings(),
            images_found=images_found,
            complete=complete,
        )

    def _remove_if_empty(self, folder: str) -> None:
        """Remove ``folder`` and its parents below the output folder while they are empty."""
        while os.path.commonpath([folder, self.output_dir]) == self.output_dir and folder != self.output_dir:
            try:
                os.rmdir(folder)  # only succeeds on an empty folder
            except OSError:
                return
            folder = os.path.dirname(folder)

    # ------------------------------------------------------------------------------------------ one image
    def _base(self, path: str) -> str:
        """``OUT/[sub/]NAME/NAME`` -- the folder layout of ``SaveImage`` (``data_root_dir`` = the input folder)."""
        from monai.data.utils import create_file_basename

        root = self.input_dir if os.path.isdir(self.input_dir) else os.path.dirname(self.input_dir)
        return create_file_basename("", path, self.output_dir, data_root_dir=root, separate_folder=True, makedirs=True)

    def process(self, path: str) -> dict[str, Any]:
        """Infer one image and write its files; returns its ``counts.csv`` row."""
        if self._forward is None:
            self.setup()
        base = self._base(path)
        name = os.path.relpath(base, self.output_dir)
        name = os.path.dirname(name)
        if os.path.exists(base + COMPLETE_SUFFIX):  # being redone: complete again only once every output is rewritten
            os.remove(base + COMPLETE_SUFFIX)
        reader = open_region_reader(path, tiled=self.tiled, max_whole_pixels=self.max_whole_pixels, swap_rb=self.tif_bgr)
        tmp_map = tmp_probs = None
        try:
            height, width = reader.shape
            plan = self._plan(path, name, reader.mpp)
            forward, inferer, separator = self._forward, self.inferer, self.separator
            if plan.rescaled:
                forward = RescaledNetwork(self._forward, plan.roi)
                inferer = rescaled_inferer(self.inferer, plan.window)
                separator = scaled_separator(self.separator, plan.scale)
            large = bool(reader.tiled) or height * width > self.max_whole_pixels
            step = max(1, math.ceil(max(height, width) / self.overlay_max_size))
            measure = any(w.streams_nuclei for w in self.outputs)  # nucleus probabilities need the class maps
            probs: np.ndarray | bool = measure
            if large:  # the class map goes to a memory map next to the outputs, never whole in RAM as float
                fd, tmp_map = tempfile.mkstemp(prefix=".classmap-", suffix=".u8", dir=os.path.dirname(base))
                os.close(fd)
                out = np.memmap(tmp_map, dtype=np.uint8, mode="w+", shape=(height, width))
                if measure:  # and the quantised probabilities, C bytes per pixel, to a memory map as well
                    fd, tmp_probs = tempfile.mkstemp(prefix=".probabilities-", suffix=".u8", dir=os.path.dirname(base))
                    os.close(fd)
                    probs = np.memmap(tmp_probs, dtype=np.uint8, mode="w+", shape=(len(CLASS_NAMES), height, width))
            else:
                out = None
            normalizer = SlideStainNormalizer(self._reference or {"method": "none"})
            t0 = time.perf_counter()
            class_map, info = predict_class_map(
                reader,
                forward,
                inferer,
                normalizer=normalizer,
                out=out,
                block_size=self.block_size if large else None,
                threshold=self.threshold,
                skip_empty=self.skip_empty,
                prefetch=self.num_workers if large else 0,
                overview_step=step if (large or step > 1) else None,
                progress=self.progress and large,
                zeroed=out is not None,
                probabilities=probs,
            )
            if info["stain_note"]:
                logger.warning("%s: %s", path, info["stain_note"])
            overview = info.get("overview")
            if overview is None:
                overview = reader.image  # type: ignore[union-attr]
            mpp = plan.image_mpp
        except BaseException:
            for tmp in (tmp_map, tmp_probs):  # the memory maps of a failed image
                if tmp is not None and os.path.exists(tmp):
                    os.remove(tmp)
            raise
        finally:
            reader.close()
        t1 = time.perf_counter()
        image = InferredImage(source=path, base=base, name=name, class_map=class_map, overview=overview,
                              overview_step=step, mpp=mpp, streamed=large)
        try:
            self._nuclei(image, info.get("probabilities"), separator)
            t2 = time.perf_counter()
            for writer in self.outputs:
                writer.write(image)
            counts = image.counts
            logger.info(
                "%s: %d x %d px (width x height), %d block(s) (%d without tissue), inference %.1f s, %d nuclei %.1f s, "
                "files %.1f s", name, width, height, info["blocks"], info["skipped_blocks"], t1 - t0, sum(counts.values()),
                t2 - t1, time.perf_counter() - t2,
            )
        except BaseException:
            for writer in self.outputs:
                writer.abort()
            raise
        finally:
            info.pop("probabilities", None)
            if tmp_map is not None:
                del class_map, out, image, probs
                os.remove(tmp_map)
            if tmp_probs is not None:
                os.remove(tmp_probs)
        row: dict[str, Any] = {"name": name, "status": "ok", "height": height, "width": width, "message": ""}
        for cid, cname in enumerate(CLASS_NAMES, start=1):
            row[cname] = counts[cid]
        row["total"] = int(sum(counts.values()))
        if info["skipped_blocks"]:
            row["message"] = f"{info['skipped_blocks']} of {info['blocks']} blocks without tissue skipped"
        for note in (info["stain_note"], plan.note):
            if note:
                row["message"] = (row["message"] + "; " if row["message"] else "") + note
        return row

    def _plan(self, path: str, name: str, file_mpp: float | None) -> ResolutionPlan:
        """The image's :class:`~monai_nasscam.inference.resolution.ResolutionPlan` (its file's resolution, else the
        ``mpp`` setting), logged -- a warning naming the file when the resolution is unknown -- and recorded for
        ``summary.json``."""
        if self.train_mpp is None:
            self.train_mpp, self.train_mpp_source = train_resolution(
                run_dir_of(self.ckpt_path) if self.ckpt_path is not None else None, self.train_mpp_setting)
        mpp, source = (file_mpp, "file") if file_mpp else (self.mpp, "setting")
        roi = [int(r) for r in np.broadcast_to(np.asarray(self.inferer.roi_size), (2,))]
        plan = plan_resolution(mpp, source, self.train_mpp, roi, self.mpp_tolerance)
        if plan.source == "unknown":
            logger.warning("%s: %s; pass --mpp (microns per pixel) if it is not %g", path, plan.note, self.train_mpp)
        elif plan.rescaled:
            logger.info("%s: %s", path, plan.note)
        self.resolutions[name] = plan.to_dict()
        return plan

    def _nuclei(
        self, image: InferredImage, probabilities: np.ndarray | None = None, separator: InstanceSeparator | None = None
    ) -> None:
        """Find the nuclei of ``image.class_map`` (split by the instance separation; those it drops and those under
        ``min_area`` are removed from it), measure them (``probabilities``: the quantised ``(C, H, W)`` class
        probabilities), count them into ``image.counts`` / ``image.areas`` and stream them to the writers that take
        them. ``separator``: the instance separation for this image (default: the predictor's)."""
        counts = {c: 0 for c in range(1, len(CLASS_NAMES) + 1)}
        areas = dict(counts)
        for writer in self.outputs:
            writer.begin(image)
        streams = [w for w in self.outputs if w.streams_nuclei]
        nuclei = iter_nuclei(image.class_map, outlines=bool(streams), tolerance=self.polygon_tolerance,
                             min_area=self.min_area, separator=separator or self.separator,
                             probabilities=probabilities if streams else None, mpp=image.mpp)
        for nucleus in nuclei:
            counts[nucleus.class_id] += 1
            areas[nucleus.class_id] += nucleus.area
            for writer in streams:
                writer.add_nucleus(nucleus)
        image.counts, image.areas = counts, areas


@input_check  # one "error: ..." line naming the setting or file (monai_nasscam.errors)
def check_inference_inputs(
    input_dir: str | os.PathLike,
    ckpt_path: str | os.PathLike,
    attention: str | None = None,
    genotype_path: str | os.PathLike | None = None,
    stain: Any = "auto",
    dataset_dir: str | os.PathLike | None = None,
    roi_size: Any = (256, 256),
    overlap: float = 0.5,
    batch_size: int = 8,
    threshold: float = 0.5,
    block_size: int = 2048,
    recursive: Any = True,
    sw_mode: Any = None,
    sigma_scale: Any = None,
    polygon_tolerance: Any = 0.0,
) -> bool:
    """Raise a clear error, naming the file or setting at fault, for anything that stops inference before the first
    image: no input image, no checkpoint, a missing or mismatched genotype, no stain reference, bad settings
    (``sw_mode`` / ``sigma_scale``: the window blending, checked when given; ``polygon_tolerance``: a finite number
    of pixels >= 0).
    (A checkpoint of another architecture is reported when the weights are loaded, naming the file.)"""
    from monai_nasscam.networks.run_folder import check_trained_weights, resolve_network_choice
    from monai_nasscam.inference.tiling import window_geometry

    find_images(input_dir, as_bool(recursive, "recursive"))
    check_trained_weights(ckpt_path)  # a search checkpoint or a text file: said first, before the network choice
    resolve_network_choice(attention, genotype_path, run_dir_of(ckpt_path))  # type: ignore[arg-type]
    load_stain_reference(resolve_stain_spec(stain, None if is_null(dataset_dir) else dataset_dir, run_dir_of(ckpt_path)))  # type: ignore[arg-type]

    window_geometry(roi_size, overlap)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size (windows per network call) must be >= 1, got {batch_size}.")
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}.")
    if int(block_size) < 256:
        raise ValueError(f"block_size must be >= 256, got {block_size}.")
    if sw_mode is not None and str(getattr(sw_mode, "value", sw_mode)) not in ("gaussian", "constant"):
        raise ValueError(f"sw_mode (blending of overlapping windows) must be gaussian or constant, got {sw_mode!r}.")
    if sigma_scale is not None and not all(float(v) > 0 for v in np.atleast_1d(np.asarray(sigma_scale, dtype=float))):
        raise ValueError(f"sw_sigma_scale (the Gaussian's sigma / roi_size) must be > 0, got {sigma_scale!r}.")
    if isinstance(polygon_tolerance, bool) or not isinstance(polygon_tolerance, (int, float)) or not (
        math.isfinite(polygon_tolerance) and polygon_tolerance >= 0
    ):
        raise ValueError(
            f"polygon_tolerance (outline simplification, pixels) must be a number >= 0 (0: exact outlines), got {polygon_tolerance!r}."
        )
    return True
