"""How much of the live teacher's work the teacher cache leaves, by the headroom of a missed batch.

    python benchmarks/cache_headroom.py --data_dir ../shared/data/glue --tasks sst-2,cola,sts-b,mrpc

No model runs: the training set's token lengths go through the length-grouped batch sampler of
``task_distill --group_by_length`` for ``--epochs`` epochs, and a batch misses the cache where one
of its examples is not yet kept at the batch's length (``paddle_bibert.distill.cache``). A missed
batch runs the teacher padded to ``headroom`` x its length (at most ``--max_seq_length``; ``max``:
always that) and keeps its examples at that length. The table gives the teacher's tokens (batch
size x run length, summed) against the live teacher's, which runs every batch at its length.
"""

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def teacher_tokens(lengths, batch_size, epochs, headroom, max_length, seed=42):
    """(tokens the cached teacher scores, tokens the live teacher scores) over ``epochs``."""
    from paddle_bibert.data.loader import SeededBatchSampler

    sampler = SeededBatchSampler(list(range(len(lengths))), batch_size, shuffle=True, seed=seed, lengths=lengths)
    kept = np.zeros(len(lengths), int)
    cached = live = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in sampler:
            length = int(lengths[batch].max())
            live += len(batch) * length
            if (kept[batch] < length).any():
                run = max_length if headroom == "max" else max(length, min(max_length, math.ceil(length * headroom)))
                cached += len(batch) * run
                kept[batch] = np.maximum(kept[batch], run)
    return cached, live


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data_dir", required=True, help="a GLUE-layout folder")
    ap.add_argument("--tasks", default="sst-2,cola,sts-b,mrpc")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max_seq_length", default="64,pair=128",
                    help="tokens a single sentence / a pair is cut to, as the five-task table runs")
    ap.add_argument("--headrooms", default="1,1.125,1.25,1.5,max")
    args = ap.parse_args(argv)
    headrooms = [h if h == "max" else float(h) for h in args.headrooms.split(",")]
    single, pair = (int(x.split("=")[-1]) for x in args.max_seq_length.split(","))
    from paddle_bibert.convert import load_tokenizer
    from paddle_bibert.data.glue import get_task, load_glue
    from paddle_bibert.data.loader import encode_examples

    tok = load_tokenizer("minilm")
    print(f"teacher tokens with the cache / live, {args.epochs} epochs, batches of {args.batch_size}, "
          f"length-grouped\n")
    print("| task | mean length | " + " | ".join(f"headroom {h}" for h in headrooms) + " |")
    print("|---|---|" + "---|" * len(headrooms))
    for task in args.tasks.split(","):
        info = get_task(task)
        max_length = pair if info.is_pair else single
        feats = encode_examples(load_glue(info.name, args.data_dir, "train"), tok, info.name, max_length)
        lengths = np.array([len(f["input_ids"]) for f in feats])
        ratios = [teacher_tokens(lengths, args.batch_size, args.epochs, h, max_length) for h in headrooms]
        print(f"| {task} | {lengths.mean():.1f} | " + " | ".join(f"{c / l:.2f}" for c, l in ratios) + " |")


if __name__ == "__main__":
    main()
