// Argument checks and output sizes for every fastconv operator.
//
// One implementation serves the CPU and CUDA kernels and the Meta (fake)
// kernels used by torch.compile, so all of them accept and reject exactly
// the same calls with the same messages. Sizes are c10::SymInt so the Meta
// kernels work under dynamic shapes; backends convert with concrete().
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/ArrayRef.h>

#include <c10/util/string_view.h>

#include <array>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace fastconv {

// Sizes of an N-d convolution (N = 1 or 2): the form every check produces.
template <typename Int, int N>
struct ConvDims {
  Int batch;         // 1 for unbatched input
  Int in_channels;   // C_in (all groups)
  Int out_channels;  // C_out (all groups)
  Int groups;
  std::array<Int, N> in_size;
  std::array<Int, N> out_size;
  std::array<Int, N> kernel_size;
  std::array<Int, N> stride;
  std::array<Int, N> padding;
  std::array<Int, N> dilation;
  bool batched;  // (N, C, *spatial) rather than (C, *spatial)

  Int in_channels_per_group() const { return in_channels / groups; }
  Int out_channels_per_group() const { return out_channels / groups; }
};

using Conv2dSymDims = ConvDims<c10::SymInt, 2>;
using Conv2dIntDims = ConvDims<int64_t, 2>;

// conv1d: the 1-D case (in_size[0] is the input length, and so on).
template <typename Int>
using Conv1dDims = ConvDims<Int, 1>;

using Conv1dSymDims = Conv1dDims<c10::SymInt>;
using Conv1dIntDims = Conv1dDims<int64_t>;

// A conv1d as the conv2d of height 1 (what path selection and PyTorch's
// native path see), and back.
template <typename Int>
ConvDims<Int, 2> as_conv2d(const ConvDims<Int, 1>& d) {
  return {d.batch, d.in_channels, d.out_channels, d.groups, {1, d.in_size[0]}, {1, d.out_size[0]},
          {1, d.kernel_size[0]}, {1, d.stride[0]}, {0, d.padding[0]}, {1, d.dilation[0]}, d.batched};
}
template <typename Int>
ConvDims<Int, 1> as_conv1d(const ConvDims<Int, 2>& d) {
  return {d.batch, d.in_channels, d.out_channels, d.groups, {d.in_size[1]}, {d.out_size[1]},
          {d.kernel_size[1]}, {d.stride[1]}, {d.padding[1]}, {d.dilation[1]}, d.batched};
}

// Sizes as plain integers, for kernels running on real tensors.
template <int N>
ConvDims<int64_t, N> concrete(const ConvDims<c10::SymInt, N>& d);
// The same where every size is known (not symbolic), else nullopt.
std::optional<Conv2dIntDims> maybe_concrete(const Conv2dSymDims& d);
std::vector<int64_t> concrete_shape(const std::vector<c10::SymInt>& shape);

// Output shape, (N, C_out, L_out) or (C_out, L_out).
std::vector<c10::SymInt> conv1d_output_shape(const Conv1dSymDims& d);
// Input shape, (N, C_in, L_in) or (C_in, L_in).
std::vector<c10::SymInt> conv1d_input_shape(const Conv1dSymDims& d);
// Weight shape, (C_out, C_in / groups, K).
std::vector<c10::SymInt> conv1d_weight_shape(const Conv1dSymDims& d);

// algorithm: "auto" or a path name of an N-d operator (path.h); anything
// else raises, naming the op and the allowed values. Defined in path.cpp.
void check_algorithm(const char* op, c10::string_view algorithm, int dims);

// fastconv::conv1d(input, weight, bias, ...).
Conv1dSymDims check_conv1d(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups,
    c10::string_view algorithm);

// fastconv::conv1d_input_backward(grad_output, weight, input_length, ...):
// the transposed convolution that maps grad_output back to the input.
Conv1dSymDims check_conv1d_input_backward(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    const c10::SymInt& input_length,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups,
    c10::string_view algorithm);

// fastconv::conv1d_weight_backward(grad_output, input, kernel_size, ...), and
// conv1d_weight_bias_backward (same arguments) under the name `op`.
Conv1dSymDims check_conv1d_weight_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const c10::SymInt& kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups,
    c10::string_view algorithm,
    const char* op = "fastconv.conv1d_weight_backward");

// ---- conv2d: the same three operators in two spatial dimensions.

