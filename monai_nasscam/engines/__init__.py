"""Engines: the first-order bilevel architecture search and the checks of the workflows' inputs.

Data lists live in :mod:`monai_nasscam.data.datalist`, the choice of a run's network in
:mod:`monai_nasscam.networks.run_folder` and the stitching inferer in :mod:`monai_nasscam.inference.stitching`."""

from monai_nasscam.engines.bilevel import ARCH_LOSS, BilevelEvents, BilevelSearchTrainer, derive_seed
from monai_nasscam.engines.search_inputs import (
    ALPHA_TRAVEL,
    CHECKPOINT_NAME,
    budget_arch_learning_rate,
    count_alpha_steps,
    check_device,
    check_fresh_run,
    check_run_settings,
    check_search_attention,
    check_search_inputs,
    resolve_resume,
)

__all__ = [
    "ARCH_LOSS",
    "BilevelEvents",
    "BilevelSearchTrainer",
    "ALPHA_TRAVEL",
    "CHECKPOINT_NAME",
    "budget_arch_learning_rate",
    "count_alpha_steps",
    "check_device",
    "check_fresh_run",
    "check_run_settings",
    "check_search_attention",
    "check_search_inputs",
    "derive_seed",
    "resolve_resume",
]
