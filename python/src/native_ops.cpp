// `htsparse_llama._native.ops`: each HT-Sparse operator (ggml_ops/hts_ops.h)
// run alone on NumPy inputs, so tests can hold it against a NumPy reference.
// NumPy shapes are ggml shapes reversed: ggml [d, n, H] is NumPy (H, n, d).
#include "errors.h"
#include "graph_runner.h"
#include "hts_ops.h"
#include "native_ops.h"

#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>

namespace py = pybind11;
using hts::ErrorKind;
using hts::fail;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// One small graph on a named device, for the operator tests: the backend is
// made here, the graph is hts::GraphRunner's (as the context's selection
// step uses it), and the outputs come back as NumPy arrays.
class OpGraph {
public:
    OpGraph(const std::string & device, int n_threads)
        : backend_(init_backend(device, n_threads)), runner_(backend_.get()) {}
    ggml_context * ctx() { return runner_.ctx(); }

    // A NumPy float array as an input tensor of `type` (F32 or F16).
    ggml_tensor * input(const FloatArray & a, ggml_type type) {
        std::vector<int64_t> ne;
        for (int i = a.ndim() - 1; i >= 0; --i) ne.push_back(a.shape(i));
        std::vector<float> data(a.data(), a.data() + a.size());
        return type == GGML_TYPE_F16 ? runner_.input_f16(data, ne) : runner_.input_f32(data, ne);
    }

    ggml_tensor * input_i32(const std::vector<int32_t> & v, int64_t ne0, int64_t ne1 = 1) {
        return runner_.input_i32(v, {ne0, ne1});
    }

    void compute(const std::vector<ggml_tensor *> & outputs) {
        runner_.compute(outputs);
        for (ggml_tensor * t : outputs) results_.push_back(read(t));
    }

    py::array result(size_t i) const { return results_.at(i); }

private:
    struct BackendFree {
        void operator()(ggml_backend_t b) const { ggml_backend_free(b); }
    };
    std::unique_ptr<ggml_backend, BackendFree> backend_;  // outlives runner_ (declared first)
    hts::GraphRunner runner_;
    std::vector<py::array> results_;

    static ggml_backend_t init_backend(const std::string & device, int n_threads) {
        ggml_backend_load_all();
        ggml_backend_dev_t dev = device == "cpu" ? ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
                                                 : ggml_backend_dev_by_name(device.c_str());
        if (!dev) fail(ErrorKind::InvalidArgument, "device '" + device + "' is not available");
        ggml_backend_t backend = ggml_backend_dev_init(dev, nullptr);
        if (ggml_backend_is_cpu(backend)) ggml_backend_cpu_set_n_threads(backend, n_threads);
        return backend;
    }

    static py::array read(const ggml_tensor * t) {
        std::vector<py::ssize_t> shape;
        for (int i = ggml_n_dims(t) - 1; i >= 0; --i) shape.push_back(t->ne[i]);
        if (t->type == GGML_TYPE_I32) {
            const std::vector<int32_t> v = hts::GraphRunner::read_i32(t);
            return py::array_t<int32_t>(shape, v.data());
        }
        const std::vector<float> v = hts::GraphRunner::read_f32(t);
        return py::array_t<float>(shape, v.data());
    }
};

ggml_tensor * optional_mask(OpGraph & g, const std::optional<FloatArray> & mask) {
    return mask ? g.input(*mask, GGML_TYPE_F32) : nullptr;
}

py::array attn_lse(const FloatArray & q, const FloatArray & k, const std::optional<FloatArray> & mask, float scale,
                   int64_t chunk, const std::string & device, int n_threads) {
    OpGraph g(device, n_threads);
    ggml_tensor *tq = g.input(q, GGML_TYPE_F32), *tk = g.input(k, GGML_TYPE_F16), *tm = optional_mask(g, mask);
    g.compute({hts_attn_lse(g.ctx(), tq, tk, tm, scale, chunk)});
    return g.result(0);
}

py::dict head_saliency(const FloatArray & q, const FloatArray & k, const std::optional<FloatArray> & mask,
                       int64_t v_begin, int64_t v_end, float scale, int64_t chunk, const std::string & device,
                       int n_threads) {
    if (v_begin < 0 || v_begin >= v_end || v_end > k.shape(1)) fail(ErrorKind::InvalidArgument, "bad span range");
    OpGraph g(device, n_threads);
    ggml_tensor *tq = g.input(q, GGML_TYPE_F32), *tk = g.input(k, GGML_TYPE_F16), *tm = optional_mask(g, mask);
    ggml_tensor * lse = hts_attn_lse(g.ctx(), tq, tk, tm, scale, chunk);
    hts_saliency s = hts_head_saliency(g.ctx(), tq, tk, lse, v_begin, v_end, scale, chunk);
    g.compute({s.token_attn, s.head_mass, s.head_conc, s.head_score});
    py::dict d;
    d["token_attn"] = g.result(0);
    d["head_mass"] = g.result(1);
    d["head_conc"] = g.result(2);
    d["head_score"] = g.result(3);
    return d;
}

