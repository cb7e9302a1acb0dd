// A small one-off graph on one backend (not the context's scheduler): inputs
// from host memory, a graph built on them, outputs read back. Used for the
// HT-Sparse selection step, which runs once per question, and for the
// operator tests.
#pragma once

#include "ggml-backend.h"
#include "ggml.h"

#include <cstdint>
#include <vector>

namespace hts {

class GraphRunner {
public:
    explicit GraphRunner(ggml_backend_t backend, size_t max_nodes = 8192);
    ~GraphRunner();
    GraphRunner(const GraphRunner &) = delete;
    GraphRunner & operator=(const GraphRunner &) = delete;

    ggml_context * ctx() { return ctx_; }
    // Input tensors (ne in ggml order) holding a copy of `data`.
    ggml_tensor * input_f32(const std::vector<float> & data, std::vector<int64_t> ne);
    ggml_tensor * input_i32(const std::vector<int32_t> & data, std::vector<int64_t> ne);
    ggml_tensor * input_f16(const std::vector<float> & data, std::vector<int64_t> ne);  // converted on the host
    // Builds the graph of `outputs`, allocates, uploads the inputs, computes.
    void compute(const std::vector<ggml_tensor *> & outputs);
    // Device memory it holds: inputs and the graph's intermediate tensors (0 before compute).
    size_t bytes() const;
    static std::vector<float> read_f32(const ggml_tensor * t);
    static std::vector<int32_t> read_i32(const ggml_tensor * t);

private:
    struct Upload {
        ggml_tensor * tensor;
        std::vector<uint8_t> bytes;
    };
    ggml_backend_t backend_;
    size_t max_nodes_;
    ggml_context * ctx_ = nullptr;         // graph tensors
    ggml_context * inputs_ctx_ = nullptr;  // inputs, allocated up front
    ggml_backend_buffer_t inputs_buffer_ = nullptr;
    ggml_gallocr_t galloc_ = nullptr;
    std::vector<Upload> uploads_;

    ggml_tensor * input(ggml_type type, const void * data, size_t size, std::vector<int64_t> ne);
};

}  // namespace hts
