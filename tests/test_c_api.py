"""The C API (runtime/include/htsparse.h) as apps use it: ctest builds and runs
the C tests (tests/c/test_c_api.c, strict C99 with -pedantic -Werror) and
the example (examples/video_question.c) on frames of the packaged clip with
the demo model; the example's greedy answer and selection equal the Python
package's on the same frames; a C program builds against the installed
package with `python -m htsparse_llama c-flags`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import htsparse_llama as hts
from htsparse_llama.video.turn import VideoTurn, encode_video
from support.cmake_build import ROOT, ctest

QUESTION = "What happens in this video?"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def ctest_run(cmake_build):
    """Every ctest test (prepare_clip, runtime_units, c_api, example_video_question)."""
    result = ctest(cmake_build)
    return cmake_build, result


def test_ctest_runs_the_c_tests_and_the_example(ctest_run):
    build, result = ctest_run
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    for name in ("prepare_clip", "runtime_units", "c_api", "example_video_question"):
        assert re.search(rf"Test\s+#\d+: {name} \.+\s+Passed", result.stdout), result.stdout


def read_frames(data: Path):
    """The frames, times and duration of a frames.txt list (as the C example reads it)."""
    duration, frames, times = None, [], []
    for line in (data / "frames.txt").read_text().splitlines():
        if line.startswith("duration "):
            duration = float(line.split()[1])
        elif line and not line.startswith("#"):
            t, name = line.split()
            times.append(float(t))
            frames.append(np.asarray(Image.open(data / name).convert("RGB")))
    return frames, times, duration


def python_answer(data: Path, sparse: bool):
    """The Python package's greedy answer about the same frames, and its stats."""
    model = hts.Model(data / "model.gguf", n_ctx=8192)
    vision = hts.Vision(model, data / "mmproj.gguf")
    frames, times, duration = read_frames(data)
    chunks = encode_video(vision, iter(frames), times, duration=duration)
    session = model.session(sparse=hts.SparseConfig() if sparse else None)
    VideoTurn(chunks, "clip").ask(session, vision, QUESTION, sparse=sparse)
    text = session.generate(max_tokens=MAX_TOKENS, temperature=0, stream=False)
    return text, session.stats()


def run_example(exe: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(exe),
            str(data / "model.gguf"),
            str(data / "mmproj.gguf"),
            str(data / "frames.txt"),
            QUESTION,
            "--max-tokens",
            str(MAX_TOKENS),
            "--greedy",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_example_answers_as_the_python_package(ctest_run, sparse):
    build, _ = ctest_run
    data = build / "test-data"
    run = run_example(build / "examples" / "video_question", data, *([] if sparse else ["--dense"]))
    assert run.returncode == 0, run.stderr
    answer, _, stats_line = run.stdout.rpartition("\n[")
    text, stats = python_answer(data, sparse)
    assert answer == text
    assert "encoding frames" in run.stderr and "qwen2.5vl_merger" in run.stderr
    if sparse:
        kept = re.search(r"kept (\d+) of (\d+) visual tokens", stats_line)
        assert kept and (int(kept[1]), int(kept[2])) == (stats.n_kept, stats.n_sparse)
        assert 0 < stats.n_kept < stats.n_sparse
    else:
        assert "dense" in stats_line and stats.n_sparse == 0


def test_example_reports_bad_input(ctest_run, tmp_path):
    build, _ = ctest_run
    exe, data = build / "examples" / "video_question", build / "test-data"
    usage = subprocess.run([str(exe)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    (tmp_path / "frames.txt").write_text("0.0 missing.ppm\n")
    missing = subprocess.run(
        [str(exe), str(data / "model.gguf"), str(data / "mmproj.gguf"), str(tmp_path / "frames.txt"), "q"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "missing.ppm" in missing.stderr
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 20)
    bad_model = subprocess.run(
        [str(exe), str(broken), str(data / "mmproj.gguf"), str(data / "frames.txt"), "q"],
        capture_output=True,
        text=True,
    )
    assert bad_model.returncode == 1 and "error: loading the model" in bad_model.stderr
    assert len(bad_model.stderr.strip().splitlines()) <= 3  # a clear message, no crash dump


def test_c_program_builds_against_the_installed_package(ctest_run, tmp_path):
    """What a C developer does after `pip install .`: compile with the flags
    `c-flags` prints and run, with no Python in the program."""
    build, _ = ctest_run
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    flags = subprocess.run([sys.executable, "-m", "htsparse_llama", "c-flags"], capture_output=True, text=True)
    assert flags.returncode == 0, flags.stderr
    exe = tmp_path / "video_question"
    compiled = subprocess.run(
        [
            cc,
            "-std=c99",
            "-Wall",
            "-Werror",
            "-pedantic",
            str(ROOT / "examples" / "video_question.c"),
            *flags.stdout.split(),
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
    )
    assert compiled.returncode == 0, compiled.stderr
    data = build / "test-data"
    installed = run_example(exe, data)
    in_tree = run_example(build / "examples" / "video_question", data)
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.rpartition("\n[")[0] == in_tree.stdout.rpartition("\n[")[0]
