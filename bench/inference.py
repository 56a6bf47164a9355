"""Inference benchmark: sliding-window throughput on a 2000 x 2000 tile against one large 3x3 convolution, eager
against TorchScript, and the peak memory of the inference workflow on a 20000 x 20000 whole-slide image.

1. Tile: a synthetic 2000 x 2000 H&E tile is inferred by the workflow's own code path
   (``monai_nasscam.inference.predict_class_map``: MONAI ``SlidingWindowInferer``, roi 256, overlap 0.5,
   stitching and class map) with the derived NAS-SCAM-P network (every edge ``conv3``) and the plain U-Net, each
   prepared as ``none`` (the network as trained, torch's default threads, glibc's default allocator settings),
   ``eager`` and ``trace`` (as the workflow runs on CPU: folded attention cells, in-place ReLUs, channels-last,
   parallel single-threaded workers, ``tune_allocator``; ``trace`` is TorchScript traced + frozen).
   Throughput = FLOPs of all windows (``torch.utils.flop_counter`` on the network as trained) / wall time. The
   reference is the GFLOP/s of one large 3x3 convolution (64 -> 64 channels, 256 x 256, batch 8, the better of
   NCHW and channels-last, 2 threads), measured right before and after every timed run; the larger is used.
2. Slide: a 20000 x 20000 JPEG-compressed tiled pyramid (Aperio-style SVS, mostly glass with tissue islands) is
   written to a temporary folder and run through ``bundle/configs/inference.yaml`` in a subprocess (derived network,
   Macenko stain reference, default settings); its peak resident memory is the child's ``ru_maxrss``.

    python bench/inference.py [--size 2000] [--batch 8] [--slide 20000] [--no-slide] [--no-tile] [--json out.json]

Nothing is written to the repository; the slide lives in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "bundle" / "configs" / "inference.yaml"


def derived_genotype():
    from monai_nasscam.networks import POSITIONS, Genotype

    return Genotype("nas-scam-p", True, [{"position": p, "sam": ["conv3"] * 6, "cam": ["conv3"] * 6} for p in POSITIONS])


def build(name: str) -> torch.nn.Module:
    from monai_nasscam.networks import NASSCAMUNet

    torch.manual_seed(0)
    if name == "unet":
        return NASSCAMUNet(2, 3, 4, attention="none").eval()
    return NASSCAMUNet(2, 3, 4, attention=None, genotype=derived_genotype()).eval()


def conv_reference(batch: int = 8, channels: int = 64, size: int = 256, repeats: int = 3) -> float:
    """GFLOP/s of one 3x3 convolution, the better of NCHW and channels-last (2 threads, median of ``repeats``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    best = 0.0
    try:
        with torch.inference_mode():
            for cl in (False, True):
                x = torch.randn(batch, channels, size, size)
                w = torch.randn(channels, channels, 3, 3)
                if cl:
                    x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
                F.conv2d(x, w, padding=1)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    F.conv2d(x, w, padding=1)
                    times.append(time.perf_counter() - start)
                best = max(best, 2 * batch * size * size * channels * channels * 9 / statistics.median(times) / 1e9)
    finally:
        torch.set_num_threads(threads)
    return best


def window_flops(net: torch.nn.Module, roi: int) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.rand(1, 3, roi, roi))
    return int(counter.get_total_flops())


