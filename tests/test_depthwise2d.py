"""Depthwise and large-kernel conv2d: the "depthwise" path (vectors across channels), the direct rows
at any horizontal stride and kernel size, and the "fft" path, against a float64 F.conv2d reference for
every stride, dilation, padding, memory format and dtype; forward and every gradient, gradcheck and
gradgradcheck, opcheck, torch.compile, the layout of every result, and the default choices."""

import random

import pytest
import torch
import torch.nn.functional as F

import fastconv_ext
from conftest import CPU_KINDS, DEPTHWISE_RULES_HOLD, built_in_profile, conv2d_rules, pytorch_generic_16bit

ops = torch.ops.fastconv

PATHS = ["depthwise", "direct", "fft"]


def depthwise_cases(count, seed):
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        channels = rng.choice([1, 3, 16, 17, 40, 64])
        kernel = (rng.choice([1, 2, 3, 5, 7, 13]), rng.choice([1, 3, 4, 5, 7, 13]))
        stride = (rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2, 3]))
        dilation = (rng.choice([1, 1, 2]), rng.choice([1, 1, 3]))
        padding = (rng.randint(0, kernel[0]), rng.randint(0, kernel[1]))
        size = []
        for i in range(2):
            span = dilation[i] * (kernel[i] - 1) + 1
            lo = max(1, span - 2 * padding[i])
            size.append(rng.randint(lo, lo + 12))
        batch = rng.choice([None, 1, 2])
        cases.append((batch, channels, tuple(size), kernel, stride, padding, dilation, rng.random() < 0.7))
    return cases


def case_id(case):
    batch, channels, size, kernel, stride, padding, dilation, bias = case
    return f"B{batch}-C{channels}-{size[0]}x{size[1]}-K{kernel[0]}x{kernel[1]}-s{stride}-p{padding}-d{dilation}" \
        f"-{'b' if bias else 'nb'}".replace(" ", "")


def tensors(case, dtype, device, channels_last, seed=0):
    batch, channels, size, kernel, _, _, _, bias = case
    g = torch.Generator().manual_seed(seed)
    shape = ((batch,) if batch is not None else ()) + (channels, *size)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.randn(channels, 1, *kernel, generator=g, dtype=torch.float64) / (kernel[0] * kernel[1]) ** 0.5
    b = torch.randn(channels, generator=g, dtype=torch.float64) if bias else None
    x, w = x.to(device=device, dtype=dtype), w.to(device=device, dtype=dtype)
    b = b.to(device=device, dtype=dtype) if b is not None else None
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w, b


def run(fn, case, x, w, b, gy_seed=5, **kw):
    _, channels, _, _, stride, padding, dilation, _ = case
    inputs = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
    y = fn(*inputs, *([] if b is not None else [None]), stride=stride, padding=padding, dilation=dilation,
           groups=channels, **kw)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(gy_seed), dtype=torch.float64)
    gy = gy.to(y).contiguous(memory_format=torch.channels_last) if y.dim() == 4 and not y.is_contiguous() else gy.to(y)
    return (y,) + torch.autograd.grad(y, inputs, gy)


def check(case, dtype, device, channels_last, path):
    x, w, b = tensors(case, dtype, device, channels_last)
    try:
        got = run(fastconv_ext.conv2d, case, x, w, b, algorithm=path)
    except RuntimeError as e:
        assert "cannot run these arguments" in str(e)
        return False
    ref = run(F.conv2d, case, *(t.double() if t is not None else None for t in (x, w, b)))
    for name, a, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, ref):
        assert a.dtype == dtype and a.shape == r.shape, name
        scale = max(r.abs().max().item(), 1.0)
        tol = {torch.float64: dict(rtol=1e-10, atol=1e-10 * scale), torch.float32: dict(rtol=1e-5, atol=2e-5 * scale),
               torch.bfloat16: dict(rtol=2e-2, atol=2e-2 * scale), torch.float16: dict(rtol=3e-3, atol=3e-3 * scale)}
        torch.testing.assert_close(a.double(), r, **tol[dtype], msg=lambda m: f"{path} {name}: {m}")
    # A channels-last activation stays channels-last, as through F.conv2d.
    assert got[0].is_contiguous(memory_format=torch.channels_last) == ref[0].is_contiguous(
        memory_format=torch.channels_last) or got[0].dim() == 3
    return True


