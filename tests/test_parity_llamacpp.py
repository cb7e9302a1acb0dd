"""Dense path vs llama.cpp itself (llama-cpp-python) on the same real GGUF and
threads: every position's arg-max, the last position's logits, and a greedy
continuation must agree (issue 2's parity bar)."""

import os

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from htsparse_llama import Model

THREADS = 2
N_PROMPT = 300
N_CONTINUE = 64


def prompt_tokens(model: Model) -> list:
    """300 tokens of real text: this repository's own sources."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    text = ""
    for rel in ("README.md", "runtime/src/session.cpp", "python/htsparse_llama/model.py"):
        path = os.path.join(root, rel)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                text += f.read()
    ids = model.tokenize(text)
    assert len(ids) >= N_PROMPT
    return ids[:N_PROMPT]


def llama_cpp_model(path: str):
    # flash_attn=True: the attention kernel our graphs use; llama.cpp's own CLI
    # turns it on by default on the CPU ("auto").
    return llama_cpp.Llama(path, n_ctx=1024, n_threads=THREADS, n_threads_batch=THREADS, n_batch=512,
                           logits_all=True, flash_attn=True, verbose=False)


def greedy(step_logits, first_logits, n):
    out, logits = [], first_logits
    for _ in range(n):
        tok = int(np.argmax(logits))
        out.append(tok)
        logits = step_logits(tok)
    return out


@pytest.fixture(params=["qwen_gguf", "smollm_gguf"])
def gguf_path(request):
    return request.getfixturevalue(request.param)


def test_logits_and_greedy_match_llama_cpp(gguf_path):
    ours_model = Model(gguf_path, n_ctx=1024, n_threads=THREADS)
    ids = prompt_tokens(ours_model)
    session = ours_model.session()
    ours = session.add_tokens(ids, all_logits=True)

    ref_model = llama_cpp_model(gguf_path)
    ref_model.eval(ids)
    ref = np.asarray(ref_model.scores[: len(ids)], dtype=np.float32)

    assert ours.shape == ref.shape == (N_PROMPT, ours_model.n_vocab)
    mismatched = np.nonzero(ours.argmax(-1) != ref.argmax(-1))[0]
    assert mismatched.size == 0, f"arg-max differs at positions {mismatched[:10].tolist()}"
    rel = np.linalg.norm(ours[-1] - ref[-1]) / np.linalg.norm(ref[-1])
    print(f"{os.path.basename(gguf_path)}: last-position relative L2 error {rel:.2e}")
    assert rel < 1e-2

    def ours_step(tok):
        session.add_tokens([tok])
        return session.logits()

    def ref_step(tok):
        ref_model.eval([tok])
        return np.asarray(ref_model.scores[ref_model.n_tokens - 1])

    ours_cont = greedy(ours_step, ours[-1], N_CONTINUE)
    ref_cont = greedy(ref_step, ref[-1], N_CONTINUE)
    assert ours_cont == ref_cont
    ref_model.close()


def test_generate_matches_llama_cpp_greedy_completion(smollm_gguf):
    """The public generate() (chat template, sampler chain, EOG stop) gives the
    text llama.cpp's own greedy completion gives for the same prompt."""
    model = Model(smollm_gguf, n_ctx=512, n_threads=THREADS)
    session = model.session()
    question = "List three primary colours."
    session.add_message("user", question)
    ours = session.generate(max_tokens=40, temperature=0, stream=False)
    prompt_ids = model.tokenize(model.apply_chat_template([("user", question)], add_assistant=True))
    assert session.tokens()[: len(prompt_ids)] == prompt_ids

    ref_model = llama_cpp.Llama(smollm_gguf, n_ctx=512, n_threads=THREADS, flash_attn=True, verbose=False)
    out = []
    for tok in ref_model.generate(prompt_ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(ref_model._model.vocab, tok) or len(out) == 40:
            break
        out.append(tok)
    ref_text = ref_model.detokenize(out).decode("utf-8", errors="replace")
    ref_model.close()
    assert ours == ref_text
    assert len(ours) > 10
