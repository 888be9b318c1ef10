"""Property-based tests: random configurations of every operator against PyTorch / scipy.

Valid configurations must match the reference (forward and every gradient); random,
possibly invalid ones must either match or raise a Python exception -- never crash.
CI runs a bounded number of examples; FASTCONV_FUZZ_EXAMPLES=N runs more (see
tools/fuzz_long.sh for the long run).
"""

import os

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv_ext

EXAMPLES = int(os.environ.get("FASTCONV_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float64: (1e-7, 1e-7), torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 5e-2),
       torch.float16: (3e-3, 1e-2)}


def _amax(t):
    return t.abs().max().item() if t.numel() else 0.0


def layout(t, how):
    """The same values in another memory layout: contiguous, strided, or transposed storage."""
    if how == "strided":
        big = torch.zeros(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    if how == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return t


@st.composite
def conv1d_configs(draw):
    groups = draw(st.integers(1, 4))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    k = draw(st.integers(1, 9))
    stride, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.one_of(st.integers(0, 6), st.sampled_from(["same", "valid"])))
    if padding == "same":
        stride = 1
    span = dilation * (k - 1) + 1
    pad_total = 2 * padding if isinstance(padding, int) else (span - 1 if padding == "same" else 0)
    length = draw(st.integers(max(0, span - pad_total), span + 80))
    batch = draw(st.sampled_from([None, 0, 1, 2, 3]))
    return dict(batch=batch, cin=cin, cout=cout, k=k, stride=stride, dilation=dilation, padding=padding,
                groups=groups, length=length, bias=draw(st.booleans()), dtype=draw(st.sampled_from(DTYPES)),
                layout=draw(st.sampled_from(["contiguous", "strided", "transposed"])),
                seed=draw(st.integers(0, 2**31 - 1)))


@FUZZ
@given(conv1d_configs())
def test_conv1d_matches_torch(cfg):
    g = torch.Generator().manual_seed(cfg["seed"])
    shape = (cfg["cin"], cfg["length"]) if cfg["batch"] is None else (cfg["batch"], cfg["cin"], cfg["length"])
    x64 = torch.randn(shape, generator=g, dtype=torch.float64)
    w64 = torch.randn(cfg["cout"], cfg["cin"] // cfg["groups"], cfg["k"], generator=g, dtype=torch.float64)
    b64 = torch.randn(cfg["cout"], generator=g, dtype=torch.float64) if cfg["bias"] else None
    dt = cfg["dtype"]
    x = layout(x64.to(dt), cfg["layout"]).requires_grad_()
    w = layout(w64.to(dt), cfg["layout"]).requires_grad_()
    b = b64.to(dt).requires_grad_() if b64 is not None else None
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])
    y = fastconv_ext.conv1d(x, w, b, **kw)
    # Reference in float64 on the same (rounded) values.
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    br = b.detach().double().requires_grad_() if b is not None else None
    if cfg["length"] == 0:  # F.conv1d rejects empty signals: pad explicitly
        y_ref = F.conv1d(F.pad(xr, [cfg["padding"]] * 2), wr, br, cfg["stride"], 0, cfg["dilation"], cfg["groups"])
    else:
        y_ref = F.conv1d(xr, wr, br, **kw)
    assert y.shape == y_ref.shape and y.dtype == dt
    rtol, atol = TOL[dt]
    scale = (cfg["cin"] // cfg["groups"] * cfg["k"]) ** 0.5
    torch.testing.assert_close(y.double(), y_ref, rtol=rtol, atol=atol * scale)
    gy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    ins = [t for t in (x, w, b) if t is not None]
    refs = [t for t in (xr, wr, br) if t is not None]
    if y.numel() == 0:
        return
    for got, ref in zip(torch.autograd.grad(y, ins, gy.to(dt)), torch.autograd.grad(y_ref, refs, gy)):
        assert got.dtype == dt and got.shape == ref.shape
        torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=atol * (_amax(ref) + 1))


@st.composite
def convolve_configs(draw):
    batch = draw(st.lists(st.integers(1, 3), max_size=3))

    def operand_lead():
        # A suffix of the broadcast shape, some sizes replaced by 1.
        lead = batch[draw(st.integers(0, len(batch))):]
        return [1 if draw(st.booleans()) else size for size in lead]

    lead_a, lead_v = operand_lead(), operand_lead()
    n = draw(st.one_of(st.integers(1, 12), st.integers(13, 300)))
    m = draw(st.one_of(st.integers(1, 12), st.integers(13, 60)))
    return dict(a=lead_a + [n], v=lead_v + [m], mode=draw(st.sampled_from(["full", "same", "valid"])),
                dtype=draw(st.sampled_from(DTYPES)), layout=draw(st.sampled_from(["contiguous", "strided"])),
                seed=draw(st.integers(0, 2**31 - 1)))


