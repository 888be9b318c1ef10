// The memory floor of convolve's short rows, measured rather than computed:
// a kernel that reads every byte of a and v and writes every byte of the
// output, as fastconv's streaming row kernel does (inputs prefetched 128 rows
// ahead, output by non-temporal stores), with no per-row work at all. 16 rows
// of a, v and out are n, m and n + m - 1 whole vectors: out's vectors are a's
// then v's, the last two of v's summed. Built by bench_convolve.py
// (torch.utils.cpp_extension.load); AVX-512 only.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <immintrin.h>

#include <cstdint>

namespace {

constexpr int64_t kRows = 16;          // a block: whole vectors of a, v and out
constexpr int64_t kPrefetchBlocks = 8;  // 128 rows ahead

torch::Tensor bytes_probe(const torch::Tensor& a, const torch::Tensor& v, const torch::Tensor& out) {
  TORCH_CHECK(a.dim() == 2 && v.dim() == 2 && a.size(0) == v.size(0) && a.size(0) % kRows == 0,
              "bytes_probe: a [N, n], v [N, m], N a multiple of 16");
  const int64_t blocks = a.size(0) / kRows, n = a.size(1), m = v.size(1), length = n + m - 1;
  TORCH_CHECK(n >= 1 && m >= 2, "bytes_probe: n >= 1, m >= 2");
  for (const auto* t : {&a, &v, &out}) {
    TORCH_CHECK(t->is_contiguous() && t->dtype() == torch::kFloat, "bytes_probe: contiguous float32 tensors");
  }
  TORCH_CHECK(out.numel() == a.size(0) * length && reinterpret_cast<uintptr_t>(out.data_ptr()) % 64 == 0,
              "bytes_probe: out [N, n + m - 1], 64-byte aligned");
  const float* A = a.const_data_ptr<float>();
  const float* V = v.const_data_ptr<float>();
  float* O = out.mutable_data_ptr<float>();
  const auto prefetch = [](const float* p, int64_t vectors) {
    for (int64_t k = 0; k < vectors; ++k) {
      _mm_prefetch(reinterpret_cast<const char*>(p + k * kRows), _MM_HINT_T0);
    }
  };
  at::parallel_for(0, blocks, 256, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* ab = A + b * kRows * n;
      const float* vb = V + b * kRows * m;
      float* ob = O + b * kRows * length;
      if (b + kPrefetchBlocks < blocks) {
        prefetch(ab + kPrefetchBlocks * kRows * n, n);
        prefetch(vb + kPrefetchBlocks * kRows * m, m);
      }
      for (int64_t k = 0; k < n; ++k) {
        _mm512_stream_ps(ob + k * kRows, _mm512_loadu_ps(ab + k * kRows));
      }
      for (int64_t k = 0; k < m - 2; ++k) {
        _mm512_stream_ps(ob + (n + k) * kRows, _mm512_loadu_ps(vb + k * kRows));
      }
      const __m512 tail =
          _mm512_add_ps(_mm512_loadu_ps(vb + (m - 2) * kRows), _mm512_loadu_ps(vb + (m - 1) * kRows));
      _mm512_stream_ps(ob + (length - 1) * kRows, tail);
    }
    _mm_sfence();
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bytes_probe", &bytes_probe, "a, v, out -> out: convolve's bytes moved, no arithmetic");
}
