"""fastconv.conv2d against torch.nn.functional.conv2d: forward, every gradient, and the
operator inside the PyTorch stack (opcheck, torch.compile, TorchScript, nn.Conv2d drop-in)."""

import random
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from torch import nn

import fastconv_ext
from conftest import roundtrip

ops = torch.ops.fastconv


@dataclass
class Conv2dCase:
    batch: Optional[int]  # None: unbatched (C, H, W)
    in_channels: int
    out_channels: int
    size: Tuple[int, int]
    kernel: Tuple[int, int]
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = True

    def tensors(self, dtype=torch.float64, device="cpu", requires_grad=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        shape = (self.in_channels, *self.size)
        if self.batch is not None:
            shape = (self.batch,) + shape
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        w = torch.randn(self.out_channels, self.in_channels // self.groups, *self.kernel, generator=g,
                        dtype=torch.float64)
        b = torch.randn(self.out_channels, generator=g, dtype=torch.float64) if self.bias else None
        return [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) if t is not None else None
                for t in (x, w, b)]

    def args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def hp(self):
        return list(self.stride), list(self.padding), list(self.dilation), self.groups

    def __str__(self):
        return (f"B{self.batch}-Ci{self.in_channels}-Co{self.out_channels}-{self.size[0]}x{self.size[1]}"
                f"-K{self.kernel[0]}x{self.kernel[1]}-s{self.stride}-p{self.padding}-d{self.dilation}"
                f"-g{self.groups}-{'b' if self.bias else 'nb'}").replace(" ", "")


