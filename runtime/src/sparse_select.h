// The HT-Sparse selection step of a context (docs/architecture.md#saliency): from the
// query window's queries and the cached keys, per-head saliency at every
// layer, token selection at the select layer, and the full/sparse routing of
// KV heads; the context then compacts its cache accordingly.
#pragma once

#include "sparse_config.h"

#include <cstdint>
#include <vector>

namespace hts {

class Model;
class Context;

struct SparseSpan {
    int begin = 0, end = 0;           // cells [begin, end) of the sparse span
    std::vector<int32_t> seg_starts;  // segment starts relative to begin, ascending, first 0
};

struct SparseSelection {
    std::vector<int32_t> kept_in_span;              // kept span tokens, relative to the first span's begin, ascending
    std::vector<int32_t> kept_cells;                // every cell the sparse heads keep, ascending
    std::vector<std::vector<bool>> full_kv;         // [layer][kv head]
    std::vector<std::vector<float>> kv_head_score;  // [layer][kv head], as measured
    size_t graph_bytes = 0;                         // the most its one-off graphs held at once (device memory)
};

// Needs a dense cache whose last eval captured the query window's queries
// (Context::set_query_capture), the window lying after the last span. Spans
// ascending and disjoint; each keeps its own keep_ratio share. A head's
// score is the span-length-weighted mean of its scores over the spans.
SparseSelection select_sparse(const Model & model, const Context & context, const std::vector<SparseSpan> & spans,
                              const SparseConfig & config);

}  // namespace hts
