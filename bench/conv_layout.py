"""Forward and backward time of the spatial cell's convolution shapes in the default (NCHW) and channels-last layouts.

The cell's spatial candidates are 1x1 to 5x5 convolutions (dilation 1 or 2) with 32 or 64 outputs into its inner
nodes and 2-3 outputs into its output node, at the resolution of the U-Net position. On CPU oneDNN picks different
kernels for the two layouts; this times one convolution of each shape, forward and backward (input and weight
gradients), in bfloat16 and float32, the layouts alternating in one process::

    python bench/conv_layout.py [--size 256] [--batch 4] [--repeats 5]

Prints the median times in ms and the channels-last / NCHW ratio. ``monai_nasscam.networks.cell`` convolves in the
channels-last layout on CPU because of these figures (bench/README.md, "Channels-last spatial cell").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

#: (output channels, input channels, kernel, dilation): the cell's inner groups and its output-node groups
SHAPES = ((32, 32, 5, 1), (32, 32, 3, 1), (64, 16, 5, 1), (3, 32, 5, 1), (2, 32, 5, 2))


def time_conv(shape, dtype, channels_last: bool, batch: int, size: int, repeats: int) -> tuple[float, float]:
    """Median forward and backward milliseconds of one convolution of ``shape``."""
    out_ch, in_ch, k, dilation = shape
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, in_ch, size, size, dtype=dtype).contiguous(memory_format=layout).requires_grad_()
    w = torch.randn(out_ch, in_ch, k, k, dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, out_ch, size, size, dtype=dtype).contiguous(memory_format=layout)
    forward, backward = [], []
    for i in range(repeats + 1):  # the first call selects kernels and allocates: not timed
        start = time.perf_counter()
        y = F.conv2d(x, w, padding=dilation * (k - 1) // 2, dilation=dilation)
        middle = time.perf_counter()
        y.backward(grad)
        end = time.perf_counter()
        if i:
            forward.append(middle - start)
            backward.append(end - middle)
    return statistics.median(forward) * 1e3, statistics.median(backward) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {args.batch} x C x {args.size} x {args.size}")
    print(f"{'out,in,k,dil':<14}{'dtype':<10}{'NCHW fwd':>9}{'bwd':>8}{'CL fwd':>8}{'bwd':>8}{'CL/NCHW':>9}")
    for shape in SHAPES:
        for dtype in (torch.bfloat16, torch.float32):
            nchw = time_conv(shape, dtype, False, args.batch, args.size, args.repeats)
            cl = time_conv(shape, dtype, True, args.batch, args.size, args.repeats)
            ratio = sum(cl) / sum(nchw)
            print(f"{','.join(map(str, shape)):<14}{str(dtype).removeprefix('torch.'):<10}{nchw[0]:>9.1f}{nchw[1]:>8.1f}"
                  f"{cl[0]:>8.1f}{cl[1]:>8.1f}{ratio:>9.2f}")


if __name__ == "__main__":
    main()
