// Autograd of causal_conv1d, registered at the Autograd key.
//
// First derivatives run fastconv.causal_conv1d_backward, one fused pass. When
// the backward itself is recorded (create_graph: double backward), the
// gradients come instead from the forward re-expressed in differentiable ATen
// ops (a grouped convolution of the state-prefixed input, or a masked sum of
// shifted copies with seq_idx), differentiated by autograd: every order works,
// at ATen's speed.
#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/conv1d.h>
#include <ATen/ops/eq.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/zeros_like.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>

#include <string>
#include <tuple>

#include "fastconv/autograd/record.h"
#include "fastconv/ops.h"

namespace fastconv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::optional<at::Tensor> given(const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; }

std::optional<c10::string_view> activation_of(const std::string& a) {
  return a.empty() ? std::nullopt : std::optional<c10::string_view>(a);
}

// causal_conv1d in differentiable ATen ops: (y, final_state).
std::tuple<at::Tensor, at::Tensor> causal_reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                                    const at::Tensor& state, const at::Tensor& seq_idx,
                                                    bool silu, const c10::SymInt& dilation) {
  const c10::SymInt C = x.sym_size(1), L = x.sym_size(2), K = w.sym_size(1), H = dilation * (K - 1);
  const at::Tensor xs = state.defined() ? at::cat({state, x}, 2) : at::constant_pad_nd_symint(x, {H, 0}, 0);
  at::Tensor pre;
  if (!seq_idx.defined()) {
    pre = at::conv1d_symint(xs, w.unsqueeze(1), given(b), c10::SymIntArrayRef({1}), c10::SymIntArrayRef({0}),
                            c10::SymIntArrayRef({dilation}), C);
  } else {
    // Tap k of output t reads position p = t - (K-1-k) d, kept when seq_idx[p] == seq_idx[t]
    // (the initial state counts as the first position's sequence).
    const at::Tensor seq_full = at::cat({seq_idx.narrow(1, 0, 1).expand_symint({x.sym_size(0), H}), seq_idx}, 1);
    pre = b.defined() ? b.view({1, -1, 1}).expand_symint(x.sym_sizes()) : at::zeros_like(x);
    for (int64_t k = 0; k < K.expect_int(); ++k) {
      const auto shift = dilation * k;
      const at::Tensor keep = at::eq(seq_full.narrow_symint(1, shift, L), seq_idx).unsqueeze(1).to(x.scalar_type());
      pre = pre + w.select(1, k).view({1, -1, 1}) * xs.narrow_symint(2, shift, L) * keep;
    }
  }
  return {silu ? at::silu(pre) : pre, xs.narrow_symint(2, L, H)};
}

class CausalConv1dFunction : public torch::autograd::Function<CausalConv1dFunction> {
 public:
  // Optional tensors as std::optional: Function::apply takes no undefined tensor.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& state,
                               const std::optional<at::Tensor>& seq_idx, const std::string& activation,
                               const c10::SymInt& dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, weight, bias.value_or(at::Tensor()), state.value_or(at::Tensor()),
                            seq_idx.value_or(at::Tensor())});
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["dilation"] = dilation;
    auto [y, fs] = compute(x, weight, bias, state, seq_idx, activation, dilation);
    return {y, fs};
  }

  static std::tuple<at::Tensor, at::Tensor> compute(const at::Tensor& x, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias,
                                                    const std::optional<at::Tensor>& state,
                                                    const std::optional<at::Tensor>& seq_idx,
                                                    const std::string& activation, const c10::SymInt& dilation) {
    return causal_conv1d(x, weight, bias, state, seq_idx, activation_of(activation), dilation);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &b = saved[2], &state = saved[3], &seq_idx = saved[4];
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const c10::SymInt dilation = ctx->saved_data["dilation"].toSymInt();
    const at::Tensor gy = grads[0].defined() ? grads[0] : at::zeros_like(x);
    const at::Tensor& gfs = grads[1];
    // needs_input_grad counts the tensors given (the edges), not the arguments.
    const std::array<at::Tensor, 4> inputs{x, w, b, state};
    std::array<bool, 4> needed{};
    for (size_t i = 0, edge = 0; i < inputs.size(); ++i) {
      if (inputs[i].defined()) needed[i] = ctx->needs_input_grad(edge++);
    }
    if (c10::GradMode::is_enabled()) {
      // Recorded backward: differentiate the ATen form (see the file's comment).
      std::vector<at::Tensor> wanted;
      for (size_t i = 0; i < inputs.size(); ++i) {
        if (needed[i]) wanted.push_back(inputs[i]);
      }
      auto [y, fs] = causal_reference(x, w, b, state, seq_idx, !activation.empty(), dilation);
      std::vector<at::Tensor> outputs{y}, grad_outputs{gy};
      if (gfs.defined()) outputs.push_back(fs), grad_outputs.push_back(gfs);
      const auto got = torch::autograd::grad(outputs, wanted, grad_outputs, /*retain_graph=*/true,
                                             /*create_graph=*/true, /*allow_unused=*/true);
      variable_list out(7);
      for (size_t i = 0, j = 0; i < inputs.size(); ++i) {
        if (needed[i]) out[i] = got[j++];
      }
      return out;
    }
    auto [gx, gw, gb, gs] = causal_conv1d_backward(gy, given(gfs), x, w, given(b), given(state), given(seq_idx),
                                                   activation_of(activation), dilation);
    return {needed[0] ? gx : at::Tensor(), needed[1] ? gw : at::Tensor(), needed[2] ? gb : at::Tensor(),
            needed[3] ? gs : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> causal_conv1d_autograd(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& initial_state, const std::optional<at::Tensor>& seq_idx,
    std::optional<c10::string_view> activation, c10::SymInt dilation) {
  const auto defined = [](const std::optional<at::Tensor>& t) {
    return t && t->defined() ? t : std::nullopt;
  };
  const auto b = defined(bias), s = defined(initial_state), q = defined(seq_idx);
  const std::string act = activation ? std::string(*activation) : std::string();
  if (nothing_to_record({x, weight, b.value_or(at::Tensor()), s.value_or(at::Tensor())})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return CausalConv1dFunction::compute(x, weight, b, s, q, act, dilation);
  }
  const auto out = CausalConv1dFunction::apply(x, weight, b, s, q, act, dilation);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, Autograd, m) {
  m.impl("causal_conv1d", &causal_conv1d_autograd);
  // Decoding is inference: a call that needs gradients raises.
  m.impl("causal_conv1d_update", torch::autograd::autogradNotImplementedFallback());
}

TORCH_LIBRARY_IMPL(fastconv, ADInplaceOrView, m) {
  m.impl("causal_conv1d_update", torch::autograd::autogradNotImplementedInplaceOrViewFallback());
}

}  // namespace fastconv
