// Hyper-parameters of a text decoder, read from GGUF metadata by the
// architecture's load_hparams.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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
    int n_deepstack = 0;                  // qwen3vl: layers after which visual tokens get extra features

    // Gemma 3. Sliding-window layers see the n_swa cells up to their own
    // (cells in arrival order, which are the positions of a text prompt).
    int n_swa = 0;                        // 0: no sliding-window layers
    std::vector<bool> swa_layers;         // per layer: attends over the window only
    float rope_freq_base_swa = 10000.0f;  // rope of the window layers (scale 1)
    float attn_q_scale = 0.0f;            // q scaled by this, attention at scale 1 (0: 1/sqrt(head_dim))
    float embd_scale = 0.0f;              // token embeddings times this (0: as they are)
    float final_logit_softcap = 0.0f;     // logits = c * tanh(logits / c) (0: none)

    bool is_swa(int il) const { return n_swa > 0 && il < int(swa_layers.size()) && swa_layers[il]; }

    int n_embd_kv() const { return n_embd_head * n_head_kv; }
    // Width of an input embedding row: the token's own row, then one row per
    // DeepStack layer (added to the residual after layer il < n_deepstack),
    // as libmtmd hands Qwen3-VL's visual tokens out (llama_model_n_embd_inp).
    int n_embd_inp() const { return n_embd * (1 + n_deepstack); }
    int n_gqa() const { return n_head / n_head_kv; }
};

}  // namespace hts
