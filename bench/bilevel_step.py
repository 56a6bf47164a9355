"""Time the steps of the bilevel search as BilevelSearchTrainer makes them, at batch 4 x 3 x 256 x 256:

- ``weight``: a weight step of the NAS-SCAM-P supernet (forward, backward, Adam on the weights; alphas frozen);
- ``alpha``: an alpha step of the supernet (forward, backward, Adam on the alphas; weights frozen);
- ``derived``: a training step of the derived network with every edge on conv3 (forward, backward, Adam).

All use the search's loss (ExpLogLoss, patent defaults). Memory: each mode runs alone in a subprocess so that
its peak resident memory (``ru_maxrss``) is its own; the resident memory after building the model and the batch
is reported too, so ``peak - base`` is what the steps add. Time: the modes are interleaved round by round in one
process, so that load from other processes on a shared machine affects them alike; wall-clock and CPU time
(``time.process_time``, all threads of the process) per step are reported. With one thread (``--threads 1``) the
CPU time hardly depends on other processes sharing the machine.

    python bench/bilevel_step.py [--batch 4] [--size 256] [--steps 3] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = ("weight", "alpha", "derived")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(mode: str, batch: int, size: int):
    """``(network, step function)`` for one mode."""
    import torch

    from monai_nasscam.engines import BilevelSearchTrainer
    from monai_nasscam.losses import ExpLogLoss
    from monai_nasscam.networks import POSITIONS, Genotype, NASSCAMUNet

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = {
        "image": torch.rand(batch, 3, size, size, generator=g),
        "label": (torch.rand(batch, 4, size, size, generator=g) > 0.8).float(),
    }
    loss = ExpLogLoss(sigmoid=True)
    if mode == "derived":
        modules = [{"position": p, "sam": ["conv3"] * 6, "cam": ["conv3"] * 6} for p in POSITIONS]
        net = NASSCAMUNet(genotype=Genotype("nas-scam-p", True, modules))
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)

        def step():
            net.train()
            opt.zero_grad(set_to_none=True)
            value = loss(net(data["image"]), data["label"])
            value.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return net, step
    net = NASSCAMUNet(attention="nas-scam-p")
    trainer = BilevelSearchTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[data],
        network=net,
        optimizer=torch.optim.Adam(net.weight_parameters(), lr=1e-4),
        loss_function=loss,
        arch_data_loader=[data],
        arch_optimizer=torch.optim.Adam(net.arch_parameters(), lr=1e-3),
    )
    return net, (lambda: trainer.weight_step(data)) if mode == "weight" else (lambda: trainer.arch_step(data))


def memory(mode: str, batch: int, size: int) -> dict:
    """Resident memory after building, and peak resident memory over two steps, of one mode alone."""
    import torch

    net, step = build(mode, batch, size)
    base = _rss_mib()
    for _ in range(2):
        step()
    return {
        "mode": mode,
        "parameters": sum(p.numel() for p in net.parameters()),
        "base_rss_mib": round(base, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
    }


def timing(modes: list[str], batch: int, size: int, rounds: int) -> dict:
    """Step times with the modes interleaved round by round (so that load from other processes hits all alike);
    the first round is not timed."""
    steps = {m: build(m, batch, size)[1] for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds + 1):
        for m in modes:
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[m]()
            if r:
                times[m].append(time.perf_counter() - start)
                cpu[m].append(time.process_time() - start_cpu)
    return {
        m: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "times_s": [round(x, 3) for x in t],
            "cpu_median_s": statistics.median(cpu[m]),
        }
        for m, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (after one untimed); each round makes one step of every mode")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(memory(args.child, args.batch, args.size)))
        return

    load = os.getloadavg()
    results: dict = {"batch": args.batch, "size": args.size, "memory": {}}
    for mode in args.modes:  # each alone in a fresh process, for its own peak memory
        cmd = [sys.executable, __file__, "--child", mode, "--batch", str(args.batch), "--size", str(args.size)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = results["memory"][mode] = json.loads(out.strip().splitlines()[-1])
        print(f"{mode:8s} params {r['parameters'] / 1e6:.2f} M  RSS after build {r['base_rss_mib']:.0f} MiB, "
              f"peak {r['peak_rss_mib']:.0f} MiB", flush=True)
    results["timing"] = timing(list(args.modes), args.batch, args.size, args.steps)
    for mode, r in results["timing"].items():
        print(
            f"{mode:8s} step median {r['median_s']:7.2f} s  min {r['min_s']:7.2f} s  {r['times_s']}  "
            f"CPU time median {r['cpu_median_s']:7.2f} s",
            flush=True,
        )
    t = {m: r["median_s"] for m, r in results["timing"].items()}
    if {"weight", "alpha", "derived"} <= t.keys():
        results["ratios"] = {"weight_over_derived": t["weight"] / t["derived"], "alpha_over_weight": t["alpha"] / t["weight"]}
        print(f"weight step / derived step = {t['weight'] / t['derived']:.2f}  (target <= 3.5)")
        print(f"alpha step / weight step   = {t['alpha'] / t['weight']:.2f}  (target <= 1)")
        c = {m: r["cpu_median_s"] for m, r in results["timing"].items()}
        results["ratios"].update(cpu_weight_over_derived=c["weight"] / c["derived"], cpu_alpha_over_weight=c["alpha"] / c["weight"])
        print(f"CPU time: weight / derived = {c['weight'] / c['derived']:.2f}, alpha / weight = {c['alpha'] / c['weight']:.2f}")
    load_after = os.getloadavg()
    import torch

    print(f"torch threads {torch.get_num_threads()}; load average (1 min) before {load[0]:.2f}, after {load_after[0]:.2f} "
          f"on {os.cpu_count()} CPUs")
    results["loadavg"] = {"before": load, "after": load_after, "cpus": os.cpu_count()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
