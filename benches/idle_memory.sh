#!/usr/bin/env bash
# Memory of idle keep-alive connections: starts the gateway (release build)
# in front of the minimal NGINX upstream, opens CONNECTIONS client
# connections in batches, sends one authorized request on each and reads
# its 200, then keeps them all open and idle and reads the gateway's
# resident size (/proc/PID/status VmRSS) and `jwtgate_open_connections`.
#
#   benches/idle_memory.sh [CONNECTIONS=10000] [BATCH=500]
#
# Needs: nginx (apt-get install nginx-light), python3, and an open-files
# limit above CONNECTIONS (the script raises its own soft limit).
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-10000}; batch=${2:-500}
command -v nginx >/dev/null || { echo "idle_memory.sh: nginx is missing" >&2; exit 1; }
ulimit -n $((conns * 2 + 1024)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet
bin=target/release/jwtgate

name=idle_memory.sh
source benches/lib.sh

start_gateway_stack

python3 - "$gw" "$admin" "$gw_pid" "$token" "$conns" "$batch" <<'PY'
import asyncio, sys, time, urllib.request

gw, admin, pid, token, conns, batch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
request = f"GET /api/item HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode()

def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def gauges():
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("jwtgate_open_connections{"):
            state = line.split('"')[1]
            found[state] = int(float(line.split()[-1]))
    return found

async def one():
    reader, writer = await asyncio.open_connection("127.0.0.1", int(gw))
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return reader, writer

async def main():
    before = rss_mib()
    print(f"idle, no connections: {before:.1f} MiB")
    held = []
    started = time.monotonic()
    for i in range(0, conns, batch):
        held += await asyncio.gather(*(one() for _ in range(min(batch, conns - i))))
    print(f"{len(held)} connections opened and served one request each in {time.monotonic() - started:.1f} s")
    await asyncio.sleep(2)
    after = rss_mib()
    print(f"all {len(held)} idle: {after:.1f} MiB (+{after - before:.1f} MiB, {(after - before) * 1024 * 1024 / len(held) / 1000:.1f} KB a connection); open connections {gauges()}")
    for _, writer in held:
        writer.close()

asyncio.run(main())
PY
