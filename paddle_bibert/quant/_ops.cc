// Fused CPU kernels for the binarization STEs (see quantizers.py for the formulas).
//
// Paddle's CPU elementwise ops run one pass per op, single-threaded; a clipped-STE sign took
// five of them (copysign, ones_like forward; abs, compare, cast, multiply backward). These do
// each direction in one multi-threaded pass, with the same values bit for bit:
//   sign:  y = signbit(x) ? -1 : +1            dx = dy * (|x| <= 1)
//   bool:  y = s > 0 ? 1 : 0                   ds = dy * (|s| <  1)
//   mask:  dx = dy * (|x| <= 1)                (the weight STE's backward)
//   channel sign (weights): per channel c over the reduced axis,
//          wc = w - mean(w),  y = mean|w| * sign(wc)
//          dw = t - mean(t),  t = dy * (|wc| <= 1)   (STE through the centring)
//   tensor sign (BiT's weights): the same with one channel, the whole matrix
//
// The learned-scale quantizers (BiT elastic binarization, LSQ) follow; their plain paths chain
// ~10 ops each way. Scalar gradients (alpha, step, the shift b) are sums: accumulated in double
// here, so they agree with Paddle's float32 sums to rounding, not bit for bit.
// (One file of ~710 lines: each quantizer's forward and backward kernels sit together, and the
// extension is built, and cached, as one unit.)
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define BIBERT_HAVE_MXCSR 1
#endif

#include "paddle/extension.h"

namespace {

void check_cpu_float(const paddle::Tensor& t, const char* what) {
  PD_CHECK(t.is_cpu(), what, " must be on the CPU for the fused kernel");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, what, " must be float32 for the fused kernel");
}

}  // namespace

std::vector<paddle::Tensor> SignForward(const paddle::Tensor& x) {
  check_cpu_float(x, "x");
  auto y = paddle::empty_like(x);
  const float* px = x.data<float>();
  float* py = y.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) py[i] = std::signbit(px[i]) ? -1.0f : 1.0f;
  return {y};
}

static paddle::Tensor ClippedGrad(const paddle::Tensor& x, const paddle::Tensor& dy, bool inclusive) {
  check_cpu_float(x, "x");
  check_cpu_float(dy, "grad");
  auto dx = paddle::empty_like(x);
  const float* px = x.data<float>();
  const float* pg = dy.data<float>();
  float* po = dx.data<float>();
  const int64_t n = x.numel();
  // Branch-free select (gradient bits AND an all-ones/all-zeros mask) so the loop
  // vectorizes; the result is exactly dy or +0.0, as the ternary would give.
  const uint32_t* gb = reinterpret_cast<const uint32_t*>(pg);
  uint32_t* ob = reinterpret_cast<uint32_t*>(po);
  if (inclusive) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) ob[i] = gb[i] & (0u - static_cast<uint32_t>(std::fabs(px[i]) <= 1.0f));
  } else {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) ob[i] = gb[i] & (0u - static_cast<uint32_t>(std::fabs(px[i]) < 1.0f));
  }
  return dx;
}

std::vector<paddle::Tensor> SignBackward(const paddle::Tensor& x, const paddle::Tensor& dy) {
  return {ClippedGrad(x, dy, true)};
}

std::vector<paddle::Tensor> BoolForward(const paddle::Tensor& s) {
  check_cpu_float(s, "scores");
  auto y = paddle::empty_like(s);
  const float* ps = s.data<float>();
  float* py = y.data<float>();
  const int64_t n = s.numel();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) py[i] = ps[i] > 0.0f ? 1.0f : 0.0f;
  return {y};
}

std::vector<paddle::Tensor> BoolBackward(const paddle::Tensor& s, const paddle::Tensor& dy) {
  return {ClippedGrad(s, dy, false)};
}

std::vector<paddle::Tensor> MaskForward(const paddle::Tensor& x, const paddle::Tensor& dy) {
  return {ClippedGrad(x, dy, true)};
}

// View x as [outer, R, inner] with the reduction over R: a Linear weight [in, out] reduced over
// axis 0 is [1, in, out]; embedding rows [..., H] reduced over the last axis are [N, H, 1].
struct Layout {
  int64_t outer, r, inner;
};