@pytest.mark.parametrize("case", depthwise_cases(60, seed=11), ids=case_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_every_path_float64(case, channels_last, device):
    ran = [path for path in PATHS if check(case, torch.float64, device, channels_last, path)]
    assert "depthwise" in ran  # runs every depthwise layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", depthwise_cases(12, seed=12), ids=case_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_low_precision(case, dtype, channels_last, device):
    for path in PATHS:
        check(case, dtype, device, channels_last, path)


# Layers of the models the issue names, at small batch: ConvNeXt 7x7, MobileNet/EfficientNet
# 3x3 and 5x5 at stride 2, RepLKNet 13x13 and 31x31 (the large ones with few channels).
MODEL_LAYERS = [
    (2, 48, (14, 14), (7, 7), (1, 1), (3, 3), (1, 1), True),
    (1, 40, (15, 15), (3, 3), (2, 2), (1, 1), (1, 1), True),
    (2, 24, (14, 14), (5, 5), (2, 2), (2, 2), (1, 1), False),
    (1, 16, (20, 20), (13, 13), (1, 1), (6, 6), (1, 1), True),
    (1, 8, (31, 33), (31, 31), (1, 1), (15, 15), (1, 1), True),
    (4, 96, (7, 7), (7, 7), (1, 1), (3, 3), (1, 1), True),  # mostly border pixels
    # Few border columns: grad_weight reads in place, its rows and columns in segments, channels in
    # blocks of even width.
    (1, 144, (40, 40), (3, 3), (2, 2), (1, 1), (1, 1), False),
    (1, 80, (36, 36), (7, 7), (1, 1), (3, 3), (1, 1), True),
]


@pytest.mark.parametrize("case", MODEL_LAYERS, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("threads", [1, 2])
def test_model_layers_every_path(case, dtype, channels_last, threads):
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for path in PATHS + ["auto"]:
            check(case, dtype, "cpu", channels_last, path)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("path", PATHS)
def test_gradcheck_and_gradgradcheck(path):
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    for stride in (1, 2):
        f = lambda x, w, b, s=stride: fastconv_ext.conv2d(x, w, b, stride=s, padding=2, groups=3,  # noqa: E731
                                                          algorithm=path)
        assert torch.autograd.gradcheck(f, (x, w, b))
        assert torch.autograd.gradgradcheck(f, (x, w, b))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fastconv_ext.conv2d(x, w, b, padding=(1, 3), groups=3, algorithm=path),
                                    (xc,))


@pytest.mark.parametrize("path", ["auto"] + PATHS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_opcheck(path, channels_last):
    x = torch.randn(2, 6, 11, 10, requires_grad=True)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(6, 1, 5, 5, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    hp = ([2, 1], [2, 3], [1, 1], 6, path)
    torch.library.opcheck(ops.conv2d.default, (x, w, b, *hp))
    gy = torch.randn(2, 6, 6, 12)
    if channels_last:
        gy = gy.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(ops.conv2d_weight_backward.default, (gy, x.detach(), [5, 5], *hp))
    if path == "direct":  # the direct rows run grad_input as a stride-1 convolution only
        hp = ([1, 1], [2, 2], [1, 1], 6, path)
        gy = torch.randn(2, 6, 11, 10)
    torch.library.opcheck(ops.conv2d_input_backward.default, (gy, w.detach(), [11, 10], *hp))


@pytest.mark.parametrize("path", ["depthwise", "fft"])
def test_compile_fullgraph(path):
    conv = fastconv_ext.Conv2d(8, 8, 7, padding=3, groups=8, stride=2, algorithm=path)
    x = torch.randn(2, 8, 15, 13).contiguous(memory_format=torch.channels_last).requires_grad_()
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    ref = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=3, groups=8)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


def test_empty_inputs():
    w = torch.randn(5, 1, 3, 3, requires_grad=True)
    for path in PATHS:
        x = torch.randn(0, 5, 9, 9, requires_grad=True)
        algorithm = path if path != "fft" else "auto"  # 3x3: below the FFT path's kernels
        y = fastconv_ext.conv2d(x, w, padding=1, groups=5, algorithm=algorithm)
        assert y.shape == (0, 5, 9, 9)
        y.sum().backward()
        assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))
        w.grad = None
    w7 = torch.randn(5, 1, 7, 7)
    assert fastconv_ext.conv2d(torch.randn(0, 5, 9, 9), w7, padding=3, groups=5, algorithm="fft").shape == (0, 5, 9, 9)


def test_non_contiguous_input():
    x = torch.randn(2, 9, 12, 20)[:, ::2, :, ::2]  # neither layout
    w = torch.randn(5, 1, 3, 3)
    for path in PATHS[:2]:
        torch.testing.assert_close(fastconv_ext.conv2d(x, w, padding=1, groups=5, stride=(1, 2), algorithm=path),
                                   F.conv2d(x, w, padding=1, groups=5, stride=(1, 2)), rtol=1e-5, atol=1e-5)


