// conv2d on CPU: the paths path.h chooses among. "im2col" (+ GEMM, over
// tiles of output rows, im2col.h), "shifted" (a GEMM per tap on staged rows),
// "direct" (rows of 1-D convolutions by the conv1d micro-kernels) and
// "native" (PyTorch's own, native.h).
//
// Each tile's column matrix is built in a per-thread buffer of about
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
#include <ATen/core/Tensor.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <numeric>
#include <optional>
#include <type_traits>
#include <vector>

#include "fastconv/cpu/allocation.h"
#include "fastconv/cpu/convert_row.h"
#include "fastconv/depthwise2d.h"
#include "fastconv/cpu/im2col.h"
#include "fastconv/cpu/streaming_store.h"
#include "fastconv/cpu/tile_kernels.h"
#include "fastconv/fft/fft_conv2d.h"
#include "fastconv/native.h"
#include "fastconv/path.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

using cpu::copy_output_tile;
using cpu::im2col_tile;

// Column-matrix elements per thread: 128 Ki floats (512 KiB) fits this
// machine's 1 MiB L2 next to the GEMM's output tile.
constexpr int64_t kColumnBudget = int64_t(1) << 17;

int64_t taps_per_group(const Conv2dIntDims& d) {
  return d.in_channels_per_group() * d.kernel_size[0] * d.kernel_size[1];
}

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

// C[M x N] = A[M x K] @ B[K x N] (+ C when accumulate); row-major matrices
// with leading dimensions. float goes to oneDNN's brgemm micro-kernel (2-2.5x
// MKL's sgemm on this Zen CPU for these small, L2-resident operands); ATen
// falls back to its BLAS gemm where oneDNN cannot run it.
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

// Weights in the accumulation type, per group: (groups, C_out/g, Kc), or
// transposed to (groups, Kc, C_out/g).
at::Tensor grouped_weight(const at::Tensor& weight, const Conv2dIntDims& d, bool transposed) {
  at::Tensor w = weight.to(at::toOpMathType(weight.scalar_type()))
                     .reshape({d.groups, d.out_channels_per_group(), taps_per_group(d)});
  return (transposed ? w.transpose(1, 2) : w).contiguous();
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

// Stride-1 layers with enough channels skip im2col ("shifted GEMM").
// A tile's input rows are staged pixel-major (stage_padded_rows) at a row
// stride of S = W + pw pixels, so tile pixel j = q * S + ow (output row q,
// column ow) reads tap (kh, kw) at pixel j + kh * dh * S + kw * dw: every tap
// is one GEMM acc[cols, C_out/g] += rows[shifted, C_in/g] @ W_tap[C_in/g,
// C_out/g] on a shifted view of the same staged rows. The S - W_out extra
// pixels of each row are computed and dropped. Staging writes KH * KW times
// less than im2col; the GEMMs' K is C_in/g, and their N, C_out/g, is the
// dimension oneDNN vectorizes (so it needs a few vectors of it; ragged pixel
// counts there would cost 10-15%). path.cpp says where it can run.

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
      cpu::stage_padded_rows(d, n, g, oh0 - d.padding[0], rows + plan.halo, x, stage.data());
      f(n, g, oh0, rows, stage.data(), buffer.data(), shift);
    }
  });
}

