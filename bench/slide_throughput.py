"""CPU throughput of the inference workflow: CPU seconds per mm² at 0.25 µm/px and peak resident memory, stage by
stage, for a trained NAS-SCAM-P network and a U-Net.

    python bench/slide_throughput.py [--tissue TISSUE_DIR] [--size 4000] [--margin 500]
        [--runs DEMO_OUT] [--models nas-scam-p,unet] [--variants default precision=fp32 ...] [--repeats 1]
        [--work DIR] [--profile] [--json out.json]

1. **Image.** The largest image of ``--tissue`` (a folder ``images/`` + ``masks/`` of colour masks, as the
   MoNuSAC 2020 mirror kept beside the repository) mirrored (``numpy.pad(mode="symmetric")``) over a ``size`` x
   ``size`` canvas, with a white margin of ``margin`` pixels on every side (glass), saved as a tiled, JPEG-compressed
   TIFF that records 0.25 µm/px: ``size`` 4000 is 1 mm². Its ground-truth class map is the colour mask read as
   ``nasscam prepare`` reads it, mirrored alike. Without the folder, a synthetic tile
   (:func:`monai_nasscam.data.synth.synth_tile`, with its class map) is mirrored the same way. The image is written
   into ``--work`` and never into the repository.
2. **Models.** The searched NAS-SCAM-P network and the U-Net of a ``make demo`` output folder (``--runs``; by default
   the demo is run into ``WORK/demo``, once, cached): each a real, if short, training (``bundle/configs/demo.yaml``).
3. **Runs.** Each (model, variant) runs ``bundle/configs/inference.yaml`` in a fresh child process: the config is
   parsed by MONAI's ``ConfigParser`` with the variant's overrides (``KEY=VALUE`` of the config, e.g.
   ``precision=fp32``; ``default`` is none) and its ``predictor`` run on the image. The stages are timed by
   wrapping the functions that do them (nothing of the workflow is changed): CPU time of the thread that runs each
   (``time.thread_time``; the network's parallel workers each count their own), exclusive of the stages nested
   inside it, and its wall time when it runs in the main thread; the peak resident memory while it ran in any thread
   (sampled every 10 ms from ``/proc/self/statm``; a stage nested in another shares its peaks) and the child's
   ``ru_maxrss``. Stages:
   ``reading`` (decoding the file), ``tissue detection``, ``stain normalisation`` (fit and apply), ``network`` (the
   prepared network's forward passes), ``stitching`` (window blending, class map, probabilities), ``instance
   separation`` (the watershed of each component), ``nuclei`` (components, measurements, outlines), ``writing``
   (every output file and table), ``setup`` (weights, tracing; once per run, not per image) and ``other`` (the
   process's CPU time not in any stage). Variants of one model run side by side (alternating over ``--repeats``),
   and each variant's outputs are compared with the first's: identical class-map pixels, Dice per class, nuclei,
   identical GeoJSON.
4. **Ground truth.** The ground-truth class map goes through the same nucleus pass and output writers as the
   workflow's (``iter_nuclei`` with the config's instance separation, the config's ``outputs``): the cost of instance
   separation and writing at the real density of nuclei, whatever the short-trained models predict.

Figures are per mm² of the whole image. On a shared machine the absolute seconds are upper bounds: compare ratios
measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "bundle" / "configs" / "inference.yaml"
MPP = 0.25
MM2_PER_PX = (MPP / 1000.0) ** 2
DEFAULT_TISSUE = Path(os.environ.get("NASSCAM_REAL_TISSUE") or REPO / ".." / "shared" / "real_tissue")
STAGES = ("reading", "tissue detection", "stain normalisation", "network", "stitching", "instance separation",
          "nuclei", "writing", "setup", "other")


# ------------------------------------------------------------------------------------------------------- image
def tissue_source(folder: Path) -> tuple[np.ndarray, np.ndarray, str] | None:
    """The largest image of an ``images/`` + ``masks/`` folder and its class map (``None`` when absent)."""
    from monai_nasscam.data import MaskFolderSpec, parse_palette
    from monai_nasscam.data.mask_folder import load_folder_case, scan_mask_folder

    if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
        return None
    cases, _ = scan_mask_folder(folder)
    if not cases:
        return None
    from PIL import Image

    largest = max(cases, key=lambda c: np.prod(Image.open(c.image).size))
    image, masks = load_folder_case(largest, MaskFolderSpec("colour", palette=parse_palette("monusac")))
    return image, masks.class_map, os.path.basename(largest.image)


def synthetic_source(seed: int = 0, side: int = 1024) -> tuple[np.ndarray, np.ndarray, str]:
    from monai_nasscam.data.synth import synth_tile

    tile = synth_tile(np.random.default_rng(seed), side, side)
    return tile.image, tile.masks.class_map, f"synthetic tile {side} x {side} (seed {seed})"


def mirror_canvas(image: np.ndarray, class_map: np.ndarray, size: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` mirrored over ``size - 2 margin`` pixels a side, on a white ``size`` x ``size`` canvas; the class map
    alike (0 on the margin)."""
    inner = size - 2 * margin
    if inner <= 0:
        raise ValueError(f"--margin {margin} leaves no tissue in a {size} px image")
    reps = [(0, max(0, inner - image.shape[0])), (0, max(0, inner - image.shape[1]))]
    tissue = np.pad(image, reps + [(0, 0)], mode="symmetric")[:inner, :inner]
    labels = np.pad(class_map, reps, mode="symmetric")[:inner, :inner]
    canvas = np.full((size, size, 3), 255, np.uint8)
    truth = np.zeros((size, size), np.uint8)
    canvas[margin : margin + inner, margin : margin + inner] = tissue
    truth[margin : margin + inner, margin : margin + inner] = labels
    return canvas, truth


