"""The predicting part of the inference workflow (:class:`~monai_nasscam.inference.predictor.NucleiPredictor`): the
trained network made ready (weights, CPU preparation, precision), the stain reference, the resolution each image is
segmented at, its class map and quantised class probabilities (block by block into memory maps for a slide), and
its nuclei, streamed to the output writers."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from monai_nasscam.data.classes import CLASS_NAMES
from monai_nasscam.data.slide import RegionReader
from monai_nasscam.errors import InputError
from monai_nasscam.inference.instances import INSTANCE_METHODS, WATERSHED_DEFAULTS, WATERSHED_MIN_SIZE, InstanceSeparator
from monai_nasscam.inference.nuclei import iter_nuclei
from monai_nasscam.inference.outputs import InferredImage, OutputWriter
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
from monai_nasscam.inferers import AutocastNetwork, autocast_dtype, check_precision
from monai_nasscam.overrides import as_bool, is_null

__all__ = ["ClassMapPredictor", "ImagePrediction", "instance_separator", "load_weights", "run_dir_of"]

logger = logging.getLogger("monai_nasscam.inference")


def run_dir_of(ckpt_path: str | os.PathLike) -> str:
    """The training run folder of a checkpoint: ``RUN`` for ``RUN/models/model.pt`` and
    ``RUN/checkpoints/train_checkpoint.pt``, else the file's folder."""
    path = Path(ckpt_path).absolute()
    return str(path.parent.parent if path.parent.name in ("models", "checkpoints") else path.parent)


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


def instance_separator(method: Any = "watershed", watershed: Mapping[str, Any] | None = None) -> InstanceSeparator:
    """The :class:`~monai_nasscam.inference.instances.InstanceSeparator` of the settings ``instance_method`` and
    ``watershed`` (a mapping with any of ``h``, ``min_distance``, ``sigma`` and ``min_size``; missing keys take
    :data:`~monai_nasscam.inference.instances.WATERSHED_DEFAULTS` and
    :data:`~monai_nasscam.inference.instances.WATERSHED_MIN_SIZE`).

    Raises:
        InputError: an unknown method, a ``watershed`` that is no mapping, an unknown key or a bad value, naming
            the setting.
    """
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


@dataclass
class ImagePrediction:
    """What :meth:`ClassMapPredictor.predict` made of one image.

    Attributes:
        class_map: ``(H, W)`` uint8, 0 background, 1..C the classes (a memory map for a slide).
        probabilities: ``(C, H, W)`` uint8 quantised class probabilities (``q / 255``; a memory map for a slide), or
            ``None`` when not asked for.
        overview: ``(h, w, 3)`` uint8 RGB image for display (the image, or a subsampled overview of a large one).
        overview_step: subsampling of ``overview`` (1: full resolution).
        plan: the resolution the image was segmented at.
        info: ``blocks``, ``skipped_blocks`` and ``stain_note`` of
            :func:`~monai_nasscam.inference.tiling.predict_class_map`.
        streamed: inferred block by block (a slide).
        files: the memory-map files behind ``class_map`` / ``probabilities``, removed by :meth:`release`.
    """

    class_map: np.ndarray
    probabilities: np.ndarray | None
    overview: np.ndarray
    overview_step: int
    plan: ResolutionPlan
    info: dict[str, Any]
    streamed: bool = False
    files: list[str] = field(default_factory=list)

    def release(self) -> None:
        """Remove the memory-map files (the arrays must not be used afterwards)."""
        for path in self.files:
            if os.path.exists(path):
                os.remove(path)
        self.files = []


