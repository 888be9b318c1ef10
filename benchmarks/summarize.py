"""Markdown summary of bench_conv1d.py results in both allocator modes, side by side.

    python benchmarks/summarize.py benchmarks/results   # reads conv1d_{default,tuned}.json
"""

import json
import statistics
import sys
from pathlib import Path


def main(directory):
    runs = {mode: json.loads((Path(directory) / f"conv1d_{mode}.json").read_text()) for mode in ("default", "tuned")}
    tuned = {(r["shape"], r["dtype"], r["mode"]): r for r in runs["tuned"]["results"]}
    for dtype in ("float32", "bfloat16"):
        print(f"\n#### {dtype}\n")
        print("| shape | category | mode | default: F.conv1d ms | default: fastconv ms | default: speedup "
              "| default: x (floor+touch) | tuned: F.conv1d ms | tuned: fastconv ms | tuned: speedup "
              "| tuned: x floor | GFLOP/s (tuned) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in runs["default"]["results"]:
            if r["dtype"] != dtype:
                continue
            t = tuned[(r["shape"], r["dtype"], r["mode"])]
            print(f"| {r['shape']} | {r['category']} | {r['mode']} | {r['torch_ms']:.3f} | {r['fastconv_ms']:.3f} "
                  f"| {r['speedup']:.2f}x | {r['over_floor_touch']:.2f} | {t['torch_ms']:.3f} | {t['fastconv_ms']:.3f} "
                  f"| {t['speedup']:.2f}x | {t['over_floor']:.2f} | {t['gflops']:.0f} |")
    print("\n### Geomean speedups")
    for mode, run in runs.items():
        groups = {}
        for r in run["results"]:
            weak = r["category"] in ("depthwise", "few-channel")
            groups.setdefault(("weak (depthwise + <=4 channels)" if weak else r["category"], r["dtype"], r["mode"]),
                              []).append(r["speedup"])
        print(f"\n{mode} allocator:\n\n| group | dtype | mode | shapes | geomean | min |\n|---|---|---|---|---|---|")
        for (group, dtype, m), values in sorted(groups.items()):
            print(f"| {group} | {dtype} | {m} | {len(values)} | {statistics.geometric_mean(values):.2f}x "
                  f"| {min(values):.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
