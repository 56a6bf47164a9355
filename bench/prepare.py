"""Benchmark of the MoNuSAC reader and `nasscam prepare` (targets of issue 3).

1. XML + image -> masks (``load_case``: parse the ImageScope XML, read the .tif, rasterise) for a
   1000 x 1000 tile with about 300 nuclei; target < 0.5 s.
2. ``prepare_dataset`` of 200 such tiles with Macenko stain normalisation; target < 2 min.
   To keep the set-up short, ``--distinct`` different synthetic tiles are generated and copied under
   different names / patients until there are ``--tiles`` cases (the prepare step does the full work
   for every copy).

Usage: python bench/prepare.py [--tiles 200] [--distinct 20] [--workers N] [--stain macenko]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time

import numpy as np
import tifffile

from monai_nasscam.data import load_case, prepare_dataset, rasterize_regions, read_imagescope_xml, scan_monusac
from monai_nasscam.data.imagescope import write_imagescope_xml
from monai_nasscam.data.synth import synth_tile


def make_tile(folder: str, stem: str, seed: int) -> int:
    """Write a 1000 x 1000 synthetic tile (~300 nuclei) as .tif + .xml; returns its number of nuclei."""
    rng = np.random.default_rng(seed)
    tile = synth_tile(rng, 1000, 1000, density=340.0)
    os.makedirs(folder, exist_ok=True)
    tifffile.imwrite(os.path.join(folder, stem + ".tif"), tile.image, photometric="rgb")
    write_imagescope_xml(os.path.join(folder, stem + ".xml"), tile.layers)
    return sum(tile.counts.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=200)
    ap.add_argument("--distinct", type=int, default=20)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--stain", default="macenko")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    print(f"cpus {os.cpu_count()}, load average at start {os.getloadavg()[0]:.1f}")
    work = tempfile.mkdtemp(prefix="nasscam-bench-")
    try:
        raw = os.path.join(work, "raw")
        t0 = time.perf_counter()
        nuclei = [make_tile(os.path.join(raw, "TCGA-BE-0000-01Z-00-DX1"), f"src_{i}", seed=i) for i in range(args.distinct)]
        gen_s = time.perf_counter() - t0
        print(f"generated {args.distinct} distinct 1000x1000 tiles in {gen_s:.1f} s; nuclei per tile {min(nuclei)}-{max(nuclei)}")

        # 1. XML + image -> masks
        (case,) = [c for c in scan_monusac(raw)[0] if c.name == "src_0"]
        load_case(case)
        times, parse_t, raster_t, cpu_t = [], [], [], []
        for _ in range(args.repeats):
            t, tc = time.perf_counter(), time.process_time()
            image, masks, ann = load_case(case)
            times.append(time.perf_counter() - t)
            cpu_t.append(time.process_time() - tc)
            t = time.perf_counter()
            ann = read_imagescope_xml(case.xml)
            parse_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            rasterize_regions(ann.regions, image.shape[:2])
            raster_t.append(time.perf_counter() - t)
        print(
            f"XML+image -> masks, 1000x1000, {len(ann.regions)} nuclei: median {statistics.median(times) * 1000:.0f} ms "
            f"(XML parse {statistics.median(parse_t) * 1000:.0f} ms, rasterise {statistics.median(raster_t) * 1000:.0f} ms; "
            f"{args.repeats} repeats; CPU time median {statistics.median(cpu_t) * 1000:.0f} ms)"
        )

        # 2. prepare of N tiles
        for i in range(args.tiles - args.distinct):
            src = os.path.join(raw, "TCGA-BE-0000-01Z-00-DX1", f"src_{i % args.distinct}")
            dst_dir = os.path.join(raw, f"TCGA-BE-{1 + i // 10:04d}-01Z-00-DX1")
            os.makedirs(dst_dir, exist_ok=True)
            for ext in (".tif", ".xml"):
                shutil.copyfile(src + ext, os.path.join(dst_dir, f"copy_{i}{ext}"))
        n_cases = len(scan_monusac(raw)[0])
        def cpu() -> float:
            ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
            return sum(r.ru_utime + r.ru_stime for r in ru)

        c = cpu()
        t = time.perf_counter()
        manifest = prepare_dataset(raw, os.path.join(work, "prep"), stain=args.stain, workers=args.workers, progress=False)
        prep_s = time.perf_counter() - t
        cpu_s = cpu() - c
        print(
            f"prepare {n_cases} tiles of 1000x1000, stain={args.stain}, workers={args.workers or os.cpu_count()}: "
            f"{prep_s:.1f} s ({prep_s / n_cases * 1000:.0f} ms per tile); images written {manifest['counts']['total']['images']}"
        )
        print(f"  CPU time (all processes) {cpu_s:.1f} s = {cpu_s / n_cases * 1000:.0f} ms per tile")
        print(f"load average at end {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
