#include "fastconv/cpu/conv1d_driver.h"
#include "fastconv/cpu/convert_row.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

namespace fastconv::cpu {
namespace {

// Multiply-adds below which a parallel range stays on the calling thread:
// waking another thread costs more than small problems take.
constexpr int64_t kMinWorkPerThread = 1 << 17;

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, work_per_item));
}

// A per-thread, 64-byte aligned buffer that grows and is kept between calls.
template <typename T>
T* workspace(int slot, int64_t n) {
  thread_local std::vector<T> buffers[2];
  return scratch_buffer(buffers[slot], n);
}

// dst[r * row_len + j] = src[j * S + r] for j in [lo, hi): a fixed stride
// lets the compiler vectorize the deinterleave.
template <int S, typename scalar_t, typename T>
void deinterleave(const scalar_t* src, int64_t lo, int64_t hi, int64_t row_len, T* dst) {
  for (int64_t j = lo; j < hi; ++j) {
    for (int r = 0; r < S; ++r) {
      dst[r * row_len + j] = static_cast<T>(src[j * S + r]);
    }
  }
}

// dst[j * D] = src[j] and D - 1 zeros after it, for j < n: a fixed D lets
// the compiler vectorize the interleave (a zero fill and a scalar scatter
// cost a stride-2 grad_input a large share of its time).
template <int D, typename scalar_t, typename T>
void upsample(const scalar_t* src, int64_t n, T* dst) {
  for (int64_t j = 0; j < n; ++j) {
    dst[j * D] = static_cast<T>(src[j]);
    for (int r = 1; r < D; ++r) {
      dst[j * D + r] = T(0);
    }
  }
}

// Fills `count` elements of each stride phase of one input row, for a tile
// starting at output l0: phase r (at dst + r * phase_pitch), element j holds
// up[(l0 + j) * stride + r - pad], zero outside the row.
template <typename scalar_t, typename T>
void fill_phases(const Geometry& g, const scalar_t* in_row, int64_t l0, int64_t count,
                 int64_t phase_pitch, T* dst) {
  if (g.in_dilation > 1) {
    // Upsampled input (grad_input of a strided convolution; stride is 1 here):
    // element j is in[i] when base + j = i * in_dilation.
    const int64_t D = g.in_dilation, base = l0 - g.pad;
    const int64_t i_first = base <= 0 ? 0 : (base + D - 1) / D;
    const int64_t last = base + count - 1;
    const int64_t i_end = last < 0 ? 0 : std::min(g.in_length, last / D + 1);
    if (i_end <= i_first) {
      std::fill(dst, dst + count, T(0));
      return;
    }
    // [lo, hi): from the first sample to the last, both included.
    const int64_t lo = i_first * D - base, hi = (i_end - 1) * D - base + 1;
    std::fill(dst, dst + lo, T(0));
    if (D == 2) {
      upsample<2>(in_row + i_first, i_end - 1 - i_first, dst + lo);
    } else {
      for (int64_t i = i_first; i + 1 < i_end; ++i) {
        T* d = dst + i * D - base;
        d[0] = static_cast<T>(in_row[i]);
        std::fill(d + 1, d + D, T(0));
      }
    }
    dst[hi - 1] = static_cast<T>(in_row[i_end - 1]);
    std::fill(dst + hi, dst + count, T(0));
    return;
  }
  // Phase r, element j reads input base + j * stride + r. Valid j for phase r:
  // 0 <= base + j * stride + r < in_length.
  const int64_t base = l0 * g.stride - g.pad;
  const auto first_valid = [&](int64_t r) {
    const int64_t i = base + r;
    return std::clamp<int64_t>(i >= 0 ? 0 : (-i + g.stride - 1) / g.stride, 0, count);
  };
  const auto end_valid = [&](int64_t r) {
    const int64_t i = base + r;
    return std::clamp<int64_t>(g.in_length - i <= 0 ? 0 : (g.in_length - i - 1) / g.stride + 1, 0, count);
  };
  // [lo, hi): where every phase is valid (phase 0 starts last and phase
  // stride - 1 ends first), copied in one contiguous pass over the input.
  const int64_t lo = first_valid(0);
  const int64_t hi = std::max(lo, end_valid(g.stride - 1));
  if (g.stride == 1) {
    std::fill(dst, dst + lo, T(0));
    convert_row(in_row + base + lo, dst + lo, hi - lo);
    std::fill(dst + hi, dst + count, T(0));
    return;
  }
  if (g.stride == 2) {
    deinterleave<2>(in_row + base, lo, hi, phase_pitch, dst);
  } else {
    for (int64_t j = lo; j < hi; ++j) {
      for (int64_t r = 0; r < g.stride; ++r) {
        dst[r * phase_pitch + j] = static_cast<T>(in_row[base + j * g.stride + r]);
      }
    }
  }
  // The rest of each phase, [0, lo) and [hi, count): the input where phase
  // r is valid, [first_valid(r), end_valid(r)), zeros elsewhere.
  for (int64_t r = 0; r < g.stride; ++r) {
    T* ph = dst + r * phase_pitch;
    const scalar_t* src = in_row + base + r;
    const int64_t a = first_valid(r), e = end_valid(r);
    for (const auto& [j0, j1] : {std::pair<int64_t, int64_t>{0, lo}, {hi, count}}) {
      const int64_t v0 = std::clamp(a, j0, j1), v1 = std::clamp(e, v0, j1);
      std::fill(ph + j0, ph + v0, T(0));
      for (int64_t j = v0; j < v1; ++j) ph[j] = static_cast<T>(src[j * g.stride]);
      std::fill(ph + v1, ph + j1, T(0));
    }
  }
}

