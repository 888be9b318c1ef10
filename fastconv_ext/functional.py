"""Functional API: drop-in replacements for ``torch.nn.functional`` convolutions.

Every function here is TorchScript-compatible and calls a ``torch.ops.fastconv``
operator, so autograd, ``torch.compile`` and ``torch.jit.script`` all see one op.
"""

from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from fastconv_ext.routing import eager_call, traced_as_native

__all__ = ["conv1d", "conv2d", "convolve"]


_IntOrSeq = Union[int, List[int], Tuple[int], Tuple[int, int]]


def _tuple(value: _IntOrSeq, n: int, name: str, op: str) -> List[int]:
    """An int (repeated) or n-sequence of ints as an n-list; the operator checks the values."""
    if isinstance(value, int):
        return [value] * n
    if isinstance(value, list):
        out = value
    elif not torch.jit.is_scripting():
        out = list(value)
    elif torch.jit.isinstance(value, Tuple[int]):  # TorchScript needs the tuple type spelled out
        out = [value[0]]
    elif torch.jit.isinstance(value, Tuple[int, int]):
        out = [value[0], value[1]]
    else:
        raise ValueError(f"fastconv.{op}: {name} must be an int or a sequence of {n} int for a {n}-D convolution")
    if len(out) != n:
        raise ValueError(
            f"fastconv.{op}: {name} must be an int or a sequence of {n} int for a {n}-D convolution, "
            f"but got {len(out)} values"
        )
    return out


def _conv(
    dims: int,
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    algorithm: str,
) -> Tensor:
    """The fastconv operator of `dims` spatial dimensions, or PyTorch's convolution where every
    operator of the call would run PyTorch's kernel anyway (routing.py)."""
    if not torch.jit.is_scripting():
        if not torch.compiler.is_compiling():
            return eager_call(dims, input, weight, bias, stride, padding, dilation, groups, algorithm)
        if traced_as_native(input, weight, bias, stride, padding, dilation, groups, algorithm):
            if dims == 1:
                return F.conv1d(input, weight, bias, stride, padding, dilation, groups)
            return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    if dims == 1:
        return torch.ops.fastconv.conv1d(input, weight, bias, stride, padding, dilation, groups, algorithm)
    return torch.ops.fastconv.conv2d(input, weight, bias, stride, padding, dilation, groups, algorithm)


