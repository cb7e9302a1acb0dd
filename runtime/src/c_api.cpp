// The C API (runtime/include/htsparse.h) over the C++ runtime: handles that
// own a Model, a VisionEncoder or a Conversation; every call catches what the
// runtime throws and turns it into a status code and hts_last_error().
#define HTS_BUILD
#include "htsparse.h"

#include "answer.h"
#include "conversation.h"
#include "errors.h"
#include "model.h"
#include "video_layout.h"
#include "vision.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#ifndef HTS_VERSION_STRING
#define HTS_VERSION_STRING "0.1.0"
#endif

struct hts_model {
    std::unique_ptr<hts::Model> model;
    std::string device;  // kept so hts_model_device can hand out a stable pointer
};

struct hts_vision {
    hts_model * model = nullptr;
    std::unique_ptr<hts::VisionEncoder> encoder;
};

struct hts_session {
    hts_model * model = nullptr;
    hts_session_params params{};
    std::unique_ptr<hts::Conversation> conv;
    std::string finish_reason;
};

namespace {

thread_local std::string t_last_error;
thread_local int32_t t_last_status = HTS_OK;

int32_t status_of(hts::ErrorKind kind) {
    switch (kind) {
        case hts::ErrorKind::InvalidArgument:
            return HTS_ERR_INVALID_ARGUMENT;
        case hts::ErrorKind::FileNotFound:
            return HTS_ERR_FILE_NOT_FOUND;
        case hts::ErrorKind::InvalidFile:
            return HTS_ERR_INVALID_FILE;
        case hts::ErrorKind::UnsupportedModel:
            return HTS_ERR_UNSUPPORTED_MODEL;
        case hts::ErrorKind::ContextOverflow:
            return HTS_ERR_CONTEXT_OVERFLOW;
        case hts::ErrorKind::Backend:
            return HTS_ERR_BACKEND;
        case hts::ErrorKind::Aborted:
            return HTS_ERR_ABORTED;
    }
    return HTS_ERR_INTERNAL;
}

int32_t set_error(int32_t status, const std::string & message) {
    t_last_error = message;
    t_last_status = status;
    return status;
}

// Runs work (returning int32_t), turning every exception into a status.
template <typename F> int32_t guarded(F && work) {
    try {
        return work();
    } catch (const hts::Error & e) {
        return set_error(status_of(e.kind()), e.what());
    } catch (const std::bad_alloc &) {
        return set_error(HTS_ERR_INTERNAL, "out of memory");
    } catch (const std::exception & e) {
        return set_error(HTS_ERR_INTERNAL, e.what());
    } catch (...) {
        return set_error(HTS_ERR_INTERNAL, "unknown error");
    }
}

// As guarded(), for calls that make a handle: null on failure.
template <typename T, typename F> T * guarded_new(F && make) {
    T * out = nullptr;
    guarded([&] {
        out = make();
        return int32_t(HTS_OK);
    });
    return out;
}

void require(bool ok, const char * what) {
    if (!ok) hts::fail(hts::ErrorKind::InvalidArgument, what);
}

hts::SparseConfig sparse_config(const hts_sparse_params & p) {
    hts::SparseConfig c;
    c.keep_ratio = p.keep_ratio < 0 ? hts::SparseConfig::kUnsetF : p.keep_ratio;
    c.keep_mass = p.keep_mass < 0 ? 0.0f : p.keep_mass;
    c.full_head_ratio = p.full_head_ratio < 0 ? hts::SparseConfig::kUnsetF : p.full_head_ratio;
    c.select_layer = p.select_layer < 0 ? hts::SparseConfig::kUnset : p.select_layer;
    c.prune_layer = p.prune_layer < 0 ? hts::SparseConfig::kUnset : p.prune_layer;
    c.q_window = p.q_window < 0 ? hts::SparseConfig::kUnset : p.q_window;
    c.segment_floor = p.segment_floor;
    c.reroute = p.reroute;
    return c;
}

bool should_abort(const hts_session * s) {
    return s->params.abort_callback && s->params.abort_callback(s->params.abort_user_data);
}

// Reports progress to the session's callbacks: false when they ask to stop.
bool keep_going(const hts_session * s, const char * stage, int done, int total) {
    return !should_abort(s) &&
           (!s->params.progress || s->params.progress(stage, done, total, s->params.progress_user_data));
}

// As keep_going, throwing Aborted when the callbacks ask to stop.
void report(const hts_session * s, const char * stage, int done, int total) {
    if (!keep_going(s, stage, done, total)) {
        hts::fail(hts::ErrorKind::Aborted, std::string("stopped by the callback while ") + stage);
    }
}

// Tokens in the context, the question held back after a sparse span included.
int input_size(const hts::Conversation & c) { return c.context().n_past() + c.n_pending(); }

std::vector<hts::VisionInput::Image> image_views(const hts_image * images, int32_t n) {
    std::vector<hts::VisionInput::Image> out;
    for (int32_t i = 0; i < n; ++i) {
        if (!images[i].rgb || images[i].width == 0 || images[i].height == 0) {
            hts::fail(hts::ErrorKind::InvalidArgument, hts::format("image %d has no pixels", i));
        }
        out.push_back({images[i].width, images[i].height, images[i].rgb});
    }
    return out;
}

void check_session_vision(const hts_session * s, const hts_vision * v, const void * images, int32_t n) {
    require(s != nullptr, "session is NULL");
    require(v != nullptr, "vision is NULL");
    require(v->model == s->model, "the vision belongs to another model than the session");
    require(images != nullptr && n > 0, "no images given");
}

}  // namespace

