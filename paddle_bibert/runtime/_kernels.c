/*
 * Bitwise kernels of the packed BiBERT runtime (CPython extension, no numpy headers: arrays
 * arrive through the buffer protocol, shapes as integers, outputs preallocated by Python).
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
 * popcounts cost time. The instruction set is chosen at run time
 * (__builtin_cpu_supports): AVX-512 VPOPCNTDQ, AVX2 (nibble-table popcount; a binary linear
 * whose caller passes its weights' nibble panels looks its counts up in tables instead: see
 * nib_body; so does the attention, see att_nib), scalar POPCNT, or portable C. Float arithmetic is plain (no FMA contraction: built with -ffp-contract=off)
 * so that the epilogues give the same bits as the numpy reference. Threads: a small pthread
 * pool (see "thread pool" below), sized by BIBERT_NUM_THREADS, else OMP_NUM_THREADS, else the
 * number of CPUs.
 * (One file of ~2,400 lines: each operation has a kernel per instruction set, and keeping them
 * beside the shared bit layout and dispatch lets one reading check that they agree.)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>
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

/* c[r*ldc + 8j + l] = sum_w popcount(a[r*kw + w] OP b[j*kw*8 + w*8 + l]), r < mr, j < nb. */
typedef void (*tile_fn)(const uint64_t *a, size_t kw, const uint64_t *b, int op, int32_t *c,
                        size_t ldc, int mr, int nb);
/* out[w] = sign bits of x[0..n) (bit = signbit), pad bits 0. */
typedef void (*pack_fn)(const float *x, size_t n, uint64_t *out);
/* Attention row: bit j of A[j / 64] = 1[popcount(q XOR k_j) < thr] for keys j < 8 * LB, with
 * k interleaved [LB, dw, 8]; thr = (d + 1) / 2, so the bit is 1[d - 2 popcount > 0] = 1[S > 0]. */
typedef void (*scores_fn)(const uint64_t *q, size_t dw, const uint64_t *kil, size_t LB, long thr,
                          uint64_t *A);
/* Attention context row: out[d] = pa - 2 sum_w popcount(A[w] AND v[d, w]), v interleaved
 * [DB, Lw, 8], for d < dh; pa = popcount(A). */
typedef void (*context_fn)(const uint64_t *A, size_t Lw, const uint64_t *vil, size_t dh, float *out);

static size_t nwords(size_t n) { return (n + 63) / 64; }

/* ---------------------------------------------------------------- portable + scalar POPCNT */

static AI void tile_scalar_body(const uint64_t *a, size_t kw, const uint64_t *b, int op,
                                int32_t *c, size_t ldc, int mr, int nb) {
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nb; j++) {
            int32_t s[8] = {0};
            const uint64_t *bj = b + (size_t)j * kw * 8, *ar = a + (size_t)r * kw;
            for (size_t w = 0; w < kw; w++)
                for (int l = 0; l < 8; l++) {
                    uint64_t x = op == OP_AND ? (ar[w] & bj[w * 8 + l]) : (ar[w] ^ bj[w * 8 + l]);
                    s[l] += __builtin_popcountll(x);
                }
            memcpy(c + (size_t)r * ldc + 8 * j, s, sizeof s);
        }
}

static void tile_generic(const uint64_t *a, size_t kw, const uint64_t *b, int op, int32_t *c,
                         size_t ldc, int mr, int nb) {
    tile_scalar_body(a, kw, b, op, c, ldc, mr, nb);
}

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

static void pack_generic(const float *x, size_t n, uint64_t *out) { pack_scalar_body(x, n, out); }

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

/* popcount of a row of words; inlined into each instruction set's kernel, where the builtin
 * becomes its POPCNT instruction (a plain C caller would call libgcc's software count) */
