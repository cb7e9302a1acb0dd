// Builds one forward graph for a micro-batch: the graph inputs, and helpers an
// architecture composes (norm, projections, rope, attention over the KV cache,
// feed-forward, output head). Every intermediate is named "<name>-<layer>" so it
// can be compared with llama.cpp's own graph.
#pragma once

#include "ggml.h"
#include "hparams.h"

#include <algorithm>
#include <vector>

namespace hts {

class KvCache;
class Model;
struct LayerWeights;
struct ModelWeights;

// MicroBatch::window_pruned_from when no window layer is in a pruned zone.
constexpr int kNoPrunedZone = 1 << 30;

struct MicroBatch {
    int n_tokens = 0;    // tokens in this batch
    int first_cell = 0;  // KV cell of the first token (cells fill in order)
    int n_outputs = 1;   // logits rows: the last n_outputs tokens
    // Layers [layer_begin, layer_end) run; layer_end < 0 means all. A batch
    // that starts past layer 0 takes the residual stream as input, one that
    // stops before the last layer returns the residual instead of logits
    // (staged prefill, docs/architecture.md#staged-prefill).
    int layer_begin = 0;
    int layer_end = -1;
    int first_sparse_cell = 0;  // compacted KV cache: compact cell of the first token
    int capture_q = 0;          // keep the roped queries of the last capture_q tokens of each layer
    // Selection probe: layer layer_begin only writes its K/V and captures
    // queries; no attention, no output (Context::probe_held_layer).
    bool kv_only = false;
    // Layer 0 takes embedding rows (visual tokens) as its input instead of
    // looking token ids up (only with layer_begin == 0).
    bool embd_input = false;
    // DeepStack rows given for layers [layer_begin, layer_begin + n_deepstack_in)
    // (Qwen3-VL visual tokens; zero rows for text): inp_deepstack.
    int n_deepstack_in = 0;
    // Replay (Context::replay_held): the tokens' K/V are in the dense cache
    // already, at these ascending cells (n_tokens of them, not contiguous):
    // nothing is stored, row i attends to the cells up to cells[i].
    const int32_t * cells = nullptr;
    // The pruned zone's kept tokens (Context::finish_held): their cells, ascending
    // and not contiguous, where the sliding-window layers store them
    // (KvCache::store_rows); first_cell is window_cells[0]. nullptr: contiguous.
    const int32_t * window_cells = nullptr;
    // Sliding-window layers from here on hold only the kept tokens (the
    // pruned zone after selection): their mask hides the unkept cells.
    int window_pruned_from = kNoPrunedZone;

    // A replay's last token may see cells past its own (the rest of its
    // bidirectional block): the cells attended reach this far (0: end_cell()).
    int attend_end = 0;

    int end_cell() const {  // past the last
        const int32_t * at = cells ? cells : window_cells;
        return (at ? at[n_tokens - 1] : first_cell + n_tokens - 1) + 1;
    }
    int kv_end() const { return std::max(end_cell(), attend_end); }  // past the last cell attended
};

// Graph inputs of one layer whose KV heads are split into full and sparse
// groups (KvCache::compact): which q / KV heads go where.
struct RoutedLayerInputs {
    ggml_tensor * head_perm = nullptr;     // I32 [n_head, n_tokens]
    ggml_tensor * head_unperm = nullptr;   // I32 [n_head, n_tokens]
    ggml_tensor * full_heads = nullptr;    // I32 [G_full, n_tokens]; nullptr if none
    ggml_tensor * sparse_heads = nullptr;  // I32 [G_sparse, n_tokens]; nullptr if none
};

struct QKV {
    ggml_tensor * q;  // [head_dim, n_head, n_tokens]
    ggml_tensor * k;  // [head_dim, n_head_kv, n_tokens]
    ggml_tensor * v;  // [head_dim, n_head_kv, n_tokens]
};

class GraphContext {
public:
    GraphContext(const Model & model, const KvCache & kv, ggml_context * ctx, ggml_cgraph * gf, const MicroBatch & mb);

