"""Modules: drop-in replacements for ``torch.nn`` convolution layers."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastconv_ext.functional import conv1d, conv2d

__all__ = ["Conv1d", "Conv2d"]


class Conv1d(nn.Conv1d):
    r"""Drop-in replacement for :class:`torch.nn.Conv1d` that runs ``torch.ops.fastconv.conv1d``.

    Same constructor, parameters, initialisation and ``state_dict`` as
    :class:`torch.nn.Conv1d` (it is a subclass), with every ``padding_mode``
    (``'zeros'``, ``'reflect'``, ``'replicate'``, ``'circular'``) and
    ``padding='same'``/``'valid'``. Works with ``torch.jit.script`` and ``torch.compile``.

    To convert a trained layer: ``fast = Conv1d(...same args...); fast.load_state_dict(layer.state_dict())``.

    ``algorithm`` (keyword only: ``'auto'``, ``'direct'`` or ``'fft'``) is passed to
    :func:`fastconv_ext.conv1d`; it is a plain attribute, not part of the ``state_dict``.
    """

    def __init__(self, *args, algorithm: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if algorithm not in ("auto", "direct", "fft"):
            raise ValueError(f"fastconv.Conv1d: algorithm must be 'auto', 'direct' or 'fft', but got '{algorithm}'")
        self.algorithm = algorithm

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return torch.ops.fastconv.conv1d(
                padded, weight, bias, self.stride, [0], self.dilation, self.groups, self.algorithm
            )
        return conv1d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups, self.algorithm)


class Conv2d(nn.Conv2d):
    r"""Drop-in replacement for :class:`torch.nn.Conv2d` that runs ``torch.ops.fastconv.conv2d``.

    Same constructor, parameters, initialisation and ``state_dict`` as
    :class:`torch.nn.Conv2d` (it is a subclass), with every ``padding_mode``
    and ``padding='same'``/``'valid'``. Works with ``torch.jit.script`` and ``torch.compile``.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return torch.ops.fastconv.conv2d(
                padded, weight, bias, self.stride, [0, 0], self.dilation, self.groups
            )
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
