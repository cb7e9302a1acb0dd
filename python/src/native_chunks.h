// Visual chunks as Python holds them: one immutable list shared with the
// runtime (htsparse_llama._native.Chunks), as libmtmd hands out an opaque
// mtmd_input_chunks. Python reads it through views (Chunks[i]) whose arrays
// are views of the runtime's own memory; nothing is copied into Python
// objects and back. The embedding cache stores it as arrays (to_arrays /
// from_arrays).
#pragma once

#include "vision.h"

#include <pybind11/pybind11.h>

#include <memory>
#include <vector>

namespace hts_py {

struct ChunkList {
    std::vector<hts::VisionChunk> chunks;
    int n_embd = 0;
    int32_t image_token = 0;  // what the context shows for the visual tokens
};

using ChunkListPtr = std::shared_ptr<ChunkList>;  // immutable once made

ChunkListPtr make_chunk_list(std::vector<hts::VisionChunk> chunks, int n_embd, int32_t image_token);

void register_chunks(pybind11::module_ & mod);

}  // namespace hts_py
