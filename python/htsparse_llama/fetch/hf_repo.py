"""`--hf-repo OWNER/NAME[:QUANT]`: a VLM's GGUF and mmproj from a Hugging Face
model repository (the layout llama.cpp users know from `llama-server -hf`:
one or more quantizations of the model and an mmproj-*.gguf beside them),
downloaded once into huggingface_hub's cache.

    model_path, mmproj_path = fetch_vlm("ggml-org/SmolVLM2-500M-Video-Instruct-GGUF:Q8_0")

Needs network access and the huggingface_hub package; without either it
fails with one clear line. Picking the files is separate (pick_files) so it
is testable without the network.
"""

from __future__ import annotations

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


def _tagged(files: Sequence[str], tag: str) -> List[str]:
    t = tag.upper()
    return [f for f in files if t in PurePosixPath(f).name.upper().replace("-", "_")]


def pick_files(files: Sequence[str], quant: Optional[str] = None) -> Tuple[str, str]:
    """(model GGUF, mmproj GGUF) among a repository's file names."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    mmprojs = [f for f in ggufs if "mmproj" in PurePosixPath(f).name.lower()]
    models = [f for f in ggufs if f not in mmprojs and "-of-0" not in f]  # split shards: not supported
    if not models:
        raise InvalidArgumentError("the repository has no model GGUF")
    if not mmprojs:
        raise InvalidArgumentError("the repository has no mmproj GGUF (the vision tower); pass -m and --mmproj")
    if quant:
        chosen = _tagged(models, quant)
        if not chosen:
            names = ", ".join(PurePosixPath(f).name for f in models)
            raise InvalidArgumentError(f"no model GGUF tagged {quant} in the repository; it has: {names}")
        model = chosen[0]
    else:
        model = next((m[0] for m in (_tagged(models, q) for q in PREFERRED_QUANTS) if m), models[0])
    mmproj = next((m[0] for m in (_tagged(mmprojs, q) for q in PREFERRED_MMPROJ) if m), mmprojs[0])
    return model, mmproj


def fetch_vlm(spec: str) -> Tuple[str, str]:
    """Downloads (or finds in the cache) the model and mmproj of `spec`: their local paths."""
    repo, quant = parse_spec(spec)
    try:
        import huggingface_hub as hub
    except ImportError:
        raise InvalidArgumentError("--hf-repo needs the huggingface_hub package: pip install huggingface_hub") from None
    try:
        model, mmproj = pick_files(hub.list_repo_files(repo), quant)
        return hub.hf_hub_download(repo, model), hub.hf_hub_download(repo, mmproj)
    except InvalidArgumentError:
        raise
    except Exception as e:  # offline, no such repository, gated, disk full: one line, the cause named
        raise InvalidArgumentError(
            f"could not get {repo} from Hugging Face: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
