// The one schema block of the fastconv library, and the C++ API over it.
#include "fastconv/ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "fastconv/algorithm.h"
#include "fastconv/autotune.h"
#include "fastconv/conv2d_rules.h"
#include "fastconv/path.h"
#include "fastconv/cpu/allocation.h"
#include "fastconv/cpu/tile_kernels.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

// The ConvCall of operator `op` ("forward", "input", "weight") of the
// family of `weight`'s dimensions, for a forward call with these arguments.
ConvCall introspected_call(const at::Tensor& input, const at::Tensor& weight, c10::SymIntArrayRef stride,
                           c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, const c10::SymInt& groups,
                           c10::string_view algorithm, c10::string_view op) {
  TORCH_CHECK(op == "forward" || op == "input" || op == "weight",
              "fastconv._conv_path: op must be 'forward', 'input' or 'weight', but got '", std::string(op), "'");
  const ConvOp kind = op == "forward" ? ConvOp::kForward : op == "input" ? ConvOp::kInput : ConvOp::kWeight;
  return family_call(kind, input, weight, stride, padding, dilation, groups, algorithm);
}

}  // namespace

TORCH_LIBRARY(fastconv, m) {
  m.def(
      "conv1d(Tensor input, Tensor weight, Tensor? bias=None, "
      "SymInt[1] stride=1, SymInt[1] padding=0, SymInt[1] dilation=1, "
      "SymInt groups=1, str algorithm=\"auto\") -> Tensor");
  m.def(
      "conv1d_input_backward(Tensor grad_output, Tensor weight, "
      "SymInt input_length, SymInt[1] stride, SymInt[1] padding, "
      "SymInt[1] dilation, SymInt groups, str algorithm=\"auto\") -> Tensor");
  m.def(
      "conv1d_weight_backward(Tensor grad_output, Tensor input, "
      "SymInt kernel_size, SymInt[1] stride, SymInt[1] padding, "
      "SymInt[1] dilation, SymInt groups, str algorithm=\"auto\") -> Tensor");
  // The weight and bias gradients together: on CPU one pass over grad_output.
  m.def(
      "conv1d_weight_bias_backward(Tensor grad_output, Tensor input, "
      "SymInt kernel_size, SymInt[1] stride, SymInt[1] padding, "
      "SymInt[1] dilation, SymInt groups, str algorithm=\"auto\") -> (Tensor, Tensor)");
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias=None, "
      "SymInt[2] stride=1, SymInt[2] padding=0, SymInt[2] dilation=1, "
      "SymInt groups=1, str algorithm=\"auto\") -> Tensor",
      {at::Tag::flexible_layout});
  m.def(
      "conv2d_input_backward(Tensor grad_output, Tensor weight, "
      "SymInt[2] input_size, SymInt[2] stride, SymInt[2] padding, "
      "SymInt[2] dilation, SymInt groups, str algorithm=\"auto\") -> Tensor",
      {at::Tag::flexible_layout});
  m.def(
      "conv2d_weight_backward(Tensor grad_output, Tensor input, "
      "SymInt[2] kernel_size, SymInt[2] stride, SymInt[2] padding, "
      "SymInt[2] dilation, SymInt groups, str algorithm=\"auto\") -> Tensor",
      {at::Tag::flexible_layout});
  m.def("convolve(Tensor a, Tensor v, str mode=\"full\") -> Tensor");
  // out[..., t] = full[..., t + offset] for t < length, zero outside the full
  // convolution: every mode of convolve, and both of its gradients.
  m.def(
      "_convolve_window(Tensor a, Tensor v, SymInt offset, SymInt length) "
      "-> Tensor");
  // Causal depthwise conv1d (shape.h): the output and the final state.
  m.def(
      "causal_conv1d(Tensor x, Tensor weight, Tensor? bias=None, Tensor? initial_state=None, "
      "Tensor? seq_idx=None, str? activation=None, SymInt dilation=1) -> (Tensor, Tensor)");
  m.def(
      "causal_conv1d_backward(Tensor grad_output, Tensor? grad_final_state, Tensor x, Tensor weight, "
      "Tensor? bias, Tensor? initial_state, Tensor? seq_idx, str? activation, SymInt dilation) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "causal_conv1d_update(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias=None, "
      "str? activation=None, Tensor? cache_seqlens=None, Tensor? conv_state_indices=None) -> Tensor");
  m.def(
      "conv1d_stream(Tensor x, Tensor weight, Tensor? bias=None, Tensor? state=None, SymInt dilation=1, "
      "SymInt groups=1) -> (Tensor, Tensor)");
  // Instruction set of the CPU micro-kernels: the active one, after selecting
  // `capability` when given ("" restores the default). For tests and benchmarks.
  m.def(
      "_cpu_capability(str? capability=None) -> str",
      [](std::optional<std::string> capability) {
        if (!capability) return std::string(cpu::kernels().name);
        settings_changed();
        return cpu::set_capability(*capability);
      });
  // The path an operator of the conv1d or conv2d family would run for a
  // forward call with these arguments (op: "forward", "input" for its
  // grad_input, "weight" for its grad_weight): the forced one, a tuned one
  // in the autotuning cache, else the default rule's. Times nothing.
  m.def(
      "_conv_path(Tensor input, Tensor weight, SymInt[] stride, SymInt[] padding, "
      "SymInt[] dilation, SymInt groups=1, str algorithm=\"auto\", str op=\"forward\") -> str",
      [](const at::Tensor& input, const at::Tensor& weight, c10::SymIntArrayRef stride,
         c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, c10::SymInt groups,
         c10::string_view algorithm, c10::string_view op) -> std::string {
        return path_name(peek_path(introspected_call(input, weight, stride, padding, dilation, groups, algorithm, op),
                                   algorithm));
      });
  // The path that call will run where that is settled without timing anything
  // (the forced one, the default with autotuning off, a tuned one), else None.
  m.def(
      "_conv_settled_path(Tensor input, Tensor weight, SymInt[] stride, SymInt[] padding, "
      "SymInt[] dilation, SymInt groups=1, str algorithm=\"auto\", str op=\"forward\") -> str?",
      [](const at::Tensor& input, const at::Tensor& weight, c10::SymIntArrayRef stride,
         c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, c10::SymInt groups,
         c10::string_view algorithm, c10::string_view op) -> std::optional<std::string> {
        const auto p =
            settled_path(introspected_call(input, weight, stride, padding, dilation, groups, algorithm, op), algorithm);
        return p ? std::optional<std::string>(path_name(*p)) : std::nullopt;
      });
  // For a signature autotuning has timed: PyTorch's kernel's time over the
  // winner's (autotune.h), else None.
  m.def(
      "_conv_tuned_speedup(Tensor input, Tensor weight, SymInt[] stride, SymInt[] padding, "
      "SymInt[] dilation, SymInt groups=1, str op=\"forward\") -> float?",
      [](const at::Tensor& input, const at::Tensor& weight, c10::SymIntArrayRef stride,
         c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, c10::SymInt groups,
         c10::string_view op) -> std::optional<double> {
        return autotune::native_speedup(
            introspected_call(input, weight, stride, padding, dilation, groups, "auto", op));
      });
  // The values `algorithm` takes for an operator of `dims` spatial dimensions.
  m.def("_algorithms(int dims) -> str[]", [](int64_t dims) {
    TORCH_CHECK(dims == 1 || dims == 2, "fastconv._algorithms: dims must be 1 or 2, but got ", dims);
    return algorithm_names(int(dims));
  });
  // The paths that can run that call, native first.
  m.def(
      "_conv_candidates(Tensor input, Tensor weight, SymInt[] stride, SymInt[] padding, "
      "SymInt[] dilation, SymInt groups=1, str op=\"forward\") -> str[]",
      [](const at::Tensor& input, const at::Tensor& weight, c10::SymIntArrayRef stride,
         c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, c10::SymInt groups, c10::string_view op) {
        std::vector<std::string> out;
        for (Path p : candidates(introspected_call(input, weight, stride, padding, dilation, groups, "auto", op))) {
          out.emplace_back(path_name(p));
        }
        return out;
      });
  // The cost model's predicted seconds of conv1d for these arguments:
  // [direct, fft, native], with the profile in use for the input's device.
  m.def(
      "_conv1d_cost(Tensor input, Tensor weight, SymInt[1] stride=1, "
      "SymInt[1] padding=0, SymInt[1] dilation=1, SymInt groups=1) -> float[]",
      [](const at::Tensor& input, const at::Tensor& weight, c10::SymIntArrayRef stride,
         c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, c10::SymInt groups) {
        const auto d = concrete(
            check_conv1d(input, weight, std::nullopt, stride, padding, dilation, groups, "auto"));
        const auto [profile, threads] = cost_profile_for(input.device().type());
        return std::vector<double>{direct_seconds(d, profile, threads), fft_seconds(d, profile, threads),
                                   native_seconds(d, profile, threads)};
      });
  // Autotuning (autotune.h): switch it on or off when `on` is given; returns
  // whether it is on.
  m.def("_autotune(bool? on=None) -> bool", [](std::optional<bool> on) {
    if (on) autotune::set_enabled(*on), settings_changed();
    return autotune::enabled();
  });
  // The autotuning cache: (file, fingerprint, [entries, hits, misses], tuning seconds).
  m.def("_autotune_info() -> (str, str, int[], float)", [] {
    const auto i = autotune::info();
    return std::make_tuple(i.file, i.fingerprint, std::vector<int64_t>{i.entries, i.hits, i.misses},
                           i.tuning_seconds);
  });
  m.def("_autotune_clear(bool file=False) -> ()", [](bool file) { autotune::clear(file), settings_changed(); });
  // The CPU cost model's constants (see algorithm.h), after replacing them
  // with `values` when given. For calibration and tests.
  m.def("_cost_profile(float[]? values=None) -> float[]", [](std::optional<std::vector<double>> values) {
    if (values) set_cpu_cost_profile(CostProfile::from_vector(*values)), settings_changed();
    return cpu_cost_profile().to_vector();
  });
  // The conv2d rules' measured tables (conv2d_rules.h) as lines, after
  // setting them to exactly `lines` when given ([] restores this CPU kind's
  // built-in tables). For calibration and tests.
  m.def("_conv2d_rules(str[]? lines=None) -> str[]", [](std::optional<std::vector<std::string>> lines) {
    auto out = rule_tables(lines);
    if (lines) settings_changed();
    return out;
  });
  // The built-in measurements of a CPU kind ("avx512" or "avx2"; None: this
  // CPU's, algorithm.h): (kind, cost constants, conv2d rule lines), for
  // _cost_profile and _conv2d_rules. For tests.
  m.def("_built_in_profile(str? kind=None) -> (str, float[], str[])", [](std::optional<std::string> kind) {
    const CpuKind k = kind ? cpu_kind_named(*kind) : this_cpu_kind();
    return std::make_tuple(std::string(cpu_kind_name(k)), built_in_cost_profile(k).to_vector(),
                           built_in_rule_tables(k));
  });
  // The CPU output cache (cpu/allocation.h): [limit, cached bytes, cached
  // buffers, hits, misses], after setting the limit when given.
  m.def("_cpu_cache(int? limit_bytes=None) -> int[]", &cpu::output_cache_info);
  m.def("_cpu_cache_clear() -> ()", &cpu::empty_output_cache);
  // Instruction sets usable on this CPU, best first.
  m.def("_cpu_capabilities() -> str[]", [] { return cpu::supported_capabilities(); });
}

