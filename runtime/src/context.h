// The decoder state of one conversation (Context), over a shared immutable
// Model: the KV cache, the backend scheduler and the logits of the last
// evaluated batch. Tokens are evaluated in micro-batches of n_batch, each its
// own graph. The conversation as a user sees it (chat turns, HT-Sparse) is a
// Conversation (conversation.h), which owns one Context.
#pragma once

#include "ggml-backend.h"
#include "graph_context.h"
#include "kv_cache.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace hts {

class Model;

// Explicit rope positions for a batch of n tokens, stream-major: n_streams rows
// of n values. One row serves every rope stream; M-RoPE models also take three
// rows (time, height, width), the fourth stream being unused and zero.
struct TokenPositions {
    int n_streams = 1;
    std::vector<int32_t> values;  // n_streams * n
};

struct ContextParams {
    int n_ctx = 4096;   // KV cells; 0: the model's training context
    int n_batch = 512;  // tokens per micro-batch
};

class Context {
public:
    Context(const Model & model, const ContextParams & params);
    ~Context();
    Context(const Context &) = delete;
    Context & operator=(const Context &) = delete;

    // Appends tokens to the next KV cells and runs them through the model.
    // Keeps the logits of the last token, or of every token when all_logits.
    // Rope positions default to next_pos(), next_pos() + 1, ...; `positions`
    // overrides them (see TokenPositions). Throws ContextOverflow (nothing
    // evaluated) when the tokens do not fit.
    void eval(const std::vector<int32_t> & tokens, bool all_logits, const TokenPositions * positions = nullptr);

    // Appends embedding rows instead of tokens: embd is F32 [n_embd, n]
    // (e.g. an image's visual tokens from libmtmd), run as eval() runs tokens.
    // The cells record token id `placeholder` (the model's image token) in
    // tokens(). Not with tokens held or logged at layer 0 (those keep ids).
    // `blocks` (null: all causal): per row, a label; rows with the same
    // label >= 0 see each other whatever their order (an image that Gemma 3
    // reads bidirectionally, as llama.cpp's non-causal image decode and
    // transformers' token_type_ids mask do), -1 rows are causal. Labels are
    // this call's own; a micro-batch never splits a block it can hold whole.
    void eval_embd(const std::vector<float> & embd, int32_t placeholder, bool all_logits,
                   const TokenPositions * positions = nullptr, const std::vector<int32_t> * blocks = nullptr);

    // The same as eval(), computed in two stages as staged prefill does: every
    // token through layers [0, split), the residual stream at `split` kept on
    // the host, then every token through [split, n_layer). 0 <= split <= n_layer.
    void eval_staged(const std::vector<int32_t> & tokens, bool all_logits, int split,
                     const TokenPositions * positions = nullptr);

    // Logits rows of the last eval: n_logit_rows() x n_vocab, row-major.
    const std::vector<float> & logits() const { return logits_; }
    int n_logit_rows() const;
    const float * last_logits() const;

    int n_past() const { return n_past_; }  // KV cells in use
    // Rope position of the next default token: one past the largest position
    // used so far (after an M-RoPE image, text resumes past its extent).
    int next_pos() const { return next_pos_; }
    int n_ctx() const { return n_ctx_; }
    const std::vector<int32_t> & tokens() const { return tokens_; }
    size_t kv_bytes() const { return kv_->bytes(); }  // what the cache tensors hold now
    // The most KV bytes held at once since the last reset (transient copies included).
    size_t kv_bytes_peak() const;
    // What llama.cpp allocates for a dense cache of n_ctx cells (F16 K and V).
    size_t kv_bytes_dense() const;
    size_t kv_bytes_per_cell() const;  // dense K and V of one token, every layer
    // Compute buffers the scheduler holds now, and the most since the last reset.
    size_t compute_bytes() const;
    size_t compute_bytes_peak() const { return compute_peak_; }
    // A one-off graph (the selection's) held `bytes` beside the scheduler's buffers.
    void note_graph_bytes(size_t bytes);
    // Host memory of held tokens and of the re-routing log (their residual rows).
    size_t residual_bytes() const { return logged_.bytes() + held_.bytes(); }

