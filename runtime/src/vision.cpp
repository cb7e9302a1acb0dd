#include "vision.h"

#include "errors.h"
#include "gguf_file.h"
#include "model.h"
#include "mtmd.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>

namespace hts {

// --- libmtmd's log ------------------------------------------------------------
// libmtmd reports why a call failed only in its log; the errors logged on this
// thread during a call are kept and put into the exception's message.
static thread_local std::string t_mtmd_errors;

static void mtmd_log(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) t_mtmd_errors += text;
    if (verbose_logging()) std::fputs(text, stderr);
}

static void route_mtmd_log_once() {
    static std::once_flag once;
    std::call_once(once, [] { mtmd_log_set(mtmd_log, nullptr); });
}

// " (libmtmd: <what it logged>)", or "" when it logged no error.
static std::string take_mtmd_errors() {
    std::string s;
    s.swap(t_mtmd_errors);
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    for (char & c : s)
        if (c == '\n') c = ' ';
    return s.empty() ? "" : " (libmtmd: " + s + ")";
}

namespace {

struct ChunksDeleter {
    void operator()(mtmd_input_chunks * c) const { mtmd_input_chunks_free(c); }
};
struct BitmapDeleter {
    void operator()(mtmd_bitmap * b) const { mtmd_bitmap_free(b); }
};
struct BatchDeleter {
    void operator()(mtmd_batch * b) const { mtmd_batch_free(b); }
};
using ChunksPtr = std::unique_ptr<mtmd_input_chunks, ChunksDeleter>;
using BitmapPtr = std::unique_ptr<mtmd_bitmap, BitmapDeleter>;
using BatchPtr = std::unique_ptr<mtmd_batch, BatchDeleter>;

// The width of the embeddings an mmproj's projector writes. Upstream's
// converter stores it as clip.vision.projection_dim (the text model's width);
// older files without it have it as the last projection matrix's rows.
int mmproj_output_width(const GgufFile & f) {
    const std::string arch = f.get_string("general.architecture", "");
    if (arch != "clip") {
        fail(ErrorKind::InvalidFile, format("'%s' is not an mmproj file (general.architecture is '%s', not 'clip')",
                                            f.path().c_str(), arch.c_str()));
    }
    // Qwen3-VL's mmproj hands each visual token one more row per DeepStack
    // layer of its tower (clip.cpp: n_mmproj_embd * (1 + n_deepstack_layers)).
    int n_deepstack = 0;
    const int64_t n_blocks = f.get_int("clip.vision.block_count", 0);
    for (int64_t il = 0; il < n_blocks; ++il) {
        if (f.find_tensor(format("v.deepstack.%d.fc2.weight", int(il)))) ++n_deepstack;
    }
    const int64_t dim = f.get_int("clip.vision.projection_dim", 0);
    if (dim > 0) return static_cast<int>(dim) * (1 + n_deepstack);
    if (const ggml_tensor * t = f.find_tensor("mm.2.weight")) return static_cast<int>(t->ne[1]) * (1 + n_deepstack);
    if (!f.has_key("clip.vision.image_size")) {
        fail(ErrorKind::UnsupportedModel, format("mmproj '%s' has no vision encoder", f.path().c_str()));
    }
    fail(ErrorKind::InvalidFile, format("mmproj '%s' does not say the width of its output embeddings "
                                        "(clip.vision.projection_dim)",
                                        f.path().c_str()));
}

// The text architecture each projector we know was trained with. An mmproj
// of another family may have the model's width (and the vocabulary may hold
// the tokens libmtmd puts around its images), so libmtmd would encode with it
// and the model would read embeddings it never learned: refused by name.
struct ProjectorFamily {
    const char * projector;  // clip.projector_type
    const char * family;     // the models whose tower it is
    const char * arch;       // their text GGUF's general.architecture
};
constexpr ProjectorFamily kProjectorFamilies[] = {
    {"qwen2vl_merger", "Qwen2-VL", "qwen2vl"}, {"qwen2.5vl_merger", "Qwen2.5-VL", "qwen2vl"},
    {"qwen3vl_merger", "Qwen3-VL", "qwen3vl"}, {"idefics3", "SmolVLM2 / Idefics3", "llama"},
    {"gemma3", "Gemma 3", "gemma3"},
};

void check_family(const std::string & mmproj_path, const std::string & projector, const Model & model) {
    const std::string & arch = model.hparams().arch;
    for (const ProjectorFamily & f : kProjectorFamilies) {
        if (projector != f.projector || arch == f.arch) continue;
        fail(ErrorKind::InvalidArgument,
             format("mmproj '%s' is a %s vision tower (clip.projector_type %s), made for a %s text model; the model "
                    "'%s' is %s (use the mmproj made with this model)",
                    mmproj_path.c_str(), f.family, f.projector, f.arch, model.file().path().c_str(), arch.c_str()));
    }
}

}  // namespace

