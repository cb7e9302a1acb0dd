// Row copies between KV tensors on their device (one small graph, computed
// by the backend that holds them): the cache grows and compacts without a
// trip through host memory.
#pragma once

#include "ggml-backend.h"
#include "ggml.h"

#include <utility>
#include <vector>

namespace hts {

// Copies the first n_rows rows (cells) of each src into its dst; both 2-D,
// of the same type and row size, on `backend`.
void copy_rows(ggml_backend_t backend, const std::vector<std::pair<ggml_tensor *, ggml_tensor *>> & pairs, int n_rows);

}  // namespace hts
