"""``nasscam prepare``: a MoNuSAC release -> stain-normalised PNGs, label maps, a split and ``datalist.json``.

Output (``PREP``, see docs/data.md §2)::

    PREP/datalist.json      decathlon-style: "labels", "training", "validation", "test"
    PREP/manifest.json      counts per split and class, the settings, the fitted stain reference, skipped files,
                            the source images' resolution (``resolution``: median microns per pixel, range, count)
    PREP/images/NAME.png    RGB, stain-normalised
    PREP/labels/NAME.png    uint8 class map 0-4 (0 on fully transparent pixels: nothing scanned there)
    PREP/instances/NAME.tif int32 instance map (one id per nucleus)
    PREP/ambiguous/NAME.png uint8 mask of the "Ambiguous" layer (test release only)

The run is atomic: everything is written to a hidden temporary folder next to ``PREP`` that is renamed
into place at the end, and removed on any failure or interruption.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from ..fileio import staged_dir
from .classes import CLASS_IDS, CLASS_NAMES, labels_dict, parse_remap
from .errors import DataError
from .imagescope import read_imagescope_xml
from .monusac import MoNuSACCase, load_case, scan_monusac
from .slide import read_mpp, read_rgb
from .split import SPLITS, make_split
from .stain import IdentityNormalizer, create_stain_normalizer, tissue_fraction

__all__ = ["prepare_dataset", "write_png", "write_instance_tiff", "MANIFEST_FORMAT"]

logger = logging.getLogger(__name__)
MANIFEST_FORMAT = "nasscam-prepared"


def write_png(path: str, array: np.ndarray, compress_level: int = 1) -> None:
    """Write a uint8 ``(H, W)`` or ``(H, W, 3)`` array as PNG (fast compression)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=compress_level)


def write_instance_tiff(path: str, array: np.ndarray) -> None:
    """Write an instance map as a deflate-compressed int32 TIFF."""
    import tifffile

    tifffile.imwrite(path, np.ascontiguousarray(array, dtype=np.int32), compression="zlib", compressionargs={"level": 1})


def _process_case(case: MoNuSACCase, tmp: str, normalizer: Any, remap: dict[int, int], tif_bgr: bool) -> dict:
    """Convert one case into files under ``tmp``; returns its datalist entry, statistics and notes."""
    image, masks, annotations = load_case(case, remap=remap, tif_bgr=tif_bgr)
    transparent_note = masks.transparent_note
    # skipped / unusable regions (not the clipped ones: they are used), reported on the console per file
    region_notes = list(annotations.warnings) + [w for w in masks.warnings if "clipped" not in w]
    notes = list(region_notes) + ([transparent_note] if transparent_note else [])
    image, stain_note = normalizer.apply(image)
    if stain_note:
        notes.append(stain_note)
    entry = {
        "image": f"images/{case.name}.png",
        "label": f"labels/{case.name}.png",
        "instance": f"instances/{case.name}.tif",
        "name": case.name,
        "patient": case.patient,
    }
    write_png(os.path.join(tmp, entry["image"]), image)
    write_png(os.path.join(tmp, entry["label"]), masks.class_map)
    write_instance_tiff(os.path.join(tmp, entry["instance"]), masks.instance_map)
    if masks.ambiguous is not None:
        entry["ambiguous"] = f"ambiguous/{case.name}.png"
        write_png(os.path.join(tmp, entry["ambiguous"]), masks.ambiguous)
    visible = np.unique(masks.instance_map)
    visible = visible[visible > 0]
    nuclei = np.bincount(masks.instance_classes[visible], minlength=len(CLASS_NAMES) + 1)
    pixels = np.bincount(masks.class_map.ravel(), minlength=len(CLASS_NAMES) + 1)
    return {
        "entry": entry,
        "nuclei": nuclei.tolist(),
        "pixels": pixels.tolist(),
        "shape": list(image.shape[:2]),
        "notes": notes,
        "xml": case.xml,
        "image": case.image,
        "regions": len(annotations.regions) + annotations.skipped,
        "skipped_regions": annotations.skipped + masks.unusable,
        "region_notes": region_notes,
        "stain_note": stain_note,
        "transparent_note": transparent_note,
        # the source image's resolution (its file's metadata, else the XML's MicronsPerPixel)
        "mpp": read_mpp(case.image) or annotations.microns_per_pixel,
    }


def _resolution(records: list[dict]) -> dict[str, Any]:
    """The source images' resolution for the manifest: ``mpp`` (median microns per pixel, ``None`` when no image
    records one), ``min``, ``max``, and how many images record one (``known``) or not (``unknown``)."""
    values = [float(r["mpp"]) for r in records if r.get("mpp")]
    return {
        "mpp": round(float(np.median(values)), 6) if values else None,
        "min": round(min(values), 6) if values else None,
        "max": round(max(values), 6) if values else None,
        "known": len(values),
        "unknown": len(records) - len(values),
    }


