#include "fastconv/causal_layout.h"

#include <ATen/ops/empty.h>

#include <algorithm>

namespace fastconv {

bool causal_channels_last(const at::Tensor& x) {
  return x.size(1) > 1 && x.stride(1) == 1 && !(x.size(2) > 1 && x.stride(2) == 1);
}

at::Tensor causal_readable(const at::Tensor& x) {
  if (causal_channels_last(x) || x.size(2) <= 1 || x.stride(2) == 1) return x;
  return x.contiguous();
}

at::Tensor causal_empty_like(const at::Tensor& like, at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (causal_channels_last(like)) return at::empty({sizes[0], sizes[2], sizes[1]}, options).transpose(1, 2);
  return at::empty(sizes, options);
}

at::Tensor causal_in_layout(const at::Tensor& t, const at::Tensor& like) {
  const bool ok = causal_channels_last(like) ? t.transpose(1, 2).is_contiguous() : t.is_contiguous();
  return ok ? t : causal_empty_like(like, t.sizes(), t.options()).copy_(t);
}

void causal_add_final_state_grad(at::Tensor& grad_x, at::Tensor& grad_state, const at::Tensor& grad_final_state,
                                 int64_t length, int64_t history) {
  const int64_t in_x = std::min(history, length);
  if (in_x > 0) grad_x.narrow(2, length - in_x, in_x).add_(grad_final_state.narrow(2, history - in_x, in_x));
  if (history > length) {
    grad_state.narrow(2, length, history - length).add_(grad_final_state.narrow(2, 0, history - length));
  }
}

}  // namespace fastconv
