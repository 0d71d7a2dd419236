// The CPU block-sparse kernels for any CPU: built for the compiler's baseline instruction set.
#define SK_KERNELS_NS portable
#include "bsmm_kernels.h"
