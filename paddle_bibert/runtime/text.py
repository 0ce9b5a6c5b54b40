"""Text to token ids for a packed model, with the vocabulary stored in its file (no Paddle).

A version-3 ``.bibert`` file carries its WordPiece vocabulary, lower-casing rule, special
tokens, maximum sequence length, task name and label names (see ``export.format``). From them
:class:`TextEncoder` builds a Hugging Face ``tokenizers`` BERT pipeline that gives the same ids
as PaddleNLP's ``BertTokenizer`` (clean text, split CJK characters, lower-case and strip accents
when the model is uncased, split on whitespace and punctuation, greedy longest-match WordPiece,
``[CLS] a [SEP]`` / ``[CLS] a [SEP] b [SEP]`` with token types 0 / 1, pairs cut longest-first);
``tests/test_text.py`` checks the agreement on the shipped data.
"""

from __future__ import annotations

import unicodedata
import warnings
from typing import List, Sequence, Tuple, Union

import numpy as np

from ..export.format import PackedFormatError

__all__ = ["TextEncoder", "TextModel", "Text", "softmax"]

#: One input: a sentence, or a sentence pair as a 2-tuple.
Text = Union[str, Tuple[str, str]]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (class probabilities of ``[N, C]`` logits)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


#: Characters PaddleNLP's BertTokenizer splits off as words of their own besides punctuation
#: (``paddlenlp.transformers.tokenizer_utils._is_symbol``): Unicode symbols and these eight.
_SYMBOLS = r"[\p{S}\x{00AD}\x{00B2}\x{00BA}\x{3007}\x{00B5}\x{00D8}\x{014B}\x{01B1}]"


def _drop_other(text: str) -> str:
    """``text`` without the characters PaddleNLP's tokenizer deletes: every Unicode "other"
    (C*: control, format, unassigned, private use) but tab and newlines, NUL and U+FFFD. Done
    here with Python's Unicode tables, as PaddleNLP does, because the tokenizers library keeps
    unassigned code points (as [UNK])."""
    if text.isascii():
        return text.translate(_ASCII_OTHER)
    return "".join(c for c in text if c in "\t\n\r" or not (
        c == "\ufffd" or unicodedata.category(c)[0] == "C"))


_ASCII_OTHER = {c: None for c in [*range(0, 9), 11, 12, *range(14, 32), 127]}


