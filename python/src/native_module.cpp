// The Python extension `htsparse_llama._native`: thin pybind11 bindings over the
// C++ runtime. Long computations release the GIL; every hts::Error becomes a
// Python exception of the matching class (see htsparse_llama/errors.py), and
// any other C++ exception a RuntimeError, so nothing aborts the interpreter.
#include "errors.h"
#include "op_recorder.h"
#include "model.h"
#include "native_ops.h"
#include "sampler.h"
#include "session.h"
#include "sparse_config.h"
#include "sparse_select.h"
#include "vision.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;
using namespace hts;

namespace {

py::array_t<float> logits_array(const Session & s, bool last_only) {
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
    d["n_head"] = hp.n_head;
    d["n_head_kv"] = hp.n_head_kv;
    d["n_embd_head"] = hp.n_embd_head;
    d["n_ff"] = hp.n_ff;
    d["n_vocab"] = hp.n_vocab;
    d["n_ctx_train"] = hp.n_ctx_train;
    d["rope_freq_base"] = hp.rope_freq_base;
    d["device"] = m.backends().device_name();
    d["n_threads"] = m.backends().n_threads();
    d["weight_bytes"] = m.weight_bytes();
    d["chat_template"] = m.vocab().chat_template();
    d["bos"] = m.vocab().bos();
    d["add_bos"] = m.vocab().add_bos();
    return d;
}

// A SparseConfig from a dict of the fields that are set (None: unset).
SparseConfig sparse_request(const py::dict & d) {
    SparseConfig c;
    auto take = [&](const char * key, auto & field) {
        if (d.contains(key) && !d[key].is_none()) field = d[key].cast<std::decay_t<decltype(field)>>();
    };
    take("keep_ratio", c.keep_ratio);
    take("keep_mass", c.keep_mass);
    take("token_keep", c.token_keep);
    take("full_head_ratio", c.full_head_ratio);
    take("select_layer", c.select_layer);
    take("prune_layer", c.prune_layer);
    take("q_window", c.q_window);
    take("segment_floor", c.segment_floor);
    take("segment_tokens", c.segment_tokens);
    take("reroute", c.reroute);
    return c;
}

py::dict resolve_sparse(const Model & m, const py::dict & request) {
    const SparseConfig c = resolve_sparse_config(sparse_request(request), m.file(), m.hparams());
    py::dict d;
    d["keep_ratio"] = c.keep_ratio;
    d["keep_mass"] = c.keep_mass;
    d["token_keep"] = c.token_keep;
    d["full_head_ratio"] = c.full_head_ratio;
    d["select_layer"] = c.select_layer;
    d["prune_layer"] = c.prune_layer;
    d["q_window"] = c.q_window;
    d["segment_floor"] = c.segment_floor;
    d["segment_tokens"] = c.segment_tokens;
    d["reroute"] = c.reroute;
    d["head_prior"] = c.head_prior;
    return d;
}

}  // namespace

// positions from Python: shape (n,) for one stream or (n_streams, n).
static TokenPositions token_positions(const py::array_t<int32_t, py::array::c_style | py::array::forcecast> & a) {
    if (a.ndim() != 1 && a.ndim() != 2) fail(ErrorKind::InvalidArgument, "positions must be 1-D (n,) or 2-D (streams, n)");
    TokenPositions pos;
    pos.n_streams = a.ndim() == 1 ? 1 : static_cast<int>(a.shape(0));
    pos.values.assign(a.data(), a.data() + a.size());
    return pos;
}

// A float vector as a (rows, cols) array (copied).
static py::array_t<float> float_rows(const std::vector<float> & v, size_t cols) {
    py::array_t<float> out({cols ? v.size() / cols : 0, cols});
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
}

