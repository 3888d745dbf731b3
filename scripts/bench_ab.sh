#!/usr/bin/env bash
# A/B speed of two hearth binaries on the same files, alternating run by run so that drift on a
# shared host hits both alike (docs/benchmarks.md).
#
# Usage: scripts/bench_ab.sh OLD_BIN NEW_BIN [ROUNDS] [QUANTS...]
#   e.g. git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release -p hearth)
#        scripts/bench_ab.sh /tmp/old/target/release/hearth target/release/hearth 3 q4_0 q8_0 f16
set -euo pipefail
old=${1:?old binary}
new=${2:?new binary}
rounds=${3:-3}
shift $(( $# < 3 ? $# : 3 ))
quants=("${@:-q4_0 q8_0 f16}")
models=${HEARTH_BENCH_MODELS:-target/bench-models}
mkdir -p "$models"
for q in ${quants[@]}; do
  f=$models/llama-3.2-1b-$q.gguf
  [ -f "$f" ] || "$new" model synth --shape llama-3.2-1b --format gguf --quant "$q" --out "$f"
done
for round in $(seq 1 "$rounds"); do
  for q in ${quants[@]}; do
    for bin in "$old" "$new"; do
      line=$("$bin" --threads 2 bench --model "$models/llama-3.2-1b-$q.gguf" --repeat 3 --split 1 2>&1 \
        | grep "slices  1")
      echo "round $round $q $([ "$bin" = "$old" ] && echo old || echo new): $line"
    done
  done
done
