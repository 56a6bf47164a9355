"""Whole-image and block-wise sliding-window inference into a uint8 class map.

The image is padded (white, at the end of each axis, as the training crops) so that MONAI's
``SlidingWindowInferer`` places its windows exactly on a global grid of step ``stride = int(roi * (1 - overlap))``
with no clamped last window. A small image is inferred in one piece. A large one (read through a
:class:`~monai_nasscam.data.tiff_reader.TiffRegionReader`) is cut into blocks: each block's core is a multiple of
``stride`` and the block is read with the margin that holds every window overlapping the core, so every core pixel
is blended from exactly the windows -- in the same order -- that the one-piece inference would use. The class maps
of the two paths are therefore the same, while a block needs a few hundred MB whatever the slide size.

Logits of overlapping windows are blended by the inferer's ``mode``: ``gaussian`` (inference's default: each window's
logits weighted by a Gaussian centred on it, ``sigma_scale`` of the window side, so a window's border -- where its
context is cut -- counts least and no seam shows where windows meet) or ``constant`` (a plain average, MONAI's
default and the evaluation's protocol). Every core pixel of a block gets the same windows with the same weights as in
the one-piece inference, so both blend modes give the same class map block by block. Then ``sigmoid > threshold``
per channel; where several channels pass, the most probable wins. Channel ``c`` is class ``c + 1``; 0 is background. Pixels the file
marks fully transparent (alpha 0: nothing was scanned there; the readers give them as white) are background
whatever the network predicts.

Background never reaches the network (``skip_empty``, the default): a window is run only when it, or the band one
window stride wide around it, holds a stained pixel (optical density above ``tissue_beta`` in all three channels, the
stain normalisers' test); the pixels of a window that is not run are background (class 0, probabilities 0), and a
block none of whose windows runs is neither normalised nor inferred. Every pixel within one stride of a stained pixel
(Chebyshev distance; 128 px, 32 µm at the defaults) lies only in windows that run, so its classes and probabilities
are exactly those of running every window. The decision for a window depends on the image alone (a block reads the
band around its region for it), so the block-wise and one-piece class maps stay the same.

Besides the class map, :func:`predict_class_map` can keep every class's probability (the ``sigmoid`` of the blended
logits) for the nucleus measurements, quantised to ``uint8``: ``round(255 * p)``, read back as ``q / 255``, so a
stored probability is within ``0.5 / 255 < 0.002`` of the computed one. The ``(C, H, W)`` array (or memory map, like
the class map for a slide) costs ``C`` bytes per pixel instead of ``4 C`` as ``float32``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.utils import ensure_tuple_rep

from monai_nasscam.overrides import check_roi_size

__all__ = [
    "BlockPlan",
    "plan_blocks",
    "window_geometry",
    "predict_class_map",
    "logits_to_class_map",
    "quantise_probabilities",
    "release_rows",
    "tissue_mask",
    "tissue_windows",
    "PROBABILITY_SCALE",
]

#: a stored probability ``q`` (uint8) stands for ``q / PROBABILITY_SCALE`` (within ``0.5 / 255`` of the sigmoid)
PROBABILITY_SCALE = 255.0

logger = logging.getLogger(__name__)


def window_geometry(roi_size: Any, overlap: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(roi, stride)`` per axis of a ``SlidingWindowInferer``'s ``roi_size`` and ``overlap`` (MONAI's stride
    ``int(roi * (1 - overlap))``).

    Raises:
        ValueError: a window side that is not a multiple of 16, or an overlap outside [0, 1).
    """
    roi = tuple(check_roi_size(roi_size))
    overlap = ensure_tuple_rep(overlap, 2)
    for o in overlap:
        if not 0.0 <= float(o) < 1.0:
            raise ValueError(f"sw_overlap must lie in [0, 1), got {o}.")
    stride = tuple(max(1, int(r * (1 - float(o)))) for r, o in zip(roi, overlap))
    return roi, stride  # type: ignore[return-value]


def _padded(size: int, roi: int, stride: int) -> int:
    """Smallest extent >= ``size`` and ``roi`` whose windows lie on the ``stride`` grid without clamping."""
    return roi + int(math.ceil(max(size - roi, 0) / stride)) * stride


