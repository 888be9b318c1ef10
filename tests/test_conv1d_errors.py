"""Invalid calls raise a Python exception naming the argument and the rule."""

import pytest
import torch

import fastconv_ext

ops = torch.ops.fastconv


def x3(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


BAD_CONV1D_CALLS = [
    # (id, args, kwargs, message pattern)
    ("input_dtype_int", (torch.ones(1, 1, 4, dtype=torch.int64), x3(1, 1, 2)), {}, r"input must be float32"),
    ("input_complex", (torch.ones(1, 1, 4, dtype=torch.complex64), x3(1, 1, 2)), {}, r"input must be float32"),
    ("dtype_mismatch", (x3(1, 1, 4), x3(1, 1, 2, dtype=torch.float64)), {}, r"weight must have the same dtype as input"),
    ("bias_dtype", (x3(1, 1, 4), x3(1, 1, 2), x3(1, dtype=torch.float64)), {}, r"bias must have the same dtype"),
    ("input_rank_1", (x3(4), x3(1, 1, 2)), {}, r"expected input to be 2-D \(C, L\) or 3-D"),
    ("input_rank_4", (x3(1, 1, 1, 4), x3(1, 1, 2)), {}, r"expected input to be 2-D \(C, L\) or 3-D"),
    ("weight_rank_2", (x3(1, 1, 4), x3(1, 2)), {}, r"expected weight to be 3-D"),
    ("bias_shape", (x3(1, 1, 4), x3(2, 1, 2), x3(3)), {}, r"expected bias to be 1-D with out_channels = 2"),
    ("bias_rank", (x3(1, 1, 4), x3(2, 1, 2), x3(2, 1)), {}, r"expected bias to be 1-D"),
    ("stride_zero", (x3(1, 1, 4), x3(1, 1, 2)), dict(stride=0), r"stride must be positive"),
    ("stride_negative", (x3(1, 1, 4), x3(1, 1, 2)), dict(stride=-1), r"stride must be positive"),
    ("dilation_zero", (x3(1, 1, 4), x3(1, 1, 2)), dict(dilation=0), r"dilation must be positive"),
    ("padding_negative", (x3(1, 1, 4), x3(1, 1, 2)), dict(padding=-1), r"padding must be non-negative"),
    ("groups_zero", (x3(1, 2, 4), x3(2, 2, 2)), dict(groups=0), r"groups must be positive"),
    ("groups_negative", (x3(1, 2, 4), x3(2, 2, 2)), dict(groups=-1), r"groups must be positive"),
    ("in_channels_vs_groups", (x3(1, 3, 4), x3(2, 1, 2)), dict(groups=2), r"in_channels \(3\) must be divisible by groups"),
    ("out_channels_vs_groups", (x3(1, 4, 4), x3(3, 2, 2)), dict(groups=2), r"out_channels \(3\) must be divisible by groups"),
    ("channel_mismatch", (x3(1, 3, 4), x3(2, 2, 2)), {}, r"input has 3 channels, but weight"),
    ("zero_out_channels", (x3(1, 3, 4), x3(0, 3, 2)), {}, r"out_channels must be positive"),
    ("zero_in_channels", (x3(1, 0, 4), x3(2, 0, 2)), {}, r"in_channels must be positive"),
    ("zero_kernel", (x3(1, 1, 4), x3(1, 1, 0)), {}, r"kernel size must be positive"),
    ("kernel_too_long", (x3(1, 1, 4), x3(1, 1, 5)), {}, r"dilated kernel .* must not be longer than the padded input"),
    ("dilated_kernel_too_long", (x3(1, 1, 4), x3(1, 1, 3)), dict(dilation=2), r"must not be longer than the padded input"),
    ("stride_two_values", (x3(1, 1, 4), x3(1, 1, 2)), dict(stride=(1, 1)), r"stride must be an int or a sequence of 1 int"),
    ("padding_two_values", (x3(1, 1, 4), x3(1, 1, 2)), dict(padding=[1, 1]), r"padding must be an int or a sequence of 1"),
    ("same_with_stride", (x3(1, 1, 4), x3(1, 1, 2)), dict(padding="same", stride=2), r"padding='same' is not supported for strided"),
    ("unknown_padding_string", (x3(1, 1, 4), x3(1, 1, 2)), dict(padding="full"), r"padding must be 'valid', 'same', 'causal' or an int"),
]


@pytest.mark.parametrize("args,kwargs,pattern", [c[1:] for c in BAD_CONV1D_CALLS], ids=[c[0] for c in BAD_CONV1D_CALLS])
def test_bad_conv1d_call_raises(args, kwargs, pattern):
    with pytest.raises((RuntimeError, ValueError), match=pattern):
        fastconv_ext.conv1d(*args, **kwargs)


def test_bad_call_raises_on_meta_too():
    """The fake kernels share the checks, so torch.compile reports the same error."""
    x = torch.empty(1, 3, 4, device="meta")
    w = torch.empty(2, 2, 2, device="meta")
    with pytest.raises(RuntimeError, match=r"input has 3 channels, but weight"):
        ops.conv1d(x, w)


def test_schema_rejects_stride_list_of_two():
    with pytest.raises(RuntimeError, match=r"stride must be a single integer"):
        ops.conv1d(x3(1, 1, 4), x3(1, 1, 2), None, [1, 1])


def test_device_mismatch_raises():
    w = torch.empty(1, 1, 2, device="meta")
    with pytest.raises(RuntimeError, match=r"weight must be on the same device as input"):
        ops.conv1d(x3(1, 1, 4), w)


BAD_BACKWARD_CALLS = [
    ("input_backward_length", lambda: ops.conv1d_input_backward(x3(1, 2, 5), x3(2, 1, 3), 10, [1], [0], [1], 1),
     r"grad_output has length 5 but a convolution of an input of length 10 gives length 8"),
    ("input_backward_channels", lambda: ops.conv1d_input_backward(x3(1, 3, 8), x3(2, 1, 3), 10, [1], [0], [1], 1),
     r"grad_output has 3 channels but weight.size\(0\) is 2"),
    ("input_backward_negative_length", lambda: ops.conv1d_input_backward(x3(1, 2, 8), x3(2, 1, 3), -1, [1], [0], [1], 1),
     r"input_length must be non-negative"),
    ("weight_backward_batch", lambda: ops.conv1d_weight_backward(x3(2, 2, 8), x3(3, 1, 10), 3, [1], [0], [1], 1),
     r"does not match the batch of input"),
    ("weight_backward_rank", lambda: ops.conv1d_weight_backward(x3(2, 8), x3(1, 1, 10), 3, [1], [0], [1], 1),
     r"does not match the batch of input"),
    ("weight_backward_length", lambda: ops.conv1d_weight_backward(x3(1, 2, 7), x3(1, 1, 10), 3, [1], [0], [1], 1),
     r"grad_output has length 7 but the convolution of input of length 10 gives length 8"),
    ("weight_backward_kernel", lambda: ops.conv1d_weight_backward(x3(1, 2, 7), x3(1, 1, 10), 0, [1], [0], [1], 1),
     r"kernel size must be positive"),
    ("weight_backward_dtype", lambda: ops.conv1d_weight_backward(x3(1, 2, 8), x3(1, 1, 10, dtype=torch.float64), 3, [1], [0], [1], 1),
     r"input must have the same dtype as grad_output"),
    ("weight_bias_backward_length", lambda: ops.conv1d_weight_bias_backward(x3(1, 2, 7), x3(1, 1, 10), 3, [1], [0], [1], 1),
     r"fastconv.conv1d_weight_bias_backward: grad_output has length 7 but the convolution of input of length 10 gives length 8"),
    ("weight_bias_backward_algorithm", lambda: ops.conv1d_weight_bias_backward(x3(1, 2, 8), x3(1, 1, 10), 3, [1], [0], [1], 1, "fast"),
     r"fastconv.conv1d_weight_bias_backward: algorithm must be"),
]


@pytest.mark.parametrize("call,pattern", [c[1:] for c in BAD_BACKWARD_CALLS], ids=[c[0] for c in BAD_BACKWARD_CALLS])
def test_bad_backward_op_call_raises(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


def test_weight_bias_backward_errors_name_it_on_meta_too():
    """Backends without a fused kernel (Meta, CUDA) check under the fused operator's name as well."""
    gy, x = torch.empty(1, 2, 7, device="meta"), torch.empty(1, 1, 10, device="meta")
    with pytest.raises(RuntimeError, match=r"fastconv.conv1d_weight_bias_backward: grad_output has length 7"):
        ops.conv1d_weight_bias_backward(gy, x, 3, [1], [0], [1], 1)
