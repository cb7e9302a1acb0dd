// The KV cache of one session: per layer, a K and a V tensor holding every KV
// head for up to `capacity` cells, cell i holding the token at position i.
//
// Graph code reaches the cache only through store()/keys()/values(), per layer
// and per head group, so the HT-Sparse cache can split a layer into a
// full-length group and a compact group (DESIGN.md section 4) behind the same
// calls.
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
    void store(ggml_context * ctx, ggml_cgraph * gf, int il, ggml_tensor * k_cur, ggml_tensor * v_cur, int first_cell) const;
    // Views of the first n_kv cells of layer il: [head_dim, n_head_kv, n_kv].
    ggml_tensor * keys(ggml_context * ctx, int il, int n_kv) const;
    ggml_tensor * values(ggml_context * ctx, int il, int n_kv) const;

    size_t bytes() const;  // bytes the K/V tensors hold
    void clear();

private:
    int capacity_ = 0;
    int n_embd_head_ = 0;
    int n_head_kv_ = 0;
    ggml_context * ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    std::vector<ggml_tensor *> k_;  // per layer [head_dim * n_head_kv, capacity]
    std::vector<ggml_tensor *> v_;

    ggml_tensor * view(ggml_context * ctx, ggml_tensor * t, int n_kv) const;
};

}  // namespace hts
