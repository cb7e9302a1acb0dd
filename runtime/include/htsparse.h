/*
 * htsparse.h - the C API of htsparse-llama: ask questions about long videos
 * with a vision-language model on your own machine, on the GGUF files
 * llama.cpp uses. For each question, HT-Sparse keeps the whole video in a few
 * attention heads and only the visual tokens the question needs in the rest.
 *
 *     #include "htsparse.h"
 *     #include <stdio.h>
 *
 *     static bool print_piece(const char * text, void * user_data) {
 *         (void) user_data;
 *         fputs(text, stdout);
 *         return true;                                  // false ends the answer here
 *     }
 *
 *     int main(void) {
 *         hts_model * model = hts_model_load("Qwen2.5-VL-3B-Q4_K_M.gguf", hts_model_default_params());
 *         if (!model) { fprintf(stderr, "%s\n", hts_last_error()); return 1; }
 *         hts_vision * vision = hts_vision_load(model, "mmproj-Qwen2.5-VL-3B-F16.gguf", hts_vision_default_params());
 *         hts_session * session = hts_session_init(model, hts_session_default_params());  // HT-Sparse on
 *
 *         struct hts_image frames[64];                  // RGB frames you decoded, with their times
 *         // ... frames[i].rgb, .width, .height, .time_s ...
 *         hts_session_add_video(session, vision, frames, 64, 120.0, true);  // the video's visual tokens
 *         if (hts_session_ask(session, "What happens at the end?", hts_ask_default_params(), print_piece, NULL) < 0) {
 *             fprintf(stderr, "%s\n", hts_last_error());
 *         }
 *         struct hts_stats st;
 *         hts_session_get_stats(session, &st);          // kept tokens, KV bytes against dense, timings
 *
 *         hts_session_free(session);
 *         hts_vision_free(vision);
 *         hts_model_free(model);
 *         return 0;
 *     }
 *
 * Conventions (as llama.h / mtmd.h): opaque handles made by *_load / *_init
 * and released by *_free; parameter structs taken by value and filled by
 * *_default_params(); functions that can fail return an int32_t that is
 * negative (an hts_status) on failure, with a message in hts_last_error().
 * A model may serve many sessions; one session must not be used by two
 * threads at once. The header is C99.
 */
#ifndef HTSPARSE_H
#define HTSPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef HTS_SHARED
#if defined(_WIN32) && !defined(__MINGW32__)
#ifdef HTS_BUILD
#define HTS_API __declspec(dllexport)
#else
#define HTS_API __declspec(dllimport)
#endif
#else
#define HTS_API __attribute__((visibility("default")))
#endif
#else
#define HTS_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ----------------------------------------------------------------------------
 * Status codes and errors
 * ------------------------------------------------------------------------- */

typedef enum hts_status {
    HTS_OK = 0,
    HTS_ERR_INVALID_ARGUMENT = -1,  /* a parameter out of range, or a call out of order */
    HTS_ERR_FILE_NOT_FOUND = -2,    /* a model or mmproj file that does not exist or cannot be opened */
    HTS_ERR_INVALID_FILE = -3,      /* not GGUF, truncated, or inconsistent tensors */
    HTS_ERR_UNSUPPORTED_MODEL = -4, /* an architecture or projector this runtime does not run */
    HTS_ERR_CONTEXT_OVERFLOW = -5,  /* the input does not fit the session's context (raise n_ctx) */
    HTS_ERR_BACKEND = -6,           /* a ggml backend failed (allocation, computation) */
    HTS_ERR_ABORTED = -7,           /* a progress or abort callback stopped the work: reset the session */
    HTS_ERR_INTERNAL = -8           /* anything else (out of memory, a bug): the message says what */
} hts_status;

/* The library's version, "MAJOR.MINOR.PATCH". */
HTS_API const char * hts_version(void);

/* The message of the last call that failed on this thread ("" if none). It
 * stays valid until the next failing call on the same thread. */
HTS_API const char * hts_last_error(void);

/* The status of that call (HTS_OK if none failed yet): for the calls that
 * return a handle, NULL on failure. */
HTS_API int32_t hts_last_status(void);

/* A short name for a status ("invalid argument", ...). */
HTS_API const char * hts_status_str(int32_t status);

/* ----------------------------------------------------------------------------
 * Model: a GGUF text decoder (qwen2, qwen2vl, llama architectures)
 * ------------------------------------------------------------------------- */

typedef struct hts_model hts_model;
typedef struct hts_vision hts_vision;
typedef struct hts_session hts_session;
typedef int32_t hts_token;

struct hts_model_params {
    const char * device; /* "auto" (a GPU when there is one), "cpu", "gpu", or a ggml device name such as "CUDA0" */
    int32_t n_threads;   /* CPU threads; 0: every hardware thread */
    bool verbose;        /* llama.cpp's own log on stderr */
};

HTS_API struct hts_model_params hts_model_default_params(void);

/* Loads a GGUF model; NULL on failure (see hts_last_error). */
HTS_API hts_model * hts_model_load(const char * path, struct hts_model_params params);
HTS_API void hts_model_free(hts_model * model);

