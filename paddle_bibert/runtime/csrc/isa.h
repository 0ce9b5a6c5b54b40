/*
 * Kernel sets: one implementation of each low-level kernel per instruction set, chosen at run
 * time (__builtin_cpu_supports, or set_isa): AVX-512 VPOPCNTDQ, AVX2 (nibble-table popcount;
 * the binary linears and the attention look their counts up in tables instead where the caller
 * gives nibble panels: see products_avx2_tables.c), scalar POPCNT, or portable C. Every set
 * gives the same integers and the same float bits (tests: each against numpy). The operations
 * (gemm.c, attention.c, layer_norm.c, ...) call the current set through g_isa.
 */
#ifndef BIBERT_ISA_H
#define BIBERT_ISA_H

#include "simd.h"

/* c[r*ldc + 8j + l] = sum_w popcount(a[r*kw + w] OP b[j*kw*8 + w*8 + l]), r < mr, j < nb. */
typedef void tile_fn(const uint64_t *a, size_t kw, const uint64_t *b, int op, int32_t *c,
                     size_t ldc, int mr, int nb);
/* Optional fused binary-linear tile (TM rows x TN * 8 channels, all valid): float outputs, or
 * if bits is not NULL only their bits, one uint32 per row (TN * 8 = 32 channels): the sign bits,
 * or with q those of q's quantizer (shift from q->shift[0]; not GELU). K per row if Krow. */
typedef void lin_tile_fn(const uint64_t *a, size_t kw, const uint64_t *b, int op, float *o,
                         size_t ldo, const float *alpha, const float *bias, long K,
                         const long *Krow, uint32_t *bits, size_t ldb, const outq_t *q);
/* out[w] = sign bits of x[0..n) (bit = signbit), pad bits 0. */
typedef void pack_fn(const float *x, size_t n, uint64_t *out);
/* Attention row: bit j of A[j / 64] = 1[popcount(q XOR k_j) < thr] for keys j < 8 * LB, with
 * k interleaved [LB, dw, 8]; thr = (d + 1) / 2, so the bit is 1[d - 2 popcount > 0] = 1[S > 0]. */
typedef void scores_fn(const uint64_t *q, size_t dw, const uint64_t *kil, size_t LB, long thr,
                       uint64_t *A);
/* Attention context row: out[d] = pa - 2 sum_w popcount(A[w] AND v[d, w]), v interleaved
 * [DB, Lw, 8], for d < dh; pa = popcount(A). */
typedef void context_fn(const uint64_t *A, size_t Lw, const uint64_t *vil, size_t dh, float *out);
/* One LayerNorm row (see layer_norm.c). */
typedef void ln_row_fn(const float *x, const float *res, size_t H, const float *g, const float *b,
                       double eps, float *o);
/* One row of n values -> its nwords(n) words of act_bit's bits (see pack.c). */
typedef void pack_act_row_fn(const float *x, size_t n, const float *shift, float scale, int kind,
                             int act, uint64_t *out);
/* One token's embedding (see embed.c). */
typedef void embed_row_fn(const uint64_t *row, float al, const float *p, const float *k, size_t H,
                          float *o);
/* The smallest and largest count of the kept keys (see softmax_map.c). */
typedef void count_range_fn(const int32_t *cnt, size_t L, const uint8_t *kp, int any, int32_t dh,
                            int32_t *lo, int32_t *hi);
/* Softmax denominator lanes (see softmax_map.c). */
typedef size_t table_lanes_fn(const int32_t *cnt, size_t L, const uint8_t *kp, int any,
                              const double *e, double lane[8]);
/* A map row from its counts: bit j of bits[j / 64] = 1[c[j] < thr], j < n (c readable up to a
 * multiple of 8; the last word's pad bits 0). */
typedef void below_fn(const int32_t *c, size_t n, long thr, uint64_t *bits);
/* The table-lookup products (see products_avx2_tables.c). */
typedef void nib_tile_fn(const uint8_t *tab, const uint8_t *tab2, size_t nk, const uint8_t *w4,
                         int32_t *c, size_t ldc, int mr, int nv);
