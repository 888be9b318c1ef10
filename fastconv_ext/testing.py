"""Convolution layers shared by fastconv's benchmarks and tests.

The benchmarks (``benchmarks/bench_conv1d.py``, ``benchmarks/bench_conv2d.py``) time these
layers at full size; the tests (``tests/test_shared_layers.py``) check each of them, cut down
by :meth:`Conv1dShape.test_size` / :meth:`Conv2dShape.test_size` to a size float64 runs in
milliseconds, against :mod:`torch.nn.functional` in forward and every gradient. One list, so
a layer added to a benchmark is tested too.
"""

from dataclasses import dataclass, replace
from typing import List, Tuple

__all__ = ["Conv1dShape", "Conv2dShape", "CONV1D_SHAPES", "CONV2D_SHAPES"]


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _test_channels(in_channels: int, out_channels: int, groups: int) -> Tuple[int, int, int]:
    """(in, out, groups) with at most 8 channels a side, the grouping kept (depthwise stays depthwise)."""
    if groups == in_channels == out_channels:
        c = min(in_channels, 8)
        return c, c, c
    g = min(groups, 4)
    per_group = 8 // g
    return g * min(in_channels // groups, per_group), g * min(out_channels // groups, per_group), g


@dataclass(frozen=True)
class Conv1dShape:
    """A conv1d layer: (batch, in_channels, length) input, (out_channels, in_channels / groups, kernel_size) weight."""

    name: str
    batch: int
    in_channels: int
    out_channels: int
    length: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    quick: bool = False  # in the benchmark's --quick run

    @property
    def category(self) -> str:
        """'depthwise', 'few-channel' (at most 4 channels a side), 'dense' or 'grouped'."""
        if self.groups == self.in_channels == self.out_channels and self.groups > 1:
            return "depthwise"
        if self.in_channels <= 4 and self.out_channels <= 4:
            return "few-channel"
        return "dense" if self.groups == 1 else "grouped"

    @property
    def out_length(self) -> int:
        """Output positions per row."""
        return _out_size(self.length, self.kernel_size, self.stride, self.padding, self.dilation)

    def args(self) -> dict:
        """The hyper-parameters as keyword arguments of ``conv1d``."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def flops(self) -> float:
        """Floating-point operations of the forward (a multiply-add counts two)."""
        return 2.0 * self.batch * self.out_channels * self.out_length * (
            self.in_channels // self.groups) * self.kernel_size

    def tensor_elems(self) -> Tuple[int, int, int]:
        """Elements of input, weight and output."""
        x = self.batch * self.in_channels * self.length
        w = self.out_channels * (self.in_channels // self.groups) * self.kernel_size
        y = self.batch * self.out_channels * self.out_length
        return x, w, y

    def test_size(self) -> "Conv1dShape":
        """The same layer (kernel, stride, padding, dilation, grouping) with at most 2 samples,
        8 channels a side and a few kernel spans of length."""
        cin, cout, groups = _test_channels(self.in_channels, self.out_channels, self.groups)
        span = self.dilation * (self.kernel_size - 1) + 1
        return replace(self, batch=min(self.batch, 2), in_channels=cin, out_channels=cout, groups=groups,
                       length=min(self.length, max(2 * span, 96)))


@dataclass(frozen=True)
class Conv2dShape:
    """A conv2d layer: (N, C, H, W) input, (C_out, C_in / groups, KH, KW) weight."""

    name: str
    input: tuple  # (N, C, H, W)
    weight: tuple  # (C_out, C_in / groups, KH, KW)
    stride: int = 1
    padding: int = 0
    groups: int = 1
    quick: bool = False  # in the benchmark's --quick run
    channels_last: bool = False  # input (and so output) in channels-last memory format
    suite: str = "dense"  # the benchmark suite: "dense" or "depthwise"

    def out_hw(self) -> Tuple[int, int]:
        """Output height and width."""
        _, _, h, w = self.input
        _, _, kh, kw = self.weight
        return _out_size(h, kh, self.stride, self.padding), _out_size(w, kw, self.stride, self.padding)

    def args(self) -> dict:
        """The hyper-parameters as keyword arguments of ``conv2d``."""
        return dict(stride=self.stride, padding=self.padding, groups=self.groups)

    def flops(self) -> float:
        """Floating-point operations of the forward (a multiply-add counts two)."""
        n = self.input[0]
        co, ci, kh, kw = self.weight
        oh, ow = self.out_hw()
        return 2.0 * n * co * ci * kh * kw * oh * ow

    def bytes(self, elem_size: int) -> float:
        """Activations in and out and the weights, once each (the forward's least traffic)."""
        n, c, h, w = self.input
        co, ci, kh, kw = self.weight
        oh, ow = self.out_hw()
        return float(elem_size) * (n * c * h * w + n * co * oh * ow + co * ci * kh * kw)

    def test_size(self) -> "Conv2dShape":
        """The same layer (kernel, stride, padding, grouping, layout) with at most 2 samples,
        8 channels a side and images of a few kernel spans."""
        n, c, h, w = self.input
        co, _, kh, kw = self.weight
        cin, cout, groups = _test_channels(c, co, self.groups)
        h, w = min(h, max(2 * kh, 16)), min(w, max(2 * kw, 16))
        return replace(self, input=(min(n, 2), cin, h, w), weight=(cout, cin // groups, kh, kw), groups=groups)


CONV1D_SHAPES: List[Conv1dShape] = [
    Conv1dShape("1ch-k16-short", 1000, 1, 1, 64, 16, padding=8, quick=True),
    Conv1dShape("1ch-k5", 4096, 1, 1, 256, 5, quick=True),
    Conv1dShape("depthwise-k4", 8, 1024, 1024, 2048, 4, padding=3, groups=1024, quick=True),
    Conv1dShape("1ch-long-k1024", 4, 1, 1, 65536, 1024),
    Conv1dShape("dense-64-k3", 32, 64, 64, 1024, 3, padding=1, quick=True),
    Conv1dShape("depthwise-k3", 16, 256, 256, 4096, 3, padding=1, groups=256),
    Conv1dShape("depthwise-k4-causal", 4, 2048, 2048, 1024, 4, padding=3, groups=2048),
    Conv1dShape("depthwise-dilated", 8, 512, 512, 2048, 3, padding=4, dilation=4, groups=512),
    Conv1dShape("depthwise-k31", 8, 256, 256, 2048, 31, padding=15, groups=256),
    Conv1dShape("1ch-k3-stride2", 2048, 1, 1, 1024, 3, stride=2, quick=True),
    Conv1dShape("1ch-k64-1M", 1, 1, 1, 1 << 20, 64),
    Conv1dShape("4ch-k7", 256, 4, 4, 1024, 7, padding=3, quick=True),
    Conv1dShape("2to4-k9", 128, 2, 4, 2048, 9),
    Conv1dShape("8ch-dilated", 64, 8, 8, 4096, 3, padding=8, dilation=8),
    Conv1dShape("grouped-8x8", 16, 64, 64, 2048, 5, padding=2, groups=8),
    Conv1dShape("strided-16to32", 32, 16, 32, 4096, 4, stride=2, padding=1),
    Conv1dShape("dense-128-k5", 8, 128, 128, 512, 5, padding=2),
]


def _depthwise_suite() -> List[Conv2dShape]:
    """The depthwise layers of modern CNNs (ConvNeXt 7x7, MobileNet/EfficientNet 3x3 and 5x5 at
    stride 2, RepLKNet 13x13 and 31x31), each in NCHW and in channels-last."""
    layers = [  # name, input, kernel, stride, quick
        ("convnext dw7 96 56^2 b4", (4, 96, 56, 56), 7, 1, True),
        ("convnext dw7 384 14^2", (1, 384, 14, 14), 7, 1, False),
        ("convnext dw7 768 7^2 b8", (8, 768, 7, 7), 7, 1, False),
        ("mobilenet dw3 s2 144 56^2", (1, 144, 56, 56), 3, 2, True),
        ("efficientnet dw5 s2 240 28^2", (1, 240, 28, 28), 5, 2, False),
        ("replknet dw13 128 56^2", (1, 128, 56, 56), 13, 1, False),
        ("replknet dw31 128 56^2", (1, 128, 56, 56), 31, 1, False),
    ]
    out = []
    for name, shape, k, stride, quick in layers:
        for cl in (False, True):
            c = shape[1]
            out.append(Conv2dShape(f"{name} {'cl' if cl else 'nchw'}", shape, (c, 1, k, k), stride=stride,
                                   padding=k // 2, groups=c, quick=quick, channels_last=cl, suite="depthwise"))
    return out


CONV2D_SHAPES: List[Conv2dShape] = [
    Conv2dShape("seed 3->16 3x3 1024^2", (1, 3, 1024, 1024), (16, 3, 3, 3), padding=1, quick=True),
    Conv2dShape("resnet 64->64 3x3 56^2", (32, 64, 56, 56), (64, 64, 3, 3), padding=1, quick=True),
    Conv2dShape("resnet 128->128 3x3 28^2", (32, 128, 28, 28), (128, 128, 3, 3), padding=1),
    Conv2dShape("resnet 256->256 3x3 14^2", (8, 256, 14, 14), (256, 256, 3, 3), padding=1),
    Conv2dShape("resnet 64->256 1x1 56^2", (32, 64, 56, 56), (256, 64, 1, 1)),
    Conv2dShape("resnet 64->128 3x3 s2", (32, 64, 56, 56), (128, 64, 3, 3), stride=2, padding=1),
    Conv2dShape("depthwise 32 3x3 112^2", (8, 32, 112, 112), (32, 1, 3, 3), padding=1, groups=32),
    Conv2dShape("depthwise 128 3x3 28^2", (32, 128, 28, 28), (128, 1, 3, 3), padding=1, groups=128),
    Conv2dShape("depthwise 64 5x5 56^2", (8, 64, 56, 56), (64, 1, 5, 5), padding=2, groups=64),
] + _depthwise_suite()
