// The "depthwise" conv2d path on CPU (depthwise2d.h): every pixel is a row of
// C values (channels-last), and each micro-kernel call (tile_kernels.h,
// DepthwisePixels) runs a run of pixels that read their taps at one common
// step, so one loop serves every kernel size, stride and dilation:
//   forward      output row oh: the pixels whose taps all fall inside the
//                image form one run (step stride * C); border pixels run
//                alone with the taps that fall inside.
//   grad_input   gathered, never scattered: input row ih takes the kernel
//                rows kh with (ih + ph - kh * dh) % sh == 0; its pixels of
//                one phase iw % sw take the same kernel columns and read
//                consecutive grad_output pixels, so each phase is a run.
//   grad_weight  a band of output rows is cut into segments of rows and of
//                columns that read the same taps; each pair is one run over
//                all its pixels, with grad_output as the second operand,
//                summed into per-thread partial weights (added in thread
//                order: deterministic).
// Work items are bands of rows of one channel block; weights are transposed
// to (KH * KW, C) in the accumulation type. bfloat16 is read and written as
// its bits and computed in float; float16 goes through float copies.
#include "fastconv/depthwise2d.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "fastconv/cpu/allocation.h"
#include "fastconv/cpu/tile_kernels.h"

namespace fastconv::cpu {
namespace {

// Multiply-adds a parallel chunk should hold at least.
constexpr int64_t kGrainWork = int64_t(1) << 15;

// The element the micro-kernels see: bfloat16 as its bits.
template <typename scalar_t>
using Elem = std::conditional_t<std::is_same_v<scalar_t, c10::BFloat16>, uint16_t, scalar_t>;

// (N, C, H, W) in channels-last order, batched.
at::Tensor as_channels_last(const at::Tensor& t, bool batched) {
  return (batched ? t : t.unsqueeze(0)).contiguous(at::MemoryFormat::ChannelsLast);
}

// A channels-last (N, C, H, W) result (unbatched: its (C, H, W) view).
at::Tensor empty_channels_last(int64_t n, int64_t c, int64_t h, int64_t w, bool batched,
                               const at::TensorOptions& options) {
  at::Tensor t = empty_output({n, h, w, c}, options).permute({0, 3, 1, 2});
  return batched ? t : t.squeeze(0);
}

// Weights as (KH * KW, C) rows of the accumulation type.
at::Tensor tap_rows(const at::Tensor& weight, at::ScalarType type) {
  return weight.reshape({weight.size(0), -1}).t().to(type).contiguous();
}

// Float16 runs through float copies; `f` gets the call's tensors in the type it computes in.
template <typename F>
at::Tensor in_compute_type(const at::Tensor& a, const at::Tensor& b, F f) {
  if (a.scalar_type() != at::kHalf) return f(a, b);
  return f(a.to(at::kFloat), b.to(at::kFloat)).to(at::kHalf);
}

// Kernel positions k < K whose input position o * s - p + k * dl lies in [0, size).
struct TapRange {
  int64_t lo, hi;
};
TapRange taps_inside(int64_t o, int64_t s, int64_t p, int64_t dl, int64_t K, int64_t size) {
  const int64_t first = o * s - p;  // input position of k = 0
  const int64_t lo = first >= 0 ? 0 : (-first + dl - 1) / dl;
  const int64_t hi = first > size - 1 ? 0 : std::min(K, (size - 1 - first) / dl + 1);
  return {std::min(lo, K), std::max(hi, std::min(lo, K))};
}

// Outputs o in [lo, hi) have every tap inside: o * s - p >= 0 and
// o * s - p + dl * (K - 1) <= size - 1.
TapRange interior(int64_t s, int64_t p, int64_t dl, int64_t K, int64_t size, int64_t out) {
  const int64_t lo = std::min(out, (p + s - 1) / s);
  const int64_t last = size - 1 + p - dl * (K - 1);
  const int64_t hi = last < 0 ? 0 : std::min(out, last / s + 1);
  return {lo, std::max(lo, hi)};
}

// Border pixels (some taps outside the image) run one at a time with the
// taps that fall inside, at about twice the cost of a pixel in a run. Where
// they are many (large kernels, small images), a band of work stages the
// rows it reads instead, for a block of channels, zero-padded on both sides,
// so that every pixel of a row reads all its horizontal taps and the row is
// one run; rows outside the image are never staged, their taps left out row
// by row. Staging costs a copy of each source pixel, about six multiply-adds
// of a pixel vector (so 3x3 layers at stride 2 read in place, 31x31 stage).
constexpr double kBorderCost = 2.0;
constexpr double kStagedPixelCost = 6.0;
// Staged values per thread stay in L2:
constexpr int64_t kStageBytes = int64_t(192) << 10;

bool stage_pays(int64_t taps, int64_t inner, int64_t out, double staged_pixels) {
  const double in_place = double(taps) * (inner + kBorderCost * (out - inner));
  return double(taps) * out + kStagedPixelCost * staged_pixels < in_place;
}

struct StagePlan {
  bool staged;
  int64_t channels;  // channel block (the last may be narrower)
  int64_t blocks;    // channel blocks
  int64_t rows;      // rows of the result per band
  int64_t bands;
};

// `pixels` staged per row; a band of r result rows reads in_rows(r) source rows.
template <typename InRows>
StagePlan plan_stage(const Conv2dIntDims& d, bool staged, int64_t out_rows, int64_t pixels, int64_t elem_size,
                     InRows in_rows) {
  const int64_t C = d.in_channels;
  int64_t cb = std::min<int64_t>(C, 64), rows = out_rows;
  if (staged) {
    while (cb > 16 && in_rows(1) * pixels * cb * elem_size > kStageBytes) cb /= 2;
    rows = 1;
    while (rows < out_rows && in_rows(rows + 1) * pixels * cb * elem_size <= kStageBytes) ++rows;
  }
  // Blocks of even width (a multiple of 16 channels): a narrow last block
  // left its thread idle at the end.
  const int64_t blocks = (C + cb - 1) / cb;
  cb = std::min(cb, ((C + blocks - 1) / blocks + 15) / 16 * 16);
  // Enough items to keep every thread busy, when the image allows it.
  const int64_t per_band = std::max<int64_t>(1, d.batch * blocks);
  const int64_t want_bands = (4 * at::get_num_threads() + per_band - 1) / per_band;
  rows = std::max<int64_t>(1, std::min(rows, (out_rows + want_bands - 1) / want_bands));
  return StagePlan{staged, cb, blocks, rows, (out_rows + rows - 1) / rows};
}

// The source rows a band reads, of an (N, rows, width, C) tensor: in place,
// or staged (rows [first, ...) of the band's channel block, each `pixels`
// pixels with `left` zeros in front). at(r, p): pixel p of row r, p < 0 and
// p >= width only where staged.
template <typename E>
struct SourceRows {
  const E* base;
  int64_t first, row_stride, pixel, left;
  const E* at(int64_t r, int64_t p) const { return base + (r - first) * row_stride + (left + p) * pixel; }
};

// The band's rows [lo, hi) of sample n, channels [c0, c0 + cw); staged into
// `stage` (resized) when the plan stages.
template <typename E>
SourceRows<E> source_rows(const StagePlan& plan, const E* src, int64_t rows_total, int64_t width, int64_t C,
                          int64_t n, int64_t lo, int64_t hi, int64_t c0, int64_t cw, int64_t left, int64_t pixels,
                          std::vector<E>& stage) {
  const E* rows = src + n * rows_total * width * C + c0;
  if (!plan.staged) return SourceRows<E>{rows, 0, width * C, C, 0};
  stage.resize(std::max<int64_t>(0, hi - lo) * pixels * cw);
  E* dst = stage.data();
  for (int64_t r = lo; r < hi; ++r, dst += pixels * cw) {
    std::fill(dst, dst + left * cw, E(0));
    const E* row = rows + r * width * C;
    for (int64_t p = 0; p < width; ++p) std::copy(row + p * C, row + p * C + cw, dst + (left + p) * cw);
    std::fill(dst + (left + width) * cw, dst + pixels * cw, E(0));
  }
  return SourceRows<E>{stage.data(), lo, pixels * cw, cw, left};
}

// Calls run(n, c0, cw, lo_row, band_begin, band_end) for each item (sample,
// channel block, band of result rows), in parallel.
template <typename F>
void for_each_band(const Conv2dIntDims& d, const StagePlan& plan, int64_t out_rows, int64_t work_per_row, F f) {
  const int64_t work = plan.rows * plan.channels * work_per_row;
  at::parallel_for(0, d.batch * plan.blocks * plan.bands, std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, work)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t band = item % plan.bands, block = item / plan.bands % plan.blocks;
      const int64_t c0 = block * plan.channels;
      const int64_t r0 = band * plan.rows;
      f(item / plan.bands / plan.blocks, c0, std::min(plan.channels, d.in_channels - c0), r0,
        std::min(out_rows, r0 + plan.rows));
    }
  });
}

