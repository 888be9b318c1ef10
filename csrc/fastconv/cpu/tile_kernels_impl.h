// The micro-kernels of tile_kernels.h, written once over GCC/Clang vector
// types. Each isa/*.cpp includes this file after choosing an instruction set
// (#pragma GCC target) and defining:
//   FASTCONV_ISA        namespace, and the table's function kernels_<FASTCONV_ISA>
//   FASTCONV_ISA_NAME   the capability's name ("avx512", "avx2", "default")
//   FASTCONV_VEC_BYTES  vector width in bytes (64, 32, 16)
//   FASTCONV_VEC_REGS   vector registers available (32 or 16)
//   FASTCONV_HAS_F16C   1 where the instruction set includes F16C (float16 conversions)
// Everything here has internal linkage or lives in the per-ISA namespace, and
// only <cstdint>/<cstring> are included, so no inline function compiled for
// one instruction set can be merged into code that runs on another.
#include <array>
#include <cstdint>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#include <cstring>
#include <utility>

#include "fastconv/cpu/tile_kernels.h"

// 64-byte vectors on x86: the AVX-512 intrinsics below (lane alignment, masked
// loads) in place of their generic vector-extension forms.
#if FASTCONV_VEC_BYTES == 64 && (defined(__x86_64__) || defined(_M_X64))
#define FASTCONV_X86_AVX512 1
#else
#define FASTCONV_X86_AVX512 0
#endif

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

constexpr int kRegs = FASTCONV_VEC_REGS;
// convolve rows up to this length get a kernel with compile-time lengths, when
// n * m <= kConvolveFixedWork (beyond that, a vector lane per row is faster).
constexpr int kConvolveFixed = 9;
constexpr int64_t kConvolveFixedWork = 81;

template <typename T>
struct Simd {
  static constexpr int kBytes = FASTCONV_VEC_BYTES;
  static constexpr int kLanes = kBytes / static_cast<int>(sizeof(T));
  typedef T V __attribute__((vector_size(kBytes)));

  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  // x - 0 is x for every x (-0 included), so this folds to a broadcast; x + 0 would not.
  static V splat(T x) { return x - V{}; }
  static void store(T* p, V v, int64_t n) {
    if (n == kLanes) {
      std::memcpy(p, &v, sizeof(V));
    } else {
      for (int64_t i = 0; i < n; ++i) {
        p[i] = v[i];
      }
    }
  }
  // Non-temporal store of a whole vector when p is aligned to it; false if not done.
  static bool stream(T* p, V v) {
#if defined(__x86_64__) || defined(_M_X64)
    if (reinterpret_cast<uintptr_t>(p) % kBytes != 0) {
      return false;
    }
    if constexpr (kBytes == 64 && sizeof(T) == 4) {
      _mm512_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<__m512>(v));
    } else if constexpr (kBytes == 64) {
      _mm512_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<__m512d>(v));
    } else if constexpr (kBytes == 32 && sizeof(T) == 4) {
      _mm256_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<__m256>(v));
    } else if constexpr (kBytes == 32) {
      _mm256_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<__m256d>(v));
    } else if constexpr (sizeof(T) == 4) {
      _mm_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<__m128>(v));
    } else {
      _mm_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<__m128d>(v));
    }
    return true;
#else
    (void)p;
    (void)v;
    return false;
#endif
  }
  // Orders earlier non-temporal stores before whatever the caller does next.
  static void fence() {
#if defined(__x86_64__) || defined(_M_X64)
    _mm_sfence();
#endif
  }
  static T sum(V v) {
    T s = 0;
    for (int i = 0; i < kLanes; ++i) {
      s += v[i];
    }
    return s;
  }
};

// ---- forward: out[oc][j] = bias[oc] + sum_t weight[oc][t] * scratch[offsets[t] + j]

// The vector K lanes into the pair (lo, hi): valignd/valignq with AVX-512.
template <typename V, int W, int K, int... I>
inline V lanes_from(V lo, V hi, std::integer_sequence<int, I...>) {
#if FASTCONV_X86_AVX512
  if constexpr (W == 16) {
    return (V)_mm512_alignr_epi32((__m512i)hi, (__m512i)lo, K);
  } else {
    return (V)_mm512_alignr_epi64((__m512i)hi, (__m512i)lo, K);
  }
#else
  return __builtin_shufflevector(lo, hi, (I + K)...);
#endif
}