def paths(x, w, stride, padding):
    args = (x, w, [stride] * 2, [padding] * 2, [1, 1], w.shape[0], "auto")
    return {op: ops._conv_path(*args, op) for op in ("forward", "input", "weight")}


@conv2d_rules(**DEPTHWISE_RULES_HOLD)
def test_default_choices():
    """Where the rules hold, depthwise layers take fastconv's kernels where PyTorch is slow: every
    gradient, the NCHW forward at stride 1 on rows of 14 outputs and more, the channels-last
    forward of kernels of 10x10 to 19x19 and of strided layers; a dense layer stays native."""
    w7, w5, w31 = torch.randn(96, 1, 7, 7), torch.randn(96, 1, 5, 5), torch.randn(96, 1, 31, 31)
    nchw = torch.randn(2, 96, 28, 28)
    cl = nchw.contiguous(memory_format=torch.channels_last)
    assert paths(nchw, w7, 1, 3) == {"forward": "direct", "input": "direct", "weight": "direct"}
    assert paths(cl, w7, 1, 3) == {"forward": "native", "input": "depthwise", "weight": "depthwise"}
    assert paths(cl, w5, 2, 2) == {"forward": "depthwise", "input": "depthwise", "weight": "depthwise"}
    assert paths(nchw, w5, 2, 2) == {"forward": "native", "input": "depthwise", "weight": "depthwise"}
    # Strided 3x3 float: PyTorch's joint backward; bfloat16: fastconv's.
    w3 = torch.randn(96, 1, 3, 3)
    assert paths(nchw, w3, 2, 1) == {"forward": "native", "input": "native", "weight": "native"}
    assert paths(cl, w3, 2, 1) == {"forward": "native", "input": "native", "weight": "native"}
    bf16_generic = pytorch_generic_16bit(torch.bfloat16)  # then every bfloat16 operator is fastconv's
    assert paths(nchw.bfloat16(), w3.bfloat16(), 2, 1) == {"forward": "depthwise" if bf16_generic else "native",
                                                           "input": "depthwise", "weight": "depthwise"}
    small, mid = torch.randn(2, 96, 7, 7), torch.randn(1, 96, 14, 14)
    assert paths(small, w7, 1, 3) == {"forward": "native", "input": "direct", "weight": "depthwise"}
    assert paths(mid, w7, 1, 3)["forward"] == "native"  # 14 of 20 lanes
    assert paths(mid, w3, 1, 1)["forward"] == "direct"  # 14 of 16
    # 16-bit where oneDNN takes it: large kernels only
    assert paths(mid.bfloat16(), w3.bfloat16(), 1, 1)["forward"] == ("direct" if bf16_generic else "native")
    assert paths(nchw.bfloat16(), w31.bfloat16(), 1, 15)["forward"] == "direct"
    assert paths(nchw, w31, 1, 15)["forward"] == "direct"  # a large kernel
    assert paths(cl, w31, 1, 15)["forward"] == "native"
    assert paths(cl, torch.randn(96, 1, 13, 13), 1, 6)["forward"] == "depthwise"
    dense = torch.randn(96, 96, 3, 3)
    assert ops._conv_path(nchw, dense, [1, 1], [1, 1], [1, 1], 1, "auto", "weight") == "native"


