"""glibc malloc settings that keep a long-running server's memory flat.

With glibc's defaults, RSS ratchets up under concurrent load and is not given back: each thread that
allocates gets its own arena (up to 8 per core), and the mmap threshold grows dynamically (up to 32 MiB)
after the first large block is freed, so tensors of a few MiB land in those heaps and fragment them
(measured on CPU with the tiny model: rounds of 16 concurrent streams took RSS from 1.2 GB to 3.9 GB). Two
arenas, and a fixed 128 KiB threshold (glibc's own starting value) for both mmap and trimming, keep it near
its idle size (tests/runtime/test_soak.py). GPU tensors use the CUDA caching allocator and are not affected.

`orpheus-tts` applies them with mallopt(3) when it starts, before torch and its threads exist (the images'
entry point is `orpheus-tts`). The price is more page faults for host tensors of 128 KiB to a few MiB: about
twice the CPU per stream on the CPU backend, negligible on a GPU. Whoever sets glibc's own variables
(MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_, ..., GLIBC_TUNABLES) or preloads another allocator (jemalloc,
tcmalloc) keeps their choice: see `config.allocator_tuned_by_env`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

SETTINGS = {M_ARENA_MAX: 2, M_MMAP_THRESHOLD: 128 * 1024, M_TRIM_THRESHOLD: 128 * 1024}


def tune_malloc() -> bool:
    """Applies SETTINGS; False where there is no glibc (e.g. musl) or a setting is refused."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