static Layout layout_of(const paddle::Tensor& x, bool reduce_last) {
  const auto shape = x.shape();
  PD_CHECK(!shape.empty(), "channel sign needs at least 1 dimension");
  if (reduce_last) return {x.numel() / shape.back(), shape.back(), 1};
  PD_CHECK(shape.size() == 2, "channel sign over axis 0 expects a 2-D weight");
  return {1, shape[0], shape[1]};
}

// Per-channel mean and mean-abs (double accumulation), laid out [outer, inner].
static void channel_stats(const float* w, const Layout& l, std::vector<float>* mean,
                          std::vector<float>* amean) {
  mean->assign(l.outer * l.inner, 0.0f);
  amean->assign(l.outer * l.inner, 0.0f);
#pragma omp parallel for schedule(static) if (l.outer > 64)
  for (int64_t o = 0; o < l.outer; ++o) {
    std::vector<double> s(l.inner, 0.0), a(l.inner, 0.0);
    const float* base = w + o * l.r * l.inner;
    for (int64_t r = 0; r < l.r; ++r) {
      const float* row = base + r * l.inner;
      for (int64_t c = 0; c < l.inner; ++c) {
        s[c] += row[c];
        a[c] += std::fabs(row[c]);
      }
    }
    for (int64_t c = 0; c < l.inner; ++c) {
      (*mean)[o * l.inner + c] = static_cast<float>(s[c] / l.r);
      (*amean)[o * l.inner + c] = static_cast<float>(a[c] / l.r);
    }
  }
}

std::vector<paddle::Tensor> ChannelSignForward(const paddle::Tensor& w, bool reduce_last) {
  check_cpu_float(w, "weight");
  const Layout l = layout_of(w, reduce_last);
  std::vector<float> mean, amean;
  const float* pw = w.data<float>();
  channel_stats(pw, l, &mean, &amean);
  auto y = paddle::empty_like(w);
  float* py = y.data<float>();
#pragma omp parallel for collapse(2) schedule(static) if (w.numel() > 65536)
  for (int64_t o = 0; o < l.outer; ++o)
    for (int64_t r = 0; r < l.r; ++r) {
      const int64_t off = (o * l.r + r) * l.inner;
      for (int64_t c = 0; c < l.inner; ++c) {
        const float a = amean[o * l.inner + c];
        py[off + c] = std::signbit(pw[off + c] - mean[o * l.inner + c]) ? -a : a;
      }
    }
  return {y};
}

std::vector<paddle::Tensor> ChannelSignBackward(const paddle::Tensor& w, const paddle::Tensor& dy,
                                                bool reduce_last) {
  check_cpu_float(w, "weight");
  check_cpu_float(dy, "grad");
  const Layout l = layout_of(w, reduce_last);
  std::vector<float> mean, amean;
  const float* pw = w.data<float>();
  const float* pg = dy.data<float>();
  channel_stats(pw, l, &mean, &amean);
  auto dw = paddle::empty_like(w);
  float* po = dw.data<float>();
#pragma omp parallel for schedule(static) if (l.outer > 64)
  for (int64_t o = 0; o < l.outer; ++o) {
    std::vector<double> t(l.inner, 0.0);
    for (int64_t r = 0; r < l.r; ++r) {
      const int64_t off = (o * l.r + r) * l.inner;
      for (int64_t c = 0; c < l.inner; ++c) {
        const float v = std::fabs(pw[off + c] - mean[o * l.inner + c]) <= 1.0f ? pg[off + c] : 0.0f;
        po[off + c] = v;
        t[c] += v;
      }
    }
    for (int64_t c = 0; c < l.inner; ++c) t[c] /= l.r;
    for (int64_t r = 0; r < l.r; ++r) {
      const int64_t off = (o * l.r + r) * l.inner;
      for (int64_t c = 0; c < l.inner; ++c) po[off + c] = static_cast<float>(po[off + c] - t[c]);
    }
  }
  return {dw};
}

PD_BUILD_OP(bibert_channel_sign)
    .Inputs({"W"})
    .Outputs({"Out"})
    .Attrs({"reduce_last: bool"})
    .SetKernelFn(PD_KERNEL(ChannelSignForward));
