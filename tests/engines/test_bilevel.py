"""BilevelSearchTrainer: which parameters each step moves, warm-up, schedules, shared vs synchronous alphas,
exact resumption after an interruption. Tiny networks on in-memory tensors (no data pipeline needed)."""

from __future__ import annotations

import os
import re
import signal

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.handlers import CheckpointLoader, StatsHandler, from_engine
from monai.losses import DiceLoss
from monai.transforms import Compose, RandFlipd, RandGaussianNoised
from monai.utils import set_determinism

from monai_nasscam.engines import (
    ARCH_LOSS,
    SCHEDULES,
    BilevelEvents,
    BilevelSearchTrainer,
    check_search_inputs,
    count_alpha_steps,
    steps_for_epoch,
)
from monai_nasscam.errors import InputError
from monai_nasscam.handlers import ResumableCheckpointSaver, SearchInterrupted
from monai_nasscam.networks import Genotype, NASSCAMUNet

FEATURES = (4, 8, 8, 8, 8)


def _items(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.rand(3, 32, 32, generator=g), "label": (torch.rand(4, 32, 32, generator=g) > 0.7).float()}
        for _ in range(n)
    ]


def _transform():
    return Compose(
        [RandFlipd(["image", "label"], prob=0.5, spatial_axis=0), RandGaussianNoised("image", prob=0.5, std=0.05)]
    )


def _setup(max_epochs=3, warmup_epochs=1, seed=0, init_seed=0, synchronous=True, n_train=4, n_arch=3, **kwargs):
    set_determinism(init_seed)
    net = NASSCAMUNet(features=FEATURES, synchronous=synchronous)
    train = DataLoader(Dataset(_items(n_train, 1), _transform()), batch_size=2, shuffle=True, num_workers=0)
    arch = DataLoader(Dataset(_items(n_arch, 2), _transform()), batch_size=2, shuffle=True, num_workers=0)
    opt = torch.optim.Adam(net.weight_parameters(), lr=1e-3)
    aopt = torch.optim.Adam(net.arch_parameters(), lr=3e-2)
    trainer = BilevelSearchTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=train,
        network=net,
        optimizer=opt,
        loss_function=DiceLoss(sigmoid=True),
        arch_data_loader=arch,
        arch_optimizer=aopt,
        warmup_epochs=warmup_epochs,
        seed=seed,
        **kwargs,
    )
    return net, trainer


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_steps_move_only_their_parameters():
    net, trainer = _setup(max_epochs=1, warmup_epochs=0)
    batch = next(iter(trainer.data_loader))
    seen = {}

    def spy(name, optimizer):
        step = optimizer.step

        def wrapped(*args, **kwargs):
            seen[name] = (
                [p.grad is None for p in net.weight_parameters()],
                [p.grad is None for p in net.arch_parameters()],
            )
            return step(*args, **kwargs)

        optimizer.step = wrapped

    spy("w", trainer.optimizer)
    spy("alpha", trainer.arch_optimizer)

    a0, w0 = _snapshot(net.arch_parameters()), _snapshot(net.weight_parameters())
    loss = trainer.weight_step(batch)
    assert torch.isfinite(loss)
    assert _same(a0, net.arch_parameters()), "a weight step moved the alphas"
    assert not _same(w0, net.weight_parameters())
    w_none, a_none = seen["w"]
    assert all(a_none), "alphas got gradients in a weight step"
    assert not all(w_none)

    w1 = _snapshot(net.weight_parameters())
    trainer.arch_step(batch)
    assert _same(w1, net.weight_parameters()), "an alpha step moved the weights"
    assert not _same(a0, net.arch_parameters())
    w_none, a_none = seen["alpha"]
    assert all(w_none), "weights got gradients in an alpha step"
    assert not any(a_none)
    # gradients are cleared after each step and requires_grad restored
    assert all(p.grad is None and p.requires_grad for p in net.parameters())


def test_warmup_never_moves_alpha_and_events_fire():
    net, trainer = _setup(max_epochs=2, warmup_epochs=2)
    a0 = _snapshot(net.arch_parameters())
    counts = {"arch": 0, "backward": 0}
    trainer.add_event_handler(BilevelEvents.ARCH_STEP_COMPLETED, lambda e: counts.__setitem__("arch", counts["arch"] + 1))
    from monai.engines.utils import IterationEvents

    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda e: counts.__setitem__("backward", counts["backward"] + 1))
    StatsHandler(name="search_test", output_transform=from_engine(["loss"], first=True)).attach(trainer)
    trainer.run()
    assert _same(a0, net.arch_parameters())
    assert counts == {"arch": 0, "backward": trainer.state.iteration}
    assert not trainer.arch_optimizer.state, "the alpha optimiser must not have stepped during warm-up"


