// convolve(a, v, mode) for every backend: the mode picks a window of the full
// convolution, which _convolve_window computes (with its own kernels,
// autograd and Meta kernel), so convolve needs nothing else.
#include <torch/library.h>

#include "fastconv/ops.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

at::Tensor convolve_composite(const at::Tensor& a, const at::Tensor& v, c10::string_view mode) {
  auto [offset, length] = check_convolve(a, v, mode);
  return convolve_window(a, v, std::move(offset), std::move(length));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CompositeImplicitAutograd, m) {
  m.impl("convolve", &convolve_composite);
}

}  // namespace fastconv
