"""What a user deploys on a CPU, compared: Paddle FP32, ONNX Runtime FP32 and dynamic INT8, and
the packed 1-bit runtime (AVX-512, AVX2 and plain POPCNT kernels, those the CPU runs), on the
same inputs.

For each shape (MiniLM-L6-H384, the main job's model, and BERT-base) at batch 1 and 32, at
seq_len 128 (``--seq_len``: a shorter one, as most sentences are, shows what fixed costs do):

* the full-precision model is saved by Paddle (``save_pretrained`` for the dynamic graph, and
  ``paddle.jit.save`` for Paddle Inference, run with oneDNN and without), exported to ONNX
  (``paddle.onnx.export``), also with ONNX Runtime's BERT fusions
  (``onnxruntime.transformers.optimizer``, ``opt_level=0``) and its fused attention (which that
  optimizer does not find in Paddle's export: ``onnx_attention.py``), and each graph quantized
  with ``onnxruntime.quantization.quantize_dynamic`` (INT8 weights, QInt8; the fused attention
  becomes QAttention);
* its binarized twin is written as a packed ``.bibert`` file with its vocabulary;
* every backend runs in processes of its own, once per setting (threads 1 and 2; Paddle also
  with MKL's other code path, and dynamic graph or Paddle Inference; ONNX Runtime with the plain
  and the fused graph), and is scored at its best setting per batch size: median latency (after
  half a second of untimed calls), throughput, peak RSS of the process;
* then, since a shared host drifts over the minutes one pass takes, each graph's best batch-1
  setting is timed again in ``--rounds`` interleaved rounds (a process per setting per round,
  the backends' order rotated); each backend's setting with the lowest median is its row, and
  the batch-1 ratios are given per round;
* with ``--trained DIR`` (a quickstart output folder: ``teacher/best_model``,
  ``student/best_model``) the MiniLM row uses those trained models and adds each one's dev
  accuracy on Rotten Tomatoes: the teacher through Paddle (its dynamic graph), ONNX Runtime
  FP32 and INT8, the
  binarized student through the packed runtime (text in, the file's own tokenizer).

Random weights for BERT-base (speed does not depend on them). Needs the ``deploy`` extra
(``pip install onnxruntime paddle2onnx``), never needed by the runtime itself.

    python benchmarks/deploy.py --trained ~/bibert-runs/quickstart \\
        --out benchmarks/deploy.md --plot benchmarks/deploy.png
    python benchmarks/deploy.py --shapes minilm --quick           # a smoke run (seconds)
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from packed import PADDLE_SETTINGS, SHAPES, _median_ms, _rss_mib, random_model  # noqa: E402

SEQ_LEN, BATCHES, VOCAB = 128, (1, 32), 30522
MAX_SEQ_LEN = 512  # the position embeddings of both shapes
ISAS = ("avx512", "avx2", "popcnt")  # the runtime's x86 kernel sets, fastest first
ISA_NAMES = {"avx512": "AVX-512", "avx2": "AVX2", "popcnt": "POPCNT"}
THREADS = ("1", "2")


def settings(kind, isa=None, graph=""):
    """{setting name: (environment, worker arguments)} of one backend's graph."""
    if kind == "paddle" and graph == "inference":  # Paddle Inference, with oneDNN and without
        return {f"{name}, oneDNN {on}": (env, ["--onednn", on])
                for name, env in PADDLE_SETTINGS.items() for on in ("on", "off")}
    if kind == "paddle":
        return {name: (env, []) for name, env in PADDLE_SETTINGS.items()}
    if kind == "ort":
        return {f"{t} thr": ({"OMP_NUM_THREADS": t}, ["--threads", t]) for t in THREADS}
    return {f"{t} thr": ({"OMP_NUM_THREADS": t, "BIBERT_ISA": isa}, ["--threads", t])
            for t in THREADS}


# ------------------------------------------------------------------------------ workers

def _inputs(b, seq_len):
    import numpy as np

    ids = np.random.default_rng(b).integers(1, VOCAB, (b, seq_len))
    return ids, np.zeros_like(ids)


