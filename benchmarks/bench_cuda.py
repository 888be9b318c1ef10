"""fastconv's CUDA kernels against cuDNN (F.conv1d, F.conv2d) on the current GPU.

Times with CUDA events, interleaved, medians after warm-up, in one process:
  copy      -- device-to-device copy bandwidth (read + write), the memory roofline
  depthwise -- conv1d depthwise K <= 4 at large sizes, as a fraction of the copy bandwidth
  conv1d    -- the CPU suite's shapes (benchmarks/bench_conv1d.py) against F.conv1d, fp32 and bf16
  convolve  -- N = 10^6 short row pairs against the memory floor and the grouped-conv trick
(conv2d on a GPU: benchmarks/bench_conv2d.py --device cuda --tf32.)

    python benchmarks/bench_cuda.py [--quick] [--out-dir DIR]
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_conv1d import SHAPES  # noqa: E402
from common import format_table, geomean, progress  # noqa: E402

import fastconv_ext  # noqa: E402


def cuda_times(fns, repeats=30, warmup=5):
    """Median milliseconds per call of each function, interleaved, timed with CUDA events."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end))
    return {name: statistics.median(v) for name, v in samples.items()}


FAILURES = []


class guarded:
    """Records a case that raises (a wrong result or a CUDA error) and goes on with the next."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is not None:
            FAILURES.append(f"{self.name}: {kind.__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            progress(f"  FAILED {FAILURES[-1]}")
        return isinstance(err, Exception)


def copy_bandwidth():
    src = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = cuda_times({"copy": lambda: dst.copy_(src)})["copy"]
    return 2 * src.numel() / (t * 1e-3) / 1e9


def depthwise(gbps, quick):
    rows = []
    sizes = [(8, 1024, 1 << 16), (16, 2048, 1 << 15)] if not quick else [(8, 1024, 1 << 14)]
    for k in (2, 3, 4):
        for b, c, length in sizes:
            progress(f"  depthwise k={k} {b}x{c}x{length}")
            x = torch.randn(b, c, length, device="cuda")
            w = torch.randn(c, 1, k, device="cuda")
            with guarded(f"depthwise k={k} {b}x{c}x{length}"):
                y = fastconv_ext.conv1d(x, w, padding=k - 1, groups=c)
                torch.testing.assert_close(y, F.conv1d(x, w, padding=k - 1, groups=c), rtol=1e-4, atol=1e-4)
                t = cuda_times({"fastconv": lambda: fastconv_ext.conv1d(x, w, padding=k - 1, groups=c),
                                "cudnn": lambda: F.conv1d(x, w, padding=k - 1, groups=c)})
                nbytes = 4 * (x.numel() + y.numel())
                rows.append(dict(k=k, shape=[b, c, length], fastconv_ms=t["fastconv"], cudnn_ms=t["cudnn"],
                                 fastconv_gbps=nbytes / (t["fastconv"] * 1e-3) / 1e9,
                                 of_copy=nbytes / (t["fastconv"] * 1e-3) / 1e9 / gbps))
            del x, w
    return rows


def conv1d_suite(dtypes):
    rows = []
    for dtype in dtypes:
        for s in SHAPES:
            g = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(s.batch, s.in_channels, s.length, device="cuda", generator=g).to(dtype)
            w = torch.randn(s.out_channels, s.in_channels // s.groups, s.kernel_size, device="cuda",
                            generator=g).to(dtype)
            kw = s.args()
            progress(f"  {s.name} {dtype}")
            with guarded(f"conv1d {s.name} {dtype}"):
                ref = F.conv1d(x.double(), w.double(), **kw)
                got = fastconv_ext.conv1d(x, w, **kw).double()
                err = ((got - ref).abs().max() / ref.abs().max()).item()
                t = cuda_times({"fastconv": lambda: fastconv_ext.conv1d(x, w, **kw),
                                "cudnn": lambda: F.conv1d(x, w, **kw)}, repeats=15)
                xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
                gy = torch.randn_like(got, dtype=dtype)
                tb = cuda_times({"fastconv": lambda: torch.autograd.grad(fastconv_ext.conv1d(xg, wg, **kw), (xg, wg), gy),
                                 "cudnn": lambda: torch.autograd.grad(F.conv1d(xg, wg, **kw), (xg, wg), gy)},
                                repeats=15)
                rows.append(dict(shape=s.name, dtype=str(dtype).replace("torch.", ""), fastconv_ms=t["fastconv"],
                                 cudnn_ms=t["cudnn"], speedup=t["cudnn"] / t["fastconv"], rel_err=err,
                                 fastconv_fwd_bwd_ms=tb["fastconv"], cudnn_fwd_bwd_ms=tb["cudnn"],
                                 fwd_bwd_speedup=tb["cudnn"] / tb["fastconv"]))
    return rows


def convolve(gbps):
    rows = []
    n_rows = 10**6
    for n, m in [(2, 2), (5, 7), (9, 3), (9, 9)]:
        progress(f"  convolve {n}x{m}")
        a = torch.randn(n_rows, n, device="cuda")
        v = torch.randn(n_rows, m, device="cuda")
        trick = lambda: F.conv1d(a[None], v[:, None].flip(2), padding=m - 1, groups=n_rows)[0]  # noqa: E731
        floor = 4 * n_rows * (n + m + n + m - 1) / (gbps * 1e9) * 1e3
        row = dict(pair=f"{n}x{m}", floor_ms=floor, fastconv_ms=float("nan"), trick_ms=float("nan"))
        with guarded(f"convolve {n}x{m}"):
            ref = (a.double()[:, :, None] * v.double()[:, None, :])  # outer products, summed along anti-diagonals
            want = torch.zeros(n_rows, n + m - 1, dtype=torch.float64, device="cuda")
            for i in range(n):
                want[:, i:i + m] += ref[:, i]
            torch.testing.assert_close(fastconv_ext.convolve(a, v).double(), want, rtol=1e-5, atol=1e-5)
            row["fastconv_ms"] = cuda_times({"fastconv": lambda: fastconv_ext.convolve(a, v)})["fastconv"]
        with guarded(f"convolve {n}x{m}: the grouped-conv trick (cuDNN)"):
            row["trick_ms"] = cuda_times({"trick": trick}, repeats=5, warmup=1)["trick"]
        row["over_floor"] = row["fastconv_ms"] / floor
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sizes, fp32 only")
    parser.add_argument("--out-dir", default=None, help="write cuda_<device>.{md,json} here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA device available; nothing to measure", file=sys.stderr)
        return 0
    device = torch.cuda.get_device_name()
    progress(f"{device}: copy bandwidth ...")
    gbps = copy_bandwidth()
    progress("depthwise ...")
    dw = depthwise(gbps, args.quick)
    progress("conv1d suite ...")
    suite = conv1d_suite([torch.float32] if args.quick else [torch.float32, torch.bfloat16])
    progress("convolve ...")
    cv = convolve(gbps)
    lines = [f"device: {device}; torch {torch.__version__}; copy bandwidth {gbps:.0f} GB/s", "",
             "depthwise conv1d, K <= 4:",
             format_table(["K", "shape", "fastconv ms", "cuDNN ms", "fastconv GB/s", "of copy"],
                          [[r["k"], "x".join(map(str, r["shape"])), f"{r['fastconv_ms']:.3f}", f"{r['cudnn_ms']:.3f}",
                            f"{r['fastconv_gbps']:.0f}", f"{r['of_copy']:.0%}"] for r in dw]), "",
             "conv1d suite:",
             format_table(["shape", "dtype", "fastconv ms", "cuDNN ms", "speedup", "rel err",
                           "fwd+bwd fastconv ms", "fwd+bwd cuDNN ms", "fwd+bwd speedup"],
                          [[r["shape"], r["dtype"], f"{r['fastconv_ms']:.3f}", f"{r['cudnn_ms']:.3f}",
                            f"{r['speedup']:.2f}x", f"{r['rel_err']:.1e}", f"{r['fastconv_fwd_bwd_ms']:.3f}",
                            f"{r['cudnn_fwd_bwd_ms']:.3f}", f"{r['fwd_bwd_speedup']:.2f}x"] for r in suite])]
    for dtype in sorted({r["dtype"] for r in suite}):
        mine = [r for r in suite if r["dtype"] == dtype]
        lines.append(f"geomean speedup {dtype}: forward {geomean([r['speedup'] for r in mine]):.2f}x, "
                     f"forward+backward {geomean([r['fwd_bwd_speedup'] for r in mine]):.2f}x")
    lines += ["", "convolve, N = 10^6:",
              format_table(["n x m", "fastconv ms", "grouped-conv trick ms", "floor ms", "x floor"],
                           [[r["pair"], f"{r['fastconv_ms']:.3f}", f"{r['trick_ms']:.3f}", f"{r['floor_ms']:.3f}",
                             f"{r['over_floor']:.2f}"] for r in cv])]
    if FAILURES:
        lines += ["", "FAILED:"] + [f"  {f}" for f in FAILURES]
    text = "\n".join(lines)
    print(text)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tag = device.replace(" ", "_")
        (out / f"cuda_{tag}.md").write_text(text + "\n")
        (out / f"cuda_{tag}.json").write_text(json.dumps(dict(device=device, copy_gbps=gbps, depthwise=dw,
                                                              conv1d=suite, convolve=cv, failures=FAILURES),
                                                         indent=1))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
