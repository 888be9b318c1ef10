#include "fastconv/path.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <unordered_map>

#include "fastconv/algorithm.h"
#include "fastconv/autotune.h"
#include "fastconv/conv2d_rules.h"
#include "fastconv/cpu/tile_kernels.h"
#include "fastconv/fft/fft_conv1d.h"
#include "fastconv/fft/fft_conv2d.h"
#include "fastconv/native.h"

namespace fastconv {
namespace {

// conv2d direct rows run layers of up to this many taps per group
// (C_in/g * KH * KW), or of up to kDirectFewChannels input channels per group
// with any kernel: beyond that im2col's GEMM has the K to run well.
constexpr int64_t kDirectMaxTaps = 32;
constexpr int64_t kDirectFewChannels = 4;

// A fastconv path is the default only where the cost model predicts it at
// most this fraction of the native kernel's time: the model's error must not
// make a layer slower than PyTorch.
constexpr double kNativeMargin = 0.8;

int64_t taps_per_group(const Conv2dIntDims& d) {
  return d.in_channels_per_group() * d.kernel_size[0] * d.kernel_size[1];
}

int layout_of(const at::Tensor& t) {
  if (t.is_contiguous()) return 0;
  if (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast)) return 1;
  return 2;
}

// PyTorch 2.13's forward of a bfloat16 channels-last depthwise conv2d of at
// most 16 channels with a kernel width of 15 or more does not return (for
// minutes) on a CPU with AVX512-BF16 for images from about 40 pixels wide:
// fastconv never runs it, even to time it (docs/depthwise2d.md).
constexpr int64_t kNativeHangWidth = 15, kNativeHangChannels = 16;

bool native_does_not_finish(const ConvCall& c) {
  return c.dims == 2 && c.op == ConvOp::kForward && c.device.is_cpu() && c.dtype == at::kBFloat16 && c.layout == 1 &&
      c.d.in_channels_per_group() == 1 && c.d.out_channels_per_group() == 1 &&
      c.d.in_channels <= kNativeHangChannels && c.d.kernel_size[1] >= kNativeHangWidth && cpu::has_bf16_dot_product();
}

// Whether PyTorch's oneDNN build takes convolutions of `dtype` on this CPU,
// as PyTorch itself asks (torch.ops.mkldnn._is_mkldnn_bf16_supported and
// _fp16_: the instruction sets oneDNN needs for them).
bool onednn_takes(at::ScalarType dtype) {
  const auto ask = [](const char* name) {
    if (!at::hasMKLDNN()) return false;
    const auto op = c10::Dispatcher::singleton().findSchema({name, ""});
    return !op || op->typed<bool()>().call();  // a torch without the query: as before
  };
  static const bool bf16 = ask("mkldnn::_is_mkldnn_bf16_supported");
  static const bool fp16 = ask("mkldnn::_is_mkldnn_fp16_supported");
  return dtype == at::kBFloat16 ? bf16 : dtype == at::kHalf ? fp16 : true;
}

// Without oneDNN for a 16-bit dtype (an AVX2-only CPU, or oneDNN switched
// off), PyTorch's CPU convolution runs its generic kernel: an unfolded copy
// and a GEMM in that dtype, which took 10-40x fastconv's paths (which compute
// in float) on every layer measured (docs/path-selection.md).
bool native_is_generic(const ConvCall& c) {
  return c.device.is_cpu() && (c.dtype == at::kBFloat16 || c.dtype == at::kHalf) &&
      (!at::globalContext().userEnabledMkldnn() || !onednn_takes(c.dtype));
}

int threads_on(const c10::Device& device) { return device.is_cpu() ? at::get_num_threads() : 1; }

bool stride_one(const Conv2dIntDims& d) { return d.stride[0] == 1 && d.stride[1] == 1; }

// conv2d: why the direct rows or the shifted GEMM cannot run the forward
// convolution `d`.
std::optional<std::string> why_not_direct_rows(const Conv2dIntDims& d) {
  if (conv2d_is_pointwise(d)) return "a pointwise (1x1, stride 1, no padding) convolution is a GEMM";
  if (taps_per_group(d) > kDirectMaxTaps && d.in_channels_per_group() > kDirectFewChannels) {
    return "it takes at most " + std::to_string(kDirectMaxTaps) + " taps per group (C_in / groups * KH * KW) with more than " +
        std::to_string(kDirectFewChannels) + " input channels per group, not " + std::to_string(taps_per_group(d));
  }
  return std::nullopt;
}

std::optional<std::string> why_not_shifted(const Conv2dIntDims& d) {
  if (!stride_one(d)) return "it needs stride 1";
  if (conv2d_is_pointwise(d)) return "a pointwise (1x1, stride 1, no padding) convolution is a GEMM";
  if (d.padding[1] > d.dilation[1] * (d.kernel_size[1] - 1)) {
    return "it needs horizontal padding <= dilation * (KW - 1)";
  }
  return std::nullopt;
}

// The FFT path transforms whole images: it is offered for kernels of at least
// kFftMinTaps taps, whose transforms replace as many multiply-adds per
// output, and while the weights' spectra (C_out x C_in/g of them) stay under
// kFftMaxSpectra bytes.
constexpr int64_t kFftMinTaps = 25;
constexpr int64_t kFftMaxSpectra = int64_t(256) << 20;

std::optional<std::string> why_not_fft2d(const Conv2dIntDims& d) {
  if (d.kernel_size[0] * d.kernel_size[1] < kFftMinTaps) {
    return "it is for kernels of at least " + std::to_string(kFftMinTaps) + " taps (KH * KW), not " +
        std::to_string(d.kernel_size[0] * d.kernel_size[1]);
  }
  const auto size = fft::conv2d_fft_size(d);
  const int64_t bytes = d.out_channels * d.in_channels_per_group() * size[0] * (size[1] / 2 + 1) * 16;
  if (bytes > kFftMaxSpectra) {
    return "the weights' spectra would take " + std::to_string(bytes >> 20) + " MiB (at most " +
        std::to_string(kFftMaxSpectra >> 20) + ")";
  }
  return std::nullopt;
}

// grad_input through a forward path runs the transposed stride-1 convolution.
std::optional<std::string> why_not_transposed(const Conv2dIntDims& d,
                                              std::optional<std::string> (*why)(const Conv2dIntDims&)) {
  const auto padding = conv2d_transposed_padding(d);
  if (!padding) return "grad_input needs stride 1 and padding <= dilation * (K - 1) for it";
  if (auto reason = why(conv2d_transposed(d, *padding))) return "for grad_input's transposed convolution, " + *reason;
  return std::nullopt;
}

bool has_work(const Conv2dIntDims& d) {
  return d.batch > 0 && d.in_channels > 0 && d.out_channels > 0 && d.out_size[0] > 0 && d.out_size[1] > 0 &&
      d.in_size[0] > 0 && d.in_size[1] > 0;
}

// ---- conv1d rules: the cost model (algorithm.h) for direct, FFT and native.

// The cost model's predicted seconds of conv1d's paths for `c` on CPU.
struct Conv1dPrediction {
  double direct, fft, native;
};

Conv1dPrediction conv1d_prediction(const ConvCall& c) {
  const Conv1dIntDims d = c.conv1d();
  const auto [profile, threads] = cost_profile_for(c.device.type());
  // The FFT of the weight gradient correlates other sizes (fft_conv1d.h).
  const Conv1dIntDims fft_dims =
      c.op == ConvOp::kWeight && d.out_size[0] > 0 && d.batch > 0 && fft::weight_gradient_by_whole_correlation(d)
      ? fft::weight_gradient_correlation(d)
      : d;
  return {direct_seconds(d, profile, threads), fft_seconds(fft_dims, profile, threads),
          native_seconds(d, profile, threads)};
}

Path conv1d_default(const ConvCall& c) {
  if (!c.device.is_cpu()) return Path::kNative;  // the CUDA kernels are not tuned yet: cuDNN
  const Conv1dPrediction t = conv1d_prediction(c);
  const Path own = t.fft < t.direct ? Path::kFft : Path::kDirect;
  if (native_is_generic(c)) return own;
  // oneDNN multiplies bfloat16 with the CPU's bfloat16 dot products (and
  // AMX tiles where there are some); fastconv widens to float.
  const Conv1dIntDims d = c.conv1d();
  const int64_t pairs = d.in_channels_per_group() * d.out_channels_per_group();
  if (c.dtype == at::kBFloat16 && cpu::has_bf16_dot_product() && pairs >= 256) return Path::kNative;
  return std::min(t.direct, t.fft) < kNativeMargin * t.native ? own : Path::kNative;
}

// ---- conv2d rules.
//
// Each rule names a class of layers and the fastconv path it runs for one
// operator; conv2d_rules.h decides from this machine's measurements of layers
// of the class whether it holds for a layer.
//
// Pointwise (1x1, stride 1, unpadded, one group) float layers: im2col is one
// GEMM per image in NCHW, where oneDNN reorders to its blocked layout on each
// call (that cost decides mid-sized layers; the GEMMs are even on large ones),
// and one GEMM of the whole batch where the activation is a matrix of pixels
// by channels -- channels-last, or the single pixel of a squeeze-and-
// excitation layer, where oneDNN's fixed costs are most of its time. 16-bit
// layers (oneDNN's bfloat16 dot products) stay native.
//
// Depthwise layers (C_in/g = C_out/g = 1). PyTorch's backward runs through
// slow generic kernels (grad_weight many times its forward); fastconv's take
// about a forward each (kDepthwiseInput, kDepthwiseWeight). Its forward is
// oneDNN's kernel:
// - read channels-last, fast but for kernels of 10x10 to 19x19 taps
//   (kDepthwiseLarge) and strided layers (kDepthwiseStrided), where the
//   depthwise kernels (vectors across channels) may beat it;
// - read NCHW, fast at stride 2 and erratic at stride 1.
// NCHW stride-1 layers run the direct rows (vectors along image rows) where
// rows are at least kRowsFrom outputs long and most lanes of a staged row are
// outputs, OW / (OW + dw (KW - 1)) >= kRowLanes (below that oneDNN's forward
// wins), or where the kernel is large (kDepthwiseRows); the depthwise kernels
// (a layout copy each way) run the gradients elsewhere, and in the rows'
// place where they were measured faster (kDepthwiseNchwKernels for the
// forward, kDepthwiseNchwKernelGrads for the gradients). Float gradients of
// strided layers of up to 3x3 taps, which PyTorch computes in one call
// (convolution_backward), stay native unless kDepthwiseSmallStridedGrads
// holds, and the forward with them. bfloat16 layers ask the same rules'
// bfloat16 tables (kDepthwise*Bf16), float16 layers the float ones. The
// measurements behind each rule: docs/depthwise2d.md.
constexpr int64_t kLargeTaps = 100, kLargeTapsEnd = 400;  // channels-last forward, 10x10 to 19x19 taps
constexpr int64_t kRowsFrom = 14;
constexpr double kRowLanes = 0.75;
constexpr int64_t kJointNativeTaps = 9;

bool is_float(const ConvCall& c) { return c.dtype == at::kFloat || c.dtype == at::kDouble; }

Path pointwise_default(const ConvCall& c) {
  if (!is_float(c) || c.d.groups != 1) return Path::kNative;
  const Rule rule = c.op == ConvOp::kForward ? Rule::kPointwiseForward
      : c.op == ConvOp::kInput               ? Rule::kPointwiseInput
                                             : Rule::kPointwiseWeight;
  return rule_holds(rule, c.d, c.layout) ? Path::kIm2col : Path::kNative;
}

// Whether the depthwise rule `rule` (a float one) holds for the call, in the
// table of its dtype.
static_assert(size_t(Rule::kDepthwiseNchwKernelGradsBf16) - size_t(Rule::kDepthwiseRowsBf16) ==
                  size_t(Rule::kDepthwiseNchwKernelGrads) - size_t(Rule::kDepthwiseRows),
              "the bfloat16 depthwise rules follow the float ones' order");
bool depthwise_rule(Rule rule, const ConvCall& c) {
  if (c.dtype == at::kBFloat16) {
    rule = Rule(size_t(rule) - size_t(Rule::kDepthwiseRows) + size_t(Rule::kDepthwiseRowsBf16));
  }
  return rule_holds(rule, c.d, c.layout);
}

// A depthwise layer's own path for a forward or a gradient: the direct rows
// where they run it (NCHW, stride 1; `rows`: the forward's rows can be
// staged) unless the depthwise kernels were measured faster there
// (kDepthwiseNchwKernels, kDepthwiseNchwKernelGrads), else the depthwise
// kernels (vectors across channels).
Path depthwise_own(const ConvCall& c, bool rows) {
  const bool nchw_unit = c.layout != 1 && stride_one(c.d);
  const bool direct = c.op == ConvOp::kInput ? nchw_unit && !why_not_transposed(c.d, why_not_direct_rows)
                                             : nchw_unit && rows;
  if (!direct) return Path::kDepthwise;
  const Rule kernels = c.op == ConvOp::kForward ? Rule::kDepthwiseNchwKernels : Rule::kDepthwiseNchwKernelGrads;
  return depthwise_rule(kernels, c) ? Path::kDepthwise : Path::kDirect;
}

Path depthwise_default(const ConvCall& c) {
  const Conv2dIntDims& d = c.d;
  const bool channels_last = c.layout == 1, strided = !stride_one(d);
  const int64_t taps = d.kernel_size[0] * d.kernel_size[1], OW = d.out_size[1];
  const bool rows = OW >= kRowsFrom && !why_not_direct_rows(d);
  const bool full_rows = rows && is_float(c) && double(OW) >= kRowLanes * double(OW + d.dilation[1] * (d.kernel_size[1] - 1));
  const bool joint_native = strided && taps <= kJointNativeTaps && (is_float(c) || c.dtype == at::kBFloat16) &&
      !depthwise_rule(Rule::kDepthwiseSmallStridedGrads, c);
  switch (c.op) {
    case ConvOp::kForward:
      if (channels_last) {
        const bool own = (strided && !joint_native && depthwise_rule(Rule::kDepthwiseStrided, c)) ||
            (taps >= kLargeTaps && taps < kLargeTapsEnd && depthwise_rule(Rule::kDepthwiseLarge, c));
        return own || native_does_not_finish(c) ? Path::kDepthwise : Path::kNative;
      }
      return !strided && (full_rows || (rows && taps >= kLargeTaps)) && depthwise_rule(Rule::kDepthwiseRows, c)
          ? depthwise_own(c, rows)
          : Path::kNative;
    case ConvOp::kInput:
      return joint_native || !depthwise_rule(Rule::kDepthwiseInput, c) ? Path::kNative : depthwise_own(c, rows);
    case ConvOp::kWeight:
      return joint_native || !depthwise_rule(Rule::kDepthwiseWeight, c) ? Path::kNative : depthwise_own(c, rows);
  }
  return Path::kNative;
}

// fastconv's path for a call PyTorch would run with its generic kernel:
// depthwise_own for depthwise layers, else im2col.
Path own_conv2d_path(const ConvCall& c) {
  const Conv2dIntDims& d = c.d;
  if (d.in_channels_per_group() != 1 || d.out_channels_per_group() != 1) return Path::kIm2col;
  return depthwise_own(c, d.out_size[1] >= kRowsFrom && !why_not_direct_rows(d));
}

Path conv2d_default(const ConvCall& c) {
  const Conv2dIntDims& d = c.d;
  if (!c.device.is_cpu()) return Path::kNative;
  if (native_is_generic(c)) return own_conv2d_path(c);
  if (d.in_channels_per_group() == 1 && d.out_channels_per_group() == 1) return depthwise_default(c);
  if (conv2d_is_pointwise(d)) return pointwise_default(c);
  return Path::kNative;
}

}  // namespace

