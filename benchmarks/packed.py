"""Packed BiBERT on bits vs Paddle float32: file size, latency, peak memory, matmul, agreement.

For each shape (BERT-base, MiniLM), one random-weight model (every parameter random, biases
non-zero, as in tests/test_surgery.py::make_model) is

* saved as a float32 ``save_pretrained`` checkpoint and, binarized, as a packed ``.bibert``
  file (sizes on disk);
* run by Paddle (binarized, float32 kernels) and by the packed runtime on the same inputs
  (agreement of labels and logits; a disagreement is traced to the first sign decision where
  the two differ, with both values) and both are compared with an exact evaluation (float64,
  rounded to float32 at every stored tensor: ``exact_logits``);
* timed at batch 1 and 32, seq_len 128: the packed runtime in a process that never imports
  Paddle, Paddle float32 inference of the unbinarized model in processes of its own; Paddle
  with OMP_NUM_THREADS=2 once with default MKL and once with MKL_DEBUG_CPU_TYPE=5 (MKL reads it
  at load time), both sides also with 1 thread; each side is scored at its best setting;
  peak memory is each worker process's peak RSS;
* the binary matrix product alone vs float32 matmul (numpy and Paddle) of the same shape.

    python benchmarks/packed.py                  # both shapes, prints markdown tables
    python benchmarks/packed.py --shapes minilm --agree 16

The CPU may be shared with other jobs: latencies are medians over repeats.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SHAPES = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
}
#: Each side runs in processes of its own per setting and is scored at its best one. The main
#: setting is 2 threads (a 2-core machine); 1 thread is tried too, for both sides alike,
#: because on a CPU shared with other jobs a second thread can cost more than it brings.
PADDLE_SETTINGS = {
    "2 thr, default MKL": {"OMP_NUM_THREADS": "2"},
    "2 thr, MKL_DEBUG_CPU_TYPE=5": {"OMP_NUM_THREADS": "2", "MKL_DEBUG_CPU_TYPE": "5"},
    "1 thr, default MKL": {"OMP_NUM_THREADS": "1"},
}
RUNTIME_SETTINGS = {"2 thr": {"OMP_NUM_THREADS": "2"}, "1 thr": {"OMP_NUM_THREADS": "1"}}
SEQ_LEN, BATCHES, VOCAB = 128, (1, 32), 30522


def matmul_shapes(shape):
    """The binarized linears of one layer at batch 1: (M tokens, K inputs, N outputs)."""
    h, f = SHAPES[shape]["hidden_size"], SHAPES[shape]["intermediate_size"]
    return [(SEQ_LEN, h, 3 * h), (SEQ_LEN, h, f), (SEQ_LEN, f, h)]


#: seconds of untimed calls before timing: the first calls of a process touch new memory and
#: start thread pools, and on a 2-vCPU virtual machine the first ~0.1 s of two busy threads
#: ran up to 2x slower (the packed runtime's forward: 3-10 calls), enough to move a median of 20
WARMUP_S = 0.5


def _median_ms(fn, reps, budget_s):
    """Median ms of up to ``reps`` timed calls of ``fn`` (at least 3, more only within
    ``budget_s``), after ``WARMUP_S`` of untimed ones (at least one); and the calls timed."""
    import numpy as np

    t_warm = time.perf_counter() + WARMUP_S
    fn()
    while time.perf_counter() < t_warm:
        fn()
    times, t_end = [], time.perf_counter() + budget_s
    while len(times) < reps and (len(times) < 3 or time.perf_counter() < t_end):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3), len(times)


def _ids(rng, b):
    return rng.integers(1, VOCAB, (b, SEQ_LEN))


def _rss_mib():
    """Peak resident memory of this process since it started (VmHWM). ru_maxrss is not used:
    Linux carries it over exec from the parent that spawned the worker (here a process holding
    the models), so every worker would report at least the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------ workers


