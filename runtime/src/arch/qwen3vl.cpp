// qwen3vl: the text decoder of Qwen3-VL. Qwen3's layers (per-head q/k norms,
// no biases) with interleaved M-RoPE (GGML_ROPE_TYPE_IMROPE: the t/h/w
// sections alternate over the rotary pairs instead of following one another
// as in Qwen2-VL), sections from qwen3vl.rope.dimension_sections.
// DeepStack (qwen3vl.n_deepstack_layers): the mmproj gives each visual token
// extra feature vectors, added to the residual after the first layers; the
// runtime does not feed them yet, so images and video on these models are
// refused at Vision load, and text runs as llama.cpp runs it.
#include "architecture.h"
#include "decoder_common.h"

namespace hts {
namespace {

class Qwen3VL final : public Architecture {
public:
    const char * name() const override { return "qwen3vl"; }

    void load_hparams(const GgufFile & file, HParams & hp) const override {
        load_decoder_hparams(file, "qwen3vl", hp);
        hp.rope_type = GGML_ROPE_TYPE_IMROPE;
        load_mrope_sections(file, "qwen3vl", hp);
        hp.n_deepstack = static_cast<int>(file.get_int("qwen3vl.n_deepstack_layers", 0));
    }

    void load_tensors(TensorLoader & loader, const HParams & hp, ModelWeights & w) const override {
        DecoderLayout layout;
        layout.qk_norm = true;
        load_decoder_tensors(loader, hp, w, layout);
    }

    ggml_tensor * build_graph(GraphContext & gc) const override { return build_decoder_graph(gc); }
};

}  // namespace

const Architecture & qwen3vl_architecture() {
    static const Qwen3VL arch;
    return arch;
}

}  // namespace hts
