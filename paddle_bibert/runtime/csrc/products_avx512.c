/* The AVX-512 set's binary products (VPOPCNTDQ), with the binary linear's epilogue fused. */
#include "isa.h"

#ifdef BB_X86
/* MR x NB accumulators of 8 x 64-bit counts; constant MR/NB calls are fully unrolled. */
static AI T512 void mk512(const uint64_t *a, size_t kw, const uint64_t *b, const int op,
                          int32_t *c, size_t ldc, const int MR, const int NB) {
    __m512i acc[TM][TN];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NB; j++) acc[r][j] = _mm512_setzero_si512();
    for (size_t w = 0; w < kw; w++) {
        __m512i bv[TN];
        for (int j = 0; j < NB; j++) bv[j] = _mm512_loadu_si512(b + (size_t)j * kw * 8 + w * 8);
        for (int r = 0; r < MR; r++) {
            __m512i av = _mm512_set1_epi64((long long)a[(size_t)r * kw + w]);
            for (int j = 0; j < NB; j++) {
                __m512i x = op == OP_AND ? _mm512_and_si512(av, bv[j]) : _mm512_xor_si512(av, bv[j]);
                acc[r][j] = _mm512_add_epi64(acc[r][j], _mm512_popcnt_epi64(x));
            }
        }
    }
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NB; j++)
            _mm256_storeu_si256((__m256i *)(c + (size_t)r * ldc + 8 * j),
                                _mm512_cvtepi64_epi32(acc[r][j]));
}

/* Full 4 x 32 tile with the binary-linear epilogue fused (no count round trip through memory):
 * o[r, 8j + l] = (K - 2 count) * alpha + bias rounded once (lin_y8), as popc_gemm. */
static AI T512 void lin_tile512_body(const uint64_t *a, size_t kw, const uint64_t *b, const int op,
                                     float *o, size_t ldo, const float *alpha, const float *bias,
                                     long K, const long *Krow, uint32_t *bits, size_t ldb,
                                     const outq_t *q) {
    __m512i acc[TM][TN];
    for (int r = 0; r < TM; r++)
        for (int j = 0; j < TN; j++) acc[r][j] = _mm512_setzero_si512();
    for (size_t w = 0; w < kw; w++) {
        __m512i bv[TN];
        for (int j = 0; j < TN; j++) bv[j] = _mm512_loadu_si512(b + (size_t)j * kw * 8 + w * 8);
        for (int r = 0; r < TM; r++) {
            __m512i av = _mm512_set1_epi64((long long)a[(size_t)r * kw + w]);
            for (int j = 0; j < TN; j++) {
                __m512i x = op == OP_AND ? _mm512_and_si512(av, bv[j]) : _mm512_xor_si512(av, bv[j]);
                acc[r][j] = _mm512_add_epi64(acc[r][j], _mm512_popcnt_epi64(x));
            }
        }
    }
    uint32_t sg[TM] = {0};
    if (bits && q && q->lo) {
        for (int j = 0; j < TN; j++) {
            const __m512i lo = _mm512_cvtepi32_epi64(_mm256_loadu_si256((const __m256i *)(q->lo + 8 * j)));
            const __m512i hi = _mm512_cvtepi32_epi64(_mm256_loadu_si256((const __m256i *)(q->hi + 8 * j)));
            for (int r = 0; r < TM; r++)
                sg[r] |= (uint32_t)_mm512_mask_cmple_epi64_mask(_mm512_cmpge_epi64_mask(acc[r][j], lo),
                                                                acc[r][j], hi) << (8 * j);
        }
        for (int r = 0; r < TM; r++) bits[(size_t)r * ldb] = sg[r];
        return;
    }
    __m512i kk[TM];
    for (int r = 0; r < TM; r++) kk[r] = _mm512_set1_epi64(Krow ? Krow[r] : K);
    for (int j = 0; j < TN; j++) {
        for (int r = 0; r < TM; r++) {
            /* K - 2 count fits 32 bits (|d| < 2^24) */
            const __m256i d = _mm512_cvtepi64_epi32(_mm512_sub_epi64(kk[r], _mm512_add_epi64(acc[r][j], acc[r][j])));
            const __m256 y = lin_y8(d, alpha + 8 * j, bias + 8 * j);
            if (!bits) _mm256_storeu_ps(o + (size_t)r * ldo + 8 * j, y);
            else if (q) sg[r] |= act_bits8(y, q->shift ? q->shift + 8 * j : NULL, q->scale, q->kind,
                                           q->act) << (8 * j);
            else sg[r] |= (uint32_t)_mm256_movemask_ps(y) << (8 * j); /* sign bits of y */
        }
    }
    if (bits)
        for (int r = 0; r < TM; r++) bits[(size_t)r * ldb] = sg[r];
}

T512 void lin_tile_avx512(const uint64_t *a, size_t kw, const uint64_t *b, int op, float *o,
                          size_t ldo, const float *alpha, const float *bias, long K,
                          const long *Krow, uint32_t *bits, size_t ldb, const outq_t *q) {
    if (op == OP_AND) lin_tile512_body(a, kw, b, OP_AND, o, ldo, alpha, bias, K, Krow, bits, ldb, q);
    else lin_tile512_body(a, kw, b, OP_XOR, o, ldo, alpha, bias, K, Krow, bits, ldb, q);
}

T512 void tile_avx512(const uint64_t *a, size_t kw, const uint64_t *b, int op, int32_t *c,
                      size_t ldc, int mr, int nb) {
    if (mr == TM && nb == TN) {
        if (op == OP_XOR) mk512(a, kw, b, OP_XOR, c, ldc, TM, TN);
        else mk512(a, kw, b, OP_AND, c, ldc, TM, TN);
    } else if (mr == 1 && nb == TN) { /* attention rows, pooler */
        if (op == OP_XOR) mk512(a, kw, b, OP_XOR, c, ldc, 1, TN);
        else mk512(a, kw, b, OP_AND, c, ldc, 1, TN);
    } else {
        if (op == OP_XOR) mk512(a, kw, b, OP_XOR, c, ldc, mr, nb);
        else mk512(a, kw, b, OP_AND, c, ldc, mr, nb);
    }
}
#endif