const char* path_name(Path path) {
  switch (path) {
    case Path::kNative: return "native";
    case Path::kDirect: return "direct";
    case Path::kFft: return "fft";
    case Path::kIm2col: return "im2col";
    case Path::kShifted: return "shifted";
    case Path::kDepthwise: return "depthwise";
  }
  return "?";
}

const char* op_name(ConvOp op) {
  switch (op) {
    case ConvOp::kForward: return "forward";
    case ConvOp::kInput: return "input";
    case ConvOp::kWeight: return "weight";
  }
  return "?";
}

Conv1dIntDims ConvCall::conv1d() const {
  return as_conv1d(d);
}

ConvCall make_call(ConvOp op, const Conv1dIntDims& d, const at::Tensor& activation) {
  return ConvCall{1, op, activation.scalar_type(), activation.device(), layout_of(activation),
                  threads_on(activation.device()), as_conv2d(d)};
}

ConvCall make_call(ConvOp op, const Conv2dIntDims& d, const at::Tensor& activation) {
  return ConvCall{2, op, activation.scalar_type(), activation.device(), layout_of(activation),
                  threads_on(activation.device()), d};
}

const std::vector<std::string>& algorithm_names(int dims) {
  static const std::vector<std::string> conv1d{"auto", "native", "direct", "fft"};
  static const std::vector<std::string> conv2d{"auto", "native", "direct", "im2col", "shifted", "depthwise", "fft"};
  return dims == 1 ? conv1d : conv2d;
}

