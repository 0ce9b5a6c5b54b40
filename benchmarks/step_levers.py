"""Each CPU lever of the distillation step on its own: the training time of the same short
``task_distill`` run (the main job's student: BiT's recipe and loss, batch 16, length-grouped
Rotten Tomatoes batches) under each setting, in interleaved rounds.

    python benchmarks/step_levers.py --teacher_path runs/quickstart/teacher --steps 60 --rounds 2

Settings: threads (1 / 2), Intel OpenMP's spin after each MKL call (``KMP_BLOCKTIME``: 200 ms, its
default; 0; or unset, when the prefetch turns it off in its own two threads), the teacher's
outputs computed one batch ahead in a thread (``--teacher_prefetch``), and two recipe levers
whose accuracy the main job's runs measure: no dropout in the student (``--student_dropout 0``)
and frozen word embeddings (``--freeze_word_embeddings``).
Each run is its own process (the variables are read when Paddle loads); the time is the run's
``training_seconds``
(evaluation and checkpoints excluded). The table gives every run, the median per step and the
ratio to the baseline (2 threads, Intel's default spin, live teacher: the step before these
levers).
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from accuracy import cpu_model  # noqa: E402

PREFETCH, NO_DROPOUT, FROZEN = ["--teacher_prefetch"], ["--student_dropout", "0"], ["--freeze_word_embeddings"]
#: name -> (what it is, OMP_NUM_THREADS, KMP_BLOCKTIME or None (unset), extra task_distill flags)
SETTINGS = {
    "baseline": ("2 thr, MKL spin 200 ms, live teacher", "2", "200", []),
    "no_spin": ("2 thr, MKL spin 0, live teacher", "2", "0", []),
    "prefetch_spin": ("2 thr, MKL spin 200 ms, prefetch", "2", "200", PREFETCH),
    "prefetch": ("2 thr, prefetch, spin 0 in its two threads", "2", None, PREFETCH),
    "1thr": ("1 thr, live teacher", "1", None, []),
    "1thr_prefetch": ("1 thr, prefetch", "1", None, PREFETCH),
    "no_dropout": ("2 thr, student dropout 0", "2", None, NO_DROPOUT),
    "frozen": ("2 thr, word embeddings frozen", "2", None, FROZEN),
    "no_dropout_frozen": ("2 thr, both", "2", None, NO_DROPOUT + FROZEN),
}
BASELINE = next(iter(SETTINGS))


def student_argv(args, out):
    return ["--task_name", "movie-reviews", "--max_seq_length", "64", "--seed", "42",
            "--logging_steps", "20", "--save_steps", "100000", "--max_steps", str(args.steps),
            "--no_progress", "--group_by_length", "--teacher_path", args.teacher_path,
            "--learning_rate", "5e-4", "--batch_size", "16", "--num_train_epochs", "2",
            "--output_dir", out, "--bi", "--recipe", "bit", "--pred_distill", "--intermediate_distill",
            "--hidden_loss", "mse", "--gold_weight", "0", "--ema_decay", "0.99"]


def run_one(args, setting, workdir, i):
    _, threads, blocktime, extra = SETTINGS[setting]
    out = os.path.join(workdir, f"run{i}")
    env = {k: v for k, v in os.environ.items() if k != "KMP_BLOCKTIME"}
    env.update(OMP_NUM_THREADS=threads, **({} if blocktime is None else {"KMP_BLOCKTIME": blocktime}))
    argv = student_argv(args, out) + extra
    res = subprocess.run([sys.executable, os.path.join(REPO, "examples", "task_distill.py"), *argv],
                         env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"run under {setting!r} failed:\n{res.stderr[-3000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)["training_seconds"]


def table(args, times) -> list:
    base = statistics.median(times[BASELINE]) / args.steps
    lines = [f"{args.steps} steps per run, {args.rounds} round(s), {cpu_model()}, "
             f"{datetime.date.today()}", "",
             "| setting | training s per run | median s/step | vs baseline |", "|---|---|---|---|"]
    for name, ts in times.items():
        per = statistics.median(ts) / args.steps
        lines.append(f"| {name}: {SETTINGS[name][0]} | {' / '.join(f'{t:.1f}' for t in ts)} | {per:.3f} | {per / base:.2f}x |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher_path", required=True, help="a fine-tuned Rotten Tomatoes teacher (run_glue.py's folder)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2, help="each setting once per round, rounds interleaved")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of the names")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.settings.split(",")]
    unknown = [s for s in chosen if s not in SETTINGS]
    if unknown or BASELINE not in chosen:
        ap.error(f"--settings: unknown {unknown}" if unknown else f"--settings must include {BASELINE!r}")
    if args.steps < 1 or args.rounds < 1:
        ap.error("--steps and --rounds must be >= 1")
    if not os.path.isdir(args.teacher_path):
        ap.error(f"--teacher_path {args.teacher_path}: no such folder (train one: python examples/quickstart.py)")
    times = {s: [] for s in chosen}
    with tempfile.TemporaryDirectory() as workdir:
        i = 0
        for _ in range(args.rounds):
            for s in chosen:
                times[s].append(run_one(args, s, workdir, i))
                print(f"{s}: {times[s][-1]:.1f} s", flush=True)
                i += 1
    lines = table(args, times)
    print("\n".join(lines))
    return times


if __name__ == "__main__":
    main()
