// Entry point of fastconv_ext._C for the setup.py build. Importing it loads the
// shared library, whose static initializers register the fastconv operators
// with the PyTorch dispatcher. It holds the eager calls of fastconv's
// functions and modules: their routing, their call through the dispatcher,
// and the route a module remembers; the operator sources stay free of Python.
#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <optional>
#include <string>
#include <vector>

#include "fastconv/ops.h"
#include "fastconv/path.h"

namespace {

using Ints = std::vector<int64_t>;

// An eager conv1d (dims 1) or conv2d (dims 2): PyTorch's convolution where
// `native`, else fastconv's operator, each through the dispatcher as
// F.convNd and torch.ops.fastconv.convNd go (autograd, profiling and
// dispatch modes as there), without the Python argument parsing of a custom
// operator's call: about 10 us, the length of a small layer. Python sends
// no tensor with __torch_function__ here, nor arguments the operators'
// checks must name.
at::Tensor eager_conv(int64_t dims, const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, const Ints& stride, const Ints& padding,
                      const Ints& dilation, int64_t groups, const std::string& algorithm, bool native) {
  TORCH_CHECK(dims == 1 || dims == 2, "fastconv_ext._C: dims must be 1 or 2, but got ", dims);
  if (native) {
    return dims == 1 ? at::conv1d(input, weight, bias, stride, padding, dilation, groups)
                     : at::conv2d(input, weight, bias, stride, padding, dilation, groups);
  }
  const auto sym = [](const Ints& values) { return c10::fromIntArrayRefSlow(values); };
  return dims == 1 ? fastconv::conv1d(input, weight, bias, sym(stride), sym(padding), sym(dilation), groups, algorithm)
                   : fastconv::conv2d(input, weight, bias, sym(stride), sym(padding), sym(dilation), groups, algorithm);
}

// Whether an eager call runs PyTorch's convolution in place of the fastconv
// operator (fastconv_ext/routing.py): where every operator it runs is
// settled on PyTorch's kernel (fastconv::eager_native), the arguments
// batched and a bias the operator accepts. None where autotuning has still
// to time one (the operator runs, and tunes); False for arguments the
// operator's checks must name.
std::optional<bool> settled_native(const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, const Ints& stride, const Ints& padding,
                                   const Ints& dilation, int64_t groups, const std::string& algorithm) {
  const bool plain = input.dim() == weight.dim() && weight.scalar_type() == input.scalar_type() &&
                     weight.device() == input.device() &&
                     (!bias || (weight.dim() > 0 && bias->dim() == 1 && bias->size(0) == weight.size(0) &&
                                bias->scalar_type() == input.scalar_type() && bias->device() == input.device()));
  if (!plain) return false;
  const bool grad = at::GradMode::is_enabled();
  return fastconv::eager_native(input, weight, stride, padding, dilation, groups, algorithm,
                                grad && input.requires_grad(), grad && weight.requires_grad());
}

// An eager call as settled_native routes it.
at::Tensor auto_conv(int64_t dims, const at::Tensor& input, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias, const Ints& stride, const Ints& padding,
                     const Ints& dilation, int64_t groups, const std::string& algorithm) {
  const bool native = settled_native(input, weight, bias, stride, padding, dilation, groups, algorithm).value_or(false);
  return eager_conv(dims, input, weight, bias, stride, padding, dilation, groups, algorithm, native);
}

// A decoding step (fastconv_ext.causal_conv1d_update) through the
// dispatcher, without a custom operator's Python argument parsing: a few
// microseconds of a step of some fifteen.
at::Tensor causal_update(const at::Tensor& x, const at::Tensor& conv_state, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, const std::optional<std::string>& activation,
                         const std::optional<at::Tensor>& cache_seqlens,
                         const std::optional<at::Tensor>& conv_state_indices) {
  return fastconv::causal_conv1d_update(
      x, conv_state, weight, bias, activation ? std::optional<c10::string_view>(*activation) : std::nullopt,
      cache_seqlens, conv_state_indices);
}

// What a module's route depends on in the tensors of a call and in the
// state of the process: sizes, layout, dtypes, devices, which gradients
// autograd will want, the thread count and the settings' change count.
struct Signature {
  Ints input_sizes, input_strides, weight_sizes;
  at::ScalarType input_dtype, weight_dtype;
  c10::Device input_device, weight_device;
  std::optional<std::tuple<int64_t, at::ScalarType, c10::Device>> bias;
  bool input_grad, weight_grad;
  int threads;
  int64_t generation;

  Signature(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias)
      : input_sizes(input.sizes().vec()),
        input_strides(input.strides().vec()),
        weight_sizes(weight.sizes().vec()),
        input_dtype(input.scalar_type()),
        weight_dtype(weight.scalar_type()),
        input_device(input.device()),
        weight_device(weight.device()),
        input_grad(at::GradMode::is_enabled() && input.requires_grad()),
        weight_grad(at::GradMode::is_enabled() && weight.requires_grad()),
        threads(at::get_num_threads()),
        generation(fastconv::settings_generation()) {
    if (bias) this->bias.emplace(bias->numel(), bias->scalar_type(), bias->device());
  }

