"""Entropy regularisation of the alphas for the alpha steps of a search (a published DARTS remedy)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.nn.modules.loss import _Loss

from monai_nasscam.networks.cell import arch_parameters
from monai_nasscam.networks.utils import unwrap_model

__all__ = ["AlphaEntropyLoss", "alpha_entropy"]


def alpha_entropy(network: nn.Module) -> torch.Tensor:
    """Mean normalised entropy of ``softmax(alpha)`` over every edge of every searchable cell of ``network``.

    Each edge's entropy ``-sum_o p_o ln p_o`` is divided by ``ln K`` (``K`` candidates), so 1 is a uniform edge and
    0 a one-hot one; a set of alphas shared by several cells counts once.

    Args:
        network: a supernet (or a ``DistributedDataParallel`` wrapping one).

    Returns:
        a differentiable float32 scalar in ``[0, 1]``.

    Raises:
        ValueError: ``network`` has no searchable cell.
    """
    alphas = arch_parameters(unwrap_model(network))
    if not alphas:
        raise ValueError("alpha entropy: the network has no searchable cell (no alphas).")
    values = []
    for alpha in alphas:
        log_p = alpha.float().log_softmax(dim=-1)
        values.append(-(log_p.exp() * log_p).sum(dim=-1) / math.log(alpha.shape[-1]))
    return torch.cat(values).mean()


class AlphaEntropyLoss(_Loss):
    """``loss(pred, target) + weight * alpha_entropy(network)``: the alpha steps' loss with an entropy penalty.

    Minimising the alphas' entropy pushes each edge towards one operation, so that the supernet that is searched is
    closer to the single-op network derived from it (the entropy constraint of Tian et al., "Discretization-Aware
    Architecture Search", 2020; Fair DARTS' zero-one loss, Chu et al., ECCV 2020, pursues the same aim for sigmoid
    weights). Near uniform alphas its gradient is near zero: it amplifies a preference, it does not create one.
    With ``weight = 0`` it is ``loss`` itself.
    Only the alpha steps use it (``BilevelSearchTrainer(arch_loss_function=...)``); the weight steps keep ``loss``.

    Args:
        loss: the task loss, called as ``loss(pred, target)``; its mean is taken (a scalar).
        network: the supernet whose alphas are penalised.
        weight: the penalty's weight, >= 0 (the normalised entropy is in ``[0, 1]``).

    Raises:
        ValueError: ``weight`` is negative or not finite.
    """

    def __init__(self, loss: Callable, network: nn.Module, weight: float = 0.0) -> None:
        super().__init__()
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"alpha_entropy_weight must be a finite number >= 0, got {weight!r}.")
        self.loss = loss
        self.network = network
        self.weight = float(weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = self.loss(pred, target).mean()
        if self.weight == 0.0:
            return value
        return value + self.weight * alpha_entropy(self.network).to(value.dtype)
