// `htsparse_llama._native.Vision`, `.VideoEncoder` and the video layout
// functions (vision.h, video_layout.h). Images are (H, W, 3) uint8 arrays;
// encoded chunks come back as one opaque Chunks list (native_chunks.h). A
// progress(done, total) callable is called after each encode batch; an
// exception in it stops the encoding and propagates.
#include "native_vision.h"

#include "errors.h"
#include "model.h"
#include "native_chunks.h"
#include "native_convert.h"
#include "image_resize.h"
#include "video_layout.h"
#include "vision.h"

#include <pybind11/stl.h>

#include <memory>

namespace py = pybind11;
using namespace hts;
using namespace hts_py;

namespace {

using RgbArray = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// The arrays as images; they must outlive the returned views.
std::vector<VisionInput::Image> image_views(const std::vector<RgbArray> & images) {
    std::vector<VisionInput::Image> out;
    for (size_t i = 0; i < images.size(); ++i) {
        const RgbArray & a = images[i];
        if (a.ndim() != 3 || a.shape(2) != 3) {
            fail(ErrorKind::InvalidArgument, format("image %zu must be an RGB array of shape (height, width, 3)", i));
        }
        out.push_back({static_cast<uint32_t>(a.shape(1)), static_cast<uint32_t>(a.shape(0)), a.data()});
    }
    return out;
}

// A Python progress callable as a VisionProgressCallback, called with the GIL
// held; what it raises stops the work and is raised again by run().
class PyProgress {
public:
    explicit PyProgress(py::object fn) : fn_(std::move(fn)) {}
    VisionProgressCallback callback() const { return fn_.is_none() ? nullptr : &PyProgress::call; }
    void * user_data() { return this; }

    // Runs work without the GIL; an error the callable raised wins over the one it caused.
    template <typename F> void run(F && work) {
        try {
            py::gil_scoped_release release;
            work();
        } catch (const Error &) {
            if (error_) throw std::move(*error_);
            throw;
        }
    }

private:
    py::object fn_;
    std::unique_ptr<py::error_already_set> error_;

