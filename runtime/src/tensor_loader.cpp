#include "tensor_loader.h"

#include "errors.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace hts {

static constexpr int kMaxWeights = 4096;

TensorLoader::TensorLoader(const GgufFile & file, const Backends & backends) : file_(file), backends_(backends) {}

TensorLoader::~TensorLoader() {
    for (auto & kv : contexts_) {
        if (kv.second) ggml_free(kv.second);
    }
}

static std::string shape_string(const int64_t * ne, int n) {
    std::string s = "[";
    for (int i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}

static void check_shape(const ggml_tensor * meta, const std::string & name, std::initializer_list<int64_t> ne) {
    int i = 0;
    bool ok = true;
    for (int64_t want : ne) ok = ok && meta->ne[i++] == want;
    for (; i < GGML_MAX_DIMS; ++i) ok = ok && meta->ne[i] == 1;
    if (!ok) {
        std::vector<int64_t> want(ne);
        fail(ErrorKind::InvalidFile, format("tensor '%s' has shape %s, expected %s", name.c_str(),
                                            shape_string(meta->ne, ggml_n_dims(meta)).c_str(),
                                            shape_string(want.data(), static_cast<int>(want.size())).c_str()));
    }
}

ggml_tensor * TensorLoader::require(const std::string & name, std::initializer_list<int64_t> ne, WeightUse use,
                                    bool on_host) {
    const ggml_tensor * meta = file_.find_tensor(name);
    if (!meta) fail(ErrorKind::InvalidFile, format("'%s' lacks the tensor '%s'", file_.path().c_str(), name.c_str()));
    return create(meta, name, ne, use, on_host);
}

ggml_tensor * TensorLoader::optional(const std::string & name, std::initializer_list<int64_t> ne, WeightUse use) {
    const ggml_tensor * meta = file_.find_tensor(name);
    return meta ? create(meta, name, ne, use, false) : nullptr;
}

ggml_tensor * TensorLoader::duplicate(const std::string & name, std::initializer_list<int64_t> ne, WeightUse use) {
    return require(name, ne, use);
}

// Same test llama.cpp's loader makes: build the op the graph will build, with a
// zero-size buffer of the candidate type attached to the weight, and ask the device.
static bool buft_supports(const ggml_tensor * meta, WeightUse use, ggml_backend_buffer_type_t buft,
                          ggml_backend_dev_t dev) {
    ggml_init_params params = {ggml_tensor_overhead() * 8, nullptr, true};
    ggml_context * ctx = ggml_init(params);
    ggml_tensor * w = ggml_dup_tensor(ctx, meta);
    ggml_tensor * op = nullptr;
    if (use == WeightUse::GetRows) {
        op = ggml_get_rows(ctx, w, ggml_new_tensor_1d(ctx, GGML_TYPE_I32, 512));
    } else if (use == WeightUse::Elementwise) {
        // Norm weights multiply, biases add: both are binary broadcast ops.
        op = ggml_mul(ctx, ggml_new_tensor_4d(ctx, GGML_TYPE_F32, w->ne[0], w->ne[1], w->ne[2], w->ne[3]), w);
    } else {
        op = ggml_mul_mat(ctx, w, ggml_new_tensor_4d(ctx, GGML_TYPE_F32, w->ne[0], 512, w->ne[2], w->ne[3]));
    }
    w->buffer = ggml_backend_buft_alloc_buffer(buft, 0);
    const bool ok = ggml_backend_dev_supports_op(dev, op);
    ggml_backend_buffer_free(w->buffer);
    w->buffer = nullptr;
    ggml_free(ctx);
    return ok;
}

ggml_backend_buffer_type_t TensorLoader::select_buft(const ggml_tensor * meta, WeightUse use, bool on_host) const {
    const auto candidates = on_host ? backends_.host_weight_bufts() : backends_.weight_bufts();
    for (auto buft : candidates) {
        if (buft_supports(meta, use, buft, backends_.device_of(buft))) return buft;
    }
    return candidates.back();
}

ggml_context * TensorLoader::context_for(ggml_backend_buffer_type_t buft) {
    auto it = contexts_.find(buft);
    if (it != contexts_.end()) return it->second;
    ggml_init_params params = {ggml_tensor_overhead() * kMaxWeights, nullptr, true};
    ggml_context * ctx = ggml_init(params);
    if (!ctx) fail(ErrorKind::Backend, "cannot create a ggml context for the weights");
    contexts_[buft] = ctx;
    return ctx;
}

ggml_tensor * TensorLoader::create(const ggml_tensor * meta, const std::string & name,
                                   std::initializer_list<int64_t> ne, WeightUse use, bool on_host) {
    check_shape(meta, name, ne);
    ggml_backend_buffer_type_t buft = select_buft(meta, use, on_host);
    ggml_tensor * t = ggml_dup_tensor(context_for(buft), meta);
    ggml_set_name(t, name.c_str());
    pending_[buft].push_back({t, meta});
    return t;
}

bool TensorLoader::is_plain_cpu(ggml_backend_buffer_type_t buft) const {
    return buft == ggml_backend_dev_buffer_type(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU));
}

void TensorLoader::load(std::vector<ggml_context *> & contexts, std::vector<ggml_backend_buffer_t> & buffers) {
    for (auto & [buft, list] : pending_) {
        if (getenv("HTS_DEBUG_LOAD"))
            fprintf(stderr, "buft %s: %zu tensors\n", ggml_backend_buft_name(buft), list.size());
        ggml_backend_buffer_t buf = nullptr;
        if (is_plain_cpu(buft)) {
            // Point the tensors into the read-only mapping of the file.
            buf = ggml_backend_cpu_buffer_from_ptr(const_cast<uint8_t *>(file_.data_begin()), file_.data_size());
            if (!buf) fail(ErrorKind::Backend, "cannot wrap the model file mapping in a CPU buffer");
            for (auto & p : list) {
                ggml_backend_tensor_alloc(buf, p.tensor, const_cast<uint8_t *>(file_.tensor_data(p.meta)));
            }
        } else {
            buf = ggml_backend_alloc_ctx_tensors_from_buft(contexts_[buft], buft);
            if (!buf) {
                fail(ErrorKind::Backend,
                     format("cannot allocate %s memory for the weights", ggml_backend_buft_name(buft)));
            }
            for (auto & p : list)
                ggml_backend_tensor_set(p.tensor, file_.tensor_data(p.meta), 0, ggml_nbytes(p.tensor));
        }
        ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        buffers.push_back(buf);
    }
    for (auto & kv : contexts_) contexts.push_back(kv.second);
    contexts_.clear();
    pending_.clear();
}

}  // namespace hts
