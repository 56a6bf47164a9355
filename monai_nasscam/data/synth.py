"""``nasscam synth``: a synthetic H&E nuclei dataset in the MoNuSAC 2020 on-disk format.

Tiles are composed in optical density and rendered by Beer-Lambert, ``I = I0 * exp(-(H * h + E * e))``,
with per-patient stain vectors ``h``, ``e`` and intensities (so stain normalisation matters): white
background (glass, lumen), fibrous eosin stroma, epithelial sheets with cytoplasm, and nuclei of the four
MoNuSAC types (see :mod:`monai_nasscam.data.synth_nuclei`) at MoNuSAC's class frequencies, clustered,
touching and overlapping, plus unannotated stromal nuclei. Annotations are written as ImageScope XML
(one layer per class, in a random order per tile), and the masks of a tile are the reader's
rasterisation of exactly those polygons, so the set parses back to the masks it was generated from.
Everything is a function of the seed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

from ..fileio import staged_dir
from .classes import CLASS_NAMES
from ..errors import DataError
from .imagescope import Region, write_imagescope_xml
from .raster import Masks, rasterize_regions
from .synth_nuclei import FIBROBLAST, NUCLEUS_TYPES, nucleus_polygon, render_nucleus

__all__ = [
    "MONUSAC_CLASS_FREQUENCIES",
    "SynthTile",
    "patient_style",
    "synth_tile",
    "iter_synth_tiles",
    "write_svs",
    "generate_dataset",
]

#: microns per pixel of the synthetic tiles (MoNuSAC's 40x scans: 0.2521), written into every file they come in
SYNTH_MPP = 0.2521
#: nuclei per class in the MoNuSAC 2020 training release (Epithelial, Lymphocyte, Neutrophil, Macrophage)
MONUSAC_CLASS_FREQUENCIES = {"Epithelial": 14539, "Lymphocyte": 15654, "Neutrophil": 631, "Macrophage": 587}
_H_REF = np.array([0.5626, 0.7201, 0.4062])
_E_REF = np.array([0.2159, 0.8012, 0.5581])


@dataclass
class SynthTile:
    """One synthetic annotated tile.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        layers: ``(class name, [polygons])`` in XML order.
        masks: the rasterisation of ``layers`` (what the reader will produce).
        counts: polygons per class.
    """

    image: np.ndarray
    layers: list[tuple[str, list[np.ndarray]]]
    masks: Masks
    counts: dict[str, int] = field(default_factory=dict)


def _noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth zero-mean unit-variance noise with correlation length ``scale`` pixels (cheap: low-res + zoom)."""
    h, w = shape
    step = max(scale / 2.0, 1.0)
    lh, lw = int(np.ceil(h / step)) + 2, int(np.ceil(w / step)) + 2
    low = gaussian_filter(rng.normal(size=(lh, lw)).astype(np.float32), 1.0)
    up = zoom(low, (h / (lh - 2), w / (lw - 2)), order=1)[:h, :w]
    up = np.pad(up, ((0, max(h - up.shape[0], 0)), (0, max(w - up.shape[1], 0))), mode="edge")
    return (up - up.mean()) / (up.std() + 1e-6)


def _fibres(rng: np.random.Generator, shape: tuple[int, int], angle: float) -> np.ndarray:
    """Wavy fibrous texture in [0, 1]: noise stretched along ``angle`` (long correlation along the fibres)."""
    from scipy.ndimage import map_coordinates

    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    v = v + 6.0 * _noise(rng, shape, 40)  # waviness
    along, across = 24.0, 1.6  # grid steps (px) along / across the fibres
    u0, v0 = u.min(), v.min()
    gu, gv = int((u.max() - u0) / along) + 3, int((v.max() - v0) / across) + 3
    grid = gaussian_filter(rng.normal(size=(gu, gv)).astype(np.float32), (0.8, 1.0))
    f = map_coordinates(grid, [(u - u0) / along, (v - v0) / across], order=1, mode="nearest")
    f = (f - f.mean()) / (f.std() + 1e-6)
    return np.clip(0.5 + 0.3 * f, 0, 1)