class ClassMapPredictor:
    """The trained network applied to one image at a time: class map, class probabilities and nuclei. Its settings are
    those of :class:`~monai_nasscam.inference.predictor.NucleiPredictor` of the same names.

    Args:
        network: the network; its weights are loaded from ``ckpt_path`` in :meth:`setup`.
        inferer: a MONAI ``SlidingWindowInferer`` (roi_size, overlap, sw_batch_size, mode).
        ckpt_path: weights (``RUN/models/model.pt``); ``None`` keeps the network's weights.
        stain: the stain reference (``auto``, a manifest or stain JSON, a dict, ``macenko`` / ``reinhard`` / ``none``).
        dataset_dir: the prepared dataset of the training (for ``stain: auto``).
        device: torch device of the network.
        threshold: sigmoid threshold of each class channel, in (0, 1).
        block_size: core size of a block of a large image.
        skip_empty: blocks without a stained pixel are not inferred.
        num_workers: threads that read and normalise the next blocks while one is inferred.
        optimize: network preparation (:func:`monai_nasscam.inference.optimize.prepare_network`).
        progress: progress bars of large images.
        num_threads: torch intra-op threads (``None``: torch's default; 1 when ``parallel`` > 1).
        parallel: windows of a batch computed in this many threads (``auto``: one per CPU core on CPU, 1 on GPU).
        tune_malloc: on CPU, keep freed memory for reuse.
        precision: ``auto``, ``bf16`` or ``fp32`` autocast of the network's forward pass.
        mpp: microns per pixel of images whose file records none.
        train_mpp: the training resolution (``None``: ``RUN/network.json``'s, else the default).
        mpp_tolerance: relative resolution difference under which an image is not rescaled, in [0, 1).
        separator: the instance separation of the nuclei (:func:`instance_separator`).
        min_area: nuclei smaller than this many pixels are removed (from the class map too).
        polygon_tolerance: simplification of the nucleus outlines in pixels (0: exact).
        overlay_max_size: longest side of the overview image (larger images are subsampled).

    Raises:
        InputError: a threshold, ``mpp``, ``train_mpp``, ``mpp_tolerance`` or ``precision`` out of range, or a
            boolean setting that is no boolean, naming it.
    """

    def __init__(
        self,
        network: nn.Module,
        inferer: Any,
        ckpt_path: str | os.PathLike | None = None,
        stain: Any = "auto",
        dataset_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        threshold: float = 0.5,
        block_size: int = 2048,
        skip_empty: Any = True,
        num_workers: int = 0,
        optimize: str = "auto",
        progress: Any = True,
        num_threads: int | None = None,
        parallel: Any = "auto",
        tune_malloc: Any = True,
        precision: Any = "auto",
        mpp: Any = None,
        train_mpp: Any = None,
        mpp_tolerance: float = MPP_TOLERANCE,
        separator: InstanceSeparator | None = None,
        min_area: int = 0,
        polygon_tolerance: float = 0.0,
        overlay_max_size: int = 4096,
    ) -> None:
        self.network = network
        self.inferer = inferer
        self.ckpt_path = None if is_null(ckpt_path) else os.fspath(ckpt_path)  # type: ignore[arg-type]
        self.stain = stain
        self.dataset_dir = None if is_null(dataset_dir) else os.fspath(dataset_dir)  # type: ignore[arg-type]
        self.device = torch.device(device)
        self.threshold = float(threshold)
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold must lie in (0, 1), got {threshold}.")
        self.block_size = int(block_size)
        self.skip_empty = as_bool(skip_empty, "skip_empty")
        self.num_workers = max(0, int(num_workers))
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
        self.precision = check_precision(precision)
        self.separator = separator if separator is not None else instance_separator()
        self.min_area = int(min_area)
        self.polygon_tolerance = float(polygon_tolerance)
        self.overlay_max_size = int(overlay_max_size)
        self.forward: Any = None  # the prepared network (:meth:`setup`)
        self.reference: dict[str, Any] | None = None  # the stain reference (:meth:`setup`)
        self.train_mpp: float | None = None
        self.train_mpp_source = ""
        #: ``ResolutionPlan.to_dict()`` of every image planned, by name
        self.resolutions: dict[str, dict[str, Any]] = {}

    @property
    def roi(self) -> list[int]:
        """The inferer's window, 2 integers."""
        return [int(r) for r in np.broadcast_to(np.asarray(self.inferer.roi_size), (2,))]

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
        self.reference = load_stain_reference(resolve_stain_spec(self.stain, self.dataset_dir, run_dir))
        self.network.to(self.device).eval()
        self.forward = prepare_network(
            self.network, self.optimize, (int(self.inferer.sw_batch_size), 3, *self.roi), self.device, workers=workers
        )
        dtype = autocast_dtype(self.precision, self.device)
        if dtype is not None:  # in the module the (possibly parallel) workers call: autocast is per thread
            self.forward.module = AutocastNetwork(self.forward.module, dtype, self.device.type)
            self.forward.description += ", bf16 autocast"
        logger.info("stain reference: %s; network preparation: %s", self.reference.get("method"), self.forward.description)

    def close(self) -> None:
        """Stop the prepared network's worker threads (:meth:`setup` prepares it again)."""
        if self.forward is not None:
            self.forward.close()
            self.forward = None

    def plan(self, path: str, name: str, file_mpp: float | None) -> ResolutionPlan:
        """The image's :class:`~monai_nasscam.inference.resolution.ResolutionPlan` (its file's resolution, else the
        ``mpp`` setting), logged -- a warning naming the file when the resolution is unknown -- and recorded in
        :attr:`resolutions`."""
        if self.train_mpp is None:
            self.train_mpp, self.train_mpp_source = train_resolution(
                run_dir_of(self.ckpt_path) if self.ckpt_path is not None else None, self.train_mpp_setting)
        mpp, source = (file_mpp, "file") if file_mpp else (self.mpp, "setting")
        plan = plan_resolution(mpp, source, self.train_mpp, self.roi, self.mpp_tolerance)
        if plan.source == "unknown":
            logger.warning("%s: %s; pass --mpp (microns per pixel) if it is not %g", path, plan.note, self.train_mpp)
        elif plan.rescaled:
            logger.info("%s: %s", path, plan.note)
        self.resolutions[name] = plan.to_dict()
        return plan

    def predict(
        self, reader: RegionReader, path: str, name: str, folder: str, large: bool, probabilities: bool
    ) -> ImagePrediction:
        """The class map of the image behind ``reader`` (and its quantised class probabilities when
        ``probabilities``), at the resolution of its :meth:`plan`. A ``large`` image is inferred block by block into
        memory maps in ``folder`` (never whole in RAM as float), removed again if anything fails."""
        if self.forward is None:
            self.setup()
        height, width = reader.shape
        plan = self.plan(path, name, reader.mpp)
        forward, inferer = self.forward, self.inferer
        if plan.rescaled:
            forward = RescaledNetwork(self.forward, plan.roi)
            inferer = rescaled_inferer(self.inferer, plan.window)
        step = max(1, math.ceil(max(height, width) / self.overlay_max_size))
        files: list[str] = []
        probs: np.ndarray | bool = probabilities
        out = None
        try:
            if large:
                out = np.memmap(_temporary(folder, ".classmap-", files), dtype=np.uint8, mode="w+", shape=(height, width))
                if probabilities:  # C bytes per pixel, to a memory map as well
                    probs = np.memmap(_temporary(folder, ".probabilities-", files), dtype=np.uint8, mode="w+",
                                      shape=(len(CLASS_NAMES), height, width))
            class_map, info = predict_class_map(
                reader,
                forward,
                inferer,
                normalizer=SlideStainNormalizer(self.reference or {"method": "none"}),
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
        except BaseException:
            for tmp in files:  # the memory maps of a failed image
                if os.path.exists(tmp):
                    os.remove(tmp)
            raise
        if info["stain_note"]:
            logger.warning("%s: %s", path, info["stain_note"])
        overview = info.pop("overview", None)
        return ImagePrediction(class_map, info.pop("probabilities", None),
                               reader.image if overview is None else overview,  # type: ignore[union-attr]
                               step, plan, info, streamed=large, files=files)

    def nuclei(self, image: InferredImage, prediction: ImagePrediction, writers: Sequence[OutputWriter]) -> None:
        """Find the nuclei of ``image.class_map`` (split by the instance separation, scaled to the image's
        resolution plan; those it drops and those under ``min_area`` are removed from the class map), measure them,
        count them into ``image.counts`` / ``image.areas`` and stream them to the writers that take them (every
        writer's ``begin`` is called first)."""
        counts = {c: 0 for c in range(1, len(CLASS_NAMES) + 1)}
        areas = dict(counts)
        for writer in writers:
            writer.begin(image)
        streams = [w for w in writers if w.streams_nuclei]
        separator = scaled_separator(self.separator, prediction.plan.scale) if prediction.plan.rescaled else self.separator
        nuclei = iter_nuclei(image.class_map, outlines=bool(streams), tolerance=self.polygon_tolerance,
                             min_area=self.min_area, separator=separator,
                             probabilities=prediction.probabilities if streams else None, mpp=image.mpp)
        for nucleus in nuclei:
            counts[nucleus.class_id] += 1
            areas[nucleus.class_id] += nucleus.area
            for writer in streams:
                writer.add_nucleus(nucleus)
        image.counts, image.areas = counts, areas


def _temporary(folder: str, prefix: str, files: list[str]) -> str:
    """A new empty file in ``folder`` (a memory map's backing file), appended to ``files``."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".u8", dir=folder)
    os.close(fd)
    files.append(path)
    return path
