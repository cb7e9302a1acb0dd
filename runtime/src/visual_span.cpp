#include "visual_span.h"

#include "errors.h"
#include "model.h"

namespace hts {

namespace {
// Appends a chunk's n positions to each row (one given row serves every row).
void append_positions(std::vector<std::vector<int32_t>> & rows, const TokenPositions & add, int n) {
    for (size_t s = 0; s < rows.size(); ++s) {
        const int src = add.n_streams == 1 ? 0 : static_cast<int>(s);
        const int32_t * p = add.values.data() + size_t(src) * n;
        rows[s].insert(rows[s].end(), p, p + n);
    }
}
}  // namespace

VisualSpan visual_span(const Model & model, const std::vector<VisionChunk> & chunks, int pos_0) {
    int n_rows = 1;
    for (const VisionChunk & c : chunks) {
        if (!c.is_text()) n_rows = std::max(n_rows, c.image.pos.n_streams);
    }
    std::vector<std::vector<int32_t>> pos_rows(n_rows);
    VisualSpan span;
    int pos = pos_0, n = 0, prev_image = -1, text_from = 0, n_blocks = 0;
    for (const VisionChunk & c : chunks) {
        if (c.is_text()) {
            if (c.tokens.empty()) continue;
            std::vector<float> e = token_embeddings(model, c.tokens);
            // Rows go in as they are: the scale the graph gives token ids (Gemma's sqrt(n_embd)) is applied here.
            if (model.hparams().embd_scale > 0.0f)
                for (float & v : e) v *= model.hparams().embd_scale;
            const size_t n_embd = size_t(model.hparams().n_embd), width = size_t(model.hparams().n_embd_inp());
            for (size_t t = 0; t < c.tokens.size(); ++t) {  // text has no DeepStack rows: zeros
                span.rows.insert(span.rows.end(), e.begin() + t * n_embd, e.begin() + (t + 1) * n_embd);
                span.rows.resize(span.rows.size() + width - n_embd, 0.0f);
            }
            const int m = static_cast<int>(c.tokens.size());
            span.blocks.insert(span.blocks.end(), m, -1);
            TokenPositions seq;
            for (int i = 0; i < m; ++i) seq.values.push_back(pos + i);
            append_positions(pos_rows, seq, m);
            pos += m;
            n += m;
            continue;
        }
        if (c.image.first_image != prev_image) {  // a new image: its segment starts with the text before it
            span.segments.push_back(span.segments.empty() ? 0 : text_from);
            prev_image = c.image.first_image;
        }
        span.rows.insert(span.rows.end(), c.image.embd.begin(), c.image.embd.end());
        span.blocks.insert(span.blocks.end(), c.image.n_tokens, c.image.bidirectional ? n_blocks++ : -1);
        append_positions(pos_rows, c.image.positions_at(pos), c.image.n_tokens);
        pos += c.image.n_pos;
        n += c.image.n_tokens;
        text_from = n;
    }
    if (span.segments.empty()) fail(ErrorKind::InvalidArgument, "a visual span needs at least one image");
    span.positions.n_streams = n_rows;
    for (const auto & row : pos_rows) span.positions.values.insert(span.positions.values.end(), row.begin(), row.end());
    return span;
}

}  // namespace hts
