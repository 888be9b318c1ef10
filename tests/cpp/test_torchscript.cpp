// Runs, without Python, a TorchScript model saved by save_model.py that calls
// fastconv's conv2d, conv1d and convolve; checks its output and its gradients
// (input and every parameter, through torch::autograd) against the values
// Python computed, and the C++ API of <fastconv/ops.h> against ATen.
//
//   test_torchscript MODEL_DIR
#include <fastconv/ops.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <iostream>
#include <string>
#include <vector>

namespace {

int failures = 0;

void expect_close(const std::string& what, const at::Tensor& got, const at::Tensor& want) {
  const bool ok = got.sizes() == want.sizes() && at::allclose(got, want, 1e-9, 1e-9);
  std::cout << (ok ? "ok    " : "FAIL  ") << what;
  if (got.sizes() == want.sizes()) {
    std::cout << " (max abs diff " << (got - want).abs().max().item<double>() << ")";
  } else {
    std::cout << " (shape " << got.sizes() << " vs " << want.sizes() << ")";
  }
  std::cout << "\n";
  failures += ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " MODEL_DIR\n";
    return 2;
  }
  const std::string dir = argv[1];
  torch::jit::Module model = torch::jit::load(dir + "/model.pt");
  torch::jit::Module expected = torch::jit::load(dir + "/expected.pt");
  auto saved = [&](const std::string& name) { return expected.attr(name).toTensor(); };

  // Forward.
  at::Tensor input = saved("input").clone().requires_grad_(true);
  at::Tensor output = model.forward({input}).toTensor();
  expect_close("forward", output, saved("output"));

  // Backward through torch::autograd, for the input and every parameter.
  std::vector<at::Tensor> wrt = {input};
  std::vector<std::string> names = {"grad_input"};
  for (const auto& p : model.named_parameters(/*recurse=*/true)) {
    wrt.push_back(p.value);
    std::string name = "grad_" + p.name;
    for (char& c : name) c = c == '.' ? '_' : c;
    names.push_back(name);
  }
  const auto grads = torch::autograd::grad({output}, wrt, {saved("grad_output")});
  for (size_t i = 0; i < grads.size(); ++i) {
    expect_close("backward " + names[i], grads[i], saved(names[i]));
  }

  // The C++ API calls the same operators through the dispatcher.
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  const at::Tensor x1 = torch::randn({2, 4, 30}, opts), w1 = torch::randn({6, 2, 3}, opts);
  expect_close("fastconv::conv1d", fastconv::conv1d(x1, w1, std::nullopt, {c10::SymInt(2)}, {c10::SymInt(1)},
                                                    {c10::SymInt(1)}, 2),
               at::conv1d(x1, w1, {}, 2, 1, 1, 2));
  const at::Tensor gy1 = torch::randn({2, 6, 15}, opts);
  const auto [gw1, gb1] = fastconv::conv1d_weight_bias_backward(
      gy1, x1, 3, {c10::SymInt(2)}, {c10::SymInt(1)}, {c10::SymInt(1)}, 2);
  expect_close("fastconv::conv1d_weight_bias_backward (weight)", gw1,
               fastconv::conv1d_weight_backward(gy1, x1, 3, {c10::SymInt(2)}, {c10::SymInt(1)}, {c10::SymInt(1)}, 2));
  expect_close("fastconv::conv1d_weight_bias_backward (bias)", gb1, gy1.sum({0, 2}));
  const at::Tensor x2 = torch::randn({2, 3, 10, 12}, opts), w2 = torch::randn({5, 3, 3, 2}, opts);
  expect_close("fastconv::conv2d", fastconv::conv2d(x2, w2), at::conv2d(x2, w2));
  const at::Tensor a = torch::randn({3, 8}, opts), v = torch::randn({3, 3}, opts);
  expect_close("fastconv::convolve", fastconv::convolve(a, v, "valid"),
               fastconv::convolve(a, v, "full").narrow(1, 2, 6));

  std::cout << (failures == 0 ? "all checks passed" : "checks failed") << "\n";
  return failures == 0 ? 0 : 1;
}