def worker(args):
    """Time one backend on one file; print a JSON line (latency per batch, peak RSS)."""
    if args.worker == "paddle" and args.onednn:
        run = _paddle_inference(args.path, int(os.environ["OMP_NUM_THREADS"]), args.onednn == "on")
    elif args.worker == "paddle":
        import paddle
        from paddlenlp.transformers import BertForSequenceClassification

        model = BertForSequenceClassification.from_pretrained(args.path)
        model.eval()

        def run(ids, tt):
            with paddle.no_grad():
                return model(paddle.to_tensor(ids), token_type_ids=paddle.to_tensor(tt)).numpy()
    elif args.worker == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = int(args.threads), 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(args.path, so, providers=["CPUExecutionProvider"])

        def run(ids, tt):
            return sess.run(None, {"input_ids": ids, "token_type_ids": tt})[0]
    else:
        from paddle_bibert.runtime import load_packed

        model = load_packed(args.path, num_threads=int(args.threads))

        def run(ids, tt):
            return model(ids, tt)
    out = {"latency_ms": {}}
    for b in (int(x) for x in args.batches.split(",")):
        ids, tt = _inputs(b, args.seq_len)
        out["latency_ms"][b] = _median_ms(lambda: run(ids, tt), *(
            (3, 1) if args.quick else (20, 10) if b == 1 else (3, 20)))[0]
    out["rss_mib"] = _rss_mib()
    if args.worker == "packed":
        out["backend"] = model.backend
        assert "paddle" not in sys.modules  # the runtime alone, as a deployment has it
    print(json.dumps(out))


def _paddle_inference(prefix, threads, onednn):
    """A Paddle Inference predictor of ``prefix`` (``paddle.jit.save``) as run(ids, tt)."""
    import paddle.inference as pi

    config = pi.Config(prefix + ".json", prefix + ".pdiparams")
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads)
    config.enable_mkldnn() if onednn else config.disable_mkldnn()
    config.switch_ir_optim(True)
    config.disable_glog_info()
    predictor = pi.create_predictor(config)
    inputs = [predictor.get_input_handle(n) for n in predictor.get_input_names()]
    output = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(ids, tt):
        for handle, x in zip(inputs, (ids, tt)):
            handle.copy_from_cpu(x)
        predictor.run()
        return output.copy_to_cpu()
    return run


