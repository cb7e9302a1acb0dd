#include "kv_copy.h"

#include "errors.h"
#include "op_recorder.h"

#include "ggml-alloc.h"

namespace hts {

void copy_rows(ggml_backend_t backend, const std::vector<std::pair<ggml_tensor *, ggml_tensor *>> & pairs, int n_rows) {
    if (n_rows <= 0 || pairs.empty()) return;
    const size_t graph_size = 4 * pairs.size() + 8;
    ggml_init_params params = {ggml_tensor_overhead() * graph_size + ggml_graph_overhead_custom(graph_size, false),
                               nullptr, true};
    ggml_context * ctx = ggml_init(params);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, graph_size, false);
    for (const auto & [src, dst] : pairs) {
        GGML_ASSERT(src->ne[0] == dst->ne[0] && src->type == dst->type && n_rows <= src->ne[1] && n_rows <= dst->ne[1]);
        ggml_tensor * from = ggml_view_2d(ctx, src, src->ne[0], n_rows, src->nb[1], 0);
        ggml_tensor * to = ggml_view_2d(ctx, dst, dst->ne[0], n_rows, dst->nb[1], 0);
        ggml_build_forward_expand(gf, ggml_cpy(ctx, from, to));
    }
    ggml_gallocr_t galloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend));
    record_graph_ops(gf);
    const bool ok =
        ggml_gallocr_alloc_graph(galloc, gf) && ggml_backend_graph_compute(backend, gf) == GGML_STATUS_SUCCESS;
    ggml_gallocr_free(galloc);
    ggml_free(ctx);
    if (!ok) fail(ErrorKind::Backend, "copying KV cache rows on the device failed");
}

}  // namespace hts
