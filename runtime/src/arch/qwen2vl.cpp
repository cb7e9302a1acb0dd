// qwen2vl: the text decoder of Qwen2-VL and Qwen2.5-VL. Same layers as qwen2;
// rope is M-RoPE: each token has four position streams (time, height, width,
// unused) and the rotary dimensions are split among them by
// qwen2vl.rope.dimension_sections. Text tokens carry one position on the first
// three streams and 0 on the fourth (set by the context).
#include "architecture.h"
#include "decoder_common.h"

namespace hts {
namespace {

class Qwen2VL final : public Architecture {
public:
    const char * name() const override { return "qwen2vl"; }

    void load_hparams(const GgufFile & file, HParams & hp) const override {
        load_decoder_hparams(file, "qwen2vl", hp);
        hp.rope_type = GGML_ROPE_TYPE_MROPE;
        load_mrope_sections(file, "qwen2vl", hp);
    }

    void load_tensors(TensorLoader & loader, const HParams & hp, ModelWeights & w) const override {
        load_decoder_tensors(loader, hp, w, {/*qkv_bias=*/true});
    }

    ggml_tensor * build_graph(GraphContext & gc) const override { return build_decoder_graph(gc); }
};

}  // namespace

const Architecture & qwen2vl_architecture() {
    static const Qwen2VL arch;
    return arch;
}

}  // namespace hts
