// The measurements behind conv2d's default rules (path.cpp).
//
// Each rule names a class of layers (pointwise NCHW, depthwise by layout,
// stride and kernel size; see path.cpp) and the fastconv path it runs for one
// operator. Its table holds layers of the class that
// python -m fastconv_ext.calibrate measured on this machine: their sizes and
// the speedup of the layer with the rule's path (as a model runs it, see
// calibrate.py). A layer of the class takes the rule's path where the
// measured layers nearest to it (sizes compared in doublings, the same stride
// and memory layout preferred; the three nearest, the nearer the weightier)
// were at least kRuleSpeedup faster, PyTorch's kernel otherwise: a class's
// speedups change with its sizes, and the measurements near a layer are the
// ones that speak for it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fastconv/algorithm.h"
#include "fastconv/shape.h"

namespace fastconv {

enum class Rule : uint8_t {
  kPointwiseForward,  // 1x1 NCHW float forward by im2col (a GEMM)
  kPointwiseInput,    // its grad_input
  kPointwiseWeight,   // its grad_weight
  kDepthwiseRows,     // NCHW stride-1 depthwise forward by direct rows
  kDepthwiseStrided,  // channels-last strided depthwise forward by the depthwise kernels
  kDepthwiseLarge,    // channels-last depthwise forward of 10x10 to 19x19 taps, the same
  kDepthwiseInput,    // depthwise grad_input by direct rows (NCHW, stride 1) or depthwise kernels
  kDepthwiseWeight,   // depthwise grad_weight, the same
  kDepthwiseSmallStridedGrads,  // both gradients of strided <= 3x3 depthwise layers, against
                                // PyTorch's one convolution_backward
  kDepthwiseNchwKernels,      // NCHW stride-1 depthwise forward by the depthwise kernels, not the rows
  kDepthwiseNchwKernelGrads,  // both of its gradients, the same
  // The depthwise rules for bfloat16 layers, measured in bfloat16: PyTorch's
  // bfloat16 kernels are not its float ones scaled (its bfloat16 depthwise
  // backward is many times slower, its forward about as fast), so float
  // measurements do not speak for them.
  kDepthwiseRowsBf16,
  kDepthwiseStridedBf16,
  kDepthwiseLargeBf16,
  kDepthwiseInputBf16,
  kDepthwiseWeightBf16,
  kDepthwiseSmallStridedGradsBf16,
  kDepthwiseNchwKernelsBf16,
  kDepthwiseNchwKernelGradsBf16,
};
inline constexpr size_t kNumRules = 19;

// A rule's path is taken where the nearest measured layer was at least this
// much faster with it: the margin keeps noise from making a layer slower.
constexpr double kRuleSpeedup = 1.1;

// Whether `rule`'s path is the default for the layer `d` in memory layout
// `layout` (0: contiguous, 1: channels-last).
bool rule_holds(Rule rule, const Conv2dIntDims& d, int layout);

// The rules' tables as lines "<rule> <batch> <C_in> <C_out> <output pixels>
// <taps> <stride> <layout> <speedup>": the active ones, after making them
// exactly `lines` when given (a rule they do not name has no measurements and
// never holds; an empty list restores the built-in tables), so that setting
// the lines this returned restores its tables. The profile file
// (cpu_profile_path(), algorithm.h) holds them as the same lines after
// "rule ".
std::vector<std::string> rule_tables(const std::optional<std::vector<std::string>>& lines);

// The built-in tables of a CPU kind (algorithm.h), as the same lines.
std::vector<std::string> built_in_rule_tables(CpuKind kind);

}  // namespace fastconv
