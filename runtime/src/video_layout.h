// Video frames laid out as each model family was trained on them (and as
// transformers feeds them), from frames encoded by libmtmd (VisionEncoder).
// The chunks go into a Conversation (add_media / add_chunks), usually as one
// sparse span whose segments are the frame pairs or frames, each but the
// first with the text before it (Qwen3-VL's timestamp, SmolVLM2's frame
// header); the first one's text runs densely before the span.
//
// Qwen2-VL / Qwen2.5-VL: one <|vision_start|> ... <|vision_end|> block holding
// every frame pair's visual tokens, no text between the pairs, time carried
// by the M-RoPE temporal ids. For frame pair g of a block starting at p0 (a
// token grid of nx x ny, token i at row i / nx, column i % nx):
//
//     t = p0 + floor(g * step)     h = p0 + row     w = p0 + column
//
// step is 1 on Qwen2-VL. On Qwen2.5-VL it is tokens_per_second (2 in the
// released checkpoints) x the seconds a pair spans (2 frames x the sampling
// interval), so t counts half seconds of video time. Text after the block
// resumes at p0 + (the block's largest position) + 1. libmtmd's own video
// path makes each pair a separate image with a constant t instead (the model
// then sees still images and no time); the embeddings are the same, since
// Qwen-VL's tower attends within one temporal patch. transformers 5.23
// resumes text at p0 + max(nx, ny) (a 5.x refactor); both agree while the
// last pair's t offset is below the grid size, and we keep the trained rule.
//
// Qwen3-VL (qwen3vl_merger), as transformers 5.23 feeds it: time is text, not
// M-RoPE ids. Its chat template renders a video as
// <|vision_start|><|video_pad|><|vision_end|>, and Qwen3VLProcessor replaces
// only the <|video_pad|> (ProcessorMixin.get_text_with_replacements) with,
// per frame pair, "<{t:.1f} seconds>", <|vision_start|>, the pair's tokens,
// <|vision_end|>. The template's own markers stay around the whole video, so
// they nest (checked by running that replacement on a rendered prompt; one
// line, no text between the pieces):
//
//     <|vision_start|><1.2 seconds><|vision_start|>{pair 0 tokens}<|vision_end|>
//     <2.2 seconds><|vision_start|>{pair 1 tokens}<|vision_end|><|vision_end|>
//
// t is the mean of the pair's two frame times (_calculate_timestamps; a lone
// last frame is repeated, so its own time), formatted as Python's :.1f does.
// transformers 4.57 replaced the template's whole
// <|vision_start|><|video_pad|><|vision_end|> instead (no outer pair, as
// vLLM does); we follow 5.23. Positions: get_rope_index splits
// video_grid_thw into one grid per pair (t = 1), so each pair is placed as an
// image of its own: t = p0, h = p0 + row, w = p0 + column, and the timestamp
// text after it resumes at p0 + max(nx, ny).
//
// SmolVLM2 (idefics3 projector), as transformers' SmolVLM processor writes it:
//
//     You are provided the following series of four frames from a 0:00:10 [H:MM:SS] video.\n
//     \nFrame from 00:00:<fake_token_around_image><global-img>{64 visual tokens}<fake_token_around_image>
//     ...\n\n
//
// The count in words (num2words), the duration as str(timedelta) of whole
// seconds, each timestamp minutes:seconds truncated. Each frame is one tile:
// libmtmd cuts an idefics3 image into tiles plus an overview, so a frame of
// exactly one tile gives a tile and an overview with the same pixels; only
// the overview's tokens are kept (the tower runs twice per frame: libmtmd
// cannot ask for the overview alone). Frames of another size are first made
// square the way transformers does (longest side to the tile, then stretched
// to tile x tile, Lanczos). Positions are sequential.
//
// Gemma 3 (gemma3 projector) has no video processor and no video in its chat
// template; this follows llama.cpp's own video path (mtmd_helper_video in
// mtmd-helper.cpp, what llama-mtmd-cli --video does): "Video:", then each
// frame as one image between <start_of_image> and <end_of_image> (read both
// ways, as every Gemma 3 image), and after a frame whose time reaches the
// next 5-second mark that frame's time as "[0m5.00s]". llama.cpp writes the
// stamp after the frame it dates; so does this. Positions are sequential.
#pragma once

#include "vision.h"

#include <memory>
#include <string>
#include <vector>

