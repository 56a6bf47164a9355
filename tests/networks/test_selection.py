"""Selection by perturbation: the statistics (bootstrap intervals, decided / tied, cheapest op on ties, FLOPs) with
hand-computed answers, the replayed forward pass against a full one, the selection loop on a tiny supernet (its
records, its fixed cells computing the derived network, restoring the supernet), the genotype format version 3 and
the search handler end to end on a tiny search."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn as nn
from monai.data import DataLoader, Dataset
from monai.losses import DiceLoss

from monai_nasscam.engines import BilevelSearchTrainer
from monai_nasscam.handlers import PerturbationSelectionHandler
from monai_nasscam.losses import ExpLogLoss
from monai_nasscam.networks import POSITIONS, Genotype, NASSAMBlock, NASSCAMUNet
from monai_nasscam.networks.ops import OPS
from monai_nasscam.networks.importance import bootstrap_interval, cell_flops, decide_edge, masked, op_flops
from monai_nasscam.networks.replay import PrefixReplay
from monai_nasscam.networks.selection import PerturbationSelection, cell_groups

FEATURES = (4, 8, 8, 8, 8)


def _net(**kwargs) -> NASSCAMUNet:
    torch.manual_seed(0)
    return NASSCAMUNet(features=FEATURES, **kwargs).eval()


def _crops(n: int = 4, seed: int = 0, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), (torch.rand(n, 4, size, size, generator=g) > 0.7).float()


# ---------------------------------------------------------------------------------------------------- statistics
def test_bootstrap_interval_known_answers():
    values = torch.tensor([[1.0, 2.0], [1.0, 4.0], [1.0, 6.0]])
    mean, low, high = bootstrap_interval(values, samples=2000, seed=3)
    assert mean.tolist() == [1.0, 4.0]
    assert low[0] == high[0] == 1.0  # a constant column has no spread
    assert 2.0 <= low[1] < 4.0 < high[1] <= 6.0
    again = bootstrap_interval(values, samples=2000, seed=3)
    assert torch.equal(again[1], low) and torch.equal(again[2], high)  # seeded: reproducible
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_interval(torch.tensor([[1.0], [float("nan")]]))
    with pytest.raises(ValueError, match=r"shape \(crops >= 1, candidates\)"):
        bootstrap_interval(torch.zeros(3))


def test_decide_edge_decided_tied_and_cheapest():
    names = ("none", "conv1", "conv3", "dil_conv3")
    flops = (0, 10, 90, 90)
    decided = decide_edge(names, [0.0, 1.0, 0.5, 0.1], [0.0, 0.8, 0.2, 0.0], [0.0, 1.2, 0.7, 0.3], flops)
    assert decided.op == decided.winner == "conv1" and decided.decided and decided.tied == ("conv1",)
    # conv3 wins, but conv1's interval reaches conv3's: tied, and conv1 costs less
    tied = decide_edge(names, [0.0, 0.9, 1.0, 0.1], [0.0, 0.5, 0.8, 0.0], [0.0, 0.85, 1.2, 0.3], flops)
    assert (tied.op, tied.winner, tied.decided, tied.tied) == ("conv1", "conv3", False, ("conv3", "conv1"))
    # every candidate tied: none (no FLOPs) is kept, or with none excluded the cheapest convolution
    flat = ([0.0] * 4, [-1.0] * 4, [1.0] * 4)
    assert decide_edge(names, *flat, flops).op == "none"
    assert decide_edge(names, *flat, flops, allowed=[False, True, True, True]).op == "conv1"
    # equal FLOPs: the first in candidate order
    assert decide_edge(names, [0, 0, 1.0, 1.0], [0, 0, 0.5, 0.5], [0, 0, 1.5, 1.5], flops).op == "conv3"
    with pytest.raises(ValueError, match="no candidate is allowed"):
        decide_edge(names, *flat, flops, allowed=[False] * 4)


def test_flops_from_the_op_table():
    assert op_flops("sam", "conv3", 4, 32, (8, 8)) == 2 * 9 * 4 * 32 * 64
    assert op_flops("sam", "dil_conv5", 32, 1, (8, 8)) == 2 * 25 * 32 * 64  # dilation spreads the taps, same count
    assert op_flops("cam", "conv15", 1, 32, (16,)) == 2 * 15 * 32 * 16
    assert op_flops("sam", "none", 4, 32, (8, 8)) == 0
    with pytest.raises(ValueError, match="unknown sam operation 'conv9'"):
        op_flops("sam", "conv9", 1, 1, (4, 4))
    cell = NASSAMBlock(2, 4).cell
    ops = ["conv1", "none", "conv3", "none", "none", "conv1"]
    # n0->n1: 1x1 4->32; n1->n2: 3x3 32->32; n2->n3: 1x1 32->1, on 8 x 8
    assert cell_flops(cell, (8, 8), ops) == 2 * 64 * (4 * 32 + 9 * 32 * 32 + 32)


def test_masked_weights_keep_the_edge_scale():
    w = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]])
    out = masked(w, 0, 0)
    assert out[0].tolist() == [0.0, 0.5, 0.5] and torch.equal(out[1], w[1])
    assert torch.equal(w[0], torch.tensor([0.5, 0.25, 0.25]))  # a copy


# ------------------------------------------------------------------------------------------------------- replay
def test_replay_equals_a_full_pass_for_every_cell():
    net = _net()
    x, _ = _crops(2)
    replay = PrefixReplay(net)
    changed = 0
    with torch.no_grad():
        reference = replay.record(lambda: net(x))
        for group in cell_groups(net):
            cell = group.cells[0]
            assert torch.equal(replay.replay(lambda: net(x), [cell], check=True), reference)
            cell.weight_override = masked(cell.mixture_weights().detach(), 3, 2)
            fast, full = replay.replay(lambda: net(x), [cell]), net(x)
            cell.weight_override = None
            torch.testing.assert_close(fast, full, rtol=0, atol=0)
            changed += not torch.equal(fast, reference)
    assert changed >= 8  # (a mask can be invisible where the other branch of NAS-SCAM-P's maximum wins everywhere)


class _InPlace(nn.Module):
    """A network that modifies an earlier module's output in place: replaying it would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Conv2d(3, 4, 1)
        self.block = NASSAMBlock(2, 4)

    def forward(self, x):
        h = self.pre(x)
        out = self.block(h)
        h.add_(1.0)
        return out + h


