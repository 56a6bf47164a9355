"""Time one training step (forward, backward, Adam) of the NAS-SCAM-P supernet, its derived network with
every edge on conv3, and the plain U-Net, against the throughput of one large 3x3 convolution (timed in the default
and the channels-last layout; the faster one is the yardstick, since the spatial cells convolve channels-last on CPU).

Each network runs in its own subprocess so that its peak resident memory is its own. Rates use the best of the
timed steps (and the best of the convolution runs): on a shared machine the best run is the one least disturbed.

    python bench/search_step.py [--batch 4] [--size 256] [--steps 5] [--device cpu] [--threads N] [--no-malloc-tuning]

As the search and train workflows do, every process first lets glibc keep freed memory
(:func:`monai_nasscam.allocator.tune_allocator`); ``--no-malloc-tuning`` measures without it.

Side by side with the authors' reference code (``--reference DIR``, a checkout of the authors' public NAS-SCAM code;
it is never copied into this repository): one search weight step of this project's NAS-SCAM-P supernet against
``SearchNet`` from ``DIR/network_search.py``, on the same batch (4 output classes). Both run forward, loss, backward
and Adam on the network weights with the architecture weights frozen, as both searches do in their weight phases.
The steps are timed **in one process, in alternation** (ours, reference, ours, ...), so that a machine shared with
other work slows both alike; the ratio ours / reference is printed for the median and the best step, with each
side's GFLOP per step and, from a fresh subprocess per side, its peak resident memory.

    python bench/search_step.py --reference DIR [--size 256] [--batch 4] [--steps 5] [--bf16]

The project's side is ``NASSCAMUNet(2, 3, 4, attention="nas-scam-p")`` with the search's ``ExpLogLoss`` on its
logits; the reference side uses binary cross-entropy on its sigmoid output (its own exponential-logarithmic loss lives
in a module that needs ``cv2`` and ``nibabel``; the loss is a negligible part of the step). The reference creates its
alphas with ``.cuda()``; on a CPU run that call is made a no-op while the reference model is built, and nothing else
of it is changed. ``--bf16`` adds a third side: the project's step under ``torch.autocast("cpu", dtype=torch.bfloat16)``
(float32 weights and Adam state, the loss computed in float32).
That is how the search workflow runs its step on a CPU with native bfloat16 (``precision: auto`` in ``search.yaml``);
``ours`` is its step with ``precision: fp32``. ``bench/profile_search_step.py`` profiles the same step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from monai_nasscam.allocator import tune_allocator

MODELS = ("supernet", "derived-conv3", "unet")
#: sides of the --reference comparison
SIDES = ("ours", "reference", "ours-bf16")


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


def conv_reference(batch: int, size: int, device: str, repeats: int = 5, channels_last: bool = False) -> float:
    """GFLOP/s of a forward 3x3 convolution, 64 -> 64 channels, at (batch, 64, size, size), best of ``repeats``,
    in the default or the channels-last layout."""
    x = torch.randn(batch, 64, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
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


@contextlib.contextmanager
def _cuda_calls_are_noops():
    """``Tensor.cuda()`` returns the tensor itself while the reference model is built on a CPU-only machine."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def build_step(side: str, reference_dir: str | None, batch: int, size: int, device: str):
    """A ``step()`` closure for ``side`` and its network (weights only trainable)."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device)
    y = (torch.rand(batch, 4, size, size, device=device) > 0.7).float()
    if side == "reference":
        if reference_dir is None:
            raise SystemExit("--reference DIR is required for the reference side")
        sys.path.insert(0, str(Path(reference_dir).resolve()))
        try:
            from network_search import SearchNet  # the authors' module, from DIR
        except ImportError as e:
            raise SystemExit(f"--reference {reference_dir}: cannot import network_search.SearchNet ({e})") from e
        guard = _cuda_calls_are_noops() if not device.startswith("cuda") else contextlib.nullcontext()
        with guard:
            net = SearchNet(NChannels=3, NClasses=4).to(device).train()
        arch = [p for n, p in net.named_parameters() if n in ("SAM_alphas", "CAM_alphas")]
        weights = [p for n, p in net.named_parameters() if n not in ("SAM_alphas", "CAM_alphas")]

        def loss_fn():
            prob = net(x)[0]
            return F.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), y)
    else:
        from monai_nasscam.losses import ExpLogLoss
        from monai_nasscam.networks import NASSCAMUNet, arch_parameters, weight_parameters

        net = NASSCAMUNet(2, 3, 4, attention="nas-scam-p").to(device).train()
        arch, weights = arch_parameters(net), weight_parameters(net)
        criterion = ExpLogLoss(sigmoid=True)  # as search.yaml builds it
        autocast = side == "ours-bf16"

        def loss_fn():
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with ctx:
                logits = net(x)
            return criterion(logits.float(), y)

    for p in arch:
        p.requires_grad_(False)
    # this project's sides step Adam as search.yaml does (fused: true); the reference keeps the authors' plain Adam
    opt = torch.optim.Adam(weights, lr=1e-3, fused=side != "reference")

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    return step, net


def timed(step, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def side_stats(side: str, args) -> dict:
    """GFLOP per step and peak resident memory of ``side`` alone (run in a fresh process)."""
    step, net = build_step(side, args.reference, args.batch, args.size, args.device)
    with FlopCounterMode(display=False) as counter:
        step()
    step()
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"side": side, "gflop": counter.get_total_flops() / 1e9, "peak_MiB": peak,
            "params_M": sum(p.numel() for p in net.parameters()) / 1e6}


def side_by_side(args, tuned: bool) -> None:
    """The --reference comparison: GFLOP and peak memory per side (subprocesses), then alternating timed steps."""
    sides = ["ours", "reference"] + (["ours-bf16"] if args.bf16 else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"batch {args.batch}x3x{args.size}x{args.size}, malloc tuning {'on' if tuned else 'off'}, reference {args.reference}")
    stats = {side: _run_worker(side, args) for side in sides}
    steps = {side: build_step(side, args.reference, args.batch, args.size, args.device)[0] for side in sides}
    for side in sides:  # warm-up: first-call allocations and kernel selection
        timed(steps[side], args.device)
    times: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(args.steps):
        for side in sides:
            times[side].append(timed(steps[side], args.device))
    print(f"{'side':<11}{'params M':>9}{'median s':>10}{'best s':>8}{'GFLOP':>8}{'GFLOP/s':>9}{'peak MiB':>10}")
    for side in sides:
        s, t = stats[side], times[side]
        print(f"{side:<11}{s['params_M']:>9.2f}{statistics.median(t):>10.2f}{min(t):>8.2f}{s['gflop']:>8.0f}"
              f"{s['gflop'] / min(t):>9.1f}{s['peak_MiB']:>10.0f}")
    ref = times["reference"]
    for side in sides:
        if side != "reference":
            print(f"ratio {side} / reference: median {statistics.median(times[side]) / statistics.median(ref):.2f}, "
                  f"best {min(times[side]) / min(ref):.2f}")


def _run_worker(name: str, args) -> dict:
    """``name``'s figures from a fresh process of this script (its peak memory is its own)."""
    cmd = [sys.executable, __file__, "--worker", name, "--batch", str(args.batch), "--size", str(args.size),
           "--steps", str(args.steps), "--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
    cmd += ["--no-malloc-tuning"] if args.no_malloc_tuning else []
    cmd += ["--reference", args.reference] if args.reference else []
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per network, after one warm-up step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's, one per core)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--no-malloc-tuning", action="store_true", help="leave glibc's allocator thresholds as they are")
    parser.add_argument("--reference", metavar="DIR", help="a checkout of the authors' NAS-SCAM code: time side by side")
    parser.add_argument("--bf16", action="store_true", help="with --reference: also the project's step under CPU bf16 autocast")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = False if args.no_malloc_tuning else tune_allocator()
    if args.worker:
        stats = side_stats(args.worker, args) if args.worker in SIDES else step_stats(args.worker, args.batch, args.size, args.steps, args.device)
        print(json.dumps(stats))
        return
    if args.reference:
        side_by_side(args, tuned)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, batch {args.batch}x3x{args.size}x{args.size}, "
          f"malloc tuning {'on' if tuned else 'off'}")
    rows = [_run_worker(name, args) for name in args.models]
    # the yardstick is the faster layout: the spatial cells convolve channels-last on CPU (networks/cell.py)
    layouts = {"NCHW": conv_reference(args.batch, args.size, args.device),
               "channels-last": conv_reference(args.batch, args.size, args.device, channels_last=True)}
    rates = ", ".join(f"{rate:.1f} GFLOP/s {name}" for name, rate in layouts.items())
    print(f"reference: one 3x3 conv (64->64, {args.batch}x64x{args.size}x{args.size}) forward: {rates}")
    conv = max(layouts.values())
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
