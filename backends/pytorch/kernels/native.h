/* What the compiled kernels (`transforms.c`, `activations.c`, `first_layer.c`) share. */
#ifndef STYLETRANSFER_NATIVE_H
#define STYLETRANSFER_NATIVE_H

/* Each exported function is compiled for AVX-512, for AVX2 and FMA and for plain x86-64; the
 * loader picks the clone the CPU runs best. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif
/* The helpers are compiled into each clone of their caller, for its instruction set. */
#define INLINE inline __attribute__((always_inline))

#endif
