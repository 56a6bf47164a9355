"""Validation against training cost at the demo's budget: fp32 / bf16, training-crop / larger validation window.

Builds the networks, data loaders, losses and optimisers from the bundle configs (search.yaml for the NAS-SCAM-P
supernet, train.yaml for a derived network or the U-Net) with the demo's settings, then times, alternating the
settings in one process so that a change of machine load hits them alike:

- ``step``: one training iteration as the workflows run it (search: a weight step and an alpha step; train: a weight
  step), forward through ``AutocastInferer(SimpleInferer)``, the loss in float32, backward, Adam; the median of
  ``--steps`` iterations after one untimed one; an epoch is ``crops per epoch / batch_size`` iterations;
- ``validation``: one pass over the validation split (every image whole, sliding window of ``val_roi_size``, 4
  windows per call, overlap 0.5, windows fitted to smaller images), network in evaluation mode, no gradients.

Example (the demo's data: ``python -m monai_nasscam.demo`` writes outputs/demo/prepared)::

    python bench/validation_window.py --dataset_dir outputs/demo/prepared --model search --repeats 2
    python bench/validation_window.py --dataset_dir outputs/demo/prepared --model unet --epoch_crops 128
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.inferers import SimpleInferer, SlidingWindowInferer

from monai_nasscam.inferers import AutocastInferer, validation_roi_size

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"


def build(model: str, dataset_dir: str, out: str, roi: int, epoch_crops: int, genotype: str | None) -> ConfigParser:
    configs = ["train.yaml", "search.yaml"] if model == "search" else ["train.yaml"]  # search.yaml overrides train.yaml
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    overrides = {"dataset_dir": dataset_dir, "output_dir": out, "roi_size": [roi, roi], "num_workers": 0,
                 "features": [16, 32, 64, 128, 256], "learning_rate": 1e-3, "epoch_crops": epoch_crops, "seed": 0,
                 "progress": False, "device": "cpu"}
    if model == "search":
        overrides.update(epochs=6, warmup_epochs=2, attention="nas-scam-p", synchronous=True)
    elif model == "unet":
        overrides.update(attention="unet")
    else:
        overrides.update(genotype_path=genotype)
    parser.update(overrides)
    return parser


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--model", choices=["search", "unet", "derived"], default="search")
    ap.add_argument("--genotype_path", help="genotype.json of the derived network (--model derived)")
    ap.add_argument("--roi", type=int, default=64, help="training crop (the demo's 64)")
    ap.add_argument("--epoch_crops", type=int, default=48, help="crops per epoch (demo: search 48, train 128)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--windows", type=int, nargs="+", default=[64, 256], help="validation windows to compare")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        parser = build(args.model, args.dataset_dir, out, args.roi, args.epoch_crops, args.genotype_path)
        net = parser.get_parsed_content("network")
        loss_fn = parser.get_parsed_content("loss")
        opt = parser.get_parsed_content("optimizer")
        arch_opt = parser.get_parsed_content("arch_optimizer") if args.model == "search" else None
        arch_loss = parser.get_parsed_content("arch_loss") if args.model == "search" else None
        batches = list(parser.get_parsed_content("train#dataloader"))[: args.steps + 1]
        arch_batches = list(parser.get_parsed_content("arch#dataloader"))[: args.steps + 1] if arch_opt else None
        val_images = [b["image"] for b in parser.get_parsed_content("validate#dataloader")]
        per_epoch = len(parser.get_parsed_content("train#dataloader"))
    arch_params = {id(p) for g in arch_opt.param_groups for p in g["params"]} if arch_opt else set()
    weights = [p for p in net.parameters() if id(p) not in arch_params]
    alphas = [p for p in net.parameters() if id(p) in arch_params]

    def optimise(inferer, batch, optimizer, loss, frozen) -> None:  # one step of one optimiser, the rest frozen
        for p in frozen:
            p.requires_grad_(False)
        optimizer.zero_grad(set_to_none=True)
        loss(inferer(batch["image"], net), batch["label"]).mean().backward()
        optimizer.step()
        for p in frozen:
            p.requires_grad_(True)

    def one_step(inferer, batch, arch_batch) -> None:  # as BilevelSearchTrainer's iteration: weights, then alphas
        net.train()
        optimise(inferer, batch, opt, loss_fn, alphas)
        if arch_batch is not None:
            optimise(inferer, arch_batch, arch_opt, arch_loss, weights)

    def time_steps(precision: str) -> float:
        inferer = AutocastInferer(SimpleInferer(), precision)
        times = []
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            one_step(inferer, batch, arch_batches[i] if arch_batches else None)
            if i:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def time_validation(precision: str, window: int) -> float:
        roi = validation_roi_size([window, window], [args.roi, args.roi])
        inferer = AutocastInferer(SlidingWindowInferer(roi, sw_batch_size=4, overlap=0.5, cval=1.0), precision,
                                  fit_to_image=True)
        net.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            for x in val_images:
                inferer(x, net)
        return time.perf_counter() - t0

    sizes = sorted({tuple(x.shape[2:]) for x in val_images})
    print(f"model {args.model}: {per_epoch} iterations per epoch ({args.epoch_crops} crops of {args.roi} px); "
          f"{len(val_images)} validation images, sizes {sizes[0]} .. {sizes[-1]}; {args.threads} thread(s)")
    step = {p: [] for p in args.precisions}
    val = {(p, w): [] for p in args.precisions for w in args.windows}
    for r in range(args.repeats):
        for p in args.precisions:
            step[p].append(time_steps(p))
            for w in args.windows:
                val[(p, w)].append(time_validation(p, w))
        print(f"repeat {r + 1}: " + ", ".join(f"step {p} {step[p][-1]:.3f} s" for p in step) + "; " +
              ", ".join(f"validation {p} {w} px {val[(p, w)][-1]:.2f} s" for p, w in val), flush=True)
    for p in args.precisions:
        s = statistics.median(step[p])
        print(f"{p}: step {s:.3f} s, epoch ({per_epoch} iterations) {s * per_epoch:.1f} s; " + ", ".join(
            f"validation {w} px {statistics.median(val[(p, w)]):.2f} s" for w in args.windows))


if __name__ == "__main__":
    main()
