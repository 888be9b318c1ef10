// Autograd for the conv1d family, registered at the Autograd key so that
// Python, TorchScript and C++ callers all get gradients.
//
// The three operators are bilinear and each one's gradients are the other
// two (or itself), so backward calls fastconv operators and every order of
// derivative works:
//   y  = conv1d(x, w)               dx = input_backward(gy, w)
//                                   dw = weight_backward(gy, x)
//   gx = input_backward(gy, w)      d(gy) = conv1d(g, w),  dw = weight_backward(gy, g)
//   gw = weight_backward(gy, x)     d(gy) = conv1d(x, g),  dx = input_backward(gy, g)
#include <torch/autograd.h>
#include <torch/library.h>

#include "fastconv/ops.h"

namespace fastconv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Hyper-parameters shared by the three operators, kept in saved_data.
void save_hyper_params(
    AutogradContext* ctx, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    const c10::SymInt& groups) {
  ctx->saved_data["stride"] = stride;
  ctx->saved_data["padding"] = padding;
  ctx->saved_data["dilation"] = dilation;
  ctx->saved_data["groups"] = groups;
}

struct HyperParams {
  std::vector<c10::SymInt> stride;
  std::vector<c10::SymInt> padding;
  std::vector<c10::SymInt> dilation;
  c10::SymInt groups;
};

HyperParams load_hyper_params(AutogradContext* ctx) {
  return HyperParams{
      ctx->saved_data["stride"].toSymIntVector(),
      ctx->saved_data["padding"].toSymIntVector(),
      ctx->saved_data["dilation"].toSymIntVector(),
      ctx->saved_data["groups"].toSymInt()};
}

class Conv1dFunction : public torch::autograd::Function<Conv1dFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
      const std::optional<at::Tensor>& bias, c10::SymIntArrayRef stride,
      c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
      const c10::SymInt& groups) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, weight});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    save_hyper_params(ctx, stride, padding, dilation, groups);
    return conv1d(input, weight, bias, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& grad = grads[0];
    const HyperParams p = load_hyper_params(ctx);
    at::Tensor grad_input, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) {
      grad_input = conv1d_input_backward(
          grad, weight, input.sym_size(-1), p.stride, p.padding, p.dilation,
          p.groups);
    }
    if (ctx->needs_input_grad(1)) {
      grad_weight = conv1d_weight_backward(
          grad, input, weight.sym_size(-1), p.stride, p.padding, p.dilation,
          p.groups);
    }
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      grad_bias = grad.dim() == 3 ? grad.sum({0, 2}) : grad.sum(1);
    }
    return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

class Conv1dInputBackwardFunction
    : public torch::autograd::Function<Conv1dInputBackwardFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& grad_output,
      const at::Tensor& weight, const c10::SymInt& input_length,
      c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
      c10::SymIntArrayRef dilation, const c10::SymInt& groups) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({grad_output, weight});
    save_hyper_params(ctx, stride, padding, dilation, groups);
    return conv1d_input_backward(
        grad_output, weight, input_length, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& g = grads[0];
    const HyperParams p = load_hyper_params(ctx);
    at::Tensor d_grad_output, d_weight;
    if (ctx->needs_input_grad(0)) {
      d_grad_output = conv1d(
          g, weight, std::nullopt, p.stride, p.padding, p.dilation, p.groups);
    }
    if (ctx->needs_input_grad(1)) {
      d_weight = conv1d_weight_backward(
          grad_output, g, weight.sym_size(-1), p.stride, p.padding, p.dilation,
          p.groups);
    }
    return {d_grad_output, d_weight, at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

class Conv1dWeightBackwardFunction
    : public torch::autograd::Function<Conv1dWeightBackwardFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& grad_output,
      const at::Tensor& input, const c10::SymInt& kernel_size,
      c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
      c10::SymIntArrayRef dilation, const c10::SymInt& groups) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({grad_output, input});
    save_hyper_params(ctx, stride, padding, dilation, groups);
    return conv1d_weight_backward(
        grad_output, input, kernel_size, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = saved[0];
    const at::Tensor& input = saved[1];
    const at::Tensor& g = grads[0];
    const HyperParams p = load_hyper_params(ctx);
    at::Tensor d_grad_output, d_input;
    if (ctx->needs_input_grad(0)) {
      d_grad_output = conv1d(
          input, g, std::nullopt, p.stride, p.padding, p.dilation, p.groups);
    }
    if (ctx->needs_input_grad(1)) {
      d_input = conv1d_input_backward(
          grad_output, g, input.sym_size(-1), p.stride, p.padding, p.dilation,
          p.groups);
    }
    return {d_grad_output, d_input, at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor conv1d_autograd(
    const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    c10::SymInt groups) {
  return Conv1dFunction::apply(
      input, weight, bias, stride, padding, dilation, groups);
}

at::Tensor conv1d_input_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& weight,
    c10::SymInt input_length, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    c10::SymInt groups) {
  return Conv1dInputBackwardFunction::apply(
      grad_output, weight, input_length, stride, padding, dilation, groups);
}

at::Tensor conv1d_weight_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input,
    c10::SymInt kernel_size, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    c10::SymInt groups) {
  return Conv1dWeightBackwardFunction::apply(
      grad_output, input, kernel_size, stride, padding, dilation, groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, Autograd, m) {
  m.impl("conv1d", &conv1d_autograd);
  m.impl("conv1d_input_backward", &conv1d_input_backward_autograd);
  m.impl("conv1d_weight_backward", &conv1d_weight_backward_autograd);
}

}  // namespace fastconv
