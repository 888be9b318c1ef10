"""fastconv.conv1d against torch.nn.functional.conv1d: forward and every gradient."""

import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import Conv1dCase, random_cases

import fastconv_ext

RANDOM_CASES = random_cases(160, seed=1234)
# Tolerances for low-precision results against a float64 reference of the same inputs.
LOW_PRECISION_TOL = {
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


def forward_and_grads(fn, case, x, w, b, seed=99):
    y = fn(x, w, b, **case.args())
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gy = gy.to(y)
    inputs = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(y, inputs, gy)
    return y, grads


@pytest.mark.parametrize("case", RANDOM_CASES, ids=str)
def test_random_float64_matches_torch(case, device):
    x, w, b = case.tensors(device=device, requires_grad=True)
    y, grads = forward_and_grads(fastconv_ext.conv1d, case, x, w, b)
    y_ref, grads_ref = forward_and_grads(F.conv1d, case, x, w, b)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref)
    for name, g, g_ref in zip(("input", "weight", "bias"), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", random_cases(24, seed=77, long_fraction=0.3), ids=str)
def test_low_precision_matches_float64_reference(case, dtype, device):
    x, w, b = case.tensors(dtype=dtype, device=device, requires_grad=True)
    y, grads = forward_and_grads(fastconv_ext.conv1d, case, x, w, b)
    assert y.dtype == dtype
    ref_inputs = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b)]
    y_ref, grads_ref = forward_and_grads(F.conv1d, case, *ref_inputs)
    tol = LOW_PRECISION_TOL[dtype]
    # Reductions over many terms: scale atol with the reduction length.
    reduce_len = case.in_channels // case.groups * case.kernel_size
    torch.testing.assert_close(y.double(), y_ref, rtol=tol["rtol"], atol=tol["atol"] * reduce_len**0.5)
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == dtype
        scale = g_ref.abs().max().item() + 1.0
        torch.testing.assert_close(g.double(), g_ref, rtol=tol["rtol"], atol=tol["atol"] * scale)


def opinfo_samples():
    from torch.testing._internal.common_methods_invocations import op_db

    (op,) = [o for o in op_db if o.name == "nn.functional.conv1d"]
    return op


def test_opinfo_sample_inputs(device):
    op = opinfo_samples()
    samples = list(op.sample_inputs(device, torch.float64, requires_grad=True))
    assert samples
    for sample in samples:
        args = (sample.input,) + tuple(sample.args)
        y = fastconv_ext.conv1d(*args, **sample.kwargs)
        y_ref = F.conv1d(*args, **sample.kwargs)
        torch.testing.assert_close(y, y_ref)
        inputs = [t for t in args if isinstance(t, torch.Tensor) and t.requires_grad]
        gy = torch.randn_like(y_ref)
        for g, g_ref in zip(torch.autograd.grad(y, inputs, gy), torch.autograd.grad(y_ref, inputs, gy)):
            torch.testing.assert_close(g, g_ref)


def test_opinfo_error_inputs_raise():
    op = opinfo_samples()
    errors = list(op.error_inputs("cpu"))
    assert errors
    for err in errors:
        s = err.sample_input
        with pytest.raises((RuntimeError, ValueError)):
            fastconv_ext.conv1d(s.input, *s.args, **s.kwargs)


@pytest.mark.parametrize(
    "case",
    [
        Conv1dCase(2, 3, 4, 9, 3, stride=2, padding=1, dilation=2),
        Conv1dCase(None, 4, 6, 11, 2, padding=2, groups=2),
        Conv1dCase(3, 4, 4, 10, 3, groups=4, bias=False),
        Conv1dCase(1, 2, 3, 5, 5, padding=2, stride=3),
    ],
    ids=str,
)
def test_gradcheck_and_gradgradcheck(case, device):
    x, w, b = case.tensors(device=device, requires_grad=True)
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def fn(*ts):
        return fastconv_ext.conv1d(ts[0], ts[1], ts[2] if len(ts) > 2 else None, **case.args())

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("op_name", ["conv1d_input_backward", "conv1d_weight_backward",
                                     "conv1d_weight_bias_backward", "conv1d_weight_bias_backward[bias only]"])
