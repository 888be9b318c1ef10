"""The cache of CPU result buffers (docs/cpu-kernels.md, "Result buffers").

fastconv's CPU operators put results of 128 KiB or more in buffers that earlier
results freed, so they skip the page faults of fresh memory. Freed buffers stay
cached up to a limit (512 MiB unless ``FASTCONV_CPU_CACHE_MB`` says otherwise),
oldest returned to the system first.
"""

from typing import Dict

import torch

__all__ = ["cpu_cache_info", "set_cpu_cache_limit", "empty_cpu_cache"]


def cpu_cache_info() -> Dict[str, int]:
    """The cache's state: ``limit_bytes``, ``cached_bytes`` and ``cached_buffers`` (freed
    buffers it holds now), and ``hits``/``misses`` (results served from it / freshly allocated)."""
    limit, cached, buffers, hits, misses = torch.ops.fastconv._cpu_cache()
    return {"limit_bytes": limit, "cached_bytes": cached, "cached_buffers": buffers, "hits": hits, "misses": misses}


def set_cpu_cache_limit(limit_bytes: int) -> None:
    """Keep at most ``limit_bytes`` of freed buffers (0 turns caching off); frees the excess now."""
    if not isinstance(limit_bytes, int) or limit_bytes < 0:
        raise ValueError(f"fastconv.set_cpu_cache_limit: limit_bytes must be an int >= 0, got {limit_bytes!r}")
    torch.ops.fastconv._cpu_cache(limit_bytes)


def empty_cpu_cache() -> None:
    """Return every cached buffer to the system (results still in use are unaffected)."""
    torch.ops.fastconv._cpu_cache_clear()
