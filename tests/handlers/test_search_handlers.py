"""Search handlers and helpers: alpha figures and TensorBoard scalars, genotype savers, the atomic checkpoint,
the architecture split, resume paths, the reference preset."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from ignite.engine import Engine, Events

from monai_nasscam.data.datalist import read_datalist, split_architecture
from monai_nasscam.engines import resolve_resume
from monai_nasscam.overrides import as_bool
from monai_nasscam.handlers import (
    AlphaHeatmapSaver,
    AlphaTensorBoardHandler,
    BestGenotypeSaver,
    GenotypeSaver,
    ResumableCheckpointSaver,
    alpha_weights,
)
from monai_nasscam.handlers import SearchValidationHandler
from monai_nasscam.networks import POSITIONS, Genotype, NASSCAMUNet
from tests.utils import REPO



def _net(**kwargs) -> NASSCAMUNet:
    torch.manual_seed(0)
    net = NASSCAMUNet(features=(4, 8, 8, 8, 8), **kwargs)
    with torch.no_grad():
        for a in net.arch_parameters():
            a.add_(torch.randn_like(a))
    return net


def _evaluator(values: list[float]) -> Engine:
    """An engine whose epoch e reports metric values[e - 1] as its key metric."""
    engine = Engine(lambda e, b: None)
    engine.state.key_metric_name = "val_dice"

    @engine.on(Events.EPOCH_COMPLETED)  # before the handlers attached later
    def _metric(e):
        e.state.metrics = {"val_dice": values[e.state.epoch - 1]}

    return engine


def test_alpha_weights_and_tensorboard_scalars(scalar_writer):
    net = _net(attention="nas-scam-s")
    weights = alpha_weights(net)
    assert list(weights) == list(POSITIONS)
    names, w = weights["down1"]["cam"]
    assert w.shape == (6, 8) and names[0] == "none"
    torch.testing.assert_close(w.sum(-1), torch.ones(6))

    writer = scalar_writer
    handler = AlphaTensorBoardHandler(net, summary_writer=writer)
    trainer = Engine(lambda e, b: None)
    handler.attach(trainer)
    trainer.run([0], max_epochs=2)
    assert len(writer.scalars) == 3 * 8 * 6 * (6 + 8)  # epochs 0, 1, 2; 8 modules; 6 edges; SAM + CAM ops
    assert writer.scalars[("alpha/up2/sam/n1->n3/dil_conv5", 2)] == pytest.approx(float(weights["up2"]["sam"][1][4, 5]))


def test_heatmap_and_current_genotype(tmp_path):
    net = _net(attention="nas-sam")
    evaluator = Engine(lambda e, b: None)
    AlphaHeatmapSaver(net, tmp_path).attach(evaluator)
    GenotypeSaver(net, tmp_path).attach(evaluator)
    evaluator.run([0], max_epochs=2)
    for epoch in (1, 2):
        assert (tmp_path / "alpha" / f"alpha_epoch000{epoch}.png").read_bytes()[:4] == b"\x89PNG"
        genotype = Genotype.load(tmp_path / "genotypes" / f"genotype_epoch000{epoch}.json")
        assert genotype == Genotype.from_model(net)
    assert (tmp_path / "alpha_heatmap.png").is_file()
    assert not list(tmp_path.rglob(".*tmp*")), "temporary files left behind"


def test_best_genotype_is_the_best_validation(tmp_path):
    net = _net()
    evaluator = _evaluator([0.2, 0.5, 0.4])
    saver = BestGenotypeSaver(net, evaluator, tmp_path / "genotype.json")
    trainer = Engine(lambda e, b: None)
    saver.attach(trainer)
    genotypes = []

    @trainer.on(Events.EPOCH_COMPLETED)
    def _search_and_validate(engine):
        with torch.no_grad():  # the alphas move between validations
            for a in net.arch_parameters():
                a.add_(torch.randn_like(a))
        # as MONAI's evaluators do: the validation's epoch is the trainer's
        evaluator.state.max_epochs, evaluator.state.epoch, evaluator.state.iteration = engine.state.epoch, engine.state.epoch - 1, 0
        evaluator.state.epoch_length = 1
        evaluator.run([0])
        genotypes.append(Genotype.from_model(net))

    trainer.run([0], max_epochs=3)
    best = Genotype.load(tmp_path / "genotype.json")
    assert best == genotypes[1] and best != genotypes[2]
    assert saver.best_epoch == 2 and saver.best_metric == 0.5

    restored = BestGenotypeSaver(net, evaluator, tmp_path / "other.json")
    restored.load_state_dict(saver.state_dict())
    assert restored.write() and Genotype.load(tmp_path / "other.json") == best


def test_best_genotype_without_validation_writes_final(tmp_path):
    net = _net(synchronous=False)
    saver = BestGenotypeSaver(net, Engine(lambda e, b: None), tmp_path / "genotype.json")
    trainer = Engine(lambda e, b: None)
    saver.attach(trainer)
    trainer.run([0], max_epochs=1)
    genotype = Genotype.load(tmp_path / "genotype.json")
    assert genotype.synchronous is False and genotype == Genotype.from_model(net)


def test_checkpointer_is_atomic_and_stops_on_request(tmp_path):
    net = _net()
    trainer = Engine(lambda e, b: None)
    saver = ResumableCheckpointSaver(tmp_path, {"network": net, "trainer": trainer}, handle_signals=False)
    saver.attach(trainer)
    trainer.add_event_handler(Events.ITERATION_STARTED(once=5), lambda e: saver.request_stop())
    from monai_nasscam.handlers import SearchInterrupted

    with pytest.raises(SearchInterrupted, match="after iteration 5"):
        trainer.run(range(3), max_epochs=4)
    state = torch.load(saver.path, weights_only=True)
    assert state["trainer"]["iteration"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [saver.path.name]
    for key, value in net.state_dict().items():
        assert torch.equal(state["network"][key], value)


def test_architecture_split_and_datalist(tmp_path):
    items = [{"image": f"images/{i}.png", "label": f"labels/{i}.png", "name": str(i)} for i in range(9)]
    weights, arch = split_architecture(items, 0.5, seed=3)
    assert len(arch) == 4 and len(weights) == 5
    assert {d["name"] for d in weights}.isdisjoint(d["name"] for d in arch)
    assert split_architecture(items, 0.5, seed=3) == (weights, arch)
    assert split_architecture(items, 0.5, seed=4) != (weights, arch)
    names = sorted(d["name"] for d in arch)
    assert sorted(d["name"] for d in split_architecture(items[::-1], 0.5, seed=3)[1]) == names  # any datalist order
    with pytest.raises(ValueError, match="at least 2 training images"):
        split_architecture(items[:1])

    (tmp_path / "datalist.json").write_text(json.dumps({"training": items, "validation": items[:1]}))
    data = read_datalist(tmp_path)
    assert data["training"][0]["image"] == str(tmp_path / "images" / "0.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_datalist(tmp_path / "nowhere")


def test_resume_paths_and_bools(tmp_path):
    assert resolve_resume(False, tmp_path) is None and resolve_resume("false", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        resolve_resume(True, tmp_path)
    path = tmp_path / "checkpoints" / "search_checkpoint.pt"
    path.parent.mkdir()
    path.write_bytes(b"")
    assert resolve_resume("true", tmp_path) == str(path) == resolve_resume(str(path), "/elsewhere")
    assert as_bool("False") is False and as_bool("yes") is True and as_bool(1) is True
    with pytest.raises(ValueError, match="flag must be true or false"):
        as_bool("maybe", "flag")


def test_reference_preset_overrides_search():
    from monai.bundle import ConfigParser

    search = [str(REPO / "bundle/configs/train.yaml"), str(REPO / "bundle/configs/search.yaml")]
    parser = ConfigParser()
    parser.read_config([*search, str(REPO / "bundle/configs/reference.yaml")])
    assert (parser["warmup_epochs"], parser["schedule"], parser["learning_rate"], parser["arch_learning_rate"]) == (
        20,
        "epoch",
        1e-3,
        1e-3,
    )
    assert parser["epochs"] == 120 and parser["attention"] == "nas-scam-p"
    loss = parser.get_parsed_content("loss")
    assert (loss.w_dice, loss.w_cross, loss.gamma_dice, loss.batch, loss.sigmoid) == (1.0, 0.0, 0.3, True, True)

    patent = ConfigParser()
    patent.read_config(search)
    expected = {"epochs": 120, "warmup_epochs": 40, "learning_rate": 1e-4, "arch_learning_rate": "auto", "batch_size": 4}
    assert {k: patent[k] for k in expected} == expected
    # the budget-aware alpha rate is the patent's 1e-3 at the patent's budget (80 alpha epochs of 4,803 crops / 4)
    from monai_nasscam.engines import budget_arch_learning_rate, count_alpha_steps

    assert budget_arch_learning_rate("auto", count_alpha_steps(120, 40, 4803 // 4)) == 1e-3
    # and the paper preset fixes it at any budget
    fixed = ConfigParser()
    fixed.read_config([*search, str(REPO / "bundle/configs/patent.yaml")])
    assert fixed["arch_learning_rate"] == 1e-3 and fixed["learning_rate"] == 1e-4 and fixed["warmup_epochs"] == 40
    assert patent["roi_size"] == [256, 256] and patent["synchronous"] is True and patent["schedule"] == "iteration"


def _validating_trainer(net, evaluator) -> Engine:
    """A trainer that moves the alphas every epoch and validates at its epoch, as MONAI's ValidationHandler does."""
    trainer = Engine(lambda e, b: None)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _search_and_validate(engine):
        with torch.no_grad():
            for a in net.arch_parameters():
                a.add_(torch.randn_like(a))
        evaluator.state.max_epochs, evaluator.state.epoch, evaluator.state.iteration = engine.state.epoch, engine.state.epoch - 1, 0
        evaluator.state.epoch_length = 1
        evaluator.run([0])

    return trainer