@pytest.mark.parametrize("rule, layer, ops_native", [
    ("depthwise_rows", "nchw7", ["forward"]),
    ("depthwise_strided", "cl5s2", ["forward"]),
    ("depthwise_large", "cl13", ["forward"]),
    ("depthwise_input", "nchw7", ["input"]),
    ("depthwise_input", "cl5s2", ["input"]),
    ("depthwise_weight", "nchw7", ["weight"]),
    ("depthwise_weight", "cl5s2", ["weight"]),
])
def test_a_rule_that_does_not_hold_gives_its_class_to_pytorch(rule, layer, ops_native):
    """The calibrated speedup of a rule's class (python -m fastconv_ext.calibrate) decides: below
    1.1x, the class runs PyTorch's kernel; the other operators keep their paths."""
    x = torch.randn(2, 96, 28, 28)
    x, w, stride, padding = {"nchw7": (x, torch.randn(96, 1, 7, 7), 1, 3),
                             "cl5s2": (x.contiguous(memory_format=torch.channels_last), torch.randn(96, 1, 5, 5), 2, 2),
                             "cl13": (x.contiguous(memory_format=torch.channels_last), torch.randn(96, 1, 13, 13), 1, 6),
                             }[layer]
    with conv2d_rules(**DEPTHWISE_RULES_HOLD):
        holding = paths(x, w, stride, padding)
    assert all(holding[op] != "native" for op in ops_native)
    with conv2d_rules(**dict(DEPTHWISE_RULES_HOLD, **{rule: 1.09})):
        failing = paths(x, w, stride, padding)
    assert failing == dict(holding, **{op: "native" for op in ops_native})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nchw_layers_take_the_depthwise_kernels_where_they_were_measured_faster(dtype):
    """NCHW stride-1 layers run the direct rows, or the depthwise kernels (through channels-last
    copies) where calibration measured those faster: depthwise_nchw_kernels for the forward,
    depthwise_nchw_kernel_grads for both gradients, each in its dtype's table; the results match
    PyTorch's either way."""
    x, w = torch.randn(2, 32, 28, 28, dtype=dtype), torch.randn(32, 1, 21, 21, dtype=dtype)
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    yd = F.conv2d(xd, wd, padding=10, groups=32)
    want = [yd, *torch.autograd.grad(yd, (xd, wd), torch.ones_like(yd))]
    suffix = "_bf16" if dtype == torch.bfloat16 else ""
    tol = dict(rtol=2e-2, atol=0.5) if suffix else dict(rtol=1e-4, atol=1e-3)
    cases = {"rows": ({}, {}),
             "forward": ({f"depthwise_nchw_kernels{suffix}": 2.0}, {"forward": "depthwise"}),
             "gradients": ({f"depthwise_nchw_kernel_grads{suffix}": 2.0}, {"input": "depthwise", "weight": "depthwise"})}
    for case, (table, moved) in cases.items():
        with conv2d_rules(**dict(DEPTHWISE_RULES_HOLD, **table)):
            assert paths(x, w, 1, 10) == dict({"forward": "direct", "input": "direct", "weight": "direct"}, **moved), case
            xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = fastconv_ext.conv2d(xg, wg, padding=10, groups=32)
            got = [y, *torch.autograd.grad(y, (xg, wg), torch.ones_like(y))]
        assert all(g.is_contiguous() and g.dtype == dtype for g in got), case
        for name, g, r in zip(("output", "grad_input", "grad_weight"), got, want):
            torch.testing.assert_close(g.double(), r, **tol, msg=lambda m: f"{case} {name}: {m}")


def test_strided_small_kernel_gradients_follow_their_rule():
    """Strided <= 3x3 float layers: PyTorch's one convolution_backward unless calibration measured
    fastconv's two gradients at least 1.1x faster (here 1.2x); then the channels-last forward is fastconv's too."""
    x, w3 = torch.randn(2, 96, 28, 28), torch.randn(96, 1, 3, 3)
    cl = x.contiguous(memory_format=torch.channels_last)
    with conv2d_rules(**dict(DEPTHWISE_RULES_HOLD, depthwise_small_strided_grads=1.2)):
        assert paths(x, w3, 2, 1) == {"forward": "native", "input": "depthwise", "weight": "depthwise"}
        assert paths(cl, w3, 2, 1) == {"forward": "depthwise", "input": "depthwise", "weight": "depthwise"}


@pytest.mark.parametrize("rule", ["depthwise_input", "depthwise_weight", "depthwise_small_strided_grads"])
def test_bfloat16_layers_follow_their_own_tables(rule):
    """bfloat16 depthwise layers ask the rules' bfloat16 tables (measured in bfloat16: PyTorch's
    bfloat16 depthwise backward is not its float one scaled), float32 and float16 layers the float
    ones (float16 layers never take PyTorch's joint backward): a rule failing in one dtype's table
    leaves the other dtype's paths alone."""
    x, w = torch.randn(2, 96, 28, 28), torch.randn(96, 1, 3, 3)
    layers = {dtype: (x.to(dtype), w.to(dtype), 2, 1) for dtype in (torch.float32, torch.float16, torch.bfloat16)}
    both = dict(DEPTHWISE_RULES_HOLD, depthwise_small_strided_grads=2.0)
    with conv2d_rules(**both):
        holding = {dtype: paths(*layer) for dtype, layer in layers.items()}
    # Where PyTorch runs its generic kernel for a 16-bit dtype, no table moves that dtype's layers.
    generic = {dtype for dtype in layers if pytorch_generic_16bit(dtype)}
    assert all(holding[dtype] == {"forward": "depthwise" if dtype in generic else "native", "input": "depthwise",
                                  "weight": "depthwise"} for dtype in layers)
    failed = {"depthwise_input": {"input": "native"}, "depthwise_weight": {"weight": "native"},
              "depthwise_small_strided_grads": {"input": "native", "weight": "native"}}[rule]
    floats = (torch.float32,) if rule == "depthwise_small_strided_grads" else (torch.float32, torch.float16)
    for table, moved in ((rule, set(floats) - generic), (f"{rule}_bf16", {torch.bfloat16} - generic)):
        with conv2d_rules(**dict(both, **{table: 1.09})):
            for dtype, layer in layers.items():
                assert paths(*layer) == (dict(holding[dtype], **failed) if dtype in moved else holding[dtype]), \
                    (table, dtype)


