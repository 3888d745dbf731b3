#!/usr/bin/env bash
# The long form of bin/hearth/tests/failover.rs (issue #11): kills the serving node at KILLS random
# steps per format (prefill and decode) of a 64-token SmolLM2 generation, on the Q4_1 file as
# shipped and on Q8_0 and F16 conversions of it, and requires the uninterrupted run's token ids
# every time. Default 34 per format: 102 kill points. CI runs the same test with 2 per format.
#
# Usage: scripts/failover_exactness.sh [KILLS]   (pulls SmolLM2 into $HEARTH_HOME if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-34}
home=${HEARTH_HOME:-$HOME/.hearth}
cargo build --release -p hearth
HEARTH_HOME=$home target/release/hearth model pull smollm2-135m-instruct >&2
model=$(ls "$home"/models/smollm2-135m-instruct/*.gguf | head -n1)
HEARTH_SMOLLM2_GGUF=$model HEARTH_FAILOVER_KILLS=$kills \
  cargo test --release -p hearth --test failover -- --test-threads 1 --nocapture 2>&1 \
  | grep -E "killed at|test result|panicked|FAILED|changed"