// Where work item `item` sits: samples [b0, b0 + rows) of group grp, output
// positions [l0, l0 + n) of each.
struct TileItem {
  int64_t b0, rows, grp, l0, n;
};

// Decodes a work item and stages the input rows its tile reads into
// scratch, [icg][stride phase][row_len], sample s of the tile at s * pitch.
template <typename scalar_t, typename T>
TileItem stage_tile(const Geometry& g, const Tiling& t, const scalar_t* in, int64_t item, T* scratch) {
  const int64_t pack = item / (t.tiles * g.groups);
  TileItem it{pack * t.rows, 0, (item / t.tiles) % g.groups, (item % t.tiles) * t.length, 0};
  it.rows = std::min(t.rows, g.batch - it.b0);
  it.n = std::min(t.length, g.out_length - it.l0);
  for (int64_t s = 0; s < it.rows; ++s) {
    // The last row of the tile also zeroes the rest of each phase row.
    const int64_t count = s + 1 < it.rows ? t.pitch : t.row_len - s * t.pitch;
    for (int64_t icg = 0; icg < g.cin_g(); ++icg) {
      const scalar_t* row = in + (((it.b0 + s) * g.groups + it.grp) * g.cin_g() + icg) * g.in_length;
      fill_phases(g, row, it.l0, count, t.row_len, scratch + icg * g.stride * t.row_len + s * t.pitch);
    }
  }
  return it;
}

// out = conv(in, weight) + bias; weight is [C_out][cin_g * K] in the accumulation type T.
template <typename scalar_t>
void forward_impl(const Geometry& g, const scalar_t* in,
             const at::opmath_type<scalar_t>* weight,
             const at::opmath_type<scalar_t>* bias, scalar_t* out) {
  using T = at::opmath_type<scalar_t>;
  const Tiling t = make_tiling(g, sizeof(T), /*forward=*/true);
  if (t.items == 0) {
    return;
  }
  // fp32/fp64 tiles of one row are written in place; 16-bit types and
  // packed rows go through a staged [oc][span] block.
  const bool direct = std::is_same_v<scalar_t, T> && t.rows == 1;
  const int64_t cout_g = g.cout_g(), taps = g.taps();
  const std::vector<int64_t> offsets = tap_offsets(g, t.row_len);
  // Outputs far larger than the caches are written around them, when every
  // row starts on a cache line (mixing streamed and cached stores within
  // lines measured slower than not streaming at all).
  const bool streaming = direct && (g.out_length * int64_t(sizeof(T))) % 64 == 0 &&
      g.batch * g.out_channels * g.out_length * int64_t(sizeof(T)) >= kStreamingBytes;
  at::parallel_for(0, t.items, grain_for(cout_g * taps * t.rows * t.length), [&](int64_t begin, int64_t end) {
    T* scratch = workspace<T>(0, g.cin_g() * g.stride * t.row_len);
    T* staged = direct ? nullptr : workspace<T>(1, cout_g * t.span);
    for (int64_t item = begin; item < end; ++item) {
      const auto [b0, rows, grp, l0, n] = stage_tile(g, t, in, item, scratch);
      const int64_t span = (rows - 1) * t.pitch + n;
      scalar_t* dst = out + ((b0 * g.groups + grp) * cout_g) * g.out_length + l0;
      ForwardTile<T> tile_args{
          scratch, offsets.data(), taps, weight + grp * cout_g * taps,
          bias ? bias + grp * cout_g : nullptr,
          direct ? reinterpret_cast<T*>(dst) : staged, direct ? g.out_length : span,
          cout_g, span, streaming};
      run(tile_args);
      if (!direct) {
        for (int64_t s = 0; s < rows; ++s) {
          for (int64_t oc = 0; oc < cout_g; ++oc) {
            const T* src = staged + oc * span + s * t.pitch;
            scalar_t* o = dst + (s * g.out_channels + oc) * g.out_length;
            convert_row(src, o, n);
          }
        }
      }
    }
  });
}

