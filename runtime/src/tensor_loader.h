// Creates a model's weight tensors from a GGUF file and puts each on the best
// buffer type that supports how the graph uses it (like llama.cpp: repacked CPU
// types first on the CPU, device memory on a GPU), then loads the data. Plain
// CPU weights point into the file's memory map: no copy.
#pragma once

#include "backend.h"
#include "gguf_file.h"

#include <initializer_list>
#include <map>
#include <string>
#include <vector>

namespace hts {

// How the graph uses a weight: decides which buffer types can hold it.
enum class WeightUse { MatMul, GetRows, Elementwise };

class TensorLoader {
public:
    TensorLoader(const GgufFile & file, const Backends & backends);
    ~TensorLoader();
    TensorLoader(const TensorLoader &) = delete;
    TensorLoader & operator=(const TensorLoader &) = delete;

    // The tensor `name`, whose shape (ggml order) must be `ne`; throws if absent.
    ggml_tensor * require(const std::string & name, std::initializer_list<int64_t> ne, WeightUse use,
                          bool on_host = false);
    // Same, but returns nullptr when the file has no such tensor.
    ggml_tensor * optional(const std::string & name, std::initializer_list<int64_t> ne, WeightUse use);
    // A second tensor loaded from the same bytes as `name` (tied output head).
    ggml_tensor * duplicate(const std::string & name, std::initializer_list<int64_t> ne, WeightUse use);

    // Allocates every declared tensor and loads its data. The contexts and
    // buffers are handed over to the caller (the model owns them).
    void load(std::vector<ggml_context *> & contexts, std::vector<ggml_backend_buffer_t> & buffers);

private:
    struct Pending {
        ggml_tensor * tensor;
        const ggml_tensor * meta;
    };
    const GgufFile & file_;
    const Backends & backends_;
    std::map<ggml_backend_buffer_type_t, ggml_context *> contexts_;
    std::map<ggml_backend_buffer_type_t, std::vector<Pending>> pending_;

    ggml_tensor * create(const ggml_tensor * meta, const std::string & name, std::initializer_list<int64_t> ne,
                         WeightUse use, bool on_host);
    ggml_backend_buffer_type_t select_buft(const ggml_tensor * meta, WeightUse use, bool on_host) const;
    ggml_context * context_for(ggml_backend_buffer_type_t buft);
    bool is_plain_cpu(ggml_backend_buffer_type_t buft) const;
};

}  // namespace hts
