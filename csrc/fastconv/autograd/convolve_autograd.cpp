// Autograd of _convolve_window. It is bilinear and its gradients are windows
// of convolutions with the other operand reversed, so backward calls
// _convolve_window again and derivatives of every order work:
//   out = window(a, v, offset, L)
//   da  = sum_to(window(g, flip(v), m - 1 - offset, n), a.shape)
//   dv  = sum_to(window(g, flip(a), n - 1 - offset, m), v.shape)
// (sum_to undoes the broadcasting of leading dimensions).
#include <ATen/ExpandUtils.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "fastconv/autograd/record.h"
#include "fastconv/ops.h"

namespace fastconv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class ConvolveWindowFunction : public torch::autograd::Function<ConvolveWindowFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& a, const at::Tensor& v,
      const c10::SymInt& offset, const c10::SymInt& length) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({a, v});
    ctx->saved_data["offset"] = offset;
    return compute(a, v, offset, length);
  }

  static at::Tensor compute(const at::Tensor& a, const at::Tensor& v, const c10::SymInt& offset,
                            const c10::SymInt& length) {
    return convolve_window(a, v, offset, length);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& a = saved[0];
    const at::Tensor& v = saved[1];
    const at::Tensor& g = grads[0];
    const c10::SymInt offset = ctx->saved_data["offset"].toSymInt();
    const c10::SymInt n = a.sym_size(-1), m = v.sym_size(-1);
    at::Tensor grad_a, grad_v;
    if (ctx->needs_input_grad(0)) {
      grad_a = at::sum_to(convolve_window(g, v.flip({-1}), m - 1 - offset, n), a.sym_sizes());
    }
    if (ctx->needs_input_grad(1)) {
      grad_v = at::sum_to(convolve_window(g, a.flip({-1}), n - 1 - offset, m), v.sym_sizes());
    }
    return {grad_a, grad_v, at::Tensor(), at::Tensor()};
  }
};

at::Tensor convolve_window_autograd(
    const at::Tensor& a, const at::Tensor& v, c10::SymInt offset, c10::SymInt length) {
  return apply_or_compute<ConvolveWindowFunction>({a, v}, a, v, offset, length);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, Autograd, m) {
  m.impl("_convolve_window", &convolve_window_autograd);
}

}  // namespace fastconv
