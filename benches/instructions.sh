#!/usr/bin/env bash
# Instructions per proxied request: a number this noisy shared machine
# cannot blur. jwtgate (release, one serving thread) runs under callgrind in
# front of a minimal nginx upstream, serves N and then 3N requests with the
# same RS256 token (8 connections, oha), and the difference of the two
# totals divided by 2N is what one request costs in user space (start-up
# and key loading cancel out). Kernel time is not counted.
#
#   benches/instructions.sh [N=2000]
#
# Needs: valgrind (apt-get install valgrind), nginx (nginx-light), oha,
# python3. Builds the release binary first.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
oha=$(command -v oha || echo "$HOME/.cargo/bin/oha")
for tool in valgrind nginx "$oha" python3; do
    command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is missing" >&2; exit 1; }
done
cargo build --release --quiet
bin=$PWD/target/release/jwtgate

name=instructions.sh
source benches/lib.sh

up=$(free_port)
start_upstream "$up"

# Total instructions of one gateway process serving $1 requests, written to
# $work/total.$1; fails unless every request got 200.
instructions() {
    local gw admin token
    gw=$(free_port); admin=$(free_port)
    write_gateway_config "$gw" "$admin" "$up"
    token=$(mint_token)
    RUST_LOG=warn JWTGATE_THREADS=1 valgrind --tool=callgrind \
        --callgrind-out-file="$work/callgrind.out" "$bin" run -c "$work/gw.yaml" \
        2>"$work/gw.log" &
    local pid=$!
    wait_port "$gw"
    "$oha" --no-tui -n "$1" -c 8 -H "Authorization: Bearer $token" --output-format json \
        "http://127.0.0.1:$gw/api/item" >"$work/oha.json"
    python3 - "$work/oha.json" "$1" <<'PY'
import json, sys
codes = json.load(open(sys.argv[1]))["statusCodeDistribution"]
if codes != {"200": int(sys.argv[2])}:
    sys.exit(f"instructions.sh: status codes {codes}")
PY
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    awk '/^totals:/ {print $2}' "$work/callgrind.out" >"$work/total.$1"
}

instructions "$n"
instructions $((3 * n))
small=$(cat "$work/total.$n")
large=$(cat "$work/total.$((3 * n))")
echo "requests: $n and $((3 * n)); instructions: $small and $large"
echo "instructions per proxied request: $(( (large - small) / (2 * n) ))"
