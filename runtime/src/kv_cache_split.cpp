// KvCache's per-head split (docs/architecture.md#routed-attention-and-the-dual-length-kv-cache):
// compaction of a dense cache into full-head and sparse-head groups, and the
// graph-side store/views of the split layout.
#include "errors.h"
#include "op_recorder.h"
#include "kv_cache.h"
#include "model.h"

#include "ggml-alloc.h"

#include <algorithm>
#include <climits>
#include <tuple>

namespace hts {

namespace {

// KV head ids of one group of a layer.
std::vector<int32_t> heads_where(const std::vector<bool> & is_full, bool full) {
    std::vector<int32_t> out;
    for (size_t g = 0; g < is_full.size(); ++g) {
        if (is_full[g] == full) out.push_back(int32_t(g));
    }
    return out;
}

// Host data for the compaction graph's index inputs.
struct IndexInput {
    ggml_tensor * tensor;
    std::vector<int32_t> values;
};

// `heads` repeated for every one of n columns: get_rows index [G_group, n].
IndexInput head_rows(ggml_context * ctx, const std::vector<int32_t> & heads, int n) {
    IndexInput in{ggml_new_tensor_2d(ctx, GGML_TYPE_I32, int64_t(heads.size()), n), {}};
    for (int i = 0; i < n; ++i) in.values.insert(in.values.end(), heads.begin(), heads.end());
    return in;
}

}  // namespace

ggml_tensor * KvCache::group_keys(ggml_context * ctx, int il, bool full, int n_kv) const {
    return view(ctx, full ? full_[il].k : sparse_[il].k, n_kv);
}

ggml_tensor * KvCache::group_values(ggml_context * ctx, int il, bool full, int n_kv) const {
    return view(ctx, full ? full_[il].v : sparse_[il].v, n_kv);
}

void KvCache::store_split(ggml_context * ctx, ggml_cgraph * gf, int il, ggml_tensor * k_cur, ggml_tensor * v_cur,
                          ggml_tensor * full_heads_idx, ggml_tensor * sparse_heads_idx, int full_cell,
                          int sparse_cell) const {
    const int64_t n_tokens = k_cur->ne[2];
    auto put = [&](ggml_tensor * src, ggml_tensor * idx, ggml_tensor * dst, int cell) {
        if (!dst) return;
        GGML_ASSERT(cell + n_tokens <= dst->ne[1] && "KvCache::prepare() first");
        ggml_tensor * rows = ggml_get_rows(ctx, src, idx);  // [head_dim, G_group, n_tokens]
        ggml_tensor * cells = ggml_view_2d(ctx, dst, dst->ne[0], n_tokens, dst->nb[1], dst->nb[1] * cell);
        ggml_build_forward_expand(gf, ggml_cpy(ctx, rows, cells));
    };
    put(k_cur, full_heads_idx, full_[il].k, full_cell);
    put(v_cur, full_heads_idx, full_[il].v, full_cell);
    put(k_cur, sparse_heads_idx, sparse_[il].k, sparse_cell);
    put(v_cur, sparse_heads_idx, sparse_[il].v, sparse_cell);
}

namespace {

// One tensor's (K or V) compaction graph for one layer: the full heads' rows
// of cells [0, n_valid) and the sparse heads' rows of the kept cells, gathered
// from the dense tensor into the two groups, on the device.
void compact_tensor(ggml_backend_t backend, ggml_tensor * src, int n_embd_head, int n_head_kv, int n_valid,
                    const std::vector<int32_t> & full_heads, const std::vector<int32_t> & sparse_heads,
                    const std::vector<int32_t> & kept, ggml_tensor * dst_full, ggml_tensor * dst_sparse) {
    const int n_kept = int(kept.size());
    const bool copy_full = dst_full && n_valid > 0, copy_sparse = dst_sparse && n_kept > 0;
    if (!copy_full && !copy_sparse) return;
    const size_t graph_size = 32;
    ggml_init_params iparams = {ggml_tensor_overhead() * 4, nullptr, true};
    ggml_context * ictx = ggml_init(iparams);
    ggml_init_params gparams = {ggml_tensor_overhead() * graph_size + ggml_graph_overhead_custom(graph_size, false),
                                nullptr, true};
    ggml_context * gctx = ggml_init(gparams);
    ggml_cgraph * gf = ggml_new_graph_custom(gctx, graph_size, false);
    std::vector<IndexInput> inputs;
    const size_t head_row = ggml_row_size(src->type, n_embd_head);
    if (copy_full) {
        IndexInput full_idx = head_rows(ictx, full_heads, n_valid);
        ggml_tensor * cells = ggml_view_3d(gctx, src, n_embd_head, n_head_kv, n_valid, head_row, src->nb[1], 0);
        ggml_tensor * rows = ggml_get_rows(gctx, cells, full_idx.tensor);  // [head_dim, G_full, n_valid]
        ggml_tensor * dst = ggml_view_2d(gctx, dst_full, dst_full->ne[0], n_valid, dst_full->nb[1], 0);
        ggml_build_forward_expand(gf, ggml_cpy(gctx, rows, dst));
        inputs.push_back(std::move(full_idx));
    }
    if (copy_sparse) {
        IndexInput kept_idx{ggml_new_tensor_1d(ictx, GGML_TYPE_I32, n_kept), kept};
        IndexInput sparse_idx = head_rows(ictx, sparse_heads, n_kept);
        ggml_tensor * used = ggml_view_2d(gctx, src, src->ne[0], n_valid, src->nb[1], 0);
        ggml_tensor * picked = ggml_get_rows(gctx, used, kept_idx.tensor);  // [n_embd_kv, n_kept]
        picked = ggml_reshape_3d(gctx, picked, n_embd_head, n_head_kv, n_kept);
        ggml_tensor * rows = ggml_get_rows(gctx, picked, sparse_idx.tensor);  // [head_dim, G_sparse, n_kept]
        ggml_tensor * dst = ggml_view_2d(gctx, dst_sparse, dst_sparse->ne[0], n_kept, dst_sparse->nb[1], 0);
        ggml_build_forward_expand(gf, ggml_cpy(gctx, rows, dst));
        inputs.push_back(std::move(kept_idx));
        inputs.push_back(std::move(sparse_idx));
    }
    ggml_backend_buffer_t ibuf = ggml_backend_alloc_ctx_tensors(ictx, backend);
    bool ok = ibuf != nullptr;
    ggml_gallocr_t galloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend));
    if (ok) {
        for (const IndexInput & in : inputs)
            ggml_backend_tensor_set(in.tensor, in.values.data(), 0, ggml_nbytes(in.tensor));
        record_graph_ops(gf);
        ok = ggml_gallocr_alloc_graph(galloc, gf) && ggml_backend_graph_compute(backend, gf) == GGML_STATUS_SUCCESS;
    }
    ggml_gallocr_free(galloc);
    if (ibuf) ggml_backend_buffer_free(ibuf);
    ggml_free(gctx);
    ggml_free(ictx);
    if (!ok) fail(ErrorKind::Backend, "KV cache compaction failed");
}

}  // namespace