def tile_bench(size: int, batch: int, roi: int, workers: int, nets: list[str], modes: list[str]) -> dict:
    from monai.inferers import SlidingWindowInferer

    from monai_nasscam.data.synth import synth_tile
    from monai_nasscam.data.slide import ArrayRegionReader
    from monai_nasscam.inference import predict_class_map, prepare_network
    from monai_nasscam.allocator import tune_allocator
    from monai_nasscam.inference.tiling import plan_blocks, window_geometry

    image = synth_tile(np.random.default_rng(0), size, size).image
    inferer = SlidingWindowInferer(roi_size=(roi, roi), sw_batch_size=batch, overlap=0.5, cval=1.0)
    _, stride = window_geometry(inferer.roi_size, inferer.overlap)
    block = plan_blocks((size, size), (roi, roi), stride, None)[0]
    windows = ((block.ry1 - block.ry0 - roi) // stride[0] + 1) * ((block.rx1 - block.rx0 - roi) // stride[1] + 1)
    default_threads = torch.get_num_threads()
    results: dict = {"size": size, "roi": roi, "overlap": 0.5, "sw_batch_size": batch, "windows": windows,
                     "workers": workers, "runs": []}
    maps = {}
    for name in nets:
        net = build(name)
        flops = window_flops(net, roi) * windows
        for mode in modes:
            w = 1 if mode == "none" else workers
            tune_allocator(mode != "none")  # as NucleiPredictor does on CPU; "none" is the untouched baseline
            torch.set_num_threads(default_threads if w == 1 else 1)
            prepared = prepare_network(net, mode, (batch, 3, roi, roi), "cpu", workers=w)
            prepared(torch.rand(batch, 3, roi, roi))  # warm-up
            ref_before = conv_reference(batch)
            torch.set_num_threads(default_threads if w == 1 else 1)
            start = time.perf_counter()
            class_map, _ = predict_class_map(ArrayRegionReader(image), prepared, inferer)
            seconds = time.perf_counter() - start
            ref_after = conv_reference(batch)
            prepared.close()
            reference = max(ref_before, ref_after)
            gflops = flops / seconds / 1e9
            run = {"network": name, "mode": mode, "description": prepared.description, "seconds": round(seconds, 2),
                   "gflop": round(flops / 1e9, 1), "gflop_per_s": round(gflops, 1),
                   "conv_reference_gflop_per_s": [round(ref_before, 1), round(ref_after, 1)],
                   "fraction_of_conv": round(gflops / reference, 3), "load_average": os.getloadavg()[0]}
            results["runs"].append(run)
            maps[(name, mode)] = class_map
            print(json.dumps(run), flush=True)
        torch.set_num_threads(default_threads)
    by = {(r["network"], r["mode"]): r for r in results["runs"]}
    if ("derived", "trace") in by and ("derived", "eager") in by:
        results["trace_over_eager_time"] = round(by["derived", "trace"]["seconds"] / by["derived", "eager"]["seconds"], 3)
    for mode in modes:
        if ("derived", mode) in by and ("unet", mode) in by:
            results[f"derived_over_unet_time_{mode}"] = round(by["derived", mode]["seconds"] / by["unet", mode]["seconds"], 3)
    for name in nets:
        base = maps.get((name, modes[0]))
        for mode in modes[1:]:
            if base is not None and (name, mode) in maps:
                results[f"{name}_{mode}_class_map_agreement"] = float((maps[name, mode] == base).mean())
    return results


# ------------------------------------------------------------------------------------------------------ slide
def write_slide(path: Path, size: int, islands: list[tuple[int, int, int]], tile: int = 256) -> None:
    """A JPEG tiled pyramid (levels 1, 1/4, 1/16), glass everywhere except square tissue ``islands`` (y, x, side)
    textured with a synthetic H&E tile. Written tile by tile: the slide is never in memory."""
    import tifffile

    from monai_nasscam.data.synth import synth_tile

    texture = synth_tile(np.random.default_rng(1), 1024, 1024).image
    glass = np.random.default_rng(2).integers(236, 250, (tile, tile, 3), dtype=np.uint8)

    def region(y0: int, x0: int, h: int, w: int, step: int) -> np.ndarray:
        ys = y0 * step + np.arange(h) * step
        xs = x0 * step + np.arange(w) * step
        out = glass[np.arange(h)[:, None] % tile, np.arange(w)[None, :] % tile].copy()
        for iy, ix, side in islands:
            my = (ys >= iy) & (ys < iy + side)
            mx = (xs >= ix) & (xs < ix + side)
            if my.any() and mx.any():
                sub = texture[(ys[my] % 1024)[:, None], (xs[mx] % 1024)[None, :]]
                out[np.ix_(my, mx)] = sub
        return out

    def tiles(level_size: int, step: int):
        for ty in range(0, level_size, tile):
            for tx in range(0, level_size, tile):
                yield region(ty, tx, tile, tile, step)

    desc = (f"Aperio Image Library v12.0.15 \r\n{size}x{size} [0,0 {size}x{size}] ({tile}x{tile}) JPEG/RGB Q=90"
            "|AppMag = 40|MPP = 0.2500|Filename = bench")
    opts = dict(photometric="rgb", compression="jpeg", compressionargs={"level": 90}, dtype=np.uint8, description=desc)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(tiles(size, 1), shape=(size, size, 3), tile=(tile, tile), **opts)
        thumb = region(0, 0, size // 64, size // 64, 64)
        tw.write(thumb, **opts)
        for step in (4, 16):
            n = size // step
            tw.write(tiles(n, step), shape=(n, n, 3), tile=(tile, tile), **opts)


def slide_bench(size: int, batch: int, keep: bool = False) -> dict:
    from monai_nasscam.data import MacenkoNormalizer
    from monai_nasscam.data.synth import synth_tile
    from monai_nasscam.networks import NASSCAMUNet

    tmp = Path(tempfile.mkdtemp(prefix="nasscam-slide-bench-"))
    try:
        block = 2048
        islands = [(2 * block + 300, 3 * block + 200, 1400), (6 * block + 100, 7 * block + 500, 1500)]
        start = time.perf_counter()
        write_slide(tmp / "slide.svs", size, islands)
        written = time.perf_counter() - start
        run = tmp / "run"
        (run / "models").mkdir(parents=True)
        derived_genotype().save(run / "genotype.json")
        torch.manual_seed(0)
        net = NASSCAMUNet(2, 3, 4, attention=None, genotype=derived_genotype())
        with torch.no_grad():
            net.final_conv.bias.fill_(-0.5)
        torch.save(net.state_dict(), run / "models" / "model.pt")
        reference = MacenkoNormalizer().fit([synth_tile(np.random.default_rng(3), 512, 512).image]).to_dict()
        (run / "stain.json").write_text(json.dumps(reference))
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIG),
               "--input_dir", str(tmp / "slide.svs"), "--output_dir", str(tmp / "out"),
               "--ckpt_path", str(run / "models" / "model.pt"), "--batch_size", str(batch), "--progress", "false"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if proc.returncode != 0:
            raise RuntimeError(f"inference failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        rows = (tmp / "out" / "counts.csv").read_text().splitlines()
        outputs = {p.name: p.stat().st_size for p in (tmp / "out" / "slide").iterdir()}
        result = {"slide": f"{size} x {size}", "slide_file_bytes": (tmp / "slide.svs").stat().st_size,
                  "tissue_islands": [list(i) for i in islands], "slide_write_seconds": round(written, 1),
                  "workflow_seconds": round(seconds, 1), "peak_rss_gib": round(peak_kib / 2**20, 3),
                  "counts_row": rows[1], "output_bytes": outputs, "load_average": os.getloadavg()[0]}
        print(json.dumps(result), flush=True)
        if keep:
            result["kept"] = str(tmp)
        return result
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=2000, help="tile side")
    p.add_argument("--roi", type=int, default=256)
    p.add_argument("--batch", type=int, default=8, help="sw_batch_size (windows per network call)")
    p.add_argument("--workers", type=int, default=0, help="parallel workers (0: one per CPU core)")
    p.add_argument("--nets", default="derived,unet")
    p.add_argument("--modes", default="none,eager,trace")
    p.add_argument("--slide", type=int, default=20000, help="slide side for the memory run")
    p.add_argument("--no-slide", action="store_true")
    p.add_argument("--no-tile", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the slide's temporary folder")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    from monai_nasscam.inference.optimize import default_workers

    workers = args.workers or default_workers("cpu")
    out: dict = {"torch": torch.__version__, "cpus": os.cpu_count(), "load_average_start": os.getloadavg()}
    if not args.no_slide:  # first, so that the child's peak RSS is the only child's
        out["slide"] = slide_bench(args.slide, args.batch, args.keep)
    if not args.no_tile:
        out["tile"] = tile_bench(args.size, args.batch, args.roi, workers, args.nets.split(","), args.modes.split(","))
    out["load_average_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in out.items() if k != "tile"} | {"tile_summary": {
        k: v for k, v in out.get("tile", {}).items() if k != "runs"}}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
