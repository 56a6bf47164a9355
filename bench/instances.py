"""Cost of the instance post-processing per megapixel: ``instances_from_class_map`` with the default tuned watershed
against connected components, on the ground-truth class maps of a prepared dataset (nuclei as the model should
find them), single-threaded, alternated in one process.

    python bench/instances.py --dataset_dir PREP [--images 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np
from PIL import Image

from monai_nasscam.inference.instances import InstanceSeparator, instances_from_class_map


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset_dir", required=True, help="a prepared dataset (its labels/ class maps)")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    files = sorted(glob.glob(str(Path(args.dataset_dir) / "labels" / "*.png")))[: args.images]
    if not files:
        raise SystemExit(f"no class maps in {args.dataset_dir}/labels")
    maps = [np.array(Image.open(f)) for f in files]
    mp = sum(m.size for m in maps) / 1e6
    print(f"{len(maps)} class maps, {mp:.2f} megapixels")
    for rep in range(args.repeats):
        for name, sep in (("watershed (default)", InstanceSeparator()), ("connected components", InstanceSeparator(method="connected_components"))):
            start, nuclei = time.perf_counter(), 0
            for m in maps:
                inst, _ = instances_from_class_map(m, 4, sep)
                nuclei += int(inst.max())
            dt = time.perf_counter() - start
            print(f"repeat {rep}: {name}: {dt:.2f} s, {dt / mp:.3f} s per megapixel, {nuclei} nuclei")


if __name__ == "__main__":
    main()
