#include "fastconv/autotune.h"

#include <ATen/Parallel.h>
#include <c10/core/Event.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <unordered_map>

#include <unistd.h>

#include "fastconv/cpu/tile_kernels.h"
#include "fastconv/version.h"

namespace fastconv::autotune {
namespace {

// Tuning stops starting new rounds once this much time has gone on one
// signature (every candidate still runs at least once).
constexpr double kBudgetSeconds = 0.3;
constexpr int kMaxRounds = 5;
// A candidate this much slower than the best so far is not timed again.
constexpr double kDropRatio = 1.5;

constexpr int kKeySize = 21;
using Key = std::array<int64_t, kKeySize>;

struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;
    for (int64_t v : k) h = (h ^ uint64_t(v)) * 1099511628211ull;
    return size_t(h);
  }
};

const char* kLayouts[] = {"contiguous", "channels_last", "strided"};
const ConvOp kOps[] = {ConvOp::kForward, ConvOp::kInput, ConvOp::kWeight};

std::string (*namers[int(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)])(c10::DeviceIndex) = {};

// The CPU's model and the instruction-set flags that change which kernels
// run, from /proc/cpuinfo where there is one.
std::string cpu_description() {
  std::string model, flags;
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line) && (model.empty() || flags.empty())) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    key.erase(key.find_last_not_of(" \t") + 1);
    const std::string value = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
    if ((key == "model name" || key == "Processor" || key == "CPU part") && model.empty()) model = value;
    if ((key == "flags" || key == "Features") && flags.empty()) {
      std::istringstream words(value);
      std::string word;
      while (words >> word) {
        if (word.rfind("avx", 0) == 0 || word.rfind("amx", 0) == 0 || word == "fma" || word == "f16c" ||
            word == "sve" || word == "asimd" || word == "bf16") {
          flags += (flags.empty() ? "" : ",") + word;
        }
      }
    }
  }
  std::string isa;
  for (const auto& name : cpu::supported_capabilities()) isa += (isa.empty() ? "" : ",") + name;
  return "cpu=" + (model.empty() ? std::string("unknown") : model) + "; flags=" + flags + "; kernels=" + isa;
}

std::string hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string no_spaces(std::string s) {
  std::replace(s.begin(), s.end(), ' ', '_');
  return s;
}

struct Entry {
  Path path;
  std::string timings;  // "native=1.2e-04 direct=..." for whoever reads the file
};

struct State {
  std::shared_mutex mutex;  // guards entries, names
  std::unordered_map<Key, Entry, KeyHash> entries;
  std::vector<std::string> device_names{"cpu"};  // a key's device field indexes this
  std::recursive_mutex tuning;  // one signature tuned at a time
  std::once_flag loaded;
  std::string fingerprint;
  std::string file;  // "" once persistence is off
  std::atomic<int64_t> hits{0}, misses{0};
  std::atomic<double> tuning_seconds{0};
};

State& state() {
  static State* s = new State();  // never destroyed: kernels may run during exit
  return *s;
}

std::atomic<int> enabled_flag{-1};  // -1: not read from the environment yet

std::string cache_dir() {
  if (const char* dir = std::getenv("FASTCONV_CACHE_DIR")) return dir;
  if (const char* cache = std::getenv("XDG_CACHE_HOME")) return std::string(cache) + "/fastconv";
  if (const char* home = std::getenv("HOME")) return std::string(home) + "/.cache/fastconv";
  return "";
}

int device_id(State& s, const c10::Device& device) {
  if (device.is_cpu()) return 0;
  const auto namer = namers[int(device.type())];
  std::string name = std::string(c10::DeviceTypeName(device.type(), /*lower_case=*/true)) + ":" +
      no_spaces(namer ? namer(device.index()) : std::to_string(device.index()));
  {
    std::shared_lock lock(s.mutex);
    for (size_t i = 0; i < s.device_names.size(); ++i) {
      if (s.device_names[i] == name) return int(i);
    }
  }
  std::unique_lock lock(s.mutex);
  for (size_t i = 0; i < s.device_names.size(); ++i) {
    if (s.device_names[i] == name) return int(i);
  }
  s.device_names.push_back(name);
  return int(s.device_names.size() - 1);
}

Key make_key(State& s, const ConvCall& c) {
  const auto& d = c.d;
  return Key{c.dims, int64_t(c.op), int64_t(c.dtype), device_id(s, c.device), c.layout, c.threads,
             d.batch, d.in_channels, d.out_channels, d.groups, d.in_size[0], d.in_size[1],
             d.kernel_size[0], d.kernel_size[1], d.stride[0], d.stride[1], d.padding[0], d.padding[1],
             d.dilation[0], d.dilation[1], d.batched};
}

