#include "sampler.h"

#include "errors.h"
#include "llama.h"

#include <cmath>
#include <utility>
#include <vector>

namespace hts {

static void validate(const SamplerParams & p) {
    // NaN passes every comparison below: refuse it (and infinities) first.
    for (const auto & [name, v] : {std::pair<const char *, float>{"temperature", p.temperature},
                                   {"top_p", p.top_p},
                                   {"min_p", p.min_p},
                                   {"repeat_penalty", p.repeat_penalty}}) {
        if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, format("%s must be a finite number, got %g", name, v));
    }
    if (p.top_p <= 0.0f || p.top_p > 1.0f)
        fail(ErrorKind::InvalidArgument, format("top_p must be in (0, 1], got %g", p.top_p));
    if (p.min_p < 0.0f || p.min_p > 1.0f)
        fail(ErrorKind::InvalidArgument, format("min_p must be in [0, 1], got %g", p.min_p));
    if (p.repeat_penalty <= 0.0f)
        fail(ErrorKind::InvalidArgument, format("repeat_penalty must be positive, got %g", p.repeat_penalty));
    if (p.repeat_last_n < 0) fail(ErrorKind::InvalidArgument, "repeat_last_n must be >= 0");
}

Sampler::Sampler(const SamplerParams & p, int n_vocab) {
    validate(p);
    chain_ = llama_sampler_chain_init(llama_sampler_chain_default_params());
    if (p.repeat_penalty != 1.0f) {
        llama_sampler_chain_add(chain_,
                                llama_sampler_init_penalties(n_vocab, p.repeat_last_n, p.repeat_penalty, 0.0f, 0.0f));
    }
    if (p.temperature <= 0.0f) {
        llama_sampler_chain_add(chain_, llama_sampler_init_greedy());
        return;
    }
    if (p.top_k > 0) llama_sampler_chain_add(chain_, llama_sampler_init_top_k(p.top_k));
    if (p.top_p < 1.0f) llama_sampler_chain_add(chain_, llama_sampler_init_top_p(p.top_p, 1));
    if (p.min_p > 0.0f) llama_sampler_chain_add(chain_, llama_sampler_init_min_p(p.min_p, 1));
    llama_sampler_chain_add(chain_, llama_sampler_init_temp(p.temperature));
    llama_sampler_chain_add(chain_, llama_sampler_init_dist(p.seed));
}

Sampler::~Sampler() {
    if (chain_) llama_sampler_free(chain_);
}

int32_t Sampler::sample(const float * logits, int n_vocab) {
    std::vector<llama_token_data> cand(n_vocab);
    for (int i = 0; i < n_vocab; ++i) cand[i] = {i, logits[i], 0.0f};
    llama_token_data_array arr = {cand.data(), cand.size(), -1, false};
    llama_sampler_apply(chain_, &arr);
    if (arr.selected < 0 || arr.selected >= static_cast<int64_t>(arr.size)) {
        fail(ErrorKind::Backend, "the sampler selected no token");
    }
    return arr.data[arr.selected].id;
}

void Sampler::accept(int32_t token) { llama_sampler_accept(chain_, token); }

void Sampler::reset() { llama_sampler_reset(chain_); }

}  // namespace hts