// --- errors and version -------------------------------------------------------------

extern "C" {

const char * hts_version(void) { return HTS_VERSION_STRING; }

const char * hts_last_error(void) { return t_last_error.c_str(); }

int32_t hts_last_status(void) { return t_last_status; }

const char * hts_status_str(int32_t status) {
    switch (status) {
        case HTS_OK:
            return "ok";
        case HTS_ERR_INVALID_ARGUMENT:
            return "invalid argument";
        case HTS_ERR_FILE_NOT_FOUND:
            return "file not found";
        case HTS_ERR_INVALID_FILE:
            return "invalid file";
        case HTS_ERR_UNSUPPORTED_MODEL:
            return "unsupported model";
        case HTS_ERR_CONTEXT_OVERFLOW:
            return "context overflow";
        case HTS_ERR_BACKEND:
            return "backend error";
        case HTS_ERR_ABORTED:
            return "aborted";
        case HTS_ERR_INTERNAL:
            return "internal error";
        default:
            return "unknown status";
    }
}

// --- model ----------------------------------------------------------------------------

struct hts_model_params hts_model_default_params(void) {
    hts_model_params p;
    p.device = "auto";
    p.n_threads = 0;
    p.verbose = false;
    return p;
}

hts_model * hts_model_load(const char * path, struct hts_model_params params) {
    return guarded_new<hts_model>([&] {
        require(path != nullptr, "path is NULL");
        require(params.n_threads >= 0, "n_threads must be >= 0");
        hts::ModelParams p;
        p.device = params.device ? params.device : "auto";
        p.n_threads = params.n_threads;
        p.verbose = params.verbose;
        auto m = std::make_unique<hts_model>();
        m->model = std::make_unique<hts::Model>(path, p);
        m->device = m->model->backends().device_name();
        return m.release();
    });
}

void hts_model_free(hts_model * model) { delete model; }

const char * hts_model_arch(const hts_model * model) { return model ? model->model->hparams().arch.c_str() : ""; }
const char * hts_model_device(const hts_model * model) { return model ? model->device.c_str() : ""; }
int32_t hts_model_n_layer(const hts_model * model) { return model ? model->model->hparams().n_layer : 0; }
int32_t hts_model_n_vocab(const hts_model * model) { return model ? model->model->hparams().n_vocab : 0; }
int32_t hts_model_n_ctx_train(const hts_model * model) { return model ? model->model->hparams().n_ctx_train : 0; }

int32_t hts_tokenize(const hts_model * model, const char * text, hts_token * tokens, int32_t n_tokens_max,
                     bool parse_special) {
    return guarded([&] {
        require(model != nullptr && text != nullptr, "model and text must not be NULL");
        require(n_tokens_max >= 0 && (tokens != nullptr || n_tokens_max == 0), "no room given for the tokens");
        const std::vector<int32_t> ids = model->model->vocab().tokenize(text, false, parse_special);
        std::copy_n(ids.begin(), std::min<size_t>(ids.size(), size_t(n_tokens_max)), tokens);
        return static_cast<int32_t>(ids.size());
    });
}

int32_t hts_token_to_piece(const hts_model * model, hts_token token, char * buf, int32_t size) {
    return guarded([&] {
        require(model != nullptr, "model is NULL");
        require(size >= 0 && (buf != nullptr || size == 0), "no room given for the piece");
        require(token >= 0 && token < model->model->hparams().n_vocab, "token id outside the vocabulary");
        const std::string piece = model->model->vocab().token_to_piece(token, false);
        if (size > 0) {
            const size_t n = std::min(piece.size(), size_t(size) - 1);
            std::memcpy(buf, piece.data(), n);
            buf[n] = '\0';
        }
        return static_cast<int32_t>(piece.size());
    });
}

// --- vision ----------------------------------------------------------------------------

struct hts_vision_params hts_vision_default_params(void) {
    hts_vision_params p;
    p.n_threads = 0;
    p.use_gpu = true;
    p.image_max_tokens = -1;
    return p;
}

hts_vision * hts_vision_load(hts_model * model, const char * mmproj_path, struct hts_vision_params params) {
    return guarded_new<hts_vision>([&] {
        require(model != nullptr && mmproj_path != nullptr, "model and mmproj_path must not be NULL");
        hts::VisionParams p;
        p.n_threads = params.n_threads;
        p.use_gpu = params.use_gpu;
        p.image_max_tokens = params.image_max_tokens;
        auto v = std::make_unique<hts_vision>();
        v->model = model;
        v->encoder = std::make_unique<hts::VisionEncoder>(*model->model, mmproj_path, p);
        return v.release();
    });
}

void hts_vision_free(hts_vision * vision) { delete vision; }

const char * hts_vision_projector(const hts_vision * vision) {
    return vision ? vision->encoder->layout().projector.c_str() : "";
}

// --- session -----------------------------------------------------------------------------

struct hts_sparse_params hts_sparse_default_params(void) {
    hts_sparse_params p;
    p.enabled = true;
    p.keep_ratio = -1.0f;
    p.keep_mass = 0.0f;
    p.full_head_ratio = -1.0f;
    p.select_layer = -1;
    p.prune_layer = -1;
    p.q_window = -1;
    p.segment_floor = 0;
    p.reroute = false;
    return p;
}

struct hts_session_params hts_session_default_params(void) {
    hts_session_params p;
    p.n_ctx = 8192;
    p.n_batch = 512;
    p.sparse = hts_sparse_default_params();
    p.progress = nullptr;
    p.progress_user_data = nullptr;
    p.abort_callback = nullptr;
    p.abort_user_data = nullptr;
    return p;
}

hts_session * hts_session_init(hts_model * model, struct hts_session_params params) {
    return guarded_new<hts_session>([&] {
        require(model != nullptr, "model is NULL");
        hts::ContextParams sp;
        sp.n_ctx = params.n_ctx;
        sp.n_batch = params.n_batch;
        const hts::SparseConfig sparse = sparse_config(params.sparse);
        auto s = std::make_unique<hts_session>();
        s->model = model;
        s->params = params;
        s->conv = std::make_unique<hts::Conversation>(*model->model, sp, params.sparse.enabled ? &sparse : nullptr);
        hts_session * raw = s.get();
        if (params.progress || params.abort_callback) {
            s->conv->set_progress(
                [raw](const char * stage, int done, int total) { return keep_going(raw, stage, done, total); });
        }
        return s.release();
    });
}

void hts_session_free(hts_session * session) { delete session; }

int32_t hts_session_reset(hts_session * session) {
    return guarded([&] {
        require(session != nullptr, "session is NULL");
        session->conv->reset();
        session->finish_reason.clear();
        return int32_t(HTS_OK);
    });
}

int32_t hts_session_add_text(hts_session * session, const char * text, bool sparse) {
    return guarded([&] {
        require(session != nullptr && text != nullptr, "session and text must not be NULL");
        return static_cast<int32_t>(session->conv->add_text(text, true, sparse));
    });
}

int32_t hts_session_add_tokens(hts_session * session, const hts_token * tokens, int32_t n_tokens, bool sparse) {
    return guarded([&] {
        require(session != nullptr && tokens != nullptr && n_tokens > 0, "no tokens given");
        session->conv->add_tokens(std::vector<int32_t>(tokens, tokens + n_tokens), sparse);
        return n_tokens;
    });
}

int32_t hts_session_add_message(hts_session * session, const char * role, const char * content) {
    return guarded([&] {
        require(session != nullptr && role != nullptr && content != nullptr,
                "session, role and content must not be NULL");
        return static_cast<int32_t>(session->conv->add_message(role, {{content, false}}));
    });
}

int32_t hts_session_add_images(hts_session * session, hts_vision * vision, const struct hts_image * images,
                               int32_t n_images, bool sparse) {
    return guarded([&] {
        check_session_vision(session, vision, images, n_images);
        report(session, "encoding", 0, n_images);
        hts::VisionInput in;
        for (int32_t i = 0; i < n_images; ++i) in.prompt += vision->encoder->marker();
        in.images = image_views(images, n_images);
        const std::vector<hts::VisionChunk> chunks = vision->encoder->encode(in);
        report(session, "encoding", n_images, n_images);
        const int before = input_size(*session->conv);
        session->conv->add_media(chunks, vision->encoder->image_token(), sparse);
        return static_cast<int32_t>(input_size(*session->conv) - before);
    });
}

int32_t hts_session_add_video(hts_session * session, hts_vision * vision, const struct hts_image * frames,
                              int32_t n_frames, double duration_s, bool sparse) {
    return guarded([&] {
        check_session_vision(session, vision, frames, n_frames);
        const std::vector<hts::VisionInput::Image> views = image_views(frames, n_frames);
        std::vector<double> times;
        for (int32_t i = 0; i < n_frames; ++i) times.push_back(frames[i].time_s);
        hts::VideoEncoder video(*vision->encoder);
        report(session, "encoding", 0, n_frames);
        for (int32_t at = 0; at < n_frames; at += hts::VideoEncoder::kFramesPerGroup) {
            const int32_t end = std::min(n_frames, at + hts::VideoEncoder::kFramesPerGroup);
            video.add_frames(std::vector<hts::VisionInput::Image>(views.begin() + at, views.begin() + end));
            report(session, "encoding", end, n_frames);
        }
        const int before = input_size(*session->conv);
        session->conv->add_media(video.finish(times, duration_s > 0 ? duration_s : -1.0),
                                 vision->encoder->image_token(), sparse);
        return static_cast<int32_t>(input_size(*session->conv) - before);
    });
}

// --- answers ------------------------------------------------------------------------------

struct hts_ask_params hts_ask_default_params(void) {
    const hts::SamplerParams d;
    hts_ask_params p;
    p.max_tokens = 256;
    p.temperature = d.temperature;
    p.top_k = d.top_k;
    p.top_p = d.top_p;
    p.min_p = d.min_p;
    p.repeat_penalty = d.repeat_penalty;
    p.seed = HTS_DEFAULT_SEED;
    p.stop = nullptr;
    p.n_stop = 0;
    return p;
}

int32_t hts_session_ask(hts_session * session, const char * question, struct hts_ask_params params,
                        hts_piece_callback on_piece, void * user_data) {
    return guarded([&] {
        require(session != nullptr, "session is NULL");
        require(params.n_stop >= 0 && (params.stop != nullptr || params.n_stop == 0), "stop strings missing");
        hts::AnswerParams ap;
        ap.max_tokens = params.max_tokens;
        ap.sampling.temperature = params.temperature;
        ap.sampling.top_k = params.top_k;
        ap.sampling.top_p = params.top_p;
        ap.sampling.min_p = params.min_p;
        ap.sampling.repeat_penalty = params.repeat_penalty;
        ap.sampling.seed = params.seed;
        for (int32_t i = 0; i < params.n_stop; ++i) {
            require(params.stop[i] != nullptr, "a stop string is NULL");
            ap.stop.emplace_back(params.stop[i]);
        }
        if (question) session->conv->add_message("user", {{question, false}});
        hts::Answer answer(*session->conv, ap);
        for (std::string piece; answer.next(piece);) {
            const bool keep_going =
                !should_abort(session) && (piece.empty() || !on_piece || on_piece(piece.c_str(), user_data));
            if (!keep_going) answer.cancel();
        }
        session->finish_reason = answer.finish_reason();
        return static_cast<int32_t>(answer.n_tokens());
    });
}

const char * hts_session_finish_reason(const hts_session * session) {
    return session ? session->finish_reason.c_str() : "";
}

// --- statistics ---------------------------------------------------------------------------

int32_t hts_session_get_stats(const hts_session * session, struct hts_stats * stats) {
    return guarded([&] {
        require(session != nullptr && stats != nullptr, "session and stats must not be NULL");
        const hts::ConversationStats s = session->conv->stats();
        stats->n_past = session->conv->context().n_past();
        stats->n_prompt = s.n_prompt;
        stats->n_sparse = s.n_sparse;
        stats->n_kept = s.n_kept;
        stats->n_full_heads = static_cast<int32_t>(s.full_heads.size());
        stats->kv_bytes = s.kv_bytes;
        stats->kv_bytes_dense = s.kv_bytes_dense;
        stats->kv_bytes_peak = s.kv_bytes_peak;
        stats->kv_bytes_tokens = s.kv_bytes_tokens;
        stats->compute_bytes = s.compute_bytes;
        stats->compute_bytes_peak = s.compute_bytes_peak;
        stats->residual_bytes = s.residual_bytes;
        stats->prefill_ms = s.total_prefill_ms();
        stats->ttft_ms = s.ttft_ms;
        stats->decode_tok_s = s.decode_tok_s;
        stats->select_layer = s.select_layer;
        stats->prune_layer = s.prune_layer;
        return int32_t(HTS_OK);
    });
}

int32_t hts_session_kept_tokens(const hts_session * session, int32_t * kept, int32_t n_max) {
    return guarded([&] {
        require(session != nullptr, "session is NULL");
        require(n_max >= 0 && (kept != nullptr || n_max == 0), "no room given for the kept tokens");
        const hts::SparseSelection * sel = session->conv->selection();
        if (!sel) return int32_t(0);
        std::copy_n(sel->kept_in_span.begin(), std::min<size_t>(sel->kept_in_span.size(), size_t(n_max)), kept);
        return static_cast<int32_t>(sel->kept_in_span.size());
    });
}

}  // extern "C"
