// The KV cache of one context: per layer, a K and a V tensor holding every KV
// head for the cells in use, cell i holding the i-th token evaluated.
//
// Memory follows the tokens (docs/architecture.md#memory-plan): nothing is
// allocated for n_ctx cells up front. Each layer owns its own buffer and
// grows, on the device and one layer at a time, when a batch needs more cells
// (prepare()), to what the batch needs, or a quarter more than it holds when
// the batch needs only the next padding step (decoding
// grows seldom), up to the context's `limit`; so a
// layer that never sees a span's tokens (the pruned zone while they wait at
// the prune layer) never holds cells for them, and growing costs at most one
// layer's copy at a time. bytes() is what is held now, peak_bytes() the most
// ever held at once, transient copies included.
//
// A sliding-window layer (Gemma 3) keeps only a ring of window_rows() rows,
// the window plus one micro-batch (padded): cell c lives at row
// c % window_rows(), and its attention reads the whole ring under a mask
// that knows which cell each row holds (window_row_cell). A micro-batch never
// overwrites a row any of its queries still sees.
//
// Graph code reaches the cache only through store()/keys()/values(), per layer
// and per head group, so the HT-Sparse cache can split a layer into a
// full-length group and a compact group
// (docs/architecture.md#routed-attention-and-the-dual-length-kv-cache) behind
// the same calls.
#pragma once

#include "ggml-backend.h"
#include "ggml.h"

#include <algorithm>
#include <cstddef>
#include <vector>

namespace hts {

class Model;

class KvCache {
public:
    // A cache of at most `n_ctx` cells (rounded up to kCellPad) per layer on
    // the model's main device; nothing is allocated until prepare(). Micro-
    // batches of at most n_batch tokens (sizes the sliding-window rings).
    KvCache(const Model & model, int n_ctx, int n_batch = 512, ggml_type type = GGML_TYPE_F16);
    ~KvCache();
    KvCache(const KvCache &) = delete;
    KvCache & operator=(const KvCache &) = delete;

    static constexpr int kCellPad = 256;  // n_kv granularity, as llama.cpp pads it

    int capacity() const { return limit_; }  // the most cells a layer may hold
    // Cells the attention of a batch ending at cell `n_used` reads: padded to
    // kCellPad (fewer distinct graph shapes, faster GPU kernels), masked beyond.
    int n_kv_for(int n_used) const;
    // Rows of a sliding-window layer's ring: 0 when the model has none, or the
    // window covers the whole context (then those layers keep every cell).
    int window_rows() const { return ring_; }
    bool is_ring(int il) const { return ring_ > 0 && window_layer_[il]; }
    // A sliding-window layer, ring or not (a window that covers the whole
    // context keeps every cell): HT-Sparse neither routes nor compacts it.
    bool is_window(int il) const { return window_layer_[il]; }
    // Rows a sliding-window layer's attention reads for a batch ending at cell
    // n_used (n_kv_for(n_used), at most the ring).
    int n_kv_window(int n_used) const { return ring_ > 0 ? std::min(ring_, n_kv_for(n_used)) : n_kv_for(n_used); }
    // The cell row `row` of a ring holds once cells up to `last` are written (-1: none).
    int window_row_cell(int row, int last) const;

    // Before a batch over layers [begin, end): each of them holds at least
    // n_kv cells (compact cells: n_kv_sparse, after compact()), the first
    // n_used (n_used_sparse) kept. New cells read as zeros.
    void prepare(int begin, int end, int n_kv, int n_used, int n_kv_sparse = 0, int n_used_sparse = 0);

    // Adds to `gf` the copies of k_cur, v_cur [head_dim, n_head_kv, n_tokens]
    // into cells [first_cell, first_cell + n_tokens) of layer il.
    void store(ggml_context * ctx, ggml_cgraph * gf, int il, ggml_tensor * k_cur, ggml_tensor * v_cur,
               int first_cell) const;
    // The same into the rows `rows` lists (I32 [n_tokens], one per token;
    // window_row() of each token's cell): tokens at cells that are not
    // contiguous (HT-Sparse's kept tokens in a window layer of the pruned zone).
    void store_rows(ggml_context * ctx, ggml_cgraph * gf, int il, ggml_tensor * k_cur, ggml_tensor * v_cur,
                    ggml_tensor * rows) const;
    int window_row(int cell) const { return ring_ > 0 ? cell % ring_ : cell; }  // the row holding `cell`
    // Selection at S = P (staged prefill): the held tokens' keys at the prune
    // layer feed selection, but nothing reads their values there (the kept
    // ones write them again when they finish). From cell `cell` on, layer il
    // then holds keys only: its values stop at `cell`, half a layer
    // less at the peak. INT_MAX: values for every cell again (the next
    // prepare() grows them; the rows past `cell` read as zeros until written).
    void keys_only_from(int il, int cell);
    // Views of the first n_kv cells of layer il: [head_dim, n_head_kv, n_kv].
    ggml_tensor * keys(ggml_context * ctx, int il, int n_kv) const;
    ggml_tensor * values(ggml_context * ctx, int il, int n_kv) const;

