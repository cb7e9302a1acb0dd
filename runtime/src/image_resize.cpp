#include "image_resize.h"

#include "errors.h"

#include <algorithm>
#include <cmath>

namespace hts {

namespace {

constexpr double kSupport = 3.0;  // Lanczos-3

double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= M_PI;
    return std::sin(x) / x;
}

double lanczos(double x) { return std::fabs(x) < kSupport ? sinc(x) * sinc(x / kSupport) : 0.0; }

// For each output index: the first input index and the normalized weights (Pillow's precompute_coeffs).
struct Taps {
    std::vector<int> first;
    std::vector<std::vector<double>> weights;
};

Taps taps(int in_size, int out_size) {
    const double scale = double(in_size) / out_size;
    const double filterscale = std::max(scale, 1.0);
    const double support = kSupport * filterscale;
    Taps t;
    for (int i = 0; i < out_size; ++i) {
        const double center = (i + 0.5) * scale;
        const int lo = std::max(static_cast<int>(center - support + 0.5), 0);
        const int hi = std::min(static_cast<int>(center + support + 0.5), in_size);
        std::vector<double> w;
        double sum = 0;
        for (int x = lo; x < hi; ++x) {
            w.push_back(lanczos((x - center + 0.5) / filterscale));
            sum += w.back();
        }
        for (double & v : w) v = sum != 0 ? v / sum : 0;
        t.first.push_back(lo);
        t.weights.push_back(std::move(w));
    }
    return t;
}

uint8_t to_byte(double v) { return static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L)); }

// One filter pass along the rows (horizontal) or along the columns.
std::vector<uint8_t> pass(const std::vector<uint8_t> & src, int in_w, int in_h, int out_w, int out_h, bool horizontal) {
    const Taps t = horizontal ? taps(in_w, out_w) : taps(in_h, out_h);
    std::vector<uint8_t> dst(size_t(out_w) * out_h * 3);
    for (int y = 0; y < out_h; ++y) {
        for (int x = 0; x < out_w; ++x) {
            const int i = horizontal ? x : y;
            const std::vector<double> & w = t.weights[i];
            for (int c = 0; c < 3; ++c) {
                double acc = 0;
                for (size_t k = 0; k < w.size(); ++k) {
                    const int sx = horizontal ? t.first[i] + int(k) : x, sy = horizontal ? y : t.first[i] + int(k);
                    acc += w[k] * src[(size_t(sy) * in_w + sx) * 3 + c];
                }
                dst[(size_t(y) * out_w + x) * 3 + c] = to_byte(acc);
            }
        }
    }
    return dst;
}

}  // namespace

std::vector<uint8_t> resize_rgb_lanczos(const uint8_t * rgb, int width, int height, int new_width, int new_height) {
    if (width <= 0 || height <= 0 || new_width <= 0 || new_height <= 0) {
        fail(ErrorKind::InvalidArgument,
             format("cannot resize %dx%d pixels to %dx%d", width, height, new_width, new_height));
    }
    std::vector<uint8_t> img(rgb, rgb + size_t(width) * height * 3);
    if (new_width != width) img = pass(img, width, height, new_width, height, true);
    if (new_height != height) img = pass(img, new_width, height, new_width, new_height, false);
    return img;
}

}  // namespace hts
