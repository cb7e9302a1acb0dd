// qwen2: Qwen2 / Qwen2.5 text models (and the LLaVA-OneVision / LLaVA-Video
// backbones). Llama-style decoder with q/k/v biases and NEOX rope.
#include "architecture.h"
#include "decoder_common.h"

namespace hts {
namespace {

class Qwen2 final : public Architecture {
public:
    const char * name() const override { return "qwen2"; }

    void load_hparams(const GgufFile & file, HParams & hp) const override {
        load_decoder_hparams(file, "qwen2", hp);
        hp.rope_type = GGML_ROPE_TYPE_NEOX;
    }

    void load_tensors(TensorLoader & loader, const HParams & hp, ModelWeights & w) const override {
        load_decoder_tensors(loader, hp, w, {/*qkv_bias=*/true});
    }

    ggml_tensor * build_graph(GraphContext & gc) const override { return build_decoder_graph(gc); }
};

}  // namespace

const Architecture & qwen2_architecture() {
    static const Qwen2 arch;
    return arch;
}

}  // namespace hts
