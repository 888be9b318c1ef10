"""Causal convolution with state: causal_conv1d, causal_conv1d_update, conv1d_stream, padding='causal'
and the modules, against a float64 reference built from F.pad + F.conv1d (+ masking and SiLU)."""

import io
import random

import pytest
import torch
import torch.nn.functional as F

import fastconv_ext

ops = torch.ops.fastconv
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Tolerances against the float64 reference of the same (rounded) inputs.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=2e-2, rtol=2e-2),
    torch.bfloat16: dict(atol=1e-1, rtol=5e-2),
}


def reference(x, w, b=None, state=None, activation=None, seq_idx=None, dilation=1):
    """(y, final_state) in float64: F.pad (or the state) + a depthwise F.conv1d, taps masked by seq_idx."""
    x, w = x.double(), w.double()
    b = None if b is None else b.double()
    B, C, L = x.shape
    K = w.shape[1]
    H = dilation * (K - 1)
    xs = torch.cat([state.double(), x], 2) if state is not None else F.pad(x, (H, 0))
    if seq_idx is None:
        y = F.conv1d(xs, w.unsqueeze(1), b, dilation=dilation, groups=C)
    else:
        seq_full = torch.cat([seq_idx[:, :1].expand(B, H), seq_idx], 1)
        y = torch.zeros(B, C, L, dtype=torch.float64, device=x.device) + (0 if b is None else b.view(1, -1, 1))
        for k in range(K):
            keep = (seq_full[:, k * dilation: k * dilation + L] == seq_idx).unsqueeze(1)
            y = y + w[:, k].view(1, -1, 1) * xs[:, :, k * dilation: k * dilation + L] * keep
    if activation is not None:
        y = F.silu(y)
    return y, xs[:, :, L:]


def make_x(B, C, L, dtype, device, layout, gen):
    """(B, C, L) in the layout: 'contiguous' or 'channels_last' (a transposed (B, L, C) tensor)."""
    if layout == "channels_last":
        return torch.randn(B, L, C, generator=gen, dtype=torch.float64).to(device, dtype).transpose(1, 2)
    return torch.randn(B, C, L, generator=gen, dtype=torch.float64).to(device, dtype)


def random_seq_idx(B, L, gen, device, pieces):
    """(B, L) int32 sequence ids, sorted, with runs of length 1 among them."""
    ids = torch.sort(torch.randint(0, pieces, (B, L), generator=gen), 1).values
    ids[:, 1] = ids[:, 0] + 1  # a sequence of length 1 at position 0
    ids[:, 2:] += 1
    return ids.to(torch.int32).to(device)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 6, 7, 8, 31, 64])
