"""``nasscam prepare``: a MoNuSAC release, or an image + mask folder (:mod:`~monai_nasscam.data.mask_folder`) ->
stain-normalised PNGs, label maps, a split and ``datalist.json``.

Output (``PREP``, see docs/data.md §2)::

    PREP/datalist.json      decathlon-style: "labels", "training", "validation", "test"
    PREP/manifest.json      counts per split and class, the settings, the fitted stain reference, skipped files,
                            the source images' resolution (``resolution``: median microns per pixel, range, count),
                            the patients of each split
    PREP/images/NAME.png    RGB, stain-normalised
    PREP/labels/NAME.png    uint8 class map 0-4 (0 on fully transparent pixels: nothing scanned there)
    PREP/instances/NAME.tif int32 instance map (one id per nucleus)
    PREP/ambiguous/NAME.png uint8 mask of the pixels left out of training and scoring: the "Ambiguous" layer (test
                            release), or the unmatched / ``ignore`` pixels of a mask folder

The run is atomic: everything is written to a hidden temporary folder next to ``PREP`` that is renamed
into place at the end, and removed on any failure or interruption.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from ..fileio import staged_dir
from .classes import CLASS_IDS, CLASS_NAMES, labels_dict, parse_remap
from ..errors import DataError
from .imagescope import read_imagescope_xml
from .mask_folder import (
    FolderCase,
    MaskFolderSpec,
    folder_case_classes,
    is_mask_folder,
    load_folder_case,
    scan_mask_folder,
)
from .monusac import MoNuSACCase, load_case, scan_monusac
from .slide import read_mpp, read_rgb
from .split import SPLITS, make_split
from .stain import IdentityNormalizer, create_stain_normalizer, tissue_fraction
from .tiff_format import PLAUSIBLE_MPP

__all__ = ["prepare_dataset", "write_png", "write_instance_tiff", "MANIFEST_FORMAT"]

logger = logging.getLogger(__name__)
MANIFEST_FORMAT = "nasscam-prepared"
#: what an empty split means for the workflows (said by ``prepare`` and kept in the manifest's ``split_notes``)
_EMPTY_SPLIT = {
    "training": "search and training will refuse this dataset; it can still be evaluated or inferred on",
    "validation": "search and training will refuse this dataset (validation keeps the best model); give more "
                  "images or patients, or use --split image",
    "test": "evaluation will refuse this dataset; search and training can run",
}


def write_png(path: str, array: np.ndarray, compress_level: int = 1) -> None:
    """Write a uint8 ``(H, W)`` or ``(H, W, 3)`` array as PNG (fast compression)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=compress_level)


def write_instance_tiff(path: str, array: np.ndarray) -> None:
    """Write an instance map as a deflate-compressed int32 TIFF."""
    import tifffile

    tifffile.imwrite(path, np.ascontiguousarray(array, dtype=np.int32), compression="zlib", compressionargs={"level": 1})


def _load(case: MoNuSACCase | FolderCase, remap: dict[int, int], tif_bgr: bool, spec: MaskFolderSpec | None
          ) -> tuple[np.ndarray, Any, dict]:
    """Read one case of either layout: ``(image, masks, facts)``, the facts being its annotation file (``source``),
    region counts and notes (XML), specks removed (mask folders) and the resolution its files record."""
    if isinstance(case, FolderCase):
        image, masks = load_folder_case(case, spec, remap=remap, tif_bgr=tif_bgr)  # type: ignore[arg-type]
        return image, masks, {"source": case.mask, "regions": 0, "skipped_regions": 0, "region_notes": [],
                              "mask_notes": list(masks.warnings), "specks": masks.unusable,
                              "mpp": read_mpp(case.image)}
    image, masks, annotations = load_case(case, remap=remap, tif_bgr=tif_bgr)
    # skipped / unusable regions (not the clipped ones: they are used), reported on the console per file
    region_notes = list(annotations.warnings) + [w for w in masks.warnings if "clipped" not in w]
    return image, masks, {
        "source": case.xml,
        "regions": len(annotations.regions) + annotations.skipped,
        "skipped_regions": annotations.skipped + masks.unusable,
        "region_notes": region_notes,
        "mask_notes": [],
        "specks": 0,
        # the source image's resolution (its file's metadata, else the XML's MicronsPerPixel)
        "mpp": read_mpp(case.image) or annotations.microns_per_pixel,
    }


