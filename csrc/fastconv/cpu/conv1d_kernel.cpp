// conv1d on CPU: forward, grad_input and grad_weight.
//
// Each work item is one (batch, group, tile of output positions). The driver
// copies the input rows the tile reads into a per-thread scratch buffer --
// zero-padded, deinterleaved by stride, converted to the accumulation type --
// so the register-blocked micro-kernels (tile_kernels.h, one build per
// instruction set) run without bounds checks for every stride, dilation,
// padding and dtype. grad_input is the same forward machinery run on
// grad_output, zero-upsampled by the stride, with transposed, flipped
// weights. 16-bit tensors are read and written in 16 bits and accumulated in
// float.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fastconv/cpu/tile_kernels.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

using cpu::ForwardTile;
using cpu::WeightTile;

// Multiply-adds below which a parallel range stays on the calling thread:
// waking another thread costs more than small problems take.
constexpr int64_t kMinWorkPerThread = 1 << 17;
// Scratch bytes per tile: the input rows of one tile stay in L2.
constexpr int64_t kScratchBytes = 192 << 10;

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, work_per_item));
}

// A per-thread buffer that grows and is kept between calls.
template <typename T>
T* workspace(int slot, int64_t n) {
  thread_local std::vector<T> buffers[2];
  auto& buf = buffers[slot];
  if (static_cast<int64_t>(buf.size()) < n) {
    buf.resize(n);
  }
  return buf.data();
}

// One grouped convolution in the form the micro-kernels take:
// out[b][oc][l] = bias[oc] + sum_{icg,k} w[oc][icg][k] * up[b][g*cin_g+icg][l*stride + k*dilation - pad]
// where up is the input upsampled by in_dilation (in[i] at i * in_dilation,
// zeros between) and zero outside. pad may be negative (grad_input).
struct Geometry {
  int64_t batch, groups;
  int64_t in_channels, in_length;
  int64_t out_channels, out_length;
  int64_t kernel_size, stride, dilation, pad;
  int64_t in_dilation = 1;

  int64_t cin_g() const { return in_channels / groups; }
  int64_t cout_g() const { return out_channels / groups; }
  int64_t taps() const { return cin_g() * kernel_size; }

  // Output positions per tile: the scratch rows of a tile, and the staged
  // output rows of 16-bit types, fit kScratchBytes.
  int64_t tile_length(int64_t elem_size) const {
    const int64_t per_position = std::max<int64_t>(1, std::max(cin_g() * stride, cout_g()) * elem_size);
    const int64_t t = std::clamp<int64_t>(kScratchBytes / per_position, 64, 4096) & ~int64_t(15);
    return std::min(t, out_length);
  }
  // Elements of one deinterleaved phase row of a tile of n outputs.
  int64_t row_length(int64_t n) const {
    return n + dilation * (kernel_size - 1) / stride + cpu::kScratchSlack;
  }
  // Tap t = icg * K + k reads scratch[offsets[t] + j] for output j of the tile.
  std::vector<int64_t> tap_offsets(int64_t row_len) const {
    std::vector<int64_t> offsets(taps());
    for (int64_t icg = 0; icg < cin_g(); ++icg) {
      for (int64_t k = 0; k < kernel_size; ++k) {
        const int64_t q = k * dilation;
        offsets[icg * kernel_size + k] =
            (icg * stride + q % stride) * row_len + q / stride;
      }
    }
    return offsets;
  }
};

