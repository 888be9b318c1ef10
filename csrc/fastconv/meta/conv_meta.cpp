// Meta kernels: shapes only, for FakeTensor, torch.compile and opcheck.
// They run the same checks as the real kernels through shape.h.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "fastconv/shape.h"

namespace fastconv {
namespace {

at::Tensor conv1d_meta(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto d =
      check_conv1d(input, weight, bias, stride, padding, dilation, groups, algorithm);
  return input.new_empty_symint(conv1d_output_shape(d));
}

at::Tensor conv1d_input_backward_meta(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::SymInt input_length,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto d = check_conv1d_input_backward(
      grad_output, weight, input_length, stride, padding, dilation, groups, algorithm);
  return grad_output.new_empty_symint(conv1d_input_shape(d));
}

at::Tensor conv1d_weight_backward_meta(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymInt kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto d = check_conv1d_weight_backward(
      grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm);
  return input.new_empty_symint(conv1d_weight_shape(d));
}

at::Tensor conv2d_meta(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto d =
      check_conv2d(input, weight, bias, stride, padding, dilation, groups, algorithm);
  return at::empty_symint(conv2d_output_shape(d), input.options().memory_format(conv2d_memory_format(input)));
}

at::Tensor conv2d_input_backward_meta(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::SymIntArrayRef input_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto d = check_conv2d_input_backward(
      grad_output, weight, input_size, stride, padding, dilation, groups, algorithm);
  return at::empty_symint(conv2d_input_shape(d),
                          grad_output.options().memory_format(conv2d_memory_format(grad_output)));
}

at::Tensor conv2d_weight_backward_meta(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymIntArrayRef kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto d = check_conv2d_weight_backward(
      grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm);
  return input.new_empty_symint(conv2d_weight_shape(d));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, Meta, m) {
  m.impl("conv1d", &conv1d_meta);
  m.impl("conv1d_input_backward", &conv1d_input_backward_meta);
  m.impl("conv1d_weight_backward", &conv1d_weight_backward_meta);
  m.impl("conv2d", &conv2d_meta);
  m.impl("conv2d_input_backward", &conv2d_input_backward_meta);
  m.impl("conv2d_weight_backward", &conv2d_weight_backward_meta);
}

}  // namespace fastconv