int64_t link_anchor() { return 0; }

namespace {

// The typed handle of a fastconv operator, for the C++ API below: each
// function looks its operator up once and calls it through the dispatcher
// (autograd, autocast and every backend apply as from Python).
template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

}  // namespace

at::Tensor conv1d(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  static const auto op = find_op<decltype(conv1d)>("fastconv::conv1d");
  return op.call(input, weight, bias, stride, padding, dilation, groups, algorithm);
}

at::Tensor conv1d_input_backward(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::SymInt input_length,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  static const auto op = find_op<decltype(conv1d_input_backward)>("fastconv::conv1d_input_backward");
  return op.call(grad_output, weight, input_length, stride, padding, dilation, groups, algorithm);
}

at::Tensor conv1d_weight_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymInt kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  static const auto op = find_op<decltype(conv1d_weight_backward)>("fastconv::conv1d_weight_backward");
  return op.call(grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm);
}

std::tuple<at::Tensor, at::Tensor> conv1d_weight_bias_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymInt kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  static const auto op = find_op<decltype(conv1d_weight_bias_backward)>("fastconv::conv1d_weight_bias_backward");
  return op.call(grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm);
}

at::Tensor conv2d(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  static const auto op = find_op<decltype(conv2d)>("fastconv::conv2d");
  return op.call(input, weight, bias, stride, padding, dilation, groups, algorithm);
}

