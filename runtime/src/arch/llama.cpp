// llama: Llama 2/3 and SmolLM2 (the SmolVLM2 text decoder). No q/k/v biases,
// normal (GPT-J style) rope with optional per-dimension frequency factors.
#include "architecture.h"
#include "decoder_common.h"

namespace hts {
namespace {

class Llama final : public Architecture {
public:
    const char * name() const override { return "llama"; }

    void load_hparams(const GgufFile & file, HParams & hp) const override {
        load_decoder_hparams(file, "llama", hp);
        hp.rope_type = GGML_ROPE_TYPE_NORMAL;
    }

    void load_tensors(TensorLoader & loader, const HParams & hp, ModelWeights & w) const override {
        load_decoder_tensors(loader, hp, w, {});
    }

    ggml_tensor * build_graph(GraphContext & gc) const override { return build_decoder_graph(gc); }
};

}  // namespace

const Architecture & llama_architecture() {
    static const Llama arch;
    return arch;
}

}  // namespace hts
