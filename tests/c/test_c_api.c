/*
 * Tests of the C API (htsparse.h) as a C app uses it, compiled as strict C99
 * with -pedantic -Werror: errors and their codes, tokenization, dense and
 * sparse answers, stop strings, cancelling, progress and abort callbacks,
 * statistics, images and video. Run by ctest (tests/test_c_api.py):
 *
 *     test_c_api MODEL.gguf MMPROJ.gguf FRAMES.txt
 *
 * MODEL and MMPROJ: the demo model (random weights); FRAMES: frames of the
 * packaged clip (examples/prepare_clip.py). Prints "ok N checks" or the
 * failed checks, and exits non-zero on a failure.
 */
#include "../../examples/frame_list.h"
#include "htsparse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_checks = 0, g_failures = 0;

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        ++g_checks;                                                                                                    \
        if (!(cond)) {                                                                                                 \
            ++g_failures;                                                                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, __LINE__, #cond,                   \
                    hts_last_error());                                                                                 \
        }                                                                                                              \
    } while (0)

/* --- callbacks ------------------------------------------------------------ */

struct text_buffer {
    char text[8192];
    int n_pieces;
    int stop_after; /* > 0: return false after this many pieces */
};

static bool collect(const char * piece, void * user_data) {
    struct text_buffer * b = (struct text_buffer *)user_data;
    size_t used = strlen(b->text);
    strncat(b->text, piece, sizeof(b->text) - used - 1);
    b->n_pieces++;
    return b->stop_after <= 0 || b->n_pieces < b->stop_after;
}

struct progress_log {
    int prefill_calls, encoding_calls, last_done, last_total, encoded, encoding_total;
    int abort_after_calls; /* > 0: the abort callback says stop from this call on */
    int abort_polls;
};

static bool on_progress(const char * stage, int32_t done, int32_t total, void * user_data) {
    struct progress_log * p = (struct progress_log *)user_data;
    if (strcmp(stage, "prefill") == 0) p->prefill_calls++;
    if (strcmp(stage, "encoding") == 0) {
        p->encoding_calls++;
        p->encoded = done;
        p->encoding_total = total;
    }
    p->last_done = done;
    p->last_total = total;
    return true;
}

static bool on_abort(void * user_data) {
    struct progress_log * p = (struct progress_log *)user_data;
    p->abort_polls++;
    return p->abort_after_calls > 0 && p->abort_polls >= p->abort_after_calls;
}

/* --- helpers ---------------------------------------------------------------- */

static struct hts_ask_params greedy(int max_tokens) {
    struct hts_ask_params p = hts_ask_default_params();
    p.temperature = 0.0f;
    p.max_tokens = max_tokens;
    return p;
}

static hts_session * dense_session(hts_model * model, int n_ctx) {
    struct hts_session_params sp = hts_session_default_params();
    sp.n_ctx = n_ctx;
    sp.sparse.enabled = false;
    return hts_session_init(model, sp);
}

/* A long log with one line that matters, as a sparse span's text. */
static void log_text(char * out, size_t size, int n_lines) {
    int i;
    out[0] = '\0';
    for (i = 0; i < n_lines; ++i) {
        char line[96];
        snprintf(line, sizeof(line), i == n_lines / 3 ? "[%03d] backup FAILED on node 7\n" : "[%03d] heartbeat ok\n",
                 i);
        strncat(out, line, size - strlen(out) - 1);
    }
}

/* --- the tests ----------------------------------------------------------------- */

