// conv2d and its two gradients through 2-D FFTs (at::fft_rfft2 / irfft2:
// pocketfft or MKL on CPU, cuFFT on CUDA), for any device, kernel size,
// stride, dilation and groups. 16-bit tensors compute in float and return
// their own dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <optional>

#include "fastconv/shape.h"

namespace fastconv::fft {

at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const Conv2dIntDims& d);
at::Tensor conv2d_input_backward(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dIntDims& d);
at::Tensor conv2d_weight_backward(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dIntDims& d);

// The transform sizes (height, width) every operator of `d` uses: fast
// lengths of the padded input's.
std::array<int64_t, 2> conv2d_fft_size(const Conv2dIntDims& d);

}  // namespace fastconv::fft