PD_BUILD_GRAD_OP(bibert_channel_sign)
    .Inputs({"W", paddle::Grad("Out")})
    .Outputs({paddle::Grad("W")})
    .Attrs({"reduce_last: bool"})
    .SetKernelFn(PD_KERNEL(ChannelSignBackward));

// Tensor sign (BiT's weights): the channel sign with one channel, the whole matrix. Its own
// kernels because the [1, numel, 1] layout would make every element an inner loop of one.
// Sums run over fixed blocks in a fixed order, so the result does not depend on the threads.
constexpr int64_t kBlock = 4096;

static double block_sum(const float* p, int64_t n, bool absolute) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // eight chains: the adds' latency, not one chain's
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += absolute ? std::fabs(p[i + k]) : p[i + k];
  for (; i < n; ++i) acc[0] += absolute ? std::fabs(p[i]) : p[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// The mean of p (or of |p|) over n values: per-block sums in parallel, added in block order.
static double tensor_mean(const float* p, int64_t n, bool absolute) {
  const int64_t nb = (n + kBlock - 1) / kBlock;
  std::vector<double> part(nb);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t b = 0; b < nb; ++b)
    part[b] = block_sum(p + b * kBlock, std::min(kBlock, n - b * kBlock), absolute);
  double s = 0.0;
  for (double v : part) s += v;
  return s / static_cast<double>(n);
}

std::vector<paddle::Tensor> TensorSignForward(const paddle::Tensor& w) {
  check_cpu_float(w, "weight");
  const int64_t n = w.numel();
  const float* pw = w.data<float>();
  const float mean = static_cast<float>(tensor_mean(pw, n, false));
  const float a = static_cast<float>(tensor_mean(pw, n, true));
  auto y = paddle::empty_like(w);
  float* py = y.data<float>();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) py[i] = std::signbit(pw[i] - mean) ? -a : a;
  return {y};
}

std::vector<paddle::Tensor> TensorSignBackward(const paddle::Tensor& w, const paddle::Tensor& dy) {
  check_cpu_float(w, "weight");
  check_cpu_float(dy, "grad");
  const int64_t n = w.numel();
  const float* pw = w.data<float>();
  const float* pg = dy.data<float>();
  const float mean = static_cast<float>(tensor_mean(pw, n, false));
  auto dw = paddle::empty_like(w);
  float* po = dw.data<float>();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) po[i] = std::fabs(pw[i] - mean) <= 1.0f ? pg[i] : 0.0f;
  const double t = tensor_mean(po, n, false);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) po[i] = static_cast<float>(po[i] - t);
  return {dw};
}

PD_BUILD_OP(bibert_tensor_sign).Inputs({"W"}).Outputs({"Out"}).SetKernelFn(PD_KERNEL(TensorSignForward));
PD_BUILD_GRAD_OP(bibert_tensor_sign)
    .Inputs({"W", paddle::Grad("Out")})
    .Outputs({paddle::Grad("W")})
    .SetKernelFn(PD_KERNEL(TensorSignBackward));

PD_BUILD_OP(bibert_sign_ste).Inputs({"X"}).Outputs({"Out"}).SetKernelFn(PD_KERNEL(SignForward));
PD_BUILD_GRAD_OP(bibert_sign_ste)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(SignBackward));

PD_BUILD_OP(bibert_bool_ste).Inputs({"S"}).Outputs({"Out"}).SetKernelFn(PD_KERNEL(BoolForward));
PD_BUILD_GRAD_OP(bibert_bool_ste)
    .Inputs({"S", paddle::Grad("Out")})
    .Outputs({paddle::Grad("S")})
    .SetKernelFn(PD_KERNEL(BoolBackward));

PD_BUILD_OP(bibert_ste_mask).Inputs({"X", "G"}).Outputs({"Out"}).SetKernelFn(PD_KERNEL(MaskForward));

