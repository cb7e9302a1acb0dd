// `htsparse_llama._native.Conversation` and `.Answer`: the conversation
// (chat turns, HT-Sparse, visual chunks, statistics) and the streamed reply,
// as conversation.h and answer.h define them. model.py's Context is a thin
// layer over these. Long computations release the GIL.
#include "native_conversation.h"

#include "answer.h"
#include "conversation.h"
#include "errors.h"
#include "model.h"
#include "native_chunks.h"
#include "native_convert.h"
#include "sparse_state.h"

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <optional>

namespace py = pybind11;
using namespace hts;
using namespace hts_py;

namespace {

std::optional<TokenPositions> optional_positions(const std::optional<IntArray> & a) {
    if (!a) return std::nullopt;
    return token_positions(*a);
}

py::dict selection_dict(const SparseSelection & sel, int select_layer) {  // what Session.selection shows
    py::dict d;
    d["kept_in_span"] = sel.kept_in_span;
    d["full_kv"] = sel.full_kv;
    d["kv_head_score"] = sel.kv_head_score;
    d["select_layer"] = select_layer;
    return d;
}

py::dict stats_dict(const ConversationStats & s) {
    py::dict d;
    d["n_prompt"] = s.n_prompt;
    d["n_sparse"] = s.n_sparse;
    d["n_kept"] = s.n_kept;
    d["full_heads"] = s.full_heads;
    d["kv_bytes"] = s.kv_bytes;
    d["kv_bytes_dense"] = s.kv_bytes_dense;
    d["kv_bytes_peak"] = s.kv_bytes_peak;
    d["kv_bytes_tokens"] = s.kv_bytes_tokens;
    d["compute_bytes"] = s.compute_bytes;
    d["compute_bytes_peak"] = s.compute_bytes_peak;
    d["residual_bytes"] = s.residual_bytes;
    py::dict stages;
    for (const auto & [name, ms] : s.prefill_ms) stages[py::str(name)] = ms;
    d["prefill_ms"] = stages;
    d["ttft_ms"] = s.ttft_ms < 0 ? py::object(py::none()) : py::object(py::float_(s.ttft_ms));
    d["decode_tok_s"] = s.decode_tok_s < 0 ? py::object(py::none()) : py::object(py::float_(s.decode_tok_s));
    d["select_layer"] = s.select_layer < 0 ? py::object(py::none()) : py::object(py::int_(s.select_layer));
    d["prune_layer"] = s.prune_layer < 0 ? py::object(py::none()) : py::object(py::int_(s.prune_layer));
    return d;
}

void check_width(const Conversation & c, const ChunkList & chunks) {
    if (chunks.n_embd != c.model().hparams().n_embd_inp()) {
        fail(ErrorKind::InvalidArgument, format("the chunks are %d wide, the model's embeddings %d: they were encoded "
                                                "for another model",
                                                chunks.n_embd, c.model().hparams().n_embd_inp()));
    }
}

std::unique_ptr<Conversation> new_conversation(const Model & m, int n_ctx, int n_batch, const py::object & sparse) {
    ContextParams p;
    p.n_ctx = n_ctx;
    p.n_batch = n_batch;
    std::optional<SparseConfig> request;
    if (!sparse.is_none()) request = sparse_request(sparse.cast<py::dict>());
    py::gil_scoped_release release;
    return std::make_unique<Conversation>(m, p, request ? &*request : nullptr);
}

void bind_conversation(py::module_ & mod) {
    py::class_<Conversation>(mod, "Conversation")
        .def(py::init(&new_conversation), py::arg("model"), py::arg("n_ctx") = 4096, py::arg("n_batch") = 512,
             py::arg("sparse") = py::none(), py::keep_alive<1, 2>())
        .def_property_readonly("context", py::overload_cast<>(&Conversation::context),
                               py::return_value_policy::reference_internal)
        .def(
            "add_tokens",
            [](Conversation & c, const std::vector<int32_t> & tokens, bool sparse, bool all_logits,
               const std::optional<IntArray> & positions) {
                const std::optional<TokenPositions> pos = optional_positions(positions);
                py::gil_scoped_release release;
                c.add_tokens(tokens, sparse, all_logits, pos ? &*pos : nullptr);
            },
            py::arg("tokens"), py::arg("sparse") = false, py::arg("all_logits") = false,
            py::arg("positions") = py::none())
        .def(
            "add_embeddings",
            [](Conversation & c, const FloatArray & embd, int32_t placeholder,
               const std::optional<IntArray> & positions, bool sparse,
               const std::optional<std::vector<int32_t>> & segments, bool all_logits) {
                const std::vector<float> rows = embedding_rows(embd, c.model().hparams().n_embd_inp());
                const std::optional<TokenPositions> pos = optional_positions(positions);
                py::gil_scoped_release release;
                c.add_embeddings(rows, placeholder, pos ? &*pos : nullptr, sparse, segments ? &*segments : nullptr,
                                 all_logits);
            },
            py::arg("embd"), py::arg("placeholder") = 0, py::arg("positions") = py::none(), py::arg("sparse") = false,
            py::arg("segments") = py::none(), py::arg("all_logits") = false)
        .def("add_text", &Conversation::add_text, py::arg("text"), py::arg("special") = true, py::arg("sparse") = false,
             py::call_guard<py::gil_scoped_release>())
        .def(
            "add_message",
            [](Conversation & c, const std::string & role, const std::vector<std::pair<std::string, bool>> & parts) {
                std::vector<TurnPart> v;
                for (const auto & [text, sparse] : parts) v.push_back({text, sparse});
                py::gil_scoped_release release;
                return c.add_message(role, v);
            },
            py::arg("role"), py::arg("parts"))
        .def("begin_turn", &Conversation::begin_turn, py::arg("role"))
        .def(
            "add_chunks",
            [](Conversation & c, const ChunkListPtr & chunks, bool sparse) {
                check_width(c, *chunks);
                py::gil_scoped_release release;
                c.add_chunks(chunks->chunks, chunks->image_token, sparse);
            },
            py::arg("chunks"), py::arg("sparse") = false)
        .def(
            "add_media_turn",
            [](Conversation & c, const ChunkListPtr & chunks, const std::string & question, bool sparse,
               const std::optional<std::pair<std::string, std::string>> & turn_text) {
                check_width(c, *chunks);
                std::optional<TurnText> turn;
                if (turn_text) turn = TurnText{turn_text->first, turn_text->second};
                py::gil_scoped_release release;
                c.add_media_turn(chunks->chunks, chunks->image_token, question, sparse, turn ? &*turn : nullptr);
            },
            py::arg("chunks"), py::arg("question"), py::arg("sparse") = true, py::arg("turn_text") = py::none())
        .def_property_readonly("next_input_pos", &Conversation::next_input_pos)
        .def(
            "select",
            [](Conversation & c, const py::object & replace_kept) {
                if (replace_kept.is_none()) {
                    py::gil_scoped_release release;
                    return c.select();
                }
                const KeptReplacer replace = [replace_kept](const std::vector<int32_t> & kept) {
                    py::gil_scoped_acquire gil;
                    return replace_kept(kept).cast<std::vector<int32_t>>();
                };
                py::gil_scoped_release release;
                return c.select(&replace);
            },
            py::arg("replace_kept") = py::none())
        .def("selection",
             [](const Conversation & c) -> py::object {
                 const SparseSelection * sel = c.selection();
                 if (!sel) return py::none();
                 return selection_dict(*sel, c.sparse()->config().select_layer);
             })
        .def(
            "trial_selections",
            [](Conversation & c, const std::vector<std::pair<int, int>> & zones) {
                std::vector<SparseSelection> sels;
                {
                    py::gil_scoped_release release;
                    sels = c.trial_selections(zones);
                }
                py::list out;
                for (size_t i = 0; i < sels.size(); ++i) out.append(selection_dict(sels[i], zones[i].first));
                return out;
            },
            py::arg("zones"))
        .def_property_readonly("holds_back", &Conversation::holds_back)
        .def_property_readonly("is_sparse", [](const Conversation & c) { return c.sparse() != nullptr; })
        .def("sparse_config",
             [](const Conversation & c) -> py::object {
                 if (!c.sparse()) return py::none();
                 return sparse_dict(c.sparse()->config());
             })
        .def("spans",
             [](const Conversation & c) {
                 std::vector<std::pair<int, int>> out;
                 if (c.sparse()) {
                     for (const SparseSpan & s : c.sparse()->spans()) out.emplace_back(s.begin, s.end);
                 }
                 return out;
             })
        .def("segment_starts",
             [](const Conversation & c) {
                 std::vector<std::vector<int32_t>> out;
                 if (c.sparse()) {
                     for (const SparseSpan & s : c.sparse()->spans()) out.push_back(s.seg_starts);
                 }
                 return out;
             })
        .def_property_readonly("n_selections",
                               [](const Conversation & c) { return c.sparse() ? c.sparse()->n_selections() : 0; })
        .def_property_readonly("n_pending", &Conversation::n_pending)
        .def("answered", &Conversation::answered)
        .def("stats", [](const Conversation & c) { return stats_dict(c.stats()); })
        .def("reset", &Conversation::reset, py::call_guard<py::gil_scoped_release>());
}

std::unique_ptr<Answer> new_answer(Conversation & c, float temperature, int top_k, float top_p, float min_p,
                                   float repeat_penalty, int repeat_last_n, uint32_t seed, int max_tokens,
                                   const std::vector<std::string> & stop) {
    AnswerParams p;
    p.sampling.temperature = temperature;
    p.sampling.top_k = top_k;
    p.sampling.top_p = top_p;
    p.sampling.min_p = min_p;
    p.sampling.repeat_penalty = repeat_penalty;
    p.sampling.repeat_last_n = repeat_last_n;
    p.sampling.seed = seed;
    p.max_tokens = max_tokens;
    p.stop = stop;
    py::gil_scoped_release release;
    return std::make_unique<Answer>(c, p);
}

void bind_answer(py::module_ & mod) {
    py::class_<Answer>(mod, "Answer")
        .def(py::init(&new_answer), py::arg("conversation"), py::arg("temperature") = 0.8f, py::arg("top_k") = 40,
             py::arg("top_p") = 0.95f, py::arg("min_p") = 0.05f, py::arg("repeat_penalty") = 1.0f,
             py::arg("repeat_last_n") = 64, py::arg("seed") = 0xFFFFFFFFu, py::arg("max_tokens") = 256,
             py::arg("stop") = std::vector<std::string>{}, py::keep_alive<1, 2>())
        // The next piece as bytes (whole UTF-8 characters; may be empty), None once the answer has ended.
        .def("next",
             [](Answer & a) -> py::object {
                 std::string piece;
                 bool more;
                 {
                     py::gil_scoped_release release;
                     more = a.next(piece);
                 }
                 if (!more) return py::none();
                 return py::bytes(piece);
             })
        .def("cancel", &Answer::cancel, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("done", &Answer::done)
        .def_property_readonly("finish_reason", &Answer::finish_reason)
        .def_property_readonly("n_tokens", &Answer::n_tokens);
}

}  // namespace

void register_conversation(py::module_ & mod) {
    bind_conversation(mod);
    bind_answer(mod);
    mod.def("line_segments", &line_segments, py::arg("model"), py::arg("span"), py::arg("max_tokens") = 32);
}
