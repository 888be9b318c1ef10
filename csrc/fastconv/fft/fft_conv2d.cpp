// FFT conv2d: one transform size F >= the padded input (Hp, Wp) per axis
// serves all three operators without wrap-around, the image being zero-padded
// explicitly and the kernel dilated (zeros between taps, KH' = dh (KH-1) + 1):
//   forward      z = irfft2(rfft2(x_pad) * conj(rfft2(w'))) is the stride-1
//                correlation at its first Hp - KH' + 1 rows (no index reaches
//                past Hp - 1 < F); y = z[::sh, ::sw].
//   grad_input   grad_output upsampled by the stride (zeros between samples),
//                convolved with w' (the spectra multiplied, channels mixed per
//                group with in and out swapped); the full convolution is at
//                most Hp long, and grad_input is its [ph, ph + H) rows.
//   grad_weight  the correlation of x_pad with the upsampled grad_output,
//                summed over the batch, at lags [0, KH'), then every dh-th.
#include "fastconv/fft/fft_conv2d.h"

#include <ATen/ATen.h>

#include "fastconv/fft/fft_conv1d.h"

namespace fastconv::fft {
namespace {

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// (N, C, H, W) in the compute type, batched.
at::Tensor batched(const at::Tensor& t, const Conv2dIntDims& d) {
  const at::Tensor u = t.to(compute_type(t.scalar_type()));
  return d.batched ? u : u.unsqueeze(0);
}

at::Tensor unbatched(const at::Tensor& t, const Conv2dIntDims& d) { return d.batched ? t : t.squeeze(0); }

// w (O, Cg, KH, KW) with dilation - 1 zeros between taps.
at::Tensor dilate(const at::Tensor& w, const Conv2dIntDims& d) {
  if (d.dilation[0] == 1 && d.dilation[1] == 1) return w;
  at::Tensor out = at::zeros({w.size(0), w.size(1), d.dilation[0] * (w.size(2) - 1) + 1,
                              d.dilation[1] * (w.size(3) - 1) + 1}, w.options());
  out.slice(2, 0, c10::nullopt, d.dilation[0]).slice(3, 0, c10::nullopt, d.dilation[1]).copy_(w);
  return out;
}

// grad_output (N, O, OH, OW) with stride - 1 zeros between samples.
at::Tensor upsample(const at::Tensor& gy, const Conv2dIntDims& d) {
  if (d.stride[0] == 1 && d.stride[1] == 1) return gy;
  at::Tensor out = at::zeros({gy.size(0), gy.size(1), (gy.size(2) - 1) * d.stride[0] + 1,
                              (gy.size(3) - 1) * d.stride[1] + 1}, gy.options());
  out.slice(2, 0, c10::nullopt, d.stride[0]).slice(3, 0, c10::nullopt, d.stride[1]).copy_(gy);
  return out;
}

at::Tensor pad(const at::Tensor& x, const Conv2dIntDims& d) {
  return at::constant_pad_nd(x, {d.padding[1], d.padding[1], d.padding[0], d.padding[0]});
}

// The 2-D spectrum of t (.., h, w) at size F, its frequencies flattened: (.., 1, F0 * (F1 / 2 + 1)).
at::Tensor spectrum(const at::Tensor& t, const std::array<int64_t, 2>& F) {
  const at::Tensor s = at::fft_rfft2(t, c10::IntArrayRef{F[0], F[1]});
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end() - 2);
  shape.push_back(1);
  shape.push_back(s.size(-2) * s.size(-1));
  return s.reshape(shape);
}

// The inverse of spectrum, rows [r0, r0 + h) x columns [c0, c0 + w) of it.
at::Tensor signal(const at::Tensor& s, const std::array<int64_t, 2>& F, int64_t r0, int64_t h, int64_t c0, int64_t w) {
  const at::Tensor s2 = s.reshape({s.size(0), s.size(1), F[0], F[1] / 2 + 1});
  return at::fft_irfft2(s2, c10::IntArrayRef{F[0], F[1]}).narrow(2, r0, h).narrow(3, c0, w);
}

}  // namespace

std::array<int64_t, 2> conv2d_fft_size(const Conv2dIntDims& d) {
  return {fast_length(d.in_size[0] + 2 * d.padding[0]), fast_length(d.in_size[1] + 2 * d.padding[1])};
}

