// Register-blocked conv1d micro-kernels for the CPU, compiled once per
// instruction set (isa/*.cpp) and picked at run time (dispatch.cpp).
//
// They see only plain float/double arrays prepared by the driver
// (conv1d_kernel.cpp): zero-padded, stride-deinterleaved input rows in a
// scratch buffer and a table of tap offsets into it, so one loop serves every
// stride, dilation and padding. Tap t = icg * K + k reads scratch at
// offsets[t] + j for output position j of the tile.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fastconv::cpu {

template <typename T>
struct ForwardTile {
  const T* scratch;         // input rows of the group, padded and deinterleaved; see scratch_buffer
  const int64_t* offsets;   // taps: offset of output position 0 in scratch
  int64_t taps;             // C_in / groups * K
  const T* weight;          // [C_out / groups][taps], contiguous
  const T* bias;            // [C_out / groups] or nullptr
  T* out;                   // out[oc * out_stride + j]
  int64_t out_stride;
  int64_t out_channels;     // C_out / groups
  int64_t length;           // output positions in the tile
  // Large outputs: write whole aligned vectors with non-temporal stores, which
  // skip the read-for-ownership of lines that are only written.
  bool streaming = false;
};

template <typename T>
struct WeightTile {
  const T* scratch;         // as ForwardTile
  const int64_t* offsets;
  int64_t taps;
  const T* grad_out;        // grad_out[oc * grad_stride + j]
  int64_t grad_stride;
  int64_t out_channels;
  int64_t length;           // output positions of each row
  T* grad_weight;           // [C_out / groups][taps], accumulated into
  // Rows of the tile (samples), each `length` long: row s reads scratch
  // from s * scratch_pitch and grad_out from s * grad_pitch on.
  int64_t rows = 1;
  int64_t scratch_pitch = 0;
  int64_t grad_pitch = 0;
  // [C_out / groups], accumulated into: the sum of grad_out, or nullptr.
  T* grad_bias = nullptr;
};

// Many short rows of convolve: out[r][t] = sum_j a_r[j] * v_r[t + offset - j]
// (true convolution, zero outside), computed for a vector of rows at once.
// Row r's leading index is the multi-index of r in `sizes`; its a and v rows
// start at that index dotted with a_strides / v_strides (0 where broadcast),
// so broadcast operands are never copied.
constexpr int kConvolveMaxDims = 6;
constexpr int64_t kConvolveSmall = 16;  // longest a and v rows the row kernel takes

template <typename T>
struct ConvolveRows {
  const T* a;
  const T* v;
  T* out;                  // row r at out + r * length
  int64_t n, m;            // row lengths, m <= n <= kConvolveSmall
  int64_t offset, length;  // length <= 2 * kConvolveSmall
  int64_t row_begin, row_end;
  // Large output: contiguous rows of the row-vector kernel are written
  // through a row buffer with non-temporal stores (no read-for-ownership).
  bool streaming;
  int ndim;
  int64_t sizes[kConvolveMaxDims];
  int64_t a_strides[kConvolveMaxDims];
  int64_t v_strides[kConvolveMaxDims];
};

// The FFT path's channel mixing for one group: for rows b < rows (segments
// of any sample) and values j < length (interleaved complex: re, im),
//   y[o][b][j] = sum_c x[c][b][j] (*) w[o][c][j]   (complex product)
template <typename T>
struct MixTile {
  const T* x;                    // x[c * x_channel_stride + x_rows[b] + j]
  int64_t x_channel_stride;
  const int64_t* x_rows;
  const T* w;                    // w[(o * in_channels + c) * w_stride + j]
  int64_t w_stride;
  T* y;                          // y[o * y_channel_stride + y_rows[b] + j]
  int64_t y_channel_stride;
  const int64_t* y_rows;
  int64_t in_channels, out_channels, rows, length;  // length even
};

