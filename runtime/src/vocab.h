// Tokenizer, detokenizer and chat template, taken from libllama with the GGUF
// loaded vocab_only (no weights), so tokenization is exactly llama.cpp's.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

struct llama_model;
struct llama_vocab;

namespace hts {

struct ChatMessage {
    std::string role;
    std::string content;
};

class Vocab {
public:
    explicit Vocab(const std::string & gguf_path);
    ~Vocab();
    Vocab(const Vocab &) = delete;
    Vocab & operator=(const Vocab &) = delete;

    // parse_special: text such as "<|im_start|>" becomes its special token.
    std::vector<int32_t> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    std::string token_to_piece(int32_t token, bool special) const;  // raw bytes, may be partial UTF-8
    std::string detokenize(const std::vector<int32_t> & tokens, bool special) const;

    int n_tokens() const;
    bool is_eog(int32_t token) const;  // end of generation (eos, eot, ...)
    int32_t bos() const;
    bool add_bos() const;

    std::string chat_template() const;  // the GGUF's template, "" if none
    // Renders messages with the GGUF's template (chatml when it has none);
    // add_assistant appends the header that starts the model's reply.
    std::string apply_chat_template(const std::vector<ChatMessage> & messages, bool add_assistant) const;
    // The template's text before and after the content of one turn of `role`.
    std::pair<std::string, std::string> turn_text(const std::string & role) const;
    // What the template puts before the assistant's answer.
    std::string assistant_header() const;

    const llama_vocab * raw() const { return vocab_; }
    const llama_model * raw_model() const { return model_; }  // vocab_only: no weights, n_embd 0

private:
    llama_model * model_ = nullptr;
    const llama_vocab * vocab_ = nullptr;
};

// Routes libllama / ggml log output: errors always, the rest only when verbose.
void set_verbose_logging(bool verbose);
bool verbose_logging();

}  // namespace hts
