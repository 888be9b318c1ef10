// conv1d's operators on one backend: the argument checks, the path
// selection (path.h) and the paths every backend shares (FFT, native), with
// the backend's own direct kernels as Direct:
//   static at::Tensor forward(input, weight, bias, const Conv1dIntDims&, const Conv1dSymDims&);
//   static at::Tensor input_backward(grad_output, weight, const Conv1dIntDims&, const Conv1dSymDims&);
//   static std::tuple<at::Tensor, at::Tensor> weight_backward(grad_output, input, const Conv1dIntDims&,
//                                                             const Conv1dSymDims&, bool with_bias);
// The members have the operators' schema signatures, for m.impl.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "fastconv/bias_grad.h"
#include "fastconv/fft/fft_conv1d.h"
#include "fastconv/native.h"
#include "fastconv/path.h"
#include "fastconv/shape.h"

namespace fastconv {

template <class Direct>
struct Conv1dPaths {
  static at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
                            c10::SymInt groups, c10::string_view algorithm) {
    const auto sym = check_conv1d(input, weight, bias, stride, padding, dilation, groups, algorithm);
    const auto d = concrete(sym);
    const ConvCall call = make_call(ConvOp::kForward, d, input);
    return run_selected(call, algorithm, [&](Path path) {
      if (path == Path::kFft) return fft::conv1d_forward(input, weight, bias, d);
      if (path == Path::kNative) return native::forward(input, weight, bias, call.d, 1);
      return Direct::forward(input, weight, bias, d, sym);
    });
  }

  static at::Tensor input_backward(const at::Tensor& grad_output, const at::Tensor& weight, c10::SymInt input_length,
                                   c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
                                   c10::SymIntArrayRef dilation, c10::SymInt groups, c10::string_view algorithm) {
    const auto sym = check_conv1d_input_backward(grad_output, weight, input_length, stride, padding, dilation, groups,
                                                 algorithm);
    const auto d = concrete(sym);
    const ConvCall call = make_call(ConvOp::kInput, d, grad_output);
    return run_selected(call, algorithm, [&](Path path) {
      if (path == Path::kFft) return fft::conv1d_input_backward(grad_output, weight, d);
      if (path == Path::kNative) return native::input_backward(grad_output, weight, call.d, 1);
      return Direct::input_backward(grad_output, weight, d, sym);
    });
  }

  static at::Tensor weight_backward(const at::Tensor& grad_output, const at::Tensor& input, c10::SymInt kernel_size,
                                    c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
                                    c10::SymIntArrayRef dilation, c10::SymInt groups, c10::string_view algorithm) {
    return std::get<0>(weight_grads(grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm,
                                    /*with_bias=*/false));
  }

  static std::tuple<at::Tensor, at::Tensor> weight_bias_backward(
      const at::Tensor& grad_output, const at::Tensor& input, c10::SymInt kernel_size, c10::SymIntArrayRef stride,
      c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, c10::SymInt groups, c10::string_view algorithm) {
    return weight_grads(grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm,
                        /*with_bias=*/true);
  }

 private:
  // grad_weight, and grad_bias when with_bias (else undefined).
  static std::tuple<at::Tensor, at::Tensor> weight_grads(
      const at::Tensor& grad_output, const at::Tensor& input, const c10::SymInt& kernel_size,
      c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
      const c10::SymInt& groups, c10::string_view algorithm, bool with_bias) {
    const auto sym = check_conv1d_weight_backward(
        grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm,
        with_bias ? "fastconv.conv1d_weight_bias_backward" : "fastconv.conv1d_weight_backward");
    const auto d = concrete(sym);
    const ConvCall call = make_call(ConvOp::kWeight, d, input);
    return run_selected(call, algorithm, [&](Path path) -> std::tuple<at::Tensor, at::Tensor> {
      if (path == Path::kFft) {
        return {fft::conv1d_weight_backward(grad_output, input, d),
                with_bias ? conv_bias_grad(grad_output, 1) : at::Tensor()};
      }
      if (path == Path::kNative) return native::weight_backward(grad_output, input, call.d, 1, with_bias);
      return Direct::weight_backward(grad_output, input, d, sym, with_bias);
    });
  }
};

}  // namespace fastconv
