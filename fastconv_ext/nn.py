"""Modules: drop-in replacements for ``torch.nn`` convolution layers."""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastconv_ext.causal import causal_conv1d_update, conv1d_stream
from fastconv_ext.functional import _conv, conv1d, conv2d
from fastconv_ext.routing import HYPERPARAMETERS, ROUTE_ATTRIBUTE, module_call

__all__ = ["Conv1d", "Conv2d", "CausalConv1d"]


def algorithms(dims: int) -> List[str]:
    """The values ``algorithm`` takes for an N-d operator, ``'auto'`` first."""
    return torch.ops.fastconv._algorithms(dims)


def check_algorithm(name: str, algorithm: str, dims: int) -> str:
    allowed = algorithms(dims)
    if algorithm not in allowed:
        raise ValueError(f"fastconv.{name}: algorithm must be one of {allowed}, but got {algorithm!r}")
    return algorithm


class _RemembersRoute:
    """fastconv's Conv1d and Conv2d remember the route of their last eager call
    (:func:`fastconv_ext.routing.module_call`), decided with their hyper-parameters:
    assigning one of those forgets it."""

    def __setattr__(self, name: str, value) -> None:
        if name in HYPERPARAMETERS:
            self.__dict__.pop(ROUTE_ATTRIBUTE, None)
        super().__setattr__(name, value)


class Conv1d(_RemembersRoute, nn.Conv1d):
    r"""Drop-in replacement for :class:`torch.nn.Conv1d` that runs ``torch.ops.fastconv.conv1d``.

    Same constructor, parameters, initialisation and ``state_dict`` as
    :class:`torch.nn.Conv1d` (it is a subclass), with every ``padding_mode``
    (``'zeros'``, ``'reflect'``, ``'replicate'``, ``'circular'``) and
    ``padding='same'``/``'valid'``, and ``padding='causal'`` (stride 1, zeros padding mode:
    see :func:`fastconv_ext.conv1d`). Works with ``torch.jit.script`` and ``torch.compile``.

    :meth:`stream` runs the layer causally on a signal that arrives in chunks.

    To convert layers of a model in place, see :func:`fastconv_ext.convert`.

    ``algorithm`` (keyword only: ``'auto'``, ``'native'``, ``'direct'`` or ``'fft'``) is passed
    to :func:`fastconv_ext.conv1d`; it is a plain attribute, not part of the ``state_dict``.
    """

    def __init__(self, *args, algorithm: str = "auto", **kwargs) -> None:
        # torch.nn.Conv1d knows no 'causal': built with padding 0, then set.
        causal = kwargs.get("padding") == "causal" or (len(args) > 4 and args[4] == "causal")
        if causal:
            if "padding" in kwargs:
                kwargs["padding"] = 0
            else:
                args = args[:4] + (0,) + args[5:]
        super().__init__(*args, **kwargs)
        if causal:
            if self.stride != (1,):
                raise ValueError(f"fastconv.Conv1d: padding='causal' needs stride 1, but got stride {self.stride}")
            if self.padding_mode != "zeros":
                raise ValueError(
                    f"fastconv.Conv1d: padding='causal' needs padding_mode='zeros', but got '{self.padding_mode}'"
                )
            self.padding = "causal"
        self.algorithm = check_algorithm("Conv1d", algorithm, 1)

    def stream(self, input: Tensor, state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        r"""The layer applied causally to one chunk of a signal: ``(output, state)``.

        Feeding a signal chunk by chunk, each call passing the state the previous one
        returned (None for the first), gives the outputs of one ``padding='causal'`` call over
        the whole signal (see :func:`fastconv_ext.conv1d_stream`), whatever the layer's own
        ``padding``. Needs stride 1 and ``padding_mode='zeros'``.
        """
        if self.stride[0] != 1 or self.padding_mode != "zeros":
            raise ValueError("fastconv.Conv1d.stream: needs stride 1 and padding_mode='zeros'")
        return conv1d_stream(input, self.weight, self.bias, state, self.dilation[0], self.groups)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        # The operator directly where the arguments are already its own (a module's call is
        # the common case: the functional wrapper's conversions cost microseconds).
        if not torch.jit.is_scripting():
            if not torch.compiler.is_compiling():
                out = module_call(self, 1, input, weight, bias)
                if out is not None:
                    return out
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return _conv(1, padded, weight, bias, list(self.stride), [0], list(self.dilation), self.groups,
                         self.algorithm)
        if isinstance(self.padding, str):
            return conv1d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups, self.algorithm)
        return _conv(1, input, weight, bias, list(self.stride), list(self.padding), list(self.dilation), self.groups,
                     self.algorithm)