static AI long popcount_words(const uint64_t *a, size_t n) {
    long c = 0;
    for (size_t w = 0; w < n; w++) c += __builtin_popcountll(a[w]);
    return c;
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

static void scores_generic(const uint64_t *q, size_t dw, const uint64_t *kil, size_t LB, long thr,
                           uint64_t *A) {
    scores_scalar_body(q, dw, kil, LB, thr, A);
}

static void context_generic(const uint64_t *A, size_t Lw, const uint64_t *vil, size_t dh,
                            float *out) {
    context_scalar_body(A, Lw, vil, dh, out);
}

/* Softmax denominator lanes: lane[r] += e[cnt[j]] for the kept keys j = r mod 8 (a masked key
 * adds +0.0), j < 8 floor(L / 8), in key order; returns the keys done (the caller adds the tail). */
static size_t table_lanes_generic(const int32_t *cnt, size_t L, const uint8_t *kp, int any,
                                  const double *e, double lane[8]) {
    size_t j0 = 0;
    for (; j0 + 8 <= L; j0 += 8) /* constant trip count: the lanes stay in registers */
        for (int r = 0; r < 8; r++) lane[r] += !any || kp[j0 + r] ? e[cnt[j0 + r]] : 0.0;
    return j0;
}

/* popcount(a OP w) of two nibbles, the tables of the table-lookup products (see nib_body) */
static uint8_t NIB_TABLES[2][16][16] __attribute__((aligned(16))); /* [op][a][w] */
/* two rows' tables in one, T_a[w] + 16 T_b[w] (see nib_4x2_sums) */
static uint8_t NIB_PAIRS[2][16][16][16] __attribute__((aligned(16))); /* [op][a][b][w] */

static void nib_tables_init(void) {
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
/* Same C as tile_generic; inlined here __builtin_popcountll becomes the POPCNT instruction. */
__attribute__((target("popcnt"))) static void tile_popcnt(const uint64_t *a, size_t kw,
                                                          const uint64_t *b, int op, int32_t *c,
                                                          size_t ldc, int mr, int nb) {
    tile_scalar_body(a, kw, b, op, c, ldc, mr, nb);
}

__attribute__((target("popcnt"))) static void scores_popcnt(const uint64_t *q, size_t dw,
                                                            const uint64_t *kil, size_t LB,
                                                            long thr, uint64_t *A) {
    scores_scalar_body(q, dw, kil, LB, thr, A);
}

__attribute__((target("popcnt"))) static void context_popcnt(const uint64_t *A, size_t Lw,
                                                             const uint64_t *vil, size_t dh,
                                                             float *out) {
    context_scalar_body(A, Lw, vil, dh, out);
}

/* ------------------------------------------------------------------------------ AVX2 */
#define T256 __attribute__((target("avx2,popcnt")))

/* Per-byte popcount (nibble lookup); a byte holds at most 8, so 31 words add up in bytes before
 * they must be summed into 64-bit lanes (vpsadbw). */
static AI T256 __m256i popcnt8_256(__m256i v) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
}

/* The bits pack_act gives 8 float32 values (not GELU: its erf is scalar): see act_bit. */
static AI T256 uint32_t act_bits8(__m256 v, const float *shift8, float scale, int kind, int act) {
    const __m256 zero = _mm256_setzero_ps();
    if (act == ACT_RELU) v = _mm256_max_ps(v, zero);
    if (shift8) {
        const __m256 s = _mm256_add_ps(v, _mm256_loadu_ps(shift8));
        v = _mm256_blendv_ps(v, s, _mm256_cmp_ps(s, zero, _CMP_NEQ_UQ));
    }
    if (kind != Q_SIGN)
        v = _mm256_cmp_ps(_mm256_div_ps(v, _mm256_set1_ps(scale)), _mm256_set1_ps(0.5f), _CMP_GT_OQ);
    return (uint32_t)_mm256_movemask_ps(v);
}

enum { BYTE_WORDS = 31 }; /* 31 * 8 = 248 <= 255 */

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

static T256 void tile_avx2(const uint64_t *a, size_t kw, const uint64_t *b, int op, int32_t *c,
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

/* Full 4 x 32 tile with the binary-linear epilogue, 4 channels at a time in double: the same
 * operations as popc_gemm's scalar epilogue ((K - 2 count) * alpha + bias, no FMA, rounded once
 * to float), so the same bits. */
static T256 void lin_epi_avx2(const int32_t *loc, size_t ldl, float *o, size_t ldo,
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
        const __m128i kk = _mm_set1_epi32((int)(Krow ? Krow[r] : K));
        uint32_t sg = 0;
        for (int c = 0; c < TN * 8; c += 8) {
            __m128 y[2];
            for (int h = 0; h < 2; h++) {
                const int c4 = c + 4 * h;
                const __m128i cnt = _mm_loadu_si128((const __m128i *)(loc + r * ldl + c4));
                const __m256d d = _mm256_cvtepi32_pd(_mm_sub_epi32(kk, _mm_add_epi32(cnt, cnt)));
                y[h] = _mm256_cvtpd_ps(_mm256_add_pd(
                    _mm256_mul_pd(d, _mm256_cvtps_pd(_mm_loadu_ps(alpha + c4))),
                    _mm256_cvtps_pd(_mm_loadu_ps(bias + c4))));
            }
            if (!bits) {
                _mm_storeu_ps(o + (size_t)r * ldo + c, y[0]);
                _mm_storeu_ps(o + (size_t)r * ldo + c + 4, y[1]);
            } else if (q) {
                sg |= act_bits8(_mm256_set_m128(y[1], y[0]), q->shift ? q->shift + c : NULL,
                                q->scale, q->kind, q->act) << c;
            } else { /* sign bits of y */
                sg |= (uint32_t)(_mm_movemask_ps(y[0]) | _mm_movemask_ps(y[1]) << 4) << c;
            }
        }
        if (bits) bits[(size_t)r * ldb] = sg;
    }
}

static T256 void lin_tile_avx2(const uint64_t *a, size_t kw, const uint64_t *b, int op, float *o,
                               size_t ldo, const float *alpha, const float *bias, long K,
                               const long *Krow, uint32_t *bits, size_t ldb, const outq_t *q) {
    int32_t loc[TM * TN * 8];
    tile_avx2(a, kw, b, op, loc, TN * 8, TM, TN);
    lin_epi_avx2(loc, TN * 8, o, ldo, alpha, bias, K, Krow, bits, ldb, q);
}

/* Binary products by table lookup (the AVX2 path of bin_linear / bin_linear_cut). Four bits at
 * a time, popcount(a OP w) for a fixed activation nibble a is one of 16 counts, T_a[w]: a
 * 16-byte vpshufb table, so one vpshufb counts a nibble of 32 channels at once, and a vector add
 * sums it: 2 vector instructions per 128 bit products, where XOR and a nibble-lookup popcount
 * of the bits (mk256) take 8 per 256. The price is a second copy of the weights, one nibble per byte
 * ("nibble panels", twice the packed bits): W4[p][k][c] = nibble k of channel 32 p + c
 * (nibble k = bits 4k..4k+3 of the row). The activation rows become table offsets, 16 times
 * each nibble (nib_rows). Counts add up in bytes for 63 nibbles (63 * 4 = 252), then in 16 bits
 * (so K < 65536), and are exact: the same integers as the other kernels. A full tile looks two
 * rows up at once (nib_4x2_sums: one vpshufb, a table of both rows' counts in its two nibbles),
 * halving the lookups, which share two of the vector units. */

/* a4[m * 16 kw + k] = 16 * (nibble k of row m), for the M rows of a [M, kw]. */
static T256 void nib_rows_avx2(const uint64_t *a, size_t M, size_t kw, uint8_t *a4) {
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
static T256 void nib_tile_tables(const uint8_t *a4, size_t nk, int mr, const uint8_t *tables,
                                 uint8_t *tab) {
    for (size_t k = 0; k < nk; k++)
        for (int r = 0; r < mr; r++)
            _mm_store_si128((__m128i *)(tab + (k * TM + r) * 16),
                            _mm_load_si128((const __m128i *)(tables + a4[(size_t)r * nk + k])));
}

/* A full tile's pair tables: tab2[(k * 2 + p) * 16 ..] = the pair table (pairs: NIB_PAIRS) of
 * rows 2p and 2p + 1 at nibble k (a4: the rows' offsets, nk each). */
static T256 void nib_pair_tables(const uint8_t *a4, size_t nk, const uint8_t *pairs, uint8_t *tab2) {
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
static T256 void nib_panel_avx2(const uint64_t *rows, size_t stride, int sh, size_t nk,
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

/* bit j of bits[j / 64] = 1[c[j] < thr], j < n (c readable up to a multiple of 8; pad bits
 * of the last word 0). */
static T256 void nib_below_avx2(const int32_t *c, size_t n, long thr, uint64_t *bits) {
    const __m256i t = _mm256_set1_epi32((int)thr);
    for (size_t w = 0; w < (n + 63) / 64; w++) {
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
 * compared in 16 bits, so K < 32767), else y = (K - 2 count) * alpha + bias by the same
 * operations (so the same bits), written out (bits NULL), or its bits through q (not GELU), or
 * its sign bits. Rows' outputs ldo floats / ldb uint32 apart, from the tile's first channel. */
static T256 void nib_lin_4x2(const uint8_t *tab2, size_t nk, const uint8_t *w4, size_t pstride,
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
    double ad[64] __attribute__((aligned(32))), bd[64] __attribute__((aligned(32)));
    for (int c = 0; c < 64; c += 4) {
        _mm256_store_pd(ad + c, _mm256_cvtps_pd(_mm_loadu_ps(alpha + c)));
        _mm256_store_pd(bd + c, _mm256_cvtps_pd(_mm_loadu_ps(bias + c)));
    }
    for (int r = 0; r < TM; r++) {
        const __m128i kk = _mm_set1_epi32((int)(Krow ? Krow[r] : K));
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
                __m128 y[2];
                for (int h = 0; h < 2; h++) {
                    const __m128i cnt = h ? _mm256_extracti128_si256(c32, 1) : _mm256_castsi256_si128(c32);
                    const __m256d d = _mm256_cvtepi32_pd(_mm_sub_epi32(kk, _mm_add_epi32(cnt, cnt)));
                    y[h] = _mm256_cvtpd_ps(_mm256_add_pd(_mm256_mul_pd(d, _mm256_load_pd(ad + ch + 4 * h)),
                                                         _mm256_load_pd(bd + ch + 4 * h)));
                }
                if (!bits) {
                    _mm_storeu_ps(o + (size_t)r * ldo + ch, y[0]);
                    _mm_storeu_ps(o + (size_t)r * ldo + ch + 4, y[1]);
                } else if (q) {
                    sg |= act_bits8(_mm256_set_m128(y[1], y[0]), q->shift ? q->shift + ch : NULL,
                                    q->scale, q->kind, q->act) << (8 * g);
                } else { /* sign bits of y */
                    sg |= (uint32_t)(_mm_movemask_ps(y[0]) | _mm_movemask_ps(y[1]) << 4) << (8 * g);
                }
            }
            if (bits) bits[(size_t)r * ldb + v] = sg;
        }
    }
}

/* mr (<= TM) rows x nv (<= 2) panels of counts from a tile's tables: the pair tables for the
 * full tile, else the tables of single rows; see nib_body. */
static T256 void nib_tile_avx2(const uint8_t *tab, const uint8_t *tab2, size_t nk,
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

/* Bi-Attention scores of one query against 8 keys at a time (see scores_fn). */
static T256 void scores_avx2(const uint64_t *q, size_t dw, const uint64_t *kil, size_t LB,
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

/* The first min(n, 8) floats of v to out (a context block at the head's last dimensions). */
static AI T256 void store8(float *out, __m256 v, size_t n) {
    if (n >= 8) {
        _mm256_storeu_ps(out, v);
    } else {
        float tmp[8];
        _mm256_storeu_ps(tmp, v);
        memcpy(out, tmp, n * sizeof(float));
    }
}

/* Attention context of one query, 8 head channels at a time (see context_fn). */
static T256 void context_avx2(const uint64_t *A, size_t Lw, const uint64_t *vil, size_t dh,
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

/* movemask_ps collects exactly the 8 sign bits of 8 floats. */
static T256 void pack_avx2(const float *x, size_t n, uint64_t *out) {
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

/* --------------------------------------------------------------- AVX-512 VPOPCNTDQ */
#define T512 __attribute__((target("avx512f,avx512dq,avx512vpopcntdq,avx2,popcnt")))

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
 * o[r, 8j + l] = (float)((K - 2 count) * alpha + bias) in double, as popc_gemm. */
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
        __m512d al = _mm512_cvtps_pd(_mm256_loadu_ps(alpha + 8 * j));
        __m512d bi = _mm512_cvtps_pd(_mm256_loadu_ps(bias + 8 * j));
        for (int r = 0; r < TM; r++) {
            __m512d d = _mm512_cvtepi64_pd(_mm512_sub_epi64(kk[r], _mm512_add_epi64(acc[r][j], acc[r][j])));
            __m256 y = _mm512_cvtpd_ps(_mm512_add_pd(_mm512_mul_pd(d, al), bi));
            if (!bits) _mm256_storeu_ps(o + (size_t)r * ldo + 8 * j, y);
            else if (q) sg[r] |= act_bits8(y, q->shift ? q->shift + 8 * j : NULL, q->scale, q->kind,
                                           q->act) << (8 * j);
            else sg[r] |= (uint32_t)_mm256_movemask_ps(y) << (8 * j); /* sign bits of y */
        }
    }
    if (bits)
        for (int r = 0; r < TM; r++) bits[(size_t)r * ldb] = sg[r];
}

static T512 void lin_tile_avx512(const uint64_t *a, size_t kw, const uint64_t *b, int op, float *o,
                                 size_t ldo, const float *alpha, const float *bias, long K,
                                 const long *Krow, uint32_t *bits, size_t ldb, const outq_t *q) {
    if (op == OP_AND) lin_tile512_body(a, kw, b, OP_AND, o, ldo, alpha, bias, K, Krow, bits, ldb, q);
    else lin_tile512_body(a, kw, b, OP_XOR, o, ldo, alpha, bias, K, Krow, bits, ldb, q);
}

static T512 void tile_avx512(const uint64_t *a, size_t kw, const uint64_t *b, int op, int32_t *c,
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

static T512 void scores_avx512(const uint64_t *q, size_t dw, const uint64_t *kil, size_t LB,
                               long thr, uint64_t *A) {
    const __m512i t = _mm512_set1_epi64(thr);
    size_t j0 = 0;
    for (; j0 + 8 <= LB; j0 += 8) A[j0 / 8] |= scores_word512(q, dw, kil, j0, t, 8); /* 64 keys */
    for (size_t jb = j0; jb < LB; jb++) /* the last, partial word: a block at a time */
        A[j0 / 8] |= scores_word512(q, dw, kil, jb, t, 1) << (8 * (jb - j0));
}

static T512 void context_avx512(const uint64_t *A, size_t Lw, const uint64_t *vil, size_t dh,
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
/* table_lanes_generic with a masked gather of 8 entries: lane r still adds key 8i + r's entry
 * (or +0.0) in key order, so every partial sum is the same. */
static T512 size_t table_lanes_avx512(const int32_t *cnt, size_t L, const uint8_t *kp, int any,
                                      const double *e, double lane[8]) {
    __m512d acc = _mm512_loadu_pd(lane);
    const __m512d zero = _mm512_setzero_pd();
    size_t j0 = 0;
    for (; j0 + 8 <= L; j0 += 8) {
        __mmask8 m = 0xff;
        if (any) {
            const __m512i k = _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i *)(kp + j0)));
            m = _mm512_test_epi64_mask(k, k);
        }
        const __m256i idx = _mm256_loadu_si256((const __m256i *)(cnt + j0));
        acc = _mm512_add_pd(acc, _mm512_mask_i32gather_pd(zero, m, idx, e, 8));
    }
    _mm512_storeu_pd(lane, acc);
    return j0;
}

#endif /* BB_X86 */

/* ------------------------------------------------------------------------ LayerNorm */
/* One row: s = x + res (float; res may be NULL); then, in one pass, the sums of s and of s * s
 * in double, each over LN_LANES lanes (lane l takes elements l, l + LN_LANES, ...; the tail past
 * the last whole group has its own sums, added to lane 0; lanes combined pairwise); mean =
 * sum / H, var = sumsq / H - mean^2, at least 0 (a float's square is exact in double, so the
 * difference keeps float precision unless mean^2 is ~2^28 times var). The outputs in float,
 *     zg = ((s - mh) - ml) * r * g,  out = zg + b,    mh + ml = mean, r = 1 / sqrt(var + eps),
 * are off the exact value by at most about 6 roundings of |zg| and one of |out| (a few ulps,
 * as Paddle's float32 LayerNorm); where |out| is below 16 roundings of |zg| (LN_NEAR0) its sign
 * could be wrong, and that output is computed again in double and rounded once, so every
 * output near 0 has the exact value's sign (the next layer binarizes it). Converting every
 * value to double and back cost AVX2 twice as much. The vector version keeps exactly this
 * order, so every kernel set gives the same bits. */
enum { LN_LANES = 16 };
#define LN_NEAR0 0x1p-20f

static double lanes_pairwise(double *a, double tail) { /* ((a0 + a1) + (a2 + a3)) + ..., in place */
    a[0] += tail;
    for (int w = LN_LANES; w > 1; w /= 2)
        for (int i = 0; i < w / 2; i++) a[i] = a[2 * i] + a[2 * i + 1];
    return a[0];
}

typedef struct {
    double m, rstd; /* mean, 1 / sqrt(var + eps) */
    float mh, ml, r; /* the mean as two floats mh + ml, and rstd as a float */
} ln_moments;

/* The moments from the lanes' sums and the tails'. */
static ln_moments ln_moments_of(double *sum, double *sq, double tsum, double tsq, size_t H,
                                double eps) {
    const double m = lanes_pairwise(sum, tsum) / (double)H;
    const double v = lanes_pairwise(sq, tsq) / (double)H - m * m;
    const double rstd = 1.0 / sqrt((v > 0.0 ? v : 0.0) + eps);
    return (ln_moments){m, rstd, (float)m, (float)(m - (double)(float)m), (float)rstd};
}

/* From element d on: o = x + res, and its sums (returned in *tsum, *tsq). */
static void ln_tail_sums(const float *x, const float *res, float *o, size_t d, size_t H,
                         double *tsum, double *tsq) {
    double s1 = 0.0, s2 = 0.0;
    for (; d < H; d++) {
        o[d] = res ? x[d] + res[d] : x[d];
        const double v = o[d];
        s1 += v;
        s2 += v * v;
    }
    *tsum = s1, *tsq = s2;
}

/* One output computed in double and rounded once (for those near 0). */
static float ln_exact(float s, const ln_moments *mo, float g, float b) {
    return (float)(((double)s - mo->m) * mo->rstd * g + b);
}

/* The outputs of o[0 .. n), in place: in float, and those near 0 again by ln_exact (in a
 * second pass over the row, rarely needed: it must see s, which the first overwrites). */
static void ln_outputs(float *o, size_t n, const ln_moments *mo, const float *g, const float *b) {
    const float mh = mo->mh, ml = mo->ml, r = mo->r; /* (in locals: o could alias mo) */
    int near = 0;
    for (size_t l = 0; l < n; l++) {
        const float zg = ((o[l] - mh) - ml) * r * g[l];
        near |= fabsf(zg + b[l]) < fabsf(zg) * LN_NEAR0;
    }
    for (size_t l = 0; l < n; l++) {
        const float s = o[l], zg = ((s - mh) - ml) * r * g[l];
        o[l] = zg + b[l];
        if (near && fabsf(o[l]) < fabsf(zg) * LN_NEAR0) o[l] = ln_exact(s, mo, g[l], b[l]);
    }
}

static void ln_row_generic(const float *x, const float *res, size_t H, const float *g,
                           const float *b, double eps, float *o) {
    double sum[LN_LANES] = {0}, sq[LN_LANES] = {0}, tsum, tsq;
    const size_t full = H - H % LN_LANES;
    for (size_t d = 0; d < full; d += LN_LANES)
        for (int l = 0; l < LN_LANES; l++) {
            o[d + l] = res ? x[d + l] + res[d + l] : x[d + l];
            const double v = o[d + l];
            sum[l] += v;
            sq[l] += v * v;
        }
    ln_tail_sums(x, res, o, full, H, &tsum, &tsq);
    const ln_moments mo = ln_moments_of(sum, sq, tsum, tsq, H, eps);
    ln_outputs(o, H, &mo, g, b);
}

#ifdef BB_X86
/* o[l] = ln_exact(s[l]) for the lanes l set in mask: the outputs near 0 of 8 values s. */
static T256 __attribute__((noinline)) void ln_exact_lanes(float *o, __m256 s, int mask,
                                                          const ln_moments *mo, const float *g,
                                                          const float *b) {
    float sv[8];
    _mm256_storeu_ps(sv, s);
    for (int l = 0; l < 8; l++)
        if (mask >> l & 1) o[l] = ln_exact(sv[l], mo, g[l], b[l]);
}

/* sum[q], sq[q] hold lanes 4q .. 4q + 3. AVX-512's kernel set uses this one too: the row's
 * conversions to double bound it, not the vector width. */
static T256 void ln_row_avx2(const float *x, const float *res, size_t H, const float *g,
                             const float *b, double eps, float *o) {
    const size_t full = H - H % LN_LANES, full8 = H - H % 8;
    double ls[LN_LANES], lq[LN_LANES], tsum, tsq;
    __m256d sum[4], sq[4];
    for (int q = 0; q < 4; q++) sum[q] = sq[q] = _mm256_setzero_pd();
    for (size_t d = 0; d < full; d += LN_LANES)
        for (int h = 0; h < 2; h++) {
            __m256 s = _mm256_loadu_ps(x + d + 8 * h);
            if (res) s = _mm256_add_ps(s, _mm256_loadu_ps(res + d + 8 * h));
            _mm256_storeu_ps(o + d + 8 * h, s);
            const __m256d v0 = _mm256_cvtps_pd(_mm256_castps256_ps128(s));
            const __m256d v1 = _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1));
            sum[2 * h] = _mm256_add_pd(sum[2 * h], v0);
            sum[2 * h + 1] = _mm256_add_pd(sum[2 * h + 1], v1);
            sq[2 * h] = _mm256_add_pd(sq[2 * h], _mm256_mul_pd(v0, v0));
            sq[2 * h + 1] = _mm256_add_pd(sq[2 * h + 1], _mm256_mul_pd(v1, v1));
        }
    for (int q = 0; q < 4; q++) _mm256_storeu_pd(ls + 4 * q, sum[q]), _mm256_storeu_pd(lq + 4 * q, sq[q]);
    ln_tail_sums(x, res, o, full, H, &tsum, &tsq);
    const ln_moments mo = ln_moments_of(ls, lq, tsum, tsq, H, eps);
    const __m256 mh = _mm256_set1_ps(mo.mh), ml = _mm256_set1_ps(mo.ml), r = _mm256_set1_ps(mo.r);
    const __m256 near0 = _mm256_set1_ps(LN_NEAR0), mag = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (size_t d = 0; d < full8; d += 8) {
        const __m256 s = _mm256_loadu_ps(o + d);
        const __m256 z = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(s, mh), ml), r);
        const __m256 zg = _mm256_mul_ps(z, _mm256_loadu_ps(g + d));
        const __m256 y = _mm256_add_ps(zg, _mm256_loadu_ps(b + d));
        const int near = _mm256_movemask_ps(_mm256_cmp_ps(
            _mm256_and_ps(y, mag), _mm256_mul_ps(_mm256_and_ps(zg, mag), near0), _CMP_LT_OQ));
        _mm256_storeu_ps(o + d, y);
        if (near) ln_exact_lanes(o + d, s, near, &mo, g + d, b + d); /* rare */
    }
    if (full8 < H) ln_outputs(o + full8, H - full8, &mo, g + full8, b + full8);
}
#endif

