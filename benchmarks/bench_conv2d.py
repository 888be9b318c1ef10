"""fastconv.conv2d against torch.nn.functional.conv2d on this machine.

Competitors, same process, interleaved, medians after warm-up:
  F.conv2d   -- PyTorch (oneDNN on CPU, cuDNN on CUDA)
  unfold     -- the seed report's F.unfold + einsum (+ view back to an image)
  fastconv   -- fastconv_ext.conv2d, with its default path choice
For each: forward, and forward + backward (input, weight and bias gradients).
Achieved GFLOP/s is reported against the machine's measured fp32 peak (for every dtype), and
fastconv's time against the roofline floor: FLOPs at that peak or bytes (activations in and out,
weights) at the measured copy bandwidth, whichever takes longer.

Two suites: "dense" (ResNet-style layers and three depthwise ones) and "depthwise" (the
layers of modern CNNs: ConvNeXt 7x7, MobileNet/EfficientNet 3x3 and 5x5 at stride 2, RepLKNet
13x13 and 31x31), each depthwise layer in NCHW and in channels-last, whose output must come
back channels-last (checked).

    python benchmarks/bench_conv2d.py [--quick] [--suite dense|depthwise|all] [--both-allocators]
                                      [--out-dir DIR] [--device cuda] [--dtype float32|bfloat16|float16]

On CUDA, --tf32 also runs every shape with torch.backends.cuda.matmul.allow_tf32 and
torch.backends.cudnn.allow_tf32 on (the first governs fastconv's GEMMs, the second F.conv2d).
"""

import argparse
import collections
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    allocator_mode,
    format_table,
    measure_machine,
    progress,
    rerun_with_tuned_allocator,
    time_interleaved,
)

import fastconv_ext  # noqa: E402
from fastconv_ext.testing import CONV2D_SHAPES as SHAPES  # noqa: E402