// ---- Causal depthwise convolution (causal_kernel.cpp): an activation
// applied to the biased sum, and the four micro-kernels of its forward and
// weight gradient, vectorized along time or along channels.
enum class Activation : int { kNone = 0, kSilu = 1 };

// One channel, vectors along time: for j < n,
//   out[j] = act(bias + sum_k w[k] * win[j + k * dilation]),
// win holding n + dilation * (taps - 1) values.
// (For float: win_bf16 / out_bf16, when set, replace win / out by bfloat16
// values, as their bits, widened and rounded in registers.)
template <typename T>
struct CausalTimeTile {
  const T* win;
  const T* w;  // [taps]
  int64_t taps, dilation;
  T bias;
  T* out;
  int64_t n;
  Activation act;
  const uint16_t* win_bf16 = nullptr;
  uint16_t* out_bf16 = nullptr;
  bool streaming = false;  // non-temporal stores of whole aligned vectors (outputs past the caches)
};

// Vectors along channels: window position i is the row rows[i] of `channels`
// values; for j < n and c < channels,
//   out[j * out_stride + c] = act(bias[c] + sum_k w[k * channels + c] * rows[j + k * dilation][c]).
// (For float: rows_bf16 / out_bf16 as in CausalTimeTile; rows_bf16 only with out_bf16.)
template <typename T>
struct CausalChannelTile {
  const T* const* rows;
  const T* w;     // [taps][channels]
  const T* bias;  // [channels] or nullptr
  T* out;
  int64_t out_stride;
  int64_t channels, taps, dilation, n;
  Activation act;
  const uint16_t* const* rows_bf16 = nullptr;
  uint16_t* out_bf16 = nullptr;
  bool streaming = false;  // as in CausalTimeTile
};

// Weight and bias gradients of a CausalTimeTile, accumulated into:
//   gw[k] += sum_{j<n} g[j] * win[j + k * dilation],  *gb += sum_{j<n} g[j].
template <typename T>
struct CausalTimeWeightTile {
  const T* g;
  const T* win;
  int64_t taps, dilation, n;
  T* gw;
  T* gb;
};

// The same for a CausalChannelTile:
//   gw[k * channels + c] += sum_j g[j * g_stride + c] * rows[j + k * dilation][c],
//   gb[c] += sum_j g[j * g_stride + c].
template <typename T>
struct CausalChannelWeightTile {
  const T* g;
  int64_t g_stride;
  const T* const* rows;
  int64_t channels, taps, dilation, n;
  T* gw;
  T* gb;
};

// The SiLU backward of a CausalTimeTile in one pass, taps <= kCausalFusedTaps:
// for j < n, pre = bias + sum_k w[k] * win[j + k * dilation],
//   g[j] = gy[j] * silu'(pre),
//   gw[k] += sum_j g[j] * win[j + k * dilation],  *gb += sum_j g[j].
// grad_y is read where it lies (gy may equal g). For float: win_bf16 as in
// CausalTimeTile, and gy_bf16 in place of gy (bfloat16 bits); win_bf16 only
// with gy_bf16.
constexpr int64_t kCausalFusedTaps = 8;

template <typename T>
struct CausalTimeSiluGradTile {
  const T* win;
  const T* w;  // [taps]
  int64_t taps, dilation;
  T bias;
  const T* gy;
  T* g;
  int64_t n;
  T* gw;
  T* gb;
  const uint16_t* win_bf16 = nullptr;
  const uint16_t* gy_bf16 = nullptr;
};

