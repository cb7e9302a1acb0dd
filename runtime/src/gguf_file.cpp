#include "gguf_file.h"

#include "errors.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace hts {

std::string format(const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    char buf[1024];
    vsnprintf(buf, sizeof(buf), fmt, args);
    va_end(args);
    return buf;
}

static void check_header(const std::string & path) {
    FILE * f = std::fopen(path.c_str(), "rb");
    if (!f) {
        fail(ErrorKind::FileNotFound, format("cannot open model file '%s': %s", path.c_str(), std::strerror(errno)));
    }
    char magic[4] = {0, 0, 0, 0};
    const size_t n = std::fread(magic, 1, 4, f);
    std::fclose(f);
    if (n != 4 || std::memcmp(magic, GGUF_MAGIC, 4) != 0) {
        fail(ErrorKind::InvalidFile, format("'%s' is not a GGUF file (bad magic)", path.c_str()));
    }
}

GgufFile::GgufFile(const std::string & path) : path_(path) {
    struct stat st{};
    if (stat(path.c_str(), &st) != 0) {
        fail(ErrorKind::FileNotFound, format("model file '%s' not found", path.c_str()));
    }
    if (S_ISDIR(st.st_mode)) {
        fail(ErrorKind::FileNotFound, format("'%s' is a directory, not a GGUF file", path.c_str()));
    }
    check_header(path);
    gguf_init_params params = {/*no_alloc =*/true, /*ctx =*/&meta_};
    gguf_ = gguf_init_from_file(path.c_str(), params);
    if (!gguf_) {
        fail(ErrorKind::InvalidFile,
             format("'%s' is not a valid GGUF file (corrupt or truncated header)", path.c_str()));
    }
    file_size_ = static_cast<size_t>(st.st_size);
    data_offset_ = gguf_get_data_offset(gguf_);
    try {
        validate_tensor_extents();
        map_file();
    } catch (...) {
        gguf_free(gguf_);
        ggml_free(meta_);
        throw;
    }
}

GgufFile::~GgufFile() {
    if (mapping_) munmap(mapping_, file_size_);
    if (gguf_) gguf_free(gguf_);
    if (meta_) ggml_free(meta_);
}

// A truncated download passes the header parse; catch it here, before any
// tensor read would run past the end of the mapping.
void GgufFile::validate_tensor_extents() const {
    const int64_t n = gguf_get_n_tensors(gguf_);
    for (int64_t i = 0; i < n; ++i) {
        const size_t end = data_offset_ + gguf_get_tensor_offset(gguf_, i) + gguf_get_tensor_size(gguf_, i);
        if (end > file_size_) {
            fail(ErrorKind::InvalidFile,
                 format("'%s' is truncated: tensor '%s' ends at byte %zu but the file has %zu bytes", path_.c_str(),
                        gguf_get_tensor_name(gguf_, i), end, file_size_));
        }
    }
}