def random_cases(count, seed, large_fraction=0.15, wide=False):
    """wide: 16-40 channels per group at stride 1, the CPU's shifted-GEMM path
    (forward, and grad_input as a convolution)."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        groups = rng.choice([1, 1, 1, 2, 3])
        if wide:
            cin, cout = groups * rng.randint(16, 40), groups * rng.randint(12, 40)
        elif rng.random() < 0.15:  # depthwise
            cin = cout = groups = rng.randint(1, 4)
        else:
            cin, cout = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
        kernel = (rng.choice([1, 2, 3, 5]), rng.choice([1, 2, 3, 4]))
        stride = (1, 1) if wide else (rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2]))
        dilation = (rng.choice([1, 1, 2]), rng.choice([1, 1, 3]))
        padding = (rng.randint(0, 2), rng.randint(0, 3))
        big = rng.random() < large_fraction
        size = []
        for i in range(2):
            span = dilation[i] * (kernel[i] - 1) + 1
            lo = max(1, span - 2 * padding[i])  # F.conv2d rejects empty images
            size.append(rng.randint(max(lo, 40), 90) if big else rng.randint(lo, lo + 9))
        batch = rng.choice([None, 1, 2, 3])
        cases.append(Conv2dCase(batch, cin, cout, tuple(size), kernel, stride, padding, dilation, groups,
                                rng.random() < 0.7))
    return cases


def forward_and_grads(fn, case, x, w, b, seed=99):
    y = fn(x, w, b, **case.args())
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y)
    inputs = [t for t in (x, w, b) if t is not None]
    return y, torch.autograd.grad(y, inputs, gy)


@pytest.mark.parametrize("case", random_cases(120, seed=2024) + random_cases(40, seed=7, wide=True), ids=str)
def test_random_float64_matches_torch(case, device):
    x, w, b = case.tensors(device=device, requires_grad=True)
    y, grads = forward_and_grads(fastconv_ext.conv2d, case, x, w, b)
    y_ref, grads_ref = forward_and_grads(F.conv2d, case, x, w, b)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref)
    for name, g, g_ref in zip(("input", "weight", "bias"), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, msg=lambda m: f"grad {name}: {m}")


TOL = {
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "case", random_cases(16, seed=31, large_fraction=0.4) + random_cases(8, seed=5, wide=True), ids=str)
def test_low_precision_matches_float64_reference(case, dtype, device):
    x, w, b = case.tensors(dtype=dtype, device=device, requires_grad=True)
    y, grads = forward_and_grads(fastconv_ext.conv2d, case, x, w, b)
    assert y.dtype == dtype
    ref = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b)]
    y_ref, grads_ref = forward_and_grads(F.conv2d, case, *ref)
    tol = TOL[dtype]
    reduce_len = case.in_channels // case.groups * case.kernel[0] * case.kernel[1]
    torch.testing.assert_close(y.double(), y_ref, rtol=tol["rtol"], atol=tol["atol"] * reduce_len**0.5)
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == dtype
        scale = g_ref.abs().max().item() + 1.0
        torch.testing.assert_close(g.double(), g_ref, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("case", [
    Conv2dCase(2, 32, 24, (9, 8), (3, 3), stride=(2, 2), padding=(1, 1)),  # output padding 0 and 1
    Conv2dCase(None, 16, 16, (11, 10), (3, 2), stride=(2, 3), padding=(1, 0), dilation=(2, 1)),
    Conv2dCase(2, 32, 32, (12, 13), (3, 3), padding=(1, 1), groups=32),  # depthwise
    Conv2dCase(2, 32, 32, (12, 12), (3, 3), stride=(2, 2), padding=(1, 1), groups=32, bias=False),
    Conv2dCase(2, 32, 32, (12, 12), (3, 3), padding=(1, 1), groups=2),  # 16 channels per group
    Conv2dCase(2, 32, 32, (12, 12), (3, 3), stride=(2, 2), padding=(1, 1), groups=8),  # 4 per group
    Conv2dCase(2, 16, 32, (10, 10), (3, 3), padding=(1, 1), groups=16),  # depthwise multiplier
    Conv2dCase(2, 32, 16, (9, 9), (1, 1), stride=(2, 2)),
], ids=str)
def test_bfloat16_layers_oneDNN_takes(case):
    """bfloat16 layers that go to oneDNN on CPUs with bfloat16 dot products (and the ones that
    do not): forward and gradients against float64, grad_input at every output padding."""
    x, w, b = case.tensors(dtype=torch.bfloat16, requires_grad=True)
    y, grads = forward_and_grads(fastconv_ext.conv2d, case, x, w, b)
    y_ref, grads_ref = forward_and_grads(F.conv2d, case, *(t.detach().double().requires_grad_() if t is not None
                                                            else None for t in (x, w, b)))
    for got, ref in zip((y, *grads), (y_ref, *grads_ref)):
        assert got.dtype == torch.bfloat16 and got.shape == ref.shape
        torch.testing.assert_close(got.double(), ref, rtol=1.6e-2, atol=2e-2 * (ref.abs().max().item() + 1))


@pytest.mark.parametrize(
    "case",
    [
        Conv2dCase(2, 4, 6, (7, 6), (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
        Conv2dCase(None, 3, 2, (5, 5), (2, 2), padding=(1, 1)),
        Conv2dCase(1, 3, 3, (6, 5), (3, 3), stride=(3, 2), groups=3, bias=False),
        Conv2dCase(2, 4, 6, (5, 7), (1, 1), groups=2),  # pointwise: its own paths
    ],
    ids=str,
)
def test_gradcheck_and_gradgradcheck(case, device):
    x, w, b = case.tensors(device=device, requires_grad=True)

    def f(x, w, b):
        return fastconv_ext.conv2d(x, w, b, **case.args())

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("op_name", ["conv2d_input_backward", "conv2d_weight_backward"])
def test_backward_ops_gradgradcheck(op_name, device):
    case = Conv2dCase(2, 4, 2, (6, 7), (2, 3), stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2)
    x, w, _ = case.tensors(device=device, requires_grad=True)
    gy = F.conv2d(x.detach(), w.detach(), **case.args()).requires_grad_()
    if op_name == "conv2d_input_backward":
        def f(gy, w):
            return ops.conv2d_input_backward(gy, w, list(case.size), *case.hp())
        inputs = (gy, w)
    else:
        def f(gy, x):
            return ops.conv2d_weight_backward(gy, x, list(case.kernel), *case.hp())
        inputs = (gy, x)
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


OPCHECK_CASES = [
    Conv2dCase(2, 4, 6, (9, 8), (3, 3), stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2),
    Conv2dCase(None, 3, 5, (6, 7), (2, 3), padding=(1, 1)),
    Conv2dCase(0, 2, 2, (5, 5), (3, 3)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_opcheck_all_ops(case, dtype, device):
    x, w, b = case.tensors(dtype=dtype, device=device, requires_grad=True)
    torch.library.opcheck(ops.conv2d.default, (x, w, b, *case.hp()))
    gy = F.conv2d(x.detach(), w.detach(), None, **case.args()).requires_grad_()
    torch.library.opcheck(ops.conv2d_input_backward.default, (gy, w, list(case.size), *case.hp()))
    torch.library.opcheck(ops.conv2d_weight_backward.default, (gy, x, list(case.kernel), *case.hp()))


def test_opinfo_sample_inputs(device):
    from torch.testing._internal.common_methods_invocations import op_db

    (op,) = [o for o in op_db if o.name == "nn.functional.conv2d"]
    samples = list(op.sample_inputs(device, torch.float64, requires_grad=True))
    assert samples
    for sample in samples:
        args = (sample.input,) + tuple(sample.args)
        y = fastconv_ext.conv2d(*args, **sample.kwargs)
        y_ref = F.conv2d(*args, **sample.kwargs)
        torch.testing.assert_close(y, y_ref)
        inputs = [t for t in args if isinstance(t, torch.Tensor) and t.requires_grad]
        gy = torch.randn_like(y_ref)
        for g, g_ref in zip(torch.autograd.grad(y, inputs, gy), torch.autograd.grad(y_ref, inputs, gy)):
            torch.testing.assert_close(g, g_ref)
    errors = list(op.error_inputs(device))
    for err in errors:
        s = err.sample_input
        with pytest.raises((RuntimeError, ValueError)):
            fastconv_ext.conv2d(s.input, *s.args, **s.kwargs)


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "expanded_weight"])
def test_non_contiguous_inputs(layout, device):
    case = Conv2dCase(2, 4, 6, (11, 9), (3, 3), padding=(1, 1), groups=2)
    x, w, b = case.tensors(device=device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.randn(2, 4, 22, 19, dtype=torch.float64, device=device)[:, :, ::2, 1::2]
    else:
        w = w[:1].expand_as(w)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    y, grads = forward_and_grads(fastconv_ext.conv2d, case, x, w, b)
    y_ref, grads_ref = forward_and_grads(F.conv2d, case, x, w, b)
    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("batched", [True, False])
def test_empty_batch_and_zero_size_input(batched, device):
    if batched:
        case = Conv2dCase(0, 3, 4, (8, 8), (3, 3))
    else:  # a zero-size image with enough padding still has outputs
        case = Conv2dCase(None, 3, 4, (0, 0), (1, 1), padding=(1, 2))
    x, w, b = case.tensors(device=device, requires_grad=True)
    y, grads = forward_and_grads(fastconv_ext.conv2d, case, x, w, b)

    def reference(x, w, b, padding, **kwargs):  # F.conv2d rejects empty images: pad first
        return F.conv2d(F.pad(x, [padding[1], padding[1], padding[0], padding[0]]), w, b, **kwargs)

    y_ref, grads_ref = forward_and_grads(reference, case, x, w, b)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("padding,kernel,dilation", [("same", (3, 4), (1, 2)), ("same", (2, 5), (3, 1)),
                                                     ("valid", (3, 2), (2, 1))])
def test_string_padding(padding, kernel, dilation, device):
    x = torch.randn(2, 3, 10, 13, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, *kernel, dtype=torch.float64, device=device, requires_grad=True)
    y = fastconv_ext.conv2d(x, w, None, 1, padding, dilation)
    y_ref = F.conv2d(x, w, None, 1, padding, dilation)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn_like(y)
    for g, g_ref in zip(torch.autograd.grad(y, (x, w), gy), torch.autograd.grad(y_ref, (x, w), gy)):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("case", [
    Conv2dCase(3, 5, 7, (67, 45), (3, 5), stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
    Conv2dCase(3, 40, 36, (45, 38), (3, 3), padding=(1, 1), dilation=(2, 1)),  # shifted GEMM
    Conv2dCase(2, 64, 48, (29, 31), (5, 3), padding=(0, 2), groups=2),  # shifted GEMM
], ids=str)
def test_large_image_tiles_cross_samples_and_threads(case):
    """Tiles span several samples and threads; results match and do not depend on the thread count."""
    x, w, b = case.tensors(dtype=torch.float32, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, threads):
            torch.set_num_threads(n)
            results.append(forward_and_grads(fastconv_ext.conv2d, case, x, w, b))
    finally:
        torch.set_num_threads(threads)
    # float32 sums of up to thousands of terms, against float64.
    y_ref, grads_ref = forward_and_grads(F.conv2d, case, *(t.detach().double().requires_grad_() for t in (x, w, b)))
    for y, grads in results:
        for got, ref in zip((y, *grads), (y_ref, *grads_ref)):
            torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # Deterministic run to run at a fixed thread count.
    again = forward_and_grads(fastconv_ext.conv2d, case, x, w, b)
    assert torch.equal(again[0], results[-1][0])
    for g, g_prev in zip(again[1], results[-1][1]):
        assert torch.equal(g, g_prev)


@pytest.mark.parametrize("groups", [1, 2])
def test_pointwise_float32_large(groups, device):
    """1x1 convolutions read the input in place and get grad_input as a convolution."""
    case = Conv2dCase(3, 8, 6, (37, 29), (1, 1), groups=groups)
    x, w, b = case.tensors(dtype=torch.float32, device=device, requires_grad=True)
    y, grads = forward_and_grads(fastconv_ext.conv2d, case, x, w, b)
    # Against float64: F.conv2d in float32 on CUDA may use TF32 (cuDNN's default), ~1e-3 off.
    y_ref, grads_ref = forward_and_grads(F.conv2d, case, *(t.detach().double().requires_grad_() for t in (x, w, b)))
    for got, ref in zip((y, *grads), (y_ref, *grads_ref)):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 24, 7, 5), (9, 40, 1, 1)], ids=["channels_last", "one_pixel"])
def test_pointwise_as_one_matrix(shape, dtype):
    """im2col of a 1x1 layer whose activation is a matrix of pixels by channels (channels-last,
    or one pixel per image) is one GEMM: forward and every gradient against float64, the output
    and grad_input channels-last like F.conv2d's, no copy of the input."""
    x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(16, shape[1], 1, 1).to(dtype).requires_grad_()
    b = torch.randn(16).to(dtype).requires_grad_()
    y = fastconv_ext.conv2d(x, w, b, algorithm="im2col")
    gy = torch.randn(y.shape, dtype=torch.float64).to(dtype).contiguous(memory_format=torch.channels_last)
    grads = torch.autograd.grad(y, (x, w, b), gy)
    ref = [t.detach().double().requires_grad_() for t in (x, w, b)]
    y_ref = F.conv2d(*ref)
    grads_ref = torch.autograd.grad(y_ref, ref, gy.double())
    assert y.is_contiguous(memory_format=torch.channels_last) and grads[0].is_contiguous(
        memory_format=torch.channels_last)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype in (torch.float32, torch.float64) else dict(rtol=1.6e-2, atol=5e-2)
    for got, want in zip((y, *grads), (y_ref, *grads_ref)):
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got.double(), want, **{k: v * (want.abs().max().item() + 1) if k == "atol" else v
                                                         for k, v in tol.items()})
    if dtype == torch.float64:
        f = lambda x, w, b: fastconv_ext.conv2d(x, w, b, algorithm="im2col")  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, w, b)) and torch.autograd.gradgradcheck(f, (x, w, b))
        torch.library.opcheck(ops.conv2d.default, (x, w, b, [1, 1], [0, 0], [1, 1], 1, "im2col"))
        torch.library.opcheck(ops.conv2d_weight_backward.default, (gy, x, [1, 1], [1, 1], [0, 0], [1, 1], 1, "im2col"))