def _process_case(
    case: MoNuSACCase | FolderCase, tmp: str, normalizer: Any, remap: dict[int, int], tif_bgr: bool,
    spec: MaskFolderSpec | None = None, mpp: float | None = None,
) -> dict:
    """Convert one case into files under ``tmp``; returns its datalist entry, statistics and notes."""
    image, masks, facts = _load(case, remap, tif_bgr, spec)
    transparent_note = masks.transparent_note
    notes = facts["region_notes"] + facts["mask_notes"] + ([transparent_note] if transparent_note else [])
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
    if spec is not None and spec.semantic_only:
        entry["semantic_only"] = True
    visible = np.unique(masks.instance_map)
    visible = visible[visible > 0]
    nuclei = np.bincount(masks.instance_classes[visible], minlength=len(CLASS_NAMES) + 1)
    pixels = np.bincount(masks.class_map.ravel(), minlength=len(CLASS_NAMES) + 1)
    return {
        "entry": entry,
        "nuclei": nuclei.tolist(),
        "pixels": pixels.tolist(),
        "left_out": 0 if masks.ambiguous is None else int(np.count_nonzero(masks.ambiguous)),
        "shape": list(image.shape[:2]),
        "notes": notes,
        "source": facts["source"],
        "image": case.image,
        "regions": facts["regions"],
        "skipped_regions": facts["skipped_regions"],
        "region_notes": facts["region_notes"],
        "mask_notes": facts["mask_notes"],
        "specks": facts["specks"],
        "stain_note": stain_note,
        "transparent_note": transparent_note,
        # the resolution the files record, else the --mpp given for images without one
        "mpp": facts["mpp"] or mpp,
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
    stain normalisation as warnings (console); a mask's pixels left out, specks removed and EXIF turns at INFO
    (``-v``; the totals are in the manifest's counts)."""
    if rec["skipped_regions"]:
        logger.warning(
            "%s: %d of %d region(s) skipped or unusable: %s",
            rec["source"],
            rec["skipped_regions"],
            rec["regions"],
            " | ".join(rec["region_notes"]),
        )
    for note in rec["mask_notes"]:
        logger.info("%s: %s", rec["source"], note)
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
    normalizer: Any, cases: list[MoNuSACCase], n_reference: int, tif_bgr: bool, fail: bool = False
) -> tuple[list[str], list[DataError]]:
    """Fit ``normalizer`` on the most tissue-rich of ``cases``; returns the reference names and read errors (with
    ``fail``, the first read error is raised)."""
    if isinstance(normalizer, IdentityNormalizer) or not cases:
        return [], []
    scored, errors = [], []
    for case in cases:
        try:
            img = read_rgb(case.image, swap_rb=tif_bgr and not case.image.lower().endswith(".svs"))
        except DataError as e:
            if fail:
                raise
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
    """Images, patients, nuclei and pixels per split and class (class names after the remap), the pixels left out
    of training and scoring (the ``ambiguous`` masks) and the specks removed (mask folders)."""
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
            "left_out_pixels": int(sum(r["left_out"] for r in recs)),
            "specks_removed": int(sum(r["specks"] for r in recs)),
        }
        for name, cid in CLASS_IDS.items():
            cid = mapping[cid]
            counts[split]["nuclei"][name] = int(nuclei[cid])
            counts[split]["pixels"][name] = int(pixels[cid])
    return counts


