/* The binary products over whole matrices: the popcount GEMM and the binary linear, cut into
 * chunks of row tiles and weight panels for the pool; the current set computes each tile. */
#include "isa.h"
#include "ops.h"
#include "pool.h"

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
    const uint8_t *w4, *a4; /* the table-lookup path: nibble panels and row offsets (of whole
                             * tiles: the rows past M zero), or NULL */
    const uint64_t *tail;   /* M % TM: the last tile's rows, then zero rows up to TM; or NULL */
    long nmt, nnt, NB, groups; /* row tiles, weight panels, 8-channel blocks, row chunks */
    long tiles, panels;        /* a chunk's row tiles and weight panels (chunk_shape) */
} gemm_job;

/* A GEMM chunk is ROW_BLOCK rows (8 row tiles of TM rows) x GEMM_PANELS weight panels (TN * 8
 * channels each), unless the job is short (chunk_shape): its activation rows stay in L1 across
 * the panels, each panel across the rows, and its outputs are whole 1 KiB runs of a few rows.
 * (Chunks of one panel over all rows write each output line in 128-byte pieces at a stride of
 * 4N bytes, which at batch 32 costs more than the popcounts.) */
enum { GEMM_PANELS = 8 };
_Static_assert(ROW_BLOCK % TM == 0 && ROW_UNIT % TM == 0, "row chunks of whole tiles");
/* On the table-lookup path a chunk's rows build their tables once for all its panels: wider
 * chunks spread that cost (about 6 instructions per pair table against ~3 per pair table and
 * panel in the products) over more panels. */
enum { NIB_PANELS = 24 };
/* Rows one call counts at once where it keeps each row's popcount ({0,1} inputs): those counts
 * live on the stack (32 KiB), so a longer batch goes in slabs of this many rows. */
enum { ONES_ROWS = 4096 };

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
                uint32_t bit;
                if (q && q->lo && !g->out_f) { /* a count cut: y is not needed */
                    sg |= (uint32_t)(q->lo[n0 + l] <= lr[l] && lr[l] <= q->hi[n0 + l]) << l;
                    continue;
                }
                const float y = lin_y(K - 2 * (long)lr[l], g->alpha[n0 + l], g->bias[n0 + l]);
                if (g->out_f) g->out_f[(m0 + r) * N + n0 + l] = y;
                if (q) bit = (uint32_t)act_bit(y, q->shift, n0 + l, q->scale, q->kind, q->act);
                else memcpy(&bit, &y, 4), bit >>= 31;
                sg |= bit << l; /* n0 is a multiple of 32: l < 32 */
            }
            if (g->out_bits) g->out_bits[(m0 + r) * ldb + n0 / 32] = sg;
        } else {
            memcpy(g->cnt + (m0 + r) * N + n0, lr, nn * sizeof(int32_t));
        }
    }
}

/* A last tile of mr < TM rows goes through the full tiles' fused kernels as TM rows, the rows
 * past M zero (g->tail, or the zero offsets of g->a4), its outputs here, then its mr rows copied
 * out. (Short tiles' own route, the counts then an epilogue output by output, made a product of
 * 27 rows take longer than one of 28.) */
typedef struct {
    float f[TM * 64];       /* ldo 64 */
    uint32_t bits[TM * 2];  /* ldb 2 */
} tail_out;

