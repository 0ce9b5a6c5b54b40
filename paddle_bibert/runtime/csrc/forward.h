/* A packed model's forward in one call: the steps PackedBert runs one kernel call at a time
 * (paddle_bibert/runtime/model.py), from a plan of the model's tensors made once (plan.c). */
#ifndef BIBERT_FORWARD_H
#define BIBERT_FORWARD_H

#include "common.h"

/* A binarized activation: the sign bits of x (+ shift), or pack_act's bits of a quantizer. */
typedef struct {
    const float *shift; /* per channel, or NULL */
    float scale;
    int kind;
} plan_quant;

/* A binary linear: its interleaved weights (and nibble panels, or NULL), scales and bias; and
 * the bits it writes where only those are wanted: 1[lo <= count <= hi] (lo not NULL), else
 * those of q (bin_linear's epilogue; q.kind -1: the sign bits of y). */
typedef struct {
    const uint64_t *w;
    const uint8_t *w4;
    size_t n, k;
    const float *alpha, *bias;
    int unsig;
    const int32_t *lo, *hi;
    outq_t q;
} plan_linear;

typedef struct {
    const float *g, *b;
    double eps;
} plan_norm;

/* One encoder layer. Its Q/K/V inputs' bits come from the LayerNorm before it (the previous
 * layer's ln2, or the embeddings'): one product where the three binarize alike (nqkv 1), else
 * one each (nqkv 3): their bits side by side where H is a multiple of 64, else their floats,
 * packed after the attention's shifts qkv_shift ([3H], or NULL). */
typedef struct {
    int nqkv;
    plan_linear qkv[3];
    const float *qkv_shift;
    int mode;
    double sscale, cscale;
    float mscale;
    const double *table; /* BiT's softmax table for (dh, sscale), or NULL */
    plan_quant ctx_q;    /* the output product's input quantizer */
    plan_linear out, ffn_in, ffn_out;
    plan_norm ln1, ln2;
    plan_quant ffn_q; /* the FFN input product's input quantizer (ln1 writes its bits) */
} plan_layer;

typedef struct {
    size_t H, F, heads, nl;
    int att_tables; /* 0: the attention never looks its counts up in tables (as attention's) */
    const uint64_t *word_bits;
    const float *word_alpha, *pos, *tok;
    plan_norm emb_ln;
    plan_quant *qkv_q; /* [nl][3]: layer i's Q/K/V input quantizers (its first nqkv) */
    plan_layer *layers;
    plan_quant pool_q;
    plan_linear pooler;
} plan_t;

/* The pooler's output before its tanh, pooled [B, H], for token ids [B, L] (checked by the
 * caller) and keep [B, L] (0: a padded key); 0, or -1 when out of memory. */
int forward(const plan_t *p, const int64_t *ids, const int64_t *tt, const uint8_t *keep, size_t B,
            size_t L, float *pooled);

#endif
