#!/usr/bin/env bash
# Gateway load test on loopback: two node processes (1 thread each) serve a model's two halves,
# a gateway serves the OpenAI API over them, and the loadtest example drives 1, 8 and 32
# concurrent streaming requests, then 96 at once to saturate the queue (only 429s allowed).
#
#   scripts/gateway_load.sh MODEL.gguf|HF_DIR [MAX_TOKENS]
#
# Build first: cargo build --release -p hearth && cargo build --release -p hearth-gateway --example loadtest
# GATEWAY_FLAGS=--no-head-batch measures the gateway without the shared head.
set -euo pipefail
model=${1:?model path}
max_tokens=${2:-32}
bin=target/release/hearth
work=$(mktemp -d)
export HEARTH_HOME=$work/home
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

layers=$($bin model info "$model" 2>/dev/null | awk '/^blocks:/ {print $2}')
half=$((layers / 2))
wait_file() { for _ in $(seq 1 1500); do [ -s "$1" ] && return 0; sleep 0.2; done; echo "timed out: $1" >&2; cat "$work"/*.log >&2; exit 1; }

$bin --threads 1 node --model "$model" --blocks "0..$half" --data-dir "$work/a" \
  --ready-file "$work/a.addr" --listen /ip4/127.0.0.1/tcp/0 --no-mdns 2>"$work/a.log" &
pids+=($!)
wait_file "$work/a.addr"
$bin --threads 1 node --model "$model" --blocks "$half..$layers" --data-dir "$work/b" \
  --ready-file "$work/b.addr" --listen /ip4/127.0.0.1/tcp/0 --no-mdns \
  --bootstrap "$(cat "$work/a.addr")" 2>"$work/b.log" &
pids+=($!)
wait_file "$work/b.addr"
$bin --threads 1 gateway --model "$model" --model-name bench --bootstrap "$(cat "$work/a.addr")" \
  --listen /ip4/127.0.0.1/tcp/0 --no-mdns --http 127.0.0.1:0 --ready-file "$work/url" \
  --max-running 32 --max-queue 16 ${GATEWAY_FLAGS:-} 2>"$work/gw.log" &
gw=$!
pids+=($gw)
wait_file "$work/url"
url=$(cat "$work/url")
echo "model $model ($layers layers: 0..$half | $half..$layers), max_tokens $max_tokens, load $(cut -d' ' -f1-3 /proc/loadavg)"
target/release/examples/loadtest "$url" bench --streams 1,8,32 --requests-per-stream 2 \
  --max-tokens "$max_tokens" --pid "$gw"
echo "saturation (max-running 32, max-queue 16):"
target/release/examples/loadtest "$url" bench --streams 96 --requests-per-stream 1 \
  --max-tokens "$max_tokens" --pid "$gw" | tail -1
echo "head batching (products, rows):"
curl -s "$url/metrics" | grep -E '^hearth_gateway_head_(products|rows) '
