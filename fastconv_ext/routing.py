"""Where a call of fastconv's functions and modules goes: PyTorch's convolution, or a fastconv
operator.

Where every operator a call runs -- the forward, and the gradients autograd will want -- would
take PyTorch's own kernel ("native"), calling ``torch.nn.functional``'s convolution is the same
computation without fastconv's costs:

- eagerly, the few microseconds of a custom operator's call and autograd node, which decide
  layers as small as a squeeze-and-excitation 1x1 convolution;
- under ``torch.compile``, opacity: Inductor gives the convolutions of a CPU graph a
  channels-last layout and fuses around ``aten.convolution``, and does neither for a custom
  operator. While dynamo traces a 4-D CPU call, fastconv's operator is therefore traced only
  where it is the choice both in the traced layout and in the channels-last one Inductor runs,
  and a tuned choice only where it beat PyTorch's kernel by the default rules' margin (1.1x).

Every other call runs the fastconv operator, which chooses its path in its kernel.

The decision asks the path-selection code itself (eagerly ``fastconv_ext._C._settled_native``,
while tracing ``torch.ops.fastconv._conv_settled_path``) and takes PyTorch's convolution only
where the answer is settled: the default rules with autotuning off, or a signature autotuning
has already timed. Eagerly, a signature still to be tuned runs the operator, which tunes it on
the call's tensors. While dynamo traces, the choice is made for the graph, so a signature still
to be tuned is tuned then, on random tensors of its sizes, in both layouts that count. Eagerly
the answer is remembered per signature (in C++) until autotuning, its cache, the cost profile or
the CPU kernels change. While dynamo traces, sizes must be known (not symbolic); the choice is
part of the traced graph, so compiler caches key on it, and a graph keeps it when the settings
change later (``torch._dynamo.reset()`` retraces).
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import statically_known_true

from fastconv_ext import _C

__all__ = ["eager_call", "module_call", "native_call", "traced_as_native"]


def _ops(input: Tensor, weight: Tensor) -> Tuple[str, ...]:
    """The operators this call will run: the forward, and the gradients autograd will want."""
    if not torch.is_grad_enabled():
        return ("forward",)
    ops = ["forward"]
    if input.requires_grad:
        ops.append("input")
    if weight.requires_grad:
        ops.append("weight")
    return tuple(ops)


def _settled_paths(input: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                   dilation: Sequence[int], groups: int, ops: Tuple[str, ...]) -> List:
    """Each operator's settled path, None where autotuning has still to time it."""
    return [torch.ops.fastconv._conv_settled_path(input, weight, list(stride), list(padding), list(dilation), groups,
                                                  "auto", op) for op in ops]


def _plain(input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """Batched, and a bias the operator accepts (else the operator runs, and its checks name
    the rule a bad argument breaks)."""
    return input.dim() == weight.dim() and weight.dtype == input.dtype and weight.device == input.device and (
        bias is None or (bias.dim() == 1 and bias.shape[0] == weight.shape[0] and bias.dtype == input.dtype
                         and bias.device == input.device))


def native_call(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int], groups: int, algorithm: str) -> bool:
    """Whether this eager call runs PyTorch's convolution in place of the fastconv operator."""
    return _answer(input, weight, bias, stride, padding, dilation, groups, algorithm)[0]


def _incompatible(err: TypeError) -> bool:
    """Whether pybind11 refused an argument's type (the operator's checks then name it)."""
    return "incompatible function arguments" in str(err) or "incompatible constructor arguments" in str(err)


def eager_call(dims: int, input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
               padding: Sequence[int], dilation: Sequence[int], groups: int, algorithm: str) -> Tensor:
    """An eager call: PyTorch's convolution where :func:`native_call`, else the fastconv
    operator of ``dims`` spatial dimensions.

    Plain tensors are routed and called from C++ (``fastconv_ext._C._auto_conv``): a custom
    operator's call from Python spends about 10 us parsing its arguments against the schema,
    and building a key for the routing's memo a few more, as long as a small layer takes.
    Tensors with ``__torch_function__`` (subclasses, modes) and arguments of types the C++
    function does not take go through the Python functions, which honour the one and name the
    other."""
    if not torch._C._has_torch_function_variadic(input, weight, bias):
        try:
            return _C._auto_conv(dims, input, weight, bias, stride, padding, dilation, groups, algorithm)
        except TypeError as err:
            if not _incompatible(err):
                raise
    if native_call(input, weight, bias, stride, padding, dilation, groups, algorithm):
        conv = F.conv1d if dims == 1 else F.conv2d
        return conv(input, weight, bias, stride, padding, dilation, groups)
    op = torch.ops.fastconv.conv1d if dims == 1 else torch.ops.fastconv.conv2d
    return op(input, weight, bias, list(stride), list(padding), list(dilation), groups, algorithm)


