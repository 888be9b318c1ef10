// Causal depthwise conv1d on CPU: forward, backward and the decoding update.
//
// x is read in place in either layout: time-contiguous (B, C, L), where the
// micro-kernels run vectors along time over one channel, or channels-last
// (x.stride(1) == 1, a transposed (B, L, C)), where they run vectors along
// channels over a block of channels; the output takes x's layout. 16-bit
// inputs are widened to float in L1-sized stages; float and double rows are
// read where they lie, except the first `history` positions, which come
// from the initial state through a staging buffer.
//
// seq_idx: the micro-kernels compute every output as if one sequence ran
// through the whole row, then the few outputs within `history` of a
// sequence start are recomputed (forward, and the pre-activation in
// backward) and the gradient terms those masked taps added are taken back.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "fastconv/causal_layout.h"
#include "fastconv/cpu/allocation.h"
#include "fastconv/cpu/convert_row.h"
#include "fastconv/cpu/streaming_store.h"
#include "fastconv/cpu/tile_kernels.h"
#include "fastconv/shape.h"

namespace fastconv {
namespace {

template <typename T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Stages fit L2 with room to spare. Channels-last tasks take long runs of
// channels at few positions: each position's channels are one contiguous
// run of memory (short runs at a stride of C touched a page per position).
constexpr int64_t kTimeChunk = 2048;     // positions per stage, time layout
constexpr int64_t kTimeHead = 64;        // the first stage: a multiple of it, >= history
constexpr int64_t kChannelBlock = 512;   // channels per task, channels-last layout
constexpr int64_t kChannelChunk = 64;    // positions per stage, channels-last layout
constexpr int64_t kBackwardTasks = 16;   // channels-last backward: at least this many tasks where L allows
constexpr int64_t kBackwardSegment = 1024;  // channels-last backward: positions per task, at most

// Positions of the time-layout stage at t0: a short first stage (a multiple
// of kTimeHead, >= H) stages the state and the positions beside it, so that
// every later stage starts at t0 >= H and reads x's row in place.
int64_t time_stage(int64_t t0, int64_t H, int64_t L) {
  const int64_t head = H > 0 ? kTimeHead * ((H + kTimeHead - 1) / kTimeHead) : kTimeChunk;
  return std::min({t0 == 0 ? head : kTimeChunk, kTimeChunk, L - t0});
}

template <typename A>
A silu_scalar(A v) {
  return v / (A(1) + std::exp(-v));
}

// A new (B, C, L) tensor in `like`'s layout, from the cache of result buffers.
at::Tensor empty_in_layout(const at::Tensor& like, at::IntArrayRef sizes) {
  if (causal_channels_last(like)) {
    return cpu::empty_output({sizes[0], sizes[2], sizes[1]}, like.options()).transpose(1, 2);
  }
  return cpu::empty_output(sizes, like.options());
}

// Sequence starts of one batch row (seq_idx): positions s > 0 where the
// sequence changes. The initial state belongs to the first sequence.
struct Runs {
  std::vector<int64_t> starts;

  // The start of t's sequence, or a bound below every position for the first.
  int64_t start_of(int64_t t) const {
    auto it = std::upper_bound(starts.begin(), starts.end(), t);
    return it == starts.begin() ? std::numeric_limits<int64_t>::min() / 2 : *(it - 1);
  }
  // The first start after p, or `end`.
  int64_t next_after(int64_t p, int64_t end) const {
    auto it = std::upper_bound(starts.begin(), starts.end(), p);
    return it == starts.end() ? end : *it;
  }
  // Outputs some of whose taps cross into an earlier sequence: [s, s + H) per start.
  std::vector<int64_t> masked_outputs(int64_t history, int64_t length) const {
    std::vector<int64_t> out;
    for (int64_t s : starts) {
      for (int64_t t = std::max(s, out.empty() ? s : out.back() + 1); t < std::min(s + history, length); ++t) {
        out.push_back(t);
      }
    }
    return out;
  }
  // Positions of xs (from -H) feeding some masked tap: [s - H, s) per start.
  std::vector<int64_t> masked_inputs(int64_t history) const {
    std::vector<int64_t> out;
    for (int64_t s : starts) {
      for (int64_t p = std::max(s - history, out.empty() ? -history : out.back() + 1); p < s; ++p) out.push_back(p);
    }
    return out;
  }
};

std::vector<Runs> sequence_runs(const std::optional<at::Tensor>& seq_idx, int64_t batch) {
  std::vector<Runs> runs(batch);
  if (!seq_idx || !seq_idx->defined()) return runs;
  const auto s = seq_idx->accessor<int32_t, 2>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 1; t < s.size(1); ++t) {
      if (s[b][t] != s[b][t - 1]) runs[b].starts.push_back(t);
    }
  }
  return runs;
}

// Element access to the arguments, by strides, in the accumulation type.
template <typename T>
struct Operands {
  using A = Acc<T>;
  const T* x;
  int64_t xb, xc, xt;
  const T* state;  // (B, C, H) or nullptr
  int64_t sb, sc, st;
  int64_t channels, length, taps, dilation, history;
  std::vector<A> w;  // [C][K]
  std::vector<A> bias;  // [C], zeros when none
  bool silu;

