// The "native" path: PyTorch's own convolution (at::convolution and
// at::convolution_backward: oneDNN or its CPU kernels, cuDNN on CUDA) for
// conv1d and conv2d, forward and both gradients, on any device. Results are
// in the memory format the fake kernels declare (shape.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "fastconv/shape.h"

namespace fastconv::native {

// `dims` spatial dimensions (1 or 2); conv1d sizes are the 2-D case of
// height 1, as in path.h's ConvCall.
at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                   const Conv2dIntDims& d, int dims);

at::Tensor input_backward(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dIntDims& d, int dims);

// grad_weight, and grad_bias when with_bias (else undefined).
std::tuple<at::Tensor, at::Tensor> weight_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                   const Conv2dIntDims& d, int dims, bool with_bias);

// All three gradients in one call: (grad_input, grad_weight, grad_bias or undefined).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                        const at::Tensor& weight, const Conv2dIntDims& d, int dims,
                                                        bool with_bias);

}  // namespace fastconv::native