typedef void nib_rows_fn(const uint64_t *a, size_t M, size_t kw, uint8_t *a4);
typedef void nib_tile_tables_fn(const uint8_t *a4, size_t nk, int mr, const uint8_t *tables,
                                uint8_t *tab);
typedef void nib_pair_tables_fn(const uint8_t *a4, size_t nk, const uint8_t *pairs, uint8_t *tab2);
typedef void nib_panel_fn(const uint64_t *rows, size_t stride, int sh, size_t nk, uint8_t *panel);
/* The fused binary-linear epilogue of a full TM x 32 tile of counts (see lin_tile_fn). */
typedef void lin_epi_fn(const int32_t *loc, size_t ldl, float *o, size_t ldo, const float *alpha,
                        const float *bias, long K, const long *Krow, uint32_t *bits, size_t ldb,
                        const outq_t *q);
/* A full tile of the table-lookup products with that epilogue fused (see nib_lin_4x2). */
typedef void nib_lin_fn(const uint8_t *tab, size_t nk, const uint8_t *w4, size_t pstride, float *o,
                        size_t ldo, const float *alpha, const float *bias, long K, const long *Krow,
                        uint32_t *bits, size_t ldb, const outq_t *q);

typedef struct {
    const char *name;
    tile_fn *tile;
    lin_tile_fn *lin_tile; /* NULL: the set has no fused tile */
    pack_fn *pack;
    scores_fn *scores;
    context_fn *context;
    ln_row_fn *ln_row;
    pack_act_row_fn *pack_act_row;
    embed_row_fn *embed_row;
    count_range_fn *count_range;
    table_lanes_fn *table_lanes;
    below_fn *below;
    /* the table-lookup products (NULL: this set has none) and their rows' offsets */
    nib_tile_fn *nib_tile;
    nib_rows_fn *nib_rows;
    nib_tile_tables_fn *nib_tile_tables;
    nib_pair_tables_fn *nib_pair_tables;
    nib_panel_fn *nib_panel;
    lin_epi_fn *lin_epi;
    nib_lin_fn *nib_lin;
} isa_t;

/* The sets, fastest first; the one in use. */
extern const isa_t ISAS[];
extern const int N_ISAS;
extern const isa_t *g_isa;
int isa_supported(const isa_t *isa);

/* popcount(a OP w) of two nibbles, the tables of the table-lookup products (see nib_body) */
extern uint8_t NIB_TABLES[2][16][16]; /* [op][a][w] */
/* two rows' tables in one, T_a[w] + 16 T_b[w] (see nib_4x2_sums) */
extern uint8_t NIB_PAIRS[2][16][16][16]; /* [op][a][b][w] */
void nib_tables_init(void);

/* The kernels, by set (files: products_*.c, attention_rows.c, pack.c, layer_norm.c, embed.c,
 * softmax_map.c). */
tile_fn tile_generic;
pack_fn pack_generic;
scores_fn scores_generic;
context_fn context_generic;
ln_row_fn ln_row_generic;
pack_act_row_fn pack_act_row_generic;
embed_row_fn embed_row_generic;
count_range_fn count_range_generic;
table_lanes_fn table_lanes_generic;
below_fn below_generic;
#ifdef BB_X86
tile_fn tile_popcnt;
scores_fn scores_popcnt;
context_fn context_popcnt;

tile_fn tile_avx2;
lin_tile_fn lin_tile_avx2;
lin_epi_fn lin_epi_avx2;
pack_fn pack_avx2;
scores_fn scores_avx2;
context_fn context_avx2;
ln_row_fn ln_row_avx2;
pack_act_row_fn pack_act_row_avx2;
embed_row_fn embed_row_avx2;
count_range_fn count_range_avx2;
table_lanes_fn table_lanes_avx2;
below_fn below_avx2;
nib_tile_fn nib_tile_avx2;
nib_rows_fn nib_rows_avx2;
nib_tile_tables_fn nib_tile_tables;
nib_pair_tables_fn nib_pair_tables;
nib_panel_fn nib_panel_avx2;
nib_lin_fn nib_lin_4x2;

tile_fn tile_avx512;
lin_tile_fn lin_tile_avx512;
scores_fn scores_avx512;
context_fn context_avx512;
embed_row_fn embed_row_avx512;
table_lanes_fn table_lanes_avx512;
#endif

#endif
