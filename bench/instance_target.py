"""Does an instance-aware training target pay? Today's 4 class channels against the class channels plus a nucleus
boundary channel, same U-Net, same budget, on a prepared dataset (docs/results.md, "Instance-aware training target").

    # one trained arm (train, then cache the sigmoid maps of the validation and test images)
    .venv/bin/python bench/instance_target.py train --arm classes  --seed 0 --dataset-dir PREP --out-dir RUNS
    .venv/bin/python bench/instance_target.py train --arm boundary --seed 0 --dataset-dir PREP --out-dir RUNS
    # tune each arm's post-processing on the validation split, score the test split: RUNS/results.{json,md}
    .venv/bin/python bench/instance_target.py score --dataset-dir PREP --out-dir RUNS
    # or one arm per process: RUNS/results_classes.{json,md}, RUNS/results_boundary.{json,md}
    .venv/bin/python bench/instance_target.py score --arms boundary --dataset-dir PREP --out-dir RUNS

Arms (everything else equal: the bundle's ``unet`` network (features 16-256, dropout 0.2), class-balanced grid crops
and the patent's augmentations of ``train_transforms``, ExpLogLoss with the patent's weights and the training
labels' class weights, Adam, validation Dice every ``--val-interval`` epochs keeping the best model, a 64 x 64
sliding window with overlap 0.5 at evaluation):

- ``classes``: today's target, 4 sigmoid channels (one per nucleus type); instances by the project's default
  separation (:class:`~monai_nasscam.inference.instances.InstanceSeparator`: watershed of each class mask's
  distance transform, then ``min_size``).
- ``boundary``: a 5th sigmoid channel whose target is the inner contour of every ground-truth nucleus,
  ``--boundary-width`` pixels thick (:func:`instance_boundary`), computed after the augmentations from the
  augmented instance map (so it stays that thick under rotation and elastic deformation); the boundary channel
  gets class weight 1 in the cross term and one fifth of the Dice term. Instances by
  :func:`boundary_marker_instances`: per class mask, the cores (mask where the boundary probability is below a
  threshold) are the markers, a watershed of the boundary probability grows them back to the whole mask.

Why a boundary channel and not a distance map: the sigmoid head and ExpLogLoss take it as one more binary channel
(no new loss, no regression head), touching nuclei are separated exactly where the target says two nuclei meet,
and at 64 x 64 crops a nucleus (median 405 px, about 23 px across) is whole in most crops, so its inner contour is
well defined in the crop; a normalised distance map would need a regression loss beside ExpLogLoss.

Class-channel pixels are thresholded at 0.5 in both arms, so pooled Dice compares the class channels alone; the
post-processing parameters are tuned on the validation split only (mean PQ over the seeds), then the test split is
scored once per arm and seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

ARMS = ("classes", "boundary")
#: boundary thresholds and min_size values tried on the validation split
BOUNDARY_THRESHOLDS = (0.3, 0.5, 0.7)
MIN_SIZES = (100, 150, 200, 250)


# ------------------------------------------------------------------------------------------------ pure pieces
def instance_boundary(instances: np.ndarray | torch.Tensor, width: int = 2) -> np.ndarray:
    """
    Inner contour of every instance: the pixels of an instance that lie within ``width`` pixels (4-neighbour steps)
    of a pixel outside it (background or another instance).

    Args:
        instances: (H, W) or (1, H, W) integer instance map (0 background); float maps of integer ids (after a
            nearest-neighbour augmentation) are rounded.
        width: contour thickness in pixels, >= 1.

    Returns:
        bool array of the input's shape, True on the contour. A one-instance image's border is not a contour
        (pixels beyond the image are unknown).

    Raises:
        ValueError: ``width`` < 1.
    """
    from skimage.segmentation import find_boundaries

    if int(width) < 1:
        raise ValueError(f"boundary width must be >= 1 pixel, got {width}.")
    inst = np.rint(np.asarray(instances.detach().cpu() if isinstance(instances, torch.Tensor) else instances))
    inst = inst.astype(np.int64)
    shape = inst.shape
    inst = inst.reshape(shape[-2:]) if inst.ndim == 3 else inst
    out = np.zeros(inst.shape, dtype=bool)
    rest = inst.copy()
    for _ in range(int(width)):
        ring = find_boundaries(rest, connectivity=1, mode="inner") & (rest > 0)
        out |= ring
        rest[ring] = 0
    return out.reshape(shape)


def boundary_marker_instances(
    mask: np.ndarray | torch.Tensor,
    boundary_prob: np.ndarray | torch.Tensor,
    threshold: float = 0.5,
    min_size: int = 0,
    min_marker_size: int = 10,
) -> np.ndarray:
    """
    Class instance stack from the class masks and a boundary probability map.

    Per class channel: the markers are the 4-connected components of ``mask & (boundary_prob < threshold)`` of at
    least ``min_marker_size`` pixels; ``skimage.segmentation.watershed`` floods ``boundary_prob`` from them inside
    the class mask, so neighbouring cores meet where the boundary is most probable. A connected component of the
    mask that holds no marker stays one instance (no foreground pixel is lost); then instances under ``min_size``
    pixels are dropped (:func:`~monai_nasscam.inference.instances.remove_small_instances`).

    Args:
        mask: (C, H, W) binary class masks (channel ``c`` = class id ``c + 1``).
        boundary_prob: (H, W) or (1, H, W) boundary probability in [0, 1].
        threshold: a pixel with a boundary probability at or above it is no core pixel.
        min_size: instances of fewer pixels are dropped (0: none).
        min_marker_size: cores of fewer pixels are no markers.

    Returns:
        int32 (C, H, W), ids 1..n_c per channel, 0 = none.

    Raises:
        ValueError: shapes that do not match.
    """
    from monai.utils import convert_to_numpy
    from skimage.measure import label
    from skimage.segmentation import watershed

    from monai_nasscam.inference.instances import remove_small_instances

    mask = convert_to_numpy(mask) != 0
    prob = convert_to_numpy(boundary_prob).astype(np.float32)
    prob = prob.reshape(prob.shape[-2:]) if prob.ndim == 3 else prob
    if mask.ndim != 3 or mask.shape[1:] != prob.shape:
        raise ValueError(f"class masks {mask.shape} and boundary map {prob.shape} do not match (C, H, W) / (H, W).")
    out = np.zeros(mask.shape, dtype=np.int32)
    for c in range(mask.shape[0]):
        if not mask[c].any():
            continue
        markers = label(mask[c] & (prob < threshold), connectivity=1)
        if min_marker_size > 1 and markers.any():
            markers = remove_small_instances(markers, min_marker_size)
        parts = watershed(prob, markers, mask=mask[c], connectivity=1).astype(np.int32)
        unreached = mask[c] & (parts == 0)
        if unreached.any():
            rest = label(unreached, connectivity=1)
            parts = np.where(rest > 0, rest + parts.max(), parts).astype(np.int32)
        out[c] = remove_small_instances(parts, min_size)
    return out


class InstanceBoundaryd(MapTransform):
    """Append the inner contour of the instances (:func:`instance_boundary`) to the target as one more channel.

    Args:
        keys: target keys ((C, H, W) float multi-label, e.g. ``"label"``).
        instance_key: key of the (1, H, W) instance map (augmented with nearest interpolation); removed.
        width: contour thickness in pixels.
    """

    def __init__(self, keys: KeysCollection = "label", instance_key: str = "instance", width: int = 2) -> None:
        super().__init__(keys)
        self.instance_key = instance_key
        self.width = int(width)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        inst = d.pop(self.instance_key)
        ring = torch.as_tensor(instance_boundary(inst, self.width).reshape(1, *inst.shape[-2:]))
        for key in self.key_iterator(d):
            label = d[key]
            d[key] = torch.cat([torch.as_tensor(label), ring.to(torch.as_tensor(label).dtype)], dim=0)
        return d


def boundary_train_transforms(roi_size: Sequence[int] | int = (64, 64), num_classes: int = 4, width: int = 2):
    """:func:`monai_nasscam.data.train_transforms` with the instance map carried through the crop and the
    augmentations (nearest interpolation, as the label) and turned into a boundary channel appended to the
    multi-label target: ``label`` becomes (num_classes + 1, H, W), -1 on ambiguous pixels in every channel."""
    import math

    from monai.transforms import (
        CastToTyped,
        Compose,
        Rand2DElasticd,
        RandFlipd,
        RandGaussianSmoothd,
        RandRotate90d,
        RandRotated,
        ScaleIntensityRanged,
        SelectItemsd,
        SpatialPadd,
    )
    from monai.utils import ensure_tuple_rep

    from monai_nasscam.data import chains as C
    from monai_nasscam.data import transforms as T
    from monai_nasscam.data.classes import IGNORE_VALUE

    a = C.AUGMENTATION_DEFAULTS
    roi = ensure_tuple_rep(roi_size, 2)
    amb = T.AMBIGUOUS_KEY
    keys = ["image", "label", amb, "instance"]
    nearest = ("bilinear", "nearest", "nearest", "nearest")
    return Compose([
        T.DropEmptyd(amb),
        *C.load_transforms(["image", "label", "instance"]),
        *C.load_transforms([amb], allow_missing_keys=True),
        T.EnsureAmbiguousd(amb, ref_key="label"),
        SpatialPadd(keys="image", spatial_size=roi, method="symmetric", mode="constant", value=255),
        SpatialPadd(keys=["label", amb, "instance"], spatial_size=roi, method="symmetric", mode="constant", value=0),
        T.RandClassCropd(keys=keys, label_key="label", spatial_size=roi, num_classes=num_classes, ignore_key=amb),
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, dtype=np.float32),
        CastToTyped(keys=["label", amb, "instance"], dtype=torch.float32),
        RandRotate90d(keys=keys, prob=a["rot90_prob"], max_k=3, spatial_axes=(0, 1)),
        RandRotated(keys=keys, range_x=math.pi, prob=a["rotate_prob"], keep_size=True, mode=nearest,
                    padding_mode="reflection"),
        RandFlipd(keys=keys, prob=a["flip_prob"], spatial_axis=0),
        RandFlipd(keys=keys, prob=a["flip_prob"], spatial_axis=1),
        Rand2DElasticd(keys=keys, spacing=(32, 32), magnitude_range=(1.0, 3.0), prob=a["elastic_prob"], mode=nearest,
                       padding_mode="reflection"),
        RandGaussianSmoothd(keys="image", sigma_x=(0.5, 1.5), sigma_y=(0.5, 1.5), prob=a["gaussian_blur_prob"]),
        T.RandMedianSmoothd(keys="image", radius=1, prob=a["median_blur_prob"]),
        T.ClassMapToMultiLabeld(keys="label", num_classes=num_classes),
        InstanceBoundaryd("label", instance_key="instance", width=width),
        T.IgnoreAmbiguousd("label", mask_key=amb, ignore_value=IGNORE_VALUE),
        SelectItemsd(keys=["image", "label", amb, "crop_class", "class_map"]),
    ])


# ---------------------------------------------------------------------------------------------------- training
def _predict(network: torch.nn.Module, entries: list[dict], roi: int) -> dict[str, np.ndarray]:
    """Sigmoid maps (C, H, W) float32 of whole images, train.yaml's validation inferer."""
    from monai.inferers import SlidingWindowInferer

    from monai_nasscam.data import val_transforms

    inferer = SlidingWindowInferer(roi_size=(roi, roi), sw_batch_size=4, overlap=0.5, cval=1.0)
    xform = val_transforms()
    out = {}
    network.eval()
    with torch.no_grad():
        for e in entries:
            img = xform(dict(e))["image"].as_tensor()[None]
            out[e["name"]] = torch.sigmoid(inferer(img, network))[0].numpy()
    return out