// The SiLU backward of a CausalChannelTile in one pass: for rows j < n,
//   pre = bias[c] + sum_k w[k * channels + c] * rows[j + k * dilation][c],
//   g[j * g_stride + c] *= silu'(pre)          (g holds grad_y on entry),
// and for j < n_weight the sums of a CausalChannelWeightTile of that g into
// gw and gb. (Separately: the pre-activation written, read back, and x read
// again by the weight tile.) With gy: grad_y read where it lies, g =
// gy[j * gy_stride + c] * silu'(pre) written to g. For float with rows_bf16
// and gy_bf16: x and grad_y read as bfloat16 bits where they lie, as with gy.
template <typename T>
struct CausalChannelSiluGradTile {
  const T* const* rows;
  const T* w;     // [taps][channels]
  const T* bias;  // [channels] or nullptr
  T* g;
  int64_t g_stride;
  int64_t channels, taps, dilation, n, n_weight;
  T* gw;
  T* gb;
  const uint16_t* const* rows_bf16 = nullptr;
  const T* gy = nullptr;
  const uint16_t* gy_bf16 = nullptr;
  int64_t gy_stride = 0;
};

// Decoding steps, for each row r < rows: for c < channels, with the window
// win[i] = state[r][c * state_stride + i] for i < S (oldest first) and
// x[r][t * x_stride + c] for i = S + t,
//   out[r][t * out_stride + c] = act(bias[c] + sum_k w[c * w_stride + k] * win[S + t - (K-1) + k]),
// then state[r][c * state_stride + i] = win[T + i] for i < S. S + T and K are
// at most kCausalUpdateWindow. E: float, or bfloat16 as its bits (uint16_t),
// computed in float.
constexpr int64_t kCausalUpdateWindow = 64;

template <typename E>
struct CausalUpdateRows {
  E* const* state;
  int64_t state_stride;
  const E* const* x;
  int64_t x_stride;
  const E* w;
  int64_t w_stride;
  const E* bias;  // [channels] or nullptr
  E* const* out;
  int64_t out_stride;
  int64_t rows, channels, taps, S, T;
  Activation act;
};

// ---- Depthwise conv2d with vectors across channels (depthwise2d_kernel.cpp):
// pixels are rows of `channels` values (channels-last). E is where a kernel
// reads and writes: T itself, or bfloat16 bits (uint16_t) computed in float.
//
// A run of n pixels: for j < n and c < channels,
//   out[j * out_step + c] = bias[c] + sum_{t < taps} w[t][c] * in[t][j * in_step + c].
template <typename E, typename T>
struct DepthwisePixels {
  const E* const* in;  // [taps]: pixel 0 of each tap
  int64_t in_step;
  const T* const* w;   // [taps]: rows of `channels` weights
  int64_t taps;
  const T* bias;       // [channels] or nullptr
  E* out;
  int64_t out_step;
  int64_t n, channels;
  // Taps in rows of row_taps whose inputs are consecutive pixels
  // (in[t + k] == in[t] + k * in_step for k < row_taps), 0 if not: the kernel
  // then loads each input pixel once for the whole row of taps.
  int64_t row_taps = 0;
};

// Its weight gradient over `rows` runs of n pixels, accumulated into:
//   gw[t][c] += sum_{r < rows, j < n} g[r * g_row_step + j * g_step + c]
//                                     * in[t][r * in_row_step + j * in_step + c].
template <typename E, typename T>
struct DepthwisePixelsWeight {
  const E* g;
  int64_t g_step, g_row_step;
  const E* const* in;
  int64_t in_step, in_row_step;
  T* const* gw;  // [taps]: rows of `channels` sums
  int64_t taps, rows, n, channels;
  // Taps in rows of row_taps on consecutive pixels, 0 if not (as DepthwisePixels').
  int64_t row_taps = 0;
};

// Outputs from this size on are written with non-temporal stores, around the
// caches (conv1d, conv2d and convolve).
constexpr int64_t kStreamingBytes = int64_t(16) << 20;

// Input positions a tile of `length` outputs may read past its last tap,
// so vector loads of a partial last vector, and the aligned vectors one
// past a block that the forward kernel shifts into place, stay inside the
// scratch row.
constexpr int64_t kScratchSlack = 16;

