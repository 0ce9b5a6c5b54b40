"""Look at a distilled student before tuning it: what it predicts, and what each loss term
sends back into it.

    python benchmarks/diagnose.py --task_name sts-b --data_dir ../shared/data/glue \\
        --teacher_path RUNS/sts-b/teacher --student RUNS/sts-b/bit_mse --max_seq_length 128 \\
        --pred_distill --intermediate_distill --hidden_loss mse --gold_weight 0 \\
        --plot benchmarks/diagnose_sts-b.png

It prints two tables and writes one plot:

1. Dev predictions. Classification: the share of each class among the labels, the teacher's
   and the student's predictions, and how often the two models agree; for two classes, the ROC
   AUC of each model's logit margin (a student that never predicts the minority class has
   Matthews correlation 0 however well its scores rank the examples; the AUC shows that ranking).
   Regression: mean and spread of labels and of both models' outputs, and their correlations.
2. The loss terms on ``--batches`` training batches (the student in training mode, the same
   dropout draws for every term): each enabled term's value and the norm of the gradient it
   alone sends to the classifier, the pooler and the last encoder layer. A term whose value is
   large but whose gradient into the head is small cannot steer the prediction.
3. ``--plot``: the student's output against the teacher's on the dev set, coloured by label
   (regression: the predicted score; classification: the logit margin of the last class over
   the first).

``--student`` may be a binarized run (``save_binarized`` folder) or a full-precision one.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import paddle_bibert  # noqa: E402,F401  (CPU defaults before Paddle loads)

GLUE = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "glue"))
#: parameter groups whose gradient norms table 2 reports (matched on the parameter's path)
GROUPS = ("classifier", "pooler", "last layer")


def load(path):
    """A run folder or model folder, binarized or not, in eval mode; and its tokenizer."""
    from paddlenlp.transformers import BertForSequenceClassification

    from paddle_bibert.commands import resolve_model_path
    from paddle_bibert.convert import load_model, load_tokenizer
    from paddle_bibert.surgery import CONFIG_NAME, load_binarized

    folder = resolve_model_path(path)
    if os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        model = load_binarized(folder)
    else:
        model = load_model(folder, BertForSequenceClassification)
    model.eval()
    return model, load_tokenizer(folder)


def loaders(args, tokenizer):
    from paddle_bibert.data.glue import get_task, load_glue
    from paddle_bibert.data.loader import Collator, encode_examples, make_dataloader

    info = get_task(args.task_name)
    collate = Collator(tokenizer, info.name, None)
    enc = lambda split: encode_examples(load_glue(info.name, args.data_dir, split), tokenizer,  # noqa: E731
                                        info.name, args.max_seq_length)
    train = make_dataloader(enc("train"), args.batch_size, shuffle=True, seed=args.seed, collate_fn=collate)
    dev = make_dataloader(enc(info.dev_splits[0]), 64, shuffle=False, collate_fn=collate)
    return info, train, dev


def outputs(model, loader):
    """Logits ``[N, C]`` over the loader and the labels."""
    import paddle

    logits, labels = [], []
    with paddle.no_grad():
        for batch in loader:
            logits.append(model(batch["input_ids"], token_type_ids=batch["token_type_ids"]).numpy())
            labels.append(batch["labels"].numpy())
    return np.concatenate(logits), np.concatenate(labels)


def varies(a) -> bool:
    """False for answers that are all alike up to float32 rounding: no correlation is defined."""
    a = np.asarray(a, dtype=np.float64)
    return bool(a.std() > 1e-6 * np.abs(a).max())


def prediction_table(info, t_logits, s_logits, labels) -> list:
    """Table 1: class shares (classification) or moments and correlations (regression)."""
    if info.is_regression:
        t, s = t_logits[:, 0], s_logits[:, 0]
        r = lambda a, b: float(np.corrcoef(a, b)[0, 1]) if varies(a) and varies(b) else float("nan")  # noqa: E731
        return ["| | mean | std | Pearson with labels | Pearson with teacher |", "|---|---|---|---|---|",
                f"| labels | {labels.mean():.4g} | {labels.std():.4g} | 1 | {r(labels, t):.4f} |",
                f"| teacher | {t.mean():.4g} | {t.std():.4g} | {r(t, labels):.4f} | 1 |",
                f"| student | {s.mean():.4g} | {s.std():.4g} | {r(s, labels):.4f} | {r(s, t):.4f} |"]
    n = t_logits.shape[1]
    tp, sp = t_logits.argmax(-1), s_logits.argmax(-1)
    share = lambda x: " | ".join(f"{np.mean(x == c):.3f}" for c in range(n))  # noqa: E731
    names = [str(x) for x in (info.labels or range(n))]
    if n != 2:
        return ["| | " + " | ".join(names) + " | agrees with teacher |", "|---" * (n + 2) + "|",
                f"| labels | {share(labels)} | |",
                f"| teacher | {share(tp)} | 1 |",
                f"| student | {share(sp)} | {np.mean(sp == tp):.3f} |"]
    # two classes: also how well the logit margin ranks the examples, whatever the cut
    auc = lambda lg: f"{roc_auc(lg[:, 1] - lg[:, 0], labels):.4f}"  # noqa: E731
    return ["| | " + " | ".join(names) + " | agrees with teacher | ROC AUC of the margin |", "|---" * 5 + "|",
            f"| labels | {share(labels)} | | |",
            f"| teacher | {share(tp)} | 1 | {auc(t_logits)} |",
            f"| student | {share(sp)} | {np.mean(sp == tp):.3f} | {auc(s_logits)} |"]


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative
    (ties count half), from the scores' ranks. A student that always predicts the majority class
    has Matthews correlation 0 but can still rank the examples well (AUC > 0.5)."""
    from scipy.stats import rankdata

    pos = np.asarray(labels) == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # ties get their mean rank
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def group_of(name: str, last_layer: str):
    if name.startswith("classifier."):
        return "classifier"
    if ".pooler." in name:
        return "pooler"
    if last_layer in name:
        return "last layer"
    return None


