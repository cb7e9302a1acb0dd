#include "backend.h"

#include "errors.h"

#include <algorithm>
#include <thread>

namespace hts {

int default_thread_count() {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 4 : static_cast<int>(n);
}

static bool is_accelerator(ggml_backend_dev_t dev) {
    const auto type = ggml_backend_dev_type(dev);
    return type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU;
}

std::vector<std::string> Backends::available_devices() {
    std::vector<std::string> out;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        out.push_back(std::string(ggml_backend_dev_name(dev)) + " (" + ggml_backend_dev_description(dev) + ")");
    }
    return out;
}

static ggml_backend_dev_t pick_accelerator(const std::string & device) {
    if (device == "cpu" || device == "CPU") return nullptr;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (!is_accelerator(dev)) continue;
        if (device == "auto" || device == "gpu" || device == ggml_backend_dev_name(dev)) return dev;
    }
    if (device == "auto") return nullptr;
    std::string known;
    for (const auto & d : Backends::available_devices()) known += (known.empty() ? "" : ", ") + d;
    fail(ErrorKind::InvalidArgument,
         format("device '%s' is not available; devices: %s (use 'auto', 'cpu', 'gpu' or a device name)", device.c_str(),
                known.c_str()));
}

Backends::Backends(const std::string & device, int n_threads) {
    cpu_dev_ = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!cpu_dev_) fail(ErrorKind::Backend, "ggml has no CPU backend");
    gpu_dev_ = pick_accelerator(device);
    cpu_ = ggml_backend_dev_init(cpu_dev_, nullptr);
    if (!cpu_) fail(ErrorKind::Backend, "cannot initialise the CPU backend");
    if (gpu_dev_) {
        gpu_ = ggml_backend_dev_init(gpu_dev_, nullptr);
        if (!gpu_) {
            ggml_backend_free(cpu_);
            fail(ErrorKind::Backend, format("cannot initialise device %s", ggml_backend_dev_name(gpu_dev_)));
        }
    }
    set_n_threads(n_threads > 0 ? n_threads : default_thread_count());
}

Backends::~Backends() {
    if (gpu_) ggml_backend_free(gpu_);
    if (cpu_) ggml_backend_free(cpu_);
}

std::pair<size_t, size_t> Backends::memory() const {
    size_t free = 0, total = 0;
    ggml_backend_dev_memory(gpu_dev_ ? gpu_dev_ : cpu_dev_, &free, &total);
    return {free, total};
}

std::string Backends::device_name() const { return gpu_dev_ ? ggml_backend_dev_name(gpu_dev_) : "CPU"; }

void Backends::set_n_threads(int n_threads) {
    if (n_threads <= 0) fail(ErrorKind::InvalidArgument, format("n_threads must be positive, got %d", n_threads));
    n_threads_ = n_threads;
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(cpu_dev_);
    auto set_threads = reinterpret_cast<ggml_backend_set_n_threads_t>(
        ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads"));
    if (set_threads) set_threads(cpu_, n_threads);
}

std::vector<ggml_backend_buffer_type_t> Backends::cpu_extra_bufts() const {
    std::vector<ggml_backend_buffer_type_t> out;
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(cpu_dev_);
    auto get_extra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts"));
    if (get_extra) {
        for (ggml_backend_buffer_type_t * b = get_extra(cpu_dev_); b && *b; ++b) {
            // ggml's AMX matmul (Sapphire Rapids and later) segfaults on the first
            // token on some of these CPUs, in llama.cpp too (llama.cpp#20824, open);
            // the repacked AVX-512 layouts that come next are used instead.
            if (std::string(ggml_backend_buft_name(*b)) == "AMX") continue;
            out.push_back(*b);
        }
    }
    return out;
}

ggml_backend_buffer_type_t Backends::cpu_buffer_type(const std::string & name) {
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!cpu) return nullptr;
    ggml_backend_buffer_type_t plain = ggml_backend_dev_buffer_type(cpu);
    if (name == ggml_backend_buft_name(plain)) return plain;
    auto get_extra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(cpu), "ggml_backend_dev_get_extra_bufts"));
    for (ggml_backend_buffer_type_t * b = get_extra ? get_extra(cpu) : nullptr; b && *b; ++b) {
        if (name == ggml_backend_buft_name(*b)) return *b;
    }
    return nullptr;
}

std::vector<ggml_backend_buffer_type_t> Backends::host_weight_bufts() const {
    std::vector<ggml_backend_buffer_type_t> out;
    if (gpu_dev_) {
        if (auto host = ggml_backend_dev_host_buffer_type(gpu_dev_)) out.push_back(host);
    }
    for (auto b : cpu_extra_bufts()) out.push_back(b);
    out.push_back(ggml_backend_dev_buffer_type(cpu_dev_));
    return out;
}

std::vector<ggml_backend_buffer_type_t> Backends::weight_bufts() const {
    std::vector<ggml_backend_buffer_type_t> out;
    if (gpu_dev_) out.push_back(ggml_backend_dev_buffer_type(gpu_dev_));
    for (auto b : host_weight_bufts()) out.push_back(b);
    return out;
}

ggml_backend_dev_t Backends::device_of(ggml_backend_buffer_type_t buft) const {
    ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
    return dev ? dev : cpu_dev_;
}

ggml_backend_sched_t Backends::new_scheduler(size_t graph_size) const {
    std::vector<ggml_backend_t> list;
    if (gpu_) list.push_back(gpu_);
    list.push_back(cpu_);
    ggml_backend_sched_t sched =
        ggml_backend_sched_new(list.data(), nullptr, static_cast<int>(list.size()), graph_size, false, true);
    if (!sched) fail(ErrorKind::Backend, "cannot create the backend scheduler");
    return sched;
}

}  // namespace hts
