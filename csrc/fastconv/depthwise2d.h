// conv2d's "depthwise" path (groups == C_in == C_out), any kernel size,
// stride, dilation and padding, per backend. The results take the
// activation's memory format (callers of the CPU functions give it: those
// return channels-last views of (N, H, W, C) buffers, unbatched calls their
// (C, H, W) views).
//   CPU   vectors across channels (cpu/depthwise2d_kernel.cpp); channels-last
//         activations are read in place, others first copied to it.
//   CUDA  tensors read by their strides, either memory format in place
//         (cuda/depthwise2d_kernel.cu).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "fastconv/shape.h"

namespace fastconv {

namespace cpu {
at::Tensor depthwise2d_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const Conv2dIntDims& d);
at::Tensor depthwise2d_input_backward(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dIntDims& d);
at::Tensor depthwise2d_weight_backward(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dIntDims& d);
}  // namespace cpu

namespace cuda {
at::Tensor depthwise2d_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const Conv2dIntDims& d);
at::Tensor depthwise2d_input_backward(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dIntDims& d);
at::Tensor depthwise2d_weight_backward(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dIntDims& d);
}  // namespace cuda

}  // namespace fastconv
