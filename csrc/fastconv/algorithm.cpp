#include "fastconv/algorithm.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>

#include "fastconv/cpu/tile_kernels.h"
#include "fastconv/fft/fft_conv1d.h"

namespace fastconv {
namespace {

// One run of python -m fastconv_ext.calibrate (fp32, 2 threads) per CPU kind
// (an AVX-512 and an AVX2-only AMD EPYC VM), all constants from the same run
// so that their ratios, which decide, are consistent. A calibrated profile
// file replaces them.
constexpr CostProfile kAvx512Profile{
    /*direct_small=*/7.90e-12, /*direct_dense=*/3.97e-12, /*direct_call=*/4.03e-6,
    /*fft_nlogn=*/5.90e-11,    /*fft_cmac=*/4.06e-12,   /*fft_byte=*/1e-15, /*fft_call=*/3.01e-5,
    /*threads=*/2, /*native_small=*/1.55e-11, /*native_dense=*/4.21e-12, /*native_call=*/2.76e-5};
constexpr CostProfile kAvx2Profile{
    /*direct_small=*/4.37e-11, /*direct_dense=*/2.00e-11, /*direct_call=*/1.75e-5,
    /*fft_nlogn=*/2.02e-10,    /*fft_cmac=*/1.51e-10,   /*fft_byte=*/1e-15, /*fft_call=*/1.68e-4,
    /*threads=*/2, /*native_small=*/6.26e-11, /*native_dense=*/1.65e-11, /*native_call=*/9.61e-5};

// No GPU has measured these: cuFFT against the tiled direct kernels,
// as rough rates of an H100-class device.
constexpr CostProfile kCudaProfile{
    /*direct_small=*/2e-13, /*direct_dense=*/1e-13, /*direct_call=*/1e-5,
    /*fft_nlogn=*/2e-12,    /*fft_cmac=*/1e-12,     /*fft_byte=*/5e-13, /*fft_call=*/4e-5,
    /*threads=*/1, /*native_small=*/1e-13, /*native_dense=*/2e-14, /*native_call=*/1e-5};

const char* kKeys[] = {"direct_small", "direct_dense", "direct_call", "fft_nlogn",
                       "fft_cmac",     "fft_byte",     "fft_call",    "threads",
                       "native_small", "native_dense", "native_call"};
constexpr size_t kNumKeys = sizeof(kKeys) / sizeof(kKeys[0]);

std::mutex profile_mutex;
std::optional<CostProfile> active_profile;

// "key value" lines; unknown keys and comments (#) are ignored, missing keys
// keep the built-in values.
CostProfile read_profile_file(const std::string& path) {
  std::vector<double> values = built_in_cost_profile(this_cpu_kind()).to_vector();
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key;
    double value = 0;
    if (!(fields >> key >> value) || key.empty() || key[0] == '#') continue;
    for (size_t i = 0; i < kNumKeys; ++i) {
      if (key == kKeys[i] && std::isfinite(value) && value > 0) values[i] = value;
    }
  }
  return CostProfile::from_vector(values);
}

double interpolate_direct_rate(const CostProfile& p, int64_t pairs) {
  // Seconds per MAC falls from direct_small (1 channel pair) to direct_dense
  // (16 and more: the register blocks are full), geometrically in the pairs.
  const double t = std::clamp(std::log2(double(std::max<int64_t>(pairs, 1))) / 4.0, 0.0, 1.0);
  return p.direct_small * std::pow(p.direct_dense / p.direct_small, t);
}

}  // namespace

CpuKind this_cpu_kind() {
  static const CpuKind kind = cpu::has_avx512() ? CpuKind::kAvx512 : CpuKind::kAvx2;
  return kind;
}

CpuKind cpu_kind_named(const std::string& name) {
  for (CpuKind kind : {CpuKind::kAvx512, CpuKind::kAvx2}) {
    if (name == cpu_kind_name(kind)) return kind;
  }
  TORCH_CHECK(false, "fastconv: the built-in measurements are for CPU kinds 'avx512' and 'avx2', but got '", name, "'");
}

const char* cpu_kind_name(CpuKind kind) { return kind == CpuKind::kAvx512 ? "avx512" : "avx2"; }

CostProfile built_in_cost_profile(CpuKind kind) { return kind == CpuKind::kAvx512 ? kAvx512Profile : kAvx2Profile; }

