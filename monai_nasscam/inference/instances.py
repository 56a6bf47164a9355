"""
Nucleus instances from a semantic output: connected components, or a marker-controlled watershed that separates
touching nuclei of one class.

The network predicts, per class, which pixels are nucleus (multi-label sigmoid channels, or a class map); it does
not say where one nucleus ends and the next begins. Two ways turn a class mask into instances:

- ``"connected_components"``: each 4-connected (``connectivity=1``) region is one nucleus -- the paper's protocol
  and the MoNuSAC challenge's; touching nuclei of one class become one.
- ``"watershed"`` (default): per class, the Euclidean distance transform of the mask (distance of each nucleus
  pixel to the nearest background pixel, in pixels, ``scipy.ndimage.distance_transform_edt``), optionally smoothed
  by a Gaussian of ``sigma`` pixels, has one hill per roughly convex nucleus. Its regional maxima that rise at
  least ``h`` pixels above their surroundings (``skimage.morphology.h_maxima``), and lie at least ``min_distance``
  pixels apart (``skimage.feature.peak_local_max`` spacing; ``min_distance`` 0 keeps every h-maximum), are the
  markers; ``skimage.segmentation.watershed`` floods the inverted distance from them, restricted to the mask. A
  connected component that receives no marker stays one nucleus, so the split loses no foreground pixel, and every
  instance lies inside one connected component. The distance is taken with the component's holes smaller than
  :data:`WATERSHED_HOLE_AREA` (200 px) filled: a nucleus predicted with a pale centre, even a one-pixel hole, would
  otherwise have a ring of maxima around the hole and split into pieces that ``min_size`` then drops, so the whole
  nucleus would vanish; larger holes (a lumen enclosed by touching nuclei) are kept. The flooding stays on the mask.
  Each component is split on its own (its distance map ignores the other components), so the result does not
  depend on what lies around it: block-wise processing that keeps every component whole gives the whole image's
  nuclei.

Either method can then drop the instances smaller than ``min_size`` pixels, specks that are rarely nuclei and
would count as false positives: :data:`WATERSHED_MIN_SIZE` (200 px, 12.5 µm² at 0.25 µm/px; about the 5th
percentile of the benchmark's ground-truth nucleus areas, so a very small true nucleus can be dropped too) by
default with the watershed; connected components keep every instance by default, as the paper's protocol. Sizes
are pixels at the resolution the model works at.

:class:`InstanceSeparator` holds the method and its parameters; it is the callable that evaluation takes
(``PooledPQMetric(instance_fn=...)``, ``InstanceMetric(instance_fn=...)``, ``instance_method`` in
``bundle/configs/evaluate.yaml``) and that inference applies to a class map (:func:`instances_from_class_map`).
The defaults were tuned on the validation split of the calibrated synthetic benchmark (docs/results.md, "Instance
separation").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_numpy

__all__ = [
    "INSTANCE_METHODS",
    "WATERSHED_DEFAULTS",
    "WATERSHED_MIN_SIZE",
    "WATERSHED_HOLE_AREA",
    "InstanceSeparator",
    "connected_component_instances",
    "watershed_instances",
    "separate_instances",
    "remove_small_instances",
    "instances_from_class_map",
]

INSTANCE_METHODS = ("watershed", "connected_components")

#: default watershed parameters, in pixels (tuned on the validation split, see docs/results.md)
WATERSHED_DEFAULTS: dict[str, float] = {"h": 0.5, "min_distance": 0, "sigma": 2.0}

#: default ``min_size`` of the watershed in pixels (tuned with it; connected components default to 0, keeping all)
WATERSHED_MIN_SIZE = 200

#: holes of a component smaller than this many pixels are filled before its distance transform (markers only)
WATERSHED_HOLE_AREA = 200


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return convert_to_numpy(x, wrap_sequence=True)


def connected_component_instances(mask: np.ndarray | torch.Tensor, connectivity: int = 1) -> np.ndarray:
    """
    Instances of one binary mask by connected components (scikit-image ``label``).

    Args:
        mask: (*spatial) binary, any non-zero value is foreground.
        connectivity: 1 (4-neighbourhood in 2-D, 6 in 3-D) up to ``mask.ndim`` (full neighbourhood).

    Returns:
        int32 instance map (*spatial), ids 1..n, 0 = background.
    """
    from skimage.measure import label

    return label(_to_numpy(mask) != 0, connectivity=connectivity, background=0).astype(np.int32)


def watershed_instances(
    mask: np.ndarray | torch.Tensor,
    h: float = WATERSHED_DEFAULTS["h"],
    min_distance: int = int(WATERSHED_DEFAULTS["min_distance"]),
    sigma: float = WATERSHED_DEFAULTS["sigma"],
    connectivity: int = 1,
) -> np.ndarray:
    """
    Instances of one binary mask by a marker-controlled watershed of its distance transform.

    Args:
        mask: (*spatial) binary, any non-zero value is foreground (2-D or 3-D).
        h: minimum dynamic of a marker in pixels of distance: a regional maximum of the (smoothed) distance map that
            is not at least ``h`` higher than the saddle to a higher maximum is no marker (``h_maxima``). Larger:
            fewer splits. Must be > 0.
        min_distance: minimum spacing of two markers in pixels (``peak_local_max``); 0: no spacing rule.
        sigma: standard deviation in pixels of the Gaussian smoothing of the distance map before the markers are
            taken (0: none); smoothing removes the spurious maxima of a ragged outline.
        connectivity: connectivity of the connected components and of the watershed flooding (1: 4-neighbourhood).

    Returns:
        int32 instance map (*spatial), ids 1..n, 0 = background; its foreground equals ``mask != 0``.

    Raises:
        ValueError: ``h`` <= 0, ``min_distance`` < 0 or ``sigma`` < 0.
    """
    import scipy.ndimage as ndi
    from skimage.measure import label

    if not h > 0:
        raise ValueError(f"watershed h must be > 0 pixels, got {h}.")
    if min_distance < 0 or sigma < 0:
        raise ValueError(f"watershed min_distance and sigma must be >= 0, got {min_distance} and {sigma}.")
    fg = _to_numpy(mask) != 0
    components = label(fg, connectivity=connectivity, background=0)
    out = np.zeros(fg.shape, dtype=np.int32)
    n = 0
    for k, box in enumerate(ndi.find_objects(components), start=1):
        if box is None:
            continue
        # the component's box grown by one pixel (inside the image): background around it, so that its split
        # depends on the component alone -- the same in a whole image and in any block that holds it whole
        box = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, size)) for b, size in zip(box, fg.shape))
        own = components[box] == k
        parts = _split_component(own, h, min_distance, sigma, connectivity)
        out[box][own] = parts[own] + n
        n += int(parts.max())
    return out


def _split_component(
    own: np.ndarray, h: float, min_distance: int, sigma: float, connectivity: int
) -> np.ndarray:
    """Watershed of one connected component (boolean ``own`` in its box): int32 ids 1..k on ``own``, 0 elsewhere."""
    import scipy.ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.measure import label
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential, watershed

    # the component with its small holes filled: one hill for a nucleus with a pale centre (module docstring)
    holes, _ = ndi.label(ndi.binary_fill_holes(own) & ~own)
    small = np.flatnonzero(np.bincount(holes.ravel()) < WATERSHED_HOLE_AREA)
    region = own | np.isin(holes, small[small > 0])
    distance = ndi.distance_transform_edt(region)
    if sigma > 0:
        distance = ndi.gaussian_filter(distance, sigma, mode="constant", cval=0.0) * region
    if _one_regional_maximum(distance, region):  # at most one marker: the component stays whole
        return own.astype(np.int32)
    peaks = (h_maxima(distance, h) != 0) & region
    if min_distance > 0 and peaks.any():
        # thin the h-maxima: keep the highest, drop the others closer than min_distance (plateaus count once)
        plateau = label(peaks, connectivity=own.ndim)
        keep = peak_local_max(np.where(peaks, distance, 0.0), min_distance=int(min_distance), exclude_border=False)
        kept = np.zeros_like(peaks)
        kept[tuple(keep.T)] = True
        peaks = np.isin(plateau, np.unique(plateau[kept & peaks]))
    markers = label(peaks, connectivity=own.ndim)
    if markers.max() <= 1:  # one marker or none: the component stays whole
        return own.astype(np.int32)
    flooded = watershed(-distance, markers, mask=region, connectivity=connectivity)
    # back on the mask (the filled holes are not nucleus); a basin that held only hole pixels disappears
    parts = relabel_sequential(np.where(own, flooded, 0).astype(np.int32))[0]
    unreached = own & (parts == 0)
    if unreached.any():  # pixels no flood reached (cut off by the connectivity) stay nuclei of their own
        rest = label(unreached, connectivity=connectivity, background=0)
        parts = np.where(rest > 0, rest + parts.max(), parts).astype(np.int32)
    return parts


def _one_regional_maximum(values: np.ndarray, region: np.ndarray) -> bool:
    """Whether ``values`` (0 outside ``region``, positive inside) has a single regional maximum: a cheap test that
    spares most components the morphological reconstruction of ``h_maxima``, with the same result.

    The pixels no neighbour exceeds (3 x 3, or 3 x 3 x 3, neighbourhood; outside the array counts as lower) hold every
    regional maximum, and two neighbours among them are equal (each is at least the other). So when those inside
    ``region`` form one connected set (full connectivity, as ``h_maxima`` and the marker labelling use), it is one
    plateau: the only regional maximum. Every other pixel then climbs to it (values within ``h_maxima``'s rounding
    allowance of the maximum climb to it through such values), so ``h_maxima`` marks one connected set or nothing:
    at most one marker, the case in which :func:`watershed_instances` keeps the component whole anyway.
    """
    import scipy.ndimage as ndi

    footprint = np.ones((3,) * values.ndim, dtype=bool)
    top = (values >= ndi.maximum_filter(values, footprint=footprint, mode="constant", cval=-np.inf)) & region
    return ndi.label(top, structure=footprint)[1] <= 1


def remove_small_instances(instances: np.ndarray, min_size: int) -> np.ndarray:
    """Set the instances of fewer than ``min_size`` pixels to 0 and renumber the others 1..n (int32)."""
    from skimage.segmentation import relabel_sequential

    instances = np.asarray(instances)
    if min_size <= 1 or not instances.any():
        return instances.astype(np.int32)
    area = np.bincount(instances.ravel())
    small = np.nonzero(area < min_size)[0]
    small = small[small > 0]
    if not small.size and area[1:].all():  # nothing to drop, and the ids are 1..n already: nothing to renumber
        return instances.astype(np.int32)
    out = np.where(np.isin(instances, small), 0, instances)
    return relabel_sequential(out.astype(np.int32))[0]


def separate_instances(
    mask: np.ndarray | torch.Tensor,
    method: str = "watershed",
    connectivity: int = 1,
    min_size: int = 0,
    **params: Any,
) -> np.ndarray:
    """
    Class instance stack from a (multi-label) binary prediction: the instances of every channel.

    Args:
        mask: (C, *spatial) binary (channel ``c`` is class id ``c + 1``), numpy or torch.
        method: ``"watershed"`` or ``"connected_components"``.
        connectivity: see :func:`watershed_instances`.
        min_size: instances of fewer pixels are dropped (0 or 1: none).
        params: watershed parameters ``h``, ``min_distance``, ``sigma`` (ignored by connected components).

    Returns:
        int32 (C, *spatial), ids 1..n_c per channel, 0 = none.

    Raises:
        ValueError: unknown method or watershed parameter.
    """
    if method not in INSTANCE_METHODS:
        raise ValueError(f"instance method must be one of {INSTANCE_METHODS}, got {method!r}.")
    unknown = set(params) - set(WATERSHED_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown watershed parameters {sorted(unknown)}; expected {sorted(WATERSHED_DEFAULTS)}.")
    mask = _to_numpy(mask)
    out = np.zeros(mask.shape, dtype=np.int32)
    for c in range(mask.shape[0]):
        if method == "connected_components":
            out[c] = connected_component_instances(mask[c], connectivity)
        else:
            out[c] = watershed_instances(mask[c], connectivity=connectivity, **params)
        out[c] = remove_small_instances(out[c], min_size)
    return out


class InstanceSeparator:
    """
    The instance separation of evaluation and inference, as one picklable callable.

    ``InstanceSeparator("watershed", h=0.5, min_distance=0, sigma=2, min_size=200)(mask)`` gives the class instance stack of a
    (C, H, W) binary mask; ``InstanceSeparator("connected_components")`` the paper's protocol.

    Args:
        method: ``"watershed"`` (default) or ``"connected_components"``.
        h, min_distance, sigma: watershed parameters in pixels (:func:`watershed_instances`); ``None``: the defaults
            :data:`WATERSHED_DEFAULTS`.
        min_size: instances smaller than this many pixels are dropped, with either method (0: none); ``None``:
            :data:`WATERSHED_MIN_SIZE` for the watershed, 0 for connected components.
        connectivity: connected-component / flooding connectivity (1: 4-neighbourhood).

    Raises:
        ValueError: unknown method or invalid parameter (checked at construction).
    """

    def __init__(
        self,
        method: str = "watershed",
        h: float | None = None,
        min_distance: int | None = None,
        sigma: float | None = None,
        connectivity: int = 1,
        min_size: int | None = None,
    ) -> None:
        if method not in INSTANCE_METHODS:
            raise ValueError(f"instance_method must be one of {INSTANCE_METHODS}, got {method!r}.")
        self.method = method
        self.h = float(WATERSHED_DEFAULTS["h"] if h is None else h)
        self.min_distance = int(WATERSHED_DEFAULTS["min_distance"] if min_distance is None else min_distance)
        self.sigma = float(WATERSHED_DEFAULTS["sigma"] if sigma is None else sigma)
        self.connectivity = int(connectivity)
        if min_size is None:
            min_size = WATERSHED_MIN_SIZE if method == "watershed" else 0
        if min_size < 0:
            raise ValueError(f"min_size must be >= 0 pixels, got {min_size}.")
        self.min_size = int(min_size)
        if method == "watershed":
            watershed_instances(np.zeros((1, 1), bool), self.h, self.min_distance, self.sigma)  # validates

    @property
    def params(self) -> dict[str, float]:
        """The watershed parameters (empty for connected components)."""
        if self.method != "watershed":
            return {}
        return {"h": self.h, "min_distance": self.min_distance, "sigma": self.sigma}

    def __call__(self, mask: np.ndarray | torch.Tensor) -> np.ndarray:
        """(C, *spatial) binary mask -> int32 class instance stack (C, *spatial)."""
        return separate_instances(mask, self.method, self.connectivity, self.min_size, **self.params)

    def describe(self) -> str:
        """One line for the evaluation protocol (``metrics.json``)."""
        conn = f"{self.connectivity}-connectivity" if self.connectivity != 1 else "4-connectivity"
        small = f"; instances under {self.min_size} px dropped" if self.min_size > 1 else ""
        if self.method == "connected_components":
            return f"connected components ({conn}) of each class channel{small}"
        return (f"marker-controlled watershed of each class channel's distance transform (Gaussian sigma "
                f"{self.sigma:g} px; markers: h-maxima, h {self.h:g} px, min distance {self.min_distance} px; "
                f"holes under {WATERSHED_HOLE_AREA} px filled for the split; {conn}){small}")

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"InstanceSeparator({self.method!r}{extra}, min_size={self.min_size}, connectivity={self.connectivity})"

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | None) -> InstanceSeparator:
        """From a method name or a mapping ``{"method": ..., "h": ..., ...}`` (``None``: the default watershed)."""
        if config is None:
            return cls()
        if isinstance(config, str):
            return cls(config)
        return cls(**dict(config))


def instances_from_class_map(
    class_map: np.ndarray | torch.Tensor,
    num_classes: int = 4,
    separator: InstanceSeparator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """
    Nuclei of a class map (inference's output): one instance map with ids unique over all classes, and the class of
    each id.

    Args:
        class_map: (H, W) integer map, 0 background, 1..num_classes (e.g. ``logits_to_class_map``'s uint8 output).
        num_classes: number of classes.
        separator: the instance separation (default: ``InstanceSeparator()``, the tuned watershed).

    Returns:
        ``(instance_map, classes)``: int32 (H, W) with ids 1..n (0 background) and int64 (n,) with
        ``classes[i - 1]`` the class id of instance ``i``.
    """
    separator = InstanceSeparator() if separator is None else separator
    class_map = _to_numpy(class_map)
    masks = np.stack([class_map == c for c in range(1, num_classes + 1)])
    stack = separator(masks)
    out = np.zeros(class_map.shape, dtype=np.int32)
    classes: list[np.ndarray] = []
    offset = 0
    for c in range(num_classes):
        n = int(stack[c].max())
        if n:
            out = np.where(stack[c] > 0, stack[c] + offset, out)
            classes.append(np.full(n, c + 1, dtype=np.int64))
            offset += n
    return out, (np.concatenate(classes) if classes else np.zeros(0, dtype=np.int64))