py::dict select_tokens(const FloatArray & token_attn, const FloatArray & head_w,
                       const std::vector<int32_t> & seg_starts, const hts_pick_params & params,
                       const std::string & device, int n_threads) {
    const int32_t n_v = int32_t(token_attn.shape(token_attn.ndim() - 1));
    int64_t max_len = 0;
    std::vector<int32_t> index;
    try {
        index = hts_segment_index(seg_starts, n_v, max_len);
    } catch (const std::invalid_argument & e) {
        fail(ErrorKind::InvalidArgument, e.what());
    }
    OpGraph g(device, n_threads);
    ggml_tensor *ta = g.input(token_attn, GGML_TYPE_F32), *w = g.input(head_w, GGML_TYPE_F32);
    ggml_tensor * idx = g.input_i32(index, int64_t(index.size()));
    hts_segment_order o = hts_select_tokens(g.ctx(), ta, w, idx, max_len);
    g.compute({o.token_score, o.segment_score, o.order});
    auto to_vec = [](const py::array & a, auto zero) {
        using T = decltype(zero);
        auto typed = a.cast<py::array_t<T>>();
        return std::vector<T>(typed.data(), typed.data() + typed.size());
    };
    py::dict d;
    d["token_score"] = g.result(0);
    d["segment_score"] = g.result(1);
    d["order"] = g.result(2);
    d["kept"] = hts_pick_segments(seg_starts, n_v, to_vec(g.result(2), int32_t(0)), to_vec(g.result(1), 0.0f),
                                  to_vec(g.result(0), 0.0f), params);
    return d;
}

py::array routed_attention(const FloatArray & q, const std::vector<bool> & is_full_kv,
                           const std::optional<FloatArray> & k_full, const std::optional<FloatArray> & v_full,
                           const std::optional<FloatArray> & mask_full, const std::optional<FloatArray> & k_sparse,
                           const std::optional<FloatArray> & v_sparse, const std::optional<FloatArray> & mask_sparse,
                           float scale, const std::string & device, int n_threads) {
    const int n_head = int(q.shape(1)), n_tokens = int(q.shape(0));
    const size_t n_full = std::count(is_full_kv.begin(), is_full_kv.end(), true);
    if (is_full_kv.empty() || n_head % is_full_kv.size() != 0) fail(ErrorKind::InvalidArgument, "bad head split");
    if ((n_full > 0) != bool(k_full) || (n_full < is_full_kv.size()) != bool(k_sparse)) {
        fail(ErrorKind::InvalidArgument, "give the full cache exactly when there are full heads, likewise sparse");
    }
    std::vector<int32_t> perm, unperm;
    hts_head_permutation(is_full_kv, n_head, perm, unperm);
    auto rows = [&](const std::vector<int32_t> & v) {
        std::vector<int32_t> r;
        for (int t = 0; t < n_tokens; ++t) r.insert(r.end(), v.begin(), v.end());
        return r;
    };
    OpGraph g(device, n_threads);
    ggml_tensor * tq = g.input(q, GGML_TYPE_F32);
    ggml_tensor *tp = g.input_i32(rows(perm), n_head, n_tokens), *tu = g.input_i32(rows(unperm), n_head, n_tokens);
    auto f16 = [&](const std::optional<FloatArray> & a) { return a ? g.input(*a, GGML_TYPE_F16) : nullptr; };
    ggml_tensor *kf = f16(k_full), *vf = f16(v_full), *mf = f16(mask_full);
    ggml_tensor *ks = f16(k_sparse), *vs = f16(v_sparse), *ms = f16(mask_sparse);
    g.compute({hts_routed_attention(g.ctx(), tq, tp, tu, kf, vf, mf, ks, vs, ms, scale)});
    return g.result(0);
}

}  // namespace

void register_ops(py::module_ & parent) {
    py::module_ m = parent.def_submodule("ops", "HT-Sparse operators run alone on NumPy inputs (for tests)");
    py::class_<hts_pick_params>(m, "PickParams")
        .def(py::init<>())
        .def_readwrite("keep_ratio", &hts_pick_params::keep_ratio)
        .def_readwrite("keep_mass", &hts_pick_params::keep_mass)
        .def_readwrite("token_keep", &hts_pick_params::token_keep)
        .def_readwrite("segment_floor", &hts_pick_params::segment_floor);
    m.def("attn_lse", &attn_lse, py::arg("q"), py::arg("k"), py::arg("mask") = py::none(), py::arg("scale"),
          py::arg("chunk") = 4096, py::arg("device") = "cpu", py::arg("n_threads") = 2);
    m.def("head_saliency", &head_saliency, py::arg("q"), py::arg("k"), py::arg("mask") = py::none(), py::arg("v_begin"),
          py::arg("v_end"), py::arg("scale"), py::arg("chunk") = 4096, py::arg("device") = "cpu",
          py::arg("n_threads") = 2);
    m.def("select_tokens", &select_tokens, py::arg("token_attn"), py::arg("head_w"), py::arg("seg_starts"),
          py::arg("params"), py::arg("device") = "cpu", py::arg("n_threads") = 2);
    m.def("routed_attention", &routed_attention, py::arg("q"), py::arg("is_full_kv"), py::arg("k_full") = py::none(),
          py::arg("v_full") = py::none(), py::arg("mask_full") = py::none(), py::arg("k_sparse") = py::none(),
          py::arg("v_sparse") = py::none(), py::arg("mask_sparse") = py::none(), py::arg("scale") = 1.0f,
          py::arg("device") = "cpu", py::arg("n_threads") = 2);
}