def test_replay_refuses_a_forward_that_modifies_outputs_in_place():
    net = _InPlace().eval()
    x = torch.rand(1, 3, 16, 16)
    replay = PrefixReplay(net)
    with torch.no_grad():
        replay.record(lambda: net(x))
        with pytest.raises(RuntimeError, match="modifies its modules' outputs in place"):
            replay.replay(lambda: net(x), [net.block.cell], check=True)
    with pytest.raises(RuntimeError, match="changed cells that were called"):
        replay.replay(lambda: net(x), [NASSAMBlock(2, 4).cell])


# ------------------------------------------------------------------------------------------------ the selection
def _selection(net, unit="cell", batches=1, **kwargs) -> PerturbationSelection:
    x, y = _crops(2 * batches)
    loss = ExpLogLoss(sigmoid=True, batch=True)
    crops = [(x[i : i + 2], y[i : i + 2]) for i in range(0, 2 * batches, 2)]
    return PerturbationSelection(net, cell_groups(net), crops, net, loss, unit=unit, **kwargs)


def test_selection_records_every_edge_and_its_fixed_cells_compute_the_derived_network():
    net = _net(attention="nas-sam")
    x, _ = _crops(2, seed=5)
    with torch.no_grad():
        before = net(x)
    selection = _selection(net, batches=2)
    chosen = selection.run()
    # one survey pass; per cell a check, and per batch a reference pass and one pass per candidate and edge
    assert selection.passes == 1 + 8 * (1 + 2 * (1 + 6 * 6))
    record = selection.record()
    assert record["method"] == "perturbation" and record["edges"] == 48 and record["crops"] == 4
    assert record["decided"] == 48 - len(record["tied"])
    for position in POSITIONS:
        for kind in ("sam",):
            edges = record["modules"][position][kind]
            assert [r["op"] for r in edges] == chosen[position][kind]
            for e, r in enumerate(edges):
                assert set(r["importance"]) == set(OPS[kind])
                assert all(v["low"] <= v["high"] for v in r["importance"].values())
                assert r["decided"] == (r["tied"] == [r["winner"]])
                if r["decided"]:
                    assert r["op"] == r["winner"]
                else:  # the cheapest tied op: on one edge FLOPs grow with the kernel size (none: 0)
                    cost = {n: (OPS[kind][n].kernel_size, list(OPS[kind]).index(n)) for n in r["tied"]}
                    assert r["op"] == min(r["tied"], key=cost.get)
    # every cell decided: the network now computes the derived network with the supernet's weights
    derived = NASSCAMUNet(features=FEATURES, attention=None, genotype=_genotype(chosen, attention="nas-sam")).eval()
    derived.load_state_dict(net.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(net(x), derived(x), rtol=1e-4, atol=1e-5)
    selection.release()  # the supernet again, unchanged (no fine-tuning)
    assert all(c.searchable and c.weight_override is None for g in cell_groups(net) for c in g.cells)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)


def _genotype(chosen, synchronous=True, attention="nas-scam-p") -> Genotype:
    modules = [{"position": p, **chosen[p]} for p in POSITIONS]
    return Genotype(attention, synchronous, modules)


def test_a_shared_search_decides_one_cell_per_kind_for_all_positions():
    net = _net(synchronous=False)
    selection = _selection(net, unit="edge", exclude_none=True)
    chosen = selection.run()
    record = selection.record()
    assert record["edges"] == 12 and all(t.startswith("shared ") for t in record["tied"])
    assert all(chosen[p] == chosen["down1"] for p in POSITIONS)
    assert all(op != "none" for p in POSITIONS for ops in chosen[p].values() for op in ops)
    _genotype(chosen, synchronous=False)  # valid: the same ops at the 8 positions
    steps = sorted(r["step"] for r in record["modules"]["down1"]["sam"] + record["modules"]["down1"]["cam"])
    assert steps == list(range(1, 13))  # an edge at a time


