"""Modules: drop-in replacements for ``torch.nn`` convolution layers."""

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastconv_ext.functional import _conv, conv1d, conv2d

__all__ = ["Conv1d", "Conv2d"]


def algorithms(dims: int) -> List[str]:
    """The values ``algorithm`` takes for an N-d operator, ``'auto'`` first."""
    return torch.ops.fastconv._algorithms(dims)


def check_algorithm(name: str, algorithm: str, dims: int) -> str:
    allowed = algorithms(dims)
    if algorithm not in allowed:
        raise ValueError(f"fastconv.{name}: algorithm must be one of {allowed}, but got {algorithm!r}")
    return algorithm


class Conv1d(nn.Conv1d):
    r"""Drop-in replacement for :class:`torch.nn.Conv1d` that runs ``torch.ops.fastconv.conv1d``.

    Same constructor, parameters, initialisation and ``state_dict`` as
    :class:`torch.nn.Conv1d` (it is a subclass), with every ``padding_mode``
    (``'zeros'``, ``'reflect'``, ``'replicate'``, ``'circular'``) and
    ``padding='same'``/``'valid'``. Works with ``torch.jit.script`` and ``torch.compile``.

    To convert layers of a model in place, see :func:`fastconv_ext.convert`.

    ``algorithm`` (keyword only: ``'auto'``, ``'native'``, ``'direct'`` or ``'fft'``) is passed
    to :func:`fastconv_ext.conv1d`; it is a plain attribute, not part of the ``state_dict``.
    """

    def __init__(self, *args, algorithm: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.algorithm = check_algorithm("Conv1d", algorithm, 1)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        # The operator directly where the arguments are already its own (a module's call is
        # the common case: the functional wrapper's conversions cost microseconds).
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return _conv(1, padded, weight, bias, list(self.stride), [0], list(self.dilation), self.groups,
                         self.algorithm)
        if isinstance(self.padding, str):
            return conv1d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups, self.algorithm)
        return _conv(1, input, weight, bias, list(self.stride), list(self.padding), list(self.dilation), self.groups,
                     self.algorithm)


class Conv2d(nn.Conv2d):
    r"""Drop-in replacement for :class:`torch.nn.Conv2d` that runs ``torch.ops.fastconv.conv2d``.

    Same constructor, parameters, initialisation and ``state_dict`` as
    :class:`torch.nn.Conv2d` (it is a subclass), with every ``padding_mode``
    and ``padding='same'``/``'valid'``. Works with ``torch.jit.script`` and ``torch.compile``.

    ``algorithm`` (keyword only: ``'auto'``, ``'native'``, ``'direct'``, ``'im2col'`` or
    ``'shifted'``) is passed to :func:`fastconv_ext.conv2d`, a plain attribute as for
    :class:`Conv1d`.
    """

    def __init__(self, *args, algorithm: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.algorithm = check_algorithm("Conv2d", algorithm, 2)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        # The operator directly where the arguments are already its own (a module's call is
        # the common case: the functional wrapper's conversions cost microseconds).
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return _conv(2, padded, weight, bias, list(self.stride), [0, 0], list(self.dilation), self.groups,
                         self.algorithm)
        if isinstance(self.padding, str):
            return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups, self.algorithm)
        return _conv(2, input, weight, bias, list(self.stride), list(self.padding), list(self.dilation), self.groups,
                     self.algorithm)