template <typename scalar_t, typename T>
void conv2d_shifted(
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
      cpu::transpose(acc + q * S * cout_g, cout_g, y_g + q * OW, OH * OW, OW, cout_g, b);
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
at::Tensor conv2d_weight_backward_shifted(const Conv2dIntDims& d, const scalar_t* gy, const scalar_t* x) {
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

// Layers with few taps per group (C_in/g * KH * KW, like the 3-channel 3x3
// stem) or few input channels per group (depthwise) skip im2col and the GEMM,
// whose K (the taps) is then too short to run well: an output row of a group
// is a sum of 1-D convolutions of its C_in/g * KH input rows, which the conv1d
// micro-kernels (cpu/tile_kernels.h) compute straight off the staged rows,
// up to 8 output channels x 8 vectors of pixels in registers, every staged
// value loaded once per tap for all of them. path.cpp says where it can run.
// Output rows are computed in bands. A band of `rows` output rows stages the
// input rows it reads once per input channel, each zero-padded to a pitch of
// P = OW + dw * (KW - 1) and laid one after another, so that output (r, ow)
// is position r * P + ow of one long row and each tap one offset into it:
// the band is a single conv1d tile, whose P - OW extra outputs per row are
// computed and dropped. Bands of several rows (rows of fewer than
// kBandBelow outputs) do what packed rows do for conv1d: a
// depthwise 3x3 layer on 28x28 images, one output row to a tile, spent more
// on each tile's edges and calls than on its multiply-adds, and staged every
// input row KH times.
constexpr int64_t kBandBelow = 128;
// Staged input and output values of a band, per thread: they stay in L2.
constexpr int64_t kBandBytes = 192 << 10;

struct DirectBands {
  int64_t rows;     // output rows per band
  int64_t count;    // bands per (sample, group)
  int64_t pitch;    // P
  int64_t step;     // input rows from one staged row to the next (in a vertical phase)
  int64_t staged;   // staged rows per input channel and phase
  int64_t phases;   // horizontal stride phases staged
  int64_t vphases;  // vertical stride phases staged
  int64_t channel;  // scratch values per input channel
  int64_t span(int64_t r, int64_t out_width) const { return (r - 1) * pitch + out_width; }
};

// Strides: staged rows are deinterleaved, horizontal phase q holding the
// padded row's values q, q + sw, q + 2 sw, ..., so that tap kw reads phase
// kw * dw % sw at offset kw * dw / sw (the layout conv1d stages for its
// stride); a band of several rows at vertical stride sh stages vertical
// phases the same way, phase v holding input rows v, v + sh, ..., so that
// output row r reads phase kh * dh % sh at row r + kh * dh / sh. Every tap is
// still one offset into one long row.
DirectBands plan_bands(const Conv2dIntDims& d, int64_t elem_size) {
  const int64_t OH = d.out_size[0], OW = d.out_size[1], KH = d.kernel_size[0], dh = d.dilation[0];
  const int64_t sh = d.stride[0], cin_g = d.in_channels_per_group(), cout_g = d.out_channels_per_group();
  const int64_t reach = d.dilation[1] * (d.kernel_size[1] - 1);
  const int64_t phases = std::min(d.stride[1], reach + 1);
  const int64_t vphases = std::min(sh, dh * (KH - 1) + 1);
  const int64_t pitch = OW + reach / d.stride[1];
  int64_t rows = 1;
  if (OW < kBandBelow && OH > 0 && OW > 0 && d.batch > 0) {
    const int64_t staged_in = cin_g * phases * vphases;
    const int64_t fit = (kBandBytes / (elem_size * pitch) - staged_in * (dh * (KH - 1) / sh)) / (staged_in + cout_g);
    // Enough bands to keep every thread busy, when the image allows it.
    const int64_t images = d.batch * d.groups;
    const int64_t want = (4 * at::get_num_threads() + images - 1) / images;
    rows = std::clamp<int64_t>(std::min(fit, (OH + want - 1) / want), 1, std::max<int64_t>(OH, 1));
    rows = (OH + (OH + rows - 1) / rows - 1) / ((OH + rows - 1) / rows);  // equal bands
  }
  // One row: only the KH rows its taps read, dh apart, in one phase.
  if (rows == 1) {
    return DirectBands{rows, OH, pitch, dh, KH, phases, 1, phases * KH * pitch + cpu::kScratchSlack};
  }
  const int64_t staged = rows + dh * (KH - 1) / sh;
  return DirectBands{rows, (OH + rows - 1) / rows, pitch, sh, staged, phases, vphases,
                     vphases * phases * staged * pitch + cpu::kScratchSlack};
}

// Tap (c, kh, kw), the weight's own order, reads the staged rows at this offset.
std::vector<int64_t> band_offsets(const Conv2dIntDims& d, const DirectBands& b) {
  const int64_t KH = d.kernel_size[0], KW = d.kernel_size[1], sw = d.stride[1];
  std::vector<int64_t> offsets(taps_per_group(d));
  for (int64_t t = 0; t < taps_per_group(d); ++t) {
    const int64_t c = t / (KH * KW), kh = t / KW % KH, kw = t % KW, at = kw * d.dilation[1];
    const int64_t down = kh * d.dilation[0];
    const int64_t v = b.rows == 1 ? 0 : down % b.step, row = b.rows == 1 ? kh : down / b.step;
    offsets[t] = c * b.channel + ((v * b.phases + at % sw) * b.staged + row) * b.pitch + at / sw;
  }
  return offsets;
}

// Work items are (sample, group, band); each thread stages the band's input
// rows in its own buffer, in the accumulation type T, and calls
// f(n, g, oh0, rows, stage).
template <typename T, typename scalar_t, typename F>
void for_each_band(const Conv2dIntDims& d, const DirectBands& b, const scalar_t* x, F f) {
  const int64_t cin_g = d.in_channels_per_group(), H = d.in_size[0], W = d.in_size[1];
  const int64_t pw = d.padding[1], sw = d.stride[1];
  const int64_t items = d.batch * d.groups * b.count;
  const int64_t work = cin_g * d.out_channels_per_group() * d.kernel_size[0] * d.kernel_size[1] * b.rows * b.pitch;
  at::parallel_for(0, items, std::max<int64_t>(1, (int64_t(1) << 17) / std::max<int64_t>(1, work)),
                   [&](int64_t begin, int64_t end) {
    std::vector<T> stage_buffer;
    T* const stage = cpu::scratch_buffer(stage_buffer, cin_g * b.channel);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t band = item % b.count, g = item / b.count % d.groups, n = item / b.count / d.groups;
      const int64_t oh0 = band * b.rows, rows = std::min(b.rows, d.out_size[0] - oh0);
      for (int64_t c = 0; c < cin_g; ++c) {
        const scalar_t* plane = x + (n * d.in_channels + g * cin_g + c) * H * W;
        T* dst = stage + c * b.channel;
        for (int64_t phase = 0; phase < b.vphases * b.phases; ++phase) {
          const int64_t v = phase / b.phases, q = phase % b.phases;
          for (int64_t r = 0; r < b.staged; ++r, dst += b.pitch) {
            // dst[j] = x[.., ih, j * sw + q - pw], zero outside the image.
            const int64_t ih = oh0 * d.stride[0] - d.padding[0] + v + r * b.step;
            const bool inside = ih >= 0 && ih < H;
            if (sw > 1) {
              // Positions j in [lo, hi) read iw = j * sw + q - pw inside [0, W).
              const int64_t lo = std::min(b.pitch, std::max<int64_t>(0, (pw - q + sw - 1) / sw));
              const int64_t hi = inside && W - 1 + pw - q >= 0 ? std::clamp((W - 1 + pw - q) / sw + 1, lo, b.pitch) : lo;
              std::fill(dst, dst + lo, T(0));
              const scalar_t* src = plane + ih * W + q - pw;
              for (int64_t j = lo; j < hi; ++j) dst[j] = static_cast<T>(src[j * sw]);
              std::fill(dst + hi, dst + b.pitch, T(0));
              continue;
            }
            const int64_t lo = std::clamp<int64_t>(pw, 0, b.pitch);
            const int64_t hi = inside ? std::clamp<int64_t>(pw + W, lo, b.pitch) : lo;
            std::fill(dst, dst + lo, T(0));
            if (hi > lo) cpu::convert_row(plane + ih * W + (lo - pw), dst + lo, hi - lo);
            std::fill(dst + hi, dst + b.pitch, T(0));
          }
        }
        std::fill(dst, dst + cpu::kScratchSlack, T(0));
      }
      f(n, g, oh0, rows, stage);
    }
  });
}

// y = conv(x, w) + bias; w and bias in the accumulation type T.
template <typename scalar_t, typename T>
void conv2d_direct_rows(const Conv2dIntDims& d, const scalar_t* x, const T* w, const T* bias, scalar_t* y,
                        bool streaming) {
  const int64_t cout_g = d.out_channels_per_group(), taps = taps_per_group(d);
  const int64_t OH = d.out_size[0], OW = d.out_size[1];
  const DirectBands b = plan_bands(d, sizeof(T));
  const std::vector<int64_t> offsets = band_offsets(d, b);
  for_each_band<T>(d, b, x, [&](int64_t n, int64_t g, int64_t oh0, int64_t rows, const T* stage) {
    scalar_t* y_band = y + ((n * d.out_channels + g * cout_g) * OH + oh0) * OW;
    const T* w_g = w + g * cout_g * taps;
    const T* b_g = bias ? bias + g * cout_g : nullptr;
    if constexpr (std::is_same_v<scalar_t, T>) {
      if (b.rows == 1) {
        // Straight into y.
        return cpu::run(
            cpu::ForwardTile<T>{stage, offsets.data(), taps, w_g, b_g, y_band, OH * OW, cout_g, OW, streaming});
      }
    }
    // Through a [C_out/g][span] block, then row by row into y.
    thread_local std::vector<T> out_buffer;
    const int64_t span = b.span(rows, OW);
    T* out = cpu::scratch_buffer(out_buffer, cout_g * span);
    cpu::run(cpu::ForwardTile<T>{stage, offsets.data(), taps, w_g, b_g, out, span, cout_g, span});
    for (int64_t oc = 0; oc < cout_g; ++oc) {
      for (int64_t r = 0; r < rows; ++r) {
        cpu::convert_row(out + oc * span + r * b.pitch, y_band + oc * OH * OW + r * OW, OW);
      }
    }
  });
}

// Whether all n values are finite: exponent bits not all ones (an integer
// test, which the compiler vectorizes).
template <typename T>
bool all_finite(const T* v, int64_t n) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr Bits kExponent = sizeof(T) == 4 ? Bits(0x7f800000u) : Bits(0x7ff0000000000000ull);
  Bits bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    Bits bits;
    std::memcpy(&bits, v + i, sizeof(T));
    bad |= Bits((bits & kExponent) == kExponent);
  }
  return bad == 0;
}