    ggml_context * const ctx0;
    ggml_cgraph * const gf;
    const HParams & hp;
    const ModelWeights & w;
    const KvCache & kv;
    const int n_tokens, first_cell, n_outputs;
    const int end_cell;  // one past the batch's last cell (MicroBatch::end_cell)
    const int n_kv;
    const int n_kv_swa;  // rows a sliding-window layer reads: n_kv, at most its ring (KvCache::n_kv_window)
    const int layer_begin, layer_end;          // layer_end resolved to n_layer when "all"
    const int first_sparse_cell, n_kv_sparse;  // compacted cache only
    const int capture_q;
    const bool kv_only;
    const bool embd_input;
    const int32_t * const cells;            // MicroBatch::cells (replay), or nullptr
    const int32_t * const window_cells;     // MicroBatch::window_cells, or nullptr
    const int window_pruned_from;           // MicroBatch::window_pruned_from
    const int n_deepstack_in;               // MicroBatch::n_deepstack_in (none in a kv_only probe)
    std::vector<ggml_tensor *> captured_q;  // per layer F32 [head_dim, n_head, capture_q]; graph outputs
    bool ends_with_logits() const { return layer_end == hp.n_layer; }

    // Graph inputs, filled by the context once the graph is allocated.
    ggml_tensor * inp_tokens = nullptr;       // I32 [n_tokens]
    ggml_tensor * inp_pos = nullptr;          // I32 [n_tokens * n_pos_per_token]
    ggml_tensor * inp_kq_mask = nullptr;      // F16 [n_kv, n_tokens]
    ggml_tensor * inp_kq_mask_swa = nullptr;  // F16 [n_kv_swa, n_tokens]; the window layers' (hp.n_swa > 0)
    // The same for window layers >= window_pruned_from: the unkept cells hidden.
    ggml_tensor * inp_kq_mask_swa_pruned = nullptr;  // F16 [n_kv_swa, n_tokens]
    ggml_tensor * inp_window_rows = nullptr;         // I32 [n_tokens]; with window_cells: the rows they go to
    ggml_tensor * inp_out_ids = nullptr;             // I32 [n_outputs]; nullptr when all rows are outputs
    ggml_tensor * inp_residual = nullptr;            // F32 [n_embd, n_tokens]; when layer_begin > 0 or embd_input
    ggml_tensor * inp_deepstack = nullptr;           // F32 [n_embd * n_deepstack_in, n_tokens]; when n_deepstack_in > 0
    ggml_tensor * inp_kq_mask_sparse = nullptr;      // F16 [n_kv_sparse, n_tokens]; compacted cache only
    std::vector<RoutedLayerInputs> inp_routed;       // per layer; compacted cache only

    // The stream entering layer_begin: token embeddings, or the residual input.
    ggml_tensor * build_inp_stream();  // [n_embd, n_tokens]
    ggml_tensor * build_inp_embd();    // [n_embd, n_tokens]
    void build_attn_inputs();
    void build_routed_inputs();
    void capture_queries(ggml_tensor * q, int il);
    ggml_tensor * build_norm(ggml_tensor * x, ggml_tensor * weight, const char * name, int il);
    QKV build_qkv(const LayerWeights & l, ggml_tensor * x, int il);
    ggml_tensor * build_rope(ggml_tensor * x, const char * name, int il);  // rope flavour from hp.rope_type
    // Stores k, v in the cache, attends q over cells [0, n_kv), projects by wo.
    ggml_tensor * build_attn(const LayerWeights & l, const QKV & qkv, int il);  // [n_embd, n_tokens]
    // The same over a compacted cache: full and sparse KV heads attend over
    // their own caches (hts_routed_attention).
    ggml_tensor * build_routed_attn(const LayerWeights & l, const QKV & qkv, int il);  // [n_embd, n_tokens]
    // A sliding-window layer of the pruned zone (it holds the kept tokens
    // only: its mask hides the unkept cells), and whether the batch has any.
    bool is_pruned_window(int il) const;
    bool has_pruned_window_layers() const;
    // q as the model scales it before attention, and the scale left for the kernel.
    std::pair<ggml_tensor *, float> scaled_q(ggml_tensor * q) const;
    // Selection probe: captures q, stores k and v in the dense cache; returns k.
    ggml_tensor * build_kv_probe(const QKV & qkv, int il);
    // After layer il's output: adds its DeepStack row (Qwen3-VL) when one was given.
    ggml_tensor * add_deepstack(ggml_tensor * x, int il);  // [n_embd, n_tokens]
    ggml_tensor * build_ffn_swiglu(const LayerWeights & l, ggml_tensor * x, int il);
    ggml_tensor * build_ffn_geglu(const LayerWeights & l, ggml_tensor * x, int il);  // gemma3
    // Keeps the rows that produce logits (a no-op when every row does).
    ggml_tensor * select_outputs(ggml_tensor * x);
    ggml_tensor * build_lm_head(ggml_tensor * x);  // [n_vocab, n_outputs]

    void name(ggml_tensor * t, const char * name, int il) const;
};

}  // namespace hts
