// Entry point of fastconv_ext._C for the setup.py build. Importing it loads the
// shared library, whose static initializers register the fastconv operators
// with the PyTorch dispatcher. Its one function is the eager call of a routed
// convolution; the operator sources stay free of Python.
#include <torch/extension.h>

#include <optional>
#include <string>
#include <vector>

#include "fastconv/ops.h"

namespace {

// An eager conv1d (dims 1) or conv2d (dims 2) whose route Python has decided
// (fastconv_ext/routing.py): PyTorch's convolution where `native`, else
// fastconv's operator, each through the dispatcher as F.convNd and
// torch.ops.fastconv.convNd go (autograd, profiling and dispatch modes as
// there), without the Python argument parsing of a custom operator's call:
// about 10 us, the length of a small layer. Python sends no tensor with
// __torch_function__ here, nor arguments the operators' checks must name.
at::Tensor eager_conv(int64_t dims, const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, const std::vector<int64_t>& stride,
                      const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation, int64_t groups,
                      const std::string& algorithm, bool native) {
  TORCH_CHECK(dims == 1 || dims == 2, "fastconv_ext._C._eager_conv: dims must be 1 or 2, but got ", dims);
  if (native) {
    return dims == 1 ? at::conv1d(input, weight, bias, stride, padding, dilation, groups)
                     : at::conv2d(input, weight, bias, stride, padding, dilation, groups);
  }
  const auto sym = [](const std::vector<int64_t>& values) { return c10::fromIntArrayRefSlow(values); };
  return dims == 1 ? fastconv::conv1d(input, weight, bias, sym(stride), sym(padding), sym(dilation), groups, algorithm)
                   : fastconv::conv2d(input, weight, bias, sym(stride), sym(padding), sym(dilation), groups, algorithm);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastconv operator library; the operators live in torch.ops.fastconv";
  m.def("_eager_conv", &eager_conv, "An eager convolution routed by fastconv_ext.routing (internal).",
        py::arg("dims"), py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("algorithm"), py::arg("native"),
        py::call_guard<py::gil_scoped_release>());
}
