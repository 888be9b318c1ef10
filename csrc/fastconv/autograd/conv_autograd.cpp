// Autograd for the conv1d and conv2d families, registered at the Autograd key
// so that Python, TorchScript and C++ callers all get gradients.
//
// The three operators of each family are bilinear and each one's gradients
// are the other two (or itself), so backward calls fastconv operators and
// every order of derivative works:
//   y  = conv(x, w)                 dx = input_backward(gy, w)
//                                   dw = weight_backward(gy, x)
//   gx = input_backward(gy, w)      d(gy) = conv(g, w),  dw = weight_backward(gy, g)
//   gw = weight_backward(gy, x)     d(gy) = conv(x, g),  dx = input_backward(gy, g)
//   (gw, gb) = weight_bias_backward(gy, x)
//                                   d(gy) = conv(x, g_w) + g_b,  dx = input_backward(gy, g_w)
// One template serves both families; Ops names the family's operators. A
// path forced by the caller (algorithm="native", "direct", ...) applies to
// every derivative too; with "auto" each operator chooses its own.
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "fastconv/autograd/record.h"
#include "fastconv/bias_grad.h"
#include "fastconv/ops.h"
#include "fastconv/path.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct HyperParams {
  std::vector<c10::SymInt> stride;
  std::vector<c10::SymInt> padding;
  std::vector<c10::SymInt> dilation;
  c10::SymInt groups;
  std::string algorithm;
};

HyperParams make_hyper_params(
    c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation, const c10::SymInt& groups,
    c10::string_view algorithm = "auto") {
  return HyperParams{stride.vec(), padding.vec(), dilation.vec(), groups, std::string(algorithm)};
}

void save_hyper_params(AutogradContext* ctx, const HyperParams& p) {
  ctx->saved_data["stride"] = p.stride;
  ctx->saved_data["padding"] = p.padding;
  ctx->saved_data["dilation"] = p.dilation;
  ctx->saved_data["groups"] = p.groups;
  ctx->saved_data["algorithm"] = p.algorithm;
}

HyperParams load_hyper_params(AutogradContext* ctx) {
  return HyperParams{
      ctx->saved_data["stride"].toSymIntVector(),
      ctx->saved_data["padding"].toSymIntVector(),
      ctx->saved_data["dilation"].toSymIntVector(),
      ctx->saved_data["groups"].toSymInt(),
      ctx->saved_data["algorithm"].toStringRef()};
}

struct Conv1dOps {
  using Size = c10::SymInt;  // how the backward operators take a size
  static constexpr int64_t kDims = 1;
  static at::Tensor forward(const at::Tensor& x, const at::Tensor& w,
                            const std::optional<at::Tensor>& b, const HyperParams& p) {
    return conv1d(x, w, b, p.stride, p.padding, p.dilation, p.groups, p.algorithm);
  }
  static at::Tensor input_backward(const at::Tensor& gy, const at::Tensor& w, const Size& size,
                                   const HyperParams& p) {
    return conv1d_input_backward(gy, w, size, p.stride, p.padding, p.dilation, p.groups, p.algorithm);
  }
  static at::Tensor weight_backward(const at::Tensor& gy, const at::Tensor& x, const Size& size,
                                    const HyperParams& p) {
    return conv1d_weight_backward(gy, x, size, p.stride, p.padding, p.dilation, p.groups, p.algorithm);
  }
  // Both gradients; on CPU one pass over gy computes them.
  static std::tuple<at::Tensor, at::Tensor> weight_bias_backward(
      const at::Tensor& gy, const at::Tensor& x, const Size& size, const HyperParams& p) {
    return conv1d_weight_bias_backward(gy, x, size, p.stride, p.padding, p.dilation, p.groups, p.algorithm);
  }
  static Size size_of(const at::Tensor& t) { return t.sym_size(-1); }
  // Every conv1d path runs every gradient.
  static const HyperParams& for_input(const HyperParams& p, const at::Tensor&, const at::Tensor&, const Size&) {
    return p;
  }
  static const HyperParams& for_weight(const HyperParams& p, const at::Tensor&, const at::Tensor&, const Size&) {
    return p;
  }
};

