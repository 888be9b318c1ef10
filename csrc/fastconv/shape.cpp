#include "fastconv/shape.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <sstream>
#include <string>

namespace fastconv {
namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf ||
      t == at::kBFloat16;
}

void check_float_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(
      t.defined(), op, ": ", name, " must be a defined tensor");
  TORCH_CHECK(
      is_supported_float(t.scalar_type()),
      op, ": ", name,
      " must be float32, float64, float16 or bfloat16, but got ",
      t.scalar_type());
}

void check_same_kind(
    const char* op, const char* name, const at::Tensor& t,
    const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(
      t.scalar_type() == ref.scalar_type(),
      op, ": ", name, " must have the same dtype as ", ref_name, ", but got ",
      t.scalar_type(), " and ", ref.scalar_type());
  TORCH_CHECK(
      t.device() == ref.device(),
      op, ": ", name, " must be on the same device as ", ref_name,
      ", but got ", t.device(), " and ", ref.device());
}

// "(C, L)" / "(C, H, W)": the layout of a signal, with or without batch.
const char* signal_layout(int N, bool batched) {
  if (N == 1) return batched ? "(N, C, L)" : "(C, L)";
  return batched ? "(N, C, H, W)" : "(C, H, W)";
}

const char* weight_layout(int N) {
  return N == 1 ? "(C_out, C_in / groups, K)" : "(C_out, C_in / groups, KH, KW)";
}

// Per-dimension values in messages: "5" in 1-D, "[5, 6]" in 2-D.
template <int N>
std::string values_str(const std::array<c10::SymInt, N>& v) {
  std::ostringstream s;
  if (N == 1) {
    s << v[0];
  } else {
    s << "[" << v[0] << ", " << v[1] << "]";
  }
  return s.str();
}

// Spatial sizes in messages: "length 5" in 1-D, "size [5, 6]" in 2-D.
template <int N>
std::string spatial_str(const std::array<c10::SymInt, N>& v) {
  return (N == 1 ? "length " : "size ") + values_str<N>(v);
}

template <int N>
std::array<c10::SymInt, N> spatial(
    const char* op, const char* name, c10::SymIntArrayRef v) {
  TORCH_CHECK(
      v.size() == N, op, ": ", name, " must be a single integer or a list of ",
      N, " integer", N == 1 ? "" : "s", " for a ", N,
      "-D convolution, but got ", v.size(), " values");
  std::array<c10::SymInt, N> out;
  std::copy(v.begin(), v.end(), out.begin());
  return out;
}

// Fills the hyper-parameters of d and checks their ranges.
template <int N>
void set_hyper_params(
    const char* op, ConvDims<c10::SymInt, N>& d, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    const c10::SymInt& groups) {
  d.stride = spatial<N>(op, "stride", stride);
  d.padding = spatial<N>(op, "padding", padding);
  d.dilation = spatial<N>(op, "dilation", dilation);
  d.groups = groups;
  for (int i = 0; i < N; ++i) {
    TORCH_CHECK(d.stride[i] > 0, op, ": stride must be positive, but got ", stride);
    TORCH_CHECK(
        d.padding[i] >= 0, op, ": padding must be non-negative, but got ",
        padding);
    TORCH_CHECK(
        d.dilation[i] > 0, op, ": dilation must be positive, but got ", dilation);
  }
  TORCH_CHECK(d.groups > 0, op, ": groups must be positive, but got ", d.groups);
}

// Reads batch, channels and spatial sizes from a batched or unbatched signal.
template <int N>
void read_signal(
    const char* op, const char* name, const at::Tensor& t, c10::SymInt& batch,
    c10::SymInt& channels, std::array<c10::SymInt, N>& size, bool& batched) {
  TORCH_CHECK(
      t.dim() == N + 1 || t.dim() == N + 2, op, ": expected ", name, " to be ",
      N + 1, "-D ", signal_layout(N, false), " or ", N + 2, "-D ",
      signal_layout(N, true), ", but got a ", t.dim(), "-D tensor of shape ",
      t.sym_sizes());
  batched = t.dim() == N + 2;
  batch = batched ? t.sym_size(0) : c10::SymInt(1);
  channels = t.sym_size(-N - 1);
  for (int i = 0; i < N; ++i) size[i] = t.sym_size(t.dim() - N + i);
}

