// FFT channel mixing: R output channels x B rows (segments) of one
// vector of interleaved complex values, accumulated over the input channels.
// Every x vector serves R channels and every w vector B rows, so FMAs, not
// loads, bound the loop. Lane by lane, x (*) w = x * (w.re, w.re) +
// (-x.im, x.re) * (w.im, w.im): w's duplicates are two shuffles in
// registers, x's swap and sign one per x vector. (Converting w to that form
// in memory first cost a fifth of the time at 128 x 128 channels, and more
// than L2 held.)
#pragma once

#include "fastconv/cpu/kernels/simd.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {


template <typename V, int... I>
inline V swap_pairs(V x, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(x, x, (I ^ 1)...);
}

template <typename V, int... I>
inline V real_pairs(V x, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(x, x, (I & ~1)...);
}

template <typename V, int... I>
inline V imag_pairs(V x, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(x, x, (I | 1)...);
}

// The first n lanes from p (the last vector of a row), zeros after them: a
// masked load with AVX-512 (a variable-length memcpy cost out of all
// proportion to the one vector in seventeen it loads).
template <typename T>
inline typename Simd<T>::V load_lanes(const T* p, int64_t n) {
  using V = typename Simd<T>::V;
#if defined(__x86_64__) || defined(_M_X64)
  if constexpr (Simd<T>::kBytes == 64 && sizeof(T) == 4) {
    return reinterpret_cast<V>(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p));
  } else if constexpr (Simd<T>::kBytes == 64) {
    return reinterpret_cast<V>(_mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1), p));
  }
#endif
  V v{};
  std::memcpy(&v, p, n * sizeof(T));
  return v;
}

// n lanes at j: all of them unless Partial.
template <typename T, int R, int B, bool Partial>
void mix_block(const MixTile<T>& a, int64_t o0, int64_t b0, int64_t j, int64_t n) {
  using S = Simd<T>;
  using Vec = typename S::V;
  constexpr auto lanes = std::make_integer_sequence<int, S::kLanes>{};
  const auto load = [n](const T* p) { return Partial ? load_lanes(p, n) : S::load(p); };
  Vec sign;
  for (int i = 0; i < S::kLanes; ++i) sign[i] = i % 2 ? T(1) : T(-1);
  const T* x_row[B];
  for (int b = 0; b < B; ++b) x_row[b] = a.x + a.x_rows[b0 + b] + j;
  Vec acc[R][B] = {};
  for (int64_t c = 0; c < a.in_channels; ++c) {
    Vec x[B], xs[B];
    for (int b = 0; b < B; ++b) {
      x[b] = load(x_row[b] + c * a.x_channel_stride);
      xs[b] = swap_pairs(x[b], lanes) * sign;
    }
    for (int r = 0; r < R; ++r) {
      const Vec w = load(a.w + ((o0 + r) * a.in_channels + c) * a.w_stride + j);
      const Vec wr = real_pairs(w, lanes), wi = imag_pairs(w, lanes);
      for (int b = 0; b < B; ++b) {
        acc[r][b] += x[b] * wr;  // two statements: two FMAs
        acc[r][b] += xs[b] * wi;
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < B; ++b) {
      S::store(a.y + (o0 + r) * a.y_channel_stride + a.y_rows[b0 + b] + j, acc[r][b], Partial ? n : S::kLanes);
    }
  }
}

template <typename T, int R, bool Partial>
void mix_segments(const MixTile<T>& a, int64_t o0, int64_t j, int64_t n) {
  // R x B accumulators, B x values and their swaps, w and its two duplicates,
  // and the sign in registers.
  constexpr int B = (kRegs - 4) / (R + 2) >= 4 ? 4 : 2;
  int64_t b = 0;
  for (; b + B <= a.rows; b += B) mix_block<T, R, B, Partial>(a, o0, b, j, n);
  for (; b < a.rows; ++b) mix_block<T, R, 1, Partial>(a, o0, b, j, n);
}

template <typename T, bool Partial>
void mix_columns(const MixTile<T>& a, int64_t j, int64_t n) {
  int64_t o = 0;
  for (; o + 4 <= a.out_channels; o += 4) mix_segments<T, 4, Partial>(a, o, j, n);
  for (; o < a.out_channels; ++o) mix_segments<T, 1, Partial>(a, o, j, n);
}

template <typename T>
void mix_tile(const MixTile<T>& a) {
  constexpr int64_t lanes = Simd<T>::kLanes;
  const int64_t whole = a.length / lanes * lanes;
  for (int64_t j = 0; j < whole; j += lanes) mix_columns<T, false>(a, j, lanes);
  if (whole < a.length) mix_columns<T, true>(a, whole, a.length - whole);
}


}  // namespace
}  // namespace fastconv::cpu::FASTCONV_ISA
