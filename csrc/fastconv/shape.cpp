#include "fastconv/shape.h"

#include <c10/util/Exception.h>

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

c10::SymInt single(const char* op, const char* name, c10::SymIntArrayRef v) {
  TORCH_CHECK(
      v.size() == 1, op, ": ", name,
      " must be a single integer or a list of 1 integer for a 1-D "
      "convolution, but got ", v.size(), " values");
  return v[0];
}

// Fills the hyper-parameters of d and checks their ranges.
void set_hyper_params(
    const char* op, Conv1dSymDims& d, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    const c10::SymInt& groups) {
  d.stride = single(op, "stride", stride);
  d.padding = single(op, "padding", padding);
  d.dilation = single(op, "dilation", dilation);
  d.groups = groups;
  TORCH_CHECK(d.stride > 0, op, ": stride must be positive, but got ", d.stride);
  TORCH_CHECK(
      d.padding >= 0, op, ": padding must be non-negative, but got ",
      d.padding);
  TORCH_CHECK(
      d.dilation > 0, op, ": dilation must be positive, but got ", d.dilation);
  TORCH_CHECK(d.groups > 0, op, ": groups must be positive, but got ", d.groups);
}

// Reads batch, channels and length from a (N, C, L) or (C, L) tensor.
void read_signal(
    const char* op, const char* name, const at::Tensor& t, c10::SymInt& batch,
    c10::SymInt& channels, c10::SymInt& length, bool& batched) {
  TORCH_CHECK(
      t.dim() == 2 || t.dim() == 3, op, ": expected ", name,
      " to be 2-D (C, L) or 3-D (N, C, L), but got a ", t.dim(),
      "-D tensor of shape ", t.sym_sizes());
  batched = t.dim() == 3;
  batch = batched ? t.sym_size(0) : c10::SymInt(1);
  channels = t.sym_size(-2);
  length = t.sym_size(-1);
}

void check_weight_rank(const char* op, const char* name, const at::Tensor& w) {
  TORCH_CHECK(
      w.dim() == 3, op, ": expected ", name,
      " to be 3-D (C_out, C_in / groups, K), but got a ", w.dim(),
      "-D tensor of shape ", w.sym_sizes());
}

void check_channels(const char* op, const Conv1dSymDims& d) {
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
  TORCH_CHECK(
      d.kernel_size > 0, op, ": kernel size must be positive, but got ",
      d.kernel_size);
}

// Sets out_length from in_length; the dilated kernel must fit the padded input.
void set_out_length(const char* op, Conv1dSymDims& d) {
  const c10::SymInt padded = d.in_length + 2 * d.padding;
  const c10::SymInt span = d.dilation * (d.kernel_size - 1) + 1;
  TORCH_CHECK(
      span <= padded, op, ": the dilated kernel (dilation * (K - 1) + 1 = ",
      span, ") must not be longer than the padded input (L + 2 * padding = ",
      padded, ")");
  d.out_length = (padded - span) / d.stride + 1;
}

}  // namespace

Conv1dIntDims concrete(const Conv1dSymDims& d) {
  return Conv1dIntDims{
      d.batch.expect_int(),       d.in_channels.expect_int(),
      d.out_channels.expect_int(), d.groups.expect_int(),
      d.in_length.expect_int(),   d.out_length.expect_int(),
      d.kernel_size.expect_int(), d.stride.expect_int(),
      d.padding.expect_int(),     d.dilation.expect_int(),
      d.batched};
}

static std::vector<c10::SymInt> signal_shape(
    const Conv1dSymDims& d, const c10::SymInt& channels,
    const c10::SymInt& length) {
  if (d.batched) {
    return {d.batch, channels, length};
  }
  return {channels, length};
}

std::vector<c10::SymInt> conv1d_output_shape(const Conv1dSymDims& d) {
  return signal_shape(d, d.out_channels, d.out_length);
}

std::vector<c10::SymInt> conv1d_input_shape(const Conv1dSymDims& d) {
  return signal_shape(d, d.in_channels, d.in_length);
}

std::vector<c10::SymInt> conv1d_weight_shape(const Conv1dSymDims& d) {
  return {d.out_channels, d.in_channels_per_group(), d.kernel_size};
}

Conv1dSymDims check_conv1d(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups) {
  constexpr const char* op = "fastconv.conv1d";
  check_float_tensor(op, "input", input);
  check_float_tensor(op, "weight", weight);
  check_same_kind(op, "weight", weight, "input", input);
  Conv1dSymDims d;
  read_signal(op, "input", input, d.batch, d.in_channels, d.in_length, d.batched);
  check_weight_rank(op, "weight", weight);
  set_hyper_params(op, d, stride, padding, dilation, groups);
  d.out_channels = weight.sym_size(0);
  d.kernel_size = weight.sym_size(2);
  check_channels(op, d);
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
  set_out_length(op, d);
  return d;
}

Conv1dSymDims check_conv1d_input_backward(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    const c10::SymInt& input_length,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups) {
  constexpr const char* op = "fastconv.conv1d_input_backward";
  check_float_tensor(op, "grad_output", grad_output);
  check_float_tensor(op, "weight", weight);
  check_same_kind(op, "weight", weight, "grad_output", grad_output);
  Conv1dSymDims d;
  c10::SymInt grad_length;
  read_signal(
      op, "grad_output", grad_output, d.batch, d.out_channels, grad_length,
      d.batched);
  check_weight_rank(op, "weight", weight);
  set_hyper_params(op, d, stride, padding, dilation, groups);
  TORCH_CHECK(
      weight.sym_size(0) == d.out_channels, op, ": grad_output has ",
      d.out_channels, " channels but weight.size(0) is ", weight.sym_size(0));
  d.in_channels = weight.sym_size(1) * d.groups;
  d.kernel_size = weight.sym_size(2);
  check_channels(op, d);
  TORCH_CHECK(
      input_length >= 0, op, ": input_length must be non-negative, but got ",
      input_length);
  d.in_length = input_length;
  set_out_length(op, d);
  TORCH_CHECK(
      d.out_length == grad_length, op, ": grad_output has length ",
      grad_length, " but a convolution of an input of length ", input_length,
      " gives length ", d.out_length);
  return d;
}

Conv1dSymDims check_conv1d_weight_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const c10::SymInt& kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    const c10::SymInt& groups) {
  constexpr const char* op = "fastconv.conv1d_weight_backward";
  check_float_tensor(op, "grad_output", grad_output);
  check_float_tensor(op, "input", input);
  check_same_kind(op, "input", input, "grad_output", grad_output);
  Conv1dSymDims d;
  c10::SymInt grad_batch;
  c10::SymInt grad_length;
  bool grad_batched = false;
  read_signal(
      op, "grad_output", grad_output, grad_batch, d.out_channels, grad_length,
      grad_batched);
  read_signal(op, "input", input, d.batch, d.in_channels, d.in_length, d.batched);
  TORCH_CHECK(
      grad_batched == d.batched && grad_batch == d.batch, op,
      ": grad_output of shape ", grad_output.sym_sizes(),
      " does not match the batch of input of shape ", input.sym_sizes());
  set_hyper_params(op, d, stride, padding, dilation, groups);
  d.kernel_size = kernel_size;
  check_channels(op, d);
  set_out_length(op, d);
  TORCH_CHECK(
      d.out_length == grad_length, op, ": grad_output has length ",
      grad_length, " but the convolution of input of length ", d.in_length,
      " gives length ", d.out_length);
  return d;
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

}  // namespace fastconv
