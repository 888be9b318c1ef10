// Output buffers for large CPU results.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

namespace fastconv::cpu {

// at::empty, except that buffers of 32 MiB or more are 2 MiB-aligned and
// advised onto transparent huge pages (Linux). glibc always gives buffers
// that large fresh mmap pages (32 MiB is its largest dynamic mmap
// threshold), and faulting them in 4 KiB at a time costs ~0.27 ms per MiB
// here, several times the convolution itself; huge pages cut the faults
// 512-fold. Smaller buffers are left to glibc, which recycles them from its
// heap. THP_MEM_ALLOC_ENABLE=1 does the same for every PyTorch allocation.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace fastconv::cpu
