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

/* Channels per step: a tile's 36 x 64 intermediates (9 KiB) stay in the first-level cache. */
#define STEP 64

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* out[i] = sum_r B^T[i, r] d[r] for the six rows of B^T (see winograd.py). */
static inline void input_step(const float *restrict d0, const float *restrict d1, const float *restrict d2,
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
static inline void output_step(const float *restrict m0, const float *restrict m1, const float *restrict m2,
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

/*
 * Tiles first_row .. first_row + rows - 1 (of 4-pixel tile rows) of an (n, height, width,
 * channels) image into `tiles`, (n, rows, tile_columns, 36, channels). Tile (y, x) reads image
 * rows 4 y - 1 .. 4 y + 4 and columns 4 x - 1 .. 4 x + 4; outside the image is zero.
 */
CLONES int winograd_input(const float *image, int64_t n, int64_t height, int64_t width, int64_t channels,
                          int64_t first_row, int64_t rows, int64_t tile_columns, float *tiles, int threads) {
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
        for (int i = 0; i < 6; i++) {
            const int64_t row = 4 * tile.y - 1 + i;
            for (int j = 0; j < 6; j++) {
                const int64_t column = 4 * tile.x - 1 + j;
                const int inside = row >= 0 && row < height && column >= 0 && column < width;
                src[6 * i + j] = inside ? base + (row * width + column) * channels : zeros;
            }
        }
        float *out = tiles + t * 36 * channels;
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
    free(zeros);
    return 0;
}

/*
 * The products of one band, `products` (n, rows, tile_columns, 36, channels), folded back into
 * output rows 4 first_row .. of `image`, (n, height, width, channels); positions past the
 * image's edge (where a side is not a multiple of 4, or the last band is padded) are dropped.
 */
CLONES void winograd_output(const float *products, int64_t n, int64_t rows, int64_t tile_columns,
                            int64_t channels, int64_t first_row, float *image, int64_t height, int64_t width,
                            int threads) {
    const int64_t count = n * rows * tile_columns;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < count; t++) {
        const Tile tile = tile_at(t, first_row, rows, tile_columns);
        const float *m = products + t * 36 * channels;
        float *base = image + tile.image * height * width * channels;
        float rows_done[24 * STEP];
        float spill[4 * STEP];
        for (int64_t c0 = 0; c0 < channels; c0 += STEP) {
            const int64_t k = channels - c0 < STEP ? channels - c0 : STEP;
            /* Along each column j: rows_done[a][j] = sum_r A^T[a, r] M[r][j]. */
            for (int j = 0; j < 6; j++) {
                output_step(m + j * channels + c0, m + (6 + j) * channels + c0, m + (12 + j) * channels + c0,
                            m + (18 + j) * channels + c0, m + (24 + j) * channels + c0,
                            m + (30 + j) * channels + c0, rows_done + j * STEP, rows_done + (6 + j) * STEP,
                            rows_done + (12 + j) * STEP, rows_done + (18 + j) * STEP, k);
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
