/*
 * x86 vector helpers the AVX2 and AVX-512 kernel sets share (compiled for their instruction
 * sets by target attributes, so the rest of the extension runs on any x86-64 CPU).
 */
#ifndef BIBERT_SIMD_H
#define BIBERT_SIMD_H

#include "common.h"

#ifdef BB_X86
#define T256 __attribute__((target("avx2,fma,popcnt")))
#ifdef BB_EMULATE_AVX512
#include "avx512_emulated.h" /* a test build: the AVX-512 set without AVX-512 */
#else
#define T512 __attribute__((target("avx512f,avx512dq,avx512vpopcntdq,avx2,fma,popcnt")))
#endif

/* Per-byte popcount (nibble lookup); a byte holds at most 8, so BYTE_WORDS words add up in
 * bytes before they must be summed into 64-bit lanes (vpsadbw). */
enum { BYTE_WORDS = 31 }; /* 31 * 8 = 248 <= 255 */

static AI T256 __m256i popcnt8_256(__m256i v) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
}

/* lin_y of 8 channels: d * alpha + bias rounded once (one FMA; d exact as a float, |d| < 2^24). */
static AI T256 __m256 lin_y8(__m256i d, const float *alpha8, const float *bias8) {
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_loadu_ps(alpha8), _mm256_loadu_ps(bias8));
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
#endif

#endif
