// Rows converted between a tensor's dtype and the accumulation type, with the
// per-ISA vectorized bfloat16 and float16 conversions of tile_kernels.h.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fastconv/cpu/tile_kernels.h"

namespace fastconv::cpu {

// dst[j] = src[j] for j < n, converted.
template <typename From, typename To>
void convert_row(const From* src, To* dst, int64_t n) {
  const auto* src16 = reinterpret_cast<const uint16_t*>(src);
  auto* dst16 = reinterpret_cast<uint16_t*>(dst);
  if constexpr (std::is_same_v<From, To>) {
    return (void)std::memcpy(dst, src, n * sizeof(To));
  } else if constexpr (std::is_same_v<From, c10::BFloat16> && std::is_same_v<To, float>) {
    return kernels().widen_bf16(src16, dst, n);
  } else if constexpr (std::is_same_v<From, float> && std::is_same_v<To, c10::BFloat16>) {
    return kernels().narrow_bf16(src, dst16, n);
  } else if constexpr (std::is_same_v<From, c10::Half> && std::is_same_v<To, float>) {
    if (const auto widen = kernels().widen_f16) return widen(src16, dst, n);
  } else if constexpr (std::is_same_v<From, float> && std::is_same_v<To, c10::Half>) {
    if (const auto narrow = kernels().narrow_f16) return narrow(src, dst16, n);
  }
  // Element by element: the scalar c10::Half conversions, or no vector level.
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<To>(src[j]);
}

}  // namespace fastconv::cpu
