"""conv1d inside the PyTorch stack: opcheck, torch.compile, TorchScript, nn.Module drop-in."""


import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from conftest import Conv1dCase, random_cases, roundtrip
from torch import nn

import fastconv_ext

OPCHECK_CASES = [
    Conv1dCase(2, 4, 6, 20, 3, stride=2, padding=1, dilation=2, groups=2),
    Conv1dCase(None, 3, 5, 17, 4, padding=3),
    Conv1dCase(3, 4, 4, 600, 5, groups=4, bias=False),
    Conv1dCase(0, 2, 2, 9, 3),
]


def hp(case):
    return [case.stride], [case.padding], [case.dilation], case.groups


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_opcheck_all_ops(case, dtype, device):
    x, w, b = case.tensors(dtype=dtype, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fastconv.conv1d.default, (x, w, b, *hp(case)))
    gy = F.conv1d(x.detach(), w.detach(), None, **case.args()).requires_grad_()
    torch.library.opcheck(
        torch.ops.fastconv.conv1d_input_backward.default, (gy, w, case.length, *hp(case))
    )
    torch.library.opcheck(
        torch.ops.fastconv.conv1d_weight_backward.default, (gy, x, case.kernel_size, *hp(case))
    )
    torch.library.opcheck(
        torch.ops.fastconv.conv1d_weight_bias_backward.default, (gy, x, case.kernel_size, *hp(case))
    )


def test_compile_fullgraph_dynamic_forward_backward(device):
    """One graph, no breaks, recompiled neither for new lengths nor for backward."""
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    w = torch.randn(6, 2, 3, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)

    def f(x, w, b):
        return fastconv_ext.conv1d(x, w, b, stride=2, padding=1, groups=2).tanh().sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=counter)
    for length in (20, 33, 47, 128):
        x = torch.randn(3, 4, length, device=device, requires_grad=True)
        out = compiled(x, w, b)
        grads = torch.autograd.grad(out, (x, w, b))
        out_ref = F.conv1d(x, w, b, stride=2, padding=1, groups=2).tanh().sum()
        grads_ref = torch.autograd.grad(out_ref, (x, w, b))
        torch.testing.assert_close(out, out_ref)
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref)
    assert counter.frame_count == 1
    # The default (inductor) backend too.
    torch._dynamo.reset()
    x = torch.randn(2, 4, 25, device=device, requires_grad=True)
    out = torch.compile(f, fullgraph=True, dynamic=True)(x, w, b)
    torch.testing.assert_close(out, F.conv1d(x, w, b, stride=2, padding=1, groups=2).tanh().sum())
    out.backward()


def test_compile_module_with_padding_mode():
    torch._dynamo.reset()
    m = fastconv_ext.Conv1d(4, 4, 5, padding="same", padding_mode="reflect", groups=4)
    ref = nn.Conv1d(4, 4, 5, padding="same", padding_mode="reflect", groups=4)
    ref.load_state_dict(m.state_dict())
    compiled = torch.compile(m, fullgraph=True, dynamic=True)
    for length in (16, 31):
        x = torch.randn(2, 4, length)
        torch.testing.assert_close(compiled(x), ref(x))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [0, 2, "same", "valid"])
def test_module_drop_in(padding_mode, padding):
    torch.manual_seed(0)
    kwargs = dict(stride=1, padding=padding, dilation=2, groups=2, bias=True, padding_mode=padding_mode)
    ref = nn.Conv1d(4, 6, 4, **kwargs).double()
    m = fastconv_ext.Conv1d(4, 6, 4, **kwargs).double()
    assert isinstance(m, nn.Conv1d)
    assert m.state_dict().keys() == ref.state_dict().keys()
    m.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 21, dtype=torch.float64, requires_grad=True)
    y, y_ref = m(x), ref(x)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, m.weight, m.bias), gy)
    grads_ref = torch.autograd.grad(y_ref, (x, ref.weight, ref.bias), gy)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)
    # Unbatched input too.
    torch.testing.assert_close(m(x[0]), ref(x[0]))


