// qwen2vl: the text decoder of Qwen2-VL and Qwen2.5-VL. Same layers as qwen2;
// rope is M-RoPE: each token has four position streams (time, height, width,
// unused) and the rotary dimensions are split among them by
// qwen2vl.rope.dimension_sections. Text tokens carry one position on the first
// three streams and 0 on the fourth (set by the context).
#include "architecture.h"
#include "decoder_common.h"
#include "errors.h"

namespace hts {
namespace {

class Qwen2VL final : public Architecture {
public:
    const char * name() const override { return "qwen2vl"; }

    void load_hparams(const GgufFile & file, HParams & hp) const override {
        load_decoder_hparams(file, "qwen2vl", hp);
        hp.rope_type = GGML_ROPE_TYPE_MROPE;
        hp.n_pos_per_token = 4;
        const std::vector<int64_t> sections = file.get_int_array("qwen2vl.rope.dimension_sections");
        if (sections.size() < 3 || sections.size() > 4) {
            fail(ErrorKind::InvalidFile,
                 format("'%s': qwen2vl.rope.dimension_sections must hold 3 or 4 values", file.path().c_str()));
        }
        int64_t total = 0;
        for (size_t i = 0; i < sections.size(); ++i) {
            hp.rope_sections[i] = static_cast<int>(sections[i]);
            total += sections[i];
        }
        // Each section counts rotary pairs, so together they cover n_rot / 2.
        if (sections[0] < 0 || total * 2 > hp.n_rot) {
            fail(ErrorKind::InvalidFile, format("'%s': rope sections cover %lld pairs but rope has %d dimensions",
                                                file.path().c_str(), (long long)total, hp.n_rot));
        }
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