// One line of the file: named fields, then the sizes, then the path:
//   conv2d forward Float cpu contiguous 2 | 8 96 96 96 56 56 7 7 1 1 3 3 1 1 1 | native # native=1e-3 ...
std::string format_line(const State& s, const Key& k, const Entry& e) {
  std::ostringstream out;
  out << "conv" << k[0] << "d " << op_name(ConvOp(k[1])) << ' ' << c10::toString(c10::ScalarType(k[2])) << ' '
      << s.device_names.at(size_t(k[3])) << ' ' << kLayouts[k[4]] << ' ' << k[5] << " |";
  for (int i = 6; i < kKeySize; ++i) out << ' ' << k[i];
  out << " | " << path_name(e.path);
  if (!e.timings.empty()) out << " # " << e.timings;
  return out.str();
}

template <class T, size_t N, class Name>
std::optional<int64_t> index_of(const T (&values)[N], const std::string& word, Name name) {
  for (size_t i = 0; i < N; ++i) {
    if (word == name(values[i])) return int64_t(i);
  }
  return std::nullopt;
}

// Parses one line; nullopt if it is not a well-formed entry.
std::optional<std::pair<Key, Entry>> parse_line(State& s, const std::string& line) {
  std::istringstream in(line.substr(0, line.find('#')));
  std::string family, op, dtype, device, layout, bar1, bar2, path;
  Key k{};
  if (!(in >> family >> op >> dtype >> device >> layout >> k[5] >> bar1) || bar1 != "|") return std::nullopt;
  if (family != "conv1d" && family != "conv2d") return std::nullopt;
  k[0] = family == "conv1d" ? 1 : 2;
  const auto o = index_of(kOps, op, [](ConvOp x) { return std::string(op_name(x)); });
  const auto l = index_of(kLayouts, layout, [](const char* x) { return std::string(x); });
  if (!o || !l) return std::nullopt;
  k[1] = *o;
  k[4] = *l;
  bool dtype_found = false;
  for (auto t : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    if (dtype == c10::toString(t)) {
      k[2] = int64_t(t);
      dtype_found = true;
    }
  }
  if (!dtype_found) return std::nullopt;
  for (int i = 6; i < kKeySize; ++i) {
    if (!(in >> k[i])) return std::nullopt;
  }
  if (!(in >> bar2 >> path) || bar2 != "|") return std::nullopt;
  const auto p = index_of(kAllPaths, path, [](Path x) { return std::string(path_name(x)); });
  if (!p) return std::nullopt;
  std::string rest;
  if (in >> rest) return std::nullopt;
  {
    std::unique_lock lock(s.mutex);
    const auto it = std::find(s.device_names.begin(), s.device_names.end(), device);
    k[3] = it - s.device_names.begin();
    if (it == s.device_names.end()) s.device_names.push_back(device);
  }
  const auto hash = line.find('#');
  return std::make_pair(k, Entry{Path(*p), hash == std::string::npos ? "" : line.substr(hash + 2)});
}

// The file's entries, or nullopt (and a reason) if it cannot be read or is
// not a cache file of this fingerprint. A missing file is an empty cache.
std::optional<std::vector<std::pair<Key, Entry>>> read_file(State& s, const std::string& path, std::string& why) {
  std::vector<std::pair<Key, Entry>> out;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return out;
  std::ifstream in(path);
  if (!in) {
    why = "cannot be opened";
    return std::nullopt;
  }
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    if (line[0] == '#') {
      const std::string tag = "# fingerprint: ";
      if (line.rfind(tag, 0) == 0 && line.substr(tag.size()) != s.fingerprint) {
        why = "was written for another machine or version (" + line.substr(tag.size()) + ")";
        return std::nullopt;
      }
      continue;
    }
    auto entry = parse_line(s, line);
    if (!entry) {
      why = "has a malformed line " + std::to_string(number) + ": '" + line + "'";
      return std::nullopt;
    }
    out.push_back(*entry);
  }
  return out;
}

void disable_file(State& s, const std::string& why) {
  TORCH_WARN("fastconv: the autotuning cache file ", s.file, " ", why,
             "; tuned paths are kept in memory for this process only.");
  s.file.clear();
}