def worker_runtime(args):
    import numpy as np

    from paddle_bibert.export.pack import pack_signs
    from paddle_bibert.runtime import Kernels, load_packed

    model = load_packed(args.path)
    rng = np.random.default_rng(0)
    out = {"backend": model.backend, "threads": model.kernels.num_threads, "latency": {}}
    for b in BATCHES:
        ids = _ids(rng, b)
        out["latency"][b] = _median_ms(lambda: model(ids), 30 if b == 1 else 5, 15)
    out["rss_mib"] = _rss_mib()
    assert "paddle" not in sys.modules
    kern, mm = Kernels(), {}
    for m, k, n in matmul_shapes(args.shape):
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((k, n)).astype(np.float32)
        xb, w_il = pack_signs(x), kern.prepare(pack_signs(w.T))
        alpha, bias = np.ones(n, np.float32), np.zeros(n, np.float32)
        mm[f"{m}x{k}x{n}"] = {
            "binary": _median_ms(lambda: kern.bin_linear(xb, w_il, n, k, alpha, bias), 200, 3)[0],
            "binary+pack": _median_ms(
                lambda: kern.bin_linear(kern.pack_signs(x), w_il, n, k, alpha, bias), 200, 3)[0],
            "numpy": _median_ms(lambda: x @ w, 50, 3)[0]}
    out["matmul"] = mm
    print(json.dumps(out))


def worker_paddle(args):
    import numpy as np
    import paddle
    from paddlenlp.transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(args.path)
    model.eval()
    rng = np.random.default_rng(0)
    out = {"latency": {}}
    with paddle.no_grad():
        for b in BATCHES:
            ids = paddle.to_tensor(_ids(rng, b))
            out["latency"][b] = _median_ms(lambda: model(ids).numpy(), 10 if b == 1 else 3, 20)
        out["rss_mib"] = _rss_mib()
        mm = {}
        for m, k, n in matmul_shapes(args.shape):
            x = paddle.to_tensor(rng.standard_normal((m, k)).astype(np.float32))
            w = paddle.to_tensor(rng.standard_normal((k, n)).astype(np.float32))
            mm[f"{m}x{k}x{n}"] = {"paddle": _median_ms(lambda: paddle.matmul(x, w).numpy(),
                                                       50, 3)[0]}
    out["matmul"] = mm
    print(json.dumps(out))


def run_worker(kind, path, shape, settings):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MKL_DEBUG_CPU_TYPE", "BIBERT_NUM_THREADS")}
    env.update(settings)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--path", path,
           "--shapes", shape]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{kind} worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------- agreement


def random_model(shape, seed=0):
    """Every parameter random (tests/test_surgery.py::make_model's init, at this shape)."""
    import numpy as np
    import paddle
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification

    paddle.seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, max_position_embeddings=512, type_vocab_size=2,
                     num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     **SHAPES[shape])
    model = BertForSequenceClassification(cfg)
    rng = np.random.default_rng(seed)
    model.set_state_dict({
        k: (rng.standard_normal(v.shape, dtype=np.float32) * (0.5 if v.ndim > 1 else 0.1)
            + (1.0 if "norm" in k and k.endswith("weight") else 0.0)).astype("float32")
        for k, v in model.state_dict().items()})
    model.eval()
    return model


def paddle_intermediates(model, ids, tt):
    """Paddle's float tensors whose signs its binarized forward takes, named as the runtime's."""
    import numpy as np
    import paddle

    seen, hooks = {}, []

    def tap(name):
        def hook(layer, inp, out):
            seen[name] = out.numpy()
        return hook

    hooks.append(model.bert.embeddings.layer_norm.register_forward_post_hook(tap("embeddings")))
    for i, layer in enumerate(model.bert.encoder.layers):
        for sub, name in [(layer.self_attn.q_proj, "q"), (layer.self_attn.k_proj, "k"),
                          (layer.self_attn.v_proj, "v"), (layer.norm1, "ln1"),
                          (layer.linear1, "ffn_in"), (layer.norm2, "ln2")]:
            hooks.append(sub.register_forward_post_hook(tap(f"layers.{i}.{name}")))
    with paddle.no_grad():
        model(paddle.to_tensor(ids), paddle.to_tensor(tt))
    for h in hooks:
        h.remove()
    for i in range(len(model.bert.encoder.layers)):
        seen[f"layers.{i}.qkv"] = np.concatenate([seen.pop(f"layers.{i}.{m}") for m in "qkv"], -1)
    return seen