static void test_errors(void) {
    hts_model * m;
    FILE * f;
    CHECK(strchr(hts_version(), '.') != NULL);
    CHECK(strcmp(hts_status_str(HTS_ERR_CONTEXT_OVERFLOW), "context overflow") == 0);
    CHECK(strcmp(hts_status_str(42), "unknown status") == 0);

    m = hts_model_load("/nonexistent/model.gguf", hts_model_default_params());
    CHECK(m == NULL && hts_last_status() == HTS_ERR_FILE_NOT_FOUND);
    CHECK(strstr(hts_last_error(), "/nonexistent/model.gguf") != NULL);

    f = fopen("not-a-model.gguf", "wb");
    fputs("this is not a GGUF file, just text", f);
    fclose(f);
    m = hts_model_load("not-a-model.gguf", hts_model_default_params());
    CHECK(m == NULL && hts_last_status() == HTS_ERR_INVALID_FILE);
    remove("not-a-model.gguf");

    CHECK(hts_model_load(NULL, hts_model_default_params()) == NULL && hts_last_status() == HTS_ERR_INVALID_ARGUMENT);
    CHECK(hts_session_add_text(NULL, "x", false) == HTS_ERR_INVALID_ARGUMENT);
    CHECK(hts_session_get_stats(NULL, NULL) == HTS_ERR_INVALID_ARGUMENT);
}

static void test_tokens(hts_model * model) {
    hts_token ids[64];
    char piece[64];
    int32_t n = hts_tokenize(model, "Hello world", ids, 64, true);
    CHECK(n >= 2 && n < 64);
    CHECK(hts_tokenize(model, "Hello world", ids, 1, true) == n); /* the count, even when the buffer is short */
    CHECK(hts_tokenize(model, "<|im_start|>", ids, 64, true) == 1);
    CHECK(hts_tokenize(model, "<|im_start|>", ids, 64, false) > 1);
    n = hts_tokenize(model, "Hello", ids, 64, false);
    CHECK(n == 1 && hts_token_to_piece(model, ids[0], piece, sizeof(piece)) == 5 && strcmp(piece, "Hello") == 0);
    CHECK(hts_token_to_piece(model, ids[0], piece, 3) == 5 && strcmp(piece, "He") == 0);
    CHECK(hts_token_to_piece(model, -1, piece, sizeof(piece)) == HTS_ERR_INVALID_ARGUMENT);
}

static void test_dense_answers(hts_model * model) {
    struct text_buffer a, b, c;
    struct hts_ask_params ap = greedy(12);
    hts_session * s = dense_session(model, 512);
    struct hts_stats st;
    int32_t n;
    char stop[16];
    const char * stops[1];
    CHECK(s != NULL);
    memset(&a, 0, sizeof(a));
    n = hts_session_ask(s, "Name three colours.", ap, collect, &a);
    CHECK(n > 0 && n <= 12);
    CHECK(strcmp(hts_session_finish_reason(s), "length") == 0 || strcmp(hts_session_finish_reason(s), "stop") == 0);
    CHECK(hts_session_get_stats(s, &st) == HTS_OK);
    CHECK(st.n_prompt > 0 && st.n_past > st.n_prompt && st.ttft_ms > 0 && st.n_sparse == 0 && st.select_layer == -1);
    /* dense: every token's KV, no more than llama.cpp's n_ctx cache */
    CHECK(st.kv_bytes >= st.kv_bytes_tokens && st.kv_bytes <= st.kv_bytes_dense && st.kv_bytes_peak >= st.kv_bytes);

    /* the same conversation again: the same greedy answer */
    CHECK(hts_session_reset(s) == HTS_OK);
    memset(&b, 0, sizeof(b));
    CHECK(hts_session_ask(s, "Name three colours.", ap, collect, &b) == n && strcmp(a.text, b.text) == 0);

    /* a follow-up question continues the conversation */
    CHECK(hts_session_ask(s, "And three more?", ap, NULL, NULL) > 0);
    CHECK(hts_session_get_stats(s, &st) == HTS_OK && st.n_past > 2 * st.n_prompt);

    /* a stop string from the middle of the answer: the answer ends before it */
    if (strlen(a.text) >= 6) {
        CHECK(hts_session_reset(s) == HTS_OK);
        snprintf(stop, sizeof(stop), "%.3s", a.text + strlen(a.text) / 2);
        stops[0] = stop;
        ap.stop = stops;
        ap.n_stop = 1;
        memset(&c, 0, sizeof(c));
        hts_session_ask(s, "Name three colours.", ap, collect, &c);
        CHECK(strcmp(hts_session_finish_reason(s), "stop") == 0);
        CHECK(strstr(a.text, c.text) == a.text && strstr(c.text, stop) == NULL);
        ap.stop = NULL;
        ap.n_stop = 0;
    }

    /* the piece callback ends the answer */
    CHECK(hts_session_reset(s) == HTS_OK);
    memset(&c, 0, sizeof(c));
    c.stop_after = 1;
    ap.max_tokens = 64;
    CHECK(hts_session_ask(s, "Name three colours.", ap, collect, &c) >= 1);
    CHECK(c.n_pieces == 1 && strcmp(hts_session_finish_reason(s), "cancelled") == 0);

    /* bad asks */
    ap.max_tokens = 0;
    CHECK(hts_session_ask(s, "x", ap, NULL, NULL) == HTS_ERR_INVALID_ARGUMENT);
    CHECK(strstr(hts_last_error(), "max_tokens") != NULL);
    hts_session_free(s);

    /* a prompt longer than the context */
    s = dense_session(model, 64);
    {
        char text[4096];
        log_text(text, sizeof(text), 60);
        CHECK(hts_session_add_text(s, text, false) == HTS_ERR_CONTEXT_OVERFLOW);
    }
    hts_session_free(s);
}

