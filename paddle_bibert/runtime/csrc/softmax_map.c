/* BiT's softmax attention map, row by row, from the integer scores. */
#include "isa.h"
#include "softmax_map.h"

/* The smallest and largest count of the kept keys j < L (every key if none is kept: !any);
 * dh and 0 where there is no key. */
static AI void count_range_body(const int32_t *cnt, size_t L, const uint8_t *kp, int any,
                                int32_t dh, int32_t *lo, int32_t *hi) {
    int32_t l = dh, h = 0; /* int32, selects instead of branches: the loops vectorize (AVX2) */
    if (!any) { /* every key (the usual row: nothing padded): min and max, the mask unread */
        for (size_t j = 0; j < L; j++) {
            l = cnt[j] < l ? cnt[j] : l;
            h = cnt[j] > h ? cnt[j] : h;
        }
        *lo = l, *hi = h;
        return;
    }
    for (size_t j = 0; j < L; j++) {
        const int32_t c = cnt[j], kept_j = !any | (kp[j] != 0);
        const int32_t cl = kept_j ? c : dh, ch = kept_j ? c : 0;
        l = cl < l ? cl : l;
        h = ch > h ? ch : h;
    }
    *lo = l, *hi = h;
}

void count_range_generic(const int32_t *cnt, size_t L, const uint8_t *kp, int any, int32_t dh,
                         int32_t *lo, int32_t *hi) {
    count_range_body(cnt, L, kp, any, dh, lo, hi);
}

/* Softmax denominator lanes: lane[r] += e[cnt[j]] for the kept keys j = r mod 8 (a masked key
 * adds +0.0), j < 8 floor(L / 8), in key order; returns the keys done (the caller adds the tail).
 * The lanes are +0.0 on entry (a kernel may start from its own zeros instead of reading them
 * back just after the caller stored them). */
size_t table_lanes_generic(const int32_t *cnt, size_t L, const uint8_t *kp, int any,
                           const double *e, double lane[8]) {
    size_t j0 = 0;
    for (; j0 + 8 <= L; j0 += 8) /* constant trip count: the lanes stay in registers */
        for (int r = 0; r < 8; r++) lane[r] += !any || kp[j0 + r] ? e[cnt[j0 + r]] : 0.0;
    return j0;
}

#ifdef BB_X86
/* The same loop compiled for AVX2, which vectorizes it (min/max of int32 lanes); the baseline
 * x86-64 build (SSE2) has no such instruction and branches per key: that loop took most of a
 * softmax row's time. */
T256 void count_range_avx2(const int32_t *cnt, size_t L, const uint8_t *kp, int any, int32_t dh,
                           int32_t *lo, int32_t *hi) {
    count_range_body(cnt, L, kp, any, dh, lo, hi);
}

/* The table entries of 4 counts (two 64-bit words of them: indices moved out of a vector
 * register, not loaded one by one: the loads bound this loop). */
static AI T256 __m256d table_entries4(const double *e, __m128i c4) {
    const uint64_t a = (uint64_t)_mm_cvtsi128_si64(c4), b = (uint64_t)_mm_extract_epi64(c4, 1);
    return _mm256_set_pd(e[b >> 32], e[(uint32_t)b], e[a >> 32], e[(uint32_t)a]);
}

/* table_lanes_generic with masked gathers of 4 entries: lanes 0-3 in one register, 4-7 in the
 * other, each still adding key 8i + r's entry (or +0.0) in key order. */
T256 size_t table_lanes_avx2(const int32_t *cnt, size_t L, const uint8_t *kp, int any,
                             const double *e, double lane[8]) {
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd(); /* the lanes' +0.0 */
    const __m256i all = _mm256_set1_epi64x(-1), z = _mm256_setzero_si256();
    size_t j0 = 0;
    for (; j0 + 8 <= L; j0 += 8) {
        const __m256i c8 = _mm256_loadu_si256((const __m256i *)(cnt + j0)); /* counts >= 0 */
        __m256d g0 = table_entries4(e, _mm256_castsi256_si128(c8));
        __m256d g1 = table_entries4(e, _mm256_extracti128_si256(c8, 1));
        if (any) { /* the kept keys' lanes: all bits set */
            uint32_t k0, k1;
            memcpy(&k0, kp + j0, 4);
            memcpy(&k1, kp + j0 + 4, 4);
            const __m256i m0 = _mm256_xor_si256(_mm256_cmpeq_epi64(_mm256_cvtepu8_epi64(_mm_cvtsi32_si128((int)k0)), z), all);
            const __m256i m1 = _mm256_xor_si256(_mm256_cmpeq_epi64(_mm256_cvtepu8_epi64(_mm_cvtsi32_si128((int)k1)), z), all);
            g0 = _mm256_and_pd(g0, _mm256_castsi256_pd(m0));
            g1 = _mm256_and_pd(g1, _mm256_castsi256_pd(m1));
        }
        acc0 = _mm256_add_pd(acc0, g0);
        acc1 = _mm256_add_pd(acc1, g1);
    }
    _mm256_storeu_pd(lane, acc0);
    _mm256_storeu_pd(lane + 4, acc1);
    return j0;
}