template <int N>
void check_weight_rank(const char* op, const char* name, const at::Tensor& w) {
  TORCH_CHECK(
      w.dim() == N + 2, op, ": expected ", name, " to be ", N + 2, "-D ",
      weight_layout(N), ", but got a ", w.dim(), "-D tensor of shape ",
      w.sym_sizes());
}

template <int N>
void check_channels(const char* op, const ConvDims<c10::SymInt, N>& d) {
  TORCH_CHECK(
      d.out_channels > 0, op, ": out_channels must be positive, but got ",
      d.out_channels);
  TORCH_CHECK(
      d.out_channels % d.groups == 0, op, ": out_channels (", d.out_channels,
      ") must be divisible by groups (", d.groups, ")");
  TORCH_CHECK(
      d.in_channels > 0, op, ": in_channels must be positive, but got ",
      d.in_channels);
  TORCH_CHECK(
      d.in_channels % d.groups == 0, op, ": in_channels (", d.in_channels,
      ") must be divisible by groups (", d.groups, ")");
  for (int i = 0; i < N; ++i) {
    TORCH_CHECK(
        d.kernel_size[i] > 0, op, ": kernel size must be positive, but got ",
        values_str<N>(d.kernel_size));
  }
}

// Sets out_size from in_size; each dilated kernel extent must fit the padded input.
template <int N>
void set_out_size(const char* op, ConvDims<c10::SymInt, N>& d) {
  const char* dim_names[2] = {N == 1 ? "L" : "H", "W"};
  for (int i = 0; i < N; ++i) {
    const c10::SymInt padded = d.in_size[i] + 2 * d.padding[i];
    const c10::SymInt span = d.dilation[i] * (d.kernel_size[i] - 1) + 1;
    TORCH_CHECK(
        span <= padded, op, ": the dilated kernel (dilation * (K - 1) + 1 = ",
        span, ") must not be longer than the padded input (", dim_names[i],
        " + 2 * padding = ", padded, ")");
    d.out_size[i] = (padded - span) / d.stride[i] + 1;
  }
}

template <int N>
ConvDims<c10::SymInt, N> check_conv(
    const char* op, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    const c10::SymInt& groups) {
  check_float_tensor(op, "input", input);
  check_float_tensor(op, "weight", weight);
  check_same_kind(op, "weight", weight, "input", input);
  ConvDims<c10::SymInt, N> d;
  read_signal<N>(op, "input", input, d.batch, d.in_channels, d.in_size, d.batched);
  check_weight_rank<N>(op, "weight", weight);
  set_hyper_params<N>(op, d, stride, padding, dilation, groups);
  d.out_channels = weight.sym_size(0);
  for (int i = 0; i < N; ++i) d.kernel_size[i] = weight.sym_size(2 + i);
  check_channels<N>(op, d);
  TORCH_CHECK(
      weight.sym_size(1) * d.groups == d.in_channels, op,
      ": input has ", d.in_channels, " channels, but weight of shape ",
      weight.sym_sizes(), " with groups=", d.groups,
      " expects weight.size(1) * groups = ", weight.sym_size(1) * d.groups,
      " channels");
  if (bias.has_value() && bias->defined()) {
    check_float_tensor(op, "bias", *bias);
    check_same_kind(op, "bias", *bias, "input", input);
    TORCH_CHECK(
        bias->dim() == 1 && bias->sym_size(0) == d.out_channels, op,
        ": expected bias to be 1-D with out_channels = ", d.out_channels,
        " elements, but got shape ", bias->sym_sizes());
  }
  set_out_size<N>(op, d);
  return d;
}

