"""Measures this machine's constants for the automatic choice among convolution paths --
fastconv's own and PyTorch's ("native") -- and writes them to the profile file the operator
library reads.

    python -m fastconv_ext.calibrate [--out PATH] [--repeats N] [--passes N]

conv1d: the cost model (csrc/fastconv/algorithm.h) predicts seconds as a fixed cost per call plus
work over a rate: multiply-adds for the direct kernels (one rate with one channel pair per
group, one with 16 and more, geometric in between); n log2 n per real transform (1.3x for
lengths with factors 3 or 5), complex
multiply-adds and bytes of spectra (fresh memory is faulted in) for the FFT path; for PyTorch's
kernel a fixed cost and multiply-adds at a rate from one channel pair per group to 256 and more
(a full GEMM). Each constant is fitted here from timings of the
operator itself with the algorithm forced, using the current thread count, by least
squares on relative error over shapes from a few microseconds to tens of milliseconds.

conv2d: each default rule (csrc/fastconv/path.cpp) covers a class of layers -- pointwise
layers by layout, depthwise layers by layout, stride and kernel size (and, in tables of their own,
bfloat16 depthwise layers) -- with one fastconv path for an operator (forward, grad_input,
grad_weight). Layers of each class from real models (MobileNetV2, EfficientNet, ConvNeXt,
RepLKNet, ResNet sizes) are timed as a model runs them, through
fastconv_ext.conv2d against torch.nn.functional.conv2d: the forward alone for a forward rule,
forward and backward over each combination of the gradient rules (a gradient of fastconv's
beside one of PyTorch's loses PyTorch's joint backward). The profile keeps, per rule, each
layer's sizes and speedup; a layer of the class takes the rule's path where the measured layers
nearest to it (the three nearest, weighted by nearness) were at least 1.1x faster with it
(csrc/fastconv/conv2d_rules.h).

The profile goes to $FASTCONV_PROFILE, or ~/.cache/fastconv/cpu_profile.txt, and is read once
per process (at the first call that consults it); without one, the built-in measurements of the
CPU's kind apply (one calibration of a CPU with AVX-512, one of a CPU with AVX2 only).
"""

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

import fastconv_ext

ops = torch.ops.fastconv
KEYS = ["direct_small", "direct_dense", "direct_call", "fft_nlogn", "fft_cmac", "fft_byte", "fft_call", "threads",
        "native_small", "native_dense", "native_call"]
DEPTHWISE_RULES = ["depthwise_rows", "depthwise_strided", "depthwise_large", "depthwise_input", "depthwise_weight",
                   "depthwise_small_strided_grads", "depthwise_nchw_kernels", "depthwise_nchw_kernel_grads"]
RULES = ["pointwise_forward", "pointwise_input", "pointwise_weight"] + DEPTHWISE_RULES + [
    f"{rule}_bf16" for rule in DEPTHWISE_RULES]
# Rules that choose between fastconv's paths of an operator another rule gives to fastconv.
PATH_CHOICES = {"depthwise_nchw_kernels", "depthwise_nchw_kernel_grads"}
TINY = 1e-30
RULE_SPEEDUP = 1.1  # csrc/fastconv/conv2d_rules.h: kRuleSpeedup


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


