"""Path selection: every path of every operator against the float64 reference, forced paths that
cannot run, the algorithm names, and autotuning with its persistent cache."""

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
import torch.nn.functional as F

import fastconv_ext
from fastconv_ext.calibrate import RULES
from conftest import conv2d_rules, pytorch_generic_16bit

ops = torch.ops.fastconv

CONV1D_CASES = [  # (x shape, w shape, stride, padding, dilation, groups)
    ((2, 6, 50), (4, 3, 5), 2, 3, 2, 2),
    ((3, 8, 40), (8, 1, 7), 1, 3, 1, 8),
    ((8, 33), (5, 8, 3), 1, 1, 1, 1),  # unbatched
]
CONV2D_CASES = [
    ((2, 4, 11, 13), (4, 1, 3, 3), (1, 1), (1, 1), (1, 1), 4),  # depthwise: every path
    ((2, 3, 12, 9), (6, 3, 3, 3), (1, 1), (1, 0), (1, 2), 1),  # few taps, dense
    ((2, 32, 7, 8), (32, 16, 3, 3), (1, 1), (1, 1), (1, 1), 2),  # shifted GEMM territory
    ((1, 6, 10, 10), (6, 2, 3, 5), (2, 1), (1, 2), (1, 1), 3),  # vertical stride 2
    ((2, 4, 9, 9), (8, 4, 1, 1), (1, 1), (0, 0), (1, 1), 1),  # pointwise
    ((5, 8, 8), (4, 5, 2, 2), (2, 2), (0, 1), (1, 1), 1),  # unbatched, stride 2
    ((2, 6, 13, 12), (6, 1, 5, 5), (2, 3), (2, 1), (1, 2), 6),  # depthwise 5x5, strided: depthwise, direct, fft
    ((1, 4, 9, 10), (8, 2, 5, 5), (1, 1), (2, 2), (1, 1), 2),  # grouped 5x5: fft
]


def conv_and_grads(conv, x, w, b, gy, **kw):
    inputs = [x, w, b]
    y = conv(x, w, b, **kw)
    return (y,) + torch.autograd.grad(y, inputs, gy)


def check_every_path(dims, x_shape, w_shape, stride, padding, dilation, groups):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(w_shape, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(w_shape[0], dtype=torch.float64, generator=g, requires_grad=True)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    conv, ref_conv = (fastconv_ext.conv1d, F.conv1d) if dims == 1 else (fastconv_ext.conv2d, F.conv2d)
    y_ref = ref_conv(x, w, b, **kw)
    gy = torch.randn(y_ref.shape, dtype=torch.float64, generator=g)
    ref = (y_ref,) + torch.autograd.grad(y_ref, [x, w, b], gy)
    hp = [list(stride) if isinstance(stride, tuple) else [stride]]
    hp += [list(padding) if isinstance(padding, tuple) else [padding]]
    hp += [list(dilation) if isinstance(dilation, tuple) else [dilation], groups]
    tested = 0
    for op in ("forward", "input", "weight"):
        for path in ops._conv_candidates(x.detach(), w.detach(), *hp, op):
            got = conv_and_grads(conv, x, w, b, gy, **kw, algorithm=path)
            for name, a, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, ref):
                torch.testing.assert_close(a, r, msg=lambda m: f"{path} ({op}) {name}: {m}")
            tested += 1
    return tested


@pytest.mark.parametrize("case", CONV1D_CASES, ids=str)
def test_every_conv1d_path_matches_float64_reference(case):
    assert check_every_path(1, *case) == 9  # native, direct, fft for each of the three operators


@pytest.mark.parametrize("case", CONV2D_CASES, ids=str)
def test_every_conv2d_path_matches_float64_reference(case):
    assert check_every_path(2, *case) >= 6  # native and im2col at least, for each operator