// Fills the stride phases of one input row for a tile starting at output l0:
// phase r, element j holds up[(l0 + j) * stride + r - pad], zero outside the row.
template <typename scalar_t, typename T>
void fill_phases(const Geometry& g, const scalar_t* in_row, int64_t l0, int64_t row_len, T* dst) {
  if (g.in_dilation > 1) {
    // Upsampled input (grad_input of a strided convolution; stride is 1 here):
    // element j is in[i] when base + j = i * in_dilation.
    const int64_t base = l0 - g.pad;
    std::fill(dst, dst + row_len, T(0));
    const int64_t i_first = base <= 0 ? 0 : (base + g.in_dilation - 1) / g.in_dilation;
    const int64_t last = base + row_len - 1;
    const int64_t i_end = last < 0 ? 0 : std::min(g.in_length, last / g.in_dilation + 1);
    for (int64_t i = i_first; i < i_end; ++i) {
      dst[i * g.in_dilation - base] = static_cast<T>(in_row[i]);
    }
    return;
  }
  for (int64_t r = 0; r < g.stride; ++r) {
    T* ph = dst + r * row_len;
    const int64_t base = l0 * g.stride + r - g.pad;  // input index of j = 0
    // Valid j: 0 <= base + j * stride < in_length.
    const int64_t lo = std::clamp<int64_t>(base >= 0 ? 0 : (-base + g.stride - 1) / g.stride, 0, row_len);
    const int64_t hi = std::clamp<int64_t>(
        g.in_length - base <= 0 ? 0 : (g.in_length - base - 1) / g.stride + 1, lo, row_len);
    std::fill(ph, ph + lo, T(0));
    const scalar_t* src = in_row + base;
    if (g.stride == 1) {
      if constexpr (std::is_same_v<scalar_t, T>) {
        std::memcpy(ph + lo, src + lo, (hi - lo) * sizeof(T));
      } else {
        for (int64_t j = lo; j < hi; ++j) ph[j] = static_cast<T>(src[j]);
      }
    } else {
      for (int64_t j = lo; j < hi; ++j) ph[j] = static_cast<T>(src[j * g.stride]);
    }
    std::fill(ph + hi, ph + row_len, T(0));
  }
}

template <typename T>
void call_forward(const ForwardTile<T>& tile) {
  if constexpr (std::is_same_v<T, float>) {
    cpu::kernels().forward_f32(tile);
  } else {
    cpu::kernels().forward_f64(tile);
  }
}

template <typename T>
void call_weight(const WeightTile<T>& tile) {
  if constexpr (std::is_same_v<T, float>) {
    cpu::kernels().weight_f32(tile);
  } else {
    cpu::kernels().weight_f64(tile);
  }
}

// out = conv(in, weight) + bias; weight is [C_out][cin_g * K] in the accumulation type T.
template <typename scalar_t>
void forward(const Geometry& g, const scalar_t* in,
             const at::opmath_type<scalar_t>* weight,
             const at::opmath_type<scalar_t>* bias, scalar_t* out) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kDirect = std::is_same_v<scalar_t, T>;
  const int64_t cin_g = g.cin_g(), cout_g = g.cout_g(), taps = g.taps();
  const int64_t tile = g.tile_length(sizeof(T));
  if (tile <= 0 || g.batch == 0) {
    return;
  }
  const int64_t tiles = (g.out_length + tile - 1) / tile;
  const int64_t row_len = g.row_length(tile);
  const std::vector<int64_t> offsets = g.tap_offsets(row_len);
  const int64_t items = g.batch * g.groups * tiles;
  at::parallel_for(0, items, grain_for(cout_g * taps * tile), [&](int64_t begin, int64_t end) {
    T* scratch = workspace<T>(0, cin_g * g.stride * row_len);
    T* staged = kDirect ? nullptr : workspace<T>(1, cout_g * tile);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item % tiles;
      const int64_t bg = item / tiles;  // b * groups + group
      const int64_t grp = bg % g.groups;
      const int64_t b = bg / g.groups;
      const int64_t l0 = t * tile;
      const int64_t n = std::min(tile, g.out_length - l0);
      for (int64_t icg = 0; icg < cin_g; ++icg) {
        const scalar_t* row = in + (b * g.in_channels + grp * cin_g + icg) * g.in_length;
        fill_phases(g, row, l0, row_len, scratch + icg * g.stride * row_len);
      }
      scalar_t* dst = out + (b * g.out_channels + grp * cout_g) * g.out_length + l0;
      ForwardTile<T> tile_args{
          scratch, offsets.data(), taps, weight + grp * cout_g * taps,
          bias ? bias + grp * cout_g : nullptr,
          kDirect ? reinterpret_cast<T*>(dst) : staged, kDirect ? g.out_length : n,
          cout_g, n};
      call_forward(tile_args);
      if constexpr (!kDirect) {
        for (int64_t oc = 0; oc < cout_g; ++oc) {
          for (int64_t j = 0; j < n; ++j) {
            dst[oc * g.out_length + j] = static_cast<scalar_t>(staged[oc * n + j]);
          }
        }
      }
    }
  });
}

