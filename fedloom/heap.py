"""Keep freed memory in the process heap, so a round's buffers are reused instead of faulted in fresh.

A round allocates and frees the same large buffers again and again: the cohort's stacked updates (31 MB for W1's
first layer), one encoded message per client (800 KB each), the decoded views' accumulator. glibc's malloc serves
blocks above its mmap threshold (128 KB, raised dynamically up to 32 MB) with fresh ``mmap`` pages and gives them
back to the kernel on ``free``, and trims the top of the heap above 128 KB; the next round then pays a page fault
(and the kernel's zeroing) for every 4 KB page again. Measured on W1 (one thread, 2-core x86_64): ~15,000 minor
page faults per round, ~25% of the round's CPU time; with the settings below, 2 per round.

:func:`retain_freed_memory` raises the mmap threshold and the trim threshold with ``mallopt`` (the same knobs as
the ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables, applied from inside the process
because they must not depend on how fedloom was launched). Blocks above :data:`MMAP_THRESHOLD` still come from
``mmap`` and are returned on free; up to :data:`TRIM_THRESHOLD` of free memory at the top of the heap is kept.
The price is memory: RSS stays at the round's high-water mark between rounds instead of dropping, and in the
first rounds the heap grows by a few of the largest buffers until a freed block (plus the 64-byte alignment torch
asks for) fits the next request, after which the same blocks are reused (W1: peak RSS 580 MB instead of 560).
Only glibc has ``mallopt``; elsewhere (musl, macOS) this does nothing. Set ``FEDLOOM_RETAIN_HEAP=0`` to leave
malloc's defaults alone. The usual alternative, preloading jemalloc or
tcmalloc, needs a library installed and a launcher change; this needs neither.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 512 << 20
TOP_PAD = 16 << 20

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Apply the settings once per process; True when they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("FEDLOOM_RETAIN_HEAP", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(opt, val) == 1 for opt, val in
                   ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    return _applied