def _cut_pair(a: list, b: list, room: int) -> Tuple[list, list]:
    """Cut a pair to ``room`` tokens longest-first as PaddleNLP does: one token at a time off
    the end of the longer sequence, off the second on a tie."""
    if len(a) + len(b) <= room:
        return a, b
    short = min(len(a), len(b))
    if room - short >= short:  # cutting the longer one alone suffices
        return (a[:room - short], b) if len(a) > len(b) else (a, b[:room - short])
    return a[:(room + 1) // 2], b[:room // 2]


class TextEncoder:
    """Tokenizes sentences (or pairs) for one packed model; see the module docstring."""

    def __init__(self, vocab: Sequence[str], tokenizer: dict, task: dict):
        from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

        specials = {k: tokenizer[k] for k in ("unk_token", "cls_token", "sep_token", "pad_token",
                                              "mask_token") if k in tokenizer}
        index = {}
        for i, token in enumerate(vocab):
            index.setdefault(token, i)  # a repeated token keeps its first id, as PaddleNLP's Vocab
        missing = [t for t in specials.values() if t not in index]
        if missing:
            raise PackedFormatError(f"the stored vocabulary lacks the special tokens {missing}")
        tok = Tokenizer(models.WordPiece(index, unk_token=specials["unk_token"],
                                         max_input_chars_per_word=100))
        lower = bool(tokenizer["do_lower_case"])
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=lower, lowercase=lower)
        # BERT's split on whitespace and punctuation, then PaddleNLP's: every symbol (Unicode S*)
        # and a few listed characters are words of their own too
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.BertPreTokenizer(),
            pre_tokenizers.Split(Regex(_SYMBOLS), behavior="isolated")])
        # special tokens written in the text stay whole, as PaddleNLP's tokenizer keeps them
        tok.add_special_tokens(list(dict.fromkeys(specials.values())))
        self.max_length = int(tokenizer["max_seq_length"])
        self._tok = tok
        self.cls_id, self.sep_id = index[specials["cls_token"]], index[specials["sep_token"]]
        self.pad_token_id = index[specials["pad_token"]]
        self.pair = bool(task["pair"])
        self.labels = task["labels"]  # None: a regression model

    def _check(self, texts) -> List[Text]:
        if isinstance(texts, (str, tuple)):
            raise ValueError("pass a list of inputs, e.g. [\"a gripping film\"] (a sentence pair "
                             "is one tuple inside the list)")
        texts = list(texts)
        if not texts:
            raise ValueError("no inputs given: pass at least one sentence")
        for i, t in enumerate(texts):
            if self.pair and not (isinstance(t, tuple) and len(t) == 2
                                  and all(isinstance(s, str) for s in t)):
                raise ValueError(f"input {i} is {type(t).__name__}; this model scores sentence "
                                 "pairs: pass each input as a tuple (sentence1, sentence2)")
            if not self.pair and not isinstance(t, str):
                raise ValueError(f"input {i} is {type(t).__name__}; this model scores single "
                                 "sentences: pass each input as a string")
        return texts

    def encode(self, texts: Sequence[Text]) -> Tuple[List[List[int]], List[List[int]]]:
        """Token ids and token type ids of each input (no padding); warns once per call if
        inputs were cut to the model's maximum length."""
        texts = self._check(texts)
        parts = [_drop_other(p) for t in texts for p in (t if self.pair else (t,))]
        pieces = [e.ids for e in self._tok.encode_batch(parts, add_special_tokens=False)]
        ids, types, cut = [], [], 0
        for i in range(len(texts)):
            if self.pair:
                a, b = _cut_pair(pieces[2 * i], pieces[2 * i + 1], self.max_length - 3)
                cut += len(a) + len(b) < len(pieces[2 * i]) + len(pieces[2 * i + 1])
                ids.append([self.cls_id, *a, self.sep_id, *b, self.sep_id])
                types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
            else:
                a = pieces[i][:self.max_length - 2]
                cut += len(a) < len(pieces[i])
                ids.append([self.cls_id, *a, self.sep_id])
                types.append([0] * (len(a) + 2))
        if cut:
            warnings.warn(f"{cut} of {len(texts)} inputs are longer than the model's "
                          f"max_seq_length {self.max_length} tokens and were truncated",
                          stacklevel=3)
        return ids, types

    def batches(self, texts: Sequence[Text], batch_size: int):
        """Yield ``(positions, input_ids, token_type_ids)``: padded int64 arrays of up to
        ``batch_size`` inputs of similar length (padded keys are masked and every other step
        is per token, so the padding width moves outputs by float rounding at most)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ids, types = self.encode(texts)
        order = np.argsort([len(x) for x in ids], kind="stable")
        for start in range(0, len(order), batch_size):
            part = order[start:start + batch_size]
            width = max(len(ids[i]) for i in part)
            a = np.full((len(part), width), self.pad_token_id, np.int64)
            t = np.zeros((len(part), width), np.int64)
            for row, i in enumerate(part):
                a[row, :len(ids[i])] = ids[i]
                t[row, :len(types[i])] = types[i]
            yield part, a, t


class TextModel:
    """Text in, label out, for a model whose file stores its vocabulary (format version 3).

    Mixed into ``PackedBert``, which provides ``self(input_ids, token_type_ids)`` -> logits,
    ``self.config`` and ``self._packed_vocab`` (the stored tokens, or None)."""

    _encoder = None

    @property
    def text_encoder(self) -> TextEncoder:
        """The tokenizer built from the file (once); a clear error for a file without one."""
        if self._encoder is None:
            if self._packed_vocab is None:
                raise ValueError("this .bibert file stores no vocabulary (format version 1/2): "
                                 "call the model on token ids, or export it again with "
                                 "export_packed(model, path, tokenizer=...) to predict on text")
            c = self.config
            self._encoder = TextEncoder(self._packed_vocab, c["tokenizer"], c["task"])
        return self._encoder

    @property
    def labels(self):
        """Label name per class, or None for a regression model (needs a version-3 file)."""
        return self.text_encoder.labels

    def scores(self, texts: Sequence[Text], batch_size: int = 32) -> np.ndarray:
        """Logits ``[N, num_labels]`` (float32) of N sentences or pairs, in input order."""
        enc = self.text_encoder
        out = np.empty((0, 0), np.float32)
        for rows, ids, types in enc.batches(texts, batch_size):
            logits = self(ids, types)
            if out.size == 0:
                out = np.empty((len(texts), logits.shape[1]), np.float32)
            out[rows] = logits
        return out

    def predict_proba(self, texts: Sequence[Text], batch_size: int = 32) -> np.ndarray:
        """Class probabilities ``[N, num_labels]`` (softmax of the logits, float64)."""
        if self.text_encoder.labels is None:
            raise ValueError("a regression model has no class probabilities; use predict() "
                             "or scores()")
        return softmax(self.scores(texts, batch_size))

    def predict(self, texts: Sequence[Text], batch_size: int = 32) -> list:
        """The label name of each input (the arg-max class), or its score (regression)."""
        s = self.scores(texts, batch_size)
        labels = self.text_encoder.labels
        if labels is None:
            return [float(v) for v in s[:, 0]]
        return [labels[i] for i in s.argmax(axis=1)]
