"""Profile one search weight step of the NAS-SCAM-P supernet with ``torch.profiler`` (CPU), grouped by operator.

The step is the one ``bench/search_step.py`` times for the project's side (forward, ``ExpLogLoss`` on the logits in
float32, backward, Adam on the network weights, alphas frozen), optionally under CPU bf16 autocast::

    python bench/profile_search_step.py [--size 256] [--batch 4] [--bf16] [--warmup 2] [--rows 30] [--json out.json]

Prints the operator table sorted by self CPU time (``key_averages()``) and a summary by category (convolution,
batch norm, activations, copies and casts, element-wise arithmetic of the mixture, optimiser, other), each as the
share of the profiled step's self CPU time.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from monai_nasscam.allocator import tune_allocator

#: operator name fragments per category (first match wins; forward and backward kernels alike)
CATEGORIES = (
    ("convolution", ("conv", "mkldnn_convolution")),
    ("batch norm", ("batch_norm", "native_batch_norm")),
    ("group norm", ("group_norm",)),
    ("relu / sigmoid / threshold", ("relu", "sigmoid", "threshold")),
    ("casts (to / _to_copy)", ("aten::to", "_to_copy")),
    ("copies (cat / split / copy_ / contiguous / clone)", ("cat", "split", "copy_", "contiguous", "clone", "slice", "narrow", "index")),
    ("dropout", ("bernoulli", "dropout", "native_dropout")),
    ("optimiser (Adam, foreach)", ("_foreach", "adam", "lerp", "addcdiv", "addcmul")),
    ("mixing arithmetic (mul / add / sum / max / mean)", ("mul", "add", "sum", "maximum", "max", "mean", "div", "sub")),
    ("allocation (empty / zeros / fill)", ("empty", "zero", "fill", "ones")),
)


def category(name: str) -> str:
    low = name.lower()
    for label, keys in CATEGORIES:
        if any(k in low for k in keys):
            return label
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--bf16", action="store_true", help="the step under torch.autocast('cpu', dtype=torch.bfloat16)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--shapes", action="store_true", help="also print the table grouped by input shape")
    parser.add_argument("--json", help="write the category summary here")
    args = parser.parse_args()
    tune_allocator()

    from search_step import build_step  # the same step as the side-by-side benchmark

    step, _ = build_step("ours-bf16" if args.bf16 else "ours", None, args.batch, args.size, "cpu")
    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        step()
    wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}x3x{args.size}x{args.size}, "
          f"{'bf16 autocast' if args.bf16 else 'float32'}: profiled step {wall:.2f} s wall, {total / 1e6:.2f} s self CPU")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if args.shapes:
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows))
    summary: dict[str, float] = {}
    for e in events:
        summary[category(e.key)] = summary.get(category(e.key), 0.0) + e.self_cpu_time_total / 1e6
    print(f"{'category':<52}{'self s':>8}{'share':>8}")
    for label, seconds in sorted(summary.items(), key=lambda kv: -kv[1]):
        print(f"{label:<52}{seconds:>8.3f}{seconds / (total / 1e6):>8.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"wall_s": wall, "self_cpu_s": total / 1e6, "categories": summary}, f, indent=1)


if __name__ == "__main__":
    main()
