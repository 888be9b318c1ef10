// Direct conv1d on CUDA: forward, grad_input and grad_weight.
//
// One thread per output element for forward and grad_input (gather form, so
// no atomics), one block per weight element for grad_weight with a shared-
// memory reduction over batch and length. Accumulation in at::opmath_type
// (float for 16-bit types). Launched on the current stream; 64-bit indexing.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "fastconv/algorithm.h"
#include "fastconv/fft/fft_conv1d.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) {
  const int64_t max_blocks = 65535LL * 8;
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, max_blocks));
}

template <typename scalar_t>
__global__ void conv1d_forward_kernel(
    Conv1dIntDims d, const scalar_t* __restrict__ x,
    const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias,
    scalar_t* __restrict__ y) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t cin_g = d.in_channels / d.groups;
  const int64_t cout_g = d.out_channels / d.groups;
  const int64_t total = d.batch * d.out_channels * d.out_length;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t l = idx % d.out_length;
    const int64_t row = idx / d.out_length;
    const int64_t oc = row % d.out_channels;
    const int64_t b = row / d.out_channels;
    const int64_t g = oc / cout_g;
    opmath_t acc = bias ? static_cast<opmath_t>(bias[oc]) : opmath_t(0);
    for (int64_t icg = 0; icg < cin_g; ++icg) {
      const scalar_t* x_row = x + (b * d.in_channels + g * cin_g + icg) * d.in_length;
      const scalar_t* w_row = w + (oc * cin_g + icg) * d.kernel_size;
      for (int64_t k = 0; k < d.kernel_size; ++k) {
        const int64_t i = l * d.stride + k * d.dilation - d.padding;
        if (i >= 0 && i < d.in_length) {
          acc += static_cast<opmath_t>(w_row[k]) * static_cast<opmath_t>(x_row[i]);
        }
      }
    }
    y[idx] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
__global__ void conv1d_input_backward_kernel(
    Conv1dIntDims d, const scalar_t* __restrict__ gy,
    const scalar_t* __restrict__ w, scalar_t* __restrict__ gx) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t cin_g = d.in_channels / d.groups;
  const int64_t cout_g = d.out_channels / d.groups;
  const int64_t total = d.batch * d.in_channels * d.in_length;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx % d.in_length;
    const int64_t row = idx / d.in_length;
    const int64_t ic = row % d.in_channels;
    const int64_t b = row / d.in_channels;
    const int64_t g = ic / cin_g;
    const int64_t icg = ic % cin_g;
    opmath_t acc = 0;
    for (int64_t ocg = 0; ocg < cout_g; ++ocg) {
      const int64_t oc = g * cout_g + ocg;
      const scalar_t* gy_row = gy + (b * d.out_channels + oc) * d.out_length;
      const scalar_t* w_row = w + (oc * cin_g + icg) * d.kernel_size;
      for (int64_t k = 0; k < d.kernel_size; ++k) {
        // Output l read input i when l * stride = i + padding - k * dilation.
        const int64_t t = i + d.padding - k * d.dilation;
        if (t >= 0 && t % d.stride == 0 && t / d.stride < d.out_length) {
          acc += static_cast<opmath_t>(w_row[k]) *
              static_cast<opmath_t>(gy_row[t / d.stride]);
        }
      }
    }
    gx[idx] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
__global__ void conv1d_weight_backward_kernel(
    Conv1dIntDims d, const scalar_t* __restrict__ gy,
    const scalar_t* __restrict__ x, scalar_t* __restrict__ gw) {
  using opmath_t = at::opmath_type<scalar_t>;
  __shared__ opmath_t partial[kThreads];
  const int64_t cin_g = d.in_channels / d.groups;
  const int64_t cout_g = d.out_channels / d.groups;
  const int64_t weight_index = blockIdx.x;  // (oc, icg, k)
  const int64_t k = weight_index % d.kernel_size;
  const int64_t icg = (weight_index / d.kernel_size) % cin_g;
  const int64_t oc = weight_index / (d.kernel_size * cin_g);
  const int64_t ic = (oc / cout_g) * cin_g + icg;
  const int64_t offset = k * d.dilation - d.padding;
  opmath_t acc = 0;
  const int64_t total = d.batch * d.out_length;
  for (int64_t idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int64_t l = idx % d.out_length;
    const int64_t b = idx / d.out_length;
    const int64_t i = l * d.stride + offset;
    if (i >= 0 && i < d.in_length) {
      acc += static_cast<opmath_t>(gy[(b * d.out_channels + oc) * d.out_length + l]) *
          static_cast<opmath_t>(x[(b * d.in_channels + ic) * d.in_length + i]);
    }
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      partial[threadIdx.x] += partial[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    gw[weight_index] = static_cast<scalar_t>(partial[0]);
  }
}

at::Tensor conv1d_cuda(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto sym =
      check_conv1d(input, weight, bias, stride, padding, dilation, groups, algorithm);
  const auto d = concrete(sym);
  if (choose_conv1d_algorithm(d, algorithm, input.device().type()) == Conv1dAlgorithm::kFft) {
    return fft::conv1d_forward(input, weight, bias, d);
  }
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty_symint(conv1d_output_shape(sym), input.options());
  if (y.numel() == 0) {
    return y;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv1d_cuda", [&] {
        conv1d_forward_kernel<scalar_t>
            <<<blocks_for(y.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                d, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                has_bias ? b.const_data_ptr<scalar_t>() : nullptr,
                y.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return y;
}

at::Tensor conv1d_input_backward_cuda(
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
  c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor w = weight.contiguous();
  at::Tensor gx = at::empty_symint(conv1d_input_shape(sym), gy.options());
  if (gx.numel() == 0) {
    return gx;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, gy.scalar_type(),
      "fastconv_conv1d_input_backward_cuda", [&] {
        conv1d_input_backward_kernel<scalar_t>
            <<<blocks_for(gx.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                d, gy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                gx.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return gx;
}

at::Tensor conv1d_weight_backward_cuda(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymInt kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  const auto sym = check_conv1d_weight_backward(
      grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm);
  const auto d = concrete(sym);
  if (choose_conv1d_algorithm(d, algorithm, input.device().type()) == Conv1dAlgorithm::kFft) {
    return fft::conv1d_weight_backward(grad_output, input, d);
  }
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  at::Tensor gw = at::empty_symint(conv1d_weight_shape(sym), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(),
      "fastconv_conv1d_weight_backward_cuda", [&] {
        conv1d_weight_backward_kernel<scalar_t>
            <<<gw.numel(), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                d, gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                gw.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return gw;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("conv1d", &conv1d_cuda);
  m.impl("conv1d_input_backward", &conv1d_input_backward_cuda);
  m.impl("conv1d_weight_backward", &conv1d_weight_backward_cuda);
}

}  // namespace fastconv