void GgufFile::map_file() {
    const int fd = open(path_.c_str(), O_RDONLY);
    if (fd < 0) fail(ErrorKind::FileNotFound, format("cannot open '%s': %s", path_.c_str(), std::strerror(errno)));
    void * addr = mmap(nullptr, file_size_, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (addr == MAP_FAILED)
        fail(ErrorKind::InvalidFile, format("cannot mmap '%s': %s", path_.c_str(), std::strerror(errno)));
    mapping_ = static_cast<uint8_t *>(addr);
}

int64_t GgufFile::key_id(const std::string & key) const { return gguf_find_key(gguf_, key.c_str()); }

bool GgufFile::has_key(const std::string & key) const { return key_id(key) >= 0; }

std::string GgufFile::get_string(const std::string & key) const {
    const int64_t id = key_id(key);
    if (id < 0) fail(ErrorKind::InvalidFile, format("'%s' has no metadata key '%s'", path_.c_str(), key.c_str()));
    if (gguf_get_kv_type(gguf_, id) != GGUF_TYPE_STRING) {
        fail(ErrorKind::InvalidFile, format("metadata key '%s' in '%s' is not a string", key.c_str(), path_.c_str()));
    }
    return gguf_get_val_str(gguf_, id);
}

std::string GgufFile::get_string(const std::string & key, const std::string & fallback) const {
    return has_key(key) ? get_string(key) : fallback;
}

static bool scalar_as_int(gguf_context * g, int64_t id, int64_t & out) {
    switch (gguf_get_kv_type(g, id)) {
        case GGUF_TYPE_UINT8:
            out = gguf_get_val_u8(g, id);
            return true;
        case GGUF_TYPE_INT8:
            out = gguf_get_val_i8(g, id);
            return true;
        case GGUF_TYPE_UINT16:
            out = gguf_get_val_u16(g, id);
            return true;
        case GGUF_TYPE_INT16:
            out = gguf_get_val_i16(g, id);
            return true;
        case GGUF_TYPE_UINT32:
            out = gguf_get_val_u32(g, id);
            return true;
        case GGUF_TYPE_INT32:
            out = gguf_get_val_i32(g, id);
            return true;
        case GGUF_TYPE_UINT64:
            out = static_cast<int64_t>(gguf_get_val_u64(g, id));
            return true;
        case GGUF_TYPE_INT64:
            out = gguf_get_val_i64(g, id);
            return true;
        case GGUF_TYPE_BOOL:
            out = gguf_get_val_bool(g, id) ? 1 : 0;
            return true;
        default:
            return false;
    }
}

int64_t GgufFile::get_int(const std::string & key) const {
    const int64_t id = key_id(key);
    if (id < 0) fail(ErrorKind::InvalidFile, format("'%s' has no metadata key '%s'", path_.c_str(), key.c_str()));
    int64_t v = 0;
    if (!scalar_as_int(gguf_, id, v)) {
        fail(ErrorKind::InvalidFile, format("metadata key '%s' in '%s' is not an integer", key.c_str(), path_.c_str()));
    }
    return v;
}

int64_t GgufFile::get_int(const std::string & key, int64_t fallback) const {
    return has_key(key) ? get_int(key) : fallback;
}

double GgufFile::get_float(const std::string & key, double fallback) const {
    const int64_t id = key_id(key);
    if (id < 0) return fallback;
    switch (gguf_get_kv_type(gguf_, id)) {
        case GGUF_TYPE_FLOAT32:
            return gguf_get_val_f32(gguf_, id);
        case GGUF_TYPE_FLOAT64:
            return gguf_get_val_f64(gguf_, id);
        default:
            return static_cast<double>(get_int(key));
    }
}

std::vector<int64_t> GgufFile::get_int_array(const std::string & key) const {
    std::vector<int64_t> out;
    const int64_t id = key_id(key);
    if (id < 0 || gguf_get_kv_type(gguf_, id) != GGUF_TYPE_ARRAY) return out;
    const size_t n = gguf_get_arr_n(gguf_, id);
    const void * data = gguf_get_arr_data(gguf_, id);
    switch (gguf_get_arr_type(gguf_, id)) {
        case GGUF_TYPE_INT32:
            for (size_t i = 0; i < n; ++i) out.push_back(static_cast<const int32_t *>(data)[i]);
            break;
        case GGUF_TYPE_UINT32:
            for (size_t i = 0; i < n; ++i) out.push_back(static_cast<const uint32_t *>(data)[i]);
            break;
        case GGUF_TYPE_INT64:
            for (size_t i = 0; i < n; ++i) out.push_back(static_cast<const int64_t *>(data)[i]);
            break;
        case GGUF_TYPE_BOOL:  // per-layer flags (gemma3's sliding_window_pattern), as 0 / 1
            for (size_t i = 0; i < n; ++i) out.push_back(static_cast<const int8_t *>(data)[i] != 0);
            break;
        default:
            fail(ErrorKind::InvalidFile, format("metadata key '%s' is not an integer array", key.c_str()));
    }
    return out;
}

std::vector<float> GgufFile::get_float_array(const std::string & key) const {
    std::vector<float> out;
    const int64_t id = key_id(key);
    if (id < 0 || gguf_get_kv_type(gguf_, id) != GGUF_TYPE_ARRAY) return out;
    const size_t n = gguf_get_arr_n(gguf_, id);
    const void * data = gguf_get_arr_data(gguf_, id);
    switch (gguf_get_arr_type(gguf_, id)) {
        case GGUF_TYPE_FLOAT32:
            out.assign(static_cast<const float *>(data), static_cast<const float *>(data) + n);
            break;
        case GGUF_TYPE_FLOAT64:
            for (size_t i = 0; i < n; ++i) out.push_back(float(static_cast<const double *>(data)[i]));
            break;
        default:
            fail(ErrorKind::InvalidFile, format("metadata key '%s' is not a float array", key.c_str()));
    }
    return out;
}

ggml_tensor * GgufFile::find_tensor(const std::string & name) const { return ggml_get_tensor(meta_, name.c_str()); }

int GgufFile::n_tensors() const { return static_cast<int>(gguf_get_n_tensors(gguf_)); }

ggml_tensor * GgufFile::tensor_at(int i) const { return find_tensor(gguf_get_tensor_name(gguf_, i)); }

const uint8_t * GgufFile::tensor_data(const ggml_tensor * meta) const {
    const int64_t id = gguf_find_tensor(gguf_, ggml_get_name(meta));
    if (id < 0) fail(ErrorKind::InvalidFile, format("tensor '%s' not in '%s'", ggml_get_name(meta), path_.c_str()));
    return mapping_ + data_offset_ + gguf_get_tensor_offset(gguf_, id);
}

}  // namespace hts