    static bool call(int done, int total, void * user_data) {
        auto * self = static_cast<PyProgress *>(user_data);
        py::gil_scoped_acquire gil;
        try {
            py::object r = self->fn_(done, total);
            return r.is_none() || r.cast<bool>();
        } catch (py::error_already_set & e) {
            self->error_ = std::make_unique<py::error_already_set>(std::move(e));
            return false;
        }
    }
};

ChunkListPtr vision_encode(VisionEncoder & v, const std::string & prompt, const std::vector<RgbArray> & images,
                           bool frames, bool add_special, const py::object & progress) {
    VisionInput in;
    in.prompt = prompt;
    in.frames = frames;
    in.add_special = add_special;
    in.images = image_views(images);
    PyProgress p(progress);
    in.progress = p.callback();
    in.progress_user_data = p.user_data();
    std::vector<VisionChunk> chunks;
    p.run([&] { chunks = v.encode(in); });
    return make_chunk_list(std::move(chunks), v.n_embd(), v.image_token());
}

py::dict layout_dict(const MmprojLayout & l) {
    py::dict d;
    d["projector"] = l.projector;
    d["tokens_per_second"] = l.tokens_per_second;
    d["image_size"] = l.image_size;
    d["patch_size"] = l.patch_size;
    d["scale_factor"] = l.scale_factor;
    d["tokens_per_tile"] = l.tokens_per_tile();
    return d;
}

std::unique_ptr<VisionEncoder> new_vision(const Model & m, const std::string & mmproj, int n_threads, bool use_gpu,
                                          int image_min_tokens, int image_max_tokens, int batch_max_tokens) {
    VisionParams p;
    p.n_threads = n_threads;
    p.use_gpu = use_gpu;
    p.image_min_tokens = image_min_tokens;
    p.image_max_tokens = image_max_tokens;
    p.batch_max_tokens = batch_max_tokens;
    py::gil_scoped_release release;
    return std::make_unique<VisionEncoder>(m, mmproj, p);
}

const char * family_name(VideoFamily f) {
    switch (f) {
        case VideoFamily::QwenVL:
            return "qwen";
        case VideoFamily::Qwen3VL:
            return "qwen3vl";
        case VideoFamily::Gemma3:
            return "gemma3";
        case VideoFamily::SmolVLM:
            break;
    }
    return "smolvlm";
}

void bind_vision(py::module_ & mod) {
    py::class_<VisionEncoder>(mod, "Vision")
        .def(py::init(&new_vision), py::arg("model"), py::arg("mmproj"), py::arg("n_threads") = 0,
             py::arg("use_gpu") = true, py::arg("image_min_tokens") = -1, py::arg("image_max_tokens") = -1,
             py::arg("batch_max_tokens") = 1024, py::keep_alive<1, 2>())
        .def("encode", &vision_encode, py::arg("prompt"), py::arg("images"), py::arg("frames") = false,
             py::arg("add_special") = false, py::arg("progress") = py::none())
        .def_property_readonly("marker", &VisionEncoder::marker)
        .def_property_readonly("uses_mrope", &VisionEncoder::uses_mrope)
        .def_property_readonly("n_embd", &VisionEncoder::n_embd)
        .def_property_readonly("frames_per_unit", &VisionEncoder::frames_per_unit)
        .def_property_readonly("image_token", &VisionEncoder::image_token)
        .def_property_readonly("layout", [](const VisionEncoder & v) { return layout_dict(v.layout()); })
        // The video layout of the mmproj's model family; UnsupportedModelError for one without.
        .def_property_readonly("video_family",
                               [](const VisionEncoder & v) { return family_name(video_family(v.layout())); });
}

void bind_video(py::module_ & mod) {
    py::class_<VideoEncoder>(mod, "VideoEncoder")
        .def(py::init([](VisionEncoder & v) {
                 py::gil_scoped_release release;
                 return std::make_unique<VideoEncoder>(v);
             }),
             py::arg("vision"), py::keep_alive<1, 2>())
        .def_property_readonly("family", [](const VideoEncoder & e) { return family_name(e.family()); })
        .def(
            "add_frames",
            [](VideoEncoder & e, const std::vector<RgbArray> & frames, const py::object & progress) {
                const std::vector<VisionInput::Image> views = image_views(frames);
                PyProgress p(progress);
                p.run([&] { e.add_frames(views, p.callback(), p.user_data()); });
            },
            py::arg("frames"), py::arg("progress") = py::none())
        .def_property_readonly("n_frames", &VideoEncoder::n_frames)
        // The frame pairs (Qwen-VL) or frames (SmolVLM2) encoded so far, without the block's text.
        .def("images", [](const VideoEncoder & e) { return make_chunk_list(e.images(), e.n_embd(), e.image_token()); })
        .def(
            "finish",
            [](const VideoEncoder & e, const std::vector<double> & times, double duration_s) {
                return make_chunk_list(e.finish(times, duration_s), e.n_embd(), e.image_token());
            },
            py::arg("times"), py::arg("duration_s"));
    mod.attr("FRAMES_PER_GROUP") = VideoEncoder::kFramesPerGroup;
    mod.def("qwen_temporal_step", &qwen_temporal_step, py::arg("projector"), py::arg("frame_interval_s"),
            py::arg("tokens_per_second") = 2);
    mod.def("frame_interval", &frame_interval, py::arg("times"));
    mod.def(
        "qwen_place_pairs",
        [](const ChunkListPtr & pairs, double step) {
            return make_chunk_list(qwen_place_pairs(pairs->chunks, step), pairs->n_embd, pairs->image_token);
        },
        py::arg("pairs"), py::arg("step"));
    mod.def("qwen3_timestamp", &qwen3_timestamp, py::arg("t"));
    mod.def("qwen3_video_prompt", &qwen3_video_prompt, py::arg("pair_times"), py::arg("marker"));
    mod.def("number_words", &number_words, py::arg("n"));
    mod.def("gemma3_timestamp", &gemma3_timestamp, py::arg("t"));
    mod.def("gemma3_video_prompt", &gemma3_video_prompt, py::arg("times"), py::arg("marker"),
            py::arg("interval_s") = 5.0);
    mod.def("smolvlm_video_prompt", &smolvlm_video_prompt, py::arg("times"), py::arg("duration_s"), py::arg("marker"));
    mod.def("longest_edge_size", &longest_edge_size, py::arg("width"), py::arg("height"), py::arg("size"));
    mod.def(
        "resize_rgb_lanczos",
        [](const RgbArray & rgb, int width, int height) {
            const std::vector<VisionInput::Image> v = image_views({rgb});
            const std::vector<uint8_t> out = resize_rgb_lanczos(v[0].rgb, int(v[0].nx), int(v[0].ny), width, height);
            py::array_t<uint8_t> a({size_t(height), size_t(width), size_t(3)});
            std::copy(out.begin(), out.end(), a.mutable_data());
            return a;
        },
        py::arg("rgb"), py::arg("width"), py::arg("height"));
    mod.def(
        "square_frame",
        [](const RgbArray & rgb, int tile) {
            const std::vector<VisionInput::Image> v = image_views({rgb});
            const std::vector<uint8_t> out = square_frame(v[0], tile);
            py::array_t<uint8_t> a({size_t(tile), size_t(tile), size_t(3)});
            std::copy(out.begin(), out.end(), a.mutable_data());
            return a;
        },
        py::arg("rgb"), py::arg("tile"));
}

}  // namespace

void register_vision(py::module_ & mod) {
    register_chunks(mod);
    bind_vision(mod);
    bind_video(mod);
    mod.def(
        "token_embeddings",
        [](const Model & m, const std::vector<int32_t> & tokens) {
            return float_rows(token_embeddings(m, tokens), size_t(m.hparams().n_embd));
        },
        py::arg("model"), py::arg("tokens"));
}
