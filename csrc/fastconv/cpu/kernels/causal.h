// The causal depthwise micro-kernels of tile_kernels.h, per instruction set,
// under simd.h's internal-linkage rule.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "fastconv/cpu/kernels/simd.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

// n <= kLanes values from p, zeros after them (tails: never reads past p + n).
template <typename T>
typename Simd<T>::V load_partial(const T* p, int64_t n) {
  typename Simd<T>::V v = {};
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
}

// Where a kernel reads and writes: T itself, or bfloat16 bits (Bf16) widened
// to T = float on load and rounded by to_bf16 on store.
template <typename T, bool Bf16>
struct Io {
  using Src = std::conditional_t<Bf16, uint16_t, T>;
  using V = typename Simd<T>::V;
  static constexpr int W = Simd<T>::kLanes;

  static V load(const Src* p) {
    if constexpr (Bf16) {
      // One vpmovzxwd (GCC splits the generic conversion into two halves and
      // joins them with shuffles).
#if FASTCONV_X86_AVX512
      const U32Vec bits =
          (U32Vec)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
#elif (defined(__x86_64__) || defined(_M_X64)) && FASTCONV_VEC_BYTES == 32
      const U32Vec bits =
          (U32Vec)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
#else
      U16Vec h;
      std::memcpy(&h, p, sizeof(h));
      const U32Vec bits = __builtin_convertvector(h, U32Vec) << 16;
#endif
      V v;
      std::memcpy(&v, &bits, sizeof(V));
      return v;
    } else {
      return Simd<T>::load(p);
    }
  }
  static V load(const Src* p, int64_t n) {
    if (n >= W) return load(p);
    Src tmp[W] = {};
    for (int64_t i = 0; i < n; ++i) tmp[i] = p[i];
    return load(tmp);
  }
  // Streaming: a whole vector at an address aligned to it goes around the
  // caches (non-temporal), which spares the read of the destination line.
  static void store(Src* p, V v, int64_t n, bool streaming = false) {
    if constexpr (Bf16) {
      const U16Vec h = to_bf16(v);
      if (n >= W) {
        if (!(streaming && stream_half(p, h))) std::memcpy(p, &h, sizeof(h));
      } else {
        for (int64_t i = 0; i < n; ++i) p[i] = h[i];
      }
    } else {
      if (!(streaming && n >= W && Simd<T>::stream(p, v))) Simd<T>::store(p, v, n < W ? n : W);
    }
  }

 private:
  static bool stream_half(uint16_t* p, U16Vec h) {
#if defined(__x86_64__) || defined(_M_X64)
    if (reinterpret_cast<uintptr_t>(p) % sizeof(U16Vec) != 0) return false;
    if constexpr (sizeof(U16Vec) == 32) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p), (__m256i)h);
    } else if constexpr (sizeof(U16Vec) == 16) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(p), (__m128i)h);
    } else {
      return false;
    }
    return true;
#else
    (void)p;
    (void)h;
    return false;
#endif
  }
};

// p[i] = the Taylor polynomial of e^r[i] on |r| <= ln2 / 2 (sigmoid's),
// degree 6 or, Coarse, 4; Horner's steps for all N before the next.
template <typename T, bool Coarse, int N>
__attribute__((always_inline)) inline void exp_poly_n(const typename Simd<T>::V (&r)[N], typename Simd<T>::V (&p)[N]) {
  constexpr float kFine[] = {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
  constexpr float kCoarse[] = {1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
  const float* c = Coarse ? kCoarse : kFine;
  constexpr int kTerms = Coarse ? 5 : 7;
  for (int i = 0; i < N; ++i) p[i] = Simd<T>::splat(c[0]);
  for (int k = 1; k < kTerms; ++k) {
    for (int i = 0; i < N; ++i) p[i] = p[i] * r[i] + c[k];
  }
}

// min(hi, max(lo, v)) per lane, NaN kept: the x86 max and min return their
// second operand when either is NaN (one instruction each; the generic
// form is a compare and a blend).
__attribute__((always_inline)) inline Simd<float>::V clamp(Simd<float>::V v, float lo, float hi) {
  using V = Simd<float>::V;
#if FASTCONV_X86_AVX512
  return (V)_mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), (__m512)v));
#elif (defined(__x86_64__) || defined(_M_X64)) && FASTCONV_VEC_BYTES == 32
  return (V)_mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), (__m256)v));
#elif defined(__x86_64__) || defined(_M_X64)
  return (V)_mm_min_ps(_mm_set1_ps(hi), _mm_max_ps(_mm_set1_ps(lo), (__m128)v));
#else
  v = v < lo ? Simd<float>::splat(lo) : v;
  return v > hi ? Simd<float>::splat(hi) : v;
#endif
}

// 1 / d for sigmoid's denominator, 1 <= d < 2^127: on x86 the hardware
// estimate (12 or 14 bits; the 12-bit one gives 0 in place of results below
// 2^-126) and a Newton step (about 2^-22), several times the throughput of a
// division.
template <bool Coarse>
__attribute__((always_inline)) inline Simd<float>::V reciprocal(Simd<float>::V d) {
  using V = Simd<float>::V;
#if FASTCONV_X86_AVX512
  const V e = (V)_mm512_rcp14_ps((__m512)d);
  if constexpr (Coarse) return e;
#elif (defined(__x86_64__) || defined(_M_X64)) && FASTCONV_VEC_BYTES == 32
  const V e = (V)_mm256_rcp_ps((__m256)d);
#elif defined(__x86_64__) || defined(_M_X64)
  const V e = (V)_mm_rcp_ps((__m128)d);
#else
  return 1.0f / d;
#endif
#if defined(__x86_64__) || defined(_M_X64)
  return e * (2.0f - d * e);
#endif
}