// VisionEncoder::encode from Python: images are (H, W, 3) uint8 arrays; the
// result is a list of {"type": "text", "tokens"} and {"type": "image", "embd"
// (n, n_embd), "positions" (rows, n) relative, "nx", "ny", "n_pos",
// "first_image", "n_images"} dicts. `progress(done, total)` is called after
// each encode batch; an exception in it stops the encoding and propagates.
static py::list vision_encode(VisionEncoder & v, const std::string & prompt,
                              const std::vector<py::array_t<uint8_t, py::array::c_style | py::array::forcecast>> & images,
                              bool frames, bool add_special, const py::object & progress) {
    VisionInput in;
    in.prompt = prompt;
    in.frames = frames;
    in.add_special = add_special;
    for (size_t i = 0; i < images.size(); ++i) {
        const auto & a = images[i];
        if (a.ndim() != 3 || a.shape(2) != 3) {
            fail(ErrorKind::InvalidArgument, format("image %zu must be an RGB array of shape (height, width, 3)", i));
        }
        in.images.push_back({static_cast<uint32_t>(a.shape(1)), static_cast<uint32_t>(a.shape(0)), a.data()});
    }
    struct Progress {
        py::object fn;
        std::unique_ptr<py::error_already_set> error;
    } state{progress, nullptr};
    if (!progress.is_none()) {
        in.progress_user_data = &state;
        in.progress = [](int done, int total, void * user_data) {
            auto * st = static_cast<Progress *>(user_data);
            py::gil_scoped_acquire gil;
            try {
                py::object r = st->fn(done, total);
                return r.is_none() || r.cast<bool>();
            } catch (py::error_already_set & e) {
                st->error = std::make_unique<py::error_already_set>(std::move(e));
                return false;
            }
        };
    }
    std::vector<VisionChunk> chunks;
    try {
        py::gil_scoped_release release;
        chunks = v.encode(in);
    } catch (const Error &) {
        if (state.error) throw std::move(*state.error);
        throw;
    }
    py::list out;
    for (const VisionChunk & c : chunks) {
        py::dict d;
        if (c.is_text()) {
            d["type"] = "text";
            d["tokens"] = c.tokens;
        } else {
            const VisualTokens & im = c.image;
            d["type"] = "image";
            d["embd"] = float_rows(im.embd, size_t(v.n_embd()));
            py::array_t<int32_t> pos({size_t(im.pos.n_streams), size_t(im.n_tokens)});
            std::copy(im.pos.values.begin(), im.pos.values.end(), pos.mutable_data());
            d["positions"] = pos;
            d["nx"] = im.nx;
            d["ny"] = im.ny;
            d["n_pos"] = im.n_pos;
            d["first_image"] = im.first_image;
            d["n_images"] = im.n_images;
        }
        out.append(d);
    }
    return out;
}

