// The depthwise conv2d micro-kernels of tile_kernels.h (vectors across
// channels), per instruction set, under simd.h's internal-linkage rule. They
// share the causal kernels' Io (bfloat16 bits widened in registers).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "fastconv/cpu/kernels/causal.h"
#include "fastconv/cpu/kernels/simd.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

// Pixels per block of the forward kernel and taps per block of the weight
// kernel, each with two vectors of channels: P * 2 accumulators, two weight
// (or grad_output) vectors and a load in the registers.
constexpr int kDepthwiseBlock = kRegs >= 32 ? 8 : 4;

template <typename E, typename T>
using DepthwiseIo = Io<T, std::is_same_v<E, uint16_t> && !std::is_same_v<T, uint16_t>>;

// P pixels from j0 x V vectors of channels from c0; with Tail, the last
// vector holds only `last` channels (loads and stores stop there).
template <typename E, typename T, int P, int V, bool Tail>
void depthwise_block(const DepthwisePixels<E, T>& a, int64_t j0, int64_t c0, int64_t last) {
  using S = Simd<T>;
  using X = DepthwiseIo<E, T>;
  using Vec = typename S::V;
  constexpr int W = S::kLanes;
  const auto lanes = [&](int v) { return Tail && v == V - 1 ? last : int64_t(W); };
  const auto load_w = [&](const T* p, int v) {
    return Tail && v == V - 1 ? Io<T, false>::load(p + v * W, last) : S::load(p + v * W);
  };
  Vec acc[P][V];
  for (int v = 0; v < V; ++v) {
    const Vec b = a.bias ? load_w(a.bias + c0, v) : Vec{};
    for (int p = 0; p < P; ++p) acc[p][v] = b;
  }
  for (int64_t t = 0; t < a.taps; ++t) {
    const E* x = a.in[t] + j0 * a.in_step + c0;
    Vec wv[V];
    for (int v = 0; v < V; ++v) wv[v] = load_w(a.w[t] + c0, v);
    for (int p = 0; p < P; ++p) {
      for (int v = 0; v < V; ++v) {
        const E* xp = x + p * a.in_step + v * W;
        acc[p][v] += wv[v] * (Tail && v == V - 1 ? X::load(xp, last) : X::load(xp));
      }
    }
  }
  for (int p = 0; p < P; ++p) {
    E* o = a.out + (j0 + p) * a.out_step + c0;
    for (int v = 0; v < V; ++v) X::store(o + v * W, acc[p][v], lanes(v));
  }
}

// One pixel j x V vectors of channels from c0: a single accumulator per
// vector would wait on the FMA latency at every tap, so taps go round U
// chains, summed at the end.
template <typename E, typename T, int V, bool Tail>
void depthwise_pixel(const DepthwisePixels<E, T>& a, int64_t j, int64_t c0, int64_t last) {
  using S = Simd<T>;
  using X = DepthwiseIo<E, T>;
  using Vec = typename S::V;
  constexpr int W = S::kLanes, U = 4;
  const auto load_w = [&](const T* p, int v) {
    return Tail && v == V - 1 ? Io<T, false>::load(p + v * W, last) : S::load(p + v * W);
  };
  const auto load_x = [&](const E* p, int v) {
    return Tail && v == V - 1 ? X::load(p + v * W, last) : X::load(p + v * W);
  };
  Vec acc[U][V] = {};
  const int64_t offset = j * a.in_step + c0;
  int64_t t = 0;
  for (; t + U <= a.taps; t += U) {
    for (int u = 0; u < U; ++u) {
      for (int v = 0; v < V; ++v) acc[u][v] += load_w(a.w[t + u] + c0, v) * load_x(a.in[t + u] + offset, v);
    }
  }
  for (; t < a.taps; ++t) {
    for (int v = 0; v < V; ++v) acc[0][v] += load_w(a.w[t] + c0, v) * load_x(a.in[t] + offset, v);
  }
  E* o = a.out + j * a.out_step + c0;
  for (int v = 0; v < V; ++v) {
    Vec sum = a.bias ? load_w(a.bias + c0, v) : Vec{};
    for (int u = 0; u < U; ++u) sum += acc[u][v];
    X::store(o + v * W, sum, Tail && v == V - 1 ? last : int64_t(W));
  }
}

