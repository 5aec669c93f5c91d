/*
 * The trunk's ReLU and 2x2 max-pooling for the backward pass, each one pass over memory.
 *
 * What a ReLU's or a pool's backward needs is one byte per value: whether the ReLU let the value
 * through, and which of its window's four values a pool took. PyTorch keeps a bool mask through
 * a comparison and a 64-bit index per pooled value, and its backward makes the gradient in two
 * or three passes (a float copy of the mask, a clone, a product; zeros, then a scatter). These
 * functions read and write each value once.
 *
 * A ReLU right before a pool runs after it, on the pooled values: max and ReLU commute exactly,
 * gradients included, and the ReLU then touches a quarter of the values. The pool's byte then
 * says "none" where the ReLU stopped the gradient.
 *
 * Semantics are PyTorch's to the bit: the ReLU keeps NaN and passes a gradient wherever its
 * input is not <= 0 (NaN included), as `threshold_backward` does; a pool takes a window's first
 * largest value in row-major order, and a NaN over anything. Layouts: float32, dense; the pool
 * reads and writes channels-last (N, H, W, C), its index (N, H/2, W/2, C); the ReLU any layout,
 * its mask the same.
 */

#include <math.h>
#include <stdint.h>

#include "native.h"

/* A pool's index byte for "no gradient" (the fused ReLU stopped it). */
#define NONE 4

/* x = relu(x) in place; mask = where the gradient passes. */
CLONES void relu_forward(float *x, uint8_t *mask, int64_t count, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < count; i++) {
        const float v = x[i];
        mask[i] = !(v <= 0.0f);
        x[i] = v < 0.0f ? 0.0f : v;
    }
}

/* out = grad where mask, else 0. */
CLONES void relu_backward(const float *grad, const uint8_t *mask, float *out, int64_t count, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < count; i++) {
        out[i] = mask[i] ? grad[i] : 0.0f;
    }
}

/*
 * 2x2 max-pooling, stride 2, of image (n, height, width, channels) into out (n, height / 2,
 * width / 2, channels), a last odd row or column dropped; index gets the window position taken
 * (0 to 3, row-major). With `relu`, the pooled value goes through a ReLU too, and the index is
 * NONE where that ReLU stops the gradient.
 */
CLONES void max_pool_forward(const float *image, int64_t n, int64_t height, int64_t width, int64_t channels,
                             float *out, uint8_t *index, int relu, int threads) {
    const int64_t out_height = height / 2, out_width = width / 2;
    const int64_t row = width * channels;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < n * out_height; r++) {
        const int64_t b = r / out_height, y = r % out_height;
        for (int64_t x = 0; x < out_width; x++) {
            const float *p = image + ((b * height + 2 * y) * width + 2 * x) * channels;
            const float *q[4] = {p, p + channels, p + row, p + row + channels};
            float *o = out + (r * out_width + x) * channels;
            uint8_t *k = index + (r * out_width + x) * channels;
            for (int64_t c = 0; c < channels; c++) {
                float best = q[0][c];
                uint8_t at = 0;
                for (uint8_t w = 1; w < 4; w++) {
                    const float v = q[w][c];
                    if (v > best || isnan(v)) {
                        best = v;
                        at = w;
                    }
                }
                if (relu) {
                    at = best <= 0.0f ? NONE : at;
                    best = best < 0.0f ? 0.0f : best;
                }
                o[c] = best;
                k[c] = at;
            }
        }
    }
}

/* Each value of g to the one of q0 .. q3 its index names, zero to the other three. */
static INLINE void scatter(const float *restrict g, const uint8_t *restrict index, float *restrict q0,
                           float *restrict q1, float *restrict q2, float *restrict q3, int64_t channels) {
    for (int64_t c = 0; c < channels; c++) {
        /* Compared as a float: the four selects then vectorize with the gradient's lanes. */
        const float v = g[c], at = (float)index[c];
        q0[c] = at == 0.0f ? v : 0.0f;
        q1[c] = at == 1.0f ? v : 0.0f;
        q2[c] = at == 2.0f ? v : 0.0f;
        q3[c] = at == 3.0f ? v : 0.0f;
    }
}

/*
 * The input gradient of `max_pool_forward`: each window's gradient to the position its index
 * names, zeros at the other three (and in a dropped last row or column).
 */
CLONES void max_pool_backward(const float *grad, const uint8_t *index, int64_t n, int64_t height, int64_t width,
                              int64_t channels, float *image, int threads) {
    const int64_t out_height = height / 2, out_width = width / 2;
    const int64_t row = width * channels;
    /* Row pairs, one more where the height is odd: that row gets zeros. */
    const int64_t pairs = (height + 1) / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < n * pairs; r++) {
        const int64_t b = r / pairs, y = r % pairs;
        float *top = image + (b * height + 2 * y) * row;
        if (y == out_height) {
            for (int64_t i = 0; i < row; i++) {
                top[i] = 0.0f;
            }
            continue;
        }
        float *bottom = top + row;
        for (int64_t x = 0; x < out_width; x++) {
            const int64_t at = ((b * out_height + y) * out_width + x) * channels;
            float *q = top + 2 * x * channels, *p = bottom + 2 * x * channels;
            scatter(grad + at, index + at, q, q + channels, p, p + channels, channels);
        }
        for (int64_t x = 2 * out_width; x < width; x++) {
            for (int64_t c = 0; c < channels; c++) {
                top[x * channels + c] = 0.0f;
                bottom[x * channels + c] = 0.0f;
            }
        }
    }
}