def test_backward_ops_gradgradcheck(op_name, device):
    """The backward operators are differentiable themselves (third derivatives too)."""
    case = Conv1dCase(2, 4, 6, 13, 3, stride=2, padding=1, dilation=2, groups=2)
    x, w, _ = case.tensors(device=device)
    y = F.conv1d(x, w, None, **case.args())
    gy = torch.randn_like(y).requires_grad_()
    hp = ([case.stride], [case.padding], [case.dilation], case.groups)
    if op_name == "conv1d_input_backward":
        w.requires_grad_()
        fn = lambda gy, w: torch.ops.fastconv.conv1d_input_backward(gy, w, case.length, *hp)  # noqa: E731
        ref = F.grad.conv1d_input(x.shape, w, gy, case.stride, case.padding, case.dilation, case.groups)
        inputs = (gy, w)
    elif op_name == "conv1d_weight_backward":
        x.requires_grad_()
        fn = lambda gy, x: torch.ops.fastconv.conv1d_weight_backward(gy, x, case.kernel_size, *hp)  # noqa: E731
        ref = F.grad.conv1d_weight(x, w.shape, gy, case.stride, case.padding, case.dilation, case.groups)
        inputs = (gy, x)
    else:
        # (grad_weight, grad_bias); "bias only" leaves grad_weight out of the graph, so its backward
        # sees no gradient for it.
        x.requires_grad_()
        which = slice(1, 2) if "bias only" in op_name else slice(0, 2)
        fn = lambda gy, x: torch.ops.fastconv.conv1d_weight_bias_backward(  # noqa: E731
            gy, x, case.kernel_size, *hp)[which]
        ref = (F.grad.conv1d_weight(x, w.shape, gy, case.stride, case.padding, case.dilation, case.groups),
               gy.sum((0, 2)))[which]
        inputs = (gy, x)
    torch.testing.assert_close(fn(*inputs), ref)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("which", ["input", "weight", "bias", "all"])
def test_non_contiguous_inputs(which, device):
    case = Conv1dCase(3, 4, 6, 40, 3, stride=2, padding=1, groups=2)
    x, w, b = case.tensors(device=device)
    if which in ("input", "all"):
        x = x.transpose(1, 2).contiguous().transpose(1, 2)[:, :, ::2]  # strided along L
        assert not x.is_contiguous()
    if which in ("weight", "all"):
        w = torch.cat([w, w], dim=2)[:, :, ::2]
        assert not w.is_contiguous()
    if which in ("bias", "all"):
        b = torch.stack([b, b], dim=1)[:, 0]
        assert not b.is_contiguous()
    for t in (x, w, b):
        t.requires_grad_()
    y, grads = forward_and_grads(fastconv_ext.conv1d, case, x, w, b)
    y_ref, grads_ref = forward_and_grads(F.conv1d, case, x, w, b)
    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


def test_expanded_grad_output(device):
    """sum().backward() hands the kernels a stride-0 gradient."""
    case = Conv1dCase(2, 3, 4, 30, 5, padding=2)
    x, w, b = case.tensors(device=device, requires_grad=True)
    fastconv_ext.conv1d(x, w, b, **case.args()).sum().backward()
    grads = [t.grad for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    F.conv1d(x, w, b, **case.args()).sum().backward()
    for g, t in zip(grads, (x, w, b)):
        torch.testing.assert_close(g, t.grad)


@pytest.mark.parametrize("batched", [True, False])
def test_zero_batch_and_empty_length(batched, device):
    x = torch.randn(0, 3, 10, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    y = fastconv_ext.conv1d(x, w, b)
    assert y.shape == (0, 4, 8)
    y.sum().backward()
    assert x.grad.shape == x.shape
    torch.testing.assert_close(w.grad, torch.zeros_like(w))
    torch.testing.assert_close(b.grad, torch.zeros_like(b))
    # An empty signal with enough padding is a valid (all-bias) convolution;
    # F.conv1d rejects it, so the reference pads explicitly.
    x = torch.randn((2, 3, 0) if batched else (3, 0), dtype=torch.float64, device=device)
    torch.testing.assert_close(fastconv_ext.conv1d(x, w, b, padding=2), F.conv1d(F.pad(x, [2, 2]), w, b))


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (4, 1), (4, 3), (5, 2), (2, 2)])
def test_string_padding(padding, kernel_size, dilation, device):
    case = Conv1dCase(2, 4, 6, 17, kernel_size, dilation=dilation, groups=2)
    x, w, b = case.tensors(device=device, requires_grad=True)
    y = fastconv_ext.conv1d(x, w, b, padding=padding, dilation=dilation, groups=2)
    y_ref = F.conv1d(x, w, b, padding=padding, dilation=dilation, groups=2)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn_like(y)
    for g, g_ref in zip(torch.autograd.grad(y, (x, w, b), gy), torch.autograd.grad(y_ref, (x, w, b), gy)):
        torch.testing.assert_close(g, g_ref)


