// Visual chunks as one sparse span of embedding rows (docs/architecture.md#one-request-end-to-end):
// everything from the first image chunk to the last, the text between them
// included (<|vision_end|><|vision_start|>, frame headers), with one segment
// per image that starts with the text before it, so a dropped frame drops its
// delimiters with it. Kept tokens keep their positions.
#pragma once

#include "context.h"
#include "vision.h"

#include <cstdint>
#include <vector>

namespace hts {

class Model;

struct VisualSpan {
    std::vector<float> rows;        // F32 [n_embd, n]: visual tokens and the text's token embeddings
    TokenPositions positions;       // absolute; 3 rows t/h/w on M-RoPE models, else 1
    std::vector<int32_t> segments;  // span-relative segment starts, one per image
    std::vector<int32_t> blocks;    // per row: its bidirectional image chunk (Context::eval_embd), or -1
};

// The span of `chunks` (from an image chunk to an image chunk) when it starts
// at rope position pos_0. An image chunk starts n_pos after the one before
// (0: the same block, as a Qwen-VL video's pairs); text after one resumes there.
VisualSpan visual_span(const Model & model, const std::vector<VisionChunk> & chunks, int pos_0);

}  // namespace hts
