// Resizing RGB frames with a Lanczos-3 filter, as Pillow's Image.resize(...,
// LANCZOS) does (separable, horizontal pass first, support widened when
// shrinking). For video frames an app hands to the C API at their own size:
// SmolVLM2 wants each frame squared to its tile the way transformers does it.
#pragma once

#include <cstdint>
#include <vector>

namespace hts {

// rgb: height rows of width RGB pixels. Returns new_height rows of new_width pixels.
std::vector<uint8_t> resize_rgb_lanczos(const uint8_t * rgb, int width, int height, int new_width, int new_height);

}  // namespace hts
