"""CPU settings the step benchmarks try, and running one worker process under one of them.

Each (model, setting) runs in its own process because MKL, OpenMP and Paddle's flags are read
at load time; every model is then scored at its best setting, so a full-precision baseline is
never timed off its fast path.
"""

import json
import os
import subprocess
import sys

# Paddle defaults / stride kernel off (paddle_bibert's default on import) / plus MKL's AVX2 path.
SETTINGS = {
    "paddle_default": {"FLAGS_use_stride_kernel": "1"},
    "no_stride": {"FLAGS_use_stride_kernel": "0"},
    "no_stride_mkl5": {"FLAGS_use_stride_kernel": "0", "MKL_DEBUG_CPU_TYPE": "5"},
    # what the training commands run with (Trainer.train sets x86 FTZ/DAZ; see paddle_bibert._cpu)
    "no_stride_ftz": {"FLAGS_use_stride_kernel": "0", "BENCH_FLUSH_DENORMALS": "1"},
}


def step_context():
    """The worker's timed loop runs in this: flush_denormals when its setting asks for it."""
    import contextlib

    if os.environ.get("BENCH_FLUSH_DENORMALS") == "1":
        from paddle_bibert._cpu import flush_denormals

        return flush_denormals()
    return contextlib.nullcontext()


def run_worker(script, model, setting, argv, threads):
    """Run ``script --model MODEL argv...`` under ``SETTINGS[setting]``; return its JSON line."""
    extra = SETTINGS[setting]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **extra)
    if "MKL_DEBUG_CPU_TYPE" not in extra:
        env.pop("MKL_DEBUG_CPU_TYPE", None)
    out = subprocess.run([sys.executable, script, "--model", model] + list(argv), env=env,
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"worker {model}/{setting} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
