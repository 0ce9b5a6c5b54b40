/* Binary products by table lookup (the AVX2 set's binary linears and attention products).
 * Four bits at a time, popcount(a OP w) for a fixed activation nibble a is one of 16 counts,
 * T_a[w]: a 16-byte vpshufb table, so one vpshufb counts a nibble of 32 channels at once, and a
 * vector add sums it: 2 vector instructions per 128 bit products, where XOR and a nibble-lookup
 * popcount of the bits (mk256) take 8 per 256. The price is a second copy of the weights, one
 * nibble per byte ("nibble panels", twice the packed bits): W4[p][k][c] = nibble k of channel
 * 32 p + c (nibble k = bits 4k..4k+3 of the row). The activation rows become table offsets, 16
 * times each nibble (nib_rows). Counts add up in bytes for 63 nibbles (63 * 4 = 252), then in
 * 16 bits (so K < 65536), and are exact: the same integers as the other kernels. A full tile
 * looks two rows up at once (nib_4x2_sums: one vpshufb, a table of both rows' counts in its
 * two nibbles), halving the lookups, which share two of the vector units. */
#include "isa.h"

/* popcount(a OP w) of two nibbles, the tables of the table-lookup products (see nib_body) */
uint8_t NIB_TABLES[2][16][16] __attribute__((aligned(16))); /* [op][a][w] */
/* two rows' tables in one, T_a[w] + 16 T_b[w] (see nib_4x2_sums) */
uint8_t NIB_PAIRS[2][16][16][16] __attribute__((aligned(16))); /* [op][a][b][w] */

void nib_tables_init(void) {
    for (int a = 0; a < 16; a++)
        for (int w = 0; w < 16; w++) {
            NIB_TABLES[OP_XOR][a][w] = (uint8_t)__builtin_popcount((unsigned)(a ^ w));
            NIB_TABLES[OP_AND][a][w] = (uint8_t)__builtin_popcount((unsigned)(a & w));
        }
    for (int op = 0; op < 2; op++)
        for (int a = 0; a < 16; a++)
            for (int b = 0; b < 16; b++)
                for (int w = 0; w < 16; w++)
                    NIB_PAIRS[op][a][b][w] = (uint8_t)(NIB_TABLES[op][a][w] + 16 * NIB_TABLES[op][b][w]);
}

#ifdef BB_X86
/* a4[m * 16 kw + k] = 16 * (nibble k of row m), for the M rows of a [M, kw]. */
T256 void nib_rows_avx2(const uint64_t *a, size_t M, size_t kw, uint8_t *a4) {
    const __m128i high = _mm_set1_epi8((char)0xf0);
    for (size_t i = 0; i < M * kw; i++) { /* a word's 8 bytes -> its 16 nibbles, low first */
        const __m128i x = _mm_loadl_epi64((const __m128i *)(a + i));
        const __m128i lo = _mm_and_si128(_mm_slli_epi16(x, 4), high), hi = _mm_and_si128(x, high);
        _mm_storeu_si128((__m128i *)(a4 + 16 * i), _mm_unpacklo_epi8(lo, hi));
    }
}

/* The tables of a tile's rows: tab[(k * TM + r) * 16 ..] = the table of row r's nibble k, for
 * r < mr (a4: the rows' offsets, nk each). Built once per tile of rows and read by every panel:
 * a table loaded from here is one vector load, where looking the offset up first costs a
 * dependent scalar load in the inner loop. */
T256 void nib_tile_tables(const uint8_t *a4, size_t nk, int mr, const uint8_t *tables,
                          uint8_t *tab) {
    for (size_t k = 0; k < nk; k++)
        for (int r = 0; r < mr; r++)
            _mm_store_si128((__m128i *)(tab + (k * TM + r) * 16),
                            _mm_load_si128((const __m128i *)(tables + a4[(size_t)r * nk + k])));
}

/* A full tile's pair tables: tab2[(k * 2 + p) * 16 ..] = the pair table (pairs: NIB_PAIRS) of
 * rows 2p and 2p + 1 at nibble k (a4: the rows' offsets, nk each). */
T256 void nib_pair_tables(const uint8_t *a4, size_t nk, const uint8_t *pairs, uint8_t *tab2) {
    for (size_t k = 0; k < nk; k++)
        for (int p = 0; p < 2; p++) {
            /* a4 holds 16 a: the pair (a, b)'s table is at 16 (16 a + b) */
            const size_t at = 16 * (size_t)a4[2 * p * nk + k] + a4[(2 * p + 1) * nk + k];
            _mm_store_si128((__m128i *)(tab2 + (k * 2 + p) * 16),
                            _mm_load_si128((const __m128i *)(pairs + at)));
        }
}

