"""The DARTS remedies of the search: softmax temperature annealing and the alphas' entropy penalty."""

from __future__ import annotations

import math

import pytest
import torch

from monai_nasscam.handlers import AlphaTemperatureScheduler
from monai_nasscam.handlers.temperature import annealed_temperature
from monai_nasscam.losses import AlphaEntropyLoss, alpha_entropy
from monai_nasscam.networks.cell import NASAttentionCell


def test_annealed_temperature_schedule():
    # 6 epochs, 2 of warm-up: start through epoch 3 (the first alpha epoch), end at epoch 6, geometric between
    values = [annealed_temperature(e, 6, 2, 1.0, 0.1) for e in range(1, 7)]
    assert values[:3] == [1.0, 1.0, 1.0]
    assert values[3] == pytest.approx(0.1 ** (1 / 3)) and values[4] == pytest.approx(0.1 ** (2 / 3))
    assert values[5] == pytest.approx(0.1)
    assert annealed_temperature(1, 1, 0, 2.0, 0.5) == 0.5  # a single alpha epoch is the last one
    assert [annealed_temperature(e, 2, 1, 1.0, 0.1) for e in (1, 2)] == [1.0, 0.1]  # the warm-up keeps start
    for bad in (0.0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="alpha_temperature"):
            annealed_temperature(1, 2, 0, bad, 1.0)


def test_temperature_sharpens_the_mixture_not_the_record():
    torch.manual_seed(0)
    cell = NASAttentionCell("sam", 2, 4)
    with torch.no_grad():
        cell.alpha.copy_(torch.randn_like(cell.alpha))
    x = torch.randn(2, 4, 16, 16)
    cell.eval()
    at_one = cell(x)
    cell.temperature = 0.25
    assert torch.allclose(cell.mixture_weights(), (cell.alpha / 0.25).softmax(-1))
    assert torch.allclose(cell.op_weights(), cell.alpha.softmax(-1))  # what genotypes record: T = 1
    sharp = cell(x)
    assert torch.allclose(sharp, cell.reference_forward(x), atol=1e-5)  # fused forward == definition at T
    assert not torch.allclose(sharp, at_one, atol=1e-4)


def test_scheduler_sets_every_searchable_cell():
    from ignite.engine import Engine, Events

    net = torch.nn.ModuleList([NASAttentionCell("sam", 2, 4), NASAttentionCell("cam", 1, 4), NASAttentionCell("sam", 2, 4, ops=["conv3"] * 6)])
    engine = Engine(lambda e, b: None)
    AlphaTemperatureScheduler(net, start=1.0, end=0.01, warmup_epochs=1).attach(engine)
    seen = []
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append([c.temperature for c in net]))
    engine.run([0], max_epochs=3)
    assert [s[:2] for s in seen] == [[1.0, 1.0], [1.0, 1.0], [pytest.approx(0.01)] * 2]
    assert [s[2] for s in seen] == [1.0, 1.0, 1.0]  # a fixed cell has no mixture
    with pytest.raises(ValueError, match="alpha_temperature end"):
        AlphaTemperatureScheduler(net, end=0.0)


def test_alpha_entropy_known_values_and_shared_alphas():
    cells = torch.nn.ModuleList([NASAttentionCell("sam", 2, 4), NASAttentionCell("cam", 1, 4)])
    with torch.no_grad():
        for c in cells:
            c.alpha.zero_()
    assert alpha_entropy(cells).item() == pytest.approx(1.0)  # uniform edges
    with torch.no_grad():
        cells[0].alpha.zero_()
        cells[0].alpha[:, 0] = 100.0  # one-hot SAM edges: 0; CAM stays uniform: 1
    assert alpha_entropy(cells).item() == pytest.approx(0.5, abs=1e-6)
    # two candidates, weights (0.8, 0.2) on every edge: normalised entropy -(0.8 ln 0.8 + 0.2 ln 0.2) / ln 2
    two = NASAttentionCell("sam", 2, 4)
    two.alpha = torch.nn.Parameter(torch.log(torch.tensor([[0.8, 0.2]] * 6)))
    expected = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(2)
    assert alpha_entropy(two).item() == pytest.approx(expected, rel=1e-6)
    shared = torch.nn.ModuleList([NASAttentionCell("sam", 2, 4), NASAttentionCell("sam", 2, 4)])
    shared[1].alpha = shared[0].alpha
    with torch.no_grad():
        shared[0].alpha.zero_()
        shared[0].alpha[:, 0] = 100.0
    assert alpha_entropy(shared).item() == pytest.approx(0.0, abs=1e-6)  # counted once, not averaged with itself
    with pytest.raises(ValueError, match="no searchable cell"):
        alpha_entropy(torch.nn.Conv2d(1, 1, 1))


def test_alpha_entropy_loss_adds_the_weighted_penalty_and_sharpens():
    torch.manual_seed(0)
    cell = NASAttentionCell("sam", 2, 4)
    base = torch.nn.MSELoss()
    pred, target = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    assert AlphaEntropyLoss(base, cell, 0.0)(pred, target).item() == pytest.approx(1.0)
    assert AlphaEntropyLoss(base, cell, 0.5)(pred, target).item() == pytest.approx(1.0 + 0.5 * alpha_entropy(cell).item())
    with pytest.raises(ValueError, match="alpha_entropy_weight must be a finite number >= 0"):
        AlphaEntropyLoss(base, cell, -1.0)
    # the penalty alone, minimised by Adam, moves the alphas away from uniform
    loss = AlphaEntropyLoss(lambda p, t: (p * 0).sum(), cell, 1.0)
    opt = torch.optim.Adam([cell.alpha], lr=0.1)
    before = alpha_entropy(cell).item()
    for _ in range(20):
        opt.zero_grad()
        loss(pred, target).backward()
        opt.step()
    assert alpha_entropy(cell).item() < before - 0.1


def test_remedy_settings_kept_in_the_checkpoint_and_refused_on_a_changed_resume():
    from monai_nasscam.errors import InputError
    from monai_nasscam.handlers import SearchDiagnosticsHandler

    net = NASAttentionCell("sam", 2, 4)
    made = SearchDiagnosticsHandler(net, settings={"alpha_temperature": [1, 0.1], "alpha_entropy_weight": 0})
    state = made.state_dict()
    assert state["settings"] == {"alpha_temperature": [1.0, 0.1], "alpha_entropy_weight": 0.0}
    SearchDiagnosticsHandler(net, settings={"alpha_temperature": (1.0, 0.1), "alpha_entropy_weight": 0.0}).load_state_dict(state)
    with pytest.raises(InputError, match=r"resume: the checkpoint's search ran with alpha_temperature \[1.0, 0.1\], "
                                         r"this run has \[1.0, 1.0\]; resume with --alpha_temperature \[1.0, 0.1\]"):
        SearchDiagnosticsHandler(net, settings={"alpha_temperature": [1, 1], "alpha_entropy_weight": 0}).load_state_dict(state)
    # a checkpoint from before the settings were kept resumes as before
    SearchDiagnosticsHandler(net, settings={"alpha_temperature": [1, 1], "alpha_entropy_weight": 0}).load_state_dict(
        {"previous": None, "previous_epoch": -1}
    )
