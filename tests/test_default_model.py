"""The main job's default model: a random-weight Qwen2.5-VL-shaped text GGUF
+ mmproj, made once with numpy (no torch) and cached; our runtime and
libmtmd load it."""

import os
import subprocess
import sys

import pytest

from support.tiny_vlms import MtmdEncoder, TextModel, pattern_image

pytestmark = pytest.mark.real_model  # its tokenizer comes from the packaged Qwen GGUF


def test_made_once_and_loadable(qwen_gguf, tmp_path):
    code = (
        "import sys, htsparse_llama.fetch.demo_model as d; "
        f"t, m = d.default_model_paths(print, {str(tmp_path)!r}); print(t); print(m); print('torch' in sys.modules)"
    )
    # A fresh process, as the CLI's first run: the model is made, without torch.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert "random weights" in lines[0] and lines[-1] == "False"
    text, mmproj = lines[-3], lines[-2]
    stamp = os.stat(text).st_mtime_ns
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "random weights" not in again.stdout and os.stat(text).st_mtime_ns == stamp  # cached

    from htsparse_llama import Model

    model = Model(text, n_ctx=128, n_threads=2)
    assert model.arch == "qwen2vl" and model.n_vocab == 151936
    s = model.session()
    s.add_message("user", "hi")
    assert len(s.generate(max_tokens=4, temperature=0, stream=False)) > 0
    tm = TextModel(text)
    try:
        with MtmdEncoder(tm, mmproj) as enc:
            (embd,) = enc.encode(pattern_image(224, 168))
        assert embd.shape == (8 * 6, 128)  # 224x168 px = 8x6 merged 28-px patches, n_embd 128
    finally:
        tm.close()