std::vector<double> CostProfile::to_vector() const {
  return {direct_small, direct_dense, direct_call, fft_nlogn, fft_cmac,     fft_byte,
          fft_call,     threads,      native_small, native_dense, native_call};
}

CostProfile CostProfile::from_vector(const std::vector<double>& v) {
  TORCH_CHECK(v.size() == kNumKeys, "fastconv: a cost profile has ", kNumKeys, " values (",
              "direct_small, direct_dense, direct_call, fft_nlogn, fft_cmac, fft_byte, fft_call, threads, ",
              "native_small, native_dense, native_call), but got ",
              v.size());
  for (double x : v) {
    TORCH_CHECK(std::isfinite(x) && x > 0, "fastconv: cost profile values must be positive, but got ", x);
  }
  return CostProfile{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10]};
}

std::string cpu_profile_path() {
  if (const char* path = std::getenv("FASTCONV_PROFILE")) return path;
  std::string base;
  if (const char* cache = std::getenv("XDG_CACHE_HOME")) {
    base = cache;
  } else if (const char* home = std::getenv("HOME")) {
    base = std::string(home) + "/.cache";
  } else {
    return "";
  }
  return base + "/fastconv/cpu_profile.txt";
}

CostProfile cpu_cost_profile() {
  std::lock_guard<std::mutex> lock(profile_mutex);
  if (!active_profile) {
    const std::string path = cpu_profile_path();
    active_profile = path.empty() ? built_in_cost_profile(this_cpu_kind()) : read_profile_file(path);
  }
  return *active_profile;
}

void set_cpu_cost_profile(const CostProfile& profile) {
  std::lock_guard<std::mutex> lock(profile_mutex);
  active_profile = profile;
}

double direct_seconds(const Conv1dIntDims& d, const CostProfile& p, int threads) {
  const double macs = double(d.batch) * d.out_channels * d.out_size[0] * d.in_channels_per_group() *
      d.kernel_size[0];
  const double rate = interpolate_direct_rate(p, d.in_channels_per_group() * d.out_channels_per_group());
  return p.direct_call + macs * rate * p.threads / threads;
}

double fft_seconds(const Conv1dIntDims& d, const CostProfile& p, int threads) {
  const int64_t kernel = d.dilation[0] * (d.kernel_size[0] - 1) + 1;
  const int64_t outputs = (d.out_size[0] - 1) * d.stride[0] + 1;
  const fft::FftPlan plan = fft::plan_correlation(
      kernel, outputs, fft::correlation_work(d.batch, d.in_channels, d.out_channels, d.groups));
  const double n = double(plan.size), spectrum = n / 2 + 1;
  const double transforms = double(plan.segments) * d.batch * (d.in_channels + d.out_channels) +
      double(d.out_channels) * d.in_channels_per_group();
  const double cmacs = double(plan.segments) * d.batch * d.out_channels * d.in_channels_per_group() * spectrum;
  // Complex spectra of inputs and outputs and the kernels', and the real
  // segment results, in float: large ones are fresh memory, faulted in.
  const double bytes = 8 * spectrum * (double(plan.segments) * d.batch * (d.in_channels + d.out_channels) +
                                       double(d.out_channels) * d.in_channels_per_group()) +
      4 * n * double(plan.segments) * d.batch * d.out_channels;
  return p.fft_call + bytes * p.fft_byte +
      (transforms * fft::transform_cost(plan.size) * p.fft_nlogn + cmacs * p.fft_cmac) * p.threads / threads;
}

double native_seconds(const Conv1dIntDims& d, const CostProfile& p, int threads) {
  const double macs = double(d.batch) * d.out_channels * d.out_size[0] * d.in_channels_per_group() *
      d.kernel_size[0];
  // Geometric from one channel pair per group to 256 (a GEMM wide enough to
  // run at its peak).
  const double pairs = double(std::max<int64_t>(d.in_channels_per_group() * d.out_channels_per_group(), 1));
  const double t = std::clamp(std::log2(pairs) / 8.0, 0.0, 1.0);
  const double rate = p.native_small * std::pow(p.native_dense / p.native_small, t);
  return p.native_call + macs * rate * p.threads / threads;
}

std::pair<CostProfile, int> cost_profile_for(c10::DeviceType device) {
  if (device == c10::DeviceType::CUDA) return {kCudaProfile, 1};
  return {cpu_cost_profile(), at::get_num_threads()};
}

}  // namespace fastconv