// The channels of P pixels from j: two vectors at a time, then one, then the tail.
template <typename E, typename T, int P>
void depthwise_channels(const DepthwisePixels<E, T>& a, int64_t j) {
  constexpr int W = Simd<T>::kLanes;
  int64_t c = 0;
  for (; c + 2 * W <= a.channels; c += 2 * W) depthwise_block<E, T, P, 2, false>(a, j, c, W);
  for (; c + W <= a.channels; c += W) depthwise_block<E, T, P, 1, false>(a, j, c, W);
  if (c < a.channels) depthwise_block<E, T, P, 1, true>(a, j, c, a.channels - c);
}

// The last R < P pixels of a run, as one block (R >= 2).
template <typename E, typename T, int R = kDepthwiseBlock - 1>
void depthwise_rest(const DepthwisePixels<E, T>& a, int64_t j, int64_t rest) {
  if constexpr (R >= 2) {
    if (rest == R) return depthwise_channels<E, T, R>(a, j);
    return depthwise_rest<E, T, R - 1>(a, j, rest);
  }
}

// Rows of taps on consecutive pixels (row_taps): a block of P pixels takes a
// row in chunks of up to kSlideChunk taps, whose weight vectors it holds in
// registers, and reads the P + Q - 1 input pixels of a chunk of Q taps once
// each, every one feeding the (up to) Q accumulators that use it: a load per
// Q multiply-adds instead of one per multiply-add (a 7x7 layer on 56x56
// channels-last images ran load-bound at 0.55 of the FMA rate with a load per
// multiply-add).
constexpr int kSlideChunk = 7;
constexpr int kSlidePixels = kRegs - kSlideChunk - 2 < 16 ? kRegs - kSlideChunk - 2 : 16;

template <typename E, typename T, int Q>
__attribute__((always_inline)) inline void slide_chunk(typename Simd<T>::V (&acc)[kSlidePixels], const T* const* w,
                                                       const E* x, int64_t step, int64_t c0) {
  using S = Simd<T>;
  using Vec = typename S::V;
  constexpr int P = kSlidePixels;
  Vec wv[Q];
  for (int q = 0; q < Q; ++q) wv[q] = S::load(w[q] + c0);
  // Input pixel i feeds output pixel i - q through tap q; unrolled, so
  // every index is a constant and the accumulators stay in registers.
#pragma GCC unroll 32
  for (int i = 0; i < P + Q - 1; ++i) {
    const Vec xv = DepthwiseIo<E, T>::load(x + i * step);
#pragma GCC unroll 8
    for (int q = 0; q < Q; ++q) {
      if (i - q >= 0 && i - q < P) acc[i - q] += wv[q] * xv;
    }
  }
}

template <typename E, typename T>
void depthwise_slide(const DepthwisePixels<E, T>& a, int64_t j0, int64_t c0) {
  using S = Simd<T>;
  using Vec = typename S::V;
  Vec acc[kSlidePixels];
  const Vec b = a.bias ? S::load(a.bias + c0) : Vec{};
  for (int p = 0; p < kSlidePixels; ++p) acc[p] = b;
  for (int64_t t = 0; t < a.taps; t += a.row_taps) {
    for (int64_t k = 0; k < a.row_taps; k += kSlideChunk) {
      const T* const* w = a.w + t + k;
      const E* x = a.in[t + k] + j0 * a.in_step + c0;
      switch (a.row_taps - k < kSlideChunk ? a.row_taps - k : kSlideChunk) {
        case 7: slide_chunk<E, T, 7>(acc, w, x, a.in_step, c0); break;
        case 6: slide_chunk<E, T, 6>(acc, w, x, a.in_step, c0); break;
        case 5: slide_chunk<E, T, 5>(acc, w, x, a.in_step, c0); break;
        case 4: slide_chunk<E, T, 4>(acc, w, x, a.in_step, c0); break;
        case 3: slide_chunk<E, T, 3>(acc, w, x, a.in_step, c0); break;
        case 2: slide_chunk<E, T, 2>(acc, w, x, a.in_step, c0); break;
        default: slide_chunk<E, T, 1>(acc, w, x, a.in_step, c0); break;
      }
    }
  }
  for (int p = 0; p < kSlidePixels; ++p) {
    DepthwiseIo<E, T>::store(a.out + (j0 + p) * a.out_step + c0, acc[p], S::kLanes);
  }
}

