/*
 * The operations the Python module exposes, each over whole tensors and cut into chunks for
 * the thread pool; they call the current kernel set (isa.h). Buffers are checked by the caller.
 */
#ifndef BIBERT_OPS_H
#define BIBERT_OPS_H

#include "common.h"

/* gemm.c: the binary products, raw counts or the binary linear (see popc_gemm). */
void popc_gemm(const uint64_t *a, size_t M, size_t kw, const uint64_t *b, size_t N, int op,
               int32_t *cnt, float *out_f, uint32_t *out_bits, const float *alpha,
               const float *bias, long K, int unsig, const outq_t *q, const uint8_t *w4);
/* pack.c: rows of floats to their sign bits, or to a quantizer's bits */
void pack_rows(const float *x, size_t rows, size_t n, uint64_t *out);
void pack_act(const float *x, size_t rows, size_t n, const float *shift, float scale, int kind,
              int act, uint64_t *out);
/* attention.c: binary attention over B sequences of L tokens (MODE_SOFTMAX: table is
 * softmax_table(dh, sscale)'s, or NULL to make it; tables 0: no table lookup, even where the
 * kernel set has it); -1 when out of memory */
int attention(const uint64_t *qkvb, const uint8_t *keep, size_t B, size_t L, size_t H,
              size_t heads, int mode, double sscale, float mscale, double cscale,
              const double *table, int tables, float *ctx);
/* embed.c: the binarized word embedding plus the position and token-type tables */
void embed(const int64_t *ids, const int64_t *tt, size_t T, size_t L, const uint64_t *wbits,
           const float *walpha, size_t H, const float *pos, const float *tok, float *out);
/* layer_norm.c: LayerNorm of x (+ res), and the bits of nb binarizations of it: a quantizer's
 * (pack_act's, no activation) or, kind Q_SIGN without a shift, the sign bits; into out
 * [T, nwords(H)] each */
typedef struct {
    const float *shift;
    float scale;
    int kind;
    uint64_t *out;
} ln_bits_t;
void layer_norm(const float *x, const float *res, size_t T, size_t H, const float *g,
                const float *bta, double eps, float *out, int nb, const ln_bits_t *bits);

#endif
