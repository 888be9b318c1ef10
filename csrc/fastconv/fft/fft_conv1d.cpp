// FFT convolution: every operation reduces to one grouped correlation
//   y[n, o, l] = sum_{c in group(o), k} w[o, c, k] * x[n, c, l * s + k]
// computed as irfft(rfft(x) * rfft(reversed w)) per frequency, with the channel
// mixing a complex matmul per frequency. Long signals are cut into overlapping
// segments (overlap-save), so the transforms stay a few kernel lengths long
// and the spectra a bounded multiple of the input.
//   forward          x zero-padded, w dilated (zeros between taps)
//   grad_input       the full convolution of grad_output (upsampled by the
//                    stride) with w: a correlation with the flipped,
//                    per-group transposed kernel
//   grad_weight      a correlation of x with grad_output, channels and batch
//                    swapped so the batch is the reduced dimension
#include "fastconv/fft/fft_conv1d.h"
#include "fastconv/conv1d_geometry.h"
#include "fastconv/cpu/allocation.h"
#include "fastconv/fft/mix_channels.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace fastconv::fft {
namespace {

// Spectra per chunk of segments: below glibc's largest mmap threshold, so
// the buffers are recycled from one chunk to the next.
constexpr int64_t kChunkBytes = int64_t(16) << 20;

// A complex multiply-add of channel mixing against one unit of
// transform_cost: the ratio of the default CPU profile's rates (algorithm.cpp).
constexpr double kMixPerTransformUnit = 0.4;

// The weight gradient by segments moves more data than its plan counts: it
// reverses grad_output's segments, zero-pads the input per segment and lays
// the spectra out again for the mixing: its plan cost is scaled by this
// factor before it is compared with the whole correlation's (the crossover
// measured against the whole correlation lies between 1.25x and 1.39x).
constexpr double kSegmentsOverhead = 1.3;

at::ScalarType compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// w (O, Cg, K) with dilation - 1 zeros between taps: (O, Cg, dilation * (K - 1) + 1).
at::Tensor dilate(const at::Tensor& w, int64_t dilation) {
  if (dilation == 1) return w;
  const int64_t K = w.size(-1);
  at::Tensor out = at::zeros({w.size(0), w.size(1), dilation * (K - 1) + 1}, w.options());
  out.slice(-1, 0, c10::nullopt, dilation).copy_(w);
  return out;
}

// x (N, C, L) with stride - 1 zeros after each sample but the last.
at::Tensor upsample(const at::Tensor& x, int64_t stride) {
  if (stride == 1) return x;
  const int64_t L = x.size(-1);
  at::Tensor out = at::zeros({x.size(0), x.size(1), std::max<int64_t>(0, (L - 1) * stride + 1)}, x.options());
  out.slice(-1, 0, c10::nullopt, stride).copy_(x);
  return out;
}

// Segments [begin, end) of a correlation's input as a (N, C, end - begin, n)
// tensor: a view of x where they lie inside it, else a zero-filled copy of
// the part they overlap. Segment s starts at x position s * hop - left.
at::Tensor segment_range(const at::Tensor& x, int64_t left, int64_t n, int64_t hop, int64_t begin,
                         int64_t end) {
  const int64_t L = x.size(-1), first = begin * hop - left, last = (end - 1) * hop - left;
  if (first >= 0 && last + n <= L) {
    return x.narrow(-1, first, last + n - first).unfold(-1, n, hop);
  }
  at::Tensor out = at::zeros({x.size(0), x.size(1), end - begin, n}, x.options());
  for (int64_t s = begin; s < end; ++s) {
    const int64_t start = s * hop - left, lo = std::max<int64_t>(start, 0), hi = std::min(start + n, L);
    if (hi > lo) out.select(2, s - begin).narrow(-1, lo - start, hi - lo).copy_(x.narrow(-1, lo, hi - lo));
  }
  return out;
}

int64_t floor_div(int64_t a, int64_t b) { return a / b - (a % b != 0 && (a < 0) != (b < 0)); }
int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// Calls fn(s0, count) for the segments [0, S) of a signal of length L
// (segment s starts at s * hop - left and spans n), in chunks whose spectra,
// bytes_per_segment each, fit kChunkBytes: the temporaries stay bounded, and
// being small they are reused by the allocator instead of page-faulted in
// afresh (the largest cost otherwise; ATen's out= transforms measured slower
// than letting them allocate). Segments that reach past the signal's ends go
// in chunks of their own (copied, zero-filled; segment_range).
template <typename Fn>
void for_each_chunk(int64_t L, int64_t left, int64_t n, int64_t hop, int64_t S, int64_t bytes_per_segment, Fn fn) {
  const int64_t chunk = std::clamp<int64_t>(kChunkBytes / std::max<int64_t>(bytes_per_segment, 1), 1, S);
  // Segments [inner_begin, inner_end) lie inside: s * hop - left >= 0 and s * hop - left + n <= L.
  const int64_t inner_begin = std::clamp<int64_t>(ceil_div(left, hop), 0, S);
  const int64_t inner_end = std::clamp<int64_t>(floor_div(L + left - n, hop) + 1, inner_begin, S);
  for (int64_t s0 = 0; s0 < S;) {
    const int64_t limit = s0 < inner_begin ? inner_begin : s0 < inner_end ? inner_end : S;
    const int64_t count = std::min(chunk, limit - s0);
    fn(s0, count);
    s0 += count;
  }
}

// The grouped correlation above, with x (N, C, L) zero-extended by `left`
// zeros in front and by zeros past its end, for l = first + t, t < outputs:
//   y[n, o, t] = sum_{c in group(o), k} w[o, c, k] * xz[n, c, (first + t) * stride + k]
// x and w (O, C/G, K) in the compute type; bias (O) or undefined, added.
at::Tensor correlate(const at::Tensor& x, int64_t left, const at::Tensor& w, int64_t groups,
                     int64_t stride, int64_t first, int64_t outputs, const at::Tensor& bias) {
  const int64_t N = x.size(0), C = x.size(1);
  const int64_t O = w.size(0), Cg = w.size(1), K = w.size(2), Og = O / groups;
  at::Tensor y = cpu::empty_output({N, O, std::max<int64_t>(outputs, 0)}, x.options());
  if (N == 0 || outputs <= 0) return y.zero_();
  const int64_t needed = (outputs - 1) * stride + 1;  // stride-1 outputs from position first * stride
  const FftPlan plan = plan_correlation(K, needed, correlation_work(N, C, O, groups));
  const int64_t n = plan.size, hop = n - K + 1, S = plan.segments;
  left -= first * stride;
  // Correlating with w is convolving with w reversed: spectrum products need
  // no conjugate (the lazy conj view is also not resolved inside compiled
  // graphs, and a physical one costs a pass over O * Cg * F values), and a
  // segment's outputs are its circular convolution at [K - 1, n).
  const at::Tensor W = at::fft_rfft(w.flip(-1), n);  // (O, Cg, F)
  const int64_t F = W.size(-1);
  const int64_t per_segment = N * ((C + O) * F * 2 * 8 + O * n * 4);
  for_each_chunk(x.size(-1), left, n, hop, S, per_segment, [&](int64_t s0, int64_t count) {
    const at::Tensor X = at::fft_rfft(segment_range(x, left, n, hop, s0, s0 + count), n);  // (N, C, count, F)
    const at::Tensor Y = Cg == 1 && Og == 1 ? X * W.view({1, O, 1, F})  // one input per output
                                            : mix_channels(X, W, groups);
    const at::Tensor R = at::fft_irfft(Y, n);
    // Stride-1 outputs s * hop + i, i < hop, of segment s: the ones on the
    // stride grid, t = (s * hop + i) / stride, go to y.
    const int64_t j0 = s0 * hop, j1 = std::min(needed, (s0 + count) * hop);
    const int64_t t0 = (j0 + stride - 1) / stride, t1 = (j1 - 1) / stride + 1;
    if (t1 <= t0) return;
    const at::Tensor valid = R.narrow(-1, K - 1, hop);
    at::Tensor out = y.narrow(-1, t0, t1 - t0);
    if (stride == 1 && j1 == j0 + count * hop) {
      out.view({N, O, count, hop}).copy_(valid);
    } else {
      out.copy_(valid.reshape({N, O, count * hop}).narrow(-1, t0 * stride - j0, (t1 - t0 - 1) * stride + 1)
                    .slice(-1, 0, c10::nullopt, stride));
    }
    if (bias.defined()) out.add_(bias.view({1, O, 1}));
  });
  return y;
}

}  // namespace