@FUZZ
@given(convolve_configs())
def test_convolve_matches_scipy(cfg):
    g = torch.Generator().manual_seed(cfg["seed"])
    dt = cfg["dtype"]
    a = layout(torch.randn(cfg["a"], generator=g, dtype=torch.float64).to(dt), cfg["layout"]).requires_grad_()
    v = layout(torch.randn(cfg["v"], generator=g, dtype=torch.float64).to(dt), cfg["layout"]).requires_grad_()
    out = fastconv_ext.convolve(a, v, cfg["mode"])
    batch = torch.broadcast_shapes(a.shape[:-1], v.shape[:-1])
    a2 = a.detach().double().expand(*batch, a.shape[-1]).reshape(-1, a.shape[-1]).numpy()
    v2 = v.detach().double().expand(*batch, v.shape[-1]).reshape(-1, v.shape[-1]).numpy()
    ref = torch.from_numpy(np.stack([scipy.signal.convolve(x, y, mode=cfg["mode"]) for x, y in zip(a2, v2)]))
    ref = ref.reshape(*batch, ref.shape[-1])
    rtol, atol = TOL[dt]
    scale = min(a.shape[-1], v.shape[-1]) ** 0.5
    assert out.dtype == dt
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol * scale)
    # Gradients against autograd through an explicit float64 formulation.
    ar, vr = a.detach().double().requires_grad_(), v.detach().double().requires_grad_()
    full = _reference_convolve(ar, vr, cfg["mode"])
    gy = torch.randn(full.shape, generator=g, dtype=torch.float64)
    for got, exp in zip(torch.autograd.grad(out, (a, v), gy.to(dt)), torch.autograd.grad(full, (ar, vr), gy)):
        torch.testing.assert_close(got.double(), exp, rtol=rtol, atol=atol * (_amax(exp) + 1) * scale)


def _reference_convolve(a, v, mode):
    """Differentiable float64 reference: unfold of the padded a against the reversed v."""
    n, m = a.shape[-1], v.shape[-1]
    batch = torch.broadcast_shapes(a.shape[:-1], v.shape[:-1])
    a_, v_ = a.expand(*batch, n), v.expand(*batch, m)
    full = (F.pad(a_, (m - 1, m - 1)).unfold(-1, m, 1) * v_.flip(-1).unsqueeze(-2)).sum(-1)
    if mode == "same":
        start = (m - 1) // 2
        return full[..., start:start + n]
    if mode == "valid":
        return full[..., min(n, m) - 1:max(n, m)]
    return full


@FUZZ
@given(st.data())
def test_random_calls_match_or_raise(data):
    """Arbitrary, often invalid, arguments: a result equal to F.conv1d's, or a Python exception."""
    rank = data.draw(st.integers(0, 4))
    x_shape = data.draw(st.lists(st.integers(0, 5), min_size=rank, max_size=rank))
    w_shape = data.draw(st.lists(st.integers(0, 4), min_size=data.draw(st.integers(1, 4)), max_size=4))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.int64, torch.complex64]))
    w_dtype = data.draw(st.sampled_from([dtype, torch.float32]))
    x = torch.ones(x_shape, dtype=dtype)
    w = torch.ones(w_shape, dtype=w_dtype)
    bias = data.draw(st.sampled_from([None, torch.ones(data.draw(st.integers(0, 4)))]))
    kw = dict(stride=data.draw(st.sampled_from([-1, 0, 1, 2, (1,), (1, 1)])),
              padding=data.draw(st.sampled_from([-1, 0, 1, 3, "same", "valid", "bogus", (1, 1)])),
              dilation=data.draw(st.sampled_from([-1, 0, 1, 2, [2]])),
              groups=data.draw(st.integers(-1, 3)))
    try:
        got = fastconv_ext.conv1d(x, w, bias, **kw)
    except (RuntimeError, ValueError):
        return
    expected = F.conv1d(x, w, bias, **kw)  # fastconv accepted it: torch must too, with the same result
    torch.testing.assert_close(got, expected)


@FUZZ
@given(st.data())
def test_random_convolve_calls_raise_cleanly(data):
    a = torch.ones(data.draw(st.lists(st.integers(0, 3), max_size=3)),
                   dtype=data.draw(st.sampled_from([torch.float32, torch.int32, torch.complex64])))
    v = torch.ones(data.draw(st.lists(st.integers(0, 3), max_size=3)),
                   dtype=data.draw(st.sampled_from([torch.float32, torch.float64])))
    mode = data.draw(st.sampled_from(["full", "same", "valid", "nope"]))
    try:
        out = fastconv_ext.convolve(a, v, mode)
    except RuntimeError:
        return
    assert out.shape[:-1] == torch.broadcast_shapes(a.shape[:-1], v.shape[:-1])