  Operands(const at::Tensor& x_, const at::Tensor& weight, const std::optional<at::Tensor>& b,
           const std::optional<at::Tensor>& s, int64_t dilation_, bool silu_)
      : x(x_.const_data_ptr<T>()), xb(x_.stride(0)), xc(x_.stride(1)), xt(x_.stride(2)),
        state(s && s->defined() ? s->const_data_ptr<T>() : nullptr),
        sb(state ? s->stride(0) : 0), sc(state ? s->stride(1) : 0), st(state ? s->stride(2) : 0),
        channels(x_.size(1)), length(x_.size(2)), taps(weight.size(1)), dilation(dilation_),
        history(dilation_ * (weight.size(1) - 1)), w(channels * taps), bias(channels, A(0)), silu(silu_) {
    const auto wc = weight.contiguous();
    const T* wp = wc.const_data_ptr<T>();
    for (int64_t i = 0; i < channels * taps; ++i) w[i] = static_cast<A>(wp[i]);
    if (b && b->defined()) {
      const auto bc = b->contiguous();
      for (int64_t c = 0; c < channels; ++c) bias[c] = static_cast<A>(bc.const_data_ptr<T>()[c]);
    }
  }

  // xs[p]: the initial state (or zero) for p < 0, x after.
  A xs(int64_t b, int64_t c, int64_t p) const {
    if (p >= 0) return static_cast<A>(x[b * xb + c * xc + p * xt]);
    return state ? static_cast<A>(state[b * sb + c * sc + (history + p) * st]) : A(0);
  }
  // The biased sum of output t over the taps at positions >= lo.
  A pre(int64_t b, int64_t c, int64_t t, int64_t lo) const {
    A acc = bias[c];
    for (int64_t k = 0; k < taps; ++k) {
      const int64_t p = t - dilation * (taps - 1 - k);
      if (p >= lo) acc += w[c * taps + k] * xs(b, c, p);
    }
    return acc;
  }
  cpu::Activation act() const { return silu ? cpu::Activation::kSilu : cpu::Activation::kNone; }
};

// xs[p0 .. p0 + n) of one channel into dst, in the accumulation type.
template <typename T>
void stage_time(const Operands<T>& o, int64_t b, int64_t c, int64_t p0, int64_t n, Acc<T>* dst) {
  int64_t i = 0;
  for (; i < n && p0 + i < 0; ++i) dst[i] = o.xs(b, c, p0 + i);
  if (i < n) cpu::convert_row(o.x + b * o.xb + c * o.xc + (p0 + i), dst + i, n - i);
}

// The final state, xs[L - H + i] for i < H.
template <typename T>
at::Tensor final_state(const Operands<T>& o, const at::Tensor& x) {
  const int64_t B = x.size(0), C = o.channels, H = o.history;
  auto out = at::empty({B, C, H}, x.options());
  T* f = out.data_ptr<T>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t i = 0; i < H; ++i) f[(b * C + c) * H + i] = static_cast<T>(o.xs(b, c, o.length - H + i));
    }
  }
  return out;
}

// ---- forward

template <typename T>
void forward_time(const Operands<T>& o, int64_t B, T* y) {
  using A = Acc<T>;
  const int64_t C = o.channels, L = o.length, H = o.history;
  const bool streaming = B * C * L * int64_t(sizeof(T)) >= cpu::kStreamingBytes;
  at::parallel_for(0, B * C, std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, L * o.taps)),
                   [&](int64_t begin, int64_t end) {
    std::vector<A> win(H + kTimeChunk), out(kTimeChunk);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / C, c = r % C;
      const T* xrow = o.x + b * o.xb + c * o.xc;
      for (int64_t t0 = 0, n = 0; t0 < L; t0 += n) {
        n = time_stage(t0, H, L);
        cpu::CausalTimeTile<A> tile{win.data(), o.w.data() + c * o.taps, o.taps, o.dilation, o.bias[c], out.data(), n,
                                    o.act()};
        tile.streaming = streaming && !std::is_same_v<T, c10::Half>;
        // In place: float and double rows, bfloat16 ones as bits; staged: the
        // first positions (the state before them), float16.
        const bool in_place = t0 >= H && (std::is_same_v<T, A> || std::is_same_v<T, c10::BFloat16>);
        if (!in_place) stage_time(o, b, c, t0 - H, n + H, win.data());
        if constexpr (std::is_same_v<T, A>) {
          if (in_place) tile.win = xrow + t0 - H;
          tile.out = y + r * L + t0;
        } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
          if (in_place) tile.win_bf16 = reinterpret_cast<const uint16_t*>(xrow + t0 - H);
          tile.out_bf16 = reinterpret_cast<uint16_t*>(y + r * L + t0);
        }
        cpu::run(tile);
        if constexpr (std::is_same_v<T, c10::Half>) cpu::convert_row(out.data(), y + r * L + t0, n);
      }
    }
    if (streaming) cpu::stream_fence();
  });
}

// Row pointers of xs[p0 .. p0 + n) for channels [c0, c0 + m) of sample b:
// x's rows where they lie (float and double, p >= 0), else staged in buf.
template <typename T>
void stage_channels(const Operands<T>& o, int64_t b, int64_t c0, int64_t m, int64_t p0, int64_t n,
                    std::vector<const Acc<T>*>& rows, std::vector<Acc<T>>& buf) {
  using A = Acc<T>;
  rows.resize(n);
  buf.resize(n * m);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = p0 + i;
    A* staged = buf.data() + i * m;
    if (p >= 0) {
      const T* src = o.x + b * o.xb + c0 + p * o.xt;
      if constexpr (std::is_same_v<T, A>) {
        rows[i] = src;
        continue;
      } else {
        cpu::convert_row(src, staged, m);
      }
    } else {
      for (int64_t j = 0; j < m; ++j) staged[j] = o.xs(b, c0 + j, p);
    }
    rows[i] = staged;
  }
}