// --- VisualTokens --------------------------------------------------------------

TokenPositions VisualTokens::positions_at(int pos_0) const {
    TokenPositions out = pos;
    for (int32_t & v : out.values) v += pos_0;
    return out;
}

int MmprojLayout::tokens_per_tile() const {
    if (image_size <= 0 || patch_size <= 0 || scale_factor <= 0) return 0;
    const int side = image_size / patch_size;
    return side * side / (scale_factor * scale_factor);
}

// --- VisionEncoder ---------------------------------------------------------------

VisionEncoder::VisionEncoder(const Model & model, const std::string & mmproj_path, const VisionParams & params)
    : model_(model), mmproj_path_(mmproj_path), params_(params), n_embd_(model.hparams().n_embd_inp()) {
    route_mtmd_log_once();
    {
        GgufFile file(mmproj_path);  // FileNotFound / InvalidFile before libmtmd sees it
        layout_.projector = file.get_string("clip.projector_type", "");
        layout_.tokens_per_second = static_cast<int>(file.get_int("htsparse.vision.tokens_per_second", 2));
        layout_.image_size = static_cast<int>(file.get_int("clip.vision.image_size", 0));
        layout_.patch_size = static_cast<int>(file.get_int("clip.vision.patch_size", 0));
        // clip.cpp pools Gemma 3's patch grid 4x4 unless the file says otherwise (converters write it only then).
        const int64_t default_scale = layout_.projector == "gemma3" ? 4 : 0;
        layout_.scale_factor = static_cast<int>(file.get_int("clip.vision.projector.scale_factor", default_scale));
        const int width = mmproj_output_width(file);  // first: is it an mmproj at all
        check_family(mmproj_path, layout_.projector, model);
        if (width != n_embd_) {
            fail(ErrorKind::InvalidArgument,
                 format("mmproj '%s' does not match the model '%s': its embeddings are %d wide, the model's "
                        "n_embd is %d%s (use the mmproj made with this model)",
                        mmproj_path.c_str(), model.file().path().c_str(), width, model.hparams().n_embd,
                        model.hparams().n_deepstack > 0
                            ? format(" and it takes %d DeepStack rows beside it (%d in all)",
                                     model.hparams().n_deepstack, n_embd_)
                                  .c_str()
                            : ""));
        }
    }
    mtmd_context_params p = mtmd_context_params_default();
    p.use_gpu = params.use_gpu && model.backends().gpu() != nullptr;
    p.device = p.use_gpu ? model.backends().gpu_device() : nullptr;
    p.n_threads = params.n_threads > 0 ? params.n_threads : model.backends().n_threads();
    p.print_timings = false;
    p.warmup = false;  // buffers are sized by the first real encode instead
    p.image_min_tokens = params.image_min_tokens;
    p.image_max_tokens = params.image_max_tokens;
    p.batch_max_tokens = params.batch_max_tokens;
    t_mtmd_errors.clear();
    ctx_ = mtmd_init_from_file(mmproj_path.c_str(), model.vocab().raw_model(), p);
    if (!ctx_) {
        fail(ErrorKind::InvalidFile,
             format("libmtmd could not load mmproj '%s'%s", mmproj_path.c_str(), take_mtmd_errors().c_str()));
    }
    if (!mtmd_support_vision(ctx_)) {
        mtmd_free(ctx_);
        fail(ErrorKind::UnsupportedModel, format("mmproj '%s' has no vision encoder", mmproj_path.c_str()));
    }
    try {
        probe_layout();
    } catch (...) {
        mtmd_free(ctx_);
        throw;
    }
}