namespace hts {

class Vocab;

enum class VideoFamily { QwenVL, Qwen3VL, SmolVLM, Gemma3 };

// The family an mmproj's projector gets; UnsupportedModel for one without a video layout.
VideoFamily video_family(const MmprojLayout & layout);

// --- Qwen-VL -------------------------------------------------------------------
// M-RoPE t distance between consecutive frame pairs.
double qwen_temporal_step(const std::string & projector, double frame_interval_s, int tokens_per_second = 2);
// Seconds between sampled frames (their mean spacing; 0 for one frame).
double frame_interval(const std::vector<double> & times);
// The pairs' positions within one block (relative to its start): pair g
// shifted by floor(g * step) in t, every pair starting at the block's start
// (n_pos 0) but the last, after which text resumes past the largest position.
std::vector<VisionChunk> qwen_place_pairs(std::vector<VisionChunk> pairs, double step);

// --- Qwen3-VL ------------------------------------------------------------------
// The time of each visual chunk (a frame pair, or a lone last frame): the mean
// of its first and last frame's, from the frames' `times` (s).
std::vector<double> unit_times(const std::vector<double> & times, const std::vector<VisionChunk> & units);
// "<1.2 seconds>": t as Python's f"{t:.1f}" writes it, whatever the C locale.
std::string qwen3_timestamp(double t);
// The video's text with `marker` where each pair's visual tokens go.
std::string qwen3_video_prompt(const std::vector<double> & pair_times, const std::string & marker);
// The pairs placed as images: t constant, text after each resuming at max(nx, ny).
std::vector<VisionChunk> qwen3_place_pairs(std::vector<VisionChunk> pairs);

// --- SmolVLM2 ------------------------------------------------------------------
// num2words(n) in English: 21 "twenty-one", 101 "one hundred and one".
std::string number_words(long long n);
// The video block's text with `marker` where each frame's visual tokens go.
// duration_s < 0: the last frame's time (transformers without metadata).
std::string smolvlm_video_prompt(const std::vector<double> & times, double duration_s, const std::string & marker);
// (width, height) of transformers' first resize: longest side `size`, the other scaled and made even.
std::pair<int, int> longest_edge_size(int width, int height, int size);
// A frame as transformers' SmolVLM video processor squares it: resized to
// longest_edge_size(tile) and then stretched to tile x tile, each step with
// Pillow's Lanczos filter and skipped when the size is already right.
std::vector<uint8_t> square_frame(const VisionInput::Image & frame, int tile);

// --- Gemma 3 ------------------------------------------------------------------
// "[0m5.00s]": llama.cpp's video timestamp (mtmd-helper.cpp), t as a float.
std::string gemma3_timestamp(double t);
// The video's text as llama.cpp's video path writes it for Gemma 3 (which
// has no video processor or template of its own): "Video:", then each frame
// as an image (<start_of_image>, `marker`, <end_of_image>), and after a frame
// at or past the next multiple of interval_s its timestamp.
std::string gemma3_video_prompt(const std::vector<double> & times, const std::string & marker, double interval_s = 5.0);

// A video streamed through the vision tower a group of frames at a time (a
// long video is never held as pixels), then laid out for its family.
//
//     VideoEncoder enc(vision);
//     for (each group of decoded frames) enc.add_frames(group);
//     std::vector<VisionChunk> chunks = enc.finish(times, duration_s);
class VideoEncoder {
public:
    static constexpr int kFramesPerGroup = 16;  // frames per libmtmd call (bounds the RGB frames held)

    // The family follows the mmproj's projector (UnsupportedModel otherwise).
    // SmolVLM2 frames are encoded one tile each: when `vision` may cut more
    // tiles, a copy capped at one tile is loaded.
    explicit VideoEncoder(VisionEncoder & vision);
    ~VideoEncoder();

    VideoFamily family() const { return family_; }
    int n_embd() const { return vision_.n_embd(); }
    int32_t image_token() const { return vision_.image_token(); }
    // Encodes frames in order. Qwen-VL and Qwen3-VL merge them in pairs of
    // equal size, so every call but the last must bring an even number.
    // progress(done, total) counts image chunks within the call.
    void add_frames(const std::vector<VisionInput::Image> & frames, VisionProgressCallback progress = nullptr,
                    void * progress_user_data = nullptr);
    int n_frames() const { return n_frames_; }
    // The visual chunks so far: frame pairs (Qwen-VL, Qwen3-VL) or frames (SmolVLM2),
    // first_image counting frames over the whole video.
    const std::vector<VisionChunk> & images() const { return images_; }
    // The video's chunks, for frames sampled at `times` (s, one per frame
    // added) of a video duration_s long (< 0: unknown).
    std::vector<VisionChunk> finish(const std::vector<double> & times, double duration_s) const;

private:
    VisionEncoder & vision_;
    std::unique_ptr<VisionEncoder> one_tile_;  // SmolVLM2, when `vision` is not capped at one tile
    VideoFamily family_;
    std::vector<VisionChunk> images_;
    int n_frames_ = 0;
    bool ended_odd_ = false;  // Qwen-VL: a call brought an odd count (a lone last frame)

    void add_qwen(const std::vector<VisionInput::Image> & frames, VisionProgressCallback progress, void * user_data);
    // One image per frame, the text libmtmd puts around it dropped (Gemma 3).
    void add_images(const std::vector<VisionInput::Image> & frames, VisionProgressCallback progress, void * user_data);
    void add_smolvlm(const std::vector<VisionInput::Image> & frames, VisionProgressCallback progress, void * user_data);
};

}  // namespace hts