def _same_padding(
    input: Tensor, weight: Tensor, stride: List[int], dilation: List[int], op: str
) -> Tuple[Tensor, List[int]]:
    """Input and symmetric padding for padding='same', as torch.nn.functional does it.

    Per spatial dimension the total padding is dilation * (K - 1); when it is odd the
    extra zero goes on the right/bottom, through a padded copy of the input.
    """
    n = len(stride)
    for s in stride:
        if s != 1:
            raise ValueError(f"fastconv.{op}: padding='same' is not supported for strided convolutions")
    if weight.dim() != n + 2:
        raise ValueError(f"fastconv.{op}: expected weight to be {n + 2}-D, but got a {weight.dim()}-D tensor")
    padding: List[int] = []
    extra: List[int] = []
    for i in range(n):
        total = dilation[i] * (weight.shape[2 + i] - 1)
        padding.append(total // 2)
        extra.append(total - 2 * (total // 2))
    if sum(extra) > 0:
        pad: List[int] = []  # F.pad lists the last dimension first
        for i in range(n - 1, -1, -1):
            pad += [0, extra[i]]
        input = F.pad(input, pad)
    return input, padding


def _padding(
    input: Tensor,
    weight: Tensor,
    padding: Union[str, _IntOrSeq],
    stride: List[int],
    dilation: List[int],
    op: str,
) -> Tuple[Tensor, List[int]]:
    """The (possibly padded) input and the integer padding for an int, tuple, 'valid' or 'same'."""
    n = len(stride)
    if isinstance(padding, str):
        if padding == "valid":
            return input, [0] * n
        if padding == "same":
            return _same_padding(input, weight, stride, dilation, op)
        allowed = "'valid', 'same', 'causal'" if n == 1 else "'valid', 'same'"
        raise ValueError(f"fastconv.{op}: padding must be {allowed} or an int, but got '{padding}'")
    return input, _tuple(padding, n, "padding", op)


def _is_causal(padding: Union[str, _IntOrSeq]) -> bool:
    # A function of its own: TorchScript's saved code could not unify `padding` refined to
    # str in the caller with its other types.
    if isinstance(padding, str):
        return padding == "causal"
    return False


def _causal(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: List[int],
    dilation: List[int],
    groups: int,
    algorithm: str,
) -> Tensor:
    """conv1d with padding='causal': dilation * (K - 1) zeros on the left only.

    A depthwise weight ((C, 1, K), groups = C) with algorithm 'auto' runs the causal
    kernel, reading the input in place; any other runs the convolution padded on both
    sides and keeps the first L outputs (a view; dilation * (K - 1) outputs more are
    computed).
    """
    if stride[0] != 1:
        raise ValueError("fastconv.conv1d: padding='causal' needs stride 1, but got stride " + str(stride[0]))
    if weight.dim() != 3:
        raise ValueError(f"fastconv.conv1d: expected weight to be 3-D, but got a {weight.dim()}-D tensor")
    unbatched = input.dim() == 2
    x = input.unsqueeze(0) if unbatched else input
    if x.dim() != 3:
        raise ValueError(f"fastconv.conv1d: expected input to be 2-D or 3-D, but got a {input.dim()}-D tensor")
    channels = x.shape[1]
    if algorithm == "auto" and weight.shape[1] == 1 and groups == channels and weight.shape[0] == channels:
        y = torch.ops.fastconv.causal_conv1d(x, weight.squeeze(1), bias, None, None, None, dilation[0])[0]
    else:
        pad = dilation[0] * (weight.shape[2] - 1)
        y = _conv(1, x, weight, bias, stride, [pad], dilation, groups, algorithm)[:, :, : x.shape[2]]
    return y.squeeze(0) if unbatched else y


def conv1d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: Union[int, List[int], Tuple[int]] = 1,
    padding: Union[str, int, List[int], Tuple[int]] = 0,
    dilation: Union[int, List[int], Tuple[int]] = 1,
    groups: int = 1,
    algorithm: str = "auto",
) -> Tensor:
    r"""1-D convolution (cross-correlation) with the semantics of :func:`torch.nn.functional.conv1d`.

    Three paths compute it: ``'native'`` (PyTorch's own convolution: oneDNN, cuDNN),
    ``'direct'`` (fastconv's tiled SIMD kernels) and ``'fft'`` (ATen's FFT, overlap-save for
    long signals, a complex matmul per frequency for channel mixing). With ``'auto'`` each
    operator (the forward, and each gradient on its own) takes the path that autotuning
    measured fastest for its signature when autotuning is on (:func:`fastconv_ext.set_autotune`),
    else the one the default rules choose: a cost model whose constants come from
    ``python -m fastconv_ext.calibrate`` (a per-machine profile) or built-in defaults, and
    which keeps PyTorch's kernel unless fastconv's is predicted clearly faster. A forced path
    holds for every gradient too.

    Args:
        input: ``(N, C_in, L)`` or unbatched ``(C_in, L)``; float32, float64, float16 or
            bfloat16 (16-bit types accumulate in float32).
        weight: ``(C_out, C_in / groups, K)``, same dtype and device as ``input``.
        bias: optional ``(C_out,)``.
        stride: positive int or 1-tuple.
        padding: non-negative int or 1-tuple of zeros added on both sides, or ``'valid'``
            (no padding), ``'same'`` (output as long as the input; stride must be 1) or
            ``'causal'`` (``dilation * (K - 1)`` zeros on the left only, so output ``t`` sees
            inputs up to ``t``; output as long as the input; stride must be 1; a depthwise
            weight runs the causal kernel of :func:`fastconv_ext.causal_conv1d`).
        dilation: positive int or 1-tuple, spacing between kernel taps.
        groups: positive int dividing both ``C_in`` and ``C_out``.
        algorithm: ``'auto'`` (default), ``'native'``, ``'direct'`` or ``'fft'``.

    Returns:
        ``(N, C_out, L_out)`` (or ``(C_out, L_out)``) with
        ``L_out = (L + 2 * padding - dilation * (K - 1) - 1) // stride + 1``.

    Raises:
        RuntimeError or ValueError naming the argument and the rule on invalid input.
    """
    stride_ = _tuple(stride, 1, "stride", "conv1d")
    dilation_ = _tuple(dilation, 1, "dilation", "conv1d")
    if _is_causal(padding):
        return _causal(input, weight, bias, stride_, dilation_, groups, algorithm)
    input, padding_ = _padding(input, weight, padding, stride_, dilation_, "conv1d")
    return _conv(1, input, weight, bias, stride_, padding_, dilation_, groups, algorithm)


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: Union[int, List[int], Tuple[int, int]] = 1,
    padding: Union[str, int, List[int], Tuple[int, int]] = 0,
    dilation: Union[int, List[int], Tuple[int, int]] = 1,
    groups: int = 1,
    algorithm: str = "auto",
) -> Tensor:
    r"""2-D convolution (cross-correlation) with the semantics of :func:`torch.nn.functional.conv2d`.

    Six paths compute it: ``'native'`` (PyTorch's own convolution), ``'direct'`` (rows of
    1-D convolutions by fastconv's SIMD kernels, for few taps or few input channels per group,
    any stride), ``'im2col'`` (im2col + GEMM over tiles of output rows, a bounded per-thread
    workspace), ``'shifted'`` (a GEMM per tap on staged rows, stride 1), ``'depthwise'``
    (``groups == C_in == C_out``: vectors across channels, channels_last read in place, any
    kernel size, stride and dilation) and ``'fft'`` (2-D transforms, kernels of 25 taps and
    more). ``'auto'`` chooses per operator as for :func:`conv1d`: autotuned when autotuning
    is on, else the default rules.

    Args:
        input: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``, any memory format (the
            depthwise path reads channels_last in place; the other paths of fastconv through
            a contiguous copy); float32, float64, float16 or bfloat16 (16-bit types compute in
            float32).
        weight: ``(C_out, C_in / groups, KH, KW)``, same dtype and device as ``input``.
        bias: optional ``(C_out,)``.
        stride: positive int or pair.
        padding: non-negative int or pair of zeros added on both sides of each spatial
            dimension, or ``'valid'`` or ``'same'`` (stride must be 1).
        dilation: positive int or pair.
        groups: positive int dividing both ``C_in`` and ``C_out``.
        algorithm: ``'auto'`` (default), ``'native'``, ``'direct'``, ``'im2col'``,
            ``'shifted'``, ``'depthwise'`` or ``'fft'``; a forced path that cannot run the
            arguments raises, saying why.

    Returns:
        ``(N, C_out, H_out, W_out)`` (or unbatched), channels_last when ``input`` is,
        else contiguous, with
        ``H_out = (H + 2 * padding[0] - dilation[0] * (KH - 1) - 1) // stride[0] + 1``
        and ``W_out`` likewise.

    Raises:
        RuntimeError or ValueError naming the argument and the rule on invalid input.
    """
    stride_ = _tuple(stride, 2, "stride", "conv2d")
    dilation_ = _tuple(dilation, 2, "dilation", "conv2d")
    input, padding_ = _padding(input, weight, padding, stride_, dilation_, "conv2d")
    return _conv(2, input, weight, bias, stride_, padding_, dilation_, groups, algorithm)


def convolve(a: Tensor, v: Tensor, mode: str = "full") -> Tensor:
    r"""True convolution of the rows of ``a`` and ``v`` along the last dimension.

    Each row of ``a`` is convolved with the matching row of ``v`` (not reversed-and-
    correlated: ``full[i] = sum_j a[j] * v[i - j]``), with no Python loop; the leading
    dimensions broadcast against each other as in :func:`torchaudio.functional.convolve`.
    1-D inputs are single rows.

    Args:
        a: ``(..., n)``, float32, float64, float16 or bfloat16 (16-bit types compute in float32).
        v: ``(..., m)``, same dtype and device as ``a``.
        mode: as :func:`scipy.signal.convolve` --
            ``'full'``: length ``n + m - 1``;
            ``'same'``: length ``n``, centred on the full result;
            ``'valid'``: length ``max(n, m) - min(n, m) + 1``, the positions that do not
            depend on zero padding.

    Returns:
        ``(*broadcast(a.shape[:-1], v.shape[:-1]), L)``.

    The shorter row acts as the kernel and meets every output position, zeros outside the
    longer row included -- the zero-padded convolution that
    :func:`torchaudio.functional.convolve` and the grouped-``conv1d`` formulation compute -- so a
    NaN or Inf in the shorter row spreads to its whole output row, exactly as there (scipy's
    direct method spreads it only to the positions the product touches).

    Raises:
        RuntimeError naming the rule for an unknown mode, empty rows, leading dimensions
        that do not broadcast, or non-floating / mismatched dtypes.
    """
    return torch.ops.fastconv.convolve(a, v, mode)
