// Depthwise conv2d on CUDA (depthwise2d.h). Tensors are read by their
// strides, so NCHW and channels-last run in place; the results are allocated
// in the activation's memory format and consecutive threads take consecutive
// elements of them (width fastest for NCHW, channels fastest for
// channels-last: coalesced either way). One thread per output (forward) or
// per input element (grad_input, gathered: no atomics, deterministic); the
// weight gradient is a block reduction per (channel, tap) in a fixed order.
// A thread reads its channel's KH * KW weights through the read-only cache.
// Accumulates in at::opmath_type; current stream; 64-bit indexing.
#include "fastconv/depthwise2d.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

namespace fastconv::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 30;

int64_t blocks_for(int64_t n) { return std::max<int64_t>(1, std::min((n + kThreads - 1) / kThreads, kMaxBlocks)); }

// A 4-D tensor's sizes and strides, and the order its threads walk it in.
struct Frame {
  int64_t N, C, H, W;
  int64_t sn, sc, sh, sw;
  bool channels_fastest;
  __device__ int64_t offset(int64_t n, int64_t c, int64_t h, int64_t w) const { return n * sn + c * sc + h * sh + w * sw; }
  __device__ void split(int64_t idx, int64_t& n, int64_t& c, int64_t& h, int64_t& w) const {
    if (channels_fastest) {
      c = idx % C;
      w = idx / C % W;
      h = idx / (C * W) % H;
      n = idx / (C * W * H);
    } else {
      w = idx % W;
      h = idx / W % H;
      c = idx / (W * H) % C;
      n = idx / (W * H * C);
    }
  }
};

Frame frame_of(const at::Tensor& t, bool channels_fastest) {
  return {t.size(0), t.size(1), t.size(2), t.size(3), t.stride(0), t.stride(1), t.stride(2), t.stride(3),
          channels_fastest};
}

struct Geometry {
  int64_t KH, KW, sh, sw, ph, pw, dh, dw;
};

Geometry geometry_of(const Conv2dIntDims& d) {
  return {d.kernel_size[0], d.kernel_size[1], d.stride[0], d.stride[1],
          d.padding[0],     d.padding[1],     d.dilation[0], d.dilation[1]};
}

template <typename scalar_t>
__global__ void forward_kernel(Frame x, Frame y, Geometry g, const scalar_t* __restrict__ xp,
                               const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias,
                               scalar_t* __restrict__ yp) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = y.N * y.C * y.H * y.W;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, oh, ow;
    y.split(idx, n, c, oh, ow);
    acc_t acc = bias ? static_cast<acc_t>(bias[c]) : acc_t(0);
    const scalar_t* wc = w + c * g.KH * g.KW;
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
      if (ih < 0 || ih >= x.H) continue;
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t iw = ow * g.sw - g.pw + kw * g.dw;
        if (iw < 0 || iw >= x.W) continue;
        acc += static_cast<acc_t>(__ldg(wc + kh * g.KW + kw)) * static_cast<acc_t>(xp[x.offset(n, c, ih, iw)]);
      }
    }
    yp[y.offset(n, c, oh, ow)] = static_cast<scalar_t>(acc);
  }
}

// grad_input[n, c, ih, iw]: the taps (kh, kw) whose output position
// ((ih + ph - kh dh) / sh, (iw + pw - kw dw) / sw) is whole and inside.
template <typename scalar_t>
__global__ void input_backward_kernel(Frame gy, Frame gx, Geometry g, const scalar_t* __restrict__ gyp,
                                      const scalar_t* __restrict__ w, scalar_t* __restrict__ gxp) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = gx.N * gx.C * gx.H * gx.W;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, ih, iw;
    gx.split(idx, n, c, ih, iw);
    acc_t acc = 0;
    const scalar_t* wc = w + c * g.KH * g.KW;
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t u = ih + g.ph - kh * g.dh;
      if (u < 0 || u % g.sh != 0 || u / g.sh >= gy.H) continue;
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t v = iw + g.pw - kw * g.dw;
        if (v < 0 || v % g.sw != 0 || v / g.sw >= gy.W) continue;
        acc += static_cast<acc_t>(__ldg(wc + kh * g.KW + kw)) *
            static_cast<acc_t>(gyp[gy.offset(n, c, u / g.sh, v / g.sw)]);
      }
    }
    gxp[gx.offset(n, c, ih, iw)] = static_cast<scalar_t>(acc);
  }
}

