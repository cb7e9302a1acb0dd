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

    // Appends tokens at the next positions and runs them through the model.
    // Keeps the logits of the last token, or of every token when all_logits.
    // Throws ContextOverflow (nothing evaluated) when they do not fit.
    void eval(const std::vector<int32_t> & tokens, bool all_logits);

    // Logits rows of the last eval: n_logit_rows() x n_vocab, row-major.
    const std::vector<float> & logits() const { return logits_; }
    int n_logit_rows() const;
    const float * last_logits() const;

    int n_past() const { return n_past_; }
    int n_ctx() const { return n_ctx_; }
    const std::vector<int32_t> & tokens() const { return tokens_; }
    size_t kv_bytes() const { return kv_->bytes(); }
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
    std::vector<int32_t> tokens_;
    std::vector<float> logits_;

    void reserve();
    void eval_micro_batch(const int32_t * tokens, const MicroBatch & mb, float * logits_out);
};

}  // namespace hts
