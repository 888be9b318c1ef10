"""conv1d's FFT algorithm and the automatic, cost-model choice between it and the direct one."""

import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import Conv1dCase, random_cases

import fastconv_ext

ops = torch.ops.fastconv
ALGORITHMS = ["direct", "fft", "auto"]


def forward_and_grads(case, x, w, b, algorithm=None, seed=7):
    if algorithm is None:
        y = F.conv1d(x, w, b, **case.args())
    else:
        y = fastconv_ext.conv1d(x, w, b, **case.args(), algorithm=algorithm)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y)
    inputs = [t for t in (x, w, b) if t is not None]
    return y, torch.autograd.grad(y, inputs, gy)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", random_cases(50, seed=4321), ids=str)
def test_every_algorithm_matches_torch(case, algorithm, device):
    x, w, b = case.tensors(device=device, requires_grad=True)
    y, grads = forward_and_grads(case, x, w, b, algorithm)
    y_ref, grads_ref = forward_and_grads(case, x, w, b)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize(
    "case",
    [
        Conv1dCase(2, 4, 6, 23, 5, stride=3, padding=4, dilation=2, groups=2),
        Conv1dCase(None, 3, 2, 17, 9, padding=2),
        Conv1dCase(1, 2, 2, 40, 31, groups=2, bias=False, padding=30),
    ],
    ids=str,
)
def test_fft_gradcheck_and_gradgradcheck(case, device):
    x, w, b = case.tensors(device=device, requires_grad=True)

    def f(x, w, b):
        return fastconv_ext.conv1d(x, w, b, **case.args(), algorithm="fft")

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


LONG_CASES = [
    Conv1dCase(1, 1, 1, 20000, 1500, padding=749),  # long kernel: one transform
    Conv1dCase(2, 2, 3, 100000, 64, padding=5),  # long signal, short kernel: overlap-save segments
    Conv1dCase(1, 4, 4, 30000, 513, groups=4, stride=2, dilation=3),
    Conv1dCase(2, 8, 8, 9000, 300, groups=2, padding=100),
]


@pytest.mark.parametrize("case", LONG_CASES, ids=str)
def test_long_kernels_float32_within_1e5_of_float64(case, device):
    x, w, b = case.tensors(dtype=torch.float32, device=device, requires_grad=True)
    y, grads = forward_and_grads(case, x, w, b, "fft")
    ref = [t.detach().double().requires_grad_() for t in (x, w, b)]
    y_ref, grads_ref = forward_and_grads(case, *ref)
    assert y.dtype == torch.float32
    for got, want in [(y, y_ref), *zip(grads, grads_ref)]:
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err < 1e-5, f"relative error {err:.2e}"


@pytest.mark.parametrize("case", [
    # Hundreds of overlap-save segments in several chunks, with stride (outputs on a grid that
    # crosses segment and chunk boundaries), dilation, groups, and padding wider than a hop
    # (segments that reach past both ends of the signal).
    Conv1dCase(2, 4, 6, 300000, 37, stride=3, padding=20, dilation=2, groups=2),
    Conv1dCase(1, 3, 3, 200001, 100, stride=2, padding=250),
    Conv1dCase(1, 16, 16, 100000, 64, padding=32),
], ids=str)
def test_fft_segments_across_chunks_match_torch(case):
    x, w, b = case.tensors(dtype=torch.float64, requires_grad=True)
    y, grads = forward_and_grads(case, x, w, b, "fft")
    y_ref, grads_ref = forward_and_grads(case, *[t.detach().requires_grad_() for t in (x, w, b)])
    for got, want in [(y, y_ref), *zip(grads, grads_ref)]:
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * want.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fft_16bit_computes_in_float32(dtype, device):
    case = Conv1dCase(2, 3, 4, 3000, 200, padding=50)
    x, w, b = case.tensors(dtype=dtype, device=device, requires_grad=True)
    y, grads = forward_and_grads(case, x, w, b, "fft")
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    ref = [t.detach().double().requires_grad_() for t in (x, w, b)]
    y_ref, grads_ref = forward_and_grads(case, *ref)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    for got, want in [(y, y_ref), *zip(grads, grads_ref)]:
        assert (got.double() - want).abs().max() / want.abs().max() < tol


