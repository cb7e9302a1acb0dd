#include "graph_runner.h"

#include "errors.h"
#include "op_recorder.h"

#include "ggml-alloc.h"

#include <cstring>

namespace hts {

GraphRunner::GraphRunner(ggml_backend_t backend, size_t max_nodes) : backend_(backend), max_nodes_(max_nodes) {
    ggml_init_params params = {ggml_tensor_overhead() * max_nodes + ggml_graph_overhead_custom(max_nodes, false),
                               nullptr, true};
    ctx_ = ggml_init(params);
    // One input per layer and more (saliency): as many as the graph has nodes, so no layer count overflows it.
    ggml_init_params in_params = {ggml_tensor_overhead() * max_nodes, nullptr, true};
    inputs_ctx_ = ggml_init(in_params);
}

GraphRunner::~GraphRunner() {
    if (galloc_) ggml_gallocr_free(galloc_);
    if (inputs_buffer_) ggml_backend_buffer_free(inputs_buffer_);
    ggml_free(ctx_);
    ggml_free(inputs_ctx_);
}

ggml_tensor * GraphRunner::input(ggml_type type, const void * data, size_t size, std::vector<int64_t> ne) {
    ne.resize(4, 1);
    ggml_tensor * t = ggml_new_tensor(inputs_ctx_, type, 4, ne.data());
    GGML_ASSERT(ggml_nbytes(t) == size);
    Upload up{t, std::vector<uint8_t>(size)};
    std::memcpy(up.bytes.data(), data, size);
    uploads_.push_back(std::move(up));
    return t;
}

ggml_tensor * GraphRunner::input_f32(const std::vector<float> & data, std::vector<int64_t> ne) {
    return input(GGML_TYPE_F32, data.data(), data.size() * sizeof(float), std::move(ne));
}

ggml_tensor * GraphRunner::input_i32(const std::vector<int32_t> & data, std::vector<int64_t> ne) {
    return input(GGML_TYPE_I32, data.data(), data.size() * sizeof(int32_t), std::move(ne));
}

ggml_tensor * GraphRunner::input_f16(const std::vector<float> & data, std::vector<int64_t> ne) {
    std::vector<ggml_fp16_t> half(data.size());
    ggml_fp32_to_fp16_row(data.data(), half.data(), int64_t(data.size()));
    return input(GGML_TYPE_F16, half.data(), half.size() * sizeof(ggml_fp16_t), std::move(ne));
}

void GraphRunner::compute(const std::vector<ggml_tensor *> & outputs) {
    ggml_cgraph * gf = ggml_new_graph_custom(ctx_, max_nodes_, false);
    for (ggml_tensor * t : outputs) {
        ggml_set_output(t);
        ggml_build_forward_expand(gf, t);
    }
    inputs_buffer_ = ggml_backend_alloc_ctx_tensors(inputs_ctx_, backend_);
    galloc_ = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend_));
    if (!inputs_buffer_ || !ggml_gallocr_alloc_graph(galloc_, gf))
        fail(ErrorKind::Backend, "cannot allocate an HT-Sparse graph");
    for (const Upload & up : uploads_) ggml_backend_tensor_set(up.tensor, up.bytes.data(), 0, up.bytes.size());
    uploads_ = {};  // the device holds them now; the host copies would only add to the peak
    record_graph_ops(gf);
    if (ggml_backend_graph_compute(backend_, gf) != GGML_STATUS_SUCCESS)
        fail(ErrorKind::Backend, "an HT-Sparse graph failed to compute");
}

size_t GraphRunner::bytes() const {
    return (inputs_buffer_ ? ggml_backend_buffer_get_size(inputs_buffer_) : 0) +
           (galloc_ ? ggml_gallocr_get_buffer_size(galloc_, 0) : 0);
}

std::vector<float> GraphRunner::read_f32(const ggml_tensor * t) {
    GGML_ASSERT(t->type == GGML_TYPE_F32);
    std::vector<float> out(ggml_nelements(t));
    ggml_backend_tensor_get(t, out.data(), 0, ggml_nbytes(t));
    return out;
}

std::vector<int32_t> GraphRunner::read_i32(const ggml_tensor * t) {
    GGML_ASSERT(t->type == GGML_TYPE_I32);
    std::vector<int32_t> out(ggml_nelements(t));
    ggml_backend_tensor_get(t, out.data(), 0, ggml_nbytes(t));
    return out;
}

}  // namespace hts