// ---------------------------------------------------------------------------------------------
// Learned-scale activation quantizers: BiT elastic binarization and LSQ.
//
//   elastic, signed:     s = x + b, except s = x where x + b == 0      (b: shift per channel;
//                        y = a * sign(s)                                == as Paddle compares floats)
//                        dx = g + 0,  g = dy * (|s| <= |a|)           db = sum_rows g * (x + b != 0)
//                        da = sum(sign(s) * dy) / sqrt(numel)
//   elastic, unsigned:   q = s / a,  y = a * clip(round_half_down(q), 0, 1)
//                        g = dy * (0 <= q <= 1)                         dx, db as above
//                        da = sum((1[q > 1] + 1[0 <= q <= 1] * (round_half_down(q) - q)) * dy) / sqrt(numel)
//   lsq:                 q = x / s,  y = s * clip(round(q), -qn, qp)
//                        dx = dy * (-qn <= q <= qp)
//                        ds = sum(dy * (inside * (round(q) - q) - qn * 1[q < -qn] + qp * 1[q > qp]))
//                             / sqrt(numel * qp)
//
// Each element goes through the same float32 operations, in the same order, as the plain path in
// quantizers.py (ElasticSignSTE, ElasticUnsignedSTE, LsqSTE and the shift in ElasticSign.forward),
// so y and dx match it bit for bit, including signed zeros, inf and NaN. Where a product feeds a
// sum on the way to y or dx, one factor is 0 or 1, so FMA contraction could not change a result.
// Without a shift, s = x (not x + 0, which would turn -0.0 into +0.0).
//
// dx = g + 0: with a shift, the plain path's x gets two gradient contributions, one through
// paddle.where's x branch and one through x + b, one of them a +0.0 filler, and Paddle adds them:
// g + 0.0 is g except that -0.0 becomes +0.0.
//
// Under flush-to-zero (training, see WithCsr) they match too: the plain path's broadcasting ops
// (x + b, x / a, x / s) honour the calling thread's FTZ/DAZ bits, and so do the kernels, on every
// worker thread; its same-shape ops (grad * mask, the gradient accumulation) ignore them, and the
// kernels reproduce those with selects (times_mask, plus_zero).
//
// The scalar gradients (a, s) and the per-channel db are sums, accumulated in double here (Paddle
// sums in float32), so they agree with the plain path to rounding, not bit for bit.

namespace {

// x86 flush-to-zero / denormals-are-zero are bits of each thread's MXCSR. Training sets them on
// the calling thread (paddle_bibert/_cpu.py, flush_denormals), where the plain path's Paddle ops
// run; OpenMP workers keep whatever state they were started with. The kernels below run their
// workers with the caller's MXCSR (restored on leaving), so the result does not depend on which
// thread computed an element.
inline unsigned get_csr() {
#ifdef BIBERT_HAVE_MXCSR
  return _mm_getcsr();
#else
  return 0;
#endif
}

class WithCsr {
 public:
  explicit WithCsr(unsigned csr) : own_(get_csr()) { set(csr); }
  ~WithCsr() { set(own_); }
  WithCsr(const WithCsr&) = delete;
  WithCsr& operator=(const WithCsr&) = delete;

