// The top-k projection passes for any CPU: built for the compiler's baseline instruction set.
#define SK_TOPK_NS portable_topk
#include "topk_kernels.h"
