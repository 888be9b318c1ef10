"""Every layer the benchmarks time (fastconv_ext.testing), cut down to test size, against
torch.nn.functional in float64: the forward and the input, weight and bias gradients, with the
default path choice and in float32 against the float64 reference."""

import pytest
import torch
import torch.nn.functional as F

import fastconv_ext
from fastconv_ext.testing import CONV1D_SHAPES, CONV2D_SHAPES


def outputs_and_grads(conv, x, w, b, gy, **kw):
    y = conv(x, w, b, **kw)
    return (y,) + torch.autograd.grad(y, (x, w, b), gy)


def check(conv, reference, x_shape, w_shape, channels_last, kw, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(w_shape, generator=g, dtype=torch.float64)
    b = torch.randn(w_shape[0], generator=g, dtype=torch.float64)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y_ref = reference(*leaves, **kw)
    gy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    expected = outputs_and_grads(reference, *leaves, gy, **kw)
    ours = [t.detach().to(dtype).requires_grad_() for t in (x, w, b)]
    got = outputs_and_grads(conv, *ours, gy.to(dtype), **kw)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-3)
    for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, expected):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), e, **tol, msg=lambda m: f"{name}: {m}")
    if channels_last:
        assert got[0].is_contiguous(memory_format=torch.channels_last), "output layout"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", CONV1D_SHAPES, ids=lambda s: s.name)
def test_conv1d_benchmark_layers(shape, dtype):
    s = shape.test_size()
    w_shape = (s.out_channels, s.in_channels // s.groups, s.kernel_size)
    check(fastconv_ext.conv1d, F.conv1d, (s.batch, s.in_channels, s.length), w_shape, False, s.args(), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", CONV2D_SHAPES, ids=lambda s: s.name)
def test_conv2d_benchmark_layers(shape, dtype):
    s = shape.test_size()
    check(fastconv_ext.conv2d, F.conv2d, s.input, s.weight, s.channels_last, s.args(), dtype)


def test_test_size_keeps_the_layer():
    for shape in CONV1D_SHAPES:
        s = shape.test_size()
        assert (s.kernel_size, s.stride, s.padding, s.dilation) == (
            shape.kernel_size, shape.stride, shape.padding, shape.dilation)
        assert s.category == shape.category, shape.name
        assert s.out_length > 0 and s.in_channels <= 8 and s.out_channels <= 8
    for shape in CONV2D_SHAPES:
        s = shape.test_size()
        assert s.weight[2:] == shape.weight[2:] and (s.stride, s.padding) == (shape.stride, shape.padding)
        assert (s.groups == s.input[1]) == (shape.groups == shape.input[1]), shape.name
        assert min(s.out_hw()) > 0 and s.channels_last == shape.channels_last
