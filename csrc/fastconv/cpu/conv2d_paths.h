// The CPU conv2d paths other than native, depthwise and fft, one file each:
// im2col (+ GEMM, conv2d_im2col.cpp; a pointwise layer laid out as a matrix,
// conv2d_pointwise.cpp), shifted GEMM (conv2d_shifted.cpp) and
// direct rows of 1-D convolutions (conv2d_direct.cpp). conv2d_kernel.cpp
// registers the operators and hands each call to the path path.h chooses.
// Every function takes contiguous tensors and the checked sizes; 16-bit
// types compute in float (the accumulation type T = at::opmath_type).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "fastconv/path.h"
#include "fastconv/shape.h"

namespace fastconv::cpu {

// Column-matrix (im2col) or staged-row elements per thread: 128 Ki floats
// (512 KiB) stay in a 1 MiB L2 next to the GEMM's output tile.
constexpr int64_t kColumnBudget = int64_t(1) << 17;

inline int64_t taps_per_group(const Conv2dIntDims& d) {
  return d.in_channels_per_group() * d.kernel_size[0] * d.kernel_size[1];
}

// C[M x N] = A[M x K] @ B[K x N] (+ C when accumulate); row-major matrices
// with leading dimensions. float goes to oneDNN's brgemm micro-kernel (faster
// than a BLAS sgemm call for these small, L2-resident operands); ATen falls
// back to its BLAS gemm where oneDNN cannot run it.
void matmul(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
            int64_t ldc, bool accumulate);
void matmul(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* B, int64_t ldb,
            double* C, int64_t ldc, bool accumulate);

// Weights in the accumulation type, per group: (groups, C_out/g, Kc), or
// transposed to (groups, Kc, C_out/g).
at::Tensor grouped_weight(const at::Tensor& weight, const Conv2dIntDims& d, bool transposed);

// The forward convolution by `path` (direct, shifted or im2col), in input's
// dtype, contiguous (conv2d_kernel.cpp).
at::Tensor conv2d_forward_path(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const Conv2dIntDims& d, Path path);

// Forward into y (allocated, contiguous): w = grouped_weight(weight, d,
// false); b the bias in w's dtype, or undefined.
void conv2d_im2col(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const Conv2dIntDims& d,
                   at::Tensor& y);
void conv2d_direct(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const Conv2dIntDims& d,
                   at::Tensor& y);
// The same from the layer's own weight (the shifted GEMM lays it out per tap).
void conv2d_shifted(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& b, const Conv2dIntDims& d,
                    at::Tensor& y);

// grad_weight, (C_out, C_in/g, KH, KW) in x's dtype. The shifted GEMM
// multiplies dropped pixels' inputs by zero: x must be finite.
at::Tensor conv2d_weight_backward_im2col(const at::Tensor& gy, const at::Tensor& x, const Conv2dIntDims& d);
at::Tensor conv2d_weight_backward_shifted(const at::Tensor& gy, const at::Tensor& x, const Conv2dIntDims& d);
at::Tensor conv2d_weight_backward_direct(const at::Tensor& gy, const at::Tensor& x, const Conv2dIntDims& d);

// im2col of a pointwise layer with one group whose activation is a matrix of
// pixels by channels (channels-last-contiguous: channels-last, or one pixel
// per image): one GEMM, the output in that layout (conv2d_pointwise.cpp).
bool pointwise_rows(const at::Tensor& activation, const Conv2dIntDims& d);
at::Tensor pointwise_forward_rows(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  const Conv2dIntDims& d);
// gy and x both channels-last-contiguous.
at::Tensor pointwise_weight_backward_rows(const at::Tensor& gy, const at::Tensor& x, const Conv2dIntDims& d);

// grad_input by im2col's GEMM and col2im, and of a strided layer by the
// direct rows phase by phase.
at::Tensor conv2d_input_backward_im2col(const at::Tensor& gy, const at::Tensor& weight, const Conv2dIntDims& d);
at::Tensor conv2d_input_backward_phases(const at::Tensor& gy, const at::Tensor& weight, const Conv2dIntDims& d);

}  // namespace fastconv::cpu
