"""Losses."""

from .alpha_entropy import AlphaEntropyLoss, alpha_entropy
from .exp_log import ExpLogLoss

__all__ = ["AlphaEntropyLoss", "ExpLogLoss", "alpha_entropy"]