// The weights of channels [c0, c0 + m) as [K][m], taps reversed when flip.
template <typename T>
std::vector<Acc<T>> weight_block(const Operands<T>& o, int64_t c0, int64_t m, bool flip) {
  std::vector<Acc<T>> w(o.taps * m);
  for (int64_t k = 0; k < o.taps; ++k) {
    for (int64_t j = 0; j < m; ++j) w[k * m + j] = o.w[(c0 + j) * o.taps + (flip ? o.taps - 1 - k : k)];
  }
  return w;
}

// Row pointers of xs[p0 .. p0 + n) as bfloat16 bits: x's rows in place, the
// state's (p < 0) copied into buf.
void stage_channels_bf16(const Operands<c10::BFloat16>& o, int64_t b, int64_t c0, int64_t m, int64_t p0, int64_t n,
                         std::vector<const uint16_t*>& rows, std::vector<uint16_t>& buf) {
  rows.resize(n);
  buf.resize(std::max<int64_t>(0, -p0) * m);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = p0 + i;
    if (p >= 0) {
      rows[i] = reinterpret_cast<const uint16_t*>(o.x + b * o.xb + c0 + p * o.xt);
      continue;
    }
    uint16_t* staged = buf.data() + i * m;
    for (int64_t j = 0; j < m; ++j) {
      const c10::BFloat16 v = o.state ? o.state[b * o.sb + (c0 + j) * o.sc + (o.history + p) * o.st]
                                      : c10::BFloat16(0.0f);
      staged[j] = v.x;
    }
    rows[i] = staged;
  }
}

template <typename T>
void forward_channels(const Operands<T>& o, int64_t B, T* y, int64_t yb, int64_t yt) {
  using A = Acc<T>;
  const int64_t C = o.channels, L = o.length, H = o.history;
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock, chunks = (L + kChannelChunk - 1) / kChannelChunk;
  const bool streaming = B * C * L * int64_t(sizeof(T)) >= cpu::kStreamingBytes;
  at::parallel_for(0, B * blocks * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<const A*> rows;
    std::vector<A> buf, out;
    [[maybe_unused]] std::vector<const uint16_t*> rows16;
    [[maybe_unused]] std::vector<uint16_t> buf16;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (blocks * chunks), c0 = task % blocks * kChannelBlock;
      const int64_t t0 = (task / blocks) % chunks * kChannelChunk;
      const int64_t m = std::min(kChannelBlock, C - c0), n = std::min(kChannelChunk, L - t0);
      const auto w = weight_block(o, c0, m, false);
      T* dst = y + b * yb + t0 * yt + c0;
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        stage_channels_bf16(o, b, c0, m, t0 - H, n + H, rows16, buf16);
        cpu::CausalChannelTile<A> tile{nullptr, w.data(), o.bias.data() + c0, nullptr, yt, m, o.taps, o.dilation, n,
                                       o.act()};
        tile.rows_bf16 = rows16.data();
        tile.out_bf16 = reinterpret_cast<uint16_t*>(dst);
        tile.streaming = streaming;
        cpu::run(tile);
        continue;
      }
      stage_channels(o, b, c0, m, t0 - H, n + H, rows, buf);
      if constexpr (std::is_same_v<T, A>) {
        cpu::CausalChannelTile<A> tile{rows.data(), w.data(), o.bias.data() + c0, dst, yt, m, o.taps, o.dilation, n,
                                       o.act()};
        tile.streaming = streaming;
        cpu::run(tile);
      } else {
        out.resize(n * m);
        cpu::run(cpu::CausalChannelTile<A>{rows.data(), w.data(), o.bias.data() + c0, out.data(), m, m, o.taps,
                                           o.dilation, n, o.act()});
        for (int64_t j = 0; j < n; ++j) cpu::convert_row(out.data() + j * m, dst + j * yt, m);
      }
    }
    if (streaming) cpu::stream_fence();
  });
}

