// The convolve micro-kernels: one vector lane per row; rows are gathered into
// [position][lane] blocks, convolved with full-width FMAs, scattered back.
#pragma once

#include <utility>
#include "fastconv/cpu/kernels/simd.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

// convolve rows up to this length get a kernel with compile-time lengths, when
// n * m <= kConvolveFixedWork (beyond that, a vector lane per row is faster).
constexpr int kConvolveFixed = 9;
constexpr int64_t kConvolveFixedWork = 81;

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
// against zero (valignd/valignq): the generic shuffle compiles to the slower
// vpermt2ps.
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
// about N * M operations per row: faster on every pair from N = 4 and
// M = 2; with narrower vectors most rows do not fit. Shorter a rows gain once
// several rows pack into a vector (row_vectors).
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
// aligned to, and inside, one kStageBytes page: a buffer that crosses a page
// boundary runs markedly slower, so where the thread's stack put it must not
// decide the speed. 16 rows of any length are whole vectors, so windows that
// start on a vector of out stay on one. The inputs kPrefetchRows ahead are
// prefetched a window at a time, which brings the loop to the speed of one
// that only moves the same bytes (shorter windows without prefetch, or
// longer prefetched ones, are slower). (Figures: docs/cpu-kernels.md.)
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
// Large outputs of the row-vector kernel leave it with non-temporal stores,
// which spare the read-for-ownership of every output line; the across-rows
// loop does not (compute-bound at 9x9, and slower streamed at 3x3).
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


}  // namespace
}  // namespace fastconv::cpu::FASTCONV_ISA