void VisionEncoder::probe_layout() {
    // libmtmd picks the positions by the text model's rope type, the runtime
    // by its architecture; both come from general.architecture, so they agree
    // unless one of them does not know it.
    if (uses_mrope() != (model_.hparams().n_pos_per_token > 1)) {
        fail(ErrorKind::UnsupportedModel,
             format("libmtmd and the runtime disagree on M-RoPE for '%s' (architecture %s)",
                    model_.file().path().c_str(), model_.hparams().arch.c_str()));
    }
    // How many frames make one temporal unit: tokenize two mergeable
    // placeholder frames (no pixels, nothing encoded) and count the chunks.
    {
        BitmapPtr a(mtmd_bitmap_init(64, 64, nullptr)), b(mtmd_bitmap_init(64, 64, nullptr));
        mtmd_bitmap_set_mergeable(a.get(), true);
        mtmd_bitmap_set_mergeable(b.get(), true);
        const std::string prompt = std::string(marker()) + marker();
        mtmd_input_text text{prompt.c_str(), prompt.size(), false, true};
        const mtmd_bitmap * bitmaps[2] = {a.get(), b.get()};
        ChunksPtr chunks(mtmd_input_chunks_init());
        int n_image_chunks = 0;
        if (mtmd_tokenize(ctx_, chunks.get(), &text, bitmaps, 2) == 0) {
            for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); ++i) {
                const mtmd_input_chunk * c = mtmd_input_chunks_get(chunks.get(), i);
                if (mtmd_input_chunk_get_type(c) == MTMD_INPUT_CHUNK_TYPE_IMAGE) {
                    ++n_image_chunks;
                } else {
                    check_text_tokens(c);
                }
            }
        }
        take_mtmd_errors();
        frames_per_unit_ = n_image_chunks == 1 ? 2 : 1;
    }
    for (const char * name : {"<|image_pad|>", "<image>", "<|image|>", "<image_soft_token>"}) {
        const std::vector<int32_t> ids = model_.vocab().tokenize(name, false, true);
        if (ids.size() == 1) {
            image_token_ = ids[0];
            break;
        }
    }
}

VisionEncoder::~VisionEncoder() {
    if (ctx_) mtmd_free(ctx_);
}

// libmtmd looks the tokens it puts around images (<|vision_start|>,
// <fake_token_around_image>, ...) up in the model's vocabulary and writes -1
// for those it lacks: the mmproj was made for another model family.
void VisionEncoder::check_text_tokens(const mtmd_input_chunk * chunk) const {
    size_t n = 0;
    const llama_token * ids = mtmd_input_chunk_get_tokens_text(chunk, &n);
    const int n_vocab = model_.hparams().n_vocab;
    for (size_t i = 0; i < n; ++i) {
        if (ids[i] < 0 || ids[i] >= n_vocab) {
            fail(ErrorKind::InvalidArgument,
                 format("mmproj '%s' does not match the model '%s': the tokens it puts around images are not in "
                        "the model's vocabulary (libmtmd found no token for one of them)",
                        mmproj_path_.c_str(), model_.file().path().c_str()));
        }
    }
}

const char * VisionEncoder::marker() const { return mtmd_get_marker(ctx_); }

bool VisionEncoder::uses_mrope() const { return mtmd_decode_use_mrope(ctx_); }

