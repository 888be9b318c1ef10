"""What a fastconv convolution becomes in a ``torch.compile`` graph.

A fastconv operator is opaque to the compiler: it runs its own kernel, and Inductor cannot
reason about it. Where the operator would run PyTorch's own kernel anyway, that opacity
costs: Inductor gives convolution-heavy CPU graphs a channels-last layout and fuses around
``aten.convolution``, and it does neither for a graph whose convolutions are all custom
operators (MobileNetV2 inference ran at 0.73x of compiled PyTorch). So, while dynamo traces
:func:`fastconv_ext.conv1d`, :func:`fastconv_ext.conv2d` or a fastconv module, a call whose
every operator would take the native path -- the forward, and when gradients are wanted both
gradient operators -- is traced as ``torch.nn.functional``'s convolution; every other call
stays a fastconv operator, which chooses its path in its kernel.

The decision asks the path-selection code itself (``torch.ops.fastconv._conv_settled_path``)
on the traced sizes, and takes PyTorch's convolution only where the answer cannot change at run
time: sizes known while tracing, and a path that is settled -- the default rules with
autotuning off, or a signature autotuning has already timed (in this process or in its cache
file). A signature still to be tuned stays a fastconv operator and is tuned in its kernel, on
real tensors, never while tracing. The choice is part of the traced graph, so compiler caches
key on it; a graph keeps it when autotuning is switched on or off later
(``torch._dynamo.reset()`` retraces).
"""

from typing import List, Sequence, Tuple

import torch
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import statically_known_true

__all__ = ["traced_as_native"]


@torch._dynamo.assume_constant_result
def _native(input_shape: Tuple[int, ...], channels_last: bool, weight_shape: Tuple[int, ...],
            dtype: torch.dtype, device: torch.device, stride: Tuple[int, ...], padding: Tuple[int, ...],
            dilation: Tuple[int, ...], groups: int, ops: Tuple[str, ...]) -> bool:
    # Dynamo runs this eagerly on the constants above and keeps the answer as a constant.
    from torch._subclasses.fake_tensor import FakeTensorMode


    with FakeTensorMode():
        input = torch.empty(input_shape, dtype=dtype, device=device)
        if channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        weight = torch.empty(weight_shape, dtype=dtype, device=device)
        return all(
            torch.ops.fastconv._conv_settled_path(input, weight, list(stride), list(padding), list(dilation),
                                                  groups, "auto", op) == "native"
            for op in ops
        )


def _static(values: Sequence) -> bool:
    # Dynamo shows a symbolic size as an int; unlike a known one it has no known upper bound
    # (statically_known_true never adds a guard).
    return all(statically_known_true(v < 2**62) for v in values)


def traced_as_native(input: Tensor, weight: Tensor, stride: List[int], padding: List[int], dilation: List[int],
                     groups: int, algorithm: str) -> bool:
    """Whether dynamo, now tracing this call, should trace PyTorch's convolution in its place."""
    if algorithm == "native":
        return True
    if algorithm != "auto" or input.dim() != weight.dim():
        return False
    if not _static(list(input.shape) + list(weight.shape) + list(stride) + list(padding) + list(dilation)):
        return False
    ops = ["forward"]
    if torch.is_grad_enabled():
        if input.requires_grad:
            ops.append("input")
        if weight.requires_grad:
            ops.append("weight")
    return _native(tuple(input.shape), input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last),
                   tuple(weight.shape), input.dtype, input.device, tuple(stride), tuple(padding), tuple(dilation),
                   groups, tuple(ops))
