"""Did the search choose? The figures of softmax(alpha) (entropy, margin, none share, changed, decided) with
hand-computed values, each verdict, the diagnostics handler (metrics, TensorBoard, log, checkpoint state), the
genotype format version 3 (``search`` section; versions 1 and 2 still load; non-finite alphas refused), the heatmap, and
divergence: a non-finite loss or alpha stops the search with one message, in-process and through the workflow."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from monai_nasscam.handlers import (
    AlphaHeatmapSaver,
    BestGenotypeSaver,
    DivergenceGuard,
    GenotypeSaver,
    ResumableCheckpointSaver,
    SearchDiagnosticsHandler,
    SearchDiverged,
    search_diagnostics,
)
from monai_nasscam.networks import POSITIONS, Genotype, NASSCAMUNet, VerdictRule, diagnose, diagnose_genotype
from monai_nasscam.networks.diagnostics import (
    COLLAPSE_MIN_EDGES,
    COLLAPSE_OP_SHARE,
    CONVERGED_DECIDED_SHARE,
    CONVERGED_MAX_CHANGED_SHARE,
    DECIDED_MARGIN,
    edge_figures,
    stability_checked,
)
from monai_nasscam.networks.verdict import verdict_advice
from monai_nasscam.networks.ops import CAM_OPS, SAM_OPS
from tests.utils import REPO

SAM, CAM = tuple(SAM_OPS), tuple(CAM_OPS)  # 6 and 8 candidates


def _rows(k: int, best: list[int], p1: float, p2: float | None = None) -> torch.Tensor:
    """6 edges of k candidates: edge e puts p1 on best[e], p2 on the next candidate, the rest spread evenly."""
    w = torch.zeros(6, k, dtype=torch.float64)
    for e, b in enumerate(best):
        second = p1 if p2 is None else p2
        rest = (1.0 - p1 - (second if p2 is not None else 0.0)) / (k - (2 if p2 is not None else 1))
        w[e].fill_(rest)
        w[e, b] = p1
        if p2 is not None:
            w[e, (b + 1) % k] = p2
    return w


def _network_weights(sam: torch.Tensor, cam: torch.Tensor, positions=POSITIONS) -> dict:
    return {p: {"sam": (SAM, sam.clone()), "cam": (CAM, cam.clone())} for p in positions}


def _uniform() -> dict:
    return _network_weights(torch.full((6, 6), 1 / 6), torch.full((6, 8), 1 / 8))


# ------------------------------------------------------------------------------------------ the figures, by hand
def test_edge_figures_hand_computed():
    w = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    entropy, margin, best = edge_figures(w)
    # H = -(0.5 ln 0.5 + 2 * 0.25 ln 0.25) = 1.5 ln 2; ln 4 = 2 ln 2 -> 0.75
    assert entropy.tolist() == pytest.approx([0.75, 1.0, 0.0])
    assert margin.tolist() == pytest.approx([0.25, 0.0, 1.0])
    assert best.tolist()[::2] == [0, 0]
    with pytest.raises(ValueError, match="non-finite"):
        edge_figures(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        edge_figures(torch.ones(3))


def test_aggregates_none_share_decided_and_changed():
    # SAM: edges 0, 1 on none (p1 0.5, p2 0.2: margin 0.3, decided), the other 4 on conv3 with margin 0.02
    sam = torch.cat([_rows(6, [0, 0], 0.5, 0.2)[:2], _rows(6, [2, 2, 2, 2], 0.2, 0.18)[:4]])
    cam = _rows(8, [1, 2, 3, 4, 5, 6], 0.65, 0.15)  # all decided (margin 0.5), 6 different ops
    weights = {"down1": {"sam": (SAM, sam), "cam": (CAM, cam)}}
    d = diagnose(weights)
    cell = d.cells["down1"]["sam"]
    assert cell.best == ("none", "none", "conv3", "conv3", "conv3", "conv3")
    assert cell.margin == pytest.approx((0.3, 0.3, 0.02, 0.02, 0.02, 0.02))
    assert cell.none_share == pytest.approx(2 / 6) and cell.decided == 2 and cell.changed is None
    # the entropy of one SAM edge by hand: 0.5, 0.2 and four times 0.075
    h = -(0.5 * math.log(0.5) + 0.2 * math.log(0.2) + 4 * 0.075 * math.log(0.075)) / math.log(6)
    assert cell.entropy[0] == pytest.approx(h)
    assert d.edges == 12 and d.decided == pytest.approx(8 / 12) and d.none_share == pytest.approx(2 / 12)
    assert d.margin == pytest.approx((2 * 0.3 + 4 * 0.02 + 6 * 0.5) / 12)
    assert d.changed is None and "alpha_changed" not in d.metrics()
    assert set(d.metrics()) == {"alpha_entropy", "alpha_margin", "alpha_none_share", "alpha_decided"}

    # the next validation: 3 edges changed their best op
    sam2 = sam.clone()
    sam2[2] = sam2[2].roll(1)  # conv3 -> conv5
    cam2 = cam.clone()
    cam2[[0, 5]] = cam2[[0, 5]].roll(1, dims=1)
    d2 = diagnose({"down1": {"sam": (SAM, sam2), "cam": (CAM, cam2)}}, previous=d.best_ops())
    assert (d2.cells["down1"]["sam"].changed, d2.cells["down1"]["cam"].changed, d2.changed) == (1, 2, 3)
    assert d2.metrics()["alpha_changed"] == 3.0 and d2.changed_share == pytest.approx(3 / 12)


def test_constants_and_rule_defaults():
    assert (DECIDED_MARGIN, CONVERGED_DECIDED_SHARE, CONVERGED_MAX_CHANGED_SHARE) == (0.05, 0.8, 0.1)
    assert (COLLAPSE_OP_SHARE, COLLAPSE_MIN_EDGES) == (0.9, 12)
    rule = VerdictRule()
    assert rule.to_dict() == {
        "decided_margin": 0.05,
        "converged_decided_share": 0.8,
        "converged_max_changed_share": 0.1,
        "collapse_op_share": 0.9,
        "collapse_min_edges": 12,
    }
    assert VerdictRule.from_dict({"decided_margin": 0.2}).decided_margin == 0.2


# -------------------------------------------------------------------------------------------------- the verdicts
def _varied(shift: int = 0) -> dict:
    """Every cell decided (margin 0.4), best ops varied over positions and edges, no none."""
    out = {}
    for i, p in enumerate(POSITIONS):
        sam = _rows(6, [1 + (i + e + shift) % 5 for e in range(6)], 0.55, 0.15)
        cam = _rows(8, [1 + (i + e + shift) % 7 for e in range(6)], 0.55, 0.15)
        out[p] = {"sam": (SAM, sam), "cam": (CAM, cam)}
    return out


def test_verdict_not_converged_uniform():
    d = diagnose(_uniform(), shared=False)
    assert d.verdict == "not converged" and d.entropy == pytest.approx(1.0) and d.decided == 0.0
    # every criterion not met is a reason: too few edges decided, and no previous validation to compare with
    assert d.reasons == ("0.0% of the edges decided (margin >= 0.05), 80% needed", "stability not checked (one validation)")
    # the argmax of an exactly uniform row is the first candidate, none: undecided, so no collapse
    assert d.none_share == 1.0 and d.dominant == {"sam": (None, 0.0), "cam": (None, 0.0)}


def test_verdict_converged_and_unstable():
    first = diagnose(_varied())
    # one validation: every edge decided, but the stability was not checked: not converged, and the reasons say why
    assert first.verdict == "not converged" and first.decided == 1.0 and first.reasons == ("stability not checked (one validation)",)
    same = diagnose(_varied(), previous=first.best_ops())
    assert same.verdict == "converged" and same.changed == 0
    moved = diagnose(_varied(shift=1), previous=first.best_ops())  # every best op changed
    assert moved.changed == 96 and moved.verdict == "not converged"
    assert "100.0% of the best ops changed" in moved.reasons[0]
    # 9 of 96 changed (9.4 % <= 10 %): still converged; 10 (10.4 %): not
    for count, verdict in ((9, "converged"), (10, "not converged")):
        previous = first.best_ops()
        flipped = 0
        for p in POSITIONS:
            for e in range(6):
                if flipped < count:
                    previous[p]["cam"][e] = "none"
                    flipped += 1
        assert diagnose(_varied(), previous=previous).verdict == verdict, count
    # decided share below 80 %: 20 of 96 edges undecided (margin 0.01) -> 79.2 %
    weights = _varied()
    for p in POSITIONS[:3]:
        weights[p]["cam"] = (CAM, _rows(8, [1, 2, 3, 4, 5, 6], 0.2, 0.19))
    weights["up1"]["sam"] = (SAM, torch.cat([weights["up1"]["sam"][1][:4], _rows(6, [1, 2], 0.2, 0.19)[:2]]))
    d = diagnose(weights, previous=diagnose(weights).best_ops())  # unchanged since a previous validation
    assert d.decided == pytest.approx(76 / 96) and d.verdict == "not converged"
    assert d.reasons == ("79.2% of the edges decided (margin >= 0.05), 80% needed",)  # not rounded up to the bar


def test_verdict_collapsed():
    # one cell with all 6 edges on none
    weights = _varied()
    weights["down3"]["sam"] = (SAM, _rows(6, [0] * 6, 0.9, 0.02))
    d = diagnose(weights)
    assert d.verdict == "collapsed" and "the down3 SAM cell has all 6 edges decided on none" in d.reasons
    # one op the best on >= 90 % of the 48 CAM edges (44 of 48 = 91.7 %), never 6 none in a cell
    weights = _varied()
    for i, p in enumerate(POSITIONS):
        best = [3, 3, 3, 3, 3, 3] if i < 7 else [3, 3, 1, 2, 4, 5]
        weights[p]["cam"] = (CAM, _rows(8, best, 0.55, 0.15))
    d = diagnose(weights)
    assert d.dominant["cam"] == ("conv5", pytest.approx(44 / 48)) and d.verdict == "collapsed"
    assert "conv5 is the decided best op on 92% of the 48 CAM edges" in d.reasons[0]
    # 43 of 48 (89.6 %): not a collapse
    weights["up3"]["cam"] = (CAM, _rows(8, [1, 3, 3, 3, 3, 3], 0.55, 0.15))
    assert diagnose(weights, previous=diagnose(weights).best_ops()).verdict == "converged"


def test_shared_search_counts_one_cell_and_skips_the_dominant_rule():
    sam = _rows(6, [2] * 6, 0.6, 0.1)  # the same op on all 6 edges: a choice, not a collapse, with 6 edges
    cam = _rows(8, [1, 2, 3, 4, 5, 6], 0.6, 0.1)
    d = diagnose(_network_weights(sam, cam))  # detected: every position identical
    assert d.shared and d.edges == 12 and d.previous_decided is None
    d = diagnose(_network_weights(sam, cam), previous=d.decided_ops())  # the same choice at the next validation
    assert d.verdict == "converged" and d.changed == 0 and d.previous_decided == 1.0
    assert d.dominant["sam"] == ("conv3", 1.0)
    assert diagnose(_network_weights(sam, cam), shared=False).verdict == "collapsed"  # 48 edges: collapsed
    d = diagnose(_network_weights(_rows(6, [0] * 6, 0.6, 0.1), cam))
    assert d.verdict == "collapsed" and d.reasons == ("the shared SAM cell has all 6 edges decided on none",)


def test_verdict_advice_names_what_to_change():
    assert "--arch_learning_rate auto" in verdict_advice("not converged") and "--warmup_epochs" in verdict_advice("not converged")
    assert "--exclude_none true" in verdict_advice("collapsed")
    assert "retrain" in verdict_advice("converged")
    with pytest.raises(ValueError, match="unknown verdict"):
        verdict_advice("maybe")


# ---------------------------------------------------------------------------------------------- genotype format v2
def _net(**kwargs) -> NASSCAMUNet:
    torch.manual_seed(0)
    return NASSCAMUNet(features=(4, 8, 8, 8, 8), **kwargs)


V1 = """{"format": "nasscam-genotype", "version": 1, "attention": "nas-cam", "synchronous": false,
 "edges": [[0, 1], [0, 2], [1, 2], [0, 3], [1, 3], [2, 3]],
 "modules": [%s],
 "alphas": {}}"""


def test_version_1_file_still_loads(tmp_path):
    modules = ", ".join(
        f'{{"position": "{p}", "cam": ["conv3", "none", "conv1", "conv15", "dil_conv5", "conv9"]}}' for p in POSITIONS
    )
    path = tmp_path / "v1.json"
    path.write_text(V1 % modules)
    genotype = Genotype.load(path)
    assert genotype.search is None and genotype.entry("up4")["cam"][3] == "conv15"
    data = genotype.to_dict()
    assert data["version"] == 3 and "search" not in data and "selection" not in data  # no section to invent


def test_round_trip_with_search_section(tmp_path):
    net = _net()
    d = search_diagnostics(net, epoch=4)
    genotype = Genotype.from_model(net, search=d.to_dict())
    path = genotype.save(tmp_path / "g.json")
    data = json.loads(path.read_text())
    assert data["version"] == 3 and data["selection"] == {"method": "alpha", "exclude_none": False}
    search = data["search"]
    assert search["verdict"] == "not converged" and search["epoch"] == 4 and search["edges"] == 96
    assert set(search["modules"]) == set(POSITIONS) and set(search["modules"]["up2"]) == {"sam", "cam"}
    assert set(search["modules"]["up2"]["cam"]) == {"entropy", "margin", "none_share", "decided", "changed", "best"}
    assert search["rule"] == VerdictRule().to_dict()
    loaded = Genotype.load(path)
    assert loaded == genotype and loaded.search == genotype.search
    # the recorded alphas give the same figures
    again = diagnose_genotype(loaded)
    assert again.verdict == d.verdict and again.epoch == 4 and again.entropy == pytest.approx(d.entropy, abs=1e-5)
    # a genotype derived without a section gets one from its alphas (no epoch, no previous validation)
    plain = Genotype.from_model(net)
    assert plain.search["epoch"] is None and plain.search["changed"] is None and plain.search["verdict"] == "not converged"
    data["search"]["verdict"] = "perhaps"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown verdict 'perhaps'"):
        Genotype.load(path)


def test_non_finite_alphas_are_refused_on_derive_save_and_load(tmp_path):
    net = _net()
    genotype = Genotype.from_model(net)
    with torch.no_grad():
        net.arch_parameters()[5][2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^model: the alphas of the cam cell at down3 hold non-finite values"):
        Genotype.from_model(net)

    genotype.alphas["up1"]["sam"][0][0] = float("inf")
    with pytest.raises(ValueError, match=r"bad\.json: not written: the alphas of the sam cell at up1 hold non-finite"):
        genotype.save(tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()

    good = Genotype.from_model(_net()).to_dict()
    good["alphas"]["down2"]["sam"][1][0] = float("nan")
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(good))  # Python writes NaN, as the genotype files of diverged searches had it
    with pytest.raises(ValueError, match=r"nan\.json: the alphas of the sam cell at down2 hold non-finite"):
        Genotype.load(path)


# ------------------------------------------------------------------------------------------------- the handlers
def _plant(net: NASSCAMUNet, column: int, boost: float) -> None:
    with torch.no_grad():
        for a in net.arch_parameters():
            a.zero_()
            a[:, column] = boost


def test_diagnostics_handler_metrics_tensorboard_log_and_state(tmp_path, caplog, scalar_writer):
    net = _net()
    writer = scalar_writer
    handler = SearchDiagnosticsHandler(net, summary_writer=writer)
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.EPOCH_STARTED)
    def _move(engine):  # epoch 1: conv1 everywhere, decided; epoch 2: conv3 everywhere
        _plant(net, engine.state.epoch, 3.0)

    handler.attach(evaluator)
    GenotypeSaver(net, tmp_path).attach(evaluator)
    metrics = []
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: metrics.append(dict(e.state.metrics)))
    with caplog.at_level(logging.INFO):
        evaluator.run([0], max_epochs=2)

    # softmax of (3, 0 x 5): p1 = e^3 / (e^3 + 5); SAM margin p1 - 1 / (e^3 + 5)
    p1, p2 = math.exp(3) / (math.exp(3) + 5), 1 / (math.exp(3) + 5)
    first, second = metrics
    assert set(first) == {"alpha_entropy", "alpha_margin", "alpha_none_share", "alpha_decided"}
    assert first["alpha_decided"] == 1.0 and first["alpha_none_share"] == 0.0
    assert second["alpha_changed"] == 96.0  # every edge went from conv1 to conv3
    assert writer.scalars[("alpha_diagnostics/down1/sam/margin", 1)] == pytest.approx(p1 - p2)
    assert writer.scalars[("alpha_diagnostics/up4/cam/changed", 2)] == 6
    assert ("alpha_diagnostics/up4/cam/changed", 1) not in writer.scalars
    assert "epoch 2 alphas: collapsed" in caplog.text  # conv3 on all 48 edges of each kind
    # the per-epoch genotype carries the handler's section (epoch, changed count)
    search = Genotype.load(tmp_path / "genotypes" / "genotype_epoch0002.json").search
    assert (search["epoch"], search["changed"], search["verdict"]) == (2, 96, "collapsed")

    # resumed: the best ops of the last validation come back from the checkpoint state
    restored = SearchDiagnosticsHandler(net)
    restored.load_state_dict(torch.load(_save(tmp_path, handler.state_dict()), weights_only=True))
    assert restored.compute(3).changed == 0
    assert SearchDiagnosticsHandler(net).compute(3).changed is None


def _save(tmp_path: Path, state: dict) -> Path:
    path = tmp_path / "state.pt"
    torch.save(state, path)
    return path


def test_best_genotype_records_its_verdict_and_logs_advice(tmp_path, caplog):
    net = _net()
    handler = SearchDiagnosticsHandler(net)
    evaluator = Engine(lambda e, b: None)
    evaluator.state.key_metric_name = "val_dice"
    dice = [0.3, 0.6, 0.2]

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metric(e):
        e.state.metrics["val_dice"] = dice[e.state.epoch - 1]

    handler.attach(evaluator)
    saver = BestGenotypeSaver(net, evaluator, tmp_path / "genotype.json")
    trainer = Engine(lambda e, b: None)
    saver.attach(trainer)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine):
        if engine.state.epoch == 3:
            _plant(net, 2, 3.0)  # decided only after the best validation
        evaluator.state.max_epochs, evaluator.state.epoch, evaluator.state.iteration = engine.state.epoch, engine.state.epoch - 1, 0
        evaluator.state.epoch_length = 1
        evaluator.run([0])

    with caplog.at_level(logging.INFO):
        trainer.run([0], max_epochs=3)
    genotype = Genotype.load(tmp_path / "genotype.json")
    assert genotype.search["epoch"] == 2 and genotype.search["verdict"] == "not converged"
    assert genotype.search["changed"] == 0  # nothing moved between validations 1 and 2
    lines = [r.getMessage() for r in caplog.records if r.name == trainer.logger.name]
    at = next(i for i, line in enumerate(lines) if line.startswith("search verdict for"))
    assert lines[at].startswith(f"search verdict for {tmp_path / 'genotype.json'} (the alphas of epoch 2): NOT CONVERGED")
    assert lines[at + 1].startswith("what to change: ") and "--arch_learning_rate auto" in lines[at + 1]
    assert not any(line.startswith(("search verdict", "what to change")) for line in lines[at + 2 :])


def test_heatmap_planted_alphas(tmp_path):
    net = _net(attention="nas-sam")
    _plant(net, 3, 2.0)
    path = AlphaHeatmapSaver(net, tmp_path, history_dir=None).save(5)
    assert path == tmp_path / "alpha_heatmap.png" and path.read_bytes()[:4] == b"\x89PNG"
    from monai_nasscam.handlers import plot_alpha_heatmap

    fig = plot_alpha_heatmap(net, title="softmax(alpha), epoch 5")
    # conv5 on all 48 SAM edges
    assert fig.get_suptitle().startswith("softmax(alpha), epoch 5\ncollapsed: decided 100% of 48 edges")
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "uniform 1/6" in bars[0].get_ylabel()
    image = fig.axes[0].images[0]
    assert image.norm.vcenter == pytest.approx(1 / 6) and (image.norm.vmin, image.norm.vmax) == (0.0, 1.0)


# ------------------------------------------------------------------------------------------------------ divergence
def _guarded_engine(net, losses, amp=False, patience=2):
    """A trainer-like engine whose weight-step loss at iteration i is losses[i - 1]; alpha steps leave the alphas."""
    from monai.engines.utils import IterationEvents

    from monai_nasscam.engines.bilevel import ARCH_LOSS, BilevelEvents

    def step(engine, batch):
        engine.state.output = {"loss": torch.tensor(losses[engine.state.iteration - 1]), "pred": torch.zeros(2)}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.state.output[ARCH_LOSS] = torch.tensor(0.5)
        engine.fire_event(BilevelEvents.ARCH_STEP_COMPLETED)
        return engine.state.output

    engine = Engine(step)
    engine.register_events(*IterationEvents)
    engine.register_events(*BilevelEvents)
    engine.network, engine.amp = net, amp
    engine.optimizer = torch.optim.Adam(net.weight_parameters(), lr=1e-4)
    engine.arch_optimizer = torch.optim.Adam(net.arch_parameters(), lr=3e-3)
    DivergenceGuard(amp_patience=patience).attach(engine)
    return engine


def test_divergence_guard_in_process():
    net = _net()
    engine = _guarded_engine(net, [1.0, 0.5, float("nan"), 1.0])
    with pytest.raises(SearchDiverged) as info:
        engine.run(range(2), max_epochs=2)
    message = str(info.value)
    assert message.startswith("search diverged at epoch 2, iteration 3: the weight-step loss is nan.")
    assert "--learning_rate (now 0.0001) / --arch_learning_rate (now 0.003)" in message
    assert (info.value.epoch, info.value.iteration) == (2, 3)
    from monai_nasscam.errors import find_input_error

    assert find_input_error(RuntimeError("wrapped by MONAI's config parser")) is None
    wrapped = RuntimeError("Failed to evaluate ConfigExpression")
    wrapped.__cause__ = info.value
    assert find_input_error(wrapped) is info.value  # the bundle run ends with the one line "error: search diverged ..."

    # non-finite alphas after an alpha step
    with torch.no_grad():
        net.arch_parameters()[-1][0, 0] = float("inf")
    with pytest.raises(SearchDiverged, match="iteration 1: the alphas of the cam cell at up4 hold inf values"):
        _guarded_engine(net, [1.0]).run(range(1), max_epochs=1)


def test_divergence_guard_tolerates_a_few_steps_with_mixed_precision():
    inf = float("inf")
    _guarded_engine(_net(), [1.0, inf, inf, 1.0, inf], amp=True, patience=2).run(range(5), max_epochs=1)
    with pytest.raises(SearchDiverged, match="iteration 4: the weight-step loss is inf on 3 weight steps in a row"):
        _guarded_engine(_net(), [1.0, inf, inf, inf], amp=True, patience=2).run(range(4), max_epochs=1)


def test_checkpointer_refuses_a_non_finite_state(tmp_path):
    net = _net()
    saver = ResumableCheckpointSaver(tmp_path, {"network": net}, handle_signals=False)
    first = saver.save()
    before = first.read_bytes()
    with torch.no_grad():
        next(iter(net.weight_parameters())).view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"not writing the checkpoint .*search_checkpoint\.pt: network/\S+ holds non-finite"):
        saver.save()
    assert first.read_bytes() == before


def test_diverged_search_workflow_writes_no_genotype(tmp_path, search_data):
    """search.yaml with absurd learning rates: the run stops with the message, no genotype.json, no NaN checkpoint
    (today's behaviour without the guard: it ended normally and wrote a genotype of NaN alphas)."""
    from monai.bundle import run as bundle_run

    repo = REPO
    run = tmp_path / "run"
    with pytest.raises(Exception) as info:
        bundle_run(
            config_file=[str(repo / "bundle/configs/train.yaml"), str(repo / "bundle/configs/search.yaml")],
            logging_file=False, dataset_dir=str(search_data),
            output_dir=str(run), epochs=2, warmup_epochs=0, roi_size=[32, 32], features=[4, 8, 8, 8, 8],
            epoch_crops=4, num_workers=0, progress=False, learning_rate=1e30, arch_learning_rate=1e30,
        )
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    diverged = [e for e in chain if isinstance(e, SearchDiverged)]
    assert diverged, "\n".join(f"{type(e).__name__}: {e}" for e in chain)
    assert str(diverged[0]).startswith("search diverged at epoch 1, iteration 1: ")
    assert "lower --learning_rate (now 1e+30) / --arch_learning_rate (now 1e+30)" in str(diverged[0])
    assert not (run / "genotype.json").exists()
    assert not (run / "checkpoints" / "search_checkpoint.pt").exists()


@pytest.fixture(scope="module")
def search_data(tmp_path_factory) -> Path:
    from monai_nasscam.data import generate_dataset, prepare_dataset

    root = tmp_path_factory.mktemp("diag_data")
    generate_dataset(root / "raw", n_images=8, n_patients=4, seed=0, min_size=80, max_size=120)
    prepare_dataset(root / "raw", root / "prep", split="image", stain="none", progress=False, workers=1)
    return root / "prep"


# ------------------------------------------------ changed counts only decided edges; stability; genotype agreement
def test_changed_counts_only_edges_decided_at_the_previous_validation():
    sam = _rows(6, [1, 2, 3, 4, 5, 1], 0.5, 0.1)  # 6 decided edges
    sam[4] = _rows(6, [2], 0.2, 0.19)[0]  # edge 4 undecided (margin 0.01), argmax conv3
    cam = _rows(8, [1, 2, 3, 4, 5, 6], 0.5, 0.1)
    first = diagnose({"down1": {"sam": (SAM, sam), "cam": (CAM, cam)}})
    assert first.decided_ops()["down1"]["sam"] == ["conv1", "conv3", "conv5", "dil_conv3", None, "conv1"]
    sam2, cam2 = sam.clone(), cam.clone()
    sam2[4] = sam2[4].roll(1)  # the undecided edge flips: no change of a choice
    cam2[0] = cam2[0].roll(1)  # a decided edge changes its best op
    again = {"down1": {"sam": (SAM, sam2), "cam": (CAM, cam2)}}
    d = diagnose(again, previous=first.decided_ops())
    assert (d.cells["down1"]["sam"].changed, d.cells["down1"]["cam"].changed, d.changed) == (0, 1, 1)
    # every name given (best_ops): every flip counts, as before
    assert diagnose(again, previous=first.best_ops()).changed == 2


def test_a_validation_after_the_warmup_alone_is_not_converged():
    # the case: a 2-epoch search with 1 warm-up epoch. The warm-up's near-uniform alphas: every edge
    # undecided, argmax arbitrary; then every edge decided at the one validation after it
    warm = diagnose(_network_weights(_rows(6, [0] * 6, 0.17, 0.166), _rows(8, [0] * 6, 0.126, 0.125)))
    assert warm.decided == 0.0 and warm.verdict == "not converged"
    after = diagnose(_varied(), previous=warm.decided_ops())
    # nothing changed, because nothing had been decided: no evidence of stability, so not converged
    assert after.changed == 0 and after.previous_decided == 0.0 and after.verdict == "not converged"
    reason = "stability not checked (the previous validation decided 0.0% of the edges, 80% needed)"
    assert after.reasons == (reason,) and not after.stability_checked
    # entropy: SAM rows (0.55, 0.15, 4 x 0.075) 0.7760 / ln 6, CAM rows (0.55, 0.15, 6 x 0.05) 0.7272: mean 0.752
    assert after.summary() == (
        "not converged: decided 100% of 96 edges, entropy 0.752, margin 0.400, none 0%, changed 0/96 (" + reason + ")"
    )
    assert after.to_dict()["previous_decided"] == 0.0 and after.to_dict()["reasons"] == [reason]
    # the validation after it, with the same choices: decided at two validations in a row, nothing changed
    third = diagnose(_varied(), previous=after.decided_ops())
    assert third.previous_decided == 1.0 and third.changed == 0 and third.verdict == "converged" and third.reasons == ()
    # with every flip counted it could never converge
    assert diagnose(_varied(), previous=warm.best_ops()).verdict == "not converged"


def test_stability_needs_the_decided_share_at_the_previous_validation_too():
    # 77 of 96 edges decided before (80.2 % would be 77; 76 is 79.2 %): 76 -> not checked, 77 -> checked
    for before, checked in ((76, False), (77, True)):
        previous = diagnose(_varied()).decided_ops()
        undecided = 96 - before
        for p in POSITIONS:
            for kind in ("sam", "cam"):
                for e in range(6):
                    if undecided:
                        previous[p][kind][e] = None
                        undecided -= 1
        d = diagnose(_varied(), previous=previous)
        assert d.previous_decided == pytest.approx(before / 96) and d.stability_checked == checked
        assert d.verdict == ("converged" if checked else "not converged"), before
    assert stability_checked(0, None) and not stability_checked(None, 1.0) and not stability_checked(3, 0.5)
    assert stability_checked(3, 0.5, VerdictRule(converged_decided_share=0.5))


def test_one_validation_says_stability_not_checked(tmp_path):
    first = diagnose(_varied())
    assert first.verdict == "not converged" and first.changed is None and first.previous_decided is None
    assert first.summary().endswith("(stability not checked (one validation))")
    assert first.to_dict()["reasons"] == ["stability not checked (one validation)"]
    advice = verdict_advice("not converged", first)
    assert "stability of the choice was not checked" in advice and "--val_interval" in advice
    assert "random pick" not in advice and "still change" not in advice
    assert "stability" not in verdict_advice("converged", diagnose(_varied(), previous=first.decided_ops()))


def test_not_converged_advice_names_the_failing_criterion():
    rule = VerdictRule().to_dict()
    still_changing = {"decided": 0.9, "changed": 30, "edges": 96, "rule": rule}
    undecided = {"decided": 0.5, "changed": 0, "edges": 96, "rule": rule}
    both = {"decided": 0.5, "changed": 30, "edges": 96, "rule": rule, "previous_decided": 0.9}
    still_changing["previous_decided"] = undecided["previous_decided"] = 0.9
    text = verdict_advice("not converged", still_changing)
    assert "still change" in text and "random pick" not in text and "not checked" not in text
    text = verdict_advice("not converged", undecided)
    assert "random pick" in text and "still change" not in text
    text = verdict_advice("not converged", both)
    assert "random pick" in text and "still change" in text


def _plant_varied(net: NASSCAMUNet, shift: int, boost: float = 3.0) -> None:
    """Every edge decided (softmax weight ~0.8 on one op), the op varied over cells and edges, never none."""
    with torch.no_grad():
        for i, a in enumerate(net.arch_parameters()):
            a.zero_()
            for e in range(a.shape[0]):
                a[e, 1 + (i + e + shift) % (a.shape[1] - 1)] = boost


def test_diagnose_genotype_agrees_with_the_recorded_verdict(tmp_path):
    net = _net()
    handler = SearchDiagnosticsHandler(net)
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.EPOCH_STARTED)
    def _move(engine):  # epoch 2: every decided edge moves to another op
        _plant_varied(net, shift=engine.state.epoch - 1)

    handler.attach(evaluator)
    GenotypeSaver(net, tmp_path).attach(evaluator)
    evaluator.run([0], max_epochs=2)
    first = Genotype.load(tmp_path / "genotypes" / "genotype_epoch0001.json")
    second = Genotype.load(tmp_path / "genotypes" / "genotype_epoch0002.json")
    assert first.search["verdict"] == "not converged" and first.search["reasons"] == ["stability not checked (one validation)"]
    assert second.search["verdict"] == "not converged" and second.search["changed"] == 96
    assert second.search["previous_decided"] == 1.0
    for genotype in (first, second):
        again = diagnose_genotype(genotype)
        assert again.verdict == genotype.search["verdict"] and list(again.reasons) == genotype.search["reasons"]
        assert again.changed == genotype.search["changed"] and again.epoch == genotype.search["epoch"]
        assert again.cells["up3"]["cam"].changed == genotype.search["modules"]["up3"]["cam"]["changed"]
        assert again.previous_decided == genotype.search["previous_decided"]
    # a warm-up validation before it (nothing decided) is recorded, and the recomputed verdict keeps it unchecked
    second.search.update(previous_decided=0.0, changed=0, verdict="not converged")
    again = diagnose_genotype(second)
    assert again.reasons == ("stability not checked (the previous validation decided 0.0% of the edges, 80% needed)",)
    # a file written before previous_decided existed: a changed count is taken as checked (the rule it was judged by)
    del second.search["previous_decided"]
    assert diagnose_genotype(second).verdict == "converged"
