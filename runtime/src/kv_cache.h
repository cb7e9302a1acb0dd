// The KV cache of one context: per layer, a K and a V tensor holding every KV
// head for up to `capacity` cells, cell i holding the token at position i.
//
// Graph code reaches the cache only through store()/keys()/values(), per layer
// and per head group, so the HT-Sparse cache can split a layer into a
// full-length group and a compact group (docs/architecture.md#routed-attention-and-the-dual-length-kv-cache) behind the
// same calls.
#pragma once

#include "ggml-backend.h"
#include "ggml.h"

#include <cstddef>
#include <vector>

namespace hts {

class Model;

class KvCache {
public:
    // Allocates `n_ctx` cells (rounded up to kCellPad) per layer on the model's
    // main device, zero-filled so padded cells read as finite numbers.
    KvCache(const Model & model, int n_ctx, ggml_type type = GGML_TYPE_F16);
    ~KvCache();
    KvCache(const KvCache &) = delete;
    KvCache & operator=(const KvCache &) = delete;

    static constexpr int kCellPad = 256;  // n_kv granularity, as llama.cpp pads it

    int capacity() const { return capacity_; }
    // Cells the attention of a batch ending at cell `n_used` reads: padded to
    // kCellPad (fewer distinct graph shapes, faster GPU kernels), masked beyond.
    int n_kv_for(int n_used) const;

    // Adds to `gf` the copies of k_cur, v_cur [head_dim, n_head_kv, n_tokens]
    // into cells [first_cell, first_cell + n_tokens) of layer il.
    void store(ggml_context * ctx, ggml_cgraph * gf, int il, ggml_tensor * k_cur, ggml_tensor * v_cur,
               int first_cell) const;
    // Views of the first n_kv cells of layer il: [head_dim, n_head_kv, n_kv].
    ggml_tensor * keys(ggml_context * ctx, int il, int n_kv) const;
    ggml_tensor * values(ggml_context * ctx, int il, int n_kv) const;

    size_t bytes() const;  // bytes the K/V tensors hold
    void clear();
    // Copies layers [0, n_layers) from `src` into this dense cache of the same
    // capacity; src must hold every KV head of those layers at full length
    // (dense, or split with only full heads there). Re-routing keeps the dense
    // zone this way while it rebuilds the layers after it.
    void copy_layers_from(const KvCache & src, int n_layers);

    // --- per-head split (HT-Sparse, docs/architecture.md#routed-attention-and-the-dual-length-kv-cache)
    // ---------------------- After compact(), every layer's KV heads are in two groups: "full" heads keep every cell
    // (same cell numbering as before), "sparse" heads keep only the listed cells, renumbered 0.. in order, in a compact
    // tensor sized to them and grown by reserve_sparse() as cells come. The dense tensors are freed.
    //   full_kv[il][g]: KV head g of layer il is full
    //   kept_cells:     ascending cells the sparse heads keep, all < n_used
    void compact(const std::vector<std::vector<bool>> & full_kv, const std::vector<int32_t> & kept_cells, int n_used);
    bool is_split() const { return split_; }
    int sparse_capacity() const { return sparse_capacity_; }
    // Grows the compact tensors to hold at least n_cells cells (a quarter
    // more, to grow seldom; at most the dense capacity), keeping the first
    // n_used. A no-op when they already do.
    void reserve_sparse(int n_cells, int n_used);
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
    int capacity_ = 0;
    int n_embd_head_ = 0;
    int n_head_kv_ = 0;
    ggml_context * ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    std::vector<ggml_tensor *> k_;  // per layer [head_dim * n_head_kv, capacity]
    std::vector<ggml_tensor *> v_;

    ggml_tensor * view(ggml_context * ctx, ggml_tensor * t, int n_kv) const;
    ggml_tensor * group_view(ggml_context * ctx, ggml_tensor * t, int n_kv) const;

    const Model * model_ = nullptr;
    ggml_type type_ = GGML_TYPE_F16;
    bool split_ = false;
    int sparse_capacity_ = 0;
    std::vector<std::vector<bool>> full_kv_;  // per layer, per KV head
    std::vector<int> n_full_;                 // per layer
    std::vector<ggml_tensor *> ks_, vs_;      // split mode: sparse heads [head_dim * G_sparse, sparse_capacity]
    ggml_context * split_ctx_ = nullptr;      // full-head tensors
    ggml_backend_buffer_t split_buffer_ = nullptr;
    ggml_context * sparse_ctx_ = nullptr;  // sparse-head tensors, reallocated as they grow
    ggml_backend_buffer_t sparse_buffer_ = nullptr;

    // New sparse-head tensors of `capacity` cells per layer (n_full: full heads per layer).
    void alloc_sparse(int capacity, const std::vector<int> & n_full, ggml_context *& ctx, ggml_backend_buffer_t & buf,
                      std::vector<ggml_tensor *> & ks, std::vector<ggml_tensor *> & vs) const;
};

}  // namespace hts
