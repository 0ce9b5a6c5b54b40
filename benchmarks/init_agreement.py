"""How much of the teacher survives binarization, before any training, recipe by recipe.

For a fine-tuned teacher and real dev sentences, each recipe binarizes a copy of the teacher (one
training-mode forward initialises learned scales), then this prints, per hidden state (embedding
output, then each layer), the centred cosine between the student's and the teacher's states over
all non-padding tokens, and how often the student's predicted label equals the teacher's (on a
regression task: the Pearson correlation of their scores). A recipe whose states decorrelate
within a layer or two starts distillation from scratch; one that keeps them starts near the
teacher.

    python benchmarks/init_agreement.py --teacher runs/sst-2/teacher --task sst-2 \\
        --data_dir ../shared/data/glue --recipes bibert,baseline,bibert_elastic,bit,bit:2

With ``--start`` the students start from another run's latent weights instead of the teacher's,
as the second step of a two-step route does (a W1A1 student from a trained W1A2 one); the start
model itself, as trained, is the first row.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import paddle_bibert  # noqa: E402,F401  (CPU defaults before Paddle loads)


def centred_cos(a, b):
    a = a - a.mean(0)
    b = b - b.mean(0)
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def recipe_config(spec):
    """``bit``, ``bit:2`` or ``bit@act_quantizer=elastic_sign_mean`` (fields after @, joined by @)
    -> (BinarizeConfig, row label)."""
    import yaml

    from paddle_bibert import BinarizeConfig

    recipe, *fields = spec.split("@")
    name, _, bits = recipe.partition(":")
    if not all("=" in f for f in fields):
        raise SystemExit(f"--recipes {spec}: write field overrides as @field=value")
    overrides = {k: yaml.safe_load(v) for k, v in (f.split("=", 1) for f in fields)}  # "false" -> False
    try:
        config = BinarizeConfig.from_dict({"recipe": name, "act_bits": int(bits or "1"), **overrides})
    except (ValueError, TypeError) as e:  # an unknown recipe or field, bits that are no integer
        raise SystemExit(f"--recipes {spec}: {e}") from None
    return config, " ".join([f"{config.recipe} W1A{config.act_bits}", *fields])


def agreement(s_logits, t_logits):
    """Share of equal predicted labels, or for one output (regression) the scores' Pearson r."""
    if s_logits.shape[-1] == 1:
        return float(np.corrcoef(s_logits[:, 0], t_logits[:, 0])[0, 1])
    return float((s_logits.argmax(-1) == t_logits.argmax(-1)).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="a fine-tuned teacher (run_glue.py output folder)")
    ap.add_argument("--task", default="sst-2")
    ap.add_argument("--data_dir", default=os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "glue")))
    ap.add_argument("--recipes", default="bibert,baseline,bibert_elastic,bit,bit:2",
                    help="comma-separated recipe[:act_bits][@field=value...] (BinarizeConfig fields)")
    ap.add_argument("--n", type=int, default=64, help="dev sentences")
    ap.add_argument("--max_seq_length", type=int, default=64)
    ap.add_argument("--start", default="",
                    help="the students' starting weights: a run folder (e.g. a W1A2 student's); default the teacher")
    args = ap.parse_args(argv)

    import paddle
    from paddlenlp.transformers import BertForSequenceClassification

    from paddle_bibert import Taps, binarize_model
    from paddle_bibert.commands import resolve_model_path
    from paddle_bibert.convert import load_model, load_tokenizer
    from paddle_bibert.data.glue import get_task, load_glue
    from paddle_bibert.data.loader import Collator, encode_examples
    from paddle_bibert.surgery import CONFIG_NAME, load_binarized

    path = resolve_model_path(args.teacher)
    start = resolve_model_path(args.start) if args.start else path
    if not os.path.isdir(start):
        raise SystemExit(f"--start {args.start}: no such folder (give a run's best_model/ folder)")
    tok = load_tokenizer(path)
    info = get_task(args.task)
    dev = load_glue(info.name, args.data_dir, info.dev_splits[0])[: args.n]
    batch = Collator(tok, info.name)(encode_examples(dev, tok, info.name, args.max_seq_length))
    keep = batch["input_ids"].numpy() != tok.pad_token_id

    def forward(model):
        model.eval()
        with paddle.no_grad(), Taps(model, ("hidden",)) as taps:
            logits = model(batch["input_ids"], token_type_ids=batch["token_type_ids"])
            hidden = [h.numpy()[keep] for h in taps.records["hidden"]]
        return logits.numpy(), hidden

    teacher = load_model(path, BertForSequenceClassification)
    t_logits, t_hidden = forward(teacher)
    print(f"teacher {path}, task {info.name}, {len(dev)} dev sentences, {int(keep.sum())} tokens")
    head = " | ".join(["emb"] + [f"L{i}" for i in range(1, len(t_hidden))])
    last = "score correlation with teacher" if info.is_regression else "same label as teacher"
    lines = [f"| student | {head} | {last} |", "|---" * (len(t_hidden) + 2) + "|"]

    def row(name, logits, hidden):
        cos = [centred_cos(s, t) for s, t in zip(hidden, t_hidden)]
        return f"| {name} | " + " | ".join(f"{c:.2f}" for c in cos) + f" | {agreement(logits, t_logits):.2f} |"

    if args.start and os.path.isfile(os.path.join(start, CONFIG_NAME)):
        lines.append(row("start, as trained", *forward(load_binarized(start))))
    for spec in args.recipes.split(","):
        config, label = recipe_config(spec)
        student = load_model(start, BertForSequenceClassification)
        binarize_model(student, config)
        student.train()
        with paddle.no_grad():  # learned scales start on a training batch
            student(batch["input_ids"], token_type_ids=batch["token_type_ids"])
        lines.append(row(label, *forward(student)))
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