// grad_weight of the layers conv2d_direct_rows runs, on the same bands, by the
// conv1d weight-gradient kernel; per-thread partial sums, added in thread
// order: deterministic. A band of several rows shorter than kOneRowBelow
// whose staged inputs are all finite is one long row, with grad_output staged
// at the band's pitch and zeros for the dropped outputs (depthwise 3x3: rows
// of 28 outputs one by one took 1.5x as long, at 14 outputs 1.8x; at 112 the
// copy cost more than it saved: 1.3x). Otherwise the kernel takes the band's
// rows one by one, so that no infinite input meets a dropped output's zero;
// 16-bit grad_output rows are converted into a [C_out/g][rows][OW] block first.
constexpr int64_t kOneRowBelow = 64;

template <typename scalar_t, typename T>
at::Tensor conv2d_weight_backward_direct(const Conv2dIntDims& d, const scalar_t* gy, const scalar_t* x) {
  const int64_t cin_g = d.in_channels_per_group(), cout_g = d.out_channels_per_group(), taps = taps_per_group(d);
  const int64_t OH = d.out_size[0], OW = d.out_size[1];
  const DirectBands b = plan_bands(d, sizeof(T));
  const std::vector<int64_t> offsets = band_offsets(d, b);
  const at::Tensor partial = at::zeros({at::get_num_threads(), d.out_channels, taps},
                                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  for_each_band<T>(d, b, x, [&](int64_t n, int64_t g, int64_t oh0, int64_t rows, const T* stage) {
    T* acc = partial.mutable_data_ptr<T>() + (at::get_thread_num() * d.out_channels + g * cout_g) * taps;
    const scalar_t* gy_band = gy + ((n * d.out_channels + g * cout_g) * OH + oh0) * OW;
    const bool one_row = rows > 1 && OW < kOneRowBelow && all_finite(stage, cin_g * b.channel);
    if constexpr (std::is_same_v<scalar_t, T>) {
      if (!one_row) {
        return cpu::run(
            cpu::WeightTile<T>{stage, offsets.data(), taps, gy_band, OH * OW, cout_g, OW, acc, rows, b.pitch, OW});
      }
    }
    const int64_t pitch = one_row ? b.pitch : OW, span = (rows - 1) * pitch + OW;
    thread_local std::vector<T> gy_buffer;
    T* gy_t = cpu::scratch_buffer(gy_buffer, cout_g * span);
    for (int64_t oc = 0; oc < cout_g; ++oc) {
      for (int64_t r = 0; r < rows; ++r) {
        T* dst = gy_t + oc * span + r * pitch;
        cpu::convert_row(gy_band + oc * OH * OW + r * OW, dst, OW);
        if (r + 1 < rows) std::fill(dst + OW, dst + pitch, T(0));
      }
    }
    cpu::run(one_row ? cpu::WeightTile<T>{stage, offsets.data(), taps, gy_t, span, cout_g, span, acc}
                     : cpu::WeightTile<T>{stage, offsets.data(), taps, gy_t, span, cout_g, OW, acc, rows, b.pitch, OW});
  });
  return partial.sum(0);
}

// The forward convolution by `path` (direct, shifted or im2col).
at::Tensor conv2d_forward_own(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              const Conv2dIntDims& d, Path path) {
  const at::Tensor x = input.contiguous();
  const at::Tensor w = grouped_weight(weight, d, false);
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->to(w.scalar_type()).contiguous() : at::Tensor();
  std::vector<int64_t> y_shape{d.out_channels, d.out_size[0], d.out_size[1]};
  if (d.batched) y_shape.insert(y_shape.begin(), d.batch);
  at::Tensor y = cpu::empty_output(y_shape, input.options());
  const int64_t taps = taps_per_group(d), cout_g = d.out_channels_per_group();
  const int64_t OH = d.out_size[0], P = OH * d.out_size[1];
  // A pointwise convolution reads its columns in place.
  const bool pointwise = conv2d_is_pointwise(d);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    constexpr bool same_type = std::is_same_v<scalar_t, T>;
    const T* wp = w.const_data_ptr<T>();
    const T* bp = has_bias ? b.const_data_ptr<T>() : nullptr;
    const bool streaming = y.nbytes() >= cpu::kStreamingBytes;
    if (path == Path::kShifted) {
      conv2d_shifted<scalar_t, T>(d, x.const_data_ptr<scalar_t>(), weight, bp, y.mutable_data_ptr<scalar_t>());
      return;
    }
    if (path == Path::kDirect) {
      // Streamed stores only where every output row starts on a cache line.
      conv2d_direct_rows<scalar_t, T>(d, x.const_data_ptr<scalar_t>(), wp, bp, y.mutable_data_ptr<scalar_t>(),
                                      streaming && d.out_size[1] * int64_t(sizeof(T)) % 64 == 0);
      return;
    }
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
          cpu::store_row(out + oc * P, acc + oc * cols, cols, bp ? bp[g * cout_g + oc] : T(0), true);
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
    cpu::stream_fence();
  });
  return y;
}

