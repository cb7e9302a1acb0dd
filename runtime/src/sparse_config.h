// HT-Sparse settings of a conversation (docs/architecture.md#calibration-metadata) and the GGUF keys that
// carry calibrated defaults. The key names are mirrored in
// python/htsparse_llama/sparse_config.py; a test checks that both agree.
#pragma once

#include "hparams.h"

#include <string>
#include <vector>

namespace hts {

class GgufFile;

namespace gguf_keys {
inline constexpr const char * kVersion = "htsparse.version";
inline constexpr const char * kSelectLayer = "htsparse.select_layer";
inline constexpr const char * kPruneLayer = "htsparse.prune_layer";
inline constexpr const char * kKeepRatio = "htsparse.keep_ratio";
inline constexpr const char * kFullHeadRatio = "htsparse.full_head_ratio";
inline constexpr const char * kQWindow = "htsparse.q_window";
inline constexpr const char * kHeadPrior = "htsparse.head_prior";  // float[L * G], layer-major
inline constexpr const char * kCalibrationPrefix = "htsparse.calibration.";
}  // namespace gguf_keys

// Every fixed key name above, in declaration order.
std::vector<std::string> htsparse_gguf_keys();

// A value left at kUnset is taken from the GGUF's htsparse.* key when present,
// else from the built-in default (resolve_sparse_config).
struct SparseConfig {
    static constexpr float kUnsetF = -1.0f;
    static constexpr int kUnset = -1;

    float keep_ratio = kUnsetF;       // share of a sparse span's tokens kept, (0, 1]
    float keep_mass = 0.0f;           // > 0: keep the fewest segments holding this share of the score
    float token_keep = 1.0f;          // token-level cut inside kept segments, (0, 1]
    float full_head_ratio = kUnsetF;  // share of KV heads that keep the whole span, [0, 1]
    int select_layer = kUnset;        // S: saliency and selection happen here, [0, L]
    int prune_layer = kUnset;         // P: unselected tokens leave the residual stream, [S, L]
    int q_window = kUnset;            // query-window tokens used for saliency, >= 1
    int segment_floor = 0;            // keep a segment in each of this many stretches of a span
    int segment_tokens = 32;          // text segments: lines, split into runs of at most this many tokens
    bool reroute = false;             // re-run selection for each follow-up question
    std::vector<float> head_prior;    // calibrated per-(layer, KV head) saliency; empty if none
};

// The settings a conversation runs with: unset values filled (request, then GGUF,
// then built-in defaults), then checked; throws InvalidArgument naming the
// offending value.
SparseConfig resolve_sparse_config(const SparseConfig & request, const GgufFile & file, const HParams & hp);

}  // namespace hts
