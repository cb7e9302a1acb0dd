// KvCache's per-head split (docs/architecture.md#routed-attention-and-the-dual-length-kv-cache):
// compaction of a dense cache into full-head and sparse-head groups, and the
// graph-side store/views of the split layout.
#include "errors.h"
#include "op_recorder.h"
#include "kv_cache.h"
#include "model.h"

#include "ggml-alloc.h"

#include <algorithm>
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

// Allocates every tensor of ctx on backend, zero-filled so unused cells read
// as finite numbers; nullptr when ctx has no tensor. Frees ctx on failure.
ggml_backend_buffer_t alloc_zeroed(ggml_context * ctx, ggml_backend_t backend, const char * what) {
    if (!ggml_get_first_tensor(ctx)) return nullptr;
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, backend);
    if (!buf) {
        ggml_free(ctx);
        fail(ErrorKind::Backend, format("cannot allocate %s", what));
    }
    ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_COMPUTE);
    ggml_backend_buffer_clear(buf, 0);
    return buf;
}

}  // namespace

void KvCache::alloc_sparse(int capacity, const std::vector<int> & n_full, ggml_context *& ctx,
                           ggml_backend_buffer_t & buf, std::vector<ggml_tensor *> & ks,
                           std::vector<ggml_tensor *> & vs) const {
    const int n_layer = int(n_full.size());
    ggml_init_params params = {ggml_tensor_overhead() * (2 * n_layer + 1), nullptr, true};
    ctx = ggml_init(params);
    ks.assign(n_layer, nullptr);
    vs.assign(n_layer, nullptr);
    for (int il = 0; il < n_layer; ++il) {
        const int n_sparse = n_head_kv_ - n_full[il];
        if (n_sparse == 0) continue;
        ks[il] = ggml_new_tensor_2d(ctx, type_, int64_t(n_embd_head_) * n_sparse, capacity);
        vs[il] = ggml_new_tensor_2d(ctx, type_, int64_t(n_embd_head_) * n_sparse, capacity);
        ggml_format_name(ks[il], "cache_k_sparse_l%d", il);
        ggml_format_name(vs[il], "cache_v_sparse_l%d", il);
    }
    buf = alloc_zeroed(ctx, model_->backends().main(), "the compacted KV cache");
}

void KvCache::reserve_sparse(int n_cells, int n_used) {
    if (!split_ || n_cells <= sparse_capacity_) return;
    if (n_cells > capacity_)
        fail(ErrorKind::ContextOverflow, format("%d compact cells exceed the context (%d)", n_cells, capacity_));
    const int capacity = std::min(capacity_, GGML_PAD(n_cells + n_cells / 4, kCellPad));
    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    std::vector<ggml_tensor *> ks, vs;
    alloc_sparse(capacity, n_full_, ctx, buf, ks, vs);
    // Rows are cells, so the used cells are one contiguous prefix of each tensor.
    std::vector<uint8_t> staging;
    for (size_t il = 0; il < ks.size(); ++il) {
        for (auto [src, dst] : {std::make_pair(ks_[il], ks[il]), std::make_pair(vs_[il], vs[il])}) {
            if (!src || n_used == 0) continue;
            staging.resize(src->nb[1] * size_t(n_used));
            ggml_backend_tensor_get(src, staging.data(), 0, staging.size());
            ggml_backend_tensor_set(dst, staging.data(), 0, staging.size());
        }
    }
    if (sparse_buffer_) ggml_backend_buffer_free(sparse_buffer_);
    if (sparse_ctx_) ggml_free(sparse_ctx_);
    sparse_ctx_ = ctx;
    sparse_buffer_ = buf;
    ks_ = ks;
    vs_ = vs;
    sparse_capacity_ = capacity;
}

int KvCache::n_sparse_kv_for(int n_used_sparse) const {
    return std::min(sparse_capacity_, std::max(kCellPad, GGML_PAD(n_used_sparse, kCellPad)));
}

ggml_tensor * KvCache::group_view(ggml_context * ctx, ggml_tensor * t, int n_kv) const {
    const int64_t n_heads = t->ne[0] / n_embd_head_;
    return ggml_view_3d(ctx, t, n_embd_head_, n_heads, n_kv, ggml_row_size(t->type, n_embd_head_), t->nb[1], 0);
}