@pytest.fixture
def restore_profile():
    saved = ops._cost_profile()
    yield
    ops._cost_profile(saved)


NATIVE = slice(8, 11)  # the native_* entries of a cost profile


def path(x, w, groups=1, algorithm="auto", op="forward"):
    return ops._conv_path(x, w, [1], [0], [1], groups, algorithm, op)


def with_costs(profile, direct=None, fft=None, native=None):
    """The profile with the direct (0:3), FFT (3:7) or native (8:11) terms replaced by `value`."""
    out = list(profile)
    for value, part in ((direct, slice(0, 3)), (fft, slice(3, 7)), (native, NATIVE)):
        if value is not None:
            out[part] = [value] * (part.stop - part.start)
    return out


def test_auto_choice_follows_the_profile_deterministically(restore_profile):
    long_kernel = (torch.randn(1, 1, 1 << 16), torch.randn(1, 1, 2048))
    short_kernel = (torch.randn(4, 16, 4096), torch.randn(16, 1, 3))
    # The built-in / measured profile: long kernels go to the FFT, short depthwise ones stay direct.
    assert path(*long_kernel) == "fft"
    assert path(*short_kernel, groups=16) == "direct"
    choices = {path(*long_kernel) for _ in range(20)}
    assert choices == {"fft"}
    # A profile where the FFT is absurdly expensive never picks it, and the reverse; the same for
    # PyTorch's kernel.
    profile = ops._cost_profile()
    ops._cost_profile(with_costs(profile, fft=1.0, native=1.0))
    assert path(*long_kernel) == "direct"
    ops._cost_profile(with_costs(profile, direct=1.0, native=1.0))
    assert path(*short_kernel, groups=16) == "fft"
    ops._cost_profile(with_costs(profile, direct=1.0, fft=1.0))
    assert path(*short_kernel, groups=16) == "native"
    ops._cost_profile(with_costs(profile, native=1.0))
    assert path(*short_kernel, groups=16) == "direct"
    # Forced paths ignore the profile; the cost op reports the three predictions.
    assert path(*short_kernel, groups=16, algorithm="direct") == "direct"
    assert path(*short_kernel, groups=16, algorithm="native") == "native"
    direct, fft, native = ops._conv1d_cost(*long_kernel)
    assert direct > 0 and fft > 0 and native > 0


@pytest.mark.parametrize("case", [
    Conv1dCase(2, 8, 8, 3000, 33, padding=16, bias=False),  # by segments: many channel pairs
    Conv1dCase(2, 6, 6, 300, 200, padding=199, groups=6, bias=False),  # whole correlation: K ~ L
    Conv1dCase(3, 4, 6, 700, 41, stride=2, padding=30, dilation=3, groups=2, bias=False),
], ids=str)
def test_weight_gradient_by_either_correlation(case, restore_profile):
    """The weight gradient's FFT runs by segments of grad_output or as one correlation with the
    whole of it, whichever is cheaper; the auto choice weighs that against the direct kernels.
    Whichever runs, the gradient is the same."""
    x, w, _ = case.tensors()
    args = ([case.stride], [case.padding], [case.dilation], case.groups)
    # A profile where the FFT costs nothing picks it for the weight gradient too, and the reverse.
    profile = ops._cost_profile()
    ops._cost_profile(with_costs(profile, direct=1.0, native=1.0))
    assert ops._conv_path(x, w, *args, "auto", "weight") == "fft"
    ops._cost_profile(with_costs(profile, fft=1.0, native=1.0))
    assert ops._conv_path(x, w, *args, "auto", "weight") == "direct"
    gy = torch.randn(F.conv1d(x, w, **case.args()).shape, dtype=torch.float64)
    got = {a: ops.conv1d_weight_backward(gy, x, case.kernel_size, *args, a) for a in ("direct", "fft")}
    torch.testing.assert_close(got["fft"], got["direct"])
    ref = torch.ops.aten.convolution_backward(gy, x, w, None, *args[:3], False, [0], case.groups,
                                              [False, True, False])[1]
    torch.testing.assert_close(got["direct"], ref)