// acc[v] += wv * (the vector s lanes into window[v], window[v + 1]), for a
// run-time s < W: one branch of W, each with the shift as an immediate.
template <typename Vec, int W, int V, int... S>
inline void fma_window(Vec (&acc)[V], const Vec (&window)[V + 1], Vec wv, int s,
                       std::integer_sequence<int, S...>) {
  constexpr auto lanes = std::make_integer_sequence<int, W>{};
  (void)((s == S && ([&] {
            for (int v = 0; v < V; ++v) acc[v] += wv * lanes_from<Vec, W, S>(window[v], window[v + 1], lanes);
          }(), true)) || ...);
}

// Whether a block of one output channel loads odd taps' vectors through a
// window of aligned vectors. On AMD Zen 4 (AVX-512) a vector load that
// crosses a cache line costs about two, and the taps load at every offset,
// so a block of one output channel -- a load per FMA -- is bound by its
// loads: 1.22-1.26 TSC ticks per FMA at K = 16 in a micro-benchmark, against
// 0.74 with aligned loads. A window of V + 1 aligned vectors in registers
// serves every tap whose offset falls in its first vector, shifted into place
// on the shuffle unit; taking odd taps from it and even ones from memory
// balances the two: 0.83 (compile-time shifts: 0.81), while all taps from
// windows ran at 0.99, shuffle-bound, and vpermt2ps with a run-time index at
// 1.05. With more output channels a load serves several FMAs and is no
// bottleneck.
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

// ---- weight gradient: grad_weight[oc][t] += sum_j grad_out[oc][j] * scratch[offsets[t] + j]

// The vector loop of a weight block of one output channel over one row whose
// taps read x0 + p (consecutive offsets), x0 being S0 lanes into an aligned
// vector: odd taps come from a window of aligned vectors, as in the forward
// block, here with the shifts known at compile time. The window reads at
// most a vector past the last tap's last vector (inside kScratchSlack).
// Measured (one thread, fp32, weight and bias gradient): 1.3x faster for
// depthwise K = 31 (5.8 against 4.4 ms), 1.55x for one channel, K = 64.
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

// ---- convolve: one vector lane per row; rows are gathered into
// [position][lane] blocks, convolved with full-width FMAs, scattered back.

// Element offsets of consecutive rows' a and v rows, walking the leading
// multi-index like an odometer.
struct RowWalker {
  int ndim;
  const int64_t* sizes;
  const int64_t* a_strides;
  const int64_t* v_strides;
  int64_t index[kConvolveMaxDims];
  int64_t a_offset = 0, v_offset = 0;

  template <typename T>
  RowWalker(const ConvolveRows<T>& p, int64_t row)
      : ndim(p.ndim), sizes(p.sizes), a_strides(p.a_strides), v_strides(p.v_strides) {
    for (int d = ndim - 1; d >= 0; --d) {
      index[d] = row % sizes[d];
      row /= sizes[d];
      a_offset += index[d] * a_strides[d];
      v_offset += index[d] * v_strides[d];
    }
  }

  void next() {
    for (int d = ndim - 1; d >= 0; --d) {
      a_offset += a_strides[d];
      v_offset += v_strides[d];
      if (++index[d] < sizes[d]) {
        return;
      }
      a_offset -= sizes[d] * a_strides[d];
      v_offset -= sizes[d] * v_strides[d];
      index[d] = 0;
    }
  }
};

// x's lanes moved up by K, zeros below them. With AVX-512 a lane alignment
// against zero (valignd/valignq): the generic shuffle compiled to vpermt2ps,
// and rows ran 1.2-1.5x slower with it (7x7: 3.8 against 2.7 ns a row).
template <typename V, int W, int K, int... I>
inline V shift_up(V x, std::integer_sequence<int, I...>) {
  if constexpr (K == 0) {
    return x;
  } else {
#if FASTCONV_X86_AVX512
    if constexpr (W == 16) {
      return (V)_mm512_alignr_epi32((__m512i)x, _mm512_setzero_si512(), W - K);
    } else {
      return (V)_mm512_alignr_epi64((__m512i)x, _mm512_setzero_si512(), W - K);
    }
#else
    return __builtin_shufflevector(V{}, x, (I + W - K)...);
#endif
  }
}

