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
// "auto", or a path: "native", "direct", "im2col", "shifted", "depthwise" or "fft".
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

// Causal depthwise conv1d (shape.h, CausalSymDims): x (B, C, L) contiguous or
// channels-last (x.stride(1) == 1), weight (C, K); returns the output, in x's
// layout, and the final state (B, C, dilation * (K - 1)). activation: none or
// "silu"; seq_idx (B, L) int32: no output mixes two of its sequences.
std::tuple<at::Tensor, at::Tensor> causal_conv1d(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias = std::nullopt,
    const std::optional<at::Tensor>& initial_state = std::nullopt,
    const std::optional<at::Tensor>& seq_idx = std::nullopt,
    std::optional<c10::string_view> activation = std::nullopt, c10::SymInt dilation = 1);

// Its gradients: (grad_x, grad_weight, grad_bias, grad_initial_state), all four
// computed (grad_bias and grad_initial_state whether or not they were given).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> causal_conv1d_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_final_state, const at::Tensor& x,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& initial_state, const std::optional<at::Tensor>& seq_idx,
    std::optional<c10::string_view> activation, c10::SymInt dilation);

// Decodes the steps of x ((B, C) or (B, C, T)) after those in conv_state
// (B_state, C, S), which it updates in place; see fastconv_ext.causal_conv1d_update.
at::Tensor causal_conv1d_update(
    const at::Tensor& x, const at::Tensor& conv_state, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias = std::nullopt,
    std::optional<c10::string_view> activation = std::nullopt,
    const std::optional<at::Tensor>& cache_seqlens = std::nullopt,
    const std::optional<at::Tensor>& conv_state_indices = std::nullopt);

// A stride-1 conv1d of one chunk of a signal after the chunks before it:
// returns (y, state), state being the last dilation * (K - 1) inputs.
std::tuple<at::Tensor, at::Tensor> conv1d_stream(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias = std::nullopt,
    const std::optional<at::Tensor>& state = std::nullopt, c10::SymInt dilation = 1, c10::SymInt groups = 1);

}  // namespace fastconv
