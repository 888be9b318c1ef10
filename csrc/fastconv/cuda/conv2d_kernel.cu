// conv2d on CUDA through im2col + GEMM (at::mm, i.e. cuBLAS), over chunks of
// output rows whose column matrix fits kColumnBudget elements. Chunks run one
// after another on the current stream, so col2im can gather (one thread per
// input element, no atomics, deterministic) into the accumulation buffer.
// The column layout is the CPU one (cpu/im2col.h):
//   col[(c * KH + kh) * KW + kw][q * W_out + ow], q = output row in the chunk.
// Whether the GEMMs use TF32 follows torch.backends.cuda.matmul.allow_tf32.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "fastconv/depthwise2d.h"
#include "fastconv/fft/fft_conv2d.h"
#include "fastconv/native.h"
#include "fastconv/path.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

constexpr int kThreads = 256;
// 64 Mi elements (256 MiB in float) of column matrix per chunk.
constexpr int64_t kColumnBudget = int64_t(1) << 26;

int64_t blocks_for(int64_t n) {
  const int64_t max_blocks = 65535LL * 8;
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, max_blocks));
}

#define FASTCONV_GRID_LOOP(i, n)                                                \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

// col[tap][q * OW + ow] for the chunk's output rows [row0, row0 + rows).
template <typename scalar_t, typename T>
__global__ void im2col_kernel(
    Conv2dIntDims d, int64_t group, int64_t row0, int64_t rows,
    const scalar_t* __restrict__ x, T* __restrict__ col) {
  const int64_t OH = d.out_size[0], OW = d.out_size[1];
  const int64_t KH = d.kernel_size[0], KW = d.kernel_size[1];
  const int64_t cols = rows * OW;
  const int64_t taps = d.in_channels / d.groups * KH * KW;
  FASTCONV_GRID_LOOP(idx, taps * cols) {
    const int64_t j = idx % cols, tap = idx / cols;
    const int64_t kw = tap % KW, kh = (tap / KW) % KH, c = tap / (KW * KH);
    const int64_t q = j / OW, ow = j % OW;
    const int64_t n = (row0 + q) / OH, oh = (row0 + q) % OH;
    const int64_t ih = oh * d.stride[0] - d.padding[0] + kh * d.dilation[0];
    const int64_t iw = ow * d.stride[1] - d.padding[1] + kw * d.dilation[1];
    T v = 0;
    if (ih >= 0 && ih < d.in_size[0] && iw >= 0 && iw < d.in_size[1]) {
      const int64_t channel = group * (d.in_channels / d.groups) + c;
      v = static_cast<T>(
          x[((n * d.in_channels + channel) * d.in_size[0] + ih) * d.in_size[1] + iw]);
    }
    col[idx] = v;
  }
}

// gx[n, c, ih, iw] += every col entry of the chunk that im2col read from it.
template <typename T>
__global__ void col2im_kernel(
    Conv2dIntDims d, int64_t group, int64_t row0, int64_t rows,
    const T* __restrict__ col, T* __restrict__ gx) {
  const int64_t H = d.in_size[0], W = d.in_size[1];
  const int64_t OH = d.out_size[0], OW = d.out_size[1];
  const int64_t KH = d.kernel_size[0], KW = d.kernel_size[1];
  const int64_t cin_g = d.in_channels / d.groups;
  const int64_t cols = rows * OW;
  const int64_t n0 = row0 / OH, samples = (row0 + rows - 1) / OH - n0 + 1;
  FASTCONV_GRID_LOOP(idx, samples * cin_g * H * W) {
    const int64_t iw = idx % W, ih = (idx / W) % H;
    const int64_t c = (idx / (W * H)) % cin_g, n = n0 + idx / (W * H * cin_g);
    T acc = 0;
    for (int64_t kh = 0; kh < KH; ++kh) {
      const int64_t th = ih + d.padding[0] - kh * d.dilation[0];
      if (th < 0 || th % d.stride[0] != 0) continue;
      const int64_t q = n * OH + th / d.stride[0] - row0;
      if (th / d.stride[0] >= OH || q < 0 || q >= rows) continue;
      for (int64_t kw = 0; kw < KW; ++kw) {
        const int64_t tw = iw + d.padding[1] - kw * d.dilation[1];
        if (tw < 0 || tw % d.stride[1] != 0 || tw / d.stride[1] >= OW) continue;
        acc += col[((c * KH + kh) * KW + kw) * cols + q * OW + tw / d.stride[1]];
      }
    }
    gx[((n * d.in_channels + group * cin_g + c) * H + ih) * W + iw] += acc;
  }
}

