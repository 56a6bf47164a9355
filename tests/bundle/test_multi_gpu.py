"""Multi-GPU configs on CPU: ``torchrun --nproc_per_node=2`` with the gloo backend.

- the search (train.yaml + search.yaml + multi_gpu_search.yaml, a weight-only epoch then an epoch of weight and alpha steps) and
  the retraining (train.yaml + multi_gpu_train.yaml) end with identical weights, alphas and BatchNorm statistics on
  both ranks, the alphas moved, the ranks drew different crops, and only rank 0 wrote files (rank 1 is given its own
  output folder, which must stay empty);
- monai_nasscam.engines.distributed in two spawned gloo processes: gradient averaging at the optimiser step (also
  with gradients missing on one rank), broadcast, BatchNorm statistics, the synced GradScaler;
- the multi-GPU configs still disable the handlers they mean to, and repeat the base configs' initialize.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from monai_nasscam.engines import distributed as mgpu
from tests.utils import REPO

CONFIGS = REPO / "bundle" / "configs"
_TORCHRUN = Path(sys.executable).with_name("torchrun")
TORCHRUN = [str(_TORCHRUN)] if _TORCHRUN.exists() else [sys.executable, "-m", "torch.distributed.run"]
TINY = ["--roi_size", "[32,32]", "--features", "[4,8,8,8,8]", "--epoch_crops", "8", "--num_workers", "0"]
TINY += ["--progress", "false"]

# test-only override: rank r > 0 writes into OUTPUT_rank{r} (must stay empty); every rank dumps its state at the end
DUMP = """
base_output: '{output}'
dump_dir: '{dump}'
output_dir: "$@base_output + ('' if @rank == 0 else '_rank' + str(@rank))"
dump:
- "$os.makedirs(@dump_dir, exist_ok=True)"
- "$torch.save({{'state': @network.state_dict(), 'loss': float(monai.handlers.from_engine(['loss'], first=True)(@train#trainer.state.output)), {extra}}}, @dump_dir + '/rank' + str(@rank) + '.pt')"
finalize:
- '$@dump'
- $None if @tensorboard is None else @tensorboard.close()
- $torch.distributed.destroy_process_group() if torch.distributed.is_initialized() else None
"""


# search.yaml's run, after every rank dumps its initial alphas
RUN_WITH_INITIAL_ALPHAS = """
run:
- "$os.makedirs(@dump_dir, exist_ok=True) or torch.save([p.detach().clone() for p in @network.arch_parameters()], @dump_dir + '/init' + str(@rank) + '.pt')"
- $@train#checkpointer.attach(@train#trainer)
- $None if @train#resume_loader is None else @train#resume_loader.attach(@train#trainer)
- $@train#trainer.run()
"""


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def two_rank_dataset(search_dataset, tmp_path_factory) -> Path:
    """The search's tiny dataset with at least two validation images (one per rank)."""
    root = tmp_path_factory.mktemp("mgpu_data")
    shutil.copytree(search_dataset, root / "prep")
    datalist = root / "prep" / "datalist.json"
    data = json.loads(datalist.read_text())
    while len(data["validation"]) < 2:  # one validation image per rank at least
        data["validation"].append(data["test"].pop())
    datalist.write_text(json.dumps(data))
    return root / "prep"


