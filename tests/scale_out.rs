//! Scale-out (SPEC §6, README "Reloading and key rotation"): three real
//! `jwtgate run` processes behave as one gateway.
//!
//! - Three replicas started from ONE config file and ONE key directory
//!   accept each other's tokens and serve byte-identical JWK Sets; a change
//!   to the shared file reaches all three.
//! - A signing-key rotation rolled across three replicas one at a time, in
//!   the README's safe order, while a background client keeps sending
//!   requests round robin with tokens freshly issued by random replicas:
//!   not one request (nor one token request) fails, and once the old key is
//!   gone its tokens get `401 invalid_token` everywhere.
//!
//! Every child process is owned by a [`ChildGuard`] (killed and reaped on
//! drop, panics included), every wait has a deadline, and every listener is
//! on port 0. The process helpers are copies of those in `tests/cli.rs`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

#[path = "common/process.rs"]
mod process;

use process::{jwtgate, run_with_timeout, Server};

/// The client secret of `my-client` (long enough for a `sha256:` hash).
const SECRET: &str = "a-long-random-client-secret-0123";
/// `hashlib.sha256(SECRET.encode()).hexdigest()`, computed outside this
/// project (the same constant as in `tests/cli.rs`).
const SHA256_SECRET: &str = "7e9246aa13cf9c78e3883af339ff54dfc18de354d8ecd0e2dc9223dc0566cc30";
const CLIENT: &str = "my-client";

/// The longest a one-shot command (keygen, hash-secret) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// SPEC §5 promises a change within 2 s; the tests allow 3 per replica.
const RELOAD_WAIT: Duration = Duration::from_secs(3);
/// Socket timeouts of every request the tests send.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest the background traffic may take to make progress.
const TRAFFIC_WAIT: Duration = Duration::from_secs(5);
/// How often the background refresher asks a token endpoint for a token.
const TOKEN_REFRESH: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------
// Processes (tests/common/process.rs)
// ---------------------------------------------------------------------------

/// `jwtgate keygen --alg RS256 --kid KID --out DIR`.
fn keygen(kid: &str, out: &Path) {
    let mut command = jwtgate();
    command.args([
        "keygen",
        "--alg",
        "RS256",
        "--kid",
        kid,
        "--out",
        out.to_str().unwrap(),
    ]);
    let output = run_with_timeout(command, b"", COMMAND_TIMEOUT);
    assert_eq!(output.code, Some(0), "keygen {kid}: {output:#?}");
    assert_eq!(output.stderr, "", "keygen {kid}: {output:#?}");
    assert!(out.join(format!("{kid}.pem")).is_file());
    assert!(out.join(format!("{kid}.pub.pem")).is_file());
}

/// The `secret_hash` of [`SECRET`], from `jwtgate hash-secret`, checked
/// against the independently computed digest.
fn client_secret_hash() -> String {
    let mut command = jwtgate();
    command.arg("hash-secret");
    let output = run_with_timeout(command, format!("{SECRET}\n").as_bytes(), COMMAND_TIMEOUT);
    assert_eq!(output.code, Some(0), "{output:#?}");
    assert_eq!(
        output.stderr, "",
        "a long secret draws no warning: {output:#?}"
    );
    let hash = output.stdout.trim_end().to_owned();
    assert_eq!(hash, format!("sha256:{SHA256_SECRET}"), "{output:#?}");
    hash
}

/// `jwtgate run -c CONFIG --threads 2` (two serving threads: six gateways
/// may run at once in this test binary).
fn run_replica(config: &Path) -> Server {
    let mut command = jwtgate();
    command.args(["run", "-c", config.to_str().unwrap(), "--threads", "2"]);
    Server::spawn(command)
}

// ---------------------------------------------------------------------------
// HTTP/1.1 over plain sockets
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} {}",
            self.status,
            String::from_utf8_lossy(&self.body)
                .chars()
                .take(300)
                .collect::<String>()
        )
    }
}

fn io_error(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_owned())
}

/// Reads one response: a `Content-Length` body, a chunked body, or (with
/// neither) everything up to the close.
fn read_response(reader: &mut impl BufRead) -> std::io::Result<HttpResponse> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed in the response head: {head:?}"),
            ));
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io_error("no status code"))?;
    let mut response = HttpResponse {
        status,
        head,
        body: Vec::new(),
    };
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io_error("bad chunk size"))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            response.body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = length {
        response.body = vec![0; length];
        reader.read_exact(&mut response.body)?;
    } else {
        reader.read_to_end(&mut response.body)?;
    }
    Ok(response)
}

