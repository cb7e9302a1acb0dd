#include "conversation.h"

#include "errors.h"
#include "model.h"
#include "visual_span.h"

#include <algorithm>

namespace hts {

namespace {
using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

void ConversationStats::add_ms(const std::string & stage, double ms) {
    for (auto & [name, value] : prefill_ms) {
        if (name == stage) {
            value += ms;
            return;
        }
    }
    prefill_ms.emplace_back(stage, ms);
}

double ConversationStats::total_prefill_ms() const {
    double total = 0;
    for (const auto & stage : prefill_ms) total += stage.second;
    return total;
}

Conversation::Conversation(const Model & model, const ContextParams & params, const SparseConfig * sparse)
    : model_(model), context_(model, params) {
    if (sparse) {
        sparse_request_ = *sparse;
        sparse_ = std::make_unique<SparseState>(context_, *sparse);
    }
}

void Conversation::set_progress(ProgressFn fn) {
    progress_ = std::move(fn);
    if (!progress_) {
        context_.set_batch_callback(nullptr);
        return;
    }
    context_.set_batch_callback(
        [this](int done, int total) { return in_answer_step_ || progress_("prefill", done, total); });
}

void Conversation::check_usable() const {
    if (stopped_)
        fail(ErrorKind::InvalidArgument,
             "the conversation was stopped midway by its progress callback: reset it first");
}

// Runs work, remembering a stop by the progress callback: the context's
// state is then half-updated and only reset() makes it usable again.
template <typename F> void Conversation::guarded(F && work) {
    check_usable();
    try {
        work();
    } catch (const Error & e) {
        if (e.kind() == ErrorKind::Aborted) stopped_ = true;
        throw;
    }
}

void Conversation::count_prompt_time(Clock::time_point start) {
    stats_.add_ms(stats_.ttft_ms < 0 ? "prompt" : "follow_up", ms_between(start, Clock::now()));
}

// --- input -------------------------------------------------------------------------

void Conversation::eval_dense(const std::vector<int32_t> & tokens, bool all_logits, const TokenPositions * positions) {
    if (holds_back()) {
        // The question after a sparse span: evaluated when the answer starts.
        if (all_logits || positions) {
            fail(ErrorKind::InvalidArgument, "all_logits and positions are not available between a sparse span "
                                             "and the start of the answer");
        }
        sparse_->queue(tokens);
        return;
    }
    const auto start = Clock::now();
    context_.eval(tokens, all_logits, positions);
    count_prompt_time(start);
}

void Conversation::add_tokens(const std::vector<int32_t> & tokens, bool sparse, bool all_logits,
                              const TokenPositions * positions) {
    if (tokens.empty()) fail(ErrorKind::InvalidArgument, "add_tokens needs at least one token");
    guarded([&] {
        if (sparse && sparse_) {
            if (all_logits || positions)
                fail(ErrorKind::InvalidArgument, "a sparse span takes neither all_logits nor positions yet");
            const auto start = Clock::now();
            sparse_->add_span(tokens);
            count_prompt_time(start);
            stats_.n_sparse += static_cast<int>(tokens.size());
            return;
        }
        eval_dense(tokens, all_logits, positions);
    });
}

void Conversation::add_embeddings(const std::vector<float> & rows, int32_t placeholder,
                                  const TokenPositions * positions, bool sparse, const std::vector<int32_t> * segments,
                                  bool all_logits, const std::vector<int32_t> * blocks) {
    const size_t n_embd = size_t(model_.hparams().n_embd_inp());  // a row's width, DeepStack rows included
    guarded([&] {
        const auto start = Clock::now();
        if (sparse && sparse_) {
            if (all_logits) fail(ErrorKind::InvalidArgument, "a sparse span takes no all_logits");
            sparse_->add_embedding_span(rows, placeholder, positions, segments, blocks);
            stats_.n_sparse += static_cast<int>(rows.size() / n_embd);
        } else {
            if (holds_back()) {
                fail(ErrorKind::InvalidArgument,
                     "embeddings after a sparse span and before the answer must be sparse too");
            }
            context_.eval_embd(rows, placeholder, all_logits, positions, blocks);
        }
        count_prompt_time(start);
    });
}

int Conversation::add_text(const std::string & text, bool special, bool sparse) {
    std::vector<int32_t> ids = model_.vocab().tokenize(text, false, special);
    if (wants_bos()) ids.insert(ids.begin(), model_.vocab().bos());
    if (ids.empty()) return 0;
    add_tokens(ids, sparse);
    return static_cast<int>(ids.size());
}

std::pair<std::string, std::string> Conversation::begin_turn(const std::string & role) {
    assistant_open_ = false;
    pending_assistant_ = role != "assistant";
    return model_.vocab().turn_text(role);
}

int Conversation::add_message(const std::string & role, const std::vector<TurnPart> & parts) {
    if (media_turn_ && role == "user") {
        // The question of an open media turn: tokenized with the turn's tail.
        std::string text = media_turn_->tail;
        for (const TurnPart & p : parts) text += p.text;
        text += media_turn_->after;
        media_turn_.reset();
        return add_text(text);
    }
    if (media_turn_) fail(ErrorKind::InvalidArgument, "a user turn with images or video is open: ask a question first");
    auto [before, after] = begin_turn(role);
    if (parts.size() == 1 && !parts[0].sparse) return add_text(before + parts[0].text + after);
    int n = add_text(before);
    for (const TurnPart & p : parts) n += add_text(p.text, true, p.sparse);
    return n + add_text(after);
}

bool Conversation::wants_bos() const {
    const Vocab & v = model_.vocab();
    return context_.n_past() == 0 && !holds_back() && v.add_bos() && v.bos() >= 0;
}

int Conversation::next_input_pos() const { return context_.next_pos() + n_pending(); }

void Conversation::add_chunks(std::vector<VisionChunk> chunks, int32_t placeholder, bool sparse) {
    if (wants_bos()) {
        VisionChunk bos;
        bos.tokens = {model_.vocab().bos()};
        chunks.insert(chunks.begin(), bos);
    }
    const auto is_image = [](const VisionChunk & c) { return !c.is_text(); };
    const auto first = std::find_if(chunks.begin(), chunks.end(), is_image);
    if (!(sparse && sparse_ && first != chunks.end())) {
        int pos = context_.next_pos();
        for (const VisionChunk & c : chunks) {  // an image chunk starts n_pos after the one before (0: the same block)
            if (c.is_text()) {
                if (c.tokens.empty()) continue;
                add_tokens(c.tokens);
                pos = context_.next_pos();
            } else {
                const TokenPositions at = c.image.positions_at(pos);
                const std::vector<int32_t> block(c.image.bidirectional ? c.image.n_tokens : 0, 0);
                add_embeddings(c.image.embd, placeholder, &at, false, nullptr, false, block.empty() ? nullptr : &block);
                pos += c.image.n_pos;
            }
        }
        return;
    }
    const auto last = std::find_if(chunks.rbegin(), chunks.rend(), is_image).base();  // one past the last image
    std::vector<int32_t> head, tail;
    for (auto it = chunks.begin(); it != first; ++it) head.insert(head.end(), it->tokens.begin(), it->tokens.end());
    for (auto it = last; it != chunks.end(); ++it) tail.insert(tail.end(), it->tokens.begin(), it->tokens.end());
    if (!head.empty()) add_tokens(head);
    const VisualSpan span = visual_span(model_, std::vector<VisionChunk>(first, last), next_input_pos());
    add_embeddings(span.rows, placeholder, &span.positions, true, &span.segments, false, &span.blocks);
    if (!tail.empty()) add_tokens(tail);
}

void Conversation::add_media(const std::vector<VisionChunk> & chunks, int32_t placeholder, bool sparse,
                             const TurnText * turn) {
    std::string head;
    if (!media_turn_) {
        auto [before, after] = begin_turn("user");
        if (turn) {
            before = turn->before;
            after = turn->after;
            pending_assistant_ = false;  // the caller's text says what follows the turn
        }
        head = before;
        media_turn_ = MediaTurn{"", after};
    }
    std::vector<VisionChunk> middle(chunks.begin(), chunks.end());
    if (!middle.empty() && middle.front().is_text()) {
        head += model_.vocab().detokenize(middle.front().tokens, true);
        middle.erase(middle.begin());
    }
    std::string tail;
    if (!middle.empty() && middle.back().is_text()) {
        tail = model_.vocab().detokenize(middle.back().tokens, true);
        middle.pop_back();
    }
    // Text between two media of one turn: the first one's tail, tokenized with the next one's head.
    head = media_turn_->tail + head;
    media_turn_->tail = tail;
    VisionChunk head_chunk;
    head_chunk.tokens = model_.vocab().tokenize(head, false, true);
    middle.insert(middle.begin(), head_chunk);
    add_chunks(std::move(middle), placeholder, sparse);
}

void Conversation::add_media_turn(const std::vector<VisionChunk> & chunks, int32_t placeholder,
                                  const std::string & question, bool sparse, const TurnText * turn) {
    add_media(chunks, placeholder, sparse, turn);
    add_message("user", {{question, false}});
}

// --- selection and answers --------------------------------------------------------

bool Conversation::select(const KeptReplacer * replace_kept) {
    if (!holds_back()) return false;
    std::optional<SelectTimings> t;
    guarded([&] { t = sparse_->select(replace_kept); });
    if (!t) return false;
    if (sparse_->n_selections() == 1) {
        stats_.add_ms("question", t->question);
        stats_.add_ms("select", t->select);
        if (t->held) stats_.add_ms("pruned_zone", t->pruned_zone);
    } else {  // follow-ups: rewind, question, selection and pruned zone together
        stats_.add_ms("reroute", t->question + t->select + t->pruned_zone);
    }
    const SparseSelection & sel = *sparse_->selection();
    stats_.n_kept = static_cast<int>(sel.kept_in_span.size());
    stats_.full_heads.clear();
    for (size_t il = 0; il < sel.full_kv.size(); ++il) {
        for (size_t g = 0; g < sel.full_kv[il].size(); ++g) {
            if (sel.full_kv[il][g]) stats_.full_heads.emplace_back(int(il), int(g));
        }
    }
    return true;
}

std::vector<SparseSelection> Conversation::trial_selections(const std::vector<std::pair<int, int>> & zones) {
    check_usable();
    if (!holds_back()) fail(ErrorKind::InvalidArgument, "trial selections need a question waiting after a sparse span");
    if (pending_assistant_) {  // the window ends with the assistant's header, as when an answer starts
        add_text(model_.vocab().assistant_header());
        pending_assistant_ = false;
        assistant_open_ = true;
    }
    std::vector<SparseSelection> out;
    guarded([&] { out = sparse_->trial_selections(zones); });
    return out;
}

const SparseSelection * Conversation::selection() const {
    return sparse_ && sparse_->selection() ? &*sparse_->selection() : nullptr;
}

void Conversation::answered() {
    if (sparse_) sparse_->answered();
}

void Conversation::begin_answer() {
    check_usable();
    if (media_turn_) fail(ErrorKind::InvalidArgument, "a user turn with images or video is open: ask a question first");
    if (context_.n_past() == 0 && !holds_back()) {
        fail(ErrorKind::InvalidArgument, "nothing to continue: add text or a message first");
    }
    if (pending_assistant_) {
        add_text(model_.vocab().assistant_header());
        pending_assistant_ = false;
        assistant_open_ = true;
    }
    select();
    if (stats_.ttft_ms < 0) stats_.n_prompt = context_.n_past();
}

void Conversation::eval_generated(int32_t token) {
    check_usable();
    in_answer_step_ = true;
    try {
        context_.eval({token}, false);
    } catch (...) {
        in_answer_step_ = false;
        throw;
    }
    in_answer_step_ = false;
}

void Conversation::first_token_at(Clock::time_point started, Clock::time_point now) {
    if (stats_.ttft_ms < 0) stats_.ttft_ms = ms_between(started, now);
}

bool Conversation::close_assistant_turn() {
    if (!assistant_open_) return true;
    assistant_open_ = false;
    try {
        add_text(model_.vocab().turn_text("assistant").second);
    } catch (const Error & e) {
        if (e.kind() == ErrorKind::ContextOverflow) return false;
        throw;
    }
    return true;
}

ConversationStats Conversation::stats() const {
    ConversationStats s = stats_;
    s.kv_bytes = context_.kv_bytes();
    s.kv_bytes_peak = context_.kv_bytes_peak();
    s.kv_bytes_dense = context_.kv_bytes_dense();
    s.kv_bytes_tokens = context_.kv_bytes_per_cell() * size_t(context_.n_past());
    s.compute_bytes = context_.compute_bytes();
    s.compute_bytes_peak = context_.compute_bytes_peak();
    s.residual_bytes = context_.residual_bytes();
    if (sparse_) {
        s.select_layer = sparse_->config().select_layer;
        s.prune_layer = sparse_->config().prune_layer;
    }
    return s;
}

void Conversation::reset() {
    context_.reset();
    sparse_.reset();
    if (sparse_request_) sparse_ = std::make_unique<SparseState>(context_, *sparse_request_);
    stats_ = ConversationStats{};
    assistant_open_ = false;
    pending_assistant_ = false;
    stopped_ = false;
    media_turn_.reset();
}

}  // namespace hts
