// An immutable loaded model: hyper-parameters, weights on their devices, the
// tokenizer, and the architecture that builds its graph. Contexts (mutable,
// one per conversation) borrow it; many contexts may share one model.
#pragma once

#include "arch/architecture.h"
#include "backend.h"
#include "gguf_file.h"
#include "hparams.h"
#include "vocab.h"

#include <memory>
#include <string>
#include <vector>

namespace hts {

struct LayerWeights {
    ggml_tensor * attn_norm = nullptr;                           // [n_embd]
    ggml_tensor *wq = nullptr, *wk = nullptr, *wv = nullptr;     // [n_embd, n_embd | n_embd_kv]
    ggml_tensor *bq = nullptr, *bk = nullptr, *bv = nullptr;     // optional biases
    ggml_tensor *attn_q_norm = nullptr, *attn_k_norm = nullptr;  // optional per-head RMS norms [head_dim] (qwen3)
    ggml_tensor * wo = nullptr;                                  // [n_embd, n_embd]
    ggml_tensor * attn_post_norm = nullptr;                      // [n_embd], gemma3: on the attention output
    ggml_tensor * ffn_norm = nullptr;                            // [n_embd]
    ggml_tensor * ffn_post_norm = nullptr;                       // [n_embd], gemma3: on the FFN output
    ggml_tensor *ffn_gate = nullptr, *ffn_up = nullptr;          // [n_embd, n_ff]
    ggml_tensor * ffn_down = nullptr;                            // [n_ff, n_embd]
};

struct ModelWeights {
    ggml_tensor * tok_embd = nullptr;     // [n_embd, n_vocab], host side (get_rows)
    ggml_tensor * output_norm = nullptr;  // [n_embd]
    ggml_tensor * output = nullptr;       // [n_embd, n_vocab]; a copy of tok_embd when tied
    ggml_tensor * rope_freqs = nullptr;   // optional [n_rot/2] frequency factors (llama 3)
    std::vector<LayerWeights> layers;
};

struct ModelParams {
    std::string device = "auto";
    int n_threads = 0;  // 0: all hardware threads
    bool verbose = false;
};

class Model {
public:
    // Loads `path`; throws hts::Error on any problem with the file.
    Model(const std::string & path, const ModelParams & params);
    ~Model();
    Model(const Model &) = delete;
    Model & operator=(const Model &) = delete;

    const HParams & hparams() const { return hparams_; }
    const ModelWeights & weights() const { return weights_; }
    const Architecture & arch() const { return *arch_; }
    const Vocab & vocab() const { return *vocab_; }
    Backends & backends() const { return *backends_; }
    const GgufFile & file() const { return *file_; }
    size_t weight_bytes() const;
    // Each weight's name and the name of the buffer type it lives in (CPU,
    // CPU_REPACK, CUDA0...): where the loader put it.
    std::vector<std::pair<std::string, std::string>> weight_placement() const;

private:
    std::unique_ptr<GgufFile> file_;
    std::unique_ptr<Backends> backends_;
    std::unique_ptr<Vocab> vocab_;
    const Architecture * arch_ = nullptr;
    HParams hparams_;
    ModelWeights weights_;
    std::vector<ggml_context *> contexts_;
    std::vector<ggml_backend_buffer_t> buffers_;

    void release();
};

}  // namespace hts
