// The micro-kernels of tile_kernels.h, written once over GCC/Clang vector
// types. Each isa/*.cpp includes this file after choosing an instruction set
// (#pragma GCC target) and defining:
//   FASTCONV_ISA        namespace, and the table's function kernels_<FASTCONV_ISA>
//   FASTCONV_ISA_NAME   the capability's name ("avx512", "avx2", "default")
//   FASTCONV_VEC_BYTES  vector width in bytes (64, 32, 16)
//   FASTCONV_VEC_REGS   vector registers available (32 or 16)
// Everything here has internal linkage or lives in the per-ISA namespace, and
// only <cstdint>/<cstring> are included, so no inline function compiled for
// one instruction set can be merged into code that runs on another.
#include <cstdint>
#include <cstring>

#include "fastconv/cpu/tile_kernels.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

constexpr int kRegs = FASTCONV_VEC_REGS;

template <typename T>
struct Simd {
  static constexpr int kBytes = FASTCONV_VEC_BYTES;
  static constexpr int kLanes = kBytes / static_cast<int>(sizeof(T));
  typedef T V __attribute__((vector_size(kBytes)));

  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static V splat(T x) { return V{} + x; }
  static void store(T* p, V v, int64_t n) {
    if (n == kLanes) {
      std::memcpy(p, &v, sizeof(V));
    } else {
      for (int64_t i = 0; i < n; ++i) {
        p[i] = v[i];
      }
    }
  }
  static T sum(V v) {
    T s = 0;
    for (int i = 0; i < kLanes; ++i) {
      s += v[i];
    }
    return s;
  }
};

// ---- forward: out[oc][j] = bias[oc] + sum_t weight[oc][t] * scratch[offsets[t] + j]