def patient_style(rng: np.random.Generator) -> dict:
    """Stain vectors, stain strengths and light intensity of one patient (slide)."""

    def jitter(v: np.ndarray) -> np.ndarray:
        v = np.clip(v + rng.normal(0, 0.05, 3), 0.05, None)
        return v / np.linalg.norm(v)

    return {
        "h": jitter(_H_REF),
        "e": jitter(_E_REF),
        "h_scale": float(rng.uniform(0.8, 1.25)),
        "e_scale": float(rng.uniform(0.7, 1.3)),
        "i0": np.clip(rng.normal(244, 4, 3), 228, 253),
        "blur": float(rng.uniform(0.4, 0.9)),
    }


def _sample_points(
    rng: np.random.Generator, weight: np.ndarray, n: int, centers: np.ndarray | None = None, spread: float = 0.0
) -> np.ndarray:
    """Candidate (x, y) points: uniform over ``weight`` (accept-reject) or around cluster ``centers``."""
    h, w = weight.shape
    if centers is not None and len(centers):
        c = centers[rng.integers(len(centers), size=n)]
        pts = c + rng.normal(0, spread, (n, 2))
    else:
        pts = rng.uniform([0, 0], [w, h], (n * 8 + 16, 2))
        iy = np.clip(pts[:, 1].astype(int), 0, h - 1)
        ix = np.clip(pts[:, 0].astype(int), 0, w - 1)
        keep = rng.uniform(size=len(pts)) < weight[iy, ix]
        pts = np.concatenate([pts[keep], pts[~keep]])[:n]  # fall back on rejected points if needed
    return pts


