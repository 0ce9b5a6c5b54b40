"""Accuracy on real data: teacher, BiBERT student, plain baseline and the paper's two ablations.

For each task it runs (through the same code as the two commands):

    teacher        run_glue.py (full precision)
    bibert         task_distill.py --bi, Bi-Attention (bool), all five distill flags
    baseline       the paper's baseline: sign-binarized softmax attention, all five flags
    bibert_pred    Bi-Attention, --pred_distill only (ablation: no DMD)
    baseline_pred  sign-binarized softmax attention, --pred_distill only
    bit            BiT's 1-1-1 quantizers (``--recipe bit``: elastic activations, one weight scale
                   per matrix, {0,a} softmax map and ReLU-FFN input), all five flags: the lever
                   from docs/algorithms.md, section 5, that this package adds
    bit_mse        BiT's quantizers with BiT's own loss: soft CE (no gold term) + hidden-state MSE
    bit_mse_ema    bit_mse, evaluated and kept as an average of its weights (--ema_decay 0.99)
    bit_pred_ema   bit_mse_ema without the hidden-state term: the soft cross-entropy alone
    bit_rep_ema    bit_mse_ema without the prediction term: the hidden-state MSE alone, which is
                   what BiT's code trains a regression task with (its soft cross-entropy over
                   STS-B's single output is 0), the head staying the teacher's
    bit_a2, bit_a4 BiT's quantizers with 2- / 4-bit activations (W1A2, W1A4), all five flags
    bit_2step      BiT's multi-step distillation: the bit_a2 student teaches, and initialises, a
                   W1A1 BiT student (needs bit_a2 listed before it)
    bit_mse_ema_a2, bit_mse_ema_2step
                   the same two steps with bit_mse_ema's loss and weight average: W1A2 first,
                   then the W1A1 student it teaches and initialises
    binarybert, binarybert_a2, binarybert_a4
                   BinaryBERT-style 1-1-1 / 1-1-2 / 1-1-4 (sign or LSQ activations, softmax kept
                   and quantized), all five flags, so every recipe has one footing
    fp, fp_mse     a full-precision student (no --bi) with all five flags / with bit_mse's loss:
                   where it does not learn either, the distillation setup is at fault, not the
                   binarization

``grid`` stands for the paper's ablation grid, {Bi-Attention, sign-softmax} x {all five terms,
prediction only}: bibert,baseline,bibert_pred,baseline_pred. A variant takes modifiers after
``+``: ``+bertadam`` (``--optimizer bertadam``), ``+padmax`` (``--pad_to_max_length``), ``+glen``
(``--group_by_length``), ``+gold`` (``--gold_weight 0.5``: the gold labels' cross-entropy beside the
soft one, for a recipe whose loss has none), ``+drop0`` (``--student_dropout 0``), ``+frozen``
(``--freeze_word_embeddings``), ``+ramp`` (``--act_ramp 0.5``: activations go from full precision
to binary over the first half of the steps), ``+fppool`` (the pooler kept in full precision),
``+meaninit`` (the binarized linears' input scales start at mean|x|), ``+gelu`` (the teacher's
GELU kept in the FFN), ``+chanw`` (a weight scale per output channel instead of per matrix), and the
ablations ``+fpact`` (every activation, Q/K/V and the attention map in full precision: binary
weights only), ``+fpweights`` (full-precision weights and word embeddings: binary activations
only) and ``+fpmap`` (the attention map alone in full precision), and ``+lr<rate>`` (the
variant's own learning rate, e.g. ``+lr1e-4``, over ``--student_lr``), ``+aug<N>`` (``--augment
N``: N perturbed copies of each training example, labelled by the teacher), ``+tf<F>``
(``--teacher_forcing F``: the student's layers fed the teacher's hidden states, fading out over
the first fraction F of the steps), ``+budget<F>`` (F times the task's student budget, epochs or
steps: ``+budget0.5`` gives a recipe whose step costs twice as much the same minutes),
``+ema<decay>`` (``--ema_decay``: the weight average's decay, e.g. ``+ema0.999``), ``+reflr``
(each task's student rate from ``configs/<task>.yaml``, BiBERT's authors' rates), e.g.
``bibert+bertadam+padmax``; each such run has its own folder.
The main job's student is ``bit_mse_ema+glen+drop0+frozen+meaninit``.

It writes a markdown table (task metric per cell, retention = student / teacher) with each
run's budget, plus a PNG plot. Every run is resumable: a finished run is skipped, an interrupted
one continues from its last checkpoint (``--resume`` is passed), so the whole benchmark can be
stopped and restarted at any point.

    python benchmarks/accuracy.py --tasks sst-2,cola,mrpc,sts-b,rte --teacher_epochs 1 \\
        --student_steps 300 --out_dir runs/accuracy --table benchmarks/accuracy_table.md

Budgets (``--teacher_epochs/_steps/_lr``, ``--student_steps/_epochs/_lr``, ``--save_steps``) take
one value or per-task values, a bare value being the default: ``--student_steps 400,sst-2=1000``.
BiBERT's reference schedule (docs/algorithms.md, section 4; ``benchmarks/budget.py`` says what it would
cost here) is

    --batch_size 16 --student_epochs sst-2=10,cola=50,mrpc=20,sts-b=20,rte=20 \
        --student_lr 1e-4,mrpc=2e-4,rte=1e-5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import paddle_bibert  # noqa: E402,F401  (CPU defaults before Paddle loads)
from paddle_bibert.commands import run_glue, task_distill  # noqa: E402

GLUE = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "glue"))
ALL_FLAGS = ["--pred_distill", "--query_distill", "--key_distill", "--value_distill", "--intermediate_distill"]
BIT_LOSS_EMA = ["--pred_distill", "--intermediate_distill", "--hidden_loss", "mse", "--gold_weight", "0",
                    "--ema_decay", "0.99"]
# name -> (student binarize config, distillation flags[, the variant whose best student teaches
# and initialises this one instead of the full-precision teacher])
VARIANTS = {
    "bibert": ({"attention": "bool"}, ALL_FLAGS),
    "baseline": ({"attention": "softmax_sign"}, ALL_FLAGS),
    "bibert_pred": ({"attention": "bool"}, ["--pred_distill"]),
    "baseline_pred": ({"attention": "softmax_sign"}, ["--pred_distill"]),
    "bit": ({"recipe": "bit"}, ALL_FLAGS),
    "bit_mse": ({"recipe": "bit"}, ["--pred_distill", "--intermediate_distill", "--hidden_loss", "mse",
                                    "--gold_weight", "0"]),
    "bit_mse_ema": ({"recipe": "bit"}, BIT_LOSS_EMA),
    "bit_pred_ema": ({"recipe": "bit"}, ["--pred_distill", "--gold_weight", "0", "--ema_decay", "0.99"]),
    "bit_rep_ema": ({"recipe": "bit"}, ["--intermediate_distill", "--hidden_loss", "mse", "--ema_decay", "0.99"]),
    "bit_a2": ({"recipe": "bit", "act_bits": 2}, ALL_FLAGS),
    "bit_a4": ({"recipe": "bit", "act_bits": 4}, ALL_FLAGS),
    "bit_2step": ({"recipe": "bit"}, ALL_FLAGS, "bit_a2"),
    "bit_mse_ema_a2": ({"recipe": "bit", "act_bits": 2}, BIT_LOSS_EMA),
    "bit_mse_ema_2step": ({"recipe": "bit"}, BIT_LOSS_EMA, "bit_mse_ema_a2"),
    "binarybert": ({"recipe": "binarybert"}, ALL_FLAGS),
    "binarybert_a2": ({"recipe": "binarybert", "act_bits": 2}, ALL_FLAGS),
    "binarybert_a4": ({"recipe": "binarybert", "act_bits": 4}, ALL_FLAGS),
    "fp": (None, ALL_FLAGS),
    "fp_mse": (None, ["--pred_distill", "--intermediate_distill", "--hidden_loss", "mse", "--gold_weight", "0"]),
}
GROUPS = {"grid": "bibert,baseline,bibert_pred,baseline_pred"}
MODIFIERS = {"bertadam": ["--optimizer", "bertadam"], "padmax": ["--pad_to_max_length"],
             "glen": ["--group_by_length"], "gold": ["--gold_weight", "0.5"],
             "drop0": ["--student_dropout", "0"], "frozen": ["--freeze_word_embeddings"],
             "ramp": ["--act_ramp", "0.5"],
             # the teacher's outputs kept in memory from the first epoch on (MiniLM: ~2 GB a task)
             "tcache": ["--teacher_cache_gb", "8"],
             # the student learning rate of configs/<task>.yaml (BiBERT's authors' rate for the
             # task), added per task where the student's arguments are made (reference_lr)
             "reflr": [],
             # a dict changes the student's BinarizeConfig instead of its flags
             "fppool": {"pooler": False},
             # every binarized linear's input scale starts at mean|x| (least squares), not BiT's 2 mean|x|
             "meaninit": {"act_quantizer": "elastic_sign_mean"},
             # one weight scale per output channel (mean_0 |W|, BiBERT's) instead of BiT's one per matrix
             "chanw": {"weight_quantizer": "channel_mean_sign"},
             # the teacher's GELU kept in the student's FFN instead of BiT's ReLU: with every
             # quantizer off, the ReLU alone leaves an untrained student little of a GELU teacher
             "gelu": {"ffn_activation": "gelu"},
             # ablations: which part of the binarization keeps a student from learning a task
             "fpact": {"act_quantizer": "none", "qkv_quantizer": "none", "attention_quantizer": "none",
                       "ffn_out_act_quantizer": "none"},
             "fpweights": {"weight_quantizer": "none", "embedding_quantizer": "none"},
             "fpmap": {"attention_quantizer": "none"}}
#: modifiers that change what only a 1-bit student has: not for a W1A2/W1A4 student, and a two-step
#: variant's first (W1A2) step is taught without them (bit_mse_ema_2step+meaninit by bit_mse_ema_a2)
ONE_BIT_MODIFIERS = {"meaninit"}
DEFAULT_VARIANTS = "grid"


def modifier(m):
    """A modifier's flags or BinarizeConfig fields: ``MODIFIERS[m]``, or for ``lr<value>`` (e.g.
    ``+lr1e-4``) the variant's own learning rate over ``--student_lr``, so that recipes trained at
    different rates share one invocation and one table. None if ``m`` is neither."""
    if m in MODIFIERS:
        return MODIFIERS[m]
    if m.startswith("aug") and m[3:].isdigit():  # +aug4: four perturbed copies of each example
        return ["--augment", m[3:]]
    if m.startswith("tf"):  # +tf0.5: teacher forcing over the first half of the steps
        try:
            if 0 < float(m[2:]) <= 1:
                return ["--teacher_forcing", m[2:]]
        except ValueError:
            pass
    if m.startswith("lr"):
        try:
            if float(m[2:]) > 0:
                return ["--learning_rate", m[2:]]
        except ValueError:
            pass
    if m.startswith("ema"):  # +ema0.999: the weight average over ~1,000 steps instead of ~100
        try:
            if 0 < float(m[3:]) < 1:
                return ["--ema_decay", m[3:]]
        except ValueError:
            pass
    if m.startswith("budget"):  # a float: neither flags nor config, read by budget_scale()
        try:
            if float(m[6:]) > 0:
                return float(m[6:])
        except ValueError:
            pass
    return None


def budget_scale(name) -> float:
    """The factor a variant's ``+budget<F>`` modifiers put on its task's student budget (1 if none)."""
    scale = 1.0
    for m in name.split("+")[1:]:
        if isinstance(modifier(m), float):
            scale *= modifier(m)
    return scale


def variant(name):
    """``bibert+bertadam`` -> (binarize config, flags[, teacher variant]) with the modifiers' flags
    and BinarizeConfig fields. A two-step variant's teacher carries the same modifiers
    (``bit_2step+glen`` is taught by ``bit_a2+glen``): both steps train alike, except in what only
    the 1-bit step has (``ONE_BIT_MODIFIERS``)."""
    base, *mods = name.split("+")
    binarize, flags, *dep = VARIANTS[base]
    fields = {k: v for m in mods if isinstance(modifier(m), dict) for k, v in modifier(m).items()}
    flags = flags + [f for m in mods if isinstance(modifier(m), list) for f in modifier(m)]
    dep = ["+".join([dep[0], *(m for m in mods if m not in ONE_BIT_MODIFIERS)])] if dep else []
    return ({**binarize, **fields} if fields else binarize, flags, *dep)


def expand(variants: str) -> list:
    return [v for part in variants.split(",") for v in GROUPS.get(part, part).split(",")]
PAIR_TASKS = {"mrpc", "sts-b", "rte", "qqp", "mnli", "qnli", "wnli"}


class PerTask:
    """A budget value for every task, or per task: ``300``, or ``300,cola=1000`` (the bare value
    is the default), or ``sst-2=1000,mrpc=400`` (then every task run needs its own)."""

    def __init__(self, cast, text):
        self.text, self.default, self.by_task = str(text), None, {}
        for part in filter(None, (p.strip() for p in str(text).split(","))):
            task, eq, value = part.rpartition("=")
            try:
                v = cast(value)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{value!r} in {text!r} is not a {cast.__name__}; write e.g. 300 or "
                    "300,cola=1000") from None
            if eq:
                self.by_task[task.strip().lower()] = v
            else:
                self.default = v

    def __getitem__(self, task):
        if task.lower() in self.by_task:
            return self.by_task[task.lower()]
        if self.default is None:
            raise SystemExit(f"accuracy.py: no value for task {task!r} in {self.text!r}; add "
                             f"{task}=<value> or a bare default")
        return self.default

    def __str__(self):
        return self.text


def per_task(cast):
    def parse(text):
        return PerTask(cast, text)
    parse.__name__ = cast.__name__
    return parse


def _summary(path):
    p = os.path.join(path, "summary.json")
    if os.path.isfile(p):
        with open(p) as f:
            s = json.load(f)
        if s.get("finished"):
            return s
    return None


def _run(fn, argv, out, log):
    done = _summary(out)
    if done:
        log(f"  {out}: finished earlier, kept")
        return done
    resume = ["--resume"] if os.path.isdir(out) else []
    t0 = time.time()
    s = fn(argv + ["--output_dir", out] + resume, log=lambda m: log("    " + m) if m.startswith("[eval]") else None)
    s["wall_minutes"] = (time.time() - t0) / 60
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(s, f, indent=1)
    return s


def run_task(task, args, log):
    seq = args.pair_seq_len if task in PAIR_TASKS else args.max_seq_length
    common = ["--task_name", task, "--data_dir", args.data_dir, "--max_seq_length", str(seq),
              "--batch_size", str(args.batch_size), "--seed", str(args.seed), "--logging_steps", "1000000",
              "--save_steps", str(args.save_steps[task]), "--no_progress"]
    tdir = os.path.join(args.out_dir, task, "teacher")
    log(f"[{task}] teacher")
    teacher = _run(run_glue, common + ["--model_name_or_path", args.model, "--learning_rate",
                                       str(args.teacher_lr[task]), "--num_train_epochs",
                                       str(args.teacher_epochs[task]), "--max_steps",
                                       str(args.teacher_steps[task])]
                   + (["--group_by_length"] if args.teacher_group_by_length else []), tdir, log)
    rows = {"teacher": teacher}
    for name in [] if args.teachers_only else expand(args.variants):
        binarize, flags, *dep = variant(name)
        teacher_dir = os.path.join(args.out_dir, task, dep[0]) if dep else tdir
        out = os.path.join(args.out_dir, task, name)
        os.makedirs(out, exist_ok=True)
        cfg = os.path.join(out, "variant.yaml")
        with open(cfg, "w") as f:
            yaml.safe_dump({"student": {"binarize": binarize, "bi": binarize is not None}}, f)
        log(f"[{task}] {name}")
        init = ["--student_model_name_or_path", teacher_dir] if dep else []
        rows[name] = _run(task_distill, common + ["--config", cfg, "--teacher_path", teacher_dir,
                                                  "--learning_rate", str(args.student_lr[task])]
                          + _student_length(args, task, second_step=bool(dep), scale=budget_scale(name))
                          + init + flags + reference_lr(name, task),
                          out, log)
    return rows


def reference_lr(name, task) -> list:
    """``--learning_rate`` of ``configs/<task>.yaml``'s student for a variant with ``+reflr``, else
    nothing. Placed last, it wins over ``--student_lr`` and any ``+lr<rate>``."""
    if "reflr" not in name.split("+")[1:]:
        return []
    with open(os.path.join(os.path.dirname(HERE), "configs", f"{task}.yaml")) as f:
        return ["--learning_rate", str(yaml.safe_load(f)["student"]["learning_rate"])]


def _student_length(args, task, second_step=False, scale=1.0):
    """``--num_train_epochs E`` where ``--student_epochs`` gives the task E > 0, else ``--max_steps``;
    a two-step variant's second step takes ``--second_step_epochs`` where that is > 0. Either is
    multiplied by ``scale`` (a variant's ``+budget<F>``)."""
    epochs = args.student_epochs[task]
    if second_step and args.second_step_epochs[task] > 0:
        epochs = args.second_step_epochs[task]
    if epochs > 0:
        return ["--num_train_epochs", f"{epochs * scale:g}", "--max_steps", "-1"]
    return ["--max_steps", str(max(1, round(args.student_steps[task] * scale)))]


def constant_metric(task, data_dir):
    """The dev metric of a student that has learned nothing: the training set's most frequent
    class on every dev example (MRPC's 0.684 and RTE's 0.527 look like retention against a
    0.79 / 0.57 teacher). None for a regression task, whose constant has no correlation."""
    from collections import Counter

    from paddle_bibert.data.glue import get_task, load_glue
    from paddle_bibert.data.metrics import compute_metrics, main_metric

    if get_task(task).is_regression:
        return None
    label = Counter(e["labels"] for e in load_glue(task, data_dir, "train")).most_common(1)[0][0]
    dev = [e["labels"] for e in load_glue(task, data_dir, "dev")]
    return compute_metrics(task, [label] * len(dev), dev)[main_metric(task)]


def table(results, args) -> str:
    names = expand(args.variants)
    head = "| task (metric) | teacher | majority class | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (3 + len(names))]
    def retention(rows, n):  # undefined when the teacher itself scores <= 0 (e.g. CoLA mcc 0)
        t = rows["teacher"]["best_metric"]
        return rows[n]["student_metric"] / t if t > 0 else None

    for task, rows in results.items():
        t = rows["teacher"]["best_metric"]
        cells = [f"{rows[n]['student_metric']:.4f} ("
                 + (f"{retention(rows, n):.1%}" if retention(rows, n) is not None else "n/a") + ")" for n in names]
        const = constant_metric(task, args.data_dir)
        const = "n/a" if const is None else f"{const:.4f}"
        lines.append(f"| {task} ({rows['teacher']['metric']}) | {t:.4f} | {const} | " + " | ".join(cells) + " |")
    scored = [r for r in results.values() if r["teacher"]["best_metric"] > 0]
    if len(results) > 1 and scored:
        avg = [sum(retention(r, n) for r in scored) / len(scored) for n in names]
        note = "" if len(scored) == len(results) else f" ({len(scored)} tasks with a teacher metric > 0)"
        lines.append(f"| mean retention{note} | 100% | | " + " | ".join(f"{a:.1%}" for a in avg) + " |")
    budget = []
    for task, rows in results.items():
        t = rows["teacher"]
        students = ", ".join(f"{n} {rows[n]['global_step']} steps {_minutes(rows[n]):.1f} min{_per_step(rows[n])}"
                             for n in names)
        budget.append(f"{task}: teacher {t['global_step']} steps ({_minutes(t):.1f} min); {students}")
    lines.append("")
    lines.append("Budget per run (training time, evaluations included, summed over resumes; in brackets the "
                 "mean training step without evaluations): " + "; ".join(budget) + ".")
    return "\n".join(lines)


def _per_step(summary):
    """`` (1.23 s/step)``: training seconds per step, evaluations and checkpoints excluded (runs
    that predate that clock: empty)."""
    if "training_seconds" not in summary or not summary.get("global_step"):
        return ""
    return f" ({summary['training_seconds'] / summary['global_step']:.2f} s/step)"


def _minutes(summary):
    # train_seconds accumulates across resumes; wall_minutes (older runs) only saw the last one
    return summary["train_seconds"] / 60 if "train_seconds" in summary else summary["wall_minutes"]


def history(out):
    """The dev evaluations of the run in ``out``, from its newest checkpoint."""
    p = os.path.join(out, "LATEST")
    if not os.path.isfile(p):
        return []
    with open(p) as f:
        state = os.path.join(out, f.read().strip(), "trainer_state.json")
    with open(state) as f:
        return json.load(f)["history"]


def timed_history(out, summary):
    """``[(step, training minutes, entry)]`` of a run's dev evaluations. Runs that predate the
    per-evaluation clock get minutes from their mean seconds per step, evaluations included,
    marked estimated."""
    hist = history(out)
    if all("training_seconds" in e for e in hist):
        return [(e["step"], e["training_seconds"] / 60, e) for e in hist], False
    per_step = summary["train_seconds"] / max(1, summary["global_step"])
    return [(e["step"], e["step"] * per_step / 60, e) for e in hist], True


def first_reach(timed, metric, target):
    """(step, minutes) of the first evaluation at or above ``target``, or None."""
    return next(((st, mins) for st, mins, e in timed if e[metric] >= target), None)


def curves(results, args) -> str:
    """Per task, the main dev metric of every student at each evaluation step, and the training
    time (evaluations excluded) each needed to first reach 90% and 95% of its teacher."""
    names = expand(args.variants)
    out = []
    for task, rows in results.items():
        metric, teacher = rows["teacher"]["metric"], rows["teacher"]["best_metric"]
        timed = {n: timed_history(os.path.join(args.out_dir, task, n), rows[n]) for n in names}
        by_name = {n: {st: e[metric] for st, _, e in timed[n][0]} for n in names}
        steps = sorted({s for h in by_name.values() for s in h})
        out += [f"Dev {metric} of each student by step ({task}; teacher {teacher:.4f}):", "",
                "| step | " + " | ".join(names) + " |", "|" + "---|" * (1 + len(names))]
        for st in steps:
            out.append(f"| {st} | " + " | ".join(f"{by_name[n][st]:.4f}" if st in by_name[n] else "" for n in names) + " |")
        out += ["", f"First reached ({task}; step, training minutes without evaluations; ~ = estimated from the "
                    "run's mean step time, evaluations included):", "",
                "| student | 90% of the teacher | 95% of the teacher |", "|---|---|---|"]
        for n in names:
            est = "~" if timed[n][1] else ""
            cells = [(lambda r: f"step {r[0]}, {est}{r[1]:.1f} min" if r else "not reached")(
                first_reach(timed[n][0], metric, frac * teacher)) for frac in (0.9, 0.95)]
            out.append(f"| {n} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def curve_plot(results, args, path):
    """Dev metric against training minutes, one line per student, the teacher dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = results[task]
        metric = rows["teacher"]["metric"]
        for n in expand(args.variants):
            timed, est = timed_history(os.path.join(args.out_dir, task, n), rows[n])
            ax.plot([m for _, m, _ in timed], [e[metric] for _, _, e in timed], marker=".",
                    label=n + (" (minutes estimated, evaluations included)" if est else ""))
        ax.axhline(rows["teacher"]["best_metric"], color="k", ls="--", lw=1, label="teacher")
        ax.set_xlabel("training minutes (evaluations excluded)")
        ax.set_ylabel(f"dev {metric}")
        ax.set_title(task)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def plot(results, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["teacher"] + expand(args.variants)
    tasks = list(results)
    fig, ax = plt.subplots(figsize=(max(1.8 + 1.6 * len(tasks), 1.2 + 0.22 * len(names) * len(tasks)), 3.6))
    w = 0.8 / len(names)
    for i, n in enumerate(names):
        vals = [results[t][n]["best_metric" if n == "teacher" else "student_metric"] for t in tasks]
        ax.bar([j + i * w for j in range(len(tasks))], vals, w, label=n)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(tasks))])
    ax.set_xticklabels([f"{t}\n({results[t]['teacher']['metric']})" for t in tasks])
    ax.set_ylabel("dev metric")
    ax.legend(fontsize=7, ncol=min(len(names), 5), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.savefig(path, dpi=120, bbox_inches="tight")  # room for the legend above the axes


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="sst-2,cola,mrpc,sts-b,rte")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help=f"any of {','.join(VARIANTS)}, or {','.join(GROUPS)}; modifiers +{' +'.join(MODIFIERS)} "
                         "+lr<rate>")
    ap.add_argument("--data_dir", default=GLUE)
    ap.add_argument("--model", default="minilm", help="pre-trained model (default: the packaged MiniLM)")
    ap.add_argument("--out_dir", default="runs/accuracy")
    ap.add_argument("--max_seq_length", type=int, default=64)
    ap.add_argument("--pair_seq_len", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=32)
    # Budgets take one value or per-task values, e.g. --student_steps 400,sst-2=1000
    ap.add_argument("--teacher_epochs", type=per_task(float), default=PerTask(float, "1.0"))
    ap.add_argument("--teacher_steps", type=per_task(int), default=PerTask(int, "-1"),
                    help="if > 0, cap the teacher at this many steps")
    ap.add_argument("--teacher_lr", type=per_task(float), default=PerTask(float, "5e-5"))
    ap.add_argument("--student_steps", type=per_task(int), default=PerTask(int, "300"),
                    help="one value, or per task: 400,sst-2=1000 (budgets alike)")
    ap.add_argument("--student_epochs", type=per_task(float), default=PerTask(float, "0"),
                    help="where > 0 for a task, train its students this many epochs instead of "
                         "--student_steps (the reference schedule: sst-2=10,cola=50,mrpc=20,sts-b=20,rte=20)")
    ap.add_argument("--second_step_epochs", type=per_task(float), default=PerTask(float, "0"),
                    help="where > 0 for a task, the second step of a two-step variant (the W1A1 "
                         "student that the W1A2 one teaches) trains this many epochs; the first "
                         "keeps --student_epochs / --student_steps")
    ap.add_argument("--student_lr", type=per_task(float), default=PerTask(float, "2e-4"))
    ap.add_argument("--save_steps", type=per_task(int), default=PerTask(int, "100"),
                    help="dev evaluation (and checkpoint) every this many steps")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--teacher_group_by_length", action="store_true",
                    help="train the teachers on batches of similar length too (pairs pad less)")
    ap.add_argument("--teachers_only", action="store_true",
                    help="train (or find) each task's teacher, print their metrics, and stop")
    ap.add_argument("--table", help="write the markdown table here")
    ap.add_argument("--plot", help="write the PNG plot here")
    ap.add_argument("--curve_plot", help="write a PNG of dev metric against training minutes here")
    args = ap.parse_args(argv)
    listed = expand(args.variants)
    for i, v in enumerate(listed):
        base, *mods = v.split("+")
        if base not in VARIANTS:
            ap.error(f"unknown variant {base!r}; known: {sorted(VARIANTS)} (or a group: {sorted(GROUPS)})")
        for m in mods:
            if modifier(m) is None:
                ap.error(f"unknown modifier +{m} in {v!r}; known: {', '.join('+' + k for k in MODIFIERS)}"
                         ", +lr<rate> (e.g. +lr1e-4), +aug<N>, +tf<fraction in (0, 1]> (e.g. +tf0.5), "
                         "+budget<factor> (e.g. +budget0.5), +ema<decay in (0, 1)> (e.g. +ema0.999)")
            if isinstance(modifier(m), dict) and VARIANTS[base][0] is None:
                ap.error(f"+{m} changes the binarization; {base} is a full-precision student")
            if m in ONE_BIT_MODIFIERS and VARIANTS[base][0].get("act_bits", 1) != 1:
                ap.error(f"+{m} changes 1-bit activations; {base} has {VARIANTS[base][0]['act_bits']}-bit ones")
        dep = variant(v)[2:]
        if dep and dep[0] not in listed[:i]:
            ap.error(f"variant {v} is taught by {dep[0]}'s student: list {dep[0]} before it in --variants")
    for t in args.tasks.split(","):  # a missing per-task value fails now, not hours in
        for budget in vars(args).values():
            if isinstance(budget, PerTask):
                budget[t]
    log = lambda m: print(m, flush=True)
    t0 = time.time()
    results = {t: run_task(t, args, log) for t in args.tasks.split(",")}
    if args.teachers_only:
        for t, rows in results.items():
            s = rows["teacher"]
            log(f"{t}: teacher {s['metric']} {s['best_metric']:.4f} (best at step {s['best_step']} of "
                f"{s['global_step']}, {_minutes(s):.1f} min)")
        return results
    text = table(results, args) + "\n\n" + curves(results, args)
    cmd = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"Date {time.strftime('%Y-%m-%d')}, machine {cpu_model()} "
              f"({os.cpu_count()} CPUs), wall time {(time.time() - t0) / 60:.1f} min this invocation.\n"
              f"Command: `{cmd}`\n\n")
    print(header + text)
    if args.table:
        with open(args.table, "w") as f:
            f.write(header + text + "\n")
    if args.plot:
        plot(results, args, args.plot)
    if args.curve_plot:
        curve_plot(results, args, args.curve_plot)
    return results


if __name__ == "__main__":
    main()
