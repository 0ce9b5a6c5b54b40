/* The AVX2 set's binary products by XOR and a nibble-lookup popcount, and the binary linear's
 * fused epilogue (the table-lookup products: products_avx2_tables.c). */
#include "isa.h"

#ifdef BB_X86
/* MR (<= 4) rows x one block of 8 interleaved columns: the 2 column loads of a word serve every
 * row, counts add up in bytes for up to 31 words at a time. */
static AI T256 void mk256(const uint64_t *a, size_t kw, const uint64_t *bj, const int op,
                          int32_t *c, size_t ldc, const int MR) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i acc[4][2], byt[4][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = byt[r][0] = byt[r][1] = zero;
    for (size_t w0 = 0; w0 < kw; w0 += BYTE_WORDS) {
        const size_t w1 = w0 + BYTE_WORDS < kw ? w0 + BYTE_WORDS : kw;
        for (size_t w = w0; w < w1; w++) {
            const __m256i b0 = _mm256_loadu_si256((const __m256i *)(bj + w * 8));
            const __m256i b1 = _mm256_loadu_si256((const __m256i *)(bj + w * 8 + 4));
            for (int r = 0; r < MR; r++) {
                const __m256i av = _mm256_set1_epi64x((long long)a[(size_t)r * kw + w]);
                const __m256i x0 = op == OP_AND ? _mm256_and_si256(av, b0) : _mm256_xor_si256(av, b0);
                const __m256i x1 = op == OP_AND ? _mm256_and_si256(av, b1) : _mm256_xor_si256(av, b1);
                byt[r][0] = _mm256_add_epi8(byt[r][0], popcnt8_256(x0));
                byt[r][1] = _mm256_add_epi8(byt[r][1], popcnt8_256(x1));
            }
        }
        for (int r = 0; r < MR; r++)
            for (int h = 0; h < 2; h++) {
                acc[r][h] = _mm256_add_epi64(acc[r][h], _mm256_sad_epu8(byt[r][h], zero));
                byt[r][h] = zero;
            }
    }
    /* the low 32 bits of the 8 64-bit counts, in column order */
    const __m256i lo32 = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (int r = 0; r < MR; r++) {
        const __m128i c0 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(acc[r][0], lo32));
        const __m128i c1 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(acc[r][1], lo32));
        _mm256_storeu_si256((__m256i *)(c + (size_t)r * ldc),
                            _mm256_inserti128_si256(_mm256_castsi128_si256(c0), c1, 1));
    }
}

T256 void tile_avx2(const uint64_t *a, size_t kw, const uint64_t *b, int op, int32_t *c,
                    size_t ldc, int mr, int nb) {
    for (int j = 0; j < nb; j++) {
        const uint64_t *bj = b + (size_t)j * kw * 8;
        int r = 0;
        for (; r + 4 <= mr; r += 4)
            if (op == OP_XOR) mk256(a + (size_t)r * kw, kw, bj, OP_XOR, c + (size_t)r * ldc + 8 * j, ldc, 4);
            else mk256(a + (size_t)r * kw, kw, bj, OP_AND, c + (size_t)r * ldc + 8 * j, ldc, 4);
        for (; r < mr; r++)
            if (op == OP_XOR) mk256(a + (size_t)r * kw, kw, bj, OP_XOR, c + (size_t)r * ldc + 8 * j, ldc, 1);
            else mk256(a + (size_t)r * kw, kw, bj, OP_AND, c + (size_t)r * ldc + 8 * j, ldc, 1);
    }
}

/* Full 4 x 32 tile with the binary-linear epilogue, 8 channels at a time: one FMA of the
 * exact (K - 2 count) as float, popc_gemm's y rounded once (lin_y), so the same bits. */
T256 void lin_epi_avx2(const int32_t *loc, size_t ldl, float *o, size_t ldo,
                       const float *alpha, const float *bias, long K, const long *Krow,
                       uint32_t *bits, size_t ldb, const outq_t *q) {
    if (bits && q && q->lo) {
        for (int r = 0; r < TM; r++) {
            uint32_t sg = 0;
            for (int c = 0; c < TN * 8; c += 8) {
                const __m256i n = _mm256_loadu_si256((const __m256i *)(loc + r * ldl + c));
                const __m256i out = _mm256_or_si256(
                    _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i *)(q->lo + c)), n),
                    _mm256_cmpgt_epi32(n, _mm256_loadu_si256((const __m256i *)(q->hi + c))));
                sg |= (uint32_t)(~_mm256_movemask_ps(_mm256_castsi256_ps(out)) & 0xff) << c;
            }
            bits[(size_t)r * ldb] = sg;
        }
        return;
    }
    for (int r = 0; r < TM; r++) {
        const __m256i kk = _mm256_set1_epi32((int)(Krow ? Krow[r] : K));
        uint32_t sg = 0;
        for (int c = 0; c < TN * 8; c += 8) {
            const __m256i cnt = _mm256_loadu_si256((const __m256i *)(loc + r * ldl + c));
            const __m256 y = lin_y8(_mm256_sub_epi32(kk, _mm256_add_epi32(cnt, cnt)), alpha + c, bias + c);
            if (!bits) _mm256_storeu_ps(o + (size_t)r * ldo + c, y);
            else if (q) sg |= act_bits8(y, q->shift ? q->shift + c : NULL, q->scale, q->kind, q->act) << c;
            else sg |= (uint32_t)_mm256_movemask_ps(y) << c; /* sign bits of y */
        }
        if (bits) bits[(size_t)r * ldb] = sg;
    }
}

T256 void lin_tile_avx2(const uint64_t *a, size_t kw, const uint64_t *b, int op, float *o,
                        size_t ldo, const float *alpha, const float *bias, long K,
                        const long *Krow, uint32_t *bits, size_t ldb, const outq_t *q) {
    int32_t loc[TM * TN * 8];
    tile_avx2(a, kw, b, op, loc, TN * 8, TM, TN);
    lin_epi_avx2(loc, TN * 8, o, ldo, alpha, bias, K, Krow, bits, ldb, q);
}
#endif
