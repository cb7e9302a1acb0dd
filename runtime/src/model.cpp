#include "model.h"

#include "errors.h"
#include "tensor_loader.h"

namespace hts {

static std::string supported_list() {
    std::string s;
    for (const auto & name : supported_architectures()) s += (s.empty() ? "" : ", ") + name;
    return s;
}

Model::Model(const std::string & path, const ModelParams & params) {
    set_verbose_logging(params.verbose);
    file_ = std::make_unique<GgufFile>(path);
    const std::string arch_name = file_->get_string("general.architecture", "");
    arch_ = find_architecture(arch_name);
    if (!arch_) {
        fail(ErrorKind::UnsupportedModel,
             format("unsupported architecture '%s' in '%s'; supported: %s",
                    arch_name.empty() ? "(none)" : arch_name.c_str(), path.c_str(), supported_list().c_str()));
    }
    arch_->load_hparams(*file_, hparams_);
    backends_ = std::make_unique<Backends>(params.device, params.n_threads);
    try {
        TensorLoader loader(*file_, *backends_);
        arch_->load_tensors(loader, hparams_, weights_);
        loader.load(contexts_, buffers_);
        vocab_ = std::make_unique<Vocab>(path);
    } catch (...) {
        release();
        throw;
    }
    if (vocab_->n_tokens() > hparams_.n_vocab) {
        release();
        fail(ErrorKind::InvalidFile, format("'%s': the tokenizer has %d tokens but the embedding table only %d",
                                            path.c_str(), vocab_->n_tokens(), hparams_.n_vocab));
    }
}

Model::~Model() { release(); }

void Model::release() {
    for (auto b : buffers_) ggml_backend_buffer_free(b);
    for (auto c : contexts_) ggml_free(c);
    buffers_.clear();
    contexts_.clear();
}

std::vector<std::pair<std::string, std::string>> Model::weight_placement() const {
    std::vector<std::pair<std::string, std::string>> out;
    for (ggml_context * ctx : contexts_) {
        for (ggml_tensor * t = ggml_get_first_tensor(ctx); t; t = ggml_get_next_tensor(ctx, t)) {
            const char * buft = t->buffer ? ggml_backend_buft_name(ggml_backend_buffer_get_type(t->buffer)) : "";
            out.emplace_back(ggml_get_name(t), buft);
        }
    }
    return out;
}

size_t Model::weight_bytes() const {
    size_t total = 0;
    for (auto b : buffers_) total += ggml_backend_buffer_get_size(b);
    return total;
}

}  // namespace hts
