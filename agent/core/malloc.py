"""glibc malloc settings for a long-lived process whose jobs make large, short-lived buffers.

The sampler makes arrays of ~1.5 MB per read at 10k statements and /metrics renders a few
hundred KB, every few seconds. glibc serves a block of at least its mmap threshold (128 KiB)
with its own mapping, given back to the kernel when freed; but by default the threshold rises
to the size of every such block freed (up to 32 MiB), so after the first read those buffers
come from the heaps, and the holes they leave stay resident. Measured at 10k statements
(bench/README.md, "Agent memory at 10k statements"): 1.5 MiB less after a read of 10k deltas
on its own; with the later changes, what it keeps is the long run (after 12 more rounds of
reads 63.9 / 63.9 MiB with it, 63.7 / 66.6 without).
Elsewhere (musl, macOS) there is no such setting and this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD = 128 * 1024  # glibc's own default, kept fixed instead of rising


def _libc_function(name: str) -> Callable[..., int] | None:
    try:
        f: Callable[..., int] = getattr(ctypes.CDLL(None), name)  # the process's own C library
    except (OSError, AttributeError):
        return None
    return f


def fix_mmap_threshold() -> bool:
    """Keep large blocks in mappings of their own (setting the threshold turns off glibc's
    dynamic raise of it). True when glibc took the setting."""
    mallopt = _libc_function("mallopt")
    return mallopt is not None and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


def trim() -> None:
    """Give the free pages inside glibc's heaps back to the kernel (`malloc_trim(0)`; it
    releases the GIL, and walks every arena: call it in a worker thread after a large,
    short-lived piece of work, not per request)."""
    f = _libc_function("malloc_trim")
    if f is not None:
        f(0)
