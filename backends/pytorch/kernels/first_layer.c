/*
 * The input gradient of the trunk's first convolution (conv1_1: the three colour channels in,
 * 3x3, stride 1, padding 1): the gradient of the loss with respect to the image itself.
 *
 * oneDNN computes it as a convolution with three output channels, a shape its kernels are not
 * made for: on the 2-core AVX2 EPYC, with 64 channels, 5.2 ms at 256 x 256 timed alone, where
 * this kernel takes 2.3; inside whole iterations (the gradient cold) 6.7 -> 3.9 ms at 256 px and
 * 23.6 -> 17.0 at 512 (2026-12-03, random weights). Here each pixel gathers its 3x3
 * neighbourhood of the output gradient, one row of channels at a time, and reduces it against
 * the three input channels' kernels, in 16 lanes of partial sums that the compiler keeps in
 * vector registers. Every pixel is one thread's and is summed in a fixed order, so the result
 * does not depend on the thread count.
 *
 * Layouts (float32, C contiguous):
 *   grad     (N, H, W, K)    the output gradient, channels-last; K a multiple of LANES
 *   kernels  (3, 3, 3, K)    kernels[i][j][c][k] = weight[k][c][i][j]
 *   result   (N, H, W, 3)    the input gradient, channels-last
 */

#include <stdint.h>

#include "native.h"

#define LANES 16
#define COLOURS 3

CLONES void first_layer_input_grad(const float *grad, const float *kernels, int64_t n, int64_t height,
                                   int64_t width, int64_t out_channels, float *result, int threads) {
    const int64_t k_count = out_channels;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < n * height; r++) {
        const int64_t image = r / height, y = r % height;
        for (int64_t x = 0; x < width; x++) {
            float red[LANES] = {0}, green[LANES] = {0}, blue[LANES] = {0};
            /* Output (y + 1 - i, x + 1 - j) read input (y, x) through kernel tap (i, j). */
            for (int i = 0; i < 3; i++) {
                const int64_t row = y + 1 - i;
                if (row < 0 || row >= height) {
                    continue;
                }
                for (int j = 0; j < 3; j++) {
                    const int64_t column = x + 1 - j;
                    if (column < 0 || column >= width) {
                        continue;
                    }
                    const float *restrict g = grad + ((image * height + row) * width + column) * k_count;
                    const float *restrict w = kernels + (3 * i + j) * COLOURS * k_count;
                    for (int64_t k0 = 0; k0 < k_count; k0 += LANES) {
                        for (int l = 0; l < LANES; l++) {
                            const float v = g[k0 + l];
                            red[l] += v * w[k0 + l];
                            green[l] += v * w[k_count + k0 + l];
                            blue[l] += v * w[2 * k_count + k0 + l];
                        }
                    }
                }
            }
            float sums[COLOURS] = {0.0f, 0.0f, 0.0f};
            for (int l = 0; l < LANES; l++) {
                sums[0] += red[l];
                sums[1] += green[l];
                sums[2] += blue[l];
            }
            float *out = result + ((image * height + y) * width + x) * COLOURS;
            for (int c = 0; c < COLOURS; c++) {
                out[c] = sums[c];
            }
        }
    }
}
