// Pieces shared by the llama-family decoders (qwen2, qwen2vl, qwen3, llama): the
// metadata keys and the tensor set they have in common. Each architecture file
// adds what differs (biases, rope flavour, extra keys).
#pragma once

#include "gguf_file.h"
#include "hparams.h"
#include "model.h"
#include "tensor_loader.h"

namespace hts {

// Reads {arch}.block_count, embedding_length, attention.head_count[_kv],
// feed_forward_length, context_length, rope.*, attention.layer_norm_rms_epsilon.
void load_decoder_hparams(const GgufFile & file, const std::string & arch, HParams & hp);

// M-RoPE: four position streams per token (t, h, w, unused) and
// {arch}.rope.dimension_sections, the rotary pairs of each (3 or 4 values).
void load_mrope_sections(const GgufFile & file, const std::string & arch, HParams & hp);

// What an architecture's layers have beyond the common set.
struct DecoderLayout {
    bool qkv_bias = false;  // attn_q/k/v.bias
    bool qk_norm = false;   // attn_q_norm, attn_k_norm: RMS norm of each head before rope
};

// token_embd, output_norm, output (or a copy of token_embd when tied) and per
// layer: attn_norm, attn_q/k/v, attn_output, ffn_norm, ffn_gate/up/down, plus
// what `layout` adds.
void load_decoder_tensors(TensorLoader & loader, const HParams & hp, ModelWeights & w, DecoderLayout layout);

}  // namespace hts

namespace hts {

class GraphContext;

// The pre-norm decoder stack these architectures share:
//   x = x + wo(attn(rope(q), rope(k), v)) over rms_norm(x)
//       (q and k each RMS-normed per head before rope where the layer has the norms)
//   x = x + down(silu(gate(h)) * up(h)),     h = rms_norm(x)
// then rms_norm and the output head. Rope flavour comes from hp.rope_type.
ggml_tensor * build_decoder_graph(GraphContext & gc);

}  // namespace hts