@pytest.mark.parametrize("size", [(520, 1024), (517, 1021)], ids=["aligned", "ragged"])
def test_large_output_streamed_is_correct(size):
    """Forward outputs of 16 MiB and more are written with non-temporal stores where rows are aligned."""
    x = torch.randn(1, 3, *size)
    w = torch.randn(16, 3, 3, 3)
    b = torch.randn(16)
    y = fastconv_ext.conv2d(x, w, b, padding=1)
    assert y.nbytes >= 16 << 20
    torch.testing.assert_close(y, F.conv2d(x, w, b, padding=1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", [
    Conv2dCase(2, 32, 24, (9, 11), (3, 3), padding=(1, 1)),  # shifted GEMM
    Conv2dCase(2, 4, 6, (9, 11), (3, 3), padding=(1, 1)),  # im2col
    Conv2dCase(2, 3, 6, (9, 11), (3, 3), padding=(1, 1)),  # direct rows (27 taps)
    Conv2dCase(2, 3, 3, (9, 11), (3, 3), padding=(1, 1), groups=3),  # depthwise, bands of rows
], ids=str)
def test_non_finite_values_propagate_like_torch(case):
    """Inf and NaN in the input and grad_output land where F.conv2d puts them, in every result."""
    x, w, b = case.tensors()
    x[0, 1, 0, 0] = float("inf")  # a corner: some taps never see it
    x[1, 2, 4, 5] = float("nan")
    x[1, 0, 8, 10] = -float("inf")
    results = []
    for fn in (fastconv_ext.conv2d, F.conv2d):
        xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
        y = fn(xg, wg, bg, **case.args())
        gy = torch.ones_like(y)
        gy[0, 0, 3, 3] = float("inf")
        results.append([y] + list(torch.autograd.grad(y, (xg, wg, bg), gy)))
    for name, got, ref in zip(("output", "input", "weight", "bias"), *results):
        assert torch.equal(got.isnan(), ref.isnan()), name
        assert torch.equal(got.isinf(), ref.isinf()), name
        finite = ref.isfinite()
        torch.testing.assert_close(got[finite], ref[finite])


