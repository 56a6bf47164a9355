"""The inference workflow of ``bundle/configs/inference.yaml``: a folder of images -> class maps, overlays, nucleus
counts and QuPath polygons. :class:`NucleiPredictor` runs it with three parts: reading
(:mod:`~monai_nasscam.inference.reading`: the images and their readers), predicting
(:mod:`~monai_nasscam.inference.predicting`: the network, class maps and nuclei) and writing
(:mod:`~monai_nasscam.inference.writing`: the output folder, completion markers and tables).

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

An output folder inside the input folder is not searched for images (a second run does not take the first one's
class maps and overlays for images).

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
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from monai_nasscam.data.classes import CLASS_NAMES
from monai_nasscam.errors import DataError, InferenceError, RunInterrupted, input_check
from monai_nasscam.inference.outputs import InferredImage, OutputWriter
from monai_nasscam.inference.predicting import ClassMapPredictor, instance_separator, run_dir_of
from monai_nasscam.inference.reading import ImageSource, find_images
from monai_nasscam.inference.resolution import MPP_TOLERANCE
from monai_nasscam.inference.stain import load_stain_reference, resolve_stain_spec
from monai_nasscam.inference.writing import OutputFolder
from monai_nasscam.inferers import describe_precision
from monai_nasscam.overrides import as_bool, is_null
from monai_nasscam.runlock import claim_output_dir

__all__ = ["NucleiPredictor", "check_inference_inputs"]

logger = logging.getLogger("monai_nasscam.inference")


class NucleiPredictor:
    """Run a trained network over a folder of H&E images (see the module docstring for the outputs).

    Args:
        network: the network (``network_def`` of the bundle), weights loaded from ``ckpt_path`` here.
        inferer: a MONAI ``SlidingWindowInferer`` (roi_size, overlap, sw_batch_size, mode).
        input_dir: a folder of images (searched recursively) or one image file.
        output_dir: where the outputs go.
        ckpt_path: weights (``RUN/models/model.pt``); ``None`` keeps the network's weights (tests).
        outputs: the per-image files, a sequence of :class:`~monai_nasscam.inference.outputs.OutputWriter` called in
            this order (``None`` entries, e.g. disabled ones of a bundle, are skipped); ``None``: the nuclei GeoJSON
            and CSV, the class map PNG and the overlay (``inference.yaml`` lists its own, the NIfTI among them).
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
        polygon_tolerance: Douglas-Peucker simplification of the polygons in pixels (0: exact contours).
        min_area: nuclei smaller than this many pixels are removed (from the class map too).
        overlay_max_size: longest side of the overview image the writers get (the overlay PNG); larger images are
            shown subsampled.
        optimize: network preparation, see :func:`monai_nasscam.inference.optimize.prepare_network`.
        progress: progress bars.
        num_threads: torch intra-op threads (``None``: torch's default, one per core; 1 when ``parallel`` > 1).
        parallel: windows of a batch computed in this many threads at once (``auto``: one per CPU core on CPU,
            1 on GPU); see :class:`~monai_nasscam.inference.optimize.PreparedNetwork`.
        tune_malloc: on CPU, keep freed memory for reuse (:func:`~monai_nasscam.allocator.tune_allocator`).
        instance_method: how the class map becomes nuclei: ``watershed`` (default: each connected component of a
            class split by the marker-controlled watershed that evaluation uses) or ``connected_components`` (one
            nucleus per component, the paper's protocol).
        watershed: the watershed's parameters in pixels, a mapping with any of ``h``, ``min_distance``, ``sigma`` and
            ``min_size`` (nuclei under ``min_size`` pixels are dropped, with the watershed only); missing keys take
            :data:`~monai_nasscam.inference.instances.WATERSHED_DEFAULTS` and
            :data:`~monai_nasscam.inference.instances.WATERSHED_MIN_SIZE`.
        mpp: microns per pixel of the images whose file records none (``None``: such images' resolution is unknown,
            which is said once per image); a file's own resolution always wins.
        train_mpp: the resolution the network was trained at (``None``: the one ``RUN/network.json`` records, else
            :data:`~monai_nasscam.inference.resolution.DEFAULT_TRAIN_MPP`).
        mpp_tolerance: relative difference under which an image's resolution counts as the training one; images
            further off are rescaled to it (see :mod:`monai_nasscam.inference.resolution`).
        overwrite: redo images whose outputs are complete (``False``: they are skipped, see
            :data:`~monai_nasscam.inference.writing.COMPLETE_SUFFIX`).
        precision: ``auto`` (bfloat16 autocast on a CPU with native bfloat16, else float32), ``bf16`` or ``fp32``
            (see :mod:`monai_nasscam.inferers`). Only the network's forward pass: its outputs are cast back to
            float32 before the windows are blended, so the probabilities are float32 (then quantised as always).

    Raises:
        InputError: a setting out of range or of the wrong kind, naming it (before anything is read or written).

    Attributes:
        reading: the :class:`~monai_nasscam.inference.reading.ImageSource` of ``input_dir``.
        prediction: the :class:`~monai_nasscam.inference.predicting.ClassMapPredictor` (network, stain reference,
            resolution plans, class maps and nuclei).
        writing: the :class:`~monai_nasscam.inference.writing.OutputFolder` of ``output_dir`` and ``outputs``.
    """

    def __init__(
        self,
        network: nn.Module,
        inferer: Any,
        input_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        ckpt_path: str | os.PathLike | None = None,
        outputs: Sequence[OutputWriter | None] | None = None,
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
        self.reading = ImageSource(input_dir, recursive, tiled, max_whole_pixels, tif_bgr, output_dir=output_dir)
        self.writing = OutputFolder(output_dir, self.reading.root, outputs, as_bool(overwrite, "overwrite"))
        self.prediction = ClassMapPredictor(
            network, inferer, ckpt_path, stain=stain, dataset_dir=dataset_dir, device=device, threshold=threshold,
            block_size=block_size, skip_empty=skip_empty, num_workers=num_workers, optimize=optimize,
            progress=progress, num_threads=num_threads, parallel=parallel, tune_malloc=tune_malloc,
            precision=precision, mpp=mpp, train_mpp=train_mpp, mpp_tolerance=mpp_tolerance,
            separator=instance_separator(instance_method, watershed), min_area=min_area,
            polygon_tolerance=polygon_tolerance, overlay_max_size=overlay_max_size,
        )
        self.skipped: list[str] = []
        self.rows: list[dict[str, Any]] = []

    def setup(self) -> None:
        """Load the weights, prepare the network and the stain reference (errors here stop the run)."""
        self.prediction.setup()

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
        images = self.reading.find()
        with claim_output_dir(self.writing.output_dir, "inference"):
            try:
                return self._run(images)
            except RunInterrupted:
                raise
            except KeyboardInterrupt:
                done = sum(r.get("status") == "ok" for r in self.rows)
                raise RunInterrupted(
                    f"interrupted after {done} of {len(images)} images; their outputs are complete and kept "
                    f"({os.path.join(self.writing.output_dir, 'summary.json')} says complete: false). The same command "
                    "continues: finished images are skipped."
                ) from None

    def _run(self, images: list[str]) -> dict[str, Any]:
        self.rows = []
        self.skipped = []
        self.prediction.resolutions = {}
        self.setup()
        for i, path in enumerate(images, start=1):
            rel = self.reading.relative(path)
            start = time.perf_counter()
            done = self.writing.completed(path, self._fingerprint())
            if done is not None:
                logger.info("[%d/%d] %s: skipped (complete)", i, len(images), rel)
                self.rows.append(done["row"])
                if done.get("resolution"):
                    self.prediction.resolutions[done["row"].get("name", rel)] = done["resolution"]
                self.skipped.append(rel)
                continue
            logger.info("[%d/%d] %s", i, len(images), rel)
            try:
                row = self.process(path)
            except BaseException as e:
                self.writing.remove_if_empty(os.path.dirname(self.writing.base(path)))  # a failed image leaves no empty folder
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
                self.writing.mark_complete(path, row, self._fingerprint(), self.prediction.resolutions.get(row["name"]))
            self.writing.write_tables(self.rows, self._settings(), len(images), complete=False)
        self.prediction.close()
        summary = self.writing.write_tables(self.rows, self._settings(), len(images))
        ok = summary["succeeded"]
        logger.info("%d of %d images processed (%d skipped as complete), %d nuclei; outputs in %s", ok, len(images),
                    len(self.skipped), summary["total_nuclei"], self.writing.output_dir)
        if ok == 0:
            failed = "; ".join(f"{f['message']}" for f in summary["failed"][:5])
            raise InferenceError(f"no image could be processed ({len(images)} failed): {failed}")
        return summary

    # ------------------------------------------------------------------------------------------ one image
    def process(self, path: str) -> dict[str, Any]:
        """Infer one image and write its files; returns its ``counts.csv`` row."""
        base = self.writing.base(path)
        name = self.writing.name(path)
        self.writing.unmark(path)  # being redone: complete again only once every output is rewritten
        reader = self.reading.open(path)
        try:
            height, width = reader.shape
            t0 = time.perf_counter()
            prediction = self.prediction.predict(reader, path, name, os.path.dirname(base), self.reading.is_large(reader),
                                                 probabilities=self.writing.streams_nuclei)
        finally:
            reader.close()
        t1 = time.perf_counter()
        image = InferredImage(source=path, base=base, name=name, class_map=prediction.class_map,
                              overview=prediction.overview, overview_step=prediction.overview_step,
                              mpp=prediction.plan.image_mpp, streamed=prediction.streamed)
        info = prediction.info
        try:
            self.prediction.nuclei(image, prediction, self.writing.writers)
            t2 = time.perf_counter()
            self.writing.write(image)
        except BaseException:
            self.writing.abort()
            raise
        finally:
            prediction.release()
        counts = image.counts
        logger.info(
            "%s: %d x %d px (width x height), %d block(s) (%d without tissue), %d nuclei; time: network %.1f s, "
            "nuclei %.1f s, files %.1f s", name, width, height, info["blocks"], info["skipped_blocks"],
            sum(counts.values()), t1 - t0, t2 - t1, time.perf_counter() - t2,
        )
        row: dict[str, Any] = {"name": name, "status": "ok", "height": height, "width": width, "message": ""}
        for cid, cname in enumerate(CLASS_NAMES, start=1):
            row[cname] = counts[cid]
        row["total"] = int(sum(counts.values()))
        if info["skipped_blocks"]:
            row["message"] = f"{info['skipped_blocks']} of {info['blocks']} blocks without tissue skipped"
        for note in (info["stain_note"], prediction.plan.note):
            if note:
                row["message"] = (row["message"] + "; " if row["message"] else "") + note
        return row

    # -------------------------------------------------------------------------------------------- records
    def _settings(self) -> dict[str, Any]:
        """The run's settings, as ``summary.json`` records them."""
        p = self.prediction
        inferer = p.inferer
        resolutions = p.resolutions
        return {
            "input_dir": self.reading.input_dir,
            "checkpoint": p.ckpt_path,
            "stain": p.reference,
            "threshold": p.threshold,
            "roi_size": p.roi if getattr(inferer, "roi_size", None) is not None else None,
            "overlap": getattr(inferer, "overlap", None),
            "blend_mode": getattr(getattr(inferer, "mode", None), "value", getattr(inferer, "mode", None)),
            "sigma_scale": getattr(inferer, "sigma_scale", None),
            "sw_batch_size": getattr(inferer, "sw_batch_size", None),
            "precision": describe_precision(p.precision, p.device),
            "block_size": p.block_size,
            "max_whole_pixels": self.reading.max_whole_pixels,
            "min_area": p.min_area,
            "instance_separation": p.separator.describe(),
            "classes": {str(i): n for i, n in enumerate(CLASS_NAMES, start=1)},
            "resolution": {
                "train_mpp": p.train_mpp,
                "train_mpp_source": p.train_mpp_source,
                "mpp_setting": p.mpp,
                "tolerance": p.mpp_tolerance,
                "unknown": sorted(n for n, r in resolutions.items() if r.get("source") == "unknown"),
                "rescaled": sorted(n for n, r in resolutions.items() if r.get("rescaled")),
                "images": resolutions,
            },
            "resume": {"overwrite": self.writing.overwrite, "skipped_complete": list(self.skipped)},
        }

    def _fingerprint(self) -> dict[str, Any]:
        """What the outputs depend on besides the image: outputs made with other settings are not complete."""
        p = self.prediction
        ckpt = None
        if p.ckpt_path is not None and os.path.isfile(p.ckpt_path):
            st = os.stat(p.ckpt_path)
            ckpt = [os.path.abspath(p.ckpt_path), st.st_size, st.st_mtime_ns]
        settings = self._settings()
        keep = ("threshold", "roi_size", "overlap", "blend_mode", "sigma_scale", "min_area", "instance_separation")
        return json.loads(json.dumps({
            "checkpoint": ckpt,
            **{k: settings.get(k) for k in keep},
            "polygon_tolerance": p.polygon_tolerance,
            "stain": (p.reference or {}).get("method"),
            "outputs": [type(w).__name__ for w in self.writing.writers],
            "mpp": p.mpp, "train_mpp": p.train_mpp, "mpp_tolerance": p.mpp_tolerance,
        }, default=str))


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
    output_dir: str | os.PathLike | None = None,
) -> bool:
    """Raise a clear error, naming the file or setting at fault, for anything that stops inference before the first
    image: no input image, no checkpoint, a missing or mismatched genotype, no stain reference, bad settings
    (``sw_mode`` / ``sigma_scale``: the window blending, checked when given; ``polygon_tolerance``: a finite number
    of pixels >= 0). ``output_dir``, where given and inside ``input_dir``, is not searched for images.
    (A checkpoint of another architecture is reported when the weights are loaded, naming the file.)"""
    from monai_nasscam.inference.tiling import window_geometry
    from monai_nasscam.networks.run_folder import check_trained_weights, resolve_network_choice

    find_images(input_dir, as_bool(recursive, "recursive"), output_dir)
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
