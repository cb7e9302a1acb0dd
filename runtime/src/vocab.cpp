#include "vocab.h"

#include "errors.h"
#include "llama.h"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace hts {

static std::atomic<bool> g_verbose{false};

static void log_callback(ggml_log_level level, const char * text, void *) {
    if (g_verbose || level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

static void init_llama_once() {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_set(log_callback, nullptr);
        llama_backend_init();
    });
}

void set_verbose_logging(bool verbose) {
    init_llama_once();
    g_verbose = verbose;
}

bool verbose_logging() { return g_verbose; }

Vocab::Vocab(const std::string & gguf_path) {
    init_llama_once();
    llama_model_params params = llama_model_default_params();
    params.vocab_only = true;
    model_ = llama_model_load_from_file(gguf_path.c_str(), params);
    if (!model_)
        fail(ErrorKind::InvalidFile, format("libllama could not read the tokenizer of '%s'", gguf_path.c_str()));
    vocab_ = llama_model_get_vocab(model_);
}

Vocab::~Vocab() {
    if (model_) llama_model_free(model_);
}

std::vector<int32_t> Vocab::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    std::vector<llama_token> out(text.size() + 8);
    int32_t n = llama_tokenize(vocab_, text.data(), static_cast<int32_t>(text.size()), out.data(),
                               static_cast<int32_t>(out.size()), add_special, parse_special);
    if (n < 0) {
        if (n == INT32_MIN) fail(ErrorKind::InvalidArgument, "text too long to tokenize");
        out.resize(-n);
        n = llama_tokenize(vocab_, text.data(), static_cast<int32_t>(text.size()), out.data(),
                           static_cast<int32_t>(out.size()), add_special, parse_special);
    }
    out.resize(n);
    return out;
}

std::string Vocab::token_to_piece(int32_t token, bool special) const {
    if (token < 0 || token >= n_tokens()) fail(ErrorKind::InvalidArgument, format("token id %d out of range", token));
    char buf[256];
    int32_t n = llama_token_to_piece(vocab_, token, buf, sizeof(buf), 0, special);
    if (n >= 0) return std::string(buf, n);
    std::string big(-n, '\0');
    n = llama_token_to_piece(vocab_, token, big.data(), static_cast<int32_t>(big.size()), 0, special);
    return big.substr(0, n < 0 ? 0 : n);
}

std::string Vocab::detokenize(const std::vector<int32_t> & tokens, bool special) const {
    for (int32_t t : tokens) {
        if (t < 0 || t >= n_tokens()) fail(ErrorKind::InvalidArgument, format("token id %d out of range", t));
    }
    std::string out(tokens.size() * 8 + 16, '\0');
    int32_t n = llama_detokenize(vocab_, tokens.data(), static_cast<int32_t>(tokens.size()), out.data(),
                                 static_cast<int32_t>(out.size()), false, special);
    if (n < 0) {
        out.resize(-n);
        n = llama_detokenize(vocab_, tokens.data(), static_cast<int32_t>(tokens.size()), out.data(),
                             static_cast<int32_t>(out.size()), false, special);
    }
    out.resize(n < 0 ? 0 : n);
    return out;
}

int Vocab::n_tokens() const { return llama_vocab_n_tokens(vocab_); }
bool Vocab::is_eog(int32_t token) const { return llama_vocab_is_eog(vocab_, token); }
int32_t Vocab::bos() const { return llama_vocab_bos(vocab_); }
bool Vocab::add_bos() const { return llama_vocab_get_add_bos(vocab_); }

std::string Vocab::chat_template() const {
    const char * t = llama_model_chat_template(model_, nullptr);
    return t ? t : "";
}

std::string Vocab::apply_chat_template(const std::vector<ChatMessage> & messages, bool add_assistant) const {
    std::vector<llama_chat_message> msgs;
    size_t total = 0;
    for (const auto & m : messages) {
        msgs.push_back({m.role.c_str(), m.content.c_str()});
        total += m.role.size() + m.content.size();
    }
    const char * tmpl = llama_model_chat_template(model_, nullptr);
    std::string buf(2 * total + 256, '\0');
    int32_t n = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), add_assistant, buf.data(),
                                          static_cast<int32_t>(buf.size()));
    if (n > static_cast<int32_t>(buf.size())) {
        buf.resize(n);
        n = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), add_assistant, buf.data(), n);
    }
    if (n < 0) {
        fail(ErrorKind::UnsupportedModel,
             "the model's chat template is not one libllama knows; use add_text() with the prompt format instead");
    }
    buf.resize(n);
    return buf;
}

std::pair<std::string, std::string> Vocab::turn_text(const std::string & role) const {
    static const std::string mark = "@@htsparse-turn-content@@";  // no template renders it by itself
    const std::string rendered = apply_chat_template({{role, mark}}, false);
    const size_t at = rendered.find(mark);
    if (at == std::string::npos)
        fail(ErrorKind::UnsupportedModel, "the model's chat template drops the message content");
    return {rendered.substr(0, at), rendered.substr(at + mark.size())};
}

std::string Vocab::assistant_header() const {
    const std::string bare = apply_chat_template({{"user", "x"}}, false);
    return apply_chat_template({{"user", "x"}}, true).substr(bare.size());
}

}  // namespace hts