 private:
  static void set(unsigned csr) {
#ifdef BIBERT_HAVE_MXCSR
    if (_mm_getcsr() != csr) _mm_setcsr(csr);
#else
    (void)csr;
#endif
  }
  unsigned own_;
};

inline int threads_for(int64_t n) {
#ifdef _OPENMP
  return n > 65536 ? omp_get_max_threads() : 1;
#else
  (void)n;
  return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// 2^23: every float of at least this magnitude is an integer.
constexpr float kIntegral = 8388608.0f;

// Round to the nearest integer, ties to even (std::nearbyint; what paddle.round does in Paddle
// 3.x: round(0.5) = 0, round(2.5) = 2). For |q| < 2^23, |q| + 2^23 keeps no fraction bits, so
// the addition rounds |q| by the FPU's own rule and the subtraction is exact; larger |q|, inf and
// NaN take + 0 - 0 and stay as they are; copysign gives round(-0.3) = -0.0 as nearbyint does.
// Arithmetic instead of a libm call, so the loops around it vectorize.
inline float round_half_even(float q) {
  const float a = std::fabs(q);
  const float c = a < kIntegral ? kIntegral : 0.0f;
  return std::copysign((a + c) - c, q);
}

// Round half away from zero (std::round), for a Paddle whose round does that: the ties-to-even
// result, plus one where a tie went down (a - r is exact; for |q| >= 2^23, a - r = 0).
inline float round_half_away(float q) {
  const float a = std::fabs(q);
  const float c = a < kIntegral ? kIntegral : 0.0f;
  const float r = (a + c) - c;
  return std::copysign(r + (a - r == 0.5f ? 1.0f : 0.0f), q);
}

// The selects below are plain ?: between values computed anyway; the loops vectorize because
// fused.py builds with -fno-trapping-math (GCC may then evaluate both sides of a select, which
// changes no result: Paddle runs with floating-point exceptions masked).

// dy * m for a 0/1 mask m, as the plain path's `grad * mask` gives it: dy where m, else dy * 0
// (+-0 by the sign of dy; NaN for inf and NaN). Selected rather than multiplied because that
// Paddle op (a multiply of two same-shape tensors, MKL's vsMul) ignores the caller's
// flush-to-zero mode: a subnormal dy passes through unchanged, which dy * 1.0f would flush.
inline float times_mask(float dy, bool m) { return m ? dy : dy * 0.0f; }

// g + 0.0f, as the plain path's gradient accumulation (a same-shape add, which likewise ignores
// flush-to-zero) gives it: g, except that -0.0 becomes +0.0. On the bits, since under
// denormals-are-zero a float comparison would take a subnormal g for 0.
inline float plus_zero(float g) {
  uint32_t b;
  std::memcpy(&b, &g, sizeof b);
  b &= 0u - static_cast<uint32_t>((b << 1) != 0);
  std::memcpy(&g, &b, sizeof g);
  return g;
}

// paddle.clip: v < lo ? lo : (v > hi ? hi : v), so NaN and the sign of a zero pass through
inline float clip(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// ste.round_half_down, op for op: 1[q > 0.5] + 1[q > 1.5] * (round(q) - 1). The rounding
// rule is irrelevant here: round(q) only counts where q > 1.5, which every caller clips to 1 or
// masks out, and any rule keeps inf and NaN (which propagate as in Paddle).
inline float round_half_down(float q) {
  return (q > 0.5f ? 1.0f : 0.0f) + (q > 1.5f ? 1.0f : 0.0f) * (round_half_even(q) - 1.0f);
}

// Paddle's float `==` (phi's EqualFunctor) is not exact: a == b is |a - b| < 1e-15 (in double),
// so `s == 0` holds for every |s| < 1e-15, subnormals included (NaN: false). For a float |s|,
// that is |s| < the least float >= 1e-15 (compared in float: no conversions in the loop).
constexpr float kPaddleEqualTol = 0x1.203afap-50f;
static_assert(static_cast<double>(kPaddleEqualTol) >= 1e-15 && static_cast<double>(0x1.203af8p-50f) < 1e-15,
              "kPaddleEqualTol is the least float >= 1e-15");
inline bool paddle_equals_zero(float s) { return std::fabs(s) < kPaddleEqualTol; }

// ElasticSign.forward's shift, paddle.where(x + b == 0, x, x + b): x + b, but x where that sum
// is 0 (of either sign) as Paddle compares, so that -0.0 + 0.0 = +0.0 does not flip sign(-0.0).
inline float shifted(float x, float b) {
  const float s = x + b;
  return paddle_equals_zero(s) ? x : s;
}

// An activation [..., C] as rows of C channels (the shift's axis is the last one).
struct Rows {
  int64_t n, c, rows;
};

Rows rows_of(const paddle::Tensor& x) {
  const auto shape = x.shape();
  const int64_t c = shape.empty() ? 1 : shape.back();
  const int64_t n = x.numel();
  return {n, c, c > 0 ? n / c : 0};
}

float scalar_of(const paddle::Tensor& t, const char* what) {
  check_cpu_float(t, what);
  PD_CHECK(t.numel() == 1, what, " must have one element");
  return t.data<float>()[0];
}

const float* shift_of(const paddle::Tensor& b, const Rows& l) {
  check_cpu_float(b, "shift");
  PD_CHECK(b.numel() == l.c, "the shift has ", b.numel(), " channels, the input's last axis ", l.c);
  return b.data<float>();
}

// body(thread, row) for every row of l on nt threads, each running with the caller's MXCSR
// (flush-to-zero): the backward kernels accumulate per-thread partial sums indexed by thread.
template <class Body>
void for_rows(const Rows& l, int nt, const Body& body) {
  const unsigned csr = get_csr();
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const WithCsr env(csr);
    const int t = thread_id();
#pragma omp for schedule(static)
    for (int64_t r = 0; r < l.rows; ++r) body(t, r);
  }
}

template <bool kShift, bool kZeroOne>
void elastic_forward(const float* px, const float* pb, float a, const Rows& l, float* py) {
  const unsigned csr = get_csr();
#pragma omp parallel if (l.n > 65536)
  {
    const WithCsr env(csr);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < l.rows; ++r) {
      const float* x = px + r * l.c;
      float* y = py + r * l.c;
      for (int64_t j = 0; j < l.c; ++j) {
        const float s = kShift ? shifted(x[j], pb[j]) : x[j];
        y[j] = kZeroOne ? clip(round_half_down(s / a), 0.0f, 1.0f) * a : (std::signbit(s) ? -1.0f : 1.0f) * a;
      }
    }
  }
}

// Writes dx; returns the sum for da (before the 1/sqrt(numel)) and, with a shift, db.
template <bool kShift, bool kZeroOne>
double elastic_backward(const float* px, const float* pb, float a, const float* pg, const Rows& l,
                        float* pdx, float* pdb) {
  const int nt = threads_for(l.n);
  // per thread and channel partial sums: the inner loop stays free of a loop-carried scalar
  std::vector<double> part_a(static_cast<size_t>(nt) * l.c, 0.0);
  std::vector<double> part_b(kShift ? static_cast<size_t>(nt) * l.c : 0, 0.0);
  const float abs_a = std::fabs(a);
  for_rows(l, nt, [&](int thread, int64_t r) {
    double* sa = part_a.data() + thread * l.c;
    double* sb = kShift ? part_b.data() + thread * l.c : nullptr;
    const float* x = px + r * l.c;
    const float* dy = pg + r * l.c;
    float* dx = pdx + r * l.c;
    for (int64_t j = 0; j < l.c; ++j) {
      const float s = kShift ? shifted(x[j], pb[j]) : x[j];
      float g, t;
      if (kZeroOne) {
        const float q = s / a;
        const bool in = (q >= 0.0f) & (q <= 1.0f);
        g = times_mask(dy[j], in);
        t = (q > 1.0f ? 1.0f : 0.0f) + (in ? 1.0f : 0.0f) * (round_half_down(q) - q);
      } else {
        g = times_mask(dy[j], std::fabs(s) <= abs_a);
        t = (std::signbit(s) ? -1.0f : 1.0f);
      }
      sa[j] += static_cast<double>(t * dy[j]);
      if (kShift) {
        dx[j] = plus_zero(g);
        sb[j] += static_cast<double>(paddle_equals_zero(x[j] + pb[j]) ? 0.0f : g);  // where() sent g to x there
      } else {
        dx[j] = g;
      }
    }
  });
  double total = 0.0;
  for (int t = 0; t < nt; ++t)
    for (int64_t j = 0; j < l.c; ++j) total += part_a[t * l.c + j];
  if (kShift) {
    for (int64_t j = 0; j < l.c; ++j) {
      double v = 0.0;
      for (int t = 0; t < nt; ++t) v += part_b[t * l.c + j];
      pdb[j] = static_cast<float>(v);
    }
  }
  return total;
}

// 1 / sqrt(m) as the plain path's Python float (m = 0: an empty input, whose sums are 0)
inline double inv_sqrt(double m) { return m > 0 ? 1.0 / std::sqrt(m) : 0.0; }

template <bool kShift>
paddle::Tensor elastic_forward_tensor(const paddle::Tensor& x, const paddle::Tensor* b,
                                      const paddle::Tensor& alpha, bool zero_one) {
  check_cpu_float(x, "x");
  const Rows l = rows_of(x);
  const float* pb = kShift ? shift_of(*b, l) : nullptr;
  const float a = scalar_of(alpha, "alpha");
  auto y = paddle::empty_like(x);
  if (zero_one)
    elastic_forward<kShift, true>(x.data<float>(), pb, a, l, y.data<float>());
  else
    elastic_forward<kShift, false>(x.data<float>(), pb, a, l, y.data<float>());
  return y;
}

template <bool kShift>
std::vector<paddle::Tensor> elastic_backward_tensors(const paddle::Tensor& x, const paddle::Tensor* b,
                                                     const paddle::Tensor& alpha, const paddle::Tensor& dy,
                                                     bool zero_one) {
  check_cpu_float(x, "x");
  check_cpu_float(dy, "grad");
  const Rows l = rows_of(x);
  const float* pb = kShift ? shift_of(*b, l) : nullptr;
  const float a = scalar_of(alpha, "alpha");
  auto dx = paddle::empty_like(x);
  auto da = paddle::empty_like(alpha);
  paddle::Tensor db;
  float* pdb = nullptr;
  if (kShift) {
    db = paddle::empty_like(*b);
    pdb = db.data<float>();
  }
  const double sum = zero_one
      ? elastic_backward<kShift, true>(x.data<float>(), pb, a, dy.data<float>(), l, dx.data<float>(), pdb)
      : elastic_backward<kShift, false>(x.data<float>(), pb, a, dy.data<float>(), l, dx.data<float>(), pdb);
  da.data<float>()[0] = static_cast<float>(sum * inv_sqrt(static_cast<double>(l.n)));
  if (kShift) return {dx, db, da};
  return {dx, da};
}

template <bool kHalfEven>
inline float lsq_round(float q) {
  return kHalfEven ? round_half_even(q) : round_half_away(q);
}

template <bool kHalfEven>
void lsq_forward(const float* px, float step, float lo, float hi, int64_t n, float* py) {
  const unsigned csr = get_csr();
#pragma omp parallel if (n > 65536)
  {
    const WithCsr env(csr);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) py[i] = clip(lsq_round<kHalfEven>(px[i] / step), lo, hi) * step;
  }
}