struct Conv2dOps {
  using Size = std::vector<c10::SymInt>;
  static constexpr int64_t kDims = 2;
  static at::Tensor forward(const at::Tensor& x, const at::Tensor& w,
                            const std::optional<at::Tensor>& b, const HyperParams& p) {
    return conv2d(x, w, b, p.stride, p.padding, p.dilation, p.groups, p.algorithm);
  }
  static at::Tensor input_backward(const at::Tensor& gy, const at::Tensor& w, const Size& size,
                                   const HyperParams& p) {
    return conv2d_input_backward(gy, w, size, p.stride, p.padding, p.dilation, p.groups, p.algorithm);
  }
  static at::Tensor weight_backward(const at::Tensor& gy, const at::Tensor& x, const Size& size,
                                    const HyperParams& p) {
    return conv2d_weight_backward(gy, x, size, p.stride, p.padding, p.dilation, p.groups, p.algorithm);
  }
  // A forced path runs each gradient it can run (path.h).
  static HyperParams for_input(const HyperParams& p, const at::Tensor& gy, const at::Tensor& w, const Size& size) {
    HyperParams out = p;
    out.algorithm = conv2d_derivative_algorithm(
        ConvOp::kInput,
        check_conv2d_input_backward(gy, w, size, p.stride, p.padding, p.dilation, p.groups, p.algorithm), gy,
        p.algorithm);
    return out;
  }
  static HyperParams for_weight(const HyperParams& p, const at::Tensor& gy, const at::Tensor& x, const Size& size) {
    HyperParams out = p;
    out.algorithm = conv2d_derivative_algorithm(
        ConvOp::kWeight,
        check_conv2d_weight_backward(gy, x, size, p.stride, p.padding, p.dilation, p.groups, p.algorithm), x,
        p.algorithm);
    return out;
  }
  static std::tuple<at::Tensor, at::Tensor> weight_bias_backward(
      const at::Tensor& gy, const at::Tensor& x, const Size& size, const HyperParams& p) {
    return {weight_backward(gy, x, size, p), conv_bias_grad(gy, kDims)};
  }
  static Size size_of(const at::Tensor& t) {
    const auto sizes = t.sym_sizes();
    return Size(sizes.end() - kDims, sizes.end());
  }
};

template <class Ops>
class ConvFunction : public torch::autograd::Function<ConvFunction<Ops>> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
      const std::optional<at::Tensor>& bias, const HyperParams& p) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, weight});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    save_hyper_params(ctx, p);
    return compute(input, weight, bias, p);
  }

  static at::Tensor compute(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const HyperParams& p) {
    return Ops::forward(input, weight, bias, p);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& grad = grads[0];
    const HyperParams p = load_hyper_params(ctx);
    at::Tensor grad_input, grad_weight, grad_bias;
    const bool bias_wanted = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    if (ctx->needs_input_grad(0) && ctx->needs_input_grad(1)) {
      if (auto all = native_backward_if_chosen(grad, input, weight, p.stride, p.padding, p.dilation, p.groups,
                                               p.algorithm, bias_wanted)) {
        return {std::get<0>(*all), std::get<1>(*all), std::get<2>(*all), at::Tensor()};
      }
    }
    if (ctx->needs_input_grad(0)) {
      grad_input = Ops::input_backward(grad, weight, Ops::size_of(input),
                                       Ops::for_input(p, grad, weight, Ops::size_of(input)));
    }
    const auto& p_weight = Ops::for_weight(p, grad, input, Ops::size_of(weight));
    if (ctx->needs_input_grad(1) && bias_wanted) {
      std::tie(grad_weight, grad_bias) = Ops::weight_bias_backward(grad, input, Ops::size_of(weight), p_weight);
    } else if (ctx->needs_input_grad(1)) {
      grad_weight = Ops::weight_backward(grad, input, Ops::size_of(weight), p_weight);
    } else if (bias_wanted) {
      grad_bias = conv_bias_grad(grad, Ops::kDims);
    }
    return {grad_input, grad_weight, grad_bias, at::Tensor()};
  }
};

