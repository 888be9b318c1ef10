"""fastconv: fast convolution operators for PyTorch.

Importing this package loads the compiled operator library, which registers
``torch.ops.fastconv.*`` with the dispatcher (CPU, CUDA where built, Meta for
torch.compile, and autograd). The Python API is a thin, typed layer over them:

- :func:`conv1d` -- drop-in for :func:`torch.nn.functional.conv1d`
- :class:`Conv1d` -- drop-in for :class:`torch.nn.Conv1d`
- :func:`conv2d` -- drop-in for :func:`torch.nn.functional.conv2d` (im2col + GEMM)
- :class:`Conv2d` -- drop-in for :class:`torch.nn.Conv2d`
- :func:`convolve` -- batched per-row convolution with scipy's modes
- :func:`cpu_cache_info`, :func:`set_cpu_cache_limit`, :func:`empty_cpu_cache` -- the
  cache of CPU result buffers
"""

import torch

from fastconv_ext._loader import load_library

load_library()

from fastconv_ext.functional import conv1d, conv2d, convolve  # noqa: E402
from fastconv_ext.memory import cpu_cache_info, empty_cpu_cache, set_cpu_cache_limit  # noqa: E402
from fastconv_ext.nn import Conv1d, Conv2d  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "conv1d", "conv2d", "convolve", "Conv1d", "Conv2d",
    "cpu_cache_info", "set_cpu_cache_limit", "empty_cpu_cache", "__version__",
]

del torch
