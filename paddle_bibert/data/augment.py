"""Perturbed copies of the training examples, for a distillation whose teacher labels them.

A small task's training set (STS-B: 5,749 pairs) seen many times teaches a binarized student
the teacher's function on few inputs. Distillation needs no gold label, only inputs the teacher
can score, so each example also yields copies with words deleted, replaced by a word of the
training set, or swapped with a neighbour (the token-level edits of EDA, Wei and Zou 2019;
TinyBERT, BiBERT's and BiT's papers augment GLUE's small tasks for the same reason). Each text
of a pair is perturbed on its own. The copies keep their example's label only so that batches
collate; ``task_distill`` refuses a gold-label term with them (their true label is unknown).
"""

from __future__ import annotations

import random
from typing import Sequence

__all__ = ["perturb", "perturbed_copies"]


def perturb(text: str, rng: random.Random, words: Sequence[str], p_delete: float = 0.1,
            p_replace: float = 0.1) -> str:
    """``text`` with each word deleted (``p_delete``) or replaced by a word drawn from ``words``
    (``p_replace``), then one neighbouring pair swapped; never empty (a text whose every word was
    deleted keeps one of them)."""
    source = text.split()
    out = []
    for w in source:
        r = rng.random()
        if r < p_delete:
            continue
        out.append(rng.choice(words) if r < p_delete + p_replace else w)
    if not out:
        return rng.choice(source) if source else text
    if len(out) > 1:
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    return " ".join(out)


def perturbed_copies(examples: Sequence[dict], text_fields: Sequence[str], copies: int,
                     seed: int) -> list[dict]:
    """``copies`` perturbed versions of every example (all first copies, then all second ones,
    ...), the same for the same ``seed``; the replacement words come from the examples' texts."""
    if copies < 0:
        raise ValueError(f"--augment must be >= 0 (copies of each training example), got {copies}")
    rng = random.Random(seed)
    words = [w for ex in examples for f in text_fields for w in ex[f].split()]
    out = []
    for _ in range(copies):
        for ex in examples:
            out.append({**ex, **{f: perturb(ex[f], rng, words) for f in text_fields}})
    return out
