// Baseline build of the micro-kernels: the instruction set the compiler targets
// by default (SSE2 on x86-64), so it runs on every CPU.
#define FASTCONV_ISA default_isa
#define FASTCONV_ISA_NAME "default"
#define FASTCONV_VEC_BYTES 16
#define FASTCONV_HAS_AVX512_BF16 0
#define FASTCONV_VEC_REGS 16
#define FASTCONV_HAS_F16C 0
#include "fastconv/cpu/kernels/table_impl.h"
