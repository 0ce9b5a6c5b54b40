"""What the reference training schedule would cost on this machine, from runs that finished.

BiBERT's reference schedule (docs/algorithms.md, section 4: batch 16 and, per task, 10 epochs on
SST-2, 50 on CoLA, 20 on MRPC, STS-B and RTE) against the benchmark's budgets: for every
finished run of a ``benchmarks/accuracy.py --out_dir`` this prints its seconds per step
(``train_seconds / global_step``, dev evaluations included, under whatever contention the run
had), the reference number of steps for its task, and the hours those steps would take at that
rate. Nothing is trained.

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


def project(out_dir, data_dir, tasks, variants, batch_size=REFERENCE_BATCH):
    """One row per (task, variant) with a finished run: measured and projected cost."""
    from paddle_bibert.data.glue import load_glue

    rows = []
    for task in tasks:
        if task not in REFERENCE_EPOCHS:
            raise SystemExit(f"budget.py: no reference schedule for task {task!r}; known: "
                             f"{', '.join(sorted(REFERENCE_EPOCHS))}")
        n_train = len(load_glue(task, data_dir, "train"))
        per_epoch = math.ceil(n_train / batch_size)
        ref_steps = REFERENCE_EPOCHS[task] * per_epoch
        for variant in variants:
            s = finished_run(os.path.join(out_dir, task, variant))
            if s is None or not s.get("global_step"):
                continue
            sec = s["train_seconds"] / s["global_step"]
            rows.append({"task": task, "variant": variant, "n_train": n_train, "steps_per_epoch": per_epoch,
                         "steps_run": s["global_step"], "epochs_run": s["global_step"] / per_epoch,
                         "seconds_per_step": sec, "reference_epochs": REFERENCE_EPOCHS[task],
                         "reference_steps": ref_steps, "reference_hours": ref_steps * sec / 3600})
    return rows


def table(rows):
    out = ["| task | variant | train examples | steps run (epochs) | s/step | reference steps (epochs) | "
           "hours at that rate |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['task']} | {r['variant']} | {r['n_train']:,} | {r['steps_run']:,} ({r['epochs_run']:.2f}) | "
                   f"{r['seconds_per_step']:.2f} | {r['reference_steps']:,} ({r['reference_epochs']}) | "
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
    p.add_argument("--json", default="", help="also write the rows here")
    a = p.parse_args(argv)
    if not os.path.isdir(a.out_dir):
        raise SystemExit(f"budget.py: --out_dir {a.out_dir} is not a folder; pass the --out_dir of an "
                         "accuracy.py run")
    rows = project(a.out_dir, a.data_dir, [t.strip().lower() for t in a.tasks.split(",") if t.strip()],
                   [v.strip() for v in a.variants.split(",") if v.strip()])
    if not rows:
        raise SystemExit(f"budget.py: no finished run under {a.out_dir} for these tasks and variants")
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
