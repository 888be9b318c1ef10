// conv1d on CPU: forward, grad_input and grad_weight, all through the tiled
// driver (conv1d_driver.h). grad_input is a forward convolution of
// grad_output, zero-upsampled by the stride, with transposed, flipped
// weights. 16-bit tensors are read and written in 16 bits and accumulated in
// float.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/conv1d.h>
#include <ATen/ops/conv_transpose1d.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>
#include <vector>

#include "fastconv/algorithm.h"
#include "fastconv/bias_grad.h"
#include "fastconv/cpu/allocation.h"
#include "fastconv/cpu/conv1d_driver.h"
#include "fastconv/cpu/tile_kernels.h"
#include "fastconv/fft/fft_conv1d.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

// Values of t in the accumulation type; a view when no conversion is needed.
template <typename scalar_t>
const at::opmath_type<scalar_t>* as_opmath(const scalar_t* p, int64_t n,
                                           std::vector<at::opmath_type<scalar_t>>& storage) {
  using T = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, T>) {
    return p;
  } else {
    storage.assign(p, p + n);
    return storage.data();
  }
}

// input_backward_weight (conv1d_geometry.h) in the accumulation type, as one
// loop: the ATen ops there (reshape, transpose, flip, copy) took about 4 us of
// a small grad_input.
template <typename scalar_t>
std::vector<at::opmath_type<scalar_t>> transposed_flipped_weight(const scalar_t* w, const Conv1dIntDims& d) {
  const int64_t groups = d.groups, Og = d.out_channels_per_group(), Cg = d.in_channels_per_group();
  const int64_t K = d.kernel_size;
  std::vector<at::opmath_type<scalar_t>> out(static_cast<size_t>(groups * Og * Cg * K));
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t o = 0; o < Og; ++o) {
      for (int64_t c = 0; c < Cg; ++c) {
        const scalar_t* src = w + ((g * Og + o) * Cg + c) * K;
        auto* dst = out.data() + ((g * Cg + c) * Og + o) * K;
        for (int64_t k = 0; k < K; ++k) dst[K - 1 - k] = src[k];
      }
    }
  }
  return out;
}

bool many_channels(const Conv1dIntDims& d, int64_t at_least) {
  return d.in_channels_per_group() >= at_least && d.out_channels_per_group() >= at_least;
}

// Where many channels mix, the weight gradient is one large GEMM that oneDNN
// runs at the FMA peak, while the tile kernel re-streams its operands from L2
// (128 x 128 channels, K = 5: 0.67x the time in float, 0.36x in bfloat16).
// But from 15 taps oneDNN's weight gradient takes another path, 2.5x slower
// (64 x 64 channels, float: 13.6 ms at K = 14, 34.7 ms at K = 15), and beats
// the tile kernel only from 256 (float) or 128 (bfloat16) channels. Its
// double and half paths are slow.
bool onednn_weight_grad_is_faster(const Conv1dIntDims& d, at::ScalarType dtype) {
  if (dtype != at::kFloat && dtype != at::kBFloat16) return false;
  if (d.kernel_size <= 14) return many_channels(d, 32);
  return many_channels(d, dtype == at::kBFloat16 ? 128 : 256);
}

// bfloat16 forward and grad_input where many channels mix, on a CPU with
// bfloat16 dot products (which the tile kernels, widening to float, do not
// use): oneDNN took 0.3-0.7x the time from 48 channels (64 x 64, K = 3:
// 2.4 against 4.2 ms), about the same at 32. Not at stride 2 (2x slower),
// nor from 15 taps (its backward-data path: 2.4-4.5x slower at K = 33), nor
// below about 2^24 multiply-adds, where its fixed costs outweigh the gain
// (64 channels, 2 x 256, K = 3: 0.14 ms against the tile kernel's 0.105).
bool onednn_bf16_is_faster(const Conv1dIntDims& d, at::ScalarType dtype) {
  const double macs = double(d.batch) * d.out_channels * d.out_length * d.in_channels_per_group() * d.kernel_size;
  return dtype == at::kBFloat16 && d.stride == 1 && d.kernel_size <= 14 && many_channels(d, 32) &&
      macs >= double(1 << 24) && cpu::has_bf16_dot_product();
}