at::Tensor mix_channels(const at::Tensor& X, const at::Tensor& W, int64_t groups) {
  const int64_t N = X.size(0), S = X.size(2), F = X.size(3);
  const int64_t O = W.size(0), Cg = W.size(1), Og = O / groups;
  if (X.is_cpu()) {
    // ATen's complex bmm falls back to a per-matrix loop for these many tiny
    // products, an order of magnitude slower than this.
    at::Tensor Y = at::empty({N, O, S, F}, X.options());
    const at::Tensor Xc = X.contiguous(), Wc = W.contiguous();
    AT_DISPATCH_FLOATING_TYPES(at::toRealValueType(X.scalar_type()), "fastconv_fft_mix", [&] {
      cpu::mix_channels<scalar_t>(
          reinterpret_cast<const scalar_t*>(Xc.const_data_ptr()),
          reinterpret_cast<const scalar_t*>(Wc.const_data_ptr()),
          reinterpret_cast<scalar_t*>(Y.mutable_data_ptr()), N, groups, Cg, Og, S, F);
    });
    return Y;
  }
  // One (N*S x Cg) @ (Cg x Og) product per group and frequency.
  const at::Tensor Xm = X.view({N, groups, Cg, S, F}).permute({1, 4, 0, 3, 2}).reshape({groups * F, N * S, Cg});
  const at::Tensor Wm = W.view({groups, Og, Cg, F}).permute({0, 3, 2, 1}).reshape({groups * F, Cg, Og});
  return at::bmm(Xm, Wm).view({groups, F, N, S, Og}).permute({2, 0, 4, 3, 1}).reshape({N, O, S, F});
}