    // Splits every layer's KV heads into full heads (every cell) and sparse
    // heads (kept_cells only), freeing the dense cache; later tokens go to
    // both and attend through hts_routed_attention. Undone by reset().
    // Sliding-window layers are not compacted; from `pruned_from` on (the
    // pruned zone) they hold only the kept tokens, so their masks hide the
    // cells not kept.
    void compact_kv(const std::vector<std::vector<bool>> & full_kv, const std::vector<int32_t> & kept_cells,
                    int pruned_from = kNoPrunedZone);
    // The next evals keep, per layer, the roped queries of their last n
    // tokens (the query window), for select_sparse(). 0 turns it off.
    void set_query_capture(int n) { capture_q_ = n; }
    // Per layer F32 [head_dim, n_head, n_captured_q()], from the last eval.
    const std::vector<std::vector<float>> & captured_queries() const { return captured_q_; }
    int n_captured_q() const { return n_captured_q_; }
    const KvCache & kv_cache() const { return *kv_; }
    const Model & model() const { return model_; }

    // --- staged prefill (HT-Sparse, docs/architecture.md#staged-prefill) ---------------------
    // While a hold layer P is set (0 <= P < n_layer, dense cache), eval() runs
    // its tokens through layers [0, P) only: they fill the KV cells of those
    // layers and wait for finish_held(). Such evals leave no logits. n_layer:
    // no hold. What waits on the host (docs/architecture.md#memory-plan):
    // tokens given as ids keep only their ids, and the ones selection keeps
    // are replayed through [0, P) (replay_held) from the cache, which still
    // holds every cell of those layers; embedding rows (and every token of a
    // re-routing rerun) keep their residual stream at P in F32. With
    // `probe` (selection at S = P), every held micro-batch also writes layer
    // P's K/V and captures the query window's queries there as it passes.
    void hold_from_layer(int layer, bool probe = false);
    int hold_layer() const { return held_.layer; }  // -1: none
    int n_held() const { return static_cast<int>(held_.tokens.size()); }
    // For selection at S = P: writes layer P's K/V for every held token that
    // was not probed as it passed, and captures the query window's queries
    // there, without running the layer. Those tokens must have their rows.
    void probe_held_layer();
    // Before compact_kv: recomputes the residual stream at P of the held
    // tokens that keep no row (given as ids) and whose cells `kept_cells`
    // lists (ascending; nullptr: all of them), through [0, P) over the dense
    // cache: their K/V are there already, so nothing is stored and every
    // other cell stays as it was. Per row the same graph as the first pass:
    // the same answer, holding only the kept tokens' rows.
    void replay_held(const std::vector<int32_t> * kept_cells);
    // Runs the held tokens through [P, n_layer) and clears the hold: after
    // compact_kv, only the tokens whose cells the sparse heads keep (every KV
    // head of those layers must be sparse; replay_held(kept) must have run
    // before compact_kv), else all of them. Leaves the logits of the last
    // token, which must be kept.
    void finish_held();

    // --- re-routing (SparseConfig::reroute) ------------------------------------
    // From an empty context on, every eval also keeps its tokens' residual
    // stream at `layer` (S, < n_layer) on the host: the whole conversation, so
    // that a follow-up question can rebuild layers [S, n_layer) for itself.
    void log_residual_at(int layer);
    // Undoes the routing of layers [S, n_layer) for a new question: the cache
    // is dense again, layers [0, S) as they were (they must keep every KV head
    // at full length), and every logged token runs [S, hold_layer) again and
    // is held at hold_layer (S <= hold_layer <= n_layer; n_layer: no hold, the
    // tokens run every layer). The question then goes as the first one did:
    // eval with query capture, probe_held_layer, selection, replay_held,
    // compact_kv, finish_held.
    void rewind_to_logged_layer(int hold_layer);

    // Called after each micro-batch with the tokens done of the n a run takes
    // through its layers; returning false stops the eval (ErrorKind::Aborted,
    // the context half-updated: reset() it). Null: none.
    void set_batch_callback(std::function<bool(int done, int total)> callback) {
        batch_callback_ = std::move(callback);
    }