def test_iteration_schedule_alternates_and_cycles_arch_loader():
    net, trainer = _setup(max_epochs=3, warmup_epochs=1, n_train=4, n_arch=3)
    losses = []
    trainer.add_event_handler(BilevelEvents.ARCH_STEP_COMPLETED, lambda e: losses.append(float(e.state.output[ARCH_LOSS])))
    trainer.run()
    # 2 epochs x 2 iterations of alpha steps; the architecture loader (2 batches) cycled independently
    assert len(losses) == 4
    assert (trainer.state.arch_pass, trainer.state.arch_draws) == (1, 2)
    assert ARCH_LOSS in trainer.state.output[0]


def test_epoch_schedule_reference():
    net, trainer = _setup(max_epochs=5, warmup_epochs=1, schedule="epoch")
    assert [trainer.steps_for_epoch(e) for e in range(1, 6)] == [
        (True, False),  # warm-up
        (False, True),  # e=1
        (False, True),  # e=2
        (True, False),  # e=3: e % 3 == 0
        (False, True),
    ]
    snaps = []
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: snaps.append((_snapshot(net.weight_parameters()), _snapshot(net.arch_parameters())))
    )
    trainer.run()
    (w1, a1), (w2, a2), (w3, a3), (w4, a4), (w5, a5) = snaps
    assert _same(w1, w2) and _same(w2, w3) and not _same(a1, a2) and not _same(a2, a3)  # alpha epochs
    assert _same(a3, a4) and not _same(w3, w4)  # weight epoch
    assert _same(w4, w5) and not _same(a4, a5)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_a_schedule_is_one_rule_that_the_trainer_the_alpha_budget_and_the_checks_read(schedule, tmp_path):
    """Every schedule of engines.schedule.SCHEDULES runs in the trainer, its alpha steps are the ones the alpha
    learning-rate budget counts, and the search's checks accept it (they fail on the missing dataset instead)."""
    net, trainer = _setup(max_epochs=4, warmup_epochs=1, schedule=schedule, epoch_cycle=2)
    made = []
    trainer.add_event_handler(BilevelEvents.ARCH_STEP_COMPLETED, lambda e: made.append(e.state.epoch))
    trainer.run()
    assert [trainer.steps_for_epoch(e) for e in range(1, 5)] == [steps_for_epoch(e, 1, schedule, 2) for e in range(1, 5)]
    assert len(made) == count_alpha_steps(4, 1, len(trainer.data_loader), schedule, 2) > 0
    with pytest.raises(InputError, match="dataset_dir") as refused:
        check_search_inputs(tmp_path / "no_prep", epochs=4, warmup_epochs=1, schedule=schedule, epoch_cycle=2)
    assert "schedule must be" not in str(refused.value)


def test_a_schedule_the_rule_does_not_know_is_refused_everywhere(tmp_path):
    """The checks accept exactly the names of SCHEDULES (their message lists them all), and the trainer and the
    alpha budget refuse any other: no list of schedule names of their own."""
    with pytest.raises(InputError, match="schedule") as refused:
        check_search_inputs(tmp_path / "no_prep", epochs=4, warmup_epochs=1, schedule="sometimes")
    assert re.findall(r"'([a-z]+)' \(", str(refused.value)) == list(SCHEDULES)
    with pytest.raises(ValueError, match="schedule"):
        count_alpha_steps(4, 1, 10, "sometimes")
    with pytest.raises(ValueError, match="schedule"):
        _setup(max_epochs=1, schedule="sometimes")


@pytest.mark.parametrize("synchronous", [True, False])
def test_synchronous_vs_shared_alphas(synchronous):
    net, trainer = _setup(max_epochs=2, warmup_epochs=0, synchronous=synchronous)
    trainer.run()
    genotype = Genotype.from_model(net)
    assert genotype.synchronous is synchronous
    alphas = [genotype.alphas[p] for p in genotype.alphas]
    if synchronous:
        assert len(net.arch_parameters()) == 16
        assert any(a != alphas[0] for a in alphas[1:]), "synchronous search left every module identical"
    else:
        assert len(net.arch_parameters()) == 2  # one SAM and one CAM alpha shared by the 8 modules
        assert all(a == alphas[0] for a in alphas[1:])
        blocks = net.attention_blocks()
        assert all(torch.equal(b.sam.cell.op_weights(), blocks["down1"].sam.cell.op_weights()) for b in blocks.values())


