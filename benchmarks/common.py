"""Shared benchmark machinery: timing, machine limits, allocator modes, tables, plots.

Timings interleave the candidates repeat by repeat (so drift and noise hit both
alike) and report medians after warm-up. This machine is shared: trust ratios.
"""

import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch

# glibc settings that make large buffers reuse freed memory instead of fresh
# mmap pages (every fresh 4 KiB page costs a fault on first touch).
TUNED_ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 40),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    "MALLOC_TOP_PAD_": str(1 << 30),
}


def allocator_mode() -> str:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("THP_MEM_ALLOC_ENABLE") == "1":
        return "tuned"
    return "default"


def rerun_with_tuned_allocator(argv: Sequence[str]) -> int:
    """Runs this script again in a child process with the tuned allocator settings."""
    env = dict(os.environ, **TUNED_ALLOCATOR_ENV)
    return subprocess.call([sys.executable] + list(argv), env=env)


def time_interleaved(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 3,
                     min_seconds: float = 0.0, after_itself: bool = False) -> Dict[str, float]:
    """Median seconds per call of each function, calls interleaved.

    Each round runs the functions in a new (seeded) random order, so that none always runs
    right after the same other one: a call leaves cold caches and dirty lines to whatever comes
    next (fastconv's conv1d on 1000 rows of 64 took 46 us when it always ran right after
    F.conv1d, 35 us when it ran after a light call).

    after_itself: each timed call comes right after an untimed call of the same function, so
    it pays its own deferred costs (the dirty lines it leaves, which whatever runs next writes
    back) and nobody else's. Random order charges a call for its predecessor's: 10^6 rows of
    9x3 in convolve took 1.88 ms after fastconv and 2.11 ms after the grouped conv, whose own
    time did not change with what ran before it (bench_convolve.py, --predecessors)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    order = random.Random(0)
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    n = 0
    while n < repeats or time.perf_counter() - start < min_seconds:
        order.shuffle(names)
        for name in names:
            if after_itself:
                fns[name]()
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
        n += 1
        if n >= 50 * repeats:
            break
    return {name: statistics.median(v) for name, v in samples.items()}


@dataclass
class MachineLimits:
    gflops: float  # best fp32 FLOP rate PyTorch reaches here (torch.mm or a dense oneDNN conv1d), GFLOP/s
    gbps: float  # DRAM copy bandwidth (read + write), GB/s
    threads: int
    touch_ms_per_mib: float = 0.0  # first-touch cost of a fresh 64 MiB buffer, beyond a reused one


def measure_peak_gflops(quick: bool = False) -> float:
    """Best fp32 FLOP rate of torch.mm and of a dense oneDNN conv1d.

    With the default allocator the conv's fresh output page-faults on every call and
    understates the peak, so then it is measured in a child process with the tuned one.
    """
    if allocator_mode() == "default":
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import common, torch; "
                f"torch.set_num_threads({torch.get_num_threads()}); print(common.measure_peak_gflops({quick}))")
        out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **TUNED_ALLOCATOR_ENV),
                             capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    x, w = torch.randn(8, 128, 512), torch.randn(128, 128, 5)
    t = time_interleaved({"mm": lambda: torch.mm(a, b, out=out),
                          "conv": lambda: torch.nn.functional.conv1d(x, w, padding=2)},
                         repeats=5 if quick else 10)
    return max(2 * n**3 / t["mm"], 2 * 8 * 128 * 512 * 128 * 5 / t["conv"]) / 1e9


def measure_machine(quick: bool = False) -> MachineLimits:
    """Peak fp32 FLOP rate and copy bandwidth, measured now, with the current threads.

    The peak is the better of torch.mm and a dense conv1d through oneDNN: on some
    CPUs (AMD Zen 5) MKL's sgemm reaches only half of what the FMA units do.
    """
    gflops = measure_peak_gflops(quick)
    elems = (64 if quick else 256) * (1 << 20) // 4
    src, dst = torch.randn(elems), torch.empty(elems)
    t = time_interleaved({"copy": lambda: dst.copy_(src)}, repeats=5 if quick else 10)["copy"]
    gbps = 2 * elems * 4 / t / 1e9
    fresh = 64 << 20
    t = time_interleaved({"fresh": lambda: torch.empty(fresh // 4).fill_(1.0),
                          "reused": lambda: dst.fill_(1.0)}, repeats=5)
    touch = max(0.0, t["fresh"] - t["reused"] * fresh / (elems * 4)) * 1e3 / 64
    return MachineLimits(gflops, gbps, torch.get_num_threads(), touch)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, columns padded for the terminal."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def geomean(values: Sequence[float]) -> float:
    values = [v for v in values if v > 0]
    return statistics.geometric_mean(values) if values else float("nan")


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
