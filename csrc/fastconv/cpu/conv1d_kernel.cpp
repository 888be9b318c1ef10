// Direct conv1d on CPU: forward, grad_input and grad_weight.
//
// Every kernel works on tiles of kTile positions of one output row, so the
// accumulator stays in L1 and long single-channel signals still split into
// independent work items. A tap (one weight value) is an axpy over the tile;
// with stride 1 both sides are contiguous and the loop vectorizes.
// 16-bit inputs accumulate in float (at::opmath_type).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "fastconv/shape.h"

namespace fastconv {
namespace {

constexpr int64_t kTile = 512;
// Multiply-adds below which a parallel range stays on the calling thread:
// waking a second thread costs more than small problems take.
constexpr int64_t kMinWorkPerThread = 1 << 16;

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, work_per_item));
}

// Range [first, end) of l >= 0 with l * stride + offset in [lo, hi).
struct TapRange {
  int64_t first;
  int64_t end;
};

inline TapRange tap_range(int64_t offset, int64_t stride, int64_t lo, int64_t hi) {
  const int64_t a = lo - offset;
  const int64_t b = hi - offset;
  const int64_t first = a <= 0 ? 0 : (a + stride - 1) / stride;
  const int64_t end = b <= 0 ? 0 : (b - 1) / stride + 1;
  return {first, end};
}

// acc[i * acc_stride] += w * src[i * src_stride] for i in [0, n).
template <typename acc_t, typename src_t>
inline void axpy(
    acc_t* __restrict__ acc, int64_t acc_stride, const src_t* __restrict__ src,
    int64_t src_stride, int64_t n, acc_t w) {
  if (acc_stride == 1 && src_stride == 1) {
    for (int64_t i = 0; i < n; ++i) {
      acc[i] += w * static_cast<acc_t>(src[i]);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      acc[i * acc_stride] += w * static_cast<acc_t>(src[i * src_stride]);
    }
  }
}

// sum_i a[i] * b[i * b_stride] for i in [0, n).
template <typename acc_t, typename src_t>
inline acc_t dot(const src_t* __restrict__ a, const src_t* __restrict__ b,
                 int64_t b_stride, int64_t n) {
  acc_t sum = 0;
  if (b_stride == 1) {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) {
      sum += static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i]);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      sum += static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i * b_stride]);
    }
  }
  return sum;
}

// A tile accumulator: the output itself when it is already opmath_t,
// otherwise a float buffer converted on store.
template <typename scalar_t>
struct TileAccumulator {
  using opmath_t = at::opmath_type<scalar_t>;
  static constexpr bool kDirect = std::is_same_v<scalar_t, opmath_t>;
  std::vector<opmath_t> buffer;

  TileAccumulator() : buffer(kDirect ? 0 : kTile) {}

  opmath_t* begin(scalar_t* out, int64_t n, opmath_t init) {
    opmath_t* acc = kDirect ? reinterpret_cast<opmath_t*>(out) : buffer.data();
    std::fill(acc, acc + n, init);
    return acc;
  }

  void store(scalar_t* out, const opmath_t* acc, int64_t n) {
    if constexpr (!kDirect) {
      for (int64_t i = 0; i < n; ++i) {
        out[i] = static_cast<scalar_t>(acc[i]);
      }
    }
  }
};

int64_t num_tiles(int64_t length) {
  return (length + kTile - 1) / kTile;
}

template <typename scalar_t>
void conv1d_forward_kernel(
    const Conv1dIntDims& d, const scalar_t* x, const scalar_t* w,
    const scalar_t* bias, scalar_t* y) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t cin_g = d.in_channels_per_group();
  const int64_t cout_g = d.out_channels_per_group();
  const int64_t K = d.kernel_size;
  const int64_t tiles = num_tiles(d.out_length);
  const int64_t items = d.batch * d.out_channels * tiles;
  const int64_t work = cin_g * K * std::min(kTile, d.out_length);
  at::parallel_for(0, items, grain_for(work), [&](int64_t begin, int64_t end) {
    TileAccumulator<scalar_t> tile_acc;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item % tiles;
      const int64_t row = item / tiles;  // b * C_out + oc
      const int64_t oc = row % d.out_channels;
      const int64_t b = row / d.out_channels;
      const int64_t g = oc / cout_g;
      const int64_t l0 = t * kTile;
      const int64_t l1 = std::min(l0 + kTile, d.out_length);
      scalar_t* out = y + row * d.out_length + l0;
      opmath_t* acc = tile_acc.begin(
          out, l1 - l0, bias ? static_cast<opmath_t>(bias[oc]) : opmath_t(0));
      for (int64_t icg = 0; icg < cin_g; ++icg) {
        const scalar_t* x_row =
            x + (b * d.in_channels + g * cin_g + icg) * d.in_length;
        const scalar_t* w_row = w + (oc * cin_g + icg) * K;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t offset = k * d.dilation - d.padding;
          const TapRange r = tap_range(offset, d.stride, 0, d.in_length);
          const int64_t lo = std::max(l0, r.first);
          const int64_t hi = std::min(l1, r.end);
          if (hi > lo) {
            axpy(acc + (lo - l0), 1, x_row + lo * d.stride + offset, d.stride,
                 hi - lo, static_cast<opmath_t>(w_row[k]));
          }
        }
      }
      tile_acc.store(out, acc, l1 - l0);
    }
  });
}

