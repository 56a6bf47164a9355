"""How much signal do the alpha gradients carry? A measurement for choosing a search budget.

A first-order DARTS search moves each alpha with Adam, which divides every coordinate's gradient by its own running
scale: an alpha whose gradient is pure noise takes steps of the same order as one with a consistent signal, so after
a short search every edge can look decided (large margins, a ``converged`` verdict) although the data did not
prefer its operation. This benchmark measures, on a search.yaml setup, whether the alpha gradients carry a signal
that the search's number of alpha steps can resolve:

1. the supernet and its loaders are built from ``bundle/configs/search.yaml`` (over ``train.yaml``) with the given
   overrides, and trained with weight steps only (``BilevelSearchTrainer`` with every epoch a warm-up epoch) for each
   of ``--epochs`` (cumulative);
2. at each of those points the weights are frozen and the gradient of the alpha steps' loss with respect to every
   alpha is taken on ``--batches`` batches of the architecture split (without moving the alphas), in train mode as
   the alpha steps run;
3. per alpha: the mean gradient over the batches ``m``, its standard deviation ``s`` (the noise of one alpha step),
   the t statistic ``m / (s / sqrt(n))`` and the number of alpha steps after which the mean gradient would stand
   out of the noise at ``|t| = 2``: ``4 s^2 / m^2``.

Reported per position and cell kind: the share of alphas with ``|t| > 2`` (with no signal at all, 2 P(T > 2) of them
exceed it by chance for T a Student t with ``batches - 1`` degrees of freedom: 5.5 % for 32 batches) and the median number of alpha steps to resolve an alpha's mean gradient.
An edge can only be chosen for a reason by a search with more alpha steps than that.

A consistent gradient is not yet a preference of the data: it may come from the seed's random weights. With several
``--seeds`` (each its own weights, architecture split and crops, as a search with that seed), every edge's favoured
operation (the most negative mean gradient: the alpha that descent raises fastest) is compared across seeds: the
share of edges where two seeds favour the same operation (chance: 1/6 for SAM, 1/8 for CAM edges), and the mean
correlation of the per-edge mean gradients (0 when unrelated).

    python bench/alpha_signal.py --dataset_dir PREP [--epochs 2 8] [--batches 32] [--seeds 0 1 2] \
        [--json out.json] [--set key=value ...]
    python bench/alpha_signal.py --combine seed0.json seed1.json seed2.json [--json cross.json]

``--set`` takes search.yaml overrides (values parsed as JSON when they parse: ``roi_size=[64,64]``); the default
overrides are those of the demo's search (``roi_size [64,64]``, ``epoch_crops 48``, ``learning_rate 0.001``,
``num_workers 0``). Results are in bench/README.md ("alpha gradient signal").
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SEARCH = [str(REPO / "bundle" / "configs" / name) for name in ("train.yaml", "search.yaml")]  # an override of train
DEMO_OVERRIDES = {"roi_size": [64, 64], "epoch_crops": 48, "learning_rate": 0.001, "num_workers": 0, "progress": False}
T_BAR = 2.0


def chance_share(batches: int) -> float:
    """Share of alphas with |t| > 2 when their gradients are pure noise: two-sided, t with ``batches - 1`` dof."""
    from scipy.stats import t

    return float(2 * t.sf(T_BAR, batches - 1))


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build(dataset_dir: str, output_dir: str, overrides: dict):
    """Parse search.yaml with ``overrides``; return its network, weight optimiser, losses, loaders and seed."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(SEARCH)
    parser.update({"dataset_dir": dataset_dir, "output_dir": output_dir, **overrides})
    parser.get_parsed_content("initialize")  # the input checks, determinism, allocator
    get = parser.get_parsed_content
    return {
        "network": get("network"),
        "optimizer": get("optimizer"),
        "loss": get("loss"),
        "arch_loss": get("arch_loss"),
        "train_loader": get("train#dataloader"),
        "arch_loader": get("arch#dataloader"),
        "seed": int(get("seed")),
        "device": get("device"),
    }


def alpha_gradients(trainer, network, arch_loss, batches: int) -> list[torch.Tensor]:
    """The gradient of the alpha steps' loss w.r.t. each alpha tensor on ``batches`` architecture batches:
    a list (one entry per alpha tensor) of ``(batches, *alpha.shape)`` float64 tensors; weights and alphas unchanged."""
    from monai_nasscam.networks.cell import arch_parameters

    alphas = arch_parameters(network)
    grads: list[list[torch.Tensor]] = [[] for _ in alphas]
    network.train()
    for _ in range(batches):
        inputs, targets, args, kwargs = trainer._prepare(trainer.next_arch_batch())
        loss = arch_loss(trainer.inferer(inputs, network, *args, **kwargs), targets).mean()
        for store, g in zip(grads, torch.autograd.grad(loss, alphas)):
            store.append(g.detach().double().cpu())
    return [torch.stack(g) for g in grads]


