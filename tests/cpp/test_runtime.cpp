// C++ unit tests of the runtime's file handling: GGUF validation, metadata
// access and the errors a user meets. Writes its own small GGUF files with the
// gguf C API, so it needs no model. Run by ctest (tests/test_cpp_units.py).
#include "errors.h"
#include "gguf_file.h"
#include "model.h"
#include "tensor_loader.h"

#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

using namespace hts;

static int g_failures = 0;

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                              \
            ++g_failures;                                                                                              \
        }                                                                                                              \
    } while (0)

// Runs fn and checks it throws hts::Error of `kind` whose message contains `fragment`.
static void expect_error(ErrorKind kind, const std::string & fragment, const std::function<void()> & fn, int line) {
    try {
        fn();
        std::fprintf(stderr, "line %d: expected an error containing '%s', got none\n", line, fragment.c_str());
        ++g_failures;
    } catch (const Error & e) {
        if (e.kind() != kind || std::string(e.what()).find(fragment) == std::string::npos) {
            std::fprintf(stderr, "line %d: wrong error (kind %d): %s\n", line, int(e.kind()), e.what());
            ++g_failures;
        }
    }
}

// A GGUF with a few metadata keys and one 4x8 f32 tensor "w".
static void write_small_gguf(const char * path, const char * arch) {
    gguf_context * g = gguf_init_empty();
    gguf_set_val_str(g, "general.architecture", arch);
    gguf_set_val_u32(g, "test.count", 7);
    gguf_set_val_f32(g, "test.eps", 0.5f);
    const int32_t sections[4] = {16, 24, 24, 0};
    gguf_set_arr_data(g, "test.sections", GGUF_TYPE_INT32, sections, 4);
    ggml_init_params params = {ggml_tensor_overhead() * 4 + 4 * 8 * sizeof(float) + 256, nullptr, false};
    ggml_context * ctx = ggml_init(params);
    ggml_tensor * w = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 4, 8);
    ggml_set_name(w, "w");
    for (int i = 0; i < 32; ++i) static_cast<float *>(w->data)[i] = float(i);
    gguf_add_tensor(g, w);
    gguf_write_to_file(g, path, false);
    gguf_free(g);
    ggml_free(ctx);
}

static void truncate_file(const char * src, const char * dst, long keep) {
    std::vector<char> buf(keep);
    FILE * f = std::fopen(src, "rb");
    const size_t n = std::fread(buf.data(), 1, buf.size(), f);
    std::fclose(f);
    f = std::fopen(dst, "wb");
    std::fwrite(buf.data(), 1, n, f);
    std::fclose(f);
}

static void test_metadata() {
    write_small_gguf("small.gguf", "qwen2");
    GgufFile file("small.gguf");
    CHECK(file.get_string("general.architecture") == "qwen2");
    CHECK(file.get_int("test.count") == 7);
    CHECK(file.get_int("absent.key", 3) == 3);
    CHECK(file.get_float("test.eps", 0.0) == 0.5);
    CHECK(file.get_float("test.count", 0.0) == 7.0);  // integers read as floats
    CHECK((file.get_int_array("test.sections") == std::vector<int64_t>{16, 24, 24, 0}));
    CHECK(file.get_int_array("absent.key").empty());
    const ggml_tensor * w = file.find_tensor("w");
    CHECK(w && w->ne[0] == 4 && w->ne[1] == 8);
    CHECK(reinterpret_cast<const float *>(file.tensor_data(w))[5] == 5.0f);
    expect_error(ErrorKind::InvalidFile, "no metadata key", [&] { file.get_int("absent.key"); }, __LINE__);
    expect_error(ErrorKind::InvalidFile, "not an integer", [&] { file.get_int("general.architecture"); }, __LINE__);
}

static void test_bad_files() {
    expect_error(ErrorKind::FileNotFound, "not found", [] { GgufFile f("does-not-exist.gguf"); }, __LINE__);
    FILE * f = std::fopen("text.gguf", "wb");
    std::fputs("hello, this is not a model", f);
    std::fclose(f);
    expect_error(ErrorKind::InvalidFile, "not a GGUF file", [] { GgufFile g("text.gguf"); }, __LINE__);
    write_small_gguf("small.gguf", "qwen2");
    FILE * s = std::fopen("small.gguf", "rb");
    std::fseek(s, 0, SEEK_END);
    const long size = std::ftell(s);
    std::fclose(s);
    truncate_file("small.gguf", "cut_data.gguf", size - 16);
    expect_error(ErrorKind::InvalidFile, "truncated", [] { GgufFile g("cut_data.gguf"); }, __LINE__);
    truncate_file("small.gguf", "cut_header.gguf", 20);
    expect_error(ErrorKind::InvalidFile, "not a valid GGUF", [] { GgufFile g("cut_header.gguf"); }, __LINE__);
}

static void test_unsupported_architecture() {
    write_small_gguf("mamba.gguf", "mamba");
    ModelParams p;
    p.device = "cpu";
    expect_error(
        ErrorKind::UnsupportedModel, "unsupported architecture 'mamba'", [&] { Model m("mamba.gguf", p); }, __LINE__);
    expect_error(
        ErrorKind::UnsupportedModel, "qwen2, qwen2vl, qwen3, qwen3vl, gemma3, llama", [&] { Model m("mamba.gguf", p); },
        __LINE__);
}

static void test_tensor_shape_check() {
    write_small_gguf("small.gguf", "qwen2");
    GgufFile file("small.gguf");
    Backends backends("cpu", 1);
    TensorLoader loader(file, backends);
    expect_error(
        ErrorKind::InvalidFile, "has shape [4, 8], expected [8, 4]",
        [&] { loader.require("w", {8, 4}, WeightUse::MatMul); }, __LINE__);
    expect_error(
        ErrorKind::InvalidFile, "lacks the tensor 'missing'",
        [&] { loader.require("missing", {4}, WeightUse::Elementwise); }, __LINE__);
    CHECK(loader.optional("missing", {4}, WeightUse::Elementwise) == nullptr);
    ggml_tensor * w = loader.require("w", {4, 8}, WeightUse::MatMul);
    std::vector<ggml_context *> ctxs;
    std::vector<ggml_backend_buffer_t> bufs;
    loader.load(ctxs, bufs);
    float v = 0.0f;
    ggml_backend_tensor_get(w, &v, 9 * sizeof(float), sizeof(float));
    CHECK(v == 9.0f);  // the data reached the weight's buffer
    for (auto b : bufs) ggml_backend_buffer_free(b);
    for (auto c : ctxs) ggml_free(c);
}

static void test_bad_device() {
    expect_error(ErrorKind::InvalidArgument, "is not available", [] { Backends b("tpu9", 1); }, __LINE__);
    expect_error(
        ErrorKind::InvalidArgument, "n_threads must be positive",
        [] {
            Backends b("cpu", 1);
            b.set_n_threads(-2);
        },
        __LINE__);
}

int main() {
    set_verbose_logging(false);
    test_metadata();
    test_bad_files();
    test_unsupported_architecture();
    test_tensor_shape_check();
    test_bad_device();
    if (g_failures) {
        std::fprintf(stderr, "%d check(s) failed\n", g_failures);
        return 1;
    }
    std::printf("all runtime unit tests passed\n");
    return 0;
}
