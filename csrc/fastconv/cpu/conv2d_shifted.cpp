// conv2d by a GEMM per tap on staged rows ("shifted GEMM"): stride-1 layers
// with enough channels skip im2col.
// A tile's input rows are staged pixel-major (stage_padded_rows) at a row
// stride of S = W + pw pixels, so tile pixel j = q * S + ow (output row q,
// column ow) reads tap (kh, kw) at pixel j + kh * dh * S + kw * dw: every tap
// is one GEMM acc[cols, C_out/g] += rows[shifted, C_in/g] @ W_tap[C_in/g,
// C_out/g] on a shifted view of the same staged rows. The S - W_out extra
// pixels of each row are computed and dropped. Staging writes KH * KW times
// less than im2col; the GEMMs' K is C_in/g, and their N, C_out/g, is the
// dimension oneDNN vectorizes (so it needs a few vectors of it; ragged pixel
// counts there would cost 10-15%). path.cpp says where it can run.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "fastconv/cpu/conv2d_paths.h"
#include "fastconv/cpu/im2col.h"

namespace fastconv::cpu {
namespace {

struct ShiftedPlan {
  int64_t width;  // S = W + pw, the staged row stride in pixels
  int64_t pad;    // pw: zero pixels after the last staged row
  int64_t halo;   // dh * (KH - 1): input rows a tile reads past its own
  int64_t out_width;
  int64_t rows;   // output rows per tile
  int64_t tiles;  // tiles per (sample, group)
  int64_t cols(int64_t r) const { return (r - 1) * width + out_width; }  // pixels of a tile of r rows
  int64_t stage_pixels() const { return (rows + halo) * width + pad; }
};

// Staged rows and the accumulator share the per-thread column budget.
ShiftedPlan plan_shifted(const Conv2dIntDims& d) {
  const int64_t width = d.in_size[1] + d.padding[1], OH = d.out_size[0];
  const int64_t halo = d.dilation[0] * (d.kernel_size[0] - 1);
  const int64_t cin_g = d.in_channels_per_group(), cout_g = d.out_channels_per_group();
  int64_t rows = (kColumnBudget / width - cin_g * halo) / (cin_g + cout_g);
  // Enough tiles to keep every thread busy, when the image allows it.
  const int64_t images = d.batch * d.groups;
  const int64_t want = (4 * at::get_num_threads() + images - 1) / images;
  rows = std::clamp<int64_t>(std::min(rows, (OH + want - 1) / want), 1, std::max<int64_t>(OH, 1));
  return ShiftedPlan{width, d.padding[1], halo, d.out_size[1], rows, (OH + rows - 1) / rows};
}

// Work items are (sample, group, tile); each thread stages the tile's input
// rows in its own buffer and calls
// f(n, g, oh0, rows, stage, buffer, shift) with a buffer of buffer_size values
// and shift(tap), the offset of tap (kh, kw) in the staged rows (in values).
template <typename T, typename X, typename F>
void for_each_shifted_tile(const Conv2dIntDims& d, const ShiftedPlan& plan, const X* x, int64_t buffer_size, F f) {
  const int64_t KW = d.kernel_size[1], cin_g = d.in_channels_per_group();
  const auto shift = [&](int64_t tap) {
    return (tap / KW * d.dilation[0] * plan.width + tap % KW * d.dilation[1]) * cin_g;
  };
  at::parallel_for(0, d.batch * d.groups * plan.tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> stage(cin_g * plan.stage_pixels()), buffer(buffer_size);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item % plan.tiles, g = item / plan.tiles % d.groups, n = item / plan.tiles / d.groups;
      const int64_t oh0 = t * plan.rows, rows = std::min(plan.rows, d.out_size[0] - oh0);
      stage_padded_rows(d, n, g, oh0 - d.padding[0], rows + plan.halo, x, stage.data());
      f(n, g, oh0, rows, stage.data(), buffer.data(), shift);
    }
  });
}