def test_warmup_validation_is_never_the_best_genotype(tmp_path, caplog):
    net = _net()
    evaluator = _evaluator([0.9, 0.5, 0.6, 0.55])  # epoch 1 (warm-up) has the highest Dice
    saver = BestGenotypeSaver(net, evaluator, tmp_path / "genotype.json")
    trainer = _validating_trainer(net, evaluator)
    genotypes = []
    saver.attach(trainer)
    trainer.warmup_epochs = 1  # read from the trainer when needed (a BilevelSearchTrainer sets it after attaching)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: genotypes.append(Genotype.from_model(net)))
    trainer.run([0], max_epochs=4)
    assert saver.warmup_epochs == 1 and saver.best_epoch == 3 and saver.best_metric == 0.6
    assert Genotype.load(tmp_path / "genotype.json") == genotypes[2]
    assert (tmp_path / "genotype_heatmap.png").stat().st_size > 0  # the written genotype's heatmap

    # only warm-up validations: the best of them, with a warning
    evaluator = _evaluator([0.3, 0.4])
    saver = BestGenotypeSaver(net, evaluator, tmp_path / "warm.json", warmup_epochs=5, heatmap_name=None)
    trainer = _validating_trainer(net, evaluator)
    saver.attach(trainer)
    with caplog.at_level("WARNING"):
        trainer.run([0], max_epochs=2)
    assert saver.best_epoch == 2 and Genotype.load(tmp_path / "warm.json").search["epoch"] == 2
    assert any("no validation after the warm-up (epochs 1-5" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("interval, validated", [(2, [2, 4, 5]), (1, [1, 2, 3, 4, 5]), (5, [5]), (3, [3, 5])])
def test_final_epoch_is_always_validated_and_checkpointed(tmp_path, interval, validated):
    from monai.engines import Evaluator

    net = _net()
    evaluator = Evaluator(device="cpu", val_data_loader=[0], iteration_update=lambda e, b: None)
    evaluator.state.key_metric_name = "val_dice"
    epochs = []

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metric(e):  # Dice grows every epoch: the last validation is the best
        epochs.append(e.state.epoch)
        e.state.metrics = {"val_dice": 0.1 * e.state.epoch}

    trainer = Engine(lambda e, b: None)
    SearchValidationHandler(evaluator, interval=interval).attach(trainer)
    saver = BestGenotypeSaver(net, evaluator, tmp_path / "genotype.json", heatmap_name=None)
    saver.attach(trainer)
    ResumableCheckpointSaver(tmp_path / "ckpt", {"best_genotype": saver}, handle_signals=False).attach(trainer)
    trainer.run([0], max_epochs=5)
    assert epochs == validated
    assert saver.best_epoch == 5 and Genotype.load(tmp_path / "genotype.json").search["epoch"] == 5
    # the epoch's checkpoint is written after the final validation, so a resume keeps it
    state = torch.load(tmp_path / "ckpt" / "search_checkpoint.pt", weights_only=False)
    assert state["best_genotype"]["best_epoch"] == 5


def test_a_resumed_search_does_not_log_an_alpha_rate_it_does_not_use(caplog):
    from monai_nasscam.engines import budget_arch_learning_rate

    with caplog.at_level(logging.INFO, logger="monai_nasscam.engines.schedule"):
        budget_arch_learning_rate("auto", 20)
        budget_arch_learning_rate("auto", 20, resuming=True)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["arch_learning_rate auto: 0.5 for 20 alpha steps (max(1e-3, 10 / steps))",
                        "arch_learning_rate auto: resuming, the checkpoint's alpha learning rate is kept"]


def test_a_resumed_run_logs_where_it_continues_and_its_learning_rates(tmp_path, caplog):
    from monai.handlers import CheckpointLoader

    from monai_nasscam.handlers import SearchInterrupted

    def run(max_epochs: int, resume: bool, stop_at: int | None = None) -> list[str]:
        net = torch.nn.Linear(2, 2)
        trainer = Engine(lambda e, b: None)
        trainer.optimizer = torch.optim.SGD(net.parameters(), lr=0.01)  # as MONAI's trainers hold it
        trainer.arch_optimizer = torch.optim.Adam(net.parameters(), lr=0.25)
        objects = {"network": net, "trainer": trainer, "optimizer": trainer.optimizer, "arch": trainer.arch_optimizer}
        saver = ResumableCheckpointSaver(tmp_path, objects, handle_signals=False)
        saver.attach(trainer)
        if resume:  # the bundle attaches its CheckpointLoader after the saver
            trainer.arch_optimizer.param_groups[0]["lr"] = 99.0  # the checkpoint's rate comes back
            CheckpointLoader(str(saver.path), objects).attach(trainer)
        if stop_at is not None:
            trainer.add_event_handler(Events.ITERATION_STARTED(once=stop_at), lambda e: saver.request_stop())
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=trainer.logger.name):
            try:
                trainer.run(range(2), max_epochs=max_epochs)
            except SearchInterrupted:
                pass
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed")]

    assert run(2, resume=False) == []  # from scratch: nothing said
    assert run(3, resume=True) == [
        "resumed at epoch 3 of 3 (the checkpoint's iteration 4, 2 epoch(s) finished); learning rate 0.01, alpha "
        "learning rate 0.25 (the checkpoint's)"
    ]
    (tmp_path / "search_checkpoint.pt").unlink()
    run(3, resume=False, stop_at=3)  # stopped after iteration 3: in epoch 2, after its first iteration
    assert run(3, resume=True) == [
        "resumed in epoch 2 of 3 after its iteration 1 of 2 (the checkpoint's iteration 3, 1 epoch(s) finished); "
        "learning rate 0.01, alpha learning rate 0.25 (the checkpoint's)"
    ]
