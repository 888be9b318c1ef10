// When an Autograd-key kernel may skip torch::autograd::Function::apply.
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>

#include <initializer_list>
#include <utility>

namespace fastconv {

// True when autograd has nothing to record for a call on these inputs: grad
// mode is off or no input requires grad, and no input carries a forward-mode
// tangent (level 0, the level ATen's own kernels check). The kernel then runs
// the operator below autograd directly: Function::apply builds a node and
// saves its inputs either way, which costs small calls several times their
// own time.
inline bool nothing_to_record(std::initializer_list<at::Tensor> inputs) {
  const bool grad_mode = c10::GradMode::is_enabled();
  for (const at::Tensor& t : inputs) {
    if (!t.defined()) continue;
    if ((grad_mode && t.requires_grad()) || t._fw_grad(/*level=*/0).defined()) return false;
  }
  return true;
}

// Fn::apply(args...), or Fn::compute(args...) below autograd when there is
// nothing to record for `inputs` (the tensors among args).
template <class Fn, class... Args>
auto apply_or_compute(std::initializer_list<at::Tensor> inputs, Args&&... args)
    -> decltype(Fn::compute(std::forward<Args>(args)...)) {
  if (nothing_to_record(inputs)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return Fn::compute(std::forward<Args>(args)...);
  }
  return Fn::apply(std::forward<Args>(args)...);
}

}  // namespace fastconv
