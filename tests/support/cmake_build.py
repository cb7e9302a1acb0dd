"""One CMake build of the repository's C and C++ programs (the runtime's unit
tests, the C API tests, the examples) against the installed llama.cpp tree,
shared by the tests that run them (test_cpp_units, test_c_api)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file: tests/support/)
TARGETS = ("test_runtime", "test_c_api", "video_question")


@pytest.fixture(scope="session")
def cmake_build(tmp_path_factory) -> Path:
    """The build folder, configured with HTS_BUILD_TESTS and every target built."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    build = tmp_path_factory.mktemp("cmake-build")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    configured = subprocess.run(
        [
            cmake,
            "-S",
            str(ROOT),
            "-B",
            str(build),
            *gen,
            "-DCMAKE_BUILD_TYPE=Release",
            "-DHTS_BUILD_TESTS=ON",
            "-DHTS_BUILD_PYTHON=OFF",
            f"-DPython_EXECUTABLE={sys.executable}",
        ],
        capture_output=True,
        text=True,
    )
    assert configured.returncode == 0, configured.stdout[-4000:] + configured.stderr[-4000:]
    built = subprocess.run(
        [cmake, "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", *TARGETS],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-6000:] + built.stderr[-6000:]
    return build


def ctest(build: Path, *args: str) -> subprocess.CompletedProcess:
    """ctest in the build folder, with its output on failure."""
    exe = shutil.which("ctest") or str(Path(shutil.which("cmake")).with_name("ctest"))
    return subprocess.run([exe, "--output-on-failure", *args], cwd=build, capture_output=True, text=True)
