#include "architecture.h"

namespace hts {

static std::vector<const Architecture *> all_architectures() {
    return {&qwen2_architecture(),   &qwen2vl_architecture(), &qwen3_architecture(),
            &qwen3vl_architecture(), &gemma3_architecture(),  &llama_architecture()};
}

const Architecture * find_architecture(const std::string & name) {
    for (const Architecture * a : all_architectures()) {
        if (name == a->name()) return a;
    }
    return nullptr;
}

std::vector<std::string> supported_architectures() {
    std::vector<std::string> out;
    for (const Architecture * a : all_architectures()) out.push_back(a->name());
    return out;
}

}  // namespace hts