// Outputs whose taps cross a sequence start, recomputed with those taps masked.
template <typename T>
void mask_forward(const Operands<T>& o, const std::vector<Runs>& runs, T* y, int64_t yb, int64_t yc, int64_t yt) {
  for (int64_t b = 0; b < int64_t(runs.size()); ++b) {
    for (int64_t t : runs[b].masked_outputs(o.history, o.length)) {
      const int64_t lo = runs[b].start_of(t);
      for (int64_t c = 0; c < o.channels; ++c) {
        const auto v = o.pre(b, c, t, lo);
        y[b * yb + c * yc + t * yt] = static_cast<T>(o.silu ? silu_scalar(v) : v);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> causal_conv1d_cpu(
    const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& initial_state, const std::optional<at::Tensor>& seq_idx,
    std::optional<c10::string_view> activation, c10::SymInt dilation) {
  const auto d = check_causal_conv1d(x_in, weight, bias, initial_state, seq_idx, activation, dilation);
  const at::Tensor x = causal_readable(x_in);
  at::Tensor y = empty_in_layout(x, x.sizes());
  at::Tensor fs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv.causal_conv1d", [&] {
    const Operands<scalar_t> o(x, weight, bias, initial_state, dilation.expect_int(), d.silu);
    if (y.numel() > 0) {
      if (causal_channels_last(x)) {
        forward_channels(o, x.size(0), y.data_ptr<scalar_t>(), y.stride(0), y.stride(2));
      } else {
        forward_time(o, x.size(0), y.data_ptr<scalar_t>());
      }
      mask_forward(o, sequence_runs(seq_idx, x.size(0)), y.data_ptr<scalar_t>(), y.stride(0), y.stride(1),
                   y.stride(2));
    }
    fs = final_state(o, x);
  });
  return {y, fs};
}

// ---- backward
//
// With pre the biased sum and g = grad_output * act'(pre):
//   grad_xs[p] = sum_k w[K-1-k] g[p + k d]  (p from -H: the initial state first)
//   grad_w[k]  = sum_t g[t] xs[t - (K-1-k) d],   grad_bias = sum_t g[t]
// and grad_final_state adds to grad_xs[L - H + i].

struct Grads {
  at::Tensor x, weight, bias, state;  // weight (C, K) and bias (C,) in the accumulation type
};

template <typename T>
void backward_time(const Operands<T>& o, const at::Tensor& gy, const std::vector<Runs>& runs, const Grads& g,
                   int64_t B) {
  using A = Acc<T>;
  const int64_t C = o.channels, L = o.length, H = o.history, K = o.taps;
  const T* gyp = gy.const_data_ptr<T>();
  T* gx = g.x.data_ptr<T>();
  T* gs = g.state.data_ptr<T>();
  A* gw = g.weight.data_ptr<A>();
  A* gb = g.bias.data_ptr<A>();
  const bool streaming = g.x.nbytes() >= cpu::kStreamingBytes;
  at::parallel_for(0, C, std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, B * L * K)),
                   [&](int64_t begin, int64_t end) {
    std::vector<A> win(H + kTimeChunk), pre(o.silu ? L : 0), gbuf(2 * H + L), gxs(H + L);
    for (int64_t c = begin; c < end; ++c) {
      std::vector<A> flipped(o.w.begin() + c * K, o.w.begin() + (c + 1) * K);
      std::reverse(flipped.begin(), flipped.end());
      for (int64_t b = 0; b < B; ++b) {
        const int64_t r = b * C + c;
        A* grow = gbuf.data() + H;  // g[t] = grow[t], zeros on both sides
        const T* gyrow = gyp + r * L;
        const auto masked = runs[b].masked_outputs(H, L);
        // grad_x of [p0, p0 + pn), from g[p0, p0 + pn + H): written in place
        // (float, double; bfloat16 as bits) or through gxs (float16).
        const auto grad_x = [&](int64_t p0, int64_t pn) {
          cpu::CausalTimeTile<A> tile{grow + p0, flipped.data(), K, o.dilation, A(0), gxs.data() + H + p0, pn,
                                      cpu::Activation::kNone};
          if constexpr (std::is_same_v<T, A>) {
            tile.out = gx + r * L + p0, tile.streaming = streaming;
          } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
            tile.out_bf16 = reinterpret_cast<uint16_t*>(gx + r * L + p0), tile.streaming = streaming;
          }
          cpu::run(tile);
          if constexpr (std::is_same_v<T, c10::Half>) cpu::convert_row(gxs.data() + H + p0, gx + r * L + p0, pn);
        };
        int64_t ready = 0;  // grad_x is written for [0, ready)
        for (int64_t t0 = 0, n = 0; t0 < L; t0 += n) {
          n = time_stage(t0, H, L);
          const A* xw = win.data();  // xs from t0 - H: x's row in place where it can be
          if constexpr (std::is_same_v<T, A>) {
            if (t0 >= H) xw = o.x + b * o.xb + c * o.xc + t0 - H;
          }
          const bool fused = o.silu && K <= cpu::kCausalFusedTaps &&
              std::none_of(masked.begin(), masked.end(), [&](int64_t t) { return t >= t0 && t < t0 + n; });
          if (fused) {
            // SiLU's gradient and the weight terms in one pass; grad_y (float,
            // double, bfloat16) and bfloat16 x read where they lie.
            cpu::CausalTimeSiluGradTile<A> tile{xw, o.w.data() + c * K, K, o.dilation, o.bias[c], grow + t0,
                                                grow + t0, n, gw + c * K, gb + c};
            if constexpr (std::is_same_v<T, A>) {
              tile.gy = gyrow + t0;
            } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
              tile.gy_bf16 = reinterpret_cast<const uint16_t*>(gyrow + t0);
              if (t0 >= H) tile.win_bf16 = reinterpret_cast<const uint16_t*>(o.x + b * o.xb + c * o.xc + t0 - H);
            } else {
              cpu::convert_row(gyrow + t0, grow + t0, n);
            }
            if (!tile.win_bf16 && xw == win.data()) stage_time(o, b, c, t0 - H, n + H, win.data());
            cpu::run(tile);
          } else {
            cpu::convert_row(gyrow + t0, grow + t0, n);
            if (xw == win.data()) stage_time(o, b, c, t0 - H, n + H, win.data());
            if (o.silu) {
              cpu::run(cpu::CausalTimeTile<A>{xw, o.w.data() + c * K, K, o.dilation, o.bias[c], pre.data() + t0, n,
                                              cpu::Activation::kNone});
              for (int64_t t : masked) {
                if (t >= t0 && t < t0 + n) pre[t] = o.pre(b, c, t, runs[b].start_of(t));
              }
              cpu::silu_grad(pre.data() + t0, grow + t0, n);
            }
            cpu::run(cpu::CausalTimeWeightTile<A>{grow + t0, xw, K, o.dilation, n, gw + c * K, gb + c});
          }
          // grad_x as far as g is known, while the stage's g is in the caches:
          // to H positions before the stage's end (down to a stage boundary,
          // so that its vectors stay aligned), or to the end of the row.
          const int64_t done = t0 + n == L ? L : (t0 + n - H) / kTimeHead * kTimeHead;
          if (done > ready) grad_x(ready, done - ready), ready = done;
        }
        // Take back the masked taps' terms from grad_w.
        for (int64_t t : masked) {
          const int64_t lo = runs[b].start_of(t);
          for (int64_t k = 0; k < K; ++k) {
            const int64_t p = t - o.dilation * (K - 1 - k);
            if (p < lo) gw[c * K + k] -= grow[t] * o.xs(b, c, p);
          }
        }
        // grad_xs of the state's H positions.
        cpu::run(cpu::CausalTimeTile<A>{gbuf.data(), flipped.data(), K, o.dilation, A(0), gxs.data(), H,
                                        cpu::Activation::kNone});
        for (int64_t p : runs[b].masked_inputs(H)) {
          const int64_t stop = std::min(runs[b].next_after(p, L), L);
          A acc = 0;
          for (int64_t k = 0; k < K; ++k) {
            const int64_t t = p + k * o.dilation;
            if (t >= 0 && t < stop) acc += flipped[k] * grow[t];
          }
          if (p < 0) {
            gxs[H + p] = acc;
          } else {
            gx[r * L + p] = static_cast<T>(acc);
          }
        }
        if (g.state.numel() > 0) {
          for (int64_t i = 0; i < H; ++i) gs[r * H + i] = static_cast<T>(gxs[i]);
        }
      }
    }
    if (streaming) cpu::stream_fence();
  });
}