template <typename scalar_t, typename T>
void shifted_forward(
    const Conv2dIntDims& d, const scalar_t* x, const at::Tensor& weight, const T* bias, scalar_t* y) {
  const ShiftedPlan plan = plan_shifted(d);
  const int64_t cin_g = d.in_channels_per_group(), cout_g = d.out_channels_per_group();
  const int64_t taps = d.kernel_size[0] * d.kernel_size[1];
  const int64_t OH = d.out_size[0], OW = d.out_size[1], S = plan.width;
  // Weights per tap: (groups, KH * KW, C_in/g, C_out/g).
  const at::Tensor w = weight.to(c10::CppTypeToScalarType<T>::value)
                           .reshape({d.groups, cout_g, cin_g, taps})
                           .permute({0, 3, 2, 1})
                           .contiguous();
  const T* wp = w.const_data_ptr<T>();
  const int64_t buffer = plan.cols(plan.rows) * cout_g;
  for_each_shifted_tile<T>(d, plan, x, buffer, [&](int64_t n, int64_t g, int64_t oh0, int64_t rows,
                                                   const T* stage, T* acc, auto shift) {
    for (int64_t tap = 0; tap < taps; ++tap) {
      matmul(plan.cols(rows), cout_g, cin_g, stage + shift(tap), cin_g, wp + (g * taps + tap) * cin_g * cout_g,
             cout_g, acc, cout_g, tap > 0);
    }
    scalar_t* y_g = y + ((n * d.out_channels + g * cout_g) * OH + oh0) * OW;
    const T* b = bias ? bias + g * cout_g : nullptr;
    for (int64_t q = 0; q < rows; ++q) {
      transpose(acc + q * S * cout_g, cout_g, y_g + q * OW, OH * OW, OW, cout_g, b);
    }
  });
}

// grad_weight on the same staged rows: per tap,
//   gw_tap[C_out/g, C_in/g] += gy_tile[C_out/g, cols] @ rows[shifted, C_in/g]
// where gy_tile holds grad_output at the staged row stride S, with zeros in
// the dropped pixels (so their inputs are multiplied by zero: callers make
// sure the input is finite). Per-thread partial sums, (groups, KH*KW,
// C_out/g, C_in/g) each, are added in a fixed order: deterministic.
template <typename scalar_t, typename T>
at::Tensor shifted_weight(const Conv2dIntDims& d, const scalar_t* gy, const scalar_t* x) {
  const ShiftedPlan plan = plan_shifted(d);
  const int64_t cin_g = d.in_channels_per_group(), cout_g = d.out_channels_per_group();
  const int64_t taps = d.kernel_size[0] * d.kernel_size[1];
  const int64_t OH = d.out_size[0], OW = d.out_size[1], S = plan.width;
  const int64_t ld = plan.cols(plan.rows);
  const at::Tensor partial = at::zeros(
      {at::get_num_threads(), d.groups, taps, cout_g, cin_g}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  for_each_shifted_tile<T>(d, plan, x, cout_g * ld, [&](int64_t n, int64_t g, int64_t oh0, int64_t rows,
                                                        const T* stage, T* gy_tile, auto shift) {
    const int64_t cols = plan.cols(rows);
    for (int64_t oc = 0; oc < cout_g; ++oc) {
      const scalar_t* gy_c = gy + ((n * d.out_channels + g * cout_g + oc) * OH + oh0) * OW;
      T* t = gy_tile + oc * ld;
      for (int64_t q = 0; q < rows; ++q) {
        std::copy(gy_c + q * OW, gy_c + (q + 1) * OW, t + q * S);
        std::fill(t + q * S + OW, t + std::min((q + 1) * S, cols), T(0));
      }
    }
    T* gw = partial.mutable_data_ptr<T>() + (at::get_thread_num() * d.groups + g) * taps * cout_g * cin_g;
    for (int64_t tap = 0; tap < taps; ++tap) {
      matmul(cout_g, cin_g, cols, gy_tile, ld, stage + shift(tap), cin_g, gw + tap * cout_g * cin_g, cin_g, true);
    }
  });
  return partial.sum(0).permute({0, 2, 3, 1}).reshape({d.out_channels, cin_g, d.kernel_size[0], d.kernel_size[1]});
}

}  // namespace

void conv2d_shifted(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& b, const Conv2dIntDims& d,
                    at::Tensor& y) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    shifted_forward<scalar_t, T>(d, x.const_data_ptr<scalar_t>(), weight, b.defined() ? b.const_data_ptr<T>() : nullptr,
                                 y.mutable_data_ptr<scalar_t>());
  });
}

at::Tensor conv2d_weight_backward_shifted(const at::Tensor& gy, const at::Tensor& x, const Conv2dIntDims& d) {
  at::Tensor gw;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_weight_backward_cpu", [&] {
    gw = shifted_weight<scalar_t, at::opmath_type<scalar_t>>(d, gy.const_data_ptr<scalar_t>(),
                                                             x.const_data_ptr<scalar_t>());
  });
  return gw.to(x.scalar_type());
}

}  // namespace fastconv::cpu
