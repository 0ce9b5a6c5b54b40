"""The two commands users of BiBERT know, as library functions the examples call.

``run_glue(argv)``     fine-tunes the full-precision teacher.
``task_distill(argv)`` distills a (binarized, with ``--bi``) student from that teacher.

``multistep_distill(argv)`` chains task_distill runs (FP -> W1A2 -> W1A1, BiT's multi-step).

Their arguments and how flags, ``--config`` files and defaults combine: ``arguments.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os

from .arguments import DistillArgs, GlueArgs, MultistepArgs, parse_args
from .distributed import is_main, rank, world_size, wrap

__all__ = ["GlueArgs", "DistillArgs", "MultistepArgs", "run_glue", "task_distill", "multistep_distill",
           "parse_args"]

# ---- shared pieces ----------------------------------------------------------------------

def _setup(args):
    # values out of range are refused before any model or data is loaded
    _train_args(args).validate()
    if getattr(args, "bi", False):
        from .surgery import BinarizeConfig

        BinarizeConfig.from_recipe(args.recipe, args.act_bits)  # unknown recipe / bits: named here
    if getattr(args, "hidden_loss", "dmd") not in ("dmd", "mse"):
        raise ValueError(f"--hidden_loss must be dmd or mse, got {args.hidden_loss!r}")
    if args.max_seq_length < 3:
        raise ValueError(f"max_seq_length must be >= 3 ([CLS], one token, [SEP]), got {args.max_seq_length}")
    if args.eval_batch_size <= 0:
        raise ValueError(f"eval_batch_size must be > 0, got {args.eval_batch_size}")
    dropout = getattr(args, "student_dropout", None)
    if dropout is not None and not 0 <= dropout < 1:
        raise ValueError(f"--student_dropout must be in [0, 1), got {dropout}")
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
    if getattr(args, "augment", 0):  # (task_distill's) perturbed copies, labelled by the teacher
        from .data.augment import perturbed_copies

        train = train + perturbed_copies(train, info.text_fields, args.augment, args.seed)
    dev = load_glue(info.name, args.data_dir, info.dev_splits[0])
    enc = lambda ex: encode_examples(ex, tokenizer, info.name, args.max_seq_length)
    collate = Collator(tokenizer, info.name, args.max_seq_length if args.pad_to_max_length else None)
    train_loader = make_dataloader(enc(train), args.batch_size, shuffle=True, seed=args.seed,
                                   collate_fn=collate, distributed=world_size() > 1,
                                   group_by_length=args.group_by_length)
    # dev batches of similar length: every metric here is order-free, and evaluation pads far less
    dev_loader = make_dataloader(enc(dev), args.eval_batch_size, shuffle=False, collate_fn=collate,
                                 group_by_length=True)
    return info, train_loader, dev_loader, len(train), len(dev)


def _teacher_cache(args, teacher, collator):
    """``--teacher_cache_gb``'s TeacherCache, or None. Its entries hold the states at padded
    positions, which do not depend on the padding only where the teacher masks the collator's
    pad token."""
    if not args.teacher_cache_gb:
        return None
    if teacher.config.pad_token_id != collator.pad_token_id:
        raise ValueError(f"--teacher_cache_gb: the teacher masks token {teacher.config.pad_token_id}, "
                         f"the batches are padded with {collator.pad_token_id}; drop --teacher_cache_gb")
    from .distill.cache import TeacherCache

    return TeacherCache(collator.pad_token_id, args.teacher_cache_gb * 1e9, args.max_seq_length,
                        collator.pad_token_type_id)


def _report_cache(cache, summary, log):
    if cache is None:
        return
    summary["teacher_cache"] = {"batches_from_memory": cache.hits, "batches_run": cache.misses,
                                "gb": cache.nbytes / 1e9, "full": cache.full}
    log(f"teacher cache: {cache.hits} of {cache.hits + cache.misses} batches from memory, "
        f"{cache.nbytes / 1e9:.2f} GB" + (" (full: later examples ran the teacher)" if cache.full else ""))


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
    summary["arguments"] = dataclasses.asdict(args)  # what the run was, beside what it reached
    with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log("[summary] " + json.dumps({k: v for k, v in summary.items() if k != "arguments"}))


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

def _load_for_distill(path, info, role, **config_overrides):
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
        model = load_model(resolved, BertForSequenceClassification, **config_overrides)
    if model.config.num_labels != info.num_labels:
        raise SystemExit(f"--{role} {path} has {model.config.num_labels} labels but task {info.name} "
                         f"has {info.num_labels}: fine-tune a teacher on {info.name} with run_glue.py first")
    return model, load_tokenizer(resolved), resolved


def _dropout(args):
    """Config fields that set every dropout of the student (PaddleNLP's names), if asked."""
    p = args.student_dropout
    if p is None:
        return {}
    return dict(hidden_dropout_prob=p, attention_probs_dropout_prob=p, classifier_dropout=p)


def task_distill(argv=None, log=None):
    """Distill a (binarized with --bi) student from a fine-tuned teacher."""
    return _task_distill(parse_args(DistillArgs, argv, section="student"), _rank_log(log))


def _task_distill(args: DistillArgs, log):
    _setup(args)
    if not 0 <= args.act_ramp <= 1:
        raise ValueError(f"--act_ramp must be in [0, 1] (0 = binary from the first step), got {args.act_ramp}")
    if args.act_ramp and not args.bi:
        raise ValueError("--act_ramp ramps a binarized student's activations: pass --bi too")
    if not args.bi and (args.recipe != DistillArgs.recipe or args.act_bits != DistillArgs.act_bits or args.binarize):
        raise ValueError("--recipe, --act_bits and --binarize choose how --bi binarizes the student: pass --bi "
                         "too (without it the student trains in full precision)")
    forcing = None
    if args.teacher_forcing:  # (checked before the models load)
        from .distill.forcing import TeacherForcing

        forcing = TeacherForcing(args.teacher_forcing)
    if args.eval_packed and not args.bi:
        raise ValueError("--eval_packed scores a binarized student as its packed file: pass --bi too")
    if args.teacher_model_type != "bert":
        raise SystemExit(f"--teacher_model_type {args.teacher_model_type}: only 'bert' is supported")
    from .data.glue import get_task, write_task_file
    from .data.metrics import main_metric
    from .distill.distiller import DistillConfig, Distiller
    from .distill.prefetch import TeacherPrefetch
    from .training.trainer import Trainer, evaluate
    from .surgery import BinarizeConfig, binarize_model, save_binarized

    info = get_task(args.task_name)
    if not args.teacher_cache_gb >= 0:  # (NaN too)
        raise ValueError(f"--teacher_cache_gb must be >= 0 (GB of teacher outputs kept in memory; "
                         f"0: off), got {args.teacher_cache_gb}")
    if args.teacher_cache_gb and world_size() > 1:
        raise ValueError("--teacher_cache_gb keeps one process's examples, and under data parallel each "
                         "rank sees other examples every epoch: drop --teacher_cache_gb")
    if args.augment < 0:
        raise ValueError(f"--augment must be >= 0 (copies of each training example), got {args.augment}")
    if args.augment and args.pred_distill and args.gold_weight and not info.is_regression:
        raise ValueError("--augment's copies have no gold label (the teacher's is their only one): "
                         "pass --gold_weight 0")
    dconf = DistillConfig(**{f: getattr(args, f) for f in DistillConfig.FLAGS},
                          temperature=args.temperature, gold_weight=args.gold_weight,
                          hidden_loss=args.hidden_loss)
    teacher, t_tok, t_path = _load_for_distill(args.teacher_path, info, "teacher_path")
    student, s_tok, s_path = _load_for_distill(args.student_model_name_or_path or args.teacher_path,
                                               info, "student_model_name_or_path", **_dropout(args))
    if (teacher.config.vocab_size != student.config.vocab_size
            or t_tok.vocab.token_to_idx != s_tok.vocab.token_to_idx):
        raise SystemExit("teacher and student vocabularies differ: the student must share the teacher's "
                         "tokenizer (initialise it from the teacher's folder)")
    _check_positions(args, student)
    info, train_loader, dev_loader, n_train, n_dev = _data(args, s_tok)
    if args.bi:
        spec = dict(args.binarize or {})
        if not {"recipe", "preset", "method"} & set(spec):  # (the latter two: its former names)
            spec.update(recipe=args.recipe, act_bits=args.act_bits)
        bconf = BinarizeConfig.from_dict(spec)
        _, report = binarize_model(student, bconf)
        log(f"binarized the student ({bconf.recipe} W1A{bconf.act_bits}, attention={bconf.attention}): "
            f"{len(report.replaced)} modules replaced")
    ramp = None
    if args.act_ramp:
        from .quant.ramp import ActivationRamp

        ramp = ActivationRamp(student, args.act_ramp)
    evaluator = None  # the Trainer's: Paddle's forward
    if args.eval_packed:
        from .training.packed_eval import check_packed_eval, evaluate_packed

        check_packed_eval(student)
        evaluator = evaluate_packed
    if args.freeze_word_embeddings:
        student.get_input_embeddings().weight.stop_gradient = True  # no gradient, update or average
    distiller = Distiller(student, teacher, dconf, info.is_regression, forcing=forcing,
                          teacher_cache=_teacher_cache(args, teacher, train_loader.collate_fn))
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

    if args.teacher_prefetch and world_size() == 1:  # (ranks pad their batches after the loader)
        train_loader = TeacherPrefetch(train_loader, distiller)
    result = Trainer(student, distiller.loss, train_loader, dev_loader, _train_args(args), save, log,
                     ramp=ramp, evaluator=evaluator, forcing=forcing).train()
    t_val = teacher_metrics[metric]
    summary = {"command": "task_distill", "task": info.name, "bi": args.bi,
               "teacher_metric": t_val, "student_metric": result["best_metric"],
               "retention": (result["best_metric"] / t_val) if t_val else None, **result}
    _report_cache(distiller.teacher_cache, summary, log)
    _write_summary(args, summary, log)
    log(f"teacher {metric} {t_val:.4f} | student {metric} {result['best_metric']:.4f} | "
        f"student/teacher {summary['retention']:.3f}" if summary["retention"] is not None else "")
    return summary


# ---- multi-step distillation ------------------------------------------------------------

def multistep_distill(argv=None, log=None):
    """BiT's multi-step distillation as one command: the full-precision teacher teaches a W1A2
    (or W1A4) student, whose best checkpoint then teaches, and initialises, the W1A1 student.

    Every stage is a ``task_distill`` run with ``--bi --recipe <recipe> --act_bits <bits>`` in
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
        BinarizeConfig.from_recipe(args.recipe, b)  # every stage's recipe exists, before any training
    if args.binarize:
        raise ValueError("multistep_distill sets each stage's recipe from --recipe and --stages; remove the "
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
                output_dir=out, resume=os.path.isdir(out) and args.resume,
                eval_packed=args.eval_packed and b == 1), log)  # (only 1-bit stages pack)
        stages.append({"stage": n, "act_bits": b, "output_dir": out, "metric": s["metric"],
                       "teacher_metric": s["teacher_metric"], "student_metric": s["student_metric"],
                       "global_step": s["global_step"], "finished": s["finished"]})
        if not s["finished"]:
            break
        teacher = student_init = out  # its best_model/ teaches and starts the next stage
    first, last = stages[0], stages[-1]
    summary = {"command": "multistep_distill", "recipe": args.recipe, "stages": stages,
               "teacher_metric": first["teacher_metric"], "student_metric": last["student_metric"],
               "retention": (last["student_metric"] / first["teacher_metric"]) if first["teacher_metric"] else None,
               "finished": len(stages) == len(bits) and last["finished"]}
    os.makedirs(args.output_dir, exist_ok=True)
    _write_summary(args, summary, log)
    return summary
