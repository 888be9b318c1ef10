// Meta kernel of _convolve_window (convolve decomposes into it).
#include <torch/library.h>

#include "fastconv/shape.h"

namespace fastconv {
namespace {

at::Tensor convolve_window_meta(
    const at::Tensor& a, const at::Tensor& v, c10::SymInt offset, c10::SymInt length) {
  const auto d = check_convolve_window(a, v, offset, length);
  return a.new_empty_symint(convolve_output_shape(d));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, Meta, m) {
  m.impl("_convolve_window", &convolve_window_meta);
}

}  // namespace fastconv