void check_algorithm(const char* op, c10::string_view algorithm, int dims) {
  const auto& names = algorithm_names(dims);
  if (std::find(names.begin(), names.end(), std::string(algorithm)) != names.end()) return;
  std::string allowed;
  for (size_t i = 0; i < names.size(); ++i) {
    allowed += (i == 0 ? "'" : i + 1 == names.size() ? " or '" : ", '") + names[i] + "'";
  }
  TORCH_CHECK(false, op, ": algorithm must be ", allowed, ", but got '", std::string(algorithm), "'");
}

std::optional<std::string> why_not(Path path, const ConvCall& c) {
  if (path == Path::kNative) {
    if (c.d.in_size[0] == 0 || c.d.in_size[1] == 0) return std::string("PyTorch rejects an empty signal");
    if (native_does_not_finish(c)) {
      return std::string("PyTorch's kernel for it (oneDNN, bfloat16, channels-last, depthwise, at most ") +
          std::to_string(kNativeHangChannels) + " channels, kernel width >= " + std::to_string(kNativeHangWidth) +
          ") does not finish compiling on CPUs with AVX512-BF16 (torch 2.13)";
    }
    return std::nullopt;
  }
  const bool cuda = c.device.is_cuda();
  if (!c.device.is_cpu() && !cuda) return std::string("fastconv has no kernels for ") + c.device.str();
  if (c.dims == 1) {
    if (path == Path::kDirect || path == Path::kFft) return std::nullopt;
    return std::string("it is a conv2d path");
  }
  switch (path) {
    case Path::kNative:
    case Path::kIm2col:
      return std::nullopt;
    case Path::kFft:
      return why_not_fft2d(c.d);
    case Path::kDepthwise:
      if (c.d.in_channels_per_group() != 1 || c.d.out_channels_per_group() != 1) {
        return std::string("it needs a depthwise layer (groups == C_in == C_out)");
      }
      return std::nullopt;
    case Path::kDirect:
      if (cuda) return std::string("on CUDA conv2d runs im2col, depthwise, fft or native");
      // grad_input: the transposed stride-1 convolution, else phase by phase
      // (a strided layer: its phases' sub-kernels are smaller than the kernel).
      if (c.op == ConvOp::kInput && conv2d_transposed_padding(c.d)) return why_not_transposed(c.d, why_not_direct_rows);
      return why_not_direct_rows(c.d);
    case Path::kShifted:
      if (cuda) return std::string("on CUDA conv2d runs im2col, depthwise, fft or native");
      return c.op == ConvOp::kInput ? why_not_transposed(c.d, why_not_shifted) : why_not_shifted(c.d);
  }
  return std::nullopt;
}

