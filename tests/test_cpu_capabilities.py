"""The CPU micro-kernels are built per instruction set; every level this CPU supports is tested, and
the levels it lacks are skipped with a reason."""

import os
import platform
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import Conv1dCase, random_cases

import fastconv_ext

ops = torch.ops.fastconv
CAPABILITIES = ops._cpu_capabilities()
# Every level an x86-64 build compiles, best first; a level this CPU lacks is skipped, saying so.
BUILT = ["avx512_bf16", "avx512", "avx2", "default"] if platform.machine() in ("x86_64", "AMD64") else ["default"]
CASES = random_cases(40, seed=2024, long_fraction=0.3)


@pytest.fixture(params=BUILT)
def capability(request):
    if request.param not in CAPABILITIES:
        pytest.skip(f"this CPU cannot run the {request.param} kernels (it supports {', '.join(CAPABILITIES)})")
    previous = ops._cpu_capability()
    assert ops._cpu_capability(request.param) == request.param
    yield request.param
    ops._cpu_capability(previous)


def test_capabilities_listed():
    assert CAPABILITIES[-1] == "default"
    assert [level for level in BUILT if level in CAPABILITIES] == CAPABILITIES
    assert ops._cpu_capability() in CAPABILITIES


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_every_level_matches_torch(capability, dtype):
    tol = {torch.float64: {}, torch.float32: dict(rtol=2e-5, atol=2e-4), torch.bfloat16: dict(rtol=2e-2, atol=5e-2)}[dtype]
    for case in CASES:
        x, w, b = case.tensors(dtype=dtype, requires_grad=True)
        y = fastconv_ext.conv1d(x, w, b, **case.args())
        gy = torch.randn_like(y)
        inputs = [t for t in (x, w, b) if t is not None]
        grads = torch.autograd.grad(y, inputs, gy)
        ref_in = [t.detach().double().requires_grad_() for t in inputs]
        y_ref = F.conv1d(ref_in[0], ref_in[1], ref_in[2] if len(ref_in) > 2 else None, **case.args())
        grads_ref = torch.autograd.grad(y_ref, ref_in, gy.double())
        torch.testing.assert_close(y.double(), y_ref, **tol, msg=lambda m: f"{case} {capability}: {m}")
        for g, g_ref in zip(grads, grads_ref):
            scale = g_ref.abs().max().item() + 1
            t = dict(rtol=tol["rtol"], atol=tol["atol"] * scale) if tol else {}
            torch.testing.assert_close(g.double(), g_ref, **t, msg=lambda m: f"{case} {capability}: {m}")


def test_environment_variable_forces_level(tmp_path):
    code = "import torch, fastconv_ext; print(torch.ops.fastconv._cpu_capability())"
    env = dict(os.environ, FASTCONV_CPU_CAPABILITY="default")
    # Run outside the checkout so the installed package, not the source folder, is imported.
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "default"


