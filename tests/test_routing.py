"""Where a call of fastconv's functions and modules goes (fastconv_ext/routing.py), eagerly and in
a torch.compile graph: PyTorch's convolution where every operator of the call would run
PyTorch's kernel, a fastconv operator everywhere else, the same numbers either way."""

import pytest
import torch
import torch.nn.functional as F

import fastconv_ext
from conftest import DEPTHWISE_RULES_HOLD, conv2d_rules

ops = torch.ops.fastconv
TORCH_CONVS = (torch.conv1d, torch.conv2d)


@pytest.fixture(autouse=True)
def depthwise_rules_hold():
    """Routing follows the settled paths whatever they are; the cases below are chosen for the
    depthwise rules' paths, so the rules hold whatever this machine's tables say."""
    with conv2d_rules(**DEPTHWISE_RULES_HOLD):
        yield


def traced_targets(fn, *args, dynamic=False):
    """Run fn compiled (fullgraph) and return (result, the names of the ops dynamo traced)."""
    torch._dynamo.reset()
    names = []

    def backend(gm, example_inputs):
        for n in gm.graph.nodes:
            if n.op == "call_function":
                names.append(f"torch.{n.target.__name__}" if n.target in TORCH_CONVS else str(n.target))
        return gm.forward

    out = torch.compile(fn, backend=backend, fullgraph=True, dynamic=dynamic)(*args)
    return out, names


def uses(names, what):
    return any(what in n for n in names)


def all_native(x, w, stride, padding, dilation, groups, op_names):
    return all(ops._conv_path(x.detach(), w.detach(), stride, padding, dilation, groups, "auto", op) == "native"
               for op in op_names)


def inductor_layout(x):
    """x as Inductor will lay it out: channels-last for a 4-D CPU convolution where oneDNN is there."""
    if x.dim() == 4 and x.device.type == "cpu" and torch.backends.mkldnn.is_available():
        return x.contiguous(memory_format=torch.channels_last)
    return x


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("case", [
    ((2, 16, 12, 12), (32, 16, 3, 3), 1),   # dense: PyTorch's kernel by default
    ((2, 16, 12, 12), (16, 1, 3, 3), 16),   # depthwise: fastconv's backward by default
    ((2, 8, 300), (8, 1, 31), 8),           # depthwise conv1d, long kernel: fastconv's by default
    ((2, 64, 50), (64, 64, 3), 1),          # dense conv1d
])
def test_traced_as_pytorch_exactly_where_every_operator_is_native(case, grad):
    x_shape, w_shape, groups = case
    dims = len(w_shape) - 2
    module = (fastconv_ext.Conv1d if dims == 1 else fastconv_ext.Conv2d)(
        x_shape[1], w_shape[0], w_shape[2:], padding=1, groups=groups).double()
    x = torch.randn(x_shape, dtype=torch.float64, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        out, names = traced_targets(module, x)
    hp = ([1] * dims, [1] * dims, [1] * dims, groups)
    op_names = ["forward", "input", "weight"] if grad else ["forward"]
    native = any(all_native(layout, module.weight, *hp, op_names) for layout in (x, inductor_layout(x)))
    assert uses(names, "fastconv") != native, names
    assert uses(names, "conv") and (native == uses(names, f"torch.conv{dims}d")), names
    ref = (F.conv1d if dims == 1 else F.conv2d)(x, module.weight, module.bias, padding=1, groups=groups)
    torch.testing.assert_close(out, ref)
    if grad:
        got = torch.autograd.grad(out.square().sum(), (x, module.weight))
        want = torch.autograd.grad(ref.square().sum(), (x, module.weight))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


def test_the_cases_above_cover_both_outcomes():
    dense = (torch.randn(2, 16, 12, 12), torch.randn(32, 16, 3, 3))
    depthwise = (torch.randn(2, 16, 12, 12), torch.randn(16, 1, 3, 3))
    hp = ([1, 1], [1, 1], [1, 1])
    assert all_native(*dense, *hp, 1, ["forward", "input", "weight"])
    assert not all_native(*depthwise, *hp, 16, ["forward", "input", "weight"])


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="Inductor keeps NCHW without oneDNN")
def test_traced_cpu_conv2d_is_fastconv_only_where_both_layouts_choose_it():
    # Inductor runs every CPU convolution channels-last. An NCHW depthwise 3x3 forward on long
    # rows runs fastconv's direct rows eagerly; channels-last, PyTorch's forward is the default:
    # traced as PyTorch's.
    x, w = torch.randn(2, 16, 32, 32), torch.randn(16, 1, 3, 3)
    hp = ([1, 1], [1, 1], [1, 1], 16)
    assert not all_native(x, w, *hp, ["forward"]) and all_native(inductor_layout(x), w, *hp, ["forward"])
    with torch.no_grad():
        out, names = traced_targets(lambda x: fastconv_ext.conv2d(x, w, padding=1, groups=16), x)
    assert uses(names, "torch.conv2d") and not uses(names, "fastconv"), names
    torch.testing.assert_close(out, F.conv2d(x, w, padding=1, groups=16))
    # A strided depthwise forward is PyTorch's in NCHW and fastconv's channels-last: PyTorch's
    # too, since fastconv's operator is traced only where both layouts choose it.
    xs, w5, hs = torch.randn(1, 16, 30, 30), torch.randn(16, 1, 5, 5), ([2, 2], [2, 2], [1, 1], 16)
    assert all_native(xs, w5, *hs, ["forward"]) and not all_native(inductor_layout(xs), w5, *hs, ["forward"])
    with torch.no_grad():
        names = traced_targets(lambda x: fastconv_ext.conv2d(x, w5, stride=2, padding=2, groups=16), xs)[1]
    assert uses(names, "torch.conv2d") and not uses(names, "fastconv"), names
    # Its gradients are fastconv's in either layout: a training graph keeps the operator.
    assert not all_native(inductor_layout(x), w, *hp, ["input", "weight"])
    xg = x.clone().requires_grad_()
    assert uses(traced_targets(lambda x: fastconv_ext.conv2d(x, w, padding=1, groups=16), xg)[1], "fastconv.conv2d")


