"""Calibration of the synthetic MoNuSAC generator: a short training of a plain U-Net must not saturate.

Pipeline: ``nasscam synth`` (demo-sized set) -> ``nasscam prepare`` (Macenko, patient split) -> train
``NASSCAMUNet(attention="none")`` (the paper's plain U-Net; MONAI ``BasicUNet`` if the plugin network is
unavailable) on class-balanced crops with the default augmentations, Dice + BCE loss, Adam ->
evaluate on the test split: whole images, sliding window (overlap 0.5), sigmoid > 0.5, per-class Dice
with intersections and sums pooled over the images (SPEC §7). The requirement (issue 3): mean Dice between
0.5 and 0.85 with the rare classes (Neutrophil, Macrophage) lowest.

Usage: python bench/calibrate_synth.py [--images 48] [--patients 8] [--steps 400] [--roi 128] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import torch
from monai.data import DataLoader, load_decathlon_datalist
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceLoss
from monai.utils import set_determinism

from monai_nasscam.data import CLASS_NAMES, ClassBalancedCropDataset, generate_dataset, prepare_dataset
from monai_nasscam.data.transforms import train_transforms, val_transforms


def build_net() -> tuple[torch.nn.Module, str]:
    try:
        from monai_nasscam.networks import NASSCAMUNet

        return NASSCAMUNet(spatial_dims=2, in_channels=3, out_channels=4, attention="none"), "NASSCAMUNet(attention='none')"
    except ImportError:
        from monai.networks.nets import BasicUNet

        return BasicUNet(spatial_dims=2, in_channels=3, out_channels=4), "monai BasicUNet"


def pooled_dice(net: torch.nn.Module, data: list[dict], roi: int) -> dict[str, float]:
    """Per-class Dice with intersections and sums pooled over all images (sigmoid > 0.5)."""
    xf = val_transforms()
    inferer = SlidingWindowInferer(roi_size=(roi, roi), sw_batch_size=8, overlap=0.5, mode="gaussian")
    inter = np.zeros(4)
    total = np.zeros(4)
    net.eval()
    with torch.no_grad():
        for item in data:
            d = xf(dict(item))
            pred = torch.sigmoid(inferer(d["image"][None], net))[0] > 0.5
            gt = d["label"].as_tensor() > 0.5
            inter += (pred & gt).flatten(1).sum(1).numpy()
            total += (pred.flatten(1).sum(1) + gt.flatten(1).sum(1)).numpy()
    dice = {n: float(2 * i / t) if t > 0 else float("nan") for n, i, t in zip(CLASS_NAMES, inter, total)}
    dice["mean"] = float(np.nanmean([dice[n] for n in CLASS_NAMES]))
    return dice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400, help="optimiser steps (each: 2 groups of 4 class-balanced crops)")
    ap.add_argument("--roi", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default=None, help="keep the data and write calibration.json here")
    args = ap.parse_args()
    set_determinism(args.seed)
    work = args.out or tempfile.mkdtemp(prefix="nasscam-calib-")
    os.makedirs(work, exist_ok=True)
    try:
        t0 = time.perf_counter()
        raw, prep = os.path.join(work, "raw"), os.path.join(work, "prep")
        shutil.rmtree(raw, ignore_errors=True)
        generate_dataset(raw, n_images=args.images, n_patients=args.patients, seed=args.seed)
        manifest = prepare_dataset(raw, prep, seed=args.seed, stain="macenko", overwrite=True, progress=False)
        data_s = time.perf_counter() - t0
        dl = {s: load_decathlon_datalist(os.path.join(prep, "datalist.json"), data_list_key=s, base_dir=prep) for s in ("training", "validation", "test")}
        ds = ClassBalancedCropDataset(dl["training"], train_transforms(roi_size=(args.roi, args.roi)), num_groups=args.steps * 2, seed=args.seed)
        loader = DataLoader(ds, batch_size=2, num_workers=1, shuffle=False)
        net, net_name = build_net()
        opt = torch.optim.Adam(net.parameters(), lr=args.lr)
        dice_loss = DiceLoss(sigmoid=True, batch=True)
        bce = torch.nn.BCEWithLogitsLoss()
        t1 = time.perf_counter()
        net.train()
        losses = []
        inter, tot = np.zeros(4), np.zeros(4)
        for step, batch in enumerate(loader):
            logits = net(batch["image"])
            loss = dice_loss(logits, batch["label"]) + bce(logits, batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            with torch.no_grad():
                pred, gt = torch.sigmoid(logits) > 0.5, batch["label"] > 0.5
                inter += (pred & gt).sum((0, 2, 3)).numpy()
                tot += (pred.sum((0, 2, 3)) + gt.sum((0, 2, 3))).numpy()
            if (step + 1) % 50 == 0:
                crop_dice = " ".join(f"{n[:4]} {2 * i / max(t, 1):.2f}" for n, i, t in zip(CLASS_NAMES, inter, tot))
                print(
                    f"step {step + 1}/{args.steps} loss {np.mean(losses[-50:]):.3f} training-crop Dice [{crop_dice}] "
                    f"({time.perf_counter() - t1:.0f} s)",
                    flush=True,
                )
                inter, tot = np.zeros(4), np.zeros(4)
        train_s = time.perf_counter() - t1
        result = {
            "network": net_name,
            "settings": vars(args),
            "counts": manifest["counts"],
            "time_s": {"data": round(data_s, 1), "train": round(train_s, 1)},
            "dice_test": pooled_dice(net, dl["test"], args.roi),
            "dice_validation": pooled_dice(net, dl["validation"], args.roi),
        }
        result["time_s"]["total"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({k: result[k] for k in ("network", "time_s", "dice_test", "dice_validation")}, indent=1))
        with open(os.path.join(work, "calibration.json"), "w") as f:
            json.dump(result, f, indent=1)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