at::Tensor conv1d_cpu(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto sym = check_conv1d(input, weight, bias, stride, padding, dilation, groups, algorithm);
  const auto d = concrete(sym);
  if (choose_conv1d_algorithm(d, algorithm, input.device().type()) == Conv1dAlgorithm::kFft) {
    return fft::conv1d_forward(input, weight, bias, d);
  }
  if (onednn_bf16_is_faster(d, input.scalar_type())) {
    return at::conv1d(input, weight, bias, {d.stride}, {d.padding}, {d.dilation}, d.groups);
  }
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor y = cpu::empty_output(concrete_shape(conv1d_output_shape(sym)), input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv1d_cpu", [&] {
    std::vector<at::opmath_type<scalar_t>> w_store, b_store;
    const auto* wp = as_opmath(w.const_data_ptr<scalar_t>(), w.numel(), w_store);
    const auto* bp = has_bias ? as_opmath(b.const_data_ptr<scalar_t>(), b.numel(), b_store) : nullptr;
    cpu::conv_forward<scalar_t>(forward_geometry(d), x.const_data_ptr<scalar_t>(), wp, bp,
                      y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

at::Tensor conv1d_input_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::SymInt input_length,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto sym = check_conv1d_input_backward(
      grad_output, weight, input_length, stride, padding, dilation, groups, algorithm);
  const auto d = concrete(sym);
  if (choose_conv1d_algorithm(d, algorithm, grad_output.device().type()) == Conv1dAlgorithm::kFft) {
    return fft::conv1d_input_backward(grad_output, weight, d);
  }
  if (onednn_bf16_is_faster(d, grad_output.scalar_type())) {
    // At stride 1 the transposed convolution gives back exactly input_length.
    return at::conv_transpose1d(grad_output, weight, std::nullopt, {1}, {d.padding}, {0}, d.groups, {d.dilation});
  }
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor w = weight.contiguous();
  at::Tensor gx = cpu::empty_output(concrete_shape(conv1d_input_shape(sym)), gy.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "fastconv_conv1d_input_backward_cpu", [&] {
    const auto wt = transposed_flipped_weight(w.const_data_ptr<scalar_t>(), d);
    cpu::conv_forward<scalar_t>(input_backward_geometry(d), gy.const_data_ptr<scalar_t>(), wt.data(), nullptr,
                                gx.mutable_data_ptr<scalar_t>());
  });
  return gx;
}

// grad_weight, and grad_bias when with_bias (else undefined).
std::tuple<at::Tensor, at::Tensor> weight_grads_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymInt kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm,
    bool with_bias) {
  const auto sym = check_conv1d_weight_backward(
      grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm,
      with_bias ? "fastconv.conv1d_weight_bias_backward" : "fastconv.conv1d_weight_backward");
  const auto d = concrete(sym);
  if (choose_conv1d_weight_algorithm(d, algorithm, input.device().type()) == Conv1dAlgorithm::kFft) {
    return {fft::conv1d_weight_backward(grad_output, input, d),
            with_bias ? conv_bias_grad(grad_output, 1) : at::Tensor()};
  }
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  if (onednn_weight_grad_is_faster(d, x.scalar_type())) {
    // oneDNN reads only the weight's shape: a broadcast zero stands in for it.
    const auto weight_shape = concrete_shape(conv1d_weight_shape(sym));
    const at::Tensor shape_only = at::zeros({1}, x.options()).expand(weight_shape);
    const std::vector<int64_t> bias_shape{d.out_channels};
    auto grads = at::convolution_backward(
        d.batched ? gy : gy.unsqueeze(0), d.batched ? x : x.unsqueeze(0), shape_only,
        with_bias ? at::OptionalIntArrayRef(bias_shape) : std::nullopt, {d.stride}, {d.padding}, {d.dilation},
        /*transposed=*/false, /*output_padding=*/{0}, d.groups, {false, true, with_bias});
    return {std::get<1>(grads), std::get<2>(grads)};
  }
  at::Tensor gw = at::empty_symint(conv1d_weight_shape(sym), x.options());
  at::Tensor gb = with_bias ? at::empty({d.out_channels}, x.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv1d_weight_backward_cpu", [&] {
    cpu::conv_weight_grad<scalar_t>(forward_geometry(d), gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                    gw.mutable_data_ptr<scalar_t>(),
                                    with_bias ? gb.mutable_data_ptr<scalar_t>() : nullptr);
  });
  return {gw, gb};
}

at::Tensor conv1d_weight_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymInt kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  return std::get<0>(weight_grads_cpu(
      grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm, /*with_bias=*/false));
}

std::tuple<at::Tensor, at::Tensor> conv1d_weight_bias_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymInt kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  return weight_grads_cpu(
      grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm, /*with_bias=*/true);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv1d", &conv1d_cpu);
  m.impl("conv1d_input_backward", &conv1d_input_backward_cpu);
  m.impl("conv1d_weight_backward", &conv1d_weight_backward_cpu);
  m.impl("conv1d_weight_bias_backward", &conv1d_weight_bias_backward_cpu);
}

}  // namespace fastconv
