"""Engines: the first-order bilevel architecture search and its schedule, the checks of the workflows' inputs and the
record of a training run.

Data lists live in :mod:`monai_nasscam.data.datalist`, the choice of a run's network in
:mod:`monai_nasscam.networks.run_folder` and the stitching inferer in :mod:`monai_nasscam.inference.stitching`."""

from monai_nasscam.engines.bilevel import ARCH_LOSS, BilevelEvents, BilevelSearchTrainer, derive_seed
from monai_nasscam.engines.checks import (
    CHECKPOINT_NAME,
    TRAIN_CHECKPOINT_NAME,
    check_annotated_nuclei,
    check_device,
    check_evaluate_inputs,
    check_fresh_run,
    check_run_settings,
    check_search_attention,
    check_search_inputs,
    check_train_inputs,
    resolve_resume,
)
from monai_nasscam.engines.run_record import describe_inferer, record_run_inputs
from monai_nasscam.engines.schedule import (
    ALPHA_TRAVEL,
    SCHEDULES,
    budget_arch_learning_rate,
    count_alpha_steps,
    steps_for_epoch,
)

__all__ = [
    "ARCH_LOSS",
    "BilevelEvents",
    "BilevelSearchTrainer",
    "ALPHA_TRAVEL",
    "CHECKPOINT_NAME",
    "SCHEDULES",
    "TRAIN_CHECKPOINT_NAME",
    "budget_arch_learning_rate",
    "count_alpha_steps",
    "check_annotated_nuclei",
    "check_device",
    "check_evaluate_inputs",
    "check_fresh_run",
    "check_run_settings",
    "check_search_attention",
    "check_search_inputs",
    "check_train_inputs",
    "derive_seed",
    "describe_inferer",
    "record_run_inputs",
    "resolve_resume",
    "steps_for_epoch",
]