template <typename E, typename T>
void forward(const Conv2dIntDims& d, const E* x, const T* w, const T* bias, E* y) {
  const int64_t C = d.in_channels, H = d.in_size[0], W = d.in_size[1], OH = d.out_size[0], OW = d.out_size[1];
  const int64_t KH = d.kernel_size[0], KW = d.kernel_size[1], sh = d.stride[0], ph = d.padding[0];
  const int64_t sw = d.stride[1], pw = d.padding[1], dh = d.dilation[0], dw = d.dilation[1];
  const int64_t reach = dh * (KH - 1) + 1, pixels = W + 2 * pw;
  const TapRange inner = interior(sw, pw, dw, KW, W, OW);
  const bool staged = stage_pays(KH * KW, inner.hi - inner.lo, OW, double(sh * pixels));
  const StagePlan plan = plan_stage(d, staged, OH, pixels, sizeof(E), [&](int64_t r) { return (r - 1) * sh + reach; });
  for_each_band(d, plan, OH, OW * KH * KW, [&](int64_t n, int64_t c0, int64_t cw, int64_t oh0, int64_t oh1) {
    thread_local std::vector<E> stage;
    thread_local std::vector<const E*> in;
    thread_local std::vector<const T*> taps;
    const int64_t lo = std::max<int64_t>(0, oh0 * sh - ph), hi = std::min(H, (oh1 - 1) * sh - ph + reach);
    const SourceRows<E> src = source_rows(plan, x, H, W, C, n, lo, hi, c0, cw, pw, pixels, stage);
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const TapRange rows = taps_inside(oh, sh, ph, dh, KH, H);
      // Pixels [ow, ow + count) with kernel columns [kw_lo, kw_hi).
      const auto emit = [&](int64_t ow, int64_t count, int64_t kw_lo, int64_t kw_hi) {
        in.clear();
        taps.clear();
        for (int64_t kh = rows.lo; kh < rows.hi; ++kh) {
          for (int64_t kw = kw_lo; kw < kw_hi; ++kw) {
            in.push_back(src.at(oh * sh - ph + kh * dh, ow * sw - pw + kw * dw));
            taps.push_back(w + (kh * KW + kw) * C + c0);
          }
        }
        run(DepthwisePixels<E, T>{in.data(), sw * src.pixel, taps.data(), int64_t(in.size()),
                                  bias ? bias + c0 : nullptr, y + ((n * OH + oh) * OW + ow) * C + c0, C, count, cw,
                                  sw == 1 && dw == 1 ? kw_hi - kw_lo : 0});
      };
      if (staged) {
        emit(0, OW, 0, KW);
        continue;
      }
      if (inner.hi > inner.lo) emit(inner.lo, inner.hi - inner.lo, 0, KW);
      for (int64_t ow = 0; ow < OW; ++ow) {
        if (ow == inner.lo) ow = std::max(ow, inner.hi);
        if (ow >= OW) break;
        const TapRange cols = taps_inside(ow, sw, pw, dw, KW, W);
        emit(ow, 1, cols.lo, cols.hi);
      }
    }
  });
}

