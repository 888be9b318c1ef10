// AVX-512 build with AVX512-BF16 (x86-64 only): the avx512 kernels, with float
// rounded to bfloat16 by one vcvtneps2bf16 per vector where the generic
// rounding takes eight instructions (a bfloat16 SiLU forward's largest cost
// after the activation itself).
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma,f16c")
#define FASTCONV_ISA avx512_bf16
#define FASTCONV_ISA_NAME "avx512_bf16"
#define FASTCONV_VEC_BYTES 64
#define FASTCONV_HAS_F16C 1
#define FASTCONV_HAS_AVX512_BF16 1
#define FASTCONV_VEC_REGS 32
// See tile_kernels_avx512.cpp.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "fastconv/cpu/kernels/table_impl.h"
#endif