/* One nibble panel from bit rows: panel[k * 32 + c] = bits c of rows 4k .. 4k + 3 (the bit of
 * row 4k + u is bit u of the nibble), k < nk; row t is the 32 bits from bit sh of rows[t *
 * stride]. (A matrix whose rows run along the products' K makes its own panels so: no transpose.) */
T256 void nib_panel_avx2(const uint64_t *rows, size_t stride, int sh, size_t nk,
                         uint8_t *panel) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    for (size_t k = 0; k < nk; k++) {
        __m256i nib = _mm256_setzero_si256();
        for (int u = 0; u < 4; u++) {
            const uint32_t m = (uint32_t)(rows[(4 * k + u) * stride] >> sh);
            const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)m), spread);
            const __m256i on = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
            nib = _mm256_or_si256(nib, _mm256_and_si256(on, _mm256_set1_epi8((char)(1 << u))));
        }
        _mm256_storeu_si256((__m256i *)(panel + k * 32), nib);
    }
}

/* Byte sums -> the 16-bit sums: lanes hold channels [0..8) [16..24) (lo) and [8..16) [24..32)
 * (hi); and those, at the end, -> the 32 int32 counts in channel order. */
static AI T256 void nib_widen(__m256i byt, __m256i s16[2]) {
    const __m256i zero = _mm256_setzero_si256();
    s16[0] = _mm256_add_epi16(s16[0], _mm256_unpacklo_epi8(byt, zero));
    s16[1] = _mm256_add_epi16(s16[1], _mm256_unpackhi_epi8(byt, zero));
}

static AI T256 void nib_store(const __m256i s16[2], int32_t *o) {
    const __m256i lo = s16[0], hi = s16[1];
    _mm256_storeu_si256((__m256i *)o, _mm256_cvtepu16_epi32(_mm256_castsi256_si128(lo)));
    _mm256_storeu_si256((__m256i *)(o + 8), _mm256_cvtepu16_epi32(_mm256_castsi256_si128(hi)));
    _mm256_storeu_si256((__m256i *)(o + 16), _mm256_cvtepu16_epi32(_mm256_extracti128_si256(lo, 1)));
    _mm256_storeu_si256((__m256i *)(o + 24), _mm256_cvtepu16_epi32(_mm256_extracti128_si256(hi, 1)));
}

static AI T256 __m256i nib_table(const uint8_t *tab, size_t k, int r) {
    return _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)(tab + (k * TM + r) * 16)));
}

/* Counts of MR rows (tab: nib_tile_tables) x NV panels of 32 channels (w4, pstride bytes
 * apart): c[r * ldc + 32 v + l]. Constant MR/NV calls are fully unrolled. */
static AI T256 void nib_body(const uint8_t *tab, size_t nk, const uint8_t *w4, size_t pstride,
                             int32_t *c, size_t ldc, const int MR, const int NV) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i byt[TM][2], s16[TM][2][2];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) s16[r][v][0] = s16[r][v][1] = zero;
    for (size_t k0 = 0; k0 < nk; k0 += 63) {
        const size_t k1 = k0 + 63 < nk ? k0 + 63 : nk;
        for (int r = 0; r < MR; r++)
            for (int v = 0; v < NV; v++) byt[r][v] = zero;
        for (size_t k = k0; k < k1; k++)
            for (int v = 0; v < NV; v++) {
                const __m256i w = _mm256_loadu_si256((const __m256i *)(w4 + v * pstride + k * 32));
                for (int r = 0; r < MR; r++)
                    byt[r][v] = _mm256_add_epi8(byt[r][v], _mm256_shuffle_epi8(nib_table(tab, k, r), w));
            }
        for (int r = 0; r < MR; r++)
            for (int v = 0; v < NV; v++) nib_widen(byt[r][v], s16[r][v]);
    }
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) nib_store(s16[r][v], c + (size_t)r * ldc + 32 * v);
}

/* The full tile, 4 rows x 2 panels, from pair tables (nib_pair_tables): one vpshufb looks up
 * two rows' counts, row 2p's in the low nibble of each byte and row 2p + 1's in the high one,
 * so a tile takes 4 lookups a step where one table per row took 8. The nibbles hold 3 steps
 * (3 * 4 = 12 < 16); then they are split (mask, shift) into the byte sums of single rows, 8 of
 * them, which hold 63 steps as before. The sums of row i / 2, panel i % 2 end in s16[i]
 * (nib_widen's lanes). */
static AI T256 __m256i nib_pair(const uint8_t *tab2, size_t k, int p, const uint8_t *w) {
    const __m256i t = _mm256_broadcastsi128_si256(
        _mm_load_si128((const __m128i *)(tab2 + (k * 2 + p) * 16)));
    return _mm256_shuffle_epi8(t, _mm256_loadu_si256((const __m256i *)(w + k * 32)));
}