template <bool kHalfEven>
double lsq_backward(const float* px, float step, const float* pg, int qn, int qp, const Rows& l,
                    float* pdx) {
  const int nt = threads_for(l.n);
  std::vector<double> part(static_cast<size_t>(nt) * l.c, 0.0);
  const float fqn = static_cast<float>(qn), fqp = static_cast<float>(qp);
  const float lo = static_cast<float>(-qn);  // the clip bound as paddle.clip gets it (-0 is +0.0)
  for_rows(l, nt, [&](int thread, int64_t r) {
    double* acc = part.data() + thread * l.c;
    const float* x = px + r * l.c;
    const float* dy = pg + r * l.c;
    float* dx = pdx + r * l.c;
    for (int64_t j = 0; j < l.c; ++j) {
      const float q = x[j] / step;
      const bool lower = q < lo, upper = q > fqp;
      const float below = lower ? 1.0f : 0.0f, above = upper ? 1.0f : 0.0f;
      const float inside = 1.0f - below - above;
      dx[j] = times_mask(dy[j], !(lower | upper));
      const float t = inside * (lsq_round<kHalfEven>(q) - q) - fqn * below + fqp * above;
      acc[j] += static_cast<double>(dy[j] * t);
    }
  });
  double total = 0.0;
  for (size_t k = 0; k < part.size(); ++k) total += part[k];
  return total;
}

}  // namespace

