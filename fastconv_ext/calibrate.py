"""Measures this machine's constants for conv1d's automatic choice among its paths -- fastconv's
direct kernels, its FFT, and PyTorch's own convolution ("native") -- and writes them to the
profile file the operator library reads.

    python -m fastconv_ext.calibrate [--out PATH] [--repeats N] [--passes N]

The cost model (csrc/fastconv/algorithm.h) predicts seconds as a fixed cost per call plus
work over a rate: multiply-adds for the direct kernels (one rate with one channel pair per
group, one with 16 and more, geometric in between); n log2 n per real transform (1.3x for
lengths with factors 3 or 5), complex
multiply-adds and bytes of spectra (fresh memory is faulted in) for the FFT path; for PyTorch's
kernel a fixed cost and multiply-adds at a rate from one channel pair per group to 256 and more
(a full GEMM). Each constant is fitted here from timings of the
operator itself with the algorithm forced, using the current thread count, by least
squares on relative error over shapes from a few microseconds to tens of milliseconds. The profile
goes to $FASTCONV_PROFILE, or ~/.cache/fastconv/cpu_profile.txt, and is read once per
process (at the first conv1d with algorithm='auto'); without one, built-in defaults
measured on the development machine apply.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import List, Sequence

import torch

import fastconv_ext  # noqa: F401  (registers torch.ops.fastconv)

ops = torch.ops.fastconv
KEYS = ["direct_small", "direct_dense", "direct_call", "fft_nlogn", "fft_cmac", "fft_byte", "fft_call", "threads",
        "native_small", "native_dense", "native_call"]
TINY = 1e-30


def default_path() -> Path:
    if os.environ.get("FASTCONV_PROFILE"):
        return Path(os.environ["FASTCONV_PROFILE"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "fastconv" / "cpu_profile.txt"


def median_seconds(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Case:
    def __init__(self, batch, cin, cout, length, kernel, groups=1):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, cin, length, generator=g)
        self.w = torch.randn(cout, cin // groups, kernel, generator=g)
        self.groups = groups

    def time(self, algorithm: str, repeats: int) -> float:
        return median_seconds(
            lambda: ops.conv1d(self.x, self.w, None, [1], [0], [1], self.groups, algorithm), repeats)

    def model(self, profile: Sequence[float]) -> List[float]:
        """[direct, fft, native] seconds predicted with `profile` (the model is linear in it)."""
        ops._cost_profile(list(profile))
        return ops._conv1d_cost(self.x, self.w, [1], [0], [1], self.groups)


def unit(key: str, threads: float) -> List[float]:
    values = [TINY] * len(KEYS)
    values[KEYS.index(key)] = 1.0
    values[KEYS.index("threads")] = threads
    return values


def fit_relative(rows: List[List[float]], times: List[float]) -> List[float]:
    """Non-negative coefficients c minimising sum(((rows @ c) - t) / t)^2: the model must be
    right in ratio (which algorithm is faster), at small and large sizes alike."""
    a = torch.tensor(rows, dtype=torch.float64)
    t = torch.tensor(times, dtype=torch.float64)
    scaled, ones = a / t[:, None], torch.ones_like(t)
    active = list(range(a.shape[1]))
    while True:  # least squares, dropping any coefficient that comes out negative
        coef = torch.linalg.lstsq(scaled[:, active], ones[:, None]).solution[:, 0]
        if (coef > 0).all() or len(active) == 1:
            out = [0.0] * a.shape[1]
            for i, c in zip(active, coef.tolist()):
                out[i] = max(c, 0.0)
            return out
        active = [i for i, c in zip(active, coef.tolist()) if c > 0]


def calibrate(repeats: int, log=print) -> List[float]:
    threads = float(torch.get_num_threads())
    previous = ops._cost_profile()
    try:
        log(f"calibrating with {int(threads)} threads ...")
        # Direct: one channel pair per group, then many; t = call + MACs * rate.
        small = [Case(1, 1, 1, 64, 3), Case(1, 1, 1, 4096, 512), Case(1, 1, 1, 65536, 64),
                 Case(2, 8, 8, 1 << 16, 64, groups=8), Case(4, 4, 4, 16384, 16, groups=4)]
        t_small = [c.time("direct", repeats) for c in small]
        direct_call, direct_small = fit_relative(
            [[1.0, c.model(unit("direct_small", threads))[0]] for c in small], t_small)
        # The dense rate from 16 channel pairs up, where the sweep's crossovers with the FFT lie.
        dense = [Case(2, 64, 64, 8192, 16), Case(1, 32, 32, 4096, 64), Case(1, 4, 4, 65536, 64),
                 Case(1, 16, 16, 65536, 32), Case(1, 16, 16, 1 << 20, 32)]
        t_dense = [c.time("direct", repeats) - direct_call for c in dense]
        direct_dense = statistics.median(
            t / c.model(unit("direct_dense", threads))[0] for c, t in zip(dense, t_dense))
        # FFT: t = call + a * (n log2 n work) + b * (complex multiply-adds) + c * (bytes of
        # spectra), over shapes from small transforms to ones of hundreds of MB, with and
        # without channel mixing.
        ffts = [Case(1, 1, 1, 64, 3), Case(1, 1, 1, 4096, 512), Case(1, 1, 1, 4096, 2048),
                Case(1, 1, 1, 65536, 1024), Case(1, 1, 1, 1 << 18, 4096), Case(1, 4, 4, 65536, 512),
                Case(1, 16, 16, 4096, 256), Case(4, 32, 32, 8192, 512), Case(1, 4, 4, 1 << 20, 128),
                Case(1, 16, 16, 1 << 20, 64), Case(1, 16, 16, 1 << 20, 128), Case(1, 16, 16, 65536, 64),
                Case(1, 16, 16, 4096, 64), Case(1, 4, 4, 65536, 128), Case(1, 1, 1, 1 << 20, 128)]
        t_fft = [c.time("fft", repeats) for c in ffts]
        # The fixed cost straight from a small transform (a few microseconds of it are
        # transforms): fitted with the other terms, it came out at half the measured one,
        # and short signals took the FFT where direct was 2x faster.
        fft_call = Case(1, 1, 1, 4096, 8).time("fft", repeats)
        terms = ("fft_nlogn", "fft_cmac", "fft_byte")
        rows = [[c.model(unit(k, threads))[1] for k in terms] for c in ffts]
        fft_nlogn, fft_cmac, fft_byte = fit_relative(rows, [max(t - fft_call, 0.1 * t) for t in t_fft])
        # PyTorch's kernel: one channel pair per group (depthwise), then a full GEMM.
        native_small_cases = [Case(1, 1, 1, 4096, 64), Case(4, 64, 64, 8192, 7, groups=64),
                              Case(2, 256, 256, 4096, 31, groups=256), Case(1, 1, 1, 65536, 16)]
        t_native_small = [c.time("native", repeats) for c in native_small_cases]
        native_call, native_small = fit_relative(
            [[1.0, c.model(unit("native_small", threads))[2]] for c in native_small_cases], t_native_small)
        native_dense_cases = [Case(4, 256, 256, 1024, 3), Case(2, 512, 512, 512, 2), Case(1, 384, 384, 2048, 5)]
        native_dense = statistics.median(
            (c.time("native", repeats) - native_call) / c.model(unit("native_dense", threads))[2]
            for c in native_dense_cases)
        floor = 1e-15
        values = [max(v, floor) for v in
                  (direct_small, direct_dense, direct_call, fft_nlogn, fft_cmac, fft_byte, fft_call)] + [threads]
        values += [max(v, floor) for v in (native_small, native_dense, native_call)]
    finally:
        ops._cost_profile(previous)
    return values


def main(argv=None) -> int:
    """Calibrate and write the profile: ``python -m fastconv_ext.calibrate [--out PATH] [--repeats N]
    [--passes N]``. Each pass fits every constant; the profile keeps each constant's median over
    the passes. Returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help=f"profile file (default {default_path()})")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (median)")
    parser.add_argument("--passes", type=int, default=3,
                        help="independent fits; each constant is their median (this machine is noisy)")
    args = parser.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    fits = [calibrate(args.repeats, log=log) for _ in range(max(1, args.passes))]
    values = [statistics.median(column) for column in zip(*fits)]
    out = Path(args.out) if args.out else default_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# fastconv cost profile: {platform.node()}, {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}"]
    lines += [f"{k} {v:.6g}" for k, v in zip(KEYS, values)]
    out.write_text("\n".join(lines) + "\n")
    ops._cost_profile(values)
    print("\n".join(lines))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
