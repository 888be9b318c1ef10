"""fastconv.convolve against scipy.signal.convolve, row by row; broadcasting, gradients, integration."""

import io
import itertools

import numpy as np
import pytest
import scipy.signal
import torch
import torch._dynamo.testing

import fastconv_ext

ops = torch.ops.fastconv
MODES = ["full", "same", "valid"]


def scipy_rows(a, v, mode):
    """Reference: scipy.signal.convolve on every broadcast pair of rows, in float64."""
    batch = torch.broadcast_shapes(a.shape[:-1], v.shape[:-1])
    a2 = a.detach().double().cpu().expand(*batch, a.shape[-1]).reshape(-1, a.shape[-1]).numpy()
    v2 = v.detach().double().cpu().expand(*batch, v.shape[-1]).reshape(-1, v.shape[-1]).numpy()
    rows = [scipy.signal.convolve(x, y, mode=mode) for x, y in zip(a2, v2)]
    length = len(scipy.signal.convolve(a2[0] if len(a2) else np.ones(a.shape[-1]),
                                       v2[0] if len(v2) else np.ones(v.shape[-1]), mode=mode))
    return torch.from_numpy(np.array(rows).reshape(*batch, length))


@pytest.mark.parametrize("mode", MODES)
def test_every_length_pair_matches_scipy(mode, device):
    gen = torch.Generator().manual_seed(0)
    for n, m in itertools.product(range(1, 13), repeat=2):
        a = torch.randn(37, n, generator=gen, dtype=torch.float64).to(device)
        v = torch.randn(37, m, generator=gen, dtype=torch.float64).to(device)
        out = fastconv_ext.convolve(a, v, mode)
        torch.testing.assert_close(out.cpu(), scipy_rows(a, v, mode), msg=lambda msg: f"n={n} m={m}: {msg}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n,m", [(100, 7), (7, 100), (1000, 300), (17, 16), (16, 17), (4097, 33), (40, 40)])
def test_long_rows_match_scipy(n, m, mode, device):
    gen = torch.Generator().manual_seed(n * 1000 + m)
    a = torch.randn(3, n, generator=gen, dtype=torch.float64).to(device)
    v = torch.randn(3, m, generator=gen, dtype=torch.float64).to(device)
    torch.testing.assert_close(fastconv_ext.convolve(a, v, mode).cpu(), scipy_rows(a, v, mode))


