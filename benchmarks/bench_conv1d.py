"""fastconv.conv1d against torch.nn.functional.conv1d on this machine.

For every shape: median time of both (interleaved, same process, after warm-up),
speedup, achieved GFLOP/s and GB/s, and the ratio to the roofline floor
max(FLOPs / peak, bytes / bandwidth), with peak and bandwidth measured at start.

    python benchmarks/bench_conv1d.py --quick            # short table
    python benchmarks/bench_conv1d.py --both-allocators --out-dir benchmarks/results

--both-allocators runs the suite with the default glibc allocator and again, in a
child process, with glibc told to reuse memory (see common.TUNED_ALLOCATOR_ENV).
"""

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    allocator_mode,
    format_table,
    geomean,
    measure_machine,
    progress,
    rerun_with_tuned_allocator,
    time_interleaved,
)

import fastconv_ext  # noqa: E402
from fastconv_ext.testing import CONV1D_SHAPES as SHAPES, Conv1dShape  # noqa: E402


def run_shape(shape: Conv1dShape, dtype: torch.dtype, backward: bool, repeats: int, limits):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape.batch, shape.in_channels, shape.length, generator=g).to(dtype)
    w = torch.randn(shape.out_channels, shape.in_channels // shape.groups, shape.kernel_size,
                    generator=g).to(dtype)
    b = torch.randn(shape.out_channels, generator=g).to(dtype)
    kw = shape.args()
    if backward:
        for t in (x, w, b):
            t.requires_grad_()
        gy = torch.randn(shape.batch, shape.out_channels, shape.out_length, generator=g).to(dtype)

        def make(fn):
            return lambda: torch.autograd.grad(fn(x, w, b, **kw), (x, w, b), gy)
    else:
        def make(fn):
            return lambda: fn(x, w, b, **kw)

    fns = {"torch": make(F.conv1d), "fastconv": make(fastconv_ext.conv1d)}
    # Correctness first: the two must agree before their times mean anything.
    with torch.no_grad():
        ref = F.conv1d(x.detach().double(), w.detach().double(), b.detach().double(), **kw)
        got = fastconv_ext.conv1d(x.detach(), w.detach(), b.detach(), **kw).double()
    err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    times = time_interleaved(fns, repeats=repeats, min_seconds=0.2)
    xe, we, ye = shape.tensor_elems()
    es = x.element_size()
    flops = shape.flops() * (3 if backward else 1)
    nbytes = es * ((3 * xe + 2 * ye + 4 * we) if backward else (xe + ye + we))
    floor = max(flops / (limits.gflops * 1e9), nbytes / (limits.gbps * 1e9))
    # Fresh outputs of 32 MiB or more come from mmap and page-fault on first touch.
    fresh_mib = sum(b for b in ([ye * es] + ([xe * es] if backward else [])) if b >= 32 << 20) / (1 << 20)
    floor_touch = floor + fresh_mib * limits.touch_ms_per_mib / 1e3
    t_fc, t_torch = times["fastconv"], times["torch"]
    return dict(
        shape=shape.name, category=shape.category, dtype=str(dtype).replace("torch.", ""),
        mode="fwd+bwd" if backward else "fwd", torch_ms=t_torch * 1e3, fastconv_ms=t_fc * 1e3,
        speedup=t_torch / t_fc, gflops=flops / t_fc / 1e9, gbps=nbytes / t_fc / 1e9,
        floor_ms=floor * 1e3, over_floor=t_fc / floor, floor_touch_ms=floor_touch * 1e3,
        over_floor_touch=t_fc / floor_touch, rel_err=err,
    )