class Layer2d:
    """A conv2d layer with a bias (float32, or for depthwise layers bfloat16), of a class some
    default rules cover: depthwise when ``out`` is None, else a dense one of ``out`` channels;
    'same' padding."""

    def __init__(self, batch, channels, size, kernel, stride=1, out=None, channels_last=False,
                 dtype=torch.float32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, channels, size, size, generator=g).to(dtype)
        self.groups = channels if out is None else 1
        self.w = torch.randn(out or channels, channels // self.groups, kernel, kernel, generator=g).to(dtype)
        self.b = torch.randn(out or channels, generator=g).to(dtype)
        self.dtype = dtype
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.args = dict(stride=stride, padding=kernel // 2, groups=self.groups)
        self.pixels = ((size + 2 * (kernel // 2) - kernel) // stride + 1) ** 2
        self.channels_last, self.stride, self.taps = channels_last, stride, kernel * kernel
        self.forward_rules, self.gradient_rules = self._rules()

    def _rules(self):
        """The rules for this layer's forward and for its gradients (csrc/fastconv/path.cpp): for
        each, the rules to judge together (the first forward rule moves the forward to fastconv,
        a second one chooses which of its paths)."""
        if self.groups == 1:
            return ["pointwise_forward"], ["pointwise_input", "pointwise_weight"]
        forward = []
        gradients = ["depthwise_input", "depthwise_weight"]
        if self.channels_last and self.stride > 1:
            forward = ["depthwise_strided"]
        elif self.channels_last and 100 <= self.taps < 400:
            forward = ["depthwise_large"]
        elif not self.channels_last and self.stride == 1:
            forward = ["depthwise_rows", "depthwise_nchw_kernels"]
            gradients += ["depthwise_nchw_kernel_grads"]
        if self.stride > 1 and self.taps <= 9:
            gradients = ["depthwise_small_strided_grads"] + gradients
        if self.dtype == torch.bfloat16:  # bfloat16 layers have tables of their own
            forward = [f"{rule}_bf16" for rule in forward]
            gradients = [f"{rule}_bf16" for rule in gradients]
        return forward, gradients

    def speedup(self, holding: Sequence[str], train: bool, repeats: int) -> float:
        """PyTorch's time over fastconv's for this layer's forward (with ``train``, forward and
        backward) through ``fastconv_ext.conv2d``, with exactly the rules ``holding`` holding:
        the layer as a model runs it, with the call's costs and PyTorch's joint backward where
        both gradients are PyTorch's. Interleaved, medians."""
        saved = ops._conv2d_rules()
        ops._conv2d_rules([f"{rule} 1 1 1 1 1 1 0 {1000 if rule in holding else 0.5}" for rule in RULES])
        try:
            x, w, b = (t.detach().requires_grad_(train) for t in (self.x, self.w, self.b))

            def run(conv):
                with torch.set_grad_enabled(train):
                    y = conv(x, w, b, **self.args)
                    if train:
                        y.backward(torch.ones_like(y))

            return _interleaved(lambda: run(F.conv2d), lambda: run(fastconv_ext.conv2d), repeats)
        finally:
            ops._conv2d_rules(saved)

    def __str__(self):
        n, c, h, w = self.x.shape
        kind = "depthwise" if self.groups > 1 else f"-> {self.w.shape[0]}"
        k = self.w.shape[-1]
        dtype = " bfloat16" if self.dtype == torch.bfloat16 else ""
        return f"{n}x{c}x{h}x{w}{dtype} {kind} {k}x{k} stride {self.stride}" \
               f"{' channels-last' if self.channels_last else ''}"

    def rule_line(self, rule: str, speedup: float) -> str:
        """The line of `rule`'s table (csrc/fastconv/conv2d_rules.h) for this layer."""
        n, c, _, _ = self.x.shape
        return f"{rule} {n} {c} {self.w.shape[0]} {self.pixels} {self.taps} {self.stride} " \
               f"{int(self.channels_last)} {speedup:.4g}"


# A comparison that has run this long stops repeating once its ratio is beyond FAR either way:
# where one side is many times the other (PyTorch's bfloat16 depthwise layers on CPUs without
# AVX512-BF16 run 30-90x fastconv's time, seconds per call), more repeats decide nothing.
BUDGET_SECONDS, FAR = 1.0, 3.0


def _interleaved(reference, candidate, repeats: int) -> float:
    """reference's median time over candidate's, timed in turn after a warm-up (a second
    warm-up round and the later repeats only while within BUDGET_SECONDS or undecided)."""
    start = time.perf_counter()
    for fn in (reference, candidate):
        fn()
    if time.perf_counter() - start < BUDGET_SECONDS:
        reference(), candidate()
    times: Dict[str, List[float]] = {"reference": [], "candidate": []}
    for _ in range(repeats):
        for key, fn in (("reference", reference), ("candidate", candidate)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
        ratio = statistics.median(times["reference"]) / statistics.median(times["candidate"])
        if time.perf_counter() - start > BUDGET_SECONDS and not 1 / FAR < ratio < FAR:
            break
    return ratio


def rule_layers() -> List[Layer2d]:
    """The layers calibration measures the conv2d rules on: MobileNetV2 / EfficientNet / ResNet
    pointwise layers (squeeze-and-excitation ones on one pixel, of one image and of a batch, to
    112x112 maps) and depthwise layers of ConvNeXt, MobileNet, EfficientNet and RepLKNet, in
    both layouts, in float32 and (the bfloat16 rules' tables) bfloat16."""
    squeeze = [(1, 32, 1, 8), (1, 480, 1, 20), (1, 672, 1, 28), (1, 10, 1, 240), (1, 48, 1, 1152), (8, 32, 1, 8),
               (8, 672, 1, 28), (8, 28, 1, 672), (32, 1152, 1, 48), (32, 48, 1, 1152)]
    pointwise = [(1, 576, 7, 160), (1, 160, 7, 960),
                 (1, 960, 7, 320), (1, 64, 14, 384), (1, 672, 14, 112), (1, 112, 14, 672), (1, 32, 28, 16),
                 (1, 96, 28, 24), (1, 144, 28, 32), (1, 16, 56, 96), (1, 24, 56, 144), (1, 32, 112, 16),
                 (1, 16, 112, 96), (2, 256, 14, 256), (2, 256, 28, 256)]
    depthwise = [(1, 96, 56, 7, 1), (1, 192, 28, 7, 1), (1, 384, 14, 7, 1), (1, 768, 7, 7, 1),
                 (1, 32, 112, 3, 1), (1, 144, 56, 3, 1), (1, 192, 28, 3, 1), (1, 384, 16, 3, 1),
                 (1, 960, 9, 3, 1), (1, 480, 14, 3, 1), (1, 576, 14, 3, 1), (1, 480, 14, 5, 1),
                 (1, 96, 112, 3, 2), (1, 144, 56, 3, 2),
                 (1, 240, 28, 3, 2), (1, 144, 56, 5, 2), (1, 240, 28, 5, 2), (1, 672, 14, 5, 2),
                 (1, 128, 28, 13, 1), (1, 64, 56, 11, 1), (1, 256, 14, 17, 1), (1, 128, 56, 31, 1),
                 (1, 256, 28, 29, 1)]
    return [Layer2d(n, c, size, 1, out=out) for n, c, size, out in squeeze] + [
        Layer2d(n, c, size, 1, out=out, channels_last=cl) for n, c, size, out in pointwise for cl in (False, True)] + [
        Layer2d(n, c, size, k, stride=s, channels_last=cl, dtype=dtype)
        for dtype in (torch.float32, torch.bfloat16) for n, c, size, k, s in depthwise for cl in (False, True)]


def _judged(rules: Sequence[str], timed: Dict[tuple, float], out: Dict[str, float]) -> List[str]:
    """Records in `out` each of `rules`' speedup given the speedups `timed` of combinations of them:
    the fastest combination's where the rule is part of it (and it is at least 1.1x faster than
    PyTorch), at most 1 where it is not. Returns the fastest combination (empty: PyTorch's)."""
    best = max(timed, key=timed.get)
    best = best if timed[best] >= RULE_SPEEDUP else ()
    for rule in rules:
        with_rule = max(x for c, x in timed.items() if rule in c)
        out[rule] = timed[best] if rule in best else min(with_rule, 1.0)
    return list(best)


def layer_verdicts(layer: Layer2d, repeats: int) -> Dict[str, float]:
    """Each rule covering `layer`, and the speedup its table records for the layer: the layer's
    speedup where the rule is part of the fastest choice (among the rules that cover it, at least
    1.1x faster than PyTorch), at most 1 where it is not.

    The forward rules are judged on the forward alone (inference): fastconv's forward, and where a
    second rule chooses between its paths, with each of them; the gradient rules on forward and
    backward together, with the forward as judged, over every combination of them (a gradient of
    fastconv's beside one of PyTorch's loses PyTorch's joint backward)."""
    out: Dict[str, float] = {}
    forward = []
    if layer.forward_rules:
        combos = [tuple(layer.forward_rules[:n]) for n in range(1, len(layer.forward_rules) + 1)]
        forward = _judged(layer.forward_rules, {c: layer.speedup(c, False, repeats) for c in combos}, out)
    rules = layer.gradient_rules
    combos = [[r for r, on in zip(rules, bits) if on] for bits in itertools.product((False, True), repeat=len(rules))]
    combos = [c for c in combos if any(r.removesuffix("_bf16") not in PATH_CHOICES for r in c)]
    _judged(rules, {tuple(c): layer.speedup(forward + c, True, repeats) for c in combos}, out)
    return out


def pass_verdicts(layer: Layer2d, passes: List[Dict[str, float]]) -> Dict[str, float]:
    """A layer's verdicts over several passes of layer_verdicts: for each group of its rules judged
    together (its forward rules, its gradient rules), the set of rules that most passes found part
    of the fastest choice (a tie goes to the smaller set: more of PyTorch's kernels; then to the
    faster one, then to the names' order), each with its median speedup over those passes, and
    every other rule's median capped at 1. A median per rule
    alone could hold a combination no pass chose: a gradient of fastconv's beside one of PyTorch's,
    which loses PyTorch's joint backward."""
    out: Dict[str, float] = {}
    for group in (layer.forward_rules, layer.gradient_rules):
        chosen = [frozenset(r for r in group if p[r] >= RULE_SPEEDUP) for p in passes]

        def rank(s):
            speedup = statistics.median(p[min(s)] for p, c in zip(passes, chosen) if c == s) if s else 0.0
            return chosen.count(s), -len(s), speedup, sorted(s)

        best = max(set(chosen), key=rank)
        for rule in group:
            if rule in best:
                out[rule] = statistics.median(p[rule] for p, c in zip(passes, chosen) if c == best)
            else:
                out[rule] = min(statistics.median(p[rule] for p in passes), 1.0)
    return out


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


def calibrate_rules(repeats: int, log=print) -> List[Dict[str, float]]:
    """rule_layers()' verdicts, in order."""
    tuning = ops._autotune(None)
    ops._autotune(False)
    try:
        verdicts = []
        for layer in rule_layers():
            verdicts.append(layer_verdicts(layer, repeats))
            log(f"  conv2d {layer}: " + ", ".join(f"{rule} {x:.2f}x" for rule, x in verdicts[-1].items()))
        return verdicts
    finally:
        ops._autotune(tuning)


def rule_lines(verdicts: List[Dict[str, float]]) -> List[str]:
    """The rules' tables as lines (csrc/fastconv/conv2d_rules.h) for rule_layers()' verdicts."""
    return [layer.rule_line(rule, x) for layer, v in zip(rule_layers(), verdicts) for rule, x in v.items()]


def main(argv=None) -> int:
    """Calibrate and write the profile: ``python -m fastconv_ext.calibrate [--out PATH] [--repeats N]
    [--passes N]``. Each pass fits every constant and judges every rule; the profile keeps each
    constant's median over the passes, and each layer's verdicts as pass_verdicts takes them.
    Returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help=f"profile file (default {default_path()})")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (median)")
    parser.add_argument("--passes", type=int, default=3,
                        help="independent fits; each constant is their median (this machine is noisy)")
    args = parser.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    fits, rule_fits = [], []
    for _ in range(max(1, args.passes)):
        fits.append(calibrate(args.repeats, log=log))
        rule_fits.append(calibrate_rules(args.repeats, log=log))
    values = [statistics.median(column) for column in zip(*fits)]
    rules = rule_lines([pass_verdicts(layer, [f[i] for f in rule_fits]) for i, layer in enumerate(rule_layers())])
    out = Path(args.out) if args.out else default_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# fastconv cost profile: {platform.node()}, {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}"]
    lines += [f"{k} {v:.6g}" for k, v in zip(KEYS, values)]
    lines += ["# conv2d rules: <rule> <batch> <C_in> <C_out> <output pixels> <taps> <stride> <layout> <speedup>"]
    lines += [f"rule {line}" for line in rules]
    out.write_text("\n".join(lines) + "\n")
    ops._cost_profile(values)
    ops._conv2d_rules(rules)
    print("\n".join(lines))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