def _report_notes(rec: dict) -> None:
    """Log one converted case's notes: skipped regions, annotation cleared on transparent pixels and a skipped
    stain normalisation as warnings (console)."""
    if rec["skipped_regions"]:
        logger.warning(
            "%s: %d of %d region(s) skipped or unusable: %s",
            rec["xml"],
            rec["skipped_regions"],
            rec["regions"],
            " | ".join(rec["region_notes"]),
        )
    if rec.get("transparent_note"):
        logger.warning("%s: %s", rec["entry"]["name"], rec["transparent_note"])
    if rec["stain_note"]:
        logger.warning("%s: %s", rec["image"], rec["stain_note"])


def _process_case_safe(args: tuple) -> tuple[dict | None, DataError | None]:
    try:
        return _process_case(*args), None
    except DataError as e:
        return None, e


def _fit_reference(
    normalizer: Any, cases: list[MoNuSACCase], n_reference: int, tif_bgr: bool
) -> tuple[list[str], list[DataError]]:
    """Fit ``normalizer`` on the most tissue-rich of ``cases``; returns the reference names and read errors."""
    if isinstance(normalizer, IdentityNormalizer) or not cases:
        return [], []
    scored, errors = [], []
    for case in cases:
        try:
            img = read_rgb(case.image, swap_rb=tif_bgr and not case.image.lower().endswith(".svs"))
        except DataError as e:
            errors.append(e)
            continue
        scored.append((tissue_fraction(img), case.name, case))
    scored.sort(key=lambda t: (-t[0], t[1]))
    chosen = [c for _, _, c in scored[: max(1, n_reference)]]
    images = [read_rgb(c.image, swap_rb=tif_bgr and not c.image.lower().endswith(".svs")) for c in chosen]
    try:
        normalizer.fit(images)
    except (ValueError, np.linalg.LinAlgError) as e:
        logger.warning("stain reference could not be fitted (%s); using the default reference", e)
        return [], errors
    return [c.name for c in chosen], errors


def _summary(records: list[dict], split_of: dict[str, str], mapping: dict[int, int]) -> dict[str, Any]:
    """Images, patients, nuclei and pixels per split and class (class names after the remap)."""
    counts: dict[str, Any] = {}
    for split in (*SPLITS, "total"):
        recs = [r for r in records if split == "total" or split_of[r["entry"]["name"]] == split]
        nuclei = np.sum([r["nuclei"] for r in recs], axis=0) if recs else np.zeros(len(CLASS_NAMES) + 1, int)
        pixels = np.sum([r["pixels"] for r in recs], axis=0) if recs else np.zeros(len(CLASS_NAMES) + 1, int)
        counts[split] = {
            "images": len(recs),
            "patients": len({r["entry"]["patient"] for r in recs}),
            "nuclei": {},
            "pixels": {"background": int(pixels[0])},
        }
        for name, cid in CLASS_IDS.items():
            cid = mapping[cid]
            counts[split]["nuclei"][name] = int(nuclei[cid])
            counts[split]["pixels"][name] = int(pixels[cid])
    return counts


def _annotated_classes(case: MoNuSACCase) -> set[str]:
    """The nucleus classes annotated in a case's XML (empty when it cannot be read: reported later)."""
    try:
        return {r.label for r in read_imagescope_xml(case.xml).regions if r.label in CLASS_NAMES and not r.negative}
    except Exception:
        return set()