/// A request's bytes; `Host` is the address the request goes to.
fn request_bytes(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" || !body.is_empty() {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A keep-alive HTTP/1.1 connection.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            reader: BufReader::new(stream),
        })
    }

    fn exchange(&mut self, request: &[u8]) -> std::io::Result<HttpResponse> {
        self.reader.get_mut().write_all(request)?;
        read_response(&mut self.reader)
    }
}

/// One request over a fresh connection with `Connection: close`.
fn http(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    Connection::open(addr)?.exchange(&request_bytes(method, addr, path, headers, body, true))
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    http("GET", addr, path, &[], b"")
}

// ---------------------------------------------------------------------------
// The gateway's API, as a client sees it
// ---------------------------------------------------------------------------

/// The protected route: `upstream: demo`, audience `demo-resource`, scope
/// `read`.
const API_PATH: &str = "/api/orders/7";
const ISSUER: &str = "https://gw.example.com";

fn basic_auth() -> String {
    format!("Basic {}", STANDARD.encode(format!("{CLIENT}:{SECRET}")))
}

/// `POST /oauth2/token` with `client_secret_basic`.
fn token_request(addr: SocketAddr) -> std::io::Result<HttpResponse> {
    http(
        "POST",
        addr,
        "/oauth2/token",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &basic_auth()),
        ],
        b"grant_type=client_credentials",
    )
}

/// The access token of a `200` token response.
fn access_token(response: &HttpResponse) -> Option<String> {
    if response.status != 200 {
        return None;
    }
    let json: Value = serde_json::from_slice(&response.body).ok()?;
    Some(json["access_token"].as_str()?.to_owned())
}

/// A token from `addr`'s token endpoint (asserting a `200`).
fn issue(addr: SocketAddr) -> String {
    let response = token_request(addr).expect("token request");
    access_token(&response)
        .unwrap_or_else(|| panic!("token endpoint of {addr}: {}", response.describe()))
}

/// The JWS header's `kid`.
fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap_or("");
    URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|header| header["kid"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("<no kid in {header:?}>"))
}

