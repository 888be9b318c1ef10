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
  const int64_t blocks = (F + kBlock - 1) / kBlock, chunks = (S + kSegments - 1) / kSegments;
  // Items by (group, frequency block) first: a thread's consecutive items
  // share the block of w it has converted.
  const int64_t per_block = N * chunks, items = G * blocks * per_block;
  const int64_t work_per_item = Og * Cg * std::min(S, kSegments) * kBlock;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(work_per_item, 1));
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    // The block of w as (re, re) and (-im, im) pairs, the form the
    // micro-kernel multiplies by: [Og][Cg][2 * kBlock] each, in per-thread
    // buffers kept between calls.
    thread_local std::vector<T> wr, wi;
    wr.resize(std::max<size_t>(wr.size(), Og * Cg * 2 * kBlock));
    wi.resize(wr.size());
    int64_t converted = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t gb = item / per_block, g = gb / blocks;
      const int64_t n = item % per_block / chunks, s0 = item % chunks * kSegments;
      const int64_t f0 = gb % blocks * kBlock, len = std::min(kBlock, F - f0);
      if (gb != converted) {
        for (int64_t oc = 0; oc < Og * Cg; ++oc) {
          const T* w = W + 2 * ((g * Og * Cg + oc) * F + f0);
          T* r = wr.data() + oc * 2 * kBlock;
          T* i = wi.data() + oc * 2 * kBlock;
          for (int64_t f = 0; f < len; ++f) {
            r[2 * f] = r[2 * f + 1] = w[2 * f];
            i[2 * f] = -w[2 * f + 1];
            i[2 * f + 1] = w[2 * f + 1];
          }
        }
        converted = gb;
      }
      MixTile<T> tile{
          X + 2 * (((n * G + g) * Cg * S + s0) * F + f0), 2 * S * F, 2 * F,
          wr.data(), wi.data(), 2 * kBlock,
          Y + 2 * (((n * G + g) * Og * S + s0) * F + f0), 2 * S * F, 2 * F,
          Cg, Og, std::min(kSegments, S - s0), 2 * len};
      run(tile);
    }
  });
}

template void mix_channels<float>(const float*, const float*, float*, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, int64_t);
template void mix_channels<double>(const double*, const double*, double*, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, int64_t);

}  // namespace fastconv::cpu
