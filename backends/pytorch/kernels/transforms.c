/*
 * Winograd F(4x4, 3x3) tile transforms, each one pass over memory (see winograd.py).
 *
 * The products between the transforms run on oneDNN; these two functions are the additions
 * around them. Written with PyTorch's elementwise operations they take a dozen passes over a
 * band each, and at VGG19's 128-channel layers they cost four times the products. Here each
 * tile is read once, transformed in a small buffer that stays in the first-level cache, and
 * written once; the input's zero padding and the output's cropping are handled at the edges
 * instead of by copies.
 *
 * Memory layouts (all float32, C contiguous):
 *   image  (N, H, W, C)            channels-last activations, unpadded
 *   tiles  (N, rows, tw, 36, C)    one band of transformed tiles: position k = 6 i + j, then
 *                                  channel; what a channels-last (N, 36 C, rows, tw) tensor holds
 *
 * Loaded with ctypes from the extension module setuptools builds (no Python API is used). It
 * links OpenMP; loaded after torch, the dynamic linker gives it torch's own libgomp, so its
 * threads are the ones torch's operations use, and the caller passes torch's thread count.
 */

#include <stdint.h>
#include <stdlib.h>

#include "native.h"

/* Channels per step: a tile's 36 x 64 intermediates (9 KiB) stay in the first-level cache. */
#define STEP 64

/* out[i] = sum_r B^T[i, r] d[r] for the six rows of B^T (see winograd.py). */
static INLINE void input_step(const float *restrict d0, const float *restrict d1, const float *restrict d2,
                              const float *restrict d3, const float *restrict d4, const float *restrict d5,
                              float *restrict o0, float *restrict o1, float *restrict o2, float *restrict o3,
                              float *restrict o4, float *restrict o5, int64_t count) {
    for (int64_t c = 0; c < count; c++) {
        const float a = d4[c] - 4.0f * d2[c];
        const float b = d3[c] - 4.0f * d1[c];
        const float e = d4[c] - d2[c];
        const float f = d3[c] - d1[c];
        o0[c] = 4.0f * d0[c] - 5.0f * d2[c] + d4[c];
        o1[c] = a + b;
        o2[c] = a - b;
        o3[c] = e + 2.0f * f;
        o4[c] = e - 2.0f * f;
        o5[c] = 4.0f * d1[c] - 5.0f * d3[c] + d5[c];
    }
}

/* out[i] = sum_r A^T[i, r] m[r] for the four rows of A^T (see winograd.py). */
static INLINE void output_step(const float *restrict m0, const float *restrict m1, const float *restrict m2,
                               const float *restrict m3, const float *restrict m4, const float *restrict m5,
                               float *restrict o0, float *restrict o1, float *restrict o2, float *restrict o3,
                               int64_t count) {
    for (int64_t c = 0; c < count; c++) {
        const float s12 = m1[c] + m2[c], d12 = m1[c] - m2[c];
        const float s34 = m3[c] + m4[c], d34 = m3[c] - m4[c];
        o0[c] = m0[c] + s12 + s34;
        o1[c] = d12 + 2.0f * d34;
        o2[c] = s12 + 4.0f * s34;
        o3[c] = d12 + 8.0f * d34 + m5[c];
    }
}

/* Where tile t of a band lies: its image, its tile row in the image and its tile column. */
typedef struct {
    int64_t image, y, x;
} Tile;

static inline Tile tile_at(int64_t t, int64_t first_row, int64_t rows, int64_t tile_columns) {
    const Tile tile = {t / (rows * tile_columns), first_row + (t / tile_columns) % rows, t % tile_columns};
    return tile;
}

/* The `side` x `side` window of tile (y, x) from row 4 y + shift and column 4 x + shift of an
 * (height, width, channels) image, as one pointer per position: `zeros` past the edges. */
static INLINE void gather(const float *image, Tile tile, int side, int shift, int64_t height, int64_t width,
                          int64_t channels, const float *zeros, const float **window) {
    for (int i = 0; i < side; i++) {
        const int64_t row = 4 * tile.y + shift + i;
        for (int j = 0; j < side; j++) {
            const int64_t column = 4 * tile.x + shift + j;
            const int inside = row >= 0 && row < height && column >= 0 && column < width;
            window[side * i + j] = inside ? image + (row * width + column) * channels : zeros;
        }
    }
}


