/* The attention's per-query kernels of every set: a query's map row against the keys
 * (scores_fn) or from its counts (below_fn), and its context row (context_fn); see isa.h. */
#include "isa.h"

static AI void scores_scalar_body(const uint64_t *q, size_t dw, const uint64_t *kil, size_t LB,
                                  long thr, uint64_t *A) {
    for (size_t jb = 0; jb < LB; jb++)
        for (int l = 0; l < 8; l++) {
            long c = 0;
            for (size_t w = 0; w < dw; w++) c += __builtin_popcountll(q[w] ^ kil[(jb * dw + w) * 8 + l]);
            size_t j = jb * 8 + (size_t)l;
            if (c < thr) A[j / 64] |= 1ULL << (j % 64);
        }
}

static AI void context_scalar_body(const uint64_t *A, size_t Lw, const uint64_t *vil, size_t dh,
                                   float *out) {
    const long pa = popcount_words(A, Lw);
    for (size_t d = 0; d < dh; d++) {
        long c = 0;
        for (size_t w = 0; w < Lw; w++) c += __builtin_popcountll(A[w] & vil[((d / 8) * Lw + w) * 8 + d % 8]);
        out[d] = (float)(pa - 2 * c);
    }
}

void below_generic(const int32_t *c, size_t n, long thr, uint64_t *bits) {
    for (size_t w = 0; w < nwords(n); w++) { /* a word in a register, stored once */
        uint64_t word = 0;
        for (size_t l = 0; l < 64 && 64 * w + l < n; l++) word |= (uint64_t)(c[64 * w + l] < thr) << l;
        bits[w] = word;
    }
}

void scores_generic(const uint64_t *q, size_t dw, const uint64_t *kil, size_t LB, long thr,
                    uint64_t *A) {
    scores_scalar_body(q, dw, kil, LB, thr, A);
}

void context_generic(const uint64_t *A, size_t Lw, const uint64_t *vil, size_t dh,
                     float *out) {
    context_scalar_body(A, Lw, vil, dh, out);
}

#ifdef BB_X86

__attribute__((target("popcnt"))) void scores_popcnt(const uint64_t *q, size_t dw,
                                                     const uint64_t *kil, size_t LB,
                                                     long thr, uint64_t *A) {
    scores_scalar_body(q, dw, kil, LB, thr, A);
}

__attribute__((target("popcnt"))) void context_popcnt(const uint64_t *A, size_t Lw,
                                                      const uint64_t *vil, size_t dh,
                                                      float *out) {
    context_scalar_body(A, Lw, vil, dh, out);
}

T256 void scores_avx2(const uint64_t *q, size_t dw, const uint64_t *kil, size_t LB,
                      long thr, uint64_t *A) {
    const __m256i t = _mm256_set1_epi64x(thr), zero = _mm256_setzero_si256();
    uint64_t word = 0; /* one word of A (64 keys) in a register */
    for (size_t jb = 0; jb < LB; jb++) {
        __m256i c0 = zero, c1 = zero;
        for (size_t w = 0; w < dw; w++) { /* dw <= 31 words of a head: bytes suffice */
            const __m256i qv = _mm256_set1_epi64x((long long)q[w]);
            const uint64_t *k = kil + (jb * dw + w) * 8;
            c0 = _mm256_add_epi8(c0, popcnt8_256(_mm256_xor_si256(qv, _mm256_loadu_si256((const __m256i *)k))));
            c1 = _mm256_add_epi8(c1, popcnt8_256(_mm256_xor_si256(qv, _mm256_loadu_si256((const __m256i *)(k + 4)))));
        }
        /* count < thr  <=>  thr > count */
        const int m0 = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(t, _mm256_sad_epu8(c0, zero))));
        const int m1 = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(t, _mm256_sad_epu8(c1, zero))));
        word |= (uint64_t)(m0 | m1 << 4) << (8 * (jb % 8));
        if (jb % 8 == 7 || jb + 1 == LB) {
            A[jb / 8] |= word;
            word = 0;
        }
    }
}

T256 void below_avx2(const int32_t *c, size_t n, long thr, uint64_t *bits) {
    const __m256i t = _mm256_set1_epi32((int)thr);
    for (size_t w = 0; w < nwords(n); w++) {
        uint64_t word = 0;
        for (size_t q = 0; q < 8 && 64 * w + 8 * q < n; q++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(c + 64 * w + 8 * q));
            word |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(t, v)))
                    << (8 * q);
        }
        if (n - 64 * w < 64) word &= (1ULL << (n - 64 * w)) - 1;
        bits[w] = word;
    }
}