template <typename T>
void backward_channels(const Operands<T>& o, const at::Tensor& gy, const std::vector<Runs>& runs, const Grads& g,
                       int64_t B) {
  using A = Acc<T>;
  const int64_t C = o.channels, L = o.length, H = o.history, K = o.taps;
  const T* gyp = gy.const_data_ptr<T>();
  const int64_t gyb = gy.stride(0), gyt = gy.stride(2);
  T* gx = g.x.data_ptr<T>();
  const int64_t gxb = g.x.stride(0), gxt = g.x.stride(2);
  T* gs = g.state.data_ptr<T>();
  A* gw = g.weight.data_ptr<A>();
  A* gb = g.bias.data_ptr<A>();
  const bool streaming = g.x.nbytes() >= cpu::kStreamingBytes;
  // Tasks: a block of channels and a segment of at most kBackwardSegment
  // positions (at least kBackwardTasks tasks where L allows, so both threads
  // of a 3-block layer have work), segment-major as the forward's: the blocks
  // of a segment, which share its rows (and their pages), run one after
  // another (one task per block over all positions ran 3-14% slower). Each
  // task sums its weight and bias gradients apart, and the sums are added in
  // segment order: the result does not depend on the threads.
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock, chunks = (L + kChannelChunk - 1) / kChannelChunk;
  const int64_t segments = std::min(chunks, std::max((kBackwardTasks + blocks - 1) / blocks,
                                                     (L + kBackwardSegment - 1) / kBackwardSegment));
  const int64_t per_segment = (chunks + segments - 1) / segments * kChannelChunk;
  std::vector<A> sums(blocks * segments * (K + 1) * kChannelBlock, A(0));  // [block][segment][K + 1][m]
  at::parallel_for(0, blocks * segments, 1, [&](int64_t begin, int64_t end) {
    std::vector<const A*> rows, grows;
    std::vector<A> buf, pre, gbuf, out, zeros(kChannelBlock, A(0));
    [[maybe_unused]] std::vector<const uint16_t*> rows16;
    [[maybe_unused]] std::vector<uint16_t> buf16;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task % blocks, seg = task / blocks;
      const int64_t c0 = blk * kChannelBlock, m = std::min(kChannelBlock, C - c0);
      const auto w = weight_block(o, c0, m, false), flipped = weight_block(o, c0, m, true);
      A* gwb = sums.data() + (blk * segments + seg) * (K + 1) * kChannelBlock;
      A* gbb = gwb + K * m;
      for (int64_t b = 0; b < B; ++b) {
        const auto masked = runs[b].masked_outputs(H, L);
        for (int64_t t0 = seg * per_segment; t0 < std::min(L, (seg + 1) * per_segment); t0 += kChannelChunk) {
          // g for outputs [t0, t0 + n + H): grad_x of [t0, t0 + n) reads that far.
          const int64_t n = std::min(kChannelChunk, L - t0), span = std::min(n + H, L - t0);
          gbuf.resize((n + H) * m);
          std::fill(gbuf.begin() + span * m, gbuf.end(), A(0));  // past the end of the row
          const bool fused = o.silu && std::none_of(masked.begin(), masked.end(), [&](int64_t t) {
            return t >= t0 && t < t0 + span;
          });
          // SiLU's gradient and the weight terms in one pass (no pre-activation
          // kept); grad_y (float, double, bfloat16) and bfloat16 x read where
          // they lie.
          cpu::CausalChannelSiluGradTile<A> fuse{nullptr, w.data(), o.bias.data() + c0, gbuf.data(), m, m, K,
                                                 o.dilation, span, n, gwb, gbb};
          bool done = false;
          if constexpr (std::is_same_v<T, c10::BFloat16>) {
            if (fused) {
              stage_channels_bf16(o, b, c0, m, t0 - H, span + H, rows16, buf16);
              fuse.rows_bf16 = rows16.data();
              fuse.gy_bf16 = reinterpret_cast<const uint16_t*>(gyp + b * gyb + t0 * gyt + c0);
              fuse.gy_stride = gyt;
              cpu::run(fuse);
              done = true;
            }
          }
          if (!done) {
            stage_channels(o, b, c0, m, t0 - H, span + H, rows, buf);
            if constexpr (std::is_same_v<T, A>) {
              if (fused) fuse.gy = gyp + b * gyb + t0 * gyt + c0, fuse.gy_stride = gyt;
            }
            if (fuse.gy == nullptr) {
              for (int64_t j = 0; j < span; ++j) {
                cpu::convert_row(gyp + b * gyb + (t0 + j) * gyt + c0, gbuf.data() + j * m, m);
              }
            }
            if (fused) {
              fuse.rows = rows.data();
              cpu::run(fuse);
            } else {
              if (o.silu) {
                pre.resize(span * m);
                cpu::run(cpu::CausalChannelTile<A>{rows.data(), w.data(), o.bias.data() + c0, pre.data(), m, m, K,
                                                   o.dilation, span, cpu::Activation::kNone});
                for (int64_t t : masked) {
                  if (t < t0 || t >= t0 + span) continue;
                  for (int64_t j = 0; j < m; ++j) pre[(t - t0) * m + j] = o.pre(b, c0 + j, t, runs[b].start_of(t));
                }
                cpu::silu_grad(pre.data(), gbuf.data(), span * m);
              }
              cpu::run(cpu::CausalChannelWeightTile<A>{gbuf.data(), m, rows.data(), m, K, o.dilation, n, gwb, gbb});
            }
          }
          for (int64_t t : masked) {
            if (t < t0 || t >= t0 + n) continue;
            const int64_t lo = runs[b].start_of(t);
            for (int64_t k = 0; k < K; ++k) {
              const int64_t p = t - o.dilation * (K - 1 - k);
              if (p >= lo) continue;
              for (int64_t j = 0; j < m; ++j) gwb[k * m + j] -= gbuf[(t - t0) * m + j] * o.xs(b, c0 + j, p);
            }
          }
          // grad_x of [t0, t0 + n), from g rows [t0, t0 + n + H).
          grows.resize(n + H);
          for (int64_t j = 0; j < n + H; ++j) grows[j] = gbuf.data() + j * m;
          // Written in place (float, double; bfloat16 as bits), else through out.
          T* gx0 = gx + b * gxb + t0 * gxt + c0;
          out.resize(n * m);
          cpu::CausalChannelTile<A> tile{grows.data(), flipped.data(), nullptr, out.data(), m, m, K, o.dilation, n,
                                         cpu::Activation::kNone};
          if constexpr (std::is_same_v<T, A>) {
            tile.out = gx0, tile.out_stride = gxt, tile.streaming = streaming;
          } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
            tile.out_bf16 = reinterpret_cast<uint16_t*>(gx0), tile.out_stride = gxt, tile.streaming = streaming;
            tile.rows_bf16 = nullptr;  // g is float: only the output is bfloat16
          }
          cpu::run(tile);
          if constexpr (std::is_same_v<T, c10::Half>) {
            for (int64_t j = 0; j < n; ++j) cpu::convert_row(out.data() + j * m, gx0 + j * gxt, m);
          }
          for (int64_t p : runs[b].masked_inputs(H)) {
            if (p < t0 || p >= t0 + n) continue;
            const int64_t stop = std::min(runs[b].next_after(p, L), L);
            for (int64_t j = 0; j < m; ++j) {
              A acc = 0;
              for (int64_t k = 0; k < K; ++k) {
                const int64_t t = p + k * o.dilation;
                if (t < stop) acc += flipped[k * m + j] * gbuf[(t - t0) * m + j];
              }
              gx0[(p - t0) * gxt + j] = static_cast<T>(acc);
            }
          }
          if (t0 == 0 && g.state.numel() > 0) {
            // grad of the initial state, positions [-H, 0): g rows [-H, H), zero before 0.
            grows.resize(2 * H);
            for (int64_t i = 0; i < 2 * H; ++i) {
              const int64_t t = i - H;
              grows[i] = t < 0 || t >= span ? zeros.data() : gbuf.data() + t * m;
            }
            out.resize(H * m);
            cpu::run(cpu::CausalChannelTile<A>{grows.data(), flipped.data(), nullptr, out.data(), m, m, K, o.dilation,
                                               H, cpu::Activation::kNone});
            for (int64_t p : runs[b].masked_inputs(H)) {
              if (p >= 0) break;
              const int64_t stop = std::min(runs[b].next_after(p, L), span);
              for (int64_t j = 0; j < m; ++j) {
                A acc = 0;
                for (int64_t k = 0; k < K; ++k) {
                  const int64_t t = p + k * o.dilation;
                  if (t >= 0 && t < stop) acc += flipped[k * m + j] * gbuf[t * m + j];
                }
                out[(p + H) * m + j] = acc;
              }
            }
            for (int64_t i = 0; i < H; ++i) {
              for (int64_t j = 0; j < m; ++j) gs[((b * C) + c0 + j) * H + i] = static_cast<T>(out[i * m + j]);
            }
          }
        }
      }
    }
    if (streaming) cpu::stream_fence();
  });
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kChannelBlock, m = std::min(kChannelBlock, C - c0);
    for (int64_t seg = 0; seg < segments; ++seg) {
      const A* gwb = sums.data() + (blk * segments + seg) * (K + 1) * kChannelBlock;
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t j = 0; j < m; ++j) gw[(c0 + j) * K + k] += gwb[k * m + j];
      }
      for (int64_t j = 0; j < m; ++j) gb[c0 + j] += gwb[K * m + j];
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> causal_conv1d_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_final_state, const at::Tensor& x_in,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& initial_state,
    const std::optional<at::Tensor>& seq_idx, std::optional<c10::string_view> activation, c10::SymInt dilation) {
  const auto d = check_causal_conv1d_backward(grad_output, grad_final_state, x_in, weight, bias, initial_state,
                                              seq_idx, activation, dilation);
  const at::Tensor x = causal_readable(x_in);
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2), K = weight.size(1);
  const int64_t H = dilation.expect_int() * (K - 1);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Grads g{empty_in_layout(x, x.sizes()), at::zeros({C, K}, x.options().dtype(acc_type)),
          at::zeros({C}, x.options().dtype(acc_type)), at::zeros({B, C, H}, x.options())};
  const at::Tensor gy = causal_in_layout(grad_output, x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv.causal_conv1d_backward", [&] {
    const Operands<scalar_t> o(x, weight, bias, initial_state, dilation.expect_int(), d.silu);
    const auto runs = sequence_runs(seq_idx, B);
    if (x.numel() > 0) {
      if (causal_channels_last(x)) {
        backward_channels(o, gy, runs, g, B);
      } else {
        backward_time(o, gy, runs, g, B);
      }
    }
  });
  if (grad_final_state && grad_final_state->defined()) {
    causal_add_final_state_grad(g.x, g.state, *grad_final_state, L, H);
  }
  return {g.x, g.weight.to(x.scalar_type()), g.bias.to(x.scalar_type()), g.state};
}

