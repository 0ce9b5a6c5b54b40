"""CPU numerics switches: flush-to-zero is scoped to training and restored afterwards."""

import platform
import sys

import numpy as np
import paddle
import pytest

from paddle_bibert._cpu import flush_denormals, set_flush_denormals
from test_commands import Log, common, glue_slice, tiny_model_dir  # noqa: F401  (fixtures)

x86_linux = pytest.mark.skipif(platform.machine() != "x86_64" or not sys.platform.startswith("linux"),
                               reason="FTZ/DAZ are set through x86-64 glibc's fenv")
TINY = np.float32(1e-39)  # subnormal: below float32's smallest normal, 1.18e-38


def subnormals_survive():
    return float(TINY * np.float32(1.0)) != 0.0


@x86_linux
def test_flush_denormals_zeroes_subnormals_inside_and_restores_after():
    assert subnormals_survive()
    x = paddle.full([64, 256], 1e-39, dtype="float32")
    with flush_denormals() as active:
        assert active and not subnormals_survive()
        # 256 subnormal products would sum to a normal 2.6e-37; read as zero they give 0
        assert float(paddle.matmul(x, paddle.ones([256, 8])).abs().max()) == 0.0
        with flush_denormals(False):  # nests, and the inner exit restores the outer state
            assert subnormals_survive()
        assert not subnormals_survive()
    assert subnormals_survive()
    assert float(paddle.matmul(x, paddle.ones([256, 8])).min()) == pytest.approx(2.56e-37, rel=1e-3)
    assert set_flush_denormals(False) is False  # reports the previous state


@x86_linux
@pytest.mark.parametrize("flag, flushed", [([], True), (["--no_flush_denormals"], False)])
def test_training_steps_run_with_denormals_flushed_unless_turned_off(glue_slice, tiny_model_dir, tmp_path,
                                                                     monkeypatch, flag, flushed):
    import paddle.nn.functional as F

    real_ce, seen = F.cross_entropy, []

    def ce(*a, **k):  # runs inside every training step
        seen.append(subnormals_survive())
        return real_ce(*a, **k)

    monkeypatch.setattr(F, "cross_entropy", ce)
    run_glue_argv = common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir,
                           "--max_steps", "3", "--save_steps", "3", *flag)
    from paddle_bibert.commands import run_glue

    run_glue(run_glue_argv, log=Log())
    assert len(seen) == 3 and seen == [not flushed] * 3
    assert subnormals_survive()  # the caller's state is back after the run


def test_cpu_defaults_are_set_before_paddle_loads_and_never_override_the_user():
    import json
    import os
    import subprocess

    probe = ("import os, json, sys; {first}; import paddle_bibert; print(json.dumps({{k: os.environ.get(k) "
             "for k in ('FLAGS_use_stride_kernel', 'GOMP_SPINCOUNT')}}))")
    clean = {k: v for k, v in os.environ.items() if k not in ("FLAGS_use_stride_kernel", "GOMP_SPINCOUNT")}

    def run(first="pass", **env):
        out = subprocess.run([sys.executable, "-c", probe.format(first=first)], env={**clean, **env},
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    assert run() == {"FLAGS_use_stride_kernel": "0", "GOMP_SPINCOUNT": "0"}
    assert run(GOMP_SPINCOUNT="5000")["GOMP_SPINCOUNT"] == "5000"  # the user's value stays
    # imported after Paddle: too late to matter, so nothing is set
    assert run(first="import paddle") == {"FLAGS_use_stride_kernel": None, "GOMP_SPINCOUNT": None}


def test_openmp_blocktime_is_scoped_and_leaves_the_users_setting(monkeypatch):
    from paddle_bibert._cpu import _intel_openmp, openmp_blocktime

    omp = _intel_openmp()
    assert omp is not None, "Paddle's MKL should have loaded Intel OpenMP"
    monkeypatch.delenv("KMP_BLOCKTIME", raising=False)
    before = omp.kmp_get_blocktime()
    with openmp_blocktime(0):
        assert omp.kmp_get_blocktime() == 0
        with openmp_blocktime(7):
            assert omp.kmp_get_blocktime() == 7
        assert omp.kmp_get_blocktime() == 0
    assert omp.kmp_get_blocktime() == before
    with pytest.raises(RuntimeError):
        with openmp_blocktime(0):
            raise RuntimeError("restored even so")
    assert omp.kmp_get_blocktime() == before
    monkeypatch.setenv("KMP_BLOCKTIME", "50")  # the user's choice stands
    with openmp_blocktime(0):
        assert omp.kmp_get_blocktime() == before