def test_argument_forms_match_torch():
    case = Conv1dCase(2, 4, 6, 23, 3)
    x, w, b = case.tensors()
    for kwargs in [dict(stride=(2,)), dict(stride=[2]), dict(padding=(1,)), dict(dilation=[2]), {}]:
        torch.testing.assert_close(fastconv_ext.conv1d(x, w, b, **kwargs), F.conv1d(x, w, b, **kwargs))
    # Positional arguments, as with F.conv1d.
    torch.testing.assert_close(fastconv_ext.conv1d(x, w, b, 2, 1, 2, 1), F.conv1d(x, w, b, 2, 1, 2, 1))


@pytest.mark.parametrize("algorithm", ["direct", "fft"])
def test_result_independent_of_thread_count(algorithm):
    # Each path's result; which path runs may depend on the thread count.
    case = Conv1dCase(4, 8, 8, 3000, 7, padding=3)
    conv = functools.partial(fastconv_ext.conv1d, algorithm=algorithm)
    x, w, b = case.tensors(dtype=torch.float32, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            y, grads = forward_and_grads(conv, case, x, w, b)
            results.append((y, grads))
    finally:
        torch.set_num_threads(threads)
    (y1, g1), (y2, g2) = results
    assert torch.equal(y1, y2)
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "case",
    [
        Conv1dCase(2, 64, 48, 300, 3, padding=1),  # weight gradient through oneDNN (float, bfloat16)
        # bfloat16 forward and grad_input through oneDNN, on CPUs with bfloat16 dot products
        Conv1dCase(4, 64, 64, 1100, 3, padding=1),
        Conv1dCase(2, 40, 36, 500, 15, padding=7),  # 15 taps: the weight gradient stays in fastconv
        Conv1dCase(None, 32, 32, 97, 5, stride=2, padding=2, dilation=2),
        Conv1dCase(3, 64, 64, 50, 3, groups=2, bias=False),
    ],
    ids=str,
)
def test_many_channels(case, dtype, device):
    x, w, b = case.tensors(dtype=dtype, device=device, requires_grad=True)
    y, grads = forward_and_grads(fastconv_ext.conv1d, case, x, w, b)
    ref_inputs = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b)]
    y_ref, grads_ref = forward_and_grads(F.conv1d, case, *ref_inputs)
    tol = LOW_PRECISION_TOL.get(dtype, dict(rtol=1e-7, atol=1e-7))
    reduce_len = case.in_channels // case.groups * case.kernel_size
    torch.testing.assert_close(y.double(), y_ref, rtol=tol["rtol"], atol=tol["atol"] * reduce_len**0.5)
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == dtype and g.shape == g_ref.shape
        scale = g_ref.abs().max().item() + 1.0
        torch.testing.assert_close(g.double(), g_ref, rtol=tol["rtol"], atol=tol["atol"] * scale)


