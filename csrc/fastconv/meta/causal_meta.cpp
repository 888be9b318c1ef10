// Meta kernels of the causal operators: shapes and layouts for torch.compile.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "fastconv/shape.h"

namespace fastconv {
namespace {

// A (B, C, L) tensor laid out as the CPU and CUDA kernels lay out their
// output: channels-last when x is (channel stride 1 where time's is not).
at::Tensor empty_like_layout(const at::Tensor& x) {
  const bool channels_last = x.sym_size(1) > 1 && x.sym_stride(1) == 1 && !(x.sym_size(2) > 1 && x.sym_stride(2) == 1);
  if (channels_last) {
    return x.new_empty_symint({x.sym_size(0), x.sym_size(2), x.sym_size(1)}).transpose(1, 2);
  }
  return x.new_empty_symint(x.sym_sizes());
}

std::tuple<at::Tensor, at::Tensor> causal_conv1d_meta(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& initial_state, const std::optional<at::Tensor>& seq_idx,
    std::optional<c10::string_view> activation, c10::SymInt dilation) {
  const auto d = check_causal_conv1d(x, weight, bias, initial_state, seq_idx, activation, dilation);
  return {empty_like_layout(x), x.new_empty_symint({d.batch, d.channels, d.history})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> causal_conv1d_backward_meta(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_final_state, const at::Tensor& x,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& initial_state,
    const std::optional<at::Tensor>& seq_idx, std::optional<c10::string_view> activation, c10::SymInt dilation) {
  const auto d = check_causal_conv1d_backward(grad_output, grad_final_state, x, weight, bias, initial_state, seq_idx,
                                              activation, dilation);
  return {empty_like_layout(x), weight.new_empty_symint({d.channels, d.kernel_size}),
          weight.new_empty_symint({d.channels}), x.new_empty_symint({d.batch, d.channels, d.history})};
}

at::Tensor causal_conv1d_update_meta(
    const at::Tensor& x, const at::Tensor& conv_state, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    std::optional<c10::string_view> activation, const std::optional<at::Tensor>& cache_seqlens,
    const std::optional<at::Tensor>& conv_state_indices) {
  check_causal_conv1d_update(x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices);
  return x.new_empty_symint(x.sym_sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, Meta, m) {
  m.impl("causal_conv1d", &causal_conv1d_meta);
  m.impl("causal_conv1d_backward", &causal_conv1d_backward_meta);
  m.impl("causal_conv1d_update", &causal_conv1d_update_meta);
}

}  // namespace fastconv
