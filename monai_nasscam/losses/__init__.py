"""Losses."""

from .exp_log import ExpLogLoss

__all__ = ["ExpLogLoss"]
