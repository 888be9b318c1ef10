// The choice between direct and FFT conv1d: a cost model whose constants are
// measured on the machine (python -m fastconv_ext.calibrate writes them to a
// profile file, read once per process), with built-in defaults otherwise.
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/util/string_view.h>

#include <string>
#include <utility>
#include <vector>

#include "fastconv/shape.h"

namespace fastconv {

enum class Conv1dAlgorithm { kDirect, kFft };

// Seconds = fixed cost + work / rate, for each algorithm. Per-thread-count:
// work terms were measured with `threads` threads and scale inversely.
struct CostProfile {
  double direct_small;  // seconds per multiply-add, one channel per group mixing
  double direct_dense;  // seconds per multiply-add, >= 16 channel pairs per group
  double direct_call;   // seconds per call
  double fft_nlogn;     // seconds per unit of fft::transform_cost (n log2 n) of one real transform
  double fft_cmac;      // seconds per complex multiply-add of channel mixing
  double fft_byte;      // seconds per byte of spectra and results written (fresh memory)
  double fft_call;      // seconds per call
  double threads;       // thread count the work terms were measured with

  std::vector<double> to_vector() const;
  static CostProfile from_vector(const std::vector<double>& v);
};

// The CPU profile in use: set_cost_profile's, else the profile file
// ($FASTCONV_PROFILE, default ~/.cache/fastconv/cpu_profile.txt), else defaults.
CostProfile cpu_cost_profile();
void set_cpu_cost_profile(const CostProfile& profile);
std::string cpu_profile_path();

// The profile and thread count the model uses on `device`.
std::pair<CostProfile, int> cost_profile_for(c10::DeviceType device);

// Predicted seconds of the forward convolution on `device` with each algorithm.
double direct_seconds(const Conv1dIntDims& d, const CostProfile& p, int threads);
double fft_seconds(const Conv1dIntDims& d, const CostProfile& p, int threads);

// The algorithm `algorithm` names, or the one the model predicts faster for
// "auto": for the forward, and for grad_input, which does the same work on
// the same sizes.
Conv1dAlgorithm choose_conv1d_algorithm(
    const Conv1dIntDims& d, c10::string_view algorithm, c10::DeviceType device);

// The same for the weight gradient, whose FFT is one of two correlations
// (fft_conv1d.h), the cheaper for the sizes: by segments of the forward's
// sizes, or the input with the whole of grad_output, whose C_out x C_in /
// groups inverse transforms as long as the sequence made it 10x slower than
// the direct kernels where the forward's FFT was the faster (64 x 64
// channels, K = 9, L = 4096: 74 ms against 7).
Conv1dAlgorithm choose_conv1d_weight_algorithm(
    const Conv1dIntDims& d, c10::string_view algorithm, c10::DeviceType device);

}  // namespace fastconv