def first_sign_difference(model, runtime, ids, tt):
    """Walk the forward in order; return where Paddle and the runtime first take a different
    sign: (tensor name, [token, channel], Paddle value, runtime value), or None."""
    import numpy as np

    want = paddle_intermediates(model, ids, tt)
    got = runtime.intermediates(ids, tt)
    order = ["embeddings"] + [f"layers.{i}.{n}" for i in range(len(runtime.layers))
                              for n in ("qkv", "ln1", "ffn_in", "ln2")]
    for name in order:
        diff = np.argwhere(np.signbit(want[name]) != np.signbit(got[name]))
        if len(diff):
            idx = tuple(diff[0])
            return name, idx[1:], float(want[name][idx]), float(got[name][idx]), len(diff)
    return None


def exact_logits(packed, ids, tt):
    """The judge when Paddle and the runtime disagree: the BiBERT equations on the packed model's
    own float32 parameters (its bits and scales are Paddle's quantizer output), each operation
    evaluated in float64 and rounded once to float32 wherever the model holds a float32 tensor.
    Binary dot products times a float32 scale are exact in float64, LayerNorm statistics good to
    ~1e-16, so every sign taken is the sign of the correctly rounded value. Written apart from
    the runtime's kernels (plain numpy on unpacked signs)."""
    import numpy as np

    from paddle_bibert.export.pack import unpack_signs

    t, c = packed.tensors, packed.config
    h, heads, n_layers = c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"]
    b, l = ids.shape
    dh = h // heads
    f32 = lambda v: v.astype(np.float32).astype(np.float64)  # noqa: E731
    sign = lambda v: np.where(np.signbit(v), -1.0, 1.0)  # noqa: E731
    d64 = lambda name: t[name].astype(np.float64)  # noqa: E731

    def lin(name, x, k):
        w = unpack_signs(t[name + ".bits"], k, np.float64)
        return f32(sign(x) @ w.T * d64(name + ".alpha") + d64(name + ".bias"))

    def ln(v, name):
        m = v.mean(-1, keepdims=True)
        z = (v - m) * (1.0 / np.sqrt(((v - m) ** 2).mean(-1, keepdims=True)
                                     + c["layer_norm_eps"][name]))
        return f32(z * d64(name + ".weight") + d64(name + ".bias"))

    e = unpack_signs(t["embeddings.word.bits"][ids], h, np.float64) \
        * d64("embeddings.word.alpha")[ids][..., None]
    x = ln(f32(f32(e + d64("embeddings.position")[:l]) + d64("embeddings.token_type")[tt]),
           "embeddings.ln")
    keep = (ids != c["pad_token_id"])[:, None, None, :]
    for i in range(n_layers):
        p = f"layers.{i}."
        q, k, v = (sign(lin(p + m, x, h)).reshape(b, l, heads, dh).transpose(0, 2, 1, 3)
                   for m in "qkv")
        a = ((q @ k.transpose(0, 1, 3, 2) > 0) if c["attention"] == "bool" else 1.0) * keep
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(b, l, h)
        x = ln(f32(x + lin(p + "out", ctx, h)), p + "ln1")
        hid = lin(p + "ffn_in", x, h)  # sign(gelu(h)) = sign(h)
        x = ln(f32(x + lin(p + "ffn_out", hid, c["intermediate_size"])), p + "ln2")
    pooled = f32(np.tanh(lin("pooler", x[:, 0], h)))
    return pooled @ d64("classifier.weight") + d64("classifier.bias")


