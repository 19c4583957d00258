"""glibc's allocator kept from unmapping XLA:CPU's step buffers.

XLA:CPU allocates each execution's temporaries as one buffer of the compiled step's scratch size (tens to hundreds of
MiB for the tiny and small CPUs) with ``malloc``. glibc serves a request above its mmap threshold (dynamic, at most
32 MiB) with a fresh mapping and unmaps it on ``free``, so every training step faults the whole buffer in again,
page by page, zeroed by the kernel: 22 of the tiny training step's 75 ms on the 2-core host (paired in one
process). With the threshold above any step's buffers and the top of the heap kept (the trim
threshold), the next step reuses the same pages. Both hold in the main heap only: a thread that allocates from
an arena of its own (heaps of at most 64 MiB) gets a request larger than that mapped fresh whatever the threshold.
An encoder-decoder's step does so (17,600 faults a step at the tiny preset, 16 × (128 + 64) ids); one arena for
every thread (``M_ARENA_MAX`` 1) removes them and runs that step 1.24× faster, but the tiny decoder's 0.89× (its
threads then contend for one lock), so glibc's arenas are kept (README, "The tiny step at 1.84×").
What a process holds then is its high-water mark, not its live buffers; ``LLMCPU_SYSTEM_MALLOC=1`` in the
environment keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "LLMCPU_SYSTEM_MALLOC"
MMAP_THRESHOLD = 1 << 30  # requests below 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: keep up to 2 GiB free at the heap's top
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def keep_step_buffers() -> bool:
  """Sets glibc's mmap and trim thresholds for this process (see the module docstring; calling it again changes
  nothing); False where it does not apply (not Linux/glibc) or ``LLMCPU_SYSTEM_MALLOC`` is set. Call before the
  first step runs."""
  if os.environ.get(ENV, "") not in ("", "0") or not sys.platform.startswith("linux"):
    return False
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):  # another C library (musl): its defaults stay
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