void load(State& s) {
  std::call_once(s.loaded, [&] {
    s.fingerprint = cpu_description() + "; torch=" + TORCH_VERSION + "; fastconv=" + kVersion;
    const std::string dir = cache_dir();
    if (dir.empty()) return;
    uint64_t h = 1469598103934665603ull;
    for (unsigned char ch : s.fingerprint) h = (h ^ ch) * 1099511628211ull;
    s.file = dir + "/autotune-" + hex(h) + ".txt";
    std::string why;
    const auto entries = read_file(s, s.file, why);
    if (!entries) {
      disable_file(s, why);
      return;
    }
    std::unique_lock lock(s.mutex);
    for (const auto& [k, e] : *entries) s.entries.emplace(k, e);
  });
}

// Writes every entry, merged over what the file holds now, through a
// temporary file renamed into place.
void save(State& s) {
  if (s.file.empty()) return;
  std::string why;
  const auto on_disk = read_file(s, s.file, why);
  if (!on_disk) return disable_file(s, why);
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(s.file).parent_path(), ec);
  const std::string tmp = s.file + ".tmp." + std::to_string(::getpid()) + "." +
      std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
  {
    std::ofstream out(tmp);
    std::shared_lock lock(s.mutex);
    std::unordered_map<Key, Entry, KeyHash> merged(on_disk->begin(), on_disk->end());
    for (const auto& [k, e] : s.entries) merged[k] = e;
    out << "# fastconv autotuning cache: one tuned signature a line, the path after the last '|'.\n"
        << "# fingerprint: " << s.fingerprint << "\n";
    for (const auto& [k, e] : merged) out << format_line(s, k, e) << "\n";
    out.flush();
    if (!out) {
      std::filesystem::remove(tmp, ec);
      lock.unlock();
      return disable_file(s, "cannot be written (" + std::filesystem::path(s.file).parent_path().string() + ")");
    }
  }
  std::filesystem::rename(tmp, s.file, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    disable_file(s, "cannot be replaced");
  }
}

double seconds(const c10::Device& device, const std::function<void()>& fn) {
  if (device.is_cpu()) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  // Events on the current stream, as the kernels run on it.
  const auto* impl = c10::impl::getDeviceGuardImpl(device.type());
  const c10::Stream stream = impl->getStream(device);
  c10::Event start(device.type(), c10::EventFlag::BACKEND_DEFAULT);
  c10::Event stop(device.type(), c10::EventFlag::BACKEND_DEFAULT);
  start.record(stream);
  fn();
  stop.record(stream);
  stop.synchronize();
  return start.elapsedTime(stop) * 1e-3;
}

}  // namespace

bool enabled() {
  int on = enabled_flag.load(std::memory_order_relaxed);
  if (on < 0) {
    const char* env = std::getenv("FASTCONV_AUTOTUNE");
    on = env && std::string(env) != "0" && std::string(env) != "" ? 1 : 0;
    enabled_flag.store(on, std::memory_order_relaxed);
  }
  return on == 1;
}

void set_enabled(bool on) { enabled_flag.store(on ? 1 : 0, std::memory_order_relaxed); }

std::optional<Path> lookup(const ConvCall& call) {
  State& s = state();
  load(s);
  const Key key = make_key(s, call);
  std::shared_lock lock(s.mutex);
  const auto it = s.entries.find(key);
  if (it == s.entries.end()) return std::nullopt;
  s.hits.fetch_add(1, std::memory_order_relaxed);
  return it->second.path;
}

std::optional<double> native_speedup(const ConvCall& call) {
  State& s = state();
  load(s);
  Entry entry;
  {
    std::shared_lock lock(s.mutex);
    const auto it = s.entries.find(make_key(s, call));
    if (it == s.entries.end()) return std::nullopt;
    entry = it->second;
  }
  if (entry.path == Path::kNative) return 1.0;
  // The seconds `timings` records for `path`, if it has them.
  const auto time_of = [&](Path path) -> std::optional<double> {
    std::istringstream fields(entry.timings);
    std::string field;
    const std::string prefix = std::string(path_name(path)) + "=";
    while (fields >> field) {
      if (field.compare(0, prefix.size(), prefix) != 0) continue;
      try {
        return std::stod(field.substr(prefix.size()));
      } catch (const std::exception&) {
        return std::nullopt;
      }
    }
    return std::nullopt;
  };
  const auto winner = time_of(entry.path);
  if (!winner || *winner <= 0) return std::nullopt;
  if (const auto native = time_of(Path::kNative)) return *native / *winner;
  return std::nullopt;
}