def prepare_dataset(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "patient",
    seed: int = 0,
    stratify: bool = True,
    stain: str = "macenko",
    on_error: str = "skip",
    overwrite: bool = False,
    remap: str | Mapping[int, int] | list[str] | None = None,
    tif_bgr: bool = False,
    workers: int | None = None,
    n_reference: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert a MoNuSAC release (or a synthetic set in the same layout) into a prepared dataset.

    Args:
        data_dir: the release folder (patient folders with ``.svs``/``.tif`` + ``.xml``).
        out_dir: the output folder ``PREP``; must not exist unless ``overwrite``.
        split: ``"patient"`` (default; no patient in two splits) or ``"image"`` (the paper's 120/39/50).
        seed: seed of the split (and of the reference pixel subsampling).
        stratify: redraw the split until every split holds every annotated class (when possible; see
            :func:`~monai_nasscam.data.split.stratify_by_classes`).
        stain: ``"macenko"`` (default), ``"reinhard"`` or ``"none"``; the reference is fitted on the
            ``n_reference`` most tissue-rich training images.
        on_error: ``"skip"`` (report a bad file and go on) or ``"fail"`` (stop at the first bad file).
        overwrite: replace an existing ``out_dir``.
        remap: class-order remap (``"hovernet"`` or pairs such as ``["3:4", "4:3"]``).
        tif_bgr: ``.tif`` images (used when no ``.svs`` exists) store B, G, R.
        workers: processes for the conversion (default: number of CPUs, at most 8; 0 = in-process).
        n_reference: number of reference tiles for the stain normalisation.
        progress: show a progress bar.

    Returns:
        the manifest (also written to ``out_dir/manifest.json``).

    Raises:
        DataError: naming the file or folder at fault (missing data folder, existing output, bad input
            with ``on_error="fail"``, nothing usable).
        ValueError: invalid options.
    """
    from tqdm import tqdm

    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if split not in ("patient", "image"):
        raise ValueError(f"split must be 'patient' or 'image', got {split!r}")
    mapping = parse_remap(remap)
    normalizer = create_stain_normalizer(stain)
    data_dir, out_dir = os.path.abspath(os.fspath(data_dir)), os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not overwrite:
        raise DataError(out_dir, "output folder already exists (use --overwrite to replace it)")

    cases, problems = scan_monusac(data_dir)
    skipped: list[DataError] = []

    def handle(err: DataError) -> None:
        if on_error == "fail":
            raise err
        logger.warning("skipped %s", err)
        skipped.append(err)

    for err in problems:
        handle(err)
    classes = {c.name: _annotated_classes(c) for c in cases} if stratify else None
    split_of = make_split([c.name for c in cases], [c.patient for c in cases], mode=split, seed=seed, classes=classes)

    with staged_dir(out_dir) as tmp:
        train_cases = [c for c in cases if split_of[c.name] == "training"] or cases
        reference, ref_errors = _fit_reference(normalizer, train_cases, n_reference, tif_bgr)
        bad = {e.path for e in ref_errors}
        for err in ref_errors:
            handle(err)
        todo = [c for c in cases if c.image not in bad]
        for sub in ("images", "labels", "instances", "ambiguous"):
            os.makedirs(os.path.join(tmp, sub))
        args = [(c, tmp, normalizer, mapping, tif_bgr) for c in todo]
        n_workers = min(os.cpu_count() or 1, 8) if workers is None else int(workers)
        records: list[dict] = []
        bar = tqdm(total=len(args), desc="prepare", unit="image", disable=not progress, leave=False)
        try:
            if n_workers > 1 and len(args) > 1:
                with ProcessPoolExecutor(max_workers=min(n_workers, len(args))) as pool:
                    for rec, err in pool.map(_process_case_safe, args, chunksize=1):
                        bar.update()
                        if err is not None:
                            handle(err)
                        else:
                            records.append(rec)
            else:
                for a in args:
                    rec, err = _process_case_safe(a)
                    bar.update()
                    if err is not None:
                        handle(err)
                    else:
                        records.append(rec)
        finally:
            bar.close()
        if not records:
            raise DataError(data_dir, "no usable annotated image (every case was skipped)")
        for rec in records:
            _report_notes(rec)
        if not os.listdir(os.path.join(tmp, "ambiguous")):
            os.rmdir(os.path.join(tmp, "ambiguous"))

        datalist: dict[str, Any] = {"labels": labels_dict(mapping)}
        for s in SPLITS:
            datalist[s] = [r["entry"] for r in records if split_of[r["entry"]["name"]] == s]
            if not datalist[s]:
                logger.warning("the %s split is empty", s)
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": 1,
            "labels": datalist["labels"],
            "settings": {
                "data_dir": data_dir,
                "split": split,
                "seed": int(seed),
                "stratify": bool(stratify),
                "stain": {**normalizer.to_dict(), "reference_images": reference},
                "remap": {str(k): int(v) for k, v in mapping.items()},
                "on_error": on_error,
                "tif_bgr": bool(tif_bgr),
            },
            "counts": _summary(records, split_of, mapping),
            "resolution": _resolution(records),
            "skipped": [{"file": e.path, "problem": e.problem} for e in skipped],
            "skipped_regions": {r["entry"]["name"]: r["skipped_regions"] for r in records if r["skipped_regions"]},
            "notes": [{"name": r["entry"]["name"], "note": n} for r in records for n in r["notes"]],
        }
        with open(os.path.join(tmp, "datalist.json"), "w") as f:
            json.dump(datalist, f, indent=2)
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
        if os.path.exists(out_dir) and not overwrite:  # created meanwhile
            raise DataError(out_dir, "output folder already exists (use --overwrite to replace it)")
    return manifest

