"""The teacher's outputs kept per training example and reused in later epochs.

The frozen teacher (eval mode: a deterministic function of its input) scores the same training
examples epoch after epoch. :class:`TeacherCache` keeps what the losses read of each example (its
logits and tapped tensors, float32 arrays in memory) the first time the teacher scores it, and
assembles a later batch's outputs from them when every example in the batch is kept at the
batch's length or longer: the teacher then runs in the first epoch only (and for a batch longer
than any its examples came in before).

An entry is keyed by the example's tokens (input and token-type ids up to its last non-pad
token): no example index is needed, any batch order works, identical examples share one entry.
A batch is padded to its longest example, and the states at an example's padded positions do not
depend on how many pads follow (the teacher's attention mask gives pad keys a weight of exactly
0), so positions [0, L) of an entry kept from a batch of length L' >= L are what the teacher
gives at length L, to float rounding (another matrix shape may sum in another order).

A batch that misses runs the teacher padded an eighth longer (to at most ``max_length``) and its
examples are kept at that length, so that in later epochs, where length-grouped batches mix the
examples anew, most batches find every example kept long enough: over 10 epochs of SST-2, CoLA,
STS-B and MRPC in batches of 16 the teacher then scores 13-17% of the tokens it scores live,
against 37-54% with no headroom and 14-18% with a quarter (``benchmarks/cache_headroom.py``
counts them without a model). Once the cache is full a missed batch runs as it would without it.

Memory: a kept position (an example's tokens, its batch's padding and the headroom) costs
(layers + 1) x hidden float32 where the hidden states are tapped (MiniLM-L6-H384: 10.8 KB), and
3 x layers x hidden where Q/K/V are. Entries stop being added at ``max_bytes``; examples not kept
by then run the teacher live in every epoch. One process's cache: under data parallel each rank
would see other examples every epoch, so ``task_distill`` refuses it there.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Tuple

import numpy as np
import paddle

from ..data.loader import pad_batch
from .taps import LENGTH_AXIS

__all__ = ["TeacherCache"]



class _Entry:
    __slots__ = ("length", "logits", "taps", "nbytes")

    def __init__(self, length, logits, taps):
        self.length, self.logits, self.taps = length, logits, taps
        self.nbytes = logits.nbytes + sum(a.nbytes for arrays in taps.values() for a in arrays)


class TeacherCache:
    """``outputs(batch, teacher_forward)``: the teacher's ``(logits, taps)`` on ``batch``, from
    memory where every example is kept at the batch's length, else from ``teacher_forward`` (whose
    outputs are then kept). ``hits`` / ``misses`` count batches, ``nbytes`` the memory held."""

    HEADROOM = 1.125  # a missed batch runs the teacher this much longer (see the module's text)

    def __init__(self, pad_token_id: int, max_bytes: float, max_length: int,
                 pad_token_type_id: int = 0):
        if max_bytes <= 0:
            raise ValueError(f"the teacher cache needs a positive size, got {max_bytes} bytes")
        self.pad_token_id, self.pad_token_type_id = int(pad_token_id), int(pad_token_type_id)
        self.max_bytes, self.max_length = max_bytes, int(max_length)
        self.entries: Dict[Tuple[bytes, bytes], _Entry] = {}
        self.nbytes = self.hits = self.misses = 0
        self.full = False  # an entry was refused for want of room

    def outputs(self, batch, teacher_forward: Callable):
        keys = self._keys(batch)
        length = int(batch["input_ids"].shape[1])
        found = [self.entries.get(k) for k in keys]
        if all(e is not None and e.length >= length for e in found):
            self.hits += 1
            return self._assemble(found, length)
        self.misses += 1
        if self.full:  # nothing more is kept: the teacher runs as it would without the cache
            return teacher_forward(batch)
        run = max(length, min(self.max_length, math.ceil(length * self.HEADROOM)))
        logits, taps = teacher_forward(pad_batch(batch, run, self.pad_token_id, self.pad_token_type_id))
        self._keep(keys, run, logits, taps)
        if run == length or not taps:
            return logits, taps
        return logits, {s: [paddle.slice(t, [LENGTH_AXIS[s]], [0], [length]) for t in tensors]
                        for s, tensors in taps.items()}

    def _keys(self, batch):
        ids, types = batch["input_ids"].numpy(), batch["token_type_ids"].numpy()
        keys = []
        for row, trow in zip(ids, types):
            tokens = np.flatnonzero(row != self.pad_token_id)
            n = int(tokens[-1]) + 1 if tokens.size else 0
            keys.append((row[:n].tobytes(), trow[:n].tobytes()))
        return keys

    def _assemble(self, entries: List[_Entry], length: int):
        logits = paddle.to_tensor(np.stack([e.logits for e in entries]))
        taps = {}
        for stream, axis in ((s, LENGTH_AXIS[s] - 1) for s in entries[0].taps):  # (no batch axis)
            cut = (slice(None),) * axis + (slice(0, length),)
            taps[stream] = [paddle.to_tensor(np.stack([e.taps[stream][j][cut] for e in entries]))
                            for j in range(len(entries[0].taps[stream]))]
        return logits, taps or None  # (None: a teacher without taps, as its live forward gives)

    def _keep(self, keys, length, logits, taps):
        logits = logits.numpy()
        taps = {s: [t.numpy() for t in tensors] for s, tensors in (taps or {}).items()}
        for i, key in enumerate(keys):
            old = self.entries.get(key)
            if old is not None and old.length >= length:
                continue
            entry = _Entry(length, logits[i].copy(), {s: [a[i].copy() for a in arrays]
                                                      for s, arrays in taps.items()})
            grown = entry.nbytes - (old.nbytes if old is not None else 0)
            if self.nbytes + grown > self.max_bytes:
                self.full = True
                continue
            self.entries[key] = entry
            self.nbytes += grown