at::Tensor conv2d_cpu(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto d = concrete(check_conv2d(input, weight, bias, stride, padding, dilation, groups, algorithm));
  const auto layout = conv2d_memory_format(input);
  return run_selected(make_call(ConvOp::kForward, d, input), algorithm, [&](Path path) {
    switch (path) {
      case Path::kNative: return native::forward(input, weight, bias, d, 2);
      case Path::kDepthwise: return cpu::depthwise2d_forward(input, weight, bias, d).contiguous(layout);
      case Path::kFft: return fft::conv2d_forward(input, weight, bias, d).contiguous(layout);
      default: return conv2d_forward_own(input, weight, bias, d, path).contiguous(layout);
    }
  });
}

// grad_weight by `path` (not native): direct, shifted (im2col where an
// input is not finite: Inf * 0 is NaN) or im2col.
at::Tensor conv2d_weight_backward_own(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dIntDims& d,
                                      Path path) {
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  const std::vector<int64_t> weight_shape{d.out_channels, d.in_channels_per_group(), d.kernel_size[0],
                                          d.kernel_size[1]};
  if (path == Path::kDirect) {
    at::Tensor gw;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_weight_backward_cpu", [&] {
      gw = conv2d_weight_backward_direct<scalar_t, at::opmath_type<scalar_t>>(
          d, gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>());
    });
    return gw.view(weight_shape).to(x.scalar_type());
  }
  if (path == Path::kShifted && at::isfinite(x).all().item<bool>()) {
    at::Tensor gw;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_weight_backward_cpu", [&] {
      gw = conv2d_weight_backward_shifted<scalar_t, at::opmath_type<scalar_t>>(
          d, gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>());
    });
    return gw.view(weight_shape).to(x.scalar_type());
  }
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
  return partial.sum(0).transpose(1, 2).contiguous().view(weight_shape).to(x.scalar_type());
}

