// im2col / col2im for conv2d on CPU, over tiles of whole output rows.
//
// A tile is `rows` consecutive rows of the (batch x H_out) output rows of one
// group, so its columns are rows * W_out output pixels. Its column matrix has
// one row per (c, kh, kw) of the group's Kc = C_in/groups * KH * KW taps and
// one column per pixel, stored densely (leading dimension = columns):
//   col[(c * KH + kh) * KW + kw][q * W_out + ow]
//     = x[n, g * C_in/groups + c, oh * sh - ph + kh * dh, ow * sw - pw + kw * dw]
// where tile row q is the output row (n, oh), and zero where that is padding.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

#include "fastconv/cpu/convert_row.h"
#include "fastconv/shape.h"

namespace fastconv::cpu {

// First and one-past-last ow whose input column ow * stride + offset lies in
// [0, width).
inline std::pair<int64_t, int64_t> valid_range(
    int64_t offset, int64_t stride, int64_t width, int64_t out_width) {
  const int64_t lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  const int64_t hi = width - 1 - offset >= 0 ? (width - 1 - offset) / stride + 1 : 0;
  return {std::min(lo, out_width), std::clamp(hi, std::min(lo, out_width), out_width)};
}

// kScatter = false: im2col, col = columns of x (converted to T).
// kScatter = true:  col2im, x += col at the same positions (x holds T).
template <bool kScatter, typename X, typename T>
void im2col_tile(
    const Conv2dIntDims& d, int64_t group, int64_t row0, int64_t rows, X* x,
    std::conditional_t<kScatter, const T, T>* col) {
  const int64_t cin_g = d.in_channels_per_group();
  const int64_t H = d.in_size[0], W = d.in_size[1];
  const int64_t OH = d.out_size[0], OW = d.out_size[1];
  const int64_t KH = d.kernel_size[0], KW = d.kernel_size[1];
  const int64_t sh = d.stride[0], sw = d.stride[1];
  const int64_t cols = rows * OW;
  for (int64_t c = 0; c < cin_g; ++c) {
    for (int64_t kh = 0; kh < KH; ++kh) {
      for (int64_t kw = 0; kw < KW; ++kw) {
        auto* col_row = col + ((c * KH + kh) * KW + kw) * cols;
        const int64_t iw0 = kw * d.dilation[1] - d.padding[1];
        const auto [lo, hi] = valid_range(iw0, sw, W, OW);
        for (int64_t q = 0; q < rows; ++q) {
          const int64_t n = (row0 + q) / OH, oh = (row0 + q) % OH;
          const int64_t ih = oh * sh - d.padding[0] + kh * d.dilation[0];
          auto* seg = col_row + q * OW;
          if (ih < 0 || ih >= H) {
            if constexpr (!kScatter) std::fill(seg, seg + OW, T(0));
            continue;
          }
          X* x_row = x + ((n * d.in_channels + group * cin_g + c) * H + ih) * W + iw0;
          if constexpr (kScatter) {
            for (int64_t ow = lo; ow < hi; ++ow) x_row[ow * sw] += seg[ow];
          } else {
            std::fill(seg, seg + lo, T(0));
            if (sw == 1) {  // memmove where the types match, else the vectorized conversions
              convert_row(x_row + lo, seg + lo, hi - lo);
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) seg[ow] = static_cast<T>(x_row[ow * sw]);
            }
            std::fill(seg + hi, seg + OW, T(0));
          }
        }
      }
    }
  }
}

// dst[j * ld_dst + i] = src[i * ld_src + j] (+ add[j]) for i < m, j < n,
// converted, in 16 x 16 blocks so that both sides run along cache lines.
template <typename S, typename D, typename T>
void transpose(const S* src, int64_t ld_src, D* dst, int64_t ld_dst, int64_t m, int64_t n, const T* add = nullptr) {
  for (int64_t i0 = 0; i0 < m; i0 += 16) {
    const int64_t i1 = std::min(m, i0 + 16);
    for (int64_t j0 = 0; j0 < n; j0 += 16) {
      for (int64_t j = j0; j < std::min(n, j0 + 16); ++j) {
        const T a = add ? add[j] : T(0);
        for (int64_t i = i0; i < i1; ++i) dst[j * ld_dst + i] = static_cast<D>(static_cast<T>(src[i * ld_src + j]) + a);
      }
    }
  }
}

