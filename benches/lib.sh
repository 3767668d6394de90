# Shared by benches/load.sh, idle_memory.sh and instructions.sh (sourced):
# a work directory cleaned up on exit, free ports, waiting for a listener,
# the minimal NGINX upstream, and a gateway config with one RS256 key.
#
# The caller sets `name` (for messages) before sourcing.

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (up to 30 s) until something accepts on 127.0.0.1:$1.
wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$name: nothing listens on $1" >&2; exit 1
}

# One NGINX worker answering every path with a fixed JSON body, on port $1.
start_upstream() {
    cat >"$work/upstream.conf" <<CONF
daemon off; worker_processes 1; pid $work/up.pid; error_log $work/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$1; location / { default_type application/json; return 200 '{"ok":true}'; } } }
CONF
    nginx -c "$work/upstream.conf" & pids+=($!)
    wait_port "$1"
}

# $work/gw.yaml: listen $1, admin $2, key `load` (made once in $work/keys),
# a token endpoint to mint with, and route /api → the upstream on $3
# requiring audience load-api and scope read.
write_gateway_config() {
    [ -f "$work/keys/load.pem" ] || "$bin" keygen --alg RS256 --kid load --out "$work/keys" >/dev/null
    cat >"$work/gw.yaml" <<YAML
listen: 127.0.0.1:$1
admin: 127.0.0.1:$2
keys:
  - {kid: load, alg: RS256, private_key: keys/load.pem}
token_endpoint: {path: /oauth2/token, signing_key: load, audience: load-api, clients: []}
routes:
  - name: api
    match: {path_prefix: /api}
    upstream: http://127.0.0.1:$3
    policies:
      - jwt: {audience: load-api, scopes: [read]}
YAML
}

# A token for the route, valid for an hour.
mint_token() {
    "$bin" token -c "$work/gw.yaml" --sub load --scope read --aud load-api --ttl 3600s
}

# The usual set-up of load.sh and idle_memory.sh: the upstream, then the
# release gateway in front of it (`$bin`, logging warnings to $work/gw.log),
# and a token. Sets up, gw, admin, gw_pid and token.
start_gateway_stack() {
    up=$(free_port); gw=$(free_port); admin=$(free_port)
    start_upstream "$up"
    write_gateway_config "$gw" "$admin" "$up"
    RUST_LOG=warn "$bin" run -c "$work/gw.yaml" 2>"$work/gw.log" & pids+=($!)
    gw_pid=$!
    wait_port "$gw"
    token=$(mint_token)
}