    // Dense cache only, for tests: cells no query may see (mask -INF).
    void set_hidden_cells(const std::vector<int32_t> & cells);
    void reset();

private:
    const Model & model_;
    int n_ctx_;
    int n_batch_;
    std::unique_ptr<KvCache> kv_;
    size_t retired_kv_peak_ = 0;  // peaks of caches replaced since the last reset
    size_t compute_peak_ = 0;
    ggml_backend_sched_t sched_ = nullptr;
    std::vector<uint8_t> graph_meta_;  // memory for graph and tensor headers
    size_t graph_size_ = 0;
    int n_past_ = 0;
    int next_pos_ = 0;
    int n_sparse_cells_ = 0;  // compact cells in use (after compact_kv)
    int capture_q_ = 0;
    int n_captured_q_ = 0;
    std::vector<std::vector<float>> captured_q_;
    std::vector<bool> hidden_cells_;          // set_hidden_cells
    std::vector<int32_t> kept_cells_;         // compact_kv: cells the sparse heads keep
    int window_pruned_from_ = kNoPrunedZone;  // compact_kv's pruned_from (MicroBatch::window_pruned_from)
    std::vector<bool> window_hidden_;         // compact_kv: cells before it that are not kept
    std::vector<int32_t> cell_pos_;           // per cell, its (first) rope position: the window counts positions
    std::vector<int32_t> cell_block_;         // per cell, its bidirectional block (eval_embd's blocks), or -1
    std::vector<int32_t> sparse_cell_block_;  // the same per compact cell (after compact_kv)
    int n_blocks_ = 0;                        // block ids handed out since the last reset
    std::function<bool(int, int)> batch_callback_;

    // Tokens waiting at a layer, with their residual stream there (that
    // layer's input), on the host. Held tokens keep F32 rows, so finishing
    // them gives the same bits as one pass; the re-routing log keeps F16 rows
    // (every token of the conversation waits there; a rerun stays within the
    // tested tolerance). Rows are written and read micro-batch by micro-batch
    // (run_layers), never as one more copy of a whole span.
    struct RowSpan {
        float * f32 = nullptr;  // one of the two is set, or neither (layer 0: no rows)
        ggml_fp16_t * f16 = nullptr;
    };
    // n_values from one span to another, converting between F32 and F16; no-op when `from` is empty.
    static void copy_rows(RowSpan from, RowSpan to, size_t n_values);
    struct ResidualRows {
        int layer = -1;        // -1: none
        int first_cell = 0;    // cell of tokens[0]; the cells are contiguous
        bool half = false;     // rows in F16 instead of F32
        bool replay = false;   // tokens from ids keep no row while all before them keep none (replay_held)
        bool probe = false;    // hold_from_layer(probe): layer `layer`'s K/V written as tokens pass
        size_t n_rowless = 0;  // the first n_rowless tokens keep no row (their slots, if any, are unset)
        size_t n_probed = 0;   // the first n_probed tokens have layer `layer`'s K/V written
        std::vector<int32_t> tokens;
        std::vector<std::vector<int32_t>> pos_rows;  // n_pos_per_token rows of positions
        std::vector<float> rows_f32;                 // [n_embd, tokens.size()] at `layer` (none at 0), or
        std::vector<ggml_fp16_t> rows_f16;           // the same in F16 when `half`
        std::vector<float> replayed;                 // [n_embd, kept rowless tokens] at `layer`, from replay_held
        // DeepStack rows still to add after layers [layer, n_deepstack) (Qwen3-VL;
        // n_ds of them per token, zeros for text), indexed as rows_f32.
        int n_ds = 0;
        std::vector<float> deepstack;
        bool replayed_ready = false;
        static ResidualRows at(int layer, int n_pos_rows, bool half);  // empty, with its position rows
        // Adds n tokens from `cell` (pos: n_pos_per_token rows of n values;
        // `ids`: given as token ids) and room for their rows; returns the rows
        // (none at layer 0, none for rowless tokens).
        RowSpan extend(int cell, const int32_t * new_tokens, int n, const int32_t * pos, int n_embd, bool ids);
        RowSpan rows(size_t token, int n_embd);  // the rows from `token` on
        float * deepstack_rows(size_t token, int n_embd) { return deepstack.data() + token * n_ds * n_embd; }
        void truncate(size_t n_tokens);               // back to the first n_tokens (a run that failed)
        std::vector<int32_t> flat_positions() const;  // the rows end to end
        size_t bytes() const;                         // host memory it holds
    };
    ResidualRows held_;    // hold_from_layer: waiting for finish_held()
    ResidualRows logged_;  // log_residual_at: every token of the conversation, for re-routing
    std::vector<int32_t> tokens_;
    std::vector<float> logits_;