// grad_weight[oc][icg][k] = sum_{b,l} grad_out[b][oc][l] * in[b][ic][l*stride + k*dilation - pad];
// grad_bias[oc] = sum_{b,l} grad_out[b][oc][l] in the same pass when grad_bias is not null.
template <typename scalar_t>
void weight_grad_impl(const Geometry& g, const scalar_t* grad_out, const scalar_t* in, scalar_t* grad_weight,
                      scalar_t* grad_bias) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kDirect = std::is_same_v<scalar_t, T>;
  const int64_t cout_g = g.cout_g(), taps = g.taps();
  const int64_t weight_numel = g.out_channels * taps;
  // Per thread: partial sums of the weight gradient, then of the bias's.
  const int64_t partial_numel = weight_numel + (grad_bias ? g.out_channels : 0);
  const Tiling t = make_tiling(g, sizeof(T), /*forward=*/false);
  // Per-thread partial sums, added up in thread order: the result depends on
  // the thread count only, not on timing.
  const int threads = at::get_num_threads();
  std::vector<T> partial(static_cast<size_t>(threads) * partial_numel, T(0));
  if (t.items > 0) {
    const std::vector<int64_t> offsets = tap_offsets(g, t.row_len);
    at::parallel_for(0, t.items, grain_for(cout_g * taps * t.rows * t.length), [&](int64_t begin, int64_t end) {
      T* acc = partial.data() + at::get_thread_num() * partial_numel;
      T* scratch = workspace<T>(0, g.cin_g() * g.stride * t.row_len);
      T* staged = kDirect ? nullptr : workspace<T>(1, t.rows * cout_g * t.length);
      for (int64_t item = begin; item < end; ++item) {
        const auto [b0, rows, grp, l0, n] = stage_tile(g, t, in, item, scratch);
        const scalar_t* gy = grad_out + ((b0 * g.groups + grp) * cout_g) * g.out_length + l0;
        if constexpr (!kDirect) {
          for (int64_t s = 0; s < rows; ++s) {
            for (int64_t oc = 0; oc < cout_g; ++oc) {
              const scalar_t* src = gy + (s * g.out_channels + oc) * g.out_length;
              convert_row(src, staged + (s * cout_g + oc) * n, n);
            }
          }
        }
        WeightTile<T> tile_args{
            scratch, offsets.data(), taps,
            kDirect ? reinterpret_cast<const T*>(gy) : staged, kDirect ? g.out_length : n,
            cout_g, n, acc + grp * cout_g * taps,
            rows, t.pitch, kDirect ? g.out_channels * g.out_length : cout_g * n,
            grad_bias ? acc + weight_numel + grp * cout_g : nullptr};
        run(tile_args);
      }
    });
  }
  for (int64_t i = 0; i < partial_numel; ++i) {
    T sum = 0;
    for (int th = 0; th < threads; ++th) {
      sum += partial[th * partial_numel + i];
    }
    (i < weight_numel ? grad_weight[i] : grad_bias[i - weight_numel]) = static_cast<scalar_t>(sum);
  }
}

}  // namespace

template <typename scalar_t>
void conv_forward(const Geometry& g, const scalar_t* in, const at::opmath_type<scalar_t>* weight,
                  const at::opmath_type<scalar_t>* bias, scalar_t* out) {
  forward_impl<scalar_t>(g, in, weight, bias, out);
}

template <typename scalar_t>
void conv_weight_grad(const Geometry& g, const scalar_t* grad_out, const scalar_t* in,
                      scalar_t* grad_weight, scalar_t* grad_bias) {
  weight_grad_impl<scalar_t>(g, grad_out, in, grad_weight, grad_bias);
}

#define FASTCONV_INSTANTIATE(T)                                                               \
  template void conv_forward<T>(const Geometry&, const T*, const at::opmath_type<T>*,         \
                                const at::opmath_type<T>*, T*);                               \
  template void conv_weight_grad<T>(const Geometry&, const T*, const T*, T*, T*);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
FASTCONV_INSTANTIATE(c10::Half)
FASTCONV_INSTANTIATE(c10::BFloat16)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv::cpu