def synth_tile(
    rng: np.random.Generator,
    height: int,
    width: int,
    style: dict | None = None,
    class_weights: dict[str, float] | None = None,
    density: float | None = None,
) -> SynthTile:
    """Generate one H&E-like tile with its annotation.

    Args:
        rng: random generator (the only source of randomness).
        height: tile height in pixels.
        width: tile width in pixels.
        style: patient stain style from :func:`patient_style` (drawn when ``None``).
        class_weights: expected class proportions of this tile (MoNuSAC's when ``None``).
        density: annotated nuclei per megapixel (drawn when ``None``).

    Returns:
        the :class:`SynthTile`.
    """
    style = style or patient_style(rng)
    shape = (int(height), int(width))
    weights = class_weights or MONUSAC_CLASS_FREQUENCIES
    probs = np.array([weights.get(n, 0.0) for n in CLASS_NAMES], dtype=float)
    probs /= probs.sum()
    density = float(rng.uniform(150, 420)) if density is None else density

    # tissue layout: glass / lumen holes, fibrous stroma
    white_frac = float(rng.choice([0.0, rng.uniform(0.05, 0.35)], p=[0.4, 0.6]))
    n1 = _noise(rng, shape, 60)
    tissue = np.clip((n1 - np.quantile(n1, white_frac) + 0.15) / 0.3, 0, 1) if white_frac > 0 else np.ones(shape, np.float32)
    fib_angle = float(rng.uniform(0, np.pi))
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    fibres = _fibres(rng, shape, fib_angle)
    loose = np.clip(0.5 + 0.5 * _noise(rng, shape, 30), 0, 1)  # loose (pale) vs dense stroma
    eosin = tissue * rng.uniform(0.45, 0.85) * (0.4 + 0.75 * fibres * (0.5 + 0.5 * loose) + 0.1 * _noise(rng, shape, 6))
    eosin = np.clip(eosin, 0, None)
    hema = tissue * (rng.uniform(0.05, 0.12) + 0.02 * _noise(rng, shape, 4))

    # nucleus classes and positions
    n_total = max(1, int(rng.poisson(density * shape[0] * shape[1] / 1e6)))
    classes = rng.choice(len(CLASS_NAMES), size=n_total, p=probs)
    n_epi = int(np.sum(classes == 0))
    epi_centers = _sample_points(rng, tissue, max(1, int(np.ceil(n_epi / 25))))
    lym_centers = _sample_points(rng, tissue, max(1, rng.poisson(1.0)))
    if n_epi:  # epithelial sheets: cytoplasm a little purple
        sheet = np.zeros(shape, np.float32)
        for cx, cy in epi_centers:
            sheet += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (18 + 9 * np.sqrt(n_epi / len(epi_centers))) ** 2))
        sheet = np.clip(sheet, 0, 1) * tissue
        eosin = eosin * (1 - sheet) + sheet * rng.uniform(0.3, 0.5) * (1 + 0.15 * _noise(rng, shape, 3))
        hema += sheet * rng.uniform(0.04, 0.1)

    placed: list[tuple[float, float, float]] = []  # x, y, radius
    polygons: dict[str, list[np.ndarray]] = {n: [] for n in CLASS_NAMES}
    drawn: list[tuple] = []
    order = rng.permutation(n_total)
    for i in order:
        name = CLASS_NAMES[classes[i]]
        kind = NUCLEUS_TYPES[name]
        for _ in range(12):
            if name == "Epithelial":
                cand = _sample_points(rng, tissue, 1, epi_centers, spread=14 + 8 * np.sqrt(n_epi / len(epi_centers)))
            elif name == "Lymphocyte" and rng.uniform() < 0.5:
                cand = _sample_points(rng, tissue, 1, lym_centers, spread=35)
            else:
                cand = _sample_points(rng, tissue, 1)
            if len(cand) == 0:
                continue
            x, y = cand[0]
            if not (-5 <= x < shape[1] + 5 and -5 <= y < shape[0] + 5):
                continue
            pts, params = nucleus_polygon(rng, kind, (x, y))
            if placed:
                p = np.asarray(placed)
                d = np.hypot(p[:, 0] - x, p[:, 1] - y)
                if np.any(d < (p[:, 2] + params["radius"]) * rng.uniform(0.7, 0.95)):
                    continue
            placed.append((x, y, params["radius"]))
            polygons[name].append(pts)
            drawn.append((kind, pts, params))
            break

    # unannotated stromal nuclei (confusers)
    n_fib = rng.poisson(0.2 * n_total + 15 * shape[0] * shape[1] / 1e6)
    for x, y in _sample_points(rng, tissue * (0.3 + 0.7 * fibres), n_fib):
        pts, params = nucleus_polygon(rng, FIBROBLAST, (x, y), angle=fib_angle + rng.normal(0, 0.2))
        drawn.append((FIBROBLAST, pts, params))

    for kind, pts, params in drawn:
        render_nucleus(rng, kind, pts, params, hema, eosin)

    od = (hema * style["h_scale"])[..., None] * style["h"] + (eosin * style["e_scale"])[..., None] * style["e"]
    od += 0.015 * _noise(rng, shape, 2)[..., None]
    rgb = style["i0"] * np.exp(-od)
    rgb = gaussian_filter(rgb, sigma=(style["blur"], style["blur"], 0))
    rgb += rng.normal(0, 2.0, rgb.shape)
    image = np.clip(np.round(rgb), 0, 255).astype(np.uint8)

    layer_order = [CLASS_NAMES[k] for k in rng.permutation(len(CLASS_NAMES)) if polygons[CLASS_NAMES[k]]]
    layers = [(n, polygons[n]) for n in layer_order]
    regions = [Region(label=n, vertices=v, layer=li + 1) for li, (n, polys) in enumerate(layers) for v in polys]
    masks = rasterize_regions(regions, shape)
    return SynthTile(image=image, layers=layers, masks=masks, counts={n: len(polygons[n]) for n in CLASS_NAMES})


def write_svs(path: str, image: np.ndarray, mpp: float = SYNTH_MPP, tile: int = 256) -> None:
    """Write an Aperio-style whole-slide TIFF: tiled JPEG baseline, a thumbnail, and reduced levels.

    The file is recognised as SVS by ``tifffile`` (``series[0]`` is the pyramid, level 0 full resolution).
    """
    import tifffile

    h, w = image.shape[:2]
    desc = (
        f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90"
        f"|AppMag = 40|MPP = {mpp:.4f}|Filename = synthetic"
    )
    thumb_step = max(1, int(np.ceil(max(h, w) / 256)))
    with tifffile.TiffWriter(path) as tw:
        opts = dict(photometric="rgb", compression="jpeg", compressionargs={"level": 90})
        tw.write(image, tile=(tile, tile), description=desc, **opts)
        tw.write(np.ascontiguousarray(image[::thumb_step, ::thumb_step]), description=desc, **opts)
        level = image
        while min(level.shape[:2]) >= 4 * tile:
            level = np.ascontiguousarray(level[::4, ::4])
            tw.write(level, tile=(tile, tile), description=desc, **opts)


