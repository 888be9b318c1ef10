// Direct conv1d on CUDA: forward, grad_input and grad_weight.
//
// Forward and grad_input are one gather convolution (conv1d_geometry.h). A
// block of gather_conv_kernel computes kTileL positions x kTileOC output
// channels of one sample and group; input channels and taps go through in
// stages whose input rows (the tile plus its halo, upsampled and
// zero-padded) and weights are staged in shared memory in the accumulation
// type, and every thread keeps kChannelsPerThread x kPositionsPerThread sums
// in registers. Rows with one input and one output channel per group
// (depthwise, single channel) take row_conv_kernel: a long tile of one row,
// with the taps of small kernels unrolled at compile time. grad_weight
// reduces over (sample, position) tiles: each block writes the partial sums
// of its share to a workspace that at::sum adds up in a fixed order, so the
// result does not depend on scheduling. Where a stage's input span would not
// fit shared memory (very large stride or dilation) the input is read
// through the cache instead. Accumulation in at::opmath_type (float for
// 16-bit types); current stream; 64-bit global indexing.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "fastconv/autotune.h"
#include "fastconv/conv1d_geometry.h"
#include "fastconv/conv1d_paths.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

constexpr int kThreads = 256;
// Shared memory for a stage's input rows; the rest of the 48 KiB a block may
// use without opting in holds its weights.
constexpr int64_t kStageBytes = 24 << 10;
// Blocks launched at most; blocks loop over the work beyond (grid stride).
constexpr int64_t kMaxBlocks = int64_t(1) << 30;

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// up[i] of one input row (see conv1d_geometry.h).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t read_up(const Conv1dGeometry& g, const scalar_t* __restrict__ row, int64_t i) {
  if (g.in_dilation != 1) {
    if (i < 0 || i % g.in_dilation != 0) return acc_t(0);
    i /= g.in_dilation;
  }
  return i >= 0 && i < g.in_length ? static_cast<acc_t>(row[i]) : acc_t(0);
}

// Input positions a stage of `taps` taps reads for `positions` outputs.
int64_t stage_span(const Conv1dGeometry& g, int64_t positions, int64_t taps) {
  return (positions - 1) * g.stride + (taps - 1) * g.dilation + 1;
}

// Taps per stage: up to max_taps, as many as let `channels` input rows of
// the stage fit kStageBytes; 0 if not even one tap does (read unstaged).
int64_t stage_taps(const Conv1dGeometry& g, int64_t positions, int64_t channels, int64_t max_taps,
                   int64_t elem) {
  for (int64_t t = std::min(max_taps, g.kernel_size); t >= 1; t = t > 1 ? t / 2 : 0) {
    if (stage_span(g, positions, t) * channels * elem <= kStageBytes) return t;
    if (t == 1) break;
  }
  return 0;
}

// ---- general gather convolution

constexpr int kThreadsX = 32, kThreadsY = kThreads / kThreadsX;
constexpr int kPositionsPerThread = 4, kChannelsPerThread = 2;
constexpr int kTileL = kThreadsX * kPositionsPerThread;       // 128 positions
constexpr int kTileOC = kThreadsY * kChannelsPerThread;       // 16 output channels
constexpr int kStageChannels = 4;                             // input channels per stage
constexpr int kMaxStageTaps = 32;