std::vector<Path> candidates(const ConvCall& call) {
  std::vector<Path> out;
  for (Path p : kAllPaths) {
    if (!why_not(p, call)) out.push_back(p);
  }
  return out;
}

std::vector<Path> tuning_candidates(const ConvCall& call) {
  std::vector<Path> paths = candidates(call);
  if (call.dims != 1 || !call.device.is_cpu() || !has_work(call.d) || paths.size() < 2) return paths;
  const Conv1dPrediction t = conv1d_prediction(call);
  const auto predicted = [&](Path p) { return p == Path::kFft ? t.fft : p == Path::kDirect ? t.direct : t.native; };
  const double best = std::min({t.direct, t.fft, t.native});
  paths.erase(std::remove_if(paths.begin(), paths.end(),
                             [&](Path p) { return p != Path::kNative && predicted(p) > autotune::kHopelessRatio * best; }),
              paths.end());
  std::stable_sort(paths.begin(), paths.end(), [&](Path a, Path b) { return predicted(a) < predicted(b); });
  return paths;
}

Path default_path(const ConvCall& call) {
  // Empty calls: fastconv's own paths return them without a kernel launch.
  if (!has_work(call.d) && call.device.is_cpu()) return call.dims == 1 ? Path::kDirect : Path::kIm2col;
  return call.dims == 1 ? conv1d_default(call) : conv2d_default(call);
}