ggml_tensor * KvCache::group_keys(ggml_context * ctx, int il, bool full, int n_kv) const {
    return group_view(ctx, full ? k_[il] : ks_[il], n_kv);
}

ggml_tensor * KvCache::group_values(ggml_context * ctx, int il, bool full, int n_kv) const {
    return group_view(ctx, full ? v_[il] : vs_[il], n_kv);
}

void KvCache::store_split(ggml_context * ctx, ggml_cgraph * gf, int il, ggml_tensor * k_cur, ggml_tensor * v_cur,
                          ggml_tensor * full_heads_idx, ggml_tensor * sparse_heads_idx, int full_cell,
                          int sparse_cell) const {
    const int64_t n_tokens = k_cur->ne[2];
    auto put = [&](ggml_tensor * src, ggml_tensor * idx, ggml_tensor * dst, int cell) {
        if (!dst) return;
        ggml_tensor * rows = ggml_get_rows(ctx, src, idx);  // [head_dim, G_group, n_tokens]
        ggml_tensor * cells = ggml_view_2d(ctx, dst, dst->ne[0], n_tokens, dst->nb[1], dst->nb[1] * cell);
        ggml_build_forward_expand(gf, ggml_cpy(ctx, rows, cells));
    };
    put(k_cur, full_heads_idx, k_[il], full_cell);
    put(v_cur, full_heads_idx, v_[il], full_cell);
    put(k_cur, sparse_heads_idx, ks_[il], sparse_cell);
    put(v_cur, sparse_heads_idx, vs_[il], sparse_cell);
}