// Outputs o in [lo, hi) whose kernel position k lies inside: o * s - p + k * dl in [0, size).
TapRange outputs_inside(int64_t k, int64_t s, int64_t p, int64_t dl, int64_t size, int64_t out) {
  const int64_t first = k * dl - p;  // input position of o = 0
  const int64_t lo = first >= 0 ? 0 : (-first + s - 1) / s;
  const int64_t hi = size - 1 - first < 0 ? 0 : std::min(out, (size - 1 - first) / s + 1);
  return {std::min(lo, out), std::max(hi, std::min(lo, out))};
}

// A range of outputs [lo, hi) that reads kernel positions [k_lo, k_hi).
struct Segment {
  int64_t lo, hi, k_lo, k_hi;
};

// The outputs [from, to) along one axis as segments: where every kernel
// position lies inside (`inner`), one segment with all K of them, when
// `whole` (else none); around it, each position k over the outputs where it
// alone reaches inside. With `whole` false every position runs over all its
// outputs in [from, to).
std::vector<Segment> segments(int64_t s, int64_t p, int64_t dl, int64_t K, int64_t size, int64_t out, int64_t from,
                              int64_t to, bool whole) {
  std::vector<Segment> out_segments;
  TapRange inner = interior(s, p, dl, K, size, out);
  inner = {std::max(inner.lo, from), std::min(inner.hi, to)};
  if (!whole || inner.hi <= inner.lo) inner = {to, to};
  if (inner.hi > inner.lo) out_segments.push_back({inner.lo, inner.hi, 0, K});
  for (int64_t k = 0; k < K; ++k) {
    const TapRange at = outputs_inside(k, s, p, dl, size, out);
    const int64_t lo = std::max(at.lo, from), hi = std::min(at.hi, to);
    if (std::min(hi, inner.lo) > lo) out_segments.push_back({lo, std::min(hi, inner.lo), k, k + 1});
    if (hi > std::max(lo, inner.hi)) out_segments.push_back({std::max(lo, inner.hi), hi, k, k + 1});
  }
  return out_segments;
}

