// The weight gradient with a sparse operand for AVX-512F (with AVX2 + FMA; see target_begin.h).
#define SK_TARGET_AVX512 1
#include "target_begin.h"
#define SK_KERNELS_NS avx512
#include "esmm_sparse_operand_kernels.h"
#include "target_end.h"