static AI T256 void nib_split(__m256i pair, __m256i *lo, __m256i *hi) {
    const __m256i low = _mm256_set1_epi8(0x0f);
    *lo = _mm256_add_epi8(*lo, _mm256_and_si256(pair, low));
    *hi = _mm256_add_epi8(*hi, _mm256_and_si256(_mm256_srli_epi16(pair, 4), low));
}

static AI T256 void nib_4x2_sums(const uint8_t *tab2, size_t nk, const uint8_t *w4, size_t pstride,
                                 __m256i s16[8][2]) {
    const __m256i zero = _mm256_setzero_si256();
    const uint8_t *w1 = w4 + pstride;
    for (int i = 0; i < 8; i++) s16[i][0] = s16[i][1] = zero;
    for (size_t k0 = 0; k0 < nk; k0 += 63) {
        const size_t k1 = k0 + 63 < nk ? k0 + 63 : nk;
        __m256i b0 = zero, b1 = zero, b2 = zero, b3 = zero, b4 = zero, b5 = zero, b6 = zero, b7 = zero;
        size_t k = k0;
        for (; k + 3 <= k1; k += 3) /* a pair at a time: 2 sums live, the 8 byte sums in registers */
            for (int p = 0; p < 2; p++) {
                const __m256i c0 = _mm256_add_epi8(
                    _mm256_add_epi8(nib_pair(tab2, k, p, w4), nib_pair(tab2, k + 1, p, w4)),
                    nib_pair(tab2, k + 2, p, w4));
                const __m256i c1 = _mm256_add_epi8(
                    _mm256_add_epi8(nib_pair(tab2, k, p, w1), nib_pair(tab2, k + 1, p, w1)),
                    nib_pair(tab2, k + 2, p, w1));
                nib_split(c0, p ? &b4 : &b0, p ? &b6 : &b2);
                nib_split(c1, p ? &b5 : &b1, p ? &b7 : &b3);
            }
        for (; k < k1; k++) { /* the last one or two steps */
            nib_split(nib_pair(tab2, k, 0, w4), &b0, &b2);
            nib_split(nib_pair(tab2, k, 0, w1), &b1, &b3);
            nib_split(nib_pair(tab2, k, 1, w4), &b4, &b6);
            nib_split(nib_pair(tab2, k, 1, w1), &b5, &b7);
        }
        const __m256i byt[8] = {b0, b1, b2, b3, b4, b5, b6, b7};
        for (int i = 0; i < 8; i++) nib_widen(byt[i], s16[i]);
    }
}

static T256 void nib_4x2(const uint8_t *tab2, size_t nk, const uint8_t *w4, size_t pstride,
                         int32_t *c, size_t ldc) {
    __m256i s16[8][2];
    nib_4x2_sums(tab2, nk, w4, pstride, s16);
    for (int i = 0; i < 8; i++) nib_store(s16[i], c + (size_t)(i / 2) * ldc + 32 * (i % 2));
}

/* 32 int32 values of channels [0, 32) -> int16 (saturated) in nib_widen's lanes. */
static AI T256 void nib_lanes16(const int32_t *v, __m256i out[2]) {
    const __m128i c0 = _mm_packs_epi32(_mm_loadu_si128((const __m128i *)v),
                                       _mm_loadu_si128((const __m128i *)(v + 4)));
    const __m128i c1 = _mm_packs_epi32(_mm_loadu_si128((const __m128i *)(v + 8)),
                                       _mm_loadu_si128((const __m128i *)(v + 12)));
    const __m128i c2 = _mm_packs_epi32(_mm_loadu_si128((const __m128i *)(v + 16)),
                                       _mm_loadu_si128((const __m128i *)(v + 20)));
    const __m128i c3 = _mm_packs_epi32(_mm_loadu_si128((const __m128i *)(v + 24)),
                                       _mm_loadu_si128((const __m128i *)(v + 28)));
    out[0] = _mm256_set_m128i(c2, c0);
    out[1] = _mm256_set_m128i(c3, c1);
}

/* The 4 x 64 tile of a binary linear straight from its 16-bit sums, without the int32 counts
 * in memory, with lin_epi_avx2's outputs: a sign-fed product's bits 1[lo <= count <= hi] (q->lo;
 * compared in 16 bits, so K < 32767), else y = (K - 2 count) * alpha + bias, one FMA (lin_y8:
 * the same bits as the others), written out (bits NULL), or its bits through q (not GELU), or
 * its sign bits. Rows' outputs ldo floats / ldb uint32 apart, from the tile's first channel. */
