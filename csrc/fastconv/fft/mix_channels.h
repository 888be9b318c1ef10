// The FFT path's channel mixing on CPU: for every frequency, a complex
// (C_out/g x C_in/g) matrix times each segment's spectrum.
#pragma once

#include <cstdint>

namespace fastconv::cpu {

// Interleaved complex arrays (re, im):
//   Y[n, g*Og + o, s, f] = sum_c X[n, g*Cg + c, s, f] * W[g*Og + o, c, f]
// X (N, G*Cg, S, F), W (G*Og, Cg, F), Y (N, G*Og, S, F).
template <typename T>
void mix_channels(const T* X, const T* W, T* Y, int64_t N, int64_t G, int64_t Cg, int64_t Og,
                  int64_t S, int64_t F);

}  // namespace fastconv::cpu