def _tile_size(rng: np.random.Generator, min_size: int, max_size: int, small_fraction: float) -> tuple[int, int]:
    if rng.uniform() < small_fraction:
        lo, hi = min_size, max(min_size + 1, min(255, max_size))
    else:
        lo, hi = min(256, max_size), max_size
    return tuple(int(np.exp(rng.uniform(np.log(lo), np.log(hi + 1)))) for _ in range(2))  # type: ignore[return-value]


def _check_tile_sizes(min_size: int, max_size: int) -> None:
    if not 16 <= min_size <= max_size:
        raise ValueError(f"tile sizes: --min-size must be at least 16 and at most --max-size, got {min_size} and {max_size}.")


#: the number of patient folders when none is given (fewer for fewer tiles)
DEFAULT_PATIENTS = 8


def _check_counts(n_images: int, n_patients: int | None) -> int:
    """The number of patient folders (``None``: :data:`DEFAULT_PATIENTS`, at most ``n_images``); refuses counts the
    set cannot have (every patient folder holds at least one tile)."""
    if n_images < 1:
        raise ValueError(f"--images must be at least 1, got {n_images}.")
    if n_patients is None:
        n_patients = min(DEFAULT_PATIENTS, int(n_images))
    if not 1 <= n_patients <= n_images:
        raise ValueError(f"--patients must be at least 1 and at most --images ({n_images}), got {n_patients}: every "
                         "patient folder holds at least one tile.")
    return int(n_patients)


def iter_synth_tiles(
    n_images: int = 48,
    n_patients: int | None = None,
    seed: int = 0,
    min_size: int = 96,
    max_size: int = 640,
    small_fraction: float = 0.2,
    class_frequencies: dict[str, float] | None = None,
    tile_concentration: float = 20.0,
) -> Iterator[tuple[str, str, SynthTile]]:
    """Yield ``(patient id, stem, tile)`` for a synthetic release; see :func:`generate_dataset` for the arguments."""
    n_patients = _check_counts(n_images, n_patients)
    _check_tile_sizes(min_size, max_size)
    root = np.random.default_rng(seed)
    freqs = class_frequencies or MONUSAC_CLASS_FREQUENCIES
    base = np.array([freqs.get(n, 0.0) for n in CLASS_NAMES], dtype=float)
    base /= base.sum()
    owner = np.sort(np.concatenate([np.arange(n_patients), root.integers(0, n_patients, n_images - n_patients)]))
    patients = []
    for p in range(n_patients):
        pid = f"TCGA-{chr(65 + int(root.integers(26)))}{root.integers(10)}-{root.integers(1000, 9999)}-01Z-00-DX{p % 3 + 1}"
        fmt = ["{}_{}", "{}_{:03d}", "{}-{}"][p % 3]
        patients.append({"id": pid, "fmt": fmt, "style_seed": int(root.integers(2**31)), "count": 0})
    tile_seeds = root.integers(2**31, size=n_images)
    for i in range(n_images):
        pat = patients[owner[i]]
        pat["count"] += 1
        rng = np.random.default_rng(int(tile_seeds[i]))
        style = patient_style(np.random.default_rng(pat["style_seed"]))
        h, w = _tile_size(rng, min_size, max_size, small_fraction)
        mix = rng.dirichlet(base * tile_concentration + 1e-3)
        tile = synth_tile(rng, h, w, style=style, class_weights=dict(zip(CLASS_NAMES, mix)))
        yield pat["id"], pat["fmt"].format(pat["id"], pat["count"]), tile


