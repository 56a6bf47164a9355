"""Cost of one retraining step and of whole-image evaluation, per network of train.yaml (bundle/docs/README.md).

    .venv/bin/python bench/train_step.py [--networks unet cbam scse nas-scam-p deeplabv3plus] [--steps 3]

Each network runs in its own process (peak memory is per process): a training step is forward + backward + Adam on
``batch`` 256 x 256 crops with train.yaml's loss (ExpLogLoss, sigmoid, patent weights); evaluation is MONAI's
SlidingWindowInferer (256, overlap 0.5, 4 windows per call) on a ``--tile`` x ``--tile`` image. ``nas-scam-p`` is a
derived network with a fixed random genotype (seed 0): its cost depends on the ops the search picked. Each process
first tunes the allocator as train.yaml does (:func:`monai_nasscam.allocator.tune_allocator`).
Prints one JSON line per network.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _one(name: str, steps: int, batch: int, tile: int) -> dict:
    import torch
    from monai.inferers import SlidingWindowInferer

    from monai_nasscam.allocator import tune_allocator
    from monai_nasscam.networks.run_folder import build_network
    from monai_nasscam.losses import ExpLogLoss
    from monai_nasscam.networks import Genotype, NASSCAMUNet

    tune_allocator()
    torch.manual_seed(0)
    if name.startswith("nas-"):
        supernet = NASSCAMUNet(attention=name)
        for alpha in supernet.arch_parameters():
            alpha.data.normal_()
        path = Path(tempfile.mkdtemp()) / "genotype.json"
        Genotype.from_model(supernet).save(path)
        del supernet
        net = build_network(genotype_path=str(path))
    else:
        net = build_network(attention=name)
    params = sum(p.numel() for p in net.parameters())
    loss_fn = ExpLogLoss(sigmoid=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, 256, 256)
    y = (torch.rand(batch, 4, 256, 256) > 0.9).float()
    times = []
    net.train()
    for _ in range(steps + 1):  # the first step warms up the allocator and oneDNN kernels
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    train_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    net.eval()
    inferer = SlidingWindowInferer(roi_size=256, sw_batch_size=4, overlap=0.5, cval=1.0)
    image = torch.rand(1, 3, tile, tile)
    with torch.no_grad():
        t = time.perf_counter()
        inferer(image, net)
        infer_s = time.perf_counter() - t
    return {
        "network": name,
        "params_M": round(params / 1e6, 3),
        "train_step_s": round(sorted(times[1:])[len(times[1:]) // 2], 2),
        "batch": batch,
        "peak_rss_MiB_after_training": round(train_rss),
        f"eval_{tile}x{tile}_s": round(infer_s, 2),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=["unet", "cbam", "scse", "nas-scam-p", "deeplabv3plus"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (median reported)")
    parser.add_argument("--batch", type=int, default=4, help="crops per step (train.yaml's batch_size)")
    parser.add_argument("--tile", type=int, default=1000, help="side of the evaluated image")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args.steps, args.batch, args.tile)), flush=True)
        return
    for name in args.networks:
        cmd = [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--batch", str(args.batch),
               "--tile", str(args.tile)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
        print(out[-1], flush=True)


if __name__ == "__main__":
    main()
