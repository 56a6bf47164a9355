"""Data-parallel training across processes (``torchrun``) without ``DistributedDataParallel``.

The bundle's ``multi_gpu_search.yaml`` and ``multi_gpu_train.yaml`` use these pieces; every rank runs the same
engine on its own share of the crops and the ranks stay identical step for step:

- :func:`broadcast_module`: rank 0's parameters and buffers to every rank, once, when the network is built;
- :func:`average_gradients`: an optimizer *step pre-hook* that all-reduces (averages) the gradients of that
  optimizer's parameters just before it steps, flattened into one buffer per device and dtype. The search's two
  optimisers each get one, so an alpha step averages only alpha gradients and a weight step only weight gradients,
  and every rank then applies the same Adam update to the same values;
- :class:`DistributedStepSync`: an engine handler that registers those hooks, averages the BatchNorm running
  statistics after every iteration (each rank normalised its own crops) and, under mixed precision, makes the
  gradient scalers skip a step on every rank when any rank found an inf/NaN;
- :func:`rank_seed`: a different seed per rank for the crops, augmentations and dropout (rank 0 keeps the run's
  seed, so ``--nproc_per_node=1`` repeats the single-process run).

Why not ``torch.nn.parallel.DistributedDataParallel``: DDP all-reduces in autograd hooks of the parameters it
registered at construction and expects the same set to require gradients in every backward pass (otherwise
``find_unused_parameters=True`` and a graph traversal per step). The first-order bilevel search toggles
``requires_grad`` between the two parameter groups at every step (weights frozen in alpha steps and the
reverse), runs two backward passes per iteration with two optimisers, and MONAI's / ignite's engines would see
a wrapped module (``module.`` prefixes in checkpoints, ``arch_parameters()`` hidden behind ``.module``). Averaging
at the optimiser step is exact for both kinds of step, keeps :class:`BilevelSearchTrainer`, MONAI's
``SupervisedTrainer``, checkpoints and genotype handlers unchanged, and costs one all-reduce per step of the
parameters that step updates (DDP would overlap it with the backward pass; on a single node the difference is
small next to the attention cells' convolutions).

Gradients are averaged, so with ``B`` crops per rank and ``N`` ranks a step is a step on the mean loss of
``N * B`` crops (the same convention as DDP); the learning rates are not rescaled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from ignite.engine import Engine, Events
from torch.nn.modules.batchnorm import _NormBase
from torch.optim.optimizer import Optimizer

from monai_nasscam.engines.bilevel import derive_seed

__all__ = [
    "DistributedStepSync",
    "SyncedGradScaler",
    "average_gradients",
    "average_norm_statistics",
    "broadcast_module",
    "check_distributed_split",
    "env_rank",
    "env_world_size",
    "init_distributed",
    "local_device",
    "quiet_other_ranks",
    "rank_seed",
]

_RANK_STREAM = 301  # seed stream of rank_seed (distinct from the trainers')
_HOOK_ATTR = "_nasscam_average_gradients_handle"


def env_rank() -> int:
    """This process's global rank from ``torchrun``'s ``RANK`` (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", 0))


def env_world_size() -> int:
    """Number of processes from ``torchrun``'s ``WORLD_SIZE`` (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(device: str | torch.device | None = None, backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` describes (``MASTER_ADDR``, ``RANK``, ``WORLD_SIZE`` ...) if not joined yet.

    Args:
        device: this rank's device; a CUDA device becomes the current one (NCCL needs it).
        backend: default ``"nccl"`` for a CUDA device, ``"gloo"`` otherwise.

    Returns:
        True when this call created the group.

    Raises:
        RuntimeError: not launched by ``torchrun`` (no ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` in the environment).
    """
    device = torch.device(device) if device is not None else local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return False
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"the multi-GPU configs must be launched by torchrun (missing {', '.join(missing)} in the environment): "
            "torchrun --nproc_per_node=N -m monai.bundle run --config_file \"['bundle/configs/train.yaml',"
            "'bundle/configs/search.yaml','bundle/configs/multi_gpu_search.yaml']\" ..."
        )
    dist.init_process_group(backend=backend or ("nccl" if device.type == "cuda" else "gloo"))
    return True


def quiet_other_ranks(level: int | str = logging.WARNING, loggers: Sequence[str] = ("", "ignite", "monai")) -> None:
    """On ranks > 0, raise the level of the root, ignite and MONAI loggers to ``level`` (warnings and errors of every
    rank still show; the engines' progress is logged once, by rank 0)."""
    if env_rank() == 0:
        return
    for name in loggers:
        logging.getLogger(name).setLevel(level)


def rank_seed(seed: int | None, rank: int | None = None) -> int | None:
    """The seed of ``rank`` (default this process's): ``seed`` itself on rank 0, a derived one elsewhere, so that
    every rank draws different crops, augmentations and dropout masks. ``None`` stays ``None``."""
    if seed is None:
        return None
    rank = env_rank() if rank is None else int(rank)
    return int(seed) if rank == 0 else derive_seed(int(seed), _RANK_STREAM, rank)


def check_distributed_split(num_images: int, split: str = "validation", world_size: int | None = None) -> None:
    """Raise a clear error when a split sharded across ranks (one share per rank, no padding) has fewer images than
    there are ranks: a rank would have nothing to evaluate.

    Raises:
        ValueError: ``num_images < world_size``.
    """
    world = env_world_size() if world_size is None else int(world_size)
    if int(num_images) < world:
        raise ValueError(
            f"the {split} split has {num_images} image(s) but {world} processes share it (one image per process at "
            f"least): run with --nproc_per_node={max(int(num_images), 1)} or fewer, or put more images in the split."
        )


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _require_group() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised: call init_distributed() (torchrun) first.")


