"""The search's schedule: which steps (weight, alpha) each epoch makes, in one place.

:class:`~monai_nasscam.engines.BilevelSearchTrainer` makes its steps by :func:`steps_for_epoch`, the alpha learning-rate
budget counts its alpha steps by :func:`count_alpha_steps` and the search's input checks accept the names of
:data:`SCHEDULES` (:func:`check_schedule`), so a schedule is added by one entry in :data:`SCHEDULES`.

Epochs are counted 0-based here, ``e = engine.state.epoch - 1``; every epoch ``e < warmup_epochs`` makes weight steps
only (the alphas never move), whatever the schedule. After the warm-up:

- ``"iteration"`` (the patent, default): every iteration makes a weight step on its training batch, then an alpha
  step on the next batch of the architecture loader;
- ``"epoch"`` (the reference code): epochs with ``e % epoch_cycle == 0`` make weight steps only, the others alpha
  steps only (one alpha step per iteration, on the architecture loader; the training batch of that iteration is not
  used).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = [
    "Schedule",
    "SCHEDULES",
    "check_schedule",
    "steps_for_epoch",
    "count_alpha_steps",
    "ALPHA_TRAVEL",
    "budget_arch_learning_rate",
]


class Schedule(NamedTuple):
    """A search schedule.

    Attributes:
        steps: ``steps(e, epoch_cycle)`` -> ``(weight steps, alpha steps)`` of the 0-based epoch ``e`` after the
            warm-up (``e >= warmup_epochs``).
        origin: where it comes from, in the messages (e.g. ``"the patent"``).
    """

    steps: Callable[[int, int], tuple[bool, bool]]
    origin: str


def _every_iteration(e: int, epoch_cycle: int) -> tuple[bool, bool]:
    return True, True


def _alternating_epochs(e: int, epoch_cycle: int) -> tuple[bool, bool]:
    weights = e % epoch_cycle == 0
    return weights, not weights


#: the schedules by name (search.yaml's ``schedule``), the default first.
SCHEDULES: dict[str, Schedule] = {
    "iteration": Schedule(_every_iteration, "the patent"),
    "epoch": Schedule(_alternating_epochs, "the reference code"),
}


def check_schedule(schedule: Any) -> str:
    """``schedule`` if it names one of :data:`SCHEDULES`, else a ``ValueError`` naming them."""
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        choices = " or ".join(f"{name!r} ({entry.origin})" for name, entry in SCHEDULES.items())
        raise ValueError(f"schedule must be {choices}, got {schedule!r}.")
    return schedule


def steps_for_epoch(epoch: int, warmup_epochs: int, schedule: str = "iteration", epoch_cycle: int = 3) -> tuple[bool, bool]:
    """``(weight steps, alpha steps)`` made in the (1-based) ``epoch`` of a search with ``warmup_epochs`` weight-only
    epochs first and the given ``schedule`` (``epoch_cycle``: see the module docstring)."""
    e = int(epoch) - 1
    if e < int(warmup_epochs):
        return True, False
    return SCHEDULES[check_schedule(schedule)].steps(e, int(epoch_cycle))


def count_alpha_steps(
    epochs: int, warmup_epochs: int, iterations_per_epoch: int, schedule: str = "iteration", epoch_cycle: int = 3
) -> int:
    """The number of alpha (architecture) steps a search makes: one per iteration of every epoch whose
    :func:`steps_for_epoch` makes alpha steps, as :class:`~monai_nasscam.engines.BilevelSearchTrainer` schedules
    them."""
    alpha_epochs = sum(steps_for_epoch(epoch, warmup_epochs, schedule, epoch_cycle)[1] for epoch in range(1, int(epochs) + 1))
    return alpha_epochs * int(iterations_per_epoch)


#: how far (in logits) Adam may move each alpha over a whole search when ``arch_learning_rate`` is ``auto``:
#: Adam's step is about ``lr`` whatever the gradient's scale, so ``lr * alpha steps`` bounds the travel. Measured on
#: the demo's search (48 alpha steps, 3 seeds, docs/search.md "Budget-aware alpha learning rate"): a travel of 3
#: leaves 31-60 % of the edges decided, 10 decides 67-96 %; the patent's 1e-3 (travel 0.05) none.
ALPHA_TRAVEL = 10.0


def budget_arch_learning_rate(
    arch_learning_rate: Any, alpha_steps: int, travel: float = ALPHA_TRAVEL, floor: float = 1e-3, resuming: bool = False
) -> float:
    """The alpha learning rate of a search: ``arch_learning_rate`` itself when it is a number, and for ``"auto"``
    the budget-aware rate ``max(floor, travel / alpha_steps)``, which lets the alphas travel about ``travel`` logits
    over the whole search, however few alpha steps it makes (the patent's budget, about 10^5 alpha steps, keeps its
    1e-3). ``resuming``: the run continues a checkpoint, whose alpha optimiser keeps the rate it was started with
    (the value returned here only builds the optimiser before its state is loaded), and the log says so.

    Raises:
        ValueError: ``arch_learning_rate`` is neither a positive number nor ``"auto"``.
    """
    if isinstance(arch_learning_rate, str) and arch_learning_rate.strip().lower() == "auto":
        value = max(float(floor), float(travel) / max(1, int(alpha_steps)))
        if resuming:
            logging.getLogger(__name__).info("arch_learning_rate auto: resuming, the checkpoint's alpha learning rate is kept")
            return value
        logging.getLogger(__name__).info(
            f"arch_learning_rate auto: {value:.4g} for {int(alpha_steps)} alpha steps (max(1e-3, {travel:g} / steps))"
        )
        return value
    try:
        value = float(arch_learning_rate)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"arch_learning_rate must be a positive number or 'auto', got {arch_learning_rate!r}.")
    return value