template <int N>
ConvDims<c10::SymInt, N> check_conv_input_backward(
    const char* op, const at::Tensor& grad_output, const at::Tensor& weight,
    const std::array<c10::SymInt, N>& input_size, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    const c10::SymInt& groups) {
  check_float_tensor(op, "grad_output", grad_output);
  check_float_tensor(op, "weight", weight);
  check_same_kind(op, "weight", weight, "grad_output", grad_output);
  ConvDims<c10::SymInt, N> d;
  std::array<c10::SymInt, N> grad_size;
  read_signal<N>(
      op, "grad_output", grad_output, d.batch, d.out_channels, grad_size,
      d.batched);
  check_weight_rank<N>(op, "weight", weight);
  set_hyper_params<N>(op, d, stride, padding, dilation, groups);
  TORCH_CHECK(
      weight.sym_size(0) == d.out_channels, op, ": grad_output has ",
      d.out_channels, " channels but weight.size(0) is ", weight.sym_size(0));
  d.in_channels = weight.sym_size(1) * d.groups;
  for (int i = 0; i < N; ++i) d.kernel_size[i] = weight.sym_size(2 + i);
  check_channels<N>(op, d);
  for (int i = 0; i < N; ++i) {
    TORCH_CHECK(
        input_size[i] >= 0, op, ": input_", N == 1 ? "length" : "size",
        " must be non-negative, but got ", spatial_str<N>(input_size));
  }
  d.in_size = input_size;
  set_out_size<N>(op, d);
  TORCH_CHECK(
      d.out_size == grad_size, op, ": grad_output has ",
      spatial_str<N>(grad_size), " but a convolution of an input of ",
      spatial_str<N>(input_size), " gives ", spatial_str<N>(d.out_size));
  return d;
}

template <int N>
ConvDims<c10::SymInt, N> check_conv_weight_backward(
    const char* op, const at::Tensor& grad_output, const at::Tensor& input,
    const std::array<c10::SymInt, N>& kernel_size, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    const c10::SymInt& groups) {
  check_float_tensor(op, "grad_output", grad_output);
  check_float_tensor(op, "input", input);
  check_same_kind(op, "input", input, "grad_output", grad_output);
  ConvDims<c10::SymInt, N> d;
  c10::SymInt grad_batch;
  std::array<c10::SymInt, N> grad_size;
  bool grad_batched = false;
  read_signal<N>(
      op, "grad_output", grad_output, grad_batch, d.out_channels, grad_size,
      grad_batched);
  read_signal<N>(op, "input", input, d.batch, d.in_channels, d.in_size, d.batched);
  TORCH_CHECK(
      grad_batched == d.batched && grad_batch == d.batch, op,
      ": grad_output of shape ", grad_output.sym_sizes(),
      " does not match the batch of input of shape ", input.sym_sizes());
  set_hyper_params<N>(op, d, stride, padding, dilation, groups);
  d.kernel_size = kernel_size;
  check_channels<N>(op, d);
  set_out_size<N>(op, d);
  TORCH_CHECK(
      d.out_size == grad_size, op, ": grad_output has ",
      spatial_str<N>(grad_size), " but the convolution of input of ",
      spatial_str<N>(d.in_size), " gives ", spatial_str<N>(d.out_size));
  return d;
}

template <int N>
std::vector<c10::SymInt> signal_shape(
    bool batched, const c10::SymInt& batch, const c10::SymInt& channels,
    const std::array<c10::SymInt, N>& size) {
  std::vector<c10::SymInt> shape;
  if (batched) shape.push_back(batch);
  shape.push_back(channels);
  shape.insert(shape.end(), size.begin(), size.end());
  return shape;
}

}  // namespace


std::vector<int64_t> concrete_shape(const std::vector<c10::SymInt>& shape) {
  std::vector<int64_t> out;
  for (const auto& s : shape) out.push_back(s.expect_int());
  return out;
}

std::vector<c10::SymInt> conv1d_output_shape(const Conv1dSymDims& d) {
  return signal_shape<1>(d.batched, d.batch, d.out_channels, {d.out_size[0]});
}

std::vector<c10::SymInt> conv1d_input_shape(const Conv1dSymDims& d) {
  return signal_shape<1>(d.batched, d.batch, d.in_channels, {d.in_size[0]});
}

std::vector<c10::SymInt> conv1d_weight_shape(const Conv1dSymDims& d) {
  return {d.out_channels, d.in_channels_per_group(), d.kernel_size[0]};
}

