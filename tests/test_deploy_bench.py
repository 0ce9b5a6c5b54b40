"""benchmarks/deploy.py's interleaved rounds: the order each round runs the backends in, and the
per-round ratios the report gives (the workers replaced by a fake clock, so no ONNX Runtime)."""

import importlib.util
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    spec = importlib.util.spec_from_file_location("deploy", os.path.join(REPO, "benchmarks", "deploy.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


NAMES = ["paddle fp32", "onnxruntime fp32", "onnxruntime int8", "packed 1-bit avx512"]
# batch-1 latency of each backend in each of three rounds (ms)
MS = {"paddle fp32": [90.0, 80.0, 100.0], "onnxruntime fp32": [60.0, 70.0, 50.0],
      "onnxruntime int8": [20.0, 24.0, 18.0], "packed 1-bit avx512": [5.0, 4.0, 6.0]}


def test_rounds_rotate_the_order_and_time_each_best_setting_at_batch_one(monkeypatch):
    bench = _bench()
    rows = {k: {"how": ("kind", f"/files/{k}", {"OMP_NUM_THREADS": "2"}, ["--threads", "2"]),
                "best": {"1": "2 thr"}} for k in NAMES}
    calls = []

    def fake_worker(kind, path, env, extra, quick, batches=bench.BATCHES):
        k = path.split("/")[-1]
        assert batches == (1,) and env == {"OMP_NUM_THREADS": "2"} and extra == ["--threads", "2"]
        calls.append(k)
        return {"latency_ms": {"1": MS[k][sum(c == k for c in calls) - 1]}}

    monkeypatch.setattr(bench, "run_worker", fake_worker)
    bench.interleaved_rounds(rows, 3, False, lambda m: None)
    assert calls == NAMES + NAMES[1:] + NAMES[:1] + NAMES[2:] + NAMES[:2]
    assert all(rows[k]["rounds_ms"] == MS[k] for k in NAMES)

    text = bench.rounds_text(rows)
    p = np.array(MS["packed 1-bit avx512"])
    int8 = ", ".join(f"{v:.1f}x" for v in np.array(MS["onnxruntime int8"]) / p)
    fp32 = ", ".join(f"{v:.1f}x" for v in np.array(MS["onnxruntime fp32"]) / p)  # median 60 < 90
    assert f"ONNX Runtime INT8, round by round: {int8};" in text
    assert f"best FP32 (onnxruntime fp32): {fp32}." in text
    assert "3 interleaved rounds" in text and "packed 1-bit avx512 [2 thr] 5.00 (4.00-6.00)" in text


def test_rounds_time_each_graphs_best_and_keep_the_lowest_median(monkeypatch):
    """A backend with two graphs (ONNX Runtime plain and fused) is timed at both graphs' best
    settings every round; the one with the lower median is its row in the ratios, even where
    the settings pass ranked the other first."""
    bench = _bench()
    how = lambda k, g: ("ort", f"/files/{k}/{g}", {}, [])
    rows = {k: {"how": how(k, "one"), "best": {"1": "one"}} for k in NAMES}
    rows["onnxruntime int8"]["candidates"] = {"int8 plain 2 thr": how("onnxruntime int8", "plain"),
                                              "int8 fused 2 thr": how("onnxruntime int8", "fused")}
    ms = {**{f"/files/{k}/one": MS[k] for k in NAMES},
          "/files/onnxruntime int8/plain": [26.0, 25.0, 27.0],
          "/files/onnxruntime int8/fused": [21.0, 30.0, 22.0]}
    seen = {}

    def fake_worker(kind, path, env, extra, quick, batches=bench.BATCHES):
        seen[path] = seen.get(path, -1) + 1
        return {"latency_ms": {"1": ms[path][seen[path]]}}

    monkeypatch.setattr(bench, "run_worker", fake_worker)
    bench.interleaved_rounds(rows, 3, False, lambda m: None)
    assert seen["/files/onnxruntime int8/plain"] == seen["/files/onnxruntime int8/fused"] == 2
    int8 = rows["onnxruntime int8"]
    assert int8["rounds_setting"] == "int8 fused 2 thr" and int8["rounds_ms"] == [21.0, 30.0, 22.0]
    text = bench.rounds_text(rows)
    ratios = ", ".join(f"{v:.1f}x" for v in np.array([21.0, 30.0, 22.0]) / np.array(MS["packed 1-bit avx512"]))
    assert f"onnxruntime int8 [int8 fused 2 thr] 22.00 (21.00-30.00)" in text
    assert f"ONNX Runtime INT8, round by round: {ratios};" in text


def test_no_rounds_no_paragraph():
    bench = _bench()
    assert bench.rounds_text({k: {} for k in NAMES}) == ""


@pytest.mark.parametrize("value", ["-1"])
def test_bad_rounds_is_one_line(value, monkeypatch, capsys):
    bench = _bench()
    monkeypatch.setattr(sys, "argv", ["deploy.py", "--rounds", value])
    with pytest.raises(SystemExit) as e:
        bench.main()
    assert "--rounds must be >= 0" in str(e.value)


@pytest.mark.parametrize("value", ["1", "513"])
def test_bad_seq_len_is_one_line(value, monkeypatch):
    bench = _bench()
    monkeypatch.setattr(sys, "argv", ["deploy.py", "--seq_len", value])
    with pytest.raises(SystemExit) as e:
        bench.main()
    assert str(e.value) == f"error: --seq_len must be in [2, 512] (BERT's positions), got {value}"


def test_every_timed_process_gets_the_sequence_length(monkeypatch):
    """--seq_len reaches each worker of the settings pass and of the interleaved rounds, the
    worker's inputs have that length, and the report's header says it."""
    bench = _bench()
    files = {k: ("ort", {f"{k.split()[-1]} plain": f"/files/{k}", f"{k.split()[-1]} fused": f"/files/{k}/fused"})
             if "onnx" in k else ("packed" if "packed" in k else "paddle", {"": f"/files/{k}"})
             for k in NAMES}
    files["paddle fp32"][1]["inference"] = "/files/paddle fp32"
    monkeypatch.setattr(bench, "prepare", lambda shape, workdir, trained, seq_len: (files, {}))
    calls, batches_seen = [], []

    def fake_worker(kind, path, env, extra, quick, batches=bench.BATCHES):
        calls.append(extra)
        batches_seen.append(tuple(batches))
        if path.endswith("/fused"):  # slower in the settings pass, faster in the rounds
            ms = MS[path.split("/")[-2]][0] * (0.5 if tuple(batches) == (1,) else 2.0)
        else:
            ms = MS[path.split("/")[-1]][0]
        return {"latency_ms": {str(b): b * ms for b in batches}, "rss_mib": 1.0, "backend": "c-x"}

    monkeypatch.setattr(bench, "run_worker", fake_worker)
    monkeypatch.setattr(bench, "file_mib", lambda path: 1.0)
    res = bench.run_shape("bert-base", "/tmp", None, True, 2, lambda m: None, seq_len=24)
    cands = {k: sorted(r["candidates"]) for k, r in res["rows"].items()}
    assert [c.split()[:2] for c in cands["onnxruntime int8"]] == [["int8", "fused"], ["int8", "plain"]]
    assert [c.startswith("inference") for c in cands["paddle fp32"]] == [False, True]
    assert len(cands["packed 1-bit avx512"]) == 1
    assert all(e[-2:] == ["--seq_len", "24"] for e in calls)
    assert sum(b == (1,) for b in batches_seen) == 2 * sum(len(c) for c in cands.values())  # the rounds
    assert all(len(r["rounds_ms"]) == 2 for r in res["rows"].values())
    # the graph the rounds kept is the row's (its file's size, its accuracy)
    int8 = res["rows"]["onnxruntime int8"]
    assert int8["best"]["1"].startswith("int8 plain") and int8["graph"] == "int8 fused"
    assert int8["rounds_setting"].startswith("int8 fused")
    assert res["seq_len"] == 24 and bench.table(res).startswith("**bert-base**, seq_len 24;")
    assert bench._inputs(3, 24)[0].shape == (3, 24)


def _result(packed):
    """A run's saved result: every backend's best setting, the packed rows those of ``packed``."""
    lat = {"paddle fp32": 80.0, "onnxruntime fp32": 40.0, "onnxruntime int8": 20.0}
    lat.update(packed)
    rows = {k: {"runs": {"2 thr": {"latency_ms": {"1": ms, "32": 32 * ms}, "rss_mib": 100}},
                "best": {"1": "2 thr", "32": "2 thr"}, "mib": 80.0 if "packed" not in k else 4.0}
            for k, ms in lat.items()}
    return {"shape": "bert-base", "rows": rows, "accuracy": {}, "n_dev": 0}


@pytest.mark.parametrize("packed, lead, others", [
    ({"packed 1-bit avx512": 5.0, "packed 1-bit avx2": 10.0, "packed 1-bit popcnt": 25.0},
     "AVX-512", ["AVX2 kernels: 2.00x the AVX-512 latency", "POPCNT kernels: 5.00x the AVX-512 latency"]),
    ({"packed 1-bit avx2": 8.0, "packed 1-bit popcnt": 16.0},  # a CPU without AVX-512
     "AVX2", ["POPCNT kernels: 2.00x the AVX2 latency"])])
def test_report_leads_with_the_fastest_kernels_the_cpu_ran(packed, lead, others):
    bench = _bench()
    text = bench.table(_result(packed))
    first = next(iter(packed.values()))
    assert f"Packed 1-bit ({lead}) at batch 1: {20.0 / first:.1f}x lower latency than ONNX Runtime INT8" in text
    assert all(o in text for o in others)
    assert "AVX-512" not in text or lead == "AVX-512"


def test_packed_rows_are_the_kernel_sets_this_cpu_runs(monkeypatch):
    from paddle_bibert.runtime import kernels

    bench = _bench()
    monkeypatch.setattr(kernels, "available_isas", lambda: ["avx2", "popcnt", "generic"])
    assert bench.runnable_isas() == ["avx2", "popcnt"]
    monkeypatch.setattr(kernels, "available_isas", lambda: [])
    with pytest.raises(SystemExit) as e:
        bench.runnable_isas()
    assert "C kernels are not built" in str(e.value)


def test_paddle_inference_settings_and_predictor_give_the_models_logits(tmp_path):
    """Paddle's row also runs Paddle Inference (paddle.jit.save), with oneDNN and without, at
    each Paddle setting; its predictor gives the dynamic graph's logits."""
    import paddle
    from paddlenlp.transformers import BertForSequenceClassification

    from test_surgery import tiny_bert_config

    bench = _bench()
    runs = bench.settings("paddle", graph="inference")
    assert len(runs) == 2 * len(bench.PADDLE_SETTINGS)
    assert {tuple(extra) for _, extra in runs.values()} == {("--onednn", "on"), ("--onednn", "off")}
    assert {env["OMP_NUM_THREADS"] for env, _ in runs.values()} == {"1", "2"}

    paddle.seed(0)
    model = BertForSequenceClassification(tiny_bert_config())  # Paddle's own small init
    model.eval()
    ids = np.array([[2, 17, 33, 9, 41, 0], [5, 6, 7, 8, 9, 10]])
    tt = np.zeros_like(ids)
    with paddle.no_grad():
        want = model(paddle.to_tensor(ids), token_type_ids=paddle.to_tensor(tt)).numpy()
    bench.save_inference(model, str(tmp_path / "inference" / "model"))
    for onednn in (True, False):
        got = bench._paddle_inference(str(tmp_path / "inference" / "model"), 1, onednn)(ids, tt)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.ptp(want) > 0


def test_report_gives_the_dev_sentences_lengths():
    """With trained models the header says how long the dev sentences are (median, 90th
    percentile, [CLS] and [SEP] counted) beside the timed length."""
    bench = _bench()
    ids = [[0] * n for n in (5, 9, 27, 30, 42, 64)]
    assert bench.dev_lengths(ids) == [28.5, 53.0]  # numpy's linear interpolation
    res = _result({"packed 1-bit avx2": 2.0})
    res.update(seq_len=32, n_dev=6, dev_tokens=bench.dev_lengths(ids),
               accuracy={k: 0.8 for k in res["rows"]})
    head = bench.table(res).splitlines()[0]
    assert head.startswith("**bert-base**, seq_len 32; dev accuracy on Rotten Tomatoes "
                           "(6 sentences; 28.5 tokens at the median, 53 at the 90th percentile)")


def test_rounds_of_a_run_saved_before_the_graphs_are_told_as_they_ran():
    """A JSON saved before the rounds timed each graph (no rounds_setting) is reprinted with
    the way its rounds ran: the settings pass's best setting of each backend."""
    bench = _bench()
    rows = {k: {"rounds_ms": MS[k], "best": {"1": "2 thr"}} for k in NAMES}
    text = bench.rounds_text(rows)
    assert "(a process per backend per round, each at its best setting)" in text
    assert "packed 1-bit avx512 [2 thr] 5.00 (4.00-6.00)" in text
    rows["onnxruntime int8"]["rounds_setting"] = "int8 fused 2 thr"
    assert "each backend's graphs at their best setting" in bench.rounds_text(rows)