def test_finetuning_between_decisions_moves_only_the_chosen_ops():
    net = _net(attention="nas-sam")
    x, y = _crops(4)
    loss = DiceLoss(sigmoid=True)
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.1)
    calls = []

    def finetune(steps):
        calls.append(steps)
        net.train()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss(net(x), y).backward()
            opt.step()

    up4 = net.attention_blocks()["up4"].cell
    weights = {name: op[0].weight.detach().clone() for name, op in up4.edges[0].items()}
    groups = cell_groups(net)[-3:]  # up2, up3, up4
    selection = PerturbationSelection(net, groups, [(x, y)], net, loss, finetune, interval=2, dice=False)
    chosen = selection.run()
    assert calls == [2, 2] and set(chosen) == {"up2", "up3", "up4"}  # between the 3 decisions
    kept = chosen["up4"]["sam"][0]
    for name, before in weights.items():  # up4 SAM was decided first: afterwards only its chosen op trains
        assert torch.equal(up4.edges[0][name][0].weight, before) == (name != kept), name


# ------------------------------------------------------------------------------------------------------ genotype
def test_genotype_version_3_round_trip_and_refusals(tmp_path):
    net = _net(attention="nas-cam")
    selection = _selection(net)
    chosen = selection.run()
    selection.release()
    argmax = Genotype.from_model(net)
    ops = {m["position"]: {k: v for k, v in m.items() if k != "position"} for m in argmax.modules}
    genotype = Genotype(argmax.attention, True, [{"position": p, **chosen[p]} for p in POSITIONS], argmax.alphas,
                        argmax.search, selection.record(argmax=ops))
    path = genotype.save(tmp_path / "genotype.json")
    data = json.loads(path.read_text())
    assert data["version"] == 3 and data["selection"]["flops"]["argmax"] > 0
    loaded = Genotype.load(path)
    assert loaded == genotype and loaded.selection == genotype.selection
    # a record that contradicts the genotype's ops
    data["selection"]["modules"]["up2"]["cam"][4]["op"] = "conv15" if chosen["up2"]["cam"][4] != "conv15" else "conv9"
    data["modules"][POSITIONS.index("up2")]["cam"][4] = chosen["up2"]["cam"][4]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"genotype.json: 'selection': module up2 cam edge 4 \(n1->n3\) records op"):
        Genotype.load(path)
    data["selection"] = {"method": "guess"}
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"'selection': unknown method 'guess'"):
        Genotype.load(path)
    # version 2 (no selection section) still loads
    data.pop("selection")
    data["version"] = 2
    path.write_text(json.dumps(data))
    assert Genotype.load(path).selection is None


# ------------------------------------------------------------------------------------------------------- handler
def test_search_with_selection_by_perturbation_writes_the_decided_genotype(tmp_path, caplog):
    torch.manual_seed(0)
    net = NASSCAMUNet(features=FEATURES, attention="nas-cam")
    g = torch.Generator().manual_seed(1)
    items = [{"image": torch.rand(3, 16, 16, generator=g), "label": (torch.rand(4, 16, 16, generator=g) > 0.7).float()}
             for _ in range(4)]
    loader = DataLoader(Dataset(items), batch_size=2, num_workers=0)
    trainer = BilevelSearchTrainer(
        device="cpu", max_epochs=2, train_data_loader=loader, network=net,
        optimizer=torch.optim.Adam(net.weight_parameters(), lr=1e-3), loss_function=DiceLoss(sigmoid=True),
        arch_data_loader=loader, arch_optimizer=torch.optim.Adam(net.arch_parameters(), lr=1e-2),
        warmup_epochs=2, seed=0,  # the frozen-alpha variant: no alpha step
    )
    handler = PerturbationSelectionHandler(net, tmp_path / "genotype.json", crops=4, interval=1, name="sel")
    handler.attach(trainer)
    with caplog.at_level(logging.INFO, logger="sel"):
        trainer.run()
    genotype = Genotype.load(tmp_path / "genotype.json")
    selection = genotype.selection
    assert selection["method"] == "perturbation" and selection["crops"] == 4 and selection["interval"] == 1
    assert (tmp_path / "genotype_heatmap.png").stat().st_size > 0
    said = [r.getMessage() for r in caplog.records]
    assert any(f"the data decided {selection['decided']} of 48 edges" in line for line in said)
    assert any("MFLOPs per 16 x 16 input" in line for line in said)
    assert genotype.search["epoch"] == 2 and genotype.alphas  # the final alphas, for the record
    with pytest.raises(ValueError, match="selection_crops must be at least 2"):
        PerturbationSelectionHandler(net, tmp_path / "g.json", crops=1)