std::vector<paddle::Tensor> ElasticForward(const paddle::Tensor& x, const paddle::Tensor& alpha, bool zero_one) {
  return {elastic_forward_tensor<false>(x, nullptr, alpha, zero_one)};
}

std::vector<paddle::Tensor> ElasticBackward(const paddle::Tensor& x, const paddle::Tensor& alpha,
                                            const paddle::Tensor& dy, bool zero_one) {
  return elastic_backward_tensors<false>(x, nullptr, alpha, dy, zero_one);
}

std::vector<paddle::Tensor> ElasticShiftForward(const paddle::Tensor& x, const paddle::Tensor& b,
                                                const paddle::Tensor& alpha, bool zero_one) {
  return {elastic_forward_tensor<true>(x, &b, alpha, zero_one)};
}

std::vector<paddle::Tensor> ElasticShiftBackward(const paddle::Tensor& x, const paddle::Tensor& b,
                                                 const paddle::Tensor& alpha, const paddle::Tensor& dy,
                                                 bool zero_one) {
  return elastic_backward_tensors<true>(x, &b, alpha, dy, zero_one);
}

std::vector<paddle::Tensor> LsqForward(const paddle::Tensor& x, const paddle::Tensor& step, int qn, int qp,
                                       bool half_even) {
  check_cpu_float(x, "x");
  const float s = scalar_of(step, "step");
  auto y = paddle::empty_like(x);
  const float lo = static_cast<float>(-qn), hi = static_cast<float>(qp);
  if (half_even)
    lsq_forward<true>(x.data<float>(), s, lo, hi, x.numel(), y.data<float>());
  else
    lsq_forward<false>(x.data<float>(), s, lo, hi, x.numel(), y.data<float>());
  return {y};
}

