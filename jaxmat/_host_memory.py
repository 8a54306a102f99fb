"""Keep freed host memory in the process, so XLA's per-call buffers are not page-faulted anew.

Why: on the CPU, XLA allocates each call's scratch buffer (``compiled.memory_analysis()``'s
``temp_size_in_bytes``: 67 MB for energy + forces + stress of a 64-atom Si cell, 11 MB for the
energy alone) with ``malloc`` and frees it at the end of the call. glibc serves blocks this large
with a fresh ``mmap`` and gives them back with ``munmap``, so every call touches new pages: the
kernel faults and zeroes each 4 KiB page again (16,000 minor page faults per call for Si64, about
0.7 us each, a third of the call). The energy alone, whose buffer is small, hardly pays this;
that is why forces and stress cost 4-5 forward passes instead of about 2.5.

``retain_host_memory()`` tells glibc to serve every block from its heap (never ``mmap``) and not
to trim the heap, with one arena, so the second call reuses the first call's pages: zero page
faults per call in most runs (in some, blocks of ~4 MB are still mapped afresh: up to a fifth of
the buffer; not understood yet). The process keeps its peak heap (for example 0.5 GB after a 512-atom
E+F+S call) until it exits. It changes process-wide allocator settings, so the library never
calls it on its own: the ``jaxmat`` command line does (``JAXMAT_HOST_MEMORY=default`` or ``off`` turns it off),
and a Python user calls it once, before the first JAX computation. Outside glibc (macOS, musl) it
does nothing. The environment variables ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=-1`` set before Python starts do the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
#: the same settings as environment variables (read by glibc at start-up), for other processes
ENVIRONMENT = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "-1"}
_applied: dict | None = None


def retain_host_memory() -> dict:
    """Apply the allocator settings above (once per process); returns what was applied:
    ``{"allocator": "glibc" | "unsupported", "arena_max": 1, "mmap_max": 0, "trim_threshold": -1}``.

    Call it before the first JAX computation: threads that already allocated keep their own arenas,
    and blocks allocated there are still mapped and unmapped per call.
    """
    global _applied
    if _applied is not None:
        return _applied
    if not sys.platform.startswith("linux"):
        _applied = {"allocator": "unsupported"}
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _applied = {"allocator": "unsupported"}
        return _applied
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = {"arena_max": (_M_ARENA_MAX, 1), "mmap_max": (_M_MMAP_MAX, 0),
                "trim_threshold": (_M_TRIM_THRESHOLD, -1)}  # -1: never trim (2**31 - 1 would trim above 2 GB)
    done = {name: value for name, (option, value) in settings.items() if mallopt(option, value) == 1}
    _applied = {"allocator": "glibc", **done} if done else {"allocator": "unsupported"}
    return _applied


def retain_host_memory_from_env() -> dict | None:
    """What the command line calls: ``retain_host_memory()`` unless JAXMAT_HOST_MEMORY=default."""
    if os.environ.get("JAXMAT_HOST_MEMORY", "retain").lower() in ("default", "off", "0", "no", "false"):
        return None
    return retain_host_memory()
