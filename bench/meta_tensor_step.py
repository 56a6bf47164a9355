"""What MONAI's ``MetaTensor`` costs a training step when it reaches the network.

MONAI's data pipeline hands the workflows ``MetaTensor`` batches. Passed to the network as they are, every operation
of the forward pass goes through ``MetaTensor.__torch_function__`` (metadata copied onto every intermediate result).
``AutocastNetwork`` (``monai_nasscam/inferers.py``) passes them on as plain tensors. This script times one training
step (bf16 autocast forward, float32 loss, backward, Adam) of the U-Net, a NAS-SCAM-P genotype network (a random
genotype) and the NAS-SCAM-P supernet, fed the same batch as a plain tensor and as a ``MetaTensor``, **alternating in
one process** (thread CPU time, medians), so that a shared machine slows both sides alike.

    python bench/meta_tensor_step.py [--size 64] [--batch 4] [--steps 11] [--features 16 32 64 128 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from monai.data import MetaTensor

from monai_nasscam.networks import NASSCAMUNet
from monai_nasscam.networks.genotype import random_genotype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="crop side, px (the demo's 64; the real-tissue recipe's 128)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=11, help="timed steps per side (after 3 untimed each)")
    parser.add_argument("--features", type=int, nargs=5, default=[16, 32, 64, 128, 256])
    args = parser.parse_args()
    torch.manual_seed(0)
    common = {"spatial_dims": 2, "in_channels": 3, "out_channels": 4, "features": tuple(args.features)}
    networks = {
        "U-Net": NASSCAMUNet(attention="unet", **common),
        "NAS-SCAM-P genotype (random, seed 0)": NASSCAMUNet(
            attention="nas-scam-p", genotype=random_genotype("nas-scam-p", True, 0), **common),
        "NAS-SCAM-P supernet": NASSCAMUNet(attention="nas-scam-p", genotype=None, **common),
    }
    x = torch.rand(args.batch, 3, args.size, args.size)
    y = torch.rand(args.batch, 4, args.size, args.size)
    print(f"batch {args.batch} x 3 x {args.size} x {args.size}, {torch.get_num_threads()} thread(s), "
          f"ms of thread CPU time per step (median of {args.steps})")
    for name, net in networks.items():
        net.train()
        opt = torch.optim.Adam(net.parameters(), 1e-3)

        def step(inputs: torch.Tensor) -> float:
            start = time.thread_time()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = net(inputs)
            loss = torch.nn.functional.mse_loss(out.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return time.thread_time() - start

        for _ in range(3):
            step(x), step(MetaTensor(x))
        plain, meta = [], []
        for _ in range(args.steps):
            plain.append(step(x))
            meta.append(step(MetaTensor(x)))
        p, m = statistics.median(plain) * 1e3, statistics.median(meta) * 1e3
        print(f"{name:38s} plain {p:7.1f}  MetaTensor {m:7.1f}  plain / MetaTensor {p / m:.3f}", flush=True)


if __name__ == "__main__":
    main()