// One block per (channel, tap): the sum over (n, oh, ow) of grad_output times the tap's input.
template <typename scalar_t>
__global__ void weight_backward_kernel(Frame gy, Frame x, Geometry g, const scalar_t* __restrict__ gyp,
                                       const scalar_t* __restrict__ xp, at::opmath_type<scalar_t>* __restrict__ gw) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  const int64_t taps = g.KH * g.KW;
  const int64_t c = blockIdx.x / taps, tap = blockIdx.x % taps, kh = tap / g.KW, kw = tap % g.KW;
  acc_t acc = 0;
  const int64_t count = gy.N * gy.H * gy.W;
  for (int64_t j = threadIdx.x; j < count; j += blockDim.x) {
    const int64_t ow = j % gy.W, oh = j / gy.W % gy.H, n = j / (gy.W * gy.H);
    const int64_t ih = oh * g.sh - g.ph + kh * g.dh, iw = ow * g.sw - g.pw + kw * g.dw;
    if (ih < 0 || ih >= x.H || iw < 0 || iw >= x.W) continue;
    acc += static_cast<acc_t>(gyp[gy.offset(n, c, oh, ow)]) * static_cast<acc_t>(xp[x.offset(n, c, ih, iw)]);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) gw[c * taps + tap] = partial[0];
}

at::Tensor batched(const at::Tensor& t, const Conv2dIntDims& d) { return d.batched ? t : t.unsqueeze(0); }

// An (N, C, H, W) result in the memory format conv2d owes for `like`.
at::Tensor empty_like_format(const at::Tensor& like, int64_t N, int64_t C, int64_t H, int64_t W) {
  return at::empty({N, C, H, W}, like.options().memory_format(conv2d_memory_format(like)));
}

bool channels_last(const at::Tensor& t) { return !t.is_contiguous(); }

}  // namespace

at::Tensor depthwise2d_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const Conv2dIntDims& d) {
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = batched(input, d);
  const at::Tensor w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->to(x.scalar_type()).contiguous() : at::Tensor();
  at::Tensor y = empty_like_format(input, d.batch, d.out_channels, d.out_size[0], d.out_size[1]);
  const bool cl = channels_last(y);
  if (y.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_depthwise2d_cuda", [&] {
      forward_kernel<scalar_t><<<blocks_for(y.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          frame_of(x, cl), frame_of(y, cl), geometry_of(d), x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          has_bias ? b.const_data_ptr<scalar_t>() : nullptr, y.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return d.batched ? y : y.squeeze(0);
}

at::Tensor depthwise2d_input_backward(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dIntDims& d) {
  c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor gy = batched(grad_output, d);
  const at::Tensor w = weight.contiguous();
  at::Tensor gx = empty_like_format(grad_output, d.batch, d.in_channels, d.in_size[0], d.in_size[1]);
  const bool cl = channels_last(gx);
  if (gx.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "fastconv_depthwise2d_input_backward_cuda", [&] {
      input_backward_kernel<scalar_t><<<blocks_for(gx.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          frame_of(gy, cl), frame_of(gx, cl), geometry_of(d), gy.const_data_ptr<scalar_t>(),
          w.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return d.batched ? gx : gx.squeeze(0);
}

at::Tensor depthwise2d_weight_backward(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dIntDims& d) {
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor gy = batched(grad_output, d);
  const at::Tensor x = batched(input, d);
  const int64_t taps = d.kernel_size[0] * d.kernel_size[1];
  at::Tensor gw = at::empty({d.out_channels, 1, d.kernel_size[0], d.kernel_size[1]},
                            x.options().dtype(at::toOpMathType(x.scalar_type())));
  if (gw.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_depthwise2d_weight_backward_cuda", [&] {
      weight_backward_kernel<scalar_t><<<d.out_channels * taps, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          frame_of(gy, false), frame_of(x, false), geometry_of(d), gy.const_data_ptr<scalar_t>(),
          x.const_data_ptr<scalar_t>(), gw.mutable_data_ptr<at::opmath_type<scalar_t>>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return gw.to(x.scalar_type());
}

}  // namespace fastconv::cuda
