// Causal depthwise conv1d on CUDA: forward, backward and the decoding update,
// with the CPU kernels' semantics (cpu/causal_kernel.cpp) and layouts: x is
// read in place when contiguous or channels-last (x.stride(1) == 1), the
// output takes x's layout, and consecutive threads take consecutive elements
// of it (coalesced). One thread per output element; the weight gradient is a
// block reduction per (channel, tap). Accumulates in at::opmath_type; current
// stream; 64-bit indexing.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>

#include "fastconv/causal_layout.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 30;

int64_t blocks_for(int64_t n) { return std::min((n + kThreads - 1) / kThreads, kMaxBlocks); }

// Strides of the (B, C, L) tensors a kernel touches, and the thread order:
// element idx is (b, c, t) with t fastest (time layout) or c fastest.
struct Layout {
  int64_t B, C, L;
  bool channels_fastest;
  __device__ void split(int64_t idx, int64_t& b, int64_t& c, int64_t& t, int64_t length) const {
    if (channels_fastest) {
      c = idx % C;
      t = (idx / C) % length;
      b = idx / (C * length);
    } else {
      t = idx % length;
      c = (idx / length) % C;
      b = idx / (C * length);
    }
  }
};

struct Strides {
  int64_t b, c, t;
};

Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// The operands, read by strides in the accumulation type.
template <typename scalar_t>
struct Args {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  Strides xs;
  const scalar_t* state;  // (B, C, H) contiguous, or nullptr
  const scalar_t* w;      // (C, K) contiguous
  const scalar_t* bias;   // (C,) or nullptr
  const int32_t* seq;     // (B, L) contiguous, or nullptr
  int64_t L, K, dilation, H;
  bool silu;

  __device__ acc_t at(int64_t b, int64_t c, int64_t C, int64_t p) const {
    if (p >= 0) return static_cast<acc_t>(x[b * xs.b + c * xs.c + p * xs.t]);
    return state ? static_cast<acc_t>(state[(b * C + c) * H + H + p]) : acc_t(0);
  }
  // The first position output t may read: the start of its sequence, or
  // below every position when that is the first sequence (the state's).
  __device__ int64_t low(int64_t b, int64_t t) const {
    if (seq == nullptr) return LLONG_MIN;
    const int32_t* s = seq + b * L;
    int64_t lo = t;
    while (lo > t - H && lo > 0 && s[lo - 1] == s[lo]) --lo;
    return lo == 0 || lo == t - H ? LLONG_MIN : lo;
  }
  __device__ acc_t pre(int64_t b, int64_t c, int64_t C, int64_t t) const {
    const int64_t lo = low(b, t);
    acc_t acc = bias ? static_cast<acc_t>(bias[c]) : acc_t(0);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t p = t - dilation * (K - 1 - k);
      if (p >= lo) acc += static_cast<acc_t>(w[c * K + k]) * at(b, c, C, p);
    }
    return acc;
  }
};

template <typename acc_t>
__device__ acc_t sigmoid(acc_t v) {
  return acc_t(1) / (acc_t(1) + ::exp(-v));
}

template <typename scalar_t>
__global__ void forward_kernel(Args<scalar_t> a, Layout lay, scalar_t* y, Strides ys) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = lay.B * lay.C * lay.L;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t b, c, t;
    lay.split(idx, b, c, t, lay.L);
    const acc_t v = a.pre(b, c, lay.C, t);
    y[b * ys.b + c * ys.c + t * ys.t] = static_cast<scalar_t>(a.silu ? v * sigmoid(v) : v);
  }
}

// final[b][c][i] = xs[L - H + i].
template <typename scalar_t>
__global__ void final_state_kernel(Args<scalar_t> a, int64_t B, int64_t C, scalar_t* out) {
  const int64_t total = B * C * a.H;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx % a.H, c = (idx / a.H) % C, b = idx / (a.H * C);
    out[idx] = static_cast<scalar_t>(a.at(b, c, C, a.L - a.H + i));
  }
}

