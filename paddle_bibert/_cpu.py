"""CPU defaults applied when paddle_bibert is imported, before Paddle is (so no paddle here).

They only change speed, never results, and a value the user has set is never overridden:

- ``FLAGS_use_stride_kernel=0``: Paddle 3 makes ``transpose`` return a strided view, and its CPU
  matmul on such a view runs ~18x slower than on a contiguous tensor; attention does exactly
  that. With the flag off, a MiniLM fine-tuning step took 1.31 s instead of 1.89 s here
  (benchmarks/train_step.py, batch 32 x 64).
- ``GOMP_SPINCOUNT=0``: the fused quantizer kernels (``quant/_ops.cc``) run OpenMP regions; GNU
  OpenMP's threads then spin for a while waiting for the next region, on cores Paddle's own
  threads need. On two cores a BiT-recipe distillation step (batch 16 x 32 tokens, two threads)
  took 1.30-1.52 s with the default spin and 0.76-0.95 s with none, the full-precision step
  unchanged (benchmarks/distill_step.py); with the default spin two threads were slower than one.
- ``MKL_DEBUG_CPU_TYPE=5`` on AMD processors only: Paddle's MKL takes a slow generic path on
  them otherwise (3.4x on a 2048x384x1536 matmul on an AMD host). On Intel the default path is
  already the fast one (and the override measured slower here).

Environment variables are read when Paddle loads, so they only take effect if paddle_bibert is
imported first (the example commands do); set them yourself otherwise.

``openmp_blocktime(0)`` (used while the teacher runs ahead in a thread, see
``distill/prefetch.py``) is scoped to the threads that enter it: Intel OpenMP, which runs
Paddle's MKL, keeps its threads spinning 200 ms after each matmul by default, on the core the
other thread needs; it changes speed only.

``flush_denormals()`` is different: it does change results (numbers below 1.2e-38 become 0), so
it is not applied on import. The training loop (``Trainer.train``, i.e. both commands) runs inside
it unless ``--no_flush_denormals``: tiny attention probabilities and their gradients otherwise
fall into x86's microcoded subnormal path, which made the sign-softmax baseline's steps 3-5x
slower than BiBERT's (benchmarks/distill_step.py shows the effect per recipe).
"""

import contextlib
import ctypes
import os
import platform
import sys


def apply_cpu_defaults():
    if "paddle" in sys.modules:
        return  # too late to matter, and the user chose their own order
    os.environ.setdefault("FLAGS_use_stride_kernel", "0")
    os.environ.setdefault("GOMP_SPINCOUNT", "0")
    try:
        with open("/proc/cpuinfo") as f:
            amd = "AuthenticAMD" in f.read(65536)
    except OSError:
        return
    if amd:
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")


# x86-64 MXCSR: FTZ (bit 15) writes subnormal results as 0, DAZ (bit 6) reads subnormal inputs as 0.
_FTZ_DAZ = 0x8040
_MXCSR_OFFSET = 28  # glibc's x86-64 fenv_t: x87 state (28 bytes), then the 4-byte MXCSR


def _libm():
    if platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libm.so.6")
    except OSError:
        return None


def set_flush_denormals(on: bool):
    """Set FTZ+DAZ on this thread (threads it starts later inherit it); returns the previous
    state, or None where unsupported (not x86-64 Linux), in which case nothing changes."""
    libm = _libm()
    if libm is None:
        return None
    env = ctypes.create_string_buffer(32)
    if libm.fegetenv(env) != 0:
        return None
    raw = bytearray(env.raw)
    csr = int.from_bytes(raw[_MXCSR_OFFSET:_MXCSR_OFFSET + 4], "little")
    new = (csr | _FTZ_DAZ) if on else (csr & ~_FTZ_DAZ)
    raw[_MXCSR_OFFSET:_MXCSR_OFFSET + 4] = new.to_bytes(4, "little")
    libm.fesetenv(ctypes.create_string_buffer(bytes(raw), 32))
    return bool(csr & _FTZ_DAZ == _FTZ_DAZ)


@contextlib.contextmanager
def flush_denormals(on: bool = True):
    """Within the block, subnormal floats are treated as zero (restored on exit)."""
    prev = set_flush_denormals(on)
    try:
        yield prev is not None
    finally:
        if prev is not None:
            set_flush_denormals(prev)


def _intel_openmp():
    """Intel OpenMP as Paddle's MKL loaded it into this process, or None (not loaded, other OS)."""
    try:
        with open("/proc/self/maps") as f:
            path = next((line.split()[-1] for line in f if "libiomp5" in line), None)
        if path is None:
            return None
        lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0))
        lib.kmp_get_blocktime.restype = ctypes.c_int
        return lib
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def openmp_blocktime(ms: int):
    """Within the block, the Intel OpenMP threads this thread's MKL calls use sleep ``ms`` after
    each parallel region instead of spinning (restored on exit). Nothing changes where Intel
    OpenMP is not loaded or the user set ``KMP_BLOCKTIME``."""
    lib = None if "KMP_BLOCKTIME" in os.environ else _intel_openmp()
    if lib is None:
        yield
        return
    before = lib.kmp_get_blocktime()
    lib.kmp_set_blocktime(ctypes.c_int(ms))
    try:
        yield
    finally:
        lib.kmp_set_blocktime(ctypes.c_int(before))