double transform_cost(int64_t n) {
  const bool power_of_two = (n & (n - 1)) == 0;
  return double(n) * std::log2(double(n) + 1) * (power_of_two ? 1.0 : 1.3);
}

int64_t fast_length(int64_t target) {
  if (target <= 8) return int64_t(1) << int64_t(std::ceil(std::log2(double(std::max<int64_t>(target, 1)))));
  int64_t best = 0;
  for (int64_t p5 = 1; p5 < 2 * target; p5 *= 5) {
    for (int64_t p35 = p5; p35 < 2 * target; p35 *= 3) {
      int64_t v = 8 * p35;
      while (v < target) v *= 2;
      if (best == 0 || transform_cost(v) < transform_cost(best)) best = v;
    }
  }
  return best;
}

FftWork correlation_work(int64_t samples, int64_t in_channels, int64_t out_channels, int64_t groups) {
  const double pairs = double(out_channels) * (in_channels / groups);
  return FftWork{double(samples) * (in_channels + out_channels), double(samples) * pairs, pairs};
}

FftPlan plan_correlation(int64_t kernel, int64_t outputs, const FftWork& work) {
  // One transform of the whole signal, or segments of a few kernel lengths:
  // the cheaper in transforms and multiply-adds. Shorter segments repeat more
  // of each signal but make every kernel's transform cheaper: with many
  // channel pairs those dominate.
  const auto cost = [&](int64_t n, int64_t segments) {
    return (double(segments) * work.signals + work.kernels) * transform_cost(n) +
        double(segments) * work.mixes * double(n / 2 + 1) * kMixPerTransformUnit;
  };
  const int64_t whole = fast_length(std::max<int64_t>(1, kernel - 1 + outputs));
  FftPlan best{whole, 1, cost(whole, 1)};
  for (int64_t factor : {2, 4, 8, 16}) {
    const int64_t n = fast_length(std::max<int64_t>(factor * kernel, 256));
    if (n >= whole) break;
    const int64_t hop = n - kernel + 1;
    const int64_t segments = (outputs + hop - 1) / hop;
    if (cost(n, segments) < best.cost) best = FftPlan{n, segments, cost(n, segments)};
  }
  return best;
}

