// A text-decoder architecture: how to read its hyper-parameters and weights
// from GGUF and how to build its forward graph. One file per architecture
// (qwen2.cpp, qwen2vl.cpp, qwen3.cpp, qwen3vl.cpp, gemma3.cpp, llama.cpp), registered in registry.cpp.
#pragma once

#include "ggml.h"

#include <string>
#include <vector>

namespace hts {

class GgufFile;
class GraphContext;
class TensorLoader;
struct HParams;
struct ModelWeights;

class Architecture {
public:
    virtual ~Architecture() = default;
    virtual const char * name() const = 0;
    virtual void load_hparams(const GgufFile & file, HParams & hp) const = 0;
    virtual void load_tensors(TensorLoader & loader, const HParams & hp, ModelWeights & w) const = 0;
    // Builds the forward pass of gc's layer range into its graph and returns
    // the logits [n_vocab, n_outputs], or, when the range stops before the
    // last layer, the residual stream [n_embd, n_tokens].
    virtual ggml_tensor * build_graph(GraphContext & gc) const = 0;
};

// The architecture named `name` (general.architecture); nullptr if unsupported.
const Architecture * find_architecture(const std::string & name);
std::vector<std::string> supported_architectures();

const Architecture & qwen2_architecture();
const Architecture & qwen2vl_architecture();
const Architecture & qwen3_architecture();
const Architecture & qwen3vl_architecture();
const Architecture & gemma3_architecture();
const Architecture & llama_architecture();

}  // namespace hts
