#include "fastconv/fft/mix_channels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "fastconv/cpu/tile_kernels.h"

namespace fastconv::cpu {
namespace {

// A work item: kBlock frequencies (complex values) of kSegments segments of
// one sample and group, whose x, y and w stay in L2.
constexpr int64_t kBlock = 64;
constexpr int64_t kSegments = 32;

}  // namespace

template <typename T>
void mix_channels(const T* X, const T* W, T* Y, int64_t N, int64_t G, int64_t Cg, int64_t Og,
                  int64_t S, int64_t F) {
  // w as (re, re) and (-im, im) pairs, the form the micro-kernel multiplies by.
  const int64_t w_values = G * Og * Cg * F;
  std::vector<T> wr(2 * w_values), wi(2 * w_values);
  for (int64_t i = 0; i < w_values; ++i) {
    wr[2 * i] = wr[2 * i + 1] = W[2 * i];
    wi[2 * i] = -W[2 * i + 1];
    wi[2 * i + 1] = W[2 * i + 1];
  }
  const int64_t blocks = (F + kBlock - 1) / kBlock, chunks = (S + kSegments - 1) / kSegments;
  const int64_t items = N * G * chunks * blocks;
  const int64_t work_per_item = Og * Cg * std::min(S, kSegments) * kBlock;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(work_per_item, 1));
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t ng = item / (chunks * blocks), n = ng / G, g = ng % G;
      const int64_t s0 = (item / blocks % chunks) * kSegments, segments = std::min(kSegments, S - s0);
      const int64_t f0 = (item % blocks) * kBlock, len = std::min(kBlock, F - f0);
      MixTile<T> tile{
          X + 2 * (((n * G + g) * Cg * S + s0) * F + f0), 2 * S * F, 2 * F,
          wr.data() + 2 * (g * Og * Cg * F + f0), wi.data() + 2 * (g * Og * Cg * F + f0), 2 * F,
          Y + 2 * (((n * G + g) * Og * S + s0) * F + f0), 2 * S * F, 2 * F,
          Cg, Og, segments, 2 * len};
      run(tile);
    }
  });
}

template void mix_channels<float>(const float*, const float*, float*, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, int64_t);
template void mix_channels<double>(const double*, const double*, double*, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, int64_t);

}  // namespace fastconv::cpu