def summarise(network, grads: list[torch.Tensor]) -> dict:
    """Per position / kind: share of alphas with |t| > 2 and the median alpha steps to resolve their mean gradient."""
    from monai_nasscam.networks.attentions import block_cells
    from monai_nasscam.networks.cell import arch_parameters
    from monai_nasscam.networks.genotype import attention_blocks

    index = {id(a): i for i, a in enumerate(arch_parameters(network))}
    rows, all_t, all_steps = {}, [], []
    seen: set[int] = set()
    for position, block in attention_blocks(network).items():
        for kind, cell in block_cells(block, searchable=True).items():
            if id(cell.alpha) in seen:
                continue
            seen.add(id(cell.alpha))
            g = grads[index[id(cell.alpha)]]  # (n, 6, K)
            n = g.shape[0]
            mean, sd = g.mean(0), g.std(0, unbiased=True).clamp_min(1e-30)
            t = (mean / (sd / math.sqrt(n))).flatten()
            steps = (T_BAR**2 * sd**2 / mean.pow(2).clamp_min(1e-60)).flatten()
            rows[f"{position}/{kind}"] = {
                "alphas": t.numel(),
                "share_t_above_2": float((t.abs() > T_BAR).double().mean()),
                "median_abs_t": float(t.abs().median()),
                "median_steps_to_resolve": float(steps.median()),
                "median_abs_mean_grad": float(mean.abs().median()),
            }
            all_t.append(t)
            all_steps.append(steps)
    t_all, steps_all = torch.cat(all_t), torch.cat(all_steps)
    return {
        "modules": rows,
        "all": {
            "alphas": t_all.numel(),
            "share_t_above_2": float((t_all.abs() > T_BAR).double().mean()),
            "median_abs_t": float(t_all.abs().median()),
            "median_steps_to_resolve": float(steps_all.median()),
            "share_resolved_within_48_steps": float((steps_all <= 48).double().mean()),
            "share_resolved_within_1000_steps": float((steps_all <= 1000).double().mean()),
        },
    }


