"""Time the full BiBERT distillation step against a full-precision fine-tuning step.

Same real batches for both (SST-2 train, dynamic padding), each model in its own process at
its best CPU setting (MKL default vs MKL_DEBUG_CPU_TYPE=5, OMP_NUM_THREADS threads), with a
per-phase breakdown: teacher forward, student forward, losses, backward, optimizer.
``distill-cached`` is the distillation step with the teacher's outputs assembled from memory
(``--teacher_cache_gb``: every batch scored once before the timed steps, as in a second epoch).

    python benchmarks/distill_step.py --shape minilm --batch_size 32 --max_seq_length 64 --steps 6

``--shape minilm`` uses the packaged MiniLM weights; ``bert-base`` a random BERT-base-shaped
model (no BERT-base weights ship offline; the timing does not depend on the values).
"""

import argparse
import json
import os
import platform
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GLUE = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "glue"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_settings import SETTINGS, run_worker, step_context  # noqa: E402
PHASES = ("teacher_fwd", "student_fwd", "losses", "backward", "optimizer")


def _model(shape, num_labels=2):
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification

    from paddle_bibert.convert import load_model

    if shape == "minilm":
        return load_model("minilm", BertForSequenceClassification, num_labels=num_labels)
    cfg = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, num_labels=num_labels)
    return BertForSequenceClassification(cfg)


def worker(args):
    import numpy as np
    import paddle

    import paddle_bibert  # noqa: F401
    from paddle_bibert import binarize_model
    from paddle_bibert.convert import load_tokenizer
    from paddle_bibert.data.glue import load_glue
    from paddle_bibert.data.loader import Collator, encode_examples, make_dataloader
    from paddle_bibert.distill import DistillConfig, Distiller, TeacherCache

    paddle.seed(0)
    tok = load_tokenizer("minilm")
    n = args.batch_size * (args.steps + args.warmup)
    feats = encode_examples(load_glue("sst-2", args.data_dir, "train")[:n], tok, "sst-2", args.max_seq_length)
    batches = list(make_dataloader(feats, args.batch_size, shuffle=True, seed=0, collate_fn=Collator(tok, "sst-2")))
    teacher = _model(args.shape)
    phases = {p: [] for p in PHASES}
    if args.model == "fp":
        model = teacher
        model.train()
    else:
        model = _model(args.shape)
        model.set_state_dict(teacher.state_dict())
        if args.model != "fp-distill":
            from paddle_bibert.surgery import BinarizeConfig

            binarize_model(model, BinarizeConfig.from_recipe(args.recipe, args.act_bits))
        model.train()
        losses = args.losses.split(",")
        unknown = set(losses) - set(DistillConfig.FLAGS)
        if unknown:
            sys.exit(f"--losses: unknown {sorted(unknown)}; choose from {', '.join(DistillConfig.FLAGS)}")
        cache = TeacherCache(tok.pad_token_id, 1e11, args.max_seq_length) if args.model == "distill-cached" else None
        dist = Distiller(model, teacher, DistillConfig(**{f: f in losses for f in DistillConfig.FLAGS}),
                         teacher_cache=cache)
        for b in batches if cache else ():  # the first epoch: every batch's outputs kept
            dist.teacher_forward(b)
    opt = paddle.optimizer.AdamW(learning_rate=1e-5, parameters=model.parameters(),
                                 lazy_mode=False)
    totals = []

    def tick():
        return time.perf_counter()

    with step_context():
        for i, b in enumerate(batches):
            t0 = tick()
            if args.model == "fp":
                ta = t0
                logits = model(b["input_ids"], token_type_ids=b["token_type_ids"])
                tb = tick()
                loss = paddle.nn.functional.cross_entropy(logits, b["labels"])
            else:
                t_out = dist.teacher_forward(b)
                ta = tick()
                s_out = dist.student_forward(b)
                tb = tick()
                loss, _ = dist.terms(*s_out, *t_out, b["labels"])
            float(loss)
            tc = tick()
            loss.backward()
            td = tick()
            opt.step()
            opt.clear_grad()
            te = tick()
            if i >= args.warmup:
                for p, v in zip(PHASES, (ta - t0, tb - ta, tc - tb, td - tc, te - td)):
                    phases[p].append(v)
                totals.append(te - t0)
    print(json.dumps({"median_s": float(np.median(totals)),
                      "phases": {p: float(np.median(v)) for p, v in phases.items()},
                      "seq_lens": [int(b["input_ids"].shape[1]) for b in batches],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="minilm", choices=["minilm", "bert-base"])
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--max_seq_length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data_dir", default=GLUE)
    ap.add_argument("--recipe", default="bibert", help="the student's recipe (paddle_bibert.surgery.RECIPES)")
    ap.add_argument("--act_bits", type=int, default=1)
    ap.add_argument("--losses", default="pred_distill,query_distill,key_distill,value_distill,intermediate_distill",
                    help="the distillation losses enabled (default: all five)")
    ap.add_argument("--models", default="fp,distill", help="comma list of fp, distill, fp-distill, distill-cached")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.model:
        return worker(args)
    results = {}
    argv = [a for a in sys.argv[1:]]
    for model in args.models.split(","):
        for name in args.settings.split(","):
            r = run_worker(__file__, model, name, argv, args.threads)
            results[(model, name)] = r
            ph = " ".join(f"{p} {v:.3f}" for p, v in r["phases"].items())
            print(f"{model:10s} {name:9s} {r['median_s']:.3f} s/step | {ph} | peak RSS {r['peak_rss_mb']:.0f} MB",
                  flush=True)
    models = args.models.split(",")
    best = {m: min((results[(m, s)]["median_s"], s) for s in args.settings.split(",")) for m in models}
    for m in models:
        if m != "fp" and "fp" in best:
            print(f"{m} / fp (best vs best): {best[m][0] / best['fp'][0]:.2f}x "
                  f"({best[m][0]:.3f} s [{best[m][1]}] vs {best['fp'][0]:.3f} s [{best['fp'][1]}])")
    if {"distill", "distill-cached"} <= set(models):
        print(f"distill-cached / distill (best vs best): {best['distill-cached'][0] / best['distill'][0]:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": platform.platform(),
                       "results": {f"{m}/{s}": r for (m, s), r in results.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