void KvCache::compact(const std::vector<std::vector<bool>> & full_kv, const std::vector<int32_t> & kept_cells,
                      int n_used) {
    const int n_layer = int(full_.size());
    if (split_) fail(ErrorKind::InvalidArgument, "the KV cache is already compacted");
    if (int(full_kv.size()) != n_layer)
        fail(ErrorKind::InvalidArgument, format("routing must list %d layers", n_layer));
    for (const auto & layer : full_kv) {
        if (int(layer.size()) != n_head_kv_)
            fail(ErrorKind::InvalidArgument, format("routing must list %d KV heads per layer", n_head_kv_));
    }
    if (n_used <= 0 || n_used > limit_) fail(ErrorKind::InvalidArgument, "nothing to compact");
    for (size_t i = 0; i < kept_cells.size(); ++i) {
        if (kept_cells[i] < 0 || kept_cells[i] >= n_used || (i > 0 && kept_cells[i] <= kept_cells[i - 1])) {
            fail(ErrorKind::InvalidArgument, "kept cells must be ascending and below the used cells");
        }
    }
    ggml_backend_t backend = model_->backends().main();
    n_full_.assign(n_layer, 0);
    for (int il = 0; il < n_layer; ++il) {
        if (window_layer_[il]) {  // a window layer keeps its window, every head (not routed)
            n_full_[il] = n_head_kv_;
            continue;
        }
        const std::vector<int32_t> full_heads = heads_where(full_kv[il], true);
        const std::vector<int32_t> sparse_heads = heads_where(full_kv[il], false);
        Storage & dense = full_[il];
        // Cells this layer holds: all used ones, or (the pruned zone, tokens held at P) only those before them.
        const int n_valid = std::min(n_used, dense.capacity);
        const std::vector<int32_t> kept(kept_cells.begin(),
                                        std::lower_bound(kept_cells.begin(), kept_cells.end(), n_valid));
        Storage full_group, sparse_group;
        if (!full_heads.empty()) full_group = alloc(il, int(full_heads.size()), n_kv_for(n_used), "_full");
        if (!sparse_heads.empty()) {
            sparse_group = alloc(il, int(sparse_heads.size()), n_kv_for(int(kept_cells.size()) + 1), "_sparse");
        }
        if (dense.buffer) {
            compact_tensor(backend, dense.k, n_embd_head_, n_head_kv_, n_valid, full_heads, sparse_heads, kept,
                           full_group.k, sparse_group.k);
            // Values of cells a keys-only layer never held (keys_only_from) are written when their tokens finish.
            const int n_valid_v = std::min(n_valid, dense.v_capacity);
            const std::vector<int32_t> kept_v(kept.begin(), std::lower_bound(kept.begin(), kept.end(), n_valid_v));
            compact_tensor(backend, dense.v, n_embd_head_, n_head_kv_, n_valid_v, full_heads, sparse_heads, kept_v,
                           full_group.v, sparse_group.v);
        }
        release(dense);  // one layer's dense K/V given up as soon as its groups hold it
        values_below_[il] = INT_MAX;
        full_[il] = full_group;
        sparse_[il] = sparse_group;
        n_full_[il] = int(full_heads.size());
    }
    full_kv_ = full_kv;
    split_ = true;
}

}  // namespace hts
