"""The two commands users of BiBERT know, as library functions the examples call.

``run_glue(argv)``     fine-tunes the full-precision teacher.
``task_distill(argv)`` distills a (binarized, with ``--bi``) student from that teacher.

Arguments come from flags, from ``--config FILE.yaml`` (flat keys, plus a ``teacher:`` or
``student:`` section for the command's own settings), and from the defaults, in that order of
precedence: a flag given on the command line always wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

import yaml

from .distributed import is_main, rank, world_size, wrap

__all__ = ["GlueArgs", "DistillArgs", "MultistepArgs", "run_glue", "task_distill", "multistep_distill",
           "parse_args"]

TASK_HELP = "GLUE task (cola, sst-2, mrpc, sts-b, qqp, mnli, qnli, rte, wnli) or movie-reviews"


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class CommonArgs:
    task_name: Optional[str] = _f(None, TASK_HELP)
    data_dir: Optional[str] = _f(None, "local GLUE-layout folder (<dir>/<Task>/{train,dev}.tsv); "
                                 "without it PaddleNLP's load_dataset('glue', task) is used")
    max_seq_length: int = _f(128, "tokens per example, [CLS]/[SEP] included")
    batch_size: int = _f(32, "training batch size")
    learning_rate: float = _f(5e-5, "peak learning rate (linear warm-up then decay)")
    num_train_epochs: float = _f(3.0, "epochs")
    max_steps: int = _f(-1, "if > 0, train this many steps instead of num_train_epochs")
    weight_decay: float = _f(0.01, "weight decay (not on biases and LayerNorm)")
    group_by_length: bool = _f(False, "batch examples of similar length together (shuffled runs of 50 "
                               "batches, each sorted by length): less padding, every example still once "
                               "per epoch")
    pad_to_max_length: bool = _f(False, "pad every batch to --max_seq_length (BiBERT's authors do: their "
                                 "Q/K/V and hidden-state direction matching then covers every padded "
                                 "position) instead of to its longest example")
    optimizer: str = _f("adamw", "adamw, or bertadam (BiBERT's authors': no bias correction, eps 1e-6, "
                        "each parameter's gradient clipped to norm 1 on its own)")
    warmup_proportion: float = _f(0.1, "fraction of steps of linear warm-up")
    logging_steps: int = _f(50, "log the loss terms every N steps")
    save_steps: int = _f(500, "evaluate on dev, keep the best, and checkpoint every N steps")
    output_dir: Optional[str] = _f(None, "where checkpoints, best_model/ and summary.json go")
    device: str = _f("cpu", "cpu or gpu (gpu:0, ...)")
    seed: int = _f(42, "random seed (data order, dropout, initialisation)")
    resume: bool = _f(False, "continue the run in --output_dir from its last checkpoint")
    eval_batch_size: int = _f(64, "dev batch size")
    progress: bool = _f(True, "show a progress bar")
    stop_at_step: int = _f(-1, "end the run at this step as if interrupted (for resume tests)")
    flush_denormals: bool = _f(True, "treat subnormal floats as 0 while training (x86 FTZ/DAZ); "
                               "they otherwise slow some recipes' steps several-fold")
    ema_decay: float = _f(0.0, "if > 0, dev evaluation scores and best_model/ keeps an exponential "
                          "moving average of the weights (e.g. 0.99: about the last 100 steps); "
                          "training itself is unchanged")


@dataclass
class GlueArgs(CommonArgs):
    model_type: str = _f("bert", "model family (bert)")
    model_name_or_path: str = _f("minilm", "PaddleNLP name, PaddleNLP folder, or Hugging Face folder "
                                 "(model.safetensors + config.json + vocab.txt); 'minilm' = the "
                                 "packaged MiniLM-L6-H384")


@dataclass
class DistillArgs(CommonArgs):
    model_type: str = _f("bert", "student model family (bert)")
    teacher_model_type: str = _f("bert", "teacher model family (bert)")
    teacher_path: Optional[str] = _f(None, "fine-tuned teacher: run_glue.py's output folder or its .pdparams")
    student_model_name_or_path: Optional[str] = _f(None, "student initialisation (default: the teacher)")
    pred_distill: bool = _f(False, "soft cross-entropy on logits (+0.5 gold CE); MSE for regression")
    query_distill: bool = _f(False, "direction matching on Q Q^T per layer")
    key_distill: bool = _f(False, "direction matching on K K^T per layer")
    value_distill: bool = _f(False, "direction matching on V V^T per layer")
    intermediate_distill: bool = _f(False, "direction matching on hidden states")
    temperature: float = _f(1.0, "softmax temperature of the soft cross-entropy")
    gold_weight: float = _f(0.5, "weight of the gold-label cross-entropy in --pred_distill (BiT: 0)")
    hidden_loss: str = _f("dmd", "loss of --intermediate_distill: dmd (BiBERT's direction matching) or "
                          "mse (BiT: sum over layers of the mean squared error)")
    bi: bool = _f(False, "binarize the student before training (recipe: --method, --act_bits)")
    method: str = _f("bibert", "binarization recipe with --bi: bibert, baseline, bibert_elastic, bit, "
                     "binarybert (paddle_bibert.surgery.RECIPES)")
    act_bits: int = _f(1, "activation bits of the recipe: 1, or 2 / 4 for bit and binarybert")
    binarize: Optional[dict] = _f(None, "BinarizeConfig fields (YAML only), e.g. {attention: softmax_sign}",
                                  yaml_only=True)


def parse_args(cls, argv=None, section=None):
    """Flags > ``--config`` YAML (flat keys + ``section``) > dataclass defaults."""
    parser = argparse.ArgumentParser(
        description=(cls.__doc__ or "").strip() or None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", help="YAML file of settings; flags override it")
    for f in dataclasses.fields(cls):
        if f.metadata.get("yaml_only"):
            continue
        kw = dict(help=f.metadata.get("help", ""), default=argparse.SUPPRESS)
        if f.type in ("bool", bool):
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, **kw)
        else:
            typ = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(f"--{f.name}", type=typ, **kw)
    ns = vars(parser.parse_args(argv))
    values = {}
    config = ns.pop("config", None)
    names = {f.name for f in dataclasses.fields(cls)}
    if config:
        if not os.path.isfile(config):
            parser.error(f"--config {config}: no such file")
        with open(config) as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            parser.error(f"--config {config}: expected a mapping of settings")
        sections = {"teacher", "student"}
        own = data.get(section) or {}
        flat = {k: v for k, v in data.items() if k not in sections}
        for k, v in list(flat.items()) + list(own.items()):
            if k not in names:
                parser.error(f"--config {config}: unknown setting {k!r} for this command; "
                             f"valid: {sorted(names)}")
            values[k] = v
    values.update(ns)
    args = cls(**values)
    for f in dataclasses.fields(cls):  # YAML gives e.g. 1e-4 as a string; coerce numbers
        v = getattr(args, f.name)
        if f.type in ("float", float) and isinstance(v, (str, int)) and not isinstance(v, bool):
            setattr(args, f.name, float(v))
        elif f.type in ("int", int) and isinstance(v, str):
            setattr(args, f.name, int(v))
    if not args.task_name:
        parser.error("--task_name is required (" + TASK_HELP + ")")
    if not args.output_dir:
        parser.error("--output_dir is required")
    return args


# ---- shared pieces ----------------------------------------------------------------------

def _setup(args):
    # values out of range are refused before any model or data is loaded
    _train_args(args).validate()
    if getattr(args, "bi", False):
        from .surgery import BinarizeConfig

        BinarizeConfig.preset(args.method, args.act_bits)  # unknown recipe / bits: named here
    if getattr(args, "hidden_loss", "dmd") not in ("dmd", "mse"):
        raise ValueError(f"--hidden_loss must be dmd or mse, got {args.hidden_loss!r}")
    if args.max_seq_length < 3:
        raise ValueError(f"max_seq_length must be >= 3 ([CLS], one token, [SEP]), got {args.max_seq_length}")
    if args.eval_batch_size <= 0:
        raise ValueError(f"eval_batch_size must be > 0, got {args.eval_batch_size}")
    import paddle

    from . import distributed as dist
    from .training.trainer import set_seed

    device = args.device
    if dist.world_size() > 1 and device in ("gpu", "xpu", "npu"):  # this process's own card
        device = f"{device}:{paddle.distributed.ParallelEnv().device_id}"
    try:
        paddle.set_device(device)
    except Exception as e:  # e.g. gpu on a CPU-only build
        raise SystemExit(f"--device {args.device}: {e}. Use --device cpu on this machine.")
    dist.init_if_launched()
    set_seed(args.seed)
    from paddlenlp.utils.log import logger as nlp_logger

    nlp_logger.set_level("WARNING")  # PaddleNLP logs every save/load at INFO; keep the run's log readable
    if args.model_type != "bert":
        raise SystemExit(f"--model_type {args.model_type}: only 'bert' models are supported by these "
                         "commands (binarize_model itself also handles ERNIE/RoBERTa)")


def resolve_model_path(path: str) -> str:
    """A run's output folder (its best_model/), a model folder, or a .pdparams file in one."""
    if path.endswith(".pdparams"):
        if not os.path.isfile(path):
            raise SystemExit(f"{path}: no such file")
        path = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(os.path.join(path, "best_model")):
        path = os.path.join(path, "best_model")
    return path