// kToTile: tile[oc][q * OW + ow] = y[...]; otherwise y[...] = tile + bias.
template <bool kToTile, typename scalar_t, typename T>
__global__ void copy_output_kernel(
    Conv2dIntDims d, int64_t group, int64_t row0, int64_t rows, scalar_t* y,
    T* tile, const T* __restrict__ bias) {
  const int64_t OH = d.out_size[0], OW = d.out_size[1];
  const int64_t cout_g = d.out_channels / d.groups;
  const int64_t cols = rows * OW;
  FASTCONV_GRID_LOOP(idx, cout_g * cols) {
    const int64_t j = idx % cols, oc = idx / cols;
    const int64_t q = j / OW, ow = j % OW;
    const int64_t n = (row0 + q) / OH, oh = (row0 + q) % OH;
    const int64_t channel = group * cout_g + oc;
    scalar_t* p = y + ((n * d.out_channels + channel) * OH + oh) * OW + ow;
    if constexpr (kToTile) {
      tile[idx] = static_cast<T>(*p);
    } else {
      *p = static_cast<scalar_t>(tile[idx] + (bias ? bias[channel] : T(0)));
    }
  }
}

int64_t taps_per_group(const Conv2dIntDims& d) {
  return d.in_channels / d.groups * d.kernel_size[0] * d.kernel_size[1];
}

// Output rows per chunk: as many as kColumnBudget allows, at least one.
int64_t chunk_rows(const Conv2dIntDims& d) {
  const int64_t per_row = taps_per_group(d) * d.out_size[1];
  return std::clamp<int64_t>(kColumnBudget / per_row, 1, std::max<int64_t>(1, d.batch * d.out_size[0]));
}

at::Tensor grouped_weight(const at::Tensor& weight, const Conv2dIntDims& d) {
  return weight.to(at::toOpMathType(weight.scalar_type()))
      .contiguous()
      .view({d.groups, d.out_channels / d.groups, taps_per_group(d)});
}

// Calls f(group, row0, rows, col, tile) for every chunk, in order, with dense
// col (taps, cols) and tile (C_out / groups, cols) buffers.
template <typename F>
void for_each_chunk(const Conv2dIntDims& d, const at::TensorOptions& opts, F f) {
  const int64_t total = d.batch * d.out_size[0];
  const int64_t step = chunk_rows(d);
  const int64_t taps = taps_per_group(d), cout_g = d.out_channels / d.groups;
  const at::Tensor col_buf = at::empty({taps * step * d.out_size[1]}, opts);
  const at::Tensor tile_buf = at::empty({cout_g * step * d.out_size[1]}, opts);
  for (int64_t g = 0; g < d.groups; ++g) {
    for (int64_t row0 = 0; row0 < total; row0 += step) {
      const int64_t rows = std::min(step, total - row0), cols = rows * d.out_size[1];
      f(g, row0, rows, col_buf.narrow(0, 0, taps * cols).view({taps, cols}),
        tile_buf.narrow(0, 0, cout_g * cols).view({cout_g, cols}));
    }
  }
}

