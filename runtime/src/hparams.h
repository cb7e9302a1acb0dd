// Hyper-parameters of a text decoder, read from GGUF metadata by the
// architecture's load_hparams.
#pragma once

#include <cstdint>
#include <string>

namespace hts {

struct HParams {
    std::string arch;     // general.architecture
    int n_layer = 0;      // L
    int n_embd = 0;       // hidden size
    int n_head = 0;       // H, query heads
    int n_head_kv = 0;    // G, KV heads
    int n_embd_head = 0;  // head dimension
    int n_ff = 0;         // feed-forward size
    int n_vocab = 0;
    int n_ctx_train = 0;
    float rms_eps = 1e-6f;
    float rope_freq_base = 10000.0f;
    float rope_freq_scale = 1.0f;
    int rope_type = 0;                    // GGML_ROPE_TYPE_*
    int n_rot = 0;                        // rotary dimensions
    int rope_sections[4] = {0, 0, 0, 0};  // M-RoPE t/y/x/e sections (qwen2vl)
    int n_pos_per_token = 1;              // 4 for M-RoPE

    int n_embd_kv() const { return n_embd_head * n_head_kv; }
    int n_gqa() const { return n_head / n_head_kv; }
};

}  // namespace hts
