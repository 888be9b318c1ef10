"""Causal depthwise convolution with state: whole sequences, chunked streams and decoding.

The functions call ``torch.ops.fastconv`` operators, so autograd (to every order),
``torch.compile`` and C++ callers see one operator each.
"""

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from fastconv_ext import _C
from fastconv_ext.routing import _incompatible

__all__ = ["causal_conv1d", "causal_conv1d_update", "conv1d_stream"]


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    initial_state: Optional[Tensor] = None,
    return_final_state: bool = False,
    activation: Optional[str] = None,
    seq_idx: Optional[Tensor] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    r"""Depthwise causal 1-D convolution, optionally with a state and a fused SiLU.

    ``y[b, c, t] = act(bias[c] + sum_k weight[c, k] * xs[b, c, t + k])`` where ``xs`` is
    ``x`` preceded by ``initial_state`` (zeros when None): output ``t`` sees inputs up to
    ``t`` only, and the output is as long as ``x``. This is the short convolution of Mamba,
    Mamba-2, gated linear attention and Hyena blocks, for any kernel width.

    Args:
        x: ``(B, C, L)``, float32, float64, float16 or bfloat16 (16-bit types accumulate in
            float32). Either contiguous or channels-last -- ``x.stride(1) == 1``, e.g. a
            ``(B, L, C)`` tensor transposed -- read in place; the output has the same layout.
            Other layouts are copied first.
        weight: ``(C, K)``, any ``K >= 1``, same dtype and device as ``x``.
        bias: optional ``(C,)``.
        initial_state: optional ``(B, C, K - 1)``: the inputs before ``x``.
        return_final_state: also return the last ``K - 1`` inputs (initial state included when
            ``L < K - 1``): the state to continue with.
        activation: ``None``, ``'silu'`` or ``'swish'`` (the same), applied to the output.
        seq_idx: optional ``(B, L)`` int32 marking packed sequences: an output never sees an
            input of another sequence (the initial state counts as the first sequence's).

    Returns:
        ``y`` of ``x``'s shape, or ``(y, final_state)`` with ``return_final_state=True``.

    Raises:
        RuntimeError naming the argument and the rule: weight not ``(C, K)``, state or
        ``seq_idx`` shapes, an unknown activation, dtypes or devices that differ.
    """
    y, state = torch.ops.fastconv.causal_conv1d(x, weight, bias, initial_state, seq_idx, activation, 1)
    return (y, state) if return_final_state else y


def causal_conv1d_update(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    activation: Optional[str] = None,
    cache_seqlens: Optional[Tensor] = None,
    conv_state_indices: Optional[Tensor] = None,
) -> Tensor:
    r"""Decodes new steps of a causal depthwise convolution, updating its state in place.

    The steps before ``x`` are in ``conv_state``; the output of each new step is what
    :func:`causal_conv1d` gives at that position of the whole sequence. Allocates nothing but
    the output. Not differentiable (decoding is inference).

    Args:
        x: ``(B, C)`` (one step) or ``(B, C, T)`` (``T`` steps).
        conv_state: ``(B_state, C, S)`` with ``S >= K - 1``, same dtype and device, updated in
            place. Without ``cache_seqlens`` it is a shift register: the last ``S`` steps,
            oldest first, and the new steps shift in at the end.
        weight: ``(C, K)``.
        bias: optional ``(C,)``.
        activation: ``None``, ``'silu'`` or ``'swish'``.
        cache_seqlens: optional ``(B,)`` int32, the steps each row has seen: ``conv_state`` is
            then a ring buffer and step ``t`` of this call goes in at
            ``(cache_seqlens[b] + t) % S``.
        conv_state_indices: optional ``(B,)`` int32: row ``b`` uses
            ``conv_state[conv_state_indices[b]]`` (continuous batching; other rows of
            ``conv_state`` are untouched). On CPU an index outside ``[0, B_state)`` raises;
            on CUDA that row's output is zero and no state changes (checking would
            synchronise).

    Returns:
        ``(B, C)`` or ``(B, C, T)``, like ``x``.
    """
    if not torch.jit.is_scripting():
        if not torch.compiler.is_compiling():
            return _eager_update(x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices)
    return torch.ops.fastconv.causal_conv1d_update(
        x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices
    )


def _eager_update(x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices):
    """An eager decoding step: plain tensors call the operator from C++ (the Python call of a
    custom operator parses its arguments against the schema, a few microseconds of a step);
    tensors with ``__torch_function__``, and arguments of types the C++ function does not take,
    go through ``torch.ops``, which honours the one and names the other."""
    if not torch._C._has_torch_function_variadic(x, conv_state, weight, bias, cache_seqlens, conv_state_indices):
        try:
            return _C._causal_update(x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices)
        except TypeError as err:
            if not _incompatible(err):
                raise
    return torch.ops.fastconv.causal_conv1d_update(
        x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices
    )


def conv1d_stream(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    state: Optional[Tensor] = None,
    dilation: int = 1,
    groups: int = 1,
) -> Tuple[Tensor, Tensor]:
    r"""One chunk of a causal stride-1 conv1d over a signal that arrives in chunks.

    The outputs of all chunks, concatenated, equal one ``fastconv_ext.conv1d(signal, weight,
    bias, padding='causal', dilation=dilation, groups=groups)`` over the whole signal.

    Args:
        x: ``(B, C_in, L)``, this chunk (any ``L``, 0 and 1 included).
        weight: ``(C_out, C_in / groups, K)``.
        bias: optional ``(C_out,)``.
        state: ``(B, C_in, dilation * (K - 1))``, the last inputs before this chunk as
            returned by the previous call, or None (zeros: the start of the signal).
        dilation, groups: as for :func:`fastconv_ext.conv1d`.

    Returns:
        ``(y, state)``: ``y`` ``(B, C_out, L)``, and the state for the next chunk (memory of
        its own, never a view of ``x`` or of the given ``state``, an empty chunk's included: the
        caller may refill either buffer).
    """
    return torch.ops.fastconv.conv1d_stream(x, weight, bias, state, dilation, groups)
