/*
 * A test build of the kernels (scripts/check_avx512.sh: -DBB_EMULATE_AVX512 -mavx2 -mfma -mpopcnt)
 * whose AVX-512 set runs on a CPU without AVX-512: its intrinsics are SIMDe's portable versions
 * (Debian/Ubuntu package libsimde-dev), which give the same integers and float bits, slowly. The
 * few the packaged SIMDe lacks are written out below from their definitions, element by element.
 */
#ifndef BIBERT_AVX512_EMULATED_H
#define BIBERT_AVX512_EMULATED_H

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

/* the kernels' target attribute: the build's own -mavx2 -mfma -mpopcnt suffice */
#define T512 __attribute__((target("avx2,fma,popcnt")))

/* (SIMDe 0.7's alias of this one takes four arguments; the function itself is right) */
#undef _mm512_mask_cmple_epi64_mask
#define _mm512_mask_cmple_epi64_mask(k, a, b) simde_mm512_mask_cmple_epi64_mask((k), (a), (b))

#ifndef _mm512_cmplt_epi64_mask
#define _mm512_cmplt_epi64_mask(a, b) _mm512_cmpgt_epi64_mask((b), (a))
#endif

static inline __m512i bb_cvtepu8_epi64(__m128i a) {
    uint8_t x[16];
    int64_t r[8];
    memcpy(x, &a, sizeof x);
    for (int i = 0; i < 8; i++) r[i] = x[i];
    return _mm512_loadu_si512(r);
}
#define _mm512_cvtepu8_epi64 bb_cvtepu8_epi64

static inline __m512i bb_cvtepi32_epi64(__m256i a) {
    int32_t x[8];
    int64_t r[8];
    memcpy(x, &a, sizeof x);
    for (int i = 0; i < 8; i++) r[i] = x[i];
    return _mm512_loadu_si512(r);
}
#define _mm512_cvtepi32_epi64 bb_cvtepi32_epi64

/* (round to nearest even, as the instruction under the default MXCSR and C's conversion) */
static inline __m256 bb_cvtepi64_ps(__m512i a) {
    int64_t x[8];
    float r[8];
    memcpy(x, &a, sizeof x);
    for (int i = 0; i < 8; i++) r[i] = (float)x[i];
    return _mm256_loadu_ps(r);
}
#define _mm512_cvtepi64_ps bb_cvtepi64_ps

static inline __m512d bb_mask_i32gather_pd(__m512d src, __mmask8 k, __m256i idx, const void *base,
                                           int scale) {
    double r[8];
    int32_t ix[8];
    memcpy(r, &src, sizeof r);
    memcpy(ix, &idx, sizeof ix);
    for (int i = 0; i < 8; i++)
        if (k >> i & 1) memcpy(&r[i], (const char *)base + (int64_t)ix[i] * scale, sizeof(double));
    return _mm512_loadu_pd(r);
}
#define _mm512_mask_i32gather_pd bb_mask_i32gather_pd

#endif
