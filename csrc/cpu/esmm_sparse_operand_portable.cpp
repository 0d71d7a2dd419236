// The weight gradient with a sparse operand for any CPU: built for the compiler's baseline instruction set.
#define SK_KERNELS_NS portable
#include "esmm_sparse_operand_kernels.h"