fn api_request(addr: SocketAddr, token: &str) -> HttpResponse {
    http(
        "GET",
        addr,
        API_PATH,
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
    .unwrap_or_else(|e| panic!("GET {API_PATH} on {addr}: {e}"))
}

/// `token` is accepted at `addr`, and the demo upstream saw the injected
/// subject and scopes.
fn assert_accepted(addr: SocketAddr, token: &str, context: &str) {
    let response = api_request(addr, token);
    assert_eq!(response.status, 200, "{context}: {}", response.describe());
    assert_eq!(
        response.json(),
        json!({"client": CLIENT, "scopes": "read write"}),
        "{context}"
    );
}

/// `token` gets `401` with `error="invalid_token"` at `addr`.
fn assert_rejected(addr: SocketAddr, token: &str, context: &str) {
    let response = api_request(addr, token);
    assert_eq!(response.status, 401, "{context}: {}", response.describe());
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(r#"Bearer realm="jwtgate""#)
            && challenge.contains(r#"error="invalid_token""#),
        "{context}: WWW-Authenticate {challenge:?}"
    );
    assert_eq!(response.json()["error"], "invalid_token", "{context}");
}

fn jwks_bytes(addr: SocketAddr) -> Vec<u8> {
    let response = http_get(addr, "/.well-known/jwks.json").expect("JWKS request");
    assert_eq!(response.status, 200, "{}", response.describe());
    response.body
}

/// The kids of a JWK Set document, sorted.
fn kids(jwks: &[u8]) -> Vec<String> {
    let jwks: Value = serde_json::from_slice(jwks).expect("JWKS is JSON");
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .expect("`keys` array")
        .iter()
        .map(|k| {
            assert_eq!(k["alg"], "RS256", "{k}");
            assert_eq!(k["use"], "sig", "{k}");
            k["kid"].as_str().expect("kid").to_owned()
        })
        .collect();
    kids.sort();
    kids
}

/// Every replica serves the same JWKS bytes, listing exactly `expected`
/// (sorted); returns the document.
fn assert_one_jwks(replicas: &[Replica], expected: &[&str], context: &str) -> Vec<u8> {
    let documents: Vec<Vec<u8>> = replicas.iter().map(|r| jwks_bytes(r.public)).collect();
    for (i, document) in documents.iter().enumerate() {
        assert!(
            document == &documents[0],
            "{context}: replica {} serves another JWKS than replica 1:\n{}\n{}",
            i + 1,
            String::from_utf8_lossy(document),
            String::from_utf8_lossy(&documents[0])
        );
    }
    assert_eq!(kids(&documents[0]), expected, "{context}");
    documents[0].clone()
}

/// `jwtgate_config_reloads_total` from the admin listener: (success,
/// failure).
fn reload_counts(admin: SocketAddr) -> (u64, u64) {
    let response = http_get(admin, "/metrics").expect("GET /metrics");
    assert_eq!(response.status, 200, "{}", response.describe());
    let text = String::from_utf8_lossy(&response.body);
    let count = |result: &str| {
        let series = format!("jwtgate_config_reloads_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series:?} in /metrics"))
            .trim()
            .parse::<f64>()
            .expect("a number") as u64
    };
    (count("success"), count("failure"))
}

// ---------------------------------------------------------------------------
// Configs and replicas
// ---------------------------------------------------------------------------

/// A key entry: `(kid, "private_key" | "public_key", path as written)`.
type KeyEntry<'a> = (&'a str, &'a str, String);

fn gateway_yaml(keys: &[KeyEntry], signing_key: &str, secret_hash: &str) -> String {
    let mut yaml = String::from("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nkeys:\n");
    for (kid, source, path) in keys {
        yaml.push_str(&format!(
            "  - {{kid: {kid}, alg: RS256, {source}: {path:?}}}\n"
        ));
    }
    yaml.push_str(&token_endpoint_yaml(signing_key, secret_hash));
    yaml.push_str(&api_route_yaml());
    yaml
}

/// `routes:` with the one route `api` (demo upstream) the tests call.
fn api_route_yaml() -> String {
    format!(
        "\
routes:
  - name: api
    match: {{path_prefix: /api}}
    upstream: demo
    policies:
      - jwt: {{audience: demo-resource, issuer: \"{ISSUER}\", scopes: [read]}}
"
    )
}

/// The `token_endpoint:` section: issuer [`ISSUER`], client [`CLIENT`].
fn token_endpoint_yaml(signing_key: &str, secret_hash: &str) -> String {
    format!(
        "\
token_endpoint:
  path: /oauth2/token
  issuer: {ISSUER}
  signing_key: {signing_key}
  ttl: 300s
  audience: demo-resource
  clients:
    - id: {CLIENT}
      secret_hash: \"{secret_hash}\"
      scopes: [read, write]
"
    )
}

/// Replaces `path` the way config tools do: a temporary file beside it,
/// renamed over the original (one atomic event).
fn replace_file(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp~");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

struct Replica {
    server: Server,
    public: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
}

/// One `jwtgate run -c CONFIG` per config; all started before any is
/// waited for.
fn start_replicas(configs: &[PathBuf]) -> Vec<Replica> {
    let servers: Vec<Server> = configs.iter().map(|c| run_replica(c)).collect();
    servers
        .into_iter()
        .zip(configs)
        .map(|(mut server, config)| {
            let public = server.public_addr();
            let admin = server.admin_addr();
            assert_ne!(public, admin);
            Replica {
                server,
                public,
                admin,
                config: config.clone(),
            }
        })
        .collect()
}

/// Waits (up to [`RELOAD_WAIT`]) until `replica` has counted one more
/// successful reload than `before`, and no failure; returns how long it took.
fn wait_for_reload(replica: &mut Replica, before: (u64, u64), since: Instant) -> Duration {
    let deadline = since + RELOAD_WAIT;
    loop {
        let now = reload_counts(replica.admin);
        if now.1 != before.1 || now.0 > before.0 + 1 {
            panic!(
                "{}: expected exactly one successful reload: {before:?} → {now:?}; log:\n{}",
                replica.config.display(),
                replica.server.log_tail()
            );
        }
        if now.0 == before.0 + 1 {
            return since.elapsed();
        }
        if Instant::now() >= deadline {
            panic!(
                "{}: no reload within {RELOAD_WAIT:?} (counts {now:?}); log:\n{}",
                replica.config.display(),
                replica.server.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// One config file, one key directory, three replicas
// ---------------------------------------------------------------------------

#[test]
fn three_replicas_sharing_one_config_and_key_directory_accept_each_others_tokens() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    keygen("old", &keys);
    keygen("next", &keys);
    let hash = client_secret_hash();
    // Relative key paths: resolved beside the (one) config file.
    let both = [
        ("old", "private_key", "keys/old.pem".to_owned()),
        ("next", "public_key", "keys/next.pub.pem".to_owned()),
    ];
    let config = dir.path().join("gw.yaml");
    std::fs::write(&config, gateway_yaml(&both, "old", &hash)).unwrap();
    let mut replicas = start_replicas(&[config.clone(), config.clone(), config.clone()]);

    // 1. A token issued by any replica is accepted by every replica.
    for (i, issuer) in replicas.iter().enumerate() {
        let token = issue(issuer.public);
        assert_eq!(kid_of(&token), "old");
        for (j, verifier) in replicas.iter().enumerate() {
            let context = format!("token of replica {} at replica {}", i + 1, j + 1);
            assert_accepted(verifier.public, &token, &context);
        }
    }

    // 2. One JWK Set, byte for byte, with both keys.
    assert_one_jwks(&replicas, &["next", "old"], "start");

    // A change to the shared file reaches all three (each reloads once).
    let before: Vec<(u64, u64)> = replicas.iter().map(|r| reload_counts(r.admin)).collect();
    let written = Instant::now();
    replace_file(&config, &gateway_yaml(&both[..1], "old", &hash));
    for (replica, before) in replicas.iter_mut().zip(before) {
        wait_for_reload(replica, before, written);
    }
    assert_one_jwks(&replicas, &["old"], "after removing `next`");
    let token = issue(replicas[2].public);
    for (j, verifier) in replicas.iter().enumerate() {
        assert_accepted(verifier.public, &token, &format!("replica {}", j + 1));
    }
    eprintln!("shared config: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// A rolling key rotation under load
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Issued {
    token: String,
    kid: String,
    /// The replica (0-based) whose token endpoint issued it.
    by: usize,
}

#[derive(Default)]
struct Pool {
    /// The latest token from each replica's token endpoint.
    latest: [Option<Issued>; 3],
    /// Set once every replica signs with `new` (before step 3 starts): from
    /// then on only tokens with kid `new` may be sent.
    new_only: bool,
}

#[derive(Default)]
struct Tally {
    /// Requests to the protected route, per target replica.
    per_target: [u64; 3],
    /// Requests to the protected route, per issuing replica.
    per_issuer: [u64; 3],
    /// Requests made with a token of kid `old` / `new`.
    with_old: u64,
    with_new: u64,
    /// Of them, over a reused keep-alive connection.
    reused: u64,
    /// Token requests answered `200`, per kid (`old`, `new`).
    issued_old: u64,
    issued_new: u64,
    /// Every non-200 answer or failed exchange, described.
    failures: Vec<String>,
}

struct Shared {
    stop: AtomicBool,
    requests: AtomicU64,
    pool: Mutex<Pool>,
    tally: Mutex<Tally>,
    /// What the rollout is doing, for failure descriptions.
    phase: Mutex<String>,
}

impl Shared {
    fn set_phase(&self, phase: impl Into<String>) {
        *self.phase.lock().unwrap() = phase.into();
    }

    fn fail(&self, what: String) {
        let phase = self.phase.lock().unwrap().clone();
        let mut tally = self.tally.lock().unwrap();
        if tally.failures.len() < 50 {
            tally.failures.push(format!("[{phase}] {what}"));
        }
    }

    /// Waits until the background client has made `more` more requests.
    fn wait_for_requests(&self, more: u64) {
        let target = self.requests.load(Ordering::SeqCst) + more;
        let deadline = Instant::now() + TRAFFIC_WAIT;
        while self.requests.load(Ordering::SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "the background client made no progress in {TRAFFIC_WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// xorshift64*: a random replica per request, without a dependency.
struct Random(u64);

impl Random {
    fn new() -> Random {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Random(u64::from(nanos) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Every [`TOKEN_REFRESH`], a token from the next replica's token endpoint
/// (round robin) replaces that replica's entry in the pool.
fn refresher(shared: Arc<Shared>, publics: Vec<SocketAddr>) {
    let mut n = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let by = n % publics.len();
        n += 1;
        let new_only = shared.pool.lock().unwrap().new_only;
        match token_request(publics[by]) {
            Ok(response) => match access_token(&response) {
                Some(token) => {
                    let kid = kid_of(&token);
                    let mut tally = shared.tally.lock().unwrap();
                    match kid.as_str() {
                        "old" => tally.issued_old += 1,
                        "new" => tally.issued_new += 1,
                        _ => {}
                    }
                    drop(tally);
                    if new_only && kid != "new" {
                        shared.fail(format!(
                            "replica {} issued a token with kid {kid} after every replica \
                             switched to `new`",
                            by + 1
                        ));
                    } else {
                        shared.pool.lock().unwrap().latest[by] = Some(Issued { token, kid, by });
                    }
                }
                None => shared.fail(format!(
                    "token endpoint of replica {}: {}",
                    by + 1,
                    response.describe()
                )),
            },
            Err(e) => shared.fail(format!("token endpoint of replica {}: {e}", by + 1)),
        }
        std::thread::sleep(TOKEN_REFRESH);
    }
}

/// Requests to the protected route, round robin over the replicas, each
/// with the latest token of a random replica. Three requests in four reuse
/// the target's keep-alive connection; the fourth opens a new one.
fn client(shared: Arc<Shared>, publics: Vec<SocketAddr>) {
    let mut random = Random::new();
    let mut connections: Vec<Option<Connection>> = publics.iter().map(|_| None).collect();
    let mut n: usize = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let issued = {
            let pool = shared.pool.lock().unwrap();
            let usable: Vec<&Issued> = pool
                .latest
                .iter()
                .flatten()
                .filter(|t| !pool.new_only || t.kid == "new")
                .collect();
            if usable.is_empty() {
                None
            } else {
                Some(usable[random.below(usable.len())].clone())
            }
        };
        let Some(issued) = issued else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let target = n % publics.len();
        let fresh = n % 4 == 3;
        n += 1;
        let addr = publics[target];
        let authorization = format!("Bearer {}", issued.token);
        let request = request_bytes(
            "GET",
            addr,
            API_PATH,
            &[("Authorization", &authorization)],
            b"",
            fresh,
        );
        let reused = !fresh && connections[target].is_some();
        let result = if fresh {
            Connection::open(addr).and_then(|mut c| c.exchange(&request))
        } else {
            let connection = match connections[target].take() {
                Some(connection) => Ok(connection),
                None => Connection::open(addr),
            };
            connection.and_then(|mut c| {
                let response = c.exchange(&request)?;
                let closes = response
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                if !closes {
                    connections[target] = Some(c);
                }
                Ok(response)
            })
        };
        let what = || {
            format!(
                "replica {} with a kid-{} token from replica {}{}",
                target + 1,
                issued.kid,
                issued.by + 1,
                if reused { " (reused connection)" } else { "" }
            )
        };
        match result {
            Ok(response) if response.status == 200 => {}
            Ok(response) => shared.fail(format!("{}: {}", what(), response.describe())),
            Err(e) => shared.fail(format!("{}: {e}", what())),
        }
        {
            let mut tally = shared.tally.lock().unwrap();
            tally.per_target[target] += 1;
            tally.per_issuer[issued.by] += 1;
            if issued.kid == "new" {
                tally.with_new += 1;
            } else {
                tally.with_old += 1;
            }
            tally.reused += u64::from(reused);
        }
        shared.requests.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Stops and joins the background threads when dropped (a failed
/// assertion included), before the replicas are killed.
struct Background {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Background {
    fn start(publics: Vec<SocketAddr>) -> Background {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            pool: Mutex::new(Pool::default()),
            tally: Mutex::new(Tally::default()),
            phase: Mutex::new("before the rotation".to_owned()),
        });
        let threads = vec![
            std::thread::spawn({
                let (shared, publics) = (shared.clone(), publics.clone());
                move || refresher(shared, publics)
            }),
            std::thread::spawn({
                let shared = shared.clone();
                move || client(shared, publics)
            }),
        ];
        Background { shared, threads }
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let tally = self.shared.tally.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!(
                "background exchanges that failed before the panic ({} of {}):\n{}",
                tally.failures.len(),
                self.shared.requests.load(Ordering::SeqCst),
                tally.failures.join("\n")
            );
        }
    }
}

/// Applies one rotation step to each replica in turn: writes its config,
/// waits for its reload (≤ [`RELOAD_WAIT`]) and until `visible` holds for
/// it, runs `then`, and lets the background traffic run against the mixed
/// fleet before the next replica. Returns each replica's reload latency.
fn roll(
    step: &str,
    replicas: &mut [Replica],
    yaml: &str,
    shared: &Shared,
    visible: impl Fn(&Replica) -> bool,
    mut then: impl FnMut(usize, &[Replica]),
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for i in 0..replicas.len() {
        shared.set_phase(format!("{step} on replica {}", i + 1));
        let replica = &mut replicas[i];
        let before = reload_counts(replica.admin);
        let written = Instant::now();
        replace_file(&replica.config, yaml);
        wait_for_reload(replica, before, written);
        while !visible(replica) {
            assert!(
                written.elapsed() < RELOAD_WAIT,
                "{step}: replica {} reloaded but the change is not visible; log:\n{}",
                i + 1,
                replica.server.log_tail()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        latencies.push(written.elapsed());
        then(i, replicas);
        // Replicas 1..=i run the new step, the others the previous one.
        shared.wait_for_requests(20);
    }
    shared.set_phase(format!("after {step}"));
    latencies
}

#[test]
fn a_key_rotation_rolled_across_three_replicas_one_at_a_time_refuses_no_request() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // One key directory for all; one config directory per replica, so that
    // each can be updated on its own, as in a rolling update. The configs
    // name the keys by absolute path.
    let keys = dir.path().join("keys");
    keygen("old", &keys);
    let hash = client_secret_hash();
    let key = |kid: &str, source: &str| {
        let file = if source == "private_key" {
            format!("{kid}.pem")
        } else {
            format!("{kid}.pub.pem")
        };
        let path = keys.join(file).to_str().unwrap().to_owned();
        assert!(Path::new(&path).is_absolute());
        path
    };
    let old_signing = ("old", "private_key", key("old", "private_key"));
    let old_verify_only = ("old", "public_key", key("old", "public_key"));
    let new_signing = ("new", "private_key", key("new", "private_key"));
    let new_verify_only = ("new", "public_key", key("new", "public_key"));

    let initial = gateway_yaml(std::slice::from_ref(&old_signing), "old", &hash);
    let configs: Vec<PathBuf> = (1..=3)
        .map(|i| {
            let replica_dir = dir.path().join(format!("replica-{i}"));
            std::fs::create_dir(&replica_dir).unwrap();
            let config = replica_dir.join("gw.yaml");
            std::fs::write(&config, &initial).unwrap();
            config
        })
        .collect();
    let mut replicas = start_replicas(&configs);
    let publics: Vec<SocketAddr> = replicas.iter().map(|r| r.public).collect();
    let startup = started.elapsed();

    // Before the rotation: one fleet, one key.
    for (i, issuer) in replicas.iter().enumerate() {
        let token = issue(issuer.public);
        for (j, verifier) in replicas.iter().enumerate() {
            let context = format!("token of replica {} at replica {}", i + 1, j + 1);
            assert_accepted(verifier.public, &token, &context);
        }
    }
    assert_one_jwks(&replicas, &["old"], "before the rotation");
    // Issued before step 2 (signed by `old`); refused once `old` is gone.
    let old_token = issue(replicas[0].public);
    assert_eq!(kid_of(&old_token), "old");

    let mut background = Background::start(publics.clone());
    let shared = background.shared.clone();
    let deadline = Instant::now() + TRAFFIC_WAIT;
    while shared
        .pool
        .lock()
        .unwrap()
        .latest
        .iter()
        .any(Option::is_none)
    {
        assert!(Instant::now() < deadline, "no token from every replica");
        std::thread::sleep(Duration::from_millis(10));
    }
    shared.wait_for_requests(30);

    // The new key is made while the fleet serves: a file no config names
    // yet changes nothing (the reload counts below stay exact).
    keygen("new", &keys);
    shared.wait_for_requests(10);

    // Step 1: publish `new`, verify only; `old` still signs.
    let step1 = gateway_yaml(&[old_signing.clone(), new_verify_only], "old", &hash);
    let latencies1 = roll(
        "step 1 (publish new, verify-only)",
        &mut replicas,
        &step1,
        &shared,
        |r| kids(&jwks_bytes(r.public)) == ["new", "old"],
        |i, replicas| assert_eq!(kid_of(&issue(replicas[i].public)), "old"),
    );
    assert_one_jwks(&replicas, &["new", "old"], "after step 1");

    // Step 2: sign with `new`; `old` stays, verify only. Only now, with
    // `new` known to every replica, may any replica sign with it.
    let step2 = gateway_yaml(&[old_verify_only, new_signing.clone()], "new", &hash);
    let latencies2 = roll(
        "step 2 (sign with new)",
        &mut replicas,
        &step2,
        &shared,
        |r| kid_of(&issue(r.public)) == "new",
        |_, _| {},
    );
    assert_one_jwks(&replicas, &["new", "old"], "after step 2");

    // Every replica signs with `new` now: a freshly issued token has kid
    // `new` wherever it comes from. In a real rollout step 3 waits the
    // longest token lifetime (ttl + leeway) here; this test instead stops
    // sending tokens signed by `old` before step 3 starts: the pool is
    // refilled with fresh `new` tokens and the client may use no other.
    let fresh: Vec<Issued> = publics
        .iter()
        .enumerate()
        .map(|(by, &addr)| {
            let token = issue(addr);
            let kid = kid_of(&token);
            assert_eq!(
                kid,
                "new",
                "a token issued by replica {} after step 2",
                by + 1
            );
            Issued { token, kid, by }
        })
        .collect();
    {
        let mut pool = shared.pool.lock().unwrap();
        for issued in fresh {
            let by = issued.by;
            pool.latest[by] = Some(issued);
        }
        pool.new_only = true;
    }
    // The request in flight (if it took an `old` token) has finished.
    shared.wait_for_requests(2);
    // The safe order kept `old` verifying until now, on every replica.
    for (j, replica) in replicas.iter().enumerate() {
        assert_accepted(
            replica.public,
            &old_token,
            &format!("old token at replica {} before step 3", j + 1),
        );
    }
    let with_old_before_step3 = shared.tally.lock().unwrap().with_old;

    // Step 3: remove `old`, one replica at a time. While it rolls, the
    // old token is refused by the replicas done and accepted by the rest.
    let step3 = gateway_yaml(&[new_signing], "new", &hash);
    let latencies3 = roll(
        "step 3 (remove old)",
        &mut replicas,
        &step3,
        &shared,
        |r| kids(&jwks_bytes(r.public)) == ["new"],
        |i, replicas| {
            for (j, replica) in replicas.iter().enumerate() {
                let context = format!(
                    "old token at replica {} after step 3 on replica {}",
                    j + 1,
                    i + 1
                );
                if j <= i {
                    assert_rejected(replica.public, &old_token, &context);
                } else {
                    assert_accepted(replica.public, &old_token, &context);
                }
            }
        },
    );
    shared.wait_for_requests(30);
    background.stop();

    let tally = shared.tally.lock().unwrap();
    let total = shared.requests.load(Ordering::SeqCst);
    eprintln!(
        "rolling rotation: {total} requests (per target {:?}, per issuer {:?}, kid old {}, \
         kid new {}, over reused connections {}), tokens issued in the background: old {}, \
         new {}; reload latencies step 1 {latencies1:?}, step 2 {latencies2:?}, step 3 \
         {latencies3:?}; startup {startup:?}, total {:?}",
        tally.per_target,
        tally.per_issuer,
        tally.with_old,
        tally.with_new,
        tally.reused,
        tally.issued_old,
        tally.issued_new,
        started.elapsed()
    );
    assert!(
        tally.failures.is_empty(),
        "{} of {total} exchanges failed during the rollout:\n{}",
        tally.failures.len(),
        tally.failures.join("\n")
    );
    assert!(total >= 200, "only {total} requests");
    for i in 0..3 {
        assert!(tally.per_target[i] > 0, "no request to replica {}", i + 1);
        assert!(
            tally.per_issuer[i] > 0,
            "no token of replica {} used",
            i + 1
        );
    }
    assert!(tally.issued_old > 0 && tally.issued_new > 0);
    assert!(tally.with_old > 0 && tally.with_new > 0);
    assert_eq!(
        tally.with_old, with_old_before_step3,
        "no `old` token was sent once step 3 could start"
    );
    drop(tally);

    // 4. After step 3 a token signed by `old` is refused everywhere, and
    //    the fleet serves one JWKS with `new` only.
    for (j, replica) in replicas.iter().enumerate() {
        assert_rejected(
            replica.public,
            &old_token,
            &format!("old token at replica {} after the rotation", j + 1),
        );
        assert_accepted(
            replica.public,
            &issue(publics[(j + 1) % 3]),
            &format!("new token at replica {}", j + 1),
        );
    }
    assert_one_jwks(&replicas, &["new"], "after step 3");
    // Three steps, three reloads per replica: the key files written beside
    // the running fleet and the temporary config files caused none.
    for (j, replica) in replicas.iter().enumerate() {
        assert_eq!(reload_counts(replica.admin), (3, 0), "replica {}", j + 1);
    }
}

/// The value of one sample on an admin listener's `/metrics`.
fn metric_value(admin: SocketAddr, sample: &str) -> Option<f64> {
    let response = http_get(admin, "/metrics").expect("GET /metrics");
    let text = String::from_utf8_lossy(&response.body).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// One central jwtgate issues tokens (token endpoint only); another protects
/// a route with `jwks:` pointing at the first's `/.well-known/jwks.json`.
/// The second accepts the first's tokens, and after a signing-key rotation
/// on the first it accepts the new tokens without a restart — with exactly
/// one extra fetch of the issuer's key set.
#[test]
fn a_verify_only_gateway_follows_the_issuing_gateway_through_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    keygen("k1", &keys);
    keygen("k2", &keys);
    let secret_hash = client_secret_hash();
    let issuer_yaml = |keys: &str, signing_key: &str| {
        format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nkeys:\n{keys}{}",
            token_endpoint_yaml(signing_key, &secret_hash)
        )
    };
    let k1 = "  - {kid: k1, alg: RS256, private_key: keys/k1.pem}\n";
    let k2 = "  - {kid: k2, alg: RS256, private_key: keys/k2.pem}\n";
    let issuer_config = dir.path().join("issuer.yaml");
    std::fs::write(&issuer_config, issuer_yaml(k1, "k1")).unwrap();
    let mut issuer = run_replica(&issuer_config);
    let issuer_addr = issuer.public_addr();
    let _ = issuer.admin_addr();

    let verifier_config = dir.path().join("verifier.yaml");
    std::fs::write(
        &verifier_config,
        format!(
            "listen: 127.0.0.1:0
admin: 127.0.0.1:0
keys: []
jwks:
  - url: http://{issuer_addr}/.well-known/jwks.json
    issuer: {ISSUER}
    refresh: 10m
{}",
            api_route_yaml()
        ),
    )
    .unwrap();
    let mut verifier = run_replica(&verifier_config);
    let verifier_addr = verifier.public_addr();
    let verifier_admin = verifier.admin_addr();
    let fetches = |result: &str| {
        metric_value(
            verifier_admin,
            &format!("jwtgate_jwks_refreshes_total{{issuer=\"{ISSUER}\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(fetches("success"), Some(1.0), "fetched before serving");
    let ready = http_get(verifier_admin, "/readyz").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.describe());

    let old = issue(issuer_addr);
    assert_eq!(kid_of(&old), "k1");
    assert_accepted(verifier_addr, &old, "a token of the issuing gateway");

    // The issuer rotates: k2 published and signing in one step (the unsafe
    // order for replicas sharing keys, but the verifier must cope: it
    // refreshes on the unknown kid).
    replace_file(&issuer_config, &issuer_yaml(&format!("{k1}{k2}"), "k2"));
    let deadline = Instant::now() + RELOAD_WAIT;
    let new = loop {
        let token = issue(issuer_addr);
        if kid_of(&token) == "k2" {
            break token;
        }
        assert!(Instant::now() < deadline, "the issuer did not rotate");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_accepted(verifier_addr, &new, "a token signed after the rotation");
    assert_eq!(fetches("success"), Some(2.0), "exactly one extra fetch");
    assert_accepted(verifier_addr, &old, "k1 is still published");
    assert_eq!(fetches("failure"), Some(0.0));
}
