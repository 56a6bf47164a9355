"""Time one training step (forward, backward, Adam) of the NAS-SCAM-P supernet, its derived network with
every edge on conv3, and the plain U-Net, against the throughput of one large 3x3 convolution.

Each network runs in its own subprocess so that its peak resident memory is its own. Rates use the best of the
timed steps (and the best of the convolution runs): on a shared machine the best run is the one least disturbed.

    python bench/search_step.py [--batch 4] [--size 256] [--steps 5] [--device cpu] [--threads N] [--no-malloc-tuning]

As the search and train workflows do, every process first lets glibc keep freed memory
(:func:`monai_nasscam.allocator.tune_allocator`); ``--no-malloc-tuning`` measures without it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from monai_nasscam.allocator import tune_allocator

MODELS = ("supernet", "derived-conv3", "unet")


def build(name: str) -> torch.nn.Module:
    from monai_nasscam.networks import POSITIONS, Genotype, NASSCAMUNet

    if name == "supernet":
        return NASSCAMUNet(2, 3, 4, attention="nas-scam-p")
    if name == "unet":
        return NASSCAMUNet(2, 3, 4, attention="none")
    modules = [{"position": p, "sam": ["conv3"] * 6, "cam": ["conv3"] * 6} for p in POSITIONS]
    return NASSCAMUNet(2, 3, 4, genotype=Genotype("nas-scam-p", True, modules))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def conv_reference(batch: int, size: int, device: str, repeats: int = 5) -> float:
    """GFLOP/s of a forward 3x3 convolution, 64 -> 64 channels, at (batch, 64, size, size), best of ``repeats``."""
    x = torch.randn(batch, 64, size, size, device=device)
    w = torch.randn(64, 64, 3, 3, device=device)
    flop = 2 * batch * size * size * 64 * 64 * 9
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            sync(device)
            start = time.perf_counter()
            F.conv2d(x, w, padding=1)
            sync(device)
            times.append(time.perf_counter() - start)
    return flop / min(times[1:]) / 1e9


def step_stats(name: str, batch: int, size: int, steps: int, device: str) -> dict:
    """Median step time, GFLOP per step and peak memory of one network (run in a fresh process)."""
    torch.manual_seed(0)
    net = build(name).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    y = (torch.rand(batch, 4, size, size, device=device) > 0.7).float()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(net(x), y)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    gflop = counter.get_total_flops() / 1e9
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": name,
        "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
        "median_s": statistics.median(times),
        "best_s": min(times),
        "gflop": gflop,
        "peak_MiB": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per network, after one warm-up step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's, one per core)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--no-malloc-tuning", action="store_true", help="leave glibc's allocator thresholds as they are")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = False if args.no_malloc_tuning else tune_allocator()
    if args.worker:
        print(json.dumps(step_stats(args.worker, args.batch, args.size, args.steps, args.device)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, batch {args.batch}x3x{args.size}x{args.size}, "
          f"malloc tuning {'on' if tuned else 'off'}")
    rows = []
    for name in args.models:
        cmd = [sys.executable, __file__, "--worker", name, "--batch", str(args.batch), "--size", str(args.size),
               "--steps", str(args.steps), "--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
        cmd += ["--no-malloc-tuning"] if args.no_malloc_tuning else []
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]))
    conv = conv_reference(args.batch, args.size, args.device)
    print(f"reference: one 3x3 conv (64->64, {args.batch}x64x{args.size}x{args.size}) forward: {conv:.1f} GFLOP/s")
    print(f"{'model':<15}{'params M':>10}{'median s':>10}{'best s':>8}{'GFLOP':>9}{'GFLOP/s':>9}{'of conv':>9}{'peak MiB':>10}")
    base = {r["model"]: r for r in rows}
    for r in rows:
        rate = r["gflop"] / r["best_s"]
        print(f"{r['model']:<15}{r['params_M']:>10.2f}{r['median_s']:>10.2f}{r['best_s']:>8.2f}{r['gflop']:>9.0f}{rate:>9.1f}{rate / conv:>9.0%}{r['peak_MiB']:>10.0f}")
    if "supernet" in base and "derived-conv3" in base:
        print(f"supernet / derived-conv3 step time (best): {base['supernet']['best_s'] / base['derived-conv3']['best_s']:.2f}x "
              f"(FLOP ratio {base['supernet']['gflop'] / base['derived-conv3']['gflop']:.2f})")


if __name__ == "__main__":
    main()