class Conv2d(_RemembersRoute, nn.Conv2d):
    r"""Drop-in replacement for :class:`torch.nn.Conv2d` that runs ``torch.ops.fastconv.conv2d``.

    Same constructor, parameters, initialisation and ``state_dict`` as
    :class:`torch.nn.Conv2d` (it is a subclass), with every ``padding_mode``
    and ``padding='same'``/``'valid'``. Works with ``torch.jit.script`` and ``torch.compile``.

    ``algorithm`` (keyword only: ``'auto'``, ``'native'``, ``'direct'``, ``'im2col'``,
    ``'shifted'``, ``'depthwise'`` or ``'fft'``) is passed to :func:`fastconv_ext.conv2d`, a
    plain attribute as for
    :class:`Conv1d`.
    """

    def __init__(self, *args, algorithm: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.algorithm = check_algorithm("Conv2d", algorithm, 2)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        # The operator directly where the arguments are already its own (a module's call is
        # the common case: the functional wrapper's conversions cost microseconds).
        if not torch.jit.is_scripting():
            if not torch.compiler.is_compiling():
                out = module_call(self, 2, input, weight, bias)
                if out is not None:
                    return out
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return _conv(2, padded, weight, bias, list(self.stride), [0, 0], list(self.dilation), self.groups,
                         self.algorithm)
        if isinstance(self.padding, str):
            return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups, self.algorithm)
        return _conv(2, input, weight, bias, list(self.stride), list(self.padding), list(self.dilation), self.groups,
                     self.algorithm)


class CausalConv1d(Conv1d):
    r"""Depthwise causal convolution with an optional fused SiLU, as in Mamba-style blocks.

    ``CausalConv1d(channels, kernel_size)`` has the parameters and ``state_dict`` of
    ``torch.nn.Conv1d(channels, channels, kernel_size, groups=channels)`` (weight
    ``(C, 1, K)``, bias ``(C,)``) and computes :func:`fastconv_ext.causal_conv1d`: output
    ``t`` sees inputs up to ``t``, the output as long as the input, then the activation.

    Args:
        channels: ``C``.
        kernel_size: ``K >= 1``.
        bias: whether to learn a bias.
        activation: ``None``, ``'silu'`` or ``'swish'``.
        device, dtype: of the parameters.

    Inputs ``(B, C, L)`` (contiguous or channels-last, read in place) or ``(C, L)``.
    :meth:`stream` continues from a state chunk by chunk; :meth:`step` decodes with
    :func:`fastconv_ext.causal_conv1d_update`.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: Optional[str] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            channels, channels, kernel_size, padding="causal", groups=channels, bias=bias, device=device, dtype=dtype
        )
        if activation not in (None, "silu", "swish"):
            raise ValueError(f"fastconv.CausalConv1d: activation must be None, 'silu' or 'swish', but got {activation!r}")
        self.activation = activation

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", activation={self.activation!r}" if self.activation else "")

    def forward(self, input: Tensor) -> Tensor:
        unbatched = input.dim() == 2
        x = input.unsqueeze(0) if unbatched else input
        y = torch.ops.fastconv.causal_conv1d(x, self.weight.squeeze(1), self.bias, None, None, self.activation, 1)[0]
        return y.squeeze(0) if unbatched else y

    def stream(self, input: Tensor, state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        r"""``(output, state)`` for one chunk ``(B, C, L)`` after the chunks whose last
        ``K - 1`` inputs are ``state`` (None: the start), activation included."""
        return torch.ops.fastconv.causal_conv1d(input, self.weight.squeeze(1), self.bias, state, None,
                                                self.activation, 1)

    def step(self, input: Tensor, conv_state: Tensor) -> Tensor:
        r"""Decodes ``(B, C)`` or ``(B, C, T)`` new steps after those in ``conv_state``
        ``(B, C, S)``, ``S >= K - 1``, which is updated in place (inference only)."""
        return causal_conv1d_update(input, conv_state, self.weight.squeeze(1), self.bias, self.activation)
