// Path selection: the one place that decides which implementation runs a
// convolution. Every operator (conv1d and conv2d; forward, grad_input and
// grad_weight) on every backend asks select_path() with a ConvCall that
// describes the call: sizes, hyper-parameters, dtype, device, memory layout
// and thread count.
//
// The answer is, in order:
//   1. the path `algorithm` names, when it names one ("auto" does not); it
//      must be able to run the call, else the call fails saying why;
//   2. with autotuning on (autotune.h), the fastest applicable path for this
//      signature, timed on the call's own tensors the first time it is seen
//      and looked up afterwards;
//   3. the default rules below: PyTorch's own kernel ("native") unless a
//      fastconv path is expected to beat it clearly.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "fastconv/shape.h"

namespace fastconv {

// Which of a family's three operators.
enum class ConvOp : uint8_t { kForward, kInput, kWeight };

// Implementations. conv1d has native, direct and fft; conv2d has native,
// direct (rows of 1-D convolutions), im2col (+ GEMM), shifted (GEMM per tap
// on staged rows), depthwise (vectors across channels, channels-last) and
// fft (2-D transforms).
enum class Path : uint8_t { kNative, kDirect, kFft, kIm2col, kShifted, kDepthwise };
// Every path, native first (the order of candidates()).
inline constexpr Path kAllPaths[] = {Path::kNative, Path::kDirect,  Path::kFft,
                                     Path::kIm2col, Path::kShifted, Path::kDepthwise};

const char* path_name(Path path);
const char* op_name(ConvOp op);

// Everything the choice depends on. conv1d is described as the 2-D case of
// height 1 (in_size, kernel, stride, padding, dilation {1, L}, {1, K}, ...).
struct ConvCall {
  int dims;  // 1 or 2
  ConvOp op;
  at::ScalarType dtype;
  c10::Device device;
  int layout;   // 0: contiguous, 1: channels-last, 2: other (of the op's activation input)
  int threads;  // intra-op threads on CPU, 1 on other devices
  Conv2dIntDims d;

  // The conv1d sizes (dims == 1).
  Conv1dIntDims conv1d() const;
};

ConvCall make_call(ConvOp op, const Conv1dIntDims& d, const at::Tensor& activation);
ConvCall make_call(ConvOp op, const Conv2dIntDims& d, const at::Tensor& activation);
// The ConvCall of operator `op` of the family of `weight`'s dimensions
// (conv1d for 3-D weights, else conv2d) for a forward call with these
// arguments, which the family's checks validate (naming a bad one).
ConvCall family_call(ConvOp op, const at::Tensor& input, const at::Tensor& weight, c10::SymIntArrayRef stride,
                     c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, const c10::SymInt& groups,
                     c10::string_view algorithm);

// The names `algorithm` accepts for an N-d operator, "auto" first.
const std::vector<std::string>& algorithm_names(int dims);
// Raises naming `op` and the allowed values unless `algorithm` is one of them.
void check_algorithm(const char* op, c10::string_view algorithm, int dims);

// Why `path` cannot run `call`, or nullopt if it can.
std::optional<std::string> why_not(Path path, const ConvCall& call);
// The paths that can run `call`, native first.
std::vector<Path> candidates(const ConvCall& call);
// The paths autotuning times for `call`: the candidates, less fastconv's own
// that the cost model predicts autotune::kHopelessRatio times slower than its
// best prediction (on CPU, conv1d's: one call of the FFT path on a 3-tap
// kernel can take several times a tuning budget), the predicted fastest
// first. PyTorch's kernel is always timed.
std::vector<Path> tuning_candidates(const ConvCall& call);
// The path the rules choose (no autotuning).
Path default_path(const ConvCall& call);

// The path to run: see the top of this file. `run(path)` computes the call
// with `path` (its result is dropped); it is called only to autotune.
Path select_path(const ConvCall& call, c10::string_view algorithm, const std::function<void(Path)>& run);

// run(path) with the path select_path chooses: the body of every operator's
// kernel, whose `run` computes its result with any path it offers.
template <class Run>
auto run_selected(const ConvCall& call, c10::string_view algorithm, const Run& run) {
  return run(select_path(call, algorithm, [&](Path p) { (void)run(p); }));
}

// The path select_path would take without timing anything: the forced one,
// else a tuned entry already in the cache, else the default.
Path peek_path(const ConvCall& call, c10::string_view algorithm);
// The path select_path will take, where that is settled without timing: nullopt
// for a signature autotuning has still to time.
std::optional<Path> settled_path(const ConvCall& call, c10::string_view algorithm);

// For an eager forward call with these arguments: whether every operator
// it runs -- the forward, and the gradients autograd will want
// (`input_grad`, `weight_grad`) -- takes PyTorch's kernel, as far as that is
// settled without timing; nullopt where autotuning has still to time one.
// Remembered per signature (sizes, layout, dtype, device, hyper-parameters,
// gradients, threads, settings_generation()): a model's calls repeat, and
// an eager call of a small layer lasts a few microseconds. `algorithm` other
// than "auto": whether it is "native". Arguments the operators' checks
// reject raise their error.
std::optional<bool> eager_native(const at::Tensor& input, const at::Tensor& weight, c10::IntArrayRef stride,
                                 c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                                 c10::string_view algorithm, bool input_grad, bool weight_grad);

// Counts the changes of what settles a path without timing (autotuning on or
// off, its cache cleared, the cost profile, the conv2d tables, the CPU
// kernels): eager routes remembered (eager_native's memo, fastconv_ext's
// modules) hold the count they were decided at; settings_changed() makes
// them stale.
int64_t settings_generation();
void settings_changed();

// The algorithm a conv2d gradient operator gets from a forward call that
// forced `algorithm`: the same path where it can run the gradient, else
// "auto" (the direct and shifted paths run only some gradients). Symbolic
// sizes (torch.compile with dynamic shapes) give "auto" for those two.
std::string conv2d_derivative_algorithm(ConvOp op, const Conv2dSymDims& d, const at::Tensor& activation,
                                        const std::string& algorithm);

// grad_input, grad_weight and grad_bias (when with_bias) of conv(input,
// weight) in one at::convolution_backward, when both gradient operators
// would take the native path: PyTorch computes them together faster than
// apart. nullopt
// otherwise, and where sizes are symbolic or a gradient is still to be tuned.
std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> native_backward_if_chosen(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, const c10::SymInt& groups,
    const std::string& algorithm, bool with_bias);

// Geometry of conv2d paths, shared with the kernels.
bool conv2d_is_pointwise(const Conv2dIntDims& d);
// Stride 1 with padding <= dilation * (K - 1): grad_input is then the
// stride-1 convolution of grad_output, with this padding, by the flipped,
// transposed weights.
std::optional<std::array<int64_t, 2>> conv2d_transposed_padding(const Conv2dIntDims& d);
// The dimensions of that convolution (grad_output -> grad_input).
Conv2dIntDims conv2d_transposed(Conv2dIntDims d, const std::array<int64_t, 2>& padding);

}  // namespace fastconv