Conv1dSymDims check_conv1d(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups,
    c10::string_view algorithm) {
  check_algorithm("fastconv.conv1d", algorithm, 1);
  return check_conv<1>(
      "fastconv.conv1d", input, weight, bias, stride, padding, dilation, groups);
}

Conv1dSymDims check_conv1d_input_backward(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    const c10::SymInt& input_length,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups,
    c10::string_view algorithm) {
  check_algorithm("fastconv.conv1d_input_backward", algorithm, 1);
  return check_conv_input_backward<1>(
      "fastconv.conv1d_input_backward", grad_output, weight, {input_length},
      stride, padding, dilation, groups);
}

Conv1dSymDims check_conv1d_weight_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const c10::SymInt& kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups,
    c10::string_view algorithm,
    const char* op) {
  check_algorithm(op, algorithm, 1);
  return check_conv_weight_backward<1>(
      op, grad_output, input, {kernel_size}, stride, padding, dilation, groups);
}

at::MemoryFormat conv2d_memory_format(const at::Tensor& activation) {
  return activation.dim() == 4 && activation.suggest_memory_format() == at::MemoryFormat::ChannelsLast
      ? at::MemoryFormat::ChannelsLast
      : at::MemoryFormat::Contiguous;
}

std::optional<Conv2dIntDims> maybe_concrete(const Conv2dSymDims& d) {
  std::vector<c10::SymInt> all{d.batch, d.in_channels, d.out_channels, d.groups};
  for (int i = 0; i < 2; ++i) {
    for (const auto* v : {&d.in_size, &d.out_size, &d.kernel_size, &d.stride, &d.padding, &d.dilation}) {
      all.push_back((*v)[i]);
    }
  }
  for (const auto& v : all) {
    if (!v.maybe_as_int()) return std::nullopt;
  }
  return concrete(d);
}

template <int N>
ConvDims<int64_t, N> concrete(const ConvDims<c10::SymInt, N>& d) {
  ConvDims<int64_t, N> out;
  out.batch = d.batch.expect_int();
  out.in_channels = d.in_channels.expect_int();
  out.out_channels = d.out_channels.expect_int();
  out.groups = d.groups.expect_int();
  out.batched = d.batched;
  for (int i = 0; i < N; ++i) {
    out.in_size[i] = d.in_size[i].expect_int();
    out.out_size[i] = d.out_size[i].expect_int();
    out.kernel_size[i] = d.kernel_size[i].expect_int();
    out.stride[i] = d.stride[i].expect_int();
    out.padding[i] = d.padding[i].expect_int();
    out.dilation[i] = d.dilation[i].expect_int();
  }
  return out;
}

template Conv1dIntDims concrete<1>(const Conv1dSymDims& d);
template Conv2dIntDims concrete<2>(const Conv2dSymDims& d);

std::vector<c10::SymInt> conv2d_output_shape(const Conv2dSymDims& d) {
  return signal_shape<2>(d.batched, d.batch, d.out_channels, d.out_size);
}

std::vector<c10::SymInt> conv2d_input_shape(const Conv2dSymDims& d) {
  return signal_shape<2>(d.batched, d.batch, d.in_channels, d.in_size);
}

std::vector<c10::SymInt> conv2d_weight_shape(const Conv2dSymDims& d) {
  return {d.out_channels, d.in_channels_per_group(), d.kernel_size[0],
          d.kernel_size[1]};
}

Conv2dSymDims check_conv2d(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups,
    c10::string_view algorithm) {
  check_algorithm("fastconv.conv2d", algorithm, 2);
  return check_conv<2>(
      "fastconv.conv2d", input, weight, bias, stride, padding, dilation, groups);
}

Conv2dSymDims check_conv2d_input_backward(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::SymIntArrayRef input_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups,
    c10::string_view algorithm) {
  constexpr const char* op = "fastconv.conv2d_input_backward";
  check_algorithm(op, algorithm, 2);
  return check_conv_input_backward<2>(
      op, grad_output, weight, spatial<2>(op, "input_size", input_size), stride,
      padding, dilation, groups);
}

