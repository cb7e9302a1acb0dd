// Token sampling over logits, through libllama's public llama_sampler chain:
// repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw, or
// greedy arg-max when temperature <= 0.
#pragma once

#include <cstdint>

struct llama_sampler;

namespace hts {

struct SamplerParams {
    float temperature = 0.8f;     // <= 0: greedy
    int top_k = 40;               // <= 0: off
    float top_p = 0.95f;          // 1: off
    float min_p = 0.05f;          // 0: off
    float repeat_penalty = 1.0f;  // 1: off
    int repeat_last_n = 64;
    uint32_t seed = 0xFFFFFFFF;  // LLAMA_DEFAULT_SEED: random
};

class Sampler {
public:
    Sampler(const SamplerParams & params, int n_vocab);
    ~Sampler();
    Sampler(const Sampler &) = delete;
    Sampler & operator=(const Sampler &) = delete;

    // Picks a token from n_vocab logits; does not record it (see accept).
    int32_t sample(const float * logits, int n_vocab);
    // Records a token as generated (repetition penalty history).
    void accept(int32_t token);
    void reset();

private:
    llama_sampler * chain_ = nullptr;
};

}  // namespace hts