def close_to_reference(out, x, w):
    # Whichever path autotuning picks sums the 144 float32 products in its own order: against
    # the float64 reference, at float32's accuracy for sums of that length.
    torch.testing.assert_close(out.double(), F.conv2d(x.double(), w.double(), padding=1), rtol=1e-5, atol=1e-4)


def test_forced_paths_autotuning_and_symbolic_sizes_stay_fastconv_operators():
    x, w = torch.randn(2, 16, 12, 12), torch.randn(32, 16, 3, 3)

    def f(algorithm):
        return lambda x: fastconv_ext.conv2d(x, w, padding=1, algorithm=algorithm)

    assert uses(traced_targets(f("native"), x)[1], "torch.conv2d")
    assert uses(traced_targets(f("im2col"), x)[1], "fastconv.conv2d")
    assert uses(traced_targets(f("auto"), x)[1], "torch.conv2d")
    # Symbolic sizes: the kernel decides at run time.
    out, names = traced_targets(f("auto"), x, dynamic=True)
    assert uses(names, "fastconv.conv2d")
    close_to_reference(out, x, w)
    # Autotuning on: a signature still to be tuned is tuned while tracing, on random tensors of
    # its sizes, in the traced layout and in Inductor's; the graph holds PyTorch's convolution
    # exactly where every layout that counts settled on it.
    fastconv_ext.clear_autotune_cache()
    fastconv_ext.set_autotune(True)
    try:
        layouts = [x] + ([inductor_layout(x)] if inductor_layout(x) is not x else [])
        assert all(ops._conv_settled_path(t, w, [1, 1], [1, 1], [1, 1], 1) is None for t in layouts)
        out, names = traced_targets(f("auto"), x)
        tuned = [ops._conv_settled_path(t, w, [1, 1], [1, 1], [1, 1], 1) for t in layouts]
        assert all(p in ops._conv_candidates(x, w, [1, 1], [1, 1], [1, 1], 1) for p in tuned)
        assert fastconv_ext.autotune_cache_info()["misses"] == len(layouts)
        # A tuned path is traced only where it beat PyTorch's kernel by 1.1x in every layout.
        speedups = [ops._conv_tuned_speedup(t, w, [1, 1], [1, 1], [1, 1], 1) for t in layouts]
        assert all(s is not None and s > 0 for s in speedups)
        assert all((s == 1.0) == (p == "native") for s, p in zip(speedups, tuned))
        native = any(s < 1.1 for s in speedups)
        assert uses(names, "torch.conv2d") == native, (names, tuned, speedups)
        assert uses(names, "fastconv.conv2d") == (not native), (names, tuned, speedups)
        close_to_reference(out, x, w)
        # Traced again: nothing more to tune, the same graph.
        assert traced_targets(f("auto"), x)[1] == names
        assert fastconv_ext.autotune_cache_info()["misses"] == len(layouts)
    finally:
        fastconv_ext.set_autotune(False)
        fastconv_ext.clear_autotune_cache()


