// The gather form every direct conv1d operation reduces to, shared by the CPU
// and CUDA kernels:
//   out[b][oc][l] = bias[oc] + sum_{icg,k} w[oc][icg][k] * up[b][g*cin_g+icg][l*stride + k*dilation - pad]
// where up is the input upsampled by in_dilation (in[i] at i * in_dilation,
// zeros between) and zero outside. pad may be negative (grad_input).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cstdint>

#include "fastconv/shape.h"

namespace fastconv {

struct Conv1dGeometry {
  int64_t batch, groups;
  int64_t in_channels, in_length;
  int64_t out_channels, out_length;
  int64_t kernel_size, stride, dilation, pad;
  int64_t in_dilation = 1;

  C10_HOST_DEVICE int64_t cin_g() const { return in_channels / groups; }
  C10_HOST_DEVICE int64_t cout_g() const { return out_channels / groups; }
  C10_HOST_DEVICE int64_t taps() const { return cin_g() * kernel_size; }
};

// The convolution itself.
inline Conv1dGeometry forward_geometry(const Conv1dIntDims& d) {
  return Conv1dGeometry{d.batch, d.groups, d.in_channels, d.in_size[0], d.out_channels,
                        d.out_size[0], d.kernel_size[0], d.stride[0], d.dilation[0], d.padding[0]};
}

// grad_input: a stride-1 convolution of grad_output, upsampled by the stride,
// with the weights transposed and flipped per group,
//   w'[g*cin_g + icg][ocg][K-1-k] = w[g*cout_g + ocg][icg][k],
// and padding dilation * (K - 1) - padding.
inline Conv1dGeometry input_backward_geometry(const Conv1dIntDims& d) {
  return Conv1dGeometry{d.batch, d.groups, d.out_channels, d.out_size[0], d.in_channels, d.in_size[0],
                        d.kernel_size[0], 1, d.dilation[0], d.dilation[0] * (d.kernel_size[0] - 1) - d.padding[0],
                        d.stride[0]};
}

// The weights grad_input convolves with: w (C_out, C_in/g, K) transposed
// and flipped per group, (C_in, C_out/g, K), contiguous.
inline at::Tensor input_backward_weight(const at::Tensor& w, int64_t groups) {
  const int64_t Og = w.size(0) / groups, Cg = w.size(1), K = w.size(2);
  return w.reshape({groups, Og, Cg, K}).transpose(1, 2).flip(-1).reshape({groups * Cg, Og, K}).contiguous();
}

}  // namespace fastconv