def _run_to_end(tmp_path, **kwargs):
    net, trainer = _setup(**kwargs)
    trainer.run()
    return _snapshot(net.arch_parameters()), _snapshot(net.weight_parameters())


def test_arch_accumulation_averages_the_gradients_of_consecutive_architecture_batches():
    # known answer: with plain SGD at lr 1, one alpha step moves the alphas by minus the mean of the alpha gradients
    # of the architecture batches it accumulates (here both batches of a 2-batch loader, in order)
    set_determinism(0)
    net = NASSCAMUNet(features=FEATURES, dropout=0.0)
    batches = [
        {key: torch.stack([item[key] for item in _items(2, seed)]) for key in ("image", "label")} for seed in (5, 6)
    ]
    loss_fn = DiceLoss(sigmoid=True)
    trainer = BilevelSearchTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[batches[0]],
        network=net,
        optimizer=torch.optim.SGD(net.weight_parameters(), lr=0.0),  # the weights stay where they are
        loss_function=loss_fn,
        arch_data_loader=batches,
        arch_optimizer=torch.optim.SGD(net.arch_parameters(), lr=1.0),
        arch_accumulation=2,
        seed=0,
    )
    before = {}

    def _snapshot_at_alpha_step(engine):
        before["alphas"] = _snapshot(net.arch_parameters())
        before["state"] = {k: v.clone() for k, v in net.state_dict().items()}

    trainer.add_event_handler(BilevelEvents.ARCH_STEP_STARTED, _snapshot_at_alpha_step)
    losses = []
    trainer.add_event_handler(BilevelEvents.ARCH_STEP_COMPLETED, lambda e: losses.append(e.state.output[ARCH_LOSS]))
    trainer.run()
    assert trainer.state.arch_draws == 2 and len(losses) == 1

    ref = NASSCAMUNet(features=FEATURES, dropout=0.0)
    grads, ref_losses = [], []
    for batch in batches:
        ref.load_state_dict(before["state"])
        ref.train()
        ref.zero_grad(set_to_none=True)
        loss = loss_fn(ref(batch["image"]), batch["label"])
        loss.backward()
        grads.append([a.grad.clone() for a in ref.arch_parameters()])
        ref_losses.append(float(loss.detach()))
    expected = [a - (g0 + g1) / 2 for a, g0, g1 in zip(before["alphas"], *grads)]
    for got, want in zip(net.arch_parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-6)
    assert float(losses[0]) == pytest.approx(sum(ref_losses) / 2, rel=1e-5)


def test_arch_accumulation_is_checked(tmp_path):
    set_determinism(0)
    net = NASSCAMUNet(features=FEATURES)
    loader = DataLoader(Dataset(_items(2, 0)), batch_size=2)
    args = dict(device="cpu", max_epochs=1, train_data_loader=loader, network=net, loss_function=DiceLoss(sigmoid=True),
                arch_data_loader=loader, optimizer=torch.optim.Adam(net.weight_parameters()),
                arch_optimizer=torch.optim.Adam(net.arch_parameters()))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=re.escape(f"arch_accumulation must be an integer >= 1, got {bad!r}.")):
            BilevelSearchTrainer(arch_accumulation=bad, **args)
    with pytest.raises(ValueError, match="arch_accumulation must be an integer >= 1"):  # search.yaml's check
        check_search_inputs(tmp_path, arch_accumulation=0)


