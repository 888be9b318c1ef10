// conv2d on CPU: the three operators, each call handed to the path path.h
// chooses: "native" (PyTorch's own, native.h), "depthwise"
// (depthwise2d.h), "fft" (fft/fft_conv2d.h), or one of conv2d_paths.h's
// "im2col", "shifted" and "direct".
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/isfinite.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "fastconv/cpu/allocation.h"
#include "fastconv/cpu/conv2d_paths.h"
#include "fastconv/depthwise2d.h"
#include "fastconv/fft/fft_conv2d.h"
#include "fastconv/native.h"
#include "fastconv/path.h"
#include "fastconv/shape.h"

namespace fastconv {

at::Tensor cpu::conv2d_forward_path(const at::Tensor& input, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, const Conv2dIntDims& d, Path path) {
  if (path == Path::kIm2col && cpu::pointwise_rows(input, d)) return cpu::pointwise_forward_rows(input, weight, bias, d);
  const at::Tensor x = input.contiguous();
  const auto opmath = at::toOpMathType(weight.scalar_type());
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->to(opmath).contiguous() : at::Tensor();
  std::vector<int64_t> y_shape{d.out_channels, d.out_size[0], d.out_size[1]};
  if (d.batched) y_shape.insert(y_shape.begin(), d.batch);
  at::Tensor y = cpu::empty_output(y_shape, input.options());
  switch (path) {
    case Path::kShifted: cpu::conv2d_shifted(x, weight, b, d, y); break;
    case Path::kDirect: cpu::conv2d_direct(x, cpu::grouped_weight(weight, d, false), b, d, y); break;
    default: cpu::conv2d_im2col(x, cpu::grouped_weight(weight, d, false), b, d, y);
  }
  return y;
}

namespace {

at::Tensor conv2d_cpu(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto d = concrete(check_conv2d(input, weight, bias, stride, padding, dilation, groups, algorithm));
  const auto layout = conv2d_memory_format(input);
  return run_selected(make_call(ConvOp::kForward, d, input), algorithm, [&](Path path) {
    switch (path) {
      case Path::kNative: return native::forward(input, weight, bias, d, 2);
      case Path::kDepthwise: return cpu::depthwise2d_forward(input, weight, bias, d).contiguous(layout);
      case Path::kFft: return fft::conv2d_forward(input, weight, bias, d).contiguous(layout);
      default: return cpu::conv2d_forward_path(input, weight, bias, d, path).contiguous(layout);
    }
  });
}

// grad_weight by `path` (not native): direct, shifted (im2col where an
// input is not finite: Inf * 0 is NaN) or im2col.
at::Tensor conv2d_weight_backward_own(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dIntDims& d,
                                      Path path) {
  if (path == Path::kIm2col && cpu::pointwise_rows(input, d) && cpu::pointwise_rows(grad_output, d)) {
    return cpu::pointwise_weight_backward_rows(grad_output, input, d);
  }
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  if (path == Path::kDirect) return cpu::conv2d_weight_backward_direct(gy, x, d);
  if (path == Path::kShifted && at::isfinite(x).all().item<bool>()) return cpu::conv2d_weight_backward_shifted(gy, x, d);
  return cpu::conv2d_weight_backward_im2col(gy, x, d);
}

at::Tensor conv2d_weight_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymIntArrayRef kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto d = concrete(check_conv2d_weight_backward(
      grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm));
  return run_selected(make_call(ConvOp::kWeight, d, input), algorithm, [&](Path path) {
    switch (path) {
      case Path::kNative: return std::get<0>(native::weight_backward(grad_output, input, d, 2, false));
      case Path::kDepthwise: return cpu::depthwise2d_weight_backward(grad_output, input, d);
      case Path::kFft: return fft::conv2d_weight_backward(grad_output, input, d);
      default: return conv2d_weight_backward_own(grad_output, input, d, path);
    }
  });
}

// grad_input by `path` (not native): direct and shifted run the transposed
// stride-1 convolution (path.h), as im2col does for a pointwise layer (no
// col2im); otherwise direct runs phase by phase and im2col its GEMM and col2im.
at::Tensor conv2d_input_backward_own(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dIntDims& d,
                                     Path path) {
  if (const auto padding_t = conv2d_transposed_padding(d);
      padding_t && (path != Path::kIm2col || conv2d_is_pointwise(d))) {
    const at::Tensor w_t = weight.reshape({d.groups, d.out_channels_per_group(), d.in_channels_per_group(),
                                           d.kernel_size[0], d.kernel_size[1]})
                               .transpose(1, 2)
                               .flip({3, 4})
                               .reshape({d.in_channels, d.out_channels_per_group(), d.kernel_size[0],
                                         d.kernel_size[1]});
    return cpu::conv2d_forward_path(grad_output, w_t, std::nullopt, conv2d_transposed(d, *padding_t), path);
  }
  if (path == Path::kDirect) return cpu::conv2d_input_backward_phases(grad_output, weight, d);
  return cpu::conv2d_input_backward_im2col(grad_output.contiguous(), weight, d);
}

at::Tensor conv2d_input_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::SymIntArrayRef input_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto d = concrete(check_conv2d_input_backward(
      grad_output, weight, input_size, stride, padding, dilation, groups, algorithm));
  const auto layout = conv2d_memory_format(grad_output);
  return run_selected(make_call(ConvOp::kInput, d, grad_output), algorithm, [&](Path path) {
    switch (path) {
      case Path::kNative: return native::input_backward(grad_output, weight, d, 2);
      case Path::kDepthwise: return cpu::depthwise2d_input_backward(grad_output, weight, d).contiguous(layout);
      case Path::kFft: return fft::conv2d_input_backward(grad_output, weight, d).contiguous(layout);
      default: return conv2d_input_backward_own(grad_output, weight, d, path).contiguous(layout);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_input_backward", &conv2d_input_backward_cpu);
  m.impl("conv2d_weight_backward", &conv2d_weight_backward_cpu);
}

}  // namespace fastconv