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

#include <cstdint>
#include <optional>

namespace fastconv {

template <typename Int>
struct Conv1dDims {
  Int batch;         // 1 for unbatched input
  Int in_channels;   // C_in (all groups)
  Int out_channels;  // C_out (all groups)
  Int groups;
  Int in_length;
  Int out_length;
  Int kernel_size;
  Int stride;
  Int padding;
  Int dilation;
  bool batched;  // (N, C, L) rather than (C, L)

  Int in_channels_per_group() const { return in_channels / groups; }
  Int out_channels_per_group() const { return out_channels / groups; }
};

using Conv1dSymDims = Conv1dDims<c10::SymInt>;
using Conv1dIntDims = Conv1dDims<int64_t>;

// Sizes as plain integers, for kernels running on real tensors.
Conv1dIntDims concrete(const Conv1dSymDims& d);

// Output shape, (N, C_out, L_out) or (C_out, L_out).
std::vector<c10::SymInt> conv1d_output_shape(const Conv1dSymDims& d);
// Input shape, (N, C_in, L_in) or (C_in, L_in).
std::vector<c10::SymInt> conv1d_input_shape(const Conv1dSymDims& d);
// Weight shape, (C_out, C_in / groups, K).
std::vector<c10::SymInt> conv1d_weight_shape(const Conv1dSymDims& d);

// fastconv::conv1d(input, weight, bias, ...).
Conv1dSymDims check_conv1d(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups);

// fastconv::conv1d_input_backward(grad_output, weight, input_length, ...):
// the transposed convolution that maps grad_output back to the input.
Conv1dSymDims check_conv1d_input_backward(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    const c10::SymInt& input_length,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups);

// fastconv::conv1d_weight_backward(grad_output, input, kernel_size, ...).
Conv1dSymDims check_conv1d_weight_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const c10::SymInt& kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups);

}  // namespace fastconv