// g = grad_output * act'(pre), in the accumulation type, laid out as gy.
template <typename scalar_t>
__global__ void grad_pre_kernel(Args<scalar_t> a, Layout lay, const scalar_t* gy, Strides gs,
                                at::opmath_type<scalar_t>* g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = lay.B * lay.C * lay.L;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t b, c, t;
    lay.split(idx, b, c, t, lay.L);
    const int64_t at = b * gs.b + c * gs.c + t * gs.t;
    acc_t v = static_cast<acc_t>(gy[at]);
    if (a.silu) {
      const acc_t p = a.pre(b, c, lay.C, t), s = sigmoid(p);
      v *= s * (acc_t(1) + p * (acc_t(1) - s));
    }
    g[at] = v;
  }
}

// grad_xs[p] = sum_k w[K-1-k] g[p + k d] over outputs that read p, for p in
// [-H, L): into grad_x (p >= 0, x's layout) and grad_state (p < 0).
template <typename scalar_t>
__global__ void grad_input_kernel(Args<scalar_t> a, Layout lay, const at::opmath_type<scalar_t>* g, Strides gs,
                                  scalar_t* gx, scalar_t* gstate) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t span = a.L + a.H;
  const int64_t total = lay.B * lay.C * span;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t b, c, i;
    lay.split(idx, b, c, i, span);
    const int64_t p = i - a.H;
    acc_t acc = 0;
    for (int64_t k = 0; k < a.K; ++k) {
      const int64_t t = p + k * a.dilation;
      if (t < 0 || t >= a.L || a.low(b, t) > p) continue;
      acc += static_cast<acc_t>(a.w[c * a.K + a.K - 1 - k]) * g[b * gs.b + c * gs.c + t * gs.t];
    }
    if (p >= 0) {
      gx[b * gs.b + c * gs.c + p * gs.t] = static_cast<scalar_t>(acc);
    } else if (gstate) {
      gstate[(b * lay.C + c) * a.H + a.H + p] = static_cast<scalar_t>(acc);
    }
  }
}

// One block per (channel, tap); tap K is the bias: sums over (b, t).
template <typename scalar_t>
__global__ void grad_weight_kernel(Args<scalar_t> a, Layout lay, const at::opmath_type<scalar_t>* g, Strides gs,
                                   at::opmath_type<scalar_t>* gw, at::opmath_type<scalar_t>* gb) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  const int64_t c = blockIdx.x / (a.K + 1), k = blockIdx.x % (a.K + 1);
  acc_t acc = 0;
  for (int64_t j = threadIdx.x; j < lay.B * a.L; j += blockDim.x) {
    const int64_t b = j / a.L, t = j % a.L;
    const acc_t gv = g[b * gs.b + c * gs.c + t * gs.t];
    if (k == a.K) {
      acc += gv;
      continue;
    }
    const int64_t p = t - a.dilation * (a.K - 1 - k);
    if (p >= a.low(b, t)) acc += gv * a.at(b, c, lay.C, p);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) (k == a.K ? gb[c] : gw[c * a.K + k]) = partial[0];
}

template <typename scalar_t>
Args<scalar_t> make_args(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& state,
                         const at::Tensor& seq, int64_t dilation, bool silu) {
  return Args<scalar_t>{x.const_data_ptr<scalar_t>(), strides_of(x),
                        state.defined() ? state.const_data_ptr<scalar_t>() : nullptr, w.const_data_ptr<scalar_t>(),
                        b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                        seq.defined() ? seq.const_data_ptr<int32_t>() : nullptr, x.size(2), w.size(1), dilation,
                        dilation * (w.size(1) - 1), silu};
}

