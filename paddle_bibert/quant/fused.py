"""Fused CPU kernels for the STE quantizers, compiled on first use (``_ops.cc``).

Paddle's custom-operator JIT (``paddle.utils.cpp_extension.load``) builds them once per
machine into ``$PADDLE_BIBERT_OPS_DIR`` (default ``~/.cache/paddle_bibert/ops-paddle<version>-<hash of the source path>``), ~25 s with gcc. If
the build fails (no compiler), or a tensor is not a float32 CPU tensor (GPU training), the
quantizers use their plain Paddle path, which computes the same values. Set
``PADDLE_BIBERT_FUSED=0`` to force the plain path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading

_lock = threading.Lock()
_ops = None
_tried = False
logger = logging.getLogger("paddle_bibert")


def ops():
    """The compiled module, or None when unavailable (build failed or disabled)."""
    global _ops, _tried
    if _tried:
        return _ops
    with _lock:
        if _tried:
            return _ops
        _tried = True
        if os.environ.get("PADDLE_BIBERT_FUSED", "1") == "0":
            return None
        try:
            import paddle
            from paddle.utils.cpp_extension import load

            src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ops.cc")
            # one build folder per Paddle version and source location: Paddle rebuilds when the
            # recorded source path changes, so two checkouts sharing a folder would keep
            # rebuilding each other's library (and could race).
            tag = hashlib.sha1(src.encode()).hexdigest()[:10]
            build = os.environ.get("PADDLE_BIBERT_OPS_DIR") or os.path.join(
                os.path.expanduser("~"), ".cache", "paddle_bibert", f"ops-paddle{paddle.__version__}-{tag}")
            os.makedirs(build, exist_ok=True)
            # data-parallel ranks start together: one builds, the others wait and load its library
            with open(os.path.join(build, ".build.lock"), "w") as lock:
                try:
                    import fcntl

                    fcntl.flock(lock, fcntl.LOCK_EX)
                except ImportError:  # not POSIX: no cross-process lock
                    pass
                # -fno-trapping-math lets GCC vectorize loops with selects (it may evaluate both
                # sides); no value changes, Paddle runs with floating-point exceptions masked
                _ops = load(name="paddle_bibert_ops", sources=[src], build_directory=build,
                            extra_cxx_cflags=["-O3", "-fopenmp", "-fno-trapping-math"], extra_ldflags=["-fopenmp"],
                            verbose=False)
        except Exception as e:  # no compiler, headers missing, ...
            logger.warning("fused STE kernels unavailable (%s); using plain Paddle ops", e)
            _ops = None
    return _ops


def usable(x) -> bool:
    """True if the fused kernels can take ``x`` (float32, on the CPU) and are built."""
    import paddle

    return x.dtype == paddle.float32 and x.place.is_cpu_place() and ops() is not None


_round_rule = None


def paddle_round_rule() -> str:
    """How ``paddle.round`` rounds halves on the CPU: ``"even"`` (Paddle 3.3: 0.5 -> 0, 2.5 -> 2),
    ``"away"`` (from zero: 0.5 -> 1) or ``"other"``. The fused LSQ kernel must round as the plain
    path does, so it asks once."""
    global _round_rule
    if _round_rule is None:
        import paddle

        with paddle.no_grad():
            r = paddle.round(paddle.to_tensor([0.5, 1.5, 2.5, -0.5, -2.5], dtype="float32",
                                              place=paddle.CPUPlace())).numpy().tolist()
        _round_rule = {(0.0, 2.0, 2.0, -0.0, -2.0): "even", (1.0, 2.0, 3.0, -1.0, -3.0): "away"}.get(tuple(r), "other")
    return _round_rule
