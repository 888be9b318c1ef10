#include "fastconv/native.h"

#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>

#include <vector>

namespace fastconv::native {
namespace {

// The last `dims` entries of a 2-D hyper-parameter.
std::vector<int64_t> tail(const std::array<int64_t, 2>& v, int dims) { return {v.end() - dims, v.end()}; }

at::Tensor batched(const at::Tensor& t, const Conv2dIntDims& d) { return d.batched ? t : t.unsqueeze(0); }
at::Tensor unbatched(const at::Tensor& t, const Conv2dIntDims& d) { return d.batched ? t : t.squeeze(0); }

// `t` in the format conv2d_memory_format gives for `activation` (contiguous for conv1d).
at::Tensor formatted_like(const at::Tensor& t, const at::Tensor& activation) {
  return t.contiguous(conv2d_memory_format(activation));
}

}  // namespace

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                   const Conv2dIntDims& d, int dims) {
  const at::Tensor y = at::convolution(batched(input, d), weight, bias, tail(d.stride, dims), tail(d.padding, dims),
                                       tail(d.dilation, dims), /*transposed=*/false,
                                       std::vector<int64_t>(dims, 0), d.groups);
  return formatted_like(unbatched(y, d), input);
}

at::Tensor input_backward(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dIntDims& d,
                          int dims) {
  // convolution_backward reads only the input's shape: an uninitialized tensor stands in for it.
  // (A transposed at::convolution of grad_output runs other, slower oneDNN paths.)
  std::vector<int64_t> input_shape{d.batch, d.in_channels};
  for (int i = 2 - dims; i < 2; ++i) input_shape.push_back(d.in_size[i]);
  const at::Tensor shape_only = at::empty(input_shape, grad_output.options());
  auto grads = at::convolution_backward(batched(grad_output, d), shape_only, weight, std::nullopt,
                                        tail(d.stride, dims), tail(d.padding, dims), tail(d.dilation, dims),
                                        /*transposed=*/false, std::vector<int64_t>(dims, 0), d.groups,
                                        {true, false, false});
  return formatted_like(unbatched(std::get<0>(grads), d), grad_output);
}

std::tuple<at::Tensor, at::Tensor> weight_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                   const Conv2dIntDims& d, int dims, bool with_bias) {
  // Only the weight's shape is read: an uninitialized tensor stands in for it (a broadcast
  // zero sends oneDNN down a slower path).
  std::vector<int64_t> weight_shape{d.out_channels, d.in_channels_per_group()};
  for (int i = 2 - dims; i < 2; ++i) weight_shape.push_back(d.kernel_size[i]);
  const at::Tensor shape_only = at::empty(weight_shape, input.options());
  const std::vector<int64_t> bias_shape{d.out_channels};
  auto grads = at::convolution_backward(
      batched(grad_output, d), batched(input, d), shape_only,
      with_bias ? at::OptionalIntArrayRef(bias_shape) : std::nullopt, tail(d.stride, dims), tail(d.padding, dims),
      tail(d.dilation, dims), /*transposed=*/false, std::vector<int64_t>(dims, 0), d.groups,
      {false, true, with_bias});
  return {std::get<1>(grads).contiguous(), std::get<2>(grads)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                        const at::Tensor& weight, const Conv2dIntDims& d, int dims,
                                                        bool with_bias) {
  const std::vector<int64_t> bias_shape{d.out_channels};
  auto [gx, gw, gb] = at::convolution_backward(
      batched(grad_output, d), batched(input, d), weight,
      with_bias ? at::OptionalIntArrayRef(bias_shape) : std::nullopt, tail(d.stride, dims), tail(d.padding, dims),
      tail(d.dilation, dims), /*transposed=*/false, std::vector<int64_t>(dims, 0), d.groups, {true, true, with_bias});
  return {formatted_like(unbatched(gx, d), grad_output), gw.contiguous(), gb};
}

}  // namespace fastconv::native