Conv1dIntDims weight_gradient_correlation(const Conv1dIntDims& d) {
  Conv1dIntDims c = d;
  c.batch = d.in_channels_per_group();
  c.in_channels = d.groups * d.batch;
  c.kernel_size[0] = std::max<int64_t>(0, (d.out_size[0] - 1) * d.stride[0] + 1);
  c.out_size[0] = d.dilation[0] * (d.kernel_size[0] - 1) + 1;
  c.stride[0] = 1;
  c.dilation[0] = 1;
  return c;
}

bool weight_gradient_by_whole_correlation(const Conv1dIntDims& d) {
  const Conv1dIntDims c = weight_gradient_correlation(d);
  if (d.batch == 0 || c.kernel_size[0] == 0) return true;
  const double whole = plan_correlation(c.kernel_size[0], c.out_size[0],
                                        correlation_work(c.batch, c.in_channels, c.out_channels, c.groups)).cost;
  const double segments = plan_correlation(c.out_size[0], c.kernel_size[0],
                                           correlation_work(d.batch, d.in_channels, d.out_channels, d.groups)).cost;
  return whole <= kSegmentsOverhead * segments;
}

at::Tensor conv1d_forward(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const Conv1dIntDims& d) {
  const auto ct = compute_type(input.scalar_type());
  at::Tensor x = input.to(ct);
  if (!d.batched) x = x.unsqueeze(0);
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->to(ct) : at::Tensor();
  at::Tensor y = correlate(x, d.padding[0], dilate(weight.to(ct), d.dilation[0]), d.groups, d.stride[0], 0, d.out_size[0], b);
  if (!d.batched) y = y.squeeze(0);
  return y.to(input.scalar_type());
}

at::Tensor conv1d_input_backward(
    const at::Tensor& grad_output, const at::Tensor& weight, const Conv1dIntDims& d) {
  const auto ct = compute_type(grad_output.scalar_type());
  at::Tensor gy = grad_output.to(ct);
  if (!d.batched) gy = gy.unsqueeze(0);
  const int64_t G = d.groups;
  // The flipped kernel with in and out channels swapped per group: (C_in, Og, Kd).
  const at::Tensor wt = dilate(input_backward_weight(weight.to(ct), G), d.dilation[0]);
  const int64_t Kd = wt.size(-1);
  // The full convolution of the upsampled grad_output (a correlation of it,
  // zero-extended by Kd - 1 in front, with wt) at the padded input's
  // positions [padding, padding + L).
  at::Tensor gx = correlate(upsample(gy, d.stride[0]), Kd - 1, wt, G, 1, d.padding[0], d.in_size[0], at::Tensor());
  if (!d.batched) gx = gx.squeeze(0);
  return gx.to(grad_output.scalar_type());
}

