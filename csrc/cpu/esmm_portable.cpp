// The CPU element-sparse kernels for any CPU: built for the compiler's baseline instruction set.
#define SK_KERNELS_NS portable
#include "esmm_kernels.h"
