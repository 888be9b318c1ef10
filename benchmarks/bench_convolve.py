"""fastconv.convolve (many short row pairs) against the usual alternatives.

Competitors, all in this process, interleaved, medians after warm-up:
  loop     -- the double Python loop over rows and output positions (N <= 100 only)
  trick    -- F.conv1d(a[None], v[:, None].flip(2), padding=m-1, groups=N)
  einsum   -- unfold of the zero-padded a, einsum with the reversed v
  fastconv -- fastconv_ext.convolve(a, v)
Also: the latency of an empty custom op (the floor for a call), and the memory
floor two ways: a, v and the output once over the copy bandwidth measured at the
start, and, at N = 10^6, `probe` -- bytes_probe.cpp, a kernel that moves the
same bytes as fastconv's streaming row kernel, the same way, with no arithmetic,
timed in the same rounds (built on first use; needs a C++ compiler and AVX-512).

At N = 10^6 every pair is also timed with each call right after an untimed call of
itself (common.time_interleaved's after_itself): a call then pays for the dirty
lines it leaves behind, not for those of whatever ran before it. --predecessors
shows why it matters: the time of each call after each other one, for one pair.

    python benchmarks/bench_convolve.py [--both-allocators] [--out-dir DIR]
    python benchmarks/bench_convolve.py --predecessors 9x3
"""

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import time
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

PROBE_N = 10**6  # the probe is timed from this many rows on


def load_bytes_probe():
    """bytes_probe.cpp built for this torch, or None (with the reason printed)."""
    try:
        avx512 = "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        avx512 = False
    if not avx512:
        progress("bytes probe: skipped, it needs an x86 CPU with AVX-512 (and Linux's /proc/cpuinfo)")
        return None
    from torch.utils.cpp_extension import load
    progress("bytes probe: building benchmarks/bytes_probe.cpp...")
    try:
        return load("fastconv_bytes_probe", [str(Path(__file__).with_name("bytes_probe.cpp"))],
                    extra_cflags=["-O3", "-mavx512f", "-fopenmp"], extra_ldflags=["-fopenmp"]).bytes_probe
    except Exception as e:  # no compiler or ninja: the table goes on without the column
        progress(f"bytes probe: skipped, the build failed: {e}")
        return None


