// Compute devices: which ggml backends a model runs on and the buffer types its
// weights may live in. CPU is always present; an accelerator (CUDA, Metal,
// Vulkan...) is used when asked for, or by default when one is available.
#pragma once

#include "ggml-backend.h"

#include <string>
#include <utility>
#include <vector>

namespace hts {

class Backends {
public:
    // device: "auto" (accelerator if any, else CPU), "cpu", "gpu" (first
    // accelerator, error if none) or a ggml device name such as "CUDA0".
    Backends(const std::string & device, int n_threads);
    ~Backends();
    Backends(const Backends &) = delete;
    Backends & operator=(const Backends &) = delete;

    ggml_backend_t cpu() const { return cpu_; }
    ggml_backend_t gpu() const { return gpu_; }  // nullptr on CPU-only runs
    ggml_backend_dev_t gpu_device() const { return gpu_dev_; }
    ggml_backend_t main() const { return gpu_ ? gpu_ : cpu_; }
    // Free and total bytes of the main device's memory, as ggml reports them
    // (the system's memory for the CPU).
    std::pair<size_t, size_t> memory() const;
    std::string device_name() const;
    int n_threads() const { return n_threads_; }
    void set_n_threads(int n_threads);

    // Buffer types for a weight on the main device, best first. On the CPU the
    // extra (repacking) types come first, as llama.cpp does, so the same
    // optimised kernels are used.
    std::vector<ggml_backend_buffer_type_t> weight_bufts() const;
    // Buffer types for a weight kept on the host (token embeddings).
    std::vector<ggml_backend_buffer_type_t> host_weight_bufts() const;
    ggml_backend_dev_t device_of(ggml_backend_buffer_type_t buft) const;

    // A new scheduler over [gpu, cpu] (or [cpu]) for graphs up to graph_size nodes.
    ggml_backend_sched_t new_scheduler(size_t graph_size) const;

    // Every device ggml knows, "name (description)", for error messages.
    static std::vector<std::string> available_devices();
    // The CPU's buffer type of that name ("CPU", or an extra one such as
    // "CPU_REPACK" or "AMX", skipped or not); null when there is none.
    static ggml_backend_buffer_type_t cpu_buffer_type(const std::string & name);

private:
    ggml_backend_t cpu_ = nullptr;
    ggml_backend_t gpu_ = nullptr;
    ggml_backend_dev_t cpu_dev_ = nullptr;
    ggml_backend_dev_t gpu_dev_ = nullptr;
    int n_threads_ = 1;

    std::vector<ggml_backend_buffer_type_t> cpu_extra_bufts() const;
};

// Number of CPU threads used when the caller passes 0.
int default_thread_count();

}  // namespace hts
