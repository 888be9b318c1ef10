"""Autotuning: the analogue of ``torch.backends.cudnn.benchmark`` for fastconv.

With autotuning on, the first call of an operator (a forward, a grad_input, a grad_weight) with
a new signature -- sizes, stride/padding/dilation/groups, dtype, device, memory layout and thread
count -- times every path that can run it (PyTorch's own kernel among them) on the call's own
tensors and keeps the fastest; later calls look it up in the operator's kernel, so it works the
same eagerly, inside ``torch.compile`` graphs and in TorchScript. The winners persist in a
plain-text file under ``$FASTCONV_CACHE_DIR`` (default ``~/.cache/fastconv/``) named after a
fingerprint of the machine and the torch and fastconv versions.
"""

from typing import Any, Dict

import torch

__all__ = ["set_autotune", "autotune_enabled", "autotune_cache_info", "clear_autotune_cache"]


def set_autotune(enabled: bool) -> None:
    """Turn autotuning on or off for this process (``FASTCONV_AUTOTUNE=1`` turns it on at start)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"fastconv.set_autotune: enabled must be a bool, but got {type(enabled).__name__}")
    torch.ops.fastconv._autotune(enabled)


def autotune_enabled() -> bool:
    """Whether autotuning is on."""
    return torch.ops.fastconv._autotune(None)


def autotune_cache_info() -> Dict[str, Any]:
    """The autotuning cache: ``enabled``, ``file`` (``''`` when it lives in memory only),
    ``fingerprint``, ``entries`` (tuned signatures known, from the file too), ``hits`` (calls
    served from it), ``misses`` (signatures tuned in this process) and ``tuning_seconds`` (the
    time those took)."""
    file, fingerprint, (entries, hits, misses), seconds = torch.ops.fastconv._autotune_info()
    return {"enabled": autotune_enabled(), "file": file, "fingerprint": fingerprint, "entries": entries,
            "hits": hits, "misses": misses, "tuning_seconds": seconds}


def clear_autotune_cache(file: bool = False) -> None:
    """Forget every tuned path in memory; with ``file=True`` delete the cache file too."""
    torch.ops.fastconv._autotune_clear(bool(file))