@pytest.mark.parametrize("n,m", [(2, 2), (5, 4), (9, 3), (7, 7)])
def test_many_short_rows_split_across_threads(n, m):
    # Enough rows that even 2 x 2 pairs are cut into chunks for several threads:
    # every chunk must give the rows scipy gives, whatever the thread count.
    gen = torch.Generator().manual_seed(n * 10 + m)
    a = torch.randn(20011, n, generator=gen, dtype=torch.float64)
    v = torch.randn(20011, m, generator=gen, dtype=torch.float64)
    refs = {mode: scipy_rows(a, v, mode) for mode in MODES}
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            for mode, ref in refs.items():
                torch.testing.assert_close(fastconv_ext.convolve(a, v, mode), ref)
                torch.testing.assert_close(fastconv_ext.convolve(a.float(), v.float(), mode).double(), ref,
                                           rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


def columns_reference(a, v, mode):
    """Row-wise convolution in float64 by columns (fast for many short rows)."""
    a, v = a.double(), v.double()
    n, m = a.shape[-1], v.shape[-1]
    full = torch.zeros(*torch.broadcast_shapes(a.shape[:-1], v.shape[:-1]), n + m - 1, dtype=torch.float64)
    for k in range(m):
        full[..., k:k + n] += v[..., k:k + 1] * a
    if mode == "full":
        return full
    length = n if mode == "same" else max(n, m) - min(n, m) + 1
    start = (m - 1) // 2 if mode == "same" else min(n, m) - 1
    return full[..., start:start + length]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n,m,shared_v", [(2, 2, False), (7, 7, False), (9, 9, False), (6, 3, True), (9, 1, False)])
def test_large_outputs_streamed_past_the_caches(n, m, shared_v, dtype):
    # Outputs of 16 MiB or more leave the row-vector kernel (7x7, 6x3) and the scaled copy
    # (9x1) through non-temporal stores, 16-row windows at a time; the other kernels write them
    # directly. 3 threads start their chunks of rows inside a window.
    rows = (16 << 20) // (n * dtype.itemsize) + 1001
    gen = torch.Generator().manual_seed(n * 10 + m)
    a = torch.randn(rows, n, generator=gen, dtype=dtype)
    v = torch.randn(1 if shared_v else rows, m, generator=gen, dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    threads = torch.get_num_threads()
    try:
        for count in (threads, 3):
            torch.set_num_threads(count)
            for mode in MODES:
                out = fastconv_ext.convolve(a, v, mode)
                assert out.nbytes >= 16 << 20 or mode == "valid"
                torch.testing.assert_close(out.double(), columns_reference(a, v, mode), **tol,
                                           msg=lambda e: f"{count} threads, {mode}: {e}")
    finally:
        torch.set_num_threads(threads)


BROADCAST_SHAPES = [
    ((5,), (7,)),
    ((4, 1, 5), (3, 9)),
    ((5,), (2, 3, 7)),
    ((2, 1, 3, 6), (1, 4, 1, 5)),
    ((6, 30), (1, 20)),
    ((9, 4), (3,)),  # one v row for every a row (the contiguous fast path)
    ((9, 4), (1, 3)),
    ((3,), (9, 4)),
    ((0, 4), (3, 0, 5)[1:]),  # zero rows
    # More unmergeable broadcast dimensions than the row walker holds.
    ((2, 1, 2, 1, 2, 1, 2, 1, 3), (1, 2, 1, 2, 1, 2, 1, 2, 4)),
]


@pytest.mark.parametrize("a_shape,v_shape", BROADCAST_SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_broadcasting(a_shape, v_shape, mode, device):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(a_shape, generator=gen, dtype=torch.float64).to(device)
    v = torch.randn(v_shape, generator=gen, dtype=torch.float64).to(device)
    out = fastconv_ext.convolve(a, v, mode)
    torch.testing.assert_close(out.cpu(), scipy_rows(a, v, mode))


def test_strided_and_expanded_inputs(device):
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(6, 20, generator=gen, dtype=torch.float64).to(device)
    a = base[::2, ::3]  # strided in both dimensions
    v = torch.randn(1, 5, generator=gen, dtype=torch.float64).to(device).expand(3, 5)  # stride 0
    for mode in MODES:
        torch.testing.assert_close(fastconv_ext.convolve(a, v, mode).cpu(), scipy_rows(a, v, mode))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)], ids=str)
