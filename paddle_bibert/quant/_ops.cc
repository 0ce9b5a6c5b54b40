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
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

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