def test_candidates_and_forced_paths_that_cannot_run():
    x, w = torch.randn(1, 4, 10, 10), torch.randn(4, 1, 3, 3)
    assert ops._conv_candidates(x, w, [1, 1], [1, 1], [1, 1], 4) == ["native", "direct", "im2col", "shifted",
                                                                      "depthwise"]
    assert ops._conv_candidates(x, w, [1, 2], [1, 1], [1, 1], 4) == ["native", "direct", "im2col", "depthwise"]
    w5 = torch.randn(4, 1, 5, 5)
    assert ops._conv_candidates(x, w5, [2, 2], [2, 2], [1, 1], 4) == ["native", "direct", "fft", "im2col",
                                                                       "depthwise"]
    with pytest.raises(RuntimeError, match=r"algorithm='shifted' cannot run these arguments: it needs stride 1"):
        fastconv_ext.conv2d(x, w, stride=2, padding=1, groups=4, algorithm="shifted")
    dense = torch.randn(8, 8, 3, 3)
    x8 = torch.randn(1, 8, 10, 10)
    with pytest.raises(RuntimeError, match=r"at most 32 taps per group .* with more than 4 input channels per group, "
                                           r"not 72"):
        fastconv_ext.conv2d(x8, dense, padding=1, algorithm="direct")
    with pytest.raises(RuntimeError, match=r"algorithm='depthwise' cannot run these arguments: it needs a depthwise "
                                           r"layer"):
        fastconv_ext.conv2d(x8, dense, padding=1, algorithm="depthwise")
    with pytest.raises(RuntimeError, match=r"algorithm='fft' cannot run these arguments: it is for kernels of at "
                                           r"least 25 taps"):
        fastconv_ext.conv2d(x8, dense, padding=1, algorithm="fft")
    # grad_input of a strided layer has no transposed stride-1 convolution for the shifted GEMM
    # (the direct rows run it phase by phase).
    gy = torch.randn(1, 4, 5, 5)
    with pytest.raises(RuntimeError, match=r"conv2d \(input\): algorithm='shifted' cannot run .* grad_input needs "
                                           r"stride 1"):
        ops.conv2d_input_backward(gy, w, [10, 10], [2, 2], [1, 1], [1, 1], 4, "shifted")
    torch.testing.assert_close(ops.conv2d_input_backward(gy, w, [10, 10], [2, 2], [1, 1], [1, 1], 4, "direct"),
                               ops.conv2d_input_backward(gy, w, [10, 10], [2, 2], [1, 1], [1, 1], 4, "native"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_layers_leave_pytorchs_generic_kernel(dtype):
    """Where PyTorch's oneDNN does not take the dtype on this CPU, PyTorch convolves 16-bit
    tensors with its generic kernel (10-40x fastconv's paths on an AVX2 CPU): every operator's
    default path is then fastconv's. Where oneDNN takes it, a dense 3x3 layer (no rule of
    fastconv's class) stays PyTorch's."""
    generic = pytorch_generic_16bit(dtype)
    x = torch.randn(1, 16, 20, 20, dtype=dtype)
    layers = {  # weight, stride, padding, groups, input
        "dense": (torch.randn(16, 16, 3, 3, dtype=dtype), 1, 1, 1, x),
        "pointwise": (torch.randn(8, 16, 1, 1, dtype=dtype), 1, 0, 1, x),
        "depthwise": (torch.randn(16, 1, 3, 3, dtype=dtype), 1, 1, 16, x),
        "depthwise strided channels-last": (torch.randn(16, 1, 5, 5, dtype=dtype), 2, 2, 16,
                                            x.contiguous(memory_format=torch.channels_last)),
        "conv1d": (torch.randn(16, 16, 3, dtype=dtype), 2, 1, 1, x[:, :, 0]),
    }
    for name, (w, stride, padding, groups, inp) in layers.items():
        n = w.dim() - 2
        for op in ("forward", "input", "weight"):
            path = ops._conv_path(inp, w, [stride] * n, [padding] * n, [1] * n, groups, "auto", op)
            assert (path != "native") if generic else (name != "dense" or path == "native"), (name, op, path)
        if generic:
            out = fastconv_ext.conv1d if n == 1 else fastconv_ext.conv2d
            conv = F.conv1d if n == 1 else F.conv2d
            torch.testing.assert_close(out(inp, w, None, stride, padding, 1, groups).float(),
                                       conv(inp.float(), w.float(), None, stride, padding, 1, groups),
                                       rtol=2e-2, atol=2e-2)


def test_unknown_algorithm_names_the_allowed_values():
    x1, w1 = torch.randn(1, 2, 8), torch.randn(2, 2, 3)
    x2, w2 = torch.randn(1, 2, 8, 8), torch.randn(2, 2, 3, 3)
    with pytest.raises(RuntimeError, match=r"fastconv.conv2d: algorithm must be 'auto', 'native', 'direct', "
                                           r"'im2col', 'shifted', 'depthwise' or 'fft', but got 'best'"):
        fastconv_ext.conv2d(x2, w2, algorithm="best")
    with pytest.raises(RuntimeError, match=r"fastconv.conv1d: algorithm must be 'auto', 'native', 'direct' or "
                                           r"'fft', but got 'im2col'"):
        fastconv_ext.conv1d(x1, w1, algorithm="im2col")
    with pytest.raises(RuntimeError, match=r"conv2d_weight_backward: algorithm must be"):
        ops.conv2d_weight_backward(torch.randn(1, 2, 6, 6), x2, [3, 3], [1, 1], [0, 0], [1, 1], 1, "best")
    with pytest.raises(ValueError, match=r"fastconv.Conv2d: algorithm must be one of \['auto', 'native', 'direct', "
                                         r"'im2col', 'shifted', 'depthwise', 'fft'\]"):
        fastconv_ext.Conv2d(2, 2, 3, algorithm="best")
    with pytest.raises(RuntimeError, match=r"op must be 'forward', 'input' or 'weight'"):
        ops._conv_path(x1, w1, [1], [0], [1], 1, "auto", "backward")


@pytest.mark.parametrize("algorithm", ["auto", "native", "direct", "im2col", "shifted"])
def test_conv2d_opcheck_with_each_algorithm(algorithm):
    x = torch.randn(2, 4, 9, 10, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    hp = ([1, 1], [1, 1], [1, 1], 2, algorithm)
    torch.library.opcheck(ops.conv2d.default, (x, w, b, *hp))
    gy = torch.randn(2, 4, 9, 10)
    torch.library.opcheck(ops.conv2d_input_backward.default, (gy, w, [9, 10], *hp))
    torch.library.opcheck(ops.conv2d_weight_backward.default, (gy, x, [3, 3], *hp))


def test_conv2d_gradgradcheck_forced_paths():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    for algorithm in ("native", "direct", "im2col", "shifted", "depthwise"):
        f = lambda x, w, b, a=algorithm: fastconv_ext.conv2d(x, w, b, padding=1, groups=2, algorithm=a)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, w, b))
        assert torch.autograd.gradgradcheck(f, (x, w, b))


# ---- autotuning

@pytest.fixture
def autotune():
    fastconv_ext.clear_autotune_cache()
    fastconv_ext.set_autotune(True)
    yield
    fastconv_ext.set_autotune(False)
    fastconv_ext.clear_autotune_cache()


def test_autotune_picks_a_candidate_and_looks_it_up(autotune):
    x = torch.randn(2, 16, 30, 30, requires_grad=True)
    w = torch.randn(16, 1, 5, 5, requires_grad=True)
    y = fastconv_ext.conv2d(x, w, padding=2, groups=16)
    y.sum().backward()
    info = fastconv_ext.autotune_cache_info()
    assert info["enabled"] and info["misses"] == 3 and info["entries"] == 3  # forward and both gradients
    chosen = ops._conv_path(x.detach(), w.detach(), [1, 1], [2, 2], [1, 1], 16)
    assert chosen in ops._conv_candidates(x.detach(), w.detach(), [1, 1], [2, 2], [1, 1], 16)
    for _ in range(3):
        torch.testing.assert_close(fastconv_ext.conv2d(x, w, padding=2, groups=16), F.conv2d(x, w, padding=2, groups=16))
    info = fastconv_ext.autotune_cache_info()
    assert info["misses"] == 3 and info["hits"] >= 3
    assert 0 < info["tuning_seconds"] < 3
    # The choice is deterministic for a given cache.
    assert {ops._conv_path(x.detach(), w.detach(), [1, 1], [2, 2], [1, 1], 16) for _ in range(10)} == {chosen}
    # A forced path is not tuned.
    fastconv_ext.conv2d(x.detach()[:1], w.detach(), padding=2, groups=16, algorithm="im2col")
    assert fastconv_ext.autotune_cache_info()["misses"] == 3


def test_autotune_from_many_threads(autotune):
    shapes = [(1, 8, 200 + 10 * i) for i in range(8)]
    w = torch.randn(8, 1, 9, dtype=torch.float64)
    errors = []

    def work(shape):
        try:
            x = torch.randn(shape, dtype=torch.float64)
            for _ in range(3):
                torch.testing.assert_close(fastconv_ext.conv1d(x, w, padding=4, groups=8),
                                           F.conv1d(x, w, padding=4, groups=8))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in shapes + shapes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fastconv_ext.autotune_cache_info()["entries"] == len(shapes)


def test_autotune_inside_torch_compile_fullgraph(autotune):
    torch._dynamo.reset()
    conv1 = fastconv_ext.Conv1d(4, 4, 5, padding=2, groups=4)
    conv2 = fastconv_ext.Conv2d(3, 6, 3, padding=1)

    def f(a, b):
        return conv1(a).square().sum() + conv2(b).square().sum()

    a, b = torch.randn(2, 4, 64, requires_grad=True), torch.randn(2, 3, 16, 16, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True)
    out = compiled(a, b)
    torch.testing.assert_close(out, F.conv1d(a, conv1.weight, conv1.bias, padding=2, groups=4).square().sum()
                               + F.conv2d(b, conv2.weight, conv2.bias, padding=1).square().sum(), rtol=1e-4, atol=1e-3)
    out.backward()
    # Each operator of both layers tuned once (conv2's also in Inductor's channels-last layout),
    # while tracing: the graph's choice is made then.
    layouts = 2 if torch.backends.mkldnn.is_available() else 1
    assert fastconv_ext.autotune_cache_info()["misses"] == 3 + 3 * layouts
    # With symbolic sizes the choice is the kernel's: tuned at run time on the call's tensors.
    torch._dynamo.reset()
    fastconv_ext.clear_autotune_cache()
    dynamic = torch.compile(f, fullgraph=True, dynamic=True)
    dynamic(a, b).backward()
    assert fastconv_ext.autotune_cache_info()["misses"] == 6


def run_python(code, cache_dir, cwd=None, **env):
    full_env = dict(os.environ, FASTCONV_CACHE_DIR=str(cache_dir), FASTCONV_AUTOTUNE="1", **env)
    # cwd: import the installed package, not the source tree.
    return subprocess.run([sys.executable, "-W", "always", "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, check=True, cwd=cwd or cache_dir)


TUNE_AND_REPORT = textwrap.dedent("""
    import json, torch, fastconv_ext
    x, w = torch.randn(2, 8, 300), torch.randn(8, 1, 9)
    y = fastconv_ext.conv1d(x, w, padding=4, groups=8)
    torch.testing.assert_close(y, torch.nn.functional.conv1d(x, w, padding=4, groups=8))
    info = fastconv_ext.autotune_cache_info()
    info["path"] = torch.ops.fastconv._conv_path(x, w, [1], [4], [1], 8)
    print(json.dumps(info))
""")


def test_autotune_does_not_time_paths_predicted_hopeless(tmp_path):
    """A fastconv path the cost model predicts several times slower than the best is not run
    (one call of the FFT path on a 3-tap strided kernel took 0.3-3.8 s on an AVX2 CPU, the
    whole call 2-70 ms); PyTorch's kernel is always timed."""
    x, w = torch.randn(1, 64, 4000), torch.randn(64, 64, 3)
    assert "fft" in ops._conv_candidates(x, w, [2], [1], [1], 1)
    direct, fft, native = ops._conv1d_cost(x, w, [2], [1], [1], 1)
    assert fft > 4.5 * min(direct, native)  # hopeless: about 8x with either built-in profile
    run_python("""
        import torch, fastconv_ext
        fastconv_ext.conv1d(torch.randn(1, 64, 4000), torch.randn(64, 64, 3), stride=2, padding=1)
    """, tmp_path)
    [line] = [line for line in open(next(tmp_path.glob("autotune-*.txt"))) if line.startswith("conv1d")]
    timed = line.split("#")[1].split()
    assert "fft" not in line and any(t.startswith("native=") for t in timed), line


def test_autotune_cache_round_trip_and_edits(tmp_path):
    first = json.loads(run_python(TUNE_AND_REPORT, tmp_path).stdout)
    assert first["misses"] == 1 and first["file"].startswith(str(tmp_path))
    text = open(first["file"]).read()
    assert "# fingerprint: " in text and f"torch={torch.__version__.split('+')[0]}" in text
    assert f"fastconv={fastconv_ext.__version__}" in text
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(lines) == 1 and lines[0].startswith("conv1d forward Float cpu contiguous")
    second = json.loads(run_python(TUNE_AND_REPORT, tmp_path).stdout)
    # hits: the call's kernel, and Python's routing asking whether the path is settled
    assert second["misses"] == 0 and second["hits"] >= 1 and second["path"] == first["path"]
    # The file is the user's to edit: the choice follows it.
    other = "native" if first["path"] != "native" else "direct"
    edited = text.replace(f"| {first['path']}", f"| {other}")
    open(first["file"], "w").write(edited)
    third = json.loads(run_python(TUNE_AND_REPORT, tmp_path).stdout)
    assert third["misses"] == 0 and third["path"] == other
    # Other thread counts are other signatures.
    run_python(TUNE_AND_REPORT + "torch.set_num_threads(1); fastconv_ext.conv1d(x, w, padding=4, groups=8)\n",
               tmp_path)
    assert sum(1 for line in open(first["file"]) if line.startswith("conv1d")) == 2


TUNE_CONV2D = textwrap.dedent("""
    import json, torch, fastconv_ext
    x = torch.randn(1, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 5, 5)
    fastconv_ext.conv2d(x, w, padding=2, groups=8)
    info = fastconv_ext.autotune_cache_info()
    info["path"] = torch.ops.fastconv._conv_path(x, w, [1, 1], [2, 2], [1, 1], 8)
    print(json.dumps(info))
""")


@pytest.mark.parametrize("path", ["native", "direct", "im2col", "shifted", "depthwise", "fft"])
def test_autotune_cache_reads_every_conv2d_path(tmp_path, path):
    """A cache entry naming any conv2d path is read back (a name the parser did not know made the
    whole file unreadable)."""
    first = json.loads(run_python(TUNE_CONV2D, tmp_path).stdout)
    text = open(first["file"]).read()
    assert "conv2d forward Float cpu channels_last" in text
    open(first["file"], "w").write(text.replace(f"| {first['path']} ", f"| {path} "))
    run = run_python(TUNE_CONV2D, tmp_path)
    assert "autotuning cache file" not in run.stderr
    second = json.loads(run.stdout)
    assert second["misses"] == 0 and second["path"] == path


def test_corrupt_cache_file_warns_once_and_tunes_in_memory(tmp_path):
    first = json.loads(run_python(TUNE_AND_REPORT, tmp_path).stdout)
    open(first["file"], "a").write("conv1d forward Float cpu contiguous 2 | 1 2 3\n\x00garbage\n")
    run = run_python(TUNE_AND_REPORT + "fastconv_ext.conv1d(x[:1], w, padding=4, groups=8)\n", tmp_path)
    assert run.stderr.count("autotuning cache file") == 1 and "malformed line" in run.stderr
    info = json.loads(run.stdout)
    assert info["file"] == "" and info["misses"] == 1  # in memory only


def test_unwritable_cache_directory_warns_once(tmp_path):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("")
    run = run_python(TUNE_AND_REPORT + "fastconv_ext.conv1d(x[:1], w, padding=4, groups=8)\n", blocker / "cache",
                     cwd=tmp_path)
    assert run.stderr.count("autotuning cache file") == 1 and "cannot be written" in run.stderr
    assert json.loads(run.stdout)["misses"] == 1


def test_two_processes_writing_at_once_leave_a_well_formed_file(tmp_path):
    code = """
        import sys, torch, fastconv_ext
        offset = int(sys.argv[1])
        w = torch.randn(8, 1, 9)
        for n in range(12):
            fastconv_ext.conv1d(torch.randn(1, 8, 100 + 2 * n + offset), w, padding=4, groups=8)
    """
    env = dict(os.environ, FASTCONV_CACHE_DIR=str(tmp_path), FASTCONV_AUTOTUNE="1")
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(i)], env=env, cwd=tmp_path)
             for i in (0, 1)]
    assert all(p.wait() == 0 for p in procs)
    files = list(tmp_path.glob("autotune-*.txt"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp.*"))
    # Every line parses: a fresh process loads it without a warning and knows at least one
    # process's 12 signatures.
    run = run_python("import fastconv_ext, json; print(json.dumps(fastconv_ext.autotune_cache_info()))", tmp_path)
    assert "autotuning cache file" not in run.stderr
    assert json.loads(run.stdout)["entries"] >= 12


@pytest.mark.parametrize("algorithm", ["auto", "native", "direct", "im2col", "shifted", "depthwise"])
def test_conv2d_channels_last_in_channels_last_out(algorithm):
    """A channels-last activation stays channels-last, as through F.conv2d, whichever path runs;
    opcheck holds the fake kernel to the same layout."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 9, 10, dtype=torch.float64, generator=g).to(memory_format=torch.channels_last)
    w = torch.randn(6, 1, 3, 3, dtype=torch.float64, generator=g)
    b = torch.randn(6, dtype=torch.float64, generator=g)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    y = fastconv_ext.conv2d(x, w, b, padding=1, groups=6, algorithm=algorithm)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y_ref = F.conv2d(x, w, b, padding=1, groups=6)
    gy = torch.randn(y.shape, dtype=torch.float64, generator=g).to(memory_format=torch.channels_last)
    for got, ref in zip((y,) + torch.autograd.grad(y, (x, w, b), gy), (y_ref,) + torch.autograd.grad(y_ref, (x, w, b), gy)):
        torch.testing.assert_close(got, ref)
    gx = ops.conv2d_input_backward(gy, w.detach(), [9, 10], [1, 1], [1, 1], [1, 1], 6, algorithm)
    assert gx.is_contiguous(memory_format=torch.channels_last)
    hp = ([1, 1], [1, 1], [1, 1], 6, algorithm)
    torch.library.opcheck(ops.conv2d.default, (x.detach().float(), w.detach().float(), b.detach().float(), *hp))
    torch.library.opcheck(ops.conv2d_input_backward.default, (gy.float(), w.detach().float(), [9, 10], *hp))
    # Unbatched and contiguous inputs stay contiguous.
    assert fastconv_ext.conv2d(x.detach()[0], w.detach(), padding=1, groups=6, algorithm=algorithm).is_contiguous()


def test_pointwise_float_layers_follow_the_nearest_measured_layers():
    """A 1x1 float layer runs im2col's GEMM for an operator where the layers calibration
    measured nearest to it (in its layout) were at least 1.1x faster so; grouped and padded ones
    stay native, and 16-bit ones where oneDNN takes them."""
    x, w = torch.randn(1, 32, 28, 28), torch.randn(16, 32, 1, 1)
    se, w_se = torch.randn(1, 32, 1, 1), torch.randn(8, 32, 1, 1)
    # Wins on a map in NCHW, loses on it channels-last and on a pixel.
    measured = [(1, 32, 16, 784, 1, 1, 0, 2.0), (1, 32, 16, 784, 1, 1, 1, 0.7), (1, 32, 8, 1, 1, 1, 0, 0.9)]

    def path(x, w, op="forward", groups=1, padding=0):
        return ops._conv_path(x, w, [1, 1], [padding] * 2, [1, 1], groups, "auto", op)

    with conv2d_rules(pointwise_forward=measured, pointwise_input=measured, pointwise_weight=0.9):
        assert [path(x, w, op) for op in ("forward", "input", "weight")] == ["im2col", "im2col", "native"]
        assert path(se, w_se) == "native" and path(se, w_se, "input") == "native"
        assert path(torch.randn(2, 32, 20, 20), w) == "im2col"  # nearer the map
        assert path(x.double(), w.double()) == "im2col"
        assert path(x.contiguous(memory_format=torch.channels_last), w) == "native"
        assert path(x.bfloat16(), w.bfloat16()) == ("im2col" if pytorch_generic_16bit(torch.bfloat16) else "native")
        assert path(x, torch.randn(16, 16, 1, 1), groups=2) == "native"
        assert path(x, w, padding=1) == "native"
        # Whichever runs, the result is the same.
        torch.testing.assert_close(fastconv_ext.conv2d(x, w), F.conv2d(x, w))
    with conv2d_rules(pointwise_forward=[(1, 32, 16, 784, 1, 1, 1, 1.5)]):
        assert path(x.contiguous(memory_format=torch.channels_last), w) == "im2col"


def test_built_in_measurements_follow_the_cpu_kind():
    """Without a profile file (conftest) a CPU uses the built-in measurements of its kind: the
    AVX-512 ones where the avx512 kernel tables can run, the AVX2 ones elsewhere; the two kinds'
    measurements differ, and every table has lines for every rule, but the AVX2 one for the rules
    choosing the depthwise kernels over the rows of NCHW layers (not measured on that kind: without
    lines a rule never holds, and the rows stay)."""
    kind, costs, lines = ops._built_in_profile()
    assert kind == ("avx512" if "avx512" in ops._cpu_capabilities() else "avx2")
    assert ops._cost_profile() == pytest.approx(costs)
    assert sorted(ops._conv2d_rules()) == sorted(lines)
    tables = {k: ops._built_in_profile(k) for k in ("avx512", "avx2")}
    assert tables[kind] == (kind, costs, lines)
    assert tables["avx512"][1] != tables["avx2"][1] and sorted(tables["avx512"][2]) != sorted(tables["avx2"][2])
    unmeasured = {"avx512": set(), "avx2": {rule for rule in RULES if rule.startswith("depthwise_nchw_kernel")}}
    for k, (_, _, table) in tables.items():
        assert {line.split()[0] for line in table} == set(RULES) - unmeasured[k]
    with pytest.raises(RuntimeError, match=r"CPU kinds 'avx512' and 'avx2', but got 'neon'"):
        ops._built_in_profile("neon")


def test_rule_tables_round_trip_and_bad_lines_raise():
    saved = ops._conv2d_rules()
    assert saved and all(len(line.split()) == 9 for line in saved)
    try:
        # Exactly the lines given: the rules they do not name have no measurements.
        assert ops._conv2d_rules(["pointwise_forward 1 2 3 4 1 1 0 1.5"]) == ["pointwise_forward 1 2 3 4 1 1 0 1.5"]
        assert sorted(ops._conv2d_rules([])) == sorted(saved)  # the built-in tables
        for bad in ["pointwise_forward 1 2 3", "nope 1 1 1 1 1 1 0 1", "depthwise_rows 1 1 1 1 1 1 2 1",
                    "depthwise_rows 1 1 1 1 1 1 0 -1", "depthwise_rows 1 1 1 1 1 1 0 1 extra"]:
            with pytest.raises(RuntimeError, match=r"a conv2d rule line is '<rule> <batch> .* but got '"):
                ops._conv2d_rules([bad])
        assert sorted(ops._conv2d_rules()) == sorted(saved)  # a bad line changes nothing
    finally:
        ops._conv2d_rules(saved)


def test_tuned_speedup_over_pytorch_is_reported(autotune):
    """For a tuned signature: PyTorch's kernel's time over the winner's, from the timings the
    cache records (1 where PyTorch's kernel won); None where nothing was tuned."""
    x, w = torch.randn(2, 8, 300), torch.randn(8, 1, 9)
    args = (x, w, [1], [4], [1], 8)
    assert ops._conv_tuned_speedup(*args) is None
    fastconv_ext.conv1d(x, w, padding=4, groups=8)
    speedup = ops._conv_tuned_speedup(*args)
    winner = ops._conv_settled_path(*args)
    assert speedup is not None and (speedup == 1.0 if winner == "native" else speedup > 0)
    assert ops._conv_tuned_speedup(*args, "input") is None  # no gradient ran
