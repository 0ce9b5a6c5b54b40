// Fused CPU kernels for the binarization STEs (see quantizers.py for the formulas).
//
// Paddle's CPU elementwise ops run one pass per op, single-threaded; a clipped-STE sign took
// five of them (copysign, ones_like forward; abs, compare, cast, multiply backward). These do
// each direction in one multi-threaded pass, with the same values bit for bit:
//   sign:  y = signbit(x) ? -1 : +1            dx = dy * (|x| <= 1)
//   bool:  y = s > 0 ? 1 : 0                   ds = dy * (|s| <  1)
//   mask:  dx = dy * (|x| <= 1)                (the weight STE's backward)
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
