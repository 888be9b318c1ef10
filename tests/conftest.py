import contextlib
import io
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch

# The autotuning cache of this test run, never the user's (read at the first tuned call).
os.environ["FASTCONV_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastconv-test-cache-")
# The built-in cost profile and conv2d rule tables, never a profile the user calibrated.
os.environ["FASTCONV_PROFILE"] = os.path.join(os.environ["FASTCONV_CACHE_DIR"], "no-profile.txt")
os.environ.pop("FASTCONV_AUTOTUNE", None)

import fastconv_ext  # noqa: E402,F401  (registers torch.ops.fastconv)


def cuda_kernels_built() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastconv::conv1d", "CUDA")


def _device_params():
    reason = None
    if not torch.cuda.is_available():
        reason = "no CUDA device available"
    elif not cuda_kernels_built():
        reason = "fastconv_ext was built without CUDA kernels"
    cuda = pytest.param("cuda", marks=pytest.mark.skipif(reason is not None, reason=reason or ""))
    return ["cpu", cuda]


DEVICES = _device_params()


@pytest.fixture(params=DEVICES)
def device(request):
    yield request.param
    if request.param == "cuda" and os.environ.get("PYTEST_XDIST_WORKER"):
        # A kernel fault poisons this process's CUDA context, and every later
        # CUDA test here would fail with it: report it on this test and end
        # the worker, so that pytest-xdist goes on in a fresh one.
        try:
            torch.cuda.synchronize()
        except RuntimeError:  # torch.AcceleratorError
            print(f"\nCUDA error after {request.node.nodeid}; ending this worker", file=sys.stderr, flush=True)
            os._exit(3)


@dataclass
class Conv1dCase:
    """One valid conv1d call: shapes and hyper-parameters."""

    batch: Optional[int]  # None: unbatched (C, L) input
    in_channels: int
    out_channels: int
    length: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    kwargs: dict = field(default_factory=dict)

    def tensors(self, dtype=torch.float64, device="cpu", requires_grad=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        shape = (self.in_channels, self.length)
        if self.batch is not None:
            shape = (self.batch,) + shape
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        w = torch.randn(
            self.out_channels, self.in_channels // self.groups, self.kernel_size,
            generator=g, dtype=torch.float64,
        )
        b = torch.randn(self.out_channels, generator=g, dtype=torch.float64) if self.bias else None
        out = []
        for t in (x, w, b):
            if t is not None:
                t = t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
            out.append(t)
        return out

    def args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def __str__(self):
        return (
            f"B{self.batch}-Ci{self.in_channels}-Co{self.out_channels}-L{self.length}-K{self.kernel_size}"
            f"-s{self.stride}-p{self.padding}-d{self.dilation}-g{self.groups}-{'b' if self.bias else 'nb'}"
        )


def random_cases(count: int, seed: int, long_fraction: float = 0.2):
    """Random valid conv1d configurations, some long enough to cross tile boundaries."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        kind = rng.random()
        if kind < 0.2:  # depthwise
            groups = rng.randint(1, 6)
            cin = cout = groups
        else:
            groups = rng.choice([1, 1, 1, 2, 3])
            cin = groups * rng.randint(1, 3)
            cout = groups * rng.randint(1, 3)
        kernel = rng.choice([1, 2, 3, 4, 5, 7, 9, 16])
        stride = rng.choice([1, 1, 1, 2, 3])
        dilation = rng.choice([1, 1, 2, 3])
        padding = rng.randint(0, 5)
        length = rng.randint(1300, 2200) if rng.random() < long_fraction else rng.randint(1, 48)
        span = dilation * (kernel - 1) + 1
        if length + 2 * padding < span:
            length = span - 2 * padding + rng.randint(0, 3)
        length = max(length, 0)
        batch = rng.choice([None, 1, 2, 3])
        cases.append(
            Conv1dCase(batch, cin, cout, length, kernel, stride, padding, dilation, groups, rng.random() < 0.7)
        )
    return cases


def roundtrip(scripted):
    """A scripted module after torch.jit.save and torch.jit.load."""
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    return torch.jit.load(buf)


@contextlib.contextmanager
def conv2d_rules(**tables):
    """The conv2d rules' tables (csrc/fastconv/conv2d_rules.h) with these in place of the named
    rules': a speedup, measured on one layer that then speaks for every layer, or a list of
    (batch, C_in, C_out, output pixels, taps, stride, layout, speedup)."""
    saved = torch.ops.fastconv._conv2d_rules()
    lines = [line for line in saved if line.split()[0] not in tables]
    for rule, table in tables.items():
        rows = [(1, 1, 1, 1, 1, 1, 0, table)] if isinstance(table, (int, float)) else table
        lines += [" ".join(str(v) for v in (rule, *row)) for row in rows]
    torch.ops.fastconv._conv2d_rules(lines)
    try:
        yield
    finally:
        torch.ops.fastconv._conv2d_rules(saved)


@contextlib.contextmanager
def built_in_profile(kind):
    """The built-in cost constants and conv2d rule tables of a CPU kind ("avx512" or "avx2"), in
    place of this CPU's."""
    _, costs, lines = torch.ops.fastconv._built_in_profile(kind)
    saved_costs, saved_lines = torch.ops.fastconv._cost_profile(), torch.ops.fastconv._conv2d_rules()
    torch.ops.fastconv._cost_profile(costs)
    torch.ops.fastconv._conv2d_rules(lines)
    try:
        yield
    finally:
        torch.ops.fastconv._cost_profile(saved_costs)
        torch.ops.fastconv._conv2d_rules(saved_lines)


CPU_KINDS = ["avx512", "avx2"]


# Every depthwise rule holding but the one that gives strided <= 3x3 float gradients to
# fastconv's kernels (its bfloat16 table holds, as measured): tests of each rule's class of
# layers, whatever this machine's profile says.
DEPTHWISE_RULES_HOLD = dict(depthwise_rows=2.0, depthwise_strided=2.0, depthwise_large=2.0, depthwise_input=2.0,
                            depthwise_weight=2.0, depthwise_small_strided_grads=0.5,
                            depthwise_nchw_kernels=0.5, depthwise_nchw_kernel_grads=0.5,
                            depthwise_rows_bf16=2.0, depthwise_strided_bf16=2.0, depthwise_large_bf16=2.0,
                            depthwise_input_bf16=2.0, depthwise_weight_bf16=2.0,
                            depthwise_small_strided_grads_bf16=2.0,
                            depthwise_nchw_kernels_bf16=0.5, depthwise_nchw_kernel_grads_bf16=0.5)


def pytorch_generic_16bit(dtype) -> bool:
    """Whether PyTorch convolves `dtype` on CPU with its generic kernel (no oneDNN for it here):
    then fastconv's default for every 16-bit layer of the dtype is its own path, whatever the
    rules' tables say (docs/path-selection.md, "16-bit layers without oneDNN")."""
    if dtype not in (torch.bfloat16, torch.float16):
        return False
    supported = (torch.ops.mkldnn._is_mkldnn_bf16_supported() if dtype == torch.bfloat16
                 else torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled and supported)
