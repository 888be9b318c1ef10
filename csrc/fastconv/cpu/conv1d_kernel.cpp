// conv1d on CPU: forward, grad_input and grad_weight by the path path.h
// selects: "direct" (the tiled driver, conv1d_driver.h), "fft" (fft_conv1d.h)
// or "native" (PyTorch's, native.h). The direct grad_input is a forward convolution of
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

#include "fastconv/cpu/allocation.h"
#include "fastconv/cpu/conv1d_driver.h"
#include "fastconv/cpu/tile_kernels.h"
#include "fastconv/conv1d_paths.h"
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
// loop: the ATen ops there (reshape, transpose, flip, copy) cost a small
// grad_input a large share of its time.
template <typename scalar_t>
std::vector<at::opmath_type<scalar_t>> transposed_flipped_weight(const scalar_t* w, const Conv1dIntDims& d) {
  const int64_t groups = d.groups, Og = d.out_channels_per_group(), Cg = d.in_channels_per_group();
  const int64_t K = d.kernel_size[0];
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

// fastconv's direct kernels, for Conv1dPaths (conv1d_paths.h).
struct CpuDirect {
  static at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const Conv1dIntDims& d, const Conv1dSymDims& sym) {
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

  static at::Tensor input_backward(const at::Tensor& grad_output, const at::Tensor& weight, const Conv1dIntDims& d,
                                   const Conv1dSymDims& sym) {
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

  static std::tuple<at::Tensor, at::Tensor> weight_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                            const Conv1dIntDims& d, const Conv1dSymDims& sym,
                                                            bool with_bias) {
    const at::Tensor gy = grad_output.contiguous();
    const at::Tensor x = input.contiguous();
    at::Tensor gw = at::empty_symint(conv1d_weight_shape(sym), x.options());
    at::Tensor gb = with_bias ? at::empty({d.out_channels}, x.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv1d_weight_backward_cpu", [&] {
      cpu::conv_weight_grad<scalar_t>(forward_geometry(d), gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                      gw.mutable_data_ptr<scalar_t>(),
                                      with_bias ? gb.mutable_data_ptr<scalar_t>() : nullptr);
    });
    return {gw, gb};
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  using Ops = Conv1dPaths<CpuDirect>;
  m.impl("conv1d", &Ops::forward);
  m.impl("conv1d_input_backward", &Ops::input_backward);
  m.impl("conv1d_weight_backward", &Ops::weight_backward);
  m.impl("conv1d_weight_bias_backward", &Ops::weight_bias_backward);
}

}  // namespace fastconv
