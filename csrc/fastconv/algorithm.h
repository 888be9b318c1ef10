// The cost model of conv1d's paths (direct, FFT and PyTorch's own kernel),
// which path.cpp's default rules weigh: constants measured on the machine (python -m fastconv_ext.calibrate writes them to a
// profile file, read once per process), with built-in defaults otherwise.
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/util/string_view.h>

#include <cstdint>

#include <string>
#include <utility>
#include <vector>

#include "fastconv/shape.h"

namespace fastconv {

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
  double native_small;  // PyTorch's kernel: seconds per multiply-add, one channel pair per group
  double native_dense;  // the same from 256 channel pairs per group (a full GEMM)
  double native_call;   // seconds per call

  std::vector<double> to_vector() const;
  static CostProfile from_vector(const std::vector<double>& v);
};

// The kinds of CPU the built-in measurements come from (this file's cost
// constants and conv2d's rule tables, conv2d_rules.cpp): python -m
// fastconv_ext.calibrate on one with AVX-512 and on one with AVX2 only. How
// fastconv's kernels compare with PyTorch's follows the vector width both
// get; a CPU uses its kind's measurements until it is calibrated.
enum class CpuKind : uint8_t { kAvx512, kAvx2 };
CpuKind this_cpu_kind();
CpuKind cpu_kind_named(const std::string& name);  // "avx512" or "avx2"
const char* cpu_kind_name(CpuKind kind);
CostProfile built_in_cost_profile(CpuKind kind);

// The CPU profile in use: set_cost_profile's, else the profile file
// ($FASTCONV_PROFILE, default ~/.cache/fastconv/cpu_profile.txt), else this
// CPU kind's built-in constants.
CostProfile cpu_cost_profile();
void set_cpu_cost_profile(const CostProfile& profile);
std::string cpu_profile_path();

// The profile and thread count the model uses on `device`.
std::pair<CostProfile, int> cost_profile_for(c10::DeviceType device);

// Predicted seconds of the forward convolution on `device` with each algorithm.
double direct_seconds(const Conv1dIntDims& d, const CostProfile& p, int threads);
double fft_seconds(const Conv1dIntDims& d, const CostProfile& p, int threads);
double native_seconds(const Conv1dIntDims& d, const CostProfile& p, int threads);

}  // namespace fastconv
