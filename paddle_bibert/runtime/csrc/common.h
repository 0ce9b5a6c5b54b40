/*
 * What every file of the packed runtime's kernels shares: the bit layout, the operation codes,
 * and the small helpers each kernel set inlines.
 *
 * Bit layout (paddle_bibert/export/pack.py): element k of a length-n vector is bit k % 64 of
 * uint64 word k / 64; the bit is the float's sign bit (1 = -1, 0 = +1); pad bits are 0.
 *
 *   {-1,+1} . {-1,+1}   a.w = n - 2 popcount(a XOR w)
 *   {0,1}   . {-1,+1}   A.v = popcount(A) - 2 popcount(A AND v)
 * (v holds sign bits, 1 = -1: the spec's 2 popcount(A AND v+) - popcount(A) with v+ = NOT v).
 * The second serves the Bi-Attention map times sign(V), BiT's {0,1} softmax map times sign(V)
 * and BiT's {0,1} FFN-output input times the sign weights ("unsigned" binary linear).
 *
 * Right-hand operands use an "interleaved" layout: 8 output channels side by side per word,
 *   B_il[nb][w][l] = word w of channel 8*nb + l        (shape [ceil(N/8), kw, 8])
 * so one 512-bit load holds word w of 8 channels and the activation word is broadcast: the
 * micro-kernel never needs a horizontal sum. A binary linear whose output is only binarized
 * again (Q/K/V, FFN-in) writes just the sign bits of its float result, and the attention
 * reads those bits: at batch 32 the float outputs would cost more memory traffic than the
 * popcounts cost time.
 *
 * Float arithmetic is plain (no FMA contraction: built with -ffp-contract=off; the binary
 * linear's output is one fused multiply-add, written as such) so that the epilogues give the
 * same bits as the numpy reference (paddle_bibert/runtime/reference.py).
 */
#ifndef BIBERT_COMMON_H
#define BIBERT_COMMON_H

#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define BB_X86 1
#endif

#define AI __attribute__((always_inline)) inline
enum { OP_XOR = 0, OP_AND = 1 };
enum { MODE_BOOL = 0, MODE_KEEP = 1, MODE_SOFTMAX = 2 };
/* Binarization of a float activation (pack_act): its sign bit, or 1[v / a > 0.5] ({0, a}). */
enum { Q_SIGN = 0, Q_UNSIGNED = 1 };
/* Elementwise activation applied before binarizing (pack_act). */
enum { ACT_NONE = 0, ACT_RELU = 1, ACT_GELU = 2 };
/* The quantizer a binary linear's output goes through when only its bits are wanted (pack_act's
 * act, shift, scale and kind; shift indexed by output channel, or NULL). Or, with lo/hi (then the
 * rest is unused), the bit of channel n is 1[lo[n] <= count <= hi[n]]: the counts whose output's
 * bit is 1, worked out once per layer (sign_cut), so the epilogue is two integer compares. */
typedef struct {
    const float *shift;
    float scale;
    int kind, act;
    const int32_t *lo, *hi;
} outq_t;
/* Tile of the popcount GEMM: TM rows x TN interleaved blocks (TN * 8 channels). */
enum { TM = 4, TN = 4 };

static inline size_t nwords(size_t n) { return (n + 63) / 64; }

/* popcount of a row of words; inlined into each instruction set's kernel, where the builtin
 * becomes its POPCNT instruction (a plain C caller would call libgcc's software count) */
static AI long popcount_words(const uint64_t *a, size_t n) {
    long c = 0;
    for (size_t w = 0; w < n; w++) c += __builtin_popcountll(a[w]);
    return c;
}

/* A binary linear's output d * alpha + bias rounded once to float32, as fmaf gives it (the
 * vector kernels' FMA) without the instruction, for integer |d| < 2^24. In double the product
 * is exact and the sum s is the exact value rounded; rounding s to float rounds twice only where
 * s is the midpoint of two floats (its low 29 bits 1 << 28 in float's normal range). There the
 * sum's error e is found exactly (TwoSum) and an inexact s rounded to odd (last bit set, toward
 * e) before its rounding to float, which 53 bits make a single rounding. The numpy reference
 * (linear_y) rounds every value so. */
static inline float lin_y(long d, float alpha, float bias) {
    const double p = (double)d * alpha, b = bias, s = p + b;
    int64_t u;
    memcpy(&u, &s, 8);
    if ((u & 0x1fffffff) != 0x10000000 && fabs(s) >= 0x1p-126) return (float)s;
    const double bb = s - p, e = (p - (s - bb)) + (b - bb);
    /* (a bias of inf or nan leaves e nan: s is then the output) */
    if (e != 0.0 && isfinite(s) && !(u & 1)) u += (e > 0) == (s > 0) ? 1 : -1;
    double r;
    memcpy(&r, &u, 8);
    return (float)r;
}

/* GELU as Paddle's float32 kernel evaluates it, x * 0.5 * (1 + erf(x * (1/sqrt 2))), each step
 * rounded to float32 and erf taken in double: it keeps the float32 cancellation of 1 + erf, so
 * it returns -0.0 where Paddle does for very negative x (from about -5.6; Paddle's own erf
 * reaches -1 from about -5.2). */
static inline float gelu32(float v) {
    const float t = v * (float)M_SQRT1_2;
    const float e = (float)erf((double)t);
    return (v * 0.5f) * (1.0f + e);
}

/* The bit of one value of a binarized activation: v = act(x) (+ shift), then signbit(v)
 * (Q_SIGN: {-a, +a} with a folded into the next layer's scales) or 1[v / scale > 0.5] in float32
 * (Q_UNSIGNED: BiT's {0, a}, a * clip(round_half_down(v / a), 0, 1)). */
static inline uint64_t act_bit(float v, const float *shift, size_t k, float scale, int kind,
                               int act) {
    if (act == ACT_RELU) v = v > 0.0f ? v : 0.0f;
    else if (act == ACT_GELU) v = gelu32(v);
    if (shift) { /* a sum of exactly 0 keeps v's sign bit (GELU's -0.0 + 0 stays -) */
        const float s = v + shift[k];
        if (s != 0.0f) v = s;
    }
    if (kind == Q_SIGN) {
        uint32_t u;
        memcpy(&u, &v, 4);
        return u >> 31;
    }
    return v / scale > 0.5f;
}

#endif
