// Vision input through libmtmd's public API (docs/architecture.md#llamacpp-consumed-fork-free): images
// and video frames become visual tokens (embedding rows plus their rope
// positions) and the text libmtmd puts around them, in prompt order, for a
// Context to append. libmtmd owns the vision tower, the preprocessing, the
// frame merging and the positions; the runtime owns the text decoder.
//
//     hts::Model model("qwen2.5-vl.gguf", {});
//     hts::VisionEncoder vision(model, "mmproj.gguf", {});
//     hts::VisionInput in;
//     in.prompt = std::string("Describe ") + vision.marker() + " please.";
//     in.images = {{width, height, rgb}};
//     hts::Context s(model, {});
//     for (const auto & c : vision.encode(in)) {
//         if (c.is_text()) { s.eval(c.tokens, false); continue; }
//         const hts::TokenPositions pos = c.image.positions_at(s.next_pos());
//         s.eval_embd(c.image.embd, vision.image_token(), false, &pos);
//     }
#pragma once

#include "context.h"

#include <cstdint>
#include <string>
#include <vector>

struct mtmd_context;
struct mtmd_input_chunk;

namespace hts {

class Model;

struct VisionParams {
    int n_threads = 0;            // CPU threads of the vision tower; 0: the model's
    bool use_gpu = true;          // run the tower on the GPU when libmtmd has one
    int image_min_tokens = -1;    // dynamic-resolution towers: bounds on tokens per image;
    int image_max_tokens = -1;    // -1: the mmproj's own
    int batch_max_tokens = 1024;  // output tokens per encode batch (towers that batch)
};

// One image's (or merged frame pair's) visual tokens, as one libmtmd image chunk.
struct VisualTokens {
    std::vector<float> embd;  // F32 [n_embd, n_tokens]: the rows to evaluate
    // Rope positions relative to the chunk's first position (0): 3 rows t/h/w
    // (M-RoPE models) or 1 row 0..n_tokens-1. Add the context's next position
    // to every value (positions_at), as mtmd_helper_decode_image_chunk does.
    TokenPositions pos;
    int nx = 0, ny = 0;  // token grid (M-RoPE); n_tokens x 1 otherwise
    int n_tokens = 0;
    int n_pos = 0;        // positions the chunk takes: text after it resumes at pos_0 + n_pos
    int first_image = 0;  // index in VisionInput::images of its first (or only) image
    int n_images = 1;     // input images merged into it (2: a Qwen-VL frame pair); tiles of one image count 1
    // Its tokens see each other whatever their order (Gemma 3: libmtmd's
    // mtmd_decode_use_non_causal), as one block of Context::eval_embd.
    bool bidirectional = false;

    TokenPositions positions_at(int pos_0) const;
};

// One piece of an encoded prompt: text token ids, or visual tokens.
struct VisionChunk {
    std::vector<int32_t> tokens;  // text chunk: its token ids
    VisualTokens image;           // image chunk (when tokens is empty)
    bool is_text() const { return image.n_tokens == 0; }
};

// Progress of encoding: n_done of n_total image chunks encoded. Return false
// to stop (encode() then throws).
typedef bool (*VisionProgressCallback)(int n_done, int n_total, void * user_data);

struct VisionInput {
    std::string prompt;  // text with one marker() per image, in order
    struct Image {
        uint32_t nx = 0, ny = 0;        // width, height
        const uint8_t * rgb = nullptr;  // ny rows of nx RGB pixels, RGBRGB...
    };
    std::vector<Image> images;
    // Frames of one video: libmtmd merges consecutive frames of equal size
    // into one temporal unit on models that do (Qwen-VL: pairs).
    bool frames = false;
    bool add_special = false;  // BOS (as the vocabulary wants): the start of a conversation
    VisionProgressCallback progress = nullptr;
    void * progress_user_data = nullptr;
};

// What an mmproj's metadata says about how its tokens are laid out.
struct MmprojLayout {
    std::string projector;      // clip.projector_type: qwen2vl_merger, qwen2.5vl_merger, idefics3, ...
    int tokens_per_second = 2;  // Qwen2.5-VL time positions per second (htsparse.vision.tokens_per_second;
                                // upstream's mmproj lacks it, every released checkpoint has 2)
    int image_size = 0;         // clip.vision.image_size: the tile (idefics3)
    int patch_size = 0;         // clip.vision.patch_size
    int scale_factor = 0;       // clip.vision.projector.scale_factor (idefics3)
    // Visual tokens of one tile (idefics3): (image_size / patch_size)^2 / scale_factor^2; 0 if unknown.
    int tokens_per_tile() const;
};

class VisionEncoder {
public:
    // Loads the mmproj for `model`, whose libllama vocab_only model gives
    // libmtmd the tokenizer. Throws hts::Error: FileNotFound / InvalidFile for
    // the file, InvalidArgument when its output width is not the model's
    // n_embd (naming both), UnsupportedModel when it has no vision tower.
    VisionEncoder(const Model & model, const std::string & mmproj_path, const VisionParams & params);
    ~VisionEncoder();
    VisionEncoder(const VisionEncoder &) = delete;
    VisionEncoder & operator=(const VisionEncoder &) = delete;

    // The prompt, tokenized by libmtmd with images and frames encoded, in
    // order: text chunks (including the begin/end markers libmtmd adds around
    // images) and image chunks. Image chunks are encoded in batches where the
    // tower batches (mtmd_batch_*), else one by one; progress after each.
    std::vector<VisionChunk> encode(const VisionInput & input);

    const char * marker() const;  // the media marker a prompt holds per image
    bool uses_mrope() const;      // visual tokens carry t/h/w positions
    int n_embd() const { return n_embd_; }
    int frames_per_unit() const { return frames_per_unit_; }  // frames merged into one chunk (1 or 2)
    int32_t image_token() const { return image_token_; }      // the model's image placeholder token, or 0
    const MmprojLayout & layout() const { return layout_; }
    const Model & model() const { return model_; }
    const std::string & mmproj_path() const { return mmproj_path_; }
    const VisionParams & params() const { return params_; }

private:
    const Model & model_;
    std::string mmproj_path_;
    VisionParams params_;
    MmprojLayout layout_;
    mtmd_context * ctx_ = nullptr;
    int n_embd_ = 0;
    int frames_per_unit_ = 1;
    int32_t image_token_ = 0;

    void probe_layout();  // frames_per_unit_, image_token_; checks the vocabulary has libmtmd's image markers
    void check_text_tokens(const mtmd_input_chunk * chunk) const;
};

// Token embedding rows of `tokens` as the model's graph reads them (its
// token_embd table, dequantized): F32 [n_embd, n]. For text that travels
// with visual tokens as embedding rows (inside a sparse span).
std::vector<float> token_embeddings(const Model & model, const std::vector<int32_t> & tokens);

}  // namespace hts