namespace {

std::optional<Path> forced(const ConvCall& call, c10::string_view algorithm) {
  if (algorithm == "auto") return std::nullopt;
  for (Path p : kAllPaths) {
    if (algorithm != path_name(p)) continue;
    const auto reason = why_not(p, call);
    TORCH_CHECK(!reason, "fastconv.conv", call.dims, "d (", op_name(call.op), "): algorithm='", path_name(p),
                "' cannot run these arguments: ", reason.value_or(""));
    return p;
  }
  check_algorithm(call.dims == 1 ? "fastconv.conv1d" : "fastconv.conv2d", algorithm, call.dims);
  return std::nullopt;
}

}  // namespace

Path peek_path(const ConvCall& call, c10::string_view algorithm) {
  if (const auto p = forced(call, algorithm)) return *p;
  if (autotune::enabled()) {
    if (const auto p = autotune::lookup(call)) return *p;
  }
  return default_path(call);
}

std::optional<Path> settled_path(const ConvCall& call, c10::string_view algorithm) {
  if (const auto p = forced(call, algorithm)) return *p;
  if (!autotune::enabled() || !has_work(call.d)) return default_path(call);
  if (const auto p = autotune::lookup(call)) return *p;
  const auto paths = tuning_candidates(call);
  if (paths.size() == 1) return paths[0];
  return std::nullopt;
}

