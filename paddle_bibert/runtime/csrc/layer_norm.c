/* LayerNorm (with the residual added first), row by row, per set. */
#include "isa.h"
#include "ops.h"
#include "pool.h"

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

void ln_row_generic(const float *x, const float *res, size_t H, const float *g,
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
 * conversions to double bound it, not the vector width (a 16-wide version took the same 39 us
 * for 128 rows of 768 on a Zen 4 EPYC). */
T256 void ln_row_avx2(const float *x, const float *res, size_t H, const float *g,
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

typedef struct {
    const float *x, *res, *g, *b;
    size_t T, H, chunk;
    double eps;
    float *out;
    int nb;
    const ln_bits_t *bits; /* the binarizations of out, [T, nwords(H)] each */
} ln_job;

static void ln_chunk(void *vctx, long c, int tid) {
    const ln_job *j = vctx;
    const size_t H = j->H, nw = nwords(H), t1 = (c + 1) * j->chunk < j->T ? (c + 1) * j->chunk : j->T;
    (void)tid;
    for (size_t t = c * j->chunk; t < t1; t++) {
        const float *o = j->out + t * H;
        g_isa->ln_row(j->x + t * H, j->res ? j->res + t * H : NULL, H, j->g, j->b, j->eps,
                      j->out + t * H);
        /* binarized while the row is in this core's L1: a separate pass would read it back,
         * at two threads partly from the other core's cache */
        for (int q = 0; q < j->nb; q++) {
            const ln_bits_t *b = j->bits + q;
            if (b->kind == Q_SIGN && !b->shift) g_isa->pack(o, H, b->out + t * nw);
            else g_isa->pack_act_row(o, H, b->shift, b->scale, b->kind, ACT_NONE, b->out + t * nw);
        }
    }
}

void layer_norm(const float *x, const float *res, size_t T, size_t H, const float *g,
                const float *bta, double eps, float *out, int nb, const ln_bits_t *bits) {
    ln_job j = {x, res, g, bta, T, H, ROW_CHUNK(T, H), eps, out, nb, bits};
    pool_run(ln_chunk, &j, (long)((T + j.chunk - 1) / j.chunk));
}
