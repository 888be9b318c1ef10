// _convolve_window on CUDA: one thread per output element over rows made
// contiguous (broadcast operands are expanded first). Accumulates in
// at::opmath_type; current stream; 64-bit indexing.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "fastconv/shape.h"

namespace fastconv {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void convolve_window_kernel(
    const scalar_t* __restrict__ a, const scalar_t* __restrict__ v, scalar_t* __restrict__ out,
    int64_t rows, int64_t n, int64_t m, int64_t offset, int64_t length) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t total = rows * length;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = idx % length;
    const int64_t r = idx / length;
    const int64_t i = t + offset;  // index into the full convolution
    const scalar_t* a_row = a + r * n;
    const scalar_t* v_row = v + r * m;
    opmath_t acc = 0;
    if (i >= 0 && i < n + m - 1) {
      // Every tap of v (the shorter row) meets every output, zeros outside a,
      // so NaN and Inf spread as on the CPU.
      for (int64_t k = 0; k < m; ++k) {
        const int64_t j = i - k;
        const opmath_t x = j >= 0 && j < n ? static_cast<opmath_t>(a_row[j]) : opmath_t(0);
        acc += static_cast<opmath_t>(v_row[k]) * x;
      }
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

at::Tensor convolve_window_cuda(
    const at::Tensor& a_in, const at::Tensor& v_in, c10::SymInt offset_, c10::SymInt length_) {
  const auto d = check_convolve_window(a_in, v_in, offset_, length_);
  // Convolution commutes: v becomes the shorter row (the kernel).
  const bool swap = v_in.size(-1) > a_in.size(-1);
  const at::Tensor& a = swap ? v_in : a_in;
  const at::Tensor& v = swap ? a_in : v_in;
  c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty_symint(convolve_output_shape(d), a.options());
  if (out.numel() == 0) {
    return out;
  }
  std::vector<int64_t> shape;
  int64_t rows = 1;
  for (const auto& s : d.batch_shape) {
    shape.push_back(s.expect_int());
    rows *= shape.back();
  }
  const int64_t n = a.size(-1), m = v.size(-1);
  shape.push_back(n);
  const at::Tensor a_rows = a.expand(shape).reshape({rows, n}).contiguous();
  shape.back() = m;
  const at::Tensor v_rows = v.expand(shape).reshape({rows, m}).contiguous();
  const int64_t blocks = std::min<int64_t>((out.numel() + kThreads - 1) / kThreads, 65535LL * 8);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastconv_convolve_cuda", [&] {
    convolve_window_kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        a_rows.const_data_ptr<scalar_t>(), v_rows.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(), rows, n, m, d.offset.expect_int(), d.length.expect_int());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("_convolve_window", &convolve_window_cuda);
}

}  // namespace fastconv