template <typename scalar_t>
void conv1d_input_backward_kernel(
    const Conv1dIntDims& d, const scalar_t* gy, const scalar_t* w,
    scalar_t* gx) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t cin_g = d.in_channels_per_group();
  const int64_t cout_g = d.out_channels_per_group();
  const int64_t K = d.kernel_size;
  const int64_t tiles = num_tiles(d.in_length);
  const int64_t items = d.batch * d.in_channels * tiles;
  const int64_t work = cout_g * K * std::min(kTile, d.in_length) / d.stride;
  at::parallel_for(0, items, grain_for(work), [&](int64_t begin, int64_t end) {
    TileAccumulator<scalar_t> tile_acc;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item % tiles;
      const int64_t row = item / tiles;  // b * C_in + ic
      const int64_t ic = row % d.in_channels;
      const int64_t b = row / d.in_channels;
      const int64_t g = ic / cin_g;
      const int64_t icg = ic % cin_g;
      const int64_t i0 = t * kTile;
      const int64_t i1 = std::min(i0 + kTile, d.in_length);
      scalar_t* out = gx + row * d.in_length + i0;
      opmath_t* acc = tile_acc.begin(out, i1 - i0, opmath_t(0));
      for (int64_t ocg = 0; ocg < cout_g; ++ocg) {
        const int64_t oc = g * cout_g + ocg;
        const scalar_t* gy_row = gy + (b * d.out_channels + oc) * d.out_length;
        const scalar_t* w_row = w + (oc * cin_g + icg) * K;
        for (int64_t k = 0; k < K; ++k) {
          // Output l reads input i = l * stride + offset.
          const int64_t offset = k * d.dilation - d.padding;
          const TapRange r = tap_range(offset, d.stride, i0, i1);
          const int64_t hi = std::min(d.out_length, r.end);
          if (hi > r.first) {
            axpy(acc + (r.first * d.stride + offset - i0), d.stride,
                 gy_row + r.first, 1, hi - r.first,
                 static_cast<opmath_t>(w_row[k]));
          }
        }
      }
      tile_acc.store(out, acc, i1 - i0);
    }
  });
}

template <typename scalar_t>
void conv1d_weight_backward_kernel(
    const Conv1dIntDims& d, const scalar_t* gy, const scalar_t* x,
    scalar_t* gw) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t cin_g = d.in_channels_per_group();
  const int64_t cout_g = d.out_channels_per_group();
  const int64_t K = d.kernel_size;
  const int64_t pairs = d.out_channels * cin_g;  // (oc, icg)
  // Few weight rows: split the batch too, into partial sums reduced below.
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = pairs >= threads
      ? 1
      : std::max<int64_t>(1, std::min(d.batch, threads / pairs));
  const int64_t batch_per_chunk = (d.batch + chunks - 1) / std::max<int64_t>(1, chunks);
  std::vector<opmath_t> partial(chunks * pairs * K, opmath_t(0));
  const int64_t work = batch_per_chunk * K * d.out_length;
  at::parallel_for(0, chunks * pairs, grain_for(work), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t pair = item % pairs;
      const int64_t chunk = item / pairs;
      const int64_t oc = pair / cin_g;
      const int64_t icg = pair % cin_g;
      const int64_t ic = (oc / cout_g) * cin_g + icg;
      opmath_t* acc = partial.data() + item * K;
      const int64_t b_end = std::min(d.batch, (chunk + 1) * batch_per_chunk);
      for (int64_t b = chunk * batch_per_chunk; b < b_end; ++b) {
        const scalar_t* gy_row = gy + (b * d.out_channels + oc) * d.out_length;
        const scalar_t* x_row = x + (b * d.in_channels + ic) * d.in_length;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t offset = k * d.dilation - d.padding;
          const TapRange r = tap_range(offset, d.stride, 0, d.in_length);
          const int64_t hi = std::min(d.out_length, r.end);
          if (hi > r.first) {
            acc[k] += dot<opmath_t>(
                gy_row + r.first, x_row + r.first * d.stride + offset,
                d.stride, hi - r.first);
          }
        }
      }
    }
  });
  for (int64_t i = 0; i < pairs * K; ++i) {
    opmath_t sum = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      sum += partial[c * pairs * K + i];
    }
    gw[i] = static_cast<scalar_t>(sum);
  }
}

at::Tensor conv1d_cpu(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups) {
  const auto sym =
      check_conv1d(input, weight, bias, stride, padding, dilation, groups);
  const auto d = concrete(sym);
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty_symint(conv1d_output_shape(sym), input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv1d_cpu", [&] {
        conv1d_forward_kernel<scalar_t>(
            d, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
            has_bias ? b.const_data_ptr<scalar_t>() : nullptr,
            y.mutable_data_ptr<scalar_t>());
      });
  return y;
}

at::Tensor conv1d_input_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::SymInt input_length,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups) {
  const auto sym = check_conv1d_input_backward(
      grad_output, weight, input_length, stride, padding, dilation, groups);
  const auto d = concrete(sym);
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor w = weight.contiguous();
  at::Tensor gx = at::empty_symint(conv1d_input_shape(sym), gy.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, gy.scalar_type(),
      "fastconv_conv1d_input_backward_cpu", [&] {
        conv1d_input_backward_kernel<scalar_t>(
            d, gy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
            gx.mutable_data_ptr<scalar_t>());
      });
  return gx;
}

at::Tensor conv1d_weight_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymInt kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups) {
  const auto sym = check_conv1d_weight_backward(
      grad_output, input, kernel_size, stride, padding, dilation, groups);
  const auto d = concrete(sym);
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  at::Tensor gw = at::empty_symint(conv1d_weight_shape(sym), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(),
      "fastconv_conv1d_weight_backward_cpu", [&] {
        conv1d_weight_backward_kernel<scalar_t>(
            d, gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
            gw.mutable_data_ptr<scalar_t>());
      });
  return gw;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv1d", &conv1d_cpu);
  m.impl("conv1d_input_backward", &conv1d_input_backward_cpu);
  m.impl("conv1d_weight_backward", &conv1d_weight_backward_cpu);
}

}  // namespace fastconv