// x[i] = 1 / (1 + exp(-x[i])) for N vectors. float: exp(-x) as 2^n * e^r,
// |r| <= ln2 / 2, with the degree-6 Taylor polynomial (relative error below
// 3e-8) and x clamped to [-88, 87] (infinities give 0 and 1, NaN stays NaN),
// then reciprocal() (SiLU's relative error measured below 4e-7); double:
// std::exp per lane. Coarse (for results rounded to bfloat16, whose own
// error is 2^-9): a degree-4 polynomial and, with AVX-512, the 14-bit
// estimate without its Newton step, both below 1e-4. AVX-512 forms n with
// vrndscaleps and 2^n * p with vscalefps (one instruction each where the
// generic form takes an add, a subtract, a conversion, an add and a shift).
// Each step runs for all N vectors before the next: N independent chains
// side by side in program order. One vector's chain is some 20 dependent
// operations; issued one chain after another, the waiting ones filled the
// scheduler and the activation ran at its latency, not its throughput.
template <typename T, bool Coarse, int N>
__attribute__((always_inline)) inline void sigmoid_n(typename Simd<T>::V (&x)[N]) {
  using V = typename Simd<T>::V;
  if constexpr (sizeof(T) == 4) {
    constexpr float kLog2e = 1.44269504f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
    V d[N];
#if FASTCONV_X86_AVX512
    __m512 n[N];
    V r[N];
    for (int i = 0; i < N; ++i) x[i] = clamp(x[i], -88.0f, 87.0f);
    for (int i = 0; i < N; ++i) {
      n[i] = _mm512_roundscale_ps(_mm512_mul_ps((__m512)x[i], _mm512_set1_ps(-kLog2e)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    // r = -x - n ln2, ln2 in two parts.
    for (int i = 0; i < N; ++i) r[i] = (V)_mm512_fnmsub_ps(n[i], _mm512_set1_ps(kLn2Hi), (__m512)x[i]);
    for (int i = 0; i < N; ++i) r[i] = (V)_mm512_fnmadd_ps(n[i], _mm512_set1_ps(kLn2Lo), (__m512)r[i]);
    exp_poly_n<T, Coarse>(r, d);
    for (int i = 0; i < N; ++i) d[i] = (V)_mm512_scalef_ps((__m512)d[i], n[i]) + 1.0f;
#else
    const V magic = Simd<T>::splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    V z[N], n[N], scale[N];
    for (int i = 0; i < N; ++i) z[i] = -clamp(x[i], -88.0f, 87.0f);
    for (int i = 0; i < N; ++i) n[i] = (z[i] * kLog2e + magic) - magic;
    for (int i = 0; i < N; ++i) z[i] = (z[i] - n[i] * kLn2Hi) - n[i] * kLn2Lo;
    for (int i = 0; i < N; ++i) {
      const I32Vec bits = (__builtin_convertvector(n[i], I32Vec) + 127) << 23;
      std::memcpy(&scale[i], &bits, sizeof(V));
    }
    exp_poly_n<T, Coarse>(z, d);
    for (int i = 0; i < N; ++i) d[i] = 1.0f + d[i] * scale[i];
#endif
    for (int i = 0; i < N; ++i) x[i] = reciprocal<Coarse>(d[i]);
  } else {
    for (int i = 0; i < N; ++i) {
      for (int l = 0; l < Simd<T>::kLanes; ++l) x[i][l] = T(1) / (T(1) + std::exp(-x[i][l]));
    }
  }
}

template <typename T, bool Coarse = false>
__attribute__((always_inline)) inline typename Simd<T>::V sigmoid(typename Simd<T>::V x) {
  typename Simd<T>::V v[1] = {x};
  sigmoid_n<T, Coarse>(v);
  return v[0];
}

// x[i] = act(x[i]) for N vectors (SiLU: x sigmoid(x), as sigmoid_n).
template <typename T, bool Silu, bool Coarse, int N>
__attribute__((always_inline)) inline void activate_n(typename Simd<T>::V (&x)[N]) {
  if constexpr (Silu) {
    typename Simd<T>::V s[N];
    for (int i = 0; i < N; ++i) s[i] = x[i];
    sigmoid_n<T, Coarse>(s);
    for (int i = 0; i < N; ++i) x[i] *= s[i];
  }
}

template <typename T, bool Silu, bool Coarse = false>
__attribute__((always_inline)) inline typename Simd<T>::V activate(typename Simd<T>::V x) {
  typename Simd<T>::V v[1] = {x};
  activate_n<T, Silu, Coarse>(v);
  return v[0];
}

// f(std::bool_constant<act is SiLU>()): kernels with the activation fixed at
// compile time, so no vector of outputs branches on it.
template <typename F>
void with_activation(Activation act, F&& f) {
  if (act == Activation::kSilu) return f(std::true_type());
  f(std::false_type());
}

// f(std::integral_constant<int, taps>()) for taps in [K, Max], else f(std::integral_constant<int, 0>()):
// kernels with the tap count known at compile time where it is small.
template <int K, int Max, typename F>
void with_taps(int64_t taps, F&& f) {
  if constexpr (K > Max) {
    f(std::integral_constant<int, 0>());
  } else {
    if (taps == K) return f(std::integral_constant<int, K>());
    with_taps<K + 1, Max>(taps, std::forward<F>(f));
  }
}

// Hides v's value from the optimizer, so that a vector loaded (and widened)
// once is kept in a register: GCC otherwise repeats the load and widening at
// each use, under the register pressure of the activation.
template <typename V>
__attribute__((always_inline)) inline void keep_in_register(V& v) {
#if FASTCONV_X86_AVX512
  asm("" : "+v"(v));
#else
  (void)v;
#endif
}

// Channels-last tiles prefetch the rows this many positions past the block
// they compute (see causal_channel_positions).
constexpr int64_t kCausalPrefetchRows = 8;

// ---- forward, vectors along time

// V vectors of outputs from j; Full: all V * kLanes of them (no partial loads).
template <typename T, bool In16, bool Out16, bool Silu, int V, bool Full>
__attribute__((always_inline)) inline void causal_time_block(const CausalTimeTile<T>& a, int64_t j, int64_t n) {
  using In = Io<T, In16>;
  using Out = Io<T, Out16>;
  constexpr int64_t W = Simd<T>::kLanes;
  const typename In::Src* win;
  typename Out::Src* out;
  if constexpr (In16) win = a.win_bf16; else win = a.win;
  if constexpr (Out16) out = a.out_bf16; else out = a.out;
  typename Simd<T>::V acc[V];
  for (int v = 0; v < V; ++v) acc[v] = Simd<T>::splat(a.bias);
  for (int64_t k = 0; k < a.taps; ++k) {
    const auto wk = Simd<T>::splat(a.w[k]);
    const auto* x = win + j + k * a.dilation;
    for (int v = 0; v < V; ++v) acc[v] += wk * (Full ? In::load(x + v * W) : In::load(x + v * W, n - v * W));
  }
  activate_n<T, Silu, Out16>(acc);
  for (int v = 0; v < V; ++v) {
    const int64_t left = Full ? W : n - v * W;
    if (left > 0) Out::store(out + j + v * W, acc[v], left, a.streaming);
  }
}

// bfloat16 in and out where no single instruction widens or rounds a
// vector of them: 2W bfloat16 values read as W 32-bit lanes hold the even
// positions in their low halves and the odd ones in their high halves
// (bf16_pairs). A tap's offset is the same for both halves, so each is a
// float vector of outputs on its own, and bf16_interleave puts the two back
// in place: shifts, masks and an OR instead of the shuffles of widening and
// narrowing (which, on AVX2, took most of the time). Blocks of V pairs, as
// long as they fit; returns where they stopped.
template <bool Silu, int V>
int64_t causal_time_pairs(const CausalTimeTile<float>& a) {
  using S = Simd<float>;
  constexpr int64_t kPair = 2 * S::kLanes;
  int64_t j = 0;
  for (; j + V * kPair <= a.n; j += V * kPair) {
    S::V acc[2 * V];  // even and odd positions of pair v at 2v and 2v + 1
    for (int i = 0; i < 2 * V; ++i) acc[i] = S::splat(a.bias);
    for (int64_t k = 0; k < a.taps; ++k) {
      const auto wk = S::splat(a.w[k]);
      const uint16_t* x = a.win_bf16 + j + k * a.dilation;
      for (int v = 0; v < V; ++v) {
        S::V e, o;
        bf16_pairs(x + v * kPair, e, o);
        acc[2 * v] += wk * e;
        acc[2 * v + 1] += wk * o;
      }
    }
    activate_n<float, Silu, true>(acc);
    for (int v = 0; v < V; ++v) {
      const U32Vec h = bf16_interleave(acc[2 * v], acc[2 * v + 1]);
      uint16_t* p = a.out_bf16 + j + v * kPair;
      S::V f;
      std::memcpy(&f, &h, sizeof(f));
      if (!(a.streaming && S::stream(reinterpret_cast<float*>(p), f))) std::memcpy(p, &h, sizeof(h));
    }
  }
  return j;
}

template <typename T, bool In16, bool Out16, bool Silu>
void causal_time_act(const CausalTimeTile<T>& a) {
  constexpr int64_t W = Simd<T>::kLanes;
  int64_t j = 0;
  if constexpr (In16 && Out16 && !FASTCONV_HAS_AVX512_BF16) j = causal_time_pairs<Silu, 2>(a);
  for (; j + 4 * W <= a.n; j += 4 * W) causal_time_block<T, In16, Out16, Silu, 4, true>(a, j, 4 * W);
  for (; j + W <= a.n; j += W) causal_time_block<T, In16, Out16, Silu, 1, true>(a, j, W);
  if (j < a.n) causal_time_block<T, In16, Out16, Silu, 1, false>(a, j, a.n - j);
}

template <typename T, bool In16, bool Out16>
void causal_time_io(const CausalTimeTile<T>& a) {
  with_activation(a.act, [&](auto silu) { causal_time_act<T, In16, Out16, decltype(silu)::value>(a); });
}

template <typename T>
void causal_time(const CausalTimeTile<T>& a) {
  if constexpr (sizeof(T) == 4) {
    if (a.win_bf16 && a.out_bf16) return causal_time_io<T, true, true>(a);
    if (a.out_bf16) return causal_time_io<T, false, true>(a);
  }
  causal_time_io<T, false, false>(a);
}

// ---- forward, vectors along channels

// Channels-last outputs go around the caches only with 64-byte vectors (the
// AVX-512 kernels): a block stores one vector to each of P rows in turn, and
// narrower non-temporal stores leave P partial lines waiting to combine. On
// an AVX2 CPU (Zen 3) that ran 1.4-2x slower than plain stores.
constexpr bool kStreamChannelRows = FASTCONV_VEC_BYTES == 64;

// The pointers a block of P positions from j uses, resolved once for all its
// channel vectors (per vector, loading row pointers and computing output
// addresses cost as much as the convolution): with KT > 0 and dilation 1
// the P + KT - 1 rows it reads, the rows kCausalPrefetchRows positions past
// the block (nullptr past the end), the P output rows.
template <typename T, bool In16, bool Out16, int P, int KT>
struct ChannelBlock {
  using In = typename Io<T, In16>::Src;
  using Out = typename Io<T, Out16>::Src;
  static constexpr int kRows = KT > 0 ? P + KT - 1 : 1;
  const In* x[kRows] = {};
  const In* ahead[P] = {};
  Out* out[P];
  bool window, streaming;

  ChannelBlock(const CausalChannelTile<T>& a, int64_t j)
      : window(KT > 0 && a.dilation == 1), streaming(a.streaming && kStreamChannelRows) {
    const In* const* rows;
    Out* o;
    if constexpr (In16) rows = a.rows_bf16; else rows = a.rows;
    if constexpr (Out16) o = a.out_bf16; else o = a.out;
    if (window) {
      for (int i = 0; i < kRows; ++i) x[i] = rows[j + i];
    }
    const int64_t H = (a.taps - 1) * a.dilation, r = j + H + P + kCausalPrefetchRows;
    for (int p = 0; p < P; ++p) {
      if (P > 1 && r + p < a.n + H) ahead[p] = rows[r + p];
      out[p] = o + (j + p) * a.out_stride;
    }
  }
};

// P positions from j, one vector of channels from c (m of them; Full: all
// kLanes). KT > 0: the tap count, known at compile time; with dilation 1
// the P + KT - 1 rows are loaded (and widened) once for the P outputs and the
// weights once for all of them. Positions run outer, so a task reads its
// rows front to back, a few at a time (vectors down a column of rows touched
// a page per load).
template <typename T, bool In16, bool Out16, bool Silu, int P, bool Full, int KT>
__attribute__((always_inline)) inline void causal_channel_block(const CausalChannelTile<T>& a,
                                                                const ChannelBlock<T, In16, Out16, P, KT>& blk,
                                                                int64_t j, int64_t c, int64_t m) {
  using S = Simd<T>;
  using Vec = typename S::V;
  using X = Io<T, Out16>;
  const auto load = [&](const auto* p) {
    using Q = std::remove_cv_t<std::remove_pointer_t<decltype(p)>>;
    using L = Io<T, !std::is_same_v<Q, T>>;
    return Full ? L::load(p) : L::load(p, m);
  };
  const typename Io<T, In16>::Src* const* rows;
  if constexpr (In16) rows = a.rows_bf16; else rows = a.rows;
  const Vec bias = a.bias == nullptr ? Vec{} : load(a.bias + c);
  Vec acc[P];
  for (int p = 0; p < P; ++p) acc[p] = bias;
  if constexpr (KT > 0) {
    Vec w[KT];
    for (int k = 0; k < KT; ++k) w[k] = load(a.w + k * a.channels + c);
    if (blk.window) {
      Vec x[P + KT - 1];
      for (int i = 0; i < P + KT - 1; ++i) {
        x[i] = load(blk.x[i] + c);
        keep_in_register(x[i]);
      }
      for (int p = 0; p < P; ++p) {
        for (int k = 0; k < KT; ++k) acc[p] += w[k] * x[p + k];
      }
    } else {
      for (int p = 0; p < P; ++p) {
        for (int k = 0; k < KT; ++k) acc[p] += w[k] * load(rows[j + p + k * a.dilation] + c);
      }
    }
  } else {
    for (int64_t k = 0; k < a.taps; ++k) {
      const Vec wk = load(a.w + k * a.channels + c);
      for (int p = 0; p < P; ++p) acc[p] += wk * load(rows[j + p + k * a.dilation] + c);
    }
  }
  activate_n<T, Silu, Out16>(acc);
  for (int p = 0; p < P; ++p) X::store(blk.out[p] + c, acc[p], Full ? S::kLanes : m, blk.streaming);
}

// Each cache line of the rows ahead is requested next to the vectors that
// use the block's own rows: runs of a few hundred channels at a stride of C
// are too short for the hardware prefetchers, and a burst of requests at
// the start of each block (the earlier form) left the loads waiting on memory.
template <typename T, bool In16, bool Out16, bool Silu, int P, int KT>
void causal_channel_positions(const CausalChannelTile<T>& a, int64_t j) {
  constexpr int64_t W = Simd<T>::kLanes;
  constexpr int64_t kLine = 64 / sizeof(typename Io<T, In16>::Src);  // channels per cache line
  const ChannelBlock<T, In16, Out16, P, KT> blk(a, j);
  int64_t c = 0;
  for (; c + W <= a.channels; c += W) {
    if (c % kLine == 0) {
      for (int p = 0; p < P; ++p) {
        if (blk.ahead[p] != nullptr) __builtin_prefetch(blk.ahead[p] + c);
      }
    }
    causal_channel_block<T, In16, Out16, Silu, P, true, KT>(a, blk, j, c, W);
  }
  if (c < a.channels) causal_channel_block<T, In16, Out16, Silu, P, false, KT>(a, blk, j, c, a.channels - c);
}

template <typename T, bool In16, bool Out16, bool Silu, int KT>
void causal_channel_taps(const CausalChannelTile<T>& a) {
  constexpr int P = 4;
  int64_t j = 0;
  for (; j + P <= a.n; j += P) causal_channel_positions<T, In16, Out16, Silu, P, KT>(a, j);
  for (; j < a.n; ++j) causal_channel_positions<T, In16, Out16, Silu, 1, KT>(a, j);
}

template <typename T, bool In16, bool Out16>
void causal_channel_io(const CausalChannelTile<T>& a) {
  with_activation(a.act, [&](auto silu) {
    with_taps<1, 4>(a.taps, [&](auto kt) {
      causal_channel_taps<T, In16, Out16, decltype(silu)::value, decltype(kt)::value>(a);
    });
  });
}

template <typename T>
void causal_channel(const CausalChannelTile<T>& a) {
  if constexpr (sizeof(T) == 4) {
    if (a.rows_bf16 && a.out_bf16) return causal_channel_io<T, true, true>(a);
    if (a.out_bf16) return causal_channel_io<T, false, true>(a);
  }
  causal_channel_io<T, false, false>(a);
}

// ---- weight and bias gradients
//
// One pass over the rows with every tap's accumulator in registers when the
// tap count is known at compile time (KT > 0, up to kWeightTaps); KT = 0:
// a pass per tap.
constexpr int kWeightTaps = 8;

template <typename T, int KT>
void causal_time_weight_taps(const CausalTimeWeightTile<T>& a) {
  using S = Simd<T>;
  using Vec = typename S::V;
  constexpr int64_t W = S::kLanes;
  constexpr int P = KT > 0 ? KT : 1;  // taps per pass
  for (int64_t k0 = 0; k0 < a.taps; k0 += P) {
    Vec acc[P] = {}, bias = {};
    int64_t j = 0;
    for (; j + W <= a.n; j += W) {
      const Vec g = S::load(a.g + j);
      bias += g;
      for (int p = 0; p < P; ++p) acc[p] += g * S::load(a.win + j + (k0 + p) * a.dilation);
    }
    if (j < a.n) {
      const int64_t m = a.n - j;
      const Vec g = load_partial(a.g + j, m);
      bias += g;
      for (int p = 0; p < P; ++p) acc[p] += g * load_partial(a.win + j + (k0 + p) * a.dilation, m);
    }
    for (int p = 0; p < P; ++p) a.gw[k0 + p] += S::sum(acc[p]);
    if (k0 == 0) *a.gb += S::sum(bias);
  }
}

template <typename T>
void causal_time_weight(const CausalTimeWeightTile<T>& a) {
  with_taps<1, kWeightTaps>(a.taps, [&](auto kt) { causal_time_weight_taps<T, decltype(kt)::value>(a); });
}

template <typename T, int KT>
void causal_channel_weight_taps(const CausalChannelWeightTile<T>& a) {
  using S = Simd<T>;
  using Vec = typename S::V;
  constexpr int64_t W = S::kLanes;
  constexpr int P = KT > 0 ? KT : 1;
  for (int64_t c = 0; c < a.channels; c += W) {
    const int64_t m = a.channels - c < W ? a.channels - c : W;
    for (int64_t k0 = 0; k0 < a.taps; k0 += P) {
      Vec acc[P] = {}, bias = {};
      for (int64_t j = 0; j < a.n; ++j) {
        const T* gp = a.g + j * a.g_stride + c;
        const Vec g = m == W ? S::load(gp) : load_partial(gp, m);
        bias += g;
        for (int p = 0; p < P; ++p) {
          const T* x = a.rows[j + (k0 + p) * a.dilation] + c;
          acc[p] += g * (m == W ? S::load(x) : load_partial(x, m));
        }
      }
      for (int p = 0; p < P; ++p) {
        for (int64_t i = 0; i < m; ++i) a.gw[(k0 + p) * a.channels + c + i] += acc[p][i];
      }
      if (k0 == 0) {
        for (int64_t i = 0; i < m; ++i) a.gb[c + i] += bias[i];
      }
    }
  }
}

template <typename T>
void causal_channel_weight(const CausalChannelWeightTile<T>& a) {
  with_taps<1, kWeightTaps>(a.taps, [&](auto kt) { causal_channel_weight_taps<T, decltype(kt)::value>(a); });
}

// ---- SiLU backward, vectors along time, one pass

// The weight-gradient accumulators of every tap stay in registers over the
// tile; x is read for the pre-activation and again (from L1) for the terms.
// V vectors of positions at a time from j (Full: no partial loads), so that
// the sigmoids of several vectors overlap. Gy16: grad_y as bfloat16 bits.
template <typename T, bool In16, bool Gy16, int KT, int V, bool Full>
__attribute__((always_inline)) inline void causal_time_silu_grad_block(const CausalTimeSiluGradTile<T>& a, int64_t j,
                                                                       const typename Simd<T>::V* w,
                                                                       typename Simd<T>::V* acc,
                                                                       typename Simd<T>::V& bias_acc) {
  using S = Simd<T>;
  using Vec = typename S::V;
  using X = Io<T, In16>;
  constexpr int64_t W = S::kLanes;
  const typename X::Src* win;
  if constexpr (In16) win = a.win_bf16; else win = a.win;
  const int64_t m = Full ? V * W : a.n - j;
  const auto x_at = [&](int v, int k) {
    const auto* p = win + j + v * W + k * a.dilation;
    return Full ? X::load(p) : X::load(p, m - v * W);
  };
  // Each step for all V vectors before the next: V independent chains side by side.
  Vec pre[V], g[V];
  for (int v = 0; v < V; ++v) {
    pre[v] = S::splat(a.bias);
    for (int k = 0; k < KT; ++k) pre[v] += w[k] * x_at(v, k);
  }
  Vec s[V];
  for (int v = 0; v < V; ++v) s[v] = pre[v];
  sigmoid_n<T, false>(s);
  for (int v = 0; v < V; ++v) {
    const int64_t left = Full ? W : m - v * W;
    Vec gy;
    if constexpr (Gy16) {
      const uint16_t* p = a.gy_bf16 + j + v * W;
      gy = Full ? Io<T, true>::load(p) : Io<T, true>::load(p, left);
    } else {
      gy = Full ? S::load(a.gy + j + v * W) : load_partial(a.gy + j + v * W, left);
    }
    g[v] = gy * s[v] * (T(1) + pre[v] * (T(1) - s[v]));
    S::store(a.g + j + v * W, g[v], left);
  }
  for (int v = 0; v < V; ++v) {
    for (int k = 0; k < KT; ++k) acc[k] += g[v] * x_at(v, k);
    bias_acc += g[v];
  }
}

template <typename T, bool In16, bool Gy16, int KT>
void causal_time_silu_grad_taps(const CausalTimeSiluGradTile<T>& a) {
  using S = Simd<T>;
  using Vec = typename S::V;
  constexpr int64_t W = S::kLanes;
  Vec w[KT], acc[KT] = {}, bias_acc = {};
  for (int k = 0; k < KT; ++k) w[k] = S::splat(a.w[k]);
  int64_t j = 0;
  for (; j + 4 * W <= a.n; j += 4 * W) causal_time_silu_grad_block<T, In16, Gy16, KT, 4, true>(a, j, w, acc, bias_acc);
  for (; j + W <= a.n; j += W) causal_time_silu_grad_block<T, In16, Gy16, KT, 1, true>(a, j, w, acc, bias_acc);
  if (j < a.n) causal_time_silu_grad_block<T, In16, Gy16, KT, 1, false>(a, j, w, acc, bias_acc);
  for (int k = 0; k < KT; ++k) a.gw[k] += S::sum(acc[k]);
  *a.gb += S::sum(bias_acc);
}

template <typename T>
void causal_time_silu_grad(const CausalTimeSiluGradTile<T>& a) {
  with_taps<1, kCausalFusedTaps>(a.taps, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    if constexpr (KT > 0) {
      if constexpr (sizeof(T) == 4) {
        if (a.win_bf16) return causal_time_silu_grad_taps<T, true, true, KT>(a);
        if (a.gy_bf16) return causal_time_silu_grad_taps<T, false, true, KT>(a);
      }
      causal_time_silu_grad_taps<T, false, false, KT>(a);
    }
  });
}

// ---- SiLU backward, vectors along channels, one pass

// The pointers a block of P positions from j uses, resolved once for all its
// channel vectors, as ChannelBlock: the rows of x (KT > 0, dilation 1),
// grad_y's rows (In16: bfloat16 in place; else gy in place, or g's rows where
// g holds grad_y), g's rows, and the x and grad_y rows kCausalPrefetchRows
// positions past the block.
template <typename T, bool In16, int P, int KT>
struct SiluGradBlock {
  using In = typename Io<T, In16>::Src;
  static constexpr int kRows = KT > 0 ? P + KT - 1 : 1;
  const In* x[kRows] = {};
  const In* ahead[2 * P] = {};
  const In* gy[P] = {};
  T* g[P];
  bool window;

  SiluGradBlock(const CausalChannelSiluGradTile<T>& a, int64_t j) : window(KT > 0 && a.dilation == 1) {
    const In* const* rows;
    const In* gy0;
    if constexpr (In16) {
      rows = a.rows_bf16, gy0 = a.gy_bf16;
    } else {
      rows = a.rows, gy0 = a.gy;
    }
    if (window) {
      for (int i = 0; i < kRows; ++i) x[i] = rows[j + i];
    }
    const int64_t H = (a.taps - 1) * a.dilation, r = j + P + kCausalPrefetchRows;
    for (int p = 0; p < P; ++p) {
      g[p] = a.g + (j + p) * a.g_stride;
      if constexpr (In16) gy[p] = gy0 + (j + p) * a.gy_stride;
      else gy[p] = gy0 == nullptr ? g[p] : gy0 + (j + p) * a.gy_stride;
      if (P > 1 && r + p < a.n) {
        ahead[p] = rows[r + p + H];
        if (gy0 != nullptr) ahead[P + p] = gy0 + (r + p) * a.gy_stride;
      }
    }
  }
};

// P positions from j, one vector of channels from c (m of them; Full: all
// kLanes); Weight: add the weight and bias gradient terms; In16: x and grad_y
// as bfloat16 bits. KT > 0: the tap count at compile time; with dilation 1
// the P + KT - 1 rows of x are loaded once for the pre-activations and the
// weight terms.
template <typename T, bool In16, int P, bool Full, int KT, bool Weight>
__attribute__((always_inline)) inline void causal_silu_grad_block(const CausalChannelSiluGradTile<T>& a,
                                                                  const SiluGradBlock<T, In16, P, KT>& blk, int64_t j,
                                                                  int64_t c, int64_t m) {
  using S = Simd<T>;
  using Vec = typename S::V;
  using X = Io<T, In16>;
  const int64_t len = Full ? S::kLanes : m;
  const auto load = [&](const auto* p) {
    using Q = std::remove_cv_t<std::remove_pointer_t<decltype(p)>>;
    using L = Io<T, !std::is_same_v<Q, T>>;
    return Full ? L::load(p) : L::load(p, m);
  };
  const typename X::Src* const* rows;
  if constexpr (In16) rows = a.rows_bf16; else rows = a.rows;
  const Vec bias = a.bias == nullptr ? Vec{} : load(a.bias + c);
  // x_at(p, k): x at position j + p + k * dilation; w_at(k): tap k's weights.
  const auto terms = [&](auto taps, const auto& x_at, const auto& w_at) {
    Vec g[P], pre[P], s[P];
    for (int p = 0; p < P; ++p) {
      pre[p] = bias;
      for (int64_t k = 0; k < taps; ++k) pre[p] += w_at(k) * x_at(p, k);
      s[p] = pre[p];
    }
    sigmoid_n<T, false>(s);
    for (int p = 0; p < P; ++p) {
      const Vec gy = load(blk.gy[p] + c);
      g[p] = gy * s[p] * (T(1) + pre[p] * (T(1) - s[p]));
      S::store(blk.g[p] + c, g[p], len);
    }
    if constexpr (Weight) {
      for (int64_t k = 0; k < taps; ++k) {
        Vec acc = load(a.gw + k * a.channels + c);
        for (int p = 0; p < P; ++p) acc += g[p] * x_at(p, k);
        S::store(a.gw + k * a.channels + c, acc, len);
      }
      Vec gb = load(a.gb + c);
      for (int p = 0; p < P; ++p) gb += g[p];
      S::store(a.gb + c, gb, len);
    }
  };
  const auto x_row = [&](int p, int64_t k) { return load(rows[j + p + k * a.dilation] + c); };
  if constexpr (KT > 0) {
    Vec w[KT];
    for (int k = 0; k < KT; ++k) w[k] = load(a.w + k * a.channels + c);
    const auto w_at = [&](int64_t k) { return w[k]; };
    if (blk.window) {
      Vec x[P + KT - 1];
      for (int i = 0; i < P + KT - 1; ++i) {
        x[i] = load(blk.x[i] + c);
        keep_in_register(x[i]);
      }
      return terms(std::integral_constant<int64_t, KT>(), [&](int p, int64_t k) { return x[p + k]; }, w_at);
    }
    return terms(std::integral_constant<int64_t, KT>(), x_row, w_at);
  }
  terms(a.taps, x_row, [&](int64_t k) { return load(a.w + k * a.channels + c); });
}

// The rows ahead requested next to the vectors that use the block's own, as
// in causal_channel_positions.
template <typename T, bool In16, int P, int KT, bool Weight>
void causal_silu_grad_positions(const CausalChannelSiluGradTile<T>& a, int64_t j) {
  constexpr int64_t W = Simd<T>::kLanes;
  constexpr int64_t kLine = 64 / sizeof(typename Io<T, In16>::Src);
  const SiluGradBlock<T, In16, P, KT> blk(a, j);
  int64_t c = 0;
  for (; c + W <= a.channels; c += W) {
    if (c % kLine == 0) {
      for (int p = 0; p < 2 * P; ++p) {
        if (blk.ahead[p] != nullptr) __builtin_prefetch(blk.ahead[p] + c);
      }
    }
    causal_silu_grad_block<T, In16, P, true, KT, Weight>(a, blk, j, c, W);
  }
  if (c < a.channels) causal_silu_grad_block<T, In16, P, false, KT, Weight>(a, blk, j, c, a.channels - c);
}

template <typename T, bool In16, int KT>
void causal_silu_grad_taps(const CausalChannelSiluGradTile<T>& a) {
  constexpr int P = 4;
  int64_t j = 0;
  for (; j + P <= a.n_weight; j += P) causal_silu_grad_positions<T, In16, P, KT, true>(a, j);
  for (; j < a.n_weight; ++j) causal_silu_grad_positions<T, In16, 1, KT, true>(a, j);
  for (; j + P <= a.n; j += P) causal_silu_grad_positions<T, In16, P, KT, false>(a, j);
  for (; j < a.n; ++j) causal_silu_grad_positions<T, In16, 1, KT, false>(a, j);
}

template <typename T>
void causal_channel_silu_grad(const CausalChannelSiluGradTile<T>& a) {
  with_taps<1, 4>(a.taps, [&](auto kt) {
    if constexpr (sizeof(T) == 4) {
      if (a.rows_bf16) return causal_silu_grad_taps<T, true, decltype(kt)::value>(a);
    }
    causal_silu_grad_taps<T, false, decltype(kt)::value>(a);
  });
}

// g *= silu'(pre) = s (1 + pre (1 - s)), s = sigmoid(pre).
template <typename T>
void silu_grad(const T* pre, T* g, int64_t n) {
  using S = Simd<T>;
  constexpr int64_t W = S::kLanes;
  for (int64_t j = 0; j < n; j += W) {
    const int64_t m = n - j < W ? n - j : W;
    const auto x = m == W ? S::load(pre + j) : load_partial(pre + j, m);
    const auto gv = m == W ? S::load(g + j) : load_partial(g + j, m);
    const auto s = sigmoid<T>(x);
    S::store(g + j, gv * s * (T(1) + x * (T(1) - s)), m);
  }
}

// ---- decoding: a vector of channels at a time, its window in registers
// (gathered from the state rows, which run along time).

// Lanes l < m of p[l * stride] as floats: a gather with AVX-512 (float), else
// lane by lane (bfloat16 bits widened).
template <typename E>
Simd<float>::V strided(const E* p, int64_t stride, int64_t m) {
#if FASTCONV_X86_AVX512
  if constexpr (std::is_same_v<E, float>) {
    if (m == Simd<float>::kLanes && stride < (int64_t(1) << 26)) {
      const __m512i at = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(static_cast<int>(stride)));
      return (Simd<float>::V)_mm512_i32gather_ps(at, p, 4);
    }
  }
#endif
  Simd<float>::V v = {};
  for (int64_t l = 0; l < m; ++l) {
    if constexpr (std::is_same_v<E, float>) {
      v[l] = p[l * stride];
    } else {
      const uint32_t bits = uint32_t(p[l * stride]) << 16;
      std::memcpy(&v[l], &bits, sizeof(float));
    }
  }
  return v;
}

// f(std::integral_constant<int, i>()) for i = 0 .. N-1, unrolled.
template <typename F, int... I>
__attribute__((always_inline)) inline void each_index(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>()), ...);
}
template <int N, typename F>
__attribute__((always_inline)) inline void each_index(F&& f) {
  each_index(std::forward<F>(f), std::make_integer_sequence<int, N>());
}