static void test_sparse_text(hts_model * model) {
    struct hts_session_params sp = hts_session_default_params();
    struct hts_stats st;
    hts_session * s;
    char text[8192];
    int32_t kept[4096], n_span, n_kept;

    sp.sparse.keep_ratio = 2.0f; /* out of range */
    CHECK(hts_session_init(model, sp) == NULL && hts_last_status() == HTS_ERR_INVALID_ARGUMENT);
    CHECK(strstr(hts_last_error(), "keep_ratio") != NULL);

    sp = hts_session_default_params();
    sp.n_ctx = 2048;
    sp.sparse.keep_ratio = 0.25f;
    s = hts_session_init(model, sp);
    CHECK(s != NULL);
    log_text(text, sizeof(text), 120);
    CHECK(hts_session_add_message(s, "system", "You read logs.") > 0);
    n_span = hts_session_add_text(s, text, true);
    CHECK(n_span > 100);
    CHECK(hts_session_ask(s, "Which node failed the backup?", greedy(8), NULL, NULL) > 0);
    CHECK(hts_session_get_stats(s, &st) == HTS_OK);
    CHECK(st.n_sparse == n_span && st.n_kept > 0 && st.n_kept < n_span && st.select_layer >= 0);
    CHECK(st.kv_bytes < st.kv_bytes_dense && st.n_full_heads >= 0);
    n_kept = hts_session_kept_tokens(s, kept, 4096);
    CHECK(n_kept == st.n_kept && kept[0] >= 0 && kept[n_kept - 1] < n_span);
    CHECK(hts_session_kept_tokens(s, kept, 1) == n_kept);
    /* sparse spans go before the first question */
    CHECK(hts_session_add_text(s, text, true) == HTS_ERR_INVALID_ARGUMENT);
    hts_session_free(s);
}

static void test_callbacks(hts_model * model) {
    struct hts_session_params sp = hts_session_default_params();
    struct progress_log log;
    hts_session * s;
    char text[8192];
    memset(&log, 0, sizeof(log));
    sp.n_ctx = 2048;
    sp.n_batch = 64;
    sp.sparse.enabled = false;
    sp.progress = on_progress;
    sp.progress_user_data = &log;
    sp.abort_callback = on_abort;
    sp.abort_user_data = &log;
    s = hts_session_init(model, sp);
    CHECK(s != NULL);
    log_text(text, sizeof(text), 120);
    CHECK(hts_session_add_text(s, text, false) > 0);
    CHECK(log.prefill_calls >= 2 && log.last_done == log.last_total); /* one call per micro-batch */

    /* the abort callback stops a prefill midway; the session then needs a reset */
    CHECK(hts_session_reset(s) == HTS_OK);
    log.abort_polls = 0;
    log.abort_after_calls = 2;
    CHECK(hts_session_add_text(s, text, false) == HTS_ERR_ABORTED);
    log.abort_after_calls = 0;
    CHECK(hts_session_add_text(s, "more", false) == HTS_ERR_INVALID_ARGUMENT);
    CHECK(strstr(hts_last_error(), "reset") != NULL);
    CHECK(hts_session_reset(s) == HTS_OK);
    CHECK(hts_session_add_text(s, "Hello", false) > 0);

    /* polled between answer tokens: the answer ends, cancelled */
    log.abort_polls = 0;
    log.abort_after_calls = 3;
    CHECK(hts_session_ask(s, NULL, greedy(32), NULL, NULL) >= 1);
    CHECK(strcmp(hts_session_finish_reason(s), "cancelled") == 0);
    hts_session_free(s);
}

