"""CPU defaults applied when paddle_bibert is imported, before Paddle is (so no paddle here).

Both only change speed, never results, and a value the user has set is never overridden:

- ``FLAGS_use_stride_kernel=0``: Paddle 3 makes ``transpose`` return a strided view, and its CPU
  matmul on such a view runs ~18x slower than on a contiguous tensor; attention does exactly
  that. With the flag off, a MiniLM fine-tuning step took 1.31 s instead of 1.89 s here
  (benchmarks/train_step.py, batch 32 x 64).
- ``MKL_DEBUG_CPU_TYPE=5`` on AMD processors only: Paddle's MKL takes a slow generic path on
  them otherwise (3.4x on a 2048x384x1536 matmul on an AMD host). On Intel the default path is
  already the fast one (and the override measured slower here).

Environment variables are read when Paddle loads, so they only take effect if paddle_bibert is
imported first (the example commands do); set them yourself otherwise.
"""

import os
import sys


def apply_cpu_defaults():
    if "paddle" in sys.modules:
        return  # too late to matter, and the user chose their own order
    os.environ.setdefault("FLAGS_use_stride_kernel", "0")
    try:
        with open("/proc/cpuinfo") as f:
            amd = "AuthenticAMD" in f.read(65536)
    except OSError:
        return
    if amd:
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
