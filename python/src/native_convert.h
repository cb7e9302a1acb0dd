// Conversions between Python values and the runtime's types, shared by the
// binding files: rope positions, SparseConfig requests and float rows (chunks:
// native_chunks.h).
#pragma once

#include "context.h"
#include "sparse_config.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <vector>

namespace hts_py {

using IntArray = pybind11::array_t<int32_t, pybind11::array::c_style | pybind11::array::forcecast>;
using FloatArray = pybind11::array_t<float, pybind11::array::c_style | pybind11::array::forcecast>;

// positions of shape (n,) for one stream or (n_streams, n).
hts::TokenPositions token_positions(const IntArray & a);
// A SparseConfig from a dict of the fields that are set (None: unset).
hts::SparseConfig sparse_request(const pybind11::dict & d);
// A resolved SparseConfig as a dict (head_prior included).
pybind11::dict sparse_dict(const hts::SparseConfig & c);
// A float vector as a (rows, cols) array (copied).
pybind11::array_t<float> float_rows(const std::vector<float> & v, size_t cols);
// Positions of n tokens as a (n_streams, n) array (copied).
pybind11::array_t<int32_t> positions_array(const hts::TokenPositions & pos, size_t n);
// (n, n_embd) float rows into a flat vector, checking the width.
std::vector<float> embedding_rows(const FloatArray & embd, int n_embd);

}  // namespace hts_py