template <typename E>
__attribute__((always_inline)) inline void load_rows(const E* p, int n, Simd<float>::V* v) {
  using X = Io<float, std::is_same_v<E, uint16_t>>;
  for (int q = 0; q < n; ++q) v[q] = X::load(p + q * Simd<float>::kLanes);
}

// Rows of Stride <= 4 values per channel (the state, the weights), W
// channels of them: Stride vectors loaded as they lie and transposed in
// registers (component i of channel l is flat element l * Stride + i), and
// back. Lane by lane, the transposition was most of a decoding step. The
// lane maps are compile-time constants: a two-source shuffle by a constant
// map is two permutes and a blend on AVX2, which has no two-source permute
// instruction; by a map held in registers it compiled to three times as
// many operations, and was most of the step there.
template <int Stride>
struct Transpose {
  using V = Simd<float>::V;
  static constexpr int W = Simd<float>::kLanes;

  // Lane l of the result: flat element At::at(l) of the Stride sources
  // concatenated (pairs of sources shuffled, then a blend between the pairs).
  template <typename At, std::size_t... L>
  __attribute__((always_inline)) static V pick(const V* src, std::index_sequence<L...>) {
    const V lo = __builtin_shuffle(src[0], src[Stride > 1 ? 1 : 0], I32Vec{(At::at(L) % (2 * W))...});
    if constexpr (Stride <= 2) {
      return lo;
    } else {
      const V hi = __builtin_shuffle(src[2], src[Stride > 3 ? 3 : 2], I32Vec{(At::at(L) % (2 * W))...});
      return I32Vec{(At::at(L) >= 2 * W ? -1 : 0)...} ? hi : lo;
    }
  }
  template <int I>
  struct Component {  // lanes l * Stride + I
    static constexpr int at(int l) { return l * Stride + I; }
  };
  template <int Q>
  struct Flat {  // flat vector Q: lane l is component (Q W + l) % Stride of channel (Q W + l) / Stride
    static constexpr int at(int l) { return (Q * W + l) % Stride * W + (Q * W + l) / Stride; }
  };