// load_first reads no element past the N it returns (a masked load).
constexpr bool kMaskedLoads = FASTCONV_X86_AVX512;

// The first N elements at p, zeros in the lanes above (a masked load with AVX-512).
template <typename T, int N, int... I>
inline typename Simd<T>::V load_first(const T* p, std::integer_sequence<int, I...>) {
  using S = Simd<T>;
  using V = typename S::V;
#if FASTCONV_X86_AVX512
  constexpr auto mask = static_cast<uint16_t>((1u << N) - 1);
  if constexpr (S::kLanes == 16) {
    return (V)_mm512_maskz_loadu_ps(mask, p);
  } else {
    return (V)_mm512_maskz_loadu_pd(static_cast<uint8_t>(mask), p);
  }
#else
  return __builtin_shufflevector(S::load(p), V{}, (I < N ? I : S::kLanes)...);
#endif
}

// Rows whose whole convolution fits one vector pay off with a vector per
// row: a, zero-extended, shifted up by each tap k times v[k] -- M shuffles,
// broadcasts and FMAs, where the across-rows loop of contiguous_rows spends
// about N * M operations per row. Measured (fp32, AVX-512, AMD Zen 4, one
// thread) it is 1.1-2.7x faster on every pair from N = 4 and M = 2 (9x7:
// 2.8 against 7.4 ns per row, 8x2: 1.1 against 3.0, 5x4: 1.5 against 1.6);
// with narrower vectors most rows do not fit. Shorter a rows gain once
// several rows pack into a vector (row_vectors): 10^4 rows of 3x3 took 8
// against 13-17 us, 2x2 6 against 8-10 us (fp32, two threads).
template <typename T, int N, int M>
constexpr bool use_row_vectors() {
  return N + M - 1 <= Simd<T>::kLanes && M >= 2 && (N >= 4 || Simd<T>::kLanes / (N + M - 1) >= 2);
}

// R = W / L rows share a vector when they fit, each in L lanes: a row's
// lanes [N, L) are zeros, so shifting by a tap k < M never carries one row
// into the next, and the R rows' outputs come out contiguous, as out holds
// them. Lane i of the packed a is row i / L's element i % L (zero past N);
// lane i of tap k's v is row i / L's v[k]. Both are compile-time shuffles of
// a load of R rows; packed_lane is lane i's source in it (W: a zero).
constexpr int packed_lane(int i, int W, int L, int R, int step, int k, bool along_row) {
  const int row = i / L, j = along_row ? i % L : k;
  return row < R && j < step ? row * step + j : W;
}

template <typename Vec, int W, int L, int R, int Step, int K, bool AlongRow, int... I>
inline Vec packed(Vec rows, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(rows, Vec{}, packed_lane(I, W, L, R, Step, K, AlongRow)...);
}

// Rows by which a vector load or store at a row of `length` elements runs past it.
constexpr int overrun_rows(int lanes, int length, bool masked) {
  return masked ? 0 : (lanes - length + length - 1) / length;
}

constexpr int largest(int a, int b) { return a > b ? a : b; }

