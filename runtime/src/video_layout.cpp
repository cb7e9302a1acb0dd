#include "video_layout.h"

#include "errors.h"
#include "image_resize.h"
#include "model.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <locale>
#include <sstream>

namespace hts {

namespace {

constexpr int kFramesPerPair = 2;
constexpr const char * kVideoIntro = "You are provided the following series of %s frames from a %s [H:MM:SS] video.\n";
constexpr const char * kMediaOutro = "\n\n";
constexpr const char * kFakeImage = "<fake_token_around_image>";
constexpr const char * kGlobalImage = "<global-img>";
constexpr const char * kVisionStart = "<|vision_start|>";
constexpr const char * kVisionEnd = "<|vision_end|>";
constexpr const char * kGemmaVideoStart = "Video:";  // llama.cpp's mtmd_helper_video prompt_start
constexpr const char * kStartOfImage = "<start_of_image>";
constexpr const char * kEndOfImage = "<end_of_image>";

int32_t single_token(const Vocab & vocab, const char * text, const char * family) {
    const std::vector<int32_t> ids = vocab.tokenize(text, false, true);
    if (ids.size() != 1) {
        fail(ErrorKind::InvalidArgument,
             format("the model's vocabulary has no single token for %s: not a %s model", text, family));
    }
    return ids[0];
}

VisionChunk text_chunk(std::vector<int32_t> tokens) {
    VisionChunk c;
    c.tokens = std::move(tokens);
    return c;
}

// str(datetime.timedelta(seconds=s)): "H:MM:SS", with "N day(s), " first from a day on.
std::string timedelta_text(long long s) {
    const long long days = s / 86400, rest = s % 86400;
    std::string out = days ? format("%lld day%s, ", days, days == 1 ? "" : "s") : "";
    return out + format("%lld:%02lld:%02lld", rest / 3600, rest % 3600 / 60, rest % 60);
}

// SmolVLM2's frame header: "\nFrame from MM:SS:", seconds truncated.
std::string smolvlm_frame_header(double t) {
    return format("\nFrame from %02lld:%02lld:", static_cast<long long>(std::floor(t / 60)),
                  static_cast<long long>(std::fmod(t, 60.0)));
}

// `prompt` cut at each `marker`: its text tokenized (special tokens parsed)
// between the images, in order. Every piece is bounded by special tokens or
// the prompt's ends, so it tokenizes as it does within the whole prompt.
std::vector<VisionChunk> interleave(const Vocab & vocab, const std::string & prompt, const std::string & marker,
                                    const std::vector<VisionChunk> & images) {
    std::vector<VisionChunk> out;
    size_t from = 0;
    for (const VisionChunk & image : images) {
        const size_t at = prompt.find(marker, from);
        out.push_back(text_chunk(vocab.tokenize(prompt.substr(from, at - from), false, true)));
        out.push_back(image);
        from = at + marker.size();
    }
    out.push_back(text_chunk(vocab.tokenize(prompt.substr(from), false, true)));
    return out;
}

}  // namespace

VideoFamily video_family(const MmprojLayout & layout) {
    if (layout.projector == "qwen2vl_merger" || layout.projector == "qwen2.5vl_merger") return VideoFamily::QwenVL;
    if (layout.projector == "qwen3vl_merger") return VideoFamily::Qwen3VL;
    if (layout.projector == "idefics3") return VideoFamily::SmolVLM;
    if (layout.projector == "gemma3") return VideoFamily::Gemma3;
    fail(ErrorKind::UnsupportedModel,
         format(
             "video input is supported for Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM2 and Gemma 3 models (this mmproj's "
             "projector is '%s'); give the frames as images instead",
             layout.projector.c_str()));
}

// --- Qwen-VL -------------------------------------------------------------------

double qwen_temporal_step(const std::string & projector, double frame_interval_s, int tokens_per_second) {
    if (projector == "qwen2.5vl_merger") return tokens_per_second * kFramesPerPair * frame_interval_s;
    if (projector == "qwen2vl_merger") return 1.0;
    fail(ErrorKind::InvalidArgument,
         format("no Qwen-VL video layout for an mmproj of projector type '%s'", projector.c_str()));
}

double frame_interval(const std::vector<double> & times) {
    return times.size() > 1 ? (times.back() - times.front()) / double(times.size() - 1) : 0.0;
}

std::vector<VisionChunk> qwen_place_pairs(std::vector<VisionChunk> pairs, double step) {
    if (pairs.empty()) fail(ErrorKind::InvalidArgument, "a video needs at least one frame");
    int top = 0;
    for (size_t g = 0; g < pairs.size(); ++g) {
        VisualTokens & v = pairs[g].image;
        if (pairs[g].is_text() || v.pos.n_streams != 3) {
            fail(ErrorKind::InvalidArgument, "Qwen-VL video needs M-RoPE (t/h/w) positions");
        }
        const int32_t shift = static_cast<int32_t>(std::floor(double(g) * step));
        for (int i = 0; i < v.n_tokens; ++i) v.pos.values[i] += shift;  // row 0: t
        top = std::max(top, *std::max_element(v.pos.values.begin(), v.pos.values.end()));
        v.n_pos = 0;
    }
    pairs.back().image.n_pos = top + 1;
    return pairs;
}

// --- Qwen3-VL ------------------------------------------------------------------

std::vector<double> unit_times(const std::vector<double> & times, const std::vector<VisionChunk> & units) {
    std::vector<double> out;
    for (const VisionChunk & u : units) {
        const int first = u.image.first_image, last = first + u.image.n_images - 1;
        if (first < 0 || last >= int(times.size())) {
            fail(ErrorKind::InvalidArgument, format("frame %d has no time (%zu given)", last, times.size()));
        }
        out.push_back((times[first] + times[last]) / 2);
    }
    return out;
}

std::string qwen3_timestamp(double t) {
    // The classic locale: an app's setlocale must not turn "1.2" into "1,2".
    // Like Python's formatting, iostreams round the double's exact value (1.25 -> "1.2").
    std::ostringstream s;
    s.imbue(std::locale::classic());
    s << '<' << std::fixed << std::setprecision(1) << t << " seconds>";
    return s.str();
}

std::string qwen3_video_prompt(const std::vector<double> & pair_times, const std::string & marker) {
    if (pair_times.empty()) fail(ErrorKind::InvalidArgument, "a video needs at least one frame");
    std::string text = kVisionStart;  // the chat template's, kept around the processor's expansion
    for (double t : pair_times) text += qwen3_timestamp(t) + kVisionStart + marker + kVisionEnd;
    return text + kVisionEnd;
}

std::vector<VisionChunk> qwen3_place_pairs(std::vector<VisionChunk> pairs) {
    for (VisionChunk & c : pairs) {
        VisualTokens & v = c.image;
        if (c.is_text() || v.pos.n_streams != 3)
            fail(ErrorKind::InvalidArgument, "Qwen3-VL video needs M-RoPE (t/h/w) positions");
        // transformers' rule, whatever libmtmd reports: one t for the whole pair
        // (its grid has t = 1), text resuming past the longer side
        std::fill(v.pos.values.begin(), v.pos.values.begin() + v.n_tokens, 0);
        v.n_pos = std::max(v.nx, v.ny);
    }
    return pairs;
}

// --- SmolVLM2 ------------------------------------------------------------------

std::string number_words(long long n) {
    static const char * ones[] = {"zero",     "one",     "two",     "three",     "four",     "five",    "six",
                                  "seven",    "eight",   "nine",    "ten",       "eleven",   "twelve",  "thirteen",
                                  "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"};
    static const char * tens[] = {"", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"};
    static const std::pair<long long, const char *> scales[] = {
        {1000000000LL, "billion"}, {1000000LL, "million"}, {1000LL, "thousand"}, {100LL, "hundred"}};
    if (n < 0 || n >= 1000000000000LL) fail(ErrorKind::InvalidArgument, format("no words for %lld frames", n));
    if (n < 20) return ones[n];
    if (n < 100) return std::string(tens[n / 10]) + (n % 10 ? std::string("-") + ones[n % 10] : "");
    for (const auto & [scale, name] : scales) {
        if (n < scale) continue;
        std::string words = number_words(n / scale) + " " + name;
        const long long rest = n % scale;
        if (!rest) return words;
        // num2words joins a remainder below 100 with "and", a larger one with ", "
        return words + (rest < 100 ? " and " : ", ") + number_words(rest);
    }
    return "";  // not reached
}

std::string smolvlm_video_prompt(const std::vector<double> & times, double duration_s, const std::string & marker) {
    if (times.empty()) fail(ErrorKind::InvalidArgument, "a video needs at least one frame");
    const long long seconds = static_cast<long long>(duration_s < 0 ? times.back() : duration_s);
    std::string text = format(kVideoIntro, number_words(static_cast<long long>(times.size())).c_str(),
                              timedelta_text(seconds).c_str());
    for (double t : times) text += smolvlm_frame_header(t) + kFakeImage + kGlobalImage + marker + kFakeImage;
    return text + kMediaOutro;
}

// --- Gemma 3 ------------------------------------------------------------------

std::string gemma3_timestamp(double t) {
    // mtmd_helper_video: elapsed seconds as a float, "[%dm%.2fs]", in the classic locale.
    const float elapsed_s = static_cast<float>(t);
    const int minutes = static_cast<int>(elapsed_s / 60);
    const float seconds = elapsed_s - minutes * 60.0f;
    std::ostringstream s;
    s.imbue(std::locale::classic());
    s << '[' << minutes << 'm' << std::fixed << std::setprecision(2) << seconds << "s]";
    return s.str();
}

std::string gemma3_video_prompt(const std::vector<double> & times, const std::string & marker, double interval_s) {
    if (times.empty()) fail(ErrorKind::InvalidArgument, "a video needs at least one frame");
    std::string text = kGemmaVideoStart;
    float next_ms = 0.0f;  // as llama.cpp: one interval further after each timestamp written
    for (double t : times) {
        text += std::string(kStartOfImage) + marker + kEndOfImage;
        const float elapsed_ms = static_cast<float>(t) * 1000.0f;
        if (interval_s > 0 && elapsed_ms >= next_ms) {
            text += gemma3_timestamp(t);
            next_ms += static_cast<float>(interval_s * 1000.0);
        }
    }
    return text;
}

std::pair<int, int> longest_edge_size(int width, int height, int size) {
    // transformers' get_resize_output_image_size, in the same floating-point steps
    const double aspect = double(width) / height;
    int w = size, h = size;
    if (width >= height) {
        h = static_cast<int>(size / aspect);
        h += h % 2;
    } else {
        w = static_cast<int>(size * aspect);
        w += w % 2;
    }
    return {std::max(1, w), std::max(1, h)};
}

// --- VideoEncoder ----------------------------------------------------------------

VideoEncoder::VideoEncoder(VisionEncoder & vision) : vision_(vision), family_(video_family(vision.layout())) {
    if (family_ != VideoFamily::SmolVLM) return;
    const int per_tile = vision.layout().tokens_per_tile();
    if (per_tile <= 0 || vision.layout().image_size <= 0) {
        fail(ErrorKind::InvalidArgument,
             format("mmproj '%s' does not say its tile (clip.vision.image_size, patch_size, "
                    "projector.scale_factor): not a SmolVLM / Idefics3 mmproj",
                    vision.mmproj_path().c_str()));
    }
    if (vision.params().image_max_tokens != per_tile) {
        // An mmproj whose preprocessor longest edge exceeds its tile (SmolVLM2's
        // 2048 vs 512) would upscale each frame into many tiles.
        VisionParams p = vision.params();
        p.image_max_tokens = per_tile;
        one_tile_ = std::make_unique<VisionEncoder>(vision.model(), vision.mmproj_path(), p);
    }
}

VideoEncoder::~VideoEncoder() = default;

void VideoEncoder::add_frames(const std::vector<VisionInput::Image> & frames, VisionProgressCallback progress,
                              void * progress_user_data) {
    if (frames.empty()) return;
    if (family_ == VideoFamily::Gemma3) {
        add_images(frames, progress, progress_user_data);
    } else if (family_ != VideoFamily::SmolVLM) {
        add_qwen(frames, progress, progress_user_data);
    } else {
        add_smolvlm(frames, progress, progress_user_data);
    }
    n_frames_ += static_cast<int>(frames.size());
}

void VideoEncoder::add_qwen(const std::vector<VisionInput::Image> & frames, VisionProgressCallback progress,
                            void * user_data) {
    if (ended_odd_)
        fail(ErrorKind::InvalidArgument, "frames came after an odd group: Qwen-VL merges frames in pairs, "
                                         "so only the last group may hold an odd number");
    ended_odd_ = frames.size() % kFramesPerPair != 0;
    VisionInput in;
    for (size_t i = 0; i < frames.size(); ++i) in.prompt += vision_.marker();
    in.images = frames;
    in.frames = true;
    in.progress = progress;
    in.progress_user_data = user_data;
    for (VisionChunk & c : vision_.encode(in)) {
        if (c.is_text()) continue;  // the text libmtmd puts around each pair: finish() writes the family's
        c.image.first_image += n_frames_;
        images_.push_back(std::move(c));
    }
}

void VideoEncoder::add_images(const std::vector<VisionInput::Image> & frames, VisionProgressCallback progress,
                              void * user_data) {
    VisionInput in;
    for (size_t i = 0; i < frames.size(); ++i) in.prompt += vision_.marker();
    in.images = frames;
    in.progress = progress;
    in.progress_user_data = user_data;
    for (VisionChunk & c : vision_.encode(in)) {
        if (c.is_text()) continue;  // <start_of_image> / <end_of_image>: finish() writes them with the timestamps
        c.image.first_image += n_frames_;
        images_.push_back(std::move(c));
    }
}

std::vector<uint8_t> square_frame(const VisionInput::Image & frame, int tile) {
    const auto [w, h] = longest_edge_size(int(frame.nx), int(frame.ny), tile);
    std::vector<uint8_t> first = (w == int(frame.nx) && h == int(frame.ny))
                                     ? std::vector<uint8_t>(frame.rgb, frame.rgb + size_t(w) * h * 3)
                                     : resize_rgb_lanczos(frame.rgb, frame.nx, frame.ny, w, h);
    return w == tile && h == tile ? first : resize_rgb_lanczos(first.data(), w, h, tile, tile);
}

void VideoEncoder::add_smolvlm(const std::vector<VisionInput::Image> & frames, VisionProgressCallback progress,
                               void * user_data) {
    VisionEncoder & enc = one_tile_ ? *one_tile_ : vision_;
    const int tile = vision_.layout().image_size;
    // Frames of another size: transformers' two resizes (longest side to the tile, then the square).
    std::vector<std::vector<uint8_t>> squared;
    VisionInput in;
    for (const VisionInput::Image & f : frames) {
        in.prompt += enc.marker();
        if (f.nx == uint32_t(tile) && f.ny == uint32_t(tile)) {
            in.images.push_back(f);
            continue;
        }
        if (f.nx == 0 || f.ny == 0 || !f.rgb)
            fail(ErrorKind::InvalidArgument, format("frame %d is empty", n_frames_ + int(in.images.size())));
        squared.push_back(square_frame(f, tile));
        in.images.push_back({uint32_t(tile), uint32_t(tile), squared.back().data()});
    }
    in.progress = progress;
    in.progress_user_data = user_data;
    const std::vector<VisionChunk> chunks = enc.encode(in);
    const int32_t global_img = single_token(vision_.model().vocab(), kGlobalImage, "SmolVLM");
    int n_image_chunks = 0;
    for (const VisionChunk & c : chunks) n_image_chunks += c.is_text() ? 0 : 1;
    if (n_image_chunks != 2 * int(frames.size())) {
        fail(ErrorKind::InvalidArgument,
             format("libmtmd cut each %dx%d frame into %d tiles: this mmproj upscales images "
                    "before tiling",
                    tile, tile, n_image_chunks / int(frames.size()) - 1));
    }
    // Each frame's overview: the image after "<fake_token_around_image><global-img>"; its tile is dropped.
    for (size_t i = 1; i < chunks.size(); ++i) {
        const VisionChunk & prev = chunks[i - 1];
        if (chunks[i].is_text() || !prev.is_text() || prev.tokens.empty() || prev.tokens.back() != global_img) continue;
        VisionChunk c = chunks[i];
        c.image.first_image = static_cast<int>(images_.size());
        images_.push_back(std::move(c));
    }
}

std::vector<VisionChunk> VideoEncoder::finish(const std::vector<double> & times, double duration_s) const {
    if (images_.empty()) fail(ErrorKind::InvalidArgument, "a video needs at least one frame");
    if (int(times.size()) != n_frames_) {
        fail(ErrorKind::InvalidArgument, format("expected %zu frames, the video gave %d", times.size(), n_frames_));
    }
    const Vocab & vocab = vision_.model().vocab();
    std::vector<VisionChunk> out;
    if (family_ == VideoFamily::QwenVL) {
        const MmprojLayout & l = vision_.layout();
        out.push_back(text_chunk({single_token(vocab, kVisionStart, "Qwen-VL")}));
        for (VisionChunk & c :
             qwen_place_pairs(images_, qwen_temporal_step(l.projector, frame_interval(times), l.tokens_per_second))) {
            out.push_back(std::move(c));
        }
        out.push_back(text_chunk({single_token(vocab, kVisionEnd, "Qwen-VL")}));
        return out;
    }
    const std::string marker = vision_.marker();
    if (family_ == VideoFamily::Qwen3VL) {
        return interleave(vocab, qwen3_video_prompt(unit_times(times, images_), marker), marker,
                          qwen3_place_pairs(images_));
    }
    if (family_ == VideoFamily::Gemma3) return interleave(vocab, gemma3_video_prompt(times, marker), marker, images_);
    return interleave(vocab, smolvlm_video_prompt(times, duration_s, marker), marker, images_);
}

}  // namespace hts
