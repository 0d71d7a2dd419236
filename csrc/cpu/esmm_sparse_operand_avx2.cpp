// The weight gradient with a sparse operand for AVX2 + FMA (see target_begin.h).
#define SK_TARGET_AVX2 1
#include "target_begin.h"
#define SK_KERNELS_NS avx2
#include "esmm_sparse_operand_kernels.h"
#include "target_end.h"
