#include "kv_cache.h"

#include "errors.h"
#include "model.h"

#include <algorithm>

namespace hts {

KvCache::KvCache(const Model & model, int n_ctx, ggml_type type) : model_(&model), type_(type) {
    const HParams & hp = model.hparams();
    if (n_ctx <= 0) fail(ErrorKind::InvalidArgument, format("n_ctx must be positive, got %d", n_ctx));
    capacity_ = GGML_PAD(n_ctx, kCellPad);
    n_embd_head_ = hp.n_embd_head;
    n_head_kv_ = hp.n_head_kv;
    ggml_init_params params = {ggml_tensor_overhead() * (2 * hp.n_layer + 1), nullptr, true};
    ctx_ = ggml_init(params);
    for (int il = 0; il < hp.n_layer; ++il) {
        ggml_tensor * k = ggml_new_tensor_2d(ctx_, type, hp.n_embd_kv(), capacity_);
        ggml_tensor * v = ggml_new_tensor_2d(ctx_, type, hp.n_embd_kv(), capacity_);
        ggml_format_name(k, "cache_k_l%d", il);
        ggml_format_name(v, "cache_v_l%d", il);
        k_.push_back(k);
        v_.push_back(v);
    }
    buffer_ = ggml_backend_alloc_ctx_tensors(ctx_, model.backends().main());
    if (!buffer_) {
        ggml_free(ctx_);
        fail(ErrorKind::Backend, format("cannot allocate the KV cache (%d cells)", capacity_));
    }
    ggml_backend_buffer_set_usage(buffer_, GGML_BACKEND_BUFFER_USAGE_COMPUTE);
    clear();
}

KvCache::~KvCache() {
    if (buffer_) ggml_backend_buffer_free(buffer_);
    if (ctx_) ggml_free(ctx_);
    if (split_buffer_) ggml_backend_buffer_free(split_buffer_);
    if (split_ctx_) ggml_free(split_ctx_);
    if (sparse_buffer_) ggml_backend_buffer_free(sparse_buffer_);
    if (sparse_ctx_) ggml_free(sparse_ctx_);
}

int KvCache::n_kv_for(int n_used) const { return std::min(capacity_, std::max(kCellPad, GGML_PAD(n_used, kCellPad))); }

void KvCache::store(ggml_context * ctx, ggml_cgraph * gf, int il, ggml_tensor * k_cur, ggml_tensor * v_cur,
                    int first_cell) const {
    const int64_t n_tokens = k_cur->ne[2];
    for (auto [src, dst] : {std::make_pair(k_cur, k_[il]), std::make_pair(v_cur, v_[il])}) {
        ggml_tensor * cells = ggml_view_2d(ctx, dst, dst->ne[0], n_tokens, dst->nb[1], dst->nb[1] * first_cell);
        // Expanded now so the copy precedes the attention that reads the cache.
        ggml_build_forward_expand(gf, ggml_cpy(ctx, src, cells));
    }
}

ggml_tensor * KvCache::view(ggml_context * ctx, ggml_tensor * t, int n_kv) const {
    return ggml_view_3d(ctx, t, n_embd_head_, n_head_kv_, n_kv, ggml_row_size(t->type, n_embd_head_), t->nb[1], 0);
}

ggml_tensor * KvCache::keys(ggml_context * ctx, int il, int n_kv) const { return view(ctx, k_[il], n_kv); }

ggml_tensor * KvCache::values(ggml_context * ctx, int il, int n_kv) const { return view(ctx, v_[il], n_kv); }

size_t KvCache::bytes() const {
    size_t total = 0;
    for (const auto * group : {&k_, &v_, &ks_, &vs_}) {
        for (const ggml_tensor * t : *group) total += t ? ggml_nbytes(t) : 0;
    }
    return total;
}

void KvCache::copy_layers_from(const KvCache & src, int n_layers) {
    if (split_) fail(ErrorKind::InvalidArgument, "layers are copied into a dense cache");
    if (src.capacity_ != capacity_ || n_layers < 0 || n_layers > int(k_.size())) {
        fail(ErrorKind::InvalidArgument, "the caches differ in capacity or layer count");
    }
    for (int il = 0; il < n_layers; ++il) {
        if (src.n_full_heads(il) != n_head_kv_) {
            fail(ErrorKind::InvalidArgument, format("layer %d keeps only some KV heads at full length", il));
        }
        ggml_backend_tensor_copy(src.k_[il], k_[il]);  // same shape: [n_embd_kv, capacity]
        ggml_backend_tensor_copy(src.v_[il], v_[il]);
    }
}

void KvCache::clear() {
    if (split_) fail(ErrorKind::InvalidArgument, "a compacted KV cache cannot be cleared; make a new one");
    ggml_backend_buffer_clear(buffer_, 0);
}

}  // namespace hts