def _data(args, tokenizer):
    from .data.glue import get_task, load_glue
    from .data.loader import Collator, encode_examples, make_dataloader

    info = get_task(args.task_name)  # raises naming the known tasks
    train = load_glue(info.name, args.data_dir, "train")
    dev = load_glue(info.name, args.data_dir, info.dev_splits[0])
    enc = lambda ex: encode_examples(ex, tokenizer, info.name, args.max_seq_length)
    collate = Collator(tokenizer, info.name, args.max_seq_length if args.pad_to_max_length else None)
    train_loader = make_dataloader(enc(train), args.batch_size, shuffle=True, seed=args.seed,
                                   collate_fn=collate, distributed=world_size() > 1,
                                   group_by_length=args.group_by_length)
    dev_loader = make_dataloader(enc(dev), args.eval_batch_size, shuffle=False, collate_fn=collate)
    return info, train_loader, dev_loader, len(train), len(dev)


def _check_positions(args, model):
    limit = model.config.max_position_embeddings
    if args.max_seq_length > limit:
        raise SystemExit(f"--max_seq_length {args.max_seq_length} exceeds the model's "
                         f"{limit} positions; use --max_seq_length {limit} or less")


def _after_model_init(args):
    """Data parallel: each rank's own dropout stream once the (identical) weights exist."""
    if rank() > 0:
        import paddle

        paddle.seed(args.seed + rank())


