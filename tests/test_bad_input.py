"""Bad input gives one clear error: a Python exception from the API (never a
crash), one line on stderr and a non-zero exit from the CLI."""

import os
import subprocess
import sys

import numpy as np
import pytest

import htsparse_llama as hts
from htsparse_llama import Model


def run_cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "htsparse_llama", *args], capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "notes.gguf"
    p.write_text("this is plain text, not a model\n" * 10)
    return str(p)


@pytest.fixture
def truncated_copy(tmp_path, smollm_gguf):
    """The first half of a real GGUF: the header parses, the tensor data is cut."""
    p = tmp_path / "truncated.gguf"
    size = os.path.getsize(smollm_gguf)
    with open(smollm_gguf, "rb") as src, open(p, "wb") as dst:
        dst.write(src.read(size // 2))
    return str(p)


@pytest.fixture
def header_cut(tmp_path, smollm_gguf):
    """Only the first 4 KiB: the metadata itself is cut."""
    p = tmp_path / "header_cut.gguf"
    with open(smollm_gguf, "rb") as src, open(p, "wb") as dst:
        dst.write(src.read(4096))
    return str(p)


@pytest.fixture
def unsupported_arch(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    p = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(p), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(p)


def test_missing_file_api(tmp_path):
    with pytest.raises(hts.ModelNotFoundError, match="not found"):
        Model(str(tmp_path / "nope.gguf"))


def test_missing_file_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        Model(str(tmp_path / "nope.gguf"))


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(hts.ModelNotFoundError, match="directory"):
        Model(str(tmp_path))


def test_not_gguf(text_file):
    with pytest.raises(hts.InvalidModelFileError, match="not a GGUF file"):
        Model(text_file)


def test_truncated_data(truncated_copy):
    with pytest.raises(hts.InvalidModelFileError, match="truncated"):
        Model(truncated_copy)


def test_truncated_header(header_cut):
    with pytest.raises(hts.InvalidModelFileError):
        Model(header_cut)


def test_unsupported_architecture_names_it_and_the_supported(unsupported_arch):
    with pytest.raises(hts.UnsupportedModelError) as info:
        Model(unsupported_arch)
    msg = str(info.value)
    assert hts.supported_architectures() == ["qwen2", "qwen2vl", "qwen3", "qwen3vl", "gemma3", "llama"]
    assert msg.endswith(f"'; supported: {', '.join(hts.supported_architectures())}")
    assert msg.startswith("unsupported architecture 'mamba' in '") and "\n" not in msg


def test_prompt_longer_than_context(smollm_gguf):
    model = Model(smollm_gguf, n_ctx=64, n_threads=2)
    session = model.session()
    with pytest.raises(hts.ContextOverflowError, match="do not fit"):
        session.add_text("word " * 200)
    # Nothing was evaluated: the session is still usable.
    assert session.n_past == 0
    session.add_text("Hello")
    assert session.n_past > 0


def test_bad_arguments(smollm_gguf):
    with pytest.raises(hts.InvalidArgumentError):
        Model(smollm_gguf, n_threads=-1)
    with pytest.raises(hts.InvalidArgumentError, match="device 'nope' is not available"):
        Model(smollm_gguf, device="nope")
    model = Model(smollm_gguf, n_ctx=64, n_threads=2)
    session = model.session()
    with pytest.raises(hts.InvalidArgumentError, match="outside the vocabulary"):
        session.add_tokens([model.n_vocab + 5])
    with pytest.raises(hts.InvalidArgumentError):
        session.generate(max_tokens=4)  # nothing to continue yet
    session.add_text("Hi")
    with pytest.raises(hts.InvalidArgumentError, match="top_p"):
        session.generate(max_tokens=4, top_p=1.5, stream=False)


@pytest.mark.parametrize(
    "tokens, positions, match",
    [
        pytest.param([10, 11], np.zeros((3, 2)), "1 row", id="three-rows-on-llama"),  # llama has one rope stream
        pytest.param([10, 11], [0, 1, 2], "2 values", id="more-positions-than-tokens"),
        pytest.param([10, 11], [0, -1], "negative", id="negative"),
        pytest.param([10], np.zeros((1, 1, 1)), "1-D", id="three-dimensional"),
    ],
)
def test_bad_positions(smollm_gguf, tokens, positions, match):
    session = Model(smollm_gguf, n_ctx=64, n_threads=2).session()
    with pytest.raises(hts.InvalidArgumentError, match=match):
        session.add_tokens(tokens, positions=positions)
    assert session.n_past == 0


@pytest.mark.parametrize(
    "case, fragments",
    [
        pytest.param("missing", ("error:", "not found"), id="missing"),
        pytest.param("text", ("error:", "not a GGUF file"), id="text"),
        pytest.param("truncated", ("error:", "truncated"), id="truncated"),
        pytest.param(
            "unsupported",
            ("error:", "unsupported architecture 'mamba'", "supported: qwen2, qwen2vl, qwen3, qwen3vl, gemma3, llama"),
            id="unsupported",
        ),
    ],
)
def test_cli_bad_model_files(case, fragments, tmp_path, text_file, truncated_copy, unsupported_arch):
    path = {
        "missing": str(tmp_path / "missing.gguf"),
        "text": text_file,
        "truncated": truncated_copy,
        "unsupported": unsupported_arch,
    }[case]
    assert_one_line_error(run_cli("generate", "-m", path, "-p", "hi"), *fragments)


def test_cli_prompt_longer_than_context(smollm_gguf):
    proc = run_cli("generate", "-m", smollm_gguf, "-p", "word " * 300, "--ctx", "64", "-t", "2")
    assert_one_line_error(proc, "error:", "do not fit in the context")


@pytest.mark.parametrize(
    "args, fragment",
    [
        pytest.param(
            ["generate", "-m", "x.gguf"],
            "the following arguments are required: -p/--prompt",
            id="generate-without-prompt",
        ),
        pytest.param(
            ["generate", "-m", "x.gguf", "-p", "hi", "--threads", "many"], "invalid int value", id="threads=many"
        ),
        pytest.param(["frobnicate"], "invalid choice", id="unknown-command"),
        pytest.param([], "required", id="no-command"),
    ],
)
def test_cli_bad_arguments(args, fragment):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert_one_line_error(proc, fragment)


def test_cli_bad_device(smollm_gguf):
    assert_one_line_error(
        run_cli("generate", "-m", smollm_gguf, "-p", "hi", "--device", "tpu9"), "device 'tpu9' is not available"
    )


# -- a text GGUF and an mmproj that do not go together ----------------------------------------


@pytest.mark.parametrize(
    "text, mmproj, tower, projector, made_for, arch",
    [
        # As wide as each other (64), and SmolLM2's tokenizer splits <|vision_start|> into
        # ordinary tokens: before the family check, this pair loaded and encoded.
        pytest.param(
            "smolvlm", "qwen_vl", "Qwen2.5-VL", "qwen2.5vl_merger", "qwen2vl", "llama", id="qwen2.5vl-tower-on-llama"
        ),
        pytest.param(
            "qwen_vl", "smolvlm", "SmolVLM2 / Idefics3", "idefics3", "llama", "qwen2vl", id="smolvlm-tower-on-qwen2vl"
        ),
    ],
)
def test_an_mmproj_of_another_family_is_refused_at_load(request, text, mmproj, tower, projector, made_for, arch):
    """The tiny VLMs (support/tiny_vlms.py) are all 64 wide, so only the
    family tells these pairs apart: one error at load naming the tower, the
    architecture it was made for and the model's."""
    text_files, mmproj_files = request.getfixturevalue(text), request.getfixturevalue(mmproj)
    model = text_files.model()
    assert model.arch == arch
    with pytest.raises(hts.InvalidArgumentError) as info:
        hts.Vision(model, mmproj_files.mmproj)
    assert str(info.value) == (
        f"mmproj '{mmproj_files.mmproj}' is a {tower} vision tower (clip.projector_type {projector}), made for a "
        f"{made_for} text model; the model '{text_files.text}' is {arch} (use the mmproj made with this model)"
    )


def test_cli_mmproj_of_another_family_is_one_line(smolvlm, qwen_vl):
    proc = run_cli(
        "chat", "-m", str(smolvlm.text), "--mmproj", str(qwen_vl.mmproj), "--video", "packaged:clip",
        "--prompt", "?", "-t", "2",
    )  # fmt: skip
    assert_one_line_error(proc, "error:", "is a Qwen2.5-VL vision tower", "the model", "is llama")


# -- a sliding window larger than the context ---------------------------------------------------


def test_gemma3_window_larger_than_the_context_is_clamped(gemma_gguf):
    """gemma-3-270m's window layers see 512 tokens; a context of 256 holds
    fewer. llama.cpp clamps: its window layers' cache is min(context, window
    + a batch) cells (llama_kv_cache_iswa), so they see every token, as the
    global layers do (they keep their own rope base). The runtime does the
    same (KvCache keeps no ring when the window and a batch fill the context):
    it loads, and the logits equal llama.cpp's at that context bit for bit.
    A window larger than the *trained* context is refused at load
    (test_gemma3.py)."""
    pytest.importorskip("llama_cpp")
    from htsparse_llama.bench.llama_cpp import load_llama

    n_ctx = 256
    model = Model(gemma_gguf, n_ctx=n_ctx, n_threads=2)
    assert model.info["n_swa"] == 512 > n_ctx and model.info["n_swa_layers"] == 15
    ids = model.tokenize("Each line of this log names a service and its state. " * 30)[:200]
    assert len(ids) == 200
    ours = model.session().add_tokens(ids, all_logits=True)
    llm = load_llama(
        gemma_gguf, n_ctx=n_ctx, n_threads=2, n_threads_batch=2, n_batch=512, logits_all=True, flash_attn=True,
        verbose=False,
    )  # fmt: skip
    try:
        llm.eval(ids)
        ref = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
    assert ours.shape == ref.shape and np.array_equal(ours, ref), float(np.abs(ours - ref).max())
