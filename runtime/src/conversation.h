// One conversation as a user of the runtime sees it (docs/architecture.md#one-request-end-to-end):
// a Context with chat turns rendered by the GGUF's template, HT-Sparse
// (sparse spans, the question held back until the answer starts, selection),
// visual chunks from libmtmd laid into the context, and the statistics. The
// Python Context and the C API (htsparse.h) are thin layers over it; Answer
// (answer.h) streams the model's reply.
//
//     hts::Conversation c(model, {}, &sparse_config);   // nullptr: dense
//     c.add_media_turn(chunks, vision.image_token(), "What happens?", true);
//     hts::Answer a(c, {});
//     for (std::string piece; a.next(piece);) std::fputs(piece.c_str(), stdout);
#pragma once

#include "context.h"
#include "sparse_state.h"
#include "vision.h"

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace hts {

class Model;

// What a conversation did: sizes, KV memory, timings (milliseconds).
struct ConversationStats {
    int n_prompt = 0;                                        // context tokens when the first answer began
    int n_sparse = 0;                                        // tokens in sparse spans
    int n_kept = 0;                                          // of those, kept by the last selection
    std::vector<std::pair<int, int>> full_heads;             // (layer, KV head) keeping whole spans
    size_t kv_bytes = 0;                                     // the KV cache now
    size_t kv_bytes_peak = 0;                                // the most it held at once since the last reset
    size_t kv_bytes_dense = 0;                               // what llama.cpp allocates for n_ctx cells
    size_t kv_bytes_tokens = 0;                              // a dense cache of exactly the tokens in the context
    size_t compute_bytes = 0, compute_bytes_peak = 0;        // compute buffers now, and the most since the last reset
    size_t residual_bytes = 0;                               // host memory of held tokens and of the re-routing log
    std::vector<std::pair<std::string, double>> prefill_ms;  // per stage, in the order first run
    double ttft_ms = -1;                                     // first answer's time to first token; < 0: no answer yet
    double decode_tok_s = -1;                                // last answer's decoding speed; < 0: not measured
    int select_layer = -1, prune_layer = -1;                 // -1: dense

    void add_ms(const std::string & stage, double ms);
    double total_prefill_ms() const;
};

// Progress of long work: `stage` ("prefill", "encoding"), done of total
// units. Returning false stops the work (the call throws ErrorKind::Aborted).
using ProgressFn = std::function<bool(const char * stage, int done, int total)>;

// A piece of a chat turn's content: text, sparse or not.
struct TurnPart {
    std::string text;
    bool sparse = false;
};

// The text around a turn's content when the caller gives its own instead of
// the chat template's (a processor's prompt format, say).
struct TurnText {
    std::string before, after;
};

class Conversation {
public:
    // sparse: HT-Sparse settings (unset values from the GGUF's htsparse.*
    // keys, then the defaults); null: the dense path.
    Conversation(const Model & model, const ContextParams & params, const SparseConfig * sparse);

    const Model & model() const { return model_; }
    Context & context() { return context_; }
    const Context & context() const { return context_; }
    const SparseState * sparse() const { return sparse_.get(); }  // null: dense

    // Called after each prefill micro-batch; returning false stops (see
    // ProgressFn). After a stop the conversation must be reset().
    void set_progress(ProgressFn fn);

    // --- input ---------------------------------------------------------------------
    // Evaluates tokens after the context. sparse: a sparse span (in a sparse
    // conversation; ordinary tokens otherwise). Tokens after an unselected
    // span wait for the answer as its query window (then neither all_logits
    // nor positions). positions: see Context::eval.
    void add_tokens(const std::vector<int32_t> & tokens, bool sparse = false, bool all_logits = false,
                    const TokenPositions * positions = nullptr);
    // Embedding rows F32 [n_embd, n] (visual tokens), shown as `placeholder`
    // in the context's tokens. sparse: a sparse span with segment starts
    // `segments` (null: runs of segment_tokens rows).
    // blocks: see Context::eval_embd.
    void add_embeddings(const std::vector<float> & rows, int32_t placeholder, const TokenPositions * positions,
                        bool sparse = false, const std::vector<int32_t> * segments = nullptr, bool all_logits = false,
                        const std::vector<int32_t> * blocks = nullptr);
    // Tokenizes and adds text (special markers parsed when `special`); BOS
    // first when the context is empty and the model wants it. Returns the
    // number of tokens.
    int add_text(const std::string & text, bool special = true, bool sparse = false);
    // One chat turn rendered with the GGUF's template. After a user turn,
    // the answer opens the assistant's reply. A user turn while a media turn
    // is open (add_media) completes that turn instead.
    int add_message(const std::string & role, const std::vector<TurnPart> & parts);
    // Starts a turn of `role`: the template's text before and after its content.
    std::pair<std::string, std::string> begin_turn(const std::string & role);

    // Appends encoded chunks in order (libmtmd's or a video layout's): text
    // as tokens, images as embedding rows at their positions. sparse: from
    // the first image chunk to the last, text between included, one sparse
    // span with a segment per image that starts with the text before it.
    void add_chunks(std::vector<VisionChunk> chunks, int32_t placeholder, bool sparse);
    // Opens a user turn (unless one is open) holding the chunks, as a
    // tokenizer reading the whole turn as one string would: text touching the
    // chunks' first or last text chunk is tokenized with it. The question
    // (add_message("user", ...)) completes the turn. `turn`: the caller's
    // text around the turn's content instead of the template's; the answer
    // then opens no assistant header of its own (the caller's text has it).
    void add_media(const std::vector<VisionChunk> & chunks, int32_t placeholder, bool sparse,
                   const TurnText * turn = nullptr);
    // add_media and then the question that completes the turn.
    void add_media_turn(const std::vector<VisionChunk> & chunks, int32_t placeholder, const std::string & question,
                        bool sparse, const TurnText * turn = nullptr);
    bool media_turn_open() const { return media_turn_.has_value(); }
    // Rope position of the next token evaluated (text waiting after a sparse span first).
    int next_input_pos() const;
    // Tokens of the question waiting after an unselected sparse span (0 when none waits).
    int n_pending() const { return holds_back() ? static_cast<int>(sparse_->pending().size()) : 0; }

    // --- selection -----------------------------------------------------------------
    // HT-Sparse: evaluates the question waiting after the sparse span(s) and
    // selects (SparseState::select). Returns whether a selection ran.
    bool select(const KeptReplacer * replace_kept = nullptr);
    const SparseSelection * selection() const;
    bool holds_back() const { return sparse_ && sparse_->holds_back(); }
    // Calibration and analysis: the selections at each (select layer, prune
    // layer) of `zones` for the question waiting after the span(s), without
    // compacting (SparseState::trial_selections). The question runs densely;
    // the conversation then answers densely until reset().
    std::vector<SparseSelection> trial_selections(const std::vector<std::pair<int, int>> & zones);
    // The answer ended (decoded by hand): with re-routing the next user turn selects anew.
    void answered();

    // --- the answer (Answer drives these) --------------------------------------------
    // Opens the assistant's reply when a user turn waits, selects, and counts
    // the prompt. Throws InvalidArgument on an empty context.
    void begin_answer();
    // Evaluates one generated token (without the progress callback: an
    // answer is stopped between tokens, not inside one).
    void eval_generated(int32_t token);
    // Records the first sampled token of an answer (its time to first token).
    void first_token_at(std::chrono::steady_clock::time_point started, std::chrono::steady_clock::time_point now);
    void set_decode_speed(double tok_s) { stats_.decode_tok_s = tok_s; }
    // Closes an open assistant turn with the template's tail. Returns false
    // when the tail does not fit the context.
    bool close_assistant_turn();

    ConversationStats stats() const;
    void reset();

private:
    const Model & model_;
    Context context_;
    std::optional<SparseConfig> sparse_request_;
    std::unique_ptr<SparseState> sparse_;
    ConversationStats stats_;
    ProgressFn progress_;
    bool assistant_open_ = false;     // generated tokens belong to an open assistant turn
    bool pending_assistant_ = false;  // a user turn awaits the assistant header
    bool stopped_ = false;            // a progress callback stopped work midway: reset() first
    bool in_answer_step_ = false;     // evaluating a generated token: progress is not reported
    struct MediaTurn {
        std::string tail;   // the turn's text after the chunks, tokenized with the question
        std::string after;  // the template's text after the turn's content
    };
    std::optional<MediaTurn> media_turn_;

    void check_usable() const;
    bool wants_bos() const;  // the context is empty and the model starts with BOS
    void eval_dense(const std::vector<int32_t> & tokens, bool all_logits, const TokenPositions * positions);
    void count_prompt_time(std::chrono::steady_clock::time_point start);
    void add_span_chunks(const std::vector<VisionChunk> & chunks, int32_t placeholder);
    template <typename F> void guarded(F && work);
};

}  // namespace hts
