"""Dense path vs llama.cpp itself (llama-cpp-python) on the same real GGUF and
threads: every position's arg-max, the last position's logits, and a greedy
continuation must agree (issue 2's parity bar)."""

import os

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from htsparse_llama import Model  # noqa: E402
from htsparse_llama.bench.llama_cpp import load_llama  # noqa: E402

THREADS = 2
N_PROMPT = 300
N_CONTINUE = 64


def prompt_text() -> str:
    """Real text: this repository's own sources."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    text = ""
    for rel in ("README.md", "runtime/src/context.cpp", "python/htsparse_llama/model.py"):
        path = os.path.join(root, rel)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                text += f.read()
    return text


def prompt_tokens(model: Model) -> list:
    """300 tokens of real text."""
    ids = model.tokenize(prompt_text())
    assert len(ids) >= N_PROMPT
    return ids[:N_PROMPT]


def llama_cpp_model(path: str):
    # flash_attn=True: the attention kernel our graphs use; llama.cpp's own CLI
    # turns it on by default on the CPU ("auto").
    return load_llama(
        path,
        n_ctx=1024,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        n_batch=512,
        logits_all=True,
        flash_attn=True,
        verbose=False,
    )


def greedy(step_logits, first_logits, n):
    out, logits = [], first_logits
    for _ in range(n):
        tok = int(np.argmax(logits))
        out.append(tok)
        logits = step_logits(tok)
    return out


@pytest.fixture(params=["qwen_gguf", "smollm_gguf", "gemma_gguf"])
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


def assert_same_as_llama_cpp(session, ids, ref_model, n_greedy):
    """Our session's logits for every one of `ids` equal llama.cpp's bit for
    bit, and so do the next n_greedy greedy tokens; closes ref_model."""
    ours = session.add_tokens(ids, all_logits=True)
    try:
        ref_model.eval(ids)
        ref = np.asarray(ref_model.scores[: len(ids)], dtype=np.float32)
        assert np.array_equal(ours, ref), float(np.abs(ours - ref).max())

        def ours_step(tok):
            session.add_tokens([tok])
            return session.logits()

        def ref_step(tok):
            ref_model.eval([tok])
            return np.asarray(ref_model.scores[ref_model.n_tokens - 1])

        assert greedy(ours_step, ours[-1], n_greedy) == greedy(ref_step, ref[-1], n_greedy)
    finally:
        ref_model.close()


def test_gemma3_past_its_sliding_window_matches_llama_cpp(gemma_gguf):
    """gemma-3-270m's window layers see 512 tokens: a 700-token prompt and a
    continuation run past the window (15 of its 18 layers are window layers),
    in two micro-batches (512 + 188). Logits equal llama.cpp's exactly.
    (test_bad_input checks that the window is read: a GGUF without it differs.)"""
    ours_model = Model(gemma_gguf, n_ctx=1024, n_threads=THREADS)
    assert ours_model.info["n_swa"] == 512 and ours_model.info["n_swa_layers"] == 15
    text = prompt_text()
    ids = ours_model.tokenize(text)[:700]
    assert_same_as_llama_cpp(ours_model.session(), ids, llama_cpp_model(gemma_gguf), 16)


def test_gemma3_window_layers_keep_a_ring_as_llama_cpp_does(gemma_gguf):
    """A window layer keeps only the window and one micro-batch: with batches
    of 64, a ring of 768 rows (512 + 64, padded) that 1100 tokens wrap; the
    global layers keep every cell. llama.cpp's own window cache
    (swa_full=False, the same ring size) gives the same logits bit for bit,
    also while decoding on."""
    model = Model(gemma_gguf, n_ctx=2048, n_threads=THREADS)
    ids = model.tokenize(prompt_text())[:1100]
    assert len(ids) == 1100
    session = model.session(n_batch=64)
    ref_model = load_llama(
        gemma_gguf,
        n_ctx=2048,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        n_batch=64,
        n_ubatch=64,
        swa_full=False,
        logits_all=True,
        flash_attn=True,
    )
    assert_same_as_llama_cpp(session, ids, ref_model, 8)
    cell = 2 * 256 * 1 * 2  # K and V, head_dim 256, one KV head, f16
    assert session.kv_bytes == 3 * 1280 * cell + 15 * 768 * cell  # a dense cache: 18 * 1280 cells


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

    ref_model = load_llama(smollm_gguf, n_ctx=512, n_threads=THREADS, flash_attn=True, verbose=False)
    out = []
    for tok in ref_model.generate(prompt_ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(ref_model._model.vocab, tok) or len(out) == 40:
            break
        out.append(tok)
    ref_text = ref_model.detokenize(out).decode("utf-8", errors="replace")
    ref_model.close()
    assert ours == ref_text
    assert len(ours) > 10


def llama_cpp_logits_at(ref_model, ids, positions):
    """llama.cpp's logits of every token of one batch with explicit positions
    (the low-level batch API; Llama.eval only numbers tokens 0, 1, 2...)."""
    ctx = ref_model._ctx.ctx
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    batch = llama_cpp.llama_batch_init(len(ids), 0, 1)
    try:
        batch.n_tokens = len(ids)
        for i, (tok, pos) in enumerate(zip(ids, positions)):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, int(pos), 1, 1
            batch.seq_id[i][0] = 0
        assert llama_cpp.llama_decode(ctx, batch) == 0
        n_vocab = ref_model.n_vocab()
        return np.array(
            [np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,)) for i in range(len(ids))]
        )
    finally:
        llama_cpp.llama_batch_free(batch)


def test_explicit_positions_match_llama_cpp(smollm_gguf):
    """Tokens given rope positions other than 0, 1, 2... (as images and
    resumed text are) give llama.cpp's logits for the same positions; and the
    positions are really used: shifting them changes the logits (F16 keys)."""
    model = Model(smollm_gguf, n_ctx=512, n_threads=THREADS)
    ids = model.tokenize("The quick brown fox jumps over the lazy dog and then runs away.")
    positions = np.arange(len(ids)) + 37
    session = model.session()
    ours = session.add_tokens(ids, all_logits=True, positions=positions)
    assert session.next_pos == 37 + len(ids)

    ref_model = llama_cpp_model(smollm_gguf)
    ref = llama_cpp_logits_at(ref_model, ids, positions)
    ref_from_zero = llama_cpp_logits_at(ref_model, ids, np.arange(len(ids)))
    ref_model.close()
    assert np.array_equal(ours.argmax(-1), ref.argmax(-1))
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-3
    assert np.linalg.norm(ours - ref_from_zero) / np.linalg.norm(ref) > 1e-3