    void note_compute_bytes();
    void replace_cache(std::unique_ptr<KvCache> fresh);
    std::vector<int32_t> rope_positions(int n, const TokenPositions * positions) const;
    void check_fits(const std::vector<int32_t> & tokens) const;
    // eval_staged() for token ids, or for embedding rows when embd is set.
    void eval_input(const std::vector<int32_t> & tokens, const float * embd, bool all_logits, int split,
                    const TokenPositions * positions, const std::vector<int32_t> * blocks = nullptr);
    // Records the new cells' bidirectional blocks (eval_embd's labels made context-wide).
    void add_cell_blocks(int n, const std::vector<int32_t> * blocks);
    int block_of(int cell) const { return size_t(cell) < cell_block_.size() ? cell_block_[cell] : -1; }
    // One past the last cell of `cell`'s block (cell + 1 for a causal cell).
    int block_end(int cell) const;
    // n tokens through layers [begin, end), in micro-batches (run_layers).
    struct LayerRun {
        const int32_t * tokens = nullptr;     // token ids (the cells' ids; layer 0's input without residual_in)
        const float * residual_in = nullptr;  // residual rows [n_embd, n] at `begin` (at 0: embedding rows)
        size_t residual_in_stride = 0;        // floats from one input row to the next (0: n_embd)
        // DeepStack rows of layers [begin, n_deepstack) per token (first one at
        // `deepstack`, the next `deepstack_stride` floats on); null: none.
        const float * deepstack = nullptr;
        size_t deepstack_stride = 0;
        const ggml_fp16_t * residual_in_half = nullptr;  // or the same in F16 (begin > 0)
        void input(RowSpan r) { residual_in = r.f32, residual_in_half = r.f16; }
        const int32_t * pos = nullptr;  // n_pos_per_token rows of n positions
        int n = 0;
        int first_cell = 0;                         // KV cell of the first token
        int first_sparse_cell = 0;                  // its compact cell (after compact_kv)
        int begin = 0, end = 0;                     // layers
        bool all_logits = false;                    // end == n_layer: logits of every row, else of the last
        float * residual_out = nullptr;             // end < n_layer: the residual rows at `end`
        ggml_fp16_t * residual_out_half = nullptr;  // or the same in F16
        void output(RowSpan r) { residual_out = r.f32, residual_out_half = r.f16; }
        bool kv_only = false;  // selection probe: layer `begin` writes its K/V only (probe_held_layer)
        // Each micro-batch then also writes layer `end`'s K/V (kv_only) from its rows at `end`.
        bool probe_end = false;
        const int32_t * cells = nullptr;         // replay: the tokens' cells (MicroBatch::cells)
        const int32_t * window_cells = nullptr;  // the pruned zone's kept tokens (MicroBatch::window_cells)
    };
    // Output: the residual rows at `end` into residual_out when end < n_layer,
    // else logits_ (every row or the last). The last micro-batch holds the
    // whole query window (capture_q_ tokens) when queries are captured.
    void run_layers(const LayerRun & run);
    // How many of the nb tokens at `cells` (ascending) one micro-batch takes
    // so the sliding-window rings can store them all (window_cells runs).
    int window_batch(const int32_t * cells, int nb) const;
    // How many of the nb tokens from run token i one micro-batch takes so it
    // ends at a block's end, unless the block starts at i (larger than a batch).
    int block_batch(const LayerRun & run, int i, int nb) const;
    // Runs one micro-batch over mb's layer range. Input: token ids, or the
    // residual [n_embd, n_tokens] when the range starts past layer 0. Output:
    // logits rows, or the residual when the range stops early (may be null).
    void eval_micro_batch(const int32_t * tokens, const float * residual_in, const int32_t * pos, int pos_stride,
                          const MicroBatch & mb, float * out, const float * deepstack = nullptr);
};

}  // namespace hts
