"""The one-call forward (runtime/plan.py, csrc/forward.c, csrc/plan.c): the same logits, bit for
bit, as the model run one kernel call at a time, on every recipe the format holds and every
kernel set; the cases it leaves to that path; the plans and inputs it refuses."""

import os

import numpy as np
import pytest

from paddle_bibert import export_packed
from paddle_bibert.runtime import Kernels, available_isas, compiled_available, load_packed

from test_export import ONE_BIT, padded_ids, trained_1bit_model

pytestmark = pytest.mark.skipif(not compiled_available(), reason="extension not built")

ISAS = available_isas()
#: the set a runtime starts on: BIBERT_ISA's (the whole suite can run on one set), else the fastest
DEFAULT_ISA = os.environ.get("BIBERT_ISA") or (ISAS[0] if ISAS else "generic")


# Each kernel set; and AVX2 with its products and attention on XOR and popcount, the path the
# AVX-512 set takes (fused tiles, no nibble panels in the plan), so AVX2-only CPUs test it too.
ISA_CASES = (ISAS or ["generic"]) + (["avx2-no-tables"] if "avx2" in ISAS else [])


@pytest.fixture(params=ISA_CASES)
def isa(request):
    yield request.param
    Kernels("c", isa=DEFAULT_ISA).tables = True  # process-wide: the default set again after


def _load(path, isa):
    runtime = load_packed(path, backend="c", isa=isa.split("-")[0])
    runtime.kernels.tables = not isa.endswith("-no-tables")
    return runtime


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
    runtime = _load(str(tmp_path / "m.bibert"), isa)
    for ids in (padded_ids(rng, 5, 70), rng.integers(1, 60, (2, 9))):
        one, per_kernel = _both_ways(runtime, ids)
        assert runtime._plan_nibbles == runtime.kernels.uses_nibbles
        np.testing.assert_array_equal(one, per_kernel)
        assert np.ptp(one[:, 0]) > 0  # the inputs are told apart


@pytest.mark.parametrize("recipe, hidden", [("bibert", 64), ("bit", 64), ("bit", 128)])
@pytest.mark.parametrize("threads", [1, 3])
def test_one_call_forward_with_separate_qkv_rows_at_any_thread_count(tmp_path, rng, recipe,
                                                                     hidden, threads):
    """Hidden 64 and 128: BiT's Q/K/V binarize with their own shifts, three products whose rows
    (one and two words) the forward lays side by side; the pool's threads split every
    operation of it."""
    model = trained_1bit_model(recipe, seed=3, hidden_size=hidden, intermediate_size=2 * hidden)
    export_packed(model, str(tmp_path / "m.bibert"))
    before = Kernels("c").num_threads
    try:
        runtime = load_packed(str(tmp_path / "m.bibert"), backend="c", num_threads=threads)
        assert (runtime.layers[0]["qkv"] is None) == (recipe == "bit")
        one, per_kernel = _both_ways(runtime, padded_ids(rng, 7, 70))
        np.testing.assert_array_equal(one, per_kernel)
    finally:
        Kernels("c", num_threads=before)


@pytest.mark.skipif("avx2" not in ISAS, reason="no table lookup on this CPU")
def test_one_call_plan_follows_the_kernel_sets_table_lookup(tmp_path, rng):
    """The plan carries the weights' nibble panels where the products look counts up (AVX2):
    turning that off, or switching to a kernel set without it, remakes the plan without them
    (the same logits every way)."""
    model = trained_1bit_model("bit", seed=2)
    export_packed(model, str(tmp_path / "m.bibert"))
    try:
        runtime = load_packed(str(tmp_path / "m.bibert"), backend="c", isa="avx2")
        ids = padded_ids(rng, 4, 40)
        first = runtime(ids)
        plan = runtime._plan
        assert runtime._plan_nibbles is True
        runtime.kernels.tables = False
        np.testing.assert_array_equal(runtime(ids), first)
        assert runtime._plan_nibbles is False and runtime._plan is not plan
        runtime.kernels.tables = True
        Kernels("c", isa="generic")
        np.testing.assert_array_equal(runtime(ids), first)
        assert runtime._plan_nibbles is False and runtime.backend == "c-generic"
    finally:
        Kernels("c", isa=DEFAULT_ISA)