def _groups(tensors: Iterable[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return groups


def _all_reduce_mean_(tensors: Sequence[torch.Tensor]) -> None:
    """Average ``tensors`` in place across ranks: one all-reduce per (device, dtype)."""
    world = _world()
    for group in _groups(tensors).values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def _optimizer_params(optimizer: Optimizer) -> list[torch.Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _average_optimizer_gradients(optimizer: Optimizer) -> None:
    params = _optimizer_params(optimizer)
    if not params or _world() == 1:
        return
    # which parameters have a gradient on any rank: those get one everywhere (zeros where a rank had none), the
    # others stay None on every rank (the optimiser skips them), so all ranks make the same update
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=params[0].device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    grads = []
    for p, flag in zip(params, has.tolist()):
        if not flag:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        elif p.grad.is_sparse:
            raise ValueError("average_gradients does not support sparse gradients.")
        grads.append(p.grad)
    if grads:
        with torch.no_grad():
            _all_reduce_mean_(grads)


def average_gradients(optimizer: Optimizer) -> Optimizer:
    """Make ``optimizer`` average its parameters' gradients across ranks before every ``step()``.

    A step pre-hook (``optimizer.register_step_pre_hook``), so it runs whoever calls ``step()`` (MONAI's trainers,
    :class:`BilevelSearchTrainer`'s weight and alpha steps, ``GradScaler.step`` after unscaling). Gradients are
    concatenated into one buffer per device and dtype and all-reduced once. A parameter whose gradient is None on
    some ranks gets zeros there when another rank has one; None on every rank stays None. Registering twice is a
    no-op.

    Returns:
        ``optimizer`` (so a config can wrap the optimiser it builds).

    Raises:
        RuntimeError: the process group is not initialised.
    """
    _require_group()
    if getattr(optimizer, _HOOK_ATTR, None) is None:
        handle = optimizer.register_step_pre_hook(lambda opt, args, kwargs: _average_optimizer_gradients(opt))
        setattr(optimizer, _HOOK_ATTR, handle)
    return optimizer


def broadcast_module(module: nn.Module, src: int = 0) -> nn.Module:
    """Copy rank ``src``'s parameters and buffers to every rank (in place); returns ``module``.

    Without an initialised process group (a single process) the module is returned unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return module
    tensors = [t for t in list(module.parameters()) + list(module.buffers())]
    with torch.no_grad():
        for group in _groups(tensors).values():
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            dist.broadcast(flat, src=src)
            offset = 0
            for t in group:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t))
                offset += n
    return module


def average_norm_statistics(module: nn.Module) -> None:
    """Average the running mean and variance of every BatchNorm-like layer of ``module`` across ranks (in place).

    Each rank's layers normalise its own crops in training mode and update their running statistics from them;
    averaging after every iteration keeps the evaluation-mode network identical on every rank (DDP instead copies
    rank 0's buffers at every forward pass). Layers without running statistics are left alone.
    """
    if _world() == 1:
        return
    stats = []
    for m in module.modules():
        if isinstance(m, _NormBase) and m.track_running_stats and m.running_mean is not None:
            stats += [m.running_mean, m.running_var]
    if stats:
        with torch.no_grad():
            _all_reduce_mean_(stats)


class SyncedGradScaler(torch.amp.GradScaler):
    """A ``GradScaler`` whose inf/NaN check is agreed across ranks: when any rank's unscaled gradients hold an
    inf/NaN, every rank skips the step and lowers its scale, so no rank waits in a gradient all-reduce that the
    others skipped and the scales stay equal."""

    def unscale_(self, optimizer: Optimizer) -> None:
        super().unscale_(optimizer)
        if _world() == 1:
            return
        state = self._per_optimizer_states[id(optimizer)]
        for found in state["found_inf_per_device"].values():
            dist.all_reduce(found, op=dist.ReduceOp.MAX)


class DistributedStepSync:
    """Keep every rank's engine in step: attach to the trainer (first in its handler list).

    On attach, :func:`average_gradients` is registered on each optimiser; when the run starts, the engine's gradient
    scalers (``scaler``, and ``arch_scaler`` of :class:`BilevelSearchTrainer`) become :class:`SyncedGradScaler`
    (mixed precision only); after every iteration the BatchNorm running statistics of ``network`` are averaged
    (:func:`average_norm_statistics`).

    Args:
        network: the trained network.
        optimizers: the optimisers whose gradients to average (e.g. ``[optimizer, arch_optimizer]``).
        sync_norm_statistics: average the BatchNorm running statistics after every iteration.
    """

    SCALERS = ("scaler", "arch_scaler")

    def __init__(
        self, network: nn.Module, optimizers: Optimizer | Sequence[Optimizer], sync_norm_statistics: bool = True
    ) -> None:
        self.network = network
        self.optimizers = [optimizers] if isinstance(optimizers, Optimizer) else list(optimizers)
        self.sync_norm_statistics = bool(sync_norm_statistics)

    def attach(self, engine: Engine) -> None:
        for optimizer in self.optimizers:
            average_gradients(optimizer)
        engine.add_event_handler(Events.STARTED, self._sync_scalers)
        if self.sync_norm_statistics:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._sync_statistics)

    def _sync_scalers(self, engine: Engine) -> None:
        for name in self.SCALERS:
            scaler = getattr(engine, name, None)
            if scaler is not None and not isinstance(scaler, SyncedGradScaler):
                setattr(engine, name, SyncedGradScaler(scaler._device))

    def _sync_statistics(self, engine: Any) -> None:
        average_norm_statistics(self.network)
