"""The figures of ``nasscam compare``: the Dice bars (``OUT/dice_bars.png``) and the panel of one test image with each
model's prediction (``OUT/panel.png``, as the paper's Fig. 3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_nasscam.compare.models import MODELS, train_overrides
from monai_nasscam.data.classes import BACKGROUND_COLOR, CLASS_COLORS, CLASS_NAMES

__all__ = ["PALETTE", "plot_dice_bars", "colorize", "plot_panel"]

# the palette of class maps in figures: background, then CLASS_NAMES order
PALETTE = np.array([BACKGROUND_COLOR] + [CLASS_COLORS[i + 1] for i in range(len(CLASS_NAMES))], dtype=np.uint8)


def plot_dice_bars(summary: Mapping[str, Any], path: Path) -> None:
    """Grouped bars: per-class and mean Dice of each model, with the sd across seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (*CLASS_NAMES, "mean")
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys) * max(1, len(summary)) / 3), 4), dpi=100)
    width = 0.8 / max(1, len(summary))
    for i, row in enumerate(summary.values()):
        # an undefined value (no seed scored the class) is no bar, not a bar at 0
        means = [np.nan if row["dice"][k]["mean"] is None else 100 * row["dice"][k]["mean"] for k in keys]
        sds = [0.0 if row["dice"][k]["sd"] is None else 100 * row["dice"][k]["sd"] for k in keys]
        ax.bar(np.arange(len(keys)) + (i - (len(summary) - 1) / 2) * width, means, width, yerr=sds, capsize=2, label=row["label"])
    ax.set_xticks(np.arange(len(keys)), keys)
    ax.set_ylabel("pooled Dice (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Dice per class, mean ± sd across seeds")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def colorize(class_map: np.ndarray) -> np.ndarray:
    """An RGB picture of a class map (0 background, 1-4 the classes)."""
    return PALETTE[np.clip(class_map, 0, len(PALETTE) - 1)]


def _pick_test_image(entries: list[dict], dataset_dir: Path) -> dict:
    """The test image showing the most classes (then the most labelled pixels)."""
    from PIL import Image

    def score(entry):
        label = np.asarray(Image.open(dataset_dir / entry["label"]))
        return len(set(np.unique(label).tolist()) - {0}), int((label > 0).sum())

    return max(entries, key=score)


def plot_panel(dataset_dir, output_dir: Path, models: Sequence[str], seed: int, common, train, path: Path) -> None:
    """Fig. 3 style: one test image, its ground truth, and each model's prediction (seed ``seed``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from monai.inferers import SlidingWindowInferer
    from PIL import Image

    from monai_nasscam.data.datalist import split_entries
    from monai_nasscam.networks.run_folder import build_network

    dataset_dir = Path(dataset_dir)
    entries = split_entries(dataset_dir, "test") or split_entries(dataset_dir, "validation")
    entry = _pick_test_image(entries, dataset_dir)
    image = np.asarray(Image.open(dataset_dir / entry["image"]).convert("RGB"))
    truth = np.asarray(Image.open(dataset_dir / entry["label"]))
    roi = [int(r) for r in common.get("roi_size", train.get("roi_size", [256, 256]))]
    inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=4, overlap=0.5, cval=1.0)
    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    panels = [("image", image), ("ground truth", colorize(truth))]
    for model in models:
        run_dir = output_dir / model / f"seed{seed}"
        overrides = train_overrides(model, run_dir, str(dataset_dir), seed, common, train)
        kwargs = {k: overrides[k] for k in ("features",) if k in overrides}
        net = build_network(overrides.get("attention"), overrides.get("genotype_path"), **kwargs)
        net.load_state_dict(torch.load(run_dir / "train" / "models" / "model.pt", map_location="cpu", weights_only=True))
        with torch.inference_mode():
            prob = torch.sigmoid(inferer(x, net.eval()))[0].numpy()
        pred = np.where(prob.max(0) > 0.5, prob.argmax(0) + 1, 0)
        panels.append((MODELS[model][0], colorize(pred)))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.8), dpi=100)
    for ax, (title, picture) in zip(np.atleast_1d(axes), panels):
        ax.imshow(picture)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=PALETTE[i + 1] / 255) for i in range(len(CLASS_NAMES))]
    fig.legend(handles, CLASS_NAMES, loc="lower center", ncol=len(CLASS_NAMES), fontsize=7, frameon=False)
    fig.suptitle(f"{entry['name']} (test)", fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path)
    plt.close(fig)
