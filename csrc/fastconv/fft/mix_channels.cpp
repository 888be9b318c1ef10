#include "fastconv/fft/mix_channels.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace fastconv::cpu {
namespace {

// Frequencies per block: a block of W (Og x Cg x kBlock complex values) stays
// in L2 while every segment of every sample passes through it.
constexpr int64_t kBlock = 64;

}  // namespace

template <typename T>
void mix_channels(const T* X, const T* W, T* Y, int64_t N, int64_t G, int64_t Cg, int64_t Og,
                  int64_t S, int64_t F) {
  const int64_t blocks = (F + kBlock - 1) / kBlock;
  const int64_t work_per_block = N * G * Og * Cg * S * kBlock;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(work_per_block, 1));
  at::parallel_for(0, G * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item / blocks, f0 = (item % blocks) * kBlock;
      const int64_t len = std::min(kBlock, F - f0);
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t s = 0; s < S; ++s) {
          for (int64_t o = 0; o < Og; ++o) {
            T* y = Y + 2 * (((n * G * Og + g * Og + o) * S + s) * F + f0);
            std::fill(y, y + 2 * len, T(0));
            for (int64_t c = 0; c < Cg; ++c) {
              const T* x = X + 2 * (((n * G * Cg + g * Cg + c) * S + s) * F + f0);
              const T* w = W + 2 * (((g * Og + o) * Cg + c) * F + f0);
              for (int64_t i = 0; i < len; ++i) {
                const T xr = x[2 * i], xi = x[2 * i + 1], wr = w[2 * i], wi = w[2 * i + 1];
                y[2 * i] += xr * wr - xi * wi;
                y[2 * i + 1] += xr * wi + xi * wr;
              }
            }
          }
        }
      }
    }
  });
}

template void mix_channels<float>(const float*, const float*, float*, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, int64_t);
template void mix_channels<double>(const double*, const double*, double*, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, int64_t);

}  // namespace fastconv::cpu
