// conv1d_stream(x, weight, bias, state, dilation, groups) for every backend:
// the convolution of one chunk after the chunks before it, whose last
// dilation * (K - 1) inputs are `state` (zeros when None). A depthwise weight
// runs causal_conv1d with the state as its initial state (no copy); any other
// runs conv1d over [state, x] without padding. Both have their own autograd
// and Meta kernels, so this needs nothing else.
#include <ATen/ops/cat.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "fastconv/ops.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

std::tuple<at::Tensor, at::Tensor> conv1d_stream_composite(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& state, c10::SymInt dilation, c10::SymInt groups) {
  const c10::SymInt history = check_conv1d_stream(x, weight, state, dilation, groups);
  const c10::SymInt C = x.sym_size(1);
  if (weight.sym_size(1) == 1 && groups == C && weight.sym_size(0) == C) {
    return causal_conv1d(x, weight.squeeze(1), bias, state, std::nullopt, std::nullopt, dilation);
  }
  const at::Tensor prior = state && state->defined()
      ? *state : at::zeros_symint({x.sym_size(0), C, history}, x.options());
  const at::Tensor xs = at::cat({prior, x}, 2);
  // The next state is a view of xs's last columns, not a copy: xs is this
  // call's own buffer, so the view aliases no input (a caller may refill x's
  // buffer with the next chunk, or the state's) and the next call's cat reads
  // it as it lies. An empty chunk's is xs whole, the given state's copy.
  const at::Tensor next = xs.narrow_symint(2, xs.sym_size(2) - history, history);
  if (x.sym_size(2) == 0) {  // no output; conv1d takes no input shorter than its kernel
    return {x.new_empty_symint({x.sym_size(0), weight.sym_size(0), 0}), next};
  }
  return {conv1d(xs, weight, bias, {1}, {0}, {dilation}, groups, "auto"), next};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CompositeImplicitAutograd, m) {
  m.impl("conv1d_stream", &conv1d_stream_composite);
}

}  // namespace fastconv