def test_unknown_level_is_an_error():
    with pytest.raises(RuntimeError, match=r"unknown CPU capability 'sse9'"):
        ops._cpu_capability("sse9")
    assert ops._cpu_capability() in CAPABILITIES


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_every_level_convolves_every_length_pair(capability, dtype):
    """The row kernels (compile-time lengths, a vector per row, lanes across rows) at every level."""
    gen = torch.Generator().manual_seed(7)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    for n in range(1, 17):
        for m in range(1, 17):
            a = torch.randn(203, n, generator=gen, dtype=dtype)
            v = torch.randn(203, m, generator=gen, dtype=dtype)
            full = F.conv1d(a.double()[None], v.double()[:, None].flip(-1), padding=m - 1, groups=203)[0]
            for mode, ref in (("full", full), ("same", full[:, (m - 1) // 2:(m - 1) // 2 + n]),
                              ("valid", full[:, min(n, m) - 1:max(n, m)])):
                got = fastconv_ext.convolve(a, v, mode)
                torch.testing.assert_close(got.double(), ref, **tol,
                                           msg=lambda msg: f"{capability} {n}x{m} {mode}: {msg}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
# Lengths 181 and 320 take one transform of 200 and 360 points: 101 and 181 frequencies, a
# partial last vector of 5 complex values at 8 per vector (float32, AVX-512).
@pytest.mark.parametrize("channels,groups,kernel,length", [
    (1, 1, 200, 3000), (5, 1, 200, 3000), (16, 1, 200, 3000), (12, 3, 200, 3000), (37, 1, 9, 3000),
    (40, 2, 33, 3000), (6, 1, 41, 181), (9, 3, 61, 320)], ids=str)
def test_every_level_fft_channel_mixing(capability, channels, groups, kernel, length, dtype):
    """The FFT path's per-frequency channel mixing kernel against F.conv1d: blocks of 4 output
    channels and the rest, whole vectors of frequencies and the partial last one."""
    gen = torch.Generator().manual_seed(channels)
    x = torch.randn(2, channels, length, generator=gen, dtype=torch.float64)
    w = torch.randn(channels + 2 * groups, channels // groups, kernel, generator=gen, dtype=torch.float64)
    got = fastconv_ext.conv1d(x.to(dtype), w.to(dtype), padding=7, groups=groups, algorithm="fft")
    tol = {} if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4 * (channels // groups * kernel) ** 0.5)
    torch.testing.assert_close(got.double(), F.conv1d(x, w, padding=7, groups=groups), **tol)


HALF_ROW_CASES = [
    Conv1dCase(3, 8, 8, 700, 4, padding=3, groups=8),  # depthwise: rows staged and written back
    Conv1dCase(40, 1, 1, 85, 16, padding=8),  # packed rows
    Conv1dCase(2, 2, 4, 900, 9, stride=2, padding=4),  # stride phases (not converted as whole rows)
    Conv1dCase(None, 3, 2, 300, 5, padding=2),  # unbatched
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", HALF_ROW_CASES, ids=str)
def test_every_level_16_bit_is_float32_rounded_bit_for_bit(capability, case, dtype, threads):
    """16-bit rows are widened to float and results narrowed by per-ISA loops: the
    results must be the float32 computation on the same values, rounded as torch rounds, to the bit
    (infinities included; NaN in the same places, whatever its payload)."""
    x, w, b = case.tensors(dtype=dtype, requires_grad=True)
    with torch.no_grad():
        x.view(-1)[::97] = float("nan")
        x.view(-1)[5::101] = float("inf")
        x.view(-1)[7::103] = 3e38 if dtype == torch.bfloat16 else 6e4  # near the largest finite value
    wide = [t.detach().float().requires_grad_() for t in (x, w, b)]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # fastconv's kernels at this level (the default rules may choose PyTorch's).
        y = fastconv_ext.conv1d(x, w, b, **case.args(), algorithm="direct")
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
        got = (y,) + torch.autograd.grad(y, (x, w, b), gy)
        y_wide = fastconv_ext.conv1d(*wide, **case.args(), algorithm="direct")
        ref = (y_wide,) + torch.autograd.grad(y_wide, wide, gy.float())
    finally:
        torch.set_num_threads(previous)
    names = ("output", "grad_input", "grad_weight", "grad_bias")
    for name, g, r in zip(names, got, ref):
        r = r.to(dtype)
        assert g.dtype == dtype
        assert torch.equal(g.isnan(), r.isnan())
        # NaN in the input reaches the output and the weight gradient only.
        assert bool(g.isnan().any()) == (name in ("output", "grad_weight")), name
        number = ~g.isnan()
        assert torch.equal(g[number].view(torch.int16), r[number].view(torch.int16))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("K,tie_weight", [(4, False), (1, True)], ids=["K4", "K1-ties"])
def test_every_level_rounds_causal_bfloat16_as_torch(capability, layout, K, tie_weight):
    """The causal kernels' bfloat16 outputs and input gradients are their float32 computation on the same values,
    rounded to nearest even as torch rounds, to the bit: at every level (avx512_bf16 rounds with vcvtneps2bf16,
    the others with integer arithmetic, the contiguous forward on even and odd positions apart). A weight of
    1 + 2^-7 makes many products exact ties between two bfloat16 values. NaN and infinities in x reach the
    same outputs (NaN whatever its payload)."""
    gen = torch.Generator().manual_seed(K)
    B, C, L = 2, 67, 333
    x = torch.randn(B, L, C, generator=gen).transpose(1, 2) if layout == "channels_last" else torch.randn(B, C, L, generator=gen)
    w = torch.full((C, K), 1 + 2 ** -7) if tie_weight else torch.randn(C, K, generator=gen)
    x, w = x.bfloat16(), w.bfloat16()
    x[:, :, 40::97] = float("nan")
    x[:, :, 61::89] = float("inf")
    x[:, :, 75::101] = -float("inf")
    gy = torch.randn(B, C, L, generator=gen).bfloat16()
    got, wide = [], []
    for dtype, out in ((torch.bfloat16, got), (torch.float32, wide)):
        xi = x.to(dtype).requires_grad_()
        y = ops.causal_conv1d(xi, w.to(dtype), None, None, None, None, 1)[0]
        out += [y, torch.autograd.grad(y, xi, gy.to(dtype))[0]]
    if tie_weight:
        ties = (wide[0].view(torch.int32) & 0xFFFF) == 0x8000
        assert ties.sum() > 100  # the case exercises rounding ties
    assert bool(got[0].isnan().any()) and bool(got[0].isinf().any())
    for name, g, r in zip(("output", "grad_x"), got, wide):
        r = r.bfloat16()
        assert torch.equal(g.isnan(), r.isnan()), f"{capability} {name}"
        number = ~g.isnan()
        assert torch.equal(g[number].view(torch.int16), r[number].view(torch.int16)), f"{capability} {name}"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_level_computes_silu_accurately(capability, dtype, layout):
    """The causal kernels' fused SiLU (a polynomial exponential and a reciprocal estimate refined by a Newton
    step) against float64's on values from -100 to 100, zeros, tiny ones and NaN: float32 within 1e-6
    relative, bfloat16 within one rounding of the float64 value."""
    gen = torch.Generator().manual_seed(11)
    values = torch.cat([torch.linspace(-100, 100, 4001, dtype=torch.float64), torch.randn(3000, generator=gen, dtype=torch.float64) * 4,
                        torch.tensor([0.0, -0.0, 1e-30, -1e-30, 87.5, -87.5, 88.5, -88.5, float("nan")], dtype=torch.float64)])
    C = 8
    x = F.pad(values, (0, -values.numel() % C)).view(1, -1, C)  # (1, L, C), every value kept
    x = x.transpose(1, 2) if layout == "channels_last" else x.transpose(1, 2).contiguous()
    x = x.to(dtype)
    y = ops.causal_conv1d(x, torch.ones(C, 1, dtype=dtype), None, None, None, "silu", 1)[0]
    ref = F.silu(x.double())
    assert int(ref.isnan().sum()) == 1
    assert torch.equal(y.isnan(), ref.isnan())
    if dtype == torch.float32:
        torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-35, equal_nan=True)
    else:
        # One bfloat16 step (2^-7 relative) covers a float32 error beside a rounding tie.
        torch.testing.assert_close(y.double(), ref, rtol=2 ** -7, atol=1e-35, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("K,S,T", [(2, 1, 1), (3, 2, 1), (4, 3, 1), (4, 3, 3), (3, 4, 1)])
def test_every_level_decodes_as_the_reference(capability, dtype, K, S, T):
    """causal_conv1d_update at every level, against float64's F.conv1d over the state and the new steps then
    SiLU: the one-step kernel (S = K - 1, T = 1; 83 channels: groups of four vectors, single ones and a partial
    one at every vector width), the general vector loop (a longer state) and the scalar loop (several steps)."""
    gen = torch.Generator().manual_seed(K * 10 + S + T)
    B, C = 3, 83
    x = torch.randn(B, C, T, generator=gen).to(dtype)
    state = torch.randn(B, C, S, generator=gen).to(dtype)
    w = torch.randn(C, K, generator=gen).to(dtype)
    b = torch.randn(C, generator=gen).to(dtype)
    window = torch.cat([state, x], 2).double()
    ref = F.silu(F.conv1d(window, w.double().unsqueeze(1), b.double(), groups=C)[:, :, -T:])
    y = ops.causal_conv1d_update(x if T > 1 else x[:, :, 0], state, w, b, "silu", None, None)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2 ** -7, atol=2 ** -7)
    torch.testing.assert_close(y.reshape(B, C, T).double(), ref, **tol, msg=lambda m: f"{capability}: {m}")
    assert torch.equal(state, window[:, :, -S:].to(dtype)), capability


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_every_level_rounds_depthwise2d_bfloat16_as_torch(capability, channels_last):
    """The depthwise conv2d kernels' bfloat16 output: their float32 computation on the same values, rounded as
    torch rounds, to the bit, at every level."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 17, 19, generator=gen).bfloat16()
    w = torch.randn(40, 1, 5, 3, generator=gen).bfloat16()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = dict(stride=(2, 1), padding=(2, 1), groups=40, algorithm="depthwise")
    got = fastconv_ext.conv2d(x, w, **args)
    want = fastconv_ext.conv2d(x.float(), w.float(), **args).bfloat16()
    assert torch.equal(got.view(torch.int16), want.view(torch.int16)), capability


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("size, kernel, padding", [
    ((40, 45), (7, 7), (3, 3)),  # in place: rows of 7 taps slide over blocks of pixels, border columns one tap each
    ((9, 30), (5, 13), (2, 6)),  # a row of 13 taps in chunks of 7 and 6
    ((7, 7), (7, 7), (3, 3)),  # staged: every column a border column
    ((21, 18), (3, 3), (1, 1)),  # rows of 3 taps: the tap blocks
])
def test_every_level_sums_depthwise2d_weight_gradients_as_the_reference(capability, dtype, size, kernel, padding):
    """The channels-last depthwise weight gradient at every level against a float64 reference, with 43 channels
    (whole vectors and a partial one at every width) and the geometries that reach each of its loops."""
    gen = torch.Generator().manual_seed(4)
    C = 43
    x = torch.randn(2, C, *size, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(C, 1, *kernel, generator=gen, dtype=torch.float64)
    y = torch.nn.functional.conv2d(x.double(), w, padding=padding, groups=C)
    gy = torch.randn(y.shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    got = ops.conv2d_weight_backward(gy, x, list(kernel), [1, 1], list(padding), [1, 1], C, "depthwise")
    want = torch.nn.grad.conv2d_weight(x.double(), w.shape, gy.double(), padding=padding, groups=C)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=0.5)
    torch.testing.assert_close(got.double(), want, **tol, msg=lambda m: f"{capability}: {m}")