Conv2dSymDims check_conv2d_weight_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymIntArrayRef kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups,
    c10::string_view algorithm) {
  constexpr const char* op = "fastconv.conv2d_weight_backward";
  check_algorithm(op, algorithm, 2);
  return check_conv_weight_backward<2>(
      op, grad_output, input, spatial<2>(op, "kernel_size", kernel_size),
      stride, padding, dilation, groups);
}

namespace {

void check_convolve_rows(const char* op, const at::Tensor& a, const at::Tensor& v) {
  check_float_tensor(op, "a", a);
  check_float_tensor(op, "v", v);
  check_same_kind(op, "v", v, "a", a);
  TORCH_CHECK(a.dim() >= 1, op, ": a must have at least 1 dimension, but is a scalar");
  TORCH_CHECK(v.dim() >= 1, op, ": v must have at least 1 dimension, but is a scalar");
  TORCH_CHECK(
      a.sym_size(-1) > 0 && v.sym_size(-1) > 0, op,
      ": rows must not be empty, but a has rows of length ", a.sym_size(-1),
      " and v of length ", v.sym_size(-1));
}

}  // namespace

std::pair<c10::SymInt, c10::SymInt> check_convolve(
    const at::Tensor& a, const at::Tensor& v, c10::string_view mode) {
  constexpr const char* op = "fastconv.convolve";
  check_convolve_rows(op, a, v);
  const c10::SymInt n = a.sym_size(-1);
  const c10::SymInt m = v.sym_size(-1);
  if (mode == "full") {
    return {c10::SymInt(0), n + m - 1};
  }
  if (mode == "same") {
    return {(m - 1) / 2, n};
  }
  if (mode == "valid") {
    const bool a_shorter = n < m;
    const c10::SymInt shorter = a_shorter ? n : m;
    const c10::SymInt longer = a_shorter ? m : n;
    return {shorter - 1, longer - shorter + 1};
  }
  TORCH_CHECK(
      false, op, ": mode must be 'full', 'same' or 'valid', but got '",
      std::string(mode), "'");
}

ConvolveSymDims check_convolve_window(
    const at::Tensor& a, const at::Tensor& v, const c10::SymInt& offset,
    const c10::SymInt& length) {
  constexpr const char* op = "fastconv._convolve_window";
  check_convolve_rows(op, a, v);
  TORCH_CHECK(length >= 0, op, ": length must be non-negative, but got ", length);
  ConvolveSymDims d;
  d.n = a.sym_size(-1);
  d.m = v.sym_size(-1);
  d.offset = offset;
  d.length = length;
  const int64_t a_lead = a.dim() - 1, v_lead = v.dim() - 1;
  const int64_t lead = std::max(a_lead, v_lead);
  d.batch_shape.resize(lead);
  for (int64_t i = 0; i < lead; ++i) {  // right-aligned, as torch broadcasting
    const int64_t ai = i - (lead - a_lead), vi = i - (lead - v_lead);
    const c10::SymInt as = ai >= 0 ? a.sym_size(ai) : c10::SymInt(1);
    const c10::SymInt vs = vi >= 0 ? v.sym_size(vi) : c10::SymInt(1);
    TORCH_CHECK(
        as == vs || as == 1 || vs == 1, "fastconv.convolve: the leading dimensions of a ",
        a.sym_sizes(), " and v ", v.sym_sizes(), " must broadcast, but dimension ", i,
        " has sizes ", as, " and ", vs);
    d.batch_shape[i] = as == 1 ? vs : as;
  }
  return d;
}

std::vector<c10::SymInt> convolve_output_shape(const ConvolveSymDims& d) {
  std::vector<c10::SymInt> shape = d.batch_shape;
  shape.push_back(d.length);
  return shape;
}


// ---- causal depthwise conv1d

namespace {

bool check_activation(const char* op, std::optional<c10::string_view> activation) {
  if (!activation) return false;
  TORCH_CHECK(*activation == "silu" || *activation == "swish", op,
              ": activation must be None, 'silu' or 'swish', but got '", std::string(*activation), "'");
  return true;
}

void check_int32_rows(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x,
                      std::vector<c10::SymInt> shape, const char* layout) {
  TORCH_CHECK(t.scalar_type() == at::kInt, op, ": ", name, " must be int32, but got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on the same device as x, but got ", t.device(),
              " and ", x.device());
  TORCH_CHECK(t.sym_sizes().equals(shape), op, ": ", name, " must have shape ", layout, " = ", c10::SymIntArrayRef(shape),
              ", but got ", t.sym_sizes());
}

}  // namespace

