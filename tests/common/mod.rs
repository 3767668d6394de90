//! Shared test harness: keys minted once per test binary, a recording
//! upstream on port 0, an in-process gateway from a YAML string, an HTTP
//! client and a raw-socket client for requests hyper would refuse to send.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jwtgate::config::ConfigSource;
use jwtgate::keys::{local, Algorithm};
use jwtgate::server::RunningGateway;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every bounded wait in the tests.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `condition` until it holds, for at most `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A private/public PEM pair.
#[derive(Clone)]
pub struct KeyPair {
    pub private_pem: String,
    pub public_pem: String,
}

/// Keys generated once per test binary (RSA generation is the slow part).
pub struct TestKeys {
    /// kid `gw`: the gateway's signing key in most configs.
    pub rsa: KeyPair,
    /// An RSA key the gateway does not hold.
    pub rogue_rsa: KeyPair,
    /// kid `ec`: a verify-only ES256 key.
    pub ec: KeyPair,
}

pub fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| TestKeys {
        rsa: generate(Algorithm::Rs256),
        rogue_rsa: generate(Algorithm::Rs256),
        ec: generate(Algorithm::Es256),
    })
}

/// A fresh key pair of `alg`, as `jwtgate keygen` writes it.
pub fn generate(alg: Algorithm) -> KeyPair {
    let dir = tempfile::tempdir().unwrap();
    let out = local::keygen(alg, "k", dir.path()).unwrap();
    KeyPair {
        private_pem: std::fs::read_to_string(out.private_path).unwrap(),
        public_pem: std::fs::read_to_string(out.public_path).unwrap(),
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Mints a token with the independent `jsonwebtoken` implementation.
pub fn mint(
    pair: &KeyPair,
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
    claims: &Value,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    mint_with_header(pair, header, claims)
}

/// Mints a token with any header (its `alg` picks how the PEM is read).
pub fn mint_with_header(pair: &KeyPair, header: jsonwebtoken::Header, claims: &Value) -> String {
    let key = match header.alg {
        jsonwebtoken::Algorithm::ES256 => {
            jsonwebtoken::EncodingKey::from_ec_pem(pair.private_pem.as_bytes())
        }
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(pair.private_pem.as_bytes()),
    }
    .unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A token from the `gw` key with the given claims.
pub fn gw_token(claims: &Value) -> String {
    mint(
        &keys().rsa,
        jsonwebtoken::Algorithm::RS256,
        Some("gw"),
        claims,
    )
}

/// Standard valid claims for audience `orders`, overridable.
pub fn claims(extra: Value) -> Value {
    let mut base = serde_json::json!({
        "sub": "alice",
        "aud": "orders",
        "scopes": "read write",
        "iat": now(),
        "exp": now() + 300,
        "nbf": now() - 10,
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut base, extra) {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(&k);
            } else {
                base.insert(k, v);
            }
        }
    }
    base
}

/// A hand-built token: any header and payload JSON, any signature bytes.
pub fn raw_token(header: &str, payload: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

pub fn decode_segment(token: &str, index: usize) -> Value {
    let segment = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

/// A request the upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An upstream on 127.0.0.1:0 that records every request and answers 200
/// `{"upstream":"ok"}` with `x-upstream: yes` (and hop-by-hop headers to
/// check they are removed). `/slow` waits 3 s before answering.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let slow = parts.uri.path() == "/slow";
                            record.lock().unwrap().push(Recorded {
                                method: parts.method,
                                target: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            });
                            if slow {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                            }
                            let response = Response::builder()
                                .header("content-type", "application/json")
                                .header("x-upstream", "yes")
                                .header("keep-alive", "timeout=5")
                                .header("connection", "x-upstream-private")
                                .header("x-upstream-private", "secret")
                                .body(Full::new(Bytes::from_static(br#"{"upstream":"ok"}"#)))
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// An upstream that accepts connections and closes them at once (reset).
pub async fn resetting_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    addr
}

/// An address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A gateway serving a config written to a temp dir beside the test keys
/// (`keys/gw.pem`, `keys/gw.pub.pem`, `keys/ec.pub.pem`).
pub struct Gateway {
    pub running: RunningGateway,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Tests run in parallel: a config that does not place the admin
    /// listener gets it on port 0 instead of the fixed default 9901.
    pub async fn start(yaml: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        write_keys(dir.path());
        let path = dir.path().join("gateway.yaml");
        let yaml = if yaml.lines().any(|l| l.starts_with("admin:")) {
            yaml.to_owned()
        } else {
            format!("admin: 127.0.0.1:0\n{yaml}")
        };
        std::fs::write(&path, yaml).unwrap();
        let source = ConfigSource::read(&path).unwrap();
        let running = RunningGateway::start(source).await.unwrap();
        Gateway { running, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.running.addr, path)
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.running.admin_addr, path)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }
}

pub fn write_keys(dir: &Path) {
    let keys_dir = dir.join("keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    std::fs::write(keys_dir.join("gw.pem"), &keys().rsa.private_pem).unwrap();
    std::fs::write(keys_dir.join("gw.pub.pem"), &keys().rsa.public_pem).unwrap();
    std::fs::write(keys_dir.join("ec.pub.pem"), &keys().ec.public_pem).unwrap();
}

/// A response, fully read.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts a gateway-made JSON error with this status and `error`.
    pub fn assert_error(&self, status: u16, error: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        let json = self.json();
        assert_eq!(json["error"], error, "{json}");
        assert!(
            json["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{json}"
        );
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends one request with a deadline.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, client().request(request))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("body timed out")
        .expect("body failed")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    send("GET", url, headers, b"").await
}

/// Writes raw bytes and reads the response head and a content-length body
/// (for requests a client library will not produce).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buffer = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some((answer, _)) = parse_response(&buffer) {
                return answer;
            }
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return parse_response(&buffer)
                    .map(|(answer, _)| answer)
                    .unwrap_or_else(|| {
                        panic!(
                            "incomplete response: {:?}",
                            String::from_utf8_lossy(&buffer)
                        )
                    });
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("raw request timed out")
}

/// The first whole response in `buffer` (a content-length body, or none)
/// and how many bytes it took.
pub fn parse_response(buffer: &[u8]) -> Option<(Answer, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = response.parse(buffer).ok()? else {
        return None;
    };
    let mut map = HeaderMap::new();
    let mut length = 0;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value).ok()?.parse().ok()?;
        }
        map.append(
            http::HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            http::HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    let body = buffer.get(head_len..head_len + length)?;
    let answer = Answer {
        status: StatusCode::from_u16(response.code?).ok()?,
        headers: map,
        body: Bytes::copy_from_slice(body),
    };
    Some((answer, head_len + length))
}

/// Headers of the last request the upstream saw, as name → all values.
pub fn header_values(recorded: &Recorded, name: &str) -> Vec<String> {
    recorded
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// Log lines captured from the gateway: a JSON `tracing` subscriber for the
/// test's thread (in-process gateways run on the test's current-thread
/// runtime) writing into memory.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// Captures everything `filter` (an `EnvFilter` directive) lets through
    /// until the guard is dropped.
    pub fn install(&self, filter: &str) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Every line, parsed.
    pub fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The access log's lines (target `jwtgate::access`).
    pub fn access_lines(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|line| line["target"] == "jwtgate::access")
            .collect()
    }
}
