// A pointwise layer whose pixels are the rows of one matrix -- a channels-last
// activation, or one pixel per image (squeeze-and-excitation) -- is one ATen
// GEMM in the tensors' own layout, no reorder:
//   forward      y[NHW, C_out] = x[NHW, C_in] @ W^T (+ bias)
//   grad_weight  gw[C_out, C_in] = gy^T @ x
// grad_input is the forward of the transposed layer (conv2d_kernel.cpp).
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>

#include "fastconv/cpu/conv2d_paths.h"

namespace fastconv::cpu {
namespace {

// (N, C, H, W), channels-last-contiguous, as the (N*H*W, C) matrix it is in memory (a view).
at::Tensor as_rows(const at::Tensor& t) { return t.permute({0, 2, 3, 1}).reshape({-1, t.size(1)}); }

}  // namespace

bool pointwise_rows(const at::Tensor& activation, const Conv2dIntDims& d) {
  return conv2d_is_pointwise(d) && d.groups == 1 && d.batched &&
      activation.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor pointwise_forward_rows(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  const Conv2dIntDims& d) {
  const at::Tensor w_t = weight.reshape({d.out_channels, d.in_channels}).t();
  const at::Tensor y =
      bias.has_value() && bias->defined() ? at::addmm(*bias, as_rows(x), w_t) : at::mm(as_rows(x), w_t);
  return y.view({d.batch, d.out_size[0], d.out_size[1], d.out_channels}).permute({0, 3, 1, 2});
}

at::Tensor pointwise_weight_backward_rows(const at::Tensor& gy, const at::Tensor& x, const Conv2dIntDims& d) {
  return at::mm(as_rows(gy).t(), as_rows(x)).view({d.out_channels, d.in_channels, 1, 1});
}

}  // namespace fastconv::cpu