def run_worker(kind, path, env, extra, quick, batches=BATCHES):
    full = {k: v for k, v in os.environ.items()
            if k not in ("MKL_DEBUG_CPU_TYPE", "BIBERT_NUM_THREADS", "BIBERT_ISA")}
    full.update(env)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--path", path,
           "--batches", ",".join(map(str, batches)), *extra]
    res = subprocess.run(cmd + (["--quick"] if quick else []), env=full, capture_output=True,
                         text=True)
    if res.returncode:
        raise RuntimeError(f"{kind} worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ files

def _input_spec():
    """Both exports' inputs: token ids and token types, [batch, length] of any size."""
    import paddle

    return [paddle.static.InputSpec([None, None], "int64", "input_ids"),
            paddle.static.InputSpec([None, None], "int64", "token_type_ids")]


def save_inference(model, prefix):
    """The static graph Paddle Inference runs (``paddle.jit.save``: prefix.json, .pdiparams)."""
    import copy

    import paddle

    paddle.jit.save(paddle.jit.to_static(copy.deepcopy(model), input_spec=_input_spec()), prefix)


def export_onnx(model, prefix, shape, trained, seq_len):
    """``prefix.onnx`` (plain), ``prefix_fused.onnx`` (ONNX Runtime's BERT fusions and its
    fused attention) and the dynamic-INT8 version of each; returns {name: path}."""
    import paddle
    from onnx_attention import fuse_attention
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    paddle.onnx.export(model, prefix, input_spec=_input_spec(), opset_version=14)
    heads = SHAPES[shape]["num_attention_heads"]
    # opt_level 0: the Python fusions only (level 1+ asks for torch); the session optimizes more
    fused = optimize_model(prefix + ".onnx", model_type="bert", num_heads=heads,
                           hidden_size=SHAPES[shape]["hidden_size"], opt_level=0)
    fused.save_model_to_file(prefix + "_unfused_attention.onnx")
    # the attention, which the optimizer does not fuse in Paddle's export (see onnx_attention)
    pad = int(model.config.pad_token_id)
    blocks = fuse_attention(prefix + "_unfused_attention.onnx", prefix + "_fused.onnx", heads, pad)
    if len(blocks) != SHAPES[shape]["num_hidden_layers"]:
        raise RuntimeError(f"{prefix}_fused.onnx: not every layer's attention was fused")
    _check_fused_attention(prefix + "_unfused_attention.onnx", prefix + "_fused.onnx", blocks[0],
                           pad, trained, seq_len)
    os.remove(prefix + "_unfused_attention.onnx")
    paths = {"fp32 plain": prefix + ".onnx", "fp32 fused": prefix + "_fused.onnx"}
    for graph in ("plain", "fused"):
        paths[f"int8 {graph}"] = f"{prefix}_{graph}_int8.onnx"
        quantize_dynamic(paths[f"fp32 {graph}"], paths[f"int8 {graph}"],
                         weight_type=QuantType.QInt8)
    return paths


def _check_fused_attention(before, after, first_block, pad_token_id, logits, seq_len):
    """The graph with its attention fused gives the first block's output of the graph before (up
    to float rounding) on a padded batch; with ``logits`` (trained weights) the logits too: with
    random weights this large, float rounding turns into different logits over the layers."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    ids, tt = _inputs(4, seq_len)
    for row, keep in enumerate((seq_len, max(2, seq_len * 3 // 4), max(2, seq_len // 8))):
        ids[row + 1, keep:] = pad_token_id
    outs = []
    for path, block in zip((before, after), first_block):
        m = onnx.load(path)
        m.graph.output.append(helper.make_tensor_value_info(block, TensorProto.FLOAT, None))
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {"input_ids": ids, "token_type_ids": tt}))
    for i in ((0, 1) if logits else (1,)):
        err = np.abs(outs[0][i] - outs[1][i]).max()
        if not err <= 1e-3 * max(1.0, np.abs(outs[0][i]).max()):
            what = ("the logits differ", "the first attention block's output differs")[i]
            raise RuntimeError(f"{after}: {what} from the unfused graph's by {err:.3g}")


def prepare(shape, workdir, trained, seq_len):
    """Every backend's file for one shape: {backend: (kind, {graph: path})}, file sizes, and the
    models (for the accuracy pass)."""
    from paddle_bibert import BinarizeConfig, binarize_model, export_packed, load_binarized
    from paddle_bibert.convert import load_model, load_tokenizer

    from paddlenlp.transformers import BertForSequenceClassification

    tok = load_tokenizer("minilm")  # BERT's uncased vocabulary, as BERT-base has
    if trained:
        fp = load_model(os.path.join(trained, "teacher", "best_model"),
                        BertForSequenceClassification)
        bi = load_binarized(os.path.join(trained, "student", "best_model"))
        from paddle_bibert.data.glue import read_task_file

        # the length the models were trained with (the quickstart's default before task files)
        length = read_task_file(os.path.join(trained, "student", "best_model")).get(
            "max_seq_length", 64)
        # the file takes the longer of the timed and the trained length; the accuracy pass
        # cuts inputs to the trained one
        text = dict(task="movie-reviews", labels=["negative", "positive"],
                    max_seq_length=max(seq_len, length))
    else:
        length = seq_len
        fp, bi = random_model(shape), random_model(shape)
        binarize_model(bi, BinarizeConfig.from_recipe("bibert"))
        text = dict(task="sst-2", max_seq_length=seq_len)
    fp.eval(), bi.eval()
    d = os.path.join(workdir, shape)
    fp.save_pretrained(os.path.join(d, "paddle"))
    save_inference(fp, os.path.join(d, "inference", "model"))
    onnx = export_onnx(fp, os.path.join(d, "model"), shape, bool(trained), seq_len)
    packed = os.path.join(d, "model.bibert")
    export_packed(bi, packed, tokenizer=tok, **text)
    files = {"paddle fp32": ("paddle", {"": os.path.join(d, "paddle"),
                                        "inference": os.path.join(d, "inference", "model")}),
             "onnxruntime fp32": ("ort", {g: p for g, p in onnx.items() if g.startswith("fp32")}),
             "onnxruntime int8": ("ort", {g: p for g, p in onnx.items() if g.startswith("int8")})}
    isas = runnable_isas()
    files.update({f"packed 1-bit {isa}": ("packed", {"": packed}) for isa in isas})
    if trained:  # the trained student is BiT's recipe; BiBERT's Bi-Attention runs faster
        import copy

        twin = copy.deepcopy(fp)
        binarize_model(twin, BinarizeConfig.from_recipe("bibert"))
        twin.eval()
        export_packed(twin, os.path.join(d, "bibert.bibert"), tokenizer=tok, **text)
        files[f"packed 1-bit {isas[0]}, BiBERT recipe"] = ("packed", {"": os.path.join(d, "bibert.bibert")})
    return files, {"fp": fp, "onnx": onnx, "packed": packed, "length": length}


def runnable_isas():
    """The kernel sets of ``ISAS`` this CPU runs, fastest first (a CPU without AVX-512 times its
    AVX2 kernels as the packed runtime's best)."""
    from paddle_bibert.runtime.kernels import available_isas

    isas = [isa for isa in ISAS if isa in available_isas()]
    if not isas:
        sys.exit("error: the runtime's C kernels are not built or this CPU runs none of "
                 f"{', '.join(ISAS)}; build them with pip install -e . (a C compiler is needed)")
    return isas


def lead_packed(rows):
    """The packed row timed with the fastest kernels of the run (its first), and their name."""
    k = next(k for k in rows if k.startswith("packed 1-bit ") and "," not in k)
    return k, ISA_NAMES[k.split()[-1]]


def file_mib(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
                   if f.endswith((".pdparams", ".safetensors"))) / 2**20
    return os.path.getsize(path) / 2**20


# ------------------------------------------------------------------------------ accuracy

def accuracy(models, chosen):
    """Rotten Tomatoes dev accuracy of the teacher (Paddle, ONNX Runtime FP32 and INT8, each on
    its best graph) and of the packed student (its own tokenizer)."""
    import numpy as np
    import onnxruntime as ort
    import paddle

    from paddle_bibert.data.glue import load_glue
    from paddle_bibert.runtime import load_packed
    from paddle_bibert.runtime.text import TextEncoder

    dev = load_glue("movie-reviews", split="dev")
    labels = np.array([e["labels"] for e in dev])
    student = load_packed(models["packed"])
    texts = [e["sentence"] for e in dev]
    # the file's tokenizer (PaddleNLP's ids) at the length the models were trained with
    enc = TextEncoder(student._packed_vocab, {**student.config["tokenizer"],
                                              "max_seq_length": models["length"]},
                      student.config["task"])
    ids, types = enc.encode(texts)
    preds = {k: [] for k in ("paddle fp32", "onnxruntime fp32", "onnxruntime int8", "packed")}
    sess = {k: ort.InferenceSession(models["onnx"][chosen[k]], providers=["CPUExecutionProvider"])
            for k in ("onnxruntime fp32", "onnxruntime int8")}
    for i in range(len(texts)):  # one at a time: no padding question
        a, t = np.array([ids[i]]), np.array([types[i]])
        with paddle.no_grad():
            preds["paddle fp32"].append(models["fp"](paddle.to_tensor(a),
                                                     token_type_ids=paddle.to_tensor(t)).numpy())
        for k, s in sess.items():
            preds[k].append(s.run(None, {"input_ids": a, "token_type_ids": t})[0])
        preds["packed"].append(student(a, t))
    acc = {k: float((np.concatenate(p).argmax(1) == labels).mean()) for k, p in preds.items()}
    out = {k: acc["packed" if k.startswith("packed") else k] for k in chosen if "BiBERT" not in k}
    return out, len(dev), dev_lengths(ids)


def dev_lengths(ids):
    """The dev sentences' token counts (with [CLS] and [SEP]): median and 90th percentile, the
    lengths a user's inputs have, against the timed seq_len (of the ids as the accuracy pass
    cuts them to the trained length: a percentile that reaches that length is a floor)."""
    import numpy as np

    return [float(np.percentile([len(x) for x in ids], q)) for q in (50, 90)]


# ------------------------------------------------------------------------------ report

def run_shape(shape, workdir, trained, quick, rounds, log, seq_len=SEQ_LEN):
    t0 = time.time()
    trained = trained if shape == "minilm" else None  # the main job trains MiniLM
    files, models = prepare(shape, workdir, trained, seq_len)
    rows = {}
    for backend, (kind, graphs) in files.items():
        isa = backend.split(",")[0].split()[-1] if kind == "packed" else None
        runs, how = {}, {}
        for graph, path in graphs.items():
            for name, (env, extra) in settings(kind, isa, graph).items():
                extra = [*extra, "--seq_len", str(seq_len)]  # (the rounds reuse it from how)
                key = f"{graph} {name}".strip()
                how[key] = (kind, path, env, extra)
                runs[key] = run_worker(kind, path, env, extra, quick)
                log(f"  {shape} {backend} {key}: {runs[key]}")
        best = {str(b): min(runs, key=lambda s: runs[s]["latency_ms"][str(b)]) for b in BATCHES}
        graph = " ".join(best["1"].split()[:2]) if kind == "ort" else ""  # e.g. "int8 fused"
        # the rounds time each graph's best batch-1 setting: one pass's noise can rank the
        # graphs wrongly (ONNX Runtime's INT8 plain graph over its fused one)
        firsts = {}
        for key in sorted(runs, key=lambda k: runs[k]["latency_ms"]["1"]):
            firsts.setdefault(" ".join(key.split()[:2]) if kind == "ort" else
                              ("inference" if key.startswith("inference") else ""), key)
        rows[backend] = {"runs": runs, "best": best, "graph": graph, "how": how[best["1"]],
                         "candidates": {k: how[k] for k in firsts.values()},
                         "mib": file_mib(graphs[graph] if kind == "ort" else graphs[""])}
        if kind == "packed":
            rows[backend]["kernels"] = runs[best["1"]]["backend"]
    interleaved_rounds(rows, rounds, quick, lambda m: log(f"  {shape} {m}"))
    for k, r in rows.items():  # the graph the rounds kept is the one the ratios, size and accuracy are of
        if files[k][0] == "ort" and r.get("rounds_setting"):
            r["graph"] = " ".join(r["rounds_setting"].split()[:2])
            r["mib"] = file_mib(files[k][1][r["graph"]])
    chosen = {k: r["graph"] for k, r in rows.items()}
    acc, n, lengths = (accuracy(models, chosen) if trained and shape == "minilm" else ({}, 0, None))
    return {"shape": shape, "seq_len": seq_len, "rows": rows, "accuracy": acc, "n_dev": n,
            "dev_tokens": lengths, "seconds": time.time() - t0}


def interleaved_rounds(rows, rounds, quick, log):
    """Batch-1 latency of every backend's candidate settings (each graph's best; else its best
    setting), once per round, the backends' order rotated each round; the candidate with the
    lowest median is the backend's: its latencies in ``rows[backend]["rounds_ms"]``, its name
    in ``rows[backend]["rounds_setting"]``."""
    names = list(rows)
    series = {k: {} for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            for setting, (kind, path, env, extra) in rows[k].get(
                    "candidates", {rows[k]["best"]["1"]: rows[k]["how"]}).items():
                ms = run_worker(kind, path, env, extra, quick, batches=(1,))["latency_ms"]["1"]
                series[k].setdefault(setting, []).append(ms)
                log(f"round {r + 1} {k} ({setting}): {ms:.2f} ms")
    for k, by in series.items():
        if by:
            import numpy as np

            setting = min(by, key=lambda s: np.median(by[s]))
            rows[k]["rounds_setting"], rows[k]["rounds_ms"] = setting, by[setting]


def rounds_text(rows):
    """The batch-1 comparison of the interleaved rounds: medians (and ranges) and per-round
    ratios."""
    import numpy as np

    ms = {k: r["rounds_ms"] for k, r in rows.items() if r.get("rounds_ms")}
    if not any(k.startswith("packed 1-bit ") for k in ms):
        return ""
    lead, isa = lead_packed(ms)
    p = np.array(ms[lead])
    fp32 = min(("paddle fp32", "onnxruntime fp32"), key=lambda k: np.median(ms[k]))
    ratios = lambda k: ", ".join(f"{v:.1f}x" for v in np.array(ms[k]) / p)
    med = "; ".join(f"{k} [{rows[k].get('rounds_setting', rows[k].get('best', {}).get('1', ''))}] "
                    f"{np.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for k, v in ms.items())
    how = ("a process per setting per round; each backend's graphs at their best setting, the "
           "one with the lowest median shown" if any("rounds_setting" in rows[k] for k in ms) else
           "a process per backend per round, each at its best setting")  # (runs before the graphs)
    return (f"Batch 1 again, {len(p)} interleaved rounds ({how}): "
            f"median ms (range) {med}. Packed 1-bit ({isa}) against "
            f"ONNX Runtime INT8, round by round: {ratios('onnxruntime int8')}; against the best "
            f"FP32 ({fp32}): {ratios(fp32)}.")


def table(res):
    rows = res["rows"]
    lat = {k: {b: r["runs"][r["best"][str(b)]]["latency_ms"][str(b)] for b in BATCHES}
           for k, r in rows.items()}
    head = ("| backend (best setting at batch 1) | file MiB | batch 1 ms | batch 32 ms | "
            "batch 32 seq/s | peak RSS MiB |" + (" dev acc |" if res["accuracy"] else ""))
    lengths = res.get("dev_tokens")
    tokens = (f"; {lengths[0]:g} tokens at the median, {lengths[1]:g} at the 90th percentile"
              if lengths else "")
    out = [f"**{res['shape']}**, seq_len {res.get('seq_len', SEQ_LEN)}" + (
        f"; dev accuracy on Rotten Tomatoes ({res['n_dev']} sentences{tokens}): the trained teacher for "
        "Paddle and ONNX Runtime, the trained binarized student (BiT's recipe, the main job's) "
        "for the packed runtime; the BiBERT-recipe row is the teacher binarized with BiBERT's "
        "Bi-Attention, untrained, timed only" if res["accuracy"] else
        "; random weights (timing only)"),
        "", head, "|" + "---|" * (head.count("|") - 1)]
    for k, r in rows.items():
        best = r["best"]["1"]
        acc = (f" {res['accuracy'][k]:.4f} |" if k in res["accuracy"] else " (untrained) |") \
            if res["accuracy"] else ""
        what = f"{r['kernels']}, {best}" if r.get("kernels") else best
        out.append(f"| {k} ({what}) | {r['mib']:.1f} | {lat[k][1]:.2f} | {lat[k][32]:.1f} | "
                   f"{32e3 / lat[k][32]:.1f} | {r['runs'][best]['rss_mib']:.0f} |{acc}")
    fp32 = min(("paddle fp32", "onnxruntime fp32"), key=lambda k: lat[k][1])
    p, isa = lead_packed(rows)
    slower = "".join(f"{ISA_NAMES[k.split()[-1]]} kernels: {lat[k][1] / lat[p][1]:.2f}x the {isa} latency "
                     "at batch 1. " for k in rows if k.startswith("packed 1-bit ") and "," not in k and k != p)
    out += ["", f"Packed 1-bit ({isa}) at batch 1: {lat['onnxruntime int8'][1] / lat[p][1]:.1f}x "
            f"lower latency than ONNX Runtime INT8, {lat[fp32][1] / lat[p][1]:.1f}x than the best "
            f"FP32 ({fp32}); at batch 32: {lat['onnxruntime int8'][32] / lat[p][32]:.1f}x and "
            f"{min(lat['paddle fp32'][32], lat['onnxruntime fp32'][32]) / lat[p][32]:.1f}x. "
            f"{slower}File: "
            f"{rows['paddle fp32']['mib'] / rows[p]['mib']:.1f}x smaller than the Paddle FP32 "
            f"checkpoint, {rows['onnxruntime int8']['mib'] / rows[p]['mib']:.1f}x smaller than "
            "the INT8 ONNX file."]
    bb = f"{p}, BiBERT recipe"
    if bb in lat:
        out[-1] += (f" With BiBERT's Bi-Attention instead of BiT's softmax map: {lat[bb][1]:.2f} ms "
                    f"at batch 1, {lat['onnxruntime int8'][1] / lat[bb][1]:.1f}x lower than ONNX "
                    f"Runtime INT8, {lat[fp32][1] / lat[bb][1]:.1f}x than the best FP32.")
    again = rounds_text(rows)
    return "\n".join(out + (["", again] if again else []))


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for res in results:
        points = []
        for k in (k for k in res["rows"] if k in res["accuracy"]):  # trained rows only
            r = res["rows"][k]
            points.append((r["runs"][r["best"]["1"]]["latency_ms"]["1"], res["accuracy"][k],
                           r["mib"], k))
        for ms, acc, mib, k in sorted(points):
            ax.scatter(ms, acc, s=8 * mib, alpha=0.6, label=f"{k}: {ms:.1f} ms, {mib:.1f} MiB")
    # a legend, not labels by the markers: the FP32 and INT8 ones sit close together
    legend = ax.legend(fontsize=7, loc="upper left")
    for handle in legend.legend_handles:
        handle.set_sizes([30])
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.3)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = ax.get_xlim()
    ax.set_xticks([t for t in (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500) if lo <= t <= hi])
    ax.set_xlabel(f"latency at batch 1, seq_len {results[0].get('seq_len', SEQ_LEN)} (ms, log scale)")
    ax.set_ylabel("dev accuracy (Rotten Tomatoes)")
    ax.set_title("MiniLM on CPU: accuracy vs latency (marker area ~ file size)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cpu_name():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["minilm", "bert-base"], choices=list(SHAPES))
    ap.add_argument("--trained", help="a quickstart output folder (teacher/, student/)")
    ap.add_argument("--out", help="write the markdown report here")
    ap.add_argument("--plot", help="write the accuracy-vs-latency PNG here (needs --trained)")
    ap.add_argument("--quick", action="store_true", help="3 repeats: a smoke run, not a figure")
    ap.add_argument("--rounds", type=int, default=5,
                    help="interleaved rounds of the batch-1 comparison after the settings pass")
    ap.add_argument("--seq_len", type=int, default=SEQ_LEN,
                    help="tokens a sequence, every backend (the targets' comparison is at 128)")
    ap.add_argument("--json", help="also write the raw results (every setting of every backend)")
    ap.add_argument("--from_json", help="print the report (and --plot) of a run saved by --json")
    ap.add_argument("--worker", choices=["paddle", "ort", "packed"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--threads", default="2", help=argparse.SUPPRESS)
    ap.add_argument("--onednn", choices=["on", "off"], help=argparse.SUPPRESS)
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.rounds < 0:
        sys.exit(f"error: --rounds must be >= 0, got {args.rounds}")
    if not 2 <= args.seq_len <= MAX_SEQ_LEN:
        sys.exit(f"error: --seq_len must be in [2, {MAX_SEQ_LEN}] (BERT's positions), "
                 f"got {args.seq_len}")
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        print(saved["header"] + "\n\n" + "\n".join(table(r) + "\n" for r in saved["results"]))
        if args.plot:
            plot(saved["results"], args.plot)
        return
    for mod in ("onnxruntime", "paddle2onnx"):
        try:
            __import__(mod)
        except ImportError:
            sys.exit(f"error: {mod} is not installed; pip install -e '.[deploy]' (or "
                     "pip install onnxruntime paddle2onnx)")
    if args.trained and not os.path.isdir(os.path.join(args.trained, "student", "best_model")):
        sys.exit(f"error: {args.trained} has no student/best_model; pass the folder "
                 "examples/quickstart.py wrote (--output_dir)")
    t0, load0 = time.time(), open("/proc/loadavg").read().split()[:3]
    workdir = tempfile.mkdtemp(prefix="bibert-deploy-")
    try:
        results = [run_shape(s, workdir, args.trained, args.quick, args.rounds,
                             lambda m: print(m, flush=True), args.seq_len)
                   for s in args.shapes]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    report = [f"Date {datetime.date.today()}, machine {cpu_name()} ({os.cpu_count()} CPUs), "
              f"commit {commit}, {time.time() - t0:.0f} s; load average at start "
              f"{' '.join(load0)}, at end {' '.join(open('/proc/loadavg').read().split()[:3])}.",
              "Command: `python benchmarks/deploy.py " + " ".join(sys.argv[1:]) + "`", ""]
    header = "\n".join(report)
    report += [table(r) + "\n" for r in results]
    text = "\n".join(report)
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header.strip(), "results": results}, f, indent=1)
    if args.plot and args.trained:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
