"""`--max-visual-tokens auto`: the budget from the memory the user has
(htsparse_llama/video/budget.py). A sparse session's peak holds (P + 1) / L
of the dense KV per token, so the same free memory takes several times the
visual tokens; too little memory is a clear error; the CLI says what it chose."""

import pytest

from htsparse_llama import Model, SparseConfig
from htsparse_llama.errors import InvalidArgumentError, VideoError
from htsparse_llama.video.budget import FIXED_MARGIN, MARGIN, TEXT_RESERVE, auto_budget
from htsparse_llama.video.turn import VideoOptions
from support.cli import cli

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def model(smollm_gguf):
    return Model(smollm_gguf, n_ctx=512, n_threads=2)


def test_budget_follows_the_plan(model):
    per_token = model.kv_bytes_per_token
    assert per_token == 2 * 30 * 3 * 64 * 2  # SmolLM2-135M: 30 layers, 3 KV heads of 64, f16 K and V
    free = int(((28 << 20) + FIXED_MARGIN) / (1 - MARGIN))  # 28 MiB usable: both below the trained context
    dense = auto_budget(model, None, free_bytes=free)
    assert dense.tokens == int((free * (1 - MARGIN) - FIXED_MARGIN) // per_token) - TEXT_RESERVE
    settings = SparseConfig(select_layer=4, prune_layer=4).resolve(model)
    sparse = auto_budget(model, settings, free_bytes=free)
    assert sparse.tokens == int((free * (1 - MARGIN) - FIXED_MARGIN) // (per_token * 5 / 30)) - TEXT_RESERVE
    assert sparse.tokens > 5 * dense.tokens  # the same memory, six times the video
    assert "HT-Sparse" in sparse.reason and "dense" in dense.reason and str(sparse.tokens) in sparse.reason
    # Plenty of memory: the model's trained context bounds it.
    huge = auto_budget(model, settings, free_bytes=1 << 50)
    assert huge.tokens == model.info["n_ctx_train"] - TEXT_RESERVE and "trained context" in huge.reason
    with pytest.raises(VideoError, match="hold no visual token"):
        auto_budget(model, None, free_bytes=64 << 20)


def test_options_take_auto(model):
    options, why = VideoOptions(max_visual_tokens="auto").resolved(model, None)
    assert isinstance(options.max_visual_tokens, int) and options.max_visual_tokens > 0 and "budget" in why
    assert VideoOptions(max_visual_tokens=100).resolved(model, None) == (VideoOptions(max_visual_tokens=100), None)
    with pytest.raises(InvalidArgumentError, match="'auto'"):
        VideoOptions(max_visual_tokens="most")


def test_chat_says_what_it_chose(demo_model):
    r = cli("chat", "--video", "packaged:clip", "--prompt", "?", "--max-frames", "4", "-t", "2", "-n", "2")
    assert r.returncode == 0, r.stderr
    assert "visual-token budget" in r.stderr and "HT-Sparse" in r.stderr
    r = cli("chat", "--video", "packaged:clip", "--prompt", "?", "--max-frames", "4", "-t", "2", "-n", "2", "--dense")
    assert r.returncode == 0 and "dense: every layer" in r.stderr
    r = cli("chat", "--video", "packaged:clip", "--prompt", "?", "--max-visual-tokens", "many")
    assert r.returncode == 2 and "'auto'" in r.stderr