// A scratch buffer of n elements in buf, aligned to 64 bytes: the forward
// kernel loads some taps' vectors as aligned vectors (see forward_block).
template <typename T>
T* scratch_buffer(std::vector<T>& buf, int64_t n) {
  constexpr int64_t kAlign = 64;
  const auto need = static_cast<size_t>(n + kAlign / static_cast<int64_t>(sizeof(T)));
  if (buf.size() < need) {
    buf.resize(need);
  }
  const auto addr = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<T*>((addr + kAlign - 1) & ~static_cast<uintptr_t>(kAlign - 1));
}

struct KernelTable {
  const char* name;
  void (*forward_f32)(const ForwardTile<float>&);
  void (*forward_f64)(const ForwardTile<double>&);
  void (*weight_f32)(const WeightTile<float>&);
  void (*weight_f64)(const WeightTile<double>&);
  void (*convolve_f32)(const ConvolveRows<float>&);
  void (*convolve_f64)(const ConvolveRows<double>&);
  void (*mix_f32)(const MixTile<float>&);
  void (*mix_f64)(const MixTile<double>&);
  // n bfloat16 values (as their bits) to float and back (round to nearest even).
  void (*widen_bf16)(const uint16_t* src, float* dst, int64_t n);
  void (*narrow_bf16)(const float* src, uint16_t* dst, int64_t n);
  // The same for float16 (round to nearest even); null where the level lacks F16C.
  void (*widen_f16)(const uint16_t* src, float* dst, int64_t n);
  void (*narrow_f16)(const float* src, uint16_t* dst, int64_t n);
  void (*causal_time_f32)(const CausalTimeTile<float>&);
  void (*causal_time_f64)(const CausalTimeTile<double>&);
  void (*causal_channel_f32)(const CausalChannelTile<float>&);
  void (*causal_channel_f64)(const CausalChannelTile<double>&);
  void (*causal_time_weight_f32)(const CausalTimeWeightTile<float>&);
  void (*causal_time_weight_f64)(const CausalTimeWeightTile<double>&);
  void (*causal_channel_weight_f32)(const CausalChannelWeightTile<float>&);
  void (*causal_channel_weight_f64)(const CausalChannelWeightTile<double>&);
  void (*causal_time_silu_grad_f32)(const CausalTimeSiluGradTile<float>&);
  void (*causal_time_silu_grad_f64)(const CausalTimeSiluGradTile<double>&);
  void (*causal_channel_silu_grad_f32)(const CausalChannelSiluGradTile<float>&);
  void (*causal_channel_silu_grad_f64)(const CausalChannelSiluGradTile<double>&);
  // g[j] *= silu'(pre[j]) for j < n, silu'(x) = s (1 + x (1 - s)), s = sigmoid(x).
  void (*silu_grad_f32)(const float* pre, float* g, int64_t n);
  void (*silu_grad_f64)(const double* pre, double* g, int64_t n);
  void (*causal_update_f32)(const CausalUpdateRows<float>&);
  void (*causal_update_bf16)(const CausalUpdateRows<uint16_t>&);
  void (*depthwise_f32)(const DepthwisePixels<float, float>&);
  void (*depthwise_f64)(const DepthwisePixels<double, double>&);
  void (*depthwise_bf16)(const DepthwisePixels<uint16_t, float>&);
  void (*depthwise_weight_f32)(const DepthwisePixelsWeight<float, float>&);
  void (*depthwise_weight_f64)(const DepthwisePixelsWeight<double, double>&);
  void (*depthwise_weight_bf16)(const DepthwisePixelsWeight<uint16_t, float>&);
};

// The table for the best instruction set this CPU supports, or the one forced
// by FASTCONV_CPU_CAPABILITY / set_capability.
const KernelTable& kernels();