def _rank_log(log):
    if log is None:
        log = lambda m: print(m, flush=True)  # noqa: E731
    return log if is_main() else (lambda m: None)


def _train_args(args):
    from .training.trainer import TrainArgs

    names = {f.name for f in dataclasses.fields(TrainArgs)}
    return TrainArgs(**{k: v for k, v in dataclasses.asdict(args).items() if k in names})


def _write_summary(args, summary, log):
    if not is_main():
        return
    with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log("[summary] " + json.dumps(summary))


# ---- run_glue ---------------------------------------------------------------------------

def run_glue(argv=None, log=None):
    """Fine-tune a full-precision teacher on a GLUE task; keep the best dev checkpoint."""
    args = parse_args(GlueArgs, argv, section="teacher")
    log = _rank_log(log)
    _setup(args)
    import paddle.nn.functional as F
    from paddlenlp.transformers import BertForSequenceClassification

    from .convert import load_model, load_tokenizer
    from .data.glue import get_task, write_task_file
    from .training.trainer import Trainer

    info = get_task(args.task_name)
    path = args.model_name_or_path
    tokenizer = load_tokenizer(path)
    model = load_model(path, BertForSequenceClassification, new_head=True, num_labels=info.num_labels)
    _check_positions(args, model)
    info, train_loader, dev_loader, n_train, n_dev = _data(args, tokenizer)
    log(f"run_glue: task {info.name}, {n_train} train / {n_dev} dev examples, "
        f"{len(train_loader)} steps per epoch, model {path}")

    forward = wrap(model)  # paddle.DataParallel under the launcher
    _after_model_init(args)

    def loss_fn(batch):
        logits = forward(batch["input_ids"], token_type_ids=batch["token_type_ids"])
        if info.is_regression:
            loss = F.mse_loss(logits.reshape([-1]), batch["labels"])
        else:
            loss = F.cross_entropy(logits, batch["labels"])
        return loss, {}

    def save(m, d):
        m.save_pretrained(d)
        tokenizer.save_pretrained(d)
        write_task_file(d, info.name, args.max_seq_length)

    result = Trainer(model, loss_fn, train_loader, dev_loader, _train_args(args), save, log).train()
    summary = {"command": "run_glue", "task": info.name, "model": path, **result}
    _write_summary(args, summary, log)
    return summary


