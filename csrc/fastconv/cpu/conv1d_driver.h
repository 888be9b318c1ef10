// The tiled direct-convolution driver behind the CPU kernels: it walks
// (batch, group, tile) work items in parallel, stages each tile's input rows
// in a per-thread scratch buffer -- zero-padded, deinterleaved by stride,
// upsampled where asked, converted to the accumulation type -- and runs the
// per-ISA micro-kernels of tile_kernels.h on it. conv1d and convolve both
// reduce to it.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastconv/conv1d_geometry.h"
#include "fastconv/cpu/tile_kernels.h"

namespace fastconv::cpu {

// Scratch bytes per tile: the input rows of one tile stay in L2.
constexpr int64_t kScratchBytes = 192 << 10;

using Geometry = Conv1dGeometry;

// Output positions per tile: the scratch rows of a tile, and the staged
// output rows of 16-bit types, fit kScratchBytes; and where few rows (batch x
// groups) are long, short enough that every thread gets tiles (one sample
// of 4 channels at L = 4096 was a single tile: one thread, 1.5x the time);
// and all of about the same length.
inline int64_t tile_length(const Geometry& g, int64_t elem_size) {
  const int64_t per_position = std::max<int64_t>(1, std::max(g.cin_g() * g.stride, g.cout_g()) * elem_size);
  int64_t t = std::clamp<int64_t>(kScratchBytes / per_position, 64, 4096) & ~int64_t(15);
  const int64_t rows = std::max<int64_t>(1, g.batch * g.groups);
  const int64_t tiles_per_row = (4 * at::get_num_threads() + rows - 1) / rows;
  t = std::min(t, std::max<int64_t>(64, ((g.out_length + tiles_per_row - 1) / tiles_per_row + 15) & ~int64_t(15)));
  // Equal tiles: 2048 outputs as 1536 + 512 staged and ran a mostly empty tile.
  const int64_t count = (g.out_length + t - 1) / std::max<int64_t>(1, t);
  t = std::min(t, ((g.out_length + count - 1) / std::max<int64_t>(1, count) + 15) & ~int64_t(15));
  return std::min(t, g.out_length);
}

// Elements of one deinterleaved phase row of a tile of n outputs.
inline int64_t row_length(const Geometry& g, int64_t n) {
  return n + g.dilation * (g.kernel_size - 1) / g.stride + kScratchSlack;
}

// Tap t = icg * K + k reads scratch[offsets[t] + j] for output j of the tile.
inline std::vector<int64_t> tap_offsets(const Geometry& g, int64_t row_len) {
  std::vector<int64_t> offsets(g.taps());
  for (int64_t icg = 0; icg < g.cin_g(); ++icg) {
    for (int64_t k = 0; k < g.kernel_size; ++k) {
      const int64_t q = k * g.dilation;
      offsets[icg * g.kernel_size + k] = (icg * g.stride + q % g.stride) * row_len + q / g.stride;
    }
  }
  return offsets;
}

// out = conv(in, weight) + bias; weight is [C_out][cin_g * K] and bias
// [C_out] (or null), both in the accumulation type.
template <typename scalar_t>
void conv_forward(const Geometry& g, const scalar_t* in,
                  const at::opmath_type<scalar_t>* weight,
                  const at::opmath_type<scalar_t>* bias, scalar_t* out);

// grad_weight[oc][icg][k] = sum_{b,l} grad_out[b][oc][l] * up[b][ic][l*stride + k*dilation - pad].
template <typename scalar_t>
void conv_weight_grad(const Geometry& g, const scalar_t* grad_out, const scalar_t* in,
                      scalar_t* grad_weight);

}  // namespace fastconv::cpu
