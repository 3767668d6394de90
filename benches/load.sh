#!/usr/bin/env bash
# The project's own load test: a minimal upstream (nginx, one worker,
# returning a fixed JSON body), jwtgate in front of it verifying an RS256
# token, and oha against both — direct and through the gateway — in
# interleaved rounds. Prints req/s, p50 and p99 of each run, the medians,
# and the gateway/direct ratio.
#
#   benches/load.sh [ROUNDS=3] [SECONDS=8] [CONNECTIONS=64]
#
# Needs: nginx (apt-get install nginx-light), oha (cargo install oha),
# python3. Builds the release binary first. For the side-by-side comparison
# with HAProxy and NGINX, use ../shared/bench/compare.py.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; seconds=${2:-8}; conns=${3:-64}
oha=$(command -v oha || echo "$HOME/.cargo/bin/oha")
for tool in nginx "$oha" python3; do
    command -v "$tool" >/dev/null || { echo "load.sh: $tool is missing" >&2; exit 1; }
done
cargo build --release --quiet
bin=target/release/jwtgate

name=load.sh
source benches/lib.sh

start_gateway_stack

run() { # $1 name, $2 url, $3 header
    "$oha" --no-tui -w --output-format json -z "${seconds}s" -c "$conns" -H "$3" "$2" >"$work/$1.$r.json"
}
for r in $(seq 1 "$rounds"); do
    run direct "http://127.0.0.1:$up/api/item" "X-Nothing: 1"
    run jwtgate "http://127.0.0.1:$gw/api/item" "Authorization: Bearer $token"
done
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
med = {}
for name in ("direct", "jwtgate"):
    runs = []
    for r in range(1, rounds + 1):
        d = json.load(open(f"{work}/{name}.{r}.json"))
        codes = d.get("statusCodeDistribution", {})
        ok = sum(v for k, v in codes.items() if k.startswith("2"))
        bad = sum(codes.values()) - ok + sum(d.get("errorDistribution", {}).values())
        p = d["latencyPercentiles"]
        runs.append((ok / d["summary"]["total"], p["p50"] * 1e3, p["p99"] * 1e3, bad))
        print(f"{name:<8} round {r}: {runs[-1][0]:>9.0f} req/s  p50 {runs[-1][1]:.2f} ms  p99 {runs[-1][2]:.2f} ms  failed {bad}")
    med[name] = [statistics.median(x[i] for x in runs) for i in range(3)] + [sum(x[3] for x in runs)]
print(f"{'':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
for name, (rps, p50, p99, bad) in med.items():
    print(f"{name:<8} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {bad:>7}")
print(f"jwtgate/direct req/s {med['jwtgate'][0] / med['direct'][0]:.2f}")
PY
