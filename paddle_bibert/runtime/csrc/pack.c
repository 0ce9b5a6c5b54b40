/* Binarizing float rows: their sign bits (pack_fn), or the bits of a quantizer after an
 * activation (pack_act), per set, and the operations over many rows. */
#include "isa.h"
#include "ops.h"
#include "pool.h"

static AI void pack_scalar_body(const float *x, size_t n, uint64_t *out) {
    for (size_t w = 0; w < nwords(n); w++) {
        uint64_t word = 0;
        size_t end = n - 64 * w < 64 ? n - 64 * w : 64;
        for (size_t j = 0; j < end; j++) {
            uint32_t u;
            memcpy(&u, x + 64 * w + j, 4);
            word |= (uint64_t)(u >> 31) << j;
        }
        out[w] = word;
    }
}

void pack_generic(const float *x, size_t n, uint64_t *out) { pack_scalar_body(x, n, out); }

/* One row of n values -> nwords(n) words; pad bits 0. */
void pack_act_row_generic(const float *x, size_t n, const float *shift, float scale,
                          int kind, int act, uint64_t *out) {
    for (size_t w = 0; w < nwords(n); w++) {
        uint64_t word = 0;
        size_t end = n - 64 * w < 64 ? n - 64 * w : 64;
        for (size_t j = 0; j < end; j++)
            word |= act_bit(x[64 * w + j], shift, 64 * w + j, scale, kind, act) << j;
        out[w] = word;
    }
}

#ifdef BB_X86
/* movemask_ps collects exactly the 8 sign bits of 8 floats. */
T256 void pack_avx2(const float *x, size_t n, uint64_t *out) {
    size_t full = n / 64;
    for (size_t w = 0; w < full; w++) {
        uint64_t word = 0;
        for (int q = 0; q < 8; q++)
            word |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_loadu_ps(x + 64 * w + 8 * q))
                    << (8 * q);
        out[w] = word;
    }
    if (n % 64) { /* last word: whole groups of 8 by movemask, then single floats */
        const float *t = x + 64 * full;
        size_t rem = n % 64, q = 0;
        uint64_t word = 0;
        for (; q + 8 <= rem; q += 8)
            word |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_loadu_ps(t + q)) << q;
        for (; q < rem; q++) {
            uint32_t u;
            memcpy(&u, t + q, 4);
            word |= (uint64_t)(u >> 31) << q;
        }
        out[full] = word;
    }
}

/* The same bits, 8 values at a time (GELU's erf stays scalar): max(v, 0) is ReLU's v > 0 ? v : 0
 * (-0.0 and NaN give +0.0), the shift is kept where v + shift != 0 (unordered: NaN sums too),
 * and the division is IEEE's, so every bit equals act_bit's. Each word is gathered in a
 * register (or-ing each group of 8 into the stored word waited on the store before). */
static AI T256 void pack_act_words(const float *x, size_t n, const float *shift, float scale,
                                   int kind, int act, uint64_t *out) {
    size_t k = 0;
    for (; k + 64 <= n; k += 64) {
        uint64_t word = 0;
        for (int q = 0; q < 8; q++)
            word |= (uint64_t)act_bits8(_mm256_loadu_ps(x + k + 8 * q),
                                        shift ? shift + k + 8 * q : NULL, scale, kind, act)
                    << (8 * q);
        out[k / 64] = word;
    }
    if (k == n) return;
    uint64_t word = 0; /* the last word: groups of 8, then single values */
    size_t j = k;
    for (; j + 8 <= n; j += 8)
        word |= (uint64_t)act_bits8(_mm256_loadu_ps(x + j), shift ? shift + j : NULL, scale, kind,
                                    act) << (j - k);
    for (; j < n; j++) word |= act_bit(x[j], shift, j, scale, kind, act) << (j - k);
    out[k / 64] = word;
}

T256 void pack_act_row_avx2(const float *x, size_t n, const float *shift, float scale,
                            int kind, int act, uint64_t *out) {
    if (act == ACT_GELU) pack_act_row_generic(x, n, shift, scale, kind, act, out);
    else if (kind == Q_SIGN && act == ACT_NONE && shift) /* elastic signs: compiled for them */
        pack_act_words(x, n, shift, scale, Q_SIGN, ACT_NONE, out);
    else
        pack_act_words(x, n, shift, scale, kind, act, out);
}
#endif

typedef struct {
    const float *x;
    size_t rows, n, chunk;
    uint64_t *out;
} pack_job;

static void pack_chunk(void *vctx, long c, int tid) {
    const pack_job *j = vctx;
    pack_fn *const pack = g_isa->pack;
    const size_t nw = nwords(j->n), r1 = (c + 1) * j->chunk < j->rows ? (c + 1) * j->chunk : j->rows;
    (void)tid;
    for (size_t r = c * j->chunk; r < r1; r++) pack(j->x + r * j->n, j->n, j->out + r * nw);
}

void pack_rows(const float *x, size_t rows, size_t n, uint64_t *out) {
    pack_job j = {x, rows, n, ROW_CHUNK(rows, n), out};
    pool_run(pack_chunk, &j, (long)((rows + j.chunk - 1) / j.chunk));
}

typedef struct {
    const float *x, *shift;
    size_t rows, n, chunk;
    float scale;
    int kind, act;
    uint64_t *out;
} pack_act_job;

static void pack_act_chunk(void *vctx, long c, int tid) {
    const pack_act_job *j = vctx;
    const size_t nw = nwords(j->n), r1 = (c + 1) * j->chunk < j->rows ? (c + 1) * j->chunk : j->rows;
    (void)tid;
    for (size_t r = c * j->chunk; r < r1; r++)
        g_isa->pack_act_row(j->x + r * j->n, j->n, j->shift, j->scale, j->kind, j->act,
                            j->out + r * nw);
}

void pack_act(const float *x, size_t rows, size_t n, const float *shift, float scale,
              int kind, int act, uint64_t *out) {
    /* GELU costs an erf per value: split into chunks sooner */
    const size_t chunk = act == ACT_GELU ? (rows * n > ROW_SPLIT ? 16 : rows) : ROW_CHUNK(rows, n);
    pack_act_job j = {x, shift, rows, n, chunk, scale, kind, act, out};
    pool_run(pack_act_chunk, &j, (long)((rows + chunk - 1) / chunk));
}