/* Attention context of one query, 8 head channels at a time (see context_fn). */
T256 void context_avx2(const uint64_t *A, size_t Lw, const uint64_t *vil, size_t dh,
                       float *out) {
    /* 8 dimensions at a time, counts in bytes for up to 31 words, then in 64-bit lanes, and
     * the 8 of them to float in registers (dimension d of a block in lane d) */
    const __m256i zero = _mm256_setzero_si256(), lo32 = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const __m256i pa = _mm256_set1_epi32((int)popcount_words(A, Lw));
    for (size_t db = 0; db < (dh + 7) / 8; db++) {
        __m256i c0 = zero, c1 = zero;
        for (size_t w0 = 0; w0 < Lw; w0 += BYTE_WORDS) {
            const size_t w1 = w0 + BYTE_WORDS < Lw ? w0 + BYTE_WORDS : Lw;
            __m256i b0 = zero, b1 = zero;
            for (size_t w = w0; w < w1; w++) {
                const __m256i av = _mm256_set1_epi64x((long long)A[w]);
                const uint64_t *v = vil + (db * Lw + w) * 8;
                b0 = _mm256_add_epi8(b0, popcnt8_256(_mm256_and_si256(av, _mm256_loadu_si256((const __m256i *)v))));
                b1 = _mm256_add_epi8(b1, popcnt8_256(_mm256_and_si256(av, _mm256_loadu_si256((const __m256i *)(v + 4)))));
            }
            c0 = _mm256_add_epi64(c0, _mm256_sad_epu8(b0, zero));
            c1 = _mm256_add_epi64(c1, _mm256_sad_epu8(b1, zero));
        }
        const __m256i c = _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(c0, lo32),
                                                    _mm256_permutevar8x32_epi32(c1, lo32), 0x20);
        store8(out + 8 * db, _mm256_cvtepi32_ps(_mm256_sub_epi32(pa, _mm256_add_epi32(c, c))),
               dh - 8 * db);
    }
}

/* NB blocks of 8 keys from jb on: NB independent counts (one block at a time, each block's mask
 * waited on the one before through the word it is or-ed into), then their masks. */
static AI T512 uint64_t scores_word512(const uint64_t *q, size_t dw, const uint64_t *kil, size_t jb,
                                      __m512i t, const int NB) {
    __m512i acc[8];
    for (int b = 0; b < NB; b++) acc[b] = _mm512_setzero_si512();
    for (size_t w = 0; w < dw; w++) {
        const __m512i qv = _mm512_set1_epi64((long long)q[w]);
        for (int b = 0; b < NB; b++)
            acc[b] = _mm512_add_epi64(acc[b], _mm512_popcnt_epi64(_mm512_xor_si512(
                         qv, _mm512_loadu_si512(kil + ((jb + b) * dw + w) * 8))));
    }
    uint64_t word = 0;
    for (int b = 0; b < NB; b++) word |= (uint64_t)_mm512_cmplt_epi64_mask(acc[b], t) << (8 * b);
    return word;
}

T512 void scores_avx512(const uint64_t *q, size_t dw, const uint64_t *kil, size_t LB,
                        long thr, uint64_t *A) {
    const __m512i t = _mm512_set1_epi64(thr);
    size_t j0 = 0;
    for (; j0 + 8 <= LB; j0 += 8) A[j0 / 8] |= scores_word512(q, dw, kil, j0, t, 8); /* 64 keys */
    for (size_t jb = j0; jb < LB; jb++) /* the last, partial word: a block at a time */
        A[j0 / 8] |= scores_word512(q, dw, kil, jb, t, 1) << (8 * (jb - j0));
}

T512 void context_avx512(const uint64_t *A, size_t Lw, const uint64_t *vil, size_t dh,
                         float *out) {
    const __m512i p = _mm512_set1_epi64(popcount_words(A, Lw));
    for (size_t db = 0; db < (dh + 7) / 8; db++) {
        __m512i acc = _mm512_setzero_si512();
        for (size_t w = 0; w < Lw; w++)
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_and_si512(
                      _mm512_set1_epi64((long long)A[w]), _mm512_loadu_si512(vil + (db * Lw + w) * 8))));
        store8(out + 8 * db, _mm512_cvtepi64_ps(_mm512_sub_epi64(p, _mm512_add_epi64(acc, acc))),
               dh - 8 * db);
    }
}
#endif
