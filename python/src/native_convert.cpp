#include "native_convert.h"

#include "errors.h"

#include <pybind11/stl.h>

namespace py = pybind11;
using hts::ErrorKind;
using hts::fail;
using hts::format;

namespace hts_py {

hts::TokenPositions token_positions(const IntArray & a) {
    if (a.ndim() != 1 && a.ndim() != 2)
        fail(ErrorKind::InvalidArgument, "positions must be 1-D (n,) or 2-D (streams, n)");
    hts::TokenPositions pos;
    pos.n_streams = a.ndim() == 1 ? 1 : static_cast<int>(a.shape(0));
    pos.values.assign(a.data(), a.data() + a.size());
    return pos;
}

hts::SparseConfig sparse_request(const py::dict & d) {
    hts::SparseConfig c;
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

py::dict sparse_dict(const hts::SparseConfig & c) {
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

py::array_t<float> float_rows(const std::vector<float> & v, size_t cols) {
    py::array_t<float> out({cols ? v.size() / cols : 0, cols});
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
}

py::array_t<int32_t> positions_array(const hts::TokenPositions & pos, size_t n) {
    py::array_t<int32_t> out({size_t(pos.n_streams), n});
    std::copy(pos.values.begin(), pos.values.end(), out.mutable_data());
    return out;
}

std::vector<float> embedding_rows(const FloatArray & embd, int n_embd) {
    if (embd.ndim() != 2 || embd.shape(1) != n_embd) {
        fail(ErrorKind::InvalidArgument, format("embeddings must have shape (n, %d)", n_embd));
    }
    return std::vector<float>(embd.data(), embd.data() + embd.size());
}

}  // namespace hts_py