CausalSymDims check_causal_conv1d(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& initial_state, const std::optional<at::Tensor>& seq_idx,
    std::optional<c10::string_view> activation, const c10::SymInt& dilation, const char* op) {
  check_float_tensor(op, "x", x);
  TORCH_CHECK(x.dim() == 3, op, ": x must be 3-D (B, C, L), but got shape ", x.sym_sizes());
  check_float_tensor(op, "weight", weight);
  check_same_kind(op, "weight", weight, "x", x);
  CausalSymDims d;
  d.batch = x.sym_size(0);
  d.channels = x.sym_size(1);
  d.length = x.sym_size(2);
  TORCH_CHECK(weight.dim() == 2 && weight.sym_size(0) == d.channels && weight.sym_size(1) >= 1, op,
              ": weight must be 2-D (C, K) with C = ", d.channels, " (x's channels) and K >= 1, but got shape ",
              weight.sym_sizes());
  d.kernel_size = weight.sym_size(1);
  TORCH_CHECK(dilation >= 1, op, ": dilation must be positive, but got ", dilation);
  d.dilation = dilation;
  d.history = dilation * (d.kernel_size - 1);
  if (bias && bias->defined()) {
    check_float_tensor(op, "bias", *bias);
    check_same_kind(op, "bias", *bias, "x", x);
    TORCH_CHECK(bias->dim() == 1 && bias->sym_size(0) == d.channels, op, ": bias must have shape (C,) = (",
                d.channels, "), but got ", bias->sym_sizes());
  }
  if (initial_state && initial_state->defined()) {
    check_float_tensor(op, "initial_state", *initial_state);
    check_same_kind(op, "initial_state", *initial_state, "x", x);
    const std::vector<c10::SymInt> shape{d.batch, d.channels, d.history};
    TORCH_CHECK(initial_state->sym_sizes().equals(shape), op,
                ": initial_state must have shape (B, C, dilation * (K - 1)) = ", c10::SymIntArrayRef(shape), ", but got ",
                initial_state->sym_sizes());
  }
  if (seq_idx && seq_idx->defined()) {
    check_int32_rows(op, "seq_idx", *seq_idx, x, {d.batch, d.length}, "(B, L)");
  }
  d.silu = check_activation(op, activation);
  return d;
}

CausalSymDims check_causal_conv1d_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_final_state, const at::Tensor& x,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& initial_state, const std::optional<at::Tensor>& seq_idx,
    std::optional<c10::string_view> activation, const c10::SymInt& dilation) {
  const char* op = "fastconv.causal_conv1d_backward";
  const auto d = check_causal_conv1d(x, weight, bias, initial_state, seq_idx, activation, dilation, op);
  check_float_tensor(op, "grad_output", grad_output);
  check_same_kind(op, "grad_output", grad_output, "x", x);
  TORCH_CHECK(grad_output.sym_sizes().equals(x.sym_sizes()), op, ": grad_output must have x's shape ",
              x.sym_sizes(), ", but got ", grad_output.sym_sizes());
  if (grad_final_state && grad_final_state->defined()) {
    check_float_tensor(op, "grad_final_state", *grad_final_state);
    check_same_kind(op, "grad_final_state", *grad_final_state, "x", x);
    const std::vector<c10::SymInt> shape{d.batch, d.channels, d.history};
    TORCH_CHECK(grad_final_state->sym_sizes().equals(shape), op, ": grad_final_state must have shape ", c10::SymIntArrayRef(shape),
                ", but got ", grad_final_state->sym_sizes());
  }
  return d;
}