at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const Conv2dIntDims& d) {
  const auto F = conv2d_fft_size(d);
  const at::Tensor x = pad(batched(input, d), d);
  const at::Tensor w = dilate(weight.to(x.scalar_type()), d);
  if (x.numel() == 0 || w.numel() == 0) {  // no transform of nothing (MKL rejects it)
    at::Tensor y = at::zeros({d.batch, d.out_channels, d.out_size[0], d.out_size[1]}, x.options());
    if (bias.has_value() && bias->defined()) y += bias->to(y.scalar_type()).view({1, -1, 1, 1});
    return unbatched(y, d).to(input.scalar_type());
  }
  const int64_t Hz = x.size(2) - w.size(2) + 1, Wz = x.size(3) - w.size(3) + 1;
  const at::Tensor Y = mix_channels(spectrum(x, F), spectrum(w, F).conj().resolve_conj().squeeze(2), d.groups);
  at::Tensor y = signal(Y, F, 0, Hz, 0, Wz)
                     .slice(2, 0, c10::nullopt, d.stride[0])
                     .slice(3, 0, c10::nullopt, d.stride[1]);
  if (bias.has_value() && bias->defined()) y = y + bias->to(y.scalar_type()).view({1, -1, 1, 1});
  return unbatched(y, d).to(input.scalar_type());
}

at::Tensor conv2d_input_backward(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dIntDims& d) {
  const auto F = conv2d_fft_size(d);
  const at::Tensor u = upsample(batched(grad_output, d), d);
  const int64_t G = d.groups, Og = d.out_channels_per_group(), Cg = d.in_channels_per_group();
  if (u.numel() == 0 || weight.numel() == 0) {
    return unbatched(at::zeros({d.batch, d.in_channels, d.in_size[0], d.in_size[1]}, u.options()), d)
        .to(grad_output.scalar_type());
  }
  // The kernels with in and out channels swapped per group: (C_in, Og, KH', KW').
  const at::Tensor w = dilate(weight.to(u.scalar_type()), d);
  const at::Tensor wt = w.reshape({G, Og, Cg, w.size(2), w.size(3)})
                            .transpose(1, 2)
                            .reshape({G * Cg, Og, w.size(2), w.size(3)});
  const at::Tensor X = mix_channels(spectrum(u, F), spectrum(wt, F).squeeze(2), G);
  return unbatched(signal(X, F, d.padding[0], d.in_size[0], d.padding[1], d.in_size[1]), d)
      .to(grad_output.scalar_type());
}

at::Tensor conv2d_weight_backward(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dIntDims& d) {
  const auto F = conv2d_fft_size(d);
  const at::Tensor x = pad(batched(input, d), d);
  const at::Tensor u = upsample(batched(grad_output, d), d);
  const int64_t G = d.groups, Og = d.out_channels_per_group(), Cg = d.in_channels_per_group(), N = x.size(0);
  const int64_t KHd = d.dilation[0] * (d.kernel_size[0] - 1) + 1, KWd = d.dilation[1] * (d.kernel_size[1] - 1) + 1;
  if (x.numel() == 0 || u.numel() == 0) {
    return at::zeros({d.out_channels, Cg, d.kernel_size[0], d.kernel_size[1]}, input.options());
  }
  const at::Tensor X = spectrum(x, F).view({N, G, Cg, -1});
  // Conjugates are resolved, never left as lazy views: under torch.compile's
  // runtime one was multiplied as the plain spectrum.
  const at::Tensor U = spectrum(u, F).conj().resolve_conj().view({N, G, Og, -1});
  // R[g, o, c, f] = sum_n conj(U[n, g, o, f]) X[n, g, c, f]: per group and
  // frequency an (Og x N) @ (N x Cg) product.
  const at::Tensor R = Og == 1 && Cg == 1 ? (U * X).sum(0).view({G, 1, 1, -1})
                                          : at::einsum("ngof,ngcf->gocf", {U, X});
  const at::Tensor r = signal(R.reshape({G * Og, Cg, 1, -1}), F, 0, KHd, 0, KWd)
                           .slice(2, 0, c10::nullopt, d.dilation[0])
                           .slice(3, 0, c10::nullopt, d.dilation[1]);
  return r.contiguous().to(input.scalar_type());
}

}  // namespace fastconv::fft
