"""glibc's allocator kept from unmapping XLA:CPU's step buffers.

XLA:CPU allocates each execution's temporaries as one buffer of the compiled step's scratch size (tens to hundreds of
MiB for the tiny and small CPUs) with ``malloc``. glibc serves a request above its mmap threshold (dynamic, at most
32 MiB) with a fresh mapping and unmaps it on ``free``, so every training step faults the whole buffer in again,
page by page, zeroed by the kernel: 22 of the tiny training step's 75 ms on the 2-core host (paired in one
process). With the threshold above any step's buffers and the top of the heap kept (the trim
threshold), the next step reuses the same pages. Both hold in the main heap only: a thread that allocates from
an arena of its own (heaps of at most 64 MiB) gets a request larger than that mapped fresh whatever the threshold.
With JAX's CPU async dispatch on (its default) every execution, and so its scratch, goes to a worker thread of the
client's pool: an encoder-decoder's step (68.7 MiB at the tiny preset, 16 × (128 + 64) ids) and ``small``'s
(568 MiB) were faulted in every step (17,600 and 155,000 faults). So this also turns async dispatch off
(``jax_cpu_enable_async_dispatch``, read when the CPU client is made: it takes effect only before the first
computation); an execution whose inputs are ready then runs on the calling thread, from the main heap, and Python
waits for it (README, "The tiny step at 1.84×", says what that costs and saves).
What a process holds then is its high-water mark, not its live buffers; ``LLMCPU_SYSTEM_MALLOC=1`` in the
environment keeps glibc's and JAX's defaults.
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
  """Sets glibc's mmap and trim thresholds for this process and turns JAX's CPU async dispatch off (see the module
  docstring; calling it again changes nothing); False where it does not apply (not Linux/glibc) or
  ``LLMCPU_SYSTEM_MALLOC`` is set. Call before the first computation (scripts do, in ``cli.run_script``)."""
  if os.environ.get(ENV, "") not in ("", "0") or not sys.platform.startswith("linux"):
    return False
  import jax  # here: the module is imported by code that must not start JAX

  jax.config.update("jax_cpu_enable_async_dispatch", False)
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):  # another C library (musl): its defaults stay
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