/* table_lanes_generic with a masked gather of 8 entries: lane r still adds key 8i + r's entry
 * (or +0.0) in key order, so every partial sum is the same. */
T512 size_t table_lanes_avx512(const int32_t *cnt, size_t L, const uint8_t *kp, int any,
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

#endif

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
 * Masked keys get p = 0 (as exp(-1e4) does in float32), so bit 0. any = 0 runs over every
 * key without reading kp: the caller's choice where none is kept, or all are.
 * A count takes dh + 1 values, so every exp(s_j - max s) is an entry of the table
 * E[m][c] = exp(s(c) - s(m)) (m: the count of the top score), evaluated by the same expression
 * as a direct computation, so every bit is the same. The test on p_j is monotone in the table
 * entry (IEEE division and rounding are), and the entry falls as the count moves away from the
 * top one: where the table row is monotone over the counts present (checked, or flagged by
 * softmax_table over every count), the map is the kept keys whose count is at most
 * (sscale >= 0; at least, sscale < 0) one cut (map_cut).
 * Returns that cut, or NO_CUT after writing the map into Ai (zeroed) key by key. */
enum { SUM_LANES = 8 }; /* table_lanes' 8 */

long softmax_map_row(const int32_t *cnt, size_t L, long dh, const uint8_t *kp, int any,
                     double sscale, const double *E, float mscale, uint8_t *on,
                     uint64_t *Ai) {
    /* the count of the largest score: the smallest count (sscale > 0), the largest (< 0) */
    int32_t lo32, hi32;
    g_isa->count_range(cnt, L, kp, any, (int32_t)dh, &lo32, &hi32);
    const long lo = lo32, hi = hi32;
    const long top = sscale >= 0.0 ? lo : hi;
    const double *e = E + (size_t)top * (dh + 1);
    double lane[SUM_LANES] = {0.0}; /* a masked key adds +0.0, which leaves a lane as it is */
    const size_t j0 = g_isa->table_lanes(cnt, L, kp, any, e, lane);
    for (size_t j = j0; j < L; j++) lane[j % SUM_LANES] += !any || kp[j] ? e[cnt[j]] : 0.0;
    for (int w = SUM_LANES / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) lane[i] = lane[2 * i] + lane[2 * i + 1];
    const double sum = lane[0];
    /* monotone over every count (softmax_table's flag), else checked over those present */
    const int everywhere = E[(size_t)(dh + 1) * (dh + 1) + top] != 0.0;
    int mono = 1;
    for (long c = lo; !everywhere && c < hi; c++)
        mono &= sscale >= 0.0 ? e[c + 1] <= e[c] : e[c + 1] >= e[c];
    if (mono) return map_cut(e, lo, hi, sscale >= 0.0 ? 1 : -1, sum, mscale);
    for (long c = 0; c <= dh; c++) on[c] = map_has(e, c, sum, mscale);
    for (size_t j = 0; j < L; j++)
        if ((!any || kp[j]) && on[cnt[j]]) Ai[j / 64] |= 1ULL << (j % 64);
    return NO_CUT;
}

/* E[m][c] = exp(s(c) - s(m)), s(c) = (dh - 2c) * sscale, for counts m, c in 0..dh; then
 * E[dh + 1][m] = 1.0 where row m falls monotonically from the top count over every count (as
 * exp is, mathematically), so over those of any row (softmax_map_row need not check), else 0.0. */
void softmax_table(long dh, double sscale, double *E) {
    for (long m = 0; m <= dh; m++)
        for (long c = 0; c <= dh; c++)
            E[m * (dh + 1) + c] = exp((double)(dh - 2 * c) * sscale - (double)(dh - 2 * m) * sscale);
    for (long m = 0; m <= dh; m++) {
        const double *e = E + m * (dh + 1);
        int mono = 1;
        for (long c = 0; c < dh; c++) mono &= sscale >= 0.0 ? e[c + 1] <= e[c] : e[c + 1] >= e[c];
        E[(dh + 1) * (dh + 1) + m] = mono ? 1.0 : 0.0;
    }
}

