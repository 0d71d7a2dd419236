// The AbsTopK passes for any CPU: built for the compiler's baseline instruction set.
#define SK_ABS_TOPK_NS portable_abs_topk
#include "abs_topk_kernels.h"
