#!/usr/bin/env bash
# The code style, checked before the tests (.ci/run): ruff's lint rules and
# formatting for Python (pyproject.toml [tool.ruff]), clang-format for C and
# C++ (.clang-format). `bash scripts/check_style.sh --fix` applies them.
# ruff and clang-format come with the test extras (pip install ".[test]").
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t cxx < <(git ls-files 'runtime/*.cpp' 'runtime/*.h' 'ggml_ops/*.cpp' 'ggml_ops/*.h' 'python/src/*.cpp' \
                                 'python/src/*.h' 'tests/cpp/*.cpp' 'tests/c/*.c' 'examples/*.c' 'examples/*.h')
if [[ "${1:-}" == "--fix" ]]; then
    ruff check --fix .
    ruff format .
    clang-format -i "${cxx[@]}"
    exit 0
fi
ruff check .
ruff format --check .
clang-format --dry-run -Werror "${cxx[@]}"
echo "style: ok (ruff, clang-format on ${#cxx[@]} C/C++ files)"