def test_module_same_init_as_torch():
    torch.manual_seed(3)
    ref = nn.Conv1d(8, 16, 5, bias=True)
    torch.manual_seed(3)
    m = fastconv_ext.Conv1d(8, 16, 5, bias=True)
    torch.testing.assert_close(m.weight, ref.weight)
    torch.testing.assert_close(m.bias, ref.bias)


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_torchscript_module_script_save_load(padding_mode):
    m = fastconv_ext.Conv1d(4, 6, 3, padding=1, groups=2, padding_mode=padding_mode).double()
    scripted = roundtrip(torch.jit.script(m))
    x = torch.randn(2, 4, 19, dtype=torch.float64, requires_grad=True)
    y = scripted(x)
    torch.testing.assert_close(y, m(x))
    assert "fastconv::conv1d" in str(scripted.graph) or "fastconv::conv1d" in str(scripted.inlined_graph)
    (gx,) = torch.autograd.grad(y.sum(), x)
    (gx_ref,) = torch.autograd.grad(m(x).sum(), x)
    torch.testing.assert_close(gx, gx_ref)


def test_torchscript_functional():
    scripted = torch.jit.script(fastconv_ext.conv1d)
    case = random_cases(1, seed=5)[0]
    x, w, b = case.tensors()
    torch.testing.assert_close(scripted(x, w, b, [case.stride], [case.padding], [case.dilation], case.groups),
                               F.conv1d(x, w, b, **case.args()))
    torch.testing.assert_close(scripted(x, w, b, padding="same", dilation=1, groups=case.groups),
                               F.conv1d(x, w, b, padding="same", groups=case.groups))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 2, 5, dtype=torch.float64))

        def forward(self, x):
            return fastconv_ext.conv1d(x, self.w, None, 1, "same")

    model = Model()
    loaded = roundtrip(torch.jit.script(model))
    x = torch.randn(1, 2, 30, dtype=torch.float64)
    torch.testing.assert_close(loaded(x), F.conv1d(x, model.w, None, 1, "same"))


def _every_op_call(requires_grad):
    g = torch.Generator().manual_seed(5)
    x1, w1 = torch.randn(2, 3, 16, generator=g), torch.randn(4, 3, 3, generator=g)
    x2, w2 = torch.randn(2, 3, 8, 8, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    a, v = torch.randn(5, 9, generator=g), torch.randn(5, 4, generator=g)
    for t in (x1, w1, x2, w2, a, v):
        t.requires_grad_(requires_grad)
    return {
        "conv1d": lambda: fastconv_ext.conv1d(x1, w1, padding=1),
        "conv1d fft": lambda: fastconv_ext.conv1d(x1, w1, padding=1, algorithm="fft"),
        "conv2d": lambda: fastconv_ext.conv2d(x2, w2, padding=1),
        "convolve": lambda: fastconv_ext.convolve(a, v),
        "conv1d_input_backward": lambda: torch.ops.fastconv.conv1d_input_backward(
            torch.ones(2, 4, 16), w1, 16, [1], [1], [1], 1),
        "conv1d_weight_backward": lambda: torch.ops.fastconv.conv1d_weight_backward(
            torch.ones(2, 4, 16), x1, 3, [1], [1], [1], 1),
        "conv1d_weight_bias_backward": lambda: torch.ops.fastconv.conv1d_weight_bias_backward(
            torch.ones(2, 4, 16), x1, 3, [1], [1], [1], 1)[0],
    }


def test_calls_without_gradients_record_nothing():
    """Without inputs that require grad, or under no_grad, the ops build no graph (they skip the
    autograd Function); with them, every op records its node."""
    for name, call in _every_op_call(requires_grad=False).items():
        y = call()
        assert y.grad_fn is None and not y.requires_grad, name
    calls = _every_op_call(requires_grad=True)
    with torch.no_grad():
        for name, call in calls.items():
            y = call()
            assert y.grad_fn is None and not y.requires_grad, name
    for name, call in calls.items():
        assert call().grad_fn is not None, name


def test_forward_mode_tangents_are_not_dropped():
    """A dual input (forward-mode AD) is refused, not run without its tangent."""
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(2, 3, 16, dtype=torch.float64)
    w = torch.randn(4, 3, 3, dtype=torch.float64)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.ones_like(x))
        with pytest.raises(RuntimeError, match="jvp is not implemented"):
            fastconv_ext.conv1d(dual, w)
        with pytest.raises(RuntimeError, match="jvp is not implemented"):
            fastconv_ext.convolve(dual[0], w[0])
