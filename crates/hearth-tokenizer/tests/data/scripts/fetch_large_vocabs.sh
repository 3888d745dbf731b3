#!/usr/bin/env bash
# Copies llama.cpp's tokenizer test vocabularies that are too large to commit (Command-R, 10 MB;
# Gemma 4, 15 MB) with their .inp/.out vectors into DEST, default <workspace>/target/llama-vocab,
# where tests/vocab_vectors.rs finds them (or in $HEARTH_LLAMA_VOCAB_DIR). Without them those
# tests print SKIPPED and pass.
#
# Usage: fetch_large_vocabs.sh [DEST]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-$here/../../../../../target/llama-vocab}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

tree=$("$here/llama_cpp_source.sh" "$work")
mkdir -p "$dest"
for name in command-r gemma-4; do
  for ext in gguf gguf.inp gguf.out; do
    cp "$tree/models/ggml-vocab-$name.$ext" "$dest/"
  done
done
cp "$tree/LICENSE" "$dest/LICENSE-llama.cpp"
echo "llama.cpp vocabularies in $(cd "$dest" && pwd)"