def _torchrun(configs: list[Path], cwd: Path, *args: str) -> str:
    config = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file", config, *args]
    proc = subprocess.run(
        cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"ranks differ in {different[:5]}"


def test_search_two_ranks_stay_identical_and_only_rank0_writes(two_rank_dataset, tmp_path):
    cwd, out, dump = tmp_path / "cwd", tmp_path / "run", tmp_path / "dump"
    cwd.mkdir()
    override = tmp_path / "dump.yaml"
    arch_loss = "'arch_loss': float(monai.handlers.from_engine(['arch_loss'], first=True)(@train#trainer.state.output))"
    override.write_text(DUMP.format(output=out, dump=dump, extra=arch_loss) + RUN_WITH_INITIAL_ALPHAS)
    configs = [CONFIGS / "train.yaml", CONFIGS / "search.yaml", CONFIGS / "multi_gpu_search.yaml", override]
    log = _torchrun(configs, cwd, "--dataset_dir", str(two_rank_dataset), "--epochs", "2", "--warmup_epochs", "1", *TINY)

    r0, r1 = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    _same_state(r0["state"], r1["state"])  # weights, alphas and BatchNorm running statistics
    assert any("running_mean" in k for k in r0["state"]), "the search network has BatchNorm statistics to keep in sync"
    init0, init1 = (torch.load(dump / f"init{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a, b) for a, b in zip(init0, init1)), "rank 0's initial alphas are broadcast"
    alphas = [v for k, v in r0["state"].items() if k.endswith("alpha")]
    assert len(alphas) == len(init0) and any(not torch.equal(a, b) for a, b in zip(alphas, init0)), "alphas never moved"
    # each rank drew its own crops (and dropout masks): the last weight and alpha losses differ
    assert r0["loss"] != r1["loss"] and r0["arch_loss"] != r1["arch_loss"]

    assert _files(out) == sorted([
        "alpha/alpha_epoch0001.png", "alpha/alpha_epoch0002.png", "alpha_heatmap.png",
        "checkpoints/search_checkpoint.pt", "genotype.json", "genotype_heatmap.png", "genotypes/genotype_epoch0001.json",
        "genotypes/genotype_epoch0002.json", *[f"tensorboard/{p.name}" for p in (out / "tensorboard").iterdir()],
    ])
    assert len(list((out / "tensorboard").iterdir())) == 1
    assert _files(tmp_path / "run_rank1") == [], "rank 1 wrote files"
    assert _files(cwd) == []
    assert log.count("Epoch[2] Metrics") == 1, "only rank 0 logs the validation"


def test_train_two_ranks_stay_identical_and_only_rank0_writes(two_rank_dataset, tmp_path):
    cwd, out, dump = tmp_path / "cwd", tmp_path / "run", tmp_path / "dump"
    cwd.mkdir()
    override = tmp_path / "dump.yaml"
    override.write_text(DUMP.format(output=out, dump=dump, extra="'rank': @rank"))
    configs = [CONFIGS / "train.yaml", CONFIGS / "multi_gpu_train.yaml", override]
    _torchrun(configs, cwd, "--dataset_dir", str(two_rank_dataset), "--attention", "unet", "--epochs", "1", *TINY)
    r0, r1 = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    _same_state(r0["state"], r1["state"])
    assert r0["loss"] != r1["loss"]
    events = [f"tensorboard/{p.name}" for p in (out / "tensorboard").iterdir()]
    assert _files(out) == sorted(
        ["checkpoints/train_checkpoint.pt", "models/model.pt", "network.json", "stain.json", *events]
    )
    assert len(list((out / "tensorboard").iterdir())) == 1
    assert _files(tmp_path / "run_rank1") == []
    assert _files(cwd) == []


# --------------------------------------------------------------------------------------- configs (no processes)
WRITERS = {
    "monai.handlers.StatsHandler",
    "monai.handlers.TensorBoardStatsHandler",
    "monai_nasscam.handlers.AlphaTensorBoardHandler",
    "monai_nasscam.handlers.AlphaHeatmapSaver",
    "monai_nasscam.handlers.GenotypeSaver",
    "monai_nasscam.handlers.training.TrainProgressBar",
}


PAIRS = [(["train.yaml", "search.yaml"], "multi_gpu_search.yaml"), (["train.yaml"], "multi_gpu_train.yaml")]


@pytest.mark.parametrize("base,multi", PAIRS)
def test_overrides_still_point_at_the_right_handlers(base, multi):
    from monai.bundle import ConfigParser

    base_cfg = ConfigParser.load_config_files([str(CONFIGS / name) for name in base])  # as MONAI merges them
    multi_cfg = yaml.safe_load((CONFIGS / multi).read_text())

    def item(path: str):
        node = base_cfg
        for key in path.split("#"):
            node = node[int(key)] if isinstance(node, list) else node[key]
        return node

    disabled = [k[: -len("#_disabled_")] for k in multi_cfg if k.endswith("#_disabled_") and "handlers#" in k]
    assert disabled
    for path in disabled:
        assert item(path)["_target_"] in WRITERS, f"{multi}: {path} is {item(path)['_target_']}, not a logger/writer"
    for path, value in multi_cfg.items():  # replaced reference items: rank 0 keeps the same object
        replaced = isinstance(value, str) and "if @rank == 0" in value
        if "handlers#" in path and not path.endswith("_disabled_") and replaced:
            assert value.startswith(f"$@{item(path)[1:]} if"), (path, value)
    if "handlers#0#seed" in "".join(multi_cfg):
        assert item("train#handlers#0")["_target_"].endswith("EpochReseeder")
    # the base initialize, after joining the process group and quieting the other ranks
    base_init = base_cfg["initialize"]
    assert multi_cfg["initialize"][2 : 2 + len(base_init)] == base_init
    assert multi_cfg["initialize"][0]["_target_"].endswith("init_distributed")
    assert multi_cfg["initialize"][1]["_target_"].endswith("quiet_other_ranks")


# ------------------------------------------------------------------------------- distributed.py, 2 processes
def _worker(rank: int, world: int, store: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        out = {}
        # broadcast: rank 0's values everywhere
        torch.manual_seed(rank)
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
        mgpu.broadcast_module(net)
        out["params"] = [p.detach().clone() for p in net.parameters()]
        # gradient averaging at the step; the last layer gets a gradient on rank 1 only, an extra parameter on none
        unused = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD(list(net.parameters()) + [unused], lr=1.0)
        mgpu.average_gradients(opt)
        mgpu.average_gradients(opt)  # registered once
        x = torch.arange(6.0).reshape(2, 3) * (rank + 1)
        hidden = net[1](net[0](x))
        loss = hidden.sum() + (net[2](hidden).sum() if rank == 1 else 0.0)
        loss.backward()
        out["local_grads"] = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
        opt.step()
        out["grads"] = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
        out["unused_grad"] = unused.grad
        out["after"] = [p.detach().clone() for p in net.parameters()]
        # BatchNorm running statistics: averaged
        out["running_before"] = net[1].running_mean.clone()
        mgpu.average_norm_statistics(net)
        out["running_after"] = net[1].running_mean.clone()
        # GradScaler: an inf on rank 0 only makes both ranks skip the step
        p = torch.nn.Parameter(torch.ones(1))
        opt2 = mgpu.average_gradients(torch.optim.SGD([p], lr=1.0))
        scaler = mgpu.SyncedGradScaler("cpu", init_scale=2.0)
        scaler.scale((p * (float("inf") if rank == 0 else 1.0)).sum()).backward()
        scaler.step(opt2)
        scaler.update()
        out["scaler"] = (p.detach().clone(), float(scaler.get_scale()))
        torch.save(out, os.path.join(results, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_helpers_in_two_processes(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"]))
    # averaged gradients: the mean of the local ones; rank 0's missing gradient counts as zeros
    for g0, g1, l0, l1 in zip(r0["grads"], r1["grads"], r0["local_grads"], r1["local_grads"]):
        expected = ((l0 if l0 is not None else 0) + l1) / 2
        assert torch.allclose(g0, expected) and torch.equal(g0, g1)
    assert r0["local_grads"][-1] is None and r0["grads"][-1] is not None
    assert r0["unused_grad"] is None and r1["unused_grad"] is None
    assert all(torch.equal(a, b) for a, b in zip(r0["after"], r1["after"]))
    assert not torch.equal(r0["running_before"], r1["running_before"])
    assert torch.allclose(r0["running_after"], (r0["running_before"] + r1["running_before"]) / 2)
    assert torch.equal(r0["running_after"], r1["running_after"])
    (p0, s0), (p1, s1) = r0["scaler"], r1["scaler"]
    assert torch.equal(p0, torch.ones(1)) and torch.equal(p1, torch.ones(1)), "the step is skipped on both ranks"
    assert s0 == s1 == 1.0


# ------------------------------------------------------------------------------------------ single process
def test_single_process_helpers(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert mgpu.rank_seed(7, 0) == 7 and mgpu.rank_seed(7, 1) != mgpu.rank_seed(7, 2) and mgpu.rank_seed(None) is None
    net = torch.nn.Linear(2, 2)
    assert mgpu.broadcast_module(net) is net  # no process group: unchanged
    with pytest.raises(RuntimeError, match="not initialised"):
        mgpu.average_gradients(torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="launched by torchrun"):
        mgpu.init_distributed("cpu")
    with pytest.raises(ValueError, match="validation split has 1 image"):
        mgpu.check_distributed_split(1, "validation", world_size=2)
    mgpu.check_distributed_split(2, world_size=2)
    monkeypatch.setenv("RANK", "1")
    loggers = [logging.getLogger(name) for name in ("", "ignite", "monai")]
    levels = [lg.level for lg in loggers]
    try:
        mgpu.quiet_other_ranks()
        assert all(lg.level == logging.WARNING for lg in loggers)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