HTS_API const char * hts_model_arch(const hts_model * model);   /* general.architecture */
HTS_API const char * hts_model_device(const hts_model * model); /* the device it runs on, e.g. "CPU", "CUDA0" */
HTS_API int32_t hts_model_n_layer(const hts_model * model);
HTS_API int32_t hts_model_n_vocab(const hts_model * model);
HTS_API int32_t hts_model_n_ctx_train(const hts_model * model);

/* Tokenizes text (special markers such as "<|im_start|>" parsed when
 * parse_special). Returns the number of tokens the text has; at most
 * n_tokens_max are written, so call again with a larger buffer when the
 * result exceeds it. Negative: an hts_status. */
HTS_API int32_t hts_tokenize(const hts_model * model, const char * text, hts_token * tokens, int32_t n_tokens_max,
                             bool parse_special);

/* The bytes of one token (possibly part of a UTF-8 character), NUL-terminated
 * in buf when they fit. Returns their length (excluding the NUL); a result
 * >= size means buf was too small. Negative: an hts_status. */
HTS_API int32_t hts_token_to_piece(const hts_model * model, hts_token token, char * buf, int32_t size);

/* ----------------------------------------------------------------------------
 * Vision: the mmproj's vision tower, through libmtmd
 * ------------------------------------------------------------------------- */

struct hts_vision_params {
    int32_t n_threads;        /* CPU threads of the tower; 0: the model's */
    bool use_gpu;             /* run the tower on the model's GPU, when it has one */
    int32_t image_max_tokens; /* dynamic-resolution towers: most tokens per image; -1: the mmproj's */
};

HTS_API struct hts_vision_params hts_vision_default_params(void);

/* Loads the mmproj made with `model` (its output width must be the model's).
 * NULL on failure. The model must outlive it. */
HTS_API hts_vision * hts_vision_load(hts_model * model, const char * mmproj_path, struct hts_vision_params params);
HTS_API void hts_vision_free(hts_vision * vision);

/* The mmproj's projector (clip.projector_type): "qwen2.5vl_merger", "idefics3", ... */
HTS_API const char * hts_vision_projector(const hts_vision * vision);

/* ----------------------------------------------------------------------------
 * Session: one conversation with its own KV cache
 * ------------------------------------------------------------------------- */

/* HT-Sparse settings. A value left negative takes the GGUF's calibrated
 * default (its htsparse.* keys), else the built-in one. */
struct hts_sparse_params {
    bool enabled;          /* false: dense attention everywhere (sparse spans are ordinary input) */
    float keep_ratio;      /* share of each sparse span kept per question, (0, 1] */
    float keep_mass;       /* > 0: keep instead the fewest segments holding this share of the score */
    float full_head_ratio; /* share of KV heads that keep the whole span, [0, 1] */
    int32_t select_layer;  /* layer where the question picks the tokens, [0, n_layer] */
    int32_t prune_layer;   /* layer from which unpicked tokens are not computed, [select_layer, n_layer] */
    int32_t q_window;      /* question tokens used to score the span, >= 1 */
    int32_t segment_floor; /* keep a segment in each of this many stretches of a span; 0: off */
    bool reroute;          /* pick anew for each follow-up question (the early layers then keep everything) */
};

/* Progress of long work: stage "encoding" (done of total video frames or
 * images) or "prefill" (done of total tokens of one pass). Return false to
 * stop: the call then fails with HTS_ERR_ABORTED and the session must be
 * reset before it is used again. */
typedef bool (*hts_progress_callback)(const char * stage, int32_t done, int32_t total, void * user_data);

/* Polled between batches, frames and answer tokens; return true to stop
 * (HTS_ERR_ABORTED, as above; an answer stopped this way ends cleanly
 * instead, with finish reason "cancelled"). */
typedef bool (*hts_abort_callback)(void * user_data);

struct hts_session_params {
    int32_t n_ctx;   /* KV cells (tokens, visual tokens included); 0: the model's training context */
    int32_t n_batch; /* tokens per micro-batch */
    struct hts_sparse_params sparse;
    hts_progress_callback progress;
    void * progress_user_data;
    hts_abort_callback abort_callback;
    void * abort_user_data;
};

HTS_API struct hts_sparse_params hts_sparse_default_params(void);   /* enabled, every value the model's default */
HTS_API struct hts_session_params hts_session_default_params(void); /* n_ctx 8192, n_batch 512, sparse on */

/* A new conversation on `model` (which must outlive it); NULL on failure. */
HTS_API hts_session * hts_session_init(hts_model * model, struct hts_session_params params);
HTS_API void hts_session_free(hts_session * session);

/* Forgets the conversation: empty context, cleared KV cache, same settings. */
HTS_API int32_t hts_session_reset(hts_session * session);

/* --- input ----------------------------------------------------------------
 * Each returns the number of tokens (visual tokens included) it added to the
 * context, or a negative hts_status. sparse: the input is a sparse span (a
 * long document, a video): each question keeps only what it needs of it.
 * Sparse spans go before the first question. */

/* Raw text, special markers parsed; BOS first when the context is empty and
 * the model wants it. */