at::Tensor conv2d_input_backward(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::SymIntArrayRef input_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  static const auto op = find_op<decltype(conv2d_input_backward)>("fastconv::conv2d_input_backward");
  return op.call(grad_output, weight, input_size, stride, padding, dilation, groups, algorithm);
}

at::Tensor conv2d_weight_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::SymIntArrayRef kernel_size,
    c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation,
    c10::SymInt groups,
    c10::string_view algorithm) {
  static const auto op = find_op<decltype(conv2d_weight_backward)>("fastconv::conv2d_weight_backward");
  return op.call(grad_output, input, kernel_size, stride, padding, dilation, groups, algorithm);
}

at::Tensor convolve(const at::Tensor& a, const at::Tensor& v, c10::string_view mode) {
  static const auto op = find_op<decltype(convolve)>("fastconv::convolve");
  return op.call(a, v, mode);
}

at::Tensor convolve_window(
    const at::Tensor& a, const at::Tensor& v, c10::SymInt offset, c10::SymInt length) {
  static const auto op = find_op<decltype(convolve_window)>("fastconv::_convolve_window");
  return op.call(a, v, offset, length);
}

std::tuple<at::Tensor, at::Tensor> causal_conv1d(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& initial_state, const std::optional<at::Tensor>& seq_idx,
    std::optional<c10::string_view> activation, c10::SymInt dilation) {
  static const auto op = find_op<decltype(causal_conv1d)>("fastconv::causal_conv1d");
  return op.call(x, weight, bias, initial_state, seq_idx, activation, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> causal_conv1d_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_final_state, const at::Tensor& x,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& initial_state, const std::optional<at::Tensor>& seq_idx,
    std::optional<c10::string_view> activation, c10::SymInt dilation) {
  static const auto op = find_op<decltype(causal_conv1d_backward)>("fastconv::causal_conv1d_backward");
  return op.call(grad_output, grad_final_state, x, weight, bias, initial_state, seq_idx, activation, dilation);
}

at::Tensor causal_conv1d_update(
    const at::Tensor& x, const at::Tensor& conv_state, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, std::optional<c10::string_view> activation,
    const std::optional<at::Tensor>& cache_seqlens, const std::optional<at::Tensor>& conv_state_indices) {
  static const auto op = find_op<decltype(causal_conv1d_update)>("fastconv::causal_conv1d_update");
  return op.call(x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices);
}

std::tuple<at::Tensor, at::Tensor> conv1d_stream(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& state, c10::SymInt dilation, c10::SymInt groups) {
  static const auto op = find_op<decltype(conv1d_stream)>("fastconv::conv1d_stream");
  return op.call(x, weight, bias, state, dilation, groups);
}

}  // namespace fastconv
