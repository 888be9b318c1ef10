// _convolve_window on CUDA. Broadcast operands are expanded to contiguous
// rows first. Short rows (both at most kShortRow long) go through
// short_rows_kernel: a block stages its rows of a and v in shared memory
// with coalesced loads, a thread convolves one row into shared memory, and
// the block's outputs leave with coalesced stores. Longer rows take one
// thread per output. Accumulates in at::opmath_type; current stream; 64-bit
// indexing.
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
constexpr int64_t kMaxBlocks = int64_t(1) << 30;
constexpr int kShortRow = 16;
constexpr int kShortRowThreads = 128;
constexpr int64_t kShortRowSharedBytes = 40 << 10;

// Full-convolution position i of a row: every tap of v (the shorter row)
// meets every output, zeros outside a, so NaN and Inf spread as on the CPU.
template <typename acc_t, typename A, typename V>
__device__ __forceinline__ acc_t full_at(const A* a, const V* v, int64_t n, int64_t m, int64_t i) {
  acc_t acc = 0;
  if (i >= 0 && i < n + m - 1) {
    for (int64_t k = 0; k < m; ++k) {
      const int64_t j = i - k;
      acc += static_cast<acc_t>(v[k]) * (j >= 0 && j < n ? static_cast<acc_t>(a[j]) : acc_t(0));
    }
  }
  return acc;
}

template <typename scalar_t>
__global__ void convolve_window_kernel(
    const scalar_t* __restrict__ a, const scalar_t* __restrict__ v, scalar_t* __restrict__ out,
    int64_t rows, int64_t n, int64_t m, int64_t offset, int64_t length) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = rows * length;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = idx % length, r = idx / length;
    out[idx] = static_cast<scalar_t>(full_at<acc_t>(a + r * n, v + r * m, n, m, t + offset));
  }
}

// Odd row strides in shared memory: a thread per row reads without bank conflicts.
constexpr int odd(int x) { return x | 1; }

template <typename scalar_t>
__global__ void __launch_bounds__(kShortRowThreads) short_rows_kernel(
    const scalar_t* __restrict__ a, const scalar_t* __restrict__ v, scalar_t* __restrict__ out,
    int64_t rows, int n, int m, int64_t offset, int length, int rows_per_block) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int sa = odd(n), sv = odd(m), so = odd(length);
  acc_t* as = reinterpret_cast<acc_t*>(smem);
  acc_t* vs = as + rows_per_block * sa;
  acc_t* os = vs + rows_per_block * sv;
  const int tid = threadIdx.x;
  for (int64_t r0 = blockIdx.x * int64_t(rows_per_block); r0 < rows; r0 += int64_t(gridDim.x) * rows_per_block) {
    const int nr = static_cast<int>(std::min<int64_t>(rows_per_block, rows - r0));
    __syncthreads();
    for (int i = tid; i < nr * n; i += kShortRowThreads) as[i / n * sa + i % n] = static_cast<acc_t>(a[r0 * n + i]);
    for (int i = tid; i < nr * m; i += kShortRowThreads) vs[i / m * sv + i % m] = static_cast<acc_t>(v[r0 * m + i]);
    __syncthreads();
    for (int r = tid; r < nr; r += kShortRowThreads) {
      for (int t = 0; t < length; ++t) {
        os[r * so + t] = full_at<acc_t>(as + r * sa, vs + r * sv, n, m, t + offset);
      }
    }
    __syncthreads();
    for (int i = tid; i < nr * length; i += kShortRowThreads) {
      out[r0 * length + i] = static_cast<scalar_t>(os[i / length * so + i % length]);
    }
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
  const int64_t offset = d.offset.expect_int(), length = d.length.expect_int();
  shape.push_back(n);
  const at::Tensor a_rows = a.expand(shape).reshape({rows, n}).contiguous();
  shape.back() = m;
  const at::Tensor v_rows = v.expand(shape).reshape({rows, m}).contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastconv_convolve_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (n <= kShortRow && length <= 2 * kShortRow) {
      const int64_t per_row = (odd(n) + odd(m) + odd(length)) * int64_t(sizeof(acc_t));
      const int rows_per_block = static_cast<int>(std::min<int64_t>(kShortRowThreads, kShortRowSharedBytes / per_row));
      const int64_t blocks = std::min((rows + rows_per_block - 1) / rows_per_block, kMaxBlocks);
      short_rows_kernel<scalar_t><<<blocks, kShortRowThreads, rows_per_block * per_row, stream>>>(
          a_rows.const_data_ptr<scalar_t>(), v_rows.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          rows, static_cast<int>(n), static_cast<int>(m), offset, static_cast<int>(length), rows_per_block);
    } else {
      const int64_t blocks = std::min((out.numel() + kThreads - 1) / kThreads, kMaxBlocks);
      convolve_window_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          a_rows.const_data_ptr<scalar_t>(), v_rows.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          rows, n, m, offset, length);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("_convolve_window", &convolve_window_cuda);
}

}  // namespace fastconv