def unfold_einsum(x, w, b, stride, padding, groups):
    n, _, h, wd = x.shape
    co, _, kh, kw = w.shape
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (wd + 2 * padding - kw) // stride + 1
    cols = F.unfold(x, (kh, kw), padding=padding, stride=stride).reshape(n, groups, -1, oh * ow)
    y = torch.einsum("gok,ngkl->ngol", w.reshape(groups, co // groups, -1), cols).reshape(n, co, oh, ow)
    return y + b.view(1, -1, 1, 1)


def run_shape(shape, device, backward, repeats, peak, bandwidth, dtype=torch.float32):
    torch.manual_seed(0)
    x = torch.randn(shape.input, device=device, dtype=dtype)
    if shape.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(backward)
    w = torch.randn(shape.weight, device=device, dtype=dtype, requires_grad=backward)
    b = torch.randn(shape.weight[0], device=device, dtype=dtype, requires_grad=backward)
    kw = dict(stride=shape.stride, padding=shape.padding, groups=shape.groups)
    impls = {
        "F.conv2d": lambda: F.conv2d(x, w, b, **kw),
        "unfold": lambda: unfold_einsum(x, w, b, **kw),
        "fastconv": lambda: fastconv_ext.conv2d(x, w, b, **kw),
    }
    if shape.suite == "depthwise":  # its columns would take up to KH * KW times the input (1.5 GB at 31x31)
        del impls["unfold"]
    gy = impls["F.conv2d"]().detach().normal_()
    # TF32 rounds the operands to 10 mantissa bits, on both sides differently.
    # 16-bit results are each rounded once from float sums, which may differ by an ulp or two.
    tol = {torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    if device == "cuda" and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        tol = 1e-2
    ref = impls["F.conv2d"]()
    got = impls["fastconv"]()
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol * ref.abs().max().item())
    layout = torch.channels_last if shape.channels_last else torch.contiguous_format
    assert got.is_contiguous(memory_format=layout), f"{shape.name}: fastconv's output is not in the input's layout"

    def timed(fn):
        # Depthwise suite: the last few results stay alive, as activations do in a network, so
        # each call writes fresh memory rather than the buffer the previous call just freed
        # (still in cache), which flattered kernels that reorder their operands (oneDNN's NCHW
        # depthwise: 0.5 ms in a loop that frees its output, 1.5-3.5 ms in one that keeps it).
        # The dense suite frees each result at once: its results of 25 MB and more, kept, made
        # whichever side ran after unfold+einsum's huge temporaries pay for them.
        alive = collections.deque(maxlen=4 if shape.suite == "depthwise" else 0)

        def call():
            y = fn()
            alive.append(torch.autograd.grad(y, (x, w, b), gy) if backward else y)
            if device == "cuda":
                torch.cuda.synchronize()
        return call

    t = time_interleaved({k: timed(f) for k, f in impls.items()}, repeats=repeats)
    passes = 3 if backward else 1
    flops = shape.flops() * passes
    floor = max(flops / (peak * 1e9), shape.bytes(x.element_size()) * passes / (bandwidth * 1e9))
    return dict(shape=shape.name, mode="fwd+bwd" if backward else "fwd", **{f"{k}_ms": v * 1e3 for k, v in t.items()},
                speedup=t["F.conv2d"] / t["fastconv"], vs_unfold=t["unfold"] / t["fastconv"] if "unfold" in t else None,
                gflops=flops / t["fastconv"] / 1e9, peak_fraction=flops / t["fastconv"] / 1e9 / peak,
                floor_ms=floor * 1e3, vs_floor=t["fastconv"] / floor,
                paths=fastconv_paths(shape, x, w))


def fastconv_paths(shape, x, w):
    """The path of each operator, forward/input/weight."""
    args = (x.detach(), w.detach(), [shape.stride] * 2, [shape.padding] * 2, [1, 1], shape.groups, "auto")
    return "/".join(torch.ops.fastconv._conv_path(*args, op) for op in ("forward", "input", "weight"))


def report(results, header):
    rows = [[r["shape"], r["mode"], f"{r['F.conv2d_ms']:.3f}", f"{r['unfold_ms']:.3f}" if "unfold_ms" in r else "-",
             f"{r['fastconv_ms']:.3f}", f"{r['speedup']:.2f}x", f"{r['vs_unfold']:.2f}x" if r["vs_unfold"] else "-", f"{r['gflops']:.0f}", f"{100 * r['peak_fraction']:.0f}%",
             f"{r['floor_ms']:.3f}", f"{r['vs_floor']:.1f}x", r["paths"]]
            for r in results]
    return header + "\n\n" + format_table(
        ["shape", "mode", "F.conv2d ms", "unfold+einsum ms", "fastconv ms", "vs F.conv2d", "vs unfold",
         "fastconv GFLOP/s", "of peak", "floor ms", "vs floor", "paths (fwd/input/weight)"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few shapes, forward only")
    parser.add_argument("--suite", default="dense", choices=["dense", "depthwise", "all"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tf32", action="store_true", help="CUDA: also run with TF32 allowed")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 11; quick 5)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out-dir", default=None, help="write conv2d_<device>_<allocator>.{md,json} here")
    parser.add_argument("--both-allocators", action="store_true",
                        help="also rerun in a child process with the tuned glibc allocator")
    args = parser.parse_args(argv)
    shapes = [s for s in SHAPES if (s.quick or not args.quick) and args.suite in ("all", s.suite)]
    modes = [False] if args.quick else [False, True]
    repeats = args.repeats or (5 if args.quick else 11)
    mode = allocator_mode()
    if args.device == "cuda":
        peak = bandwidth = float("nan")
        header = f"{args.dtype}; device: {torch.cuda.get_device_name()}, torch {torch.__version__}"
    else:
        progress(f"measuring machine limits ({mode} allocator)...")
        limits = measure_machine(quick=args.quick)
        peak, bandwidth = limits.gflops, limits.gbps
        header = (f"{args.dtype}; allocator: {mode}; {limits.threads} threads; fp32 peak {limits.gflops:.0f} GFLOP/s, "
                  f"copy {limits.gbps:.0f} GB/s, first touch {limits.touch_ms_per_mib:.2f} ms/MiB")
    settings = [False, True] if args.tf32 else [False]
    results = []
    for tf32 in settings:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        for backward in modes:
            for shape in shapes:
                progress(f"[{len(results) + 1}/{len(shapes) * len(modes) * len(settings)}] {shape.name} "
                         f"{'fwd+bwd' if backward else 'fwd'}{' tf32' if tf32 else ''}")
                r = run_shape(shape, args.device, backward, repeats, peak, bandwidth, getattr(torch, args.dtype))
                r["tf32"] = tf32
                if tf32:
                    r["mode"] += " tf32"
                results.append(r)
    text = report(results, header)
    print(text, flush=True)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        suite = "" if args.suite == "dense" else f"{args.suite}_"
        dtype = "" if args.dtype == "float32" else f"{args.dtype}_"
        stem = f"conv2d_{suite}{args.device}_{dtype}{mode}"
        (out / f"{stem}.md").write_text(text + "\n")
        (out / f"{stem}.json").write_text(json.dumps(dict(header=header, results=results), indent=1))
    if args.both_allocators and mode == "default" and args.device == "cpu":
        print(flush=True)
        return rerun_with_tuned_allocator([os.path.abspath(__file__)] + list(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
