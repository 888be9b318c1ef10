"""conv1d's automatic choice for each operator of a training step, where many channels mix.

For every shape (batch 4, C_in = C_out = C, padding K // 2, fp32): the forward, grad_input
and the weight gradient, each with algorithm='direct', 'fft' and 'auto', calls interleaved
op by op, minimum of a few calls after a warm-up (these take milliseconds to a second, and
this VM's noise only adds); then fastconv's forward+backward with 'auto' against
F.conv1d's, interleaved, medians. Reported: each op's auto time over the faster forced
algorithm, and the step's speedup over F.conv1d.

    python benchmarks/bench_gradients.py [--quick] [--out-dir DIR]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import format_table, progress, time_interleaved  # noqa: E402

import fastconv_ext  # noqa: E402

ops = torch.ops.fastconv
ALGORITHMS = ("direct", "fft", "auto")


def fastest_times(fns, repeats):
    """Minimum seconds of each function over `repeats` rounds, interleaved, after a warm-up."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def run_shape(channels, kernel, length, batch, repeats):
    g = torch.Generator().manual_seed(channels * kernel + length)
    x = torch.randn(batch, channels, length, generator=g)
    w = torch.randn(channels, channels, kernel, generator=g)
    pad = kernel // 2
    gy = torch.randn(batch, channels, length + 2 * pad - kernel + 1, generator=g)
    ops_by_name = {
        "forward": lambda a: ops.conv1d(x, w, None, [1], [pad], [1], 1, a),
        "grad_input": lambda a: ops.conv1d_input_backward(gy, w, length, [1], [pad], [1], 1, a),
        "grad_weight": lambda a: ops.conv1d_weight_backward(gy, x, kernel, [1], [pad], [1], 1, a),
    }
    row = dict(channels=channels, kernel=kernel, length=length, batch=batch,
               auto_forward=ops._conv_path(x, w, [1], [pad], [1], 1),
               auto_weight=ops._conv_path(x, w, [1], [pad], [1], 1, "auto", "weight"))
    for name, op in ops_by_name.items():
        times = fastest_times({a: (lambda a=a: op(a)) for a in ALGORITHMS}, repeats)
        for a in ALGORITHMS:
            row[f"{name}_{a}_ms"] = times[a] * 1e3
        row[f"{name}_auto_over_best"] = times["auto"] / min(times["direct"], times["fft"])
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()

    def step(fn):
        return lambda: torch.autograd.grad(fn(xr, wr, padding=pad), (xr, wr), gy)

    step_times = time_interleaved({"torch": step(F.conv1d), "fastconv": step(fastconv_ext.conv1d)},
                                  repeats=repeats, warmup=1)
    row["step_torch_ms"] = step_times["torch"] * 1e3
    row["step_fastconv_ms"] = step_times["fastconv"] * 1e3
    row["step_speedup"] = step_times["torch"] / step_times["fastconv"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="L = 4096 only, channels 16 and 64")
    parser.add_argument("--repeats", type=int, default=5, help="calls timed per op and algorithm (default 5)")
    parser.add_argument("--out-dir", default=None, help="write gradients.{md,json} here")
    args = parser.parse_args(argv)
    channels = (16, 64) if args.quick else (16, 32, 64)
    lengths = (4096,) if args.quick else (4096, 16384)
    shapes = [(c, k, n) for c in channels for k in (9, 33, 129) for n in lengths]
    rows = []
    for i, (c, k, n) in enumerate(shapes):
        progress(f"[{i + 1}/{len(shapes)}] C={c} K={k} L={n}")
        rows.append(run_shape(c, k, n, batch=4, repeats=args.repeats))
    header = (f"threads: {torch.get_num_threads()}, torch {torch.__version__}, "
              f"profile {ops._cost_profile()}")
    worst = max(max(r[f"{op}_auto_over_best"] for op in ("forward", "grad_input", "grad_weight")) for r in rows)
    summary = f"every op's auto within {worst:.2f}x of the faster forced algorithm"
    table = format_table(
        ["C", "K", "L", "auto fwd/gi", "auto weight", "fwd direct/fft ms", "gi direct/fft ms",
         "weight direct/fft ms", "auto/best fwd, gi, weight", "step F.conv1d ms", "step fastconv ms",
         "step speedup"],
        [[str(r["channels"]), str(r["kernel"]), str(r["length"]), r["auto_forward"], r["auto_weight"],
          f"{r['forward_direct_ms']:.2f} / {r['forward_fft_ms']:.2f}",
          f"{r['grad_input_direct_ms']:.2f} / {r['grad_input_fft_ms']:.2f}",
          f"{r['grad_weight_direct_ms']:.2f} / {r['grad_weight_fft_ms']:.2f}",
          ", ".join(f"{r[f'{op}_auto_over_best']:.2f}" for op in ("forward", "grad_input", "grad_weight")),
          f"{r['step_torch_ms']:.2f}", f"{r['step_fastconv_ms']:.2f}", f"{r['step_speedup']:.2f}x"]
         for r in rows])
    text = f"{header}\n{summary}\n\n{table}\n"
    print(text)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gradients.md").write_text(text)
        (out / "gradients.json").write_text(json.dumps(dict(threads=torch.get_num_threads(), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