def test_one_call_forwards_run_side_by_side_and_the_model_pickles(tmp_path, rng):
    """Two threads' forwards on one model (each call its own buffers, the GIL released) give the
    serial logits; a model that ran pickles without its plan and makes it again."""
    import pickle
    import threading

    model = trained_1bit_model("bit", seed=6)
    export_packed(model, str(tmp_path / "m.bibert"))
    runtime = load_packed(str(tmp_path / "m.bibert"), backend="c")
    batches = [padded_ids(np.random.default_rng(i), 4, 40) for i in range(2)]
    want = [runtime(ids) for ids in batches]
    got = [[], []]

    def work(i):
        for _ in range(20):
            got[i].append(runtime(batches[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert len(got[i]) == 20
        for logits in got[i]:
            np.testing.assert_array_equal(logits, want[i])
    copy = pickle.loads(pickle.dumps(runtime))
    assert copy._plan is None
    np.testing.assert_array_equal(copy(batches[0]), want[0])
    assert copy._plan is not None


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
    """A plan whose arrays are shorter than its dimensions say, whose products do not chain, with
    half a count cut, a quantizer of no kind or two Q/K/V products; ids or token types outside
    the tables, a batch past the ids, a sequence past the positions, a short keep mask or
    output, an object that is no plan: ValueError, before anything is read."""
    from paddle_bibert.runtime import plan as plan_mod
    from paddle_bibert.runtime.kernels import _C

    model = trained_1bit_model("bibert", seed=1)
    export_packed(model, str(tmp_path / "m.bibert"))
    runtime = load_packed(str(tmp_path / "m.bibert"), backend="c")
    h, f, heads, tab, emb, layers, pool = spec = plan_mod.spec(runtime, runtime.kernels)
    first = layers[0]
    qkv = first[1][0]

    def with_first_layer(*items):
        return (h, f, heads, tab, emb, (tuple(items),) + layers[1:], pool)

    bad = {
        "word scales": (h, f, heads, tab, emb[:4] + (runtime.word_alpha[:-1],) + emb[5:], layers,
                        pool),
        "a linear of": (h, f + 64, heads, tab, emb, layers, pool),
        "half a cut": with_first_layer(first[0], (qkv[:8] + (None,) + qkv[9:],), *first[2:]),
        "quantizer kind": with_first_layer(((None, 1.0, 5),), *first[1:]),
        "one Q/K/V product, or three": with_first_layer(first[0] * 2, first[1] * 2, *first[2:]),
        "a LayerNorm's weight": with_first_layer(*first[:10], (first[10][0][:-1],) + first[10][1:],
                                                 *first[11:]),
    }
    for message, broken in bad.items():
        with pytest.raises(ValueError, match=message):
            _C.make_plan(broken)
    with pytest.raises(TypeError):
        _C.make_plan(list(spec))
    plan = _C.make_plan(spec)
    ok = padded_ids(rng, 2, 8)
    keep, zeros, out = ok != runtime.pad_token_id, np.zeros_like(ok), np.empty((2, h), np.float32)
    too_long = rng.integers(1, 9, (1, runtime.pos.shape[0] + 1))
    for args in ((ok + 10 ** 6, zeros, keep, 2, 8, out), (ok, zeros + 7, keep, 2, 8, out),
                 (-ok, zeros, keep, 2, 8, out)):
        with pytest.raises(ValueError, match="has id"):
            _C.forward(plan, *args)
    for args in ((ok, zeros, keep, 3, 8, out), (too_long, np.zeros_like(too_long), too_long != 0,
                                                1, too_long.shape[1], out),
                 (ok, zeros, keep[:1], 2, 8, out), (ok, zeros, keep, 2, 8, out[:1])):
        with pytest.raises(ValueError, match="do not fit"):
            _C.forward(plan, *args)
    with pytest.raises(ValueError):
        _C.forward(object(), ok, zeros, keep, 2, 8, out)
    pooled = plan_mod.run(plan, ok, zeros, keep, h)
    np.testing.assert_array_equal(np.tanh(pooled) @ runtime.cls_w + runtime.cls_b, runtime(ok))
