// The conv1d weight-gradient micro-kernel: grad_weight[oc][t] += sum_j grad_out[oc][j] * scratch[offsets[t] + j].
#pragma once

#include "fastconv/cpu/kernels/simd.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

// The vector loop of a weight block of one output channel over one row whose
// taps read x0 + p (consecutive offsets), x0 being S0 lanes into an aligned
// vector: odd taps come from a window of aligned vectors, as in the forward
// block, here with the shifts known at compile time. The window reads at
// most a vector past the last tap's last vector (inside kScratchSlack).
template <typename T, int P, bool Bias, int S0>
void weight_row_window(const T* g, const T* x0, int64_t full, typename Simd<T>::V (&acc)[P],
                       typename Simd<T>::V& bias_acc) {
  using S = Simd<T>;
  using Vec = typename S::V;
  constexpr int W = S::kLanes;
  constexpr int kWindow = (S0 + P - 1) / W + 2;
  constexpr auto lanes = std::make_integer_sequence<int, W>{};
  const T* base = x0 - S0;
  Vec window[kWindow];
  for (int i = 0; i + 1 < kWindow; ++i) {
    window[i] = S::load(base + i * W);
  }
  for (int64_t j = 0; j < full; j += W) {
    window[kWindow - 1] = S::load(base + j + (kWindow - 1) * W);
    const Vec gv = S::load(g + j);
    if constexpr (Bias) bias_acc += gv;
    [&]<int... I>(std::integer_sequence<int, I...>) {
      ([&] {
        if constexpr (I % 2 == 1) {
          constexpr int k = S0 + I;
          acc[I] += gv * lanes_from<Vec, W, k % W>(window[k / W], window[k / W + 1], lanes);
        } else {
          acc[I] += gv * S::load(x0 + I + j);
        }
      }(), ...);
    }(std::make_integer_sequence<int, P>{});
    for (int i = 0; i + 1 < kWindow; ++i) {
      window[i] = window[i + 1];
    }
  }
}

// weight_row_window<T, P, Bias, s0> for a run-time s0 < W.
template <typename T, int P, bool Bias, int... S0>
void weight_row_window(int s0, const T* g, const T* x0, int64_t full, typename Simd<T>::V (&acc)[P],
                       typename Simd<T>::V& bias_acc, std::integer_sequence<int, S0...>) {
  (void)((s0 == S0 && (weight_row_window<T, P, Bias, S0>(g, x0, full, acc, bias_acc), true)) || ...);
}