template <typename scalar_t, bool kStaged>
__global__ void __launch_bounds__(kThreads) gather_conv_kernel(
    Conv1dGeometry g, int taps_per_stage, int span, const scalar_t* __restrict__ in,
    const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem[];
  acc_t* ws = reinterpret_cast<acc_t*>(smem);                 // [kTileOC][kStageChannels][taps_per_stage]
  acc_t* xs = ws + kTileOC * kStageChannels * taps_per_stage;  // [kStageChannels][span]
  const int64_t cin_g = g.cin_g(), cout_g = g.cout_g(), K = g.kernel_size;
  const int64_t l_tiles = ceil_div(g.out_length, kTileL), oc_tiles = ceil_div(cout_g, kTileOC);
  const int64_t blocks = g.batch * g.groups * oc_tiles * l_tiles;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kThreadsX + tx;
  for (int64_t item = blockIdx.x; item < blocks; item += gridDim.x) {
    const int64_t l0 = item % l_tiles * kTileL;
    const int64_t oc0 = item / l_tiles % oc_tiles * kTileOC;
    const int64_t grp = item / (l_tiles * oc_tiles) % g.groups, b = item / (l_tiles * oc_tiles * g.groups);
    acc_t acc[kChannelsPerThread][kPositionsPerThread];
    for (int r = 0; r < kChannelsPerThread; ++r) {
      const int64_t oc = oc0 + ty + r * kThreadsY;
      const acc_t init = bias != nullptr && oc < cout_g ? static_cast<acc_t>(bias[grp * cout_g + oc]) : acc_t(0);
      for (int p = 0; p < kPositionsPerThread; ++p) acc[r][p] = init;
    }
    const int64_t base = l0 * g.stride - g.pad;  // up position of tap 0 for the tile's first output
    for (int64_t ic0 = 0; ic0 < cin_g; ic0 += kStageChannels) {
      const int nc = static_cast<int>(std::min<int64_t>(kStageChannels, cin_g - ic0));
      const scalar_t* rows = in + (b * g.in_channels + grp * cin_g + ic0) * g.in_length;
      for (int64_t k0 = 0; k0 < K; k0 += taps_per_stage) {
        const int nk = static_cast<int>(std::min<int64_t>(taps_per_stage, K - k0));
        const int64_t start = base + k0 * g.dilation;
        __syncthreads();  // every thread is done with the previous stage
        for (int i = tid; i < kTileOC * nc * nk; i += kThreads) {
          const int o = i / (nc * nk), c = i / nk % nc, kk = i % nk;
          const int64_t oc = oc0 + o;
          ws[(o * kStageChannels + c) * taps_per_stage + kk] =
              oc < cout_g ? static_cast<acc_t>(w[((grp * cout_g + oc) * cin_g + ic0 + c) * K + k0 + kk]) : acc_t(0);
        }
        if constexpr (kStaged) {
          for (int i = tid; i < nc * span; i += kThreads) {
            const int c = i / span, j = i % span;
            xs[c * span + j] = read_up<acc_t>(g, rows + c * g.in_length, start + j);
          }
        }
        __syncthreads();
        for (int c = 0; c < nc; ++c) {
          for (int kk = 0; kk < nk; ++kk) {
            acc_t wv[kChannelsPerThread];
#pragma unroll
            for (int r = 0; r < kChannelsPerThread; ++r) {
              wv[r] = ws[((ty + r * kThreadsY) * kStageChannels + c) * taps_per_stage + kk];
            }
#pragma unroll
            for (int p = 0; p < kPositionsPerThread; ++p) {
              const int64_t j = (tx + p * kThreadsX) * g.stride + kk * g.dilation;
              acc_t xv;
              if constexpr (kStaged) {
                xv = xs[c * span + j];
              } else {
                xv = read_up<acc_t>(g, rows + c * g.in_length, start + j);
              }
#pragma unroll
              for (int r = 0; r < kChannelsPerThread; ++r) acc[r][p] += wv[r] * xv;
            }
          }
        }
      }
    }
    for (int r = 0; r < kChannelsPerThread; ++r) {
      const int64_t oc = oc0 + ty + r * kThreadsY;
      if (oc >= cout_g) continue;
      scalar_t* dst = out + (b * g.out_channels + grp * cout_g + oc) * g.out_length;
      for (int p = 0; p < kPositionsPerThread; ++p) {
        const int64_t l = l0 + tx + p * kThreadsX;
        if (l < g.out_length) dst[l] = static_cast<scalar_t>(acc[r][p]);
      }
    }
  }
}

// ---- one input and one output channel per group: a row at a time

constexpr int kRowPositionsPerThread = 4;
constexpr int kRowTile = kThreads * kRowPositionsPerThread;  // 1024 positions
constexpr int kMaxRowStageTaps = 256;