// ---- decoding

// Decoding steps through the vector kernel: T (float or bfloat16) stored as E.
template <typename T, typename E>
void update_steps(const at::Tensor& x3, const at::Tensor& conv_state, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, const at::Tensor& y3, const int32_t* idx, bool silu) {
  constexpr int64_t kBlock = 512;
  const int64_t B = x3.size(0), C = x3.size(1);
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  const auto bias_t = bias && bias->defined() ? bias->contiguous() : at::Tensor();
  // T's storage as E (the same bits).
  const auto e = [](auto* p) {
    using P = std::remove_pointer_t<decltype(p)>;
    return reinterpret_cast<std::conditional_t<std::is_const_v<P>, const E*, E*>>(p);
  };
  // Row pointers on the stack for the batches of decoding (a step is microseconds).
  c10::SmallVector<E*, 8> states(B), outs(B);
  c10::SmallVector<const E*, 8> xs(B);
  for (int64_t b = 0; b < B; ++b) {
    states[b] = e(conv_state.data_ptr<T>() + (idx ? idx[b] : b) * conv_state.stride(0));
    xs[b] = e(x3.const_data_ptr<T>() + b * x3.stride(0));
    outs[b] = e(y3.data_ptr<T>() + b * y3.stride(0));
  }
  // About 2 us of work (B = 1, C = 4096) per task: a single row stays on one thread.
  at::parallel_for(0, blocks, std::max<int64_t>(1, 8 / B), [&](int64_t begin, int64_t end) {
    c10::SmallVector<E*, 8> st(B), out(B);
    c10::SmallVector<const E*, 8> xr(B);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * kBlock;
      for (int64_t b = 0; b < B; ++b) {
        st[b] = states[b] + c0 * conv_state.stride(1);
        xr[b] = xs[b] + c0;
        out[b] = outs[b] + c0;
      }
      cpu::run(cpu::CausalUpdateRows<E>{st.data(), conv_state.stride(1), xr.data(), x3.stride(2),
                                        e(weight.const_data_ptr<T>()) + c0 * weight.stride(0), weight.stride(0),
                                        bias_t.defined() ? e(bias_t.const_data_ptr<T>()) + c0 : nullptr, out.data(),
                                        y3.stride(2), B, std::min(kBlock, C - c0), weight.size(1), conv_state.size(2),
                                        x3.size(2), silu ? cpu::Activation::kSilu : cpu::Activation::kNone});
    }
  });
}

