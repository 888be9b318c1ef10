// The kernel table of tile_kernels.h for one instruction set: each isa/*.cpp
// includes this file after choosing the instruction set and defining the
// macros listed in simd.h; every micro-kernel family is one header here.
#pragma once

#include "fastconv/cpu/kernels/simd.h"
#include "fastconv/cpu/kernels/forward_tile.h"
#include "fastconv/cpu/kernels/weight_tile.h"
#include "fastconv/cpu/kernels/convolve_rows.h"
#include "fastconv/cpu/kernels/mix_tile.h"
#include "fastconv/cpu/kernels/convert_rows.h"
#include "fastconv/cpu/kernels/causal.h"
#include "fastconv/cpu/kernels/depthwise.h"

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
      &FASTCONV_ISA::convolve_rows<float>,
      &FASTCONV_ISA::convolve_rows<double>,
      &FASTCONV_ISA::mix_tile<float>,
      &FASTCONV_ISA::mix_tile<double>,
      &FASTCONV_ISA::widen_bf16,
      &FASTCONV_ISA::narrow_bf16,
#if FASTCONV_HAS_F16C
      &FASTCONV_ISA::widen_f16,
      &FASTCONV_ISA::narrow_f16,
#else
      nullptr,
      nullptr,
#endif
      &FASTCONV_ISA::causal_time<float>,
      &FASTCONV_ISA::causal_time<double>,
      &FASTCONV_ISA::causal_channel<float>,
      &FASTCONV_ISA::causal_channel<double>,
      &FASTCONV_ISA::causal_time_weight<float>,
      &FASTCONV_ISA::causal_time_weight<double>,
      &FASTCONV_ISA::causal_channel_weight<float>,
      &FASTCONV_ISA::causal_channel_weight<double>,
      &FASTCONV_ISA::causal_time_silu_grad<float>,
      &FASTCONV_ISA::causal_time_silu_grad<double>,
      &FASTCONV_ISA::causal_channel_silu_grad<float>,
      &FASTCONV_ISA::causal_channel_silu_grad<double>,
      &FASTCONV_ISA::silu_grad<float>,
      &FASTCONV_ISA::silu_grad<double>,
      &FASTCONV_ISA::causal_update<float>,
      &FASTCONV_ISA::causal_update<uint16_t>,
      &FASTCONV_ISA::depthwise_pixels<float, float>,
      &FASTCONV_ISA::depthwise_pixels<double, double>,
      &FASTCONV_ISA::depthwise_pixels<uint16_t, float>,
      &FASTCONV_ISA::depthwise_weight<float, float>,
      &FASTCONV_ISA::depthwise_weight<double, double>,
      &FASTCONV_ISA::depthwise_weight<uint16_t, float>,
  };
  return table;
}

}  // namespace fastconv::cpu
