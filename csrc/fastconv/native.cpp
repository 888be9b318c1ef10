#include "fastconv/native.h"

#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/zeros.h>

#include <vector>

namespace fastconv::native {
namespace {

// The last `dims` entries of a 2-D hyper-parameter.
std::vector<int64_t> tail(const std::array<int64_t, 2>& v, int dims) { return {v.end() - dims, v.end()}; }

at::Tensor batched(const at::Tensor& t, const Conv2dIntDims& d) { return d.batched ? t : t.unsqueeze(0); }
at::Tensor unbatched(const at::Tensor& t, const Conv2dIntDims& d) { return d.batched ? t : t.squeeze(0); }

}  // namespace

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                   const Conv2dIntDims& d, int dims) {
  const at::Tensor y = at::convolution(batched(input, d), weight, bias, tail(d.stride, dims), tail(d.padding, dims),
                                       tail(d.dilation, dims), /*transposed=*/false,
                                       std::vector<int64_t>(dims, 0), d.groups);
  return unbatched(y, d).contiguous();
}

at::Tensor input_backward(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dIntDims& d,
                          int dims) {
  // The transposed convolution, with the output padding that gives back the input's size.
  std::vector<int64_t> output_padding;
  for (int i = 2 - dims; i < 2; ++i) {
    output_padding.push_back(d.in_size[i] - ((d.out_size[i] - 1) * d.stride[i] - 2 * d.padding[i] +
                                             d.dilation[i] * (d.kernel_size[i] - 1) + 1));
  }
  const at::Tensor gx = at::convolution(batched(grad_output, d), weight, std::nullopt, tail(d.stride, dims),
                                        tail(d.padding, dims), tail(d.dilation, dims), /*transposed=*/true,
                                        output_padding, d.groups);
  return unbatched(gx, d).contiguous();
}

std::tuple<at::Tensor, at::Tensor> weight_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                   const Conv2dIntDims& d, int dims, bool with_bias) {
  // Only the weight's shape is read: a broadcast zero stands in for it.
  std::vector<int64_t> weight_shape{d.out_channels, d.in_channels_per_group()};
  for (int i = 2 - dims; i < 2; ++i) weight_shape.push_back(d.kernel_size[i]);
  const at::Tensor shape_only = at::zeros({1}, input.options()).expand(weight_shape);
  const std::vector<int64_t> bias_shape{d.out_channels};
  auto grads = at::convolution_backward(
      batched(grad_output, d), batched(input, d), shape_only,
      with_bias ? at::OptionalIntArrayRef(bias_shape) : std::nullopt, tail(d.stride, dims), tail(d.padding, dims),
      tail(d.dilation, dims), /*transposed=*/false, std::vector<int64_t>(dims, 0), d.groups,
      {false, true, with_bias});
  return {std::get<1>(grads).contiguous(), std::get<2>(grads)};
}

}  // namespace fastconv::native