/* ------------------------------------------------------------------------ embedding */
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

static void embed_row_generic(const uint64_t *row, float al, const float *p, const float *k,
                              size_t H, float *o) {
    embed_tail(row, al, p, k, 0, H, o);
}

#ifdef BB_X86
static T256 void embed_row_avx2(const uint64_t *row, float al, const float *p, const float *k,
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

static T512 void embed_row_avx512(const uint64_t *row, float al, const float *p, const float *k,
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

/* GELU as Paddle's float32 kernel evaluates it, x * 0.5 * (1 + erf(x * (1/sqrt 2))), each step
 * rounded to float32 and erf taken in double: it keeps the float32 cancellation of 1 + erf, so
 * it returns -0.0 where Paddle does for very negative x (from about -5.6; Paddle's own erf
 * reaches -1 from about -5.2). */
static float gelu32(float v) {
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

/* One row of n values -> nwords(n) words; pad bits 0. */
static void pack_act_row_generic(const float *x, size_t n, const float *shift, float scale,
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
/* The same bits, 8 values at a time (GELU's erf stays scalar): max(v, 0) is ReLU's v > 0 ? v : 0
 * (-0.0 and NaN give +0.0), the shift is kept where v + shift != 0 (unordered: NaN sums too),
 * and the division is IEEE's, so every bit equals act_bit's. */
static T256 void pack_act_row_avx2(const float *x, size_t n, const float *shift, float scale,
                                   int kind, int act, uint64_t *out) {
    if (act == ACT_GELU) {
        pack_act_row_generic(x, n, shift, scale, kind, act, out);
        return;
    }
    memset(out, 0, nwords(n) * sizeof(uint64_t));
    size_t k = 0;
    for (; k + 8 <= n; k += 8)
        out[k / 64] |= (uint64_t)act_bits8(_mm256_loadu_ps(x + k), shift ? shift + k : NULL, scale,
                                           kind, act) << (k % 64);
    for (; k < n; k++) out[k / 64] |= act_bit(x[k], shift, k, scale, kind, act) << (k % 64);
}
#endif

/* ------------------------------------------------------------------------- dispatch */

/* Optional fused binary-linear tile (TM rows x TN * 8 channels, all valid): float outputs, or
 * if bits is not NULL only their bits, one uint32 per row (TN * 8 = 32 channels): the sign bits,
 * or with q those of q's quantizer (shift from q->shift[0]; not GELU). K per row if Krow. */
typedef void (*lin_tile_fn)(const uint64_t *a, size_t kw, const uint64_t *b, int op, float *o,
                            size_t ldo, const float *alpha, const float *bias, long K,
                            const long *Krow, uint32_t *bits, size_t ldb, const outq_t *q);

typedef struct {
    const char *name;
    tile_fn tile;
    lin_tile_fn lin_tile;
    pack_fn pack;
    scores_fn scores;
    context_fn context;
    void (*ln_row)(const float *x, const float *res, size_t H, const float *g, const float *b,
                   double eps, float *o);
    void (*pack_act_row)(const float *x, size_t n, const float *shift, float scale, int kind,
                         int act, uint64_t *out);
    void (*embed_row)(const uint64_t *row, float al, const float *p, const float *k, size_t H,
                      float *o);
    size_t (*table_lanes)(const int32_t *cnt, size_t L, const uint8_t *kp, int any,
                          const double *e, double lane[8]);
    /* the table-lookup products (NULL: this set has none) and their rows' offsets */
    void (*nib_tile)(const uint8_t *tab, const uint8_t *tab2, size_t nk, const uint8_t *w4,
                     int32_t *c, size_t ldc, int mr, int nv);
    void (*nib_rows)(const uint64_t *a, size_t M, size_t kw, uint8_t *a4);
    void (*nib_tile_tables)(const uint8_t *a4, size_t nk, int mr, const uint8_t *tables,
                            uint8_t *tab);
    void (*nib_pair_tables)(const uint8_t *a4, size_t nk, const uint8_t *pairs, uint8_t *tab2);
    void (*nib_panel)(const uint64_t *rows, size_t stride, int sh, size_t nk, uint8_t *panel);
    void (*nib_below)(const int32_t *c, size_t n, long thr, uint64_t *bits);
    /* the fused binary-linear epilogue of a full TM x 32 tile of counts (see lin_tile_fn) */
    void (*lin_epi)(const int32_t *loc, size_t ldl, float *o, size_t ldo, const float *alpha,
                    const float *bias, long K, const long *Krow, uint32_t *bits, size_t ldb,
                    const outq_t *q);
    /* a full tile of the table-lookup products with that epilogue fused (see nib_lin_4x2) */
    void (*nib_lin)(const uint8_t *tab, size_t nk, const uint8_t *w4, size_t pstride, float *o,
                    size_t ldo, const float *alpha, const float *bias, long K, const long *Krow,
                    uint32_t *bits, size_t ldb, const outq_t *q);
} isa_t;

static const isa_t ISAS[] = {
#ifdef BB_X86
    {"avx512", tile_avx512, lin_tile_avx512, pack_avx2, scores_avx512, context_avx512,
     ln_row_avx2, pack_act_row_avx2, embed_row_avx512, table_lanes_avx512, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL},
    {"avx2", tile_avx2, lin_tile_avx2, pack_avx2, scores_avx2, context_avx2, ln_row_avx2,
     pack_act_row_avx2, embed_row_avx2, table_lanes_generic, nib_tile_avx2, nib_rows_avx2,
     nib_tile_tables, nib_pair_tables, nib_panel_avx2, nib_below_avx2, lin_epi_avx2, nib_lin_4x2},
    {"popcnt", tile_popcnt, NULL, pack_generic, scores_popcnt, context_popcnt, ln_row_generic,
     pack_act_row_generic, embed_row_generic, table_lanes_generic, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL},
#endif
    {"generic", tile_generic, NULL, pack_generic, scores_generic, context_generic, ln_row_generic,
     pack_act_row_generic, embed_row_generic, table_lanes_generic, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL},
};
#define N_ISAS ((int)(sizeof ISAS / sizeof ISAS[0]))
static const isa_t *g_isa = &ISAS[N_ISAS - 1];

static int isa_supported(const isa_t *isa) {
#ifdef BB_X86
    __builtin_cpu_init();
    if (!strcmp(isa->name, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("popcnt");
    if (!strcmp(isa->name, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
    if (!strcmp(isa->name, "popcnt")) return __builtin_cpu_supports("popcnt");
#endif
    return !strcmp(isa->name, "generic");
}

/* ------------------------------------------------------------------- thread pool */
/* A job is n independent chunks, cut into one contiguous range per thread (the caller is
 * thread 0). Each thread takes the chunks of its own range first, then those left in the
 * others' ranges, from atomic counters; the caller then waits only for chunks already taken.
 * The kernels number their chunks row block first, so thread t works on the same rows in
 * every kernel of a forward and reads what it wrote itself: where a host puts two vCPUs on
 * core complexes that share no cache, each line one thread hands the other costs a trip
 * across the chip, which took about a tenth of a BERT-base forward at two threads when one
 * shared counter dealt each chunk to whichever thread asked (a 2 vCPU Zen 2 EPYC). A worker
 * that is not running (the CPU is shared, or it is still waking up) delays nothing: the
 * others take its chunks, and the job never waits for a thread to arrive, unlike a fork/join
 * barrier (OpenMP), which on an oversubscribed CPU costs a scheduler time slice per parallel
 * region. A counter holds (job generation << 32 | next chunk), so a worker late for one job
 * cannot take chunks of the next. Jobs from concurrent callers do not queue: a caller that
 * finds the pool busy runs its job alone. */

typedef void (*task_fn)(void *ctx, long chunk, int tid);
#define MAX_THREADS 256

static struct {
    pthread_mutex_t mu, run_mu;
    pthread_cond_t cv;
    pthread_t th[MAX_THREADS];
    int want, started, stop;
    uint64_t gen; /* written under mu, read atomically */
    task_fn fn;
    void *ctx;
    long n, nt; /* chunks, threads sharing them (ranges) */
    long done;  /* atomic: chunks of the current job finished */
    /* atomic, one per range (a line each: its owner takes from it at every chunk) */
    struct {
        uint64_t next;
    } __attribute__((aligned(64))) cur[MAX_THREADS];
} P = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static inline void cpu_relax(void) {
#ifdef BB_X86
    __builtin_ia32_pause();
#endif
}

/* Range r of a job of n chunks among nt threads: [range_at(n, nt, r), range_at(n, nt, r + 1)). */
static long range_at(long n, long nt, long r) { return n * r / nt; }

static long grab_range(uint64_t gen, long r, long end) {
    uint64_t v = __atomic_load_n(&P.cur[r].next, __ATOMIC_ACQUIRE);
    for (;;) {
        if ((v >> 32) != (gen & 0xffffffffULL) || (long)(v & 0xffffffffULL) >= end) return -1;
        if (__atomic_compare_exchange_n(&P.cur[r].next, &v, v + 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return (long)(v & 0xffffffffULL);
    }
}

/* The next chunk for thread tid: from its own range, else from the others' in turn; -1 when
 * none is left (or the job is no longer gen). */
static long grab(uint64_t gen, long n, long nt, int tid) {
    for (long k = 0; k < nt; k++) {
        const long r = (tid + k) % nt;
        const long i = grab_range(gen, r, range_at(n, nt, r + 1));
        if (i >= 0) return i;
    }
    return -1;
}

static void *pool_worker(void *arg) {
    const int tid = (int)(intptr_t)arg;
    uint64_t seen = 0;
    for (;;) {
        /* Back-to-back jobs (one per kernel call) arrive within microseconds: spin briefly
         * before sleeping. */
        for (int i = 0; i < 4000 && __atomic_load_n(&P.gen, __ATOMIC_ACQUIRE) == seen; i++)
            cpu_relax();
        pthread_mutex_lock(&P.mu);
        while (P.gen == seen && !P.stop) pthread_cond_wait(&P.cv, &P.mu);
        if (P.stop) {
            pthread_mutex_unlock(&P.mu);
            return NULL;
        }
        seen = P.gen;
        task_fn fn = P.fn;
        void *ctx = P.ctx;
        const long n = P.n, nt = P.nt;
        pthread_mutex_unlock(&P.mu);
        for (long i; (i = grab(seen, n, nt, tid)) >= 0;) {
            fn(ctx, i, tid);
            __atomic_add_fetch(&P.done, 1, __ATOMIC_ACQ_REL);
        }
    }
}

static void pool_stop(void) { /* call with run_mu held */
    pthread_mutex_lock(&P.mu);
    P.stop = 1;
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    for (int i = 1; i < P.started; i++) pthread_join(P.th[i], NULL);
    P.started = 0;
    P.stop = 0;
}

static int default_threads(void) {
    const char *names[] = {"BIBERT_NUM_THREADS", "OMP_NUM_THREADS"};
    for (int i = 0; i < 2; i++) {
        const char *e = getenv(names[i]);
        if (e && atoi(e) > 0) return atoi(e) < MAX_THREADS ? atoi(e) : MAX_THREADS;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n < MAX_THREADS ? (int)n : MAX_THREADS);
}

static void pool_run(task_fn fn, void *ctx, long n) {
    if (n <= 0) return;
    if (n == 1 || P.want <= 1 || pthread_mutex_trylock(&P.run_mu)) {
        for (long i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    if (!P.started) { /* workers start on first use */
        P.started = 1;
        for (int i = 1; i < P.want; i++) {
            if (pthread_create(&P.th[i], NULL, pool_worker, (void *)(intptr_t)i)) break;
            P.started = i + 1;
        }
    }
    pthread_mutex_lock(&P.mu);
    uint64_t gen = P.gen + 1;
    const long nt = P.started < n ? P.started : n;
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.nt = nt;
    __atomic_store_n(&P.done, 0, __ATOMIC_RELAXED);
    for (long r = 0; r < nt; r++)
        __atomic_store_n(&P.cur[r].next, (gen & 0xffffffffULL) << 32 | (uint64_t)range_at(n, nt, r),
                         __ATOMIC_RELEASE);
    __atomic_store_n(&P.gen, gen, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    long mine = 0;
    for (long i; (i = grab(gen, n, nt, 0)) >= 0; mine++) fn(ctx, i, 0);
    __atomic_add_fetch(&P.done, mine, __ATOMIC_ACQ_REL);
    for (long spins = 0; __atomic_load_n(&P.done, __ATOMIC_ACQUIRE) < n; spins++) {
        if (spins < 20000) cpu_relax();
        else sched_yield(); /* a worker holding a chunk was descheduled: let it run */
    }
    pthread_mutex_unlock(&P.run_mu);
}

/* A forked child has none of the workers and maybe a mutex held by one: start afresh. */
static void pool_atfork_child(void) {
    pthread_mutex_init(&P.mu, NULL);
    pthread_mutex_init(&P.run_mu, NULL);
    pthread_cond_init(&P.cv, NULL);
    P.started = 0;
    P.stop = 0;
}

static void pool_set_threads(int n) {
    pthread_mutex_lock(&P.run_mu);
    if (P.started) pool_stop();
    P.want = n < 1 ? 1 : (n < MAX_THREADS ? n : MAX_THREADS);
    pthread_mutex_unlock(&P.run_mu);
}

/* ------------------------------------------------------------------ driver kernels */

/* Row chunks of the elementwise kernels (packing, LayerNorm, embedding), split from 64k values
 * (at batch 1, 128 rows of 768): 32 rows, the GEMM's row block (GEMM_TILES * TM), so each
 * thread packs and normalizes the rows whose products it computes (see the pool). */
#define ROW_CHUNK(rows, n) ((rows) * (n) > (1 << 16) ? 32 : (rows))

typedef struct {
    const uint64_t *a, *b;
    size_t M, kw, N;
    int op;
    int32_t *cnt;
    float *out_f;
    uint32_t *out_bits; /* sign bits of the linear's output instead of out_f: [M, 2 nwords(N)] */
    const float *alpha, *bias;
    long K;
    int unsig; /* a holds {0,1} bits: dot = popcount(a_m) - 2 popcount(a_m AND w) (op AND) */
    const long *ones; /* unsig: popcount(a_m) of each row, counted once */
    const outq_t *q;  /* out_bits through this quantizer instead of the sign (NULL: the sign) */
    const uint8_t *w4, *a4; /* the table-lookup path: nibble panels and row offsets, or NULL */
    long nmt, nnt, NB, groups; /* row tiles, weight panels, 8-channel blocks, row chunks */
} gemm_job;

/* A GEMM chunk is GEMM_TILES row tiles (TM rows each) x GEMM_PANELS weight panels (TN * 8
 * channels each): its activation rows stay in L1 across the panels, each panel across the
 * rows, and its outputs are whole 1 KiB runs of a few rows. (Chunks of one panel over all rows
 * write each output line in 128-byte pieces at a stride of 4N bytes, which at batch 32 costs
 * more than the popcounts.) */
enum { GEMM_TILES = 8, GEMM_PANELS = 8 };
/* On the table-lookup path a chunk's rows build their tables once for all its panels: wider
 * chunks spread that cost (about 6 instructions per pair table against ~3 per pair table and
 * panel in the products) over more panels. */
enum { NIB_PANELS = 24 };

/* The outputs of one tile's counts loc[r * ldl + l] (rows m0 + r < m0 + mr, channels n0 + l in nb
 * blocks of 8, those below N): raw counts, or the binary linear epilogue (see popc_gemm). */
static void tile_out(const gemm_job *g, const int32_t *loc, size_t ldl, size_t m0, int mr,
                     size_t n0, int nb) {
    const size_t N = g->N, ldb = 2 * nwords(N); /* uint32 per output row */
    const outq_t *q = g->out_bits ? g->q : NULL;
    const size_t nn = N - n0 < (size_t)nb * 8 ? N - n0 : (size_t)nb * 8;
    for (int r = 0; r < mr; r++) {
        const int32_t *lr = loc + r * ldl;
        if (g->out_f || g->out_bits) {
            uint32_t sg = 0;
            long K = g->K;
            if (g->unsig) K = g->ones[m0 + r]; /* K = popcount(A_m) */
            for (size_t l = 0; l < nn; l++) {
                double d = (double)(K - 2 * (long)lr[l]);
                float y = (float)(d * (double)g->alpha[n0 + l] + (double)g->bias[n0 + l]);
                if (g->out_f) g->out_f[(m0 + r) * N + n0 + l] = y;
                uint32_t bit;
                if (q && q->lo) bit = q->lo[n0 + l] <= lr[l] && lr[l] <= q->hi[n0 + l];
                else if (q) bit = (uint32_t)act_bit(y, q->shift, n0 + l, q->scale, q->kind, q->act);
                else memcpy(&bit, &y, 4), bit >>= 31;
                sg |= bit << l; /* n0 is a multiple of 32: l < 32 */
            }
            if (g->out_bits) g->out_bits[(m0 + r) * ldb + n0 / 32] = sg;
        } else {
            memcpy(g->cnt + (m0 + r) * N + n0, lr, nn * sizeof(int32_t));
        }
    }
}

/* The quantizer of the 32 channels from n0 (a fused epilogue's view of g->q), or NULL. */
static const outq_t *panel_q(const gemm_job *g, size_t n0, outq_t *qt) {
    const outq_t *q = g->out_bits ? g->q : NULL;
    if (!q) return NULL;
    *qt = (outq_t){q->shift ? q->shift + n0 : NULL, q->scale, q->kind, q->act,
                   q->lo ? q->lo + n0 : NULL, q->hi ? q->hi + n0 : NULL};
    return qt;
}

/* A chunk on the table-lookup path: per tile of TM rows, its tables, then pairs of panels of 32
 * channels. 0 (nothing done) if the tables' memory is not there: the caller counts the chunk by
 * XOR and popcount instead. */
static int nib_chunk(const gemm_job *g, long it0, long it1, long jt0, long jt1) {
    const size_t M = g->M, N = g->N, nk = 16 * g->kw, ldb = 2 * nwords(N);
    const int linear = g->out_f || g->out_bits;
    const outq_t *gq = g->out_bits ? g->q : NULL;
    /* the fused epilogue (nib_lin): lin_epi's cases, sign_cut's 16-bit compares below 32767 */
    const int fused = g_isa->nib_lin && linear && !(gq && gq->act == ACT_GELU) &&
                      !(gq && gq->lo && g->K >= 32767);
    uint8_t *tab = aligned_alloc(64, nk * TM * 16 + nk * 32), *tab2 = tab + nk * TM * 16;
    if (!tab) return 0;
    for (long it = it0; it < it1; it++) {
        const size_t m0 = (size_t)it * TM;
        const int mr = (int)(M - m0 < TM ? M - m0 : TM);
        /* a full tile's pairs of panels read the pair tables; a lone panel or short tile the
         * single rows' */
        if (mr == TM) g_isa->nib_pair_tables(g->a4 + m0 * nk, nk, &NIB_PAIRS[g->op][0][0][0], tab2);
        if (mr < TM || (jt1 - jt0) % 2)
            g_isa->nib_tile_tables(g->a4 + m0 * nk, nk, mr, &NIB_TABLES[g->op][0][0], tab);
        for (long jt = jt0; jt < jt1; jt += 2) {
            int32_t loc[TM * 2 * 32];
            const int nv = jt + 1 < jt1 ? 2 : 1;
            const size_t c0 = (size_t)jt * 32; /* the pair's first channel */
            if (fused && mr == TM && nv == 2 && c0 + 64 <= N) {
                outq_t qt;
                g_isa->nib_lin(tab2, nk, g->w4 + (size_t)jt * nk * 32, nk * 32,
                               g->out_f ? g->out_f + m0 * N + c0 : NULL, N, g->alpha + c0,
                               g->bias + c0, g->K, g->unsig ? g->ones + m0 : NULL,
                               g->out_bits ? g->out_bits + m0 * ldb + c0 / 32 : NULL, ldb,
                               panel_q(g, c0, &qt));
                continue;
            }
            g_isa->nib_tile(tab, tab2, nk, g->w4 + (size_t)jt * nk * 32, loc, 64, mr, nv);
            for (int v = 0; v < nv; v++) {
                const size_t n0 = (size_t)(jt + v) * 32;
                const int nb = (int)(g->NB - (jt + v) * TN < TN ? g->NB - (jt + v) * TN : TN);
                outq_t qt;
                const outq_t *q = panel_q(g, n0, &qt);
                if (linear && mr == TM && n0 + 32 <= N && !(q && q->act == ACT_GELU))
                    g_isa->lin_epi(loc + 32 * v, 64, g->out_f ? g->out_f + m0 * N + n0 : NULL, N,
                                   g->alpha + n0, g->bias + n0, g->K, g->unsig ? g->ones + m0 : NULL,
                                   g->out_bits ? g->out_bits + m0 * ldb + n0 / 32 : NULL, ldb, q);
                else
                    tile_out(g, loc + 32 * v, 64, m0, mr, n0, nb);
            }
        }
    }
    free(tab);
    return 1;
}

static void gemm_chunk(void *vctx, long chunk, int tid) {
    const gemm_job *g = vctx;
    const tile_fn tile = g_isa->tile;
    const lin_tile_fn lin = g_isa->lin_tile;
    const long panels = g->a4 ? NIB_PANELS : GEMM_PANELS;
    const long npg = (g->nnt + panels - 1) / panels;
    const long it0 = (chunk / npg) * GEMM_TILES, jt0 = (chunk % npg) * panels;
    const long it1 = it0 + GEMM_TILES < g->nmt ? it0 + GEMM_TILES : g->nmt;
    const long jt1 = jt0 + panels < g->nnt ? jt0 + panels : g->nnt;
    const size_t M = g->M, kw = g->kw, N = g->N;
    (void)tid;
    if (g->a4 && nib_chunk(g, it0, it1, jt0, jt1)) return;
    for (long jt = jt0; jt < jt1; jt++) {
        const size_t n0 = (size_t)jt * TN * 8;
        const int nb = (int)(g->NB - jt * TN < TN ? g->NB - jt * TN : TN);
        for (long it = it0; it < it1; it++) {
            int32_t loc[TM * TN * 8];
            size_t m0 = (size_t)it * TM;
            int mr = (int)(M - m0 < TM ? M - m0 : TM);
            const int linear = g->out_f || g->out_bits;
            const size_t ldb = 2 * nwords(N); /* uint32 per output row */
            const outq_t *q = g->out_bits ? g->q : NULL;
            if (linear && lin && mr == TM && nb == TN && n0 + TN * 8 <= N &&
                !(q && q->act == ACT_GELU)) {
                outq_t qt;
                lin(g->a + m0 * kw, kw, g->b + n0 * kw, g->op,
                    g->out_f ? g->out_f + m0 * N + n0 : NULL, N, g->alpha + n0, g->bias + n0, g->K,
                    g->unsig ? g->ones + m0 : NULL,
                    g->out_bits ? g->out_bits + m0 * ldb + n0 / 32 : NULL, ldb, panel_q(g, n0, &qt));
                continue;
            }
            tile(g->a + m0 * kw, kw, g->b + n0 * kw, g->op, loc, TN * 8, mr, nb);
            tile_out(g, loc, TN * 8, m0, mr, n0, nb);
        }
    }
}

/* Popcount GEMM over [M, kw] x interleaved [NB, kw, 8]; with neither out_f nor out_bits,
 * writes the raw counts to cnt[M][N]; else the binary linear epilogue
 *     y[m, n] = (float)((K - 2 * count) * alpha[n] + bias[n])       (in double, no FMA)
 * (unsig: a holds {0,1} inputs, op is AND and K is popcount(a_m), so K - 2 count is the
 * {0,1} x {-1,+1} dot product)
 * The product of the integer dot (< 2^24) and a float is exact in double, so y is the exact
 * value rounded (twice: to double, to float), and its sign is the exact sign: a float32
 * evaluation (Paddle's GEMM summing +-alpha) can get it wrong where the exact value is within
 * its rounding error of 0 (e.g. a dot product of exactly 0 and a bias below ~1e-6).
 * to out_f, or only its sign bits, packed, to out_bits (words [M, nwords(N)], seen as uint32;
 * the caller zeroes it: the pad bits past N are never written); with q, the bits q's quantizer
 * gives y (act_bit: what pack_act would give the float output, without writing it).
 */
static void popc_gemm(const uint64_t *a, size_t M, size_t kw, const uint64_t *b, size_t N, int op,
                      int32_t *cnt, float *out_f, uint32_t *out_bits, const float *alpha,
                      const float *bias, long K, int unsig, const outq_t *q, const uint8_t *w4) {
    long ones[unsig ? M : 1]; /* per row, not once per (row, panel) */
    for (size_t m = 0; unsig && m < M; m++) ones[m] = popcount_words(a + m * kw, kw);
    gemm_job g = {a, b, M, kw, N, op, cnt, out_f, out_bits, alpha, bias, K, unsig, ones, q};
    uint8_t *a4 = NULL;
    /* the table-lookup path where the set has one, the caller gave the nibble panels and the
     * 16-bit sums cannot overflow (64 kw < 65536) */
    if (w4 && g_isa->nib_tile && kw < 1024 && (a4 = malloc(M * kw * 16 + 16))) {
        g_isa->nib_rows(a, M, kw, a4);
        g.a4 = a4;
        g.w4 = w4;
    }
    g.NB = (long)((N + 7) / 8);
    g.nmt = (long)((M + TM - 1) / TM);
    g.nnt = (g.NB + TN - 1) / TN;
    g.groups = (g.nmt + GEMM_TILES - 1) / GEMM_TILES;
    const long panels = g.a4 ? NIB_PANELS : GEMM_PANELS;
    pool_run(gemm_chunk, &g, g.groups * ((g.nnt + panels - 1) / panels));
    free(a4);
}

typedef struct {
    const float *x;
    size_t rows, n, chunk;
    uint64_t *out;
} pack_job;

static void pack_chunk(void *vctx, long c, int tid) {
    const pack_job *j = vctx;
    const pack_fn pack = g_isa->pack;
    const size_t nw = nwords(j->n), r1 = (c + 1) * j->chunk < j->rows ? (c + 1) * j->chunk : j->rows;
    (void)tid;
    for (size_t r = c * j->chunk; r < r1; r++) pack(j->x + r * j->n, j->n, j->out + r * nw);
}

static void pack_rows(const float *x, size_t rows, size_t n, uint64_t *out) {
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

static void pack_act(const float *x, size_t rows, size_t n, const float *shift, float scale,
                     int kind, int act, uint64_t *out) {
    /* GELU costs an erf per value: split into chunks sooner */
    const size_t chunk = act == ACT_GELU ? (rows * n > (1 << 16) ? 16 : rows) : ROW_CHUNK(rows, n);
    pack_act_job j = {x, shift, rows, n, chunk, scale, kind, act, out};
    pool_run(pack_act_chunk, &j, (long)((rows + chunk - 1) / chunk));
}
/* In-place transpose of a 64 x 64 bit matrix: bit c of m[r] <-> bit r of m[c]. Swaps the
 * off-diagonal j x j blocks for j = 32, 16, ..., 1 (mask: bits whose index has bit j clear). */
static void transpose64(uint64_t m[64]) {
    static const uint64_t masks[6] = {0x00000000FFFFFFFFULL, 0x0000FFFF0000FFFFULL,
                                      0x00FF00FF00FF00FFULL, 0x0F0F0F0F0F0F0F0FULL,
                                      0x3333333333333333ULL, 0x5555555555555555ULL};
    for (int s = 0, j = 32; j; j >>= 1, s++)
        for (int k = 0; k < 64; k++)
            if (!(k & j)) {
                uint64_t t = ((m[k] >> j) ^ m[k + j]) & masks[s];
                m[k + j] ^= t;
                m[k] ^= t << j;
            }
}

/* out[0..nwords(len)) = bits [start, start + len) of a packed row of rw words; pad bits 0. */
static void extract_bits(const uint64_t *row, size_t rw, size_t start, size_t len, uint64_t *out) {
    const size_t w0 = start / 64, sh = start % 64, nw = nwords(len);
    for (size_t i = 0; i < nw; i++) {
        uint64_t lo = row[w0 + i] >> sh;
        uint64_t hi = sh && w0 + i + 1 < rw ? row[w0 + i + 1] << (64 - sh) : 0;
        out[i] = lo | hi;
    }
    if (len % 64) out[nw - 1] &= (1ULL << (len % 64)) - 1;
}

/* Whether count c is in the map: p / a_p > 0.5 in float32, p = e[c] / sum. */
static inline int map_has(const double *e, long c, double sum, float mscale) {
    return (float)(e[c] / sum) / mscale > 0.5f;
}

/* The cut of a row whose table entries fall monotonically from the top count (dir = +1: counts
 * lo..hi, the top one lo; -1: hi..lo, the top one hi): the last count in the map, or the one
 * before the top if none. As map_has is monotone there, a count in the map followed by one out
 * (or an end) is the cut: a guess from e[c] > a_p sum / 2 (no division) checked so (two
 * independent divisions), else a bisection (a chain of dependent ones). */
static long map_cut(const double *e, long lo, long hi, int dir, double sum, float mscale) {
    const double t = 0.5 * (double)mscale * sum;
    long n = 0;
    for (long c = lo; c <= hi; c++) n += e[c] > t;
    const long first = dir > 0 ? lo : hi, cut = first - dir + dir * n;
    const int in_ok = cut == first - dir || map_has(e, cut, sum, mscale);
    const int next_out = cut + dir < lo || cut + dir > hi || !map_has(e, cut + dir, sum, mscale);
    if (in_ok && next_out) return cut;
    long in = first - dir, out = dir > 0 ? hi + 1 : lo - 1; /* known in / out (or past the ends) */
    while (labs(out - in) > 1) {
        const long m = (in + out) / 2; /* in + out >= -1 + 1: the midpoint, rounded down */
        if (map_has(e, m, sum, mscale)) in = m;
        else out = m;
    }
    return in;
}

/* BiT's attention map for one query row (MODE_SOFTMAX), from the integer scores
 * S_j = dh - 2 cnt[j] of the kept keys (all keys if none is kept: an additive mask that covers
 * every key cancels in the softmax):
 *     s_j = S_j * sscale            (sscale = a_q a_k / sqrt(dh), in double)
 *     p_j = (float)(exp(s_j - max s) / sum_k exp(s_k - max s))   (double; the sum in SUM_LANES
 *           interleaved partial sums, key j into lane j % SUM_LANES in key order, then added
 *           pairwise: independent chains instead of one L-long chain of dependent additions)
 *     bit j = 1[p_j / mscale > 0.5]  in float32 (mscale = a_p: {0, a_p} = a_p clip(round(p / a_p)))
 * Masked keys get p = 0 (as exp(-1e4) does in float32), so bit 0.
 * A count takes dh + 1 values, so every exp(s_j - max s) is an entry of the table
 * E[m][c] = exp(s(c) - s(m)) (m: the count of the top score), evaluated by the same expression
 * as a direct computation, so every bit is the same. The test on p_j is monotone in the table
 * entry (IEEE division and rounding are), and the entry falls as the count moves away from the
 * top one: where the table row is monotone over the counts present (checked), the map is the
 * kept keys whose count is at most (sscale >= 0; at least, sscale < 0) one cut (map_cut).
 * Returns that cut, or NO_CUT after writing the map into Ai (zeroed) key by key. */
enum { SUM_LANES = 8 }; /* table_lanes' 8 */
#define NO_CUT LONG_MIN

static long softmax_map_row(const int32_t *cnt, size_t L, long dh, const uint8_t *kp, int any,
                            double sscale, const double *E, float mscale, uint8_t *on,
                            uint64_t *Ai) {
    /* the count of the largest score: the smallest count (sscale > 0), the largest (< 0) */
    int32_t lo32 = (int32_t)dh, hi32 = 0; /* int32 and no branch: the loop vectorizes */
    for (size_t j = 0; j < L; j++) {
        const int32_t c = cnt[j], kept_j = !any | (kp[j] != 0);
        const int32_t cl = kept_j ? c : (int32_t)dh, ch = kept_j ? c : 0;
        lo32 = cl < lo32 ? cl : lo32;
        hi32 = ch > hi32 ? ch : hi32;
    }
    const long lo = lo32, hi = hi32;
    const long top = sscale >= 0.0 ? lo : hi;
    const double *e = E + (size_t)top * (dh + 1);
    double lane[SUM_LANES] = {0.0}; /* a masked key adds +0.0, which leaves a lane as it is */
    const size_t j0 = g_isa->table_lanes(cnt, L, kp, any, e, lane);
    for (size_t j = j0; j < L; j++) lane[j % SUM_LANES] += !any || kp[j] ? e[cnt[j]] : 0.0;
    for (int w = SUM_LANES / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) lane[i] = lane[2 * i] + lane[2 * i + 1];
    const double sum = lane[0];
    int mono = 1;
    for (long c = lo; c < hi; c++) mono &= sscale >= 0.0 ? e[c + 1] <= e[c] : e[c + 1] >= e[c];
    if (mono) return map_cut(e, lo, hi, sscale >= 0.0 ? 1 : -1, sum, mscale);
    for (long c = 0; c <= dh; c++) on[c] = map_has(e, c, sum, mscale);
    for (size_t j = 0; j < L; j++)
        if ((!any || kp[j]) && on[cnt[j]]) Ai[j / 64] |= 1ULL << (j % 64);
    return NO_CUT;
}

/* E[m][c] = exp(s(c) - s(m)), s(c) = (dh - 2c) * sscale, for counts m, c in 0..dh. */
static void softmax_table(long dh, double sscale, double *E) {
    for (long m = 0; m <= dh; m++)
        for (long c = 0; c <= dh; c++)
            E[m * (dh + 1) + c] = exp((double)(dh - 2 * c) * sscale - (double)(dh - 2 * m) * sscale);
}

/* The table-lookup attention (kernel sets with table-lookup products): a block of queries'
 * scores (MODE_BOOL's map, MODE_SOFTMAX's counts) and context are two such products, four query rows at a time, against the
 * head's keys and values as nibble panels (see nib_body): K4 [ceil(L/32), ceil(dh/4), 32]
 * (channels: keys, nibbles of a key's dh bits) and V4 [dh/64 pairs of panels, 16 Lw, 32]
 * (channels: head dimensions, nibbles of a dimension's bits over the keys), zero past the last
 * key. The context goes so only where dh is a multiple of 64: a lone panel of 32 dimensions
 * spreads a tile's tables over too few outputs to beat the context kernel. */
static size_t att_k4_bytes(size_t L, size_t dh) { return (L + 31) / 32 * ((dh + 3) / 4) * 32; }
static size_t att_v4_bytes(size_t L, size_t dh) { return (dh + 31) / 32 * 16 * nwords(L) * 32; }

/* The keys and values of (batch b, head h) as the kernels read them, each made if its pointer
 * is not NULL: K_il [ceil(L/8), dw, 8] and V_il [ceil(dh/8), Lw, 8] (the scores and context
 * kernels'), their nibble panels K4 and V4 (the table lookup's, see att_k4_bytes). Scratch Vb:
 * [64 Lw, dw] words. */
static void attention_kv(const uint64_t *qkvb, size_t rw, size_t L, size_t H, size_t dh, size_t b,
                         size_t h, uint64_t *Kil, uint64_t *Vil, uint64_t *Vb, uint8_t *K4,
                         uint8_t *V4) {
    const size_t dw = nwords(dh), Lw = nwords(L), LB = (L + 7) / 8;
    uint64_t kbits[dw], blk[64];
    uint64_t Kt[K4 ? 64 * dw * Lw : 1]; /* K4's bit rows: Kt[t * Lw + w] = bit t of keys 64w.. */
    if (Kil) memset(Kil, 0, LB * dw * 8 * sizeof(uint64_t));
    if (K4) memset(Kt, 0, sizeof Kt);
    memset(Vb, 0, 64 * Lw * dw * sizeof(uint64_t));
    for (size_t j = 0; j < L; j++) {
        const uint64_t *row = qkvb + (b * L + j) * rw;
        extract_bits(row, rw, H + h * dh, dh, kbits);
        for (size_t w = 0; Kil && w < dw; w++) Kil[(j / 8) * dw * 8 + w * 8 + j % 8] = kbits[w];
        for (size_t w = 0; K4 && w < dw; w++) Kt[(64 * w + j % 64) * Lw + j / 64] = kbits[w];
        extract_bits(row, rw, 2 * H + h * dh, dh, Vb + j * dw);
    }
    /* V_il: sign bits of V transposed (keys along the words), 64 x 64 blocks at a time. */
    for (size_t w = 0; Vil && w < Lw; w++)
        for (size_t cw = 0; cw < dw; cw++) {
            for (int r = 0; r < 64; r++) blk[r] = Vb[(64 * w + r) * dw + cw];
            transpose64(blk);
            for (size_t c = 0; c < 64 && 64 * cw + c < dh; c++) {
                size_t d = 64 * cw + c;
                Vil[((d / 8) * Lw + w) * 8 + d % 8] = blk[c];
            }
        }
    /* K4's bit rows are the keys' bits (Kt, transposed in 64 x 64 blocks), V4's the value rows
     * (Vb, zero past L) */
    for (size_t cw = 0; K4 && cw < dw; cw++)
        for (size_t w = 0; w < Lw; w++) {
            for (int r = 0; r < 64; r++) blk[r] = Kt[(64 * cw + r) * Lw + w];
            transpose64(blk);
            for (int r = 0; r < 64; r++) Kt[(64 * cw + r) * Lw + w] = blk[r];
        }
    for (size_t p = 0; K4 && p < (L + 31) / 32; p++)
        g_isa->nib_panel(Kt + p / 2, Lw, 32 * (int)(p % 2), (dh + 3) / 4, K4 + p * ((dh + 3) / 4) * 32);
    for (size_t p = 0; V4 && p < (dh + 31) / 32; p++)
        g_isa->nib_panel(Vb + p / 2, dw, 32 * (int)(p % 2), 16 * Lw, V4 + p * 16 * Lw * 32);
}

/* popcount_words where the table lookup runs (there is POPCNT: no libgcc call) */
#ifdef BB_X86
static __attribute__((target("popcnt"))) long table_ones(const uint64_t *a, size_t n) {
    return popcount_words(a, n);
}
#else
static long table_ones(const uint64_t *a, size_t n) { return popcount_words(a, n); }
#endif

/* Queries a thread's attention chunk takes: 64 rows, the GEMM's row blocks in pairs. */
enum { ATT_ROWS = 64 };

/* att_nib's scratch for rows of kw words: the rows' offsets, then (aligned) their tables. */
static size_t att_nib_bytes(size_t kw) { return 16 * kw * (ATT_ROWS + TM * 16 + 32) + 64; }

/* What att_nib writes for row i and channel n < N: the counts themselves, cnt[(i - i0) * ldc + n]
 * (cnt not NULL, rows padded to whole panels); or, with thr > 0, the bits 1[count < thr], bit
 * n % 32 of the uint32 bits[i * ldb + n / 32]; or ones[i - i0] - 2 count as float, f[i * ldf + n]
 * (ones: the row's popcount). */
typedef struct {
    int32_t *cnt;
    size_t ldc;
    long thr;
    uint32_t *bits;
    size_t ldb;
    const long *ones;
    float *f;
    size_t ldf;
} att_out;

/* Table-lookup products of the rows [i0, i1) (at most ATT_ROWS) of a (kw words each; their
 * first nk <= 16 kw nibbles) with nibble panels w4 of N channels (op), nk nibbles each: per
 * tile of TM rows, per pair of panels, the counts, written as *o says. The full tiles' pairs of
 * panels of bits or floats go through the fused kernel (g_isa->nib_lin). */
static void att_nib(const uint64_t *a, size_t kw, size_t nk, size_t i0, size_t i1,
                    const uint8_t *w4, size_t N, int op, const att_out *o, uint8_t *work) {
    const size_t rows = i1 - i0, np = (N + 31) / 32;
    uint8_t *tab = (uint8_t *)(((uintptr_t)work + 63) & ~(uintptr_t)63), *tab2 = tab + nk * TM * 16;
    uint8_t *a4 = tab2 + nk * 32;
    int32_t lo[64] = {0}, hi[64];
    for (int c = 0; c < 64; c++) hi[c] = (int32_t)o->thr - 1;
    const outq_t cut = {NULL, 1.0f, Q_SIGN, ACT_NONE, lo, hi};
    g_isa->nib_rows(a + i0 * kw, rows, kw, a4);
    for (size_t r = 1; nk < 16 * kw && r < rows; r++) /* the rows' first nk offsets, packed */
        memmove(a4 + r * nk, a4 + r * 16 * kw, nk);
    for (size_t m0 = 0; m0 < rows; m0 += TM) {
        const size_t i = i0 + m0;
        const int mr = (int)(rows - m0 < TM ? rows - m0 : TM);
        if (mr == TM) g_isa->nib_pair_tables(a4 + m0 * nk, nk, &NIB_PAIRS[op][0][0][0], tab2);
        if (mr < TM || np % 2)
            g_isa->nib_tile_tables(a4 + m0 * nk, nk, mr, &NIB_TABLES[op][0][0], tab);
        for (size_t p = 0; p < np; p += 2) {
            const int nv = p + 1 < np ? 2 : 1;
            const uint8_t *w = w4 + p * nk * 32;
            if (o->cnt) {
                g_isa->nib_tile(tab, tab2, nk, w, o->cnt + m0 * o->ldc + 32 * p, o->ldc, mr, nv);
                continue;
            }
            if (mr == TM && nv == 2 && (o->thr > 0 || 32 * p + 64 <= N)) {
                if (o->thr > 0)
                    g_isa->nib_lin(tab2, nk, w, nk * 32, NULL, 0, NULL, NULL, 0, NULL,
                                   o->bits + i * o->ldb + p, o->ldb, &cut);
                else
                    g_isa->nib_lin(tab2, nk, w, nk * 32, o->f + i * o->ldf + 32 * p, o->ldf, NULL,
                                   NULL, 0, o->ones + m0, NULL, 0, NULL);
                continue;
            }
            int32_t loc[TM * 64];
            g_isa->nib_tile(tab, tab2, nk, w, loc, 64, mr, nv);
            for (int r = 0; r < mr; r++)
                for (int v = 0; v < nv; v++) {
                    const int32_t *c = loc + r * 64 + 32 * v;
                    if (o->thr > 0) {
                        uint32_t sg = 0;
                        for (int l = 0; l < 32; l++) sg |= (uint32_t)(c[l] < o->thr) << l;
                        o->bits[(i + r) * o->ldb + p + v] = sg;
                    } else {
                        for (size_t l = 0, n = 32 * (p + v); l < 32 && n < N; l++, n++)
                            o->f[(i + r) * o->ldf + n] = (float)(o->ones[m0 + r] - 2 * (long)c[l]);
                    }
                }
        }
    }
}

/* Word w of a map row the scores kernel has just stored one word at a time, read as one word:
 * GCC would otherwise read two at once, a load that waits for both stores to retire (no store
 * forwarding across two stores), once per query row. */
static inline uint64_t map_word(const uint64_t *Ai, size_t w) {
    uint64_t v = Ai[w];
    __asm__("" : "+r"(v));
    return v;
}

/* Binary attention for one (batch b, head h) and the queries i0 <= i < i1, from the packed
 * sign bits of the Q/K/V projections (token rows of rw words holding [Q | K | V], 3H bits; head
 * h is bits h*dh.. of each part) and the head's keys and values from attention_kv:
 *     S_ij = Qb_i . Kb_j = dh - 2 popcount(q_i XOR k_j)     (integer; S/sqrt(dh) has its sign)
 *     A_ij = 1[S_ij > 0 and key j kept]                     (MODE_BOOL; MODE_KEEP: 1[j kept];
 *                                                            MODE_SOFTMAX: softmax_map_row)
 *     ctx_id = sum_j A_ij Vb_jd = popcount(A_i) - 2 popcount(A_i AND v_d)   (v_d: sign bits)
 * With K4 the block's scores are one table-lookup product (att_nib): MODE_BOOL's A rows, or
 * the counts MODE_SOFTMAX's map is cut from; with V4 so is its context; else each query's come
 * from the tile, scores and context kernels (K_il, V_il).
 * Scratch: Qb [L, dw], A [L, Lw], then for MODE_SOFTMAX counts int32 [8 ceil(L/8)] and a flag
 * per count value [dh + 1]; work: att_nib's.
 */
static void attention_bh(const uint64_t *qkvb, size_t rw, const uint8_t *keep, size_t L, size_t H,
                         size_t dh, size_t b, size_t h, size_t i0, size_t i1, int mode,
                         double sscale, const double *E, float mscale, float *ctx,
                         const uint64_t *Kil, const uint64_t *Vil, const uint8_t *K4,
                         const uint8_t *V4, uint64_t *scratch, uint8_t *work) {
    const size_t dw = nwords(dh), Lw = nwords(L), LB = (L + 7) / 8;
    uint64_t *Qb = scratch, *A = Qb + L * dw;
    int32_t *cnt = (int32_t *)(A + L * Lw);
    uint8_t *on = (uint8_t *)(cnt + 8 * LB);
    uint64_t kbits[Lw];
    const uint8_t *kp = keep + b * L;

    for (size_t i = i0; i < i1; i++)
        extract_bits(qkvb + (b * L + i) * rw, rw, h * dh, dh, Qb + i * dw);
    memset(kbits, 0, Lw * sizeof(uint64_t));
    int any = 0;
    for (size_t j = 0; j < L; j++)
        if (kp[j]) {
            kbits[j / 64] |= 1ULL << (j % 64);
            any = 1;
        }
    uint64_t sbits[Lw]; /* the keys BiT's softmax runs over: the kept ones, or all L if none is */
    for (size_t w = 0; w < Lw; w++)
        sbits[w] = any ? kbits[w] : (L - 64 * w >= 64 ? ~0ULL : (1ULL << (L - 64 * w)) - 1);
    /* the map rows: MODE_BOOL's, the block's scores in one table-lookup product (K4); */
    const size_t nq = (dh + 3) / 4, ldc = 32 * ((L + 31) / 32);
    if (K4 && mode == MODE_BOOL) {
        memset(A + i0 * Lw, 0, (i1 - i0) * Lw * sizeof(uint64_t));
        const att_out o = {.thr = (long)(dh + 1) / 2, .bits = (uint32_t *)A, .ldb = 2 * Lw};
        att_nib(Qb, dw, nq, i0, i1, K4, L, OP_XOR, &o, work);
        __asm__ volatile("" ::: "memory"); /* A written as uint32 above, read as uint64 below */
        for (size_t i = i0; i < i1; i++)
            for (size_t w = 0; w < Lw; w++) A[i * Lw + w] &= kbits[w]; /* also clears keys j >= L */
    }
    /* MODE_SOFTMAX's, the block's counts so (K4), else each query's by the tile kernel, */
    int32_t *cnts = K4 ? (int32_t *)(work + att_nib_bytes(Lw > dw ? Lw : dw)) : NULL;
    if (K4 && mode == MODE_SOFTMAX) {
        const att_out o = {.cnt = cnts, .ldc = ldc};
        att_nib(Qb, dw, nq, i0, i1, K4, L, OP_XOR, &o, work);
    }
    /* else one query at a time */
    for (size_t i = i0; i < i1 && !(K4 && mode == MODE_BOOL); i++) {
        uint64_t *Ai = A + i * Lw;
        if (mode == MODE_KEEP) {
            memcpy(Ai, kbits, Lw * sizeof(uint64_t));
        } else if (mode == MODE_SOFTMAX) {
            const int32_t *ci = K4 ? cnts + (i - i0) * ldc : cnt; /* popcount(q_i XOR k_j) */
            for (size_t jb = 0; !K4 && jb < LB; jb += TN)
                g_isa->tile(Qb + i * dw, dw, Kil + jb * dw * 8, OP_XOR, cnt + 8 * jb, 8 * TN, 1,
                            LB - jb < TN ? (int)(LB - jb) : TN);
            memset(Ai, 0, Lw * sizeof(uint64_t));
            const long cut = softmax_map_row(ci, L, (long)dh, kp, any, sscale, E, mscale, on, Ai);
            if (cut != NO_CUT) { /* 1[count < thr], from the counts or by the scores kernel; */
                const long thr = sscale >= 0.0 ? cut + 1 : cut;
                if (K4) g_isa->nib_below(ci, L, thr, Ai);
                else g_isa->scores(Qb + i * dw, dw, Kil, LB, thr, Ai);
                /* then the kept (or all) keys < L */
                for (size_t w = 0; w < Lw; w++)
                    Ai[w] = (sscale >= 0.0 ? map_word(Ai, w) : ~map_word(Ai, w)) & sbits[w];
            }
        } else {
            memset(Ai, 0, Lw * sizeof(uint64_t));
            g_isa->scores(Qb + i * dw, dw, Kil, LB, (long)(dh + 1) / 2, Ai);
            for (size_t w = 0; w < Lw; w++) Ai[w] = map_word(Ai, w) & kbits[w]; /* also clears keys j >= L */
        }
    }
    /* the context: the block's in one table-lookup product, else one query at a time */
    float *out = ctx + b * L * H + h * dh;
    if (V4) {
        long ones[i1 - i0];
        for (size_t i = i0; i < i1; i++) ones[i - i0] = table_ones(A + i * Lw, Lw);
        const att_out o = {.ones = ones, .f = out, .ldf = H};
        att_nib(A, Lw, 16 * Lw, i0, i1, V4, dh, OP_AND, &o, work);
        return;
    }
    for (size_t i = i0; i < i1; i++) g_isa->context(A + i * Lw, Lw, Vil, dh, out + i * H);
}

typedef struct {
    const uint64_t *qkvb;
    size_t rw;
    const uint8_t *keep;
    size_t L, H, heads, dh;
    int mode;
    double sscale;
    const double *E; /* MODE_SOFTMAX: softmax_table */
    float mscale;
    double cscale; /* the context's scale: ctx = (float)(count * cscale), unless 1 */
    float *ctx;
    uint64_t **scratch; /* one per thread id */
    uint64_t *kv;       /* attention_kv's K_il, V_il (and K4, V4) of each (b, h), kvw words apart */
    size_t kvw;
    int ktab, vtab; /* by table lookup: the scores (K4, MODE_BOOL), the context (V4) */
    uint8_t **work; /* one per thread id: att_nib's */
} att_job;

/* K_il of (b, h), bh = b * heads + h, in the first job's buffer, its V_il after it, then (with
 * tables) K4 and V4. */
static uint64_t *att_keys(const att_job *j, size_t bh) { return j->kv + bh * j->kvw; }
static uint64_t *att_values(const att_job *j, size_t bh) {
    return att_keys(j, bh) + (j->L + 7) / 8 * nwords(j->dh) * 8;
}
static uint8_t *att_k4(const att_job *j, size_t bh) {
    if (!j->ktab) return NULL;
    return (uint8_t *)(att_values(j, bh) + (j->dh + 7) / 8 * nwords(j->L) * 8);
}
static uint8_t *att_v4(const att_job *j, size_t bh) {
    if (!j->vtab) return NULL;
    return (uint8_t *)(att_values(j, bh) + (j->dh + 7) / 8 * nwords(j->L) * 8) +
           att_k4_bytes(j->L, j->dh);
}

/* First job, chunk t = (b, h): the head's keys and values (see attention_kv). */
static void att_kv_chunk(void *vctx, long t, int tid) {
    const att_job *j = vctx;
    attention_kv(j->qkvb, j->rw, j->L, j->H, j->dh, (size_t)t / j->heads, (size_t)t % j->heads,
                 j->ktab ? NULL : att_keys(j, (size_t)t), j->vtab ? NULL : att_values(j, (size_t)t),
                 j->scratch[tid], att_k4(j, (size_t)t), att_v4(j, (size_t)t));
}

/* Then chunk t: the queries [ATT_ROWS qb, ATT_ROWS (qb + 1)) of sequence b at head h, numbered
 * (b, qb) first, so a thread's chunks are its rows of the context at every head (see the pool).
 * The keys and values, read by every block of a sequence, are made once by the first job. */
static void att_chunk(void *vctx, long t, int tid) {
    const att_job *j = vctx;
    const size_t h = (size_t)t % j->heads, blk = (size_t)t / j->heads;
    const size_t nqb = (j->L + ATT_ROWS - 1) / ATT_ROWS, b = blk / nqb, i0 = (blk % nqb) * ATT_ROWS;
    const size_t i1 = i0 + ATT_ROWS < j->L ? i0 + ATT_ROWS : j->L;
    attention_bh(j->qkvb, j->rw, j->keep, j->L, j->H, j->dh, b, h, i0, i1, j->mode, j->sscale,
                 j->E, j->mscale, j->ctx, att_keys(j, b * j->heads + h),
                 att_values(j, b * j->heads + h), att_k4(j, b * j->heads + h),
                 att_v4(j, b * j->heads + h), j->scratch[tid], j->work[tid]);
    if (j->cscale != 1.0) /* the block's context, while it is in cache (as numpy would: in double) */
        for (size_t i = i0; i < i1; i++) {
            float *o = j->ctx + (b * j->L + i) * j->H + h * j->dh;
            for (size_t d = 0; d < j->dh; d++) o[d] = (float)((double)o[d] * j->cscale);
        }
}

static int attention(const uint64_t *qkvb, const uint8_t *keep, size_t B, size_t L, size_t H,
                     size_t heads, int mode, double sscale, float mscale, double cscale,
                     float *ctx) {
    const size_t dh = H / heads, dw = nwords(dh), Lw = nwords(L);
    /* per thread: attention_bh's Qb, A, counts and flags, or attention_kv's Vb */
    const size_t bh = L * dw + L * Lw + ((L + 7) / 8) * 4 + dh / 8 + 1, vb = 64 * Lw * dw;
    /* by table lookup where the set has it (the 16-bit sums of nib_lin hold L's counts) */
    const int tables = g_isa->nib_lin != NULL && L < 32767;
    const int ktab = tables && mode != MODE_KEEP, vtab = tables && dh % 64 == 0;
    const size_t words = bh > vb ? bh : vb,
                 kvw = ((L + 7) / 8) * dw * 8 + ((dh + 7) / 8) * Lw * 8 +
                       (tables ? (att_k4_bytes(L, dh) + att_v4_bytes(L, dh) + 7) / 8 : 0);
    const int nt = P.want < 1 ? 1 : P.want;
    uint64_t *bufs[MAX_THREADS];
    uint8_t *work[MAX_THREADS] = {NULL};
    double *E = mode == MODE_SOFTMAX ? malloc((dh + 1) * (dh + 1) * sizeof(double)) : NULL;
    uint64_t *kv = malloc(B * heads * kvw * sizeof(uint64_t));
    int ok = (mode != MODE_SOFTMAX || E != NULL) && kv != NULL;
    for (int i = 0; i < nt; i++) {
        ok &= (bufs[i] = malloc(words * sizeof(uint64_t))) != NULL;
        if (ktab || vtab) /* att_nib's, then MODE_SOFTMAX's counts of a block of queries */
            ok &= (work[i] = malloc(att_nib_bytes(Lw > dw ? Lw : dw) +
                                    ATT_ROWS * 32 * ((L + 31) / 32) * sizeof(int32_t))) != NULL;
    }
    if (ok) {
        if (E) softmax_table((long)dh, sscale, E);
        att_job j = {qkvb, nwords(3 * H), keep, L, H, heads, dh, mode, sscale, E, mscale, cscale, ctx,
                     bufs, kv, kvw, ktab, vtab, work};
        pool_run(att_kv_chunk, &j, (long)(B * heads));
        pool_run(att_chunk, &j, (long)(B * ((L + ATT_ROWS - 1) / ATT_ROWS) * heads));
    }
    for (int i = 0; i < nt; i++) free(bufs[i]), free(work[i]);
    free(kv);
    free(E);
    return ok ? 0 : -1;
}

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

static void embed(const int64_t *ids, const int64_t *tt, size_t T, size_t L, const uint64_t *wbits,
                  const float *walpha, size_t H, const float *pos, const float *tok, float *out) {
    embed_job j = {ids, tt, T, L, H, ROW_CHUNK(T, H), wbits, walpha, pos, tok, out};
    pool_run(embed_chunk, &j, (long)((T + j.chunk - 1) / j.chunk));
}

typedef struct {
    const float *x, *res, *g, *b;
    size_t T, H, chunk;
    double eps;
    float *out;
    uint64_t *bits; /* or NULL: the sign bits of out too, [T, nwords(H)] */
} ln_job;

static void ln_chunk(void *vctx, long c, int tid) {
    const ln_job *j = vctx;
    const size_t H = j->H, t1 = (c + 1) * j->chunk < j->T ? (c + 1) * j->chunk : j->T;
    (void)tid;
    for (size_t t = c * j->chunk; t < t1; t++) {
        g_isa->ln_row(j->x + t * H, j->res ? j->res + t * H : NULL, H, j->g, j->b, j->eps,
                      j->out + t * H);
        /* packed while the row is in this core's L1: a separate pass would read it back,
         * at two threads partly from the other core's cache */
        if (j->bits) g_isa->pack(j->out + t * H, H, j->bits + t * nwords(H));
    }
}

static void layer_norm(const float *x, const float *res, size_t T, size_t H, const float *g,
                       const float *bta, double eps, float *out, uint64_t *bits) {
    ln_job j = {x, res, g, bta, T, H, ROW_CHUNK(T, H), eps, out, bits};
    pool_run(ln_chunk, &j, (long)((T + j.chunk - 1) / j.chunk));
}

/* ------------------------------------------------------------------- Python glue */

static int need(Py_buffer *b, size_t bytes, const char *what) {
    if ((size_t)b->len < bytes) {
        PyErr_Format(PyExc_ValueError, "%s: buffer has %zd bytes, kernel needs %zu", what, b->len,
                     bytes);
        return 0;
    }
    return 1;
}

/* The optional nibble panels of an N-channel operand of kw words (see nib_body): a buffer of
 * ceil(N / 32) * 32 * 16 kw bytes, or None (b->buf stays NULL). 0 with an exception set. */
static int nibbles_arg(PyObject *obj, Py_buffer *b, size_t N, size_t kw) {
    b->buf = NULL;
    if (obj == Py_None) return 1;
    if (PyObject_GetBuffer(obj, b, PyBUF_SIMPLE) < 0) return 0;
    if (!need(b, (N + 31) / 32 * 32 * 16 * kw, "nibbles")) {
        PyBuffer_Release(b);
        b->buf = NULL;
        return 0;
    }
    return 1;
}

static void release_nibbles(Py_buffer *b) {
    if (b->buf) PyBuffer_Release(b);
}

static PyObject *py_pack_signs(PyObject *self, PyObject *args) {
    Py_buffer x, out;
    Py_ssize_t rows, n;
    if (!PyArg_ParseTuple(args, "y*nnw*", &x, &rows, &n, &out)) return NULL;
    PyObject *ret = NULL;
    if (need(&x, (size_t)rows * n * 4, "x") && need(&out, (size_t)rows * nwords(n) * 8, "out")) {
        Py_BEGIN_ALLOW_THREADS pack_rows(x.buf, rows, n, out.buf);
        Py_END_ALLOW_THREADS ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return ret;
}

/* popcount_gemm(a, M, kw, b_il, N, op, out_i32) or bin_linear(a, M, kw, b_il, N, K, alpha, bias, out) */
static PyObject *py_popcount_gemm(PyObject *self, PyObject *args) {
    Py_buffer a, b, out, nib;
    Py_ssize_t M, kw, N;
    int op;
    PyObject *nib_obj = Py_None;
    if (!PyArg_ParseTuple(args, "y*nny*niw*|O", &a, &M, &kw, &b, &N, &op, &out, &nib_obj))
        return NULL;
    PyObject *ret = NULL;
    size_t nb = ((size_t)N + 7) / 8;
    if (need(&a, (size_t)M * kw * 8, "a") && need(&b, nb * kw * 64, "b") &&
        need(&out, (size_t)M * N * 4, "out") && nibbles_arg(nib_obj, &nib, N, kw)) {
        Py_BEGIN_ALLOW_THREADS popc_gemm(a.buf, M, kw, b.buf, N, op ? OP_AND : OP_XOR, out.buf,
                                         NULL, NULL, NULL, NULL, 0, 0, NULL, nib.buf);
        Py_END_ALLOW_THREADS ret = Py_None;
        Py_INCREF(ret);
        release_nibbles(&nib);
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    PyBuffer_Release(&out);
    return ret;
}

static PyObject *py_bin_linear(PyObject *self, PyObject *args) {
    Py_buffer a, b, al, bi, out, sh = {0}, nib;
    Py_ssize_t M, kw, N, K;
    int signs, unsig = 0, kind = -1, act = ACT_NONE;
    PyObject *sh_obj = Py_None, *nib_obj = Py_None;
    float scale = 1.0f;
    if (!PyArg_ParseTuple(args, "y*nny*nny*y*w*p|pOfiiO", &a, &M, &kw, &b, &N, &K, &al, &bi, &out,
                          &signs, &unsig, &sh_obj, &scale, &kind, &act, &nib_obj))
        return NULL;
    const int has_sh = sh_obj != Py_None;
    if (has_sh && PyObject_GetBuffer(sh_obj, &sh, PyBUF_SIMPLE) < 0) {
        Py_buffer *bufs[] = {&a, &b, &al, &bi, &out};
        for (int i = 0; i < 5; i++) PyBuffer_Release(bufs[i]);
        return NULL;
    }
    PyObject *ret = NULL;
    size_t nb = ((size_t)N + 7) / 8;
    const outq_t q = {has_sh ? sh.buf : NULL, scale, kind, act, NULL, NULL};
    if (kind != -1 && (!signs || (kind != Q_SIGN && kind != Q_UNSIGNED) || act < ACT_NONE ||
                              act > ACT_GELU)) {
        PyErr_Format(PyExc_ValueError, "bin_linear: quantizer kind %d, activation %d%s", kind, act,
                     signs ? "" : " without signs");
    } else if (need(&a, (size_t)M * kw * 8, "a") && need(&b, nb * kw * 64, "w") &&
               need(&al, (size_t)N * 4, "alpha") && need(&bi, (size_t)N * 4, "bias") &&
               (!has_sh || need(&sh, (size_t)N * 4, "shift")) &&
               need(&out, signs ? (size_t)M * nwords(N) * 8 : (size_t)M * N * 4, "out") &&
               nibbles_arg(nib_obj, &nib, N, kw)) {
        Py_BEGIN_ALLOW_THREADS popc_gemm(a.buf, M, kw, b.buf, N, unsig ? OP_AND : OP_XOR, NULL,
                                         signs ? NULL : out.buf, signs ? out.buf : NULL, al.buf,
                                         bi.buf, (long)K, unsig, kind == -1 ? NULL : &q, nib.buf);
        Py_END_ALLOW_THREADS ret = Py_None;
        Py_INCREF(ret);
        release_nibbles(&nib);
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    PyBuffer_Release(&al);
    PyBuffer_Release(&bi);
    PyBuffer_Release(&out);
    if (has_sh) PyBuffer_Release(&sh);
    return ret;
}

static PyObject *py_bin_linear_cut(PyObject *self, PyObject *args) {
    Py_buffer a, b, al, bi, lo, hi, out, nib;
    Py_ssize_t M, kw, N, K;
    PyObject *nib_obj = Py_None;
    if (!PyArg_ParseTuple(args, "y*nny*nny*y*y*y*w*|O", &a, &M, &kw, &b, &N, &K, &al, &bi, &lo, &hi,
                          &out, &nib_obj))
        return NULL;
    PyObject *ret = NULL;
    const outq_t q = {NULL, 1.0f, Q_SIGN, ACT_NONE, lo.buf, hi.buf};
    if (need(&a, (size_t)M * kw * 8, "a") && need(&b, ((size_t)N + 7) / 8 * kw * 64, "w") &&
        need(&al, (size_t)N * 4, "alpha") && need(&bi, (size_t)N * 4, "bias") &&
        need(&lo, (size_t)N * 4, "lo") && need(&hi, (size_t)N * 4, "hi") &&
        need(&out, (size_t)M * nwords(N) * 8, "out") && nibbles_arg(nib_obj, &nib, N, kw)) {
        Py_BEGIN_ALLOW_THREADS popc_gemm(a.buf, M, kw, b.buf, N, OP_XOR, NULL, NULL, out.buf, al.buf,
                                         bi.buf, (long)K, 0, &q, nib.buf);
        Py_END_ALLOW_THREADS ret = Py_None;
        Py_INCREF(ret);
        release_nibbles(&nib);
    }
    Py_buffer *bufs[] = {&a, &b, &al, &bi, &lo, &hi, &out};
    for (int i = 0; i < 7; i++) PyBuffer_Release(bufs[i]);
    return ret;
}

static PyObject *py_attention(PyObject *self, PyObject *args) {
    Py_buffer qkv, keep, out;
    Py_ssize_t B, L, H, heads;
    int mode;
    double sscale = 1.0, mscale = 1.0, cscale = 1.0;
    if (!PyArg_ParseTuple(args, "y*y*nnnniw*|ddd", &qkv, &keep, &B, &L, &H, &heads, &mode, &out,
                          &sscale, &mscale, &cscale))
        return NULL;
    PyObject *ret = NULL;
    if (heads <= 0 || H % heads) {
        PyErr_SetString(PyExc_ValueError, "hidden size is not a multiple of the head count");
    } else if (mode < MODE_BOOL || mode > MODE_SOFTMAX) {
        PyErr_Format(PyExc_ValueError, "unknown attention mode %d", mode);
    } else if (need(&qkv, (size_t)B * L * nwords(3 * H) * 8, "qkv") &&
               need(&keep, (size_t)B * L, "keep") &&
               need(&out, (size_t)B * L * H * 4, "out")) {
        int rc;
        Py_BEGIN_ALLOW_THREADS rc = attention(qkv.buf, keep.buf, B, L, H, heads, mode, sscale,
                                              (float)mscale, cscale, out.buf);
        Py_END_ALLOW_THREADS if (rc) PyErr_NoMemory();
        else {
            ret = Py_None;
            Py_INCREF(ret);
        }
    }
    PyBuffer_Release(&qkv);
    PyBuffer_Release(&keep);
    PyBuffer_Release(&out);
    return ret;
}

static PyObject *py_pack_act(PyObject *self, PyObject *args) {
    Py_buffer x, out, sh = {0};
    PyObject *sh_obj;
    Py_ssize_t rows, n;
    float scale;
    int kind, act;
    if (!PyArg_ParseTuple(args, "y*nnOfiiw*", &x, &rows, &n, &sh_obj, &scale, &kind, &act, &out))
        return NULL;
    const int has_sh = sh_obj != Py_None;
    if (has_sh && PyObject_GetBuffer(sh_obj, &sh, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&out);
        return NULL;
    }
    PyObject *ret = NULL;
    if ((kind != Q_SIGN && kind != Q_UNSIGNED) || act < ACT_NONE || act > ACT_GELU) {
        PyErr_Format(PyExc_ValueError, "pack_act: unknown kind %d or activation %d", kind, act);
    } else if (need(&x, (size_t)rows * n * 4, "x") && (!has_sh || need(&sh, (size_t)n * 4, "shift")) &&
               need(&out, (size_t)rows * nwords(n) * 8, "out")) {
        Py_BEGIN_ALLOW_THREADS pack_act(x.buf, rows, n, has_sh ? sh.buf : NULL, scale, kind, act,
                                        out.buf);
        Py_END_ALLOW_THREADS ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&x);
    if (has_sh) PyBuffer_Release(&sh);
    PyBuffer_Release(&out);
    return ret;
}

static PyObject *py_embed(PyObject *self, PyObject *args) {
    Py_buffer ids, tt, wb, wa, pos, tok, out;
    Py_ssize_t T, L, H;
    if (!PyArg_ParseTuple(args, "y*y*nny*y*ny*y*w*", &ids, &tt, &T, &L, &wb, &wa, &H, &pos, &tok,
                          &out))
        return NULL;
    PyObject *ret = NULL;
    /* Index ranges are checked by the Python caller (it knows the table sizes). */
    if (need(&ids, (size_t)T * 8, "ids") && need(&tt, (size_t)T * 8, "token_type_ids") &&
        need(&out, (size_t)T * H * 4, "out")) {
        Py_BEGIN_ALLOW_THREADS embed(ids.buf, tt.buf, T, L, wb.buf, wa.buf, H, pos.buf, tok.buf,
                                     out.buf);
        Py_END_ALLOW_THREADS ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&ids);
    PyBuffer_Release(&tt);
    PyBuffer_Release(&wb);
    PyBuffer_Release(&wa);
    PyBuffer_Release(&pos);
    PyBuffer_Release(&tok);
    PyBuffer_Release(&out);
    return ret;
}

static PyObject *py_layer_norm(PyObject *self, PyObject *args) {
    Py_buffer x, res = {0}, g, bt, out, bits = {0};
    PyObject *res_obj, *bits_obj = Py_None;
    Py_ssize_t T, H;
    double eps;
    if (!PyArg_ParseTuple(args, "y*Onny*y*dw*|O", &x, &res_obj, &T, &H, &g, &bt, &eps, &out,
                          &bits_obj))
        return NULL;
    PyObject *ret = NULL;
    int has_res = res_obj != Py_None, has_bits = bits_obj != Py_None;
    int got_res = !has_res || PyObject_GetBuffer(res_obj, &res, PyBUF_SIMPLE) == 0;
    int got_bits = got_res && (!has_bits || PyObject_GetBuffer(bits_obj, &bits, PyBUF_WRITABLE) == 0);
    size_t sz = (size_t)T * H * 4;
    if (got_res && got_bits && need(&x, sz, "x") && (!has_res || need(&res, sz, "residual")) &&
        need(&g, (size_t)H * 4, "weight") && need(&bt, (size_t)H * 4, "bias") &&
        need(&out, sz, "out") && (!has_bits || need(&bits, (size_t)T * nwords(H) * 8, "bits"))) {
        Py_BEGIN_ALLOW_THREADS layer_norm(x.buf, has_res ? res.buf : NULL, T, H, g.buf, bt.buf,
                                          eps, out.buf, has_bits ? bits.buf : NULL);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&x);
    if (has_res && got_res) PyBuffer_Release(&res);
    if (has_bits && got_bits) PyBuffer_Release(&bits);
    PyBuffer_Release(&g);
    PyBuffer_Release(&bt);
    PyBuffer_Release(&out);
    return ret;
}

static PyObject *py_available_isas(PyObject *self, PyObject *noargs) {
    PyObject *lst = PyList_New(0);
    for (int i = 0; lst && i < N_ISAS; i++)
        if (isa_supported(&ISAS[i])) {
            PyObject *s = PyUnicode_FromString(ISAS[i].name);
            if (!s || PyList_Append(lst, s) < 0) {
                Py_XDECREF(s);
                Py_DECREF(lst);
                return NULL;
            }
            Py_DECREF(s);
        }
    return lst;
}

static PyObject *py_get_isa(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(g_isa->name);
}

static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int i = 0; i < N_ISAS; i++)
        if (!strcmp(ISAS[i].name, name)) {
            if (!isa_supported(&ISAS[i]))
                return PyErr_Format(PyExc_RuntimeError, "this CPU does not support the %s kernels",
                                    name);
            g_isa = &ISAS[i];
            Py_RETURN_NONE;
        }
    return PyErr_Format(PyExc_ValueError, "unknown kernel set %s", name);
}

static PyObject *py_num_threads(PyObject *self, PyObject *noargs) {
    return PyLong_FromLong(P.want);
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *args) {
    int n;
    if (!PyArg_ParseTuple(args, "i", &n)) return NULL;
    if (n < 1) return PyErr_Format(PyExc_ValueError, "num_threads must be >= 1, got %d", n);
    Py_BEGIN_ALLOW_THREADS pool_set_threads(n);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"pack_signs", py_pack_signs, METH_VARARGS, "pack_signs(x, rows, n, out)"},
    {"popcount_gemm", py_popcount_gemm, METH_VARARGS, "popcount_gemm(a, M, kw, b_il, N, op, out, nibbles=None)"},
    {"bin_linear", py_bin_linear, METH_VARARGS,
     "bin_linear(a, M, kw, w_il, N, K, alpha, bias, out, signs, unsigned=False, shift=None, "
     "scale=1, kind=-1, act=0, nibbles=None): out = y, or its sign bits, or (kind >= 0) the bits of "
     "pack_act(y, shift, scale, kind, act); unsigned: a holds {0,1} inputs; nibbles: the weights' "
     "nibble panels, for the kernel sets that look counts up in tables"},
    {"bin_linear_cut", py_bin_linear_cut, METH_VARARGS,
     "bin_linear_cut(a, M, kw, w_il, N, K, alpha, bias, lo, hi, out, nibbles=None): the bits 1[lo <= count <= hi] "
     "per channel (int32 lo, hi), count = popcount(a XOR w): a sign layer's bits by sign_cut"},
    {"pack_act", py_pack_act, METH_VARARGS,
     "pack_act(x, rows, n, shift, scale, kind, act, out): bits of act(x) + shift"},
    {"attention", py_attention, METH_VARARGS,
     "attention(qkv_bits, keep, B, L, H, heads, mode, out, score_scale=1, map_scale=1, "
     "context_scale=1)"},
    {"embed", py_embed, METH_VARARGS, "embed(ids, tt, T, L, wbits, walpha, H, pos, tok, out)"},
    {"layer_norm", py_layer_norm, METH_VARARGS, "layer_norm(x, res, T, H, g, b, eps, out[, bits])"},
    {"available_isas", py_available_isas, METH_NOARGS, "kernel sets this CPU supports"},
    {"get_isa", py_get_isa, METH_NOARGS, "the kernel set in use"},
    {"set_isa", py_set_isa, METH_VARARGS, "set_isa(name)"},
    {"num_threads", py_num_threads, METH_NOARGS, "threads a kernel call uses (BIBERT_NUM_THREADS, else OMP_NUM_THREADS, else the CPUs)"},
    {"set_num_threads", py_set_num_threads, METH_VARARGS, "set_num_threads(n)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "Bitwise BiBERT kernels (see _kernels.c).", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) {
    for (int i = 0; i < N_ISAS; i++)
        if (isa_supported(&ISAS[i])) {
            g_isa = &ISAS[i]; /* ISAS is ordered fastest first */
            break;
        }
    P.want = default_threads();
    nib_tables_init();
    pthread_atfork(NULL, NULL, pool_atfork_child);
    PyObject *m = PyModule_Create(&moddef);
    if (m) {
        PyModule_AddIntConstant(m, "OP_XOR", OP_XOR);
        PyModule_AddIntConstant(m, "OP_AND", OP_AND);
        PyModule_AddIntConstant(m, "MODE_BOOL", MODE_BOOL);
        PyModule_AddIntConstant(m, "MODE_KEEP", MODE_KEEP);
        PyModule_AddIntConstant(m, "MODE_SOFTMAX", MODE_SOFTMAX);
        PyModule_AddIntConstant(m, "Q_SIGN", Q_SIGN);
        PyModule_AddIntConstant(m, "Q_UNSIGNED", Q_UNSIGNED);
        PyModule_AddIntConstant(m, "ACT_NONE", ACT_NONE);
        PyModule_AddIntConstant(m, "ACT_RELU", ACT_RELU);
        PyModule_AddIntConstant(m, "ACT_GELU", ACT_GELU);
    }
    return m;
}