namespace {

// The input correlated with the whole of grad_output (upsampled by the
// stride) as its kernel: signals (Cg, G * B, L), kernels (G * Og, B, Lu).
at::Tensor weight_grad_by_whole_correlation(const at::Tensor& x, const at::Tensor& up, const Conv1dIntDims& d) {
  const int64_t B = d.batch, G = d.groups, Og = d.out_channels_per_group(), Cg = d.in_channels_per_group();
  const int64_t Kd = d.dilation[0] * (d.kernel_size[0] - 1) + 1;
  // Lengths spelled out: -1 is ambiguous in a view of an empty batch.
  const int64_t L = x.size(-1), Lu = up.size(-1);
  if (B == 0 || Lu == 0) return at::zeros({G * Og, Cg, Kd}, x.options());
  const at::Tensor signals = x.view({B, G, Cg, L}).permute({2, 1, 0, 3}).reshape({Cg, G * B, L});
  const at::Tensor kernels = up.view({B, G, Og, Lu}).permute({1, 2, 0, 3}).reshape({G * Og, B, Lu});
  return correlate(signals, d.padding[0], kernels, G, 1, 0, Kd, at::Tensor()).permute({1, 0, 2});  // (O, Cg, Kd)
}

// By segments of grad_output's positions, the forward's overlap-save windows:
// segment s pairs grad_output's hop values there with the input's n values
// from the same place, whose correlation at lags [0, Kd) has no wrap-around.
// Summed over samples and segments in the spectra, one inverse transform per
// kernel remains:
//   P[o, c, f] = sum_{b, s} R[b, o, s, f] * X[b, c, s, f],
// with R the spectra of the segments reversed (so that, as in correlate, no
// conjugate is needed; the lags land at [hop - 1, hop - 1 + Kd)). With many
// channel pairs and short kernels this is several times cheaper than the
// whole correlation.
at::Tensor weight_grad_by_segments(const at::Tensor& x, const at::Tensor& up, const Conv1dIntDims& d) {
  const int64_t B = d.batch, C = d.in_channels, O = d.out_channels, G = d.groups;
  const int64_t Cg = d.in_channels_per_group();
  const int64_t Kd = d.dilation[0] * (d.kernel_size[0] - 1) + 1, Lu = up.size(-1);
  const FftPlan plan = plan_correlation(Kd, Lu, correlation_work(B, C, O, G));
  const int64_t n = plan.size, hop = n - Kd + 1, S = plan.segments, F = n / 2 + 1;
  const at::Tensor reversed = at::constant_pad_nd(up, {0, S * hop - Lu}).view({B, O, S, hop}).flip(-1);
  at::Tensor P = at::zeros({O, Cg, F}, x.options().dtype(c10::toComplexType(x.scalar_type())));
  // Spectra and their rearranged copies for the mixing.
  const int64_t per_segment = B * (C + O) * F * 2 * 8 * 2;
  for_each_chunk(x.size(-1), d.padding[0], n, hop, S, per_segment, [&](int64_t s0, int64_t count) {
    const at::Tensor X = at::fft_rfft(segment_range(x, d.padding[0], n, hop, s0, s0 + count), n);  // (B, C, count, F)
    const at::Tensor R = at::fft_rfft(reversed.narrow(2, s0, count), n);                        // (B, O, count, F)
    // The mixing sums over the rows q = (sample, segment) of each group, its
    // input channels in place of segments: X as (1, G * q, Cg, F), R as (O, q, F).
    const int64_t Q = B * count;
    const at::Tensor Xq = X.view({B, G, Cg, count, F}).permute({1, 0, 3, 2, 4}).reshape({1, G * Q, Cg, F});
    const at::Tensor Rq = R.permute({1, 0, 2, 3}).reshape({O, Q, F});
    P.add_(mix_channels(Xq, Rq, G)[0]);
  });
  return at::fft_irfft(P, n).narrow(-1, hop - 1, Kd);
}

}  // namespace

at::Tensor conv1d_weight_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const Conv1dIntDims& d) {
  const auto ct = compute_type(input.scalar_type());
  at::Tensor x = input.to(ct), gy = grad_output.to(ct);
  if (!d.batched) x = x.unsqueeze(0), gy = gy.unsqueeze(0);
  const at::Tensor up = upsample(gy, d.stride[0]);
  const at::Tensor gw = weight_gradient_by_whole_correlation(d) ? weight_grad_by_whole_correlation(x, up, d)
                                                                : weight_grad_by_segments(x, up, d);
  return gw.slice(-1, 0, c10::nullopt, d.dilation[0]).to(input.scalar_type()).contiguous();
}

}  // namespace fastconv::fft
