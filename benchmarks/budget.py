"""What the reference training schedule would cost on this machine, from runs that finished.

BiBERT's reference schedule (docs/algorithms.md, section 4: batch 16 and, per task, 10 epochs on
SST-2, 50 on CoLA, 20 on MRPC, STS-B and RTE) or, with ``--schedule bit``, the defaults of BiT's
code (the same epochs, at batch 8 except CoLA's 16) against the benchmark's budgets: for every
finished run of a ``benchmarks/accuracy.py --out_dir`` this prints its seconds per step
(``train_seconds / global_step``, dev evaluations included, under whatever contention the run
had), the reference number of steps for its task, and the hours those steps would take at that
rate per example (a reference batch half the run's: twice the steps at the run's cost per
example, a first-order estimate). Nothing is trained.

    python benchmarks/budget.py --out_dir runs/accuracy --data_dir ../shared/data/glue \\
        --tasks sst-2,cola,mrpc,sts-b,rte --variants bibert,baseline
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from accuracy import _summary as finished_run  # noqa: E402  (a run's summary once it finished, else None)

# docs/algorithms.md, section 4, "Reference schedule": epochs per task at batch 16
REFERENCE_EPOCHS = {"sst-2": 10, "cola": 50, "mrpc": 20, "sts-b": 20, "rte": 20, "mnli": 5, "qqp": 5, "qnli": 10}
REFERENCE_BATCH = 16
# BiT's code (facebookresearch/bit, utils_glue.default_params): (epochs, batch) per task
BIT_SCHEDULE = {"sst-2": (10, 8), "cola": (50, 16), "mrpc": (20, 8), "sts-b": (20, 8), "rte": (20, 8),
                "mnli": (6, 16), "qqp": (6, 32), "qnli": (10, 8)}
SCHEDULES = {"bibert": {t: (e, REFERENCE_BATCH) for t, e in REFERENCE_EPOCHS.items()}, "bit": BIT_SCHEDULE}


def project(out_dir, data_dir, tasks, variants, schedule="bibert"):
    """One row per (task, variant) with a finished run: measured and projected cost."""
    from paddle_bibert.data.glue import load_glue

    rows = []
    for task in tasks:
        if task not in SCHEDULES[schedule]:
            raise SystemExit(f"budget.py: no reference schedule for task {task!r}; known: "
                             f"{', '.join(sorted(SCHEDULES[schedule]))}")
        epochs, ref_batch = SCHEDULES[schedule][task]
        n_train = len(load_glue(task, data_dir, "train"))
        ref_steps = epochs * math.ceil(n_train / ref_batch)
        for variant in variants:
            s = finished_run(os.path.join(out_dir, task, variant))
            if s is None or not s.get("global_step"):
                continue
            batch = s.get("arguments", {}).get("batch_size", REFERENCE_BATCH)  # the run's own
            per_epoch = math.ceil(n_train / batch)
            sec = s["train_seconds"] / s["global_step"]
            rows.append({"task": task, "variant": variant, "n_train": n_train, "steps_per_epoch": per_epoch,
                         "steps_run": s["global_step"], "epochs_run": s["global_step"] / per_epoch,
                         "seconds_per_step": sec, "reference_epochs": epochs, "reference_batch": ref_batch,
                         "reference_steps": ref_steps,
                         "reference_hours": ref_steps * sec * ref_batch / batch / 3600})
    return rows


def table(rows):
    out = ["| task | variant | train examples | steps run (epochs) | s/step | reference steps (epochs, batch) | "
           "hours at that rate |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['task']} | {r['variant']} | {r['n_train']:,} | {r['steps_run']:,} ({r['epochs_run']:.2f}) | "
                   f"{r['seconds_per_step']:.2f} | {r['reference_steps']:,} ({r['reference_epochs']}, {r['reference_batch']}) | "
                   f"{r['reference_hours']:.1f} |")
    by_variant = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
    for v, rs in by_variant.items():
        out.append(f"| all listed | {v} | | {sum(r['steps_run'] for r in rs):,} | | "
                   f"{sum(r['reference_steps'] for r in rs):,} | {sum(r['reference_hours'] for r in rs):.1f} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out_dir", required=True, help="an accuracy.py --out_dir with finished runs")
    p.add_argument("--data_dir", default=os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "glue")))
    p.add_argument("--tasks", default="sst-2,cola,mrpc,sts-b,rte")
    p.add_argument("--variants", default="bibert,baseline")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="bibert",
                   help="whose reference schedule: BiBERT's (batch 16) or BiT's code's defaults")
    p.add_argument("--json", default="", help="also write the rows here")
    a = p.parse_args(argv)
    if not os.path.isdir(a.out_dir):
        raise SystemExit(f"budget.py: --out_dir {a.out_dir} is not a folder; pass the --out_dir of an "
                         "accuracy.py run")
    rows = project(a.out_dir, a.data_dir, [t.strip().lower() for t in a.tasks.split(",") if t.strip()],
                   [v.strip() for v in a.variants.split(",") if v.strip()], a.schedule)
    if not rows:
        raise SystemExit(f"budget.py: no finished run under {a.out_dir} for these tasks and variants")
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
