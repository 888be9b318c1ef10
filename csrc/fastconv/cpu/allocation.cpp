#include "fastconv/cpu/allocation.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fastconv::cpu {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kHugePageThreshold = size_t(32) << 20;

#ifdef __linux__
void free_huge(void* p) { std::free(p); }

class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
    void* p = nullptr;
    if (posix_memalign(&p, kHugePage, bytes) != 0) {
      TORCH_CHECK_WITH(OutOfMemoryError, false, "fastconv: out of memory allocating ", n, " bytes");
    }
    madvise(p, bytes, MADV_HUGEPAGE);  // advice only: failure is harmless
    return {p, p, &free_huge, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_huge; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};
#endif

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
#ifdef __linux__
  const size_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (options.device().is_cpu() && bytes >= kHugePageThreshold) {
    static HugePageAllocator allocator;
    return at::detail::empty_generic(
        sizes, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
        options.dtype().toScalarType(), std::nullopt);
  }
#endif
  return at::empty(sizes, options);
}

}  // namespace fastconv::cpu