// Rows [0, rows) while a vector's loads and store stay inside rows' own a, v
// and out (they run past the rows, into the next ones; OutSlack: out has a
// vector's room past its last row); returns the first row not done. out rows
// are written in order, so each store's overrun is overwritten by the next.
template <typename T, int N, int M, int VStep, bool OutSlack>
int64_t row_vectors(const T* __restrict__ a, const T* __restrict__ v, T* __restrict__ out, int64_t rows) {
  using S = Simd<T>;
  using Vec = typename S::V;
  constexpr int W = S::kLanes, L = N + M - 1, R = W / L;
  constexpr auto lanes = std::make_integer_sequence<int, W>{};
  constexpr auto taps = std::make_integer_sequence<int, M>{};
  constexpr int kOverrunA = overrun_rows(W, N, kMaskedLoads);
  constexpr int kOverrunOut = overrun_rows(W, L, OutSlack);
  int64_t r = 0;
  if constexpr (R >= 2) {
    constexpr int kOverrunV = VStep ? overrun_rows(W, M, kMaskedLoads) : 0;
    constexpr int kOverrun = largest(largest(kOverrunA, kOverrunV), largest(kOverrunOut, R - 1));
    for (; r < rows - kOverrun; r += R) {
      const Vec x = packed<Vec, W, L, R, N, 0, true>(load_first<T, R * N>(a + r * N, lanes), lanes);
      Vec acc{};
      if constexpr (VStep == 0) {
        [&]<int... K>(std::integer_sequence<int, K...>) {
          ((acc += S::splat(v[K]) * shift_up<Vec, W, K>(x, lanes)), ...);
        }(taps);
      } else {
        const Vec vr = load_first<T, R * M>(v + r * M, lanes);
        [&]<int... K>(std::integer_sequence<int, K...>) {
          ((acc += packed<Vec, W, L, R, M, K, false>(vr, lanes) * shift_up<Vec, W, K>(x, lanes)), ...);
        }(taps);
      }
      S::store(out + r * L, acc, W);
    }
  }
  for (; r < rows - largest(kOverrunA, kOverrunOut); ++r) {
    const Vec x = load_first<T, N>(a + r * N, lanes);
    Vec acc{};
    [&]<int... K>(std::integer_sequence<int, K...>) {
      ((acc += S::splat(v[r * VStep + K]) * shift_up<Vec, W, K>(x, lanes)), ...);
    }(taps);
    S::store(out + r * L, acc, W);
  }
  return r;
}

// Contiguous rows, the whole convolution, v_step 0 (one v row for all) or M.
// A function of its own so that __restrict__ on the parameters tells the
// compiler out aliases neither input: it then vectorizes across rows (on
// restrict-qualified locals GCC kept every load of v scalar, 2-4x slower).
template <typename T, int N, int M, int VStep, bool OutSlack = false>
void contiguous_rows(const T* __restrict__ a, const T* __restrict__ v, T* __restrict__ out, int64_t rows) {
  constexpr int L = N + M - 1;
  int64_t r = 0;
  if constexpr (use_row_vectors<T, N, M>()) {
    r = row_vectors<T, N, M, VStep, OutSlack>(a, v, out, rows);
  }
  for (; r < rows; ++r) {
    for (int i = 0; i < L; ++i) {
      T acc = 0;
      for (int k = 0; k < M; ++k) {
        const int j = i - k;
        acc += v[r * VStep + k] * (j >= 0 && j < N ? a[r * N + j] : T(0));
      }
      out[r * L + i] = acc;
    }
  }
}

// n elements from src to dst, whole aligned vectors of dst with non-temporal
// stores. Not streaming_store.h's store_row: this file includes no header with
// inline functions (see the top), and store_row streams only 16-byte fp32
// vectors from an aligned start.
template <typename T>
void stream_copy(const T* src, T* dst, int64_t n) {
  using S = Simd<T>;
  int64_t i = 0;
  for (; i < n && reinterpret_cast<uintptr_t>(dst + i) % S::kBytes != 0; ++i) dst[i] = src[i];
  for (; i + S::kLanes <= n && S::stream(dst + i, S::load(src + i)); i += S::kLanes) {
  }
  for (; i < n; ++i) dst[i] = src[i];
}

// contiguous_window computes kWindowRows rows at a time into stack buffers
// aligned to, and inside, one kStageBytes page. Where the thread's stack put
// the buffer decided the speed: 10^6 rows of 5x2 took 1.0-1.2 or 1.5-1.9 ms
// from one process to the next, and a replica with the buffer's offset swept
// through its page ran fast while the buffer stayed inside the page, up to
// 1.7x slower where it crossed (AMD Zen 4 VM; the cause not pinned down: a
// store loop in L1 showed no page-split penalty). 16 rows of any length are
// whole vectors, so windows that start on a vector of out stay on one. The
// inputs kPrefetchRows ahead are prefetched a window at a time: the replica
// then ran 10^6 rows within 0-2% of a loop that only moves the same bytes
// (5x2, 6x6, 9x2, 9x4, 9x7), against 4-12% slower with 32-row windows and no
// prefetch, and 10-30% slower prefetching 100-row windows.
constexpr int64_t kStageBytes = 4096;
constexpr int64_t kWindowRows = 16;
constexpr int64_t kPrefetchRows = 128;