c10::SymInt check_conv1d_stream(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& state,
                                const c10::SymInt& dilation, const c10::SymInt& groups) {
  const char* op = "fastconv.conv1d_stream";
  check_float_tensor(op, "x", x);
  TORCH_CHECK(x.dim() == 3, op, ": x must be 3-D (B, C_in, L), but got shape ", x.sym_sizes());
  check_float_tensor(op, "weight", weight);
  check_same_kind(op, "weight", weight, "x", x);
  TORCH_CHECK(weight.dim() == 3, op, ": weight must be 3-D (C_out, C_in / groups, K), but got shape ",
              weight.sym_sizes());
  TORCH_CHECK(dilation >= 1, op, ": dilation must be positive, but got ", dilation);
  TORCH_CHECK(groups >= 1, op, ": groups must be positive, but got ", groups);
  const c10::SymInt history = dilation * (weight.sym_size(2) - 1);
  if (state && state->defined()) {
    check_float_tensor(op, "state", *state);
    check_same_kind(op, "state", *state, "x", x);
    const std::vector<c10::SymInt> shape{x.sym_size(0), x.sym_size(1), history};
    TORCH_CHECK(state->sym_sizes().equals(shape), op, ": state must have shape (B, C_in, dilation * (K - 1)) = ",
                c10::SymIntArrayRef(shape), ", but got ", state->sym_sizes());
  }
  return history;
}

CausalUpdateSymDims check_causal_conv1d_update(
    const at::Tensor& x, const at::Tensor& conv_state, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, std::optional<c10::string_view> activation,
    const std::optional<at::Tensor>& cache_seqlens, const std::optional<at::Tensor>& conv_state_indices) {
  const char* op = "fastconv.causal_conv1d_update";
  check_float_tensor(op, "x", x);
  TORCH_CHECK(x.dim() == 2 || x.dim() == 3, op, ": x must be (B, C) or (B, C, T), but got shape ", x.sym_sizes());
  CausalUpdateSymDims d;
  d.batch = x.sym_size(0);
  d.channels = x.sym_size(1);
  d.steps = x.dim() == 3 ? x.sym_size(2) : c10::SymInt(1);
  check_float_tensor(op, "weight", weight);
  check_same_kind(op, "weight", weight, "x", x);
  TORCH_CHECK(weight.dim() == 2 && weight.sym_size(0) == d.channels && weight.sym_size(1) >= 1, op,
              ": weight must be 2-D (C, K) with C = ", d.channels, " (x's channels) and K >= 1, but got shape ",
              weight.sym_sizes());
  d.kernel_size = weight.sym_size(1);
  check_float_tensor(op, "conv_state", conv_state);
  check_same_kind(op, "conv_state", conv_state, "x", x);
  TORCH_CHECK(conv_state.dim() == 3 && conv_state.sym_size(1) == d.channels &&
                  conv_state.sym_size(2) >= d.kernel_size - 1,
              op, ": conv_state must be (B_state, C, S) with C = ", d.channels, " and S >= K - 1 = ",
              d.kernel_size - 1, ", but got shape ", conv_state.sym_sizes());
  d.state_batch = conv_state.sym_size(0);
  d.state_length = conv_state.sym_size(2);
  if (conv_state_indices && conv_state_indices->defined()) {
    check_int32_rows(op, "conv_state_indices", *conv_state_indices, x, {d.batch}, "(B,)");
  } else {
    TORCH_CHECK(d.state_batch == d.batch, op, ": conv_state must have x's batch size ", d.batch,
                " (or pass conv_state_indices), but got ", d.state_batch);
  }
  if (cache_seqlens && cache_seqlens->defined()) {
    check_int32_rows(op, "cache_seqlens", *cache_seqlens, x, {d.batch}, "(B,)");
    TORCH_CHECK(d.state_length > 0, op, ": conv_state must hold at least one step as a ring buffer (cache_seqlens)");
  }
  if (bias && bias->defined()) {
    check_float_tensor(op, "bias", *bias);
    check_same_kind(op, "bias", *bias, "x", x);
    TORCH_CHECK(bias->dim() == 1 && bias->sym_size(0) == d.channels, op, ": bias must have shape (C,) = (",
                d.channels, "), but got ", bias->sym_sizes());
  }
  d.silu = check_activation(op, activation);
  return d;
}

}  // namespace fastconv