template <class Ops>
class InputBackwardFunction
    : public torch::autograd::Function<InputBackwardFunction<Ops>> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& grad_output,
      const at::Tensor& weight, const typename Ops::Size& input_size, const HyperParams& p) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({grad_output, weight});
    save_hyper_params(ctx, p);
    return compute(grad_output, weight, input_size, p);
  }

  static at::Tensor compute(const at::Tensor& grad_output, const at::Tensor& weight,
                            const typename Ops::Size& input_size, const HyperParams& p) {
    return Ops::input_backward(grad_output, weight, input_size, p);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& g = grads[0];
    const HyperParams p = load_hyper_params(ctx);
    at::Tensor d_grad_output, d_weight;
    if (ctx->needs_input_grad(0)) {
      d_grad_output = Ops::forward(g, weight, std::nullopt, p);
    }
    if (ctx->needs_input_grad(1)) {
      d_weight = Ops::weight_backward(grad_output, g, Ops::size_of(weight),
                                      Ops::for_weight(p, grad_output, g, Ops::size_of(weight)));
    }
    return {d_grad_output, d_weight, at::Tensor(), at::Tensor()};
  }
};

template <class Ops>
class WeightBackwardFunction
    : public torch::autograd::Function<WeightBackwardFunction<Ops>> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& grad_output,
      const at::Tensor& input, const typename Ops::Size& kernel_size, const HyperParams& p) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({grad_output, input});
    save_hyper_params(ctx, p);
    return compute(grad_output, input, kernel_size, p);
  }

  static at::Tensor compute(const at::Tensor& grad_output, const at::Tensor& input,
                            const typename Ops::Size& kernel_size, const HyperParams& p) {
    return Ops::weight_backward(grad_output, input, kernel_size, p);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = saved[0];
    const at::Tensor& input = saved[1];
    const at::Tensor& g = grads[0];
    const HyperParams p = load_hyper_params(ctx);
    at::Tensor d_grad_output, d_input;
    if (ctx->needs_input_grad(0)) {
      d_grad_output = Ops::forward(input, g, std::nullopt, p);
    }
    if (ctx->needs_input_grad(1)) {
      d_input = Ops::input_backward(grad_output, g, Ops::size_of(input),
                                    Ops::for_input(p, grad_output, g, Ops::size_of(input)));
    }
    return {d_grad_output, d_input, at::Tensor(), at::Tensor()};
  }
};

// conv1d only: conv2d has no fused operator.
class WeightBiasBackwardFunction : public torch::autograd::Function<WeightBiasBackwardFunction> {
 public:
  static variable_list forward(
      AutogradContext* ctx, const at::Tensor& grad_output,
      const at::Tensor& input, const c10::SymInt& kernel_size, const HyperParams& p) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({grad_output, input});
    save_hyper_params(ctx, p);
    return compute(grad_output, input, kernel_size, p);
  }

  static variable_list compute(const at::Tensor& grad_output, const at::Tensor& input,
                               const c10::SymInt& kernel_size, const HyperParams& p) {
    auto [grad_weight, grad_bias] = Conv1dOps::weight_bias_backward(grad_output, input, kernel_size, p);
    return {grad_weight, grad_bias};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = saved[0];
    const at::Tensor& input = saved[1];
    const at::Tensor& g_weight = grads[0];
    const at::Tensor& g_bias = grads[1];
    const HyperParams p = load_hyper_params(ctx);
    at::Tensor d_grad_output, d_input;
    if (ctx->needs_input_grad(0)) {
      if (g_weight.defined()) {
        d_grad_output = Conv1dOps::forward(input, g_weight, g_bias.defined() ? std::optional(g_bias) : std::nullopt, p);
      } else if (g_bias.defined()) {
        d_grad_output = g_bias.unsqueeze(-1).expand_symint(grad_output.sym_sizes());
      }
    }
    if (ctx->needs_input_grad(1) && g_weight.defined()) {
      d_input = Conv1dOps::input_backward(grad_output, g_weight, Conv1dOps::size_of(input), p);
    }
    return {d_grad_output, d_input, at::Tensor(), at::Tensor()};
  }
};

