"""Small network utilities shared by handlers, checkpoints and run folders."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["unwrap_model"]


def unwrap_model(network: nn.Module) -> nn.Module:
    """The module inside a ``DataParallel`` / ``DistributedDataParallel`` wrapper, else ``network`` itself.

    State-dict keys, alphas and attention blocks are read from the unwrapped module, so a run saved by one process
    or by several (``torchrun``) has the same keys. For a state dict alone, MONAI's
    :func:`monai.networks.utils.get_state_dict` does the same.
    """
    return network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network