// Input rows [ih0, ih0 + rows) of one sample and group, pixel-major and
// converted to T, at a row stride of S = W + pw pixels, with pw zero pixels
// before each row and after the last (rows outside the image are zeros). The
// zeros before row r + 1 are also row r's right padding:
//   stage[(r * S + pw + iw) * C_in/g + c] = x[n, g * C_in/groups + c, ih0 + r, iw]
// This is the layout of the stride-1 "shifted GEMM" in conv2d_shifted.cpp.
template <typename X, typename T>
void stage_padded_rows(
    const Conv2dIntDims& d, int64_t n, int64_t group, int64_t ih0, int64_t rows, const X* x, T* stage) {
  const int64_t cin_g = d.in_channels_per_group();
  const int64_t H = d.in_size[0], W = d.in_size[1], pw = d.padding[1], S = W + pw;
  const X* x_g = x + (n * d.in_channels + group * cin_g) * H * W;
  for (int64_t r = 0; r < rows; ++r) {
    T* dst = stage + r * S * cin_g;
    const int64_t ih = ih0 + r;
    if (ih < 0 || ih >= H) {
      std::fill(dst, dst + S * cin_g, T(0));
      continue;
    }
    std::fill(dst, dst + pw * cin_g, T(0));
    transpose<X, T, T>(x_g + ih * W, H * W, dst + pw * cin_g, cin_g, cin_g, W);
  }
  std::fill(stage + rows * S * cin_g, stage + (rows * S + pw) * cin_g, T(0));
}

// Moves a tile of output-shaped data (channels of one group, the tile's rows)
// between y (N, C_out, H_out, W_out) and the dense tile[oc][q * W_out + ow].
// kToTile: tile = y (gathers grad_output), or its transpose
// tile[q * W_out + ow][oc] when transposed. Otherwise y = tile + bias[oc].
template <bool kToTile, typename Y, typename T>
void copy_output_tile(
    const Conv2dIntDims& d, int64_t group, int64_t row0, int64_t rows, Y* y,
    std::conditional_t<kToTile, T, const T>* tile, const T* bias,
    bool transposed = false) {
  const int64_t cout_g = d.out_channels_per_group();
  const int64_t OH = d.out_size[0], OW = d.out_size[1], P = OH * OW;
  const int64_t cols = rows * OW;
  for (int64_t q = 0; q < rows;) {
    // The tile's rows of one sample are contiguous in each channel of y.
    const int64_t n = (row0 + q) / OH, oh = (row0 + q) % OH;
    const int64_t run = std::min(rows - q, OH - oh) * OW;
    Y* y_run = y + ((n * d.out_channels + group * cout_g) * OH + oh) * OW;
    if constexpr (kToTile) {
      if (transposed) {
        // 16 pixels at a time, so the 16-value pieces of every channel's row
        // stay in L1 while the writes run along channels.
        T* t_run = tile + q * OW * cout_g;
        for (int64_t i0 = 0; i0 < run; i0 += 16) {
          for (int64_t i = i0; i < std::min(run, i0 + 16); ++i) {
            for (int64_t oc = 0; oc < cout_g; ++oc) {
              t_run[i * cout_g + oc] = static_cast<T>(y_run[oc * P + i]);
            }
          }
        }
      } else {
        for (int64_t oc = 0; oc < cout_g; ++oc) {
          convert_row(y_run + oc * P, tile + oc * cols + q * OW, run);
        }
      }
    } else {
      for (int64_t oc = 0; oc < cout_g; ++oc) {
        const T b = bias ? bias[group * cout_g + oc] : T(0);
        const T* t_run = tile + oc * cols + q * OW;
        for (int64_t i = 0; i < run; ++i) y_run[oc * P + i] = static_cast<Y>(t_run[i] + b);
      }
    }
    q += run / OW;
  }
}

}  // namespace fastconv::cpu