    size_t bytes() const { return bytes_; }  // bytes the K/V tensors hold now
    size_t peak_bytes() const { return peak_; }
    // Moves layers [0, n_layers) of `src` into this empty dense cache of the
    // same limit, without a copy; src must hold every KV head of those layers
    // at full length (dense, or split with only full heads there) and keeps
    // none of them. Re-routing keeps the dense zone this way while it
    // rebuilds the layers after it.
    void take_layers(KvCache & src, int n_layers);

    // --- per-head split (HT-Sparse, docs/architecture.md#routed-attention-and-the-dual-length-kv-cache) -------
    // After compact(), every layer's KV heads are in two groups: "full" heads
    // keep every cell (same cell numbering as before), "sparse" heads keep only
    // the listed cells, renumbered 0.. in order. Layer by layer, the dense
    // tensors give way to the two groups, so compaction's transient cost is
    // one layer. Sliding-window layers stay as they are, every head whole
    // (they hold only their window). Kept cells a layer never held (tokens still waiting at the
    // prune layer) are left zero for the pruned zone to write.
    //   full_kv[il][g]: KV head g of layer il is full
    //   kept_cells:     ascending cells the sparse heads keep, all < n_used
    void compact(const std::vector<std::vector<bool>> & full_kv, const std::vector<int32_t> & kept_cells, int n_used);
    bool is_split() const { return split_; }
    int n_sparse_kv_for(int n_used_sparse) const;  // as n_kv_for, for compact cells
    int n_full_heads(int il) const { return split_ ? n_full_[il] : n_head_kv_; }
    const std::vector<bool> & full_heads(int il) const { return full_kv_[il]; }

    // Split-mode counterparts of store/keys/values. store_split writes the
    // full heads' rows to cell `full_cell`.. and the sparse heads' rows to
    // compact cell `sparse_cell`..; keys/values give [head_dim, n, G_group].
    void store_split(ggml_context * ctx, ggml_cgraph * gf, int il, ggml_tensor * k_cur, ggml_tensor * v_cur,
                     ggml_tensor * full_heads_idx, ggml_tensor * sparse_heads_idx, int full_cell,
                     int sparse_cell) const;
    ggml_tensor * group_keys(ggml_context * ctx, int il, bool full, int n_kv) const;
    ggml_tensor * group_values(ggml_context * ctx, int il, bool full, int n_kv) const;

private:
    // One group of KV heads of one layer: K and V [head_dim * n_heads, capacity] in a buffer of their own.
    struct Storage {
        ggml_context * ctx = nullptr;
        ggml_backend_buffer_t buffer = nullptr;
        ggml_tensor * k = nullptr;
        ggml_tensor * v = nullptr;
        int capacity = 0;    // cells of K (and of V, unless keys_only_from limits it)
        int v_capacity = 0;  // cells of V
        int n_heads = 0;
        size_t bytes() const { return buffer ? ggml_backend_buffer_get_size(buffer) : 0; }
    };

    const Model * model_ = nullptr;
    ggml_type type_ = GGML_TYPE_F16;
    int limit_ = 0;
    int n_embd_head_ = 0;
    int n_head_kv_ = 0;
    std::vector<Storage> full_;    // per layer: every KV head (dense), or the full group (split)
    std::vector<Storage> sparse_;  // per layer, split mode: the sparse group at compact cells
    size_t bytes_ = 0, peak_ = 0;

    int ring_ = 0;                    // window_rows()
    std::vector<bool> window_layer_;  // per layer: a sliding-window layer (hp.is_swa)
    std::vector<int> values_below_;   // per layer: keys_only_from's cell (INT_MAX: none)
    bool split_ = false;
    std::vector<std::vector<bool>> full_kv_;  // per layer, per KV head
    std::vector<int> n_full_;                 // per layer

    // Zero-filled K/V of n_heads heads x `capacity` cells for layer il (`what` names them).
    Storage alloc(int il, int n_heads, int capacity, const char * what, int v_capacity = -1);
    int v_capacity_for(int il, int capacity) const;  // capacity, or less under keys_only_from
    void release(Storage & s);
    // `s` holds at least n_cells cells (a quarter more when one padding step would do), its first n_used kept.
    void grow(int il, Storage & s, int n_heads, int n_cells, int n_used, int limit, const char * what);
    ggml_tensor * view(ggml_context * ctx, ggml_tensor * t, int n_kv) const;
};

}  // namespace hts
