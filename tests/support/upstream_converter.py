"""Upstream llama.cpp's own HF -> GGUF converter, for cross-checking ours.

    from support.upstream_converter import converter_args, run_upstream_converter, upstream_converter  # (fixture)

    def test_same_as_upstream(upstream_converter, tmp_path):
        out = tmp_path / "up.gguf"
        run_upstream_converter(upstream_converter, [converter_args(checkpoint_dir, out, "f16")])

The converter is the one llama.cpp ships at the version we compile against:
vendor/llama.cpp/ inside the llama-cpp-python 0.3.36 source distribution. It
is taken from an extracted source tree at /tmp/lcp_src when there is one,
else the sdist is fetched once with pip into the cache directory and the
converter's files (convert_*.py, conversion/, gguf-py/) extracted from it.
The converter runs in a subprocess with its own gguf-py first on PYTHONPATH,
so it never mixes with the installed gguf package; several conversions share
one subprocess, since importing the converter is most of a run's time.
Where sentencepiece is not installed, an empty stand-in goes on that path too
(see _SENTENCEPIECE_STAND_IN).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, List, Sequence

import pytest

from htsparse_llama.fetch.packaged import cache_dir

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
LOCAL_SOURCE = Path("/tmp/lcp_src")  # an already extracted sdist, where a machine has one
_VENDOR = "vendor/llama.cpp"


class UpstreamUnavailable(RuntimeError):
    """The package index could not be reached to fetch the sdist."""


def _is_converter_dir(path: Path) -> bool:
    return (path / "convert_hf_to_gguf.py").is_file() and (path / "gguf-py" / "gguf").is_dir()


def _is_converter_file(rel: str) -> bool:
    """A file of upstream's converter, by its path inside vendor/llama.cpp."""
    top = rel.split("/", 1)[0]
    return (top.startswith("convert") and top.endswith(".py") and "/" not in rel) or top in ("conversion", "gguf-py")


def _fetch_sdist(dest: Path) -> Path:
    # --no-binary for this one package only: pip prepares the sdist's metadata
    # before saving it, and with :all: it would build cmake and ninja (the
    # build backend's requirements) from source too, which takes many minutes.
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        "llama-cpp-python",
        "-d",
        str(dest),
        LLAMA_CPP_PYTHON,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    except subprocess.TimeoutExpired:
        last = "timed out after 900 s"
    sdists = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        raise UpstreamUnavailable(f"pip could not fetch the {LLAMA_CPP_PYTHON} sdist: {last}")
    return sdists[-1]


def _extract(sdist: Path, dest: Path, wanted: Callable[[str], bool]) -> None:
    """The files of the sdist's vendor/llama.cpp that `wanted` picks (by their
    path inside it), into dest."""
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            _, sep, rel = member.name.partition(f"/{_VENDOR}/")
            if not sep or ".." in rel.split("/") or not member.isfile() or not wanted(rel):
                continue
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def vendor_subset_dir(name: str, wanted: Callable[[str], bool], complete: Callable[[Path], bool]) -> Path:
    """A vendor/llama.cpp directory of the pinned sdist that is `complete`:
    LOCAL_SOURCE where a machine has one, else the files `wanted` picks,
    extracted once into the cache folder `name` (the sdist fetched with pip;
    UpstreamUnavailable without network)."""
    local = LOCAL_SOURCE / _VENDOR
    if complete(local):
        return local
    target = cache_dir() / "upstream" / LLAMA_CPP_PYTHON.replace("==", "-") / name
    if complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staged = Path(tmp) / name
        _extract(_fetch_sdist(Path(tmp)), staged, wanted)
        if not complete(staged):
            raise RuntimeError(f"the {LLAMA_CPP_PYTHON} sdist lacks files of {name} under {_VENDOR}")
        try:
            os.replace(staged, target)  # atomic; a concurrent session may have won the race
        except OSError:
            if not complete(target):
                raise
    return target


def upstream_converter_dir() -> Path:
    """The llama.cpp directory holding convert_hf_to_gguf.py and gguf-py/ of
    llama-cpp-python 0.3.36. Fetches the sdist (77 MB) on first use;
    raises UpstreamUnavailable when the package index cannot be reached."""
    return vendor_subset_dir("llama.cpp", _is_converter_file, _is_converter_dir)


@pytest.fixture(scope="session")
def upstream_converter() -> Path:
    """upstream_converter_dir(), skipping the test when it cannot be fetched."""
    try:
        return upstream_converter_dir()
    except UpstreamUnavailable as exc:
        pytest.skip(f"no network to fetch upstream's converter: {exc}")


def converter_args(
    model_dir: Path, outfile: Path, outtype: str = "f16", mmproj: bool = False, extra_args: Sequence[str] = ()
) -> List[str]:
    """convert_hf_to_gguf.py's command line for one conversion."""
    return [
        str(model_dir),
        "--outfile",
        str(outfile),
        "--outtype",
        outtype,
        *(["--mmproj"] if mmproj else []),
        *extra_args,
    ]


# Importing the converter (torch, transformers) takes ~7 s of a ~9 s run on a
# tiny checkpoint, so one process imports it once and runs main() per job.
_DRIVER = """
import json, sys
import convert_hf_to_gguf
for argv in json.loads(sys.argv[1]):
    sys.argv = ["convert_hf_to_gguf.py", *argv]
    convert_hf_to_gguf.main()
"""


# Upstream's Qwen2, Qwen2-VL and Llama set_vocab import sentencepiece before
# they look for tokenizer.model, and take the gpt2 (tokenizer.json) path when
# there is none. Where the package is not installed, this empty module lets
# them reach that path; nothing calls it.
_SENTENCEPIECE_STAND_IN = """
class SentencePieceProcessor:
    def __init__(self, *args, **kwargs):
        raise ImportError("sentencepiece stand-in of tests/upstream_converter.py")
"""


def run_upstream_converter(converter_dir: Path, jobs: Sequence[Sequence[str]]) -> None:
    """Runs upstream's converter once per argument list (see converter_args),
    all in one subprocess with upstream's gguf-py first on the path.
    Raises RuntimeError with the converter's last output lines when it fails."""
    with tempfile.TemporaryDirectory() as stub:
        paths = [str(converter_dir / "gguf-py"), str(converter_dir)]
        if importlib.util.find_spec("sentencepiece") is None:
            (Path(stub) / "sentencepiece.py").write_text(_SENTENCEPIECE_STAND_IN)
            paths.append(stub)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (*paths, env.get("PYTHONPATH", "")) if p)
        cmd = [sys.executable, "-c", _DRIVER, json.dumps([list(job) for job in jobs])]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=converter_dir)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"upstream convert_hf_to_gguf.py failed ({proc.returncode}):\n{tail}")