// grad_weight[oc][icg][k] = sum_{b,l} grad_out[b][oc][l] * in[b][ic][l*stride + k*dilation - pad].
template <typename scalar_t>
void weight_grad(const Geometry& g, const scalar_t* grad_out, const scalar_t* in, scalar_t* grad_weight) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kDirect = std::is_same_v<scalar_t, T>;
  const int64_t cin_g = g.cin_g(), cout_g = g.cout_g(), taps = g.taps();
  const int64_t weight_numel = g.out_channels * taps;
  const int64_t tile = g.tile_length(sizeof(T));
  const int64_t tiles = tile > 0 ? (g.out_length + tile - 1) / tile : 0;
  const int64_t items = g.batch * g.groups * tiles;
  // Per-thread partial sums, added up in thread order: the result depends on
  // the thread count only, not on timing.
  const int threads = at::get_num_threads();
  std::vector<T> partial(static_cast<size_t>(threads) * weight_numel, T(0));
  if (items > 0) {
    const int64_t row_len = g.row_length(tile);
    const std::vector<int64_t> offsets = g.tap_offsets(row_len);
    at::parallel_for(0, items, grain_for(cout_g * taps * tile), [&](int64_t begin, int64_t end) {
      T* acc = partial.data() + at::get_thread_num() * weight_numel;
      T* scratch = workspace<T>(0, cin_g * g.stride * row_len);
      T* staged = kDirect ? nullptr : workspace<T>(1, cout_g * tile);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t t = item % tiles;
        const int64_t bg = item / tiles;
        const int64_t grp = bg % g.groups;
        const int64_t b = bg / g.groups;
        const int64_t l0 = t * tile;
        const int64_t n = std::min(tile, g.out_length - l0);
        for (int64_t icg = 0; icg < cin_g; ++icg) {
          const scalar_t* row = in + (b * g.in_channels + grp * cin_g + icg) * g.in_length;
          fill_phases(g, row, l0, row_len, scratch + icg * g.stride * row_len);
        }
        const scalar_t* gy = grad_out + (b * g.out_channels + grp * cout_g) * g.out_length + l0;
        if constexpr (!kDirect) {
          for (int64_t oc = 0; oc < cout_g; ++oc) {
            for (int64_t j = 0; j < n; ++j) {
              staged[oc * n + j] = static_cast<T>(gy[oc * g.out_length + j]);
            }
          }
        }
        WeightTile<T> tile_args{
            scratch, offsets.data(), taps,
            kDirect ? reinterpret_cast<const T*>(gy) : staged, kDirect ? g.out_length : n,
            cout_g, n, acc + grp * cout_g * taps};
        call_weight(tile_args);
      }
    });
  }
  for (int64_t i = 0; i < weight_numel; ++i) {
    T sum = 0;
    for (int th = 0; th < threads; ++th) {
      sum += partial[th * weight_numel + i];
    }
    grad_weight[i] = static_cast<scalar_t>(sum);
  }
}

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

// Where many channels mix, the weight gradient is one large GEMM that oneDNN
// runs at the FMA peak, while the tile kernel re-streams its operands from L2
// (measured: 2x slower at 128 x 128 channels, K = 5). oneDNN's float and
// bfloat16 paths are used there; its double and half paths are slow.
bool onednn_weight_grad_is_faster(const Conv1dIntDims& d, at::ScalarType dtype) {
  return (dtype == at::kFloat || dtype == at::kBFloat16) &&
      d.in_channels_per_group() >= 32 && d.out_channels_per_group() >= 32;
}

std::vector<int64_t> concrete_shape(const std::vector<c10::SymInt>& shape) {
  std::vector<int64_t> out;
  for (const auto& s : shape) out.push_back(s.expect_int());
  return out;
}