def test_inductor_graph_with_padding_modes_and_channels_last():
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        fastconv_ext.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), torch.nn.ReLU(),
        fastconv_ext.Conv2d(8, 8, 3, padding="same", groups=8), torch.nn.ReLU(),
        fastconv_ext.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), rtol=1e-4, atol=1e-5)


def ran_fastconv(fn):
    with torch.profiler.profile() as prof:
        out = fn()
    return out, any(e.name.startswith("fastconv::conv") for e in prof.events())


def test_eager_calls_route_like_the_settled_paths():
    torch.manual_seed(0)
    dense = fastconv_ext.Conv2d(16, 32, 3, padding=1)
    depthwise = fastconv_ext.Conv2d(16, 16, 3, padding=1, groups=16)
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        out, fast = ran_fastconv(lambda: dense(x))
    assert not fast and all_native(x, dense.weight, [1, 1], [1, 1], [1, 1], 1, ["forward"])
    torch.testing.assert_close(out, F.conv2d(x, dense.weight, dense.bias, padding=1))
    # With gradients the depthwise layer's backward is fastconv's by default: the operator runs.
    xg = x.clone().requires_grad_()
    out, fast = ran_fastconv(lambda: depthwise(xg))
    assert fast == (not all_native(xg, depthwise.weight, [1, 1], [1, 1], [1, 1], 16, ["forward", "input", "weight"]))
    assert fast
    out.square().sum().backward()
    ref = F.conv2d(xg, depthwise.weight, depthwise.bias, padding=1, groups=16)
    want = torch.autograd.grad(ref.square().sum(), xg)[0]
    torch.testing.assert_close(xg.grad, want)
    # Forced paths: 'native' is PyTorch's convolution, any other the operator.
    assert not ran_fastconv(lambda: fastconv_ext.conv2d(x, dense.weight, padding=1, algorithm="native"))[1]
    assert ran_fastconv(lambda: fastconv_ext.conv2d(x, dense.weight, padding=1, algorithm="im2col"))[1]


class Tagged(torch.Tensor):
    """A tensor subclass with the default __torch_function__: results come back Tagged."""


@pytest.mark.parametrize("algorithm", ["native", "im2col"])
def test_eager_calls_honour_torch_function(algorithm):
    """Eager calls go to C++ (fastconv_ext._C) only for plain tensors: a subclass's
    __torch_function__ sees the call, on both routes, as it does for F.conv2d."""
    layer = fastconv_ext.Conv2d(4, 6, 3, padding=1, algorithm=algorithm)
    x = torch.randn(2, 4, 8, 8)
    want = F.conv2d(x, layer.weight, layer.bias, padding=1)
    for out in (layer(x.as_subclass(Tagged)),
                fastconv_ext.conv2d(x.as_subclass(Tagged), layer.weight, layer.bias, padding=1, algorithm=algorithm)):
        assert type(out) is Tagged
        torch.testing.assert_close(out.as_subclass(torch.Tensor), want)
    out, fast = ran_fastconv(lambda: layer(x))
    assert type(out) is torch.Tensor and fast == (algorithm != "native")


