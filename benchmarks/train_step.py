"""Time one training step of a binarized BERT against the full-precision one, same batch.

Each (model, CPU setting) runs in its own process, because MKL and OpenMP read their
environment at load time; every model is scored at its best setting, and the ratio compares
the bests (an FP baseline timed off its fast path would flatter binarization).

    python benchmarks/train_step.py --shape minilm --batch_size 32 --seq_len 64 --steps 10
"""

import argparse
import json
import os
import platform
import sys
import time

SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
}
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_settings import SETTINGS, run_worker, step_context  # noqa: E402


def worker(args):
    import numpy as np
    import paddle
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification

    from paddle_bibert import binarize_model

    paddle.seed(0)
    cfg = BertConfig(vocab_size=30522, max_position_embeddings=512, num_labels=2, **SHAPES[args.shape])
    model = BertForSequenceClassification(cfg)
    if args.model == "bi":
        binarize_model(model)
    model.train()
    rng = np.random.default_rng(0)
    ids = paddle.to_tensor(rng.integers(1, 30522, (args.batch_size, args.seq_len)))
    labels = paddle.to_tensor(rng.integers(0, 2, (args.batch_size,)))
    opt = paddle.optimizer.AdamW(learning_rate=1e-5, parameters=model.parameters())
    times = []
    with step_context():
        for step in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            loss = paddle.nn.functional.cross_entropy(model(ids), labels)
            loss.backward()
            opt.step()
            opt.clear_grad()
            float(loss)
            times.append(time.perf_counter() - t0)
    times = times[args.warmup:]
    import resource
    print(json.dumps({"median_s": float(np.median(times)), "min_s": float(min(times)),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="minilm", choices=sorted(SHAPES))
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--seq_len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma list of " + ", ".join(SETTINGS))
    ap.add_argument("--model", choices=["fp", "bi"], help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.model:
        return worker(args)
    results = {}
    settings = args.settings.split(",")
    for model in ("fp", "bi"):
        for name in settings:
            r = run_worker(__file__, model, name, sys.argv[1:], args.threads)
            results[(model, name)] = r
            print(f"{model:3s} {name:9s} median {r['median_s']:.3f} s/step (min {r['min_s']:.3f})  "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    best = {m: min((results[(m, s)]["median_s"], s) for s in settings) for m in ("fp", "bi")}
    ratio = best["bi"][0] / best["fp"][0]
    print(f"best fp {best['fp'][0]:.3f} s ({best['fp'][1]}), best bi {best['bi'][0]:.3f} s "
          f"({best['bi'][1]}): binarized/fp = {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "cpu": platform.processor() or platform.machine(),
                       "results": {f"{m}/{s}": r for (m, s), r in results.items()},
                       "ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
