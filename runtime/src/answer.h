// The model's reply to a conversation, streamed a piece at a time: sampling,
// stop strings, whole UTF-8 characters, the end of the assistant's turn.
//
//     hts::Answer a(conversation, params);
//     for (std::string piece; a.next(piece);) std::fputs(piece.c_str(), stdout);
//     a.finish_reason();   // "stop", "length", "context" or "cancelled"
#pragma once

#include "sampler.h"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace hts {

class Conversation;

struct AnswerParams {
    SamplerParams sampling;
    int max_tokens = 256;           // > 0
    std::vector<std::string> stop;  // the answer ends before the first of these
};

class Answer {
public:
    // Opens the assistant's reply and selects (Conversation::begin_answer).
    Answer(Conversation & conversation, const AnswerParams & params);
    ~Answer();
    Answer(const Answer &) = delete;
    Answer & operator=(const Answer &) = delete;

    // Decodes one token. `piece` is the text that became final with it: whole
    // UTF-8 characters, nothing that might still turn out to start a stop
    // string (often empty). Returns false, with an empty piece, once the
    // answer has ended; the call that ends it returns its last text.
    bool next(std::string & piece);
    // Ends the answer early (the caller stops reading): the turn is closed as
    // after a whole answer, and finish_reason() is "cancelled".
    void cancel();

    bool done() const { return done_; }
    const std::string & finish_reason() const { return finish_reason_; }
    int n_tokens() const { return n_tokens_; }          // tokens sampled, end-of-generation included
    const std::string & text() const { return text_; }  // everything decoded so far (stop string included)

private:
    Conversation & conv_;
    AnswerParams params_;
    std::unique_ptr<Sampler> sampler_;
    std::chrono::steady_clock::time_point started_, first_at_;
    std::string text_;    // the answer's bytes
    size_t emitted_ = 0;  // bytes of text_ handed out
    int n_tokens_ = 0;
    bool done_ = false;
    std::string finish_reason_ = "length";

    size_t final_end() const;  // how far text_ is final (no partial character or stop string at its end)
    std::string take(size_t end);
    void finish(const std::string & reason);
};

}  // namespace hts