// KFixed > 0: the kernel has exactly KFixed taps (one stage, unrolled).
template <typename scalar_t, int KFixed, bool kStaged>
__global__ void __launch_bounds__(kThreads) row_conv_kernel(
    Conv1dGeometry g, int taps_per_stage, int span, const scalar_t* __restrict__ in,
    const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem[];
  acc_t* ws = reinterpret_cast<acc_t*>(smem);  // [taps_per_stage]
  acc_t* xs = ws + taps_per_stage;             // [span]
  const int64_t K = KFixed > 0 ? KFixed : g.kernel_size;
  const int64_t l_tiles = ceil_div(g.out_length, kRowTile);
  const int64_t blocks = g.batch * g.out_channels * l_tiles;
  const int tid = threadIdx.x;
  for (int64_t item = blockIdx.x; item < blocks; item += gridDim.x) {
    const int64_t l0 = item % l_tiles * kRowTile, row = item / l_tiles;  // row = b * C + channel
    const int64_t channel = row % g.out_channels;
    const scalar_t* src = in + row * g.in_length;  // one input channel per output channel
    const acc_t init = bias != nullptr ? static_cast<acc_t>(bias[channel]) : acc_t(0);
    acc_t acc[kRowPositionsPerThread];
    for (int p = 0; p < kRowPositionsPerThread; ++p) acc[p] = init;
    const int64_t base = l0 * g.stride - g.pad;
    for (int64_t k0 = 0; k0 < K; k0 += taps_per_stage) {
      const int nk = KFixed > 0 ? KFixed : static_cast<int>(std::min<int64_t>(taps_per_stage, K - k0));
      const int64_t start = base + k0 * g.dilation;
      __syncthreads();
      for (int i = tid; i < nk; i += kThreads) ws[i] = static_cast<acc_t>(w[channel * K + k0 + i]);
      if constexpr (kStaged) {
        for (int j = tid; j < span; j += kThreads) xs[j] = read_up<acc_t>(g, src, start + j);
      }
      __syncthreads();
      auto tap = [&](int kk) {
        const acc_t wv = ws[kk];
        for (int p = 0; p < kRowPositionsPerThread; ++p) {
          const int64_t j = (tid + p * kThreads) * g.stride + kk * g.dilation;
          if constexpr (kStaged) {
            acc[p] += wv * xs[j];
          } else {
            acc[p] += wv * read_up<acc_t>(g, src, start + j);
          }
        }
      };
      if constexpr (KFixed > 0) {
#pragma unroll
        for (int kk = 0; kk < KFixed; ++kk) tap(kk);
      } else {
        for (int kk = 0; kk < nk; ++kk) tap(kk);
      }
    }
    scalar_t* dst = out + row * g.out_length;
    for (int p = 0; p < kRowPositionsPerThread; ++p) {
      const int64_t l = l0 + tid + p * kThreads;
      if (l < g.out_length) dst[l] = static_cast<scalar_t>(acc[p]);
    }
  }
}

int64_t grid_for(int64_t blocks) { return std::clamp<int64_t>(blocks, 1, kMaxBlocks); }