void KvCache::compact(const std::vector<std::vector<bool>> & full_kv, const std::vector<int32_t> & kept_cells,
                      int n_used) {
    const int n_layer = int(k_.size());
    if (split_) fail(ErrorKind::InvalidArgument, "the KV cache is already compacted");
    if (int(full_kv.size()) != n_layer)
        fail(ErrorKind::InvalidArgument, format("routing must list %d layers", n_layer));
    for (const auto & layer : full_kv) {
        if (int(layer.size()) != n_head_kv_)
            fail(ErrorKind::InvalidArgument, format("routing must list %d KV heads per layer", n_head_kv_));
    }
    if (n_used <= 0 || n_used > capacity_) fail(ErrorKind::InvalidArgument, "nothing to compact");
    for (size_t i = 0; i < kept_cells.size(); ++i) {
        if (kept_cells[i] < 0 || kept_cells[i] >= n_used || (i > 0 && kept_cells[i] <= kept_cells[i - 1])) {
            fail(ErrorKind::InvalidArgument, "kept cells must be ascending and below the used cells");
        }
    }
    const int n_kept = int(kept_cells.size());
    // Room for the kept cells and a few more; reserve_sparse() grows it.
    const int sparse_capacity = std::min(capacity_, GGML_PAD(n_kept + 1, kCellPad));

    // The split tensors: full heads at full length, sparse heads compact.
    std::vector<int> n_full(n_layer);
    for (int il = 0; il < n_layer; ++il) n_full[il] = int(std::count(full_kv[il].begin(), full_kv[il].end(), true));
    ggml_init_params params = {ggml_tensor_overhead() * (2 * n_layer + 1), nullptr, true};
    ggml_context * sctx = ggml_init(params);
    std::vector<ggml_tensor *> kf(n_layer, nullptr), vf(n_layer, nullptr), ks, vs;
    for (int il = 0; il < n_layer; ++il) {
        if (n_full[il] == 0) continue;
        kf[il] = ggml_new_tensor_2d(sctx, type_, int64_t(n_embd_head_) * n_full[il], capacity_);
        vf[il] = ggml_new_tensor_2d(sctx, type_, int64_t(n_embd_head_) * n_full[il], capacity_);
        ggml_format_name(kf[il], "cache_k_full_l%d", il);
        ggml_format_name(vf[il], "cache_v_full_l%d", il);
    }
    ggml_backend_t backend = model_->backends().main();
    ggml_backend_buffer_t sbuf = alloc_zeroed(sctx, backend, "the compacted KV cache");
    ggml_context * pctx = nullptr;
    ggml_backend_buffer_t pbuf = nullptr;
    try {
        alloc_sparse(sparse_capacity, n_full, pctx, pbuf, ks, vs);
    } catch (...) {
        if (sbuf) ggml_backend_buffer_free(sbuf);
        ggml_free(sctx);
        throw;
    }

    // The copy graph: full heads keep every used cell, sparse heads the kept ones.
    const size_t graph_size = size_t(16 * n_layer + 64);
    ggml_init_params iparams = {ggml_tensor_overhead() * (2 * n_layer + 2), nullptr, true};
    ggml_context * ictx = ggml_init(iparams);
    ggml_init_params gparams = {ggml_tensor_overhead() * graph_size + ggml_graph_overhead_custom(graph_size, false),
                                nullptr, true};
    ggml_context * gctx = ggml_init(gparams);
    ggml_cgraph * gf = ggml_new_graph_custom(gctx, graph_size, false);
    std::vector<IndexInput> inputs;
    IndexInput kept{nullptr, kept_cells};
    if (n_kept > 0) {
        kept.tensor = ggml_new_tensor_1d(ictx, GGML_TYPE_I32, n_kept);
        inputs.push_back(kept);
    }
    for (int il = 0; il < n_layer; ++il) {
        const std::vector<int32_t> full_heads = heads_where(full_kv[il], true),
                                   sparse_heads = heads_where(full_kv[il], false);
        const bool copy_full = !full_heads.empty(), copy_sparse = !sparse_heads.empty() && n_kept > 0;
        IndexInput full_idx = copy_full ? head_rows(ictx, full_heads, n_used) : IndexInput{};
        IndexInput sparse_idx = copy_sparse ? head_rows(ictx, sparse_heads, n_kept) : IndexInput{};
        for (auto [src, dst_full, dst_sparse] :
             {std::make_tuple(k_[il], kf[il], ks[il]), std::make_tuple(v_[il], vf[il], vs[il])}) {
            if (copy_full) {
                ggml_tensor * cells = group_view(gctx, src, n_used);               // [head_dim, G, n_used]
                ggml_tensor * rows = ggml_get_rows(gctx, cells, full_idx.tensor);  // [head_dim, G_full, n_used]
                ggml_tensor * dst = ggml_view_2d(gctx, dst_full, dst_full->ne[0], n_used, dst_full->nb[1], 0);
                ggml_build_forward_expand(gf, ggml_cpy(gctx, rows, dst));
            }
            if (copy_sparse) {
                ggml_tensor * used = ggml_view_2d(gctx, src, src->ne[0], n_used, src->nb[1], 0);
                ggml_tensor * picked = ggml_get_rows(gctx, used, kept.tensor);  // [n_embd_kv, n_kept]
                picked = ggml_reshape_3d(gctx, picked, n_embd_head_, n_head_kv_, n_kept);
                ggml_tensor * rows = ggml_get_rows(gctx, picked, sparse_idx.tensor);  // [head_dim, G_sparse, n_kept]
                ggml_tensor * dst = ggml_view_2d(gctx, dst_sparse, dst_sparse->ne[0], n_kept, dst_sparse->nb[1], 0);
                ggml_build_forward_expand(gf, ggml_cpy(gctx, rows, dst));
            }
        }
        if (copy_full) inputs.push_back(std::move(full_idx));
        if (copy_sparse) inputs.push_back(std::move(sparse_idx));
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
    if (!ok) {
        for (ggml_backend_buffer_t b : {sbuf, pbuf})
            if (b) ggml_backend_buffer_free(b);
        ggml_free(sctx);
        ggml_free(pctx);
        fail(ErrorKind::Backend, "KV cache compaction failed");
    }

    // The dense tensors go; the full groups take their place.
    ggml_backend_buffer_free(buffer_);
    ggml_free(ctx_);
    buffer_ = nullptr;
    ctx_ = nullptr;
    k_ = kf;
    v_ = vf;
    ks_ = ks;
    vs_ = vs;
    split_ctx_ = sctx;
    split_buffer_ = sbuf;
    sparse_ctx_ = pctx;
    sparse_buffer_ = pbuf;
    full_kv_ = full_kv;
    n_full_ = n_full;
    sparse_capacity_ = sparse_capacity;
    split_ = true;
}

}  // namespace hts