ConvCall family_call(ConvOp op, const at::Tensor& input, const at::Tensor& weight, c10::SymIntArrayRef stride,
                     c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, const c10::SymInt& groups,
                     c10::string_view algorithm) {
  if (weight.dim() == 3) {
    return make_call(op, concrete(check_conv1d(input, weight, std::nullopt, stride, padding, dilation, groups,
                                               algorithm)),
                     input);
  }
  return make_call(op, concrete(check_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups,
                                             algorithm)),
                   input);
}

namespace {

std::atomic<int64_t> generation{0};

// eager_native's memo: the signature as integers, and its answer.
struct EagerMemo {
  struct Hash {
    size_t operator()(const std::vector<int64_t>& key) const {
      size_t h = key.size();
      for (int64_t v : key) h ^= std::hash<int64_t>()(v) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
      return h;
    }
  };
  static constexpr size_t kLimit = 4096;
  std::mutex mutex;
  std::unordered_map<std::vector<int64_t>, bool, Hash> answers;
};

EagerMemo& eager_memo() {
  static EagerMemo memo;
  return memo;
}

std::vector<int64_t> eager_key(const at::Tensor& input, const at::Tensor& weight, c10::IntArrayRef stride,
                               c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups, bool input_grad,
                               bool weight_grad) {
  std::vector<int64_t> key;
  key.reserve(8 + 3 * input.dim() + weight.dim() + stride.size() + padding.size() + dilation.size());
  const auto add = [&](c10::IntArrayRef values) {
    key.push_back(int64_t(values.size()));
    key.insert(key.end(), values.begin(), values.end());
  };
  add(input.sizes());
  add(input.strides());
  add(weight.sizes());
  add(stride);
  add(padding);
  add(dilation);
  key.push_back(groups);
  key.push_back(int64_t(input.scalar_type()));
  key.push_back(int64_t(input.device().type()) << 16 | int64_t(input.device().index() + 1));
  key.push_back(int64_t(input_grad) | int64_t(weight_grad) << 1);
  key.push_back(at::get_num_threads());
  key.push_back(settings_generation());
  return key;
}

}  // namespace