/*
 * The products of one band folded back into output rows 4 first_row .. of `image`, (n, height,
 * width, channels); positions past the image's edge (where a side is not a multiple of 4, or the
 * last band is padded) are dropped. Product k of tile t is at products + t * tile_stride +
 * k * position_stride: (n, rows, tile_columns, 36, channels) from oneDNN's grouped convolution
 * (strides 36 channels and channels), (36, tiles, channels) from a batched matrix product
 * (strides channels and tiles times channels).
 */
CLONES void winograd_output(const float *products, int64_t n, int64_t rows, int64_t tile_columns,
                            int64_t channels, int64_t first_row, int64_t tile_stride, int64_t position_stride,
                            float *image, int64_t height, int64_t width, int threads) {
    const int64_t count = n * rows * tile_columns;
    const int64_t ps = position_stride;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < count; t++) {
        const Tile tile = tile_at(t, first_row, rows, tile_columns);
        const float *m = products + t * tile_stride;
        float *base = image + tile.image * height * width * channels;
        float rows_done[24 * STEP];
        float spill[4 * STEP];
        for (int64_t c0 = 0; c0 < channels; c0 += STEP) {
            const int64_t k = channels - c0 < STEP ? channels - c0 : STEP;
            /* Along each column j: rows_done[a][j] = sum_r A^T[a, r] M[r][j]. */
            for (int j = 0; j < 6; j++) {
                const float *c = m + j * ps + c0;
                output_step(c, c + 6 * ps, c + 12 * ps, c + 18 * ps, c + 24 * ps, c + 30 * ps, rows_done + j * STEP,
                            rows_done + (6 + j) * STEP, rows_done + (12 + j) * STEP, rows_done + (18 + j) * STEP, k);
            }
            /* Along each output row a: Y[a][b] = sum_s A^T[b, s] rows_done[a][s]. */
            for (int a = 0; a < 4; a++) {
                const int64_t row = 4 * tile.y + a;
                float *o[4];
                for (int b = 0; b < 4; b++) {
                    const int64_t column = 4 * tile.x + b;
                    o[b] = row < height && column < width ? base + (row * width + column) * channels + c0
                                                          : spill + b * STEP;
                }
                const float *r = rows_done + 6 * a * STEP;
                output_step(r, r + STEP, r + 2 * STEP, r + 3 * STEP, r + 4 * STEP, r + 5 * STEP, o[0], o[1], o[2],
                            o[3], k);
            }
        }
    }
}

/*
 * The input gradient by the adjoint of the three steps above, so that both directions use one
 * set of transformed kernels U: the output gradient's 4x4 blocks are expanded to 6x6 tiles by A
 * (A dY A^T, `gradient_input`), multiplied by U_k transposed (by the caller), and folded by B
 * (B M B^T, `gradient_output`) into 6x6 windows of the input gradient, which overlap their
 * neighbours' by two rows and columns and are added up.
 */

/* out[r] = sum_a A^T[a, r] g[a]: the six rows of A applied to four values. */
static INLINE void gradient_input_step(const float *restrict g0, const float *restrict g1,
                                       const float *restrict g2, const float *restrict g3, float *restrict o0,
                                       float *restrict o1, float *restrict o2, float *restrict o3,
                                       float *restrict o4, float *restrict o5, int64_t count) {
    for (int64_t c = 0; c < count; c++) {
        const float s02 = g0[c] + g2[c], s13 = g1[c] + g3[c];
        const float a = g0[c] + 4.0f * g2[c], b = 2.0f * g1[c] + 8.0f * g3[c];
        o0[c] = g0[c];
        o1[c] = s02 + s13;
        o2[c] = s02 - s13;
        o3[c] = a + b;
        o4[c] = a - b;
        o5[c] = g3[c];
    }
}

