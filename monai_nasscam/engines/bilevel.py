"""First-order bilevel architecture search (docs/method.md §5) as a MONAI ``SupervisedTrainer``.

Weight steps minimise the training loss on training batches with the weight optimiser only; architecture
(alpha) steps minimise the loss on batches of a held-out architecture split with the alpha optimiser only.
No unrolled step. During a weight step the alphas do not require gradients, during an alpha step the weights
do not, so an alpha step back-propagates only from the loss down to the first attention cell and never
computes a weight gradient: it costs no more than a weight step.

Which steps an epoch makes (weight steps only during the ``warmup_epochs``; then ``schedule="iteration"``, the patent:
a weight and an alpha step every iteration, or ``schedule="epoch"``, the reference code: whole epochs of one kind) is
the rule of :mod:`monai_nasscam.engines.schedule`, which the alpha learning-rate budget and the input checks read too.

The architecture loader cycles on its own: when it is exhausted a new pass starts, independently of the
training loader's epochs. Its position (pass, batches drawn) is part of the engine state, so checkpoints carry
it.

Determinism: with ``seed`` set, every source of randomness is re-seeded from ``seed``, the distributed rank (so
that ranks draw different crops) and a position: the global RNGs before each step (dropout) from the iteration,
before each training epoch's loader iterator from the epoch, before each architecture pass from the pass number,
and the random transforms (and a ``Randomizable`` dataset) of a loader with ``num_workers == 0`` before each batch
it loads. Nothing random then depends on history, so a run resumed from a checkpoint taken at any iteration
boundary (the training loader skips the batches its epoch already used) makes exactly the steps of an
uninterrupted run. This holds with ``epoch_length`` equal to the length of the training loader (the default).
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, EventEnum, Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn, default_prepare_batch
from monai.data.utils import set_rnd
from monai.inferers import Inferer
from monai.transforms import Transform
from monai.utils import CommonKeys as Keys
from torch.optim.optimizer import Optimizer

from monai_nasscam.engines.schedule import check_schedule, steps_for_epoch
from monai_nasscam.networks.cell import arch_parameters, weight_parameters
from monai_nasscam.overrides import as_int

__all__ = ["BilevelSearchTrainer", "BilevelEvents", "ARCH_LOSS"]

#: key of the alpha-step loss in ``engine.state.output``.
ARCH_LOSS = "arch_loss"

# streams of the seed derivation (arbitrary, distinct constants)
_WEIGHT_STEP, _ARCH_STEP, _TRAIN_EPOCH, _TRAIN_FETCH, _ARCH_PASS, _ARCH_FETCH = range(101, 107)


class BilevelEvents(EventEnum):
    """Events of the alpha step, fired by :class:`BilevelSearchTrainer` (its weight step fires MONAI's
    ``IterationEvents``). ``engine.state.output[ARCH_LOSS]`` holds the alpha loss at ``ARCH_STEP_COMPLETED``."""

    ARCH_STEP_STARTED = "arch_step_started"
    ARCH_STEP_COMPLETED = "arch_step_completed"


def derive_seed(*values: int) -> int:
    """A 32-bit seed that depends on every value (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(v) % 2**63 for v in values]).generate_state(1)[0])


@contextlib.contextmanager
def _no_grad_for(params: Sequence[torch.nn.Parameter]):
    """Temporarily make ``params`` not require gradients (autograd then skips their gradient computation)."""
    previous = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, previous):
            p.requires_grad_(flag)


class _SkipFirst:
    """An iterable over ``loader`` whose iterators start after the first ``count`` batches (eagerly skipped)."""

    def __init__(self, loader: Iterable, count: int) -> None:
        self.loader = loader
        self.count = count

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        it = iter(self.loader)
        for _ in range(self.count):
            next(it)
        return it