def report(results, limits, mode):
    headers = ["shape", "dtype", "mode", "F.conv1d ms", "fastconv ms", "speedup", "GFLOP/s", "GB/s",
               "floor ms", "x floor", "x (floor+touch)", "rel err"]
    rows = [[r["shape"], r["dtype"], r["mode"], f"{r['torch_ms']:.3f}", f"{r['fastconv_ms']:.3f}",
             f"{r['speedup']:.2f}x", f"{r['gflops']:.1f}", f"{r['gbps']:.1f}", f"{r['floor_ms']:.3f}",
             f"{r['over_floor']:.2f}", f"{r['over_floor_touch']:.2f}", f"{r['rel_err']:.1e}"] for r in results]
    lines = [
        f"allocator: {mode}; threads: {limits.threads}; measured peak {limits.gflops:.0f} GFLOP/s (fp32), "
        f"copy bandwidth {limits.gbps:.1f} GB/s; first touch {limits.touch_ms_per_mib:.3f} ms/MiB; "
        f"torch {torch.__version__}",
        "",
        format_table(headers, rows),
        "",
    ]
    groups = {}
    for r in results:
        groups.setdefault((r["category"], r["dtype"], r["mode"]), []).append(r["speedup"])
    lines.append(format_table(
        ["category", "dtype", "mode", "shapes", "geomean speedup"],
        [[c, d, m, str(len(v)), f"{geomean(v):.2f}x"] for (c, d, m), v in sorted(groups.items())]))
    return "\n".join(lines)


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("matplotlib is not installed: no plot")
        return
    series = {}
    for r in results:
        series.setdefault(f"{r['dtype']} {r['mode']}", {})[r["shape"]] = r["speedup"]
    names = list(dict.fromkeys(r["shape"] for r in results))
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(names)), 4.5))
    width = 0.8 / max(1, len(series))
    for i, (label, vals) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, [vals.get(n, 0) for n in names], width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("speedup over F.conv1d (log)")
    ax.set_title(f"fastconv.conv1d vs F.conv1d, {allocator_mode()} allocator")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    progress(f"plot written to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few shapes, fp32 forward only")
    parser.add_argument("--dtypes", default=None, help="comma list: float32,bfloat16 (default both; quick: float32)")
    parser.add_argument("--modes", default=None, help="comma list: fwd,fwd+bwd (default both; quick: fwd)")
    parser.add_argument("--shapes", default=None, help="comma list of shape names (default all)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per shape (default 15; quick 7)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out-dir", default=None, help="write conv1d_<allocator>.{md,json,png} here")
    parser.add_argument("--both-allocators", action="store_true",
                        help="also rerun in a child process with the tuned glibc allocator")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [getattr(torch, d) for d in (args.dtypes or ("float32" if args.quick else "float32,bfloat16")).split(",")]
    modes = (args.modes or ("fwd" if args.quick else "fwd,fwd+bwd")).split(",")
    shapes = [s for s in SHAPES if (not args.quick or s.quick)]
    if args.shapes:
        wanted = set(args.shapes.split(","))
        shapes = [s for s in SHAPES if s.name in wanted]
        missing = wanted - {s.name for s in shapes}
        if missing:
            parser.error(f"unknown shapes: {sorted(missing)}; known: {[s.name for s in SHAPES]}")
    repeats = args.repeats or (7 if args.quick else 15)
    mode = allocator_mode()

    progress(f"measuring machine limits ({mode} allocator)...")
    limits = measure_machine(quick=args.quick)
    results = []
    total = len(shapes) * len(dtypes) * len(modes)
    for dtype in dtypes:
        for m in modes:
            for shape in shapes:
                progress(f"[{len(results) + 1}/{total}] {shape.name} {dtype} {m}")
                results.append(run_shape(shape, dtype, m == "fwd+bwd", repeats, limits))
    text = report(results, limits, mode)
    print(text, flush=True)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"conv1d_{mode}.md").write_text(text + "\n")
        (out / f"conv1d_{mode}.json").write_text(json.dumps(
            dict(limits=asdict(limits), allocator=mode, results=results), indent=1))
        plot(results, out / f"conv1d_{mode}.png")
    if args.both_allocators and mode == "default":
        child = [a for a in (argv if argv is not None else sys.argv[1:])]
        print(flush=True)
        return rerun_with_tuned_allocator([os.path.abspath(__file__)] + child)
    return 0


if __name__ == "__main__":
    sys.exit(main())
