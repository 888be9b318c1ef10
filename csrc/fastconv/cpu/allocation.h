// Output buffers for CPU results.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace fastconv::cpu {

// at::empty for an operator's result. CPU buffers of 128 KiB or more come
// from a bounded cache of buffers that earlier results freed: glibc returns
// buffers that large to the kernel (mmap, or a trimmed heap top), and the
// next one page-faults on first touch -- often several times the cost of the
// convolution itself, and every call of a training step pays it again. A reused buffer pays nothing. Buffers of 32 MiB or more are mapped
// fresh, 2 MiB-aligned and advised onto transparent huge pages before their
// first touch, so that they fault 512 times less and miss the TLB less on
// every use. Freed buffers stay cached up to a limit (512 MiB by
// default, FASTCONV_CPU_CACHE_MB to change it); beyond it the oldest go back
// to the system.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// [limit, cached bytes, cached buffers, hits, misses], after setting the
// limit to `limit_bytes` when given (evicting down to it).
std::vector<int64_t> output_cache_info(std::optional<int64_t> limit_bytes);

// Returns every cached buffer to the system.
void empty_output_cache();

}  // namespace fastconv::cpu
