// _convolve_window on CPU.
//
// The shorter operand is the kernel, every tap of which meets every output
// (zeros outside the longer row), as torchaudio.functional.convolve computes
// it. Short rows (at most kConvolveSmall) go to the row kernels, which read
// broadcast operands in place through strides; longer rows are a depthwise
// convolution -- one group per row, the kernel reversed -- through the tiled
// conv1d driver.
// 16-bit inputs are computed in float.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "fastconv/cpu/allocation.h"
#include "fastconv/cpu/conv1d_driver.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

// Work per parallel chunk: small problems stay on the calling thread. A
// row's work counts its multiply-adds and the elements it moves (counted by
// multiply-adds alone, many tiny rows stayed on one thread where two were
// faster).
constexpr int64_t kMinRowWorkPerThread = 1 << 16;

// Leading dimensions of the broadcast, with the element strides of a and v
// along each (0 where broadcast); size-1 dimensions dropped and contiguous
// runs merged so the row walker does little work.
struct RowLayout {
  std::vector<int64_t> sizes, a_strides, v_strides;
};

RowLayout row_layout(const at::Tensor& a, const at::Tensor& v, const std::vector<int64_t>& batch) {
  const int64_t lead = static_cast<int64_t>(batch.size());
  RowLayout out;
  for (int64_t i = 0; i < lead; ++i) {
    if (batch[i] == 1) {
      continue;
    }
    const int64_t ai = i - (lead - (a.dim() - 1)), vi = i - (lead - (v.dim() - 1));
    const int64_t as = ai >= 0 && a.size(ai) != 1 ? a.stride(ai) : 0;
    const int64_t vs = vi >= 0 && v.size(vi) != 1 ? v.stride(vi) : 0;
    if (!out.sizes.empty() && out.a_strides.back() == as * batch[i] &&
        out.v_strides.back() == vs * batch[i]) {
      out.sizes.back() *= batch[i];  // merges with the dimension before it
      out.a_strides.back() = as;
      out.v_strides.back() = vs;
      continue;
    }
    out.sizes.push_back(batch[i]);
    out.a_strides.push_back(as);
    out.v_strides.push_back(vs);
  }
  return out;
}

template <typename T>
void small_rows(const at::Tensor& a, const at::Tensor& v, at::Tensor& out,
                const std::vector<int64_t>& batch, int64_t rows, int64_t offset, int64_t length) {
  RowLayout layout = row_layout(a, v, batch);
  if (static_cast<int>(layout.sizes.size()) > cpu::kConvolveMaxDims) {
    // More unmergeable broadcast dimensions than the walker holds: copy.
    std::vector<int64_t> shape = batch;
    shape.push_back(a.size(-1));
    const at::Tensor a2 = a.expand(shape).reshape({rows, a.size(-1)});
    shape.back() = v.size(-1);
    const at::Tensor v2 = v.expand(shape).reshape({rows, v.size(-1)});
    return small_rows<T>(a2.contiguous(), v2.contiguous(), out, {rows}, rows, offset, length);
  }
  cpu::ConvolveRows<T> p{};
  p.a = a.const_data_ptr<T>();
  p.v = v.const_data_ptr<T>();
  p.out = out.mutable_data_ptr<T>();
  p.n = a.size(-1);
  p.m = v.size(-1);
  p.offset = offset;
  p.length = length;
  p.streaming = out.nbytes() >= cpu::kStreamingBytes;
  p.ndim = static_cast<int>(layout.sizes.size());
  for (int d = 0; d < p.ndim; ++d) {
    p.sizes[d] = layout.sizes[d];
    p.a_strides[d] = layout.a_strides[d];
    p.v_strides[d] = layout.v_strides[d];
  }
  const int64_t work = p.n * p.m + p.n + p.m + p.length;
  at::parallel_for(0, rows, std::max<int64_t>(64, kMinRowWorkPerThread / work), [&](int64_t begin, int64_t end) {
    cpu::ConvolveRows<T> chunk = p;
    chunk.row_begin = begin;
    chunk.row_end = end;
    cpu::run(chunk);
  });
}

// Long rows: out[r] = window of a_r * v_r as a depthwise convolution with one
// group per row, v_r (the shorter) reversed as the kernel.
template <typename scalar_t>
void long_rows(const at::Tensor& a, const at::Tensor& v, at::Tensor& out, const std::vector<int64_t>& batch,
               int64_t rows, int64_t offset, int64_t length) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = a.size(-1), m = v.size(-1);
  std::vector<int64_t> shape = batch;
  shape.push_back(n);
  const at::Tensor signal = a.expand(shape).reshape({rows, n}).contiguous();
  shape.back() = m;
  const at::Tensor kernel = v.flip({-1}).expand(shape).reshape({rows, m})
                                .to(c10::CppTypeToScalarType<T>::value).contiguous();
  const cpu::Geometry g{/*batch=*/1, /*groups=*/rows, rows, n, rows, length,
                        /*kernel_size=*/m, /*stride=*/1, /*dilation=*/1, /*pad=*/m - 1 - offset};
  cpu::conv_forward<scalar_t>(g, signal.const_data_ptr<scalar_t>(), kernel.const_data_ptr<T>(),
                              nullptr, out.mutable_data_ptr<scalar_t>());
}

at::Tensor convolve_window_cpu(
    const at::Tensor& a_in, const at::Tensor& v_in, c10::SymInt offset_, c10::SymInt length_) {
  const auto d = check_convolve_window(a_in, v_in, offset_, length_);
  std::vector<int64_t> batch;
  int64_t rows = 1;
  for (const auto& s : d.batch_shape) {
    batch.push_back(s.expect_int());
    rows *= batch.back();
  }
  const int64_t n = d.n.expect_int(), m = d.m.expect_int();
  const int64_t offset = d.offset.expect_int(), length = d.length.expect_int();
  at::Tensor out = cpu::empty_output(concrete_shape(convolve_output_shape(d)), a_in.options());
  if (out.numel() == 0) {
    return out;
  }
  // Convolution commutes: v becomes the shorter row, the kernel that meets
  // every output (so NaN and Inf spread as in torchaudio's zero-padded
  // convolution, on every path). Rows must be contiguous along the last
  // dimension; leading strides stay.
  const bool swap = m > n;
  const at::Tensor& a_row = swap ? v_in : a_in;
  const at::Tensor& v_row = swap ? a_in : v_in;
  const at::Tensor a = a_row.stride(-1) == 1 ? a_row : a_row.contiguous();
  const at::Tensor v = v_row.stride(-1) == 1 ? v_row : v_row.contiguous();
  const bool small = std::max(n, m) <= cpu::kConvolveSmall && length <= 2 * cpu::kConvolveSmall;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastconv_convolve_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    if (!small) {
      long_rows<scalar_t>(a, v, out, batch, rows, offset, length);
    } else if constexpr (std::is_same_v<scalar_t, T>) {
      small_rows<T>(a, v, out, batch, rows, offset, length);
    } else {
      const auto opmath = c10::CppTypeToScalarType<T>::value;
      at::Tensor out_t = at::empty(out.sizes(), out.options().dtype(opmath));
      small_rows<T>(a.to(opmath), v.to(opmath), out_t, batch, rows, offset, length);
      out.copy_(out_t);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("_convolve_window", &convolve_window_cpu);
}

}  // namespace fastconv
