// One conversation's mutable state over a shared immutable Model: the KV cache,
// the backend scheduler and the logits of the last evaluated batch. Tokens are
// evaluated in micro-batches of n_batch, each its own graph.
#pragma once

#include "ggml-backend.h"
#include "kv_cache.h"

#include <cstdint>
#include <memory>
#include <vector>

namespace hts {

class Model;
struct MicroBatch;

// Explicit rope positions for a batch of n tokens, stream-major: n_streams rows
// of n values. One row serves every rope stream; M-RoPE models also take three
// rows (time, height, width), the fourth stream being unused and zero.
struct TokenPositions {
    int n_streams = 1;
    std::vector<int32_t> values;  // n_streams * n
};

struct SessionParams {
    int n_ctx = 4096;   // KV cells; 0: the model's training context
    int n_batch = 512;  // tokens per micro-batch
};

class Session {
public:
    Session(const Model & model, const SessionParams & params);
    ~Session();
    Session(const Session &) = delete;
    Session & operator=(const Session &) = delete;

    // Appends tokens to the next KV cells and runs them through the model.
    // Keeps the logits of the last token, or of every token when all_logits.
    // Rope positions default to next_pos(), next_pos() + 1, ...; `positions`
    // overrides them (see TokenPositions). Throws ContextOverflow (nothing
    // evaluated) when the tokens do not fit.
    void eval(const std::vector<int32_t> & tokens, bool all_logits, const TokenPositions * positions = nullptr);

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
    size_t kv_bytes() const { return kv_->bytes(); }          // what the cache tensors hold
    size_t kv_bytes_dense() const;                             // what one dense cache of n_ctx holds

    // Splits every layer's KV heads into full heads (every cell) and sparse
    // heads (kept_cells only), freeing the dense cache; later tokens go to
    // both and attend through hts_routed_attention. Undone by reset().
    void compact_kv(const std::vector<std::vector<bool>> & full_kv, const std::vector<int32_t> & kept_cells);
    // The next evals keep, per layer, the roped queries of their last n
    // tokens (the query window), for select_sparse(). 0 turns it off.
    void set_query_capture(int n) { capture_q_ = n; }
    // Per layer F32 [head_dim, n_head, n_captured_q()], from the last eval.
    const std::vector<std::vector<float>> & captured_queries() const { return captured_q_; }
    int n_captured_q() const { return n_captured_q_; }
    const KvCache & kv_cache() const { return *kv_; }
    const Model & model() const { return model_; }

    // Dense cache only, for tests: cells no query may see (mask -INF).
    void set_hidden_cells(const std::vector<int32_t> & cells);
    void reset();

private:
    const Model & model_;
    int n_ctx_;
    int n_batch_;
    std::unique_ptr<KvCache> kv_;
    ggml_backend_sched_t sched_ = nullptr;
    std::vector<uint8_t> graph_meta_;  // memory for graph and tensor headers
    size_t graph_size_ = 0;
    int n_past_ = 0;
    int next_pos_ = 0;
    int n_sparse_cells_ = 0;          // compact cells in use (after compact_kv)
    int capture_q_ = 0;
    int n_captured_q_ = 0;
    std::vector<std::vector<float>> captured_q_;
    std::vector<bool> hidden_cells_;  // set_hidden_cells
    std::vector<int32_t> tokens_;
    std::vector<float> logits_;

    void reserve();
    std::vector<int32_t> rope_positions(int n, const TokenPositions * positions) const;
    void check_fits(const std::vector<int32_t> & tokens) const;
    // Runs one micro-batch over mb's layer range. Input: token ids, or the
    // residual [n_embd, n_tokens] when the range starts past layer 0. Output:
    // logits rows, or the residual when the range stops early (may be null).
    void eval_micro_batch(const int32_t * tokens, const float * residual_in, const int32_t * pos, int pos_stride,
                          const MicroBatch & mb, float * out);
};

}  // namespace hts