std::vector<VisionChunk> VisionEncoder::encode(const VisionInput & input) {
    size_t n_markers = 0;
    const std::string mark = marker();
    for (size_t at = input.prompt.find(mark); at != std::string::npos; at = input.prompt.find(mark, at + mark.size())) {
        ++n_markers;
    }
    if (n_markers != input.images.size()) {
        fail(ErrorKind::InvalidArgument, format("the prompt holds %zu image markers '%s' for %zu images: one per image",
                                                n_markers, mark.c_str(), input.images.size()));
    }
    // Bitmaps, ids "0", "1"... so each chunk tells which input image it starts with.
    std::vector<BitmapPtr> bitmaps;
    std::vector<const mtmd_bitmap *> raw;
    for (size_t i = 0; i < input.images.size(); ++i) {
        const VisionInput::Image & im = input.images[i];
        if (im.nx == 0 || im.ny == 0 || !im.rgb) {
            fail(ErrorKind::InvalidArgument, format("image %zu is empty (%ux%u pixels)", i, im.nx, im.ny));
        }
        bitmaps.emplace_back(mtmd_bitmap_init(im.nx, im.ny, im.rgb));
        mtmd_bitmap_set_id(bitmaps.back().get(), std::to_string(i).c_str());
        mtmd_bitmap_set_mergeable(bitmaps.back().get(), input.frames);
        raw.push_back(bitmaps.back().get());
    }
    mtmd_input_text text{input.prompt.c_str(), input.prompt.size(), input.add_special, true};
    ChunksPtr chunks(mtmd_input_chunks_init());
    t_mtmd_errors.clear();
    const int32_t rc = mtmd_tokenize(ctx_, chunks.get(), &text, raw.data(), raw.size());
    if (rc != 0) fail(ErrorKind::InvalidArgument, "libmtmd could not preprocess the images" + take_mtmd_errors());
    bitmaps.clear();  // the chunks hold their own preprocessed copies

    const size_t n_chunks = mtmd_input_chunks_size(chunks.get());
    std::vector<VisionChunk> out(n_chunks);
    std::vector<size_t> image_idx;  // chunk indices of the image chunks
    for (size_t i = 0; i < n_chunks; ++i) {
        const mtmd_input_chunk * c = mtmd_input_chunks_get(chunks.get(), i);
        const mtmd_input_chunk_type type = mtmd_input_chunk_get_type(c);
        if (type == MTMD_INPUT_CHUNK_TYPE_TEXT) {
            check_text_tokens(c);
            size_t n = 0;
            const llama_token * ids = mtmd_input_chunk_get_tokens_text(c, &n);
            out[i].tokens.assign(ids, ids + n);
        } else if (type == MTMD_INPUT_CHUNK_TYPE_IMAGE) {
            image_idx.push_back(i);
        } else {
            fail(ErrorKind::UnsupportedModel, "libmtmd made an audio chunk; only images and frames are supported");
        }
    }

    // Layout of each image chunk: positions (relative), grid, source images.
    const bool mrope = uses_mrope();
    for (size_t k = 0; k < image_idx.size(); ++k) {
        const mtmd_input_chunk * c = mtmd_input_chunks_get(chunks.get(), image_idx[k]);
        const mtmd_image_tokens * it = mtmd_input_chunk_get_tokens_image(c);
        VisualTokens & v = out[image_idx[k]].image;
        v.n_tokens = static_cast<int>(mtmd_input_chunk_get_n_tokens(c));
        v.n_pos = static_cast<int>(mtmd_input_chunk_get_n_pos(c));
        const char * id = mtmd_input_chunk_get_id(c);
        v.first_image = id ? std::atoi(id) : 0;
        v.bidirectional = mtmd_decode_use_non_causal(ctx_, c);
        const size_t n = size_t(v.n_tokens);
        v.pos.n_streams = mrope ? 3 : 1;
        v.pos.values.resize(v.pos.n_streams * n);
        v.nx = mrope ? 0 : v.n_tokens;
        v.ny = mrope ? 0 : 1;
        for (size_t i = 0; i < n; ++i) {
            if (!mrope) {
                v.pos.values[i] = static_cast<int32_t>(i);
                continue;
            }
            const mtmd_decoder_pos p = mtmd_image_tokens_get_decoder_pos(it, 0, i);
            v.pos.values[i] = static_cast<int32_t>(p.t);          // time
            v.pos.values[n + i] = static_cast<int32_t>(p.y);      // height (row)
            v.pos.values[2 * n + i] = static_cast<int32_t>(p.x);  // width (column)
            v.nx = std::max(v.nx, static_cast<int>(p.x) + 1);
            v.ny = std::max(v.ny, static_cast<int>(p.y) + 1);
        }
    }
    for (size_t k = 0; k < image_idx.size(); ++k) {  // images up to the next chunk's first one
        VisualTokens & v = out[image_idx[k]].image;
        int next = static_cast<int>(input.images.size());
        for (size_t j = k + 1; j < image_idx.size(); ++j) {
            const int f = out[image_idx[j]].image.first_image;
            if (f != v.first_image) {
                next = f;
                break;
            }
        }
        v.n_images = std::max(1, next - v.first_image);
    }

    // Encode: as many chunks per batch as the tower takes (mtmd_batch_add_chunk
    // refuses the first that does not fit or cannot batch), then copy out.
    const size_t row = size_t(n_embd_);
    const int n_total = static_cast<int>(image_idx.size());
    for (size_t k = 0; k < image_idx.size();) {
        BatchPtr batch(mtmd_batch_init(ctx_));
        size_t end = k;
        while (end < image_idx.size()) {
            const int32_t r = mtmd_batch_add_chunk(batch.get(), mtmd_input_chunks_get(chunks.get(), image_idx[end]));
            if (r == 0) {
                ++end;
            } else if (end > k && (r == 2 || r == 3)) {
                break;
            } else {
                fail(ErrorKind::Backend,
                     format("libmtmd refused image chunk %zu (%d)%s", end, r, take_mtmd_errors().c_str()));
            }
        }
        if (mtmd_batch_encode(batch.get()) != 0) {
            fail(ErrorKind::Backend, "libmtmd could not encode the images" + take_mtmd_errors());
        }
        for (size_t j = k; j < end; ++j) {
            const mtmd_input_chunk * c = mtmd_input_chunks_get(chunks.get(), image_idx[j]);
            const float * embd = mtmd_batch_get_output_embd(batch.get(), c);
            if (!embd) fail(ErrorKind::Backend, "libmtmd gave no embeddings for an image chunk" + take_mtmd_errors());
            VisualTokens & v = out[image_idx[j]].image;
            v.embd.assign(embd, embd + row * size_t(v.n_tokens));
        }
        k = end;
        if (input.progress && !input.progress(static_cast<int>(k), n_total, input.progress_user_data)) {
            fail(ErrorKind::InvalidArgument,
                 format("encoding stopped by the caller after %zu of %d image chunks", k, n_total));
        }
    }
    return out;
}