template <typename T>
void prefetch_bytes(const T* begin, const T* end) {
  for (auto p = reinterpret_cast<const char*>(begin); p < reinterpret_cast<const char*>(end); p += 64) {
    __builtin_prefetch(p);
  }
}

// Contiguous rows: whole convolutions straight into out; a window of them
// ('same', 'valid'), or rows of a large output, through the stack buffers.
// Large outputs of the row-vector kernel leave it with non-temporal stores:
// 10^6 rows ran at 1.1-1.2x of the memory floor, a read-for-ownership of
// every output line included (7x2: median 1.37 against 1.85 ms over six
// alternating runs), and a scaled copy (M = 1) took 1.35 against 1.56 ms
// (9x1). The across-rows loop ran slower so: 9x9 (compute-bound), and 3x3
// (1.22 against 1.02 ms).
template <typename T, int N, int M, int VStep>
void contiguous_window(const ConvolveRows<T>& p) {
  constexpr int L = N + M - 1;
  const T* a = p.a + p.row_begin * N;
  const T* v = p.v + p.row_begin * VStep;
  const int64_t rows = p.row_end - p.row_begin;
  const bool whole = p.offset == 0 && p.length == L;
  const bool streaming = p.streaming && (use_row_vectors<T, N, M>() || M == 1);
  if (whole && !streaming) {
    return contiguous_rows<T, N, M, VStep>(a, v, p.out + p.row_begin * L, rows);
  }
  alignas(kStageBytes) T full[kWindowRows * L + Simd<T>::kLanes];  // a vector's slack
  alignas(kStageBytes) T window[kWindowRows * 2 * kConvolveSmall];  // p.length <= 2 * kConvolveSmall
  static_assert(sizeof(full) <= kStageBytes && sizeof(window) <= kStageBytes);
  // Windows end on multiples of kWindowRows rows of the whole output.
  for (int64_t r0 = 0, r1; r0 < rows; r0 = r1) {
    r1 = (p.row_begin + r0) / kWindowRows * kWindowRows + kWindowRows - p.row_begin;
    r1 = r1 < rows ? r1 : rows;
    const int64_t n = r1 - r0, ahead = r0 + kPrefetchRows;
    if (ahead + n <= rows) {
      prefetch_bytes(a + ahead * N, a + (ahead + n) * N);
      prefetch_bytes(v + ahead * VStep, v + (ahead + n) * VStep);
    }
    contiguous_rows<T, N, M, VStep, true>(a + r0 * N, v + r0 * VStep, full, n);
    T* out = p.out + (p.row_begin + r0) * p.length;
    T* dst = streaming ? window : out;
    if (!whole) {
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t t = 0; t < p.length; ++t) {
          const int64_t i = t + p.offset;
          dst[r * p.length + t] = i >= 0 && i < L ? full[r * L + i] : T(0);
        }
      }
    }
    if (streaming) {
      stream_copy(whole ? full : window, out, n * p.length);
    }
  }
  if (streaming) {
    Simd<T>::fence();
  }
}

// Rows with compile-time lengths: the whole convolution of a row unrolls
// into registers (few rows, or rows too short to fill vector lanes well).
// Every tap of v meets every output, zero-padded a included, so NaN and Inf
// spread exactly as in the zero-padded convolution of the long-row path.
template <typename T, int N, int M>
void convolve_rows_fixed(const ConvolveRows<T>& p) {
  constexpr int L = N + M - 1;
  if (p.ndim <= 1 && (p.ndim == 0 || p.a_strides[0] == N)) {
    // Contiguous rows, v one broadcast row or contiguous too.
    const int64_t v_step = p.ndim == 1 ? p.v_strides[0] : 0;
    if (v_step == 0) return contiguous_window<T, N, M, 0>(p);
    if (v_step == M) return contiguous_window<T, N, M, M>(p);
  }
  RowWalker walk(p, p.row_begin);
  T* out = p.out + p.row_begin * p.length;
  const bool whole = p.offset == 0 && p.length == L;
  for (int64_t r = p.row_begin; r < p.row_end; ++r, walk.next(), out += p.length) {
    const T* a = p.a + walk.a_offset;
    const T* v = p.v + walk.v_offset;
    T full[L];
    for (int i = 0; i < L; ++i) {
      T acc = 0;
      for (int k = 0; k < M; ++k) {
        const int j = i - k;
        acc += v[k] * (j >= 0 && j < N ? a[j] : T(0));
      }
      full[i] = acc;
    }
    if (whole) {
      for (int t = 0; t < L; ++t) out[t] = full[t];
    } else {
      for (int64_t t = 0; t < p.length; ++t) {
        const int64_t i = t + p.offset;
        out[t] = i >= 0 && i < L ? full[i] : T(0);
      }
    }
  }
}

