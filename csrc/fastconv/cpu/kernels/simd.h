// The prelude of the per-ISA micro-kernels (kernels/*.h, gathered into the
// table of tile_kernels.h by table_impl.h): Simd<T> over GCC/Clang vector
// types and the lane shifts the conv1d tiles share. Each isa/*.cpp defines,
// after choosing an instruction set (#pragma GCC target):
//   FASTCONV_ISA        namespace, and the table's function kernels_<FASTCONV_ISA>
//   FASTCONV_ISA_NAME   the capability's name ("avx512", "avx2", "default")
//   FASTCONV_VEC_BYTES  vector width in bytes (64, 32, 16)
//   FASTCONV_VEC_REGS   vector registers available (32 or 16)
//   FASTCONV_HAS_F16C   1 where the instruction set includes F16C (float16 conversions)
//   FASTCONV_HAS_AVX512_BF16  1 where it includes AVX512-BF16 (vcvtneps2bf16)
// Invariant of every kernels/*.h: everything has internal linkage or lives in
// the per-ISA namespace, and only standard headers and tile_kernels.h (plain
// structs) are included, so no inline function compiled for one instruction
// set can be merged into code that runs on another.
#pragma once

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

// Integer vectors as wide as a float vector, and bfloat16 bits of its lanes.
typedef uint32_t U32Vec __attribute__((vector_size(FASTCONV_VEC_BYTES)));
typedef int32_t I32Vec __attribute__((vector_size(FASTCONV_VEC_BYTES)));
typedef uint16_t U16Vec __attribute__((vector_size(FASTCONV_VEC_BYTES / 2)));

// float lanes rounded to nearest even at bit 16: the bfloat16 bits in the
// high half of each lane (c10::BFloat16's conversion bit for bit, NaN to
// 0x7FC0), the low half not cleared.
inline U32Vec bf16_rounded(Simd<float>::V v) {
  U32Vec bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const U32Vec rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
  const I32Vec nan = v != v;
  return nan ? U32Vec{} + 0x7FC00000u : rounded;
}

// float lanes rounded to bfloat16 bits, to nearest even. With AVX512-BF16 one
// vcvtneps2bf16 (NaN stays NaN; results below 2^-126 in magnitude flush to
// zero, as in oneDNN's bfloat16 kernels on those CPUs); otherwise
// bf16_rounded's high halves.
inline U16Vec to_bf16(Simd<float>::V v) {
#if FASTCONV_HAS_AVX512_BF16
  return (U16Vec)_mm512_cvtneps_pbh((__m512)v);
#else
  return __builtin_convertvector(bf16_rounded(v) >> 16, U16Vec);
#endif
}

// 2W bfloat16 values read as W 32-bit lanes, as floats without a lane
// crossing: the even positions (the low halves) and the odd ones (the high).
inline void bf16_pairs(const uint16_t* p, Simd<float>::V& even, Simd<float>::V& odd) {
  U32Vec bits;
  std::memcpy(&bits, p, sizeof(bits));
  const U32Vec lo = bits << 16, hi = bits & 0xFFFF0000u;
  std::memcpy(&even, &lo, sizeof(even));
  std::memcpy(&odd, &hi, sizeof(odd));
}

// The inverse of bf16_pairs: even and odd rounded to bfloat16, interleaved.
inline U32Vec bf16_interleave(Simd<float>::V even, Simd<float>::V odd) {
  return (bf16_rounded(even) >> 16) | (bf16_rounded(odd) & 0xFFFF0000u);
}

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


}  // namespace
}  // namespace fastconv::cpu::FASTCONV_ISA
