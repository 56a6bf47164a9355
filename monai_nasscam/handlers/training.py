"""Handlers of the retraining workflow (``bundle/configs/train.yaml``): the best-model saver whose tracking survives a
resume (its file holds CPU tensors: :class:`CPUStateDict`), a per-epoch re-seeding for reproducible resumed runs, and a progress bar showing the loss.

They follow MONAI's handler habits: small classes configured in ``__init__`` and hooked to an engine by
``attach(engine)``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.handlers import CheckpointSaver, from_engine

from monai_nasscam.engines.bilevel import derive_seed
from monai_nasscam.networks.utils import unwrap_model
from monai_nasscam.serialization import to_cpu

__all__ = ["BestModelSaver", "CPUStateDict", "EpochReseeder", "TrainProgressBar"]

_EPOCH_STREAM = 201  # seed stream of EpochReseeder (distinct from the search trainer's)


class CPUStateDict:
    """A view of ``obj`` (a module, an optimiser, anything with ``state_dict`` / ``load_state_dict``) whose
    ``state_dict()`` holds CPU tensors: give it to a saver (ignite's ``Checkpoint``, MONAI's ``CheckpointSaver``) so
    that the file loads on any machine. A ``DataParallel`` / ``DistributedDataParallel`` module is saved without
    its ``module.`` prefix. ``load_state_dict`` loads into ``obj`` (which moves the tensors to its own device).

    Args:
        obj: the object saved.
    """

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def _target(self) -> Any:
        return unwrap_model(self.obj) if isinstance(self.obj, torch.nn.Module) else self.obj

    def state_dict(self) -> Any:
        return to_cpu(self._target().state_dict())

    def load_state_dict(self, state_dict: Mapping, *args: Any, **kwargs: Any) -> Any:
        return self._target().load_state_dict(state_dict, *args, **kwargs)


class BestModelSaver(CheckpointSaver):
    """Save the network's state dict to ``save_dir/filename`` whenever the evaluator's key metric improves.

    A MONAI ``CheckpointSaver`` (``save_key_metric=True``, one file) whose file is a plain state dict of CPU
    tensors, whatever device the network trains on (MONAI's
    ``CheckpointLoader`` loads it with ``weights_only=True``; ``torch.load`` + ``load_state_dict`` too). Unlike the
    plain saver it has ``state_dict()`` / ``load_state_dict()``: put it in the resumable checkpoint
    (:class:`~monai_nasscam.handlers.ResumableCheckpointSaver`'s ``save_dict``, ``CheckpointLoader``'s ``load_dict``) so
    that a resumed run only replaces the file with a better model than the best one before the interruption, and
    the evaluator's ``best_metric`` / ``best_metric_epoch`` are restored.

    Args:
        save_dir: folder of the file (created).
        network: the network whose weights are saved.
        filename: the file name (overwritten at each improvement).
        key_metric_name: metric to compare (default: the evaluator's key metric).
        name: logger name (default: the engine's logger).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        network: nn.Module,
        filename: str = "model.pt",
        key_metric_name: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            save_dir=os.fspath(save_dir),
            save_dict={"model": CPUStateDict(network)},  # CPU tensors: the file loads on any machine
            name=name,
            save_key_metric=True,
            key_metric_name=key_metric_name,
            key_metric_n_saved=1,
            key_metric_filename=filename,
        )
        self.filename = filename
        self._engine: Engine | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        self._engine = engine

    def state_dict(self) -> dict[str, Any]:
        """The key-metric tracking list and the evaluator's best metric."""
        saved = self._key_metric_checkpoint.state_dict()["_saved"] if self._key_metric_checkpoint else []
        out: dict[str, Any] = {"_saved": [(float(p), str(f)) for p, f in saved]}
        state = getattr(self._engine, "state", None)
        if state is not None and getattr(state, "best_metric", None) is not None:
            out["best_metric"] = float(state.best_metric)
            out["best_metric_epoch"] = int(state.best_metric_epoch)
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        if self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.load_state_dict({"_saved": [tuple(i) for i in state_dict.get("_saved", [])]})
        state = getattr(self._engine, "state", None)
        if state is not None and "best_metric" in state_dict:
            state.best_metric = state_dict["best_metric"]
            state.best_metric_epoch = state_dict["best_metric_epoch"]


class EpochReseeder:
    """At the start of every epoch, seed Python, NumPy and torch, and the random transforms of ``data_loader``'s
    dataset, from ``seed`` and the epoch number.

    Nothing random then depends on earlier epochs, so a run resumed from a checkpoint taken at the end of an epoch
    (what :class:`~monai_nasscam.handlers.ResumableCheckpointSaver` writes every epoch) draws the same crops,
    augmentations and dropout masks as an uninterrupted run (exactly so with ``num_workers=0``; with worker
    processes MONAI's ``worker_init_fn`` seeds the workers from the re-seeded torch generator).

    Args:
        seed: the run's seed; ``None`` disables the handler.
        data_loader: the training loader (its ``dataset`` is re-seeded when it is ``Randomizable``).
    """

    def __init__(self, seed: int | None, data_loader: Any = None) -> None:
        self.seed = None if seed is None else int(seed)
        self.data_loader = data_loader

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.seed is None:
            return
        s = derive_seed(self.seed, _EPOCH_STREAM, engine.state.epoch)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        dataset = getattr(self.data_loader, "dataset", None)
        if dataset is not None:
            set_rnd(dataset, derive_seed(self.seed, _EPOCH_STREAM + 1, engine.state.epoch))


class TrainProgressBar:
    """A tqdm progress bar of each epoch (ignite's ``ProgressBar``) showing the iteration's loss.

    Args:
        output_transform: extracts the loss from ``engine.state.output`` (default: MONAI ``from_engine(["loss"],
            first=True)``, which works with decollated trainer outputs).
        persist: keep each epoch's bar on screen when the epoch ends.
        kwargs: further ``tqdm`` arguments (e.g. ``disable=True``, ``ncols=100``).
    """

    def __init__(self, output_transform: Callable | None = None, persist: bool = False, **kwargs: Any) -> None:
        self.output_transform = output_transform or from_engine(["loss"], first=True)
        self.persist = persist
        self.kwargs = kwargs

    def _loss(self, output: Any) -> dict[str, float]:
        value = self.output_transform(output)
        return {"loss": float(value.item() if isinstance(value, torch.Tensor) else value)}

    def attach(self, engine: Engine) -> None:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=self.persist, **self.kwargs).attach(engine, output_transform=self._loss)
