"""Builds the C++ unit tests against the installed llama.cpp tree and runs them
with ctest (tests/cpp/test_runtime.cpp)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_cpp_units_pass_under_ctest(tmp_path_factory):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    build = tmp_path_factory.mktemp("cpp-build")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release",
                    "-DHTS_BUILD_TESTS=ON", "-DHTS_BUILD_PYTHON=OFF", f"-DPython_EXECUTABLE={sys.executable}"],
                   check=True, capture_output=True, text=True)
    jobs = str(os.cpu_count() or 2)
    built = subprocess.run([cmake, "--build", str(build), "--target", "test_runtime", "-j", jobs],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    ctest = shutil.which("ctest") or str(Path(cmake).with_name("ctest"))
    result = subprocess.run([ctest, "--output-on-failure"], cwd=build, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "100% tests passed" in result.stdout
