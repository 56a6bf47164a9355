"""Nucleus types of the synthetic MoNuSAC generator: polygon shapes and their stain (optical density) patches.

Every type is described by ranges of size, elongation, contour irregularity, lobes, hematoxylin density,
chromatin texture, membrane rim, nucleoli and cytoplasm halo. The ranges overlap on purpose, so that no
single cue separates the classes: lymphocytes are small, round and dark; neutrophils are about as dark
and a little larger but multi-lobed with a granular pink halo; epithelial nuclei are large, oval,
textured, with nucleoli; macrophages are as large, irregular (kidney-shaped) and pale, with a foamy halo.
``Fibroblast`` nuclei (spindles in the stroma) are drawn but never annotated, as in MoNuSAC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.draw import polygon as draw_polygon

__all__ = ["NucleusType", "NUCLEUS_TYPES", "FIBROBLAST", "nucleus_polygon", "render_nucleus"]


@dataclass(frozen=True)
class NucleusType:
    """Appearance ranges of one nucleus type (lengths in pixels at 40x, ~0.25 µm/px)."""

    name: str
    radius: tuple[float, float]
    elongation: tuple[float, float]
    irregularity: tuple[float, float]
    lobes: tuple[int, int]
    indent: tuple[float, float]
    hematoxylin: tuple[float, float]
    texture: tuple[float, float]
    grain: float
    rim: float
    nucleoli: tuple[int, int]
    halo: tuple[float, float]
    halo_eosin: tuple[float, float]
    vacuoles: bool = False
    granular: bool = False


NUCLEUS_TYPES: dict[str, NucleusType] = {
    "Epithelial": NucleusType(
        "Epithelial", radius=(11.0, 18.0), elongation=(1.15, 1.9), irregularity=(0.02, 0.09), lobes=(0, 0),
        indent=(0.0, 0.06), hematoxylin=(0.5, 0.95), texture=(0.25, 0.5), grain=1.4, rim=0.3, nucleoli=(0, 2),
        halo=(1.25, 1.6), halo_eosin=(0.25, 0.5),
    ),
    "Lymphocyte": NucleusType(
        "Lymphocyte", radius=(8.0, 12.0), elongation=(1.0, 1.3), irregularity=(0.01, 0.06), lobes=(0, 0),
        indent=(0.0, 0.04), hematoxylin=(0.95, 1.45), texture=(0.08, 0.22), grain=1.0, rim=0.08, nucleoli=(0, 0),
        halo=(1.05, 1.25), halo_eosin=(0.1, 0.3),
    ),
    "Neutrophil": NucleusType(
        "Neutrophil", radius=(9.5, 14.0), elongation=(1.0, 1.45), irregularity=(0.03, 0.1), lobes=(2, 4),
        indent=(0.0, 0.05), hematoxylin=(0.8, 1.3), texture=(0.1, 0.25), grain=1.0, rim=0.1, nucleoli=(0, 0),
        halo=(1.45, 1.9), halo_eosin=(0.3, 0.55), granular=True,
    ),
    "Macrophage": NucleusType(
        "Macrophage", radius=(12.0, 19.0), elongation=(1.1, 1.7), irregularity=(0.07, 0.2), lobes=(0, 0),
        indent=(0.05, 0.3), hematoxylin=(0.35, 0.75), texture=(0.12, 0.3), grain=1.2, rim=0.35, nucleoli=(0, 1),
        halo=(1.7, 2.5), halo_eosin=(0.15, 0.35), vacuoles=True,
    ),
}

FIBROBLAST = NucleusType(
    "Fibroblast", radius=(6.0, 9.0), elongation=(2.4, 4.5), irregularity=(0.02, 0.08), lobes=(0, 0),
    indent=(0.0, 0.05), hematoxylin=(0.65, 1.1), texture=(0.08, 0.2), grain=1.0, rim=0.1, nucleoli=(0, 0),
    halo=(1.0, 1.0), halo_eosin=(0.0, 0.0),
)


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def nucleus_polygon(
    rng: np.random.Generator, kind: NucleusType, center: tuple[float, float], angle: float | None = None
) -> tuple[np.ndarray, dict]:
    """A closed star-convex contour for one nucleus.

    Args:
        rng: random generator.
        kind: the nucleus type.
        center: ``(x, y)`` of the nucleus centre.
        angle: orientation of the long axis in radians (random when ``None``).

    Returns:
        ``(vertices (N, 2) as (x, y) rounded to 3 decimals, shape parameters)``.
    """
    radius = _u(rng, kind.radius)
    elong = _u(rng, kind.elongation)
    irreg = _u(rng, kind.irregularity)
    lobes = int(rng.integers(kind.lobes[0], kind.lobes[1] + 1)) if kind.lobes[1] else 0
    angle = float(rng.uniform(0, np.pi)) if angle is None else angle
    n = int(np.clip(radius * 2.2, 16, 48))
    theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi / n)
    r = np.ones(n)
    for k in (2, 3, 4, 5):
        r += irreg * rng.normal() / (k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    indent = _u(rng, kind.indent)
    if indent > 0:
        r -= indent * np.clip(np.cos(theta - rng.uniform(0, 2 * np.pi)), 0, None) ** 4
    lobe_phase = float(rng.uniform(0, 2 * np.pi))
    if lobes:
        depth = float(rng.uniform(0.3, 0.5))
        r *= (1 - depth) + depth * np.abs(np.cos(lobes * theta / 2 + lobe_phase)) ** 0.6
    r = np.clip(r, 0.35, None) * radius
    x = r * np.cos(theta) * np.sqrt(elong)
    y = r * np.sin(theta) / np.sqrt(elong)
    ca, sa = np.cos(angle), np.sin(angle)
    pts = np.stack([center[0] + ca * x - sa * y, center[1] + sa * x + ca * y], axis=1)
    pts += rng.normal(0, 0.25, pts.shape)
    params = {"radius": radius, "elongation": elong, "lobes": lobes, "lobe_phase": lobe_phase, "angle": angle}
    return np.round(pts, 3), params


def _local_mask(pts: np.ndarray, x0: int, y0: int, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.float32)
    rr, cc = draw_polygon(pts[:, 1] - y0, pts[:, 0] - x0, shape=(h, w))
    m[rr, cc] = 1.0
    return m


def render_nucleus(
    rng: np.random.Generator,
    kind: NucleusType,
    pts: np.ndarray,
    params: dict,
    hema: np.ndarray,
    eosin: np.ndarray,
) -> None:
    """Add one nucleus (hematoxylin) and its cytoplasm halo (eosin) to the tile's density maps, in place.

    Args:
        rng: random generator.
        kind: the nucleus type.
        pts: the polygon from :func:`nucleus_polygon`.
        params: its shape parameters.
        hema: ``(H, W)`` float32 hematoxylin density of the tile.
        eosin: ``(H, W)`` float32 eosin density of the tile.
    """
    h_img, w_img = hema.shape
    cx, cy = pts.mean(axis=0)
    halo = max(kind.halo[1], 1.0)
    reach = float(np.max(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy))) * halo + 4
    x0, y0 = int(max(np.floor(cx - reach), 0)), int(max(np.floor(cy - reach), 0))
    x1, y1 = int(min(np.ceil(cx + reach) + 1, w_img)), int(min(np.ceil(cy + reach) + 1, h_img))
    if x1 <= x0 or y1 <= y0:
        return
    h, w = y1 - y0, x1 - x0
    core = _local_mask(pts, x0, y0, h, w)
    soft = gaussian_filter(core, 0.7)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)

    # cytoplasm halo replaces the stroma underneath
    halo_f = _u(rng, kind.halo)
    if halo_f > 1.0 and kind.halo_eosin[1] > 0:
        hpts = np.stack([cx + (pts[:, 0] - cx) * halo_f, cy + (pts[:, 1] - cy) * halo_f], axis=1)
        hsoft = gaussian_filter(_local_mask(hpts, x0, y0, h, w), 1.5)
        cyto = _u(rng, kind.halo_eosin) * (1 + 0.25 * gaussian_filter(rng.normal(size=(h, w)).astype(np.float32), 1.0))
        if kind.granular:
            cyto *= 1 + 0.6 * gaussian_filter(rng.normal(size=(h, w)).astype(np.float32), 0.6)
        if kind.vacuoles:
            foam = gaussian_filter(rng.normal(size=(h, w)).astype(np.float32), 1.6)
            cyto *= np.clip(1.2 - 2.5 * np.clip(foam, 0, None) * 4, 0.15, 1.2)
        eosin[y0:y1, x0:x1] = eosin[y0:y1, x0:x1] * (1 - hsoft) + hsoft * np.clip(cyto, 0, None)

    # chromatin
    level = _u(rng, kind.hematoxylin)
    tex = gaussian_filter(rng.normal(size=(h, w)).astype(np.float32), kind.grain)
    tex /= tex.std() + 1e-6
    dens = level * (1 + _u(rng, kind.texture) * tex)
    if params.get("lobes"):
        lobes, phase, r = params["lobes"], params["lobe_phase"], params["radius"]
        blob = np.zeros((h, w), np.float32)
        ang = params["angle"]
        for k in range(lobes):
            t = (2 * np.pi * k - 2 * phase) / lobes  # maxima of |cos(lobes * t / 2 + phase)|
            lx = 0.55 * r * np.cos(t) * np.sqrt(params["elongation"])
            ly = 0.55 * r * np.sin(t) / np.sqrt(params["elongation"])
            bx, by = cx + np.cos(ang) * lx - np.sin(ang) * ly, cy + np.sin(ang) * lx + np.cos(ang) * ly
            blob += np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * (0.38 * r) ** 2))
        dens *= 0.45 + 0.75 * np.clip(blob, 0, 1)
    if kind.rim > 0:
        inner = gaussian_filter(core, 2.0)
        dens += kind.rim * level * np.clip(soft - inner, 0, None) * 2.5
    n_nucleoli = int(rng.integers(kind.nucleoli[0], kind.nucleoli[1] + 1))
    inside = np.argwhere(core > 0)
    for _ in range(n_nucleoli if len(inside) else 0):
        py, px = inside[rng.integers(len(inside))]
        dens += 0.7 * np.exp(-((xx - x0 - px) ** 2 + (yy - y0 - py) ** 2) / (2 * 1.3**2))
    hema[y0:y1, x0:x1] += soft * np.clip(dens, 0.05, None)