def test_a_remembered_route_honours_torch_function_modes():
    """A module's remembered route, and the functions' routing in C++, run only plain tensors
    outside __torch_function__ modes; under a mode the call goes through Python, where the mode
    sees it."""
    from torch.overrides import TorchFunctionMode

    class Counting(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.convolutions = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.convolutions += func in (F.conv2d, ops.conv2d.default, ops.conv2d)
            return func(*args, **(kwargs or {}))

    for algorithm in ("native", "im2col"):
        layer, x = fastconv_ext.Conv2d(4, 6, 3, padding=1, algorithm=algorithm), torch.randn(2, 4, 8, 8)
        layer(x), layer(x)  # the route is remembered
        call = lambda: fastconv_ext.conv2d(x, layer.weight, layer.bias, padding=1, algorithm=algorithm)  # noqa: E731
        call()
        for fn in (lambda: layer(x), call):
            with Counting() as mode:
                out = fn()
            assert mode.convolutions == 1, algorithm
            torch.testing.assert_close(out.double(), F.conv2d(x.double(), layer.weight.double(),
                                                              layer.bias.double(), padding=1), rtol=1e-5, atol=1e-5)


def test_a_module_with_a_remembered_route_copies_and_pickles():
    """A copy or an unpickled module decides its route again; the original keeps its own."""
    import copy
    import io

    from fastconv_ext import routing

    layer, x = fastconv_ext.Conv2d(4, 6, 3, padding=1), torch.randn(2, 4, 8, 8)
    want = layer(x)
    assert routing.ROUTE_ATTRIBUTE in vars(layer)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(layer), torch.load(buffer, weights_only=False)):
        assert vars(other).get(routing.ROUTE_ATTRIBUTE) is None
        torch.testing.assert_close(other(x), want)
        assert routing.ROUTE_ATTRIBUTE in vars(other)
    torch.testing.assert_close(layer(x), want)


def test_eager_call_with_an_argument_of_the_wrong_type_names_it():
    """An argument the C++ entry point cannot take goes to the operator, whose check names it."""
    x, w = torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3)
    with pytest.raises(RuntimeError, match="algorithm"):
        fastconv_ext.conv2d(x, w, padding=1, groups=4, algorithm=3)


def test_eager_routing_follows_autotuning_switched_on_and_off():
    w = torch.randn(32, 16, 3, 3)
    x = torch.randn(2, 16, 12, 12)
    call = lambda: fastconv_ext.conv2d(x, w, padding=1)  # noqa: E731
    assert not ran_fastconv(call)[1]  # default rules: native, remembered
    fastconv_ext.clear_autotune_cache()
    fastconv_ext.set_autotune(True)
    try:
        out, fast = ran_fastconv(call)  # still to be tuned: the operator runs and tunes
        assert fast
        close_to_reference(out, x, w)
        tuned = ops._conv_settled_path(x, w, [1, 1], [1, 1], [1, 1], 1)
        assert ran_fastconv(call)[1] == (tuned != "native")
    finally:
        fastconv_ext.set_autotune(False)
        fastconv_ext.clear_autotune_cache()
    assert not ran_fastconv(call)[1]