at::Tensor conv2d_weight_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymIntArrayRef kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto d = concrete(check_conv2d_weight_backward(
      grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm));
  return run_selected(make_call(ConvOp::kWeight, d, input), algorithm, [&](Path path) {
    switch (path) {
      case Path::kNative: return std::get<0>(native::weight_backward(grad_output, input, d, 2, false));
      case Path::kDepthwise: return cpu::depthwise2d_weight_backward(grad_output, input, d);
      case Path::kFft: return fft::conv2d_weight_backward(grad_output, input, d);
      default: return conv2d_weight_backward_own(grad_output, input, d, path);
    }
  });
}

// grad_input of a strided layer by the direct rows, phase by phase: the
// inputs at (a + sh * m, b + sw * q) take only the taps with
// (a + ph - kh * dh) % sh == 0 and (b + pw - kw * dw) % sw == 0, each reading
// grad_output at (m + eh(kh), q + ew(kw)), e(k) = (a + p - k * dl) / s. Along
// an axis these taps are k0, k0 + s / g, ... (g = gcd(s, dl)) and their
// offsets fall by dl / g, so each phase is a stride-1 convolution of
// grad_output, cropped or zero-padded, with the flipped sub-kernel at
// dilation dl / g; its result fills every sh-th row and sw-th column of
// grad_input from (a, b). The phases' taps are the kernel's, once each.
struct AxisPhase {
  std::vector<int64_t> taps;  // kernel positions, in the sub-kernel's (flipped) order
  int64_t before, after;      // grad_output positions to pad (negative: crop) on each side
  int64_t dilation, outputs;
};