@torch.library.custom_op("fastconv_bench::empty", mutates_args=())
def empty_op(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """An empty custom op: the cost of calling any operator from Python."""
    return a.new_empty(0)


def double_loop(a, v):
    n, m = a.shape[1], v.shape[1]
    al, vl = a.tolist(), v.tolist()
    out = []
    for x, y in zip(al, vl):
        out.append([sum(x[j] * y[i - j] for j in range(max(0, i - m + 1), min(n, i + 1)))
                    for i in range(n + m - 1)])
    return torch.tensor(out)


def grouped_trick(a, v):
    return F.conv1d(a.unsqueeze(0), v.unsqueeze(1).flip(2), padding=v.shape[1] - 1, groups=a.shape[0])[0]


def unfold_einsum(a, v):
    m = v.shape[1]
    windows = F.pad(a, (m - 1, m - 1)).unfold(-1, m, 1)
    return torch.einsum("ntk,nk->nt", windows, v.flip(-1))


def candidates(N, n, m, with_loop=True, probe=None):
    """The reference result and the candidates' calls for N random rows of n x m."""
    g = torch.Generator().manual_seed(N + n * 10 + m)
    a, v = torch.randn(N, n, generator=g), torch.randn(N, m, generator=g)
    # ref stays alive while the others are timed. With it alive, the trick runs without page
    # faults in the default allocator mode too (10^6 rows of 9x2: 0 faults and 8-13 ms a call);
    # in a process without it, the same call took ~30000 faults and 50-60 ms. The trick is
    # timed in its faster state.
    ref = grouped_trick(a.double(), v.double())
    got = fastconv_ext.convolve(a, v)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    fns = {"trick": lambda: grouped_trick(a, v), "einsum": lambda: unfold_einsum(a, v),
           "fastconv": lambda: fastconv_ext.convolve(a, v)}
    if with_loop and N <= 100:
        fns["loop"] = lambda: double_loop(a, v)
    if probe is not None and N >= PROBE_N:
        fns["probe"] = lambda: probe(a, v, got)  # writes over fastconv's result buffer
    return ref, fns


def run(N, n, m, repeats, limits, with_loop=True, probe=None):
    ref, fns = candidates(N, n, m, with_loop, probe)  # noqa: F841 (ref stays alive, see above)
    t = time_interleaved(fns, repeats=repeats, min_seconds=0.1)
    if N >= PROBE_N:
        t.update({f"{k} after itself": val for k, val in
                  time_interleaved(fns, repeats=repeats, min_seconds=0.1, after_itself=True).items()})
    nbytes = 4 * N * (n + m + n + m - 1)
    t["floor"] = nbytes / (limits.gbps * 1e9)
    return t


def predecessor_table(n, m, probe, repeats=9):
    """Median time of each candidate (rows) right after an untimed call of each (columns), N = 10^6."""
    ref, fns = candidates(PROBE_N, n, m, with_loop=False, probe=probe)  # noqa: F841
    order = [(before, timed) for before in fns for timed in fns]
    samples = {key: [] for key in order}
    shuffle = random.Random(0)
    for i in range(repeats):
        progress(f"predecessors {n}x{m}: round {i + 1} of {repeats}")
        shuffle.shuffle(order)
        for before, timed in order:
            fns[before]()
            t0 = time.perf_counter()
            fns[timed]()
            samples[(before, timed)].append(time.perf_counter() - t0)
    rows = [[timed] + [f"{statistics.median(samples[(before, timed)]) * 1e3:.3f}" for before in fns]
            for timed in fns]
    return (f"N = {PROBE_N}, {n}x{m}: ms of each call (row) right after an untimed call of each (column), "
            f"median of {repeats}\n\n" + format_table(["timed \\ after"] + list(fns), rows))


def speedup_lines(N, pairs, suffix=""):
    """The smallest speedups over the trick among the pairs, timed with the keys' `suffix`."""
    speed = {(r["n"], r["m"]): r["trick" + suffix] / r["fastconv" + suffix] for r in pairs}
    below = sorted(speed, key=speed.get)[:5]
    lines = [f"\nN={N}, every length pair 2..9{suffix and ', each call' + suffix}: smallest speedup over "
             f"the trick {speed[below[0]]:.1f}x (at {below[0][0]}x{below[0][1]}); lowest five: "
             + ", ".join(f"{n}x{m} {speed[(n, m)]:.1f}x" for n, m in below)]
    if "probe" + suffix in pairs[0]:
        lines.append(probe_summary(pairs, suffix))
    return lines


def probe_summary(pairs, suffix=""):
    """How far the trick is from the bytes probe, and fastconv from the probe."""
    trick, probe, fastconv = "trick" + suffix, "probe" + suffix, "fastconv" + suffix
    by_probe = sorted(pairs, key=lambda r: r[trick] / r[probe])
    under = [r for r in by_probe if r[trick] < 5 * r[probe]]
    ratio = sorted(r[fastconv] / r[probe] for r in pairs)
    text = (f"bytes probe (same bytes, no arithmetic): smallest speedup over the trick "
            f"{by_probe[0][trick] / by_probe[0][probe]:.1f}x (at {by_probe[0]['n']}x{by_probe[0]['m']}); "
            f"fastconv / probe time: median {statistics.median(ratio):.2f}, {ratio[0]:.2f}-{ratio[-1]:.2f}")
    if under:
        text += (f"; pairs where even the probe is under 5x the trick ({len(under)}): "
                 + ", ".join(f"{r['n']}x{r['m']} {r[trick] / r[probe]:.2f}x" for r in under))
    return text


def length_pair(text):
    """'9x3' -> (9, 3), for argparse."""
    n, m = (int(x) for x in text.split("x"))
    if n < 1 or m < 1:
        raise ValueError(text)
    return n, m


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--out-dir", default=None, help="write convolve_<allocator>.{md,json} here")
    parser.add_argument("--both-allocators", action="store_true",
                        help="also rerun in a child process with the tuned glibc allocator")
    parser.add_argument("--predecessors", metavar="NxM", default=None, type=length_pair,
                        help="only print, for that pair at N = 10^6, each call's time after each other call")
    args = parser.parse_args(argv)
    if args.predecessors:
        print(predecessor_table(*args.predecessors, load_bytes_probe()), flush=True)
        return 0
    mode = allocator_mode()
    progress(f"measuring machine limits ({mode} allocator)...")
    limits = measure_machine(quick=True)
    a, v = torch.randn(5, 9), torch.randn(5, 9)
    lat = time_interleaved({"empty custom op": lambda: empty_op(a, v),
                            "fastconv N=5": lambda: fastconv_ext.convolve(a, v),
                            "aten.alias (C++ floor)": lambda: torch.ops.aten.alias(a)}, repeats=2000)
    lines = [f"allocator: {mode}; threads: {limits.threads}; copy bandwidth {limits.gbps:.1f} GB/s; "
             f"torch {torch.__version__}", "",
             "call latency: " + ", ".join(f"{k} {v * 1e6:.2f} us" for k, v in lat.items()), ""]
    sizes = [5, 100, 10**4] if args.quick else [5, 100, 10**4, PROBE_N]
    probe = None if args.quick else load_bytes_probe()
    pairs = [(2, 2), (5, 7), (9, 9), (9, 3)]
    rows, results = [], []
    for N in sizes:
        for n, m in pairs:
            progress(f"N={N} {n}x{m}")
            t = run(N, n, m, repeats=5 if N >= 10**6 else 15, limits=limits, probe=probe)
            results.append(dict(N=N, n=n, m=m, **{k: val * 1e3 for k, val in t.items()}))
            opt = {k: f"{t[k] * 1e3:.3f}" if k in t else "-" for k in ("loop", "probe")}
            itself = (f"{t['trick after itself'] / t['fastconv after itself']:.1f}x"
                      if "trick after itself" in t else "-")
            rows.append([str(N), f"{n}x{m}", opt["loop"], f"{t['trick'] * 1e3:.3f}", f"{t['einsum'] * 1e3:.3f}",
                         f"{t['fastconv'] * 1e3:.3f}", f"{t['trick'] / t['fastconv']:.1f}x", itself,
                         opt["probe"], f"{t['floor'] * 1e3:.3f}", f"{t['fastconv'] / t['floor']:.2f}"])
    lines.append(format_table(["N", "n x m", "loop ms", "trick ms", "einsum ms", "fastconv ms", "vs trick",
                               "after itself", "probe ms", "floor ms", "x floor"], rows))
    # Every length pair 2..9: the smallest speedup over the grouped-conv trick, and the pairs
    # where the trick itself runs within 5x of the memory floor (no kernel can be 5x faster).
    for N in ([10**4] if args.quick else [5, 100, 10**4, 10**6]):
        pairs_out = []
        for n, m in itertools.product(range(2, 10), repeat=2):
            progress(f"all pairs N={N}: {n}x{m}")
            t = run(N, n, m, repeats=11 if N >= 10**6 else 3, limits=limits, with_loop=False, probe=probe)
            pairs_out.append(dict(n=n, m=m, **{k: val * 1e3 for k, val in t.items()}))
        lines += speedup_lines(N, pairs_out)
        bound = [r for r in pairs_out if r["trick"] < 5 * r["floor"]]
        if bound:
            lines.append(f"pairs where the trick is within 5x of the memory floor ({len(bound)}): "
                         + ", ".join(f"{r['n']}x{r['m']} ({r['trick'] / r['floor']:.1f}x)" for r in bound))
        if "trick after itself" in pairs_out[0]:
            lines += speedup_lines(N, pairs_out, " after itself")
        results.append(dict(N=N, pairs=pairs_out))
    text = "\n".join(lines)
    print(text, flush=True)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"convolve_{mode}.md").write_text(text + "\n")
        (out / f"convolve_{mode}.json").write_text(json.dumps(dict(
            latency_us={k: v * 1e6 for k, v in lat.items()}, results=results), indent=1))
    if args.both_allocators and mode == "default":
        print(flush=True)
        return rerun_with_tuned_allocator([os.path.abspath(__file__)] + list(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