class BilevelSearchTrainer(SupervisedTrainer):
    """A ``SupervisedTrainer`` that alternates weight and architecture steps (first-order DARTS).

    ``optimizer`` must hold only the network's weight parameters and ``arch_optimizer`` only its alphas
    (``network.weight_parameters()`` / ``network.arch_parameters()``); overlapping optimisers are rejected. A
    ``DistributedDataParallel`` network needs ``find_unused_parameters=True`` (each step leaves the other group of
    parameters without gradients).
    ``engine.state.output`` holds the weight step's image, label, prediction and loss; after an alpha step also
    ``ARCH_LOSS`` (in alpha-only iterations ``Keys.LOSS`` is the alpha loss and image/label/pred are the
    architecture batch's). MONAI's ``IterationEvents`` FORWARD/LOSS/BACKWARD_COMPLETED fire in weight steps,
    :class:`BilevelEvents` around alpha steps, ``MODEL_COMPLETED`` once per iteration.

    Args:
        device: the device to train on.
        max_epochs: total number of epochs, warm-up included.
        train_data_loader: batches for the weight steps.
        network: a searchable network (e.g. ``NASSCAMUNet`` without genotype).
        optimizer: the weight optimiser.
        loss_function: loss of the weight steps (and of the alpha steps unless ``arch_loss_function``).
        arch_data_loader: batches of the held-out architecture split for the alpha steps; cycled on its own.
        arch_optimizer: the alpha optimiser.
        warmup_epochs: leading epochs with weight steps only.
        schedule: a name of :data:`~monai_nasscam.engines.schedule.SCHEDULES`: ``"iteration"`` (weight step and
            alpha step every iteration) or ``"epoch"`` (whole epochs of one kind, see ``epoch_cycle``).
        epoch_cycle: with ``schedule="epoch"``, epoch ``e`` (0-based) trains the weights when
            ``e % epoch_cycle == 0`` and the alphas otherwise (3, the reference code's 1:2).
        arch_loss_function: loss of the alpha steps; default ``loss_function``.
        arch_accumulation: architecture batches per alpha step (>= 1): each alpha step averages the alpha
            gradients of this many consecutive batches of ``arch_data_loader`` before one ``arch_optimizer`` step,
            so its gradient noise falls by about ``sqrt(arch_accumulation)`` at that many times the cost of an
            alpha step; the number of alpha steps (and the alpha learning-rate budget) is unchanged.
        seed: make the run reproducible and resumable step for step (see the module docstring); ``None``
            leaves the random generators alone.
        amp: automatic mixed precision; only on CUDA devices (ignored with a warning elsewhere).

    The other arguments are those of :class:`monai.engines.SupervisedTrainer`.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable,
        arch_data_loader: Iterable,
        arch_optimizer: Optimizer,
        warmup_epochs: int = 0,
        schedule: str = "iteration",
        epoch_cycle: int = 3,
        arch_loss_function: Callable | None = None,
        arch_accumulation: int = 1,
        seed: int | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        inferer: Inferer | None = None,
        postprocessing: Transform | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        check_schedule(schedule)
        accumulation = as_int(arch_accumulation, "arch_accumulation", 1)
        if int(warmup_epochs) < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        if int(epoch_cycle) < 2:
            raise ValueError(f"epoch_cycle must be >= 2 (one weight epoch, then alpha epochs), got {epoch_cycle}.")
        device = torch.device(device)
        if amp and device.type != "cuda":
            warnings.warn(f"amp=True needs a CUDA device; training in full precision on {device}.")
            amp = False
        self._check_optimizers(network, optimizer, arch_optimizer)
        event_names = list(event_names or []) + [BilevelEvents]
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            inferer=inferer,
            postprocessing=postprocessing,
            key_train_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            train_handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            optim_set_to_none=True,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.arch_data_loader = arch_data_loader
        self.arch_accumulation = accumulation
        self.arch_optimizer = arch_optimizer
        self.arch_loss_function = loss_function if arch_loss_function is None else arch_loss_function
        self.warmup_epochs = int(warmup_epochs)
        self.schedule = schedule
        self.epoch_cycle = int(epoch_cycle)
        self.seed = None if seed is None else int(seed)
        self.arch_scaler: Any = None
        self._arch_params = arch_parameters(network)
        self._weight_params = weight_parameters(network)
        self._arch_iter: Iterator | None = None
        # position of the architecture stream, saved with the engine state
        self.state.arch_pass = 0
        self.state.arch_draws = 0
        for key in ("arch_pass", "arch_draws"):
            if key not in self.state_dict_user_keys:
                self.state_dict_user_keys.append(key)
        self.add_event_handler(Events.STARTED, self._on_started)
        self.add_event_handler(Events.EPOCH_STARTED, self._on_epoch_started)
        self.add_event_handler(Events.GET_BATCH_STARTED, self._on_get_batch_started)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch_completed)

    @staticmethod
    def _check_optimizers(network: torch.nn.Module, optimizer: Optimizer, arch_optimizer: Optimizer) -> None:
        if isinstance(network, torch.nn.parallel.DistributedDataParallel) and not network.find_unused_parameters:
            raise ValueError(
                "wrap the search network in DistributedDataParallel(..., find_unused_parameters=True): weight steps "
                "leave the alphas without gradients and alpha steps the weights."
            )
        arch = {id(p) for p in arch_parameters(network)}
        if not arch:
            raise ValueError(
                f"{type(network).__name__} has no architecture parameters: build the searchable network (no genotype, "
                "a NAS attention)."
            )
        w_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        a_ids = {id(p) for g in arch_optimizer.param_groups for p in g["params"]}
        if w_ids & arch:
            raise ValueError("the weight optimizer holds architecture parameters; build it on network.weight_parameters().")
        if a_ids - arch:
            raise ValueError("arch_optimizer holds non-architecture parameters; build it on network.arch_parameters().")
        if not a_ids:
            raise ValueError("arch_optimizer holds no parameters; build it on network.arch_parameters().")

    def steps_for_epoch(self, epoch: int) -> tuple[bool, bool]:
        """``(weight steps, alpha steps)`` made in (1-based) ``epoch``
        (:func:`~monai_nasscam.engines.schedule.steps_for_epoch`)."""
        return steps_for_epoch(epoch, self.warmup_epochs, self.schedule, self.epoch_cycle)

    def run(self) -> None:  # type: ignore[override]
        self.arch_scaler = torch.amp.GradScaler("cuda") if self.amp else None
        super().run()

    # -- reproducibility ------------------------------------------------------------------------------------
    def _reseed_globals(self, *position: int) -> None:
        if self.seed is None:
            return
        s = derive_seed(self.seed, self.state.rank, *position)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)

    def _reseed_transforms(self, loader: Any, *position: int) -> None:
        """Re-seed the randomness of a loader that loads in this process (``num_workers == 0``): the dataset's own
        (a ``Randomizable`` dataset such as ``ClassBalancedCropDataset`` draws its crops) and its transforms'."""
        if self.seed is None or getattr(loader, "num_workers", 0) != 0:
            return
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            return
        seed = derive_seed(self.seed, self.state.rank, *position)
        if hasattr(dataset, "set_random_state"):
            dataset.set_random_state(seed=seed % 2**32)
        transform = getattr(dataset, "transform", None)
        if transform is not None:
            set_rnd(transform, derive_seed(seed, 1))

    def _on_started(self, engine: Engine) -> None:
        self._arch_iter = None  # (re)opened at the saved position by the next alpha step
        if self.state.iteration == 0:
            self.state.arch_pass = 0
            self.state.arch_draws = 0

    def _on_epoch_started(self, engine: Engine) -> None:
        self._reseed_globals(_TRAIN_EPOCH, self.state.epoch)
        length = self.state.epoch_length
        done = self.state.iteration % length if length else 0
        if done and self.seed is not None:  # resumed inside an epoch: skip the batches it already used
            self.state.dataloader = _SkipFirst(self.data_loader, done)

    def _on_get_batch_started(self, engine: Engine) -> None:
        self._reseed_transforms(self.data_loader, _TRAIN_FETCH, self.state.iteration + 1)

    def _on_epoch_completed(self, engine: Engine) -> None:
        if isinstance(self.state.dataloader, _SkipFirst):
            self.state.dataloader = self.data_loader

    # -- the architecture stream ----------------------------------------------------------------------------
    def _open_arch_pass(self, index: int, skip: int) -> Iterator:
        self._reseed_globals(_ARCH_PASS, index)
        sampler = getattr(self.arch_data_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(index)
        it = iter(self.arch_data_loader)
        for i in range(skip):
            self._reseed_transforms(self.arch_data_loader, _ARCH_FETCH, index, i)
            try:
                next(it)
            except StopIteration:
                raise RuntimeError(
                    f"the architecture data loader has fewer than {skip} batches; it must not change between a "
                    "checkpoint and its resumption."
                ) from None
        return it

    def next_arch_batch(self) -> Any:
        """The next batch of the architecture loader, starting a new pass when the current one is exhausted."""
        state = self.state
        if self._arch_iter is None:
            self._arch_iter = self._open_arch_pass(state.arch_pass, state.arch_draws)
        for attempt in range(2):
            self._reseed_transforms(self.arch_data_loader, _ARCH_FETCH, state.arch_pass, state.arch_draws)
            try:
                batch = next(self._arch_iter)
            except StopIteration:
                if attempt:
                    break
                state.arch_pass += 1
                state.arch_draws = 0
                self._arch_iter = self._open_arch_pass(state.arch_pass, 0)
                continue
            state.arch_draws += 1
            return batch
        raise RuntimeError("the architecture data loader yields no batches; check the architecture split.")

    # -- one iteration ----------------------------------------------------------------------------------------
    def _prepare(self, batchdata: Any) -> tuple:
        batch = self.prepare_batch(batchdata, self.state.device, self.non_blocking, **self.to_kwargs)
        if len(batch) == 2:
            return batch[0], batch[1], (), {}
        return batch

    def _forward_loss(self, inputs, targets, args, kwargs, loss_function: Callable, fire: bool) -> torch.Tensor:
        out = self.state.output
        out[Keys.PRED] = self.inferer(inputs, self.network, *args, **kwargs)
        if fire:
            self.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = loss_function(out[Keys.PRED], targets).mean()
        out[Keys.LOSS] = loss
        if fire:
            self.fire_event(IterationEvents.LOSS_COMPLETED)
        return loss

    def _optimise(self, loss: torch.Tensor, optimizer: Optimizer, scaler: Any, fire: bool) -> None:
        self._backward(loss, scaler)
        if fire:
            self.fire_event(IterationEvents.BACKWARD_COMPLETED)
        self._step(optimizer, scaler)

    @staticmethod
    def _backward(loss: torch.Tensor, scaler: Any) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    @staticmethod
    def _step(optimizer: Optimizer, scaler: Any) -> None:
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def _autocast(self):
        return torch.autocast("cuda", **self.amp_kwargs) if self.amp else contextlib.nullcontext()

    def weight_step(self, batchdata: Any) -> torch.Tensor:
        """One step of the weight optimiser on ``batchdata``; alphas get no gradient. Returns the loss."""
        self._reseed_globals(_WEIGHT_STEP, self.state.iteration)
        inputs, targets, args, kwargs = self._prepare(batchdata)
        self.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        self.network.train()
        with _no_grad_for(self._arch_params):
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                loss = self._forward_loss(inputs, targets, args, kwargs, self.loss_function, fire=True)
            self._optimise(loss, self.optimizer, self.scaler, fire=True)
        return loss.detach()

    def arch_step(self, batchdata: Any, replace_output: bool = False) -> torch.Tensor:
        """One step of the alpha optimiser on ``batchdata`` (and the next ``arch_accumulation - 1`` architecture
        batches, gradients averaged); weights get no gradient. Returns the loss (the mean over those batches)."""
        self._reseed_globals(_ARCH_STEP, self.state.iteration)
        inputs, targets, args, kwargs = self._prepare(batchdata)
        kept = self.state.output
        self.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        self.fire_event(BilevelEvents.ARCH_STEP_STARTED)
        self.network.train()
        n = self.arch_accumulation
        total = 0.0
        with _no_grad_for(self._weight_params):
            self.arch_optimizer.zero_grad(set_to_none=True)
            for k in range(n):
                if k:
                    inputs, targets, args, kwargs = self._prepare(self.next_arch_batch())
                    self.state.output.update({Keys.IMAGE: inputs, Keys.LABEL: targets})
                with self._autocast():
                    loss = self._forward_loss(inputs, targets, args, kwargs, self.arch_loss_function, fire=False)
                self._backward(loss / n, self.arch_scaler)
                total = total + loss.detach() / n
            self._step(self.arch_optimizer, self.arch_scaler)
        loss = total
        self.state.output[Keys.LOSS] = loss
        if not replace_output and kept is not None:
            self.state.output = kept
        self.state.output[ARCH_LOSS] = loss
        self.fire_event(BilevelEvents.ARCH_STEP_COMPLETED)
        return loss

    def _iteration(self, engine: Any, batchdata: Any) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        train_weights, train_arch = self.steps_for_epoch(self.state.epoch)
        self.state.output = None
        if train_weights:
            self.weight_step(batchdata)
        if train_arch:
            self.arch_step(self.next_arch_batch(), replace_output=not train_weights)
        self.fire_event(IterationEvents.MODEL_COMPLETED)
        return self.state.output