AxisPhase axis_phase(int64_t a, int64_t in, int64_t out, int64_t K, int64_t s, int64_t p, int64_t dl) {
  AxisPhase ph{{}, 0, 0, dl / std::gcd(s, dl), (in - a + s - 1) / s};
  int64_t last_offset = 0;
  for (int64_t k = K - 1; k >= 0; --k) {
    const int64_t u = a + p - k * dl;
    if (((u % s) + s) % s != 0) continue;
    if (ph.taps.empty()) last_offset = u / s;  // the largest k: the smallest offset
    ph.taps.push_back(k);
  }
  // Sub-kernel tap j reads grad_output at m + last_offset + j * dilation.
  ph.before = -last_offset;
  const int64_t span = ph.taps.empty() ? 0 : ph.dilation * (int64_t(ph.taps.size()) - 1);
  ph.after = ph.outputs + span - out - ph.before;
  return ph;
}

at::Tensor conv2d_input_backward_phases(const at::Tensor& grad_output, const at::Tensor& weight,
                                        const Conv2dIntDims& d) {
  const int64_t G = d.groups, cout_g = d.out_channels_per_group(), cin_g = d.in_channels_per_group();
  // The transposed weights: (C_in, C_out / g, KH, KW).
  const at::Tensor w_t = weight.reshape({G, cout_g, cin_g, d.kernel_size[0], d.kernel_size[1]})
                             .transpose(1, 2)
                             .reshape({d.in_channels, cout_g, d.kernel_size[0], d.kernel_size[1]});
  const at::Tensor gy = d.batched ? grad_output : grad_output.unsqueeze(0);
  at::Tensor gx = at::zeros({d.batch, d.in_channels, d.in_size[0], d.in_size[1]}, gy.options());
  for (int64_t a = 0; a < std::min(d.stride[0], d.in_size[0]); ++a) {
    const AxisPhase v = axis_phase(a, d.in_size[0], d.out_size[0], d.kernel_size[0], d.stride[0], d.padding[0],
                                   d.dilation[0]);
    for (int64_t b = 0; b < std::min(d.stride[1], d.in_size[1]) && !v.taps.empty(); ++b) {
      const AxisPhase h = axis_phase(b, d.in_size[1], d.out_size[1], d.kernel_size[1], d.stride[1], d.padding[1],
                                     d.dilation[1]);
      if (h.taps.empty()) continue;
      const auto index = [&](const std::vector<int64_t>& taps) {
        return at::tensor(taps, at::TensorOptions().dtype(at::kLong));
      };
      const at::Tensor w_sub = w_t.index_select(2, index(v.taps)).index_select(3, index(h.taps));
      const at::Tensor g = at::constant_pad_nd(gy, {h.before, h.after, v.before, v.after});
      Conv2dIntDims p{d.batch, d.out_channels, d.in_channels, G, {g.size(2), g.size(3)}, {v.outputs, h.outputs},
                      {int64_t(v.taps.size()), int64_t(h.taps.size())}, {1, 1}, {0, 0}, {v.dilation, h.dilation}, true};
      gx.slice(2, a, c10::nullopt, d.stride[0]).slice(3, b, c10::nullopt, d.stride[1])
          .copy_(conv2d_forward_own(g, w_sub, std::nullopt, p, Path::kDirect));
    }
  }
  return d.batched ? gx : gx.squeeze(0);
}