Geometry forward_geometry(const Conv1dIntDims& d) {
  return Geometry{d.batch, d.groups, d.in_channels, d.in_length, d.out_channels,
                  d.out_length, d.kernel_size, d.stride, d.dilation, d.padding};
}

at::Tensor conv1d_cpu(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups) {
  const auto sym = check_conv1d(input, weight, bias, stride, padding, dilation, groups);
  const auto d = concrete(sym);
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty_symint(conv1d_output_shape(sym), input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv1d_cpu", [&] {
    std::vector<at::opmath_type<scalar_t>> w_store, b_store;
    const auto* wp = as_opmath(w.const_data_ptr<scalar_t>(), w.numel(), w_store);
    const auto* bp = has_bias ? as_opmath(b.const_data_ptr<scalar_t>(), b.numel(), b_store) : nullptr;
    forward<scalar_t>(forward_geometry(d), x.const_data_ptr<scalar_t>(), wp, bp,
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
    c10::SymInt groups) {
  const auto sym = check_conv1d_input_backward(
      grad_output, weight, input_length, stride, padding, dilation, groups);
  const auto d = concrete(sym);
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor w = weight.contiguous();
  at::Tensor gx = at::empty_symint(conv1d_input_shape(sym), gy.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "fastconv_conv1d_input_backward_cpu", [&] {
    // A stride-1 convolution of grad_output, upsampled by the stride, with
    // w'[ic][ocg][K-1-k] = w[oc][icg][k] (per group) and padding
    // dilation * (K - 1) - padding.
    using T = at::opmath_type<scalar_t>;
    const int64_t cin_g = d.in_channels_per_group(), cout_g = d.out_channels_per_group();
    const int64_t K = d.kernel_size;
    std::vector<T> wt(w.numel());
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    for (int64_t oc = 0; oc < d.out_channels; ++oc) {
      const int64_t grp = oc / cout_g, ocg = oc % cout_g;
      for (int64_t icg = 0; icg < cin_g; ++icg) {
        for (int64_t k = 0; k < K; ++k) {
          wt[((grp * cin_g + icg) * cout_g + ocg) * K + (K - 1 - k)] =
              static_cast<T>(wp[(oc * cin_g + icg) * K + k]);
        }
      }
    }
    const Geometry g{d.batch, d.groups, d.out_channels, d.out_length, d.in_channels,
                     d.in_length, K, 1, d.dilation, d.dilation * (K - 1) - d.padding, d.stride};
    forward<scalar_t>(g, gy.const_data_ptr<scalar_t>(), wt.data(), nullptr, gx.mutable_data_ptr<scalar_t>());
  });
  return gx;
}

at::Tensor conv1d_weight_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymInt kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups) {
  const auto sym = check_conv1d_weight_backward(
      grad_output, input, kernel_size, stride, padding, dilation, groups);
  const auto d = concrete(sym);
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  if (onednn_weight_grad_is_faster(d, x.scalar_type())) {
    // oneDNN reads only the weight's shape: a broadcast zero stands in for it.
    const auto weight_shape = concrete_shape(conv1d_weight_shape(sym));
    const at::Tensor shape_only = at::zeros({1}, x.options()).expand(weight_shape);
    return std::get<1>(at::convolution_backward(
        d.batched ? gy : gy.unsqueeze(0), d.batched ? x : x.unsqueeze(0), shape_only,
        std::nullopt, {d.stride}, {d.padding}, {d.dilation}, /*transposed=*/false,
        /*output_padding=*/{0}, d.groups, {false, true, false}));
  }
  at::Tensor gw = at::empty_symint(conv1d_weight_shape(sym), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv1d_weight_backward_cpu", [&] {
    weight_grad<scalar_t>(forward_geometry(d), gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                          gw.mutable_data_ptr<scalar_t>());
  });
  return gw;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv1d", &conv1d_cpu);
  m.impl("conv1d_input_backward", &conv1d_input_backward_cpu);
  m.impl("conv1d_weight_backward", &conv1d_weight_backward_cpu);
}

}  // namespace fastconv
