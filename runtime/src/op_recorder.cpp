// Op recording (op_recorder.h): a set of the nodes seen while recording is on.
#include "op_recorder.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <tuple>

namespace hts {

namespace {

std::atomic<bool> g_recording{false};  // read on every compute: no lock while off
std::mutex g_record_mutex;             // guards g_recorded
std::set<OpUse> g_recorded;

// The layout predicates upstream's supports_op functions test, one letter
// each: c ggml_is_contiguous, 1 ggml_is_contiguous_1, 2 ggml_is_contiguous_2,
// r ggml_is_contiguous_rows, e nb[0] == type size, d Vulkan's
// ggml_vk_dim01_contiguous (rows packed, dims 0-1 contiguous), 3 ne[3] == 1.
std::string op_layout(const ggml_tensor * t) {
    std::string f;
    if (ggml_is_contiguous(t)) f += 'c';
    if (ggml_is_contiguous_1(t)) f += '1';
    if (ggml_is_contiguous_2(t)) f += '2';
    if (ggml_is_contiguous_rows(t)) f += 'r';
    const bool packed0 = t->nb[0] == ggml_type_size(t->type);
    if (packed0) f += 'e';
    if (packed0 && t->nb[1] == (t->nb[0] * t->ne[0]) / ggml_blck_size(t->type) &&
        (t->ne[3] == 1 || t->nb[3] == t->nb[2] * t->ne[2])) {
        f += 'd';
    }
    if (t->ne[3] == 1) f += '3';
    return f;
}

// The op parameters that some backend's supports_op (or kernel choice) reads.
std::string op_params(const ggml_tensor * t) {
    char buf[160] = "";
    const int32_t * p = t->op_params;
    switch (t->op) {
        case GGML_OP_ROPE:
            snprintf(buf, sizeof(buf), "mode=%d", p[2]);
            break;
        case GGML_OP_CONCAT:
            snprintf(buf, sizeof(buf), "dim=%d", p[0]);
            break;
        case GGML_OP_POOL_1D:
            snprintf(buf, sizeof(buf), "pool=%s", p[0] == GGML_OP_POOL_MAX ? "max" : "avg");
            break;
        case GGML_OP_ARGSORT:
            snprintf(buf, sizeof(buf), "order=%s", p[0] == GGML_SORT_ORDER_ASC ? "asc" : "desc");
            break;
        case GGML_OP_FLASH_ATTN_EXT: {
            float max_bias = 0.0f;
            std::memcpy(&max_bias, p + 1, sizeof(float));
            const ggml_tensor * mask = t->src[3];
            snprintf(buf, sizeof(buf), "dk=%lld,dv=%lld,gqa=%lld,mask_ne2=%lld,max_bias=%g,prec=%s",
                     (long long)t->src[1]->ne[0], (long long)t->src[2]->ne[0],
                     (long long)(t->src[0]->ne[2] / t->src[1]->ne[2]), (long long)(mask ? mask->ne[2] : 0), max_bias,
                     ggml_flash_attn_ext_get_prec(t) == GGML_PREC_F32 ? "f32" : "default");
            break;
        }
        default:
            break;
    }
    return buf;
}

}  // namespace

bool OpUse::operator<(const OpUse & o) const {
    return std::tie(op, sub, type, src, layout, src_layout, params) <
           std::tie(o.op, o.sub, o.type, o.src, o.layout, o.src_layout, o.params);
}

void set_op_recording(bool on) {
    std::lock_guard<std::mutex> lock(g_record_mutex);
    if (on) g_recorded.clear();
    g_recording = on;
}

std::vector<OpUse> recorded_ops() {
    std::lock_guard<std::mutex> lock(g_record_mutex);
    return std::vector<OpUse>(g_recorded.begin(), g_recorded.end());
}

void record_graph_ops(ggml_cgraph * gf) {
    if (!g_recording) return;
    std::lock_guard<std::mutex> lock(g_record_mutex);
    for (int i = 0; i < ggml_graph_n_nodes(gf); ++i) {
        const ggml_tensor * t = ggml_graph_node(gf, i);
        OpUse u;
        u.op = ggml_op_name(t->op);
        if (t->op == GGML_OP_UNARY) u.sub = ggml_unary_op_name(ggml_get_unary_op(t));
        if (t->op == GGML_OP_GLU) u.sub = ggml_glu_op_name(ggml_get_glu_op(t));
        u.type = ggml_type_name(t->type);
        u.layout = op_layout(t);
        int n_src = 0;
        for (int s = 0; s < GGML_MAX_SRC; ++s) {
            if (t->src[s]) n_src = s + 1;
        }
        for (int s = 0; s < n_src; ++s) {
            u.src.push_back(t->src[s] ? ggml_type_name(t->src[s]->type) : "");
            u.src_layout.push_back(t->src[s] ? op_layout(t->src[s]) : "");
        }
        u.params = op_params(t);
        g_recorded.insert(std::move(u));
    }
}

}  // namespace hts
