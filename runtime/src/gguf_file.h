// A GGUF file opened for reading: validated header, metadata access and the
// tensor table, with the data section memory-mapped so CPU weights need no copy.
#pragma once

#include "ggml.h"
#include "gguf.h"

#include <cstdint>
#include <string>
#include <vector>

namespace hts {

class GgufFile {
public:
    // Opens and validates `path`; throws hts::Error (FileNotFound, InvalidFile).
    explicit GgufFile(const std::string & path);
    ~GgufFile();
    GgufFile(const GgufFile &) = delete;
    GgufFile & operator=(const GgufFile &) = delete;

    const std::string & path() const { return path_; }

    bool has_key(const std::string & key) const;
    std::string get_string(const std::string & key) const;  // throws if absent
    std::string get_string(const std::string & key, const std::string & fallback) const;
    int64_t get_int(const std::string & key) const;  // any integer type; throws if absent
    int64_t get_int(const std::string & key, int64_t fallback) const;
    double get_float(const std::string & key, double fallback) const;   // float or integer value
    std::vector<int64_t> get_int_array(const std::string & key) const;  // empty if absent; bools as 0 / 1
    std::vector<float> get_float_array(const std::string & key) const;  // empty if absent

    // Tensor metadata (no data) as ggml tensors: name, type, ne[] from the file.
    ggml_tensor * find_tensor(const std::string & name) const;
    int n_tensors() const;
    ggml_tensor * tensor_at(int i) const;

    // Pointer to a tensor's bytes inside the mapping, and the mapped data section.
    const uint8_t * tensor_data(const ggml_tensor * meta) const;
    const uint8_t * data_begin() const { return mapping_ + data_offset_; }
    size_t data_size() const { return file_size_ - data_offset_; }

private:
    std::string path_;
    gguf_context * gguf_ = nullptr;
    ggml_context * meta_ = nullptr;
    uint8_t * mapping_ = nullptr;
    size_t file_size_ = 0;
    size_t data_offset_ = 0;

    int64_t key_id(const std::string & key) const;
    void map_file();
    void validate_tensor_extents() const;
};

}  // namespace hts
