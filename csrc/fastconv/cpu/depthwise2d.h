// conv2d's "depthwise" path on CPU (groups == C_in == C_out): vectors across
// channels, any kernel size, stride, dilation and padding. Channels-last
// activations are read in place; other layouts are first copied to it. The
// results are channels-last, (N, C, H, W) views of (N, H, W, C) buffers
// (unbatched calls: (C, H, W) views); callers give them the layout they owe.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "fastconv/shape.h"

namespace fastconv::cpu {

at::Tensor depthwise2d_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const Conv2dIntDims& d);
at::Tensor depthwise2d_input_backward(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dIntDims& d);
at::Tensor depthwise2d_weight_backward(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dIntDims& d);

}  // namespace fastconv::cpu
