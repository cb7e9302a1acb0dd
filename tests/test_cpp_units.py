"""Builds the C++ unit tests against the installed llama.cpp tree and runs them
with ctest (tests/cpp/test_runtime.cpp)."""

from support.cmake_build import ctest


def test_cpp_units_pass_under_ctest(cmake_build):
    result = ctest(cmake_build, "-R", "^runtime_units$")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "100% tests passed" in result.stdout