// Bands of output rows over a block of channels. Each (row segment, column
// segment) pair is one run of its taps over all its rows x pixels, so a tap's
// sums stay in registers over a whole segment. The interior rows run all taps
// together where they are at least half of the band; on small maps each
// kernel row runs over all its rows (fewer, longer runs). Source rows are read
// in place, the border columns then running one tap at a time, or staged with
// the padding's zero columns (as the forward's) where more than
// 1 / kBorderColumnsToStage of the output columns are border columns
// (docs/depthwise2d.md).
constexpr int64_t kBorderColumnsToStage = 4;

template <typename E, typename T>
void weight_backward(const Conv2dIntDims& d, const E* gy, const E* x, T* partial) {
  const int64_t C = d.in_channels, H = d.in_size[0], W = d.in_size[1], OH = d.out_size[0], OW = d.out_size[1];
  const int64_t KH = d.kernel_size[0], KW = d.kernel_size[1], taps_all = KH * KW;
  const int64_t sh = d.stride[0], sw = d.stride[1], ph = d.padding[0], pw = d.padding[1];
  const int64_t dh = d.dilation[0], dw = d.dilation[1];
  const int64_t reach = dh * (KH - 1) + 1, pixels = W + 2 * pw;
  const TapRange inner = interior(sw, pw, dw, KW, W, OW);
  const bool staged = kBorderColumnsToStage * (OW - (inner.hi - inner.lo)) > OW;
  // Bands sized to keep their source rows in L2 whether staged or not.
  StagePlan plan = plan_stage(d, true, OH, pixels, sizeof(E), [&](int64_t r) { return (r - 1) * sh + reach; });
  plan.staged = staged;
  const std::vector<Segment> columns =
      staged ? std::vector<Segment>{{0, OW, 0, KW}} : segments(sw, pw, dw, KW, W, OW, 0, OW, true);
  const TapRange inner_rows = interior(sh, ph, dh, KH, H, OH);
  for_each_band(d, plan, OH, OW * taps_all, [&](int64_t n, int64_t c0, int64_t cw, int64_t oh0, int64_t oh1) {
    thread_local std::vector<E> stage;
    thread_local std::vector<const E*> in;
    thread_local std::vector<T*> sums;
    T* mine = partial + at::get_thread_num() * taps_all * C;
    const int64_t lo = std::max<int64_t>(0, oh0 * sh - ph), hi = std::min(H, (oh1 - 1) * sh - ph + reach);
    const SourceRows<E> src = source_rows(plan, x, H, W, C, n, lo, hi, c0, cw, pw, pixels, stage);
    const int64_t band_inner = std::min(inner_rows.hi, oh1) - std::max(inner_rows.lo, oh0);
    for (const Segment& r : segments(sh, ph, dh, KH, H, OH, oh0, oh1, 2 * band_inner >= oh1 - oh0)) {
      for (const Segment& c : columns) {
        in.clear();
        sums.clear();
        for (int64_t kh = r.k_lo; kh < r.k_hi; ++kh) {
          for (int64_t kw = c.k_lo; kw < c.k_hi; ++kw) {
            in.push_back(src.at(r.lo * sh - ph + kh * dh, c.lo * sw - pw + kw * dw));
            sums.push_back(mine + (kh * KW + kw) * C + c0);
          }
        }
        run(DepthwisePixelsWeight<E, T>{gy + ((n * OH + r.lo) * OW + c.lo) * C + c0, C, OW * C, in.data(),
                                        sw * src.pixel, sh * src.row_stride, sums.data(), int64_t(in.size()),
                                        r.hi - r.lo, c.hi - c.lo, cw, sw == 1 && dw == 1 ? c.k_hi - c.k_lo : 0});
      }
    }
  });
}

