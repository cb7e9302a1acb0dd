// The Python extension `htsparse_llama._native`: thin pybind11 bindings over the
// C++ runtime. Long computations release the GIL; every hts::Error becomes a
// Python exception of the matching class (see htsparse_llama/errors.py), and
// any other C++ exception a RuntimeError, so nothing aborts the interpreter.
#include "errors.h"
#include "op_recorder.h"
#include "model.h"
#include "native_conversation.h"
#include "native_convert.h"
#include "native_ops.h"
#include "native_vision.h"
#include "context.h"
#include "sparse_config.h"
#include "sparse_select.h"

#include <algorithm>
#include <optional>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;
using namespace hts;
using namespace hts_py;

namespace {

py::array_t<float> logits_array(const Context & s, bool last_only) {
    const int n_vocab = static_cast<int>(s.logits().size() / std::max(1, s.n_logit_rows()));
    if (last_only) {
        const float * p = s.last_logits();
        return py::array_t<float>(n_vocab, p);
    }
    py::array_t<float> out({s.n_logit_rows(), n_vocab});
    std::copy(s.logits().begin(), s.logits().end(), out.mutable_data());
    return out;
}

py::dict model_info(const Model & m) {
    const HParams & hp = m.hparams();
    py::dict d;
    d["arch"] = hp.arch;
    d["n_layer"] = hp.n_layer;
    d["n_embd"] = hp.n_embd;
    d["n_embd_inp"] = hp.n_embd_inp();  // an input embedding row, DeepStack rows included
    d["n_deepstack"] = hp.n_deepstack;
    d["n_head"] = hp.n_head;
    d["n_head_kv"] = hp.n_head_kv;
    d["n_embd_head"] = hp.n_embd_head;
    d["n_ff"] = hp.n_ff;
    d["n_vocab"] = hp.n_vocab;
    d["n_ctx_train"] = hp.n_ctx_train;
    d["rope_freq_base"] = hp.rope_freq_base;
    d["n_swa"] = hp.n_swa;  // sliding window of the window layers (gemma3); 0: none
    d["n_swa_layers"] = int(std::count(hp.swa_layers.begin(), hp.swa_layers.end(), true));
    d["device"] = m.backends().device_name();
    d["n_threads"] = m.backends().n_threads();
    d["weight_bytes"] = m.weight_bytes();
    d["chat_template"] = m.vocab().chat_template();
    d["bos"] = m.vocab().bos();
    d["add_bos"] = m.vocab().add_bos();
    return d;
}

py::dict resolve_sparse(const Model & m, const py::dict & request) {
    return sparse_dict(resolve_sparse_config(sparse_request(request), m.file(), m.hparams()));
}

}  // namespace

