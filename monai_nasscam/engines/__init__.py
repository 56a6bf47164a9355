"""Engines: the first-order bilevel architecture search and the checks of its inputs."""

from monai_nasscam.engines.bilevel import ARCH_LOSS, BilevelEvents, BilevelSearchTrainer, derive_seed
from monai_nasscam.engines.search_inputs import (
    ALPHA_TRAVEL,
    CHECKPOINT_NAME,
    as_bool,
    budget_arch_learning_rate,
    count_alpha_steps,
    check_device,
    check_roi_size,
    check_run_settings,
    check_search_attention,
    check_search_inputs,
    read_datalist,
    resolve_resume,
    search_datalists,
    split_architecture,
)

__all__ = [
    "ARCH_LOSS",
    "BilevelEvents",
    "BilevelSearchTrainer",
    "ALPHA_TRAVEL",
    "CHECKPOINT_NAME",
    "budget_arch_learning_rate",
    "count_alpha_steps",
    "as_bool",
    "check_device",
    "check_roi_size",
    "check_run_settings",
    "check_search_attention",
    "check_search_inputs",
    "derive_seed",
    "read_datalist",
    "resolve_resume",
    "search_datalists",
    "split_architecture",
]