T256 void nib_lin_4x2(const uint8_t *tab2, size_t nk, const uint8_t *w4, size_t pstride,
                      float *o, size_t ldo, const float *alpha, const float *bias, long K,
                      const long *Krow, uint32_t *bits, size_t ldb, const outq_t *q) {
    __m256i s16[8][2];
    nib_4x2_sums(tab2, nk, w4, pstride, s16);
    if (bits && q && q->lo) {
        for (int v = 0; v < 2; v++) {
            __m256i l16[2], h16[2];
            nib_lanes16(q->lo + 32 * v, l16);
            nib_lanes16(q->hi + 32 * v, h16);
            for (int r = 0; r < TM; r++) {
                const __m256i *c = s16[2 * r + v];
                const __m256i out0 = _mm256_or_si256(_mm256_cmpgt_epi16(l16[0], c[0]),
                                                     _mm256_cmpgt_epi16(c[0], h16[0]));
                const __m256i out1 = _mm256_or_si256(_mm256_cmpgt_epi16(l16[1], c[1]),
                                                     _mm256_cmpgt_epi16(c[1], h16[1]));
                /* bytes in channel order: lanes [0..8) [8..16) | [16..24) [24..32) */
                bits[(size_t)r * ldb + v] =
                    ~(uint32_t)_mm256_movemask_epi8(_mm256_packs_epi16(out0, out1));
            }
        }
        return;
    }
    if (!alpha) { /* the integers K - 2 count themselves, as float (exact: |K| < 2^24) */
        for (int r = 0; r < TM; r++) {
            const __m256i kk = _mm256_set1_epi32((int)(Krow ? Krow[r] : K));
            for (int v = 0; v < 2; v++) {
                const __m256i *c = s16[2 * r + v];
                const __m128i q16[4] = {_mm256_castsi256_si128(c[0]), _mm256_castsi256_si128(c[1]),
                                        _mm256_extracti128_si256(c[0], 1),
                                        _mm256_extracti128_si256(c[1], 1)};
                for (int g = 0; g < 4; g++) {
                    const __m256i c32 = _mm256_cvtepu16_epi32(q16[g]);
                    _mm256_storeu_ps(o + (size_t)r * ldo + 32 * v + 8 * g,
                                     _mm256_cvtepi32_ps(_mm256_sub_epi32(kk, _mm256_add_epi32(c32, c32))));
                }
            }
        }
        return;
    }
    for (int r = 0; r < TM; r++) {
        const __m256i kk = _mm256_set1_epi32((int)(Krow ? Krow[r] : K));
        for (int v = 0; v < 2; v++) {
            const __m256i *c = s16[2 * r + v];
            /* channels [0..8) [8..16) [16..24) [24..32) of the panel */
            const __m128i q16[4] = {_mm256_castsi256_si128(c[0]), _mm256_castsi256_si128(c[1]),
                                    _mm256_extracti128_si256(c[0], 1),
                                    _mm256_extracti128_si256(c[1], 1)};
            uint32_t sg = 0;
            for (int g = 0; g < 4; g++) {
                const __m256i c32 = _mm256_cvtepu16_epi32(q16[g]);
                const int ch = 32 * v + 8 * g;
                const __m256 y = lin_y8(_mm256_sub_epi32(kk, _mm256_add_epi32(c32, c32)),
                                        alpha + ch, bias + ch);
                if (!bits) _mm256_storeu_ps(o + (size_t)r * ldo + ch, y);
                else if (q) sg |= act_bits8(y, q->shift ? q->shift + ch : NULL, q->scale, q->kind,
                                            q->act) << (8 * g);
                else sg |= (uint32_t)_mm256_movemask_ps(y) << (8 * g); /* sign bits of y */
            }
            if (bits) bits[(size_t)r * ldb + v] = sg;
        }
    }
}

/* mr (<= TM) rows x nv (<= 2) panels of counts from a tile's tables: the pair tables for the
 * full tile, else the tables of single rows; see nib_body. */
T256 void nib_tile_avx2(const uint8_t *tab, const uint8_t *tab2, size_t nk,
                        const uint8_t *w4, int32_t *c, size_t ldc, int mr, int nv) {
    const size_t ps = nk * 32;
    if (mr == 4 && nv == 2) {
        nib_4x2(tab2, nk, w4, ps, c, ldc);
        return;
    }
#define NIB_CASE(R, V)                                                                            \
    if (mr == R && nv == V) {                                                                     \
        nib_body(tab, nk, w4, ps, c, ldc, R, V);                                                  \
        return;                                                                                   \
    }
    NIB_CASE(4, 1) NIB_CASE(3, 2) NIB_CASE(3, 1)
    NIB_CASE(2, 2) NIB_CASE(2, 1) NIB_CASE(1, 2) NIB_CASE(1, 1)
#undef NIB_CASE
}
#endif