PYBIND11_MODULE(_native, mod) {
    mod.doc() = "htsparse-llama native runtime (C++ on upstream ggml / llama.cpp)";
    register_ops(mod);
    register_conversation(mod);
    mod.def("sparse_gguf_keys", &htsparse_gguf_keys);
    mod.def("resolve_sparse_config", &resolve_sparse, py::arg("model"), py::arg("request"));

    // Exception classes are created in Python (errors.py) and handed in here,
    // so the hierarchy lives in one readable place.
    static py::object exc_classes[7];
    mod.def("_register_errors",
            [](py::object invalid_argument, py::object not_found, py::object invalid_file, py::object unsupported,
               py::object overflow, py::object backend, py::object aborted) {
                exc_classes[int(ErrorKind::InvalidArgument)] = invalid_argument;
                exc_classes[int(ErrorKind::FileNotFound)] = not_found;
                exc_classes[int(ErrorKind::InvalidFile)] = invalid_file;
                exc_classes[int(ErrorKind::UnsupportedModel)] = unsupported;
                exc_classes[int(ErrorKind::ContextOverflow)] = overflow;
                exc_classes[int(ErrorKind::Backend)] = backend;
                exc_classes[int(ErrorKind::Aborted)] = aborted;
            });
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const Error & e) {
            py::object cls = exc_classes[int(e.kind())];
            if (cls) {
                PyErr_SetString(cls.ptr(), e.what());
            } else {
                PyErr_SetString(PyExc_RuntimeError, e.what());
            }
        }
    });

    mod.def("supported_architectures", &supported_architectures);
    mod.def("available_devices", &Backends::available_devices);
    // The address of a CPU buffer type (0: none), for llama.cpp's tensor_buft_overrides in the tests'
    // reference (bench/llama_cpp.py): both load the same libggml-cpu, so the pointer is valid there.
    mod.def(
        "cpu_buffer_type_address",
        [](const std::string & name) { return reinterpret_cast<uintptr_t>(Backends::cpu_buffer_type(name)); },
        py::arg("name"));
    mod.def("set_verbose", &set_verbose_logging, py::arg("verbose"));
    // Op recording for tests/test_backend_ops.py (op_recorder.h): on starts an empty set.
    mod.def("_set_op_recording", &set_op_recording, py::arg("on"));
    mod.def("_recorded_ops", [] {
        py::list out;
        for (const OpUse & u : recorded_ops()) {
            py::dict d;
            d["op"] = u.op;
            d["sub"] = u.sub;
            d["type"] = u.type;
            d["src"] = u.src;
            d["layout"] = u.layout;
            d["src_layout"] = u.src_layout;
            d["params"] = u.params;
            out.append(d);
        }
        return out;
    });

    py::class_<Model>(mod, "Model")
        .def(py::init([](const std::string & path, const std::string & device, int n_threads, bool verbose) {
                 ModelParams p;
                 p.device = device;
                 p.n_threads = n_threads;
                 p.verbose = verbose;
                 py::gil_scoped_release release;
                 return std::make_unique<Model>(path, p);
             }),
             py::arg("path"), py::arg("device") = "auto", py::arg("n_threads") = 0, py::arg("verbose") = false)
        .def("info", &model_info)
        .def(
            "tokenize",
            [](const Model & m, const std::string & text, bool add_special, bool parse_special) {
                return m.vocab().tokenize(text, add_special, parse_special);
            },
            py::arg("text"), py::arg("add_special") = false, py::arg("parse_special") = true)
        .def(
            "token_to_piece",
            [](const Model & m, int32_t token, bool special) {
                return py::bytes(m.vocab().token_to_piece(token, special));
            },
            py::arg("token"), py::arg("special") = false)
        .def(
            "detokenize",
            [](const Model & m, const std::vector<int32_t> & tokens, bool special) {
                return py::bytes(m.vocab().detokenize(tokens, special));
            },
            py::arg("tokens"), py::arg("special") = false)
        .def("is_eog", [](const Model & m, int32_t t) { return m.vocab().is_eog(t); })
        .def(
            "apply_chat_template",
            [](const Model & m, const std::vector<std::pair<std::string, std::string>> & msgs, bool add_assistant) {
                std::vector<ChatMessage> v;
                for (const auto & [role, content] : msgs) v.push_back({role, content});
                return m.vocab().apply_chat_template(v, add_assistant);
            },
            py::arg("messages"), py::arg("add_assistant") = true)
        .def(
            "chat_turn", [](const Model & m, const std::string & role) { return m.vocab().turn_text(role); },
            py::arg("role"))
        .def("assistant_header", [](const Model & m) { return m.vocab().assistant_header(); })
        .def("set_n_threads", [](Model & m, int n) { m.backends().set_n_threads(n); })
        .def("weight_placement", &Model::weight_placement)
        .def("device_memory", [](const Model & m) { return m.backends().memory(); });

    py::class_<Context>(mod, "Context")
        .def(py::init([](const Model & m, int n_ctx, int n_batch) {
                 ContextParams p;
                 p.n_ctx = n_ctx;
                 p.n_batch = n_batch;
                 py::gil_scoped_release release;
                 return std::make_unique<Context>(m, p);
             }),
             py::arg("model"), py::arg("n_ctx") = 4096, py::arg("n_batch") = 512, py::keep_alive<1, 2>())
        .def(
            "eval",
            [](Context & s, const std::vector<int32_t> & tokens, bool all_logits, std::optional<IntArray> positions) {
                TokenPositions pos;
                if (positions) pos = token_positions(*positions);
                py::gil_scoped_release release;
                s.eval(tokens, all_logits, positions ? &pos : nullptr);
            },
            py::arg("tokens"), py::arg("all_logits") = false, py::arg("positions") = py::none())
        .def(
            "eval_embd",
            [](Context & s, const FloatArray & embd, int32_t placeholder, bool all_logits,
               std::optional<IntArray> positions) {
                const std::vector<float> rows = embedding_rows(embd, s.model().hparams().n_embd_inp());
                TokenPositions pos;
                if (positions) pos = token_positions(*positions);
                py::gil_scoped_release release;
                s.eval_embd(rows, placeholder, all_logits, positions ? &pos : nullptr);
            },
            py::arg("embd"), py::arg("placeholder"), py::arg("all_logits") = false, py::arg("positions") = py::none())
        .def(
            "_eval_staged",
            [](Context & s, const std::vector<int32_t> & tokens, bool all_logits, int split) {
                py::gil_scoped_release release;
                s.eval_staged(tokens, all_logits, split);
            },
            py::arg("tokens"), py::arg("all_logits"), py::arg("split"))
        .def(
            "_compact_kv",
            [](Context & s, const std::vector<std::vector<bool>> & full_kv, const std::vector<int32_t> & kept) {
                py::gil_scoped_release release;
                s.compact_kv(full_kv, kept);
            },
            py::arg("full_kv"), py::arg("kept_cells"))
        .def("_set_query_capture", &Context::set_query_capture, py::arg("n"))
        .def(
            "_select_sparse",
            [](Context & s, const std::vector<std::tuple<int, int, std::vector<int32_t>>> & span_list,
               const py::dict & request, bool compact) {
                const Model & m = s.model();
                const SparseConfig config = resolve_sparse_config(sparse_request(request), m.file(), m.hparams());
                std::vector<SparseSpan> spans;
                for (const auto & [begin, end, seg_starts] : span_list)
                    spans.push_back(SparseSpan{begin, end, seg_starts});
                SparseSelection sel;
                {
                    py::gil_scoped_release release;
                    sel = select_sparse(m, s, spans, config);
                    if (compact) s.compact_kv(sel.full_kv, sel.kept_cells);
                }
                py::dict d;
                d["kept_in_span"] = sel.kept_in_span;
                d["full_kv"] = sel.full_kv;
                d["kv_head_score"] = sel.kv_head_score;
                d["select_layer"] = config.select_layer;
                return d;
            },
            py::arg("spans"), py::arg("config"), py::arg("compact") = true)
        .def("_set_hidden_cells", &Context::set_hidden_cells, py::arg("cells"))
        .def("_hold_from_layer", &Context::hold_from_layer, py::arg("layer"), py::arg("probe") = false)
        .def("_probe_held_layer", &Context::probe_held_layer, py::call_guard<py::gil_scoped_release>())
        .def(
            "_replay_held",
            [](Context & c, std::optional<std::vector<int32_t>> kept) { c.replay_held(kept ? &*kept : nullptr); },
            py::arg("kept_cells") = py::none(), py::call_guard<py::gil_scoped_release>())
        .def("_finish_held", &Context::finish_held, py::call_guard<py::gil_scoped_release>())
        .def("_log_residual_at", &Context::log_residual_at, py::arg("layer"))
        .def("_rewind_to_logged_layer", &Context::rewind_to_logged_layer, py::arg("hold_layer"),
             py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("n_held", &Context::n_held)
        .def_property_readonly("kv_bytes_dense", &Context::kv_bytes_dense)
        .def_property_readonly("next_pos", &Context::next_pos)
        .def("logits", [](const Context & s) { return logits_array(s, true); })
        .def("all_logits", [](const Context & s) { return logits_array(s, false); })
        .def_property_readonly("n_past", &Context::n_past)
        .def_property_readonly("n_ctx", &Context::n_ctx)
        .def_property_readonly("kv_bytes", &Context::kv_bytes)
        .def("tokens", &Context::tokens)
        .def("reset", &Context::reset);

    register_vision(mod);
}
