// bfloat16 and float16 rows to and from float, for the driver's staging and results.
// Plain loops over 16-bit words that the compiler vectorizes for each
// instruction set (compiled as generic code in the driver they would run at
// SSE width, and cost more than a bfloat16 depthwise forward's multiply-adds).
#pragma once

#include "fastconv/cpu/kernels/simd.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {


void widen_bf16(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = uint32_t(src[i]) << 16;
    std::memcpy(dst + i, &bits, sizeof(bits));
  }
}

// Rounded as to_bf16 rounds: the kernels' bfloat16 results round one way.
void narrow_bf16(const float* src, uint16_t* dst, int64_t n) {
#if FASTCONV_HAS_AVX512_BF16
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    _mm256_mask_storeu_epi16(dst + i, m, (__m256i)to_bf16((Simd<float>::V)_mm512_maskz_loadu_ps(m, src + i)));
  }
#else
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, src + i, sizeof(bits));
    const uint16_t rounded = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    dst[i] = src[i] != src[i] ? uint16_t(0x7FC0) : rounded;
  }
#endif
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