@pytest.mark.parametrize(
    "stop_at, accumulation", [(3, 1), (4, 1), (3, 2)], ids=["mid-epoch", "epoch-end", "mid-epoch-accumulating"]
)
def test_interrupt_and_resume_is_exact(tmp_path, stop_at, accumulation):
    kwargs = dict(max_epochs=3, warmup_epochs=1, n_train=4, n_arch=3, arch_accumulation=accumulation)
    alpha_ref, weights_ref = _run_to_end(tmp_path, **kwargs)

    # interrupted run: a real SIGINT during iteration `stop_at`; the iteration finishes, is saved, the run stops
    net, trainer = _setup(**kwargs)
    save = {"network": net, "optimizer": trainer.optimizer, "arch_optimizer": trainer.arch_optimizer, "trainer": trainer}
    saver = ResumableCheckpointSaver(tmp_path, save, epoch_interval=1)
    saver.attach(trainer)
    trainer.add_event_handler(Events.ITERATION_STARTED(once=stop_at), lambda e: os.kill(os.getpid(), signal.SIGINT))
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(SearchInterrupted) as info:
        trainer.run()
    assert signal.getsignal(signal.SIGINT) is previous, "signal handlers not restored"
    assert info.value.iteration == stop_at
    assert saver.path.is_file()
    state = torch.load(saver.path, weights_only=True)
    assert state["trainer"]["iteration"] == stop_at

    # resumed run from a differently initialised network
    net2, trainer2 = _setup(init_seed=123, **kwargs)
    assert not _same(alpha_ref, net2.arch_parameters())
    load = {"network": net2, "optimizer": trainer2.optimizer, "arch_optimizer": trainer2.arch_optimizer, "trainer": trainer2}
    CheckpointLoader(str(saver.path), load).attach(trainer2)
    trainer2.run()
    assert trainer2.state.iteration == 6
    assert _same(alpha_ref, net2.arch_parameters()), "resumed search reached different alphas"
    assert _same(weights_ref, net2.weight_parameters())


def test_rejects_bad_setups():
    set_determinism(0)
    net = NASSCAMUNet(features=FEATURES)
    loader = DataLoader(Dataset(_items(2, 0)), batch_size=2)
    wopt = torch.optim.Adam(net.weight_parameters())
    aopt = torch.optim.Adam(net.arch_parameters())
    args = dict(device="cpu", max_epochs=1, train_data_loader=loader, network=net, loss_function=DiceLoss(sigmoid=True), arch_data_loader=loader)
    with pytest.raises(ValueError, match="weight optimizer holds architecture"):
        BilevelSearchTrainer(optimizer=torch.optim.Adam(net.parameters()), arch_optimizer=aopt, **args)
    with pytest.raises(ValueError, match="non-architecture"):
        BilevelSearchTrainer(optimizer=wopt, arch_optimizer=torch.optim.Adam(net.parameters()), **args)
    with pytest.raises(ValueError, match="schedule"):
        BilevelSearchTrainer(optimizer=wopt, arch_optimizer=aopt, schedule="sometimes", **args)
    with pytest.warns(UserWarning, match="CUDA"):
        trainer = BilevelSearchTrainer(optimizer=wopt, arch_optimizer=aopt, amp=True, **args)
    assert trainer.amp is False
    fixed = NASSCAMUNet(features=FEATURES, genotype=Genotype.from_model(net))
    with pytest.raises(ValueError, match="no architecture parameters"):
        BilevelSearchTrainer(
            optimizer=torch.optim.Adam(fixed.parameters()), arch_optimizer=aopt, **{**args, "network": fixed}
        )


def test_distributed_data_parallel(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        set_determinism(0)
        net = NASSCAMUNet(features=FEATURES)
        loader = DataLoader(Dataset(_items(4, 0)), batch_size=2)
        args = dict(device="cpu", max_epochs=2, train_data_loader=loader, loss_function=DiceLoss(sigmoid=True), arch_data_loader=loader)
        opt, aopt = torch.optim.Adam(net.weight_parameters()), torch.optim.Adam(net.arch_parameters(), lr=1e-2)
        with pytest.raises(ValueError, match="find_unused_parameters=True"):
            BilevelSearchTrainer(network=torch.nn.parallel.DistributedDataParallel(net), optimizer=opt, arch_optimizer=aopt, **args)
        net = NASSCAMUNet(features=FEATURES)
        opt, aopt = torch.optim.Adam(net.weight_parameters()), torch.optim.Adam(net.arch_parameters(), lr=1e-2)
        ddp = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
        trainer = BilevelSearchTrainer(network=ddp, optimizer=opt, arch_optimizer=aopt, warmup_epochs=1, seed=0, **args)
        a0 = _snapshot(net.arch_parameters())
        trainer.run()
        assert not _same(a0, net.arch_parameters())
        assert Genotype.from_model(ddp.module).synchronous
    finally:
        dist.destroy_process_group()
