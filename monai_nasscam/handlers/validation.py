"""SearchValidationHandler: MONAI's ``ValidationHandler`` that also validates a search's final epoch."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import ValidationHandler

__all__ = ["SearchValidationHandler"]


class SearchValidationHandler(ValidationHandler):
    """MONAI's ``ValidationHandler`` (run the validator every ``interval`` epochs of the trainer, at the trainer's
    epoch) that also validates the trainer's final epoch (``state.max_epochs``) when ``interval`` does not divide
    it, so the last epochs of a search are never left out of the choice of the best genotype. The final validation
    runs at the end of that epoch, before the epoch's checkpoint
    (:class:`~monai_nasscam.handlers.ResumableCheckpointSaver` registers its handler when the run starts), so the
    checkpoint holds its result. Attach to the trainer on every rank (a sharded validation needs all of them).

    Args:
        validator: the evaluator.
        interval: validate every N epochs (and at the final epoch).
        epoch_level: only ``True`` (epoch-level validation) is supported.
        exec_at_start: also validate before training (see ``ValidationHandler``).

    Raises:
        ValueError: ``epoch_level`` is false.
    """

    def __init__(self, validator: Any = None, interval: int = 1, epoch_level: bool = True, exec_at_start: bool = False) -> None:
        if not epoch_level:
            raise ValueError("SearchValidationHandler validates at epoch level only (epoch_level=True).")
        super().__init__(interval=interval, validator=validator, epoch_level=True, exec_at_start=exec_at_start)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._final)

    def _final(self, engine: Engine) -> None:
        epoch, last = int(engine.state.epoch), engine.state.max_epochs
        if last is not None and epoch == int(last) and epoch % self.interval != 0:
            self(engine)