// grad_input by `path` (not native): direct and shifted run the transposed
// stride-1 convolution (path.h), as im2col does for a pointwise layer (no
// col2im); otherwise im2col's GEMM and col2im.
at::Tensor conv2d_input_backward_own(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dIntDims& d,
                                     Path path) {
  if (const auto padding_t = conv2d_transposed_padding(d);
      padding_t && (path != Path::kIm2col || conv2d_is_pointwise(d))) {
    const at::Tensor w_t = weight.reshape({d.groups, d.out_channels_per_group(), d.in_channels_per_group(),
                                           d.kernel_size[0], d.kernel_size[1]})
                               .transpose(1, 2)
                               .flip({3, 4})
                               .reshape({d.in_channels, d.out_channels_per_group(), d.kernel_size[0],
                                         d.kernel_size[1]});
    return conv2d_forward_own(grad_output, w_t, std::nullopt, conv2d_transposed(d, *padding_t), path);
  }
  if (path == Path::kDirect) return conv2d_input_backward_phases(grad_output, weight, d);
  std::vector<int64_t> gx_shape{d.in_channels, d.in_size[0], d.in_size[1]};
  if (d.batched) gx_shape.insert(gx_shape.begin(), d.batch);
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor wt = grouped_weight(weight, d, true);
  // Accumulates in the op-math type: a float copy for 16-bit tensors.
  at::Tensor gx = cpu::empty_output(gx_shape, wt.options()).zero_();
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

at::Tensor conv2d_input_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::SymIntArrayRef input_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto d = concrete(check_conv2d_input_backward(
      grad_output, weight, input_size, stride, padding, dilation, groups, algorithm));
  const auto layout = conv2d_memory_format(grad_output);
  return run_selected(make_call(ConvOp::kInput, d, grad_output), algorithm, [&](Path path) {
    switch (path) {
      case Path::kNative: return native::input_backward(grad_output, weight, d, 2);
      case Path::kDepthwise: return cpu::depthwise2d_input_backward(grad_output, weight, d).contiguous(layout);
      case Path::kFft: return fft::conv2d_input_backward(grad_output, weight, d).contiguous(layout);
      default: return conv2d_input_backward_own(grad_output, weight, d, path).contiguous(layout);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_input_backward", &conv2d_input_backward_cpu);
  m.impl("conv2d_weight_backward", &conv2d_weight_backward_cpu);
}

}  // namespace fastconv