static void test_vision(hts_model * model, const char * mmproj, const char * frames_path) {
    struct frame_list frames;
    struct hts_session_params sp = hts_session_default_params();
    struct progress_log log;
    struct text_buffer a;
    struct hts_stats st;
    hts_vision * vision;
    hts_session * s;
    int32_t n;

    CHECK(hts_vision_load(model, "/nonexistent/mmproj.gguf", hts_vision_default_params()) == NULL);
    CHECK(hts_last_status() == HTS_ERR_FILE_NOT_FOUND);
    vision = hts_vision_load(model, mmproj, hts_vision_default_params());
    CHECK(vision != NULL && strcmp(hts_vision_projector(vision), "qwen2.5vl_merger") == 0);
    if (!vision || read_frame_list(frames_path, &frames) != 0) {
        CHECK(0);
        return;
    }
    memset(&log, 0, sizeof(log));
    sp.progress = on_progress;
    sp.progress_user_data = &log;
    sp.sparse.keep_ratio = 0.5f;
    s = hts_session_init(model, sp);
    CHECK(s != NULL);
    CHECK(hts_session_add_video(s, vision, NULL, 0, 0.0, true) == HTS_ERR_INVALID_ARGUMENT);
    n = hts_session_add_video(s, vision, frames.frames, frames.n, frames.duration_s, true);
    CHECK(n > frames.n);
    CHECK(log.encoding_calls >= 2 && log.encoded == frames.n && log.encoding_total == frames.n);
    memset(&a, 0, sizeof(a));
    CHECK(hts_session_ask(s, "What happens in this video?", greedy(8), collect, &a) > 0);
    CHECK(hts_session_get_stats(s, &st) == HTS_OK);
    CHECK(st.n_sparse > 0 && st.n_sparse < n && st.n_kept > 0 && st.n_kept < st.n_sparse);
    CHECK(st.kv_bytes < st.kv_bytes_dense);

    /* the question must come before an answer; two images in one user turn */
    CHECK(hts_session_reset(s) == HTS_OK);
    CHECK(hts_session_add_images(s, vision, frames.frames, 2, false) > 0);
    CHECK(hts_session_ask(s, NULL, greedy(4), NULL, NULL) == HTS_ERR_INVALID_ARGUMENT);
    CHECK(strstr(hts_last_error(), "question") != NULL);
    CHECK(hts_session_ask(s, "What differs?", greedy(4), NULL, NULL) > 0);
    hts_session_free(s);
    free_frames(&frames);
    hts_vision_free(vision);
}

int main(int argc, char ** argv) {
    struct hts_model_params mp = hts_model_default_params();
    hts_model * model;
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf MMPROJ.gguf FRAMES.txt\n", argv[0]);
        return 2;
    }
    test_errors();
    mp.n_threads = 2;
    model = hts_model_load(argv[1], mp);
    CHECK(model != NULL);
    if (!model) return 1;
    CHECK(strcmp(hts_model_arch(model), "qwen2vl") == 0 && hts_model_n_layer(model) > 0);
    CHECK(hts_model_n_vocab(model) > 1000 && strlen(hts_model_device(model)) > 0);
    test_tokens(model);
    test_dense_answers(model);
    test_sparse_text(model);
    test_callbacks(model);
    test_vision(model, argv[2], argv[3]);
    hts_model_free(model);
    if (g_failures) {
        fprintf(stderr, "%d of %d checks failed\n", g_failures, g_checks);
        return 1;
    }
    printf("ok %d checks\n", g_checks);
    return 0;
}