at::Tensor contiguous_or_none(const std::optional<at::Tensor>& t) {
  return t && t->defined() ? t->contiguous() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor> causal_conv1d_cuda(
    const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& initial_state, const std::optional<at::Tensor>& seq_idx,
    std::optional<c10::string_view> activation, c10::SymInt dilation) {
  const auto d = check_causal_conv1d(x_in, weight, bias, initial_state, seq_idx, activation, dilation);
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = causal_readable(x_in);
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2), K = weight.size(1), dil = dilation.expect_int();
  at::Tensor y = causal_empty_like(x, x.sizes(), x.options());
  at::Tensor fs = at::empty({B, C, dil * (K - 1)}, x.options());
  const at::Tensor w = weight.contiguous(), b = contiguous_or_none(bias), s = contiguous_or_none(initial_state);
  const at::Tensor q = contiguous_or_none(seq_idx);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_causal_conv1d_cuda", [&] {
    const auto a = make_args<scalar_t>(x, w, b, s, q, dil, d.silu);
    const Layout lay{B, C, L, causal_channels_last(x)};
    if (y.numel() > 0) {
      forward_kernel<scalar_t><<<blocks_for(y.numel()), kThreads, 0, stream>>>(a, lay, y.mutable_data_ptr<scalar_t>(),
                                                                               strides_of(y));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (fs.numel() > 0) {
      final_state_kernel<scalar_t><<<blocks_for(fs.numel()), kThreads, 0, stream>>>(a, B, C,
                                                                                     fs.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {y, fs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> causal_conv1d_backward_cuda(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_final_state, const at::Tensor& x_in,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& initial_state,
    const std::optional<at::Tensor>& seq_idx, std::optional<c10::string_view> activation, c10::SymInt dilation) {
  const auto d = check_causal_conv1d_backward(grad_output, grad_final_state, x_in, weight, bias, initial_state,
                                              seq_idx, activation, dilation);
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = causal_readable(x_in);
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2), K = weight.size(1), dil = dilation.expect_int();
  const int64_t H = dil * (K - 1);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor gy = causal_in_layout(grad_output, x);
  at::Tensor gx = causal_empty_like(x, x.sizes(), x.options());
  at::Tensor gstate = at::zeros({B, C, H}, x.options());
  at::Tensor gw = at::zeros({C, K}, x.options().dtype(acc_type)), gb = at::zeros({C}, x.options().dtype(acc_type));
  const at::Tensor w = weight.contiguous(), b = contiguous_or_none(bias), s = contiguous_or_none(initial_state);
  const at::Tensor q = contiguous_or_none(seq_idx);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (x.numel() > 0) {
    const at::Tensor g = causal_empty_like(x, x.sizes(), x.options().dtype(acc_type));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_causal_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto a = make_args<scalar_t>(x, w, b, s, q, dil, d.silu);
      const Layout lay{B, C, L, causal_channels_last(x)};
      grad_pre_kernel<scalar_t><<<blocks_for(B * C * L), kThreads, 0, stream>>>(
          a, lay, gy.const_data_ptr<scalar_t>(), strides_of(gy), g.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      grad_input_kernel<scalar_t><<<blocks_for(B * C * (L + H)), kThreads, 0, stream>>>(
          a, lay, g.const_data_ptr<acc_t>(), strides_of(g), gx.mutable_data_ptr<scalar_t>(),
          H > 0 ? gstate.mutable_data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      grad_weight_kernel<scalar_t><<<C * (K + 1), kThreads, 0, stream>>>(
          a, lay, g.const_data_ptr<acc_t>(), strides_of(g), gw.mutable_data_ptr<acc_t>(), gb.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (grad_final_state && grad_final_state->defined()) {
    causal_add_final_state_grad(gx, gstate, *grad_final_state, L, H);
  }
  return {gx, gw.to(x.scalar_type()), gb.to(x.scalar_type()), gstate};
}

// One thread per (b, c): the steps before x from the state (shift register
// or ring buffer), the outputs, then the state's update. A row whose index
// is outside conv_state gets zeros and changes nothing (no synchronising check).
template <typename scalar_t>
__global__ void update_kernel(const scalar_t* x, int64_t xb, int64_t xc, int64_t xt, scalar_t* state, int64_t sb,
                              int64_t sc, int64_t st, const scalar_t* w, const scalar_t* bias, scalar_t* y,
                              const int32_t* seqlens, const int32_t* indices, int64_t B, int64_t C, int64_t T,
                              int64_t S, int64_t SB, int64_t K, bool silu) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < B * C; r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = r / C, c = r % C;
    const int64_t sbi = indices ? indices[b] : b;
    if (sbi < 0 || sbi >= SB) {
      for (int64_t t = 0; t < T; ++t) y[(b * C + c) * T + t] = scalar_t(0);
      continue;
    }
    scalar_t* srow = state + sbi * sb + c * sc;
    const int64_t head = seqlens ? seqlens[b] : 0;
    // Step q of the sequence [state (S steps), x (T steps)].
    auto step = [&](int64_t q) -> acc_t {
      if (q >= S) return static_cast<acc_t>(x[b * xb + c * xc + (q - S) * xt]);
      const int64_t slot = seqlens ? ((head + q) % S + S) % S : q;
      return static_cast<acc_t>(srow[slot * st]);
    };
    for (int64_t t = 0; t < T; ++t) {
      acc_t acc = bias ? static_cast<acc_t>(bias[c]) : acc_t(0);
      for (int64_t k = 0; k < K; ++k) acc += static_cast<acc_t>(w[c * K + k]) * step(S + t - (K - 1) + k);
      y[(b * C + c) * T + t] = static_cast<scalar_t>(silu ? acc * sigmoid(acc) : acc);
    }
    if (seqlens) {
      for (int64_t t = T > S ? T - S : 0; t < T; ++t) srow[(((head + t) % S + S) % S) * st] = x[b * xb + c * xc + t * xt];
    } else {
      // In place, oldest first: step i + T moves to slot i.
      for (int64_t i = 0; i < S; ++i) {
        srow[i * st] = i + T < S ? srow[(i + T) * st] : x[b * xb + c * xc + (i + T - S) * xt];
      }
    }
  }
}

at::Tensor causal_conv1d_update_cuda(
    const at::Tensor& x, const at::Tensor& conv_state, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    std::optional<c10::string_view> activation, const std::optional<at::Tensor>& cache_seqlens,
    const std::optional<at::Tensor>& conv_state_indices) {
  const auto d = check_causal_conv1d_update(x, conv_state, weight, bias, activation, cache_seqlens,
                                            conv_state_indices);
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), T = x.dim() == 3 ? x.size(2) : 1, K = weight.size(1);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const at::Tensor x3 = x.dim() == 3 ? x : x.unsqueeze(2);
  const at::Tensor w = weight.contiguous(), b = contiguous_or_none(bias);
  const at::Tensor sl = contiguous_or_none(cache_seqlens), idx = contiguous_or_none(conv_state_indices);
  if (y.numel() == 0) return y;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_causal_update_cuda", [&] {
    update_kernel<scalar_t><<<blocks_for(B * C), kThreads, 0, stream>>>(
        x3.const_data_ptr<scalar_t>(), x3.stride(0), x3.stride(1), x3.stride(2), conv_state.mutable_data_ptr<scalar_t>(),
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), w.const_data_ptr<scalar_t>(),
        b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, y.mutable_data_ptr<scalar_t>(),
        sl.defined() ? sl.const_data_ptr<int32_t>() : nullptr, idx.defined() ? idx.const_data_ptr<int32_t>() : nullptr,
        B, C, T, conv_state.size(2), conv_state.size(0), K, d.silu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("causal_conv1d", &causal_conv1d_cuda);
  m.impl("causal_conv1d_backward", &causal_conv1d_backward_cuda);
  m.impl("causal_conv1d_update", &causal_conv1d_update_cuda);
}

}  // namespace fastconv