// grad_input by gathering (see the top of this file): pixel iw = r + sw * j
// of phase r reads grad_output column j + shift(kw) through kernel column kw,
// where shift = (r + pw - kw * dw) / sw, whole for the columns of its phase;
// grad_output rows are read in place or staged like the forward's input.
template <typename E, typename T>
void input_backward(const Conv2dIntDims& d, const E* gy, const T* w, E* gx) {
  const int64_t C = d.in_channels, H = d.in_size[0], W = d.in_size[1], OH = d.out_size[0], OW = d.out_size[1];
  const int64_t KH = d.kernel_size[0], KW = d.kernel_size[1];
  const int64_t sh = d.stride[0], sw = d.stride[1], ph = d.padding[0], pw = d.padding[1];
  const int64_t dh = d.dilation[0], dw = d.dilation[1];
  const auto floor_div = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  // Staged grad_output rows: `left` zeros, OW pixels, zeros up to `pixels`.
  const int64_t left = std::max<int64_t>(0, -floor_div(pw - dw * (KW - 1), sw));
  const int64_t pixels = left + std::max(OW, (W + sw - 1) / sw + (sw - 1 + pw) / sw);
  // Input rows [ih0, ih1) read grad_output rows [first(ih0), last(ih1 - 1)].
  const auto first = [&](int64_t ih) { return std::max<int64_t>(0, -floor_div(-(ih + ph - dh * (KH - 1)), sh)); };
  const auto last = [&](int64_t ih) { return std::min(OH - 1, floor_div(ih + ph, sh)); };
  // The forward's border pixels, as a measure of this one's.
  const TapRange inner = interior(sw, pw, dw, KW, W, OW);
  const bool staged = stage_pays(KH * KW, inner.hi - inner.lo, OW, double(pixels) / sh);
  const StagePlan plan =
      plan_stage(d, staged, H, pixels, sizeof(E), [&](int64_t r) { return (r - 1 + dh * (KH - 1)) / sh + 2; });
  const int64_t work = W * std::max<int64_t>(1, KH * KW / (sh * sw));
  for_each_band(d, plan, H, work, [&](int64_t n, int64_t c0, int64_t cw, int64_t ih0, int64_t ih1) {
    thread_local std::vector<E> stage;
    thread_local std::vector<const E*> in;
    thread_local std::vector<const T*> taps;
    thread_local std::vector<int64_t> khs, ohs, kws, shifts;
    const SourceRows<E> src = source_rows(plan, gy, OH, OW, C, n, first(ih0), last(ih1 - 1) + 1, c0, cw, left,
                                          pixels, stage);
    for (int64_t ih = ih0; ih < ih1; ++ih) {
      // Kernel rows that reach row ih, and the grad_output row each reads.
      khs.clear();
      ohs.clear();
      for (int64_t kh = 0; kh < KH; ++kh) {
        const int64_t u = ih + ph - kh * dh;
        if (u < 0 || u % sh != 0 || u / sh >= OH) continue;
        khs.push_back(kh);
        ohs.push_back(u / sh);
      }
      for (int64_t r = 0; r < std::min(sw, W); ++r) {
        kws.clear();
        shifts.clear();
        for (int64_t kw = 0; kw < KW; ++kw) {
          const int64_t u = r + pw - kw * dw;
          if (floor_div(u, sw) * sw != u) continue;
          kws.push_back(kw);
          shifts.push_back(u / sw);
        }
        const int64_t count = (W - r + sw - 1) / sw;
        // Pixels [j, j + n); `single`: one pixel, with only the columns inside.
        const auto emit = [&](int64_t j, int64_t n_pixels, bool single) {
          in.clear();
          taps.clear();
          // Columns in decreasing kw: increasing grad_output pixels.
          for (size_t a = 0; a < khs.size(); ++a) {
            for (size_t b = kws.size(); b-- > 0;) {
              const int64_t ow = j + shifts[b];
              if (single && (ow < 0 || ow >= OW)) continue;
              in.push_back(src.at(ohs[a], ow));
              taps.push_back(w + (khs[a] * KW + kws[b]) * C + c0);
            }
          }
          run(DepthwisePixels<E, T>{in.data(), src.pixel, taps.data(), int64_t(in.size()), nullptr,
                                    gx + ((n * H + ih) * W + r + sw * j) * C + c0, sw * C, n_pixels, cw,
                                    sw == 1 && dw == 1 && !single ? int64_t(kws.size()) : 0});
        };
        if (staged) {
          emit(0, count, false);
          continue;
        }
        // j in [lo, hi): every column's j + shift inside [0, OW).
        int64_t lo = 0, hi = count;
        for (const int64_t s : shifts) {
          lo = std::max(lo, -s);
          hi = std::min(hi, OW - s);
        }
        lo = std::min(lo, count);
        hi = std::max(hi, lo);
        if (hi > lo) emit(lo, hi - lo, false);
        for (int64_t j = 0; j < lo; ++j) emit(j, 1, true);
        for (int64_t j = hi; j < count; ++j) emit(j, 1, true);
      }
    }
  });
}

}  // namespace