def test_bfloat16_channels_last_wide_kernels_never_reach_pytorch():
    """PyTorch 2.13's bfloat16 channels-last depthwise forward of up to 16 channels with a kernel 15
    or more wide never finishes compiling its oneDNN kernel on CPUs with AVX512-BF16 (images from
    about 40 pixels wide): there the default takes fastconv's depthwise kernels, and the native path
    is never a candidate (so autotuning cannot time it); on other CPUs it is one."""
    x = torch.randn(1, 8, 20, 21, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 3, 15, dtype=torch.bfloat16)
    args = (x, w, [1, 1], [1, 7], [1, 1], 8, "auto")
    candidates = ops._conv_candidates(x, w, [1, 1], [1, 7], [1, 1], 8, "forward")
    assert ("native" in candidates) == ("avx512_bf16" not in torch.ops.fastconv._cpu_capabilities())
    if "native" not in candidates:
        assert ops._conv_path(*args, "forward") == "depthwise"
        with pytest.raises(RuntimeError, match=r"algorithm='native' cannot run these arguments: PyTorch's kernel for it "
                                               r"\(oneDNN, bfloat16, channels-last, depthwise, at most 16 channels, kernel "
                                               r"width >= 15\)"):
            ops.conv2d(x, w, None, [1, 1], [1, 7], [1, 1], 8, "native")
    ref = F.conv2d(x.double(), w.double(), padding=(1, 7), groups=8)
    torch.testing.assert_close(fastconv_ext.conv2d(x, w, padding=(1, 7), groups=8).double(), ref, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_built_in_rules_keep_the_largest_kernels_on_fastconv(kind):
    """RepLKNet's 31x31 and 29x29 NCHW layers, where PyTorch's forward is 15-25x slower than
    fastconv's, are among the calibrated layers: the built-in tables of both CPU kinds send their
    forward and grad_weight to fastconv (the nearest 11x11-17x17 layers alone, where PyTorch's
    forward wins on AVX-512, gave them to PyTorch). grad_input as measured: fastconv's on the
    AVX-512 machine, PyTorch's beside fastconv's grad_weight on the AVX2 one. Which of fastconv's
    paths: on the AVX-512 machine the depthwise kernels measured faster than the direct rows for
    these layers, in both dtypes; the AVX2 table has no such measurements and keeps the rows."""
    with built_in_profile(kind):
        for channels, size, kernel in [(128, 56, 31), (256, 28, 29)]:
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(1, channels, size, size, dtype=dtype)
                w = torch.randn(channels, 1, kernel, kernel, dtype=dtype)
                got = paths(x, w, 1, kernel // 2)
                if kind == "avx512":
                    assert got == {"forward": "depthwise", "weight": "depthwise", "input": "depthwise"}, dtype
                elif dtype == torch.float32:
                    assert got == {"forward": "direct", "weight": "direct", "input": "native"}


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_built_in_rules_give_bfloat16_strided_gradients_to_fastconv(kind):
    """MobileNetV2's bfloat16 3x3 stride-2 layer (144 channels, 57x57 input as Hugging Face pads it):
    PyTorch's bfloat16 depthwise backward is many times its float one, and the built-in bfloat16
    tables (2.7x measured on AVX-512) give both gradients to fastconv, where the float tables kept
    grad_input native beside fastconv's grad_weight (0.84x in the model). Float32 keeps PyTorch's
    joint backward."""
    with built_in_profile(kind):
        x, w = torch.randn(1, 144, 57, 57), torch.randn(144, 1, 3, 3)
        assert paths(x.bfloat16(), w.bfloat16(), 2, 0)["input"] == "depthwise"
        assert paths(x.bfloat16(), w.bfloat16(), 2, 0)["weight"] == "depthwise"
        assert paths(x, w, 2, 0) == {"forward": "native", "input": "native", "weight": "native"}
