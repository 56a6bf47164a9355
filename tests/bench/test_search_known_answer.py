"""The architecture search finds planted operations: a small, deterministic version of
bench/search_known_answer.py (see its section in bench/README.md for the design).

Probes: a NAS-SAM cell whose target needs ``conv5`` on ``n0 -> n3``, one that needs ``dil_conv5``, a NAS-CAM cell
that needs ``conv15``, and a NAS-SAM cell with a constant target (``none`` on its three edges into ``n3``). The
search runs ``BilevelSearchTrainer`` with the workflow's alpha settings (Adam, ``schedule="iteration"``, the
budget-aware alpha learning rate); it must rank every planted op first. With the alpha steps disabled or an alpha
learning rate of 0 the alphas stay at their random initialisation and this test fails (checked when it was
written: 0 of the 6 planted edges ranked first; with ascending alpha steps the planted ops rank 5th or 6th).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from monai_nasscam.engines import budget_arch_learning_rate, count_alpha_steps
from tests.utils import REPO

_PATH = REPO / "bench" / "search_known_answer.py"


def _load():
    spec = importlib.util.spec_from_file_location("search_known_answer", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("search_known_answer", module)
    spec.loader.exec_module(module)
    return module


ka = _load()

#: the CI budget: 16 x 16 white-noise inputs, 6 epochs of 20 iterations, 2 of them warm-up (1/3, as the workflow).
SMALL = dict(epochs=6, warmup_epochs=2, iterations=20, batch_size=8, size=16)


def test_planted_kernels_are_unique_to_their_op():
    g = torch.Generator().manual_seed(0)
    for probe in ka.PROBES:
        if probe.op == "none":
            continue
        kernel = ka.planted_kernel(probe, g)
        shares = ka.competitor_shares(probe, kernel)
        assert shares[probe.op] == pytest.approx(1.0)
        others = [s for op, s in shares.items() if op != probe.op]
        assert max(others) <= 1.0 - ka.UNIQUE_SHARE + 1e-6, (probe, shares)
        assert float(kernel.norm()) == pytest.approx(1.0)


def test_teacher_map_is_exact_for_the_planted_op():
    """The teacher's pre-activation is the planted op's convolution: a dense conv with the planted kernel equals a
    convolution of the planted op's own geometry (dilation) with the kernel's taps."""
    g = torch.Generator().manual_seed(1)
    probe = next(p for p in ka.PROBES if p.op == "dil_conv5")
    kernel = ka.planted_kernel(probe, g)  # (1, C, 9, 9), taps on the even offsets
    taps = kernel[..., ::2, ::2]
    assert torch.equal(kernel.abs().sum() - taps.abs().sum(), torch.tensor(0.0))
    x = torch.randn(2, probe.channels, 16, 16, generator=g)
    dense = torch.nn.functional.conv2d(x, kernel, padding=4)
    dilated = torch.nn.functional.conv2d(x, taps, padding=4, dilation=2)
    assert torch.allclose(dense, dilated, atol=1e-5)


def test_search_ranks_every_planted_op_first():
    result = ka.run_search(seed=0, **SMALL)
    wrong = {edge: (rank, result.weights[edge]) for edge, rank in result.ranks.items() if rank != 1}
    assert not wrong, f"planted ops not ranked first: {wrong}"
    assert len(result.ranks) == 6
    assert result.alpha_steps == count_alpha_steps(6, 2, 20) == 80
    assert result.arch_lr == budget_arch_learning_rate("auto", 80)


def test_selection_by_perturbation_chooses_every_planted_op():
    """Masking ops out of the trained student (after the same alpha steps) chooses every planted op."""
    result = ka.run_search(seed=0, **SMALL, selection="perturbation", crops=16, interval=2)
    planted = ka._planted_ops()
    wrong = {edge: (result.chosen[edge], result.weights[edge]) for edge, op in planted.items() if result.chosen[edge] != op}
    assert not wrong, f"planted ops not chosen: {wrong}"
    assert result.hits == 6 and set(result.decided) == set(result.chosen) and len(result.chosen) == 24


def test_selection_by_perturbation_with_frozen_alphas_finds_the_planted_convolutions():
    """DARTS-PT's frozen-alpha variant (warm-up = epochs: no alpha step, the mixture stays uniform) chooses the three
    planted convolutions. It does not find the planted ``none`` of the constant probe: with uniform weights the six
    ops co-adapt so that their mixture outputs the constant, and removing any convolution disturbs it more than
    removing ``none`` (seed 0: other convolutions chosen there, with or without rescaling the remaining weights)."""
    result = ka.run_search(seed=0, **{**SMALL, "warmup_epochs": 6}, selection="perturbation", crops=16, interval=2)
    assert result.alpha_steps == 0
    for probe in ka.PROBES[:3]:
        edge = f"{probe.name} n0->n3"
        assert result.chosen[edge] == probe.op and result.decided[edge], (edge, result.weights[edge])
