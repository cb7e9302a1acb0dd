#include "sparse_config.h"

#include "errors.h"
#include "gguf_file.h"

#include <algorithm>
#include <cmath>

namespace hts {

namespace {

// Built-in defaults, used when neither the caller nor the GGUF says. The
// select layer follows the measurement in docs/architecture.md#token-selection-on-segments on Qwen2.5-0.5B
// (line segments keep a passkey from layer 4 of 24, so about L/6). Pruning
// from the select layer on (P = S) kept the pass-key accuracy of dense at 2K
// tokens with 2.8x llama.cpp's prefill speed, against 2.1x for P = S + L/6
// (BENCHMARKS.md); a whole-span task may yet argue for a routed zone.
// On a model with sliding-window layers, the first global layer from there on
// (a window layer sees no span behind its window, so it cannot select).
int default_select_layer(const HParams & hp) {
    int s = std::max(1, int(std::lround(hp.n_layer / 6.0)));
    while (s < hp.n_layer - 1 && hp.is_swa(s)) ++s;
    return s;
}

std::string global_layers(const HParams & hp) {
    std::string out;
    for (int il = 0; il < hp.n_layer; ++il) {
        if (!hp.is_swa(il)) out += (out.empty() ? "" : ", ") + std::to_string(il);
    }
    return out.empty() ? "none" : out;
}
int default_prune_layer(const HParams &, int select) { return select; }
constexpr float kDefaultKeepRatio = 0.2f;
constexpr float kDefaultFullHeadRatio = 0.25f;
constexpr int kDefaultQWindow = 64;

void check(bool ok, const std::string & message) {
    if (!ok) fail(ErrorKind::InvalidArgument, message);
}

void validate(const SparseConfig & c, const HParams & hp) {
    const int L = hp.n_layer;
    check(c.keep_ratio > 0.0f && c.keep_ratio <= 1.0f, format("keep_ratio must be in (0, 1], got %g", c.keep_ratio));
    check(c.keep_mass >= 0.0f && c.keep_mass <= 1.0f,
          format("keep_mass must be in [0, 1] (0: off), got %g", c.keep_mass));
    check(c.token_keep > 0.0f && c.token_keep <= 1.0f, format("token_keep must be in (0, 1], got %g", c.token_keep));
    check(c.full_head_ratio >= 0.0f && c.full_head_ratio <= 1.0f,
          format("full_head_ratio must be in [0, 1], got %g", c.full_head_ratio));
    check(c.select_layer >= 0 && c.select_layer <= L,
          format("select_layer must be in [0, %d] for this %d-layer model, got %d", L, L, c.select_layer));
    check(!hp.is_swa(std::min(c.select_layer, L - 1)),
          format("select_layer %d is a sliding-window layer, which sees no span behind its %d-token window; this "
                 "model's global layers are %s",
                 c.select_layer, hp.n_swa, global_layers(hp).c_str()));
    check(c.prune_layer >= c.select_layer && c.prune_layer <= L,
          format("prune_layer must be in [select_layer=%d, %d], got %d", c.select_layer, L, c.prune_layer));
    check(!c.reroute || c.select_layer < L,
          format("reroute needs a select layer below the layer count (%d), got %d", L, c.select_layer));
    check(c.q_window >= 1, format("q_window must be >= 1, got %d", c.q_window));
    check(c.segment_floor >= 0, format("segment_floor must be >= 0, got %d", c.segment_floor));
    check(c.segment_tokens >= 1, format("segment_tokens must be >= 1, got %d", c.segment_tokens));
    check(c.head_prior.empty() || c.head_prior.size() == size_t(L) * hp.n_head_kv,
          format("head_prior must hold %d x %d values, got %zu", L, hp.n_head_kv, c.head_prior.size()));
}

}  // namespace

std::vector<std::string> htsparse_gguf_keys() {
    using namespace gguf_keys;
    return {kVersion, kSelectLayer, kPruneLayer, kKeepRatio, kFullHeadRatio, kQWindow, kHeadPrior, kCalibrationPrefix};
}

SparseConfig resolve_sparse_config(const SparseConfig & request, const GgufFile & file, const HParams & hp) {
    using namespace gguf_keys;
    SparseConfig c = request;
    if (c.keep_ratio == SparseConfig::kUnsetF) c.keep_ratio = float(file.get_float(kKeepRatio, kDefaultKeepRatio));
    if (c.full_head_ratio == SparseConfig::kUnsetF) {
        c.full_head_ratio = float(file.get_float(kFullHeadRatio, kDefaultFullHeadRatio));
    }
    if (c.select_layer == SparseConfig::kUnset)
        c.select_layer = int(file.get_int(kSelectLayer, default_select_layer(hp)));
    if (c.prune_layer == SparseConfig::kUnset) {
        c.prune_layer = int(file.get_int(kPruneLayer, default_prune_layer(hp, c.select_layer)));
        c.prune_layer = std::max(c.prune_layer, c.select_layer);  // a chosen S past the file's P moves P along
    }
    if (c.q_window == SparseConfig::kUnset) c.q_window = int(file.get_int(kQWindow, kDefaultQWindow));
    if (c.head_prior.empty()) c.head_prior = file.get_float_array(kHeadPrior);
    validate(c, hp);
    return c;
}

}  // namespace hts