  // v[i] = component i of the W channels whose rows start at p.
  template <typename E>
  __attribute__((always_inline)) static void load(const E* p, V* v) {
    V flat[Stride];
    load_rows(p, Stride, flat);
    each_index<Stride>([&](auto i) {
      v[i] = pick<Component<decltype(i)::value>>(flat, std::make_index_sequence<W>());
    });
  }
  // The rows at p, from the components v[0 .. Stride).
  template <typename E>
  __attribute__((always_inline)) static void store(E* p, const V* v) {
    using X = Io<float, std::is_same_v<E, uint16_t>>;
    each_index<Stride>([&](auto q) {
      X::store(p + q * W, pick<Flat<decltype(q)::value>>(v, std::make_index_sequence<W>()), W);
    });
  }
};

// Transpose<stride> for a stride known at run time, 1 to 4.
template <typename F>
void with_stride(int64_t stride, F&& f) {
  with_taps<1, 4>(stride, [&](auto s) {
    if constexpr (decltype(s)::value > 0) f(Transpose<decltype(s)::value>());
  });
}

// One step (T = 1) of Mamba's layout: contiguous state rows of S = K - 1 and
// weight rows of K <= 4 per channel, K and the activation known at compile
// time, so the window, weights and lane maps stay in registers (the general
// loop below keeps them on the stack and branches on every count). G vectors
// of channels from c: their activations run side by side (one vector's SiLU
// is a chain of some 20 dependent operations, and with one at a time the
// step ran at its latency).
template <typename E, int K, bool Silu, int G>
__attribute__((always_inline)) inline void causal_update_group(const CausalUpdateRows<E>& a, int64_t c) {
  using Vec = Simd<float>::V;
  constexpr bool kBf16 = std::is_same_v<E, uint16_t>;
  using X = Io<float, kBf16>;
  constexpr int S = K - 1;
  constexpr int64_t W = Simd<float>::kLanes;
  Vec w[G][K], bias[G];
  for (int g = 0; g < G; ++g) {
    Transpose<K>::load(a.w + (c + g * W) * K, w[g]);
    bias[g] = a.bias == nullptr ? Vec{} : X::load(a.bias + c + g * W);
  }
  for (int64_t r = 0; r < a.rows; ++r) {
    Vec win[G][K], acc[G];
    for (int g = 0; g < G; ++g) {
      Transpose<S>::load(a.state[r] + (c + g * W) * S, win[g]);
      win[g][S] = X::load(a.x[r] + c + g * W);
      acc[g] = bias[g];
      for (int k = 0; k < K; ++k) acc[g] += w[g][k] * win[g][k];
    }
    activate_n<float, Silu, kBf16>(acc);
    for (int g = 0; g < G; ++g) {
      X::store(a.out[r] + c + g * W, acc[g], W);
      Transpose<S>::store(a.state[r] + (c + g * W) * S, win[g] + 1);
    }
  }
}

