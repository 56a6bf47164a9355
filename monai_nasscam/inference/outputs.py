"""Files written per image and per run by the inference workflow: class map PNG and NIfTI, colour overlay, tables."""

from __future__ import annotations

import csv
import io
import json
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_nasscam.data.classes import CLASS_NAMES
from monai_nasscam.fileio import atomic_write_text
from monai_nasscam.inference.nuclei import CLASS_COLORS

__all__ = ["write_class_map_png", "save_class_map_nifti", "write_overlay", "write_counts_csv", "write_summary"]


def write_class_map_png(path: str, class_map: np.ndarray) -> None:
    """The class map as an 8-bit grey PNG (values 0-4), written atomically."""
    from PIL import Image

    tmp = path + ".tmp"
    Image.fromarray(np.ascontiguousarray(class_map, dtype=np.uint8)).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def save_class_map_nifti(
    saver: Any, class_map: np.ndarray, source: str, mpp: float | None = None, stream: bool = False
) -> str | None:
    """Save the class map with a MONAI ``SaveImage`` (NIfTI by default); returns the file written.

    The array is stored in MONAI's default reading order for 2-D images, ``(x, y)`` = ``(column, row)``, so
    viewers and ``LoadImage`` show it as the PNG; the pixel spacing is the slide's microns per pixel, in mm,
    when known (1 otherwise). The saver needs ``squeeze_end_dims=False`` (MONAI 1.6 cannot write a squeezed
    single-channel 2-D image without resampling); the file's shape is then ``(W, H, 1, 1)``.

    With ``stream`` (slides), the same file -- path from the saver's folder layout, same shape, dtype and affine --
    is written by ``nibabel`` straight from ``class_map`` (e.g. a memory map): ``SaveImage`` holds several
    full-size copies of the image while writing, about 5 bytes per pixel, 2 GB for a 20000 x 20000 slide.
    """
    import torch
    from monai.data import MetaTensor

    spacing = (mpp / 1000.0) if mpp else 1.0
    affine = torch.diag(torch.tensor([spacing, spacing, 1.0, 1.0], dtype=torch.float64))
    layout = getattr(saver, "folder_layout", None)
    if stream and layout is not None:
        import nibabel as nib

        path = str(layout.filename(subject=source))
        data = np.asarray(class_map).T[..., None, None]  # (x, y, 1, 1): Fortran order of the (row, col) map, no copy
        image = nib.Nifti1Image(data, affine.numpy())
        image.set_data_dtype(np.uint8)
        image.header.set_slope_inter(1.0, 0.0)
        nib.save(image, path + ".tmp.nii.gz")
        os.replace(path + ".tmp.nii.gz", path)
        return path
    data = torch.from_numpy(np.ascontiguousarray(np.asarray(class_map, dtype=np.uint8).T))[None]
    saver(MetaTensor(data, affine=affine, meta={"filename_or_obj": source}))
    return str(layout.filename(subject=source)) if layout is not None else None


def _blend(image: np.ndarray, class_map: np.ndarray, alpha: float) -> np.ndarray:
    """The image with each class's pixels tinted by its colour and outlined in it (uint8, touched pixels only)."""
    from scipy import ndimage

    out = np.array(image, dtype=np.uint8, copy=True)
    colours = np.zeros((len(CLASS_NAMES) + 1, 3), np.float32)
    for cid, rgb in CLASS_COLORS.items():
        colours[cid] = rgb
    fg = class_map > 0
    # solid outlines: foreground pixels with another value in their 3 x 3 neighbourhood
    edge = fg & (ndimage.grey_erosion(class_map, size=3) != ndimage.grey_dilation(class_map, size=3))
    ids = class_map[fg]
    out[fg] = np.clip((1 - alpha) * out[fg].astype(np.float32) + alpha * colours[ids] + 0.5, 0, 255).astype(np.uint8)
    out[edge] = colours[class_map[edge]].astype(np.uint8)
    return out


def _legend_strip(width: int, counts: Mapping[int, int], label: str) -> np.ndarray:
    """A white strip ``width`` pixels wide with the class colours, names and counts (rendered by matplotlib)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    dpi = 100
    fig_w = max(width, 300) / dpi
    ncol = 4 if fig_w >= 7.5 else 2
    label = "\n".join(textwrap.wrap(label, width=max(20, int(fig_w * dpi / 8)), break_on_hyphens=False)) or label
    fig_h = 0.3 + 0.25 * (4 // ncol) + 0.17 * (label.count("\n") + 1) + 0.08
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    handles = [
        Patch(facecolor=np.asarray(CLASS_COLORS[c]) / 255.0, edgecolor="black", label=f"{name}: {int(counts.get(c, 0))}")
        for c, name in enumerate(CLASS_NAMES, start=1)
    ]
    fig.legend(handles=handles, loc="center", ncol=ncol, frameon=False, fontsize=9, columnspacing=1.2,
               title=label, title_fontsize=9)
    fig.canvas.draw()
    strip = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return strip


def write_overlay(
    path: str,
    image: np.ndarray,
    class_map: np.ndarray,
    counts: Mapping[int, int],
    title: str = "",
    alpha: float = 0.45,
    note: str = "",
) -> None:
    """A PNG of the image with the classes in colour (tinted, with outlines) above a legend with the counts.

    ``image`` and ``class_map`` have the same ``(h, w)`` (a slide's overview and its class map subsampled alike).
    The image is written at its own resolution (no resampling); only the legend is drawn by matplotlib.
    """
    from PIL import Image

    blended = _blend(image, class_map, alpha)
    h, w = blended.shape[:2]
    label = title + (f"  ({note})" if note else "")
    strip = _legend_strip(w, counts, (label + " -- nuclei per class") if label else "nuclei per class")
    width = max(w, strip.shape[1])
    canvas = np.full((h + strip.shape[0], width, 3), 255, np.uint8)
    canvas[:h, (width - w) // 2 : (width - w) // 2 + w] = blended
    canvas[h:, (width - strip.shape[1]) // 2 : (width - strip.shape[1]) // 2 + strip.shape[1]] = strip
    tmp = path + ".tmp.png"
    Image.fromarray(canvas).save(tmp, format="PNG", compress_level=3)
    os.replace(tmp, path)


COUNT_FIELDS = ["image", "name", "status", "height", "width", *CLASS_NAMES, "total", "seconds", "message"]


def _write_csv(path: str, fieldnames: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """A CSV with a header, written atomically; keys not in ``fieldnames`` are left out."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def write_counts_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per input image: nuclei per class (``status`` ``ok`` or ``error`` with the ``message``)."""
    _write_csv(path, COUNT_FIELDS, rows)


def write_summary(csv_path: str, json_path: str, rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> dict:
    """Totals per class over the images that succeeded (CSV, one row per class) and ``summary.json``."""
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
    _write_csv(csv_path, list(table[0]), table)
    summary = {
        "images": len(rows),
        "succeeded": len(ok),
        "failed": [{"image": r["image"], "message": r.get("message", "")} for r in rows if r.get("status") != "ok"],
        "nuclei": {t["class"]: t["nuclei"] for t in table},
        "total_nuclei": int(sum(t["nuclei"] for t in table)),
        "settings": dict(settings),
    }
    atomic_write_text(json_path, json.dumps(summary, indent=2, default=str))
    return summary