def favoured_ops(network, grads: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per unique alpha tensor (named ``position/kind``): the mean gradient ``(6, K)`` and each edge's favoured op."""
    from monai_nasscam.networks.attentions import block_cells
    from monai_nasscam.networks.cell import arch_parameters
    from monai_nasscam.networks.genotype import attention_blocks

    index = {id(a): i for i, a in enumerate(arch_parameters(network))}
    out, seen = {}, set()
    for position, block in attention_blocks(network).items():
        for kind, cell in block_cells(block, searchable=True).items():
            if id(cell.alpha) not in seen:
                seen.add(id(cell.alpha))
                mean = grads[index[id(cell.alpha)]].mean(0)
                out[f"{position}/{kind}"] = (mean, mean.argmin(dim=-1))
    return out


def cross_seed(per_seed: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> dict:
    """Agreement of the favoured ops and correlation of the per-edge mean gradients, over all pairs of seeds."""
    agree = {"sam": [], "cam": []}
    corr = {"sam": [], "cam": []}
    for i in range(len(per_seed)):
        for j in range(i + 1, len(per_seed)):
            for name, (mean_i, fav_i) in per_seed[i].items():
                mean_j, fav_j = per_seed[j][name]
                kind = name.split("/")[1]
                agree[kind].extend((fav_i == fav_j).double().tolist())
                a = mean_i - mean_i.mean(-1, keepdim=True)
                b = mean_j - mean_j.mean(-1, keepdim=True)
                c = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-60)
                corr[kind].extend(c.tolist())
    return {
        kind: {
            "agreement": statistics.fmean(agree[kind]) if agree[kind] else None,
            "mean_correlation": statistics.fmean(corr[kind]) if corr[kind] else None,
            "edge_pairs": len(agree[kind]),
        }
        for kind in agree
    }


def measure_seed(args, seed: int, epochs: list[int], overrides: dict) -> tuple[list[dict], list[dict]]:
    """Train one seed's supernet with weight steps only; at each point of ``epochs`` measure its alpha gradients."""
    from monai_nasscam.engines import BilevelSearchTrainer

    overrides = {**overrides, "seed": seed}
    points, favoured = [], []
    with tempfile.TemporaryDirectory() as tmp:
        parts = build(args.dataset_dir, tmp, overrides)
        network = parts["network"]
        trainer = BilevelSearchTrainer(
            device=parts["device"], max_epochs=max(1, epochs[0]), train_data_loader=parts["train_loader"],
            network=network, optimizer=parts["optimizer"], loss_function=parts["loss"],
            arch_data_loader=parts["arch_loader"], arch_optimizer=torch.optim.Adam(network.arch_parameters()),
            warmup_epochs=max(epochs) + 1, seed=parts["seed"],
        )
        for epoch in epochs:
            start = time.perf_counter()
            if epoch > 0:
                trainer.state.max_epochs = epoch
                trainer.run()
            trained = time.perf_counter() - start
            grads = alpha_gradients(trainer, network, parts["arch_loss"], args.batches)
            point = {"seed": seed, "weight_epochs": epoch, "weight_steps": trainer.state.iteration,
                     "train_s": round(trained, 1), **summarise(network, grads)}
            fav = favoured_ops(network, grads)
            point["mean_gradients"] = {name: mean.tolist() for name, (mean, _) in fav.items()}
            points.append(point)
            favoured.append(fav)
            a = point["all"]
            print(
                f"seed {seed}, after {epoch} weight epochs ({point['weight_steps']} weight steps): |t| > 2 for "
                f"{100 * a['share_t_above_2']:.1f} % of {a['alphas']} alphas ({100 * chance_share(args.batches):.1f} % by chance), median |t| "
                f"{a['median_abs_t']:.2f}, median alpha steps to resolve {a['median_steps_to_resolve']:.0f} "
                f"({100 * a['share_resolved_within_48_steps']:.1f} % within 48, "
                f"{100 * a['share_resolved_within_1000_steps']:.1f} % within 1000)",
                flush=True,
            )
            for name, row in point["modules"].items():
                print(
                    f"  {name:12s} |t|>2 {100 * row['share_t_above_2']:5.1f} %  median |t| {row['median_abs_t']:5.2f}  "
                    f"steps to resolve {row['median_steps_to_resolve']:9.0f}  median |mean grad| {row['median_abs_mean_grad']:.2e}"
                )
    return points, favoured


def _report_cross_seed(epoch: int, seeds: list[int], row: dict) -> None:
    print(
        f"after {epoch} weight epochs, across seeds {seeds}: favoured op agreement SAM "
        f"{row['sam']['agreement']:.3f} (chance 0.167), CAM {row['cam']['agreement']:.3f} (chance 0.125); "
        f"mean correlation of the mean gradients SAM {row['sam']['mean_correlation']:.3f}, "
        f"CAM {row['cam']['mean_correlation']:.3f}",
        flush=True,
    )


def combine(paths: list[str], out: str | None) -> int:
    """Compare the seeds of several ``--json`` files (one seed each, run in parallel) at their common points."""
    points = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or "points" not in data:
            raise ValueError(f"{path} is not a --json file of this benchmark (no 'points')")
        points.extend(data["points"])
    seeds = sorted({p["seed"] for p in points})
    if len(seeds) < 2:
        raise ValueError(f"the files hold {len(seeds)} distinct seed(s) {seeds}; comparing needs 2 or more")
    rows = []
    for epoch in sorted({p["weight_epochs"] for p in points}):
        per_seed = []
        for seed in seeds:
            match = [p for p in points if p["seed"] == seed and p["weight_epochs"] == epoch]
            if match:
                means = {k: torch.tensor(v) for k, v in match[0]["mean_gradients"].items()}
                per_seed.append({k: (m, m.argmin(dim=-1)) for k, m in means.items()})
        if len(per_seed) > 1:
            row = {"weight_epochs": epoch, "seeds": len(per_seed), **cross_seed(per_seed)}
            rows.append(row)
            _report_cross_seed(epoch, seeds, row)
    if out:
        Path(out).write_text(json.dumps({"inputs": paths, "cross_seed": rows}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset_dir", help="a prepared dataset (nasscam prepare)")
    ap.add_argument("--epochs", type=int, nargs="+", default=[2, 8], help="weight-only epochs before each measurement (cumulative; default 2 8)")
    ap.add_argument("--batches", type=int, default=32, help="architecture batches per measurement (default 32)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (weights, split, crops); 2+ compare them")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="search.yaml overrides, on top of the demo's (roi_size [64,64], epoch_crops 48, learning_rate 0.001, num_workers 0)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="only compare the seeds of earlier --json files")
    args = ap.parse_args(argv)
    if args.combine:
        try:
            return combine(args.combine, args.json)
        except (OSError, ValueError, KeyError) as error:
            ap.error(f"--combine: {error}")
    if not args.dataset_dir:
        ap.error("--dataset_dir is required (unless --combine)")
    if args.batches < 2:
        ap.error(f"--batches must be >= 2 (a standard deviation needs 2 gradients), got {args.batches}")

    overrides = dict(DEMO_OVERRIDES)
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = _value(value)
    epochs = sorted(set(args.epochs))
    overrides["epochs"] = max(epochs) + 1
    overrides["warmup_epochs"] = max(epochs)
    results = {"overrides": overrides, "batches": args.batches, "seeds": args.seeds, "points": [], "cross_seed": []}
    favoured = []
    for seed in args.seeds:
        points, fav = measure_seed(args, seed, epochs, overrides)
        results["points"].extend(points)
        favoured.append(fav)
    if len(args.seeds) > 1:
        for k, epoch in enumerate(epochs):
            row = {"weight_epochs": epoch, **cross_seed([fav[k] for fav in favoured])}
            results["cross_seed"].append(row)
            _report_cross_seed(epoch, args.seeds, row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