std::optional<bool> eager_native(const at::Tensor& input, const at::Tensor& weight, c10::IntArrayRef stride,
                                 c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                                 c10::string_view algorithm, bool input_grad, bool weight_grad) {
  if (algorithm != "auto") return algorithm == "native";
  auto key = eager_key(input, weight, stride, padding, dilation, groups, input_grad, weight_grad);
  auto& memo = eager_memo();
  {
    std::lock_guard<std::mutex> lock(memo.mutex);
    const auto it = memo.answers.find(key);
    if (it != memo.answers.end()) return it->second;
  }
  const auto sym = [](c10::IntArrayRef values) { return c10::fromIntArrayRefSlow(values); };
  bool native = true, settled = true;
  for (ConvOp op : {ConvOp::kForward, ConvOp::kInput, ConvOp::kWeight}) {
    if ((op == ConvOp::kInput && !input_grad) || (op == ConvOp::kWeight && !weight_grad)) continue;
    const auto p =
        settled_path(family_call(op, input, weight, sym(stride), sym(padding), sym(dilation), groups, algorithm),
                     algorithm);
    settled = settled && p.has_value();
    native = native && p == Path::kNative;
  }
  if (!settled) return std::nullopt;  // a signature still to be tuned is asked again
  std::lock_guard<std::mutex> lock(memo.mutex);
  if (memo.answers.size() >= EagerMemo::kLimit) memo.answers.clear();
  memo.answers.emplace(std::move(key), native);
  return native;
}

int64_t settings_generation() { return generation.load(std::memory_order_relaxed); }

void settings_changed() { generation.fetch_add(1); }

Path select_path(const ConvCall& call, c10::string_view algorithm, const std::function<void(Path)>& run) {
  if (const auto p = settled_path(call, algorithm)) return *p;
  return autotune::tune(call, tuning_candidates(call), run);
}

std::string conv2d_derivative_algorithm(ConvOp op, const Conv2dSymDims& d, const at::Tensor& activation,
                                        const std::string& algorithm) {
  if (algorithm != "direct" && algorithm != "shifted") return algorithm;
  const auto dims = maybe_concrete(d);
  const Path path = algorithm == "direct" ? Path::kDirect : Path::kShifted;
  return dims && !why_not(path, make_call(op, *dims, activation)) ? algorithm : "auto";
}

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> native_backward_if_chosen(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, const c10::SymInt& groups,
    const std::string& algorithm, bool with_bias) {
  const int dims = int(weight.dim()) - 2;
  std::optional<Conv2dIntDims> d;
  if (dims == 1) {
    d = maybe_concrete(as_conv2d(check_conv1d(input, weight, std::nullopt, stride, padding, dilation, groups, algorithm)));
  } else {
    d = maybe_concrete(check_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups, algorithm));
  }
  if (!d) return std::nullopt;
  ConvCall input_call = make_call(ConvOp::kInput, *d, grad_output), weight_call = make_call(ConvOp::kWeight, *d, input);
  input_call.dims = weight_call.dims = dims;
  const auto native = [&](const ConvCall& call) {
    if (algorithm != "auto") return algorithm == "native";
    return settled_path(call, algorithm) == Path::kNative;  // untuned: each operator tunes
  };
  if (!native(input_call) || !native(weight_call)) return std::nullopt;
  return native::backward(grad_output, input, weight, *d, dims, with_bias);
}

bool conv2d_is_pointwise(const Conv2dIntDims& d) {
  return d.kernel_size[0] == 1 && d.kernel_size[1] == 1 && stride_one(d) && d.padding[0] == 0 &&
      d.padding[1] == 0;
}

std::optional<std::array<int64_t, 2>> conv2d_transposed_padding(const Conv2dIntDims& d) {
  std::array<int64_t, 2> padding{};
  for (int i = 0; i < 2; ++i) {
    padding[i] = d.dilation[i] * (d.kernel_size[i] - 1) - d.padding[i];
    if (d.stride[i] != 1 || padding[i] < 0) return std::nullopt;
  }
  return padding;
}

Conv2dIntDims conv2d_transposed(Conv2dIntDims d, const std::array<int64_t, 2>& padding) {
  std::swap(d.in_channels, d.out_channels);
  std::swap(d.in_size, d.out_size);
  d.padding = padding;
  return d;
}

}  // namespace fastconv