@dataclass
class BlockPlan:
    """One block: the core it predicts ``[y0:y1, x0:x1]`` and the region it reads ``[ry0:ry1, rx0:rx1]``
    (which may extend into the white padding beyond the image)."""

    y0: int
    y1: int
    x0: int
    x1: int
    ry0: int
    ry1: int
    rx0: int
    rx1: int
    index: int = 0
    extra: dict = field(default_factory=dict)


def plan_blocks(shape: Sequence[int], roi: Sequence[int], stride: Sequence[int], block_size: int | None) -> list[BlockPlan]:
    """Blocks covering an image of ``shape``; ``block_size=None`` gives one block (the whole image).

    Cores are multiples of ``stride`` (at least one); each block reads from the first window overlapping its core
    to the end of the last one.
    """
    padded = [_padded(int(s), int(r), int(t)) for s, r, t in zip(shape, roi, stride)]
    spans = []
    for axis in range(2):
        size, r, t, p = int(shape[axis]), int(roi[axis]), int(stride[axis]), padded[axis]
        core = p if block_size is None else max(t, (int(block_size) // t) * t)
        axis_spans = []
        for c0 in range(0, size, core):
            c1 = min(c0 + core, size)
            first = max(0, (math.floor((c0 - r) / t) + 1) * t)
            last = min(p - r, ((c1 - 1) // t) * t)
            axis_spans.append((c0, c1, first, last + r))
        spans.append(axis_spans)
    blocks = []
    for ys in spans[0]:
        for xs in spans[1]:
            blocks.append(BlockPlan(ys[0], ys[1], xs[0], xs[1], ys[2], ys[3], xs[2], xs[3], index=len(blocks)))
    return blocks


def tissue_mask(pixels: np.ndarray, tli: float = 240.0, beta: float = 0.15) -> np.ndarray:
    """Stained pixels: optical density above ``beta`` in all three channels (as the stain normalisers' test)."""
    limit = tli * math.exp(-beta) - 1.0  # OD > beta  <=>  value + 1 < tli * exp(-beta)
    return np.all(pixels < limit, axis=-1)


def tissue_windows(
    tissue: np.ndarray, roi: Sequence[int], stride: Sequence[int], band: Sequence[int] | None = None
) -> np.ndarray:
    """Which windows of a region hold a stained pixel in themselves or in the band around them.

    Args:
        tissue: ``(band_y + H + band_y, band_x + W + band_x)`` bool, the stained pixels of a region of ``(H, W)``
            pixels whose windows lie on the ``stride`` grid from its top-left pixel (``(H - roi) % stride == 0``),
            with the band around it (pixels outside the image are False).
        roi: window ``(h, w)``.
        stride: window step ``(y, x)``.
        band: width of the band ``(y, x)`` in pixels; default ``stride``.

    Returns:
        ``(ny, nx)`` bool: window ``(i, j)``, at ``(i * stride_y, j * stride_x)`` of the region, is to be run.

    Raises:
        ValueError: a region whose windows do not fit the grid.
    """
    band = tuple(stride) if band is None else tuple(band)
    size = [int(tissue.shape[a]) - 2 * int(band[a]) for a in range(2)]
    if any(size[a] < roi[a] or (size[a] - roi[a]) % stride[a] for a in range(2)):
        raise ValueError(f"a region of {size} px has no whole grid of {tuple(roi)} windows at stride {tuple(stride)}.")
    # stained pixels per cell of the grid all window and band edges fall on (their common divisor), then a summed-area
    # table over the cells: each window's count in O(1)
    cell = [math.gcd(int(roi[a]), int(stride[a]), int(band[a])) for a in range(2)]
    shape = [tissue.shape[a] // cell[a] for a in range(2)]
    cells = tissue[: shape[0] * cell[0], : shape[1] * cell[1]].reshape(shape[0], cell[0], shape[1], cell[1]).any(axis=(1, 3))
    table = np.zeros((shape[0] + 1, shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = cells.cumsum(0).cumsum(1)
    edges = []
    for a in range(2):
        start = np.arange((size[a] - roi[a]) // stride[a] + 1) * stride[a]  # window start in the region
        edges.append((start // cell[a], (start + roi[a] + 2 * band[a]) // cell[a]))  # its band, in cells
    (y0, y1), (x0, x1) = edges
    count = table[y1][:, x1] - table[y0][:, x1] - table[y1][:, x0] + table[y0][:, x0]
    return count > 0


class _TissueWindows:
    """The network for a sliding window that passes the window coordinates (MONAI ``with_coord``): the windows that
    ``run`` marks are computed by ``network`` (in their order, as a smaller batch), the others get ``-inf`` logits,
    which the blending carries to every pixel they cover (background, probability 0). ``seen`` keeps the shape and
    dtype of the network's output per window, shared by the blocks of an image."""

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor], run: np.ndarray, stride: Sequence[int],
                 seen: dict[str, Any]) -> None:
        self.network, self.run, self.stride, self.seen = network, run, stride, seen

    def _runs(self, coords: Sequence[Sequence[slice]]) -> list[bool]:
        keep = []
        for c in coords:
            (i, di), (j, dj) = divmod(c[-2].start, self.stride[0]), divmod(c[-1].start, self.stride[1])
            on_grid = not (di or dj) and i < self.run.shape[0] and j < self.run.shape[1]
            keep.append(bool(self.run[i, j]) if on_grid else True)  # a window off the grid runs
        return keep

    def _remember(self, out: torch.Tensor) -> torch.Tensor:
        self.seen.setdefault("window", (tuple(out.shape[1:]), out.dtype, out.device))
        return out

    def __call__(self, windows: torch.Tensor, coords: Sequence[Sequence[slice]]) -> torch.Tensor:
        keep = self._runs(coords)
        if all(keep):
            return self._remember(self.network(windows))
        index = [k for k, run in enumerate(keep) if run]
        computed = self._remember(self.network(windows[index])) if index else None
        if "window" not in self.seen:  # nothing computed yet: one window tells the output's shape
            self._remember(self.network(windows[:1]))
        shape, dtype, device = self.seen["window"]
        out = torch.full((windows.shape[0], *shape), -math.inf, dtype=dtype, device=device)
        if computed is not None:
            out[index] = computed
        return out


def logits_to_class_map(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``(C, ...)`` logits -> uint8 class map: ``argmax + 1`` where the largest ``sigmoid`` exceeds ``threshold``."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}.")
    cut = math.log(threshold / (1.0 - threshold))  # sigmoid(x) > t  <=>  x > logit(t)
    best, arg = logits.max(dim=0)
    return torch.where(best > cut, arg + 1, torch.zeros_like(arg)).to(torch.uint8)


def quantise_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``(C, ...)`` logits -> uint8 ``round(255 * sigmoid(logits))`` (read back as ``q / 255``, error <= 0.5 / 255)."""
    return torch.sigmoid(logits.float()).mul_(PROBABILITY_SCALE).round_().to(torch.uint8)


def release_rows(array: np.ndarray, row0: int, row1: int) -> None:
    """Let the pages of rows ``[row0, row1)`` of a memory map (``(H, W)`` or ``(C, H, W)``, C-ordered) leave this
    process's resident memory (``madvise(MADV_DONTNEED)``): a shared file mapping keeps the data in the page cache,
    which writes it back, and a later read faults it in again -- so the content never changes, while the process's
    resident size stays that of the rows in use instead of growing to the whole slide's maps. No-op for an ordinary
    array or where ``madvise`` is not available.

    Args:
        array: an ``np.memmap`` (else nothing happens).
        row0, row1: the rows, end exclusive.
    """
    import mmap as _mmap

    handle = getattr(array, "_mmap", None)
    advice = getattr(_mmap, "MADV_DONTNEED", None)
    if handle is None or advice is None or row1 <= row0 or not array.flags.c_contiguous:
        return
    height, row_bytes = array.shape[-2], array.strides[-2]
    planes = array.shape[0] if array.ndim == 3 else 1
    plane_bytes = height * row_bytes
    page = _mmap.PAGESIZE
    base = int(getattr(array, "offset", 0)) % _mmap.ALLOCATIONGRANULARITY  # the mapping starts that far before
    for c in range(planes):
        start = base + c * plane_bytes + row0 * row_bytes
        stop = base + c * plane_bytes + min(row1, height) * row_bytes
        start = -(-start // page) * page  # whole pages inside the rows only
        if stop - start >= page:
            try:
                handle.madvise(advice, start, (stop - start) // page * page)
            except (OSError, ValueError):
                return


@dataclass
class _Prepared:
    block: BlockPlan
    canvas: np.ndarray | None  # normalised block, white-padded; None when none of its windows runs (glass)
    raw_core: np.ndarray  # raw pixels of the core (for the overview image)
    clear_core: np.ndarray | None = None  # fully transparent pixels of the core (nothing scanned): never a class
    run: np.ndarray | None = None  # windows to run (``tissue_windows``); None: every window


def _read_block(reader: Any, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels and transparency mask of a rectangle (readers without ``read_region`` have no transparent pixels)."""
    if hasattr(reader, "read_region"):
        return reader.read_region(y0, y1, x0, x1)
    return reader.read(y0, y1, x0, x1), None


def predict_class_map(
    reader: Any,
    network: Callable[[torch.Tensor], torch.Tensor],
    inferer: Any,
    normalizer: Any | None = None,
    out: np.ndarray | None = None,
    block_size: int | None = None,
    threshold: float = 0.5,
    skip_empty: bool = True,
    tissue_beta: float = 0.15,
    prefetch: int = 0,
    overview_step: int | None = None,
    progress: bool = False,
    zeroed: bool = False,
    probabilities: np.ndarray | bool | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Infer the class map of the image behind ``reader``.

    Args:
        reader: a region reader (``shape``, ``read(y0, y1, x0, x1)``), see :func:`monai_nasscam.data.slide.open_image`.
        network: called on ``(n, 3, roi_h, roi_w)`` float batches in [0, 1]; returns ``(n, 4, ...)`` logits.
        inferer: a MONAI ``SlidingWindowInferer`` (``roi_size``, ``overlap``, ``sw_batch_size``, ``mode`` ...).
        normalizer: a :class:`~monai_nasscam.inference.stain.SlideStainNormalizer` (fitted here on this image),
            or ``None``.
        out: ``(H, W)`` uint8 array (e.g. a memory map) receiving the class map; allocated when ``None``.
        block_size: core size of the blocks; ``None``: the whole image in one piece.
        threshold: sigmoid threshold.
        skip_empty: background is not inferred: a window with no stained pixel in itself or in the band one stride
            wide around it is not run and its pixels are class 0; a block none of whose windows runs is skipped
            (module docstring). ``False``: every window runs. Fully transparent pixels (read as white by the reader:
            nothing was scanned there) are class 0 whatever the network predicts, either way.
        tissue_beta: optical-density threshold of a stained pixel (for ``skip_empty``).
        prefetch: blocks read and normalised ahead in background threads (0: none).
        overview_step: also return a raw RGB overview subsampled every ``overview_step`` pixels (for overlays).
        progress: show a progress bar over the blocks.
        zeroed: ``out`` (and ``probabilities``) are known to hold zeros (new memory maps): skipped blocks are not
            written, so their pages are never touched.
        probabilities: also keep each class's probability, quantised (see :func:`quantise_probabilities`): a
            ``(C, H, W)`` uint8 array (e.g. a memory map) to fill, ``True`` to allocate one, ``None`` / ``False``:
            not kept. Skipped blocks and fully transparent pixels get 0.

    Returns:
        ``(class_map, info)`` where ``info`` has ``blocks``, ``skipped_blocks``, ``windows`` and
            ``skipped_windows`` (window computations of the blocks, and those not run), ``stain_note``,
        ``stain_sample_step``, with ``overview_step`` ``overview``, and with ``probabilities`` ``probabilities``
        (the ``(C, H, W)`` uint8 array).

    Raises:
        ValueError: ``out`` or ``probabilities`` of the wrong shape or dtype (the network's channel count is checked
            against ``probabilities`` at the first inferred block).
    """
    from tqdm import tqdm

    height, width = (int(s) for s in reader.shape)
    roi, stride = window_geometry(inferer.roi_size, inferer.overlap)
    blocks = plan_blocks((height, width), roi, stride, block_size)
    if out is None:
        out = np.zeros((height, width), dtype=np.uint8)
    elif tuple(out.shape) != (height, width) or out.dtype != np.uint8:
        raise ValueError(f"out must be a ({height}, {width}) uint8 array, got {out.dtype} {tuple(out.shape)}.")
    info: dict[str, Any] = {"blocks": len(blocks), "skipped_blocks": 0, "windows": 0, "skipped_windows": 0,
                            "stain_note": None, "stain_sample_step": None}
    seen: dict[str, Any] = {}  # the network's output per window, once known (for the windows not run)
    probs: np.ndarray | None = None
    if isinstance(probabilities, np.ndarray):
        if tuple(probabilities.shape[1:]) != (height, width) or probabilities.dtype != np.uint8 or probabilities.ndim != 3:
            raise ValueError(
                f"probabilities must be a (C, {height}, {width}) uint8 array, got {probabilities.dtype} "
                f"{tuple(probabilities.shape)}."
            )
        probs = probabilities
    keep_probs = probs is not None or (probabilities is not None and probabilities is not False)

    if normalizer is not None and normalizer.method != "none":
        step = normalizer.sample_step((height, width))
        normalizer.fit_source(_sample_pixels(reader, step))
        info["stain_note"], info["stain_sample_step"] = normalizer.note, step
    overview = None
    if overview_step:
        s = int(overview_step)
        overview = np.full((-(-height // s), -(-width // s), 3), 255, dtype=np.uint8)

    def prepare(block: BlockPlan) -> _Prepared:
        ry1, rx1 = min(block.ry1, height), min(block.rx1, width)
        run = None
        if skip_empty:  # read the band around the region too: which windows run depends on the image alone
            ey0, ex0 = max(block.ry0 - stride[0], 0), max(block.rx0 - stride[1], 0)
            ey1, ex1 = min(block.ry1 + stride[0], height), min(block.rx1 + stride[1], width)
            wide, wide_clear = _read_block(reader, ey0, ey1, ex0, ex1)
            inside = (slice(block.ry0 - ey0, ry1 - ey0), slice(block.rx0 - ex0, rx1 - ex0))
            raw, clear = wide[inside], None if wide_clear is None else wide_clear[inside]
            tissue = np.zeros((block.ry1 - block.ry0 + 2 * stride[0], block.rx1 - block.rx0 + 2 * stride[1]), bool)
            oy, ox = ey0 - (block.ry0 - stride[0]), ex0 - (block.rx0 - stride[1])
            tissue[oy : oy + wide.shape[0], ox : ox + wide.shape[1]] = tissue_mask(wide, beta=tissue_beta)
            run = tissue_windows(tissue, roi, stride)
        else:
            raw, clear = _read_block(reader, block.ry0, ry1, block.rx0, rx1)
        inner = (slice(block.y0 - block.ry0, block.y1 - block.ry0), slice(block.x0 - block.rx0, block.x1 - block.rx0))
        core = raw[inner]
        clear_core = None if clear is None or not clear[inner].any() else clear[inner]
        if run is not None and not run.any():
            return _Prepared(block, None, core, run=run)
        norm = normalizer.apply(raw) if normalizer is not None else raw
        canvas = np.full((block.ry1 - block.ry0, block.rx1 - block.rx0, 3), 255, dtype=np.uint8)
        canvas[: norm.shape[0], : norm.shape[1]] = norm
        return _Prepared(block, canvas, core, clear_core, run=None if run is None or run.all() else run)

    bar = tqdm(total=len(blocks), desc="blocks", unit="block", disable=not progress or len(blocks) < 2, leave=False)
    try:
        for item in _iterate(blocks, prepare, prefetch):
            b = item.block
            if overview is not None:
                s = int(overview_step)  # type: ignore[arg-type]
                oy, ox = (-b.y0) % s, (-b.x0) % s
                sub = item.raw_core[oy::s, ox::s]
                overview[(b.y0 + oy) // s : (b.y0 + oy) // s + sub.shape[0], (b.x0 + ox) // s : (b.x0 + ox) // s + sub.shape[1]] = sub
            windows = int(item.run.size) if item.run is not None else _window_count(b, roi, stride)
            info["windows"] += windows
            if item.canvas is None:
                info["skipped_windows"] += windows
                if not zeroed:
                    out[b.y0 : b.y1, b.x0 : b.x1] = 0
                    if probs is not None:
                        probs[:, b.y0 : b.y1, b.x0 : b.x1] = 0
                info["skipped_blocks"] += 1
            else:
                x = torch.from_numpy(item.canvas).permute(2, 0, 1).unsqueeze(0).to(torch.float32).div_(255.0)
                with torch.inference_mode():
                    if item.run is None or not isinstance(inferer, SlidingWindowInferer):
                        logits = inferer(x, network)
                    else:  # glass windows are not run: the network is told each window's place
                        info["skipped_windows"] += int(item.run.size - item.run.sum())
                        sliding = copy.copy(inferer)
                        sliding.with_coord = True
                        logits = sliding(x, _TissueWindows(network, item.run, stride, seen))
                    logits = logits[0, :, b.y0 - b.ry0 : b.y1 - b.ry0, b.x0 - b.rx0 : b.x1 - b.rx0]
                    logits = logits.float().cpu()
                    classes = logits_to_class_map(logits, threshold).numpy()
                    quantised = quantise_probabilities(logits).numpy() if keep_probs else None
                if item.clear_core is not None:
                    classes[item.clear_core] = 0
                out[b.y0 : b.y1, b.x0 : b.x1] = classes
                if quantised is not None:
                    if probs is None:
                        probs = np.zeros((quantised.shape[0], height, width), dtype=np.uint8)
                    elif probs.shape[0] != quantised.shape[0]:
                        raise ValueError(
                            f"probabilities has {probs.shape[0]} channels but the network gives {quantised.shape[0]}."
                        )
                    if item.clear_core is not None:
                        quantised[:, item.clear_core] = 0
                    probs[:, b.y0 : b.y1, b.x0 : b.x1] = quantised
                del x, logits, classes, quantised
            if b.x1 >= width:  # a row of blocks is done: its pages may leave memory (memory maps of a slide)
                release_rows(out, b.y0, b.y1)
                if probs is not None:
                    release_rows(probs, b.y0, b.y1)
            bar.update()
    finally:
        bar.close()
    if overview is not None:
        info["overview"] = overview
    if keep_probs:
        if probs is None:  # every block skipped: no network output to size it, the class count is the default
            from monai_nasscam.data.classes import NUM_CLASSES

            probs = np.zeros((NUM_CLASSES, height, width), dtype=np.uint8)
        info["probabilities"] = probs
    return out, info


def _window_count(block: BlockPlan, roi: Sequence[int], stride: Sequence[int]) -> int:
    """Windows of a block's region on the stride grid."""
    spans = ((block.ry0, block.ry1), (block.rx0, block.rx1))
    return math.prod((end - start - roi[a]) // stride[a] + 1 for a, (start, end) in enumerate(spans))


def _iterate(blocks: list[BlockPlan], prepare: Callable[[BlockPlan], _Prepared], prefetch: int) -> Iterator[_Prepared]:
    """``prepare(block)`` for every block, up to ``prefetch`` of them computed ahead in threads."""
    if prefetch <= 0 or len(blocks) < 2:
        for b in blocks:
            yield prepare(b)
        return
    with ThreadPoolExecutor(max_workers=int(prefetch)) as pool:
        pending: list[Future] = [pool.submit(prepare, b) for b in blocks[: int(prefetch)]]
        nxt = int(prefetch)
        while pending:
            item = pending.pop(0).result()
            if nxt < len(blocks):
                pending.append(pool.submit(prepare, blocks[nxt]))
                nxt += 1
            yield item


def _sample_pixels(reader: Any, step: int, band_rows: int = 1024) -> np.ndarray:
    """Every ``step``-th pixel of every ``step``-th row, read in bands (all pixels for ``step == 1``)."""
    height, width = reader.shape
    if hasattr(reader, "image"):
        return np.ascontiguousarray(reader.image[::step, ::step]).reshape(-1, 3)
    band = max(step, (band_rows // step) * step)
    parts = []
    for y0 in range(0, height, band):
        y1 = min(y0 + band, height)
        parts.append(reader.read(y0, y1, 0, width)[::step, ::step].reshape(-1, 3))
    return np.concatenate(parts, axis=0)