// Autograd-key kernels with the operators' own signatures.

at::Tensor conv1d_autograd(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    c10::SymInt groups, c10::string_view algorithm) {
  return apply_or_compute<ConvFunction<Conv1dOps>>(
      {input, weight, bias.value_or(at::Tensor())}, input, weight, bias,
      make_hyper_params(stride, padding, dilation, groups, algorithm));
}

at::Tensor conv1d_input_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& weight, c10::SymInt input_length,
    c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    c10::SymInt groups, c10::string_view algorithm) {
  return apply_or_compute<InputBackwardFunction<Conv1dOps>>(
      {grad_output, weight}, grad_output, weight, input_length,
      make_hyper_params(stride, padding, dilation, groups, algorithm));
}

at::Tensor conv1d_weight_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, c10::SymInt kernel_size,
    c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    c10::SymInt groups, c10::string_view algorithm) {
  return apply_or_compute<WeightBackwardFunction<Conv1dOps>>(
      {grad_output, input}, grad_output, input, kernel_size,
      make_hyper_params(stride, padding, dilation, groups, algorithm));
}

std::tuple<at::Tensor, at::Tensor> conv1d_weight_bias_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, c10::SymInt kernel_size,
    c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    c10::SymInt groups, c10::string_view algorithm) {
  const variable_list grads = apply_or_compute<WeightBiasBackwardFunction>(
      {grad_output, input}, grad_output, input, kernel_size,
      make_hyper_params(stride, padding, dilation, groups, algorithm));
  return {grads[0], grads[1]};
}

at::Tensor conv2d_autograd(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    c10::SymInt groups, c10::string_view algorithm) {
  return apply_or_compute<ConvFunction<Conv2dOps>>(
      {input, weight, bias.value_or(at::Tensor())}, input, weight, bias,
      make_hyper_params(stride, padding, dilation, groups, algorithm));
}

at::Tensor conv2d_input_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& weight, c10::SymIntArrayRef input_size,
    c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    c10::SymInt groups, c10::string_view algorithm) {
  return apply_or_compute<InputBackwardFunction<Conv2dOps>>(
      {grad_output, weight}, grad_output, weight, input_size.vec(),
      make_hyper_params(stride, padding, dilation, groups, algorithm));
}

at::Tensor conv2d_weight_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, c10::SymIntArrayRef kernel_size,
    c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    c10::SymInt groups, c10::string_view algorithm) {
  return apply_or_compute<WeightBackwardFunction<Conv2dOps>>(
      {grad_output, input}, grad_output, input, kernel_size.vec(),
      make_hyper_params(stride, padding, dilation, groups, algorithm));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, Autograd, m) {
  m.impl("conv1d", &conv1d_autograd);
  m.impl("conv1d_input_backward", &conv1d_input_backward_autograd);
  m.impl("conv1d_weight_backward", &conv1d_weight_backward_autograd);
  m.impl("conv1d_weight_bias_backward", &conv1d_weight_bias_backward_autograd);
  m.impl("conv2d", &conv2d_autograd);
  m.impl("conv2d_input_backward", &conv2d_input_backward_autograd);
  m.impl("conv2d_weight_backward", &conv2d_weight_backward_autograd);
}

}  // namespace fastconv