// Runs a micro-kernel of the active table, picked by the argument's type.
inline void run(const ForwardTile<float>& t) { kernels().forward_f32(t); }
inline void run(const ForwardTile<double>& t) { kernels().forward_f64(t); }
inline void run(const WeightTile<float>& t) { kernels().weight_f32(t); }
inline void run(const WeightTile<double>& t) { kernels().weight_f64(t); }
inline void run(const ConvolveRows<float>& t) { kernels().convolve_f32(t); }
inline void run(const ConvolveRows<double>& t) { kernels().convolve_f64(t); }
inline void run(const MixTile<float>& t) { kernels().mix_f32(t); }
inline void run(const MixTile<double>& t) { kernels().mix_f64(t); }
inline void run(const CausalTimeTile<float>& t) { kernels().causal_time_f32(t); }
inline void run(const CausalTimeTile<double>& t) { kernels().causal_time_f64(t); }
inline void run(const CausalChannelTile<float>& t) { kernels().causal_channel_f32(t); }
inline void run(const CausalChannelTile<double>& t) { kernels().causal_channel_f64(t); }
inline void run(const CausalTimeWeightTile<float>& t) { kernels().causal_time_weight_f32(t); }
inline void run(const CausalTimeWeightTile<double>& t) { kernels().causal_time_weight_f64(t); }
inline void run(const CausalChannelWeightTile<float>& t) { kernels().causal_channel_weight_f32(t); }
inline void run(const CausalChannelWeightTile<double>& t) { kernels().causal_channel_weight_f64(t); }
inline void run(const CausalTimeSiluGradTile<float>& t) { kernels().causal_time_silu_grad_f32(t); }
inline void run(const CausalTimeSiluGradTile<double>& t) { kernels().causal_time_silu_grad_f64(t); }
inline void run(const CausalChannelSiluGradTile<float>& t) { kernels().causal_channel_silu_grad_f32(t); }
inline void run(const CausalChannelSiluGradTile<double>& t) { kernels().causal_channel_silu_grad_f64(t); }
inline void run(const CausalUpdateRows<float>& t) { kernels().causal_update_f32(t); }
inline void run(const CausalUpdateRows<uint16_t>& t) { kernels().causal_update_bf16(t); }
inline void run(const DepthwisePixels<float, float>& t) { kernels().depthwise_f32(t); }
inline void run(const DepthwisePixels<double, double>& t) { kernels().depthwise_f64(t); }
inline void run(const DepthwisePixels<uint16_t, float>& t) { kernels().depthwise_bf16(t); }
inline void run(const DepthwisePixelsWeight<float, float>& t) { kernels().depthwise_weight_f32(t); }
inline void run(const DepthwisePixelsWeight<double, double>& t) { kernels().depthwise_weight_f64(t); }
inline void run(const DepthwisePixelsWeight<uint16_t, float>& t) { kernels().depthwise_weight_bf16(t); }
inline void silu_grad(const float* pre, float* g, int64_t n) { kernels().silu_grad_f32(pre, g, n); }
inline void silu_grad(const double* pre, double* g, int64_t n) { kernels().silu_grad_f64(pre, g, n); }

// Instruction sets this build can use on this CPU, best first ("avx512_bf16", "avx512", "avx2", "default").
std::vector<std::string> supported_capabilities();

// Whether the CPU has the AVX-512 subsets the avx512 tables use (F, VL, BW, DQ).
bool has_avx512();

// Whether the CPU has bfloat16 dot-product instructions (AVX512_BF16): oneDNN
// multiplies bfloat16 with them, where the tile kernels widen to float.
bool has_bf16_dot_product();

// Selects a capability by name ("" resets to the environment / best); returns
// the active one. Throws for an unknown or unsupported name.
std::string set_capability(const std::string& name);

// Per-ISA tables (isa/*.cpp).
const KernelTable& kernels_default_isa();
#if defined(__x86_64__) || defined(_M_X64)
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
const KernelTable& kernels_avx512_bf16();
#endif

}  // namespace fastconv::cpu