def test_profile_file_is_read_and_bad_values_rejected(tmp_path):
    path = tmp_path / "profile.txt"
    path.write_text("# test\ndirect_small 1e-9\ndirect_dense 2e-9\nfft_call 0.5\nunknown 3\nthreads 4\n")
    code = "import torch, fastconv_ext; print(torch.ops.fastconv._cost_profile())"
    # cwd: import the installed package, not the unbuilt source tree.
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, FASTCONV_PROFILE=str(path)),
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    values = eval(out)
    assert values[0] == 1e-9 and values[1] == 2e-9 and values[6] == 0.5 and values[7] == 4
    with pytest.raises(RuntimeError, match=r"cost profile values must be positive"):
        ops._cost_profile([1.0, -1.0] + [1.0] * 9)
    with pytest.raises(RuntimeError, match=r"a cost profile has 11 values"):
        ops._cost_profile([1.0])


def test_calibrate_writes_a_profile(tmp_path, restore_profile):
    out = tmp_path / "cpu_profile.txt"
    run = subprocess.run([sys.executable, "-m", "fastconv_ext.calibrate", "--out", str(out), "--repeats", "1",
                          "--passes", "2"], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert run.stderr.count("calibrating with") == 2  # two fits, their median written
    text = out.read_text().splitlines()
    lines = [line.split() for line in text if not line.startswith(("#", "rule "))]
    keys = [k for k, _ in lines]
    assert keys == ["direct_small", "direct_dense", "direct_call", "fft_nlogn", "fft_cmac", "fft_byte", "fft_call",
                    "threads", "native_small", "native_dense", "native_call"]
    assert all(float(v) > 0 for _, v in lines)
    # Every conv2d rule measured on layers of its class, and the file read back as the tables.
    rules = [line[len("rule "):] for line in text if line.startswith("rule ")]
    from fastconv_ext.calibrate import RULES

    assert {r.split()[0] for r in rules} == set(RULES)
    assert all(len(r.split()) == 9 and float(r.split()[-1]) > 0 for r in rules)
    code = "import torch, fastconv_ext; print(torch.ops.fastconv._conv2d_rules())"
    read = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, FASTCONV_PROFILE=str(out)),
                          capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    saved = ops._conv2d_rules()
    try:
        assert sorted(eval(read)) == sorted(ops._conv2d_rules(rules))
    finally:
        ops._conv2d_rules(saved)


def test_calibration_stops_repeating_a_comparison_far_from_deciding():
    """A layer where PyTorch takes many times fastconv's time (seconds per call for some bfloat16
    layers on CPUs without AVX512-BF16) is not timed `repeats` times over: past the budget a ratio
    beyond 3x either way ends the comparison, and an undecided one repeats in full."""
    from fastconv_ext import calibrate

    calls = {"slow": 0, "fast": 0}

    def timed(name, seconds):
        def fn():
            calls[name] += 1
            time.sleep(seconds)
        return fn

    ratio = calibrate._interleaved(timed("slow", calibrate.BUDGET_SECONDS / 2), timed("fast", 0.001), repeats=7)
    assert ratio > calibrate.FAR and calls["slow"] <= 4  # warm-up, one more round, one or two repeats
    calls.update(slow=0, fast=0)
    ratio = calibrate._interleaved(timed("slow", 0.02), timed("fast", 0.02), repeats=7)
    assert 1 / calibrate.FAR < ratio < calibrate.FAR and calls == {"slow": 9, "fast": 9}