def assert_matches_float64_reference(case, dtype, inputs, y, grads):
    """y and grads (from fastconv) against F.conv1d on the same inputs in float64."""
    ref_inputs = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    y_ref, grads_ref = forward_and_grads(F.conv1d, case, *ref_inputs)
    tol = LOW_PRECISION_TOL.get(dtype, dict(rtol=1e-7, atol=1e-7))
    torch.testing.assert_close(y.double(), y_ref, rtol=tol["rtol"], atol=tol["atol"] * 5)
    for g, g_ref in zip(grads, grads_ref):
        scale = g_ref.abs().max().item() + 1.0
        torch.testing.assert_close(g.double(), g_ref, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("stride,padding", [(2, 0), (2, 1), (2, 7), (3, 2), (4, 9), (5, 0)])
def test_strided_rows_across_tiles(stride, padding, dtype):
    """Stride phases staged tile by tile: edges of the row, padding wider than the kernel, ragged last tiles."""
    case = Conv1dCase(2, 3, 5, 9001, 6, stride=stride, padding=padding, dilation=2)
    x, w, b = case.tensors(dtype=dtype, requires_grad=True)
    y, grads = forward_and_grads(fastconv_ext.conv1d, case, x, w, b)
    assert_matches_float64_reference(case, dtype, (x, w, b), y, grads)


def assert_matches_reference_on_threads(case, dtype, threads):
    """fastconv on `threads` threads against the float64 reference, forward and every gradient."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, w, b = case.tensors(dtype=dtype, requires_grad=True)
        y, grads = forward_and_grads(fastconv_ext.conv1d, case, x, w, b)
    finally:
        torch.set_num_threads(previous)
    assert_matches_float64_reference(case, dtype, (x, w, b), y, grads)


PACKED_ROW_CASES = [
    Conv1dCase(300, 1, 1, 64, 16, padding=8),
    Conv1dCase(97, 1, 1, 23, 5, stride=3, padding=4, dilation=2),
    Conv1dCase(70, 6, 6, 40, 4, padding=3, groups=6),
    Conv1dCase(45, 2, 3, 50, 3, stride=2, padding=1),
    Conv1dCase(64, 4, 2, 33, 7, padding=2, dilation=3, groups=2, bias=False),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", PACKED_ROW_CASES, ids=str)
def test_short_rows_packed_into_tiles(case, dtype, threads):
    """Many short rows of one group share a tile: each sample's edges, the gaps between them, ragged last tiles."""
    assert_matches_reference_on_threads(case, dtype, threads)


ONE_CHANNEL_CASES = [
    Conv1dCase(2, 1, 1, 1000, 31, padding=15),  # long rows: blocks of 8 vectors, then 4, 2, 1
    Conv1dCase(3, 4, 4, 700, 16, padding=8, groups=4),  # depthwise
    Conv1dCase(40, 1, 1, 85, 16, padding=8),  # packed rows 85 + 15 apart: every alignment of a row
    Conv1dCase(30, 1, 1, 90, 9, padding=3, bias=False),  # taps in a block of 8 and a single one
    Conv1dCase(2, 3, 3, 500, 12, dilation=2, padding=5, groups=3),  # taps 2 apart: no window
    Conv1dCase(2, 2, 2, 600, 8, stride=2, padding=3, groups=2),  # stride phases
    Conv1dCase(2, 1, 1, 400, 33),  # a tap past 32
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("case", ONE_CHANNEL_CASES, ids=str)
def test_one_output_channel_taps_at_every_offset(case, dtype, threads):
    """Blocks of one output channel load some taps through windows of aligned vectors (AVX-512):
    rows starting at every offset from a vector boundary, tap blocks of 4 and 8, dilation and stride."""
    assert_matches_reference_on_threads(case, dtype, threads)


WEIGHT_BIAS_CASES = [
    Conv1dCase(3, 2, 4, 300, 9),  # 4-channel row blocks
    Conv1dCase(4, 6, 6, 257, 3, padding=1, groups=6),  # depthwise, taps < 8, a ragged vector tail
    Conv1dCase(2, 8, 5, 90, 7, stride=2, padding=3, dilation=2),  # 56 taps: blocks of 8 after the bias block
    Conv1dCase(300, 1, 1, 64, 16, padding=8),  # packed rows
    Conv1dCase(2, 64, 64, 50, 3, padding=1),  # oneDNN's weight gradient
    Conv1dCase(None, 3, 2, 40, 5, padding=2),  # unbatched
    Conv1dCase(0, 2, 2, 9, 3),  # empty batch: zero gradients
]


@pytest.mark.parametrize("algorithm", ["direct", "fft"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", WEIGHT_BIAS_CASES, ids=str)
def test_weight_bias_backward_matches_float64_reference(case, dtype, algorithm, device):
    """The fused operator's bias gradient is the sum of grad_output, on every path of the weight gradient."""
    x, w, _ = case.tensors(dtype=torch.float64)
    gy = torch.randn(F.conv1d(x, w, None, **case.args()).shape, generator=torch.Generator().manual_seed(5),
                     dtype=torch.float64)
    hp = ([case.stride], [case.padding], [case.dilation], case.groups, algorithm)
    gw, gb = torch.ops.fastconv.conv1d_weight_bias_backward(gy.to(device, dtype), x.to(device, dtype),
                                                            case.kernel_size, *hp)
    assert gw.dtype == gb.dtype == dtype and gb.shape == (case.out_channels,)
    assert gw.device.type == gb.device.type == device
    gy_r, x_r = gy.to(dtype).double(), x.to(dtype).double()
    if case.batch is None:
        gy_r, x_r = gy_r[None], x_r[None]
    gw_ref = F.grad.conv1d_weight(x_r, w.shape, gy_r, case.stride, case.padding, case.dilation, case.groups)
    gb_ref = gy_r.sum((0, 2))
    tol = LOW_PRECISION_TOL.get(dtype, dict(rtol=1e-7, atol=1e-7))
    for got, ref in ((gw, gw_ref), (gb, gb_ref)):
        scale = ref.abs().max().item() + 1.0 if ref.numel() else 1.0
        torch.testing.assert_close(got.cpu().double(), ref, rtol=tol["rtol"], atol=tol["atol"] * scale)


def test_bias_gradient_alone_and_with_the_weight_agree():
    """conv1d's backward takes the fused operator when both gradients are wanted, a sum when only the bias's is."""
    case = Conv1dCase(4, 6, 6, 257, 3, padding=1, groups=6)
    x, w, b = case.tensors(requires_grad=True)
    gy = torch.randn(4, 6, 257, dtype=torch.float64)
    y = fastconv_ext.conv1d(x, w, b, **case.args())
    gw, gb = torch.autograd.grad(y, (w, b), gy)
    (gb_alone,) = torch.autograd.grad(fastconv_ext.conv1d(x, w.detach(), b, **case.args()), (b,), gy)
    torch.testing.assert_close(gb, gy.sum((0, 2)))
    torch.testing.assert_close(gb_alone, gy.sum((0, 2)))
    torch.testing.assert_close(gw, F.grad.conv1d_weight(x, w.shape, gy, padding=1, groups=6))


def test_packed_rows_keep_infinities_to_their_own_taps():
    """An infinity at the first input of a sample reaches only tap 0 of grad_weight, as in F.conv1d:
    rows packed into one tile never multiply another sample's inputs, not even by zero."""
    x = torch.randn(300, 1, 64, dtype=torch.float64)
    x[[37, 150, 299], 0, 0] = float("inf")
    w = torch.randn(1, 1, 5, dtype=torch.float64, requires_grad=True)
    x.requires_grad_()
    y = fastconv_ext.conv1d(x, w)
    y_ref = F.conv1d(x, w)
    torch.testing.assert_close(y, y_ref)
    gy = torch.rand_like(y) + 0.5  # positive: the infinite terms of tap 0 add up to +inf
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, w), gy)
    assert gw[0, 0, 0] == float("inf") and torch.isfinite(gw[0, 0, 1:]).all()
    torch.testing.assert_close(gw, gw_ref)
    torch.testing.assert_close(gx, gx_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_large_output_written_with_streaming_stores(dtype):
    """Outputs of 16 MiB and more with cache-line-aligned rows take the non-temporal store path."""
    case = Conv1dCase(4, 1024 if dtype == torch.float32 else 512, 0, 1024, 3, padding=1)
    case.out_channels, case.groups = case.in_channels, case.in_channels
    x, w, b = case.tensors(dtype=dtype)
    ref = F.conv1d(x, w, b, **case.args())
    previous = torch.ops.fastconv._cpu_capability()
    try:
        for level in torch.ops.fastconv._cpu_capabilities():
            torch.ops.fastconv._cpu_capability(level)
            y = fastconv_ext.conv1d(x, w, b, **case.args())
            assert y.numel() * y.element_size() >= 16 << 20 and y.shape[-1] * y.element_size() % 64 == 0
            torch.testing.assert_close(y, ref, msg=lambda m: f"{level}: {m}")
    finally:
        torch.ops.fastconv._cpu_capability(previous)


def test_large_results_on_huge_pages_are_correct():
    """Forward outputs and grad_input of 32 MiB and more sit on huge pages, 2 MiB-aligned."""
    x = torch.randn(1, 64, 140000, requires_grad=True)
    w = torch.randn(64, 1, 4, requires_grad=True)
    y = fastconv_ext.conv1d(x, w, padding=2, groups=64)
    gy = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    assert y.nbytes >= 32 << 20 and gx.nbytes >= 32 << 20
    assert y.data_ptr() % (2 << 20) == 0 and gx.data_ptr() % (2 << 20) == 0
    y_ref = F.conv1d(x, w, padding=2, groups=64)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, w), gy)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-2)
    y.detach().resize_(10).add_(1)
