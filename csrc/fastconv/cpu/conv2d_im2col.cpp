// conv2d by im2col + GEMM over tiles of output rows (im2col.h). Each tile's
// column matrix is built in a per-thread buffer of about
// kColumnBudget elements, so it stays in L2 while the GEMM (matmul below)
// consumes it:
//   forward      acc[C_out/g, cols] = W_g[C_out/g, Kc] @ col[Kc, cols]; y = acc + bias
//   grad_weight  gw_g^T += col @ gy_tile^T[cols, C_out/g]  (per-thread partial sums)
//   grad_input   col = W_g^T @ gy_tile; gx += col2im(col), in two passes of
//                alternating tiles so that no two threads add to the same row.
// Extra memory: per thread, (Kc + C_out/g) * cols values of the accumulation
// type; grad_weight adds threads * weight.numel() partial sums; 16-bit
// grad_input accumulates in a float copy of grad_input.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "fastconv/cpu/allocation.h"
#include "fastconv/cpu/conv2d_paths.h"
#include "fastconv/cpu/im2col.h"
#include "fastconv/cpu/streaming_store.h"

namespace fastconv::cpu {
namespace {

struct TilePlan {
  int64_t rows;   // output rows per tile
  int64_t tiles;  // tiles per group
  int64_t tile_rows(int64_t tile, const Conv2dIntDims& d) const {
    return std::min(rows, d.batch * d.out_size[0] - tile * rows);
  }
};

// min_rows: the fewest rows a tile may have (col2im needs tiles two apart to
// touch disjoint input rows).
TilePlan plan_tiles(const Conv2dIntDims& d, int64_t min_rows) {
  const int64_t total_rows = d.batch * d.out_size[0];
  int64_t rows = std::max<int64_t>(1, kColumnBudget / (taps_per_group(d) * d.out_size[1]));
  // Enough tiles to keep every thread busy, when the image allows it.
  const int64_t want_tiles = (4 * at::get_num_threads() + d.groups - 1) / d.groups;
  rows = std::min(rows, std::max<int64_t>(1, total_rows / want_tiles));
  rows = std::clamp<int64_t>(std::max(rows, min_rows), 1, std::max<int64_t>(total_rows, 1));
  return TilePlan{rows, (total_rows + rows - 1) / rows};
}

// Work items are (group, tile) pairs; each thread gets per-thread column and
// output-tile buffers and calls f(group, row0, rows, col, tile) per item.
template <typename T, typename F>
void for_each_tile(
    const Conv2dIntDims& d, const TilePlan& plan, int64_t first, int64_t step, F f) {
  const int64_t per_group = (plan.tiles - first + step - 1) / step;
  const int64_t max_cols = plan.rows * d.out_size[1];
  at::parallel_for(0, d.groups * per_group, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> col(taps_per_group(d) * max_cols);
    std::vector<T> tile(d.out_channels_per_group() * max_cols);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item / per_group, t = first + step * (item % per_group);
      f(g, t * plan.rows, plan.tile_rows(t, d), col.data(), tile.data());
    }
  });
}

}  // namespace

void matmul(
    int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
    int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, accumulate, A, B, C);
}

void matmul(
    int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* B,
    int64_t ldb, double* C, int64_t ldc, bool accumulate) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor a = at::from_blob(const_cast<double*>(A), {M, K}, {lda, 1}, opts);
  const at::Tensor b = at::from_blob(const_cast<double*>(B), {K, N}, {ldb, 1}, opts);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (accumulate) {
    c.addmm_(a, b);
  } else {
    at::mm_out(c, a, b);
  }
}

at::Tensor grouped_weight(const at::Tensor& weight, const Conv2dIntDims& d, bool transposed) {
  at::Tensor w = weight.to(at::toOpMathType(weight.scalar_type()))
                     .reshape({d.groups, d.out_channels_per_group(), taps_per_group(d)});
  return (transposed ? w.transpose(1, 2) : w).contiguous();
}