def test_a_module_remembers_its_route_until_the_signature_or_settings_change(monkeypatch):
    """A module's eager call compares its signature with the last one and asks the path
    selection only when it differs: new sizes or layout, grad mode, algorithm, or settings
    (autotuning switched); revert() drops what the module kept."""
    from fastconv_ext import routing

    asked = []
    answer = routing._answer
    monkeypatch.setattr(routing, "_answer", lambda *a: asked.append(1) or answer(*a))
    model = fastconv_ext.convert(torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1)))
    layer, x = model[0], torch.randn(2, 16, 12, 12)

    def runs(fn):
        del asked[:]
        out, fast = ran_fastconv(fn)
        return len(asked), fast, out

    with torch.no_grad():
        assert runs(lambda: model(x))[:2] == (1, False)  # dense 3x3: PyTorch's kernel
        n, fast, out = runs(lambda: model(x))
        assert (n, fast) == (0, False)
        torch.testing.assert_close(out, F.conv2d(x, layer.weight, layer.bias, padding=1))
        assert runs(lambda: model(torch.randn(1, 16, 9, 9)))[0] == 1
        assert runs(lambda: model(x.contiguous(memory_format=torch.channels_last)))[0] == 1
        layer.algorithm = "im2col"
        assert runs(lambda: model(x))[:2] == (1, True)
        layer.algorithm = "auto"
        # Assigned hyper-parameters and a weight of another shape are not the remembered call.
        layer.padding = (0, 0)
        n, _, out = runs(lambda: model(x))
        assert n == 1 and out.shape[-1] == 10
        torch.testing.assert_close(out, F.conv2d(x, layer.weight, layer.bias))
        layer.padding = (1, 1)
        layer.weight = torch.nn.Parameter(torch.randn(32, 16, 1, 1))
        n, _, out = runs(lambda: model(x))
        assert n == 1
        torch.testing.assert_close(out, F.conv2d(x, layer.weight, layer.bias, padding=1))
        layer.weight = torch.nn.Parameter(torch.randn(32, 16, 3, 3))
    assert runs(lambda: model(x.requires_grad_()))[0] == 1
    fastconv_ext.set_autotune(True)
    try:
        with torch.no_grad():
            assert runs(lambda: model(x.detach()))[0] >= 1
    finally:
        fastconv_ext.set_autotune(False)
        fastconv_ext.clear_autotune_cache()
    fastconv_ext.revert(model)
    assert routing.ROUTE_ATTRIBUTE not in vars(layer) and type(layer) is torch.nn.Conv2d


@pytest.mark.parametrize("padding,kernel", [("same", 3), ("same", 4), ("valid", 3), (2, 3)])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_module_routes_every_padding_like_torch(padding, kernel, padding_mode):
    """'same' with an even total and 'valid' resolve to numbers and are remembered like numeric
    padding; 'same' with an odd total (one more on the right) and other padding modes take the
    functional form. The result is torch.nn's either way, called again and again."""
    from fastconv_ext import routing

    torch.manual_seed(0)
    ref = torch.nn.Conv2d(8, 8, kernel, padding=padding, padding_mode=padding_mode)
    layer = fastconv_ext.convert(torch.nn.Sequential(torch.nn.Conv2d(8, 8, kernel, padding=padding,
                                                                     padding_mode=padding_mode)))[0]
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 11, 13)
    for _ in range(2):
        torch.testing.assert_close(layer(x), ref(x))
    route = vars(layer).get(routing.ROUTE_ATTRIBUTE)
    resolved = padding_mode == "zeros" and (padding != "same" or kernel % 2 == 1)
    assert (route is not None) == resolved


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="Inductor keeps NCHW without oneDNN")
def test_inductor_hands_conv2d_its_neighbours_layout():
    """The conv2d operators take any layout (their outputs follow their inputs' layout, fake
    kernels included): in an Inductor graph whose convolutions run channels-last, the operator
    reads and writes channels-last, with no conversion to NCHW and back around it."""
    from torch._inductor.utils import run_and_get_code

    w1, w2, w3 = torch.randn(64, 32, 1, 1), torch.randn(64, 1, 3, 3), torch.randn(32, 64, 1, 1)

    def f(x):
        y = ops.conv2d(F.conv2d(x, w1).relu(), w2, None, [1, 1], [1, 1], [1, 1], 64, "depthwise")
        return F.conv2d(y.relu(), w3)

    x = torch.randn(1, 32, 28, 28)
    torch._dynamo.reset()
    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(f), x)
    torch.testing.assert_close(out, f(x), rtol=1e-4, atol=1e-4)
    checks = [line for line in "\n".join(code).splitlines()
              if "assert_size_stride" in line and "fastconv.conv2d" in line]
    assert checks and all("(50176, 1, 1792, 64)" in line for line in checks), checks
