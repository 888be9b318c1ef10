// The conv1d forward micro-kernel: out[oc][j] = bias[oc] + sum_t weight[oc][t] * scratch[offsets[t] + j].
#pragma once

#include "fastconv/cpu/kernels/simd.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

// Whether a block of one output channel loads odd taps' vectors through a
// window of aligned vectors. A block of one output channel issues a load per
// FMA, at every offset, and loads that cross a cache line cost about two: it
// is load-bound. A window of V + 1 aligned vectors in registers serves every
// tap whose offset falls in its first vector, shifted into place on the
// shuffle unit; odd taps from the window and even ones from memory balance
// the two units (all taps from windows is shuffle-bound). With more output
// channels a load serves several FMAs and is no bottleneck.
// (Figures: docs/cpu-kernels.md.)
template <typename T, int R, int V>
constexpr bool use_window() {
  return FASTCONV_VEC_BYTES == 64 && R == 1 && V >= 4;
}

// R output channels x V vectors of positions, all taps.
template <typename T, int R, int V>
void forward_block(const ForwardTile<T>& a, int64_t oc0, int64_t j0, int64_t n) {
  using S = Simd<T>;
  using Vec = typename S::V;
  Vec acc[R][V];
  const T* w[R];
  for (int r = 0; r < R; ++r) {
    const Vec init = S::splat(a.bias ? a.bias[oc0 + r] : T(0));
    for (int v = 0; v < V; ++v) {
      acc[r][v] = init;
    }
    w[r] = a.weight + (oc0 + r) * a.taps;
  }
  // The window: V + 1 aligned vectors from window_at (0: none loaded yet).
  [[maybe_unused]] Vec window[V + 1] = {};
  [[maybe_unused]] uintptr_t window_at = 0;
  for (int64_t t = 0; t < a.taps; ++t) {
    const T* x = a.scratch + a.offsets[t] + j0;
    if constexpr (use_window<T, R, V>()) {
      if (t & 1) {
        // scratch is 64-byte aligned (scratch_buffer), so the window never
        // starts before it, and ends at most a vector past the block, inside
        // kScratchSlack.
        const auto at = reinterpret_cast<uintptr_t>(x);
        if (at - window_at >= uintptr_t(S::kBytes)) {
          window_at = at & ~uintptr_t(S::kBytes - 1);
          const T* base = reinterpret_cast<const T*>(window_at);
          for (int v = 0; v <= V; ++v) {
            window[v] = S::load(base + v * S::kLanes);
          }
        }
        fma_window<Vec, S::kLanes, V>(acc[0], window, S::splat(w[0][t]),
                                      static_cast<int>((at - window_at) / sizeof(T)),
                                      std::make_integer_sequence<int, S::kLanes>{});
        continue;
      }
    }
    Vec xv[V];
    for (int v = 0; v < V; ++v) {
      xv[v] = S::load(x + v * S::kLanes);
    }
    for (int r = 0; r < R; ++r) {
      const Vec wv = S::splat(w[r][t]);
      for (int v = 0; v < V; ++v) {
        acc[r][v] += wv * xv[v];
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    T* o = a.out + (oc0 + r) * a.out_stride + j0;
    for (int v = 0; v < V; ++v) {
      const int64_t left = n - v * S::kLanes;
      if (left >= S::kLanes && a.streaming && S::stream(o + v * S::kLanes, acc[r][v])) {
        continue;
      }
      if (left > 0) {
        S::store(o + v * S::kLanes, acc[r][v], left < S::kLanes ? left : S::kLanes);
      }
    }
  }
}

// One output channel, V < 4 vectors (short rows, tails): a single accumulator
// chain per vector would wait on FMA latency at every tap, so taps are spread
// over 4 / V independent accumulators and summed at the end.
template <typename T, int V>
void forward_block_narrow(const ForwardTile<T>& a, int64_t oc, int64_t j0, int64_t n) {
  using S = Simd<T>;
  using Vec = typename S::V;
  constexpr int U = 4 / V;
  Vec acc[U][V];
  for (int u = 0; u < U; ++u) {
    for (int v = 0; v < V; ++v) {
      acc[u][v] = S::splat(u == 0 && a.bias ? a.bias[oc] : T(0));
    }
  }
  const T* w = a.weight + oc * a.taps;
  int64_t t = 0;
  for (; t + U <= a.taps; t += U) {
    for (int u = 0; u < U; ++u) {
      const T* x = a.scratch + a.offsets[t + u] + j0;
      const Vec wv = S::splat(w[t + u]);
      for (int v = 0; v < V; ++v) {
        acc[u][v] += wv * S::load(x + v * S::kLanes);
      }
    }
  }
  for (; t < a.taps; ++t) {
    const T* x = a.scratch + a.offsets[t] + j0;
    const Vec wv = S::splat(w[t]);
    for (int v = 0; v < V; ++v) {
      acc[0][v] += wv * S::load(x + v * S::kLanes);
    }
  }
  T* o = a.out + oc * a.out_stride + j0;
  for (int v = 0; v < V; ++v) {
    for (int u = 1; u < U; ++u) {
      acc[0][v] += acc[u][v];
    }
    const int64_t left = n - v * S::kLanes;
    if (left > 0) {
      S::store(o + v * S::kLanes, acc[0][v], left < S::kLanes ? left : S::kLanes);
    }
  }
}

// Largest V (of 8, 4, 2, 1) whose R x V accumulators, V loads and a broadcast fit the registers.
constexpr int max_vectors(int R) {
  for (int v = 8; v > 1; v /= 2) {
    if (R * v + v + 1 <= kRegs) {
      return v;
    }
  }
  return 1;
}

constexpr int kMaxRows = kRegs >= 32 ? 8 : 4;

template <typename T, int R>
void forward_rows(const ForwardTile<T>& a, int64_t oc0, int64_t j, int V, int64_t n) {
  if constexpr (R == 1) {
    if (V == 1) return forward_block_narrow<T, 1>(a, oc0, j, n);
    if (V == 2) return forward_block_narrow<T, 2>(a, oc0, j, n);
  }
  switch (V) {
    case 8:
      if constexpr (max_vectors(R) >= 8) return forward_block<T, R, 8>(a, oc0, j, n);
      break;
    case 4:
      if constexpr (max_vectors(R) >= 4) return forward_block<T, R, 4>(a, oc0, j, n);
      break;
    case 2:
      if constexpr (max_vectors(R) >= 2) return forward_block<T, R, 2>(a, oc0, j, n);
      break;
    default:
      break;
  }
  forward_block<T, R, 1>(a, oc0, j, n);
}

template <typename T>
void forward_tile(const ForwardTile<T>& a) {
  constexpr int64_t lanes = Simd<T>::kLanes;
  // Positions outer, channels inner: the scratch columns of one block stay in
  // L1 while every output channel uses them.
  // The widest row block in use bounds the vectors per block for all of them.
  const int widest = a.out_channels >= kMaxRows ? kMaxRows
      : a.out_channels >= 4                     ? 4
      : a.out_channels >= 2                     ? 2
                                                : 1;
  const int vmax = max_vectors(widest);
  for (int64_t j = 0; j < a.length;) {
    const int64_t left = a.length - j;
    int V = vmax;
    while (V > 1 && V * lanes > left) {
      V /= 2;
    }
    const int64_t n = left < V * lanes ? left : V * lanes;
    int64_t oc = 0;
    if constexpr (kMaxRows == 8) {
      for (; oc + 8 <= a.out_channels; oc += 8) forward_rows<T, 8>(a, oc, j, V, n);
    }
    for (; oc + 4 <= a.out_channels; oc += 4) forward_rows<T, 4>(a, oc, j, V, n);
    for (; oc + 2 <= a.out_channels; oc += 2) forward_rows<T, 2>(a, oc, j, V, n);
    for (; oc < a.out_channels; ++oc) forward_rows<T, 1>(a, oc, j, V, n);
    j += n;
  }
  if (a.streaming) {
    Simd<T>::fence();
  }
}


}  // namespace
}  // namespace fastconv::cpu::FASTCONV_ISA
