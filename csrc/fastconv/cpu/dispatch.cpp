// Run-time choice of the micro-kernels' instruction set: the best this CPU
// supports, unless FASTCONV_CPU_CAPABILITY (or _cpu_capability) names one.
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "fastconv/cpu/tile_kernels.h"

namespace fastconv::cpu {
namespace {

std::string supported_list() {
  std::string out;
  for (const auto& name : supported_capabilities()) {
    out += (out.empty() ? "" : ", ") + name;
  }
  return out;
}

struct Candidate {
  const char* name;
  const KernelTable& (*table)();
  bool (*supported)();
};

const std::vector<Candidate>& candidates() {
  static const std::vector<Candidate> all{
#if defined(__x86_64__) || defined(_M_X64)
      {"avx512_bf16", &kernels_avx512_bf16, [] { return has_avx512() && has_bf16_dot_product(); }},
      {"avx512", &kernels_avx512, &has_avx512},
      {"avx2", &kernels_avx2,
       [] { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"); }},
#endif
      {"default", &kernels_default_isa, [] { return true; }},
  };
  return all;
}

const KernelTable* choose(std::string name) {
  if (name.empty()) {
    const char* env = std::getenv("FASTCONV_CPU_CAPABILITY");
    name = env ? env : "";
  }
  for (const auto& c : candidates()) {
    if (!name.empty() && name != c.name) {
      continue;
    }
    if (c.supported()) {
      return &c.table();
    }
    TORCH_CHECK(
        name.empty(), "fastconv: CPU capability '", name,
        "' is not supported by this CPU; supported: ", supported_list());
  }
  TORCH_CHECK(
      false, "fastconv: unknown CPU capability '", name,
      "' (from FASTCONV_CPU_CAPABILITY or _cpu_capability); supported here: ",
      supported_list());
}

std::atomic<const KernelTable*> active{nullptr};

}  // namespace

const KernelTable& kernels() {
  const KernelTable* table = active.load(std::memory_order_acquire);
  if (table == nullptr) {
    table = choose("");
    active.store(table, std::memory_order_release);
  }
  return *table;
}

std::vector<std::string> supported_capabilities() {
  std::vector<std::string> out;
  for (const auto& c : candidates()) {
    if (c.supported()) {
      out.emplace_back(c.name);
    }
  }
  return out;
}

bool has_avx512() {
#if defined(__x86_64__) || defined(_M_X64)
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool has_bf16_dot_product() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

std::string set_capability(const std::string& name) {
  const KernelTable* table = choose(name);
  active.store(table, std::memory_order_release);
  return table->name;
}

}  // namespace fastconv::cpu