std::vector<paddle::Tensor> LsqBackward(const paddle::Tensor& x, const paddle::Tensor& step, const paddle::Tensor& dy,
                                        int qn, int qp, bool half_even) {
  check_cpu_float(x, "x");
  check_cpu_float(dy, "grad");
  const float s = scalar_of(step, "step");
  const Rows l = rows_of(x);
  auto dx = paddle::empty_like(x);
  auto ds = paddle::empty_like(step);
  const double sum = half_even ? lsq_backward<true>(x.data<float>(), s, dy.data<float>(), qn, qp, l, dx.data<float>())
                               : lsq_backward<false>(x.data<float>(), s, dy.data<float>(), qn, qp, l, dx.data<float>());
  ds.data<float>()[0] = static_cast<float>(sum * inv_sqrt(static_cast<double>(l.n) * qp));
  return {dx, ds};
}

std::vector<std::vector<int64_t>> ShapeOfX2(const std::vector<int64_t>& x, const std::vector<int64_t>&) {
  return {x};
}
std::vector<std::vector<int64_t>> ShapeOfX3(const std::vector<int64_t>& x, const std::vector<int64_t>&,
                                            const std::vector<int64_t>&) {
  return {x};
}
std::vector<paddle::DataType> DtypeOfX2(const paddle::DataType& x, const paddle::DataType&) { return {x}; }
std::vector<paddle::DataType> DtypeOfX3(const paddle::DataType& x, const paddle::DataType&, const paddle::DataType&) {
  return {x};
}

PD_BUILD_OP(bibert_elastic)
    .Inputs({"X", "Alpha"})
    .Outputs({"Out"})
    .Attrs({"zero_one: bool"})
    .SetKernelFn(PD_KERNEL(ElasticForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ShapeOfX2))
    .SetInferDtypeFn(PD_INFER_DTYPE(DtypeOfX2));
PD_BUILD_GRAD_OP(bibert_elastic)
    .Inputs({"X", "Alpha", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Alpha")})
    .Attrs({"zero_one: bool"})
    .SetKernelFn(PD_KERNEL(ElasticBackward));

PD_BUILD_OP(bibert_elastic_shift)
    .Inputs({"X", "B", "Alpha"})
    .Outputs({"Out"})
    .Attrs({"zero_one: bool"})
    .SetKernelFn(PD_KERNEL(ElasticShiftForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ShapeOfX3))
    .SetInferDtypeFn(PD_INFER_DTYPE(DtypeOfX3));
PD_BUILD_GRAD_OP(bibert_elastic_shift)
    .Inputs({"X", "B", "Alpha", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("B"), paddle::Grad("Alpha")})
    .Attrs({"zero_one: bool"})
    .SetKernelFn(PD_KERNEL(ElasticShiftBackward));

PD_BUILD_OP(bibert_lsq)
    .Inputs({"X", "Step"})
    .Outputs({"Out"})
    .Attrs({"qn: int", "qp: int", "half_even: bool"})
    .SetKernelFn(PD_KERNEL(LsqForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ShapeOfX2))
    .SetInferDtypeFn(PD_INFER_DTYPE(DtypeOfX2));
PD_BUILD_GRAD_OP(bibert_lsq)
    .Inputs({"X", "Step", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Step")})
    .Attrs({"qn: int", "qp: int", "half_even: bool"})
    .SetKernelFn(PD_KERNEL(LsqBackward));
