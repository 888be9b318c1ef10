// Non-temporal row stores for large CPU outputs. A normal store first reads
// the destination line into cache; streaming stores skip that read, which
// for outputs far larger than the caches saves a third of the DRAM traffic.
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace fastconv::cpu {

// dst[i] = src[i] + add for i < n. float rows whose dst is 16-byte aligned are
// streamed; anything else is stored normally. Call stream_fence() before the
// stored values are read (or handed to another thread).
template <typename T>
void store_row(T* dst, const T* src, int64_t n, T add, bool streaming) {
  int64_t i = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<T, float>) {
    if (streaming && reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
      const __m128 v_add = _mm_set1_ps(add);
      for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_add_ps(_mm_loadu_ps(src + i), v_add));
    }
  }
#endif
  for (; i < n; ++i) dst[i] = src[i] + add;
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace fastconv::cpu