/* out[r] = sum_i B^T[i, r] m[i]: the six rows of B applied to six values. */
static INLINE void gradient_output_step(const float *restrict m0, const float *restrict m1,
                                        const float *restrict m2, const float *restrict m3,
                                        const float *restrict m4, const float *restrict m5, float *restrict o0,
                                        float *restrict o1, float *restrict o2, float *restrict o3,
                                        float *restrict o4, float *restrict o5, int64_t count) {
    for (int64_t c = 0; c < count; c++) {
        const float d12 = m2[c] - m1[c], d34 = m3[c] - m4[c];
        o0[c] = 4.0f * m0[c];
        o1[c] = 4.0f * d12 - 2.0f * d34 + 4.0f * m5[c];
        o2[c] = -5.0f * m0[c] - 4.0f * (m1[c] + m2[c]) - (m3[c] + m4[c]);
        o3[c] = 2.0f * d34 - d12 - 5.0f * m5[c];
        o4[c] = m0[c] + m1[c] + m2[c] + m3[c] + m4[c];
        o5[c] = m5[c];
    }
}


/* Tile V = B^T d B from its 6x6 window d, `channels` values a position. */
static INLINE void forward_tile(const float *const *src, float *out, int64_t channels) {
    float rows_done[36 * STEP];
    for (int64_t c0 = 0; c0 < channels; c0 += STEP) {
        const int64_t k = channels - c0 < STEP ? channels - c0 : STEP;
        /* Along each column j: rows_done[i][j] = sum_r B^T[i, r] d[r][j]. */
        for (int j = 0; j < 6; j++) {
            input_step(src[j] + c0, src[6 + j] + c0, src[12 + j] + c0, src[18 + j] + c0, src[24 + j] + c0,
                       src[30 + j] + c0, rows_done + (0 + j) * STEP, rows_done + (6 + j) * STEP,
                       rows_done + (12 + j) * STEP, rows_done + (18 + j) * STEP, rows_done + (24 + j) * STEP,
                       rows_done + (30 + j) * STEP, k);
        }
        /* Along each row i: V[i][j] = sum_s B^T[j, s] rows_done[i][s]. */
        for (int i = 0; i < 6; i++) {
            const float *r = rows_done + 6 * i * STEP;
            float *o = out + 6 * i * channels + c0;
            input_step(r, r + STEP, r + 2 * STEP, r + 3 * STEP, r + 4 * STEP, r + 5 * STEP, o, o + channels,
                       o + 2 * channels, o + 3 * channels, o + 4 * channels, o + 5 * channels, k);
        }
    }
}

/* Tile A g A^T from an output gradient's 4x4 block g (the adjoint of `output_step`'s fold). */
static INLINE void gradient_tile(const float *const *src, float *out, int64_t channels) {
    float rows_done[24 * STEP];
    for (int64_t c0 = 0; c0 < channels; c0 += STEP) {
        const int64_t k = channels - c0 < STEP ? channels - c0 : STEP;
        /* Along each of the block's columns b: rows_done[r][b] = sum_a A^T[a, r] g[a][b]. */
        for (int b = 0; b < 4; b++) {
            gradient_input_step(src[b] + c0, src[4 + b] + c0, src[8 + b] + c0, src[12 + b] + c0,
                                rows_done + b * STEP, rows_done + (4 + b) * STEP, rows_done + (8 + b) * STEP,
                                rows_done + (12 + b) * STEP, rows_done + (16 + b) * STEP,
                                rows_done + (20 + b) * STEP, k);
        }
        /* Along each row r: G[r][s] = sum_b A^T[b, s] rows_done[r][b]. */
        for (int r = 0; r < 6; r++) {
            const float *q = rows_done + 4 * r * STEP;
            float *o = out + 6 * r * channels + c0;
            gradient_input_step(q, q + STEP, q + 2 * STEP, q + 3 * STEP, o, o + channels, o + 2 * channels,
                                o + 3 * channels, o + 4 * channels, o + 5 * channels, k);
        }
    }
}

/*
 * Tiles first_row .. first_row + rows - 1 (of 4-pixel tile rows) of an (n, height, width,
 * channels) image into `tiles`, (n, rows, tile_columns, 36, channels), zero past the image's
 * edges. For the forward (`gradient` 0), tile (y, x) is B^T d B of the 6x6 window d at rows
 * 4 y - 1 .. 4 y + 4 and columns 4 x - 1 .. 4 x + 4. For the input gradient's adjoint
 * (`gradient` 1, the image being an output gradient), it is A g A^T of the 4x4 block g at rows
 * 4 y .. 4 y + 3 and columns 4 x .. 4 x + 3. Returns -1 where there was no memory for a row of
 * zeros, else 0.
 */