// out = gather convolution of in with w ([C_out][cin_g][K]) plus bias, on the current stream.
template <typename scalar_t>
void launch_gather(const Conv1dGeometry& g, const scalar_t* in, const scalar_t* w, const scalar_t* bias,
                   scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (g.batch * g.out_channels * g.out_length == 0) return;
  if (g.cin_g() == 1 && g.cout_g() == 1) {
    const int64_t staged = stage_taps(g, kRowTile, 1, kMaxRowStageTaps, sizeof(acc_t));
    const int64_t taps = staged > 0 ? staged : std::min<int64_t>(g.kernel_size, kMaxRowStageTaps);
    const int span = staged > 0 ? static_cast<int>(stage_span(g, kRowTile, taps)) : 0;
    const size_t smem = (taps + span) * sizeof(acc_t);
    const int64_t blocks = grid_for(g.batch * g.out_channels * ceil_div(g.out_length, kRowTile));
    auto launch = [&](auto kernel) {
      kernel<<<blocks, kThreads, smem, stream>>>(g, static_cast<int>(taps), span, in, w, bias, out);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (staged == 0) return launch(row_conv_kernel<scalar_t, 0, false>);
    // The unrolled kernels take all taps in one stage.
    if (staged < g.kernel_size) return launch(row_conv_kernel<scalar_t, 0, true>);
    switch (g.kernel_size) {
      case 2: return launch(row_conv_kernel<scalar_t, 2, true>);
      case 3: return launch(row_conv_kernel<scalar_t, 3, true>);
      case 4: return launch(row_conv_kernel<scalar_t, 4, true>);
      default: return launch(row_conv_kernel<scalar_t, 0, true>);
    }
  }
  const int64_t staged = stage_taps(g, kTileL, kStageChannels, kMaxStageTaps, sizeof(acc_t));
  const int64_t taps = staged > 0 ? staged : std::min<int64_t>(g.kernel_size, kMaxStageTaps);
  const int span = staged > 0 ? static_cast<int>(stage_span(g, kTileL, taps)) : 0;
  const size_t smem = (kTileOC * kStageChannels * taps + kStageChannels * span) * sizeof(acc_t);
  const int64_t blocks = grid_for(g.batch * g.groups * ceil_div(g.cout_g(), kTileOC) * ceil_div(g.out_length, kTileL));
  const dim3 threads(kThreadsX, kThreadsY);
  if (staged > 0) {
    gather_conv_kernel<scalar_t, true><<<blocks, threads, smem, stream>>>(g, static_cast<int>(taps), span, in, w, bias, out);
  } else {
    gather_conv_kernel<scalar_t, false><<<blocks, threads, smem, stream>>>(g, static_cast<int>(taps), 0, in, w, bias, out);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- weight gradient

constexpr int kWgTileL = 128;                   // positions per stage
constexpr int kWgOC = 16, kWgIC = 4, kWgTaps = 32;
constexpr int kWgPairsPerThread = kWgOC * kWgIC * kWgTaps / kThreads;  // 8

// partial[split][oc][icg][k] = sum over the split's (sample, position tile)
// items of gy[b][oc][l] * up[b][ic][l * stride + k * dilation - pad].
template <typename scalar_t, bool kStaged>
__global__ void __launch_bounds__(kThreads) weight_grad_kernel(
    Conv1dGeometry g, int taps_per_stage, int span, int64_t splits, const scalar_t* __restrict__ gy,
    const scalar_t* __restrict__ in, at::opmath_type<scalar_t>* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem[];
  acc_t* gs = reinterpret_cast<acc_t*>(smem);  // [kWgOC][kWgTileL]
  acc_t* xs = gs + kWgOC * kWgTileL;           // [kWgIC][span]; then the reduction's kThreads values
  const int64_t cin_g = g.cin_g(), cout_g = g.cout_g(), K = g.kernel_size;
  const int64_t oc_tiles = ceil_div(cout_g, kWgOC), ic_tiles = ceil_div(cin_g, kWgIC);
  const int64_t k_tiles = ceil_div(K, taps_per_stage);
  const int64_t weight_tiles = g.groups * oc_tiles * ic_tiles * k_tiles;
  const int64_t l_tiles = ceil_div(g.out_length, kWgTileL), items = g.batch * l_tiles;
  const int64_t weight_numel = g.out_channels * cin_g * K;
  const int tid = threadIdx.x;
  for (int64_t block = blockIdx.x; block < weight_tiles * splits; block += gridDim.x) {
    const int64_t split = block / weight_tiles, wt = block % weight_tiles;
    const int64_t k0 = wt % k_tiles * taps_per_stage;
    const int64_t ic0 = wt / k_tiles % ic_tiles * kWgIC;
    const int64_t oc0 = wt / (k_tiles * ic_tiles) % oc_tiles * kWgOC;
    const int64_t grp = wt / (k_tiles * ic_tiles * oc_tiles);
    const int no = static_cast<int>(std::min<int64_t>(kWgOC, cout_g - oc0));
    const int nc = static_cast<int>(std::min<int64_t>(kWgIC, cin_g - ic0));
    const int nk = static_cast<int>(std::min<int64_t>(taps_per_stage, K - k0));
    // Thread -> (oc, icg, k) combos; with fewer combos than threads, threads
    // split the positions (slices) and their sums are added at the end.
    const int pairs = no * nc * nk;
    const int slices = pairs >= kThreads ? 1 : kThreads / pairs;
    const int slice = tid / pairs;
    acc_t acc[kWgPairsPerThread] = {};
    const int64_t first = split * items / splits, last = (split + 1) * items / splits;
    for (int64_t it = first; it < last; ++it) {
      const int64_t b = it / l_tiles, l0 = it % l_tiles * kWgTileL;
      const int nl = static_cast<int>(std::min<int64_t>(kWgTileL, g.out_length - l0));
      const int64_t start = l0 * g.stride - g.pad + k0 * g.dilation;
      const scalar_t* rows = in + (b * g.in_channels + grp * cin_g + ic0) * g.in_length;
      __syncthreads();
      for (int i = tid; i < no * kWgTileL; i += kThreads) {
        const int o = i / kWgTileL, l = i % kWgTileL;
        gs[i] = l < nl ? static_cast<acc_t>(gy[(b * g.out_channels + grp * cout_g + oc0 + o) * g.out_length + l0 + l])
                       : acc_t(0);
      }
      if constexpr (kStaged) {
        for (int i = tid; i < nc * span; i += kThreads) {
          const int c = i / span, j = i % span;
          xs[i] = read_up<acc_t>(g, rows + c * g.in_length, start + j);
        }
      }
      __syncthreads();
      if (slice < slices) {
        for (int q = 0; q < kWgPairsPerThread; ++q) {
          const int pair = slices > 1 ? tid % pairs : tid + q * kThreads;
          if (pair >= pairs || (slices > 1 && q > 0)) break;
          const int o = pair / (nc * nk), c = pair / nk % nc, kk = pair % nk;
          acc_t sum = 0;
          for (int l = slices > 1 ? slice : 0; l < nl; l += slices) {
            const int64_t j = int64_t(l) * g.stride + kk * g.dilation;
            acc_t x;
            if constexpr (kStaged) {
              x = xs[c * span + j];
            } else {
              x = read_up<acc_t>(g, rows + c * g.in_length, start + j);
            }
            sum += gs[o * kWgTileL + l] * x;
          }
          acc[q] += sum;
        }
      }
    }
    acc_t* out = partial + split * weight_numel;
    if (slices == 1) {
      for (int q = 0; q < kWgPairsPerThread; ++q) {
        const int pair = tid + q * kThreads;
        if (pair >= pairs) break;
        const int o = pair / (nc * nk), c = pair / nk % nc, kk = pair % nk;
        out[((grp * cout_g + oc0 + o) * cin_g + ic0 + c) * K + k0 + kk] = acc[q];
      }
    } else {
      acc_t* red = xs + (kStaged ? kWgIC * span : 0);
      __syncthreads();
      red[tid] = slice < slices ? acc[0] : acc_t(0);
      __syncthreads();
      if (tid < pairs) {
        acc_t sum = 0;
        for (int s = 0; s < slices; ++s) sum += red[s * pairs + tid];
        const int o = tid / (nc * nk), c = tid / nk % nc, kk = tid % nk;
        out[((grp * cout_g + oc0 + o) * cin_g + ic0 + c) * K + k0 + kk] = sum;
      }
    }
  }
}

// grad_weight in the accumulation type, [C_out][cin_g][K].
template <typename scalar_t>
at::Tensor weight_grad(const Conv1dGeometry& g, const at::Tensor& gy, const at::Tensor& x) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_options = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const int64_t weight_numel = g.out_channels * g.cin_g() * g.kernel_size;
  const int64_t items = g.batch * ceil_div(g.out_length, kWgTileL);
  if (items == 0) return at::zeros({weight_numel}, acc_options);
  const int64_t staged = stage_taps(g, kWgTileL, kWgIC, kWgTaps, sizeof(acc_t));
  const int64_t taps = staged > 0 ? staged : std::min<int64_t>(g.kernel_size, kWgTaps);
  const int span = staged > 0 ? static_cast<int>(stage_span(g, kWgTileL, taps)) : 0;
  const int64_t weight_tiles = g.groups * ceil_div(g.cout_g(), kWgOC) * ceil_div(g.cin_g(), kWgIC) *
      ceil_div(g.kernel_size, taps);
  // Enough blocks to fill the device a few times over; each split adds a
  // copy of the weight to the workspace.
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  const int64_t target = 4 * int64_t(sms);
  const int64_t splits = std::clamp<int64_t>(ceil_div(target, weight_tiles), 1, items);
  at::Tensor partial = at::empty({splits, weight_numel}, acc_options);
  const size_t smem = (kWgOC * kWgTileL + std::max<int64_t>(kWgIC * span + kThreads, kThreads)) * sizeof(acc_t);
  const int64_t blocks = grid_for(weight_tiles * splits);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (staged > 0) {
    weight_grad_kernel<scalar_t, true><<<blocks, kThreads, smem, stream>>>(
        g, static_cast<int>(taps), span, splits, gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        partial.mutable_data_ptr<acc_t>());
  } else {
    weight_grad_kernel<scalar_t, false><<<blocks, kThreads, smem, stream>>>(
        g, static_cast<int>(taps), 0, splits, gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        partial.mutable_data_ptr<acc_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partial.sum(0);
}

// ---- operators: the direct kernels, for Conv1dPaths (conv1d_paths.h)

struct CudaDirect {
  static at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const Conv1dIntDims& d, const Conv1dSymDims& sym) {
    c10::cuda::CUDAGuard guard(input.device());
    const at::Tensor x = input.contiguous();
    const at::Tensor w = weight.contiguous();
    const bool has_bias = bias.has_value() && bias->defined();
    const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
    at::Tensor y = at::empty_symint(conv1d_output_shape(sym), input.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv1d_cuda", [&] {
          launch_gather<scalar_t>(forward_geometry(d), x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                  has_bias ? b.const_data_ptr<scalar_t>() : nullptr, y.mutable_data_ptr<scalar_t>());
        });
    return y;
  }

  static at::Tensor input_backward(const at::Tensor& grad_output, const at::Tensor& weight, const Conv1dIntDims& d,
                                   const Conv1dSymDims& sym) {
    c10::cuda::CUDAGuard guard(grad_output.device());
    const at::Tensor gy = grad_output.contiguous();
    const at::Tensor wt = input_backward_weight(weight, d.groups);
    at::Tensor gx = at::empty_symint(conv1d_input_shape(sym), gy.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, gy.scalar_type(), "fastconv_conv1d_input_backward_cuda", [&] {
          launch_gather<scalar_t>(input_backward_geometry(d), gy.const_data_ptr<scalar_t>(),
                                  wt.const_data_ptr<scalar_t>(), nullptr, gx.mutable_data_ptr<scalar_t>());
        });
    return gx;
  }

  // The bias gradient, when wanted, is a sum over grad_output.
  static std::tuple<at::Tensor, at::Tensor> weight_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                            const Conv1dIntDims& d, const Conv1dSymDims& sym,
                                                            bool with_bias) {
    c10::cuda::CUDAGuard guard(input.device());
    const at::Tensor gy = grad_output.contiguous();
    const at::Tensor x = input.contiguous();
    at::Tensor gw;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv1d_weight_backward_cuda", [&] {
          gw = weight_grad<scalar_t>(forward_geometry(d), gy, x);
        });
    return {gw.view(concrete_shape(conv1d_weight_shape(sym))).to(x.scalar_type()),
            with_bias ? conv_bias_grad(grad_output, 1) : at::Tensor()};
  }
};

// Autotuning keys CUDA signatures by the GPU's model.
const bool kNamerRegistered = [] {
  autotune::register_device_namer(c10::DeviceType::CUDA, [](c10::DeviceIndex index) {
    cudaDeviceProp properties;
    C10_CUDA_CHECK(cudaGetDeviceProperties(&properties, index));
    return std::string(properties.name);
  });
  return true;
}();

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  using Ops = Conv1dPaths<CudaDirect>;
  m.impl("conv1d", &Ops::forward);
  m.impl("conv1d_input_backward", &Ops::input_backward);
  m.impl("conv1d_weight_backward", &Ops::weight_backward);
}

}  // namespace fastconv
