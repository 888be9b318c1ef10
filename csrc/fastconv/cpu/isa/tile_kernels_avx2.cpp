// AVX2 + FMA build of the micro-kernels (x86-64 only).
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma,f16c")
#define FASTCONV_ISA avx2
#define FASTCONV_ISA_NAME "avx2"
#define FASTCONV_VEC_BYTES 32
#define FASTCONV_HAS_F16C 1
#define FASTCONV_HAS_AVX512_BF16 0
#define FASTCONV_VEC_REGS 16
#include "fastconv/cpu/kernels/table_impl.h"
#endif