static void tail_copy(const gemm_job *g, const tail_out *t, size_t m0, int mr, size_t n0,
                      size_t nch) {
    const size_t N = g->N, ldb = 2 * nwords(N);
    for (int r = 0; r < mr; r++) {
        if (g->out_f) memcpy(g->out_f + (m0 + r) * N + n0, t->f + r * 64, nch * sizeof(float));
        if (g->out_bits)
            memcpy(g->out_bits + (m0 + r) * ldb + n0 / 32, t->bits + r * 2, nch / 32 * sizeof(uint32_t));
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
        /* a full tile's pairs of panels read the pair tables (a short one's too, as TM rows
         * through the fused kernel); a lone panel or short tile the single rows' */
        g_isa->nib_pair_tables(g->a4 + m0 * nk, nk, &NIB_PAIRS[g->op][0][0][0], tab2);
        if (mr < TM || (jt1 - jt0) % 2)
            g_isa->nib_tile_tables(g->a4 + m0 * nk, nk, mr, &NIB_TABLES[g->op][0][0], tab);
        for (long jt = jt0; jt < jt1; jt += 2) {
            int32_t loc[TM * 2 * 32];
            const int nv = jt + 1 < jt1 ? 2 : 1;
            const size_t c0 = (size_t)jt * 32; /* the pair's first channel */
            if (fused && nv == 2 && c0 + 64 <= N) {
                const int tail = mr < TM;
                tail_out t; /* (the kernels store every output word) */
                outq_t qt;
                g_isa->nib_lin(tab2, nk, g->w4 + (size_t)jt * nk * 32, nk * 32,
                               !g->out_f ? NULL : tail ? t.f : g->out_f + m0 * N + c0,
                               tail ? 64 : N, g->alpha + c0, g->bias + c0, g->K,
                               g->unsig ? g->ones + m0 : NULL,
                               !g->out_bits ? NULL : tail ? t.bits : g->out_bits + m0 * ldb + c0 / 32,
                               tail ? 2 : ldb, panel_q(g, c0, &qt));
                if (tail) tail_copy(g, &t, m0, mr, c0, 64);
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

/* A job with fewer than two chunks a thread (a short input: at 32 tokens a MiniLM linear was
 * one chunk, the second thread idle) is cut finer. Where its weights outgrow a core's L2
 * (SPLIT_WEIGHTS), a short input's products wait on them: the channels are split, so a thread
 * reads only its panels' (split by rows, both threads read all of them, and BERT-base ran 8
 * tokens slower than on one thread). Else the rows are (row_block, as the elementwise kernels
 * cut them), so each thread keeps its rows from kernel to kernel. Sets g->tiles, g->panels. */
enum { SPLIT_WEIGHTS = 256 << 10 };

static void chunk_shape(gemm_job *g) {
    const long want = 2 * (long)pool_threads(), step = g->a4 ? 2 : 1; /* pairs on tables */
    g->tiles = ROW_BLOCK / TM;
    g->panels = g->a4 ? NIB_PANELS : GEMM_PANELS;
    const long groups = (g->nmt + g->tiles - 1) / g->tiles;
    if (want <= 2 || !groups || groups * ((g->nnt + g->panels - 1) / g->panels) >= want) return;
    const size_t bytes = g->N * g->kw * (g->a4 ? 16 : 8); /* nibble panels: twice the bits */
    if (bytes <= SPLIT_WEIGHTS) {
        g->tiles = (long)(row_block(g->M) / TM);
        return;
    }
    const long per = (want + groups - 1) / groups; /* panel ranges a row chunk */
    const long p = g->nnt / per / step * step;
    g->panels = p < step ? step : p;
}

/* popcount_words by the POPCNT instruction where the set has it (every x86 set but the generic
 * one): elsewhere each word's __builtin_popcountll is a libgcc call. */
#ifdef BB_X86
static __attribute__((target("popcnt"))) long ones_popcnt(const uint64_t *a, size_t n) {
    return popcount_words(a, n);
}
#endif

static long row_ones(const uint64_t *a, size_t n) {
#ifdef BB_X86
    if (g_isa->tile != tile_generic) return ones_popcnt(a, n);
#endif
    return popcount_words(a, n);
}

static void gemm_chunk(void *vctx, long chunk, int tid) {
    const gemm_job *g = vctx;
    tile_fn *const tile = g_isa->tile;
    lin_tile_fn *const lin = g_isa->lin_tile;
    const long panels = g->panels, npg = (g->nnt + panels - 1) / panels;
    const long it0 = (chunk / npg) * g->tiles, jt0 = (chunk % npg) * panels;
    const long it1 = it0 + g->tiles < g->nmt ? it0 + g->tiles : g->nmt;
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
            const int tail = mr < TM;
            if (linear && lin && (!tail || g->tail) && nb == TN && n0 + TN * 8 <= N &&
                !(q && q->act == ACT_GELU)) {
                tail_out t; /* (the kernels store every output word) */
                outq_t qt;
                lin(tail ? g->tail : g->a + m0 * kw, kw, g->b + n0 * kw, g->op,
                    !g->out_f ? NULL : tail ? t.f : g->out_f + m0 * N + n0, tail ? 64 : N,
                    g->alpha + n0, g->bias + n0, g->K, g->unsig ? g->ones + m0 : NULL,
                    !g->out_bits ? NULL : tail ? t.bits : g->out_bits + m0 * ldb + n0 / 32,
                    tail ? 2 : ldb, panel_q(g, n0, &qt));
                if (tail) tail_copy(g, &t, m0, mr, n0, TN * 8);
                continue;
            }
            tile(g->a + m0 * kw, kw, g->b + n0 * kw, g->op, loc, TN * 8, mr, nb);
            tile_out(g, loc, TN * 8, m0, mr, n0, nb);
        }
    }
}

/* Popcount GEMM over [M, kw] x interleaved [NB, kw, 8]; with neither out_f nor out_bits,
 * writes the raw counts to cnt[M][N]; else the binary linear epilogue
 *     y[m, n] = fmaf(K - 2 * count, alpha[n], bias[n])   (lin_y: rounded once)
 * (unsig: a holds {0,1} inputs, op is AND and K is popcount(a_m), so K - 2 count is the
 * {0,1} x {-1,+1} dot product)
 * The integer dot (< 2^24) is exact as a float, so y is the exact value rounded once, and its
 * sign is the exact sign: a float32 evaluation (Paddle's GEMM summing +-alpha) can get it wrong
 * where the exact value is within its rounding error of 0 (e.g. a dot product of exactly 0 and
 * a bias below ~1e-6).
 * to out_f, or only its sign bits, packed, to out_bits (words [M, nwords(N)], seen as uint32;
 * the caller zeroes it: the pad bits past N are never written); with q, the bits q's quantizer
 * gives y (act_bit: what pack_act would give the float output, without writing it).
 */
void popc_gemm(const uint64_t *a, size_t M, size_t kw, const uint64_t *b, size_t N, int op,
               int32_t *cnt, float *out_f, uint32_t *out_bits, const float *alpha,
               const float *bias, long K, int unsig, const outq_t *q, const uint8_t *w4) {
    if (unsig && M > ONES_ROWS) { /* in slabs of rows (each row's outputs its own: the same) */
        const size_t ldb = 2 * nwords(N); /* uint32 per output row */
        for (size_t m0 = 0; m0 < M; m0 += ONES_ROWS)
            popc_gemm(a + m0 * kw, M - m0 < ONES_ROWS ? M - m0 : ONES_ROWS, kw, b, N, op,
                      cnt ? cnt + m0 * N : NULL, out_f ? out_f + m0 * N : NULL,
                      out_bits ? out_bits + m0 * ldb : NULL, alpha, bias, K, unsig, q, w4);
        return;
    }
    const size_t Mt = (M + TM - 1) / TM * TM, full = M - M % TM; /* rows of whole tiles */
    long ones[unsig ? Mt : 1]; /* per row, not once per (row, panel); 0 past M */
    for (size_t m = 0; unsig && m < Mt; m++) ones[m] = m < M ? row_ones(a + m * kw, kw) : 0;
    gemm_job g = {a, b, M, kw, N, op, cnt, out_f, out_bits, alpha, bias, K, unsig, ones, q};
    uint64_t *tail = NULL;
    if (full < M && (out_f || out_bits) && g_isa->lin_tile && (tail = calloc(TM * kw, 8)))
        memcpy(tail, a + full * kw, (M - full) * kw * sizeof(uint64_t));
    g.tail = tail;
    uint8_t *a4 = NULL;
    /* the table-lookup path where the set has one, the caller gave the nibble panels and the
     * 16-bit sums cannot overflow (64 kw < 65536) */
    if (w4 && g_isa->nib_tile && kw < 1024 && (a4 = malloc(Mt * kw * 16 + 16))) {
        g_isa->nib_rows(a, M, kw, a4);
        memset(a4 + M * kw * 16, 0, (Mt - M) * kw * 16); /* nibble 0's offset */
        g.a4 = a4;
        g.w4 = w4;
    }
    g.NB = (long)((N + 7) / 8);
    g.nmt = (long)((M + TM - 1) / TM);
    g.nnt = (g.NB + TN - 1) / TN;
    chunk_shape(&g);
    g.groups = (g.nmt + g.tiles - 1) / g.tiles;
    pool_run(gemm_chunk, &g, g.groups * ((g.nnt + g.panels - 1) / g.panels));
    free(a4);
    free(tail);
}
