// qwen3: Qwen3 text models. Qwen2's layers without q/k/v biases, with an RMS
// norm of each query and key head before rope (attn_q_norm, attn_k_norm);
// NEOX rope; head_dim from attention.key_length (128 in every released size,
// not n_embd / n_head).
#include "architecture.h"
#include "decoder_common.h"

namespace hts {
namespace {

class Qwen3 final : public Architecture {
public:
    const char * name() const override { return "qwen3"; }

    void load_hparams(const GgufFile & file, HParams & hp) const override {
        load_decoder_hparams(file, "qwen3", hp);
        hp.rope_type = GGML_ROPE_TYPE_NEOX;
    }

    void load_tensors(TensorLoader & loader, const HParams & hp, ModelWeights & w) const override {
        DecoderLayout layout;
        layout.qk_norm = true;
        load_decoder_tensors(loader, hp, w, layout);
    }

    ggml_tensor * build_graph(GraphContext & gc) const override { return build_decoder_graph(gc); }
};

}  // namespace

const Architecture & qwen3_architecture() {
    static const Qwen3 arch;
    return arch;
}

}  // namespace hts
