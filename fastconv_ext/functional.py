"""Functional API: drop-in replacements for ``torch.nn.functional`` convolutions.

Every function here is TorchScript-compatible and calls a ``torch.ops.fastconv``
operator, so autograd, ``torch.compile`` and ``torch.jit.script`` all see one op.
"""

from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["conv1d", "convolve"]


def _single(value: Union[int, List[int], Tuple[int]], name: str) -> List[int]:
    """An int or 1-sequence of ints as a 1-list; the operator checks the values."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        out = value
    else:
        out = [value[i] for i in range(len(value))]
    if len(out) != 1:
        raise ValueError(
            f"fastconv.conv1d: {name} must be an int or a sequence of 1 int for a 1-D convolution, "
            f"but got {len(out)} values"
        )
    return out


def _same_padding(
    input: Tensor, weight: Tensor, stride: List[int], dilation: List[int]
) -> Tuple[Tensor, List[int]]:
    """Input and symmetric padding for padding='same', as torch.nn.functional does it.

    The total padding is dilation * (K - 1); when it is odd the extra zero goes on the
    right, through a padded copy of the input.
    """
    if stride[0] != 1:
        raise ValueError("fastconv.conv1d: padding='same' is not supported for strided convolutions")
    if weight.dim() != 3:
        raise ValueError(
            f"fastconv.conv1d: expected weight to be 3-D (C_out, C_in / groups, K), but got a "
            f"{weight.dim()}-D tensor"
        )
    total = dilation[0] * (weight.shape[-1] - 1)
    left = total // 2
    if total - left != left:
        input = F.pad(input, [0, total - 2 * left])
    return input, [left]


def conv1d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: Union[int, List[int], Tuple[int]] = 1,
    padding: Union[str, int, List[int], Tuple[int]] = 0,
    dilation: Union[int, List[int], Tuple[int]] = 1,
    groups: int = 1,
) -> Tensor:
    r"""1-D convolution (cross-correlation) with the semantics of :func:`torch.nn.functional.conv1d`.

    Args:
        input: ``(N, C_in, L)`` or unbatched ``(C_in, L)``; float32, float64, float16 or
            bfloat16 (16-bit types accumulate in float32).
        weight: ``(C_out, C_in / groups, K)``, same dtype and device as ``input``.
        bias: optional ``(C_out,)``.
        stride: positive int or 1-tuple.
        padding: non-negative int or 1-tuple of zeros added on both sides, or ``'valid'``
            (no padding) or ``'same'`` (output as long as the input; stride must be 1).
        dilation: positive int or 1-tuple, spacing between kernel taps.
        groups: positive int dividing both ``C_in`` and ``C_out``.

    Returns:
        ``(N, C_out, L_out)`` (or ``(C_out, L_out)``) with
        ``L_out = (L + 2 * padding - dilation * (K - 1) - 1) // stride + 1``.

    Raises:
        RuntimeError or ValueError naming the argument and the rule on invalid input.
    """
    stride_ = _single(stride, "stride")
    dilation_ = _single(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            padding_ = [0]
        elif padding == "same":
            input, padding_ = _same_padding(input, weight, stride_, dilation_)
        else:
            raise ValueError(
                f"fastconv.conv1d: padding must be 'valid', 'same' or an int, but got '{padding}'"
            )
    else:
        padding_ = _single(padding, "padding")
    return torch.ops.fastconv.conv1d(input, weight, bias, stride_, padding_, dilation_, groups)


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

    Raises:
        RuntimeError naming the rule for an unknown mode, empty rows, leading dimensions
        that do not broadcast, or non-floating / mismatched dtypes.
    """
    return torch.ops.fastconv.convolve(a, v, mode)