def module_call(module, dims: int, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Optional[Tensor]:
    """An eager call of fastconv's ``module`` with zero padding (numbers, 'valid', or 'same'
    with an even total): PyTorch's convolution or the fastconv operator, as
    :func:`native_call` decides; None for another padding (the module's forward then takes
    the functional form).

    The module keeps the route of its last call (``fastconv_ext._C.Route``: that call's
    signature and the convolution it runs), and a model's layers see the same signature call
    after call: a repeated call costs a comparison in C++, not a key built in Python --
    squeeze-and-excitation layers take a few microseconds in all. A call with another
    signature (sizes, layout, dtypes, devices, the gradients wanted, thread count, settings)
    or with ``__torch_function__`` decides here again. The module's hyper-parameters are not
    compared: assigning one forgets the route (:data:`HYPERPARAMETERS`)."""
    route = module.__dict__.get(ROUTE_ATTRIBUTE)
    if route is not None:
        out = route(input, weight, bias)
        if out is not None:
            return out
    padding = _zero_padding(module)
    if padding is None:
        return None
    native, settled = _answer(input, weight, bias, module.stride, padding, module.dilation, module.groups,
                              module.algorithm)
    if settled and not torch._C._has_torch_function_variadic(input, weight, bias):
        try:
            route = _C.Route(dims, input, weight, bias, module.stride, padding, module.dilation, module.groups,
                             module.algorithm, native)
        except TypeError as err:  # eager_call's operator names the argument
            if not _incompatible(err):
                raise
        else:
            module.__dict__[ROUTE_ATTRIBUTE] = route
            out = route(input, weight, bias)
            if out is not None:
                return out
    return eager_call(dims, input, weight, bias, module.stride, padding, module.dilation, module.groups,
                      module.algorithm)


def _zero_padding(module) -> Optional[List[int]]:
    """A module's zero padding as numbers (each side the same), or None."""
    if module.padding_mode != "zeros":
        return None
    if not isinstance(module.padding, str):
        return list(module.padding)
    if module.padding == "valid":
        return [0] * len(module.kernel_size)
    if module.padding != "same":
        return None  # 'causal'
    totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
    if all(t % 2 == 0 for t in totals):
        return [t // 2 for t in totals]
    return None  # 'same' padding one more on the right (the functional form's)


# Where a module keeps the route of its last eager call, and the attributes whose assignment
# makes the module forget it (fastconv_ext.nn).
ROUTE_ATTRIBUTE = "_fastconv_route"
HYPERPARAMETERS = frozenset({"stride", "padding", "dilation", "groups", "padding_mode", "kernel_size", "algorithm"})


def _answer(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
            dilation: Sequence[int], groups: int, algorithm: str) -> Tuple[bool, bool]:
    """native_call's answer, and whether it is settled (not a signature still to be tuned):
    the path selection's, remembered per signature in C++ (``fastconv_ext._C._settled_native``)."""
    try:
        native = _C._settled_native(input, weight, bias, stride, padding, dilation, groups, algorithm)
    except TypeError as err:
        if not _incompatible(err):
            raise
        return False, True  # the operator runs, and its checks name the argument
    return bool(native), native is not None


def _inductor_channels_last() -> bool:
    """Whether Inductor gives the convolutions of a CPU graph a channels-last layout."""
    import torch._inductor.config as inductor_config

    return bool(inductor_config.layout_optimization and torch.backends.mkldnn.enabled
                and torch.backends.mkldnn.is_available())


def _tune(input_shape: Tuple[int, ...], channels_last: bool, weight_shape: Tuple[int, ...], dtype: torch.dtype,
          device: torch.device, stride: Tuple[int, ...], padding: Tuple[int, ...], dilation: Tuple[int, ...],
          groups: int, ops: Tuple[str, ...]) -> None:
    """Run each operator of ``ops`` once with ``algorithm='auto'`` on random tensors of this
    signature: with autotuning on, each one still to be tuned is tuned."""
    dims = len(weight_shape) - 2
    input = torch.randn(input_shape, dtype=dtype, device=device)
    if channels_last:
        input = input.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(weight_shape, dtype=dtype, device=device)
    hp = (list(stride), list(padding), list(dilation), groups, "auto")
    family = torch.ops.fastconv.conv1d if dims == 1 else torch.ops.fastconv.conv2d
    with torch.no_grad():
        grad_output = torch.randn_like(family(input, weight, None, *hp))
        if "input" in ops:
            size = input_shape[-1] if dims == 1 else list(input_shape[2:])
            (torch.ops.fastconv.conv1d_input_backward if dims == 1
             else torch.ops.fastconv.conv2d_input_backward)(grad_output, weight, size, *hp)
        if "weight" in ops:
            size = weight_shape[-1] if dims == 1 else list(weight_shape[2:])
            (torch.ops.fastconv.conv1d_weight_backward if dims == 1
             else torch.ops.fastconv.conv2d_weight_backward)(grad_output, input, size, *hp)


@torch._dynamo.assume_constant_result
def _traced_native(input_shape: Tuple[int, ...], channels_last: bool, weight_shape: Tuple[int, ...],
                   dtype: torch.dtype, device: torch.device, stride: Tuple[int, ...], padding: Tuple[int, ...],
                   dilation: Tuple[int, ...], groups: int, ops: Tuple[str, ...]) -> bool:
    # Dynamo runs this eagerly on the constants above and keeps the answer as a constant.
    from torch._subclasses.fake_tensor import FakeTensorMode

    # Inductor lays out every convolution of a CPU graph channels-last where oneDNN is there
    # (torch/_inductor/graph.py, decide_layout_opt) and fuses around aten.convolution, never
    # around a custom operator: a fastconv path is traced only where it is the settled choice
    # both in the traced layout and in the channels-last one Inductor will run.
    inductor_layout = not channels_last and len(input_shape) == 4 and device.type == "cpu" and _inductor_channels_last()
    layouts = ([True] if channels_last or inductor_layout else []) + ([False] if not channels_last else [])

    def settled(cl: bool) -> List:
        with FakeTensorMode():
            input = torch.empty(input_shape, dtype=dtype, device=device)
            weight = torch.empty(weight_shape, dtype=dtype, device=device)
            if cl:
                input = input.contiguous(memory_format=torch.channels_last)
            paths = _settled_paths(input, weight, stride, padding, dilation, groups, ops)
            # A tuned path that beat PyTorch's kernel by less than the default rules' margin does
            # not outweigh the fusion Inductor does around PyTorch's convolution.
            return [p if p in (None, "native") or _clear_win(input, weight, stride, padding, dilation, groups, op)
                    else "native" for p, op in zip(paths, ops)]

    answers = []
    for cl in layouts:
        paths = settled(cl)
        if None in paths:
            # Still to be tuned: the graph's choice is made here, so it is tuned here, on random
            # tensors of its signature.
            _tune(input_shape, cl, weight_shape, dtype, device, stride, padding, dilation, groups, ops)
            paths = settled(cl)
        answers.append(None not in paths and all(p == "native" for p in paths))
    return any(answers)


# The least speedup over PyTorch's kernel a tuned path needs to be traced into a graph
# (csrc/fastconv/conv2d_rules.h: kRuleSpeedup, the default rules' margin).
_TRACED_SPEEDUP = 1.1


def _clear_win(input: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
               dilation: Sequence[int], groups: int, op: str) -> bool:
    """Whether the settled path of `op` is a default rule's, or a tuned one at least
    _TRACED_SPEEDUP faster than PyTorch's kernel."""
    if not torch.ops.fastconv._autotune(None):
        return True
    speedup = torch.ops.fastconv._conv_tuned_speedup(input, weight, list(stride), list(padding), list(dilation),
                                                     groups, op)
    return speedup is None or speedup >= _TRACED_SPEEDUP


def _static(values: Sequence) -> bool:
    # Dynamo shows a symbolic size as an int; unlike a known one it has no known upper bound
    # (statically_known_true never adds a guard).
    return all(statically_known_true(v < 2**62) for v in values)


def traced_as_native(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                     dilation: List[int], groups: int, algorithm: str) -> bool:
    """Whether dynamo, now tracing this call, should trace PyTorch's convolution in its place."""
    if algorithm not in ("auto", "native") or not _plain(input, weight, bias):
        return False
    if algorithm == "native":
        return True
    if not _static(list(input.shape) + list(weight.shape) + list(stride) + list(padding) + list(dilation)):
        return False
    return _traced_native(tuple(input.shape),
                          input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last),
                          tuple(weight.shape), input.dtype, input.device, tuple(stride), tuple(padding),
                          tuple(dilation), groups, _ops(input, weight))