at::Tensor causal_conv1d_update_cpu(
    const at::Tensor& x, const at::Tensor& conv_state, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    std::optional<c10::string_view> activation, const std::optional<at::Tensor>& cache_seqlens,
    const std::optional<at::Tensor>& conv_state_indices) {
  const auto d = check_causal_conv1d_update(x, conv_state, weight, bias, activation, cache_seqlens,
                                            conv_state_indices);
  const int64_t B = x.size(0), C = x.size(1), T = x.dim() == 3 ? x.size(2) : 1, K = weight.size(1);
  const int64_t S = conv_state.size(2), SB = conv_state.size(0);
  const auto seqlens_t = cache_seqlens && cache_seqlens->defined() ? cache_seqlens->contiguous() : at::Tensor();
  const int32_t* seqlens = seqlens_t.defined() ? seqlens_t.const_data_ptr<int32_t>() : nullptr;
  const auto idx_t = conv_state_indices && conv_state_indices->defined() ? conv_state_indices->contiguous()
                                                                         : at::Tensor();
  const int32_t* idx = idx_t.defined() ? idx_t.const_data_ptr<int32_t>() : nullptr;
  for (int64_t b = 0; b < B && idx; ++b) {
    TORCH_CHECK(idx[b] >= 0 && idx[b] < SB, "fastconv.causal_conv1d_update: conv_state_indices[", b, "] = ", idx[b],
                " is outside [0, ", SB, ") (conv_state's batch)");
  }
  const bool vector_step = !seqlens && T == 1 && conv_state.stride(2) == 1 && S + T <= cpu::kCausalUpdateWindow &&
      K <= cpu::kCausalUpdateWindow && x.numel() > 0;
  if (vector_step && x.scalar_type() == at::kHalf) {
    // float16: the state rows in use, x and the weights in float through the
    // vector kernel, then back (exact: the state holds float16 inputs).
    const at::Tensor rows = idx_t.defined() ? conv_state.index_select(0, idx_t.to(at::kLong)) : conv_state;
    at::Tensor state = rows.to(at::kFloat).contiguous();
    const at::Tensor y = causal_conv1d_update_cpu(
        x.to(at::kFloat), state, weight.to(at::kFloat),
        bias && bias->defined() ? std::optional<at::Tensor>(bias->to(at::kFloat)) : std::nullopt, activation,
        std::nullopt, std::nullopt);
    if (idx_t.defined()) {
      conv_state.index_copy_(0, idx_t.to(at::kLong), state.to(conv_state.scalar_type()));
    } else {
      conv_state.copy_(state);
    }
    return y.to(x.scalar_type());
  }
  at::Tensor y = at::empty(x.sizes(), x.options());
  const auto x3 = x.dim() == 3 ? x : x.unsqueeze(2);
  const auto y3 = x.dim() == 3 ? y : y.unsqueeze(2);
  // float and bfloat16 decoding steps of a shift register with rows along
  // time: the vector kernel, channels in blocks (one thread for a few thousand).
  if (vector_step && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) && x3.stride(1) == 1 &&
      weight.stride(1) == 1) {
    if (x.scalar_type() == at::kFloat) {
      update_steps<float, float>(x3, conv_state, weight, bias, y3, idx, d.silu);
    } else {
      update_steps<c10::BFloat16, uint16_t>(x3, conv_state, weight, bias, y3, idx, d.silu);
    }
    return y;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv.causal_conv1d_update", [&] {
    using A = Acc<scalar_t>;
    const auto xa = x3.accessor<scalar_t, 3>();
    auto ya = y3.accessor<scalar_t, 3>();
    auto sa = conv_state.accessor<scalar_t, 3>();
    const auto wa = weight.accessor<scalar_t, 2>();
    const scalar_t* bp = bias && bias->defined() ? bias->data_ptr<scalar_t>() : nullptr;
    const int64_t bstride = bp ? bias->stride(0) : 0;
    at::parallel_for(0, B * C, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, T * K + S)),
                     [&](int64_t begin, int64_t end) {
      std::vector<A> seq(S + T);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / C, c = r % C, sbi = idx ? idx[b] : b;
        const A bias_c = bp ? static_cast<A>(bp[c * bstride]) : A(0);
        // seq: the S state steps in time order, then the T new ones.
        const int64_t head = seqlens ? seqlens[b] : 0;  // ring buffer: oldest step at head % S
        for (int64_t i = 0; i < S; ++i) {
          const int64_t slot = seqlens ? ((head + i) % S + S) % S : i;
          seq[i] = static_cast<A>(sa[sbi][c][slot]);
        }
        for (int64_t t = 0; t < T; ++t) seq[S + t] = static_cast<A>(xa[b][c][t]);
        for (int64_t t = 0; t < T; ++t) {
          A acc = bias_c;
          for (int64_t k = 0; k < K; ++k) acc += static_cast<A>(wa[c][k]) * seq[S + t - (K - 1) + k];
          ya[b][c][t] = static_cast<scalar_t>(d.silu ? silu_scalar(acc) : acc);
        }
        // Shift register: the last S steps; ring buffer: new step t at head + t.
        if (seqlens) {
          for (int64_t t = std::max<int64_t>(0, T - S); t < T; ++t) {
            sa[sbi][c][((head + t) % S + S) % S] = static_cast<scalar_t>(seq[S + t]);
          }
        } else {
          for (int64_t i = 0; i < S; ++i) sa[sbi][c][i] = static_cast<scalar_t>(seq[T + i]);
        }
      }
    });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("causal_conv1d", &causal_conv1d_cpu);
  m.impl("causal_conv1d_backward", &causal_conv1d_backward_cpu);
  m.impl("causal_conv1d_update", &causal_conv1d_update_cpu);
}

}  // namespace fastconv
