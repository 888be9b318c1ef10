// C++ API of the fastconv operators. Each function calls the operator through
// the dispatcher, so it runs the kernel for the tensors' device and records
// autograd exactly like torch.ops.fastconv.* does from Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace fastconv {

// Keeps libfastconv linked into programs that include this header but use the
// operators only through TorchScript or the dispatcher: its registrations are
// static initialisers, and a linker with --as-needed drops a library none of
// whose symbols is referenced.
int64_t link_anchor();
namespace detail {
[[maybe_unused]] inline const int64_t kLinkAnchor = link_anchor();
}  // namespace detail

// Same semantics as torch::nn::functional::conv1d / at::conv1d. algorithm:
// "auto" (path selection, path.h), or a path: "native" (PyTorch's own
// convolution), "direct" or "fft". The gradient operators take the same.
at::Tensor conv1d(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias = std::nullopt,
    c10::SymIntArrayRef stride = c10::SymInt(1),
    c10::SymIntArrayRef padding = c10::SymInt(0),
    c10::SymIntArrayRef dilation = c10::SymInt(1),
    c10::SymInt groups = 1,
    c10::string_view algorithm = "auto");

// Gradient of conv1d with respect to its input (a transposed convolution).
at::Tensor conv1d_input_backward(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::SymInt input_length,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm = "auto");

// Gradient of conv1d with respect to its weight.
at::Tensor conv1d_weight_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymInt kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm = "auto");

// Gradients of conv1d with respect to its weight and its bias, (grad_weight,
// grad_bias): on CPU in one pass over grad_output.
std::tuple<at::Tensor, at::Tensor> conv1d_weight_bias_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymInt kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm = "auto");

// Same semantics as torch::nn::functional::conv2d / at::conv2d. algorithm:
// "auto", or a path: "native", "direct", "im2col" or "shifted".
at::Tensor conv2d(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias = std::nullopt,
    c10::SymIntArrayRef stride = {c10::SymInt(1), c10::SymInt(1)},
    c10::SymIntArrayRef padding = {c10::SymInt(0), c10::SymInt(0)},
    c10::SymIntArrayRef dilation = {c10::SymInt(1), c10::SymInt(1)},
    c10::SymInt groups = 1,
    c10::string_view algorithm = "auto");

// Gradient of conv2d with respect to its input; input_size is (H, W).
at::Tensor conv2d_input_backward(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::SymIntArrayRef input_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm = "auto");

// Gradient of conv2d with respect to its weight; kernel_size is (KH, KW).
at::Tensor conv2d_weight_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymIntArrayRef kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm = "auto");

// True convolution of the rows (last dimension) of a and v, leading
// dimensions broadcast; mode "full", "same" or "valid" as scipy.signal.convolve.
at::Tensor convolve(const at::Tensor& a, const at::Tensor& v, c10::string_view mode = "full");

// out[..., t] = full(a, v)[..., t + offset] for t < length, zero outside.
at::Tensor convolve_window(
    const at::Tensor& a, const at::Tensor& v, c10::SymInt offset, c10::SymInt length);

}  // namespace fastconv
