// Op recording, for tests/test_backend_ops.py: the ggml ops our graphs hand
// to a backend, with what upstream's supports_op functions read of them.
#pragma once

#include "ggml.h"

#include <string>
#include <vector>

namespace hts {

// Op recording, for tests/test_backend_ops.py: which ggml ops (with types,
// layouts and the parameters upstream's supports_op functions read) the
// graphs of this project hand to a backend. Every graph is passed to
// record_graph_ops() just before it is computed (the context's scheduler, the
// KV compaction, GraphRunner); it does nothing unless recording is on.
struct OpUse {
    std::string op;                       // ggml_op_name: "MUL_MAT", "FLASH_ATTN_EXT"...
    std::string sub;                      // the unary or GLU op ("EXP", "SWIGLU"), else ""
    std::string type;                     // the result's type (ggml_type_name)
    std::vector<std::string> src;         // source types, "" where a source is absent; trailing ones dropped
    std::string layout;                   // the result's layout flags (see op_layout() in op_recorder.cpp)
    std::vector<std::string> src_layout;  // the same for each source
    std::string params;                   // "key=value,..." for the ops whose support depends on them
    bool operator<(const OpUse & o) const;
};
void set_op_recording(bool on);  // on: starts with an empty set
std::vector<OpUse> recorded_ops();
void record_graph_ops(ggml_cgraph * gf);

}  // namespace hts