def test_forward_matches_reference(K, dtype, layout, device):
    gen = torch.Generator().manual_seed(K)
    B, C, L = 2, 67, 300
    x = make_x(B, C, L, dtype, device, layout, gen)
    w = torch.randn(C, K, generator=gen, dtype=torch.float64).to(device, dtype)
    b = torch.randn(C, generator=gen, dtype=torch.float64).to(device, dtype)
    s = torch.randn(B, C, K - 1, generator=gen, dtype=torch.float64).to(device, dtype)
    for bias, state, act in [(None, None, None), (b, s, "silu"), (b, None, "silu"), (None, s, None)]:
        y, fs = fastconv_ext.causal_conv1d(x, w, bias, initial_state=state, return_final_state=True, activation=act)
        yr, fr = reference(x, w, bias, state, act)
        assert y.dtype == dtype and y.shape == x.shape and y.stride() == x.stride()
        torch.testing.assert_close(y.double(), yr, **TOL[dtype])
        torch.testing.assert_close(fs.double(), fr, atol=0, rtol=0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("L", [1, 2, 5])
def test_final_state_of_sequences_shorter_than_the_kernel(L, layout, device):
    gen = torch.Generator().manual_seed(L)
    B, C, K = 3, 20, 7
    x = make_x(B, C, L, torch.float64, device, layout, gen)
    w = torch.randn(C, K, generator=gen, dtype=torch.float64).to(device)
    s = torch.randn(B, C, K - 1, generator=gen, dtype=torch.float64).to(device)
    y, fs = fastconv_ext.causal_conv1d(x, w, initial_state=s, return_final_state=True)
    yr, fr = reference(x, w, None, s)
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(fs, fr)
    torch.testing.assert_close(fs[:, :, : K - 1 - L], s[:, :, L:])  # the state's tail comes first


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("K", [2, 4, 9])
def test_seq_idx_never_mixes_sequences(K, dtype, layout, device):
    gen = torch.Generator().manual_seed(K + 100)
    B, C, L = 2, 40, 257
    x = make_x(B, C, L, dtype, device, layout, gen)
    w = torch.randn(C, K, generator=gen, dtype=torch.float64).to(device, dtype)
    b = torch.randn(C, generator=gen, dtype=torch.float64).to(device, dtype)
    s = torch.randn(B, C, K - 1, generator=gen, dtype=torch.float64).to(device, dtype)
    seq = random_seq_idx(B, L, gen, device, pieces=60)
    y = fastconv_ext.causal_conv1d(x, w, b, initial_state=s, activation="silu", seq_idx=seq)
    torch.testing.assert_close(y.double(), reference(x, w, b, s, "silu", seq)[0], **TOL[dtype])
    # Each sequence alone, from zeros (the state belongs to the first one), gives its outputs.
    for row in range(B):
        for sid in seq[row].unique()[1:]:
            cols = (seq[row] == sid).nonzero().flatten()
            alone = fastconv_ext.causal_conv1d(x[row: row + 1, :, cols], w, b, activation="silu")
            torch.testing.assert_close(alone.double(), y[row: row + 1, :, cols].double(), **TOL[dtype])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C", [1024, 1029])
def test_large_outputs_across_stages(C, dtype, layout, device):
    """Outputs of 16 MiB and more (non-temporal stores: aligned rows, and C = 1029's misaligned ones), rows
    longer than a stage, a sequence start in one stage: forward and gradients against the reference."""
    gen = torch.Generator().manual_seed(C)
    B, K = 1, 4
    L = (16 << 20) // (C * torch.tensor([], dtype=dtype).element_size()) + 5
    x = make_x(B, C, L, dtype, device, layout, gen).requires_grad_()
    w = torch.randn(C, K, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
    b = torch.randn(C, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
    seq = torch.zeros(B, L, dtype=torch.int32, device=device)
    seq[:, 3000:] = 1
    y = ops.causal_conv1d(x, w, b, None, seq, "silu", 1)[0]
    assert y.stride() == x.stride()
    gy = torch.randn(B, C, L, generator=gen, dtype=torch.float64).to(device, dtype)
    got = torch.autograd.grad(y, [x, w, b], gy)
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    yr = reference(*leaves, None, "silu", seq)[0]
    torch.testing.assert_close(y.double(), yr, **TOL[dtype])
    want = torch.autograd.grad(yr, leaves, gy.double())
    for name, g, r in zip(["x", "weight", "bias"], got, want):
        scale = 1 + r.abs().max().item() if name != "x" else 1
        torch.testing.assert_close(g.double(), r, atol=TOL[dtype]["atol"] * scale * 3, rtol=TOL[dtype]["rtol"] * 3,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,dilation,with_seq", [(1, 1, False), (4, 1, False), (4, 1, True), (3, 5, False), (31, 1, True)])
def test_gradients_match_reference(K, dilation, with_seq, dtype, layout, device):
    gen = torch.Generator().manual_seed(K * 10 + dilation)
    B, C, L = 2, 37, 200
    H = dilation * (K - 1)
    x = make_x(B, C, L, dtype, device, layout, gen).requires_grad_()
    w = torch.randn(C, K, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
    b = torch.randn(C, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
    s = torch.randn(B, C, H, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
    seq = random_seq_idx(B, L, gen, device, pieces=30) if with_seq else None
    gy = torch.randn(B, C, L, generator=gen, dtype=torch.float64).to(device, dtype)
    gf = torch.randn(B, C, H, generator=gen, dtype=torch.float64).to(device, dtype)
    y, fs = ops.causal_conv1d(x, w, b, s, seq, "silu", dilation)
    got = torch.autograd.grad([y, fs], [x, w, b, s], [gy, gf])
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b, s)]
    yr, fr = reference(*leaves, "silu", seq, dilation)
    want = torch.autograd.grad([yr, fr], leaves, [gy.double(), gf.double()])
    for name, g, r in zip(["x", "weight", "bias", "initial_state"], got, want):
        assert g.dtype == dtype and g.shape == r.shape, name
        scale = 1 + r.abs().max().item() if r.numel() else 1
        tol = TOL[dtype]["atol"] * (scale if name in ("weight", "bias") else 1) * (3 if dtype != torch.float64 else 1)
        torch.testing.assert_close(g.double(), r, atol=tol, rtol=TOL[dtype]["rtol"] * 3, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("K,dilation,L", [(4, 1, 4500), (3, 1100, 5000), (2, 3000, 2100)])
def test_gradients_of_rows_longer_than_a_stage(K, dilation, L, activation, dtype, layout, device):
    """Rows of several stages, and histories longer than a stage (and than the row): grad_x of each stage
    is written once the g it reads is known."""
    gen = torch.Generator().manual_seed(K + dilation + L)
    B, C = 1, 3
    H = dilation * (K - 1)
    x = make_x(B, C, L, dtype, device, layout, gen).requires_grad_()
    w = torch.randn(C, K, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
    b = torch.randn(C, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
    s = torch.randn(B, C, H, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
    gy = torch.randn(B, C, L, generator=gen, dtype=torch.float64).to(device, dtype)
    y = ops.causal_conv1d(x, w, b, s, None, activation, dilation)[0]
    got = torch.autograd.grad(y, [x, w, b, s], gy)
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b, s)]
    want = torch.autograd.grad(reference(*leaves, activation, None, dilation)[0], leaves, gy.double())
    for name, g, r in zip(["x", "weight", "bias", "initial_state"], got, want):
        scale = 1 + r.abs().max().item()
        tol = TOL[dtype]["atol"] * (scale if name in ("weight", "bias") else 1) * (3 if dtype != torch.float64 else 1)
        torch.testing.assert_close(g.double(), r, atol=tol, rtol=TOL[dtype]["rtol"] * 3, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("activation,with_seq,with_state", [(None, False, False), ("silu", True, True),
                                                            ("silu", False, True)])
def test_gradcheck_and_gradgradcheck(activation, with_seq, with_state, layout, device):
    gen = torch.Generator().manual_seed(7)
    B, C, L, K = 2, 3, 9, 3
    x = make_x(B, C, L, torch.float64, device, layout, gen).requires_grad_()
    w = torch.randn(C, K, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(C, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    s = torch.randn(B, C, K - 1, generator=gen, dtype=torch.float64).to(device).requires_grad_() if with_state else None
    seq = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 2, 2], [0, 1, 2, 3, 4, 5, 6, 7, 8]], dtype=torch.int32,
                       device=device) if with_seq else None
    inputs = (x, w, b) + ((s,) if with_state else ())

    def fn(x, w, b, s=None):
        return ops.causal_conv1d(x, w, b, s, seq, activation, 1)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_opcheck_every_operator(device):
    gen = torch.Generator().manual_seed(3)
    B, C, L, K = 2, 5, 11, 4
    x = torch.randn(B, C, L, generator=gen).to(device).requires_grad_()
    w = torch.randn(C, K, generator=gen).to(device).requires_grad_()
    b = torch.randn(C, generator=gen).to(device).requires_grad_()
    s = torch.randn(B, C, K - 1, generator=gen).to(device).requires_grad_()
    seq = torch.tensor([[0] * 5 + [1] * 6, [0] * 11], dtype=torch.int32, device=device)
    torch.library.opcheck(ops.causal_conv1d.default, (x, w, b, s, seq, "silu", 1))
    torch.library.opcheck(ops.causal_conv1d.default, (x.detach().transpose(1, 2).contiguous().transpose(1, 2)
                                                      .requires_grad_(), w, None, None, None, None, 2))
    gy = torch.randn(B, C, L, generator=gen).to(device)
    gf = torch.randn(B, C, K - 1, generator=gen).to(device)
    torch.library.opcheck(ops.causal_conv1d_backward.default,
                          (gy, gf, x.detach(), w.detach(), b.detach(), s.detach(), seq, "silu", 1))
    state = torch.randn(B, C, K - 1, generator=gen).to(device)
    torch.library.opcheck(ops.causal_conv1d_update.default, (x.detach()[:, :, 0], state, w.detach(), b.detach(),
                                                             "silu", None, None))
    dense = torch.randn(6, C, 3, generator=gen).to(device).requires_grad_()
    torch.library.opcheck(ops.conv1d_stream.default, (x, dense, None, torch.randn(B, C, 4).to(device), 2, 1))
    torch.library.opcheck(ops.conv1d_stream.default, (x[:, :, :0], dense, None, s[:, :, :2].clone(), 1, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,S", [(4, 3), (4, 6), (1, 0), (2, 1), (7, 9)])
# 83 channels: groups of four vectors, single vectors and a partial one for
# every vector width.
@pytest.mark.parametrize("C", [33, 83])
def test_update_step_by_step_equals_the_whole_sequence(K, S, C, dtype, device):
    gen = torch.Generator().manual_seed(K * 100 + S)
    B, L = 3, 23
    x = torch.randn(B, C, L, generator=gen, dtype=torch.float64).to(device, dtype)
    w = torch.randn(C, K, generator=gen, dtype=torch.float64).to(device, dtype)
    b = torch.randn(C, generator=gen, dtype=torch.float64).to(device, dtype)
    whole = fastconv_ext.causal_conv1d(x, w, b, activation="silu")
    # Shift register, one step at a time.
    state = torch.zeros(B, C, S, dtype=dtype, device=device)
    steps = [fastconv_ext.causal_conv1d_update(x[:, :, t], state, w, b, "silu") for t in range(L)]
    torch.testing.assert_close(torch.stack(steps, 2).double(), whole.double(), **TOL[dtype])
    if S:
        torch.testing.assert_close(state, x[:, :, L - S:] if S <= L else state)
    # Several steps per call, in the shift register and in a ring buffer.
    for ring in (False, True):
        if ring and S == 0:
            continue
        state = torch.zeros(B, C, S, dtype=dtype, device=device)
        seqlens = torch.zeros(B, dtype=torch.int32, device=device) if ring else None
        outs, t = [], 0
        for T in [1, 3, 2, 5, 1, 11]:
            outs.append(fastconv_ext.causal_conv1d_update(x[:, :, t: t + T], state, w, b, "silu", seqlens))
            t += T
            if ring:
                seqlens += T
        torch.testing.assert_close(torch.cat(outs, 2).double(), whole.double(), **TOL[dtype])


def test_update_ring_buffer_positions_and_index_map(device):
    gen = torch.Generator().manual_seed(11)
    B, C, K, S = 3, 8, 4, 5
    w = torch.randn(C, K, generator=gen, dtype=torch.float64).to(device)
    pool = torch.randn(6, C, S, generator=gen, dtype=torch.float64).to(device)
    before = pool.clone()
    idx = torch.tensor([4, 0, 2], dtype=torch.int32, device=device)
    seqlens = torch.tensor([7, 2, 0], dtype=torch.int32, device=device)
    x = torch.randn(B, C, generator=gen, dtype=torch.float64).to(device)
    y = fastconv_ext.causal_conv1d_update(x, pool, w, None, None, seqlens, idx)
    for row in range(B):
        slot, head = idx[row].item(), seqlens[row].item()
        history = torch.stack([before[slot, :, (head - (K - 1) + k) % S] for k in range(K - 1)], 1)
        want = reference(x[row: row + 1, :, None], w, None, history[None])[0][0, :, 0]
        torch.testing.assert_close(y[row], want)
        expect = before[slot].clone()
        expect[:, head % S] = x[row]
        torch.testing.assert_close(pool[slot], expect)
    for untouched in (1, 3, 5):
        torch.testing.assert_close(pool[untouched], before[untouched], atol=0, rtol=0)


@pytest.mark.parametrize("groups,dilation,K", [(1, 1, 3), (2, 4, 3), (4, 1, 5), (8, 2, 4), (1, 3, 1)])
def test_stream_in_random_chunks_equals_the_whole_signal(groups, dilation, K, device):
    gen = torch.Generator().manual_seed(groups * 10 + dilation)
    rng = random.Random(groups * 10 + dilation)
    B, C, L = 2, 8, 301
    out_channels = C if groups == C else 12
    x = torch.randn(B, C, L, generator=gen, dtype=torch.float64).to(device)
    w = torch.randn(out_channels, C // groups, K, generator=gen, dtype=torch.float64).to(device)
    b = torch.randn(out_channels, generator=gen, dtype=torch.float64).to(device)
    whole = F.conv1d(F.pad(x, (dilation * (K - 1), 0)), w, b, dilation=dilation, groups=groups)
    torch.testing.assert_close(fastconv_ext.conv1d(x, w, b, padding="causal", dilation=dilation, groups=groups), whole)
    state, outs, t = None, [], 0
    while t < L:
        n = rng.choice([0, 1, 1, 2, 5, 17, 64])
        y, state = fastconv_ext.conv1d_stream(x[:, :, t: t + n], w, b, state, dilation, groups)
        assert y.shape == (B, out_channels, min(n, L - t))
        outs.append(y)
        t += n
    torch.testing.assert_close(torch.cat(outs, 2), whole)


@pytest.mark.parametrize("groups", [1, 8], ids=["dense", "depthwise"])
def test_stream_state_survives_refilling_the_input_buffer(groups, device):
    """A real-time caller copies each chunk into one reused buffer: the returned state is the layer's own
    (it aliases no input), for chunks longer than the history (the state from x alone) and shorter."""
    gen = torch.Generator().manual_seed(groups)
    B, C, K, dilation = 2, 8, 3, 4
    x = torch.randn(B, C, 120, generator=gen, dtype=torch.float64).to(device)
    w = torch.randn(C, C // groups, K, generator=gen, dtype=torch.float64).to(device)
    whole = F.conv1d(F.pad(x, (dilation * (K - 1), 0)), w, None, dilation=dilation, groups=groups)
    for n in (20, 5):
        buf = torch.empty(B, C, n, dtype=torch.float64, device=device)
        state, outs = None, []
        for chunk in x.split(n, 2):
            buf.copy_(chunk)
            y, state = fastconv_ext.conv1d_stream(buf, w, None, state, dilation, groups)
            outs.append(y)
        torch.testing.assert_close(torch.cat(outs, 2), whole, msg=lambda m: f"chunks of {n}: {m}")


@pytest.mark.parametrize("groups", [1, 8], ids=["dense", "depthwise"])
@pytest.mark.parametrize("n", [0, 3, 20])
def test_stream_state_aliases_no_input(groups, n, device):
    """The returned state shares no memory with x or the given state, an empty chunk's included (the
    operator's schema returns new tensors; a caller may refill either buffer)."""
    gen = torch.Generator().manual_seed(n + groups)
    B, C, K, dilation = 2, 8, 3, 4
    x = torch.randn(B, C, n, generator=gen, dtype=torch.float64).to(device)
    w = torch.randn(C, C // groups, K, generator=gen, dtype=torch.float64).to(device)
    state = torch.randn(B, C, dilation * (K - 1), generator=gen, dtype=torch.float64).to(device)
    want = torch.cat([state, x], 2)[:, :, -dilation * (K - 1):].clone()
    y, next_state = fastconv_ext.conv1d_stream(x, w, None, state, dilation, groups)
    assert y.shape == (B, C, n)
    for given in (x, state):
        assert next_state.untyped_storage().data_ptr() != given.untyped_storage().data_ptr()
    state.fill_(float("nan"))
    x.fill_(float("nan"))
    torch.testing.assert_close(next_state, want)


def test_stream_gradients_flow_through_the_state(device):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 30, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    for w in (torch.randn(6, 4, 3, generator=gen, dtype=torch.float64).to(device).requires_grad_(),
              torch.randn(4, 1, 3, generator=gen, dtype=torch.float64).to(device).requires_grad_()):
        groups = 4 if w.shape[1] == 1 else 1
        state, outs = None, []
        for chunk in x.split(7, 2):
            y, state = fastconv_ext.conv1d_stream(chunk, w, None, state, 2, groups)
            outs.append(y)
        got = torch.autograd.grad(torch.cat(outs, 2).pow(2).sum(), [x, w])
        whole = F.conv1d(F.pad(x, (4, 0)), w, None, dilation=2, groups=groups)
        want = torch.autograd.grad(whole.pow(2).sum(), [x, w])
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r)


@pytest.mark.parametrize("groups,dilation", [(1, 1), (3, 2), (6, 1), (6, 3)])
def test_conv1d_padding_causal_and_modules(groups, dilation, device):
    gen = torch.Generator().manual_seed(groups + dilation)
    x = torch.randn(2, 6, 50, generator=gen, dtype=torch.float64).to(device)
    layer = fastconv_ext.Conv1d(6, 6, 4, padding="causal", dilation=dilation, groups=groups).to(device, torch.float64)
    assert layer.padding == "causal" and "padding=causal" in repr(layer)
    want = F.conv1d(F.pad(x, (3 * dilation, 0)), layer.weight, layer.bias, dilation=dilation, groups=groups)
    torch.testing.assert_close(layer(x), want)
    torch.testing.assert_close(layer(x[0]), want[0])  # unbatched
    state, outs = None, []
    for chunk in x.split(9, 2):
        y, state = layer.stream(chunk, state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 2), want)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(layer), buf)
    buf.seek(0)
    torch.testing.assert_close(torch.jit.load(buf)(x), want)


def test_causal_conv1d_module_matches_nn_conv1d_and_decodes(device):
    gen = torch.Generator().manual_seed(9)
    C, K = 16, 4
    layer = fastconv_ext.CausalConv1d(C, K, activation="silu").to(device, torch.float64)
    plain = torch.nn.Conv1d(C, C, K, groups=C).to(device, torch.float64)
    plain.load_state_dict(layer.state_dict())  # the same parameters and names
    layer.load_state_dict(plain.state_dict())
    x = torch.randn(3, C, 40, generator=gen, dtype=torch.float64).to(device)
    want = F.silu(plain(F.pad(x, (K - 1, 0))))
    torch.testing.assert_close(layer(x), want)
    torch.testing.assert_close(layer(x.transpose(1, 2).contiguous().transpose(1, 2)), want)
    y1, state = layer.stream(x[:, :, :25])
    y2, _ = layer.stream(x[:, :, 25:], state)
    torch.testing.assert_close(torch.cat([y1, y2], 2), want)
    conv_state = torch.zeros(3, C, K - 1, dtype=torch.float64, device=device)
    with torch.no_grad():
        steps = torch.stack([layer.step(x[:, :, t], conv_state) for t in range(40)], 2)
    torch.testing.assert_close(steps, want)
    torch.testing.assert_close(torch.jit.script(layer)(x), want)
    assert "activation='silu'" in repr(layer)


def test_torch_compile_fullgraph_dynamic(device):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(2)
    C, K = 24, 4
    w = torch.randn(C, K, generator=gen).to(device).requires_grad_()
    b = torch.randn(C, generator=gen).to(device).requires_grad_()

    def block(x, state):
        y, fs = fastconv_ext.causal_conv1d(x, w, b, initial_state=state, return_final_state=True, activation="silu")
        return y * 2, fs

    compiled = torch.compile(block, fullgraph=True, dynamic=True)
    for L in (33, 50, 71):
        x = torch.randn(2, L, C, generator=gen).to(device).transpose(1, 2).requires_grad_()
        s = torch.randn(2, C, K - 1, generator=gen).to(device)
        got, want = compiled(x, s), block(x, s)
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r)
        gx = torch.autograd.grad(got[0].sum(), [x, w])
        rx = torch.autograd.grad(want[0].sum(), [x, w])
        for g, r in zip(gx, rx):
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)

    def decode(x, state):
        return fastconv_ext.causal_conv1d_update(x, state, w.detach(), b.detach(), "silu")

    compiled_decode = torch.compile(decode, fullgraph=True, dynamic=True)
    s1, s2 = torch.zeros(2, C, K - 1, device=device), torch.zeros(2, C, K - 1, device=device)
    for t in range(5):
        x = torch.randn(2, C, generator=gen).to(device)
        torch.testing.assert_close(compiled_decode(x, s1), decode(x, s2))
    torch.testing.assert_close(s1, s2)


def test_torchscript_calls_the_operators(device):
    @torch.jit.script
    def fn(x: torch.Tensor, w: torch.Tensor, state: torch.Tensor):
        y, fs = torch.ops.fastconv.causal_conv1d(x, w, None, None, None, "silu", 1)
        z = torch.ops.fastconv.causal_conv1d_update(x[:, :, -1], state, w, None, "silu", None, None)
        return y, fs, z

    x = torch.randn(2, 5, 9, device=device)
    w = torch.randn(5, 3, device=device)
    state = fastconv_ext.causal_conv1d(x[:, :, :-1], w, return_final_state=True)[1].clone()
    y, fs, z = fn(x, w, state)
    torch.testing.assert_close(y, fastconv_ext.causal_conv1d(x, w, activation="silu"))
    torch.testing.assert_close(z, y[:, :, -1])
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(fastconv_ext.CausalConv1d(5, 3).to(device)), buf)
    buf.seek(0)
    assert torch.jit.load(buf)(x).shape == x.shape


def test_update_function_routes_eager_scripted_and_under_modes(device):
    """causal_conv1d_update calls its operator from C++ in eager mode; under a __torch_function__
    mode it goes through torch.ops, where the mode sees it once; it scripts; arguments of the
    wrong type are named by the operator's parsing, whichever way the call went."""
    from torch.overrides import TorchFunctionMode

    class Counting(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls += func in (ops.causal_conv1d_update, ops.causal_conv1d_update.default)
            return func(*args, **(kwargs or {}))

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, generator=gen).to(device)
    w, b = torch.randn(6, 4, generator=gen).to(device), torch.randn(6, generator=gen).to(device)
    state = torch.randn(2, 6, 3, generator=gen).to(device)
    want = reference(x[:, :, None], w, b, state, "silu")[0][:, :, 0]
    states = [state.clone() for _ in range(3)]
    with Counting() as mode:
        moded = fastconv_ext.causal_conv1d_update(x, states[0], w, b, "silu")
    assert mode.calls == 1
    scripted = torch.jit.script(fastconv_ext.causal_conv1d_update)
    for y, s in ((moded, states[0]), (fastconv_ext.causal_conv1d_update(x, states[1], w, b, "silu"), states[1]),
                 (scripted(x, states[2], w, b, "silu"), states[2])):
        torch.testing.assert_close(y.double(), want, **TOL[torch.float32])
        torch.testing.assert_close(s, torch.cat([state[:, :, 1:], x[:, :, None]], 2), atol=0, rtol=0)
    for args, name in (((x, state, w, None, 1), "activation"), (([1.0], state, w), "argument 'x'"),
                       ((x, state, w, "bias"), "bias")):
        with pytest.raises(RuntimeError, match=name):
            fastconv_ext.causal_conv1d_update(*args)


def test_empty_inputs(device):
    w = torch.randn(4, 3, device=device)
    for shape in [(0, 4, 10), (2, 4, 0)]:
        x = torch.randn(*shape, device=device, requires_grad=True)
        y, fs = fastconv_ext.causal_conv1d(x, w, initial_state=torch.zeros(shape[0], 4, 2, device=device),
                                           return_final_state=True)
        assert y.shape == x.shape and fs.shape == (shape[0], 4, 2)
        y.sum().backward()
        assert x.grad.shape == x.shape
    y, state = fastconv_ext.conv1d_stream(torch.randn(2, 4, 0, device=device), torch.randn(6, 4, 3, device=device))
    assert y.shape == (2, 6, 0) and state.shape == (2, 4, 2)


def test_bad_arguments_name_the_argument(device):
    x = torch.randn(2, 4, 10, device=device)
    w = torch.randn(4, 3, device=device)
    cases = [
        (lambda: fastconv_ext.causal_conv1d(x, w.unsqueeze(1)), "weight must be 2-D"),
        (lambda: fastconv_ext.causal_conv1d(x, torch.randn(5, 3, device=device)), "weight must be 2-D (C, K)"),
        (lambda: fastconv_ext.causal_conv1d(x, w, initial_state=torch.zeros(2, 4, 3, device=device)),
         "initial_state must have shape"),
        (lambda: fastconv_ext.causal_conv1d(x, w, activation="relu"), "activation must be None, 'silu'"),
        (lambda: fastconv_ext.causal_conv1d(x, w, seq_idx=torch.zeros(2, 10, device=device)), "seq_idx must be int32"),
        (lambda: fastconv_ext.causal_conv1d(x, w, seq_idx=torch.zeros(2, 9, dtype=torch.int32, device=device)),
         "seq_idx must have shape (B, L)"),
        (lambda: fastconv_ext.causal_conv1d(x, w, initial_state=torch.zeros(2, 4, 2, dtype=torch.float64,
                                                                           device=device)),
         "initial_state must have the same dtype as x"),
        (lambda: fastconv_ext.causal_conv1d(x, w.double()), "weight must have the same dtype as x"),
        (lambda: fastconv_ext.causal_conv1d_update(x[:, :, 0], torch.zeros(2, 4, 1, device=device), w),
         "conv_state must be (B_state, C, S)"),
        (lambda: fastconv_ext.causal_conv1d_update(x[:, :, 0], torch.zeros(3, 4, 2, device=device), w),
         "conv_state must have x's batch size"),
        (lambda: fastconv_ext.conv1d_stream(x, torch.randn(4, 4, 3, device=device), state=torch.zeros(2, 4, 3,
                                                                                                       device=device)),
         "state must have shape (B, C_in, dilation * (K - 1))"),
        (lambda: fastconv_ext.conv1d(x, torch.randn(4, 4, 3, device=device), padding="causal", stride=2),
         "padding='causal' needs stride 1"),
        (lambda: fastconv_ext.Conv1d(4, 4, 3, padding="causal", stride=2), "padding='causal' needs stride 1"),
        (lambda: fastconv_ext.CausalConv1d(4, 3, activation="gelu"), "activation must be None, 'silu'"),
    ]
    if device == "cpu":
        cases.append((lambda: fastconv_ext.causal_conv1d_update(
            x[:, :, 0], torch.zeros(2, 4, 2), w, conv_state_indices=torch.tensor([0, 2], dtype=torch.int32)),
            "conv_state_indices[1] = 2 is outside [0, 2)"))
    for call, message in cases:
        with pytest.raises((RuntimeError, ValueError)) as info:
            call()
        assert message in str(info.value), str(info.value)
    # Decoding is not differentiable: a backward through it raises, naming the operator.
    y = fastconv_ext.causal_conv1d_update(x[:, :, 0], torch.zeros(2, 4, 2, device=device), w.requires_grad_())
    with pytest.raises(RuntimeError, match="derivative for fastconv::causal_conv1d_update is not implemented"):
        y.sum().backward()


@pytest.mark.parametrize("dtype", DTYPES)
def test_update_index_map_in_every_dtype(dtype, device):
    gen = torch.Generator().manual_seed(13)
    B, C, K = 3, 40, 4
    w = torch.randn(C, K, generator=gen, dtype=torch.float64).to(device, dtype)
    b = torch.randn(C, generator=gen, dtype=torch.float64).to(device, dtype)
    pool = torch.randn(5, C, K - 1, generator=gen, dtype=torch.float64).to(device, dtype)
    before = pool.clone()
    idx = torch.tensor([3, 0, 1], dtype=torch.int32, device=device)
    x = torch.randn(B, C, generator=gen, dtype=torch.float64).to(device, dtype)
    y = fastconv_ext.causal_conv1d_update(x, pool, w, b, "silu", None, idx)
    want = reference(x[:, :, None], w, b, before[idx.long()], "silu")[0][:, :, 0]
    torch.testing.assert_close(y.double(), want, **TOL[dtype])
    shifted = torch.cat([before[idx.long()][:, :, 1:], x[:, :, None]], 2)
    torch.testing.assert_close(pool[idx.long()], shifted, atol=0, rtol=0)
    for untouched in (2, 4):
        torch.testing.assert_close(pool[untouched], before[untouched], atol=0, rtol=0)