void conv2d_im2col(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const Conv2dIntDims& d,
                   at::Tensor& y) {
  const int64_t taps = taps_per_group(d), cout_g = d.out_channels_per_group();
  const int64_t OH = d.out_size[0], P = OH * d.out_size[1];
  // A pointwise convolution reads its columns in place.
  const bool pointwise = conv2d_is_pointwise(d);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    constexpr bool same_type = std::is_same_v<scalar_t, T>;
    const T* wp = w.const_data_ptr<T>();
    const T* bp = b.defined() ? b.const_data_ptr<T>() : nullptr;
    const bool streaming = y.nbytes() >= kStreamingBytes;
    for_each_tile<T>(d, plan_tiles(d, 1), 0, 1, [&](int64_t g, int64_t row0, int64_t rows, T* col, T* acc) {
      const int64_t cols = rows * d.out_size[1];
      const int64_t n = row0 / OH, first = row0 % OH * d.out_size[1];
      // Within one sample, the tile's outputs of a channel are contiguous in y.
      const bool one_sample = (row0 + rows - 1) / OH == n;
      const T* columns = col;
      int64_t ld_columns = cols;
      if constexpr (same_type) {
        if (pointwise && one_sample) {
          columns = x.const_data_ptr<T>() + (n * d.in_channels + g * taps) * P + first;
          ld_columns = P;
        }
      }
      if (columns == col) {
        im2col_tile<false, const scalar_t, T>(d, g, row0, rows, x.const_data_ptr<scalar_t>(), col);
      }
      if (same_type && one_sample && streaming) {
        // Through the L2-resident tile, then streamed to y.
        T* out = reinterpret_cast<T*>(y.mutable_data_ptr<scalar_t>()) + (n * d.out_channels + g * cout_g) * P + first;
        matmul(cout_g, cols, taps, wp + g * cout_g * taps, taps, columns, ld_columns, acc, cols, false);
        for (int64_t oc = 0; oc < cout_g; ++oc) {
          store_row(out + oc * P, acc + oc * cols, cols, bp ? bp[g * cout_g + oc] : T(0), true);
        }
      } else if (same_type && one_sample) {
        T* out = reinterpret_cast<T*>(y.mutable_data_ptr<scalar_t>()) + (n * d.out_channels + g * cout_g) * P + first;
        matmul(cout_g, cols, taps, wp + g * cout_g * taps, taps, columns, ld_columns, out, P, false);
        for (int64_t oc = 0; bp && oc < cout_g; ++oc) {
          const T bias_value = bp[g * cout_g + oc];
          for (int64_t i = 0; i < cols; ++i) out[oc * P + i] += bias_value;
        }
      } else {
        matmul(cout_g, cols, taps, wp + g * cout_g * taps, taps, columns, ld_columns, acc, cols, false);
        copy_output_tile<false, scalar_t, T>(d, g, row0, rows, y.mutable_data_ptr<scalar_t>(), acc, bp);
      }
    });
    stream_fence();
  });
}

at::Tensor conv2d_weight_backward_im2col(const at::Tensor& gy, const at::Tensor& x, const Conv2dIntDims& d) {
  const auto opmath = at::toOpMathType(x.scalar_type());
  const int64_t taps = taps_per_group(d), cout_g = d.out_channels_per_group();
  // Per-thread partial sums of gw^T (groups, Kc, C_out/g), added in a fixed
  // order: deterministic.
  const at::Tensor partial =
      at::zeros({at::get_num_threads(), d.groups, taps, cout_g}, x.options().dtype(opmath));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_weight_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    for_each_tile<T>(d, plan_tiles(d, 1), 0, 1, [&](int64_t g, int64_t row0, int64_t rows, T* col, T* gy_t) {
      const int64_t cols = rows * d.out_size[1];
      im2col_tile<false, const scalar_t, T>(d, g, row0, rows, x.const_data_ptr<scalar_t>(), col);
      copy_output_tile<true, const scalar_t, T>(d, g, row0, rows, gy.const_data_ptr<scalar_t>(), gy_t, nullptr, true);
      T* gw_t = partial.mutable_data_ptr<T>() + (at::get_thread_num() * d.groups + g) * taps * cout_g;
      matmul(taps, cout_g, cols, col, cols, gy_t, cout_g, gw_t, cout_g, true);
    });
  });
  return partial.sum(0).transpose(1, 2).contiguous()
      .view({d.out_channels, d.in_channels_per_group(), d.kernel_size[0], d.kernel_size[1]})
      .to(x.scalar_type());
}

at::Tensor conv2d_input_backward_im2col(const at::Tensor& gy, const at::Tensor& weight, const Conv2dIntDims& d) {
  std::vector<int64_t> gx_shape{d.in_channels, d.in_size[0], d.in_size[1]};
  if (d.batched) gx_shape.insert(gx_shape.begin(), d.batch);
  const at::Tensor wt = grouped_weight(weight, d, true);
  // Accumulates in the op-math type: a float copy for 16-bit tensors.
  at::Tensor gx = empty_output(gx_shape, wt.options()).zero_();
  // Tiles two apart must reach disjoint input rows: rows * sh >= dh * (KH - 1).
  const int64_t reach = d.dilation[0] * (d.kernel_size[0] - 1);
  const TilePlan plan = plan_tiles(d, (reach + d.stride[0] - 1) / d.stride[0]);
  const int64_t taps = taps_per_group(d), cout_g = d.out_channels_per_group();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "fastconv_conv2d_input_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const T* wtp = wt.const_data_ptr<T>();
    for (int64_t parity = 0; parity < 2; ++parity) {
      for_each_tile<T>(d, plan, parity, 2, [&](int64_t g, int64_t row0, int64_t rows, T* col, T* gy_t) {
        const int64_t cols = rows * d.out_size[1];
        copy_output_tile<true, const scalar_t, T>(d, g, row0, rows, gy.const_data_ptr<scalar_t>(), gy_t, nullptr);
        matmul(taps, cols, cout_g, wtp + g * taps * cout_g, cout_g, gy_t, cols, col, cols, false);
        im2col_tile<true, T, T>(d, g, row0, rows, gx.mutable_data_ptr<T>(), col);
      });
    }
  });
  return gx.to(gy.scalar_type());
}

}  // namespace fastconv::cpu