# ---- task_distill -----------------------------------------------------------------------

def _load_for_distill(path, info, role):
    from paddlenlp.transformers import BertForSequenceClassification

    from .convert import load_model, load_tokenizer

    if not path:
        raise SystemExit(f"--{role} is required: the fine-tuned teacher's output folder (run_glue.py "
                         "--output_dir) or its .pdparams file")
    resolved = resolve_model_path(path)
    if not os.path.exists(resolved) and (os.sep in path or path.startswith(".")):
        raise SystemExit(f"--{role} {path}: no such file or folder")
    from .surgery import CONFIG_NAME, load_binarized

    if role == "teacher_path" and os.path.isfile(os.path.join(resolved, CONFIG_NAME)):
        model = load_binarized(resolved)  # a binarized or low-bit model teaching the next one
    else:  # a binarized folder as a student's start: its latent full-precision weights
        model = load_model(resolved, BertForSequenceClassification)
    if model.config.num_labels != info.num_labels:
        raise SystemExit(f"--{role} {path} has {model.config.num_labels} labels but task {info.name} "
                         f"has {info.num_labels}: fine-tune a teacher on {info.name} with run_glue.py first")
    return model, load_tokenizer(resolved), resolved


def task_distill(argv=None, log=None):
    """Distill a (binarized with --bi) student from a fine-tuned teacher."""
    return _task_distill(parse_args(DistillArgs, argv, section="student"), _rank_log(log))


def _task_distill(args: DistillArgs, log):
    _setup(args)
    if args.teacher_model_type != "bert":
        raise SystemExit(f"--teacher_model_type {args.teacher_model_type}: only 'bert' is supported")
    from .data.glue import get_task, write_task_file
    from .data.metrics import main_metric
    from .distill.distiller import DistillConfig, Distiller
    from .training.trainer import Trainer, evaluate
    from .surgery import BinarizeConfig, binarize_model, save_binarized

    info = get_task(args.task_name)
    teacher, t_tok, t_path = _load_for_distill(args.teacher_path, info, "teacher_path")
    student, s_tok, s_path = _load_for_distill(args.student_model_name_or_path or args.teacher_path,
                                               info, "student_model_name_or_path")
    if (teacher.config.vocab_size != student.config.vocab_size
            or t_tok.vocab.token_to_idx != s_tok.vocab.token_to_idx):
        raise SystemExit("teacher and student vocabularies differ: the student must share the teacher's "
                         "tokenizer (initialise it from the teacher's folder)")
    _check_positions(args, student)
    info, train_loader, dev_loader, n_train, n_dev = _data(args, s_tok)
    if args.bi:
        spec = dict(args.binarize or {})
        if "preset" not in spec:
            spec.update(preset=args.method, act_bits=args.act_bits)
        bconf = BinarizeConfig.from_dict(spec)
        _, report = binarize_model(student, bconf)
        log(f"binarized the student ({bconf.method}, attention={bconf.attention}): "
            f"{len(report.replaced)} modules replaced")
    dconf = DistillConfig(**{f: getattr(args, f) for f in DistillConfig.FLAGS},
                          temperature=args.temperature, gold_weight=args.gold_weight,
                          hidden_loss=args.hidden_loss)
    distiller = Distiller(student, teacher, dconf, info.is_regression)
    distiller.student_call = wrap(student)  # paddle.DataParallel under the launcher
    _after_model_init(args)
    teacher_metrics = evaluate(teacher, dev_loader, info.name)
    metric = main_metric(info.name)
    log(f"task_distill: task {info.name}, {n_train} train / {n_dev} dev, teacher {t_path} "
        f"({metric} {teacher_metrics[metric]:.4f}), student {s_path}, bi={args.bi}, losses: "
        + ", ".join(f for f in DistillConfig.FLAGS if getattr(args, f)))

    def save(m, d):
        (save_binarized(m, d) if args.bi else m.save_pretrained(d))
        s_tok.save_pretrained(d)
        write_task_file(d, info.name, args.max_seq_length)

    result = Trainer(student, distiller.loss, train_loader, dev_loader, _train_args(args), save, log).train()
    t_val = teacher_metrics[metric]
    summary = {"command": "task_distill", "task": info.name, "bi": args.bi,
               "teacher_metric": t_val, "student_metric": result["best_metric"],
               "retention": (result["best_metric"] / t_val) if t_val else None, **result}
    _write_summary(args, summary, log)
    log(f"teacher {metric} {t_val:.4f} | student {metric} {result['best_metric']:.4f} | "
        f"student/teacher {summary['retention']:.3f}" if summary["retention"] is not None else "")
    return summary