def agreement(model, runtime, packed_path, n, batch=16):
    import numpy as np
    import paddle

    from paddle_bibert.export import read_packed

    rng = np.random.default_rng(1)
    ids = _ids(rng, n)
    for row in ids:  # padded tails of random length (pad id 0)
        row[rng.integers(SEQ_LEN // 4, SEQ_LEN + 1):] = 0
    tt = (np.arange(SEQ_LEN)[None] >= SEQ_LEN // 2).astype(np.int64).repeat(n, 0)
    want, got, exact = [], [], []
    packed = read_packed(packed_path)
    with paddle.no_grad():
        for s in range(0, n, batch):
            sl = slice(s, s + batch)
            want.append(model(paddle.to_tensor(ids[sl]), paddle.to_tensor(tt[sl])).numpy())
            got.append(runtime(ids[sl], tt[sl]))
            exact.append(exact_logits(packed, ids[sl], tt[sl]))
    want, got, exact = np.concatenate(want), np.concatenate(got), np.concatenate(exact)
    err, err_rt, err_pd = (np.abs(u - v).max(1) for u, v in
                           [(want, got), (got, exact), (want, exact)])
    close = err <= 1e-3
    res = {"n": n, "labels": int((want.argmax(1) == got.argmax(1)).sum()),
           "close": int(close.sum()),
           "max_err_close": float(err[close].max()) if close.any() else float("nan"),
           "runtime_exact": int((err_rt <= 1e-3).sum()), "paddle_exact": int((err_pd <= 1e-3).sum()),
           "runtime_exact_labels": int((got.argmax(1) == exact.argmax(1)).sum()),
           "paddle_exact_labels": int((want.argmax(1) == exact.argmax(1)).sum()),
           "max_err_runtime_exact": float(err_rt.max()), "traces": []}
    for i in np.flatnonzero(~close):
        res["traces"].append((int(i), float(err[i]),
                              first_sign_difference(model, runtime, ids[i:i + 1], tt[i:i + 1]),
                              float(err_rt[i]), float(err_pd[i])))
    return res


# ----------------------------------------------------------------------------- driver


def dir_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def run_shape(shape, n_agree, workdir):
    import gc

    from paddle_bibert import binarize_model, export_packed
    from paddle_bibert.export.cost import SHAPES as COST_SHAPES, count
    from paddle_bibert.runtime import load_packed

    t0 = time.time()
    fp_dir, packed = os.path.join(workdir, f"{shape}-fp32"), os.path.join(workdir, f"{shape}.bibert")
    model = random_model(shape)
    model.save_pretrained(fp_dir)
    binarize_model(model)
    export_packed(model, packed)
    row = {"shape": shape, "fp_bytes": dir_bytes(fp_dir), "packed_bytes": os.path.getsize(packed),
           "cost": count(COST_SHAPES[shape], SEQ_LEN)}
    runtime = load_packed(packed)
    row["agree"] = agreement(model, runtime, packed, n_agree)
    del model, runtime
    gc.collect()
    row["runtime"] = {name: run_worker("runtime", packed, shape, env)
                      for name, env in RUNTIME_SETTINGS.items()}
    row["paddle"] = {name: run_worker("paddle", fp_dir, shape, env)
                     for name, env in PADDLE_SETTINGS.items()}
    row["seconds"] = time.time() - t0
    return row


def _best(runs, b):
    return min(runs.items(), key=lambda kv: kv[1]["latency"][str(b)][0])


def fmt_tables(rows):
    out = ["### Size on disk and latency (seq_len 128, median; each side at its best setting)", "",
           "| model | float32 checkpoint | packed file | size ratio | batch | Paddle FP32 | "
           "packed runtime | speed-up | peak RSS Paddle / runtime |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for j, b in enumerate(BATCHES):
            (pn, p), (rn, rt) = _best(r["paddle"], b), _best(r["runtime"], b)
            pm, rm = p["latency"][str(b)][0], rt["latency"][str(b)][0]
            size = (f"{r['fp_bytes'] / 2**20:.1f} MiB | {r['packed_bytes'] / 2**20:.2f} MiB | "
                    f"{r['fp_bytes'] / r['packed_bytes']:.1f}x" if j == 0 else " | | ")
            out.append(f"| {r['shape'] if j == 0 else ''} | {size} | {b} | {pm:.1f} ms ({pn}) | "
                       f"{rm:.2f} ms ({rn}) | {pm / rm:.1f}x | {p['rss_mib']:.0f} / "
                       f"{rt['rss_mib']:.0f} MiB |")
    out.append("")
    for r in rows:
        for side in ("paddle", "runtime"):
            out.append(f"{r['shape']} {side} per setting, batch 1 / 32 (ms): " + "; ".join(
                f"{name}: {v['latency']['1'][0]:.1f} / {v['latency']['32'][0]:.0f}"
                for name, v in r[side].items()))
    rt0 = next(iter(rows[0]["runtime"].values()))
    out += [f"Runtime backend: {rt0['backend']}. Packed file sizes are the whole file; the "
            "float32 checkpoint is the save_pretrained directory.", ""]
    out += ["### Binary matrix product alone vs float32 matmul (M tokens x K -> N, median)", "",
            "| model | M x K x N | binary | binary incl. packing input | numpy FP32 | Paddle FP32 "
            "| speed-up vs best FP32 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for key in next(iter(r["runtime"].values()))["matmul"]:
            best = lambda runs, k: min(v["matmul"][key][k] for v in runs.values())  # noqa: E731
            binary, packing = best(r["runtime"], "binary"), best(r["runtime"], "binary+pack")
            npy, pd = best(r["runtime"], "numpy"), best(r["paddle"], "paddle")
            out.append(f"| {r['shape']} | {key} | {binary:.3f} ms | {packing:.3f} ms | "
                       f"{npy:.3f} ms | {pd:.3f} ms | {min(npy, pd) / binary:.1f}x |")
    out += ["", "### Agreement (random weights, non-zero biases; seq_len 128, random padding)", "",
            "Paddle = the binarized Paddle model (float32 kernels); exact = the same equations on "
            "the same float32 parameters, each operation evaluated in float64 and rounded once "
            "to float32 (benchmarks/packed.py::exact_logits).", "",
            "| model | examples | runtime vs Paddle: same label / logits within 1e-3 (max error) "
            "| runtime vs exact: same label / within 1e-3 (max error) | Paddle vs exact: same "
            "label / within 1e-3 |", "|---|---|---|---|---|"]
    for r in rows:
        a = r["agree"]
        out.append(f"| {r['shape']} | {a['n']} | {a['labels']} / {a['close']} "
                   f"({a['max_err_close']:.1e}) | {a['runtime_exact_labels']} / "
                   f"{a['runtime_exact']} ({a['max_err_runtime_exact']:.1e}) | "
                   f"{a['paddle_exact_labels']} / {a['paddle_exact']} |")
    for r in rows:
        for i, err, tr, e_rt, e_pd in r["agree"]["traces"]:
            where = ("no sign difference found" if tr is None else
                     f"first different sign in `{tr[0]}` at token/channel {list(map(int, tr[1]))}:"
                     f" Paddle {tr[2]:.3e} vs runtime {tr[3]:.3e} ({tr[4]} sign(s) differ there)")
            out.append(f"- {r['shape']} example {i}: runtime and Paddle differ by {err:.3g}; "
                       f"{where}; vs exact: runtime {e_rt:.2g}, Paddle {e_pd:.2g}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["bert-base", "minilm"], choices=list(SHAPES))
    ap.add_argument("--agree", type=int, default=32, help="examples for the agreement check")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--worker", choices=["runtime", "paddle"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.shape = args.shapes[0]
        return (worker_runtime if args.worker == "runtime" else worker_paddle)(args)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    t0, load0 = time.time(), open("/proc/loadavg").read().split()[:3]
    workdir = tempfile.mkdtemp(prefix="bibert-bench-")
    try:
        rows = [run_shape(s, args.agree, workdir) for s in args.shapes]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    print(fmt_tables(rows))
    print(f"\n(total {time.time() - t0:.0f} s; " + ", ".join(
        f"{r['shape']} {r['seconds']:.0f} s" for r in rows) + f"; load average at start "
          f"{' '.join(load0)}, at end {' '.join(open('/proc/loadavg').read().split()[:3])})")


if __name__ == "__main__":
    main()
