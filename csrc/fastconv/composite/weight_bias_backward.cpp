// conv1d_weight_bias_backward for every backend without a fused kernel (CUDA,
// Meta): the weight gradient, and the bias gradient as a sum. The CPU kernel
// (cpu/conv1d_kernel.cpp) computes both in one pass.
#include <torch/library.h>

#include <tuple>

#include "fastconv/bias_grad.h"
#include "fastconv/ops.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

std::tuple<at::Tensor, at::Tensor> conv1d_weight_bias_backward_composite(
    const at::Tensor& grad_output, const at::Tensor& input, c10::SymInt kernel_size,
    c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    c10::SymInt groups, c10::string_view algorithm) {
  // The checks first, so that errors name this operator.
  check_conv1d_weight_backward(grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm,
                               "fastconv.conv1d_weight_bias_backward");
  at::Tensor grad_weight = conv1d_weight_backward(
      grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm);
  return {grad_weight, conv_bias_grad(grad_output, 1)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CompositeExplicitAutograd, m) {
  m.impl("conv1d_weight_bias_backward", &conv1d_weight_bias_backward_composite);
}

}  // namespace fastconv