// (N, C_out, H_out, W_out) or (C_out, H_out, W_out).
std::vector<c10::SymInt> conv2d_output_shape(const Conv2dSymDims& d);
// The memory format of conv2d's output (from its input) and of grad_input
// (from grad_output), on every backend: channels-last when that tensor is,
// as a channels-last activation stays channels-last through F.conv2d.
at::MemoryFormat conv2d_memory_format(const at::Tensor& activation);
// (N, C_in, H, W) or (C_in, H, W).
std::vector<c10::SymInt> conv2d_input_shape(const Conv2dSymDims& d);
// (C_out, C_in / groups, KH, KW).
std::vector<c10::SymInt> conv2d_weight_shape(const Conv2dSymDims& d);

Conv2dSymDims check_conv2d(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups,
    c10::string_view algorithm);

Conv2dSymDims check_conv2d_input_backward(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::SymIntArrayRef input_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups,
    c10::string_view algorithm);

Conv2dSymDims check_conv2d_weight_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymIntArrayRef kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups,
    c10::string_view algorithm);

// ---- convolve: true convolution of the rows (last dimension) of a and v,
// leading dimensions broadcast; a window of the full result.

struct ConvolveSymDims {
  std::vector<c10::SymInt> batch_shape;  // broadcast leading dimensions
  c10::SymInt n;                         // row length of a
  c10::SymInt m;                         // row length of v
  c10::SymInt offset;                    // out[t] = full[t + offset], zero outside full
  c10::SymInt length;                    // out row length
};

// fastconv::convolve(a, v, mode): checks a, v and mode and returns the window
// (offset, length) of the full convolution that mode selects, as
// scipy.signal.convolve: full (0, n + m - 1), same (centred, length n),
// valid (min(n, m) - 1, max(n, m) - min(n, m) + 1).
std::pair<c10::SymInt, c10::SymInt> check_convolve(
    const at::Tensor& a, const at::Tensor& v, c10::string_view mode);

// fastconv::_convolve_window(a, v, offset, length).
ConvolveSymDims check_convolve_window(
    const at::Tensor& a, const at::Tensor& v, const c10::SymInt& offset,
    const c10::SymInt& length);

std::vector<c10::SymInt> convolve_output_shape(const ConvolveSymDims& d);

// ---- causal depthwise conv1d: x (B, C, L), weight (C, K),
//   y[b][c][t] = act(bias[c] + sum_k weight[c][k] * xs[b][c][t + k * dilation]),
// xs = [initial_state (B, C, history) or zeros, x] along time,
// history = dilation * (K - 1); the final state is the last `history` of xs.

struct CausalSymDims {
  c10::SymInt batch, channels, length, kernel_size, dilation, history;
  bool silu;  // activation "silu" (or its other name, "swish"); else none
};

// fastconv::causal_conv1d(x, weight, bias, initial_state, seq_idx, activation, dilation).
CausalSymDims check_causal_conv1d(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& initial_state, const std::optional<at::Tensor>& seq_idx,
    std::optional<c10::string_view> activation, const c10::SymInt& dilation,
    const char* op = "fastconv.causal_conv1d");

// fastconv::causal_conv1d_backward: the forward's arguments, with grad_output
// shaped like x and grad_final_state (if given) like the final state.
CausalSymDims check_causal_conv1d_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_final_state, const at::Tensor& x,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& initial_state, const std::optional<at::Tensor>& seq_idx,
    std::optional<c10::string_view> activation, const c10::SymInt& dilation);

// fastconv::causal_conv1d_update: x (B, C) or (B, C, T) new steps, conv_state
// (B_state, C, S) with S >= K - 1, weight (C, K).
// fastconv::conv1d_stream(x, weight, bias, state, dilation, groups): x
// (B, C_in, L), weight (C_out, C_in / groups, K), state (B, C_in, history) or
// None; returns history = dilation * (K - 1).
c10::SymInt check_conv1d_stream(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& state,
                                const c10::SymInt& dilation, const c10::SymInt& groups);

struct CausalUpdateSymDims {
  c10::SymInt batch, channels, steps, state_batch, state_length, kernel_size;
  bool silu;
};

CausalUpdateSymDims check_causal_conv1d_update(
    const at::Tensor& x, const at::Tensor& conv_state, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, std::optional<c10::string_view> activation,
    const std::optional<at::Tensor>& cache_seqlens, const std::optional<at::Tensor>& conv_state_indices);

}  // namespace fastconv
