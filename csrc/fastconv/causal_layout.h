// The memory layouts the causal kernels read and write, shared by the CPU and
// CUDA backends (the Meta kernel states the same rule on symbolic sizes).
//
// x (B, C, L) is read in place when contiguous along time, or channels-last
// (x.stride(1) == 1, a transposed (B, L, C)); any other layout is copied to
// contiguous first. Outputs shaped like x (y, grad_x) take its layout.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastconv {

// Whether x is read as channels-last: channel stride 1 where time's is not.
bool causal_channels_last(const at::Tensor& x);

// x itself when its layout is one of the two read in place, else a contiguous copy.
at::Tensor causal_readable(const at::Tensor& x);

// A new (B, C, L) tensor of `sizes` in `like`'s layout.
at::Tensor causal_empty_like(const at::Tensor& like, at::IntArrayRef sizes, const at::TensorOptions& options);

// t laid out as causal_empty_like(like, ...) lays out (a copy when it is not).
at::Tensor causal_in_layout(const at::Tensor& t, const at::Tensor& like);

// Adds the gradient of the final state, xs[L - H + i] for i < H, to grad_x
// (positions in x) and grad_state (positions before it).
void causal_add_final_state_grad(at::Tensor& grad_x, at::Tensor& grad_state, const at::Tensor& grad_final_state,
                                 int64_t length, int64_t history);

}  // namespace fastconv
