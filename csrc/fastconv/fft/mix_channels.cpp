#include "fastconv/fft/mix_channels.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "fastconv/cpu/tile_kernels.h"

namespace fastconv::cpu {
namespace {

// A work item: up to kBlock frequencies (complex values) of kRows rows
// (segments, of one sample or several) of one group. Rows of every sample go
// into one item, so that each w vector serves many: one transform per
// sample (64 x 64 channels, K = 129) gave rows of one segment each, and
// every w vector read from memory served one multiply. Blocks are cut
// evenly, in multiples of kAlign values (a 64-byte vector of float):
// frequencies 64 + 64 + 1 left one thread a block of one value while the
// other worked. No block is empty: block <= 64, so (blocks - 1) * block < F.
constexpr int64_t kBlock = 64;
constexpr int64_t kAlign = 8;
constexpr int64_t kRows = 32;

}  // namespace

template <typename T>
void mix_channels(const T* X, const T* W, T* Y, int64_t N, int64_t G, int64_t Cg, int64_t Og,
                  int64_t S, int64_t F) {
  const int64_t blocks = (F + kBlock - 1) / kBlock;
  const int64_t block = ((F + blocks - 1) / blocks + kAlign - 1) / kAlign * kAlign;
  const int64_t rows = N * S, chunks = (rows + kRows - 1) / kRows;
  const int64_t items = G * blocks * chunks;
  const int64_t work_per_item = Og * Cg * std::min(rows, kRows) * block;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(work_per_item, 1));
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    int64_t x_rows[kRows], y_rows[kRows];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t gb = item / chunks, g = gb / blocks, q0 = item % chunks * kRows;
      const int64_t f0 = gb % blocks * block, len = std::min(block, F - f0);
      const int64_t count = std::min(kRows, rows - q0);
      // Row q is segment q % S of sample q / S, in the group's channels.
      for (int64_t i = 0; i < count; ++i) {
        const int64_t n = (q0 + i) / S, s = (q0 + i) % S;
        x_rows[i] = 2 * (((n * G + g) * Cg * S + s) * F + f0);
        y_rows[i] = 2 * (((n * G + g) * Og * S + s) * F + f0);
      }
      MixTile<T> tile{X, 2 * S * F, x_rows, W + 2 * (g * Og * Cg * F + f0), 2 * F,
                      Y, 2 * S * F, y_rows, Cg, Og, count, 2 * len};
      run(tile);
    }
  });
}

template void mix_channels<float>(const float*, const float*, float*, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, int64_t);
template void mix_channels<double>(const double*, const double*, double*, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, int64_t);

}  // namespace fastconv::cpu
