"""`--hf-repo OWNER/NAME[:QUANT]`: a VLM's GGUF and mmproj from a Hugging Face
model repository (the layout llama.cpp users know from `llama-server -hf`:
one or more quantizations of the model and an mmproj*.gguf beside them),
downloaded once into huggingface_hub's cache; for a text chat, the model
GGUF alone (a text model's repository has no mmproj).

    model_path, mmproj_path = fetch_vlm("ggml-org/SmolVLM2-500M-Video-Instruct-GGUF:Q8_0")
    model_path = fetch_model("Qwen/Qwen3-8B-GGUF")

The layouts picked from (tests/test_hf_repo.py holds their listings):
<name>-<QUANT>.gguf + mmproj-<name>-<TYPE>.gguf (ggml-org, Qwen's Qwen3-VL
repositories: Qwen3VL-2B-Instruct-Q4_K_M.gguf, mmproj-Qwen3VL-2B-Instruct-F16.gguf),
a bare mmproj-model-f16.gguf or mmproj-F16.gguf (ggml-org's and unsloth's
Gemma 3), <name>-mmproj-f16.gguf, and text models' <name>-<QUANT>.gguf alone
(Qwen3). A quant tag matches a whole part of the name: F16 is not BF16.

Needs network access and the huggingface_hub package; without either it
fails with one clear line. Picking the files is separate (pick_files) so it
is testable without the network.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import List, Optional, Sequence, Tuple

from ..errors import InvalidArgumentError

# Tried in this order when no quantization is asked for: llama.cpp's usual default first.
PREFERRED_QUANTS = ("Q4_K_M", "Q8_0", "F16", "BF16", "F32")
PREFERRED_MMPROJ = ("F16", "BF16", "F32", "Q8_0")


def parse_spec(spec: str) -> Tuple[str, Optional[str]]:
    """ "owner/name[:quant]" -> (repo id, quant or None)."""
    repo, _, quant = spec.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise InvalidArgumentError(f"--hf-repo wants OWNER/NAME[:QUANT], got {spec!r}")
    return repo, quant.strip() or None


def _stem(path: str) -> str:
    """A file's name without .gguf, upper-case, "-" as "_" (quant tags are written either way)."""
    name = PurePosixPath(path).name.upper().replace("-", "_")
    return name[: -len(".GGUF")] if name.endswith(".GGUF") else name


def _tagged(files: Sequence[str], tag: str) -> List[str]:
    """The files whose name holds `tag` as a whole part (F16 is not BF16's
    tail): ending the name where some do (Q6_K, not Q6_K_L), else anywhere."""
    t = re.escape(tag.upper().replace("-", "_"))
    at_end = [f for f in files if re.search(rf"(^|[_.]){t}$", _stem(f))]
    return at_end or [f for f in files if re.search(rf"(^|[_.]){t}([_.]|$)", _stem(f))]


def pick_files(files: Sequence[str], quant: Optional[str] = None, mmproj: bool = True) -> Tuple[str, Optional[str]]:
    """(model GGUF, mmproj GGUF) among a repository's file names; with
    mmproj=False (a text chat), (model GGUF, None), and the repository may
    have no mmproj (a text model's, as Qwen/Qwen3-8B-GGUF)."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    mmprojs = [f for f in ggufs if "mmproj" in PurePosixPath(f).name.lower()]
    models = [f for f in ggufs if f not in mmprojs and "-of-0" not in f]  # split shards: not supported
    if not models:
        raise InvalidArgumentError("the repository has no model GGUF")
    if mmproj and not mmprojs:
        raise InvalidArgumentError(
            "the repository has no mmproj GGUF (the vision tower): a text model, for chat without --video/--image; "
            "or pass -m and --mmproj"
        )
    if quant:
        chosen = _tagged(models, quant)
        if not chosen:
            names = ", ".join(PurePosixPath(f).name for f in models)
            raise InvalidArgumentError(f"no model GGUF tagged {quant} in the repository; it has: {names}")
        model = chosen[0]
    else:
        model = next((m[0] for m in (_tagged(models, q) for q in PREFERRED_QUANTS) if m), models[0])
    if not mmproj:
        return model, None
    return model, next((m[0] for m in (_tagged(mmprojs, q) for q in PREFERRED_MMPROJ) if m), mmprojs[0])


def fetch_vlm(spec: str) -> Tuple[str, str]:
    """Downloads (or finds in the cache) the model and mmproj of `spec`: their local paths."""
    model, mmproj = _fetch(spec, mmproj=True)
    assert mmproj is not None
    return model, mmproj


def fetch_model(spec: str) -> str:
    """Downloads (or finds in the cache) the model GGUF of `spec` alone (a text chat): its local path."""
    return _fetch(spec, mmproj=False)[0]


def _fetch(spec: str, mmproj: bool) -> Tuple[str, Optional[str]]:
    repo, quant = parse_spec(spec)
    try:
        import huggingface_hub as hub
    except ImportError:
        raise InvalidArgumentError("--hf-repo needs the huggingface_hub package: pip install huggingface_hub") from None
    try:
        model, mmproj_file = pick_files(hub.list_repo_files(repo), quant, mmproj)
        return hub.hf_hub_download(repo, model), (hub.hf_hub_download(repo, mmproj_file) if mmproj_file else None)
    except InvalidArgumentError:
        raise
    except Exception as e:  # offline, no such repository, gated, disk full: one line, the cause named
        raise InvalidArgumentError(
            f"could not get {repo} from Hugging Face: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
