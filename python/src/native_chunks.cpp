// `htsparse_llama._native.Chunks` and `.Chunk` (native_chunks.h).
#include "native_chunks.h"

#include "errors.h"
#include "native_convert.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

namespace py = pybind11;
using hts::ErrorKind;
using hts::fail;
using hts::format;

namespace hts_py {

namespace {

// One chunk of a list, kept alive by the list it points into.
struct ChunkView {
    ChunkListPtr list;
    size_t index = 0;
    const hts::VisionChunk & chunk() const { return list->chunks[index]; }
};

// A read-only array over memory the list owns (the list stays alive while the array does).
template <typename T>
py::array_t<T> view_of(const ChunkListPtr & list, const T * data, std::vector<py::ssize_t> shape) {
    auto * keep = new ChunkListPtr(list);
    py::capsule owner(keep, [](void * p) { delete static_cast<ChunkListPtr *>(p); });
    py::array_t<T> a(shape, data, owner);
    py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
    return a;
}

ChunkView at(const ChunkListPtr & list, py::ssize_t i) {
    const py::ssize_t n = static_cast<py::ssize_t>(list->chunks.size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) throw py::index_error(format("chunk index out of range (%zd chunks)", n));
    return ChunkView{list, static_cast<size_t>(i)};
}

size_t nbytes(const ChunkList & l) {
    size_t n = 0;
    for (const hts::VisionChunk & c : l.chunks) {
        n += c.tokens.size() * sizeof(int32_t) + c.image.embd.size() * sizeof(float) +
             c.image.pos.values.size() * sizeof(int32_t);
    }
    return n;
}

// The cache's entry: one dict of arrays per chunk ({"tokens"} or {"embd", "positions", "meta"}).
py::list to_arrays(const ChunkListPtr & list) {
    py::list out;
    for (size_t i = 0; i < list->chunks.size(); ++i) {
        const hts::VisionChunk & c = list->chunks[i];
        py::dict d;
        if (c.is_text()) {
            py::array_t<int32_t> tokens(static_cast<py::ssize_t>(c.tokens.size()));
            std::copy(c.tokens.begin(), c.tokens.end(), tokens.mutable_data());
            d["tokens"] = tokens;
        } else {
            const hts::VisualTokens & im = c.image;
            d["embd"] = float_rows(im.embd, size_t(list->n_embd));
            d["positions"] = positions_array(im.pos, size_t(im.n_tokens));
            py::array_t<int32_t> meta(5);
            const int32_t values[5] = {im.nx, im.ny, im.n_pos, im.first_image, im.n_images};
            std::copy(values, values + 5, meta.mutable_data());
            d["meta"] = meta;
        }
        out.append(d);
    }
    return out;
}

ChunkListPtr from_arrays(const py::sequence & items, int n_embd, int32_t image_token) {
    std::vector<hts::VisionChunk> chunks;
    for (const py::handle & obj : items) {
        const py::dict d = py::reinterpret_borrow<py::dict>(obj);
        hts::VisionChunk c;
        if (d.contains("tokens")) {
            c.tokens = d["tokens"].cast<std::vector<int32_t>>();
            chunks.push_back(std::move(c));
            continue;
        }
        hts::VisualTokens & im = c.image;
        im.embd = embedding_rows(d["embd"].cast<FloatArray>(), n_embd);
        im.n_tokens = static_cast<int>(im.embd.size() / size_t(n_embd));
        im.pos = token_positions(d["positions"].cast<IntArray>());
        const std::vector<int32_t> meta = d["meta"].cast<std::vector<int32_t>>();
        if (im.n_tokens == 0 || im.pos.values.size() != size_t(im.pos.n_streams) * im.n_tokens || meta.size() != 5) {
            fail(ErrorKind::InvalidArgument,
                 "an image chunk needs rows, one position per row and stream, and 5 meta values");
        }
        im.nx = meta[0];
        im.ny = meta[1];
        im.n_pos = meta[2];
        im.first_image = meta[3];
        im.n_images = meta[4];
        chunks.push_back(std::move(c));
    }
    return make_chunk_list(std::move(chunks), n_embd, image_token);
}

}  // namespace

ChunkListPtr make_chunk_list(std::vector<hts::VisionChunk> chunks, int n_embd, int32_t image_token) {
    auto list = std::make_shared<ChunkList>();
    list->chunks = std::move(chunks);
    list->n_embd = n_embd;
    list->image_token = image_token;
    return list;
}

void register_chunks(py::module_ & mod) {
    py::class_<ChunkView>(mod, "Chunk", "One chunk of a Chunks list: text tokens, or the visual tokens of an image")
        .def_property_readonly("kind", [](const ChunkView & v) { return v.chunk().is_text() ? "text" : "image"; })
        .def_property_readonly("is_image", [](const ChunkView & v) { return !v.chunk().is_text(); })
        .def_property_readonly("n_tokens",
                               [](const ChunkView & v) {
                                   const hts::VisionChunk & c = v.chunk();
                                   return c.is_text() ? int(c.tokens.size()) : c.image.n_tokens;
                               })
        .def_property_readonly("tokens", [](const ChunkView & v) { return v.chunk().tokens; })
        .def_property_readonly("embd",
                               [](const ChunkView & v) -> py::object {
                                   const hts::VisualTokens & im = v.chunk().image;
                                   if (v.chunk().is_text()) return py::none();
                                   return view_of<float>(v.list, im.embd.data(), {im.n_tokens, v.list->n_embd});
                               })
        .def_property_readonly("positions",
                               [](const ChunkView & v) -> py::object {
                                   const hts::VisualTokens & im = v.chunk().image;
                                   if (v.chunk().is_text()) return py::none();
                                   return view_of<int32_t>(v.list, im.pos.values.data(),
                                                           {im.pos.n_streams, im.n_tokens});
                               })
        // Absolute positions when the chunk starts at pos_0 (a new array), as the context places it.
        .def(
            "positions_at",
            [](const ChunkView & v, int pos_0) -> py::object {
                const hts::VisualTokens & im = v.chunk().image;
                if (v.chunk().is_text()) return py::none();
                return positions_array(im.positions_at(pos_0), size_t(im.n_tokens));
            },
            py::arg("pos_0"))
        .def_property_readonly("nx", [](const ChunkView & v) { return v.chunk().image.nx; })
        .def_property_readonly("ny", [](const ChunkView & v) { return v.chunk().image.ny; })
        .def_property_readonly("n_pos", [](const ChunkView & v) { return v.chunk().image.n_pos; })
        .def_property_readonly("first_image", [](const ChunkView & v) { return v.chunk().image.first_image; })
        .def_property_readonly("n_images", [](const ChunkView & v) { return v.chunk().image.n_images; })
        .def("__repr__", [](const ChunkView & v) {
            const hts::VisionChunk & c = v.chunk();
            if (c.is_text()) return format("Chunk(text, %zu tokens)", c.tokens.size());
            return format("Chunk(image, %d tokens, %dx%d grid, images %d..%d)", c.image.n_tokens, c.image.nx,
                          c.image.ny, c.image.first_image, c.image.first_image + c.image.n_images - 1);
        });

    py::class_<ChunkList, ChunkListPtr>(mod, "Chunks",
                                        "Encoded text and visual chunks, in prompt order (opaque, "
                                        "immutable; index it for Chunk views)")
        .def("__len__", [](const ChunkList & l) { return l.chunks.size(); })
        .def("__getitem__", [](const ChunkListPtr & l, py::ssize_t i) { return at(l, i); })
        .def("__getitem__",
             [](const ChunkListPtr & l, const py::slice & s) {
                 size_t start = 0, stop = 0, step = 0, n = 0;
                 if (!s.compute(l->chunks.size(), &start, &stop, &step, &n)) throw py::error_already_set();
                 py::list views;
                 for (size_t k = 0; k < n; ++k) views.append(ChunkView{l, start + k * step});
                 return views;
             })
        .def("__iter__",
             [](const ChunkListPtr & l) {
                 py::list views;
                 for (size_t i = 0; i < l->chunks.size(); ++i) views.append(ChunkView{l, i});
                 return py::iter(views);
             })
        .def_property_readonly("n_embd", [](const ChunkList & l) { return l.n_embd; })
        .def_property_readonly("image_token", [](const ChunkList & l) { return l.image_token; })
        .def_property_readonly("n_visual_tokens",
                               [](const ChunkList & l) {
                                   int n = 0;
                                   for (const hts::VisionChunk & c : l.chunks) n += c.image.n_tokens;
                                   return n;
                               })
        .def_property_readonly("n_tokens",
                               [](const ChunkList & l) {
                                   size_t n = 0;
                                   for (const hts::VisionChunk & c : l.chunks) n += c.tokens.size() + c.image.n_tokens;
                                   return n;
                               })
        .def_property_readonly("nbytes", [](const ChunkList & l) { return nbytes(l); })
        .def("to_arrays", [](const ChunkListPtr & l) { return to_arrays(l); })
        .def_static(
            "from_arrays",
            [](const py::sequence & items, int n_embd, int32_t image_token) {
                return from_arrays(items, n_embd, image_token);
            },
            py::arg("items"), py::arg("n_embd"), py::arg("image_token"))
        .def("__repr__", [](const ChunkList & l) { return format("Chunks(%zu chunks)", l.chunks.size()); });
}

}  // namespace hts_py