def _check_nuclei(records: list[dict], split_of: dict[str, str], data_dir: str, masks: MaskFolderSpec | None) -> None:
    """Refuse a dataset whose training images hold no nucleus pixel: training would have nothing to learn (and
    fails on it later).

    Raises:
        DataError: naming ``data_dir``: no image holds an annotated nucleus (masks read the wrong way, e.g. class
            indices given to ``--palette``), or only validation / test images do.
    """
    def annotated(r: dict) -> bool:
        return sum(r["pixels"][1:]) > 0

    if not any(annotated(r) for r in records):
        hint = ("do the masks hold what the mask option says? --palette reads colours, --index-masks class indices "
                "(--mask-values)" if masks is not None else "the annotation files hold no nucleus of a known class")
        raise DataError(data_dir, f"no annotated nucleus in any image: the label maps of all {len(records)} image(s) "
                                  f"read are background ({hint})")
    training = [r for r in records if split_of[r["entry"]["name"]] == "training"]
    if training and not any(annotated(r) for r in training):
        raise DataError(data_dir, "no annotated nucleus in any training image (only in validation or test): training "
                                  "would have nothing to learn; draw another split (--seed) or annotate more images")


def _annotated_classes(case: MoNuSACCase, strict: bool = False) -> set[str]:
    """The nucleus classes annotated in a case's XML (empty when it cannot be read: reported later; with ``strict``
    its :class:`DataError` is raised)."""
    try:
        return {r.label for r in read_imagescope_xml(case.xml).regions if r.label in CLASS_NAMES and not r.negative}
    except DataError:
        if strict:
            raise
        return set()
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
    masks: MaskFolderSpec | None = None,
    mpp: float | None = None,
) -> dict[str, Any]:
    """Convert a MoNuSAC release (or a synthetic set in the same layout), or an image + mask folder, into a prepared
    dataset.

    Args:
        data_dir: the release folder (patient folders with ``.svs``/``.tif`` + ``.xml``), or with ``masks`` a folder
            holding ``images/NAME.ext`` and ``masks/NAME.ext`` (:mod:`~monai_nasscam.data.mask_folder`).
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
        masks: how to read an image + mask folder (``None``: ``data_dir`` is a MoNuSAC release). Colour and index
            masks are semantic: their entries get ``"semantic_only": true``.
        mpp: microns per pixel of the images whose files record none (PNG, JPEG, untagged TIFF), for the manifest's
            ``resolution`` (the training resolution inference rescales to).

    Returns:
        the manifest (also written to ``out_dir/manifest.json``).

    Raises:
        DataError: naming the file or folder at fault (missing data folder, existing output, bad input
            with ``on_error="fail"``, nothing usable, no annotated nucleus in any (training) image, an image + mask
            folder without ``masks``).
        ValueError: invalid options (``mpp`` outside the plausible range of a microscope).
    """
    from tqdm import tqdm

    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if split not in ("patient", "image"):
        raise ValueError(f"split must be 'patient' or 'image', got {split!r}")
    if mpp is not None and not PLAUSIBLE_MPP[0] <= float(mpp) <= PLAUSIBLE_MPP[1]:
        raise ValueError(f"--mpp must be microns per pixel in {PLAUSIBLE_MPP[0]}-{PLAUSIBLE_MPP[1]} (0.25 at 40x), "
                         f"got {mpp}")
    mapping = parse_remap(remap)
    normalizer = create_stain_normalizer(stain)
    data_dir, out_dir = os.path.abspath(os.fspath(data_dir)), os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):  # never replaced, even with --overwrite
        raise DataError(out_dir, "is a file, not a folder: --out-dir is the folder to write the prepared set into "
                                 "(--overwrite replaces a folder, never a file)")
    if os.path.exists(out_dir) and not overwrite:
        raise DataError(out_dir, "output folder already exists (use --overwrite to replace it)")
    if masks is None and is_mask_folder(data_dir):
        raise DataError(data_dir, "an image + mask folder (images/, masks/): say how its masks give classes with "
                                  "--palette (colours), --index-masks or --instance-masks")

    if masks is None:
        cases, problems = scan_monusac(data_dir)
    else:
        cases, problems = scan_mask_folder(data_dir, masks.mask_suffix, masks.patient_regex)
    skipped: list[DataError] = []

    def handle(err: DataError) -> None:
        if on_error == "fail":
            raise err
        logger.warning("skipped %s", err)
        skipped.append(err)

    for err in problems:
        handle(err)
    fail = on_error == "fail"
    if stratify:  # with "fail", the first bad annotation or mask file stops the run here, before the split
        classes = {c.name: _annotated_classes(c, fail) if masks is None else folder_case_classes(c, masks, fail)
                   for c in cases}
    else:
        classes = None
    # the split's warnings (a class missing from a split, too few patients) are shown once the dataset is converted,
    # not for a run that a bad file ends
    with warnings.catch_warnings(record=True) as split_warnings:
        warnings.simplefilter("always")
        split_of = make_split([c.name for c in cases], [c.patient for c in cases], mode=split, seed=seed,
                              classes=classes)

    with staged_dir(out_dir) as tmp:
        train_cases = [c for c in cases if split_of[c.name] == "training"] or cases
        reference, ref_errors = _fit_reference(normalizer, train_cases, n_reference, tif_bgr, fail)
        bad = {e.path for e in ref_errors}
        for err in ref_errors:
            handle(err)
        todo = [c for c in cases if c.image not in bad]
        for sub in ("images", "labels", "instances", "ambiguous"):
            os.makedirs(os.path.join(tmp, sub))
        args = [(c, tmp, normalizer, mapping, tif_bgr, masks, mpp) for c in todo]
        n_workers = min(os.cpu_count() or 1, 8) if workers is None else int(workers)
        records: list[dict] = []
        bar = tqdm(total=len(args), desc="prepare", unit="image", disable=not progress, leave=False)
        try:
            if n_workers > 1 and len(args) > 1:
                with ProcessPoolExecutor(max_workers=min(n_workers, len(args))) as pool:
                    try:
                        for rec, err in pool.map(_process_case_safe, args, chunksize=1):
                            bar.update()
                            if err is not None:
                                handle(err)
                            else:
                                records.append(rec)
                    except BaseException:  # "fail" (or Ctrl-C): the cases not started are not read
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise
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
        _check_nuclei(records, split_of, data_dir, masks)
        split_notes = [str(w.message) for w in split_warnings]
        for rec in records:
            _report_notes(rec)
        if not os.listdir(os.path.join(tmp, "ambiguous")):
            os.rmdir(os.path.join(tmp, "ambiguous"))

        datalist: dict[str, Any] = {"labels": labels_dict(mapping)}
        for s in SPLITS:
            datalist[s] = [r["entry"] for r in records if split_of[r["entry"]["name"]] == s]
            if not datalist[s]:
                split_notes.append(f"the {s} split is empty: {_EMPTY_SPLIT[s]}")
        for note in split_notes:
            logger.warning("%s", note)
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
                "mpp": None if mpp is None else float(mpp),
                **({} if masks is None else {"masks": masks.to_dict()}),
            },
            "patients": {s: sorted({e["patient"] for e in datalist[s]}) for s in SPLITS},
            "counts": _summary(records, split_of, mapping),
            "resolution": _resolution(records),
            "skipped": [{"file": e.path, "problem": e.problem} for e in skipped],
            "skipped_regions": {r["entry"]["name"]: r["skipped_regions"] for r in records if r["skipped_regions"]},
            "notes": [{"name": r["entry"]["name"], "note": n} for r in records for n in r["notes"]],
            "split_notes": split_notes,
        }
        with open(os.path.join(tmp, "datalist.json"), "w") as f:
            json.dump(datalist, f, indent=2)
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
        if os.path.exists(out_dir) and not overwrite:  # created meanwhile
            raise DataError(out_dir, "output folder already exists (use --overwrite to replace it)")
    return manifest

