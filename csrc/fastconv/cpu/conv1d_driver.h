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

// Rows of fewer outputs than this (8 vectors of 16 fp32 lanes, the widest
// forward register block with AVX-512) are packed into tiles, several rows
// to a tile (see make_tiling).
constexpr int64_t kPackedBelow = 128;
// Input and output bytes of a tile of packed rows: they stay in L1.
constexpr int64_t kPackedBytes = 16 << 10;

using Geometry = Conv1dGeometry;

// Output positions one row's phase rows reach past its last output.
inline int64_t halo(const Geometry& g) {
  return g.dilation * (g.kernel_size - 1) / g.stride;
}

// How the work is cut into tiles. A tile is `length` outputs of one row
// (sample and group) or, where rows are short, `rows` whole rows of one group
// side by side, each `pitch` scratch elements apart (its outputs and halo):
// a 65-output row as a tile of its own spent more on its edges and partial
// vectors than on its multiply-adds. Work item i is tile i % tiles of group
// (i / tiles) % groups in samples [pack * rows, pack * rows + rows), pack =
// i / (tiles * groups).
struct Tiling {
  int64_t length = 0;  // outputs of each row in a tile
  int64_t tiles = 0;   // tiles per row
  int64_t rows = 1;    // rows per tile
  int64_t pitch = 0;   // scratch (and staged output) elements per row of a tile
  int64_t row_len = 0; // elements of one scratch phase row
  int64_t span = 0;    // output positions a tile computes: (rows - 1) * pitch + length
  int64_t items = 0;
};

// The scratch rows of a tile, and the staged output rows of 16-bit types or
// of packed rows, fit kScratchBytes; where few rows (batch x groups) are
// long, tiles are short enough that every thread gets some; and all of about
// the same length. Only rows shorter than kPackedBelow are packed (longer
// ones run slower packed, forward and grad_weight). The forward kernel also
// computes the outputs between packed rows, so it packs only rows with at
// most as many outputs between them as in them, and only rows that lie one
// after another in memory (one group): rows gathered from samples C * L
// apart run slower packed in the forward.
inline Tiling make_tiling(const Geometry& g, int64_t elem_size, bool forward) {
  Tiling t;
  if (g.out_length <= 0 || g.batch == 0) {
    return t;
  }
  const int64_t per_position = std::max<int64_t>(1, std::max(g.cin_g() * g.stride, g.cout_g()) * elem_size);
  const int64_t budget = std::clamp<int64_t>(kScratchBytes / per_position, 64, 4096) & ~int64_t(15);
  const int64_t min_items = 4 * at::get_num_threads();
  const int64_t rows = std::max<int64_t>(1, g.batch * g.groups);
  // Whole rows side by side, as many as fit and leave every thread tiles.
  const int64_t pitch = g.out_length + halo(g);
  const int64_t packs_wanted = (min_items + g.groups - 1) / g.groups;
  if (g.out_length < kPackedBelow && (!forward || (g.groups == 1 && halo(g) <= g.out_length))) {
    const int64_t row_bytes = pitch * (g.cin_g() * g.stride + g.cout_g()) * elem_size;
    t.rows = std::max<int64_t>(1, std::min(kPackedBytes / row_bytes, g.batch / packs_wanted));
  }
  if (t.rows > 1) {
    t.length = g.out_length;
    t.tiles = 1;
  } else {
    const int64_t tiles_per_row = (min_items + rows - 1) / rows;
    int64_t n = std::min(budget, std::max<int64_t>(64, ((g.out_length + tiles_per_row - 1) / tiles_per_row + 15) & ~int64_t(15)));
    // Equal tiles: 2048 outputs as 1536 + 512 staged and ran a mostly empty tile.
    const int64_t count = (g.out_length + n - 1) / n;
    n = std::min(n, ((g.out_length + count - 1) / count + 15) & ~int64_t(15));
    t.length = std::min(n, g.out_length);
    t.tiles = (g.out_length + t.length - 1) / t.length;
  }
  t.pitch = t.length + halo(g);
  t.span = (t.rows - 1) * t.pitch + t.length;
  t.row_len = t.rows * t.pitch + kScratchSlack;
  t.items = (g.batch + t.rows - 1) / t.rows * g.groups * t.tiles;
  return t;
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

// grad_weight[oc][icg][k] = sum_{b,l} grad_out[b][oc][l] * up[b][ic][l*stride + k*dilation - pad],
// and, unless grad_bias is null, grad_bias[oc] = sum_{b,l} grad_out[b][oc][l] in the same pass.
template <typename scalar_t>
void conv_weight_grad(const Geometry& g, const scalar_t* grad_out, const scalar_t* in,
                      scalar_t* grad_weight, scalar_t* grad_bias = nullptr);

}  // namespace fastconv::cpu