@pytest.mark.parametrize("case", [
    Conv2dCase(2, 3, 16, (37, 70), (3, 3), padding=(1, 1)),
    Conv2dCase(1, 2, 9, (20, 33), (5, 3), stride=(2, 1), padding=(2, 0), dilation=(1, 2)),
    Conv2dCase(3, 4, 6, (15, 40), (1, 7), padding=(0, 5), groups=2),
    Conv2dCase(None, 1, 17, (8, 300), (3, 3), padding=(4, 4), dilation=(3, 1)),
    # Bands of several output rows (rows under 128 outputs, vertical stride 1):
    Conv2dCase(3, 48, 48, (28, 28), (3, 3), padding=(1, 1), groups=48),  # depthwise, several bands
    Conv2dCase(2, 20, 20, (31, 13), (5, 5), padding=(2, 2), groups=20, bias=False),
    Conv2dCase(2, 6, 9, (33, 17), (3, 2), padding=(2, 0), dilation=(3, 2), groups=3),  # dilated rows
    Conv2dCase(1, 8, 8, (7, 5), (3, 3), padding=(2, 1), groups=8),  # more padding than image
    Conv2dCase(4, 16, 32, (14, 14), (3, 3), padding=(1, 1), groups=16),  # 2 outputs per group
], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_direct_rows_path(case, dtype, threads):
    """Layers with <= 32 taps per group and horizontal stride 1: the conv1d micro-kernels on
    staged rows, forward, weight gradient, and grad_input (a convolution at stride 1); 16-bit
    rows converted as they are staged. On CPUs with bfloat16 dot products most bfloat16 layers
    go to oneDNN instead; not the ones with one input channel to several outputs per group
    (1 -> 17 and 16 -> 32 in 16 groups), which test the bfloat16 direct path there."""
    x, w, b = case.tensors(dtype=dtype, requires_grad=True)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        y, grads = forward_and_grads(fastconv_ext.conv2d, case, x, w, b)
    finally:
        torch.set_num_threads(saved)
    y_ref, grads_ref = forward_and_grads(F.conv2d, case, *(t.detach().double().requires_grad_() if t is not None
                                                            else None for t in (x, w, b)))
    for got, ref in zip((y, *grads), (y_ref, *grads_ref)):
        assert got.dtype == dtype
        scale = ref.abs().max().item()
        tol = {torch.float32: dict(rtol=1e-5, atol=1e-5 * scale), torch.float64: {},
               torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2 * scale),
               torch.float16: dict(rtol=2e-3, atol=1e-3 * scale)}[dtype]
        torch.testing.assert_close(got.double(), ref, **tol)


