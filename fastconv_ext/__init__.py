"""fastconv: fast convolution operators for PyTorch.

Importing this package loads the compiled operator library, which registers
``torch.ops.fastconv.*`` with the dispatcher (CPU, CUDA where built, Meta for
torch.compile, and autograd). The Python API is a thin, typed layer over them:

- :func:`conv1d` -- drop-in for :func:`torch.nn.functional.conv1d`
- :class:`Conv1d` -- drop-in for :class:`torch.nn.Conv1d`
- :func:`conv2d` -- drop-in for :func:`torch.nn.functional.conv2d`
- :class:`Conv2d` -- drop-in for :class:`torch.nn.Conv2d`
- :func:`convert`, :func:`revert` -- swap a model's ``torch.nn`` convolutions for fastconv's in place
- :func:`set_autotune`, :func:`autotune_cache_info`, :func:`clear_autotune_cache` -- per-signature
  autotuning of the path (PyTorch's own kernel among the candidates), cached on disk
- :func:`causal_conv1d`, :func:`causal_conv1d_update`, :func:`conv1d_stream`, :class:`CausalConv1d`
  -- causal convolution with state: whole sequences, decoding step by step, chunked streams
- :func:`convolve` -- batched per-row convolution with scipy's modes
- :func:`cpu_cache_info`, :func:`set_cpu_cache_limit`, :func:`empty_cpu_cache` -- the
  cache of CPU result buffers
"""

import torch

from fastconv_ext._loader import load_library

load_library()

from fastconv_ext.causal import causal_conv1d, causal_conv1d_update, conv1d_stream  # noqa: E402
from fastconv_ext.autotune import autotune_cache_info, autotune_enabled, clear_autotune_cache, set_autotune  # noqa: E402
from fastconv_ext.convert import convert, profile_layers, revert  # noqa: E402
from fastconv_ext.functional import conv1d, conv2d, convolve  # noqa: E402
from fastconv_ext.memory import cpu_cache_info, empty_cpu_cache, set_cpu_cache_limit  # noqa: E402
from fastconv_ext.nn import CausalConv1d, Conv1d, Conv2d  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "conv1d", "conv2d", "convolve", "Conv1d", "Conv2d", "CausalConv1d",
    "causal_conv1d", "causal_conv1d_update", "conv1d_stream", "convert", "revert", "profile_layers",
    "set_autotune", "autotune_enabled", "autotune_cache_info", "clear_autotune_cache",
    "cpu_cache_info", "set_cpu_cache_limit", "empty_cpu_cache", "__version__",
]

del torch
