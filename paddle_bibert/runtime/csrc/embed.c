/* The embedding: a binarized word table plus the position and token-type tables, per set. */
#include "isa.h"
#include "ops.h"
#include "pool.h"

/* One token: out = (alpha * sign_bits(row) + pos) + tok   (Paddle's order; bit 1 = -alpha),
 * from element d on. */
static void embed_tail(const uint64_t *row, float al, const float *p, const float *k, size_t d,
                       size_t H, float *o) {
    for (; d < H; d++) {
        float e = (row[d / 64] >> (d % 64)) & 1 ? -al : al;
        float s = e + p[d];
        o[d] = s + k[d];
    }
}

void embed_row_generic(const uint64_t *row, float al, const float *p, const float *k,
                       size_t H, float *o) {
    embed_tail(row, al, p, k, 0, H, o);
}

#ifdef BB_X86
T256 void embed_row_avx2(const uint64_t *row, float al, const float *p, const float *k,
                         size_t H, float *o) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 pa = _mm256_set1_ps(al), na = _mm256_set1_ps(-al);
    const size_t full = H - H % 8;
    for (size_t d = 0; d < full; d += 8) {
        const __m256i byte = _mm256_set1_epi32((int)((row[d / 64] >> (d % 64)) & 0xff));
        const __m256 neg = _mm256_castsi256_ps(
            _mm256_cmpeq_epi32(_mm256_and_si256(byte, lane_bit), lane_bit));
        const __m256 e = _mm256_blendv_ps(pa, na, neg);
        _mm256_storeu_ps(o + d, _mm256_add_ps(_mm256_add_ps(e, _mm256_loadu_ps(p + d)),
                                              _mm256_loadu_ps(k + d)));
    }
    embed_tail(row, al, p, k, full, H, o);
}

T512 void embed_row_avx512(const uint64_t *row, float al, const float *p, const float *k,
                           size_t H, float *o) {
    const __m512 pa = _mm512_set1_ps(al), na = _mm512_set1_ps(-al);
    const size_t full = H - H % 16;
    for (size_t d = 0; d < full; d += 16) {
        const __mmask16 neg = (__mmask16)(row[d / 64] >> (d % 64));
        const __m512 e = _mm512_mask_blend_ps(neg, pa, na);
        _mm512_storeu_ps(o + d, _mm512_add_ps(_mm512_add_ps(e, _mm512_loadu_ps(p + d)),
                                              _mm512_loadu_ps(k + d)));
    }
    embed_tail(row, al, p, k, full, H, o);
}
#endif

typedef struct {
    const int64_t *ids, *tt;
    size_t T, L, H, chunk;
    const uint64_t *wbits;
    const float *walpha, *pos, *tok;
    float *out;
} embed_job;

/* Embedding: out[t] = (alpha[id] * sign_bits(row id) + pos[t % L]) + tok[tt]   (Paddle's order). */
static void embed_chunk(void *vctx, long c, int tid) {
    const embed_job *j = vctx;
    const size_t hw = nwords(j->H), H = j->H;
    const size_t t1 = (c + 1) * j->chunk < j->T ? (c + 1) * j->chunk : j->T;
    (void)tid;
    for (size_t t = c * j->chunk; t < t1; t++)
        g_isa->embed_row(j->wbits + (size_t)j->ids[t] * hw, j->walpha[j->ids[t]],
                         j->pos + (t % j->L) * H, j->tok + (size_t)j->tt[t] * H, H, j->out + t * H);
}

void embed(const int64_t *ids, const int64_t *tt, size_t T, size_t L, const uint64_t *wbits,
           const float *walpha, size_t H, const float *pos, const float *tok, float *out) {
    embed_job j = {ids, tt, T, L, H, ROW_CHUNK(T, H), wbits, walpha, pos, tok, out};
    pool_run(embed_chunk, &j, (long)((T + j.chunk - 1) / j.chunk));
}