// R output channels x V vectors of positions, all taps.
template <typename T, int R, int V>
void forward_block(const ForwardTile<T>& a, int64_t oc0, int64_t j0, int64_t n) {
  using S = Simd<T>;
  using Vec = typename S::V;
  Vec acc[R][V];
  const T* w[R];
  for (int r = 0; r < R; ++r) {
    const Vec init = S::splat(a.bias ? a.bias[oc0 + r] : T(0));
    for (int v = 0; v < V; ++v) {
      acc[r][v] = init;
    }
    w[r] = a.weight + (oc0 + r) * a.taps;
  }
  for (int64_t t = 0; t < a.taps; ++t) {
    const T* x = a.scratch + a.offsets[t] + j0;
    Vec xv[V];
    for (int v = 0; v < V; ++v) {
      xv[v] = S::load(x + v * S::kLanes);
    }
    for (int r = 0; r < R; ++r) {
      const Vec wv = S::splat(w[r][t]);
      for (int v = 0; v < V; ++v) {
        acc[r][v] += wv * xv[v];
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    T* o = a.out + (oc0 + r) * a.out_stride + j0;
    for (int v = 0; v < V; ++v) {
      const int64_t left = n - v * S::kLanes;
      if (left > 0) {
        S::store(o + v * S::kLanes, acc[r][v], left < S::kLanes ? left : S::kLanes);
      }
    }
  }
}

// Largest V (of 8, 4, 2, 1) whose R x V accumulators, V loads and a broadcast fit the registers.
constexpr int max_vectors(int R) {
  for (int v = 8; v > 1; v /= 2) {
    if (R * v + v + 1 <= kRegs) {
      return v;
    }
  }
  return 1;
}

constexpr int kMaxRows = kRegs >= 32 ? 8 : 4;

template <typename T, int R>
void forward_rows(const ForwardTile<T>& a, int64_t oc0, int64_t j, int V, int64_t n) {
  switch (V) {
    case 8:
      if constexpr (max_vectors(R) >= 8) return forward_block<T, R, 8>(a, oc0, j, n);
      break;
    case 4:
      if constexpr (max_vectors(R) >= 4) return forward_block<T, R, 4>(a, oc0, j, n);
      break;
    case 2:
      if constexpr (max_vectors(R) >= 2) return forward_block<T, R, 2>(a, oc0, j, n);
      break;
    default:
      break;
  }
  forward_block<T, R, 1>(a, oc0, j, n);
}

template <typename T>
void forward_tile(const ForwardTile<T>& a) {
  constexpr int64_t lanes = Simd<T>::kLanes;
  // Positions outer, channels inner: the scratch columns of one block stay in
  // L1 while every output channel uses them.
  // The widest row block in use bounds the vectors per block for all of them.
  const int widest = a.out_channels >= kMaxRows ? kMaxRows
      : a.out_channels >= 4                     ? 4
      : a.out_channels >= 2                     ? 2
                                                : 1;
  const int vmax = max_vectors(widest);
  for (int64_t j = 0; j < a.length;) {
    const int64_t left = a.length - j;
    int V = vmax;
    while (V > 1 && V * lanes > left) {
      V /= 2;
    }
    const int64_t n = left < V * lanes ? left : V * lanes;
    int64_t oc = 0;
    if constexpr (kMaxRows == 8) {
      for (; oc + 8 <= a.out_channels; oc += 8) forward_rows<T, 8>(a, oc, j, V, n);
    }
    for (; oc + 4 <= a.out_channels; oc += 4) forward_rows<T, 4>(a, oc, j, V, n);
    for (; oc + 2 <= a.out_channels; oc += 2) forward_rows<T, 2>(a, oc, j, V, n);
    for (; oc < a.out_channels; ++oc) forward_rows<T, 1>(a, oc, j, V, n);
    j += n;
  }
}

// ---- weight gradient: grad_weight[oc][t] += sum_j grad_out[oc][j] * scratch[offsets[t] + j]

template <typename T, int R, int P>
void weight_block(const WeightTile<T>& a, int64_t oc0, int64_t t0) {
  using S = Simd<T>;
  using Vec = typename S::V;
  constexpr int64_t lanes = S::kLanes;
  Vec acc[R][P];
  for (int r = 0; r < R; ++r) {
    for (int p = 0; p < P; ++p) {
      acc[r][p] = Vec{};
    }
  }
  const T* g[R];
  for (int r = 0; r < R; ++r) {
    g[r] = a.grad_out + (oc0 + r) * a.grad_stride;
  }
  const T* x[P];
  for (int p = 0; p < P; ++p) {
    x[p] = a.scratch + a.offsets[t0 + p];
  }
  const int64_t full = a.length - a.length % lanes;
  for (int64_t j = 0; j < full; j += lanes) {
    Vec gv[R];
    for (int r = 0; r < R; ++r) {
      gv[r] = S::load(g[r] + j);
    }
    for (int p = 0; p < P; ++p) {
      const Vec xv = S::load(x[p] + j);
      for (int r = 0; r < R; ++r) {
        acc[r][p] += gv[r] * xv;
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int p = 0; p < P; ++p) {
      T s = S::sum(acc[r][p]);
      for (int64_t j = full; j < a.length; ++j) {
        s += g[r][j] * x[p][j];
      }
      a.grad_weight[(oc0 + r) * a.taps + t0 + p] += s;
    }
  }
}

constexpr bool weight_fits(int R, int P) {
  return R * P + R + P <= kRegs;
}

template <typename T, int R>
void weight_rows(const WeightTile<T>& a, int64_t oc0) {
  int64_t t = 0;
  if constexpr (weight_fits(R, 8)) {
    for (; t + 8 <= a.taps; t += 8) weight_block<T, R, 8>(a, oc0, t);
  }
  if constexpr (weight_fits(R, 4)) {
    for (; t + 4 <= a.taps; t += 4) weight_block<T, R, 4>(a, oc0, t);
  }
  for (; t + 2 <= a.taps; t += 2) weight_block<T, R, 2>(a, oc0, t);
  for (; t < a.taps; ++t) weight_block<T, R, 1>(a, oc0, t);
}

template <typename T>
void weight_tile(const WeightTile<T>& a) {
  int64_t oc = 0;
  for (; oc + 4 <= a.out_channels; oc += 4) weight_rows<T, 4>(a, oc);
  for (; oc + 2 <= a.out_channels; oc += 2) weight_rows<T, 2>(a, oc);
  for (; oc < a.out_channels; ++oc) weight_rows<T, 1>(a, oc);
}

}  // namespace
}  // namespace fastconv::cpu::FASTCONV_ISA

#define FASTCONV_CAT2(a, b) a##b
#define FASTCONV_CAT(a, b) FASTCONV_CAT2(a, b)

namespace fastconv::cpu {

const KernelTable& FASTCONV_CAT(kernels_, FASTCONV_ISA)() {
  static const KernelTable table{
      FASTCONV_ISA_NAME,
      &FASTCONV_ISA::forward_tile<float>,
      &FASTCONV_ISA::forward_tile<double>,
      &FASTCONV_ISA::weight_tile<float>,
      &FASTCONV_ISA::weight_tile<double>,
  };
  return table;
}

}  // namespace fastconv::cpu