// The driver makes v the shorter row (m <= n): only those kernels exist.
template <typename T, int N, int M>
constexpr auto fixed_row_kernel() {
  if constexpr (M <= N) {
    return &convolve_rows_fixed<T, N, M>;
  } else {
    return static_cast<void (*)(const ConvolveRows<T>&)>(nullptr);
  }
}

template <typename T, int N, int... Ms>
constexpr auto fixed_row_kernels_for(std::integer_sequence<int, Ms...>) {
  return std::array<void (*)(const ConvolveRows<T>&), sizeof...(Ms)>{
      fixed_row_kernel<T, N, Ms + 1>()...};
}

template <typename T, int... Ns>
constexpr auto fixed_row_kernels(std::integer_sequence<int, Ns...>) {
  return std::array<std::array<void (*)(const ConvolveRows<T>&), kConvolveFixed>, sizeof...(Ns)>{
      fixed_row_kernels_for<T, Ns + 1>(std::make_integer_sequence<int, kConvolveFixed>{})...};
}

template <typename T>
void convolve_rows_vector(const ConvolveRows<T>& p);

template <typename T>
void convolve_rows(const ConvolveRows<T>& p) {
  static constexpr auto fixed =
      fixed_row_kernels<T>(std::make_integer_sequence<int, kConvolveFixed>{});
  if (p.n <= kConvolveFixed && p.m <= kConvolveFixed && p.n * p.m <= kConvolveFixedWork) {
    return fixed[p.n - 1][p.m - 1](p);
  }
  convolve_rows_vector(p);
}

template <typename T>
void convolve_rows_vector(const ConvolveRows<T>& p) {
  using S = Simd<T>;
  using Vec = typename S::V;
  constexpr int W = S::kLanes;
  alignas(64) T A[kConvolveSmall][W];
  alignas(64) T V[kConvolveSmall][W];
  alignas(64) T O[2 * kConvolveSmall][W];
  int64_t a_off[W], v_off[W];
  RowWalker walk(p, p.row_begin);
  for (int64_t r = p.row_begin; r < p.row_end; r += W) {
    const int lanes = static_cast<int>(p.row_end - r < W ? p.row_end - r : W);
    for (int l = 0; l < W; ++l) {
      // Lanes past the last row repeat it: every load stays in bounds.
      a_off[l] = walk.a_offset;
      v_off[l] = walk.v_offset;
      if (l + 1 < lanes) {
        walk.next();
      }
    }
    walk.next();
    for (int64_t j = 0; j < p.n; ++j) {
      for (int l = 0; l < W; ++l) A[j][l] = p.a[a_off[l] + j];
    }
    for (int64_t k = 0; k < p.m; ++k) {
      for (int l = 0; l < W; ++l) V[k][l] = p.v[v_off[l] + k];
    }
    for (int64_t t = 0; t < p.length; ++t) {
      // Every tap of v (the shorter row) meets every output inside the full
      // convolution, zero-padded a included, as in convolve_rows_fixed.
      const int64_t i = t + p.offset;
      Vec acc{};
      if (i >= 0 && i < p.n + p.m - 1) {
        for (int64_t k = 0; k < p.m; ++k) {
          const int64_t j = i - k;
          acc += S::load(V[k]) * (j >= 0 && j < p.n ? S::load(A[j]) : Vec{});
        }
      }
      S::store(O[t], acc, W);
    }
    T* out = p.out + r * p.length;
    for (int l = 0; l < lanes; ++l) {
      for (int64_t t = 0; t < p.length; ++t) out[l * p.length + t] = O[t][l];
    }
  }
}