def test_verdicts_over_passes_hold_only_a_combination_some_pass_chose():
    """Over several calibration passes a layer's rules judged together keep the combination most
    passes found fastest (a tie goes to the smaller one), at their median over those passes; a
    median per rule could hold grad_weight alone where most passes chose both gradients or
    neither, losing PyTorch's joint backward."""
    from fastconv_ext import calibrate

    layer = calibrate.Layer2d(1, 8, 14, 3)  # NCHW, stride 1
    assert layer.forward_rules == ["depthwise_rows", "depthwise_nchw_kernels"]
    assert layer.gradient_rules == ["depthwise_input", "depthwise_weight", "depthwise_nchw_kernel_grads"]
    fwd = dict(depthwise_rows=1.5, depthwise_nchw_kernels=0.9)
    both = dict(fwd, depthwise_input=1.2, depthwise_weight=1.2, depthwise_nchw_kernel_grads=1.0)
    weight = dict(fwd, depthwise_input=1.0, depthwise_weight=1.15, depthwise_nchw_kernel_grads=0.9)
    neither = dict(fwd, depthwise_input=0.95, depthwise_weight=0.97, depthwise_nchw_kernel_grads=0.9)
    # Per rule, the medians would be input 1.0, weight 1.15: weight alone, which no pass chose.
    got = calibrate.pass_verdicts(layer, [both, both, weight, neither, neither])
    assert got == dict(fwd, depthwise_input=1.0, depthwise_weight=1.0, depthwise_nchw_kernel_grads=0.9)
    got = calibrate.pass_verdicts(layer, [both, both, both, weight, neither])
    assert got == dict(fwd, depthwise_input=1.2, depthwise_weight=1.2, depthwise_nchw_kernel_grads=1.0)
    # Two sets as often and as large: the faster one, whatever the order of the passes.
    inputs = dict(fwd, depthwise_input=1.25, depthwise_weight=1.0, depthwise_nchw_kernel_grads=0.9)
    for order in ([weight, inputs, inputs, weight, neither], [inputs, weight, weight, inputs, neither]):
        got = calibrate.pass_verdicts(layer, order)
        assert got == dict(fwd, depthwise_input=1.25, depthwise_weight=1.0, depthwise_nchw_kernel_grads=0.9)


def test_bad_algorithm_raises():
    x, w = torch.randn(1, 1, 8), torch.randn(1, 1, 3)
    with pytest.raises(RuntimeError, match=r"algorithm must be 'auto', 'native', 'direct' or 'fft', but got 'fast'"):
        fastconv_ext.conv1d(x, w, algorithm="fast")
    with pytest.raises(RuntimeError, match=r"conv1d_input_backward: algorithm must be"):
        ops.conv1d_input_backward(torch.randn(1, 1, 6), w, 8, [1], [0], [1], 1, "x")
    with pytest.raises(RuntimeError, match=r"conv1d_weight_backward: algorithm must be"):
        ops.conv1d_weight_backward(torch.randn(1, 1, 6), x, 3, [1], [0], [1], 1, "im2col")
    with pytest.raises(ValueError, match=r"algorithm must be one of \['auto', 'native', 'direct', 'fft'\]"):
        fastconv_ext.Conv1d(1, 1, 3, algorithm="slow")


@pytest.mark.parametrize("algorithm", ["fft", "direct", "native", "auto"])
def test_opcheck_with_forced_algorithm(algorithm, device):
    case = Conv1dCase(2, 4, 6, 40, 7, stride=2, padding=3, dilation=2, groups=2)
    x, w, b = case.tensors(device=device, requires_grad=True)
    hp = ([case.stride], [case.padding], [case.dilation], case.groups, algorithm)
    torch.library.opcheck(ops.conv1d.default, (x, w, b, *hp))
    gy = F.conv1d(x.detach(), w.detach(), None, **case.args()).requires_grad_()
    torch.library.opcheck(ops.conv1d_input_backward.default, (gy, w, case.length, *hp))
    torch.library.opcheck(ops.conv1d_weight_backward.default, (gy, x, case.kernel_size, *hp))


def test_compile_and_torchscript_with_algorithm():
    torch._dynamo.reset()
    w = torch.randn(2, 1, 301, requires_grad=True)

    def f(x, w):
        return fastconv_ext.conv1d(x, w, padding=150, algorithm="fft").square().sum()

    x = torch.randn(3, 1, 5000, requires_grad=True)
    out = torch.compile(f, fullgraph=True, dynamic=True)(x, w)
    torch.testing.assert_close(out, F.conv1d(x, w, padding=150).square().sum(), rtol=1e-4, atol=1e-3)
    out.backward()

    m = fastconv_ext.Conv1d(2, 2, 129, padding=64, algorithm="fft").double()
    scripted = torch.jit.script(m)
    x = torch.randn(1, 2, 700, dtype=torch.float64)
    torch.testing.assert_close(scripted(x), torch.nn.functional.conv1d(x, m.weight, m.bias, padding=64))
    assert scripted.algorithm == "fft"