def generate_dataset(
    out_dir: str | os.PathLike,
    n_images: int = 48,
    n_patients: int | None = None,
    seed: int = 0,
    svs: bool = False,
    min_size: int = 96,
    max_size: int = 640,
    small_fraction: float = 0.2,
    class_frequencies: dict[str, float] | None = None,
    tile_concentration: float = 20.0,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Write a synthetic MoNuSAC-format release.

    Layout: ``OUT/<patient>/<stem>.tif`` (+ ``<stem>.svs`` with ``svs``) + ``<stem>.xml`` with TCGA-like
    patient folders and stems ending ``_1``, ``_001`` or ``-1``; plus ``OUT/synth.json`` (settings and
    counts; ignored by the reader).

    The set is written to a temporary folder next to ``out_dir`` and renamed into place at the end, so an
    interrupted run leaves nothing behind.

    Args:
        out_dir: output folder; it must not exist or be empty, unless ``overwrite`` (then it is replaced); never a
            file.
        n_images: number of annotated tiles.
        n_patients: number of patient folders, 1 to ``n_images`` (each gets at least one tile); default
            (``None``): 8, or ``n_images`` when fewer.
        seed: random seed; the output is a function of all arguments.
        svs: also write each tile as a tiled, JPEG-compressed Aperio-style ``.svs`` whole-slide TIFF.
        min_size: smallest tile side.
        max_size: largest tile side.
        small_fraction: share of tiles with sides under 256 pixels.
        class_frequencies: expected nuclei per class (MoNuSAC's by default).
        tile_concentration: Dirichlet concentration of the per-tile class mixture (lower: tiles more
            dominated by one class). At the default, the rare classes land near MoNuSAC's 2 % of the nuclei
            each and in most patients; at 6, a 40-tile set held 0.6 % neutrophils, in 2 of 8 patients.
        overwrite: replace a non-empty ``out_dir`` (refused otherwise: two sets would mix).
        progress: show a progress bar.

    Returns:
        the summary written to ``synth.json``.

    Raises:
        DataError: ``out_dir`` is a file (with or without ``overwrite``), or a non-empty folder and ``overwrite`` is
            false.
        ValueError: ``n_images`` under 1, ``n_patients`` under 1 or above ``n_images``, ``min_size`` under 16 or
            above ``max_size``.
    """
    import tifffile
    from tqdm import tqdm

    out_dir = os.path.abspath(os.fspath(out_dir))
    n_patients = _check_counts(n_images, n_patients)  # before anything is written
    _check_tile_sizes(min_size, max_size)
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(out_dir, "is a file, not a folder: OUT_DIR is the folder to write the set into (--overwrite "
                                 "replaces a folder, never a file)")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise DataError(out_dir, "output folder is not empty (use --overwrite to replace it)")
    settings = dict(
        n_images=n_images, n_patients=n_patients, seed=seed, min_size=min_size, max_size=max_size,
        small_fraction=small_fraction, class_frequencies=class_frequencies, tile_concentration=tile_concentration,
    )
    summary: dict = {"format": "nasscam-synth", "version": 1, **settings, "svs": svs, "images": []}
    totals = dict.fromkeys(CLASS_NAMES, 0)
    with staged_dir(out_dir) as tmp:
        tiles = iter_synth_tiles(**settings)
        for patient, stem, tile in tqdm(tiles, total=n_images, desc="synth", unit="tile", disable=not progress, leave=False):
            folder = os.path.join(tmp, patient)
            os.makedirs(folder, exist_ok=True)
            # the resolution in the TIFF tags too (pixels per cm), as a scanner's export carries it
            tifffile.imwrite(os.path.join(folder, stem + ".tif"), tile.image, photometric="rgb", compression="zlib",
                             resolution=(1e4 / SYNTH_MPP, 1e4 / SYNTH_MPP), resolutionunit="CENTIMETER")
            if svs:
                write_svs(os.path.join(folder, stem + ".svs"), tile.image, mpp=SYNTH_MPP)
            write_imagescope_xml(os.path.join(folder, stem + ".xml"), tile.layers, microns_per_pixel=SYNTH_MPP)
            for n, c in tile.counts.items():
                totals[n] += c
            summary["images"].append(
                {"patient": patient, "stem": stem, "shape": list(tile.image.shape[:2]), "nuclei": tile.counts}
            )
        summary["nuclei"] = totals
        with open(os.path.join(tmp, "synth.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return summary