def test_large_output_on_huge_pages_is_correct():
    """Outputs of 32 MiB and more sit on huge pages: ordinary, resizable tensors."""
    x = torch.randn(1, 3, 730, 730)
    w = torch.randn(16, 3, 3, 3)
    y = fastconv_ext.conv2d(x, w, padding=1)
    assert y.nbytes >= 32 << 20
    torch.testing.assert_close(y, F.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-4)
    y.resize_(10)
    y.add_(1)
    (y + 1).sum()


BAD_CALLS = [
    ("input_rank", lambda: fastconv_ext.conv2d(torch.randn(3, 8), torch.randn(2, 3, 3, 3)),
     r"expected input to be 3-D \(C, H, W\) or 4-D \(N, C, H, W\)"),
    ("weight_rank", lambda: fastconv_ext.conv2d(torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3)),
     r"expected weight to be 4-D \(C_out, C_in / groups, KH, KW\)"),
    ("dtype", lambda: fastconv_ext.conv2d(torch.ones(1, 1, 4, 4, dtype=torch.int32), torch.ones(1, 1, 2, 2)),
     r"input must be float32"),
    ("channels", lambda: fastconv_ext.conv2d(torch.randn(1, 3, 8, 8), torch.randn(2, 2, 3, 3)),
     r"input has 3 channels, but weight"),
    ("groups", lambda: fastconv_ext.conv2d(torch.randn(1, 4, 8, 8), torch.randn(3, 2, 3, 3), groups=2),
     r"out_channels \(3\) must be divisible by groups"),
    ("stride", lambda: fastconv_ext.conv2d(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 3, 3), stride=(1, 0)),
     r"stride must be positive"),
    ("padding", lambda: fastconv_ext.conv2d(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 3, 3), padding=(-1, 0)),
     r"padding must be non-negative"),
    ("kernel_too_big", lambda: fastconv_ext.conv2d(torch.randn(1, 1, 8, 4), torch.randn(1, 1, 3, 5)),
     r"dilated kernel .* must not be longer than the padded input \(W \+ 2 \* padding = 4\)"),
    ("three_strides", lambda: fastconv_ext.conv2d(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 3, 3), stride=(1, 1, 1)),
     r"stride must be an int or a sequence of 2"),
    ("op_one_stride", lambda: ops.conv2d(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 3, 3), None, [1, 1, 1]),
     r"stride must be a single integer or a list of 2 integers"),
    ("same_strided", lambda: fastconv_ext.conv2d(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 3, 3), stride=2,
                                                 padding="same"), r"padding='same' is not supported"),
    ("bias", lambda: fastconv_ext.conv2d(torch.randn(1, 1, 8, 8), torch.randn(2, 1, 3, 3), torch.randn(3)),
     r"expected bias to be 1-D with out_channels = 2"),
    ("input_backward_size", lambda: ops.conv2d_input_backward(torch.randn(1, 2, 6, 6), torch.randn(2, 1, 3, 3),
                                                              [8, 9], [1, 1], [0, 0], [1, 1], 1),
     r"grad_output has size \[6, 6\] but a convolution of an input of size \[8, 9\] gives size \[6, 7\]"),
    ("weight_backward_batch", lambda: ops.conv2d_weight_backward(torch.randn(2, 2, 6, 6), torch.randn(1, 1, 8, 8),
                                                                 [3, 3], [1, 1], [0, 0], [1, 1], 1),
     r"does not match the batch of input"),
    ("weight_backward_kernel", lambda: ops.conv2d_weight_backward(torch.randn(1, 2, 6, 6), torch.randn(1, 1, 8, 8),
                                                                  [3, 0], [1, 1], [0, 0], [1, 1], 1),
     r"kernel size must be positive, but got \[3, 0\]"),
]


