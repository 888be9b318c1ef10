#include "fastconv/cpu/allocation.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <new>

#ifdef __linux__
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace fastconv::cpu {
namespace {

constexpr size_t kMinCached = size_t(128) << 10;  // glibc's initial mmap threshold
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kHugePageThreshold = size_t(32) << 20;
constexpr int64_t kDefaultLimit = int64_t(512) << 20;
constexpr size_t kMaxBuffers = 64;  // bounds the search as well as the memory

// Sizes round up to 8 classes per octave (at most 12.5% more), so results of
// nearby shapes share buffers.
size_t size_class(size_t n) {
  size_t step = 1;
  while ((step << 4) <= n) step <<= 1;  // 8 * step <= n < 16 * step
  return (n + step - 1) / step * step;
}

int64_t limit_from_environment() {
  const char* env = std::getenv("FASTCONV_CPU_CACHE_MB");
  if (env == nullptr || *env == '\0') {
    return kDefaultLimit;
  }
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  if (*end != '\0' || mb < 0) {
    TORCH_WARN("fastconv: FASTCONV_CPU_CACHE_MB must be a non-negative integer (MiB), got '", env,
               "'; using ", kDefaultLimit >> 20);
    return kDefaultLimit;
  }
  return static_cast<int64_t>(mb) << 20;
}

struct Buffer {
  void* data;
  size_t bytes;
  bool mapped;  // from map_huge (munmap), else from posix_memalign (free)
};

void destroy(Buffer* buffer) {
#ifdef __linux__
  if (buffer->mapped) {
    munmap(buffer->data, buffer->bytes);
    delete buffer;
    return;
  }
#endif
  std::free(buffer->data);
  delete buffer;
}

#ifdef __linux__
// `bytes` (a multiple of 4 KiB) of memory no one has touched, 2 MiB-aligned
// and advised onto transparent huge pages before its first fault; nullptr if
// mmap fails. Not posix_memalign: glibc serves large requests from free heap
// memory when it has some (always, with MALLOC_MMAP_THRESHOLD_ raised), whose
// pages earlier allocations faulted in at 4 KiB, and advice does not change
// pages already there. Under virtualization a TLB miss walks nested page
// tables, and large outputs written through huge pages are markedly faster.
void* map_huge(size_t bytes) {
  const size_t span = bytes + kHugePage;
  void* base = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) {
    return nullptr;
  }
  const uintptr_t begin = reinterpret_cast<uintptr_t>(base);
  const uintptr_t start = (begin + kHugePage - 1) / kHugePage * kHugePage;
  if (start > begin) {
    munmap(base, start - begin);
  }
  if (begin + span > start + bytes) {
    munmap(reinterpret_cast<void*>(start + bytes), begin + span - (start + bytes));
  }
  madvise(reinterpret_cast<void*>(start), bytes, MADV_HUGEPAGE);  // advice only: failure is harmless
  return reinterpret_cast<void*>(start);
}
#endif

class OutputCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const size_t bytes = size_class(n);
    Buffer* buffer = take(bytes);
    if (buffer == nullptr) {
      buffer = fresh(bytes);
    }
    return {buffer->data, buffer, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  std::vector<int64_t> info(std::optional<int64_t> limit) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (limit) {
      TORCH_CHECK(*limit >= 0, "fastconv._cpu_cache: limit_bytes must be >= 0, got ", *limit);
      limit_ = *limit;
      evict_locked();
    }
    return {limit_, static_cast<int64_t>(cached_bytes_), static_cast<int64_t>(free_.size()), hits_, misses_};
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    const int64_t limit = limit_;
    limit_ = 0;
    evict_locked();
    limit_ = limit;
  }

  static OutputCache& instance() {
    // Never destroyed: results may be freed after static destructors ran.
    static auto* cache = [] {
      auto* c = new OutputCache();
#ifdef __linux__
      // A fork while another thread held the lock would leave the child's
      // copy locked forever (DataLoader workers fork).
      pthread_atfork(nullptr, nullptr, [] { new (&instance().mutex_) std::mutex(); });
#endif
      return c;
    }();
    return *cache;
  }

 private:
  static void release(void* ctx) { instance().give_back(static_cast<Buffer*>(ctx)); }

  static Buffer* fresh(size_t bytes) {
#ifdef __linux__
    if (bytes >= kHugePageThreshold) {
      if (void* p = map_huge(bytes)) {
        return new Buffer{p, bytes, true};
      }
    }
#endif
    void* p = nullptr;
    if (posix_memalign(&p, 64, bytes) != 0) {
      TORCH_CHECK_WITH(OutOfMemoryError, false, "fastconv: out of memory allocating ", bytes, " bytes");
    }
    return new Buffer{p, bytes, false};
  }

  // The most recently freed buffer of this size, if any.
  Buffer* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
      if ((*it)->bytes == bytes) {
        Buffer* buffer = *it;
        free_.erase(std::next(it).base());
        cached_bytes_ -= bytes;
        ++hits_;
        return buffer;
      }
    }
    ++misses_;
    return nullptr;
  }

  void give_back(Buffer* buffer) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (buffer->bytes > static_cast<size_t>(limit_)) {
      destroy(buffer);
      return;
    }
    free_.push_back(buffer);
    cached_bytes_ += buffer->bytes;
    evict_locked();
  }

  // Oldest first, down to the limits.
  void evict_locked() {
    while (!free_.empty() &&
           (cached_bytes_ > static_cast<size_t>(limit_) || free_.size() > kMaxBuffers)) {
      Buffer* oldest = free_.front();
      free_.pop_front();
      cached_bytes_ -= oldest->bytes;
      destroy(oldest);
    }
  }

  std::mutex mutex_;
  std::deque<Buffer*> free_;  // oldest first
  size_t cached_bytes_ = 0;
  int64_t limit_ = limit_from_environment();
  int64_t hits_ = 0;
  int64_t misses_ = 0;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (!options.device().is_cpu() || bytes < kMinCached) {
    return at::empty(sizes, options);
  }
  return at::detail::empty_generic(
      sizes, &OutputCache::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
      options.dtype().toScalarType(), std::nullopt);
}

std::vector<int64_t> output_cache_info(std::optional<int64_t> limit_bytes) {
  return OutputCache::instance().info(limit_bytes);
}

void empty_output_cache() { OutputCache::instance().clear(); }

}  // namespace fastconv::cpu