@pytest.mark.parametrize("n,m", [(5, 9), (9, 9), (64, 3), (3, 200)])
def test_low_precision(dtype, tol, n, m, device):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(50, n, generator=gen).to(device=device, dtype=dtype)
    v = torch.randn(50, m, generator=gen).to(device=device, dtype=dtype)
    for mode in MODES:
        out = fastconv_ext.convolve(a, v, mode)
        assert out.dtype == dtype
        ref = scipy_rows(a, v, mode)
        torch.testing.assert_close(out.double().cpu(), ref, rtol=tol, atol=tol * min(n, m) ** 0.5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("a_shape,v_shape", [((3, 5), (3, 4)), ((2, 6), (3, 1, 4)), ((4,), (2, 9)), ((2, 20), (2, 18))], ids=str)
def test_gradcheck_gradgradcheck(a_shape, v_shape, mode, device):
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(a_shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    v = torch.randn(v_shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    fn = lambda a, v: fastconv_ext.convolve(a, v, mode)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, v))
    assert torch.autograd.gradgradcheck(fn, (a, v))


def test_gradients_match_reference():
    """Against autograd through torch's own grouped conv1d formulation."""
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(8, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(8, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    out = fastconv_ext.convolve(a, v)
    ref = torch.nn.functional.conv1d(a.unsqueeze(0), v.unsqueeze(1).flip(2), padding=4, groups=8)[0]
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for x, y in zip(torch.autograd.grad(out, (a, v), g), torch.autograd.grad(ref, (a, v), g)):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("args", [((3, 5), (3, 4), "full"), ((2, 6), (3, 1, 4), "same"), ((4,), (2, 20), "valid")], ids=str)
def test_opcheck(args, device):
    a_shape, v_shape, mode = args
    a = torch.randn(a_shape, device=device, requires_grad=True)
    v = torch.randn(v_shape, device=device, requires_grad=True)
    torch.library.opcheck(ops.convolve.default, (a, v, mode))
    torch.library.opcheck(ops._convolve_window.default, (a, v, 2, 7))
    torch.library.opcheck(ops._convolve_window.default, (a, v, -3, 30))  # window past both ends


def test_compile_fullgraph_dynamic():
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")

    def f(a, v):
        return fastconv_ext.convolve(a, v, "same").sin().sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=counter)
    for rows, n in [(4, 5), (7, 9), (3, 12)]:
        a = torch.randn(rows, n, requires_grad=True)
        v = torch.randn(rows, 3, requires_grad=True)
        out = compiled(a, v)
        grads = torch.autograd.grad(out, (a, v))
        ref = f(a, v)
        torch.testing.assert_close(out, ref)
        for g, r in zip(grads, torch.autograd.grad(ref, (a, v))):
            torch.testing.assert_close(g, r)
    assert counter.frame_count == 1


def test_torchscript_script_save_load():
    class Model(torch.nn.Module):
        def forward(self, a, v):
            return fastconv_ext.convolve(a, v, "valid")

    scripted = torch.jit.script(Model())
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    a, v = torch.randn(4, 9, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(loaded(a, v), scipy_rows(a, v, "valid"))


def test_every_cpu_level():
    # Each level has its own vector width, so its own choice of row kernel: a vector per row,
    # several rows packed into one vector, or the across-rows loop. 37 rows leave every packing
    # a remainder; a single v row takes the broadcast kernels.
    gen = torch.Generator().manual_seed(3)
    cases = []
    for n, m in itertools.product(range(1, 10), repeat=2):
        a = torch.randn(37, n, generator=gen, dtype=torch.float64)
        for v in (torch.randn(37, m, generator=gen, dtype=torch.float64),
                  torch.randn(1, m, generator=gen, dtype=torch.float64)):
            cases += [(a, v, mode, scipy_rows(a, v, mode)) for mode in MODES]
    previous = ops._cpu_capability()
    try:
        for level in ops._cpu_capabilities():
            ops._cpu_capability(level)
            for a, v, mode, ref in cases:
                msg = lambda e: f"{level} a {tuple(a.shape)} v {tuple(v.shape)} {mode}: {e}"  # noqa: E731
                torch.testing.assert_close(fastconv_ext.convolve(a, v, mode), ref, msg=msg)
                torch.testing.assert_close(fastconv_ext.convolve(a.float(), v.float(), mode).double(), ref,
                                           rtol=1e-5, atol=1e-5, msg=msg)
    finally:
        ops._cpu_capability(previous)


BAD_CALLS = [
    ("unknown_mode", lambda: fastconv_ext.convolve(torch.randn(3), torch.randn(2), "circular"),
     r"mode must be 'full', 'same' or 'valid', but got 'circular'"),
    ("empty_a_rows", lambda: fastconv_ext.convolve(torch.randn(3, 0), torch.randn(3, 2)), r"rows must not be empty"),
    ("empty_v_rows", lambda: fastconv_ext.convolve(torch.randn(3, 4), torch.randn(3, 0)), r"rows must not be empty"),
    ("no_broadcast", lambda: fastconv_ext.convolve(torch.randn(3, 4), torch.randn(2, 4)),
     r"leading dimensions of a \[3, 4\] and v \[2, 4\] must broadcast, but dimension 0 has sizes 3 and 2"),
    ("integer", lambda: fastconv_ext.convolve(torch.ones(3, dtype=torch.int64), torch.ones(2, dtype=torch.int64)),
     r"a must be float32, float64, float16 or bfloat16"),
    ("complex", lambda: fastconv_ext.convolve(torch.ones(3, dtype=torch.complex64), torch.ones(2, dtype=torch.complex64)),
     r"a must be float32, float64, float16 or bfloat16"),
    ("dtype_mismatch", lambda: fastconv_ext.convolve(torch.ones(3), torch.ones(2, dtype=torch.float64)),
     r"v must have the same dtype as a"),
    ("scalar", lambda: fastconv_ext.convolve(torch.tensor(1.0), torch.ones(2)), r"a must have at least 1 dimension"),
    ("negative_window", lambda: ops._convolve_window(torch.ones(3), torch.ones(2), 0, -1), r"length must be non-negative"),
]


@pytest.mark.parametrize("call,pattern", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


def test_large_output_on_huge_pages_is_correct():
    """Outputs of 32 MiB and more sit on huge pages."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(10**6, 5, generator=gen)
    v = torch.randn(10**6, 5, generator=gen)
    out = fastconv_ext.convolve(a, v)
    assert out.nbytes >= 32 << 20
    windows = torch.nn.functional.pad(a.double(), (4, 4)).unfold(-1, 5, 1)
    ref = torch.einsum("ntk,nk->nt", windows, v.double().flip(-1))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)  # float32 against float64