// With Bias, the block also sums grad_out into grad_bias: grad_out is
// loaded for the taps anyway (a separate sum read a depthwise grad_out from
// DRAM again; a tap of ones in the scratch cost more than that sum).
template <typename T, int R, int P, bool Bias = false>
void weight_block(const WeightTile<T>& a, int64_t oc0, int64_t t0) {
  using S = Simd<T>;
  using Vec = typename S::V;
  constexpr int64_t lanes = S::kLanes;
  Vec acc[R][P];
  T tail[R][P];
  Vec bias_acc[R];
  T bias_tail[R];
  for (int r = 0; r < R; ++r) {
    for (int p = 0; p < P; ++p) {
      acc[r][p] = Vec{};
      tail[r][p] = 0;
    }
    bias_acc[r] = Vec{};
    bias_tail[r] = 0;
  }
  const int64_t full = a.length - a.length % lanes;
  bool windowed = FASTCONV_VEC_BYTES == 64 && R == 1 && P >= 4;
  for (int p = 1; p < P; ++p) {
    windowed = windowed && a.offsets[t0 + p] == a.offsets[t0] + p;
  }
  // Rows one after another into the same accumulators: a horizontal sum per
  // row cost short rows more than their multiply-adds.
  for (int64_t row = 0; row < a.rows; ++row) {
    const T* g[R];
    for (int r = 0; r < R; ++r) {
      g[r] = a.grad_out + row * a.grad_pitch + (oc0 + r) * a.grad_stride;
    }
    const T* x[P];
    for (int p = 0; p < P; ++p) {
      x[p] = a.scratch + row * a.scratch_pitch + a.offsets[t0 + p];
    }
    int64_t vector_from = 0;
    if constexpr (FASTCONV_VEC_BYTES == 64 && R == 1 && P >= 4) {
      if (windowed) {
        const int s0 = static_cast<int>(reinterpret_cast<uintptr_t>(x[0]) % S::kBytes / sizeof(T));
        weight_row_window<T, P, Bias>(s0, g[0], x[0], full, acc[0], bias_acc[0],
                                      std::make_integer_sequence<int, lanes>{});
        vector_from = full;
      }
    }
    for (int64_t j = vector_from; j < full; j += lanes) {
      Vec gv[R];
      for (int r = 0; r < R; ++r) {
        gv[r] = S::load(g[r] + j);
        if constexpr (Bias) bias_acc[r] += gv[r];
      }
      for (int p = 0; p < P; ++p) {
        const Vec xv = S::load(x[p] + j);
        for (int r = 0; r < R; ++r) {
          acc[r][p] += gv[r] * xv;
        }
      }
    }
    for (int64_t j = full; j < a.length; ++j) {
      for (int r = 0; r < R; ++r) {
        for (int p = 0; p < P; ++p) {
          tail[r][p] += g[r][j] * x[p][j];
        }
        if constexpr (Bias) bias_tail[r] += g[r][j];
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int p = 0; p < P; ++p) {
      a.grad_weight[(oc0 + r) * a.taps + t0 + p] += S::sum(acc[r][p]) + tail[r][p];
    }
    if constexpr (Bias) a.grad_bias[oc0 + r] += S::sum(bias_acc[r]) + bias_tail[r];
  }
}

constexpr bool weight_fits(int R, int P, bool bias = false) {
  return R * P + R + P + (bias ? R : 0) <= kRegs;
}

// The first block of taps, summing the bias too: the widest that fits the
// registers and the taps. Returns the taps it covered.
template <typename T, int R>
int64_t weight_bias_block(const WeightTile<T>& a, int64_t oc0) {
  if constexpr (weight_fits(R, 8, true)) {
    if (a.taps >= 8) {
      weight_block<T, R, 8, true>(a, oc0, 0);
      return 8;
    }
  }
  if constexpr (weight_fits(R, 4, true)) {
    if (a.taps >= 4) {
      weight_block<T, R, 4, true>(a, oc0, 0);
      return 4;
    }
  }
  if constexpr (weight_fits(R, 2, true)) {
    if (a.taps >= 2) {
      weight_block<T, R, 2, true>(a, oc0, 0);
      return 2;
    }
  }
  weight_block<T, R, 1, true>(a, oc0, 0);
  return 1;
}

template <typename T, int R>
void weight_rows(const WeightTile<T>& a, int64_t oc0) {
  int64_t t = a.grad_bias ? weight_bias_block<T, R>(a, oc0) : 0;
  if constexpr (weight_fits(R, 8)) {
    for (; t + 8 <= a.taps; t += 8) weight_block<T, R, 8>(a, oc0, t);
  }
  if constexpr (weight_fits(R, 4)) {
    for (; t + 4 <= a.taps; t += 4) weight_block<T, R, 4>(a, oc0, t);
  }
  for (; t + 2 <= a.taps; t += 2) weight_block<T, R, 2>(a, oc0, t);
  for (; t < a.taps; ++t) weight_block<T, R, 1>(a, oc0, t);
}

template <typename T>
void weight_tile(const WeightTile<T>& a) {
  int64_t oc = 0;
  for (; oc + 4 <= a.out_channels; oc += 4) weight_rows<T, 4>(a, oc);
  for (; oc + 2 <= a.out_channels; oc += 2) weight_rows<T, 2>(a, oc);
  for (; oc < a.out_channels; ++oc) weight_rows<T, 1>(a, oc);
}


}  // namespace
}  // namespace fastconv::cpu::FASTCONV_ISA
