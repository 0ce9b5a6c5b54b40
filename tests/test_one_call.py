"""The one-call forward (runtime/plan.py, csrc/forward.c, csrc/plan.c): the same logits, bit for
bit, as the model run one kernel call at a time, on every recipe the format holds and every
kernel set; the cases it leaves to that path; the plans and inputs it refuses."""

import numpy as np
import pytest

from paddle_bibert import export_packed
from paddle_bibert.runtime import Kernels, available_isas, compiled_available, load_packed

from test_export import ONE_BIT, padded_ids, trained_1bit_model

pytestmark = pytest.mark.skipif(not compiled_available(), reason="extension not built")

ISAS = available_isas()


@pytest.fixture(params=ISAS or ["generic"])
def isa(request):
    yield request.param
    Kernels("c", isa=ISAS[0])  # the kernel set is process-wide: the fastest again after


def _both_ways(runtime, ids):
    """Logits of the one-call forward, then of one kernel call at a time."""
    runtime.one_call = True
    one = runtime(ids)
    assert runtime._plan is not None  # the one-call forward ran
    runtime.one_call = False
    return one, runtime(ids)


@pytest.mark.parametrize("config, version", ONE_BIT)
def test_one_call_forward_gives_the_per_kernel_logits(tmp_path, rng, isa, config, version):
    """Every recipe of the format (fused and separate Q/K/V products, BiBERT's and BiT's maps,
    ReLU and GELU FFNs, {0,1} FFN inputs), padded batches of 70 tokens and an unpadded one."""
    model = trained_1bit_model(config, seed=7)
    export_packed(model, str(tmp_path / "m.bibert"))
    runtime = load_packed(str(tmp_path / "m.bibert"), backend="c", isa=isa)
    for ids in (padded_ids(rng, 5, 70), rng.integers(1, 60, (2, 9))):
        one, per_kernel = _both_ways(runtime, ids)
        np.testing.assert_array_equal(one, per_kernel)
        assert np.ptp(one[:, 0]) > 0  # the inputs are told apart


@pytest.mark.parametrize("recipe", ["bibert", "bit"])
@pytest.mark.parametrize("threads", [1, 3])
def test_one_call_forward_with_separate_qkv_rows_at_any_thread_count(tmp_path, rng, recipe,
                                                                     threads):
    """Hidden 64: BiT's Q/K/V binarize with their own shifts, three products whose rows the
    forward lays side by side; the pool's threads split every operation of it."""
    model = trained_1bit_model(recipe, seed=3, hidden_size=64, intermediate_size=128)
    export_packed(model, str(tmp_path / "m.bibert"))
    before = Kernels("c").num_threads
    try:
        runtime = load_packed(str(tmp_path / "m.bibert"), backend="c", num_threads=threads)
        assert (runtime.layers[0]["qkv"] is None) == (recipe == "bit")
        one, per_kernel = _both_ways(runtime, padded_ids(rng, 7, 70))
        np.testing.assert_array_equal(one, per_kernel)
    finally:
        Kernels("c", num_threads=before)


def test_one_call_plan_follows_the_kernel_sets_table_lookup(tmp_path, rng):
    """The plan carries the weights' nibble panels where the products look counts up: turning
    that off remakes it without them (the same logits either way)."""
    model = trained_1bit_model("bit", seed=2)
    export_packed(model, str(tmp_path / "m.bibert"))
    runtime = load_packed(str(tmp_path / "m.bibert"), backend="c")
    ids = padded_ids(rng, 4, 40)
    first = runtime(ids)
    plan, nibbles = runtime._plan, runtime._plan_nibbles
    runtime.kernels.tables = False
    np.testing.assert_array_equal(runtime(ids), first)
    assert runtime._plan_nibbles is False and (runtime._plan is not plan) == nibbles


def test_one_call_forward_leaves_traces_and_the_numpy_backend_to_the_kernel_calls(tmp_path,
                                                                                   rng):
    """A traced forward (hidden states, intermediates) and the numpy backend run one kernel call
    at a time; so does the model where ``one_call`` is off."""
    model = trained_1bit_model("bit", seed=1, hidden_size=48, num_attention_heads=4,
                               intermediate_size=96)
    export_packed(model, str(tmp_path / "m.bibert"))
    ids = padded_ids(rng, 3, 20)
    traced = load_packed(str(tmp_path / "m.bibert"), backend="c")
    logits, _ = traced(ids, output_hidden_states=True)
    assert traced._plan is None
    numpy = load_packed(str(tmp_path / "m.bibert"), backend="numpy")
    np.testing.assert_allclose(numpy(ids), logits, atol=1e-5)
    assert numpy._plan is None
    np.testing.assert_array_equal(traced(ids), logits)  # hidden 48: Q/K/V rows of 3/4 words
    assert traced._plan is not None


def test_one_call_plans_and_inputs_that_do_not_fit_are_refused(tmp_path, rng):
    """A plan whose arrays are shorter than its dimensions say, or whose products do not chain,
    ids outside the tables, a sequence longer than the position table, an object that is no
    plan: ValueError, before anything is read."""
    from paddle_bibert.runtime import plan as plan_mod
    from paddle_bibert.runtime.kernels import _C

    model = trained_1bit_model("bibert", seed=1)
    export_packed(model, str(tmp_path / "m.bibert"))
    runtime = load_packed(str(tmp_path / "m.bibert"), backend="c")
    h, f, heads, emb, layers, pool = spec = plan_mod.spec(runtime, runtime.kernels)
    with pytest.raises(ValueError, match="word scales"):
        _C.make_plan((h, f, heads, emb[:4] + (runtime.word_alpha[:-1],) + emb[5:], layers, pool))
    with pytest.raises(ValueError, match="a linear of"):
        _C.make_plan((h, f + 64, heads, emb, layers, pool))
    plan = _C.make_plan(spec)
    ok = padded_ids(rng, 2, 8)
    too_long = rng.integers(1, 9, (1, runtime.pos.shape[0] + 1))
    for ids, tt in ((ok + 10 ** 6, np.zeros_like(ok)), (ok, np.full_like(ok, 7)),
                    (too_long, np.zeros_like(too_long))):
        with pytest.raises(ValueError, match="do not fit"):
            plan_mod.run(plan, ids, tt, ids != 0, h)
    with pytest.raises(ValueError):
        _C.forward(object(), ok, ok, ok != 0, 2, 8, np.empty((2, h), np.float32))
    pooled = plan_mod.run(plan, ok, np.zeros_like(ok), ok != runtime.pad_token_id, h)
    np.testing.assert_array_equal(np.tanh(pooled) @ runtime.cls_w + runtime.cls_b, runtime(ok))
