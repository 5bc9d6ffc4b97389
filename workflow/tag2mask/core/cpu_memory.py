"""glibc malloc settings for a process that allocates and frees large tensors over and over.

glibc serves a block above its mmap threshold (adaptive, at most 32 MB by default) with a
fresh mmap and returns it to the operating system on free, so the next block of that size is
page-faulted in again, zero-filled by the kernel. The batched backward of the peak response
maps (tag2mask.peaks.prm) allocates P-fold activation-sized tensors layer after layer (20 peaks of
ResNet-50 at 448 px: up to 256 MB each); measured on one CPU thread it then spent more time in
the kernel than computing: 6.1 s user + 7.6 s system for 20 maps, 5.8 s + 0.0 s with freed
memory kept for reuse (benchmarks/prm_batched.py, --glibc-default compares).
"""

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
INT_MAX = 2**31 - 1


def keep_freed_memory(mmap_threshold=1 << 30):
    """Serve blocks up to `mmap_threshold` bytes from the heap and keep freed heap memory for
    reuse (process-wide, for the rest of the process: its memory stays at its high-water mark
    until it exits). True when applied; False where the C library is not glibc (no mallopt, or
    it refuses), which changes nothing but the speed."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = (mallopt(M_MMAP_THRESHOLD, min(mmap_threshold, INT_MAX)) == 1
               and mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1)
    log.debug("malloc: keep freed memory %s", "on" if applied else "not available")
    return applied