  // Compared field by field, without building a Signature for the call.
  bool matches(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias) const {
    const bool grad = at::GradMode::is_enabled();
    return input.sizes() == c10::IntArrayRef(input_sizes) && input.strides() == c10::IntArrayRef(input_strides) &&
           weight.sizes() == c10::IntArrayRef(weight_sizes) && input.scalar_type() == input_dtype &&
           weight.scalar_type() == weight_dtype && input.device() == input_device &&
           weight.device() == weight_device && (grad && input.requires_grad()) == input_grad &&
           (grad && weight.requires_grad()) == weight_grad && bias_matches(bias) &&
           at::get_num_threads() == threads &&
           fastconv::settings_generation() == generation;
  }

 private:
  bool bias_matches(const at::Tensor* b) const {
    if (!b || !bias) return !b && !bias;
    return std::get<0>(*bias) == b->numel() && std::get<1>(*bias) == b->scalar_type() &&
           std::get<2>(*bias) == b->device();
  }
};

// The tensor of a plain Tensor or Parameter (no __torch_function__ of its
// own), else nullptr.
const at::Tensor* plain_tensor(py::handle obj) {
  return THPVariable_CheckExact(obj.ptr()) ? &THPVariable_Unpack(obj.ptr()) : nullptr;
}

// A module's remembered eager route (fastconv_ext/routing.py: module_call):
// the signature of the call it was decided for, and the convolution it runs
// -- PyTorch's or fastconv's operator, with the module's hyper-parameters.
// Called with tensors of that signature it runs the convolution; otherwise,
// or under a __torch_function__ mode or subclass, it returns None and Python
// decides. A repeated call costs a comparison in C++, not a key built in
// Python: squeeze-and-excitation layers take a few microseconds in all.
class Route {
 public:
  Route(int64_t dims, const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
        Ints stride, Ints padding, Ints dilation, int64_t groups, std::string algorithm, bool native)
      : signature_(input, weight, bias ? &*bias : nullptr),
        dims_(dims),
        stride_(std::move(stride)),
        padding_(std::move(padding)),
        dilation_(std::move(dilation)),
        groups_(groups),
        algorithm_(std::move(algorithm)),
        native_(native) {
    TORCH_CHECK(dims == 1 || dims == 2, "fastconv_ext._C.Route: dims must be 1 or 2, but got ", dims);
  }

  py::object operator()(py::handle input, py::handle weight, py::handle bias) const {
    const at::Tensor* x = plain_tensor(input);
    const at::Tensor* w = plain_tensor(weight);
    const at::Tensor* b = bias.is_none() ? nullptr : plain_tensor(bias);
    if (!x || !w || (!bias.is_none() && !b) || at::impl::torch_function_mode_enabled() ||
        !signature_.matches(*x, *w, b)) {
      return py::none();
    }
    const std::optional<at::Tensor> bias_tensor = b ? std::optional<at::Tensor>(*b) : std::nullopt;
    at::Tensor out;
    {
      py::gil_scoped_release no_gil;
      out = eager_conv(dims_, *x, *w, bias_tensor, stride_, padding_, dilation_, groups_, algorithm_, native_);
    }
    return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(out)));
  }

 private:
  Signature signature_;
  int64_t dims_;
  Ints stride_, padding_, dilation_;
  int64_t groups_;
  std::string algorithm_;
  bool native_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastconv operator library; the operators live in torch.ops.fastconv";
  m.def("_settled_native", &settled_native,
        "Whether an eager call runs PyTorch's convolution; None: still to be tuned (internal).", py::arg("input"),
        py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("groups"), py::arg("algorithm"));
  m.def("_auto_conv", &auto_conv, "An eager convolution, routed as _settled_native decides (internal).",
        py::arg("dims"), py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("algorithm"),
        py::call_guard<py::gil_scoped_release>());
  m.def("_causal_update", &causal_update, "fastconv.causal_conv1d_update, called from C++ (internal).",
        py::arg("x"), py::arg("conv_state"), py::arg("weight"), py::arg("bias"), py::arg("activation"),
        py::arg("cache_seqlens"), py::arg("conv_state_indices"), py::call_guard<py::gil_scoped_release>());
  py::class_<Route>(m, "Route", "A module's remembered eager route (fastconv_ext.routing.module_call; internal).")
      .def(py::init<int64_t, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, Ints, Ints,
                    Ints, int64_t, std::string, bool>(),
           py::arg("dims"), py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("stride"),
           py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("algorithm"), py::arg("native"))
      .def("__call__", &Route::operator(), py::arg("input"), py::arg("weight"), py::arg("bias"))
      // A copied or pickled module decides its route again on its first call.
      .def("__reduce__", [](const Route&) { return py::make_tuple(py::type::of(py::none()), py::tuple()); });
}