// ---- FFT channel mixing: R output channels x B rows (segments) of one
// vector of interleaved complex values, accumulated over the input channels.
// Every x vector serves R channels and every w vector B rows, so FMAs, not
// loads, bound the loop. Lane by lane, x (*) w = x * (w.re, w.re) +
// (-x.im, x.re) * (w.im, w.im): w's duplicates are two shuffles in
// registers, x's swap and sign one per x vector. (Converting w to that form
// in memory first cost a fifth of the time at 128 x 128 channels, and more
// than L2 held.)

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
// masked load with AVX-512 (a variable-length memcpy took a fifth of the
// mixing at 128 x 128 channels, for one vector in seventeen).
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

// ---- bfloat16 rows to and from float, for the driver's staging and results.
// Plain loops over 16-bit words that the compiler vectorizes for each
// instruction set; compiled as generic code in the driver they ran at SSE
// width, and converting took more of a bfloat16 depthwise forward than its
// multiply-adds did.

void widen_bf16(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = uint32_t(src[i]) << 16;
    std::memcpy(dst + i, &bits, sizeof(bits));
  }
}

// Round to nearest even, NaN to 0x7FC0: c10::BFloat16's conversion, bit for bit.
void narrow_bf16(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, src + i, sizeof(bits));
    const uint16_t rounded = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    dst[i] = src[i] != src[i] ? uint16_t(0x7FC0) : rounded;
  }
}

#if FASTCONV_HAS_F16C
// float16 rows with the F16C conversions (vcvtph2ps, and vcvtps2ph rounding to
// nearest even, as c10::Half does); without F16C the driver converts element
// by element.
void widen_f16(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

void narrow_f16(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}
#endif

}  // namespace
}  // namespace fastconv::cpu::FASTCONV_ISA

#include "fastconv/cpu/causal_kernels_impl.h"
#include "fastconv/cpu/depthwise_kernels_impl.h"

#define FASTCONV_CAT2(a, b) a##b
#define FASTCONV_CAT(a, b) FASTCONV_CAT2(a, b)

namespace fastconv::cpu {

const KernelTable& FASTCONV_CAT(kernels_, FASTCONV_ISA)() {
  static const KernelTable table{
      FASTCONV_ISA_NAME,
      &FASTCONV_ISA::forward_tile<float>,
      &FASTCONV_ISA::forward_tile<double>,
      &FASTCONV_ISA::weight_tile<float>,
      &FASTCONV_ISA::weight_tile<double>,
      &FASTCONV_ISA::convolve_rows<float>,
      &FASTCONV_ISA::convolve_rows<double>,
      &FASTCONV_ISA::mix_tile<float>,
      &FASTCONV_ISA::mix_tile<double>,
      &FASTCONV_ISA::widen_bf16,
      &FASTCONV_ISA::narrow_bf16,
#if FASTCONV_HAS_F16C
      &FASTCONV_ISA::widen_f16,
      &FASTCONV_ISA::narrow_f16,
#else
      nullptr,
      nullptr,
#endif
      &FASTCONV_ISA::causal_time<float>,
      &FASTCONV_ISA::causal_time<double>,
      &FASTCONV_ISA::causal_channel<float>,
      &FASTCONV_ISA::causal_channel<double>,
      &FASTCONV_ISA::causal_time_weight<float>,
      &FASTCONV_ISA::causal_time_weight<double>,
      &FASTCONV_ISA::causal_channel_weight<float>,
      &FASTCONV_ISA::causal_channel_weight<double>,
      &FASTCONV_ISA::silu_grad<float>,
      &FASTCONV_ISA::silu_grad<double>,
      &FASTCONV_ISA::causal_update<float>,
      &FASTCONV_ISA::causal_update<uint16_t>,
      &FASTCONV_ISA::depthwise_pixels<float, float>,
      &FASTCONV_ISA::depthwise_pixels<double, double>,
      &FASTCONV_ISA::depthwise_pixels<uint16_t, float>,
      &FASTCONV_ISA::depthwise_weight<float, float>,
      &FASTCONV_ISA::depthwise_weight<double, double>,
      &FASTCONV_ISA::depthwise_weight<uint16_t, float>,
  };
  return table;
}

}  // namespace fastconv::cpu
