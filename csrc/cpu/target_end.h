// Closes a per-instruction-set unit opened by target_begin.h.
#if defined(__clang__) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(SK_TARGET_AVX512) || defined(SK_TARGET_AVX2))
#pragma clang attribute pop
#endif