def term_gradients(student, teacher, dconf, info, loader, batches, seed):
    """Table 2's numbers: {term: (mean value, {group: mean gradient norm})} over ``batches``."""
    import paddle

    from paddle_bibert.distill.distiller import Distiller

    distiller = Distiller(student, teacher, dconf, info.is_regression)
    last = f"encoder.layers.{len(student.bert.encoder.layers) - 1}."
    params = [(group_of(n, last), p) for n, p in student.named_parameters()]
    student.train()
    sums = {}
    for i, batch in zip(range(batches), loader):
        t_logits, t_rec = distiller.teacher_forward(batch)
        names, k = None, 0
        while names is None or k < len(names):  # one forward per term: each backward alone
            paddle.seed(seed + i)  # the same dropout draws for every term
            s_logits, s_rec = distiller.student_forward(batch)
            _, terms = distiller.terms(s_logits, s_rec, t_logits, t_rec, batch.get("labels"))
            names = names or list(terms)
            value = terms[names[k]]
            value.backward()
            entry = sums.setdefault(names[k], [0.0, {g: 0.0 for g in GROUPS}])
            entry[0] += float(value)
            for g in GROUPS:
                entry[1][g] += sum(float((p.grad ** 2).sum()) for pg, p in params
                                   if pg == g and p.grad is not None) ** 0.5
            student.clear_gradients()
            k += 1
    student.eval()
    return {k: (v / batches, {g: x / batches for g, x in gs.items()}) for k, (v, gs) in sums.items()}


def gradient_table(grads) -> list:
    lines = ["| term | value | " + " | ".join(f"grad norm: {g}" for g in GROUPS) + " |",
             "|---" * (len(GROUPS) + 2) + "|"]
    for name, (value, norms) in grads.items():
        lines.append(f"| {name} | {value:.4g} | " + " | ".join(f"{norms[g]:.4g}" for g in GROUPS) + " |")
    return lines


def plot(path, info, t_logits, s_logits, labels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if info.is_regression:
        t, s, what = t_logits[:, 0], s_logits[:, 0], "predicted score"
    else:
        t, s, what = (t_logits[:, -1] - t_logits[:, 0]), (s_logits[:, -1] - s_logits[:, 0]), "logit margin"
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    points = ax.scatter(t, s, c=labels, s=6, cmap="viridis")
    fig.colorbar(points, label="label")
    ax.set_xlabel(f"teacher {what}")
    ax.set_ylabel(f"student {what}")
    ax.set_title(f"{info.name} dev: student against teacher")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    from paddle_bibert.distill.distiller import DistillConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task_name", required=True)
    ap.add_argument("--data_dir", default=GLUE)
    ap.add_argument("--teacher_path", required=True)
    ap.add_argument("--student", required=True, help="the student's run or model folder")
    ap.add_argument("--max_seq_length", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=4, help="training batches for table 2")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--plot", help="PNG of the student's dev outputs against the teacher's")
    for flag in DistillConfig.FLAGS:
        ap.add_argument(f"--{flag}", action="store_true")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--gold_weight", type=float, default=0.5)
    ap.add_argument("--hidden_loss", default="dmd", choices=("dmd", "mse"))
    args = ap.parse_args(argv)
    dconf = DistillConfig(**{f: getattr(args, f) for f in DistillConfig.FLAGS}, temperature=args.temperature,
                          gold_weight=args.gold_weight, hidden_loss=args.hidden_loss)
    teacher, _ = load(args.teacher_path)
    student, tokenizer = load(args.student)
    info, train, dev = loaders(args, tokenizer)
    t_logits, labels = outputs(teacher, dev)
    s_logits, _ = outputs(student, dev)
    lines = [f"{info.name} dev, {len(labels)} examples; teacher {args.teacher_path}, student {args.student}", ""]
    lines += prediction_table(info, t_logits, s_logits, labels)
    if any(getattr(dconf, f) for f in DistillConfig.FLAGS):
        lines += ["", f"loss terms, mean over {args.batches} training batches of {args.batch_size}:", ""]
        lines += gradient_table(term_gradients(student, teacher, dconf, info, train, args.batches, args.seed))
    print("\n".join(lines))
    if args.plot:
        plot(args.plot, info, t_logits, s_logits, labels)
        print(f"wrote {args.plot}")
    return lines, (t_logits, s_logits, labels)


if __name__ == "__main__":
    main()