at::Tensor depthwise2d_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const Conv2dIntDims& d) {
  return in_compute_type(input, weight, [&](const at::Tensor& input, const at::Tensor& weight) {
    const at::Tensor x = as_channels_last(input, d.batched);
    const auto type = at::toOpMathType(x.scalar_type());
    const at::Tensor w = tap_rows(weight, type);
    const bool has_bias = bias.has_value() && bias->defined();
    const at::Tensor b = has_bias ? bias->to(type).contiguous() : at::Tensor();
    at::Tensor y = empty_channels_last(d.batch, d.out_channels, d.out_size[0], d.out_size[1], d.batched, x.options());
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "fastconv_depthwise2d", [&] {
      using E = Elem<scalar_t>;
      using T = at::opmath_type<scalar_t>;
      forward<E, T>(d, reinterpret_cast<const E*>(x.const_data_ptr<scalar_t>()), w.const_data_ptr<T>(),
                    has_bias ? b.const_data_ptr<T>() : nullptr, reinterpret_cast<E*>(y.mutable_data_ptr<scalar_t>()));
    });
    return y;
  });
}

at::Tensor depthwise2d_input_backward(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dIntDims& d) {
  return in_compute_type(grad_output, weight, [&](const at::Tensor& grad_output, const at::Tensor& weight) {
    const at::Tensor gy = as_channels_last(grad_output, d.batched);
    const at::Tensor w = tap_rows(weight, at::toOpMathType(gy.scalar_type()));
    at::Tensor gx = empty_channels_last(d.batch, d.in_channels, d.in_size[0], d.in_size[1], d.batched, gy.options());
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gy.scalar_type(), "fastconv_depthwise2d_input_backward", [&] {
      using E = Elem<scalar_t>;
      using T = at::opmath_type<scalar_t>;
      input_backward<E, T>(d, reinterpret_cast<const E*>(gy.const_data_ptr<scalar_t>()), w.const_data_ptr<T>(),
                           reinterpret_cast<E*>(gx.mutable_data_ptr<scalar_t>()));
    });
    return gx;
  });
}

at::Tensor depthwise2d_weight_backward(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dIntDims& d) {
  return in_compute_type(grad_output, input, [&](const at::Tensor& grad_output, const at::Tensor& input) {
    const at::Tensor gy = as_channels_last(grad_output, d.batched);
    const at::Tensor x = as_channels_last(input, d.batched);
    const auto type = at::toOpMathType(x.scalar_type());
    const int64_t KH = d.kernel_size[0], KW = d.kernel_size[1];
    const at::Tensor partial = at::zeros({at::get_num_threads(), KH * KW, d.in_channels}, x.options().dtype(type));
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "fastconv_depthwise2d_weight_backward", [&] {
      using E = Elem<scalar_t>;
      using T = at::opmath_type<scalar_t>;
      weight_backward<E, T>(d, reinterpret_cast<const E*>(gy.const_data_ptr<scalar_t>()),
                            reinterpret_cast<const E*>(x.const_data_ptr<scalar_t>()), partial.mutable_data_ptr<T>());
    });
    return partial.sum(0).t().contiguous().view({d.out_channels, 1, KH, KW}).to(x.scalar_type());
  });
}

}  // namespace fastconv::cpu
