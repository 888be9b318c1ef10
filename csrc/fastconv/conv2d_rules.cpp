#include "fastconv/conv2d_rules.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>

#include "fastconv/algorithm.h"

namespace fastconv {
namespace {

struct Probe {
  double batch, in_channels, out_channels, pixels, taps, stride, layout, speedup;
};

// A layer's sizes (batch, C_in, C_out, output pixels, taps, stride) in
// doublings: distances are taken between these.
using Sizes = std::array<double, 6>;
Sizes log_sizes(double batch, double in_channels, double out_channels, double pixels, double taps, double stride) {
  Sizes out{batch, in_channels, out_channels, pixels, taps, stride};
  for (double& v : out) v = std::log2(std::max(v, 1.0));
  return out;
}

// A probe with its logarithms, computed once.
struct Measured {
  Probe probe;
  Sizes sizes;
  double log_speedup;
};
Measured measured(const Probe& p) {
  return {p, log_sizes(p.batch, p.in_channels, p.out_channels, p.pixels, p.taps, p.stride), std::log(p.speedup)};
}
using Tables = std::array<std::vector<Measured>, kNumRules>;

const char* kRuleNames[kNumRules] = {"pointwise_forward",
                                     "pointwise_input",
                                     "pointwise_weight",
                                     "depthwise_rows",
                                     "depthwise_strided",
                                     "depthwise_large",
                                     "depthwise_input",
                                     "depthwise_weight",
                                     "depthwise_small_strided_grads",
                                     "depthwise_nchw_kernels",
                                     "depthwise_nchw_kernel_grads",
                                     "depthwise_rows_bf16",
                                     "depthwise_strided_bf16",
                                     "depthwise_large_bf16",
                                     "depthwise_input_bf16",
                                     "depthwise_weight_bf16",
                                     "depthwise_small_strided_grads_bf16",
                                     "depthwise_nchw_kernels_bf16",
                                     "depthwise_nchw_kernel_grads_bf16"};

// The built-in tables of each CPU kind (algorithm.h); a profile file
// replaces them.
struct DefaultProbe {
  Rule rule;
  Probe probe;
};
#include "fastconv/conv2d_rules_avx2.h"
#include "fastconv/conv2d_rules_avx512.h"

std::optional<std::pair<size_t, Probe>> parse_line(const std::string& line) {
  std::istringstream fields(line);
  std::string name;
  Probe p{};
  if (!(fields >> name >> p.batch >> p.in_channels >> p.out_channels >> p.pixels >> p.taps >> p.stride >> p.layout >>
        p.speedup) ||
      (p.layout != 0 && p.layout != 1)) {
    return std::nullopt;
  }
  std::string rest;
  if (fields >> rest) return std::nullopt;
  for (double v : {p.batch, p.in_channels, p.out_channels, p.pixels, p.taps, p.stride, p.speedup}) {
    if (!std::isfinite(v) || v <= 0) return std::nullopt;
  }
  for (size_t r = 0; r < kNumRules; ++r) {
    if (name == kRuleNames[r]) return std::make_pair(r, p);
  }
  return std::nullopt;
}

Tables built_in(CpuKind kind = this_cpu_kind()) {
  Tables t;
  auto add = [&t](const auto& probes) {
    for (const DefaultProbe& d : probes) t[size_t(d.rule)].push_back(measured(d.probe));
  };
  if (kind == CpuKind::kAvx512) {
    add(kAvx512Probes);
  } else {
    add(kAvx2Probes);
  }
  return t;
}

std::vector<std::string> as_lines(const Tables& t) {
  std::vector<std::string> out;
  for (size_t r = 0; r < kNumRules; ++r) {
    for (const Measured& m : t[r]) {
      const Probe& p = m.probe;
      std::ostringstream line;
      line << kRuleNames[r] << ' ' << p.batch << ' ' << p.in_channels << ' ' << p.out_channels << ' ' << p.pixels
           << ' ' << p.taps << ' ' << p.stride << ' ' << p.layout << ' ' << p.speedup;
      out.push_back(line.str());
    }
  }
  return out;
}

// The built-in tables with every rule the profile file measured replaced.
Tables from_profile_file() {
  Tables t = built_in(), read;
  std::ifstream in(cpu_profile_path());
  std::string line;
  const std::string prefix = "rule ";
  while (std::getline(in, line)) {
    if (line.compare(0, prefix.size(), prefix) != 0) continue;
    if (const auto p = parse_line(line.substr(prefix.size()))) read[p->first].push_back(measured(p->second));
  }
  for (size_t r = 0; r < kNumRules; ++r) {
    if (!read[r].empty()) t[r] = std::move(read[r]);
  }
  return t;
}

std::mutex tables_mutex;
std::shared_ptr<const Tables> active;

std::shared_ptr<const Tables> tables() {
  std::lock_guard<std::mutex> lock(tables_mutex);
  if (!active) active = std::make_shared<const Tables>(from_profile_file());
  return active;
}

// Sizes are compared in doublings; the batch counts a quarter (the kernels'
// speed per image changes little with it), a doubling of the stride four
// times, another layout as two doublings.
constexpr Sizes kWeights{0.25, 1, 1, 1, 1, 4};
constexpr double kOtherLayout = 4;

}  // namespace

bool rule_holds(Rule rule, const Conv2dIntDims& d, int layout) {
  // The kNearest nearest measured layers, their log-speedups weighted by
  // 1 / (distance + kNear): a layer measured at the call's sizes speaks for
  // it, and one noisy measurement among neighbours does not decide alone.
  constexpr size_t kNearest = 3;
  constexpr double kNear = 0.5;
  const auto t = tables();
  const Sizes at = log_sizes(double(d.batch), double(d.in_channels), double(d.out_channels),
                             double(d.out_size[0]) * d.out_size[1], double(d.kernel_size[0]) * d.kernel_size[1],
                             double(std::max(d.stride[0], d.stride[1])));
  std::vector<std::pair<double, double>> near;  // (distance, log speedup)
  near.reserve((*t)[size_t(rule)].size());
  for (const Measured& m : (*t)[size_t(rule)]) {
    double dist = m.probe.layout == layout ? 0.0 : kOtherLayout;
    for (size_t i = 0; i < at.size(); ++i) dist += kWeights[i] * (m.sizes[i] - at[i]) * (m.sizes[i] - at[i]);
    near.emplace_back(dist, m.log_speedup);
  }
  const size_t k = std::min(kNearest, near.size());
  if (k == 0) return false;
  std::partial_sort(near.begin(), near.begin() + k, near.end());
  double sum = 0, weights = 0;
  for (size_t i = 0; i < k; ++i) {
    const double w = 1 / (near[i].first + kNear);
    sum += w * near[i].second, weights += w;
  }
  return sum / weights >= std::log(kRuleSpeedup);
}

std::vector<std::string> rule_tables(const std::optional<std::vector<std::string>>& lines) {
  if (lines) {
    Tables t = lines->empty() ? built_in() : Tables{};
    for (const std::string& line : *lines) {
      const auto p = parse_line(line);
      TORCH_CHECK(p, "fastconv: a conv2d rule line is '<rule> <batch> <C_in> <C_out> <output pixels> <taps> ",
                  "<stride> <layout> <speedup>' with a known rule, a layout of 0 or 1 and positive numbers, but ",
                  "got '", line, "'");
      t[p->first].push_back(measured(p->second));
    }
    std::lock_guard<std::mutex> lock(tables_mutex);
    active = std::make_shared<const Tables>(std::move(t));
  }
  return as_lines(*tables());
}

std::vector<std::string> built_in_rule_tables(CpuKind kind) { return as_lines(built_in(kind)); }

}  // namespace fastconv