at::Tensor conv2d_cuda(
    const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, c10::SymInt groups,
    c10::string_view algorithm) {
  const auto sym = check_conv2d(input, weight, bias, stride, padding, dilation, groups, algorithm);
  const auto d = concrete(sym);
  // Native, depthwise, fft, or im2col: this kernel's own path, which "im2col" forces.
  if (algorithm != "im2col") {
    return run_selected(make_call(ConvOp::kForward, d, input), algorithm, [&](Path path) {
      switch (path) {
        case Path::kNative: return native::forward(input, weight, bias, d, 2);
        case Path::kDepthwise: return cuda::depthwise2d_forward(input, weight, bias, d);
        case Path::kFft: return fft::conv2d_forward(input, weight, bias, d).contiguous(conv2d_memory_format(input));
        default: return conv2d_cuda(input, weight, bias, stride, padding, dilation, groups, "im2col");
      }
    });
  }
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor w = grouped_weight(weight, d);
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->to(w.scalar_type()).contiguous() : at::Tensor();
  at::Tensor y = at::empty_symint(conv2d_output_shape(sym), input.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    for_each_chunk(d, w.options(), [&](int64_t g, int64_t row0, int64_t rows, at::Tensor col, at::Tensor acc) {
      im2col_kernel<scalar_t, T><<<blocks_for(col.numel()), kThreads, 0, stream>>>(
          d, g, row0, rows, x.const_data_ptr<scalar_t>(), col.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      at::mm_out(acc, w[g], col);
      copy_output_kernel<false, scalar_t, T><<<blocks_for(acc.numel()), kThreads, 0, stream>>>(
          d, g, row0, rows, y.mutable_data_ptr<scalar_t>(), acc.mutable_data_ptr<T>(),
          has_bias ? b.const_data_ptr<T>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return y.contiguous(conv2d_memory_format(input));
}

at::Tensor conv2d_weight_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input,
    c10::SymIntArrayRef kernel_size, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, c10::SymInt groups,
    c10::string_view algorithm) {
  const auto sym = check_conv2d_weight_backward(
      grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm);
  const auto d = concrete(sym);
  if (algorithm != "im2col") {
    return run_selected(make_call(ConvOp::kWeight, d, input), algorithm, [&](Path path) {
      switch (path) {
        case Path::kNative: return std::get<0>(native::weight_backward(grad_output, input, d, 2, false));
        case Path::kDepthwise: return cuda::depthwise2d_weight_backward(grad_output, input, d);
        case Path::kFft: return fft::conv2d_weight_backward(grad_output, input, d);
        default:
          return conv2d_weight_backward_cuda(grad_output, input, kernel_size, stride, padding, dilation, groups,
                                             "im2col");
      }
    });
  }
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  const auto opts = x.options().dtype(at::toOpMathType(x.scalar_type()));
  at::Tensor gw = at::zeros({d.groups, d.out_channels / d.groups, taps_per_group(d)}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_weight_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    for_each_chunk(d, opts, [&](int64_t g, int64_t row0, int64_t rows, at::Tensor col, at::Tensor gy_tile) {
      im2col_kernel<scalar_t, T><<<blocks_for(col.numel()), kThreads, 0, stream>>>(
          d, g, row0, rows, x.const_data_ptr<scalar_t>(), col.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      copy_output_kernel<true, scalar_t, T><<<blocks_for(gy_tile.numel()), kThreads, 0, stream>>>(
          d, g, row0, rows, const_cast<scalar_t*>(gy.const_data_ptr<scalar_t>()),
          gy_tile.mutable_data_ptr<T>(), nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      gw[g].addmm_(gy_tile, col.t());
    });
  });
  return gw.view_symint(conv2d_weight_shape(sym)).to(x.scalar_type());
}

at::Tensor conv2d_input_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& weight,
    c10::SymIntArrayRef input_size, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, c10::SymInt groups,
    c10::string_view algorithm) {
  const auto sym = check_conv2d_input_backward(
      grad_output, weight, input_size, stride, padding, dilation, groups, algorithm);
  const auto d = concrete(sym);
  if (algorithm != "im2col") {
    return run_selected(make_call(ConvOp::kInput, d, grad_output), algorithm, [&](Path path) {
      switch (path) {
        case Path::kNative: return native::input_backward(grad_output, weight, d, 2);
        case Path::kDepthwise: return cuda::depthwise2d_input_backward(grad_output, weight, d);
        case Path::kFft:
          return fft::conv2d_input_backward(grad_output, weight, d).contiguous(conv2d_memory_format(grad_output));
        default:
          return conv2d_input_backward_cuda(grad_output, weight, input_size, stride, padding, dilation, groups,
                                            "im2col");
      }
    });
  }
  c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor w = grouped_weight(weight, d);
  at::Tensor gx = at::zeros_symint(conv2d_input_shape(sym), w.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "fastconv_conv2d_input_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    for_each_chunk(d, w.options(), [&](int64_t g, int64_t row0, int64_t rows, at::Tensor col, at::Tensor gy_tile) {
      copy_output_kernel<true, scalar_t, T><<<blocks_for(gy_tile.numel()), kThreads, 0, stream>>>(
          d, g, row0, rows, const_cast<scalar_t*>(gy.const_data_ptr<scalar_t>()),
          gy_tile.mutable_data_ptr<T>(), nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      at::mm_out(col, w[g].t(), gy_tile);
      const int64_t samples = (row0 + rows - 1) / d.out_size[0] - row0 / d.out_size[0] + 1;
      const int64_t count = samples * (d.in_channels / d.groups) * d.in_size[0] * d.in_size[1];
      col2im_kernel<T><<<blocks_for(count), kThreads, 0, stream>>>(
          d, g, row0, rows, col.const_data_ptr<T>(), gx.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return gx.to(gy.scalar_type()).contiguous(conv2d_memory_format(grad_output));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("conv2d", &conv2d_cuda);
  m.impl("conv2d_input_backward", &conv2d_input_backward_cuda);
  m.impl("conv2d_weight_backward", &conv2d_weight_backward_cuda);
}

}  // namespace fastconv
