"""Seeded, disjoint train / validation / test splits, by patient (default) or by image (the paper's preset).

Both can be stratified by class presence: given the classes annotated in each image, the split is re-drawn
(seeded) until every split holds every class of the set, so a rare class (MoNuSAC's neutrophils and
macrophages are 2 % of the nuclei each) is neither missing from training nor unmeasurable on test.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial

import numpy as np

__all__ = [
    "SPLITS",
    "PAPER_SPLIT",
    "split_counts",
    "split_by_image",
    "split_by_patient",
    "stratify_by_classes",
    "make_split",
]

SPLITS = ("training", "validation", "test")
#: the paper's random image split of the 209 MoNuSAC training images
PAPER_SPLIT = (120, 39, 50)


def split_counts(n: int, proportions: Sequence[int] = PAPER_SPLIT) -> tuple[int, int, int]:
    """Image counts per split: exactly ``proportions`` for 209 images, proportional otherwise.

    Each split gets at least one image when ``n >= 3``.
    """
    total = sum(proportions)
    if n == total:
        return tuple(int(p) for p in proportions)  # type: ignore[return-value]
    n_val = int(round(n * proportions[1] / total))
    n_test = int(round(n * proportions[2] / total))
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    n_val, n_test = min(n_val, n), min(n_test, max(n - n_val, 0))
    return n - n_val - n_test, n_val, n_test


def split_by_image(names: Sequence[str], seed: int = 0, proportions: Sequence[int] = PAPER_SPLIT) -> dict[str, str]:
    """Random image-level split (the paper's: 120 / 39 / 50 of 209 images).

    Args:
        names: unique image names; the result does not depend on their order.
        seed: random seed.
        proportions: relative sizes of training / validation / test.

    Returns:
        name -> one of :data:`SPLITS`.
    """
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise ValueError("image names must be unique")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_train, n_val, _ = split_counts(len(ordered), proportions)
    out = {}
    for rank, idx in enumerate(perm):
        out[ordered[idx]] = SPLITS[0] if rank < n_train else SPLITS[1] if rank < n_train + n_val else SPLITS[2]
    return out


def split_by_patient(
    names: Sequence[str], patients: Sequence[str], seed: int = 0, proportions: Sequence[int] = PAPER_SPLIT
) -> dict[str, str]:
    """Random patient-level split: all images of a patient go to the same split.

    Patients are shuffled (seeded) and each is given to the split furthest below its target image count,
    every split receiving at least one patient when there are 3 or more. With fewer than 3 patients a
    patient-level split is impossible: a warning is issued and the image-level split is used.

    Args:
        names: unique image names.
        patients: the patient of each image.
        seed: random seed.
        proportions: relative sizes of training / validation / test (in images).

    Returns:
        name -> one of :data:`SPLITS`.
    """
    if len(names) != len(patients):
        raise ValueError("names and patients must have the same length")
    by_patient: dict[str, list[str]] = defaultdict(list)
    for name, patient in zip(names, patients):
        by_patient[patient].append(name)
    if len(by_patient) < 3:
        warnings.warn(
            f"only {len(by_patient)} patient(s): a patient-level split is impossible, using an image-level split",
            stacklevel=2,
        )
        return split_by_image(names, seed, proportions)
    order = sorted(by_patient)
    perm = np.random.default_rng(seed).permutation(len(order))
    total = float(sum(proportions))
    targets = [len(names) * p / total for p in proportions]
    counts = [0, 0, 0]
    out = {}
    for rank, idx in enumerate(perm):
        patient = order[idx]
        remaining = len(order) - rank
        empty = [s for s in range(3) if counts[s] == 0 and targets[s] > 0]
        if empty and remaining <= len(empty):
            choice = max(empty, key=lambda s: (targets[s], -s))
        else:
            choice = max(range(3), key=lambda s: (targets[s] - counts[s], -s))
        counts[choice] += len(by_patient[patient])
        for name in by_patient[patient]:
            out[name] = SPLITS[choice]
    return out


def stratify_by_classes(
    draw: Callable[[int], dict[str, str]], classes: Mapping[str, Iterable[str]], seed: int = 0, tries: int = 200
) -> dict[str, str]:
    """Redraw a split until every non-empty split holds every class of the set.

    Draw ``k`` uses the seed ``seed`` for ``k = 0`` (so a split that already covers every class is kept
    unchanged) and ``seed + 1000003 * k`` after. When no draw covers everything, the one covering the most
    (split, class) pairs is returned with a warning naming what is missing.

    Args:
        draw: seed -> split (name -> one of :data:`SPLITS`), e.g. ``partial(split_by_patient, names, patients)``.
        classes: image name -> the classes annotated in it.
        seed: the seed of the first draw.
        tries: the number of draws at most.
    """
    present = {name: set(c) for name, c in classes.items()}
    wanted = set().union(*present.values()) if present else set()
    best, best_missing = None, None
    for k in range(tries):
        split = draw(seed if k == 0 else seed + 1000003 * k)
        held: dict[str, set[str]] = defaultdict(set)
        for name, s in split.items():
            held[s] |= present.get(name, set())
        missing = {s: sorted(wanted - held[s]) for s in SPLITS if s in split.values() and wanted - held[s]}
        if not missing:
            return split
        if best_missing is None or sum(map(len, missing.values())) < sum(map(len, best_missing.values())):
            best, best_missing = split, missing
    text = "; ".join(f"{s} lacks {', '.join(c)}" for s, c in best_missing.items())  # type: ignore[union-attr]
    warnings.warn(f"no split of {tries} draws holds every class in every split: {text}", stacklevel=2)
    return best  # type: ignore[return-value]


def make_split(
    names: Sequence[str],
    patients: Sequence[str],
    mode: str = "patient",
    seed: int = 0,
    classes: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, str]:
    """Dispatch to :func:`split_by_patient` (``mode="patient"``) or :func:`split_by_image` (``mode="image"``).

    With ``classes`` (image name -> annotated classes), the split is stratified by class presence
    (:func:`stratify_by_classes`).
    """
    if mode == "patient":
        draw = partial(split_by_patient, names, patients)
    elif mode == "image":
        draw = partial(split_by_image, names)
    else:
        raise ValueError(f"unknown split mode {mode!r}; choose 'patient' or 'image'.")
    return draw(seed) if classes is None else stratify_by_classes(draw, classes, seed)
