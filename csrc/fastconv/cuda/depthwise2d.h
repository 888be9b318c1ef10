// conv2d's "depthwise" path on CUDA (groups == C_in == C_out), any kernel
// size, stride, dilation and padding; activations of either memory format
// are read in place and the results take the activation's format.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "fastconv/shape.h"

namespace fastconv::cuda {

at::Tensor depthwise2d_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const Conv2dIntDims& d);
at::Tensor depthwise2d_input_backward(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dIntDims& d);
at::Tensor depthwise2d_weight_backward(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dIntDims& d);

}  // namespace fastconv::cuda