// Whole vectors of channels [0, full), four at a time while they last.
template <typename E, int K, bool Silu>
void causal_update_step(const CausalUpdateRows<E>& a, int64_t full) {
  constexpr int64_t W = Simd<float>::kLanes;
  int64_t c = 0;
  for (; c + 4 * W <= full; c += 4 * W) causal_update_group<E, K, Silu, 4>(a, c);
  for (; c < full; c += W) causal_update_group<E, K, Silu, 1>(a, c);
}

// Channels outer, rows inner: the weights of a vector of channels are
// read once for every row. bfloat16 windows hold bfloat16 values, so the
// state goes back exactly (its upper half).
template <typename E>
void causal_update(const CausalUpdateRows<E>& a) {
  using Vec = Simd<float>::V;
  using X = Io<float, std::is_same_v<E, uint16_t>>;
  constexpr int64_t W = Simd<float>::kLanes;
  // Contiguous rows of at most 4 (Mamba's K = 4, S = 3): transposed in registers.
  const bool packed = a.S >= 1 && a.S <= 4 && a.state_stride == a.S && a.taps <= 4 && a.w_stride == a.taps;
  int64_t c = 0;
  if (packed && a.T == 1 && a.taps == a.S + 1) {
    c = a.channels / W * W;
    with_activation(a.act, [&](auto silu) {
      constexpr bool kSilu = decltype(silu)::value;
      with_taps<2, 4>(a.taps, [&](auto kt) {
        if constexpr (decltype(kt)::value > 0) causal_update_step<E, decltype(kt)::value, kSilu>(a, c);
      });
    });
  }
  for (; c < a.channels; c += W) {
    const int64_t m = std::min<int64_t>(W, a.channels - c);
    const bool fast = packed && m == W;
    Vec w[kCausalUpdateWindow];
    if (fast) {
      with_stride(a.taps, [&](auto t) { t.load(a.w + c * a.w_stride, w); });
    } else {
      for (int64_t k = 0; k < a.taps; ++k) w[k] = strided(a.w + c * a.w_stride + k, a.w_stride, m);
    }
    const Vec bias = a.bias == nullptr ? Vec{} : X::load(a.bias + c, m);
    for (int64_t r = 0; r < a.rows; ++r) {
      E* state = a.state[r] + c * a.state_stride;
      const E* x = a.x[r] + c;
      Vec win[kCausalUpdateWindow];
      if (fast) {
        with_stride(a.S, [&](auto t) { t.load(state, win); });
      } else {
        for (int64_t i = 0; i < a.S; ++i) win[i] = strided(state + i, a.state_stride, m);
      }
      for (int64_t t = 0; t < a.T; ++t) win[a.S + t] = X::load(x + t * a.x_stride, m);
      for (int64_t t = 0; t < a.T; ++t) {
        Vec acc = bias;
        for (int64_t k = 0; k < a.taps; ++k) acc += w[k] * win[a.S + t - (a.taps - 1) + k];
        X::store(a.out[r] + c + t * a.out_stride, a.act == Activation::kSilu ? acc * sigmoid<float>(acc) : acc, m);
      }
      if (fast) {
        with_stride(a.S, [&](auto t) { t.store(state, win + a.T); });
        continue;
      }
      for (int64_t i = 0; i < a.S; ++i) {
        const Vec v = win[a.T + i];
        for (int64_t l = 0; l < m; ++l) {
          if constexpr (std::is_same_v<E, float>) {
            state[l * a.state_stride + i] = v[l];
          } else {
            uint32_t bits;
            std::memcpy(&bits, &v[l], sizeof(float));
            state[l * a.state_stride + i] = static_cast<uint16_t>(bits >> 16);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace fastconv::cpu::FASTCONV_ISA