// The full vectors of channels of every whole block of kSlidePixels pixels;
// returns the pixels covered (the rest, and the channels of a partial
// vector, take the general blocks).
template <typename E, typename T>
int64_t depthwise_slide_run(const DepthwisePixels<E, T>& a) {
  constexpr int P = kSlidePixels, W = Simd<T>::kLanes;
  const int64_t full = a.channels / W * W, blocks = a.n / P;
  for (int64_t j = 0; j < blocks * P; j += P) {
    for (int64_t c = 0; c < full; c += W) depthwise_slide<E, T>(a, j, c);
    for (int64_t p = 0; p < P && full < a.channels; ++p) depthwise_pixel<E, T, 1, true>(a, j + p, full, a.channels - full);
  }
  return blocks * P;
}

template <typename E, typename T>
void depthwise_pixels(const DepthwisePixels<E, T>& a) {
  constexpr int P = kDepthwiseBlock;
  int64_t j = a.row_taps > 0 && a.taps % a.row_taps == 0 ? depthwise_slide_run<E, T>(a) : 0;
  for (; j + P <= a.n; j += P) depthwise_channels<E, T, P>(a, j);
  if (a.n - j >= 2) return depthwise_rest<E, T>(a, j, a.n - j);
  // One pixel (border pixels come one at a time): its taps spread over four
  // accumulator chains per vector.
  if (j < a.n) {
    constexpr int W = Simd<T>::kLanes;
    int64_t c = 0;
    for (; c + 2 * W <= a.channels; c += 2 * W) depthwise_pixel<E, T, 2, false>(a, j, c, W);
    for (; c + W <= a.channels; c += W) depthwise_pixel<E, T, 1, false>(a, j, c, W);
    if (c < a.channels) depthwise_pixel<E, T, 1, true>(a, j, c, a.channels - c);
  }
}

// P taps from t0 x V vectors of channels from c0, over all rows x n pixels:
// the sums stay in registers for the whole run.
template <typename E, typename T, int P, int V, bool Tail>
void depthwise_weight_block(const DepthwisePixelsWeight<E, T>& a, int64_t t0, int64_t c0, int64_t last) {
  using S = Simd<T>;
  using X = DepthwiseIo<E, T>;
  using Vec = typename S::V;
  constexpr int W = S::kLanes;
  const auto load = [&](const E* p, int v) { return Tail && v == V - 1 ? X::load(p, last) : X::load(p); };
  Vec acc[P][V] = {};
  for (int64_t r = 0; r < a.rows; ++r) {
    const E* x[P];
    for (int p = 0; p < P; ++p) x[p] = a.in[t0 + p] + r * a.in_row_step + c0;
    const E* g = a.g + r * a.g_row_step + c0;
    for (int64_t j = 0; j < a.n; ++j) {
      Vec gv[V];
      for (int v = 0; v < V; ++v) gv[v] = load(g + j * a.g_step + v * W, v);
      for (int p = 0; p < P; ++p) {
        for (int v = 0; v < V; ++v) acc[p][v] += gv[v] * load(x[p] + j * a.in_step + v * W, v);
      }
    }
  }
  for (int p = 0; p < P; ++p) {
    T* out = a.gw[t0 + p] + c0;
    for (int v = 0; v < V; ++v) {
      const int64_t n = Tail && v == V - 1 ? last : W;
      const Vec sum = Io<T, false>::load(out + v * W, n) + acc[p][v];
      S::store(out + v * W, sum, n);
    }
  }
}

template <typename E, typename T, int V, bool Tail>
void depthwise_weight_taps(const DepthwisePixelsWeight<E, T>& a, int64_t c0, int64_t last) {
  constexpr int P = kDepthwiseBlock;
  int64_t t = 0;
  for (; t + P <= a.taps; t += P) depthwise_weight_block<E, T, P, V, Tail>(a, t, c0, last);
  if constexpr (P > 4) {
    for (; t + 4 <= a.taps; t += 4) depthwise_weight_block<E, T, 4, V, Tail>(a, t, c0, last);
  }
  for (; t + 2 <= a.taps; t += 2) depthwise_weight_block<E, T, 2, V, Tail>(a, t, c0, last);
  for (; t < a.taps; ++t) depthwise_weight_block<E, T, 1, V, Tail>(a, t, c0, last);
}