CLONES int winograd_input(const float *image, int64_t n, int64_t height, int64_t width, int64_t channels,
                          int64_t first_row, int64_t rows, int64_t tile_columns, float *tiles, int gradient,
                          int threads) {
    float *zeros = calloc((size_t)channels, sizeof(float));
    if (zeros == NULL) {
        return -1;
    }
    const int64_t count = n * rows * tile_columns;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < count; t++) {
        const Tile tile = tile_at(t, first_row, rows, tile_columns);
        const float *base = image + tile.image * height * width * channels;
        const float *src[36];
        if (gradient) {
            gather(base, tile, 4, 0, height, width, channels, zeros, src);
            gradient_tile(src, tiles + t * 36 * channels, channels);
        } else {
            gather(base, tile, 6, -1, height, width, channels, zeros, src);
            forward_tile(src, tiles + t * 36 * channels, channels);
        }
    }
    free(zeros);
    return 0;
}

/*
 * A band's products (strides as for `winograd_output`) folded by B and added into the input
 * gradient `image` (n, height, width, channels), which the caller zeroes before the first band:
 * tile (y, x) adds to rows 4 y - 1 .. 4 y + 4, columns 4 x - 1 .. 4 x + 4, inside the image.
 * Neighbouring tiles' windows overlap, so the tiles are added in four passes by the parity of
 * their row and column: within a pass no two windows meet.
 */
CLONES void winograd_gradient_output(const float *products, int64_t n, int64_t rows, int64_t tile_columns,
                                     int64_t channels, int64_t first_row, int64_t tile_stride,
                                     int64_t position_stride, float *image, int64_t height, int64_t width,
                                     int threads) {
    const int64_t count = n * rows * tile_columns;
    const int64_t ps = position_stride;
#pragma omp parallel num_threads(threads)
    for (int parity = 0; parity < 4; parity++) {
#pragma omp for schedule(static)
        for (int64_t t = 0; t < count; t++) {
            const Tile tile = tile_at(t, first_row, rows, tile_columns);
            if ((tile.y & 1) != (parity >> 1) || (tile.x & 1) != (parity & 1)) {
                continue;
            }
            const float *m = products + t * tile_stride;
            float *base = image + tile.image * height * width * channels;
            float rows_done[36 * STEP];
            float folded[6 * STEP];
            for (int64_t c0 = 0; c0 < channels; c0 += STEP) {
                const int64_t k = channels - c0 < STEP ? channels - c0 : STEP;
                /* Along each column j: rows_done[r][j] = sum_i B^T[i, r] M[i][j]. */
                for (int j = 0; j < 6; j++) {
                    const float *c = m + j * ps + c0;
                    gradient_output_step(c, c + 6 * ps, c + 12 * ps, c + 18 * ps, c + 24 * ps, c + 30 * ps,
                                         rows_done + j * STEP, rows_done + (6 + j) * STEP,
                                         rows_done + (12 + j) * STEP, rows_done + (18 + j) * STEP,
                                         rows_done + (24 + j) * STEP, rows_done + (30 + j) * STEP, k);
                }
                /* Along each row r, then added into the window's row. */
                for (int r = 0; r < 6; r++) {
                    const int64_t row = 4 * tile.y - 1 + r;
                    if (row < 0 || row >= height) {
                        continue;
                    }
                    const float *q = rows_done + 6 * r * STEP;
                    gradient_output_step(q, q + STEP, q + 2 * STEP, q + 3 * STEP, q + 4 * STEP, q + 5 * STEP,
                                         folded, folded + STEP, folded + 2 * STEP, folded + 3 * STEP,
                                         folded + 4 * STEP, folded + 5 * STEP, k);
                    for (int s = 0; s < 6; s++) {
                        const int64_t column = 4 * tile.x - 1 + s;
                        if (column < 0 || column >= width) {
                            continue;
                        }
                        float *restrict o = base + (row * width + column) * channels + c0;
                        const float *restrict f = folded + s * STEP;
                        for (int64_t c = 0; c < k; c++) {
                            o[c] += f[c];
                        }
                    }
                }
            }
        }
    }
}
