// conv1d and its two gradients through the FFT (at::fft_rfft / irfft: pocketfft
// or MKL on CPU, cuFFT on CUDA), for any device. 16-bit tensors compute in
// float and return their own dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "fastconv/shape.h"

namespace fastconv::fft {

at::Tensor conv1d_forward(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const Conv1dIntDims& d);

at::Tensor conv1d_input_backward(
    const at::Tensor& grad_output, const at::Tensor& weight, const Conv1dIntDims& d);

at::Tensor conv1d_weight_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const Conv1dIntDims& d);

// What a correlation transforms and multiplies, for weighing transform
// lengths: per segment, `signals` transforms (samples x (C_in + C_out), in
// and back) and `mixes` complex multiply-adds per frequency (samples x C_out
// x C_in / groups); once, `kernels` transforms (C_out x C_in / groups).
struct FftWork {
  double signals, mixes, kernels;
};

// The sizes of a correlation as FftWork: `samples` rows of `in_channels`
// channels against `out_channels` kernels of in_channels / groups each.
FftWork correlation_work(int64_t samples, int64_t in_channels, int64_t out_channels, int64_t groups);

// The FFT length a correlation producing `outputs` values with a kernel of
// `kernel` taps uses per segment, and how many segments (overlap-save).
struct FftPlan {
  int64_t size;      // transform length n (fast_length)
  int64_t segments;  // 1 without overlap-save
  double cost;       // transform_cost units of its transforms and mixing
};
FftPlan plan_correlation(int64_t kernel, int64_t outputs, const FftWork& work);

// conv1d_weight_backward runs one of two correlations, the cheaper plan:
// - by segments of grad_output's positions: the forward's sizes and plan, one
//   inverse transform per kernel of a few kernel lengths;
// - the input correlated with the whole of grad_output as its kernel, input
//   channels as the batch and the batch as channels: one transform of the
//   whole sequence per channel pair, but no segments (cheaper for kernels as
//   long as the signal). These are its sizes:
Conv1dIntDims weight_gradient_correlation(const Conv1dIntDims& d);
bool weight_gradient_by_whole_correlation(const Conv1dIntDims& d);

// The relative time of one length-n transform: n log2 n, and 1.3x that for
// lengths with factors 3 or 5 (mixed lengths with few factors of 2 run far
// slower per n log2 n, so fast_length keeps at least 2^3).
double transform_cost(int64_t n);

// The cheapest length n >= target by transform_cost of the form 2^a 3^b 5^c
// with a >= 3 (a power of two up to 8).
int64_t fast_length(int64_t target);

// Channel mixing of spectra (complex tensors), shared with fft_conv2d:
//   Y[n, o, s, f] = sum over c in group(o) of X[n, c, s, f] * W[o, c, f],
// X (N, C_in, S, F), W (C_out, C_in / groups, F).
at::Tensor mix_channels(const at::Tensor& X, const at::Tensor& W, int64_t groups);

}  // namespace fastconv::fft