Path tune(const ConvCall& call, const std::vector<Path>& paths, const std::function<void(Path)>& run) {
  TORCH_INTERNAL_ASSERT(!paths.empty());
  State& s = state();
  std::lock_guard<std::recursive_mutex> tuning(s.tuning);
  if (const auto done = lookup(call)) return *done;  // another thread tuned it meanwhile
  const auto t_start = std::chrono::steady_clock::now();
  const auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count(); };
  std::vector<std::vector<double>> samples(paths.size());
  std::vector<double> warm(paths.size(), 0);
  std::vector<bool> alive(paths.size(), false), ran(paths.size(), false);
  double best = 1e300;
  for (size_t i = 0; i < paths.size(); ++i) {  // warm-up, which also drops the hopeless
    try {
      warm[i] = seconds(call.device, [&] { run(paths[i]); });
      ran[i] = true;
      alive[i] = warm[i] <= kHopelessRatio * best;
      best = std::min(best, warm[i]);
    } catch (const std::exception&) {
      alive[i] = false;  // e.g. out of memory: not a candidate for this call
    }
  }
  const auto drop_slower = [&](const std::function<double(size_t)>& time_of) {
    best = 1e300;
    for (size_t i = 0; i < paths.size(); ++i) {
      if (alive[i]) best = std::min(best, time_of(i));
    }
    for (size_t i = 0; i < paths.size(); ++i) {
      if (alive[i] && time_of(i) > kDropRatio * best) alive[i] = false;
    }
  };
  // Where a round of repeats would end past the budget, the warm-up times
  // decide which paths are clearly slower: calls that long carry little
  // one-time cost.
  double round_seconds = 0;
  for (size_t i = 0; i < paths.size(); ++i) {
    if (alive[i]) round_seconds += warm[i];
  }
  if (elapsed() + round_seconds > kBudgetSeconds) drop_slower([&](size_t i) { return warm[i]; });
  for (int round = 0; round < kMaxRounds; ++round) {
    if (std::count(alive.begin(), alive.end(), true) < 2) break;  // nothing left to compare
    for (size_t i = 0; i < paths.size(); ++i) {
      if (!alive[i]) continue;
      samples[i].push_back(seconds(call.device, [&] { run(paths[i]); }));
    }
    drop_slower([&](size_t i) { return *std::min_element(samples[i].begin(), samples[i].end()); });
    if (elapsed() > kBudgetSeconds) break;
  }
  // The winner by median (the minimum where a path has fewer than 3 samples,
  // the warm-up where it has none).
  size_t winner = paths.size();
  double winner_time = 1e300;
  std::ostringstream timings;
  for (size_t i = 0; i < paths.size(); ++i) {
    auto& v = samples[i];
    if (v.empty() && ran[i]) v.push_back(warm[i]);
    if (v.empty()) continue;
    std::sort(v.begin(), v.end());
    const double t = v.size() >= 3 ? v[v.size() / 2] : v[0];
    timings << (timings.tellp() > 0 ? " " : "") << path_name(paths[i]) << '=' << std::scientific << t;
    if (alive[i] && t < winner_time) {
      winner = i;
      winner_time = t;
    }
  }
  TORCH_CHECK(winner < paths.size(), "fastconv: autotuning found no path that runs this call");
  {
    std::unique_lock lock(s.mutex);
    s.entries[make_key(s, call)] = Entry{paths[winner], timings.str()};
  }
  s.misses.fetch_add(1, std::memory_order_relaxed);
  double total = s.tuning_seconds.load();
  while (!s.tuning_seconds.compare_exchange_weak(total, total + elapsed())) {
  }
  save(s);
  return paths[winner];
}

Info info() {
  State& s = state();
  load(s);
  std::shared_lock lock(s.mutex);
  return Info{enabled(), s.file, s.fingerprint, int64_t(s.entries.size()), s.hits.load(), s.misses.load(),
              s.tuning_seconds.load()};
}

void clear(bool file) {
  State& s = state();
  load(s);
  std::lock_guard<std::recursive_mutex> tuning(s.tuning);
  {
    std::unique_lock lock(s.mutex);
    s.entries.clear();
  }
  s.hits = 0;
  s.misses = 0;
  s.tuning_seconds = 0;
  if (file && !s.file.empty()) {
    std::error_code ec;
    std::filesystem::remove(s.file, ec);
  }
}

void register_device_namer(c10::DeviceType type, std::string (*namer)(c10::DeviceIndex)) {
  namers[int(type)] = namer;
}

}  // namespace fastconv::autotune