// --- token rows --------------------------------------------------------------------

std::vector<float> token_embeddings(const Model & model, const std::vector<int32_t> & tokens) {
    const GgufFile & f = model.file();
    const ggml_tensor * table = f.find_tensor("token_embd.weight");
    if (!table) fail(ErrorKind::InvalidFile, "the model has no token_embd.weight");
    const int64_t n_embd = table->ne[0], n_vocab = table->ne[1];
    const size_t row_bytes = ggml_row_size(table->type, n_embd);
    const uint8_t * data = f.tensor_data(table);
    const ggml_type_traits * traits = ggml_get_type_traits(table->type);
    if (table->type != GGML_TYPE_F32 && !traits->to_float) {
        fail(ErrorKind::UnsupportedModel, format("token embeddings of type %s cannot be read back", traits->type_name));
    }
    std::vector<float> out(size_t(n_embd) * tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab) {
            fail(ErrorKind::InvalidArgument,
                 format("token id %d is outside the vocabulary (%lld)", tokens[i], (long long)n_vocab));
        }
        const uint8_t * src = data + size_t(tokens[i]) * row_bytes;
        float * dst = out.data() + i * size_t(n_embd);
        if (table->type == GGML_TYPE_F32) {
            std::memcpy(dst, src, row_bytes);
        } else {
            traits->to_float(src, dst, n_embd);
        }
    }
    return out;
}

}  // namespace hts