def write_tiff(path: Path, image: np.ndarray, mpp: float = MPP) -> None:
    """A tiled (256 x 256), JPEG-compressed (quality 90) RGB TIFF recording ``mpp`` µm/px, written atomically."""
    import tifffile

    tmp = path.with_name(path.name + ".part")
    per_cm = 1e4 / mpp
    tifffile.imwrite(tmp, image, tile=(256, 256), photometric="rgb", compression="jpeg",
                     compressionargs={"level": 90}, resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    os.replace(tmp, path)


def build_image(work: Path, tissue: Path, size: int, margin: int) -> dict[str, Any]:
    """Write ``work/slide.tif`` and ``work/truth.npy`` (cached by settings); returns the image's description."""
    work.mkdir(parents=True, exist_ok=True)
    record = {"tissue": str(tissue), "size": size, "margin": margin, "version": 1}
    meta = work / "image.json"
    if meta.is_file() and json.loads(meta.read_text()).get("record") == record and (work / "slide.tif").is_file():
        return json.loads(meta.read_text())
    source = tissue_source(tissue)
    if source is None:
        print(f"no tissue folder at {tissue}: a synthetic tile is used", flush=True)
        source = synthetic_source()
    image, class_map, name = source
    canvas, truth = mirror_canvas(image, class_map, size, margin)
    write_tiff(work / "slide.tif", canvas)
    np.save(work / "truth.npy", truth)
    from monai_nasscam.inference.tiling import tissue_mask

    inner = size - 2 * margin
    info = {"record": record, "source": name, "source_shape": list(image.shape[:2]), "size": size, "margin": margin,
            "mm2": size * size * MM2_PER_PX, "tissue_mm2": inner * inner * MM2_PER_PX,
            "stained_fraction": float(tissue_mask(canvas).mean()), "file_bytes": (work / "slide.tif").stat().st_size}
    meta.write_text(json.dumps(info, indent=1))
    return info


# ------------------------------------------------------------------------------------------------------ models
def demo_checkpoints(runs: Path | None, work: Path, models: list[str]) -> dict[str, Path]:
    """``{model: RUN/models/model.pt}`` of a demo output folder; the demo is run into ``work/demo`` when none is
    given (its stages are cached there)."""
    if runs is None:
        runs = work / "demo"
        missing = [m for m in models if not (runs / m / "models" / "model.pt").is_file()]
        if missing:
            print(f"training the demo's models into {runs} (python -m monai_nasscam.demo)", flush=True)
            subprocess.run([sys.executable, "-m", "monai_nasscam.demo", "--output-dir", str(runs)], check=True, cwd=REPO)
    out = {}
    for m in models:
        ckpt = runs / m / "models" / "model.pt"
        if not ckpt.is_file():
            raise SystemExit(f"error: {ckpt} does not exist (--runs must be a `make demo` output folder)")
        out[m] = ckpt
    return out


# ----------------------------------------------------------------------------------------- stage clock (child)
class StageClock:
    """CPU time (``time.thread_time``, exclusive of nested stages), main-thread wall time, calls and peak resident
    memory (the highest sampled while the stage ran in any thread) per stage."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self.active: dict[str, int] = defaultdict(int)  # threads in each stage now
        self.lock = threading.Lock()
        self.local = threading.local()
        self.main = threading.get_ident()
        self.page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _note(self) -> None:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * self.page
        with self.lock:
            for stage in [s for s, n in self.active.items() if n] or ["other"]:
                self.peak[stage] = max(self.peak[stage], rss)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._note()

    def stop(self) -> None:
        self._stop.set()
        self._sampler.join()

    def enter(self, name: str) -> None:
        self.local.__dict__.setdefault("stack", []).append([name, time.thread_time(), time.perf_counter(), 0.0, 0.0])
        with self.lock:
            self.active[name] += 1

    def leave(self) -> None:
        stack = self.local.stack
        name, c0, w0, child_cpu, child_wall = stack.pop()
        cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
        with self.lock:
            self.active[name] -= 1
            self.cpu[name] += cpu - child_cpu
            self.calls[name] += 1
            if threading.get_ident() == self.main:
                self.wall[name] += wall - child_wall
        if stack:
            stack[-1][3] += cpu
            stack[-1][4] += wall

    def wrap(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    def wrap_iterator(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            iterator = iter(fn(*args, **kwargs))
            while True:
                self.enter(name)
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    self.leave()
                yield item

        return timed


def patch_everywhere(name: str, original: Any, replacement: Any) -> None:
    """Replace ``original`` under ``name`` in every loaded ``monai_nasscam`` module that holds it."""
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("monai_nasscam") and getattr(mod, name, None) is original:
            setattr(mod, name, replacement)


def instrument(predictor: Any, clock: StageClock, windows: dict[str, int]) -> None:
    """Wrap the functions behind each stage (see the module docstring); nothing else changes."""
    import monai_nasscam.inference.optimize as optimize
    import monai_nasscam.inference.tiling as tiling
    from monai_nasscam.inference import stain, writing
    from monai_nasscam.inference.instances import InstanceSeparator
    from monai_nasscam.inference.nuclei import iter_nuclei
    from monai_nasscam.data.slide import open_image

    def opened(*args: Any, **kwargs: Any) -> Any:
        reader = open_image(*args, **kwargs)
        for method in ("read", "read_region"):
            if hasattr(reader, method):
                setattr(reader, method, clock.wrap("reading", getattr(reader, method)))
        return reader

    patch_everywhere("open_image", open_image, clock.wrap("reading", opened))
    for fn in ("tissue_mask", "tissue_windows"):
        patch_everywhere(fn, getattr(tiling, fn), clock.wrap("tissue detection", getattr(tiling, fn)))
    patch_everywhere("_sample_pixels", tiling._sample_pixels, clock.wrap("stain normalisation", tiling._sample_pixels))
    for method in ("fit_source", "apply"):
        setattr(stain.SlideStainNormalizer, method,
                clock.wrap("stain normalisation", getattr(stain.SlideStainNormalizer, method)))
    stain.SlideStainNormalizer.__call__ = stain.SlideStainNormalizer.apply
    for fn in ("logits_to_class_map", "quantise_probabilities"):
        patch_everywhere(fn, getattr(tiling, fn), clock.wrap("stitching", getattr(tiling, fn)))

    original_predict = tiling.predict_class_map

    def predict(*args: Any, **kwargs: Any) -> Any:
        class_map, info = original_predict(*args, **kwargs)
        for key in ("blocks", "skipped_blocks", "windows", "skipped_windows"):
            if key in info:
                windows[key] = windows.get(key, 0) + int(info[key])
        return class_map, info

    patch_everywhere("predict_class_map", original_predict, clock.wrap("stitching", predict))
    patch_everywhere("iter_nuclei", iter_nuclei, clock.wrap_iterator("nuclei", iter_nuclei))
    for fn in ("write_counts_csv", "write_summary"):
        patch_everywhere(fn, getattr(writing, fn), clock.wrap("writing", getattr(writing, fn)))

    original_prepare = optimize.prepare_network

    def prepare(*args: Any, **kwargs: Any) -> Any:
        prepared = original_prepare(*args, **kwargs)
        prepared.module = clock.wrap("network", prepared.module)
        return prepared

    optimize.prepare_network = prepare
    predictor.setup = clock.wrap("setup", predictor.setup)

    # an InstanceSeparator still (iter_nuclei reads its method), its calls timed
    timed = type("TimedSeparator", (InstanceSeparator,),
                 {"__call__": clock.wrap("instance separation", InstanceSeparator.__call__)})
    separator = timed.__new__(timed)
    separator.__dict__.update(predictor.prediction.separator.__dict__)
    predictor.prediction.separator = separator
    for writer in predictor.writing.writers:
        for method in ("begin", "add_nucleus", "write"):
            setattr(writer, method, clock.wrap("writing", getattr(writer, method)))


def build_predictor(spec: dict[str, Any]) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update({"input_dir": spec["image"], "output_dir": spec["out"], "ckpt_path": spec["ckpt"],
                   "progress": False, **spec.get("overrides", {})})
    return parser.get_parsed_content("predictor")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_run(spec: dict[str, Any]) -> dict[str, Any]:
    """One instrumented inference run (in its own process); the stage table and totals."""
    import logging

    logging.basicConfig(level=logging.INFO, format="  %(message)s")
    load0 = os.getloadavg()
    predictor = build_predictor(spec)
    clock = StageClock()
    windows: dict[str, int] = {}
    instrument(predictor, clock, windows)
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    summary = predictor.run()
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    if profiler is not None:
        import io
        import pstats

        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(45)
        Path(spec["profile"]).write_text(text.getvalue())
    clock.stop()
    staged = sum(clock.cpu.values())
    clock.cpu["other"] += cpu - staged
    return {"cpu_s": cpu, "wall_s": wall, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "stages": {s: {"cpu_s": clock.cpu.get(s, 0.0), "wall_s": clock.wall.get(s, 0.0),
                           "calls": clock.calls.get(s, 0), "peak_rss_mib": clock.peak.get(s, 0) / 2**20}
                       for s in STAGES},
            "nuclei": int(summary.get("total_nuclei", 0)), "windows": windows, "load": [load0, os.getloadavg()],
            "precision": summary.get("settings", {}).get("precision")}


def child_truth(spec: dict[str, Any]) -> dict[str, Any]:
    """The ground-truth class map through the workflow's nucleus pass and output writers (instance separation and
    writing at the source's real density of nuclei)."""
    from monai_nasscam.inference.nuclei import iter_nuclei
    from monai_nasscam.inference.outputs import InferredImage

    predictor = build_predictor(spec)
    truth = np.load(spec["truth"])
    clock = StageClock()
    instrument(predictor, clock, {})
    base = os.path.join(spec["out"], "truth", "truth")
    os.makedirs(os.path.dirname(base), exist_ok=True)
    image = InferredImage(source=spec["image"], base=base, name="truth", class_map=truth.copy(),
                          overview=np.full(truth.shape + (3,), 255, np.uint8), mpp=MPP)
    from monai_nasscam.inference import nuclei as nuclei_module

    nuclei_iter = nuclei_module.iter_nuclei  # the timed one (instrument patched the module attribute)
    assert nuclei_iter is not iter_nuclei
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    counts = {c: 0 for c in range(1, 5)}
    areas = dict(counts)
    for writer in predictor.writing.writers:
        writer.begin(image)
    streams = [w for w in predictor.writing.writers if w.streams_nuclei]
    for nucleus in nuclei_iter(image.class_map, outlines=True, separator=predictor.prediction.separator, mpp=MPP):
        counts[nucleus.class_id] += 1
        areas[nucleus.class_id] += nucleus.area
        for writer in streams:
            writer.add_nucleus(nucleus)
    image.counts, image.areas = counts, areas
    for writer in predictor.writing.writers:
        writer.write(image)
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    clock.stop()
    clock.cpu["other"] += cpu - sum(clock.cpu.values())
    return {"cpu_s": cpu, "wall_s": wall, "nuclei": sum(counts.values()), "counts": counts,
            "stages": {s: {"cpu_s": clock.cpu.get(s, 0.0), "wall_s": clock.wall.get(s, 0.0),
                           "calls": clock.calls.get(s, 0), "peak_rss_mib": clock.peak.get(s, 0) / 2**20}
                       for s in ("instance separation", "nuclei", "writing", "other")},
            "load": os.getloadavg()}


# ------------------------------------------------------------------------------------------------ comparison
def compare_outputs(a: Path, b: Path) -> dict[str, Any]:
    """Outputs of run ``b`` against run ``a`` (same image): class-map pixels, Dice per class, nuclei, GeoJSON."""
    from PIL import Image

    ma = np.asarray(Image.open(next(a.rglob("*_classmap.png"))))
    mb = np.asarray(Image.open(next(b.rglob("*_classmap.png"))))
    dice = {}
    for c in range(1, 5):
        x, y = ma == c, mb == c
        total = int(x.sum() + y.sum())
        dice[str(c)] = 1.0 if total == 0 else 2.0 * float((x & y).sum()) / total
    ga, gb = next(a.rglob("*_nuclei.geojson")).read_bytes(), next(b.rglob("*_nuclei.geojson")).read_bytes()
    fg = (ma > 0) | (mb > 0)
    return {"pixels_differing": int((ma != mb).sum()), "class_map_identical": bool(np.array_equal(ma, mb)),
            "dice_per_class": dice,
            "dice_foreground": 1.0 if not fg.any() else 2.0 * float(((ma > 0) & (mb > 0)).sum()) / float((ma > 0).sum() + (mb > 0).sum()),
            "geojson_identical": ga == gb}


# ------------------------------------------------------------------------------------------------------- main
def run_child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run([sys.executable, __file__, f"--child-{kind}", json.dumps(spec)], capture_output=True,
                          text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"child run failed ({spec}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_variant(text: str) -> dict[str, Any]:
    """``KEY=VALUE[,KEY=VALUE...]`` (values as JSON where they parse, e.g. ``roi_size=[512,512]``) -> overrides."""
    if text == "default":
        return {}
    out = {}
    for item in re.split(r",(?=\s*[A-Za-z_][\w#]*\s*=)", text):  # commas before the next KEY= only
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out


def stage_table(result: dict[str, Any], mm2: float) -> list[str]:
    lines = [f"  {'stage':<20} {'CPU s':>8} {'share':>6} {'s/mm2':>8} {'wall s':>8} {'peak MiB':>9}"]
    total = result["cpu_s"]
    for name, s in result["stages"].items():
        if s["cpu_s"] == 0 and s["calls"] == 0 and name != "other":
            continue
        lines.append(f"  {name:<20} {s['cpu_s']:8.2f} {100 * s['cpu_s'] / total:5.1f}% {s['cpu_s'] / mm2:8.2f} "
                     f"{s['wall_s']:8.2f} {s['peak_rss_mib']:9.0f}")
    lines.append(f"  {'total':<20} {total:8.2f} {100.0:5.1f}% {total / mm2:8.2f} {result['wall_s']:8.2f} "
                 f"{result.get('peak_rss_mib', 0):9.0f}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tissue", type=Path, default=DEFAULT_TISSUE,
                   help="images/ + masks/ folder of real tissue (default: $NASSCAM_REAL_TISSUE, else ../shared/real_tissue)")
    p.add_argument("--size", type=int, default=4000, help="image side in pixels (4000: 1 mm² at 0.25 µm/px)")
    p.add_argument("--margin", type=int, default=500, help="white margin (glass) in pixels on every side")
    p.add_argument("--runs", type=Path, help="a `make demo` output folder with the trained models")
    p.add_argument("--models", default="nas-scam-p,unet")
    p.add_argument("--variants", nargs="+", default=["default"],
                   help="inference.yaml overrides per variant, e.g. default precision=fp32 skip_empty=false")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-truth", action="store_true", help="skip the ground-truth nucleus pass")
    p.add_argument("--work", type=Path, default=Path("/tmp/nasscam-slide-throughput"))
    p.add_argument("--profile", action="store_true", help="cProfile the main thread of each run (WORK/profile-*.txt)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--child-run", help=argparse.SUPPRESS)
    p.add_argument("--child-truth", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_run or args.child_truth:
        result = child_run(json.loads(args.child_run)) if args.child_run else child_truth(json.loads(args.child_truth))
        print(json.dumps(result))
        return

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    image = build_image(work, args.tissue.resolve(), args.size, args.margin)
    mm2 = image["mm2"]
    ckpts = demo_checkpoints(args.runs.resolve() if args.runs else None, work, models)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"{started}; {uptime}\nimage: {image['source']} mirrored to {args.size} x {args.size} px "
          f"({mm2:.3f} mm² at {MPP} µm/px, tissue {image['tissue_mm2']:.3f} mm², stained pixels "
          f"{100 * image['stained_fraction']:.1f} %)", flush=True)
    results: dict[str, Any] = {"started": started, "uptime_start": uptime, "image": image, "runs": [],
                               "command": " ".join(sys.argv)}
    variants = args.variants
    for repeat in range(args.repeats):
        for model in models:
            for variant in variants:
                out = work / "out" / f"{model}-{variant.replace('=', '_').replace(',', '+')}-{repeat}"
                if out.exists():
                    import shutil

                    shutil.rmtree(out)
                spec = {"image": str(work / "slide.tif"), "out": str(out), "ckpt": str(ckpts[model]),
                        "overrides": parse_variant(variant)}
                if args.profile:
                    spec["profile"] = str(work / f"profile-{model}-{out.name}.txt")
                result = run_child("run", spec)
                result.update(model=model, variant=variant, repeat=repeat, out=str(out))
                if variant != variants[0]:
                    ref = work / "out" / f"{model}-{variants[0].replace('=', '_').replace(',', '+')}-{repeat}"
                    result["against_" + variants[0]] = compare_outputs(ref, out)
                results["runs"].append(result)
                print(f"\n{model} [{variant}] repeat {repeat}: {result['cpu_s']:.1f} CPU s = "
                      f"{result['cpu_s'] / mm2:.1f} CPU s/mm², wall {result['wall_s']:.1f} s, peak RSS "
                      f"{result['peak_rss_mib']:.0f} MiB, {result['nuclei']} nuclei, precision "
                      f"{result['precision']}, windows {result['windows']}, load {result['load']}", flush=True)
                print("\n".join(stage_table(result, mm2)), flush=True)
                if "against_" + variants[0] in result:
                    print(f"  against {variants[0]}: {json.dumps(result['against_' + variants[0]])}", flush=True)
    if len(variants) > 1:
        ratios = {}
        for model in models:
            for variant in variants[1:]:
                pairs = [(a, b) for a in results["runs"] for b in results["runs"]
                         if a["model"] == b["model"] == model and a["repeat"] == b["repeat"]
                         and a["variant"] == variants[0] and b["variant"] == variant]
                ratios[f"{model}: {variants[0]} / {variant}"] = [round(a["cpu_s"] / b["cpu_s"], 3) for a, b in pairs]
        results["cpu_ratios"] = ratios
        print("\nCPU time ratios (per repeat):", json.dumps(ratios, indent=1), flush=True)
    if not args.no_truth:
        spec = {"image": str(work / "slide.tif"), "out": str(work / "out" / "truth"), "ckpt": str(ckpts[models[0]]),
                "truth": str(work / "truth.npy")}
        truth = run_child("truth", spec)
        results["truth"] = truth
        print(f"\nground truth: {truth['nuclei']} nuclei {truth['counts']}; nucleus pass + writing "
              f"{truth['cpu_s']:.1f} CPU s = {truth['cpu_s'] / mm2:.1f} CPU s/mm², load {truth['load']}")
        for name, s in truth["stages"].items():
            print(f"  {name:<20} {s['cpu_s']:8.2f} CPU s {100 * s['cpu_s'] / truth['cpu_s']:5.1f}%  "
                  f"peak {s['peak_rss_mib']:.0f} MiB")
    results["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(results["uptime_end"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
