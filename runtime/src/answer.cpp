#include "answer.h"

#include "conversation.h"
#include "errors.h"
#include "model.h"

#include <algorithm>

namespace hts {

namespace {
using Clock = std::chrono::steady_clock;

// Bytes at the end of s that start a UTF-8 character not yet complete.
size_t incomplete_utf8_tail(const std::string & s) {
    const size_t n = s.size();
    for (size_t back = 1; back <= std::min<size_t>(3, n); ++back) {
        const unsigned char c = static_cast<unsigned char>(s[n - back]);
        if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
        const size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return len > back ? back : 0;
    }
    return 0;
}
}  // namespace

Answer::Answer(Conversation & conversation, const AnswerParams & params)
    : conv_(conversation), params_(params), started_(Clock::now()) {
    if (params.max_tokens <= 0)
        fail(ErrorKind::InvalidArgument, format("max_tokens must be positive, got %d", params.max_tokens));
    sampler_ = std::make_unique<Sampler>(params.sampling, conv_.model().hparams().n_vocab);
    conv_.begin_answer();
}

Answer::~Answer() = default;

size_t Answer::final_end() const {
    size_t end = text_.size() - incomplete_utf8_tail(text_);
    // Hold back the longest end of the text that a stop string starts with.
    size_t held = 0;
    for (const std::string & stop : params_.stop) {
        for (size_t k = std::min(stop.size() - (stop.empty() ? 0 : 1), end - emitted_); k > held; --k) {
            if (text_.compare(end - k, k, stop, 0, k) == 0) {
                held = k;
                break;
            }
        }
    }
    return end - held;
}

std::string Answer::take(size_t end) {
    std::string piece = end > emitted_ ? text_.substr(emitted_, end - emitted_) : std::string();
    emitted_ = std::max(emitted_, end);
    return piece;
}

void Answer::finish(const std::string & reason) {
    finish_reason_ = reason;
    done_ = true;
    const int n_decoded = n_tokens_ - 1;  // the first token's time is the time to first token
    if (n_decoded > 0) {
        conv_.set_decode_speed(n_decoded / std::chrono::duration<double>(Clock::now() - first_at_).count());
    }
    if (!conv_.close_assistant_turn()) finish_reason_ = "context";
    conv_.answered();
}

bool Answer::next(std::string & piece) {
    piece.clear();
    if (done_) return false;
    if (n_tokens_ >= params_.max_tokens) {
        finish("length");
        piece = take(text_.size());
        return true;
    }
    Context & s = conv_.context();
    const Vocab & vocab = conv_.model().vocab();
    const int32_t token = sampler_->sample(s.last_logits(), conv_.model().hparams().n_vocab);
    sampler_->accept(token);
    if (n_tokens_++ == 0) {
        first_at_ = Clock::now();
        conv_.first_token_at(started_, first_at_);
    }
    if (vocab.is_eog(token)) {
        finish("stop");
        piece = take(text_.size());
        return true;
    }
    text_ += vocab.token_to_piece(token, false);
    if (s.n_past() >= s.n_ctx()) {  // no room for the token itself
        finish("context");
        piece = take(text_.size());
        return true;
    }
    conv_.eval_generated(token);
    size_t hit = std::string::npos;
    for (const std::string & stop : params_.stop) {
        if (!stop.empty()) hit = std::min(hit, text_.find(stop, emitted_ > stop.size() ? emitted_ - stop.size() : 0));
    }
    if (hit != std::string::npos) {
        piece = take(hit);
        finish("stop");
        return true;
    }
    piece = take(final_end());
    return true;
}

void Answer::cancel() {
    if (!done_) finish("cancelled");
}

}  // namespace hts