PYBIND11_MODULE(_native, mod) {
    mod.doc() = "htsparse-llama native runtime (C++ on upstream ggml / llama.cpp)";
    register_ops(mod);
    mod.def("sparse_gguf_keys", &htsparse_gguf_keys);
    mod.def("resolve_sparse_config", &resolve_sparse, py::arg("model"), py::arg("request"));

    // Exception classes are created in Python (errors.py) and handed in here,
    // so the hierarchy lives in one readable place.
    static py::object exc_classes[6];
    mod.def("_register_errors", [](py::object invalid_argument, py::object not_found, py::object invalid_file,
                                   py::object unsupported, py::object overflow, py::object backend) {
        exc_classes[int(ErrorKind::InvalidArgument)] = invalid_argument;
        exc_classes[int(ErrorKind::FileNotFound)] = not_found;
        exc_classes[int(ErrorKind::InvalidFile)] = invalid_file;
        exc_classes[int(ErrorKind::UnsupportedModel)] = unsupported;
        exc_classes[int(ErrorKind::ContextOverflow)] = overflow;
        exc_classes[int(ErrorKind::Backend)] = backend;
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
        .def("tokenize",
             [](const Model & m, const std::string & text, bool add_special, bool parse_special) {
                 return m.vocab().tokenize(text, add_special, parse_special);
             },
             py::arg("text"), py::arg("add_special") = false, py::arg("parse_special") = true)
        .def("token_to_piece",
             [](const Model & m, int32_t token, bool special) { return py::bytes(m.vocab().token_to_piece(token, special)); },
             py::arg("token"), py::arg("special") = false)
        .def("detokenize",
             [](const Model & m, const std::vector<int32_t> & tokens, bool special) {
                 return py::bytes(m.vocab().detokenize(tokens, special));
             },
             py::arg("tokens"), py::arg("special") = false)
        .def("is_eog", [](const Model & m, int32_t t) { return m.vocab().is_eog(t); })
        .def("apply_chat_template",
             [](const Model & m, const std::vector<std::pair<std::string, std::string>> & msgs, bool add_assistant) {
                 std::vector<ChatMessage> v;
                 for (const auto & [role, content] : msgs) v.push_back({role, content});
                 return m.vocab().apply_chat_template(v, add_assistant);
             },
             py::arg("messages"), py::arg("add_assistant") = true)
        .def("set_n_threads", [](Model & m, int n) { m.backends().set_n_threads(n); });

    py::class_<Session>(mod, "Session")
        .def(py::init([](const Model & m, int n_ctx, int n_batch) {
                 SessionParams p;
                 p.n_ctx = n_ctx;
                 p.n_batch = n_batch;
                 py::gil_scoped_release release;
                 return std::make_unique<Session>(m, p);
             }),
             py::arg("model"), py::arg("n_ctx") = 4096, py::arg("n_batch") = 512, py::keep_alive<1, 2>())
        .def("eval",
             [](Session & s, const std::vector<int32_t> & tokens, bool all_logits,
                std::optional<py::array_t<int32_t, py::array::c_style | py::array::forcecast>> positions) {
                 TokenPositions pos;
                 if (positions) pos = token_positions(*positions);
                 py::gil_scoped_release release;
                 s.eval(tokens, all_logits, positions ? &pos : nullptr);
             },
             py::arg("tokens"), py::arg("all_logits") = false, py::arg("positions") = py::none())
        .def("eval_embd",
             [](Session & s, const py::array_t<float, py::array::c_style | py::array::forcecast> & embd,
                int32_t placeholder, bool all_logits,
                std::optional<py::array_t<int32_t, py::array::c_style | py::array::forcecast>> positions) {
                 if (embd.ndim() != 2 || embd.shape(1) != s.model().hparams().n_embd) {
                     fail(ErrorKind::InvalidArgument, format("embeddings must have shape (n, %d)", s.model().hparams().n_embd));
                 }
                 std::vector<float> rows(embd.data(), embd.data() + embd.size());
                 TokenPositions pos;
                 if (positions) pos = token_positions(*positions);
                 py::gil_scoped_release release;
                 s.eval_embd(rows, placeholder, all_logits, positions ? &pos : nullptr);
             },
             py::arg("embd"), py::arg("placeholder"), py::arg("all_logits") = false, py::arg("positions") = py::none())
        .def("_eval_staged",
             [](Session & s, const std::vector<int32_t> & tokens, bool all_logits, int split) {
                 py::gil_scoped_release release;
                 s.eval_staged(tokens, all_logits, split);
             },
             py::arg("tokens"), py::arg("all_logits"), py::arg("split"))
        .def("_compact_kv",
             [](Session & s, const std::vector<std::vector<bool>> & full_kv, const std::vector<int32_t> & kept) {
                 py::gil_scoped_release release;
                 s.compact_kv(full_kv, kept);
             },
             py::arg("full_kv"), py::arg("kept_cells"))
        .def("_set_query_capture", &Session::set_query_capture, py::arg("n"))
        .def("_select_sparse",
             [](Session & s, const std::vector<std::tuple<int, int, std::vector<int32_t>>> & span_list,
                const py::dict & request, bool compact) {
                 const Model & m = s.model();
                 const SparseConfig config = resolve_sparse_config(sparse_request(request), m.file(), m.hparams());
                 std::vector<SparseSpan> spans;
                 for (const auto & [begin, end, seg_starts] : span_list) spans.push_back(SparseSpan{begin, end, seg_starts});
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
        .def("_set_hidden_cells", &Session::set_hidden_cells, py::arg("cells"))
        .def("_hold_from_layer", &Session::hold_from_layer, py::arg("layer"))
        .def("_probe_held_layer", &Session::probe_held_layer, py::call_guard<py::gil_scoped_release>())
        .def("_finish_held", &Session::finish_held, py::call_guard<py::gil_scoped_release>())
        .def("_log_residual_at", &Session::log_residual_at, py::arg("layer"))
        .def("_rewind_to_logged_layer", &Session::rewind_to_logged_layer, py::arg("hold_layer"),
             py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("n_held", &Session::n_held)
        .def_property_readonly("kv_bytes_dense", &Session::kv_bytes_dense)
        .def_property_readonly("next_pos", &Session::next_pos)
        .def("logits", [](const Session & s) { return logits_array(s, true); })
        .def("all_logits", [](const Session & s) { return logits_array(s, false); })
        .def_property_readonly("n_past", &Session::n_past)
        .def_property_readonly("n_ctx", &Session::n_ctx)
        .def_property_readonly("kv_bytes", &Session::kv_bytes)
        .def("tokens", &Session::tokens)
        .def("reset", &Session::reset);

    py::class_<VisionEncoder>(mod, "Vision")
        .def(py::init([](const Model & m, const std::string & mmproj, int n_threads, bool use_gpu, int image_min_tokens,
                         int image_max_tokens, int batch_max_tokens) {
                 VisionParams p;
                 p.n_threads = n_threads;
                 p.use_gpu = use_gpu;
                 p.image_min_tokens = image_min_tokens;
                 p.image_max_tokens = image_max_tokens;
                 p.batch_max_tokens = batch_max_tokens;
                 py::gil_scoped_release release;
                 return std::make_unique<VisionEncoder>(m, mmproj, p);
             }),
             py::arg("model"), py::arg("mmproj"), py::arg("n_threads") = 0, py::arg("use_gpu") = true,
             py::arg("image_min_tokens") = -1, py::arg("image_max_tokens") = -1, py::arg("batch_max_tokens") = 1024,
             py::keep_alive<1, 2>())
        .def("encode", &vision_encode, py::arg("prompt"), py::arg("images"), py::arg("frames") = false,
             py::arg("add_special") = false, py::arg("progress") = py::none())
        .def_property_readonly("marker", &VisionEncoder::marker)
        .def_property_readonly("uses_mrope", &VisionEncoder::uses_mrope)
        .def_property_readonly("n_embd", &VisionEncoder::n_embd)
        .def_property_readonly("frames_per_unit", &VisionEncoder::frames_per_unit)
        .def_property_readonly("image_token", &VisionEncoder::image_token);
    mod.def("token_embeddings",
            [](const Model & m, const std::vector<int32_t> & tokens) {
                return float_rows(token_embeddings(m, tokens), size_t(m.hparams().n_embd));
            },
            py::arg("model"), py::arg("tokens"));

    py::class_<Sampler>(mod, "Sampler")
        .def(py::init([](const Model & m, float temperature, int top_k, float top_p, float min_p, float repeat_penalty,
                         int repeat_last_n, uint32_t seed) {
                 SamplerParams p;
                 p.temperature = temperature;
                 p.top_k = top_k;
                 p.top_p = top_p;
                 p.min_p = min_p;
                 p.repeat_penalty = repeat_penalty;
                 p.repeat_last_n = repeat_last_n;
                 p.seed = seed;
                 return std::make_unique<Sampler>(p, m.hparams().n_vocab);
             }),
             py::arg("model"), py::arg("temperature") = 0.8f, py::arg("top_k") = 40, py::arg("top_p") = 0.95f, py::arg("min_p") = 0.05f,
             py::arg("repeat_penalty") = 1.0f, py::arg("repeat_last_n") = 64, py::arg("seed") = 0xFFFFFFFFu)
        .def("sample",
             [](Sampler & smp, const Session & s) {
                 const float * logits = s.last_logits();
                 const int n_vocab = static_cast<int>(s.logits().size() / std::max(1, s.n_logit_rows()));
                 return smp.sample(logits, n_vocab);
             })
        .def("accept", &Sampler::accept)
        .def("reset", &Sampler::reset);
}
