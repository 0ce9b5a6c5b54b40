"""``python -m paddle_bibert.runtime predict|evaluate MODEL.bibert ...``: a packed model on text.

    predict MODEL [TEXT ...]      one JSON line per input: its label (and the class
                                  probabilities) or its score; no TEXT: one input per line of
                                  stdin. A sentence pair is two tab-separated fields.
    evaluate MODEL --data F.tsv   the task's metrics on a labelled file in the task's GLUE dev
                                  layout (header row, e.g. SST-2: sentence<TAB>label)

Both need a file exported with its tokenizer (format version 3) and neither imports Paddle.
Errors end in one line naming the problem (no traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings


def _texts(args, pair: bool) -> list:
    """The inputs from the command line, else from stdin (bytes, so a bad line is named)."""
    if args.text:
        lines = list(args.text)
    else:
        lines = []
        for n, raw in enumerate(sys.stdin.buffer, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise ValueError(f"stdin line {n} is not UTF-8 text; convert the input to "
                                 "UTF-8 (e.g. iconv -t utf-8)") from None
            if line.strip():
                lines.append(line)
    if not lines:
        raise ValueError("no input: give sentences as arguments or one per line on stdin")
    want, what = (2, "sentence pairs: give 'sentence1<TAB>sentence2'") if pair else (
        1, "single sentences: give no tab")
    out = []
    for n, line in enumerate(lines, start=1):
        fields = line.split("\t")
        if len(fields) != want:
            raise ValueError(f"input {n} has {len(fields)} tab-separated fields; this model "
                             f"scores {what}")
        out.append(tuple(fields) if pair else line)
    return out


def predict(model, args) -> None:
    from .text import softmax

    texts = _texts(args, model.text_encoder.pair)
    labels = model.labels
    s = model.scores(texts, args.batch_size)
    for text, row in zip(texts, s):
        rec = {"input": list(text) if isinstance(text, tuple) else text}
        if labels is None:
            rec["score"] = float(row[0])
        else:
            p = softmax(row[None])[0]
            rec["label"] = labels[int(row.argmax())]
            rec["probabilities"] = {name: round(float(v), 6) for name, v in zip(labels, p)}
        print(json.dumps(rec, ensure_ascii=False))


def evaluate(model, args) -> None:
    from ..data.glue import read_labelled_tsv
    from ..data.metrics import compute_metrics

    task = args.task or model.config["task"]["name"]
    if not task:
        raise ValueError("the file stores no task name; pass --task (e.g. --task sst-2)")
    examples = read_labelled_tsv(task, args.data)
    if "labels" not in examples[0]:
        raise ValueError(f"{args.data} has no label column; evaluate needs a labelled file in "
                         f"the {task} dev layout")
    pair = model.text_encoder.pair
    texts = [(e["sentence1"], e["sentence2"]) if pair else e["sentence"] for e in examples]
    s = model.scores(texts, args.batch_size)
    preds = s[:, 0] if model.labels is None else s.argmax(axis=1)
    metrics = compute_metrics(task, preds, [e["labels"] for e in examples])
    print(json.dumps({"task": task, "examples": len(examples),
                      **{k: round(float(v), 6) for k, v in metrics.items()}}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m paddle_bibert.runtime",
                                 description="Run a packed 1-bit model on text (no Paddle)")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="labels of sentences (arguments or stdin lines)")
    p.add_argument("model", help="a .bibert file written with its tokenizer")
    p.add_argument("text", nargs="*", help="sentences; a pair is 'sentence1<TAB>sentence2'")
    e = sub.add_parser("evaluate", help="the task's metrics on a labelled TSV file")
    e.add_argument("model", help="a .bibert file written with its tokenizer")
    e.add_argument("--data", required=True, help="labelled TSV in the task's GLUE dev layout")
    e.add_argument("--task", help="GLUE task of the file's layout (default: the model's task)")
    for q in (p, e):
        q.add_argument("--batch_size", type=int, default=32)
        q.add_argument("--num_threads", type=int, help="kernel threads (default: BIBERT_NUM_THREADS, else OMP_NUM_THREADS, else all cores)")
    args = ap.parse_args(argv)

    from ..export.format import PackedFormatError
    from .model import load_packed

    warnings.simplefilter("always")
    warnings.formatwarning = lambda msg, *a, **k: f"warning: {msg}\n"
    try:
        if not os.path.isfile(args.model):
            raise ValueError(f"{args.model}: no such file (a .bibert file written by "
                             "python -m paddle_bibert.export)")
        model = load_packed(args.model, num_threads=args.num_threads)
        (predict if args.command == "predict" else evaluate)(model, args)
    except (OSError, ValueError, PackedFormatError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