def _pooled_dice(probs: Mapping[str, np.ndarray], entries: list[dict], num_classes: int = 4) -> tuple[float, list]:
    from monai_nasscam.data import val_transforms
    from monai_nasscam.metrics import PooledDiceMetric

    metric = PooledDiceMetric(reduction="none")
    xform = val_transforms()
    for e in entries:
        d = xform(dict(e))
        pred = torch.as_tensor(probs[e["name"]][:num_classes] >= 0.5).float()[None]
        keep = 1.0 - d["ambiguous"].as_tensor().float()[None]
        metric(pred * keep, d["label"].as_tensor().float()[None] * keep)
    per_class = metric.aggregate().numpy()
    return float(np.nanmean(per_class)), per_class.tolist()


def train(arm: str, seed: int, dataset_dir: str, out_dir: str, epochs: int, epoch_crops: int, lr: float, roi: int,
          val_interval: int, width: int) -> None:
    """Train one arm, keep the best validation-Dice model, cache the sigmoid maps of validation and test."""
    from ignite.engine import Events
    from monai.data import DataLoader
    from monai.engines import SupervisedTrainer
    from monai.utils import set_determinism

    from monai_nasscam.allocator import tune_allocator
    from monai_nasscam.data import ClassBalancedCropDataset, train_transforms
    from monai_nasscam.data.datalist import epoch_groups, label_class_weights, split_entries
    from monai_nasscam.fileio import atomic_path, atomic_write_text
    from monai_nasscam.handlers.training import EpochReseeder
    from monai_nasscam.losses import ExpLogLoss
    from monai_nasscam.networks.run_folder import build_network

    run = Path(out_dir) / arm / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    set_determinism(seed=seed)
    tune_allocator()
    nc = 4
    out_ch = nc + (1 if arm == "boundary" else 0)
    data = split_entries(dataset_dir, "training")
    val = split_entries(dataset_dir, "validation")
    test = split_entries(dataset_dir, "test")
    xform = (boundary_train_transforms((roi, roi), nc, width) if arm == "boundary" else
             train_transforms(roi_size=(roi, roi), num_classes=nc))
    groups = epoch_groups(data, (roi, roi), (roi // 2, roi // 2), epoch_crops, nc)
    ds = ClassBalancedCropDataset(data, xform, num_classes=nc, num_groups=groups, mode="grid", roi_size=(roi, roi),
                                  stride=(roi // 2, roi // 2), seed=seed)
    loader = DataLoader(ds, batch_size=1, shuffle=False, num_workers=0)
    network = build_network(attention="unet", out_channels=out_ch)
    weights = label_class_weights(data, nc)
    if arm == "boundary":
        weights = torch.cat([weights, torch.ones(1)])
    loss = ExpLogLoss(sigmoid=True, w_dice=0.8, w_cross=0.2, gamma_dice=0.3, gamma_cross=0.3, smooth=1.0, batch=True,
                      class_weights=weights, ignore_value=-1.0)
    opt = torch.optim.Adam(network.parameters(), lr=lr)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader,
                                network=network, optimizer=opt, loss_function=loss)
    EpochReseeder(seed, loader).attach(trainer)
    log: dict[str, Any] = {"arm": arm, "seed": seed, "epochs": epochs, "epoch_crops": epoch_crops, "lr": lr,
                           "roi": roi, "boundary_width": width if arm == "boundary" else None,
                           "class_weights": weights.tolist(), "validation": []}
    best = {"dice": -1.0, "epoch": 0}

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine):
        if engine.state.epoch % val_interval and engine.state.epoch != epochs:
            return
        dice, _ = _pooled_dice(_predict(network, val, roi), val, nc)
        network.train()
        log["validation"].append({"epoch": engine.state.epoch, "dice": dice, "loss": float(engine.state.output[0]["loss"])
                                  if isinstance(engine.state.output, list) else None})
        print(f"[{arm} seed {seed}] epoch {engine.state.epoch}: validation Dice {dice:.4f}", flush=True)
        if dice > best["dice"]:
            best.update(dice=dice, epoch=engine.state.epoch)
            with atomic_path(run / "model.pt") as tmp:
                torch.save(network.state_dict(), tmp)

    trainer.run()
    log["best"] = dict(best)
    log["train_s"] = round(time.time() - t0, 1)
    network.load_state_dict(torch.load(run / "model.pt", map_location="cpu"))
    for split, entries in (("validation", val), ("test", test)):
        probs = _predict(network, entries, roi)
        with atomic_path(run / f"probs_{split}.npz") as tmp:
            np.savez_compressed(tmp, **{k: v.astype(np.float16) for k, v in probs.items()})
    log["total_s"] = round(time.time() - t0, 1)

    atomic_write_text(run / "train.json", json.dumps(log, indent=1) + "\n")
    print(json.dumps({k: log[k] for k in ("arm", "seed", "best", "train_s", "total_s")}), flush=True)


# ----------------------------------------------------------------------------------------------------- scoring
def _gt(entries: list[dict]) -> dict[str, dict]:
    from monai_nasscam.data import val_transforms

    xform = val_transforms(load_instance=True)
    out = {}
    for e in entries:
        d = xform(dict(e))
        out[e["name"]] = {
            "label": d["label"].as_tensor().float(),
            "panoptic": torch.cat([d["instance"].as_tensor().long(), d["class_map"].as_tensor().long(),
                                   d["ambiguous"].as_tensor().long()], 0),
            "ambiguous": d["ambiguous"].as_tensor().float(),
        }
    return out


def score_run(probs: Mapping[str, np.ndarray], gt: Mapping[str, dict], method: str, **params: Any) -> dict:
    """PQ (pooled, mean over classes = mPQ+), AJI, AJI+, detection F1 and pooled Dice (%) of one run on one split.

    ``method``: ``"watershed"`` (the project's separator on the class masks, ``params``: ``min_size``) or
    ``"boundary"`` (:func:`boundary_marker_instances`, ``params``: ``threshold``, ``min_size``)."""
    from monai_nasscam.inference.instances import InstanceSeparator
    from monai_nasscam.metrics import InstanceMetric, PooledDiceMetric, PooledPQMetric, mpq_plus

    identity = lambda stack: stack  # noqa: E731 -- instances are cut below, per image
    pq, inst, dice = PooledPQMetric(instance_fn=identity), InstanceMetric(instance_fn=identity), PooledDiceMetric()
    sep = InstanceSeparator("watershed", min_size=params.get("min_size")) if method == "watershed" else None
    for name, g in gt.items():
        p = np.asarray(probs[name], dtype=np.float32)
        mask = p[:4] >= 0.5
        amb = g["ambiguous"][0].numpy() != 0
        mask &= ~amb[None]
        if method == "watershed":
            stack = sep(mask)
        else:
            stack = boundary_marker_instances(mask, p[4], params["threshold"], params["min_size"])
        stack_t = torch.as_tensor(stack)[None]
        pq(stack_t, g["panoptic"][None])
        inst(stack_t, g["panoptic"][None])
        keep = 1.0 - g["ambiguous"][None]
        dice(torch.as_tensor(mask).float()[None] * keep, g["label"][None] * keep)
    res = inst.results()
    return {
        "pq": 100 * float(pq.aggregate()), "mpq_plus": 100 * mpq_plus(pq.counts()), "aji": 100 * float(res["aji"]),
        "aji_plus": 100 * float(res["aji_plus"]), "f1_detection": 100 * float(res["f1_detection"]),
        "dice": 100 * float(dice.aggregate()),
    }


def _configs(arm: str) -> list[tuple[str, dict]]:
    cfgs = [("watershed", {"min_size": m}) for m in MIN_SIZES]
    if arm == "boundary":
        cfgs += [("boundary", {"threshold": t, "min_size": m}) for t in BOUNDARY_THRESHOLDS for m in MIN_SIZES]
    return cfgs


def score(dataset_dir: str, out_dir: str, arms: Sequence[str] = ARMS) -> None:
    """Tune each arm's post-processing on validation (mean PQ over its seeds), score test; write
    ``results[_ARM].json`` / ``.md`` (one arm: its own files, so the arms can be scored in parallel)."""
    from monai_nasscam.data.datalist import split_entries
    from monai_nasscam.fileio import atomic_write_text

    out = Path(out_dir)
    gts = {s: _gt(split_entries(dataset_dir, s)) for s in ("validation", "test")}
    runs = sorted((arm, int(p.name[4:])) for arm in arms for p in (out / arm).glob("seed*")
                  if (p / "probs_test.npz").exists())
    results: dict[str, Any] = {"validation": [], "test": [], "chosen": {}}
    for arm in arms:
        seeds = [s for a, s in runs if a == arm]
        if not seeds:
            continue
        probs = {s: {sp: dict(np.load(out / arm / f"seed{s}" / f"probs_{sp}.npz")) for sp in ("validation", "test")}
                 for s in seeds}
        grid = []
        for method, params in _configs(arm):
            rows = [score_run(probs[s]["validation"], gts["validation"], method, **params) for s in seeds]
            for s, r in zip(seeds, rows):
                results["validation"].append({"arm": arm, "seed": s, "method": method, **params, **r})
            mean_pq = float(np.mean([r["pq"] for r in rows]))
            grid.append((mean_pq, method, params))
            print(f"validation {arm} {method} {params}: PQ {[round(r['pq'], 2) for r in rows]} mean {mean_pq:.2f}",
                  flush=True)
        # the arm's choice, and the default watershed as a reference for both arms
        chosen = max(grid, key=lambda g: g[0])
        results["chosen"][arm] = {"method": chosen[1], **chosen[2], "validation_pq": chosen[0]}
        tests = [("chosen", chosen[1], chosen[2])]
        if (chosen[1], chosen[2]) != ("watershed", {"min_size": 200}):
            tests.append(("default watershed", "watershed", {"min_size": 200}))
        if arm == "boundary":
            best_ws = max((g for g in grid if g[1] == "watershed"), key=lambda g: g[0])
            if ("watershed", best_ws[2]) not in [(t[1], t[2]) for t in tests]:
                tests.append(("best watershed", "watershed", best_ws[2]))
        for tag, method, params in tests:
            for s in seeds:
                r = score_run(probs[s]["test"], gts["test"], method, **params)
                results["test"].append({"arm": arm, "seed": s, "post": tag, "method": method, **params, **r})
                print(f"test {arm} seed {s} {tag} {method} {params}: " +
                      " ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    stem = "results" if len(arms) != 1 else f"results_{arms[0]}"
    atomic_write_text(out / f"{stem}.json", json.dumps(results, indent=1) + "\n")
    lines = ["| arm | post-processing | seed | PQ | mPQ+ | AJI | AJI+ | F1 detection | pooled Dice |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["test"]:
        post = f"{r['post']}: {r['method']} " + ", ".join(f"{k} {r[k]:g}" for k in ("threshold", "min_size") if k in r)
        lines.append(f"| {r['arm']} | {post} | {r['seed']} | {r['pq']:.1f} | {r['mpq_plus']:.1f} | {r['aji']:.1f} | "
                     f"{r['aji_plus']:.1f} | {r['f1_detection']:.1f} | {r['dice']:.1f} |")
    atomic_write_text(out / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one arm and cache its validation / test sigmoid maps")
    t.add_argument("--arm", choices=ARMS, required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--epoch-crops", type=int, default=128)
    t.add_argument("--learning-rate", type=float, default=1e-3)
    t.add_argument("--roi", type=int, default=64)
    t.add_argument("--val-interval", type=int, default=6)
    t.add_argument("--boundary-width", type=int, default=2)
    sc = sub.add_parser("score", help="tune on validation, score test, write results.json / results.md")
    sc.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    for p in (t, sc):
        p.add_argument("--dataset-dir", required=True)
        p.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    if not (Path(args.dataset_dir) / "datalist.json").is_file():
        parser.error(f"{args.dataset_dir}/datalist.json not found: give a folder written by `nasscam prepare`.")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.command == "train":
        train(args.arm, args.seed, args.dataset_dir, args.out_dir, args.epochs, args.epoch_crops, args.learning_rate,
              args.roi, args.val_interval, args.boundary_width)
    else:
        score(args.dataset_dir, args.out_dir, args.arms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
