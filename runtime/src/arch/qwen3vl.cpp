// qwen3vl: the text decoder of Qwen3-VL. Qwen3's layers (per-head q/k norms,
// no biases) with interleaved M-RoPE (GGML_ROPE_TYPE_IMROPE: the t/h/w
// sections alternate over the rotary pairs instead of following one another
// as in Qwen2-VL), sections from qwen3vl.rope.dimension_sections.
// DeepStack (qwen3vl.n_deepstack_layers = D): the mmproj gives each visual
// token D more rows beside its embedding (input rows n_embd * (1 + D) wide);
// row il + 1 is added to the residual after layer il < D (decoder_common's
// add_deepstack, as llama.cpp's qwen3vl graph does). Text tokens have none.
#include "architecture.h"
#include "decoder_common.h"
#include "errors.h"

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
        if (hp.n_deepstack < 0 || hp.n_deepstack >= hp.n_layer) {
            fail(ErrorKind::InvalidFile, format("'%s': qwen3vl.n_deepstack_layers is %d; it must be in [0, %d)",
                                                file.path().c_str(), hp.n_deepstack, hp.n_layer));
        }
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