HTS_API int32_t hts_session_add_text(hts_session * session, const char * text, bool sparse);
HTS_API int32_t hts_session_add_tokens(hts_session * session, const hts_token * tokens, int32_t n_tokens, bool sparse);

/* One chat turn ("system", "user", "assistant") in the GGUF's chat template.
 * A "user" message completes a turn that images or a video opened. */
HTS_API int32_t hts_session_add_message(hts_session * session, const char * role, const char * content);

/* An RGB picture: height rows of width pixels, 3 bytes each (R, G, B), no
 * row padding. For a video frame, time_s is its time in the video. */
struct hts_image {
    const uint8_t * rgb;
    uint32_t width;
    uint32_t height;
    double time_s;
};

/* Images (in the layout libmtmd gives the model) at the start of a user turn,
 * which the question (hts_session_ask, or a "user" message) completes. */
HTS_API int32_t hts_session_add_images(hts_session * session, hts_vision * vision, const struct hts_image * images,
                                       int32_t n_images, bool sparse);

/* Video frames in order, sampled from a video duration_s seconds long
 * (<= 0: unknown), laid out as the model family was trained on them
 * (Qwen2-VL / Qwen2.5-VL: one block, time in the M-RoPE positions, frames
 * merged in pairs of equal size; SmolVLM2: "Frame from MM:SS:" before each
 * frame, each squared to one tile), at the start of a user turn as
 * hts_session_add_images. Frames are encoded 16 at a time, with progress. */
HTS_API int32_t hts_session_add_video(hts_session * session, hts_vision * vision, const struct hts_image * frames,
                                      int32_t n_frames, double duration_s, bool sparse);

/* --- answers ---------------------------------------------------------------- */

struct hts_ask_params {
    int32_t max_tokens;        /* > 0 */
    float temperature;         /* <= 0: greedy */
    int32_t top_k;             /* <= 0: off */
    float top_p;               /* 1: off */
    float min_p;               /* 0: off */
    float repeat_penalty;      /* 1: off */
    uint32_t seed;             /* HTS_DEFAULT_SEED: a random one */
    const char * const * stop; /* n_stop strings; the answer ends before the first of them */
    int32_t n_stop;
};

#define HTS_DEFAULT_SEED 0xFFFFFFFFu

HTS_API struct hts_ask_params
hts_ask_default_params(void); /* 256 tokens, temperature 0.8, top-k 40, top-p 0.95, min-p 0.05 */

/* Receives the answer as it is decoded: NUL-terminated UTF-8 (whole
 * characters). Return false to end the answer there ("cancelled"). */
typedef bool (*hts_piece_callback)(const char * piece, void * user_data);

/* Asks `question` as the user's turn (completing a turn that images or a
 * video opened; NULL: no new turn, continue the context as it is) and
 * streams the model's answer to on_piece (may be NULL). With HT-Sparse, the
 * question selects what each sparse span keeps before the first token.
 * Returns the number of tokens generated, or a negative hts_status. */
HTS_API int32_t hts_session_ask(hts_session * session, const char * question, struct hts_ask_params params,
                                hts_piece_callback on_piece, void * user_data);

/* Why the last answer ended: "stop" (end of turn or a stop string), "length"
 * (max_tokens), "context" (the context is full), "cancelled"; "" before any. */
HTS_API const char * hts_session_finish_reason(const hts_session * session);

/* --- statistics ------------------------------------------------------------- */

struct hts_stats {
    int32_t n_past;              /* tokens in the context now */
    int32_t n_prompt;            /* tokens in the context when the first answer began */
    int32_t n_sparse;            /* tokens in sparse spans */
    int32_t n_kept;              /* of those, kept by the last question */
    int32_t n_full_heads;        /* (layer, KV head) pairs that keep whole spans */
    uint64_t kv_bytes;           /* bytes the KV cache holds */
    uint64_t kv_bytes_dense;     /* bytes a dense cache of n_ctx would hold */
    double prefill_ms;           /* time spent evaluating input, every stage */
    double ttft_ms;              /* first answer's time to first token; < 0: no answer yet */
    double decode_tok_s;         /* last answer's decoding speed; < 0: not measured */
    int32_t select_layer;        /* -1: dense */
    int32_t prune_layer;         /* -1: dense */
    uint64_t kv_bytes_peak;      /* the most bytes the KV cache held at once (since the last reset) */
    uint64_t kv_bytes_tokens;    /* bytes a dense cache of exactly the tokens in the context holds */
    uint64_t compute_bytes;      /* compute buffers now */
    uint64_t compute_bytes_peak; /* the most compute-buffer bytes held (since the last reset), the selection graph
                                    included */
    uint64_t residual_bytes;     /* host memory of held tokens and of the re-routing log */
};

HTS_API int32_t hts_session_get_stats(const hts_session * session, struct hts_stats * stats);

/* The sparse-span tokens the last question kept, as offsets from the first
 * span's start, ascending. Returns how many there are (at most n_max are
 * written), or a negative hts_status. */
HTS_API int32_t hts_session_kept_tokens(const hts_session * session, int32_t * kept, int32_t n_max);

#ifdef __cplusplus
}
#endif

#endif /* HTSPARSE_H */
