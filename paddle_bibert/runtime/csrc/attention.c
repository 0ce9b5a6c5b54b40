/* Binary attention over all heads (BiBERT's Bi-Attention map, BiT's softmax map, or the kept
 * keys, times the values' signs), from the packed bits of the Q/K/V projections. */
#include "isa.h"
#include "ops.h"
#include "pool.h"
#include "softmax_map.h"

/* In-place transpose of a 64 x 64 bit matrix: bit c of m[r] <-> bit r of m[c]. Swaps the
 * off-diagonal j x j blocks for j = 32, 16, ..., 1 (mask: bits whose index has bit j clear).
 * Each stage a constant j and loops without branches, which the compiler vectorizes: with j a
 * variable and a test per row it took most of a short input's attention (the keys and values
 * of each head are transposed whatever the length). */
#define TRANSPOSE_STAGE(m, j, mask)                                   \
    for (int b = 0; b < 64; b += 2 * (j))                             \
        for (int k = b; k < b + (j); k++) {                           \
            const uint64_t t = (((m)[k] >> (j)) ^ (m)[k + (j)]) & (mask); \
            (m)[k + (j)] ^= t;                                        \
            (m)[k] ^= t << (j);                                       \
        }

static void transpose64(uint64_t m[64]) {
    TRANSPOSE_STAGE(m, 32, 0x00000000FFFFFFFFULL)
    TRANSPOSE_STAGE(m, 16, 0x0000FFFF0000FFFFULL)
    TRANSPOSE_STAGE(m, 8, 0x00FF00FF00FF00FFULL)
    TRANSPOSE_STAGE(m, 4, 0x0F0F0F0F0F0F0F0FULL)
    TRANSPOSE_STAGE(m, 2, 0x3333333333333333ULL)
    TRANSPOSE_STAGE(m, 1, 0x5555555555555555ULL)
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

/* The table-lookup attention (kernel sets with table-lookup products): a block of queries'
 * scores (MODE_BOOL's map, MODE_SOFTMAX's counts) and context are two such products, four query
 * rows at a time, against the head's keys and values as nibble panels (products_avx2_tables.c):
 * K4 [ceil(L/32), ceil(dh/4), 32] (channels: keys, nibbles of a key's dh bits) and
 * V4 [dh/64 pairs of panels, 16 Lw, 32]
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
 * the counts MODE_SOFTMAX's map is cut from; with V4 so is its context; else from K_il and V_il:
 * MODE_SOFTMAX's counts by the tile kernel (TM queries a call) and its map's bits by below,
 * MODE_BOOL's bits by the scores kernel (a query a call: its counts stay in registers, which
 * paid more than sharing key loads among TM queries), and each query's context.
 * Scratch: Qb [L, dw], A [L, Lw], then for MODE_SOFTMAX counts int32 [TM, 8 ceil(L/8)] and a
 * flag per count value [dh + 1]; work: att_nib's.
 */
static void attention_bh(const uint64_t *qkvb, size_t rw, const uint8_t *keep, size_t L, size_t H,
                         size_t dh, size_t b, size_t h, size_t i0, size_t i1, int mode,
                         double sscale, const double *E, float mscale, float *ctx,
                         const uint64_t *Kil, const uint64_t *Vil, const uint8_t *K4,
                         const uint8_t *V4, uint64_t *scratch, uint8_t *work) {
    const size_t dw = nwords(dh), Lw = nwords(L), LB = (L + 7) / 8;
    uint64_t *Qb = scratch, *A = Qb + L * dw;
    int32_t *cnt = (int32_t *)(A + L * Lw);
    uint8_t *on = (uint8_t *)(cnt + TM * 8 * LB);
    uint64_t kbits[Lw];
    const uint8_t *kp = keep + b * L;

    for (size_t i = i0; i < i1; i++)
        extract_bits(qkvb + (b * L + i) * rw, rw, h * dh, dh, Qb + i * dw);
    memset(kbits, 0, Lw * sizeof(uint64_t));
    size_t kept = 0;
    for (size_t j = 0; j < L; j++)
        if (kp[j]) {
            kbits[j / 64] |= 1ULL << (j % 64);
            kept++;
        }
    const int any = kept > 0;
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
    /* else one query at a time (their counts TM queries a tile: a key block loaded once for TM) */
    for (size_t i = i0; i < i1 && !(K4 && mode == MODE_BOOL); i++) {
        uint64_t *Ai = A + i * Lw;
        if (mode == MODE_KEEP) {
            memcpy(Ai, kbits, Lw * sizeof(uint64_t));
        } else if (mode == MODE_SOFTMAX) {
            /* popcount(q_i XOR k_j) */
            const int32_t *ci = K4 ? cnts + (i - i0) * ldc : cnt + (i - i0) % TM * 8 * LB;
            for (size_t jb = 0; !K4 && (i - i0) % TM == 0 && jb < LB; jb += TN)
                g_isa->tile(Qb + i * dw, dw, Kil + jb * dw * 8, OP_XOR, cnt + 8 * jb, 8 * LB,
                            i1 - i < TM ? (int)(i1 - i) : TM, LB - jb < TN ? (int)(LB - jb) : TN);
            memset(Ai, 0, Lw * sizeof(uint64_t));
            /* every key kept runs over all keys as no key kept does, without reading the mask */
            const long cut = softmax_map_row(ci, L, (long)dh, kp, any && kept < L, sscale, E,
                                             mscale, on, Ai);
            if (cut != NO_CUT) { /* 1[count < thr], from the counts; */
                const long thr = sscale >= 0.0 ? cut + 1 : cut;
                g_isa->below(ci, L, thr, Ai);
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
 * (b, qb) first, so a thread's chunks are its rows of the context at every head (see pool.c).
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

int attention(const uint64_t *qkvb, const uint8_t *keep, size_t B, size_t L, size_t H,
              size_t heads, int mode, double sscale, float mscale, double cscale,
              const double *table, int tables, float *ctx) {
    const size_t dh = H / heads, dw = nwords(dh), Lw = nwords(L);
    /* per thread: attention_bh's Qb, A, counts and flags, or attention_kv's Vb */
    const size_t bh = L * dw + L * Lw + TM * ((L + 7) / 8) * 4 + dh / 8 + 1, vb = 64 * Lw * dw;
    /* by table lookup where the set has it and the caller allows it (the 16-bit sums of nib_lin
     * hold L's counts) */
    tables = tables && g_isa->nib_lin != NULL && L < 32767;
    const int ktab = tables && mode != MODE_KEEP, vtab = tables && dh % 64 == 0;
    const size_t words = bh > vb ? bh : vb,
                 kvw = ((L + 7) / 8) * dw * 8 + ((dh + 7) / 8) * Lw * 8 +
                       (tables ? (att_k4_bytes(L, dh) + att_v4_bytes(L, dh) + 7) / 8 : 0);
    const int nt = pool_threads() < 1 ? 1 : pool_threads();
    uint64_t *bufs[MAX_THREADS];
    uint8_t *work[MAX_THREADS] = {NULL};
    /* MODE_SOFTMAX's table of exponentials: the caller's, else made here */
    double *E = mode == MODE_SOFTMAX && !table ? malloc(softmax_table_len((long)dh) * sizeof(double)) : NULL;
    uint64_t *kv = malloc(B * heads * kvw * sizeof(uint64_t));
    int ok = (mode != MODE_SOFTMAX || table || E != NULL) && kv != NULL;
    for (int i = 0; i < nt; i++) {
        ok &= (bufs[i] = malloc(words * sizeof(uint64_t))) != NULL;
        if (ktab || vtab) /* att_nib's, then MODE_SOFTMAX's counts of a block of queries */
            ok &= (work[i] = malloc(att_nib_bytes(Lw > dw ? Lw : dw) +
                                    ATT_ROWS * 32 * ((L + 31) / 32) * sizeof(int32_t))) != NULL;
    }
    if (ok) {
        if (E) softmax_table((long)dh, sscale, E);
        att_job j = {qkvb, nwords(3 * H), keep, L, H, heads, dh, mode, sscale, E ? E : table,
                     mscale, cscale, ctx,
                     bufs, kv, kvw, ktab, vtab, work};
        pool_run(att_kv_chunk, &j, (long)(B * heads));
        pool_run(att_chunk, &j, (long)(B * ((L + ATT_ROWS - 1) / ATT_ROWS) * heads));
    }
    for (int i = 0; i < nt; i++) free(bufs[i]), free(work[i]);
    free(kv);
    free(E);
    return ok ? 0 : -1;
}
