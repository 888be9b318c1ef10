// AVX-512 build of the micro-kernels (x86-64 only): 16 floats a vector, 32 registers.
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
#define FASTCONV_ISA avx512
#define FASTCONV_ISA_NAME "avx512"
#define FASTCONV_VEC_BYTES 64
#define FASTCONV_HAS_F16C 1
#define FASTCONV_HAS_AVX512_BF16 0
#define FASTCONV_VEC_REGS 32
// GCC 12's avx512fintrin.h passes an undefined vector as the (unused) merge
// source of valignd/valignq, and -Wmaybe-uninitialized reported that at every
// inlined use of a lane alignment here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "fastconv/cpu/kernels/table_impl.h"
#endif
