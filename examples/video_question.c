/*
 * video_question: answers a question about the frames of a video clip with
 * the C API (htsparse.h). The frames are binary PPM files (P6) listed in a
 * text file, one "TIME_SECONDS FILE" line each, in order, with an optional
 * "duration SECONDS" line; examples/prepare_clip.py writes such a list from a
 * video (or use: ffmpeg -i clip.mp4 -vf fps=2 frame_%04d.ppm).
 *
 *     video_question MODEL.gguf MMPROJ.gguf FRAMES.txt "QUESTION" [options]
 *       --max-tokens N   answer length (default 128)
 *       --greedy         temperature 0
 *       --dense          HT-Sparse off
 *       --keep-ratio R   share of the visual tokens each question keeps
 *       --threads N      CPU threads
 *
 * The answer streams to stdout, then one line of statistics.
 */
#include "frame_list.h"
#include "htsparse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool print_piece(const char * piece, void * user_data) {
    (void)user_data;
    fputs(piece, stdout);
    fflush(stdout);
    return true;
}

static bool show_progress(const char * stage, int32_t done, int32_t total, void * user_data) {
    (void)user_data;
    if (strcmp(stage, "encoding") == 0)
        fprintf(stderr, "\rencoding frames %d/%d%s", done, total, done == total ? "\n" : "");
    return true;
}

static int fail_with(const char * what) {
    fprintf(stderr, "error: %s: %s\n", what, hts_last_error());
    return 1;
}

int main(int argc, char ** argv) {
    struct hts_model_params mp = hts_model_default_params();
    struct hts_session_params sp = hts_session_default_params();
    struct hts_ask_params ap = hts_ask_default_params();
    struct frame_list list;
    struct hts_stats st;
    hts_model * model;
    hts_vision * vision;
    hts_session * session;
    int i, rc = 1;
    int32_t n;

    if (argc < 5) {
        fprintf(stderr,
                "usage: %s MODEL.gguf MMPROJ.gguf FRAMES.txt \"QUESTION\" [--max-tokens N] [--greedy] "
                "[--dense] [--keep-ratio R] [--threads N]\n",
                argv[0]);
        return 2;
    }
    ap.max_tokens = 128;
    for (i = 5; i < argc; ++i) {
        if (strcmp(argv[i], "--greedy") == 0) {
            ap.temperature = 0.0f;
        } else if (strcmp(argv[i], "--dense") == 0) {
            sp.sparse.enabled = false;
        } else if (strcmp(argv[i], "--max-tokens") == 0 && i + 1 < argc) {
            ap.max_tokens = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--keep-ratio") == 0 && i + 1 < argc) {
            sp.sparse.keep_ratio = (float)atof(argv[++i]);
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            mp.n_threads = atoi(argv[++i]);
        } else {
            fprintf(stderr, "error: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (read_frame_list(argv[3], &list) != 0) return 1;

    model = hts_model_load(argv[1], mp);
    if (!model) {
        free_frames(&list);
        return fail_with("loading the model");
    }
    vision = hts_vision_load(model, argv[2], hts_vision_default_params());
    sp.progress = show_progress;
    session = vision ? hts_session_init(model, sp) : NULL;
    if (!session) {
        rc = fail_with(vision ? "starting the session" : "loading the mmproj");
        goto done;
    }
    fprintf(stderr, "%s on %s, %s; %d frames\n", hts_model_arch(model), hts_model_device(model),
            hts_vision_projector(vision), list.n);

    n = hts_session_add_video(session, vision, list.frames, list.n, list.duration_s, sp.sparse.enabled);
    if (n < 0) {
        rc = fail_with("adding the video");
        goto done;
    }
    if (hts_session_ask(session, argv[4], ap, print_piece, NULL) < 0) {
        rc = fail_with("answering");
        goto done;
    }
    hts_session_get_stats(session, &st);
    printf("\n[%s] ", hts_session_finish_reason(session));
    if (st.n_sparse > 0) {
        printf("kept %d of %d visual tokens; ", st.n_kept, st.n_sparse);
    } else {
        printf("dense: all %d tokens of the video kept; ", n);
    }
    printf("KV %.1f MiB (%.2fx less than dense); first token %.0f ms; %.1f tok/s\n", st.kv_bytes / 1048576.0,
           st.kv_bytes ? (double)st.kv_bytes_dense / st.kv_bytes : 0.0, st.ttft_ms, st.decode_tok_s);
    rc = 0;
done:
    hts_session_free(session);
    hts_vision_free(vision);
    hts_model_free(model);
    free_frames(&list);
    return rc;
}
