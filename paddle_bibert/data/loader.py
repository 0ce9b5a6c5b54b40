"""Tokenisation, dynamic-padding collation and reproducible data loaders.

Typical use::

    feats = encode_examples(load_glue("sst-2", data_dir, "train"), tokenizer, "sst-2", 64)
    loader = make_dataloader(feats, 32, shuffle=True, seed=42, collate_fn=Collator(tokenizer, "sst-2"))
    for epoch in range(start_epoch, epochs):
        # resume mid-epoch: skip the batches already trained on (no data is loaded for them)
        loader.batch_sampler.set_epoch(epoch, skip_batches=start_step if epoch == start_epoch else 0)
        for batch in loader:  # {"input_ids", "token_type_ids", "labels"} paddle tensors
            ...

With ``n = loader.batch_sampler.batches_per_epoch`` a global step ``s`` maps
back to ``set_epoch(s // n, skip_batches=s % n)`` when resuming.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import paddle

from .glue import get_task


def encode_examples(examples, tokenizer, task: str, max_seq_length: int) -> list[dict]:
    """Tokenise examples once (the result is reused every epoch).

    Returns dicts with ``input_ids`` and ``token_type_ids`` (python lists holding
    [CLS] ... [SEP] (... [SEP]), at most ``max_seq_length`` long; pairs are cut
    longest-first) and ``labels`` (int, or float for regression) when the
    examples have labels.
    """
    info = get_task(task)
    # room for [CLS], one [SEP] per text and at least one token per text
    min_len = 1 + 2 * len(info.text_fields)
    if max_seq_length < min_len:
        raise ValueError(f"max_seq_length={max_seq_length} is too small for {info.name}; use at least {min_len}")
    examples = list(examples)
    if not examples:
        return []
    for i, example in enumerate(examples):
        for field in info.text_fields:
            if field not in example:
                raise ValueError(
                    f"example {i} has no {field!r} field (keys: {sorted(example)}); {info.name} "
                    f"examples need {list(info.text_fields)}, as produced by load_glue({info.name!r}, ...)"
                )
    texts = [ex[info.text_fields[0]] for ex in examples]
    pairs = [ex[info.text_fields[1]] for ex in examples] if info.is_pair else None
    with warnings.catch_warnings():
        # PaddleNLP warns that pairs cut longest-first return no overflowing
        # tokens; we never ask for them, so the warning is only noise.
        warnings.filterwarnings("ignore", message="Be aware, overflowing tokens")
        encoded = tokenizer(
            texts,
            pairs,
            max_length=max_seq_length,
            truncation="longest_first",
            return_token_type_ids=True,
            return_attention_mask=False,
        )
    cast = float if info.is_regression else int
    features = []
    for i, example in enumerate(examples):
        feature = {"input_ids": list(encoded["input_ids"][i]), "token_type_ids": list(encoded["token_type_ids"][i])}
        if "labels" in example:
            feature["labels"] = cast(example["labels"])
        features.append(feature)
    return features


class Collator:
    """Pad a list of features to the longest one in the batch (or to ``fixed_length``).

    Returns ``{"input_ids", "token_type_ids"}`` int64 tensors ``[B, L]`` (padded
    with the tokenizer's pad id / pad token type id) and ``labels`` ``[B]``
    (int64, float32 for regression) when the features carry labels.  No
    attention mask: PaddleNLP's BERT derives it from ``input_ids == pad_token_id``.
    """

    def __init__(self, tokenizer, task: str, fixed_length: int = None):
        # fixed_length: pad every batch to this many tokens (BiBERT's authors pad to
        # max_seq_length, so their direction matching covers that many positions)
        self.fixed_length = fixed_length
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. '[PAD]') first")
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.pad_token_type_id = int(getattr(tokenizer, "pad_token_type_id", 0) or 0)
        self.is_regression = get_task(task).is_regression

    def __call__(self, features) -> dict:
        if not features:
            raise ValueError("cannot collate an empty batch")
        max_len = max(len(f["input_ids"]) for f in features)
        if self.fixed_length is not None:
            if max_len > self.fixed_length:
                raise ValueError(f"an example has {max_len} tokens, more than the fixed length {self.fixed_length}")
            max_len = self.fixed_length
        input_ids = np.full((len(features), max_len), self.pad_token_id, dtype="int64")
        token_type_ids = np.full((len(features), max_len), self.pad_token_type_id, dtype="int64")
        for i, f in enumerate(features):
            input_ids[i, : len(f["input_ids"])] = f["input_ids"]
            token_type_ids[i, : len(f["token_type_ids"])] = f["token_type_ids"]
        batch = {"input_ids": paddle.to_tensor(input_ids), "token_type_ids": paddle.to_tensor(token_type_ids)}
        if "labels" in features[0]:
            dtype = "float32" if self.is_regression else "int64"
            batch["labels"] = paddle.to_tensor(np.array([f["labels"] for f in features], dtype=dtype))
        return batch


    def pad_to(self, batch: dict, length: int) -> dict:
        """``batch`` padded on the right to ``length`` tokens (data parallel: every rank pads to
        the longest sequence across ranks, so each example's tensors equal a one-process run's)."""
        return pad_batch(batch, length, self.pad_token_id, self.pad_token_type_id)


def pad_batch(batch: dict, length: int, pad_token_id: int, pad_token_type_id: int = 0) -> dict:
    """A collated ``batch`` padded on the right to ``length`` tokens, as a longer batch's."""
    extra = length - batch["input_ids"].shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad a batch of length {batch['input_ids'].shape[1]} to {length}")
    if extra == 0:
        return batch
    out = dict(batch)
    for key, value in (("input_ids", pad_token_id), ("token_type_ids", pad_token_type_id)):
        t = batch[key]
        out[key] = paddle.concat([t, paddle.full([t.shape[0], extra], value, dtype=t.dtype)], axis=1)
    return out


class SeededBatchSampler(paddle.io.BatchSampler):
    """Batch sampler whose order is a pure function of (seed, epoch).

    Used instead of paddle's RandomSampler (global RNG state) and
    DistributedBatchSampler (shuffles with ``RandomState(epoch)``, ignoring any
    seed), so that a resumed run can rebuild exactly the batches it would have
    seen: ``set_epoch(epoch, skip_batches=k)`` makes the next iteration start at
    batch ``k`` of that epoch.  The epoch also advances by itself after each full
    pass, so forgetting ``set_epoch`` does not replay one order forever.

    With ``num_replicas > 1`` each rank takes every ``num_replicas``-th index of
    the shuffled order (padded by wrapping around so all ranks get equally many),
    as paddle's DistributedBatchSampler does.

    ``lengths`` (one per example) groups batches by length, as Hugging Face's
    ``group_by_length``: the shuffled order is cut into runs of ``MEGABATCH``
    batches, each run sorted by length (longest first), so a batch holds examples
    of similar length and pads less, while which examples meet stays random.
    Without shuffling, ``lengths`` sorts the whole set by length: for evaluation, whose
    metrics do not depend on the order of the examples, at the least padding.
    """

    #: batches per run sorted by length (Hugging Face's Trainer uses 50)
    MEGABATCH = 50

    def __init__(self, dataset, batch_size: int, shuffle: bool, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0, lengths=None):
        super().__init__(dataset=dataset, batch_size=batch_size, shuffle=False, drop_last=drop_last)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = num_replicas
        self.rank = rank
        self.num_samples = len(dataset)
        self.epoch = 0
        self._skip = 0
        if lengths is not None and len(lengths) != self.num_samples:
            raise ValueError(f"lengths has {len(lengths)} entries for {self.num_samples} examples")
        self.lengths = None if lengths is None else np.asarray(lengths)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        if skip_batches < 0 or skip_batches > self.batches_per_epoch:
            raise ValueError(f"skip_batches must be in [0, {self.batches_per_epoch}], got {skip_batches}")
        self.epoch = int(epoch)
        self._skip = int(skip_batches)

    @property
    def batches_per_epoch(self) -> int:
        per_rank = math.ceil(self.num_samples / self.num_replicas)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def _epoch_indices(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            # a seed sequence keyed on (seed, epoch): independent streams per epoch
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        if self.shuffle and self.lengths is not None:
            run = self.MEGABATCH * self.batch_size * self.num_replicas  # ranks stride through a run
            runs = [order[i:i + run] for i in range(0, len(order), run)]
            order = np.concatenate([r[np.argsort(-self.lengths[r], kind="stable")] for r in runs])
        elif self.lengths is not None:  # unshuffled (evaluation): the whole set shortest first
            order = np.argsort(self.lengths, kind="stable")
        if self.num_replicas > 1:
            total = math.ceil(self.num_samples / self.num_replicas) * self.num_replicas
            order = np.resize(order, total)[self.rank :: self.num_replicas]  # resize repeats from the start
        return order

    def __iter__(self):
        epoch, skip = self.epoch, self._skip
        self._skip = 0  # a skip applies to one pass only
        order = self._epoch_indices(epoch)
        for b in range(skip, self.batches_per_epoch):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()
        self.epoch = epoch + 1

    def __len__(self) -> int:
        return self.batches_per_epoch - self._skip


def make_dataloader(features, batch_size: int, shuffle: bool, seed: int = 0, *, collate_fn,
                    drop_last: bool = False, sampler=None, distributed: bool = False,
                    group_by_length: bool = False) -> paddle.io.DataLoader:
    """A single-process ``paddle.io.DataLoader`` over encoded ``features``.

    The default batch sampler is a :class:`SeededBatchSampler` (reachable as
    ``loader.batch_sampler``); with ``distributed=True`` it shards by
    ``paddle.distributed.get_rank()/get_world_size()``.  Pass ``sampler`` (any
    paddle batch sampler) to use it as is; batch_size, shuffle, seed, drop_last and
    distributed are then ignored.  ``collate_fn`` is usually ``Collator(tokenizer, task)``.
    ``group_by_length``: batches of examples of similar length (see :class:`SeededBatchSampler`).
    """
    if sampler is None:
        num_replicas, rank = 1, 0
        if distributed:
            num_replicas, rank = paddle.distributed.get_world_size(), paddle.distributed.get_rank()
        lengths = [len(f["input_ids"]) for f in features] if group_by_length else None
        sampler = SeededBatchSampler(features, batch_size, shuffle, seed=seed, drop_last=drop_last,
                                     num_replicas=num_replicas, rank=rank, lengths=lengths)
    # num_workers=0: features are small python lists; worker processes only add
    # start-up cost and another source of non-determinism.
    return paddle.io.DataLoader(features, batch_sampler=sampler, collate_fn=collate_fn, num_workers=0)
