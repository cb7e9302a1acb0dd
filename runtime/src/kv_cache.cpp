#include "kv_cache.h"

#include "errors.h"
#include "kv_copy.h"
#include "model.h"

#include <algorithm>
#include <climits>
#include <tuple>

namespace hts {

KvCache::KvCache(const Model & model, int n_ctx, int n_batch, ggml_type type) : model_(&model), type_(type) {
    const HParams & hp = model.hparams();
    if (n_ctx <= 0) fail(ErrorKind::InvalidArgument, format("n_ctx must be positive, got %d", n_ctx));
    limit_ = GGML_PAD(n_ctx, kCellPad);
    // A batch's queries see back n_swa - 1 cells from its first token: the
    // window and one batch fit, so nothing a query sees is overwritten.
    const int ring = hp.n_swa > 0 ? GGML_PAD(hp.n_swa + std::max(1, n_batch), kCellPad) : 0;
    ring_ = ring > 0 && ring < limit_ ? ring : 0;
    window_layer_.assign(hp.n_layer, false);
    for (int il = 0; il < hp.n_layer; ++il) window_layer_[il] = hp.is_swa(il);
    values_below_.assign(hp.n_layer, INT_MAX);
    n_embd_head_ = hp.n_embd_head;
    n_head_kv_ = hp.n_head_kv;
    full_.resize(hp.n_layer);
    sparse_.resize(hp.n_layer);
}

KvCache::~KvCache() {
    for (Storage & s : full_) release(s);
    for (Storage & s : sparse_) release(s);
}

int KvCache::n_kv_for(int n_used) const { return std::min(limit_, std::max(kCellPad, GGML_PAD(n_used, kCellPad))); }

int KvCache::n_sparse_kv_for(int n_used_sparse) const { return n_kv_for(n_used_sparse); }

int KvCache::window_row_cell(int row, int last) const {
    if (ring_ == 0 || last < ring_) return row <= last ? row : -1;  // not wrapped yet: rows are cells
    return last - ((last - row) % ring_ + ring_) % ring_;           // the newest cell written to `row`
}

void KvCache::keys_only_from(int il, int cell) { values_below_[il] = cell; }

int KvCache::v_capacity_for(int il, int capacity) const {
    const int below = values_below_[il];
    // Exactly the cells before the held ones, so a probe batch (which starts there) stores no value.
    return below == INT_MAX ? capacity : std::min(capacity, std::max(below, 1));
}

KvCache::Storage KvCache::alloc(int il, int n_heads, int capacity, const char * what, int v_capacity) {
    Storage s;
    s.capacity = capacity;
    s.v_capacity = v_capacity < 0 ? capacity : v_capacity;
    s.n_heads = n_heads;
    ggml_init_params params = {ggml_tensor_overhead() * 2, nullptr, true};
    s.ctx = ggml_init(params);
    s.k = ggml_new_tensor_2d(s.ctx, type_, int64_t(n_embd_head_) * n_heads, capacity);
    s.v = ggml_new_tensor_2d(s.ctx, type_, int64_t(n_embd_head_) * n_heads, s.v_capacity);
    ggml_format_name(s.k, "cache_k%s_l%d", what, il);
    ggml_format_name(s.v, "cache_v%s_l%d", what, il);
    s.buffer = ggml_backend_alloc_ctx_tensors(s.ctx, model_->backends().main());
    if (!s.buffer) {
        ggml_free(s.ctx);
        fail(ErrorKind::Backend,
             format("cannot allocate the KV cache of layer %d (%d cells): out of device memory", il, capacity));
    }
    ggml_backend_buffer_set_usage(s.buffer, GGML_BACKEND_BUFFER_USAGE_COMPUTE);
    ggml_backend_buffer_clear(s.buffer, 0);  // unused cells read as finite numbers
    bytes_ += s.bytes();
    peak_ = std::max(peak_, bytes_);
    return s;
}

void KvCache::release(Storage & s) {
    bytes_ -= s.bytes();
    if (s.buffer) ggml_backend_buffer_free(s.buffer);
    if (s.ctx) ggml_free(s.ctx);
    s = Storage{};
}

void KvCache::grow(int il, Storage & s, int n_heads, int n_cells, int n_used, int limit, const char * what) {
    const bool values_short = s.buffer && s.v_capacity < v_capacity_for(il, s.capacity);  // keys_only_from lifted
    if (n_cells <= s.capacity && !values_short) return;
    if (n_cells > limit) {
        fail(ErrorKind::ContextOverflow, format("%d cells exceed the context (%d)", n_cells, limit));
    }
    // Decoding (a few cells past the end) grows by a quarter, so it grows
    // seldom; a prompt's run grows to what it needs, so a question after a
    // long span adds no quarter of slack to every layer at the peak.
    const bool few = n_cells <= GGML_PAD(s.capacity + 1, kCellPad);
    const int capacity =
        n_cells <= s.capacity
            ? s.capacity
            : std::min(limit, few ? std::max(n_cells, GGML_PAD(s.capacity + s.capacity / 4, kCellPad)) : n_cells);
    Storage bigger = alloc(il, n_heads, capacity, what, v_capacity_for(il, capacity));
    const int n_keep = std::min(n_used, s.capacity);
    if (s.buffer && n_keep > 0) {
        // Rows are cells: the used ones are one prefix, copied on the device.
        copy_rows(model_->backends().main(), {{s.k, bigger.k}}, n_keep);
        const int n_keep_v = std::min({n_keep, s.v_capacity, bigger.v_capacity});
        if (n_keep_v > 0) copy_rows(model_->backends().main(), {{s.v, bigger.v}}, n_keep_v);
    }
    release(s);
    s = bigger;
}

void KvCache::prepare(int begin, int end, int n_kv, int n_used, int n_kv_sparse, int n_used_sparse) {
    for (int il = begin; il < end; ++il) {
        const int n_full = n_full_heads(il);
        if (is_ring(il)) {  // rows are cells until the ring wraps; it never grows past itself
            grow(il, full_[il], n_full, std::min(n_kv, ring_), std::min(n_used, ring_), ring_, "_swa");
            continue;
        }
        if (n_full > 0) grow(il, full_[il], n_full, n_kv, n_used, limit_, split_ ? "_full" : "");
        if (split_ && n_full < n_head_kv_ && n_kv_sparse > 0) {
            grow(il, sparse_[il], n_head_kv_ - n_full, n_kv_sparse, n_used_sparse, limit_, "_sparse");
        }
    }
}

void KvCache::store(ggml_context * ctx, ggml_cgraph * gf, int il, ggml_tensor * k_cur, ggml_tensor * v_cur,
                    int first_cell) const {
    const int64_t n_tokens = k_cur->ne[2];
    const Storage & s = full_[il];
    // A ring's batch may wrap: its tokens [0, n_first) go to rows row0.., the rest to rows 0...
    const int64_t row0 = is_ring(il) ? first_cell % ring_ : first_cell;
    const int64_t n_first = is_ring(il) ? std::min<int64_t>(n_tokens, ring_ - row0) : n_tokens;
    GGML_ASSERT(row0 + n_first <= s.capacity && n_tokens - n_first <= s.capacity && "KvCache::prepare() first");
    for (auto [src, dst] : {std::make_pair(k_cur, s.k), std::make_pair(v_cur, s.v)}) {
        if (dst == s.v && first_cell >= values_below_[il]) continue;  // keys only (keys_only_from): a probe
        for (auto [t0, n, row] :
             {std::make_tuple(int64_t(0), n_first, row0), std::make_tuple(n_first, n_tokens - n_first, int64_t(0))}) {
            if (n == 0) continue;
            ggml_tensor * part = ggml_view_3d(ctx, src, src->ne[0], src->ne[1], n, src->nb[1], src->nb[2],
                                              size_t(t0) * src->nb[2]);  // [head_dim, n_head_kv, n]
            ggml_tensor * cells = ggml_view_2d(ctx, dst, dst->ne[0], n, dst->nb[1], dst->nb[1] * row);
            // Expanded now so the copy precedes the attention that reads the cache.
            ggml_build_forward_expand(gf, ggml_cpy(ctx, part, cells));
        }
    }
}

void KvCache::store_rows(ggml_context * ctx, ggml_cgraph * gf, int il, ggml_tensor * k_cur, ggml_tensor * v_cur,
                         ggml_tensor * rows) const {
    const Storage & s = full_[il];
    for (auto [src, dst] : {std::make_pair(k_cur, s.k), std::make_pair(v_cur, s.v)}) {
        if (!ggml_is_contiguous(src)) src = ggml_cont(ctx, src);
        src = ggml_reshape_2d(ctx, src, src->ne[0] * src->ne[1], src->ne[2]);  // [n_embd_kv, n_tokens]
        // Expanded now so the copy precedes the attention that reads the cache.
        ggml_build_forward_expand(gf, ggml_set_rows(ctx, dst, src, rows));
    }
}

ggml_tensor * KvCache::view(ggml_context * ctx, ggml_tensor * t, int n_kv) const {
    GGML_ASSERT(t && n_kv <= t->ne[1] && "KvCache::prepare() first");
    const int64_t n_heads = t->ne[0] / n_embd_head_;
    return ggml_view_3d(ctx, t, n_embd_head_, n_heads, n_kv, ggml_row_size(t->type, n_embd_head_), t->nb[1], 0);
}

ggml_tensor * KvCache::keys(ggml_context * ctx, int il, int n_kv) const { return view(ctx, full_[il].k, n_kv); }

ggml_tensor * KvCache::values(ggml_context * ctx, int il, int n_kv) const { return view(ctx, full_[il].v, n_kv); }

void KvCache::take_layers(KvCache & src, int n_layers) {
    if (split_ || bytes_ > 0) fail(ErrorKind::InvalidArgument, "layers are moved into an empty dense cache");
    if (src.limit_ != limit_ || n_layers < 0 || n_layers > int(full_.size())) {
        fail(ErrorKind::InvalidArgument, "the caches differ in size or layer count");
    }
    for (int il = 0; il < n_layers; ++il) {
        if (src.n_full_heads(il) != n_head_kv_) {
            fail(ErrorKind::InvalidArgument, format("layer %d keeps only some KV heads at full length", il));
        }
        // Every head full: the full group's layout is the dense one, [n_embd_kv, cells].
        std::swap(full_[il], src.full_[il]);
        const size_t moved = full_[il].bytes();
        src.bytes_ -= moved;
        bytes_ += moved;
    }
    peak_ = std::max(peak_, bytes_);
}

}  // namespace hts
