// Autotuning: the analogue of torch.backends.cudnn.benchmark for every
// fastconv operator.
//
// When on (set_autotune(true), or FASTCONV_AUTOTUNE=1 in the environment),
// the first call with a new signature times every path that can run it and
// keeps the fastest; later calls look the winner up in a hash table (tens of
// nanoseconds, under a shared lock). The winners persist in a plain-text file,
// one line a signature, under $FASTCONV_CACHE_DIR (default
// ~/.cache/fastconv/), named after a fingerprint of the machine (CPU model and
// instruction sets), the torch and fastconv versions; the thread count and
// the device (a GPU by name) are part of each signature. The file is written
// whole to a temporary file and renamed over the old one, merged with what
// other processes wrote meanwhile, so readers never see half a file. A file
// that cannot be read or parsed, or a directory that cannot be written, gives
// one warning; the cache then lives in memory for the rest of the process.
#pragma once

#include <c10/core/Device.h>

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "fastconv/path.h"

namespace fastconv::autotune {

bool enabled();
void set_enabled(bool on);

// The tuned path for `call`, if the cache has one.
std::optional<Path> lookup(const ConvCall& call);

// For a tuned `call`: PyTorch's kernel's time over the winner's (1 where
// native won), nullopt where `call` is not tuned or native was not a candidate.
std::optional<double> native_speedup(const ConvCall& call);

// A path this many times slower than the best is hopeless: after its warm-up
// call it is not timed again (path.h: tuning_candidates does not time one the
// cost model predicts so).
constexpr double kHopelessRatio = 4.5;

// Times `run(path)` for every path in `paths` (at least one) on `call`'s
// device: one warm-up, then repeats until the budget is spent; a path
// clearly slower than the best so far is dropped early. Records and persists
// the winner and returns it.
Path tune(const ConvCall& call, const std::vector<Path>& paths, const std::function<void(Path)>& run);

struct Info {
  bool enabled;
  std::string file;         // "" when the cache is in memory only
  std::string fingerprint;
  int64_t entries;
  int64_t hits;
  int64_t misses;           // signatures tuned in this process
  double tuning_seconds;    // total time spent tuning in this process
};
Info info();

// Forgets every entry in memory, and the file's too when `file`.
void clear(bool file);

// Devices other than the CPU register a function naming their device
// (a GPU's model), part of the signatures made on them.
void register_device_namer(c10::DeviceType type, std::string (*namer)(c10::DeviceIndex));

}  // namespace fastconv::autotune
