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
using Tables = std::array<std::vector<Probe>, kNumRules>;

const char* kRuleNames[kNumRules] = {"pointwise_forward", "pointwise_input",   "pointwise_weight",
                                     "depthwise_rows",    "depthwise_strided", "depthwise_large",
                                     "depthwise_input",   "depthwise_weight",  "depthwise_small_strided_grads"};

// The built-in tables (conv2d_rules_table.h); a profile file replaces them.
struct DefaultProbe {
  Rule rule;
  Probe probe;
};
#include "fastconv/conv2d_rules_table.h"

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

Tables built_in() {
  Tables t;
  for (const DefaultProbe& d : kDefaultProbes) t[size_t(d.rule)].push_back(d.probe);
  return t;
}

// The built-in tables with every rule the profile file measured replaced.
Tables from_profile_file() {
  Tables t = built_in(), read;
  std::ifstream in(cpu_profile_path());
  std::string line;
  const std::string prefix = "rule ";
  while (std::getline(in, line)) {
    if (line.compare(0, prefix.size(), prefix) != 0) continue;
    if (const auto p = parse_line(line.substr(prefix.size()))) read[p->first].push_back(p->second);
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

// Sizes are compared in doublings; the batch counts half (the kernels'
// speed per image changes little with it), another stride or layout as two.
double distance(const Probe& p, const Conv2dIntDims& d, int layout) {
  const double pixels = double(d.out_size[0]) * d.out_size[1];
  const double taps = double(d.kernel_size[0]) * d.kernel_size[1];
  const double stride = double(std::max(d.stride[0], d.stride[1]));
  const auto sq = [](double a, double b) {
    const double x = std::log2(std::max(a, 1.0)) - std::log2(std::max(b, 1.0));
    return x * x;
  };
  return 0.25 * sq(p.batch, double(d.batch)) + sq(p.in_channels, double(d.in_channels)) +
      sq(p.out_channels, double(d.out_channels)) + sq(p.pixels, pixels) + sq(p.taps, taps) +
      4 * sq(p.stride, stride) + (p.layout == layout ? 0.0 : 4.0);
}

}  // namespace

bool rule_holds(Rule rule, const Conv2dIntDims& d, int layout) {
  // The kNearest nearest measured layers, their log-speedups weighted by
  // 1 / (distance + kNear): a layer measured at the call's sizes speaks for
  // it, and one noisy measurement among neighbours does not decide alone.
  constexpr size_t kNearest = 3;
  constexpr double kNear = 0.5;
  const auto t = tables();
  std::vector<std::pair<double, double>> near;  // (distance, log speedup)
  for (const Probe& p : (*t)[size_t(rule)]) near.emplace_back(distance(p, d, layout), std::log(p.speedup));
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
    Tables t = lines->empty() ? built_in() : *tables(), given;
    for (const std::string& line : *lines) {
      const auto p = parse_line(line);
      TORCH_CHECK(p, "fastconv: a conv2d rule line is '<rule> <batch> <C_in> <C_out> <output pixels> <taps> ",
                  "<stride> <layout> <speedup>' with a known rule, a layout of 0 or 1 and positive numbers, but ",
                  "got '", line, "'");
      given[p->first].push_back(p->second);
    }
    for (size_t r = 0; r < kNumRules; ++r) {
      if (!given[r].empty()) t[r] = std::move(given[r]);
    }
    std::lock_guard<std::mutex> lock(tables_mutex);
    active = std::make_shared<const Tables>(std::move(t));
  }
  std::vector<std::string> out;
  const auto t = tables();
  for (size_t r = 0; r < kNumRules; ++r) {
    for (const Probe& p : (*t)[r]) {
      std::ostringstream line;
      line << kRuleNames[r] << ' ' << p.batch << ' ' << p.in_channels << ' ' << p.out_channels << ' ' << p.pixels
           << ' ' << p.taps << ' ' << p.stride << ' ' << p.layout << ' ' << p.speedup;
      out.push_back(line.str());
    }
  }
  return out;
}

}  // namespace fastconv