# ---- multi-step distillation ------------------------------------------------------------

@dataclass
class MultistepArgs(DistillArgs):
    stages: str = _f("2,1", "activation bits of each stage, e.g. 2,1 (FP -> W1A2 -> W1A1) or 4,1; each "
                     "stage's best student teaches the next and is its starting point")


def multistep_distill(argv=None, log=None):
    """BiT's multi-step distillation as one command: the full-precision teacher teaches a W1A2
    (or W1A4) student, whose best checkpoint then teaches, and initialises, the W1A1 student.

    Every stage is a ``task_distill`` run with ``--bi --method <method> --act_bits <bits>`` in
    ``<output_dir>/stage<i>-w1a<bits>``; a finished stage is kept and an interrupted one resumed
    when the command is run again with ``--resume``. ``<output_dir>/summary.json`` lists each
    stage's dev metric.
    """
    args = parse_args(MultistepArgs, argv, section="student")
    log = _rank_log(log)
    try:
        bits = [int(b) for b in args.stages.split(",")]
    except ValueError:
        raise ValueError(f"--stages {args.stages!r}: expected comma-separated activation bits, e.g. 2,1") from None
    if not bits or bits[-1] != 1 or any(b not in (1, 2, 4) for b in bits):
        raise ValueError(f"--stages {args.stages!r}: each stage has 1, 2 or 4 activation bits and the last "
                         "stage is 1 (the fully binarized model), e.g. 2,1")
    if not args.output_dir:
        raise SystemExit("--output_dir is required")
    if not args.teacher_path:
        raise SystemExit("--teacher_path is required: the fine-tuned full-precision teacher (run_glue.py)")
    from .surgery import BinarizeConfig

    for b in bits:
        BinarizeConfig.preset(args.method, b)  # every stage's recipe exists, before any training
    if args.binarize:
        raise ValueError("multistep_distill sets each stage's recipe from --method and --stages; remove the "
                         "binarize: section from the config")
    # every other setting, as resolved from flags and --config, is each stage's
    base = DistillArgs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DistillArgs)})
    teacher, student_init = args.teacher_path, args.student_model_name_or_path or args.teacher_path
    stages = []
    for n, b in enumerate(bits, 1):
        out = os.path.join(args.output_dir, f"stage{n}-w1a{b}")
        done = os.path.join(out, "summary.json")
        if os.path.isfile(done) and json.load(open(done)).get("finished"):
            s = json.load(open(done))
            log(f"[stage {n}] W1A{b}: finished earlier ({s['metric']} {s['student_metric']:.4f}), kept")
        else:
            log(f"[stage {n}] W1A{b}: teacher {teacher}, student from {student_init}")
            s = _task_distill(dataclasses.replace(
                base, bi=True, act_bits=b, teacher_path=teacher, student_model_name_or_path=student_init,
                output_dir=out, resume=os.path.isdir(out) and args.resume), log)
        stages.append({"stage": n, "act_bits": b, "output_dir": out, "metric": s["metric"],
                       "teacher_metric": s["teacher_metric"], "student_metric": s["student_metric"],
                       "global_step": s["global_step"], "finished": s["finished"]})
        if not s["finished"]:
            break
        teacher = student_init = out  # its best_model/ teaches and starts the next stage
    first, last = stages[0], stages[-1]
    summary = {"command": "multistep_distill", "method": args.method, "stages": stages,
               "teacher_metric": first["teacher_metric"], "student_metric": last["student_metric"],
               "retention": (last["student_metric"] / first["teacher_metric"]) if first["teacher_metric"] else None,
               "finished": len(stages) == len(bits) and last["finished"]}
    os.makedirs(args.output_dir, exist_ok=True)
    _write_summary(args, summary, log)
    return summary
