"""Size and FLOPs accounting of a BERT classifier, full precision vs BiBERT 1-1-1.

Conventions (BiBERT paper, Table 1; XNOR-Net for FLOPs):

    size  = 32 bits per full-precision value + 1 bit per binarized weight, in MiB (2**20 B)
    FLOPs = full-precision FLOPs + BOPs / 64
    a multiply-accumulate counts 2 (FLOPs or BOPs): a length-K dot product is 2K

Counted per sequence of ``seq_len`` tokens (batch 1):

    linear K -> N            2 K N per token (+ N for the bias)
    attention per head       S = Q K^T: 2 L^2 d_head;  context = A V: 2 L^2 d_head
    full-precision model     + 1/sqrt(d) scaling 1 per score, softmax 5 per score, mask add 1
    BiBERT                   Q/K/V, S, context, all binarized linears are BOPs; comparisons
                             1[S > 0] 1 FLOP per score; scaling by alpha 1 FLOP per output
    elementwise              LayerNorm 8 per value, GELU 8 per value, residual / embedding adds 1

The paper's 22.5 GFLOPs for BERT-base at length 128 is reproduced to within 0.5% (its
elementwise constants are not published; matmuls are 99% of the count). Its 13.4 MB / 31.2x
for BiBERT counts fewer full-precision values than the model keeps: with 1 bit per binarized
weight and 32 bits for every other value (position and token-type embeddings, LayerNorms,
biases, classifier) the same rule gives 14.97 MiB (27.9x); the difference is the 1.5 MiB
float32 position-embedding table (the paper's number is met, 13.5 MiB, if position and
token-type tables are counted at 1 bit). A real file also stores one float32 scale per output
channel and per vocabulary row (0.44 MiB for BERT-base), which the paper's convention omits:
``packed_file`` below includes them. See ``python -m paddle_bibert.export.cost``.

These counts are BiBERT's (a format-version-1 file). A version-2 file of an elastic recipe
(``bibert_elastic``, ``bit``) also stores each elastic quantizer's float32 scale and shift:
per layer the input shifts of its six linears (5 H + F values) and their 6 scales, for ``bit``
also 3 d_head Q/K/V shifts and 4 scales (Q, K, V, map); plus the pooler's H + 1. For
BERT-base ``bit`` that is 86 K float32 values, 0.33 MiB (about 2% of the file), which
``packed_file`` does not count; nor are BiT's softmax and scalings in the FLOPs.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from typing import Dict

__all__ = ["BertShape", "SHAPES", "count", "report", "main", "PAPER"]


@dataclass
class BertShape:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    num_labels: int = 2

    @classmethod
    def from_config(cls, cfg: dict) -> "BertShape":
        return cls(**{k: int(cfg[k]) for k in asdict(cls()) if k in cfg})


SHAPES: Dict[str, BertShape] = {
    "bert-base": BertShape(),
    "bert-large": BertShape(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                            intermediate_size=4096),
    "minilm": BertShape(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536),
}

#: The paper's Table 1 numbers for BERT-base, length 128 (sizes in MB as printed = MiB).
PAPER = {"fp_size": 418.0, "fp_gflops": 22.5, "bi_size": 13.4, "bi_gflops": 0.4,
         "size_x": 31.2, "flops_x": 59.2}

MiB = 2.0 ** 20
LN_FLOPS, GELU_FLOPS, SOFTMAX_FLOPS = 8, 8, 5


def count(shape: BertShape, seq_len: int = 128) -> dict:
    """Parameter counts, sizes (bytes) and operation counts for one sequence."""
    s, L = shape, seq_len
    h, f, nl = s.hidden_size, s.intermediate_size, s.num_hidden_layers
    dh = h // s.num_attention_heads
    lin = [(h, h)] * 4 + [(h, f), (f, h)]  # K, N of the binarized linears of one layer

    bin_w = s.vocab_size * h + nl * sum(k * n for k, n in lin) + h * h  # + pooler
    fp_vals = (s.max_position_embeddings * h + s.type_vocab_size * h + 2 * h  # tables, emb LN
               + nl * (sum(n for _, n in lin) + 4 * h)  # biases, 2 LayerNorms
               + h  # pooler bias
               + h * s.num_labels + s.num_labels)  # classifier
    scales = s.vocab_size + nl * sum(n for _, n in lin) + h  # alpha per row / output channel
    params = bin_w + fp_vals

    # Operations per sequence.
    mm_lin = 2 * L * nl * sum(k * n for k, n in lin)  # encoder linears
    mm_att = nl * 2 * (2 * L * L * dh) * s.num_attention_heads  # S and context
    pool_cls = 2 * h * h + 2 * h * s.num_labels  # pooler (first token) + classifier
    scores = nl * s.num_attention_heads * L * L
    bias = L * nl * sum(n for _, n in lin) + h + s.num_labels
    elem = (L * h * 2  # embedding sums
            + (1 + 2 * nl) * L * h * LN_FLOPS  # LayerNorms
            + nl * L * f * GELU_FLOPS
            + nl * 2 * L * h  # residual adds
            + h)  # tanh
    fp_flops = mm_lin + mm_att + pool_cls + bias + elem + scores * (2 + SOFTMAX_FLOPS)
    bops = mm_lin + mm_att + 2 * h * h
    outputs = L * nl * sum(n for _, n in lin) + h  # each binary-linear output scaled by alpha
    bi_flops = (2 * h * s.num_labels + bias + elem + scores  # 1[S > 0]
                + outputs + L * h)  # alpha scaling (linears, word-embedding rows)
    ln, gelu = (1 + 2 * nl) * L * h * LN_FLOPS, nl * L * f * GELU_FLOPS
    return {
        "mm_linear_flops": mm_lin, "mm_attention_flops": mm_att, "layernorm_flops": ln,
        "gelu_flops": gelu, "score_comparisons": scores,
        "position_table_bytes": 4 * s.max_position_embeddings * h,
        "params": params, "binarized_weights": bin_w, "fp_values": fp_vals, "scales": scales,
        "fp_bytes": 4 * params,
        "bi_bytes_paper": bin_w / 8 + 4 * fp_vals,
        "bi_bytes_paper_tables_1bit": (bin_w + (s.max_position_embeddings + s.type_vocab_size) * h)
                                      / 8 + 4 * (fp_vals - (s.max_position_embeddings
                                                            + s.type_vocab_size) * h),
        "packed_file": _packed_bytes(shape) + 4 * scales + 4 * fp_vals,
        "fp_flops": fp_flops, "bops": bops, "bi_flops": bi_flops,
        "bi_flops_paper": bi_flops + bops / 64,
    }


def _packed_bytes(s: BertShape) -> int:
    """Bytes of the packed sign bits as stored (rows padded to 64-bit words)."""
    words = lambda n: math.ceil(n / 64)  # noqa: E731
    h, f = s.hidden_size, s.intermediate_size
    per_layer = 4 * h * words(h) + f * words(h) + h * words(f)
    return 8 * (s.vocab_size * words(h) + s.num_hidden_layers * per_layer + h * words(h))


def report(name: str, shape: BertShape, seq_len: int = 128) -> str:
    c = count(shape, seq_len)
    rows = [
        ("parameters", f"{c['params'] / 1e6:.2f} M", f"{c['binarized_weights'] / 1e6:.2f} M "
         "binarized (1 bit) + " f"{c['fp_values'] / 1e6:.3f} M full precision", ""),
        ("size float32", f"{c['fp_bytes'] / MiB:.1f} MiB", "", _paper(name, "fp_size", "MB")),
        ("size BiBERT (paper rule)", f"{c['bi_bytes_paper'] / MiB:.2f} MiB",
         f"{c['fp_bytes'] / c['bi_bytes_paper']:.1f}x smaller", _paper(name, "bi_size", "MB")),
        ("  ... pos/type tables at 1 bit", f"{c['bi_bytes_paper_tables_1bit'] / MiB:.2f} MiB",
         f"{c['fp_bytes'] / c['bi_bytes_paper_tables_1bit']:.1f}x",
         "closest to the paper" if name == "bert-base" else ""),
        ("packed file (+ scales)", f"{c['packed_file'] / MiB:.2f} MiB",
         f"{c['fp_bytes'] / c['packed_file']:.1f}x; + {c['scales'] / 1e3:.0f} K float32 scales",
         "expected .bibert size"),
        ("FLOPs float32", f"{c['fp_flops'] / 1e9:.2f} G", f"seq_len {seq_len}",
         _paper(name, "fp_gflops", "G")),
        ("BOPs BiBERT", f"{c['bops'] / 1e9:.2f} G", "binary multiply-adds x 2", ""),
        ("FLOPs BiBERT (FP)", f"{c['bi_flops'] / 1e9:.3f} G", "LayerNorm, GELU, biases, scales", ""),
        ("FLOPs BiBERT (FLOPs + BOPs/64)", f"{c['bi_flops_paper'] / 1e9:.3f} G",
         f"{c['fp_flops'] / c['bi_flops_paper']:.1f}x fewer", _paper(name, "bi_gflops", "G")),
    ]
    w = max(len(r[0]) for r in rows)
    out = [f"{name}: " + ", ".join(f"{k}={v}" for k, v in asdict(shape).items())]
    out += [f"  {a:<{w}}  {b:>11}  {c_:<48} {d}" for a, b, c_, d in rows]
    return "\n".join(out)


def _paper(name, key, unit):
    if name != "bert-base":
        return ""
    extra = {"bi_size": f" ({PAPER['size_x']}x)", "bi_gflops": f" ({PAPER['flops_x']}x)"}
    return f"paper: {PAPER[key]} {unit}{extra.get(key, '')}"


def notes(shape: BertShape, seq_len: int) -> str:
    """How these counts differ from the paper's Table 1 (BERT-base), computed, not quoted."""
    c, G = count(shape, seq_len), 1e9
    paper_fp_part = PAPER["fp_gflops"] / PAPER["flops_x"] - c["bops"] / 64 / G
    other = c["bi_flops"] - c["layernorm_flops"] - c["gelu_flops"] - c["score_comparisons"]
    no_gelu = c["bi_flops"] - c["gelu_flops"] + c["bops"] / 64
    return f"""\
Differences from the paper (BERT-base, seq_len {seq_len}):
  * FLOPs float32: matmuls (linears {c['mm_linear_flops'] / G:.2f} G + attention \
{c['mm_attention_flops'] / G:.2f} G) are exact; the elementwise
    part (LayerNorm, GELU, softmax) uses stated per-value constants, the paper gives none.
  * BiBERT size: the paper's {PAPER['bi_size']} MB ({PAPER['size_x']}x) is below what its own rule \
gives ({c['bi_bytes_paper'] / MiB:.1f} MiB) when every
    part BiBERT keeps in full precision is counted at 32 bits; the {c['position_table_bytes'] / MiB:.1f} MiB \
float32 position-embedding
    table accounts for the difference (counting the position and token-type tables at 1 bit
    gives {c['bi_bytes_paper_tables_1bit'] / MiB:.1f} MiB). The packed file also stores one float32 scale \
per output channel /
    vocabulary row, which the paper's rule leaves out.
  * BiBERT FLOPs: BOPs/64 = {c['bops'] / 64 / G:.2f} G; the paper's {PAPER['fp_gflops'] / PAPER['flops_x']:.2f} G \
({PAPER['fp_gflops']} / {PAPER['flops_x']}) leaves {paper_fp_part:.2f} G for
    the full-precision part, we count {c['bi_flops'] / G:.3f} G (LayerNorm {c['layernorm_flops'] / G:.3f}, \
GELU {c['gelu_flops'] / G:.3f}, biases,
    alpha scaling and residual adds {other / G:.3f}, comparisons {c['score_comparisons'] / G:.3f}). The \
runtime skips GELU
    entirely because sign(gelu(h)) = sign(h): {(c['bi_flops'] - c['gelu_flops']) / G:.3f} G + BOPs/64 = \
{no_gelu / G:.3f} G, {c['fp_flops'] / no_gelu:.1f}x,
    for what it really computes.
"""


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m paddle_bibert.export.cost",
                                 description="Parameters, sizes, FLOPs and BOPs of a BERT "
                                             "classifier, float32 vs BiBERT 1-1-1")
    ap.add_argument("--shape", default="bert-base",
                    help=f"one of {sorted(SHAPES)} or a packed .bibert file")
    ap.add_argument("--seq_len", type=int, default=128)
    for field in asdict(BertShape()):
        ap.add_argument(f"--{field}", type=int, default=None, help="override the shape")
    args = ap.parse_args(argv)
    if args.shape in SHAPES:
        shape = SHAPES[args.shape]
    else:
        from .format import read_packed

        shape = BertShape.from_config(read_packed(args.shape).config)
    over = {k: getattr(args, k) for k in asdict(shape) if getattr(args, k) is not None}
    shape = BertShape(**{**asdict(shape), **over})
    name = args.shape if not over else f"{args.shape} (modified)"
    print(report(name, shape, args.seq_len))
    if name == "bert-base":
        print(notes(shape, args.seq_len))


if __name__ == "__main__":
    main()
