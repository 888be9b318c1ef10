// The bias gradient of an N-d convolution, shared by the autograd kernels and
// the backends that do not fuse it into the weight gradient.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <numeric>
#include <vector>

namespace fastconv {

// Sum of grad_output over every dimension but channels.
inline at::Tensor conv_bias_grad(const at::Tensor& grad_output, int64_t spatial_dims) {
  const bool batched = grad_output.dim() == spatial_dims + 2;
  std::vector<int64_t> dims(grad_output.dim());
  std::iota(dims.begin(), dims.end(), 0);
  dims.erase(dims.begin() + (batched ? 1 : 0));
  return grad_output.sum(dims);
}

}  // namespace fastconv