// Rows of taps on consecutive pixels (row_taps): a block of P output pixels
// holds its grad_output vectors in registers and reads the P + Q - 1 input
// pixels of a chunk of Q taps once each, every one feeding the (up to) Q
// sums that use it: about 2P + Q loads per P * Q multiply-adds, where the
// tap blocks load once per multiply-add. Chunks take 4 to 7 taps: the Q sums
// are the independent chains that cover the multiply-add latency.
constexpr int kSlideWeightPixels = kRegs >= 32 ? 16 : 8;

template <typename E, typename T, int Q>
void slide_weight_chunk(const DepthwisePixelsWeight<E, T>& a, int64_t t0, int64_t c0) {
  using S = Simd<T>;
  using X = DepthwiseIo<E, T>;
  using Vec = typename S::V;
  constexpr int P = kSlideWeightPixels;
  Vec acc[Q] = {};
  for (int64_t r = 0; r < a.rows; ++r) {
    const E* x = a.in[t0] + r * a.in_row_step + c0;  // tap t0 + q reads x + (j + q) * in_step
    const E* g = a.g + r * a.g_row_step + c0;
    int64_t j = 0;
    for (; j + P <= a.n; j += P) {
      Vec gv[P];
      for (int p = 0; p < P; ++p) gv[p] = X::load(g + (j + p) * a.g_step);
#pragma GCC unroll 32
      for (int i = 0; i < P + Q - 1; ++i) {
        const Vec xv = X::load(x + (j + i) * a.in_step);
#pragma GCC unroll 8
        for (int q = 0; q < Q; ++q) {
          if (i - q >= 0 && i - q < P) acc[q] += gv[i - q] * xv;
        }
      }
    }
    for (; j < a.n; ++j) {
      const Vec gv = X::load(g + j * a.g_step);
      for (int q = 0; q < Q; ++q) acc[q] += gv * X::load(x + (j + q) * a.in_step);
    }
  }
  for (int q = 0; q < Q; ++q) {
    T* out = a.gw[t0 + q] + c0;
    S::store(out, S::load(out) + acc[q], S::kLanes);
  }
}

// The full vectors of channels of a run whose rows of taps are 4 or more
// wide, in chunks of 4 to 7 taps; returns the channels covered.
template <typename E, typename T>
int64_t slide_weight_run(const DepthwisePixelsWeight<E, T>& a) {
  constexpr int W = Simd<T>::kLanes;
  const int64_t full = a.channels / W * W;
  for (int64_t c = 0; c < full; c += W) {
    for (int64_t t = 0; t < a.taps; t += a.row_taps) {
      for (int64_t k = 0; k < a.row_taps;) {
        const int64_t r = a.row_taps - k, chunk = r > 7 && r < 11 ? r - 4 : std::min<int64_t>(r, 7);
        switch (chunk) {
          case 7: slide_weight_chunk<E, T, 7>(a, t + k, c); break;
          case 6: slide_weight_chunk<E, T, 6>(a, t + k, c); break;
          case 5: slide_weight_chunk<E, T, 5>(a, t + k, c); break;
          default: slide_weight_chunk<E, T, 4>(a, t + k, c); break;
        }
        k += chunk;
      }
    }
  }
  return full;
}

template <typename E, typename T>
void depthwise_weight(const DepthwisePixelsWeight<E, T>& a) {
  constexpr int W = Simd<T>::kLanes;
  int64_t c = a.row_taps >= 4 && a.taps % a.row_taps == 0 ? slide_weight_run<E, T>(a) : 0;
  for (; c + 2 * W <= a.channels; c += 2 * W) depthwise_weight_taps<E, T, 2, false>(a, c, W);
  for (; c + W <= a.channels; c += W) depthwise_weight_taps<E, T, 1, false>(a, c, W);
  if (c < a.channels) depthwise_weight_taps<E, T, 1, true>(a, c, a.channels - c);
}

}  // namespace
}  // namespace fastconv::cpu::FASTCONV_ISA