@pytest.mark.parametrize("call,pattern", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_calls_raise(call, pattern):
    with pytest.raises((RuntimeError, ValueError), match=pattern):
        call()


def test_bad_call_raises_on_meta_too():
    with pytest.raises(RuntimeError, match=r"input has 3 channels, but weight"):
        ops.conv2d(torch.empty(1, 3, 8, 8, device="meta"), torch.empty(2, 2, 3, 3, device="meta"))


def test_compile_fullgraph_dynamic_forward_backward():
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)

    def f(x, w, b):
        return fastconv_ext.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2).tanh().sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=counter)
    for size in ((12, 10), (17, 23), (30, 9)):
        x = torch.randn(2, 4, *size, requires_grad=True)
        out = compiled(x, w, b)
        grads = torch.autograd.grad(out, (x, w, b))
        out_ref = F.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2).tanh().sum()
        grads_ref = torch.autograd.grad(out_ref, (x, w, b))
        torch.testing.assert_close(out, out_ref)
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref)
    assert counter.frame_count == 1
    torch._dynamo.reset()
    x = torch.randn(2, 4, 14, 15, requires_grad=True)
    out = torch.compile(f, fullgraph=True, dynamic=True)(x, w, b)
    torch.testing.assert_close(out, F.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2).tanh().sum())
    out.backward()


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [0, (2, 1), "same", "valid"])
def test_module_drop_in(padding_mode, padding):
    torch.manual_seed(0)
    kwargs = dict(stride=1, padding=padding, dilation=(2, 1), groups=2, bias=True, padding_mode=padding_mode)
    ref = nn.Conv2d(4, 6, (3, 4), **kwargs).double()
    torch.manual_seed(0)
    m = fastconv_ext.Conv2d(4, 6, (3, 4), **kwargs).double()
    assert isinstance(m, nn.Conv2d)
    torch.testing.assert_close(m.weight, ref.weight)  # same initialisation
    assert m.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2, 4, 11, 12, dtype=torch.float64, requires_grad=True)
    y, y_ref = m(x), ref(x)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, m.weight, m.bias), gy)
    grads_ref = torch.autograd.grad(y_ref, (x, ref.weight, ref.bias), gy)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(m(x[0]), ref(x[0]))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_torchscript_module_and_functional(padding_mode):
    m = fastconv_ext.Conv2d(4, 6, 3, padding=1, groups=2, padding_mode=padding_mode).double()
    scripted = roundtrip(torch.jit.script(m))
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, requires_grad=True)
    y = scripted(x)
    torch.testing.assert_close(y, m(x))
    assert "fastconv::conv2d" in str(scripted.inlined_graph)
    (gx,) = torch.autograd.grad(y.sum(), x)
    (gx_ref,) = torch.autograd.grad(m(x).sum(), x)
    torch.testing.assert_close(gx, gx_ref)

    fn = torch.jit.script(fastconv_ext.conv2d)
    w = torch.randn(3, 4, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(fn(x, w, None, (1, 2), "valid", 1, 1), F.conv2d(x, w, None, (1, 2)))
    torch.testing.assert_close(fn(x, w, None, 1, "same", (2, 1), 1), F.conv2d(x, w, None, 1, "same", (2, 1)))
