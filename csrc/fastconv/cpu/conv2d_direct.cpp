// conv2d by rows of 1-D convolutions ("direct"). Layers with few taps per group (C_in/g * KH * KW, like the 3-channel 3x3
// stem) or few input channels per group (depthwise) skip im2col and the GEMM,
// whose K (the taps) is then too short to run well: an output row of a group
// is a sum of 1-D convolutions of its C_in/g * KH input rows, which the conv1d
// micro-kernels (cpu/tile_kernels.h) compute straight off the staged rows,
// up to 8 output channels x 8 vectors of pixels in registers, every staged
// value loaded once per tap for all of them. path.cpp says where it can run.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "fastconv/cpu/allocation.h"
#include "fastconv/cpu/conv2d_paths.h"
#include "fastconv/cpu/convert_row.h"
#include "fastconv/cpu/streaming_store.h"
#include "fastconv/cpu/tile_kernels.h"

namespace fastconv::cpu {
namespace {

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
    return DirectBands{rows, OH, pitch, dh, KH, phases, 1, phases * KH * pitch + kScratchSlack};
  }
  const int64_t staged = rows + dh * (KH - 1) / sh;
  return DirectBands{rows, (OH + rows - 1) / rows, pitch, sh, staged, phases, vphases,
                     vphases * phases * staged * pitch + kScratchSlack};
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
    T* const stage = scratch_buffer(stage_buffer, cin_g * b.channel);
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
            if (hi > lo) convert_row(plane + ih * W + (lo - pw), dst + lo, hi - lo);
            std::fill(dst + hi, dst + b.pitch, T(0));
          }
        }
        std::fill(dst, dst + kScratchSlack, T(0));
      }
      f(n, g, oh0, rows, stage);
    }
  });
}

// y = conv(x, w) + bias; w and bias in the accumulation type T.
template <typename scalar_t, typename T>
void direct_forward(const Conv2dIntDims& d, const scalar_t* x, const T* w, const T* bias, scalar_t* y,
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
        return run(
            ForwardTile<T>{stage, offsets.data(), taps, w_g, b_g, y_band, OH * OW, cout_g, OW, streaming});
      }
    }
    // Through a [C_out/g][span] block, then row by row into y.
    thread_local std::vector<T> out_buffer;
    const int64_t span = b.span(rows, OW);
    T* out = scratch_buffer(out_buffer, cout_g * span);
    run(ForwardTile<T>{stage, offsets.data(), taps, w_g, b_g, out, span, cout_g, span});
    for (int64_t oc = 0; oc < cout_g; ++oc) {
      for (int64_t r = 0; r < rows; ++r) {
        convert_row(out + oc * span + r * b.pitch, y_band + oc * OH * OW + r * OW, OW);
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

// grad_weight of the layers direct_forward runs, on the same bands, by the
// conv1d weight-gradient kernel; per-thread partial sums, added in thread
// order: deterministic. A band of several rows shorter than kOneRowBelow
// whose staged inputs are all finite is one long row, with grad_output staged
// at the band's pitch and zeros for the dropped outputs (short rows one by one
// spend more on calls and edges than the copy costs; long rows the other way
// round). Otherwise the kernel takes the band's
// rows one by one, so that no infinite input meets a dropped output's zero;
// 16-bit grad_output rows are converted into a [C_out/g][rows][OW] block first.
constexpr int64_t kOneRowBelow = 64;

template <typename scalar_t, typename T>
at::Tensor direct_weight(const Conv2dIntDims& d, const scalar_t* gy, const scalar_t* x) {
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
        return run(
            WeightTile<T>{stage, offsets.data(), taps, gy_band, OH * OW, cout_g, OW, acc, rows, b.pitch, OW});
      }
    }
    const int64_t pitch = one_row ? b.pitch : OW, span = (rows - 1) * pitch + OW;
    thread_local std::vector<T> gy_buffer;
    T* gy_t = scratch_buffer(gy_buffer, cout_g * span);
    for (int64_t oc = 0; oc < cout_g; ++oc) {
      for (int64_t r = 0; r < rows; ++r) {
        T* dst = gy_t + oc * span + r * pitch;
        convert_row(gy_band + oc * OH * OW + r * OW, dst, OW);
        if (r + 1 < rows) std::fill(dst + OW, dst + pitch, T(0));
      }
    }
    run(one_row ? WeightTile<T>{stage, offsets.data(), taps, gy_t, span, cout_g, span, acc}
                     : WeightTile<T>{stage, offsets.data(), taps, gy_t, span, cout_g, OW, acc, rows, b.pitch, OW});
  });
  return partial.sum(0);
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

}  // namespace

void conv2d_direct(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const Conv2dIntDims& d,
                   at::Tensor& y) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    // Streamed stores only where every output row starts on a cache line.
    const bool streaming = y.nbytes() >= kStreamingBytes && d.out_size[1] * int64_t(sizeof(T)) % 64 == 0;
    direct_forward<scalar_t, T>(d, x.const_data_ptr<scalar_t>(), w.const_data_ptr<T>(),
                                b.defined() ? b.const_data_ptr<T>() : nullptr, y.mutable_data_ptr<scalar_t>(), streaming);
  });
}

at::Tensor conv2d_weight_backward_direct(const at::Tensor& gy, const at::Tensor& x, const Conv2dIntDims& d) {
  at::Tensor gw;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_weight_backward_cpu", [&] {
    gw = direct_weight<scalar_t, at::opmath_type<scalar_t>>(d, gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>());
  });
  return gw.view({d.out_channels, d.in_channels_per_group(), d.kernel_size[0], d.kernel_size[1]}).to(x.scalar_type());
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
          .copy_(conv2d_forward_path(g, w_sub, std::nullopt, p, Path::kDirect));
    }
  }
  return d.batched ? gx : gx.squeeze(0);
}

}  // namespace fastconv::cpu
