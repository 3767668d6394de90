//! TLS on both sides: the HTTPS listener (HTTP/1.1 and HTTP/2 by ALPN),
//! mTLS, certificate reload, https upstreams with a private CA, and curl
//! replaying the tutorial. Every certificate is made at run time (rcgen):
//! ECDSA P-256 for most, RSA and Ed25519 in the key-type test.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jwtgate::config::ConfigSource;
use jwtgate::keys::remote::JwksRegistry;
use jwtgate::reload::Trigger;
use jwtgate::runtime::GeneratedKeys;
use jwtgate::snapshot::Snapshot;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A CA made at run time.
struct Ca {
    pem: String,
    issuer: Issuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate and its key, as PEM.
#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Leaf {
    fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .unwrap()
            .to_vec()
    }
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self, cn: &str, key: rcgen::KeyPair) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, key)
    }

    /// A client certificate with this subject.
    fn client(&self, cn: &str, org: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        // Written O then CN: RFC 4514 reads it back CN first.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, rcgen::KeyPair::generate().unwrap())
    }

    fn sign(&self, params: CertificateParams, key: rcgen::KeyPair) -> Leaf {
        Leaf {
            cert_pem: params.signed_by(&key, &self.issuer).unwrap().pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn p256() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

/// The test RSA key (made once per binary by `common`), for a certificate.
fn rsa() -> rcgen::KeyPair {
    rcgen::KeyPair::from_pem(&keys().rsa.private_pem).unwrap()
}

fn ed25519() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap()
}

/// Writes `tls/cert.pem` and `tls/key.pem` under `dir` (atomically each).
fn write_leaf(dir: &Path, leaf: &Leaf) {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    replace(&tls.join("key.pem"), &leaf.key_pem);
    replace(&tls.join("cert.pem"), &leaf.cert_pem);
}

fn replace(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp~");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

// ---------------------------------------------------------------------------
// Gateway and client
// ---------------------------------------------------------------------------

const TLS_KEYS: &str = "tls: {cert: tls/cert.pem, key: tls/key.pem}\n";

/// A gateway on 127.0.0.1:0 with `tls:` and the `gw` signing key, its
/// certificate written before start; `files` are written beside the config.
async fn https_gateway(leaf: &Leaf, files: &[(&str, &str)], rest: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    write_leaf(dir.path(), leaf);
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    write_keys(dir.path());
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{rest}\
         keys:\n  - {{kid: gw, alg: RS256, private_key: keys/gw.pem}}\n"
    );
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let running = jwtgate::server::RunningGateway::start(ConfigSource::read(&path).unwrap())
        .await
        .unwrap();
    Gateway { running, dir }
}

/// The SPEC §1 demo, with a file key instead of a generated one.
const TUTORIAL: &str = "token_endpoint:
  path: /demo/oauth2/token
  signing_key: gw
  audience: demo-resource
  any_client: true
  default_scopes: [read, write]
routes:
  - name: demo
    match: {path_prefix: /demo/resource}
    upstream: demo
    policies: [{jwt: {audience: demo-resource, scopes: [read]}}]
";

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One TLS connection to the gateway, kept open across requests.
struct TlsClient {
    sender: Sender,
    authority: String,
    /// The certificate the gateway presented (DER).
    leaf: Vec<u8>,
}

fn client_config(ca_pem: &str, identity: Option<&Leaf>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    client_config_with(rustls::DEFAULT_VERSIONS, ca_pem, identity, alpn)
}

fn client_config_with(
    versions: &[&'static rustls::SupportedProtocolVersion],
    ca_pem: &str,
    identity: Option<&Leaf>,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

impl TlsClient {
    /// Connects to `localhost` at `addr`'s port, offering `alpn`; HTTP/2
    /// when the server chose `h2`.
    async fn connect(
        addr: SocketAddr,
        ca_pem: &str,
        identity: Option<&Leaf>,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsClient> {
        let connector = TlsConnector::from(Arc::new(client_config(ca_pem, identity, alpn)));
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let stream = tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
            .await
            .expect("handshake timed out")?;
        let (_, connection) = stream.get_ref();
        let leaf = connection.peer_certificates().unwrap()[0].to_vec();
        let h2 = connection.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        let sender = if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(TlsClient {
            sender,
            authority: format!("localhost:{}", addr.port()),
            leaf,
        })
    }

    async fn h1(addr: SocketAddr, ca_pem: &str) -> TlsClient {
        TlsClient::connect(addr, ca_pem, None, &[b"http/1.1"])
            .await
            .unwrap()
    }

    async fn h2(addr: SocketAddr, ca_pem: &str) -> TlsClient {
        TlsClient::connect(addr, ca_pem, None, &[b"h2", b"http/1.1"])
            .await
            .unwrap()
    }

    /// Sends one request; the answer and the response's HTTP version.
    async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(Answer, Version), hyper::Error> {
        let mut builder = Request::builder().method(method);
        builder = match self.sender {
            // Origin form and a Host header for HTTP/1.1; `:authority` for h2.
            Sender::H1(_) => builder.uri(path).header("host", &self.authority),
            Sender::H2(_) => builder.uri(format!("https://{}{path}", self.authority)),
        };
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap();
        let sent = async {
            match &mut self.sender {
                Sender::H1(sender) => {
                    sender.ready().await?;
                    sender.send_request(request).await
                }
                Sender::H2(sender) => {
                    sender.ready().await?;
                    sender.send_request(request).await
                }
            }
        };
        let response = tokio::time::timeout(DEADLINE, sent)
            .await
            .expect("request timed out")?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(DEADLINE, body.collect())
            .await
            .expect("body timed out")?
            .to_bytes();
        Ok((
            Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            },
            parts.version,
        ))
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (Answer, Version) {
        self.try_send(method, path, headers, body)
            .await
            .expect("request failed")
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send("GET", path, headers, b"").await.0
    }
}

/// SPEC §1 over one connection: token, then the resource with it.
async fn replay_tutorial(client: &mut TlsClient, expected: Version) {
    let (token, version) = client
        .send(
            "POST",
            "/demo/oauth2/token",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                // my-client:my-secret
                ("authorization", "Basic bXktY2xpZW50Om15LXNlY3JldA=="),
            ],
            b"grant_type=client_credentials",
        )
        .await;
    assert_eq!(version, expected);
    assert_eq!(token.status, 200, "{:?}", token.body);
    assert_eq!(token.header("content-type"), Some("application/json"));
    assert_eq!(token.header("cache-control"), Some("no-store"));
    let json = token.json();
    assert_eq!(json["token_type"], "bearer");
    assert_eq!(json["expires_in"], 300);
    assert_eq!(json["scope"], "read write");
    let access_token = json["access_token"].as_str().unwrap();

    let (resource, version) = client
        .send(
            "GET",
            "/demo/resource",
            &[("authorization", &format!("Bearer {access_token}"))],
            b"",
        )
        .await;
    assert_eq!(version, expected);
    assert_eq!(resource.status, 200);
    assert_eq!(
        resource.json(),
        json!({"client": "my-client", "scopes": "read write"})
    );
}

/// Admin `/metrics`, as text.
async fn metrics(gateway: &Gateway) -> String {
    let answer = get(&gateway.admin_url("/metrics"), &[]).await;
    assert_eq!(answer.status, 200);
    String::from_utf8(answer.body.to_vec()).unwrap()
}

// ---------------------------------------------------------------------------
// The listener
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_tutorial_runs_over_https_with_http1_and_with_http2() {
    let ca = Ca::new("listener CA");
    let leaf = ca.server("gateway", p256());
    let gateway = https_gateway(&leaf, &[], &format!("{TLS_KEYS}{TUTORIAL}")).await;

    let mut http1 = TlsClient::h1(gateway.addr(), &ca.pem).await;
    assert_eq!(http1.leaf, leaf.der());
    replay_tutorial(&mut http1, Version::HTTP_11).await;

    let mut http2 = TlsClient::h2(gateway.addr(), &ca.pem).await;
    assert!(matches!(http2.sender, Sender::H2(_)), "ALPN chose h2");
    replay_tutorial(&mut http2, Version::HTTP_2).await;
    // Several requests on one HTTP/2 connection, concurrently.
    let Sender::H2(sender) = &http2.sender else {
        unreachable!()
    };
    let mut answers = Vec::new();
    for _ in 0..5 {
        let mut sender = sender.clone();
        let uri = format!("https://{}/nowhere", http2.authority);
        answers.push(tokio::spawn(async move {
            let request = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
            sender.send_request(request).await.unwrap().status()
        }));
    }
    for answer in answers {
        assert_eq!(answer.await.unwrap(), StatusCode::NOT_FOUND);
    }

    // Plain HTTP on a TLS listener gets no HTTP answer (no downgrade).
    let reply =
        read_until_closed(gateway.addr(), b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(
        !reply.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
}

/// Writes `bytes`, then reads until the server closes (within the deadline).
async fn read_until_closed(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut reply))
        .await
        .expect("the server did not close the connection")
        .ok();
    reply
}

#[tokio::test]
async fn http2_requests_are_routed_by_authority_and_keep_every_limit() {
    let ca = Ca::new("listener CA");
    let leaf = ca.server("gateway", p256());
    let upstream = Upstream::start().await;
    let gateway = https_gateway(
        &leaf,
        &[],
        &format!(
            "{TLS_KEYS}limits: {{max_header_bytes: 2048, max_body_bytes: 16}}
routes:
  - name: other-host
    match: {{path_prefix: /, host: other.example}}
    upstream: {0}
  - name: orders
    match: {{path_prefix: /orders, host: localhost}}
    upstream: {0}
    policies: [{{jwt: {{audience: orders, scopes: [read]}}}}]
",
            upstream.url()
        ),
    )
    .await;
    let token = gw_token(&claims(json!({})));
    let bearer = format!("Bearer {token}");
    let mut client = TlsClient::h2(gateway.addr(), &ca.pem).await;

    let (answer, version) = client
        .send(
            "GET",
            "/orders/7?x=1",
            &[("authorization", &bearer), ("x-auth-subject", "mallory")],
            b"",
        )
        .await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body, r#"{"upstream":"ok"}"#);
    let seen = upstream.requests().pop().unwrap();
    assert_eq!(seen.target, "/orders/7?x=1");
    assert_eq!(header_values(&seen, "x-auth-subject"), ["alice"]);
    assert_eq!(header_values(&seen, "x-forwarded-proto"), ["https"]);
    let authority = format!("localhost:{}", gateway.addr().port());
    assert_eq!(
        header_values(&seen, "x-forwarded-host"),
        [authority.as_str()]
    );
    assert_eq!(header_values(&seen, "host"), [upstream.addr.to_string()]);
    assert!(header_values(&seen, "authorization").is_empty());

    // Limits and checks hold over HTTP/2.
    client
        .get("/orders/%2e%2e/admin", &[("authorization", &bearer)])
        .await
        .assert_error(400, "invalid_request");
    client
        .get("/orders/1", &[])
        .await
        .assert_error(401, "missing_token");
    let big = "x".repeat(2100);
    client
        .get("/orders/1", &[("authorization", &bearer), ("x-big", &big)])
        .await
        .assert_error(431, "request_header_fields_too_large");
    let (answer, _) = client
        .send(
            "POST",
            "/orders/1",
            &[("authorization", &bearer), ("content-length", "17")],
            &[b'a'; 17],
        )
        .await;
    answer.assert_error(413, "payload_too_large");
    let (answer, _) = client
        .send(
            "POST",
            "/orders/1",
            &[("authorization", &bearer)],
            &[b'a'; 40],
        )
        .await;
    answer.assert_error(413, "payload_too_large");
    // The connection survived all of that.
    let (answer, _) = client
        .send("GET", "/orders/8", &[("authorization", &bearer)], b"")
        .await;
    assert_eq!(answer.status, 200);
}

/// One HTTP/2 frame: (type, flags, stream id, payload).
type Frame = (u8, u8, u32, Vec<u8>);

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    bytes.extend([kind, flags]);
    bytes.extend(stream.to_be_bytes());
    bytes.extend(payload);
    bytes
}

/// Reads frames until `stop` says so, the peer closes, or the deadline.
async fn read_frames<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    stop: impl Fn(&Frame) -> bool,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                return;
            }
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; length];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let frame = (head[3], head[4], id, payload);
            let done = stop(&frame);
            frames.push(frame);
            if done {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DEADLINE, read).await;
    frames
}

/// Raw HTTP/2 over TLS: the limits the gateway advertises, and a flood of
/// streams opened and reset at once (rapid reset, CVE-2023-44487) ends in
/// a GOAWAY `ENHANCE_YOUR_CALM` instead of unbounded work.
#[tokio::test]
async fn http2_advertises_its_limits_and_stops_a_rapid_reset_flood() {
    use tokio::io::AsyncWriteExt;
    let ca = Ca::new("listener CA");
    let gateway = https_gateway(
        &ca.server("gateway", p256()),
        &[],
        &format!("{TLS_KEYS}limits: {{h2_max_concurrent_streams: 7, max_header_bytes: 4096}}\n"),
    )
    .await;
    let config = client_config(&ca.pem, None, &[b"h2"]);
    let tcp = TcpStream::connect(gateway.addr()).await.unwrap();
    let mut stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    stream.write_all(&hello).await.unwrap();

    let frames = read_frames(&mut stream, |f| f.0 == 0x4 && f.1 & 0x1 == 0).await;
    let (_, _, _, settings) = frames.last().expect("no SETTINGS from the server");
    let setting = |id: u16| {
        settings
            .chunks(6)
            .find(|s| u16::from_be_bytes([s[0], s[1]]) == id)
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
    };
    assert_eq!(setting(0x3), Some(7), "SETTINGS_MAX_CONCURRENT_STREAMS");
    assert_eq!(setting(0x6), Some(8192), "SETTINGS_MAX_HEADER_LIST_SIZE");

    // HEADERS (GET https /, END_STREAM|END_HEADERS) then RST_STREAM(CANCEL),
    // 1000 times, in one write.
    let mut flood = frame(0x4, 0x1, 0, &[]); // ack the server's SETTINGS
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        flood.extend(frame(0x1, 0x5, id, &[0x82, 0x87, 0x84]));
        flood.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    let _ = stream.write_all(&flood).await;
    let frames = read_frames(&mut stream, |f| f.0 == 0x7).await;
    let (_, _, _, goaway) = frames
        .iter()
        .find(|f| f.0 == 0x7)
        .expect("the flood did not end in a GOAWAY");
    let code = u32::from_be_bytes([goaway[4], goaway[5], goaway[6], goaway[7]]);
    assert_eq!(code, 0xb, "GOAWAY ENHANCE_YOUR_CALM");
    let answered = frames.iter().filter(|f| f.0 == 0x1).count();
    assert!(answered < 100, "{answered} streams were answered");

    // Other clients are unaffected.
    let mut client = TlsClient::h2(gateway.addr(), &ca.pem).await;
    client
        .get("/nowhere", &[])
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn rsa_ecdsa_and_ed25519_certificates_are_served() {
    let ca = Ca::new("listener CA");
    for (name, key) in [("rsa", rsa()), ("p256", p256()), ("ed25519", ed25519())] {
        let leaf = ca.server(name, key);
        let gateway = https_gateway(&leaf, &[], TLS_KEYS).await;
        for alpn in [&[&b"h2"[..]][..], &[&b"http/1.1"[..]][..]] {
            let mut client = TlsClient::connect(gateway.addr(), &ca.pem, None, alpn)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(client.leaf, leaf.der(), "{name}");
            client
                .get("/nowhere", &[])
                .await
                .assert_error(404, "not_found");
        }
        // TLS 1.2 as well as 1.3.
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let config = client_config_with(&[version], &ca.pem, None, &[]);
            let tcp = TcpStream::connect(gateway.addr()).await.unwrap();
            let server = ServerName::try_from("localhost").unwrap();
            let stream = TlsConnector::from(Arc::new(config))
                .connect(server, tcp)
                .await
                .unwrap_or_else(|e| panic!("{name} {version:?}: {e}"));
            assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
        }
        gateway.running.shutdown().await;
    }
}

/// The error `Snapshot::build` gives for a config in `dir`.
fn build_error(dir: &Path, yaml: &str) -> String {
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    Snapshot::build(
        &ConfigSource::read(&path).unwrap(),
        &GeneratedKeys::default(),
        &JwksRegistry::default(),
    )
    .unwrap_err()
    .to_string()
}

#[test]
fn unusable_tls_files_are_config_errors_naming_the_file() {
    let ca = Ca::new("listener CA");
    let leaf = ca.server("gateway", p256());
    let other = ca.server("other", p256());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_leaf(d, &leaf);
    std::fs::write(d.join("other.key"), &other.key_pem).unwrap();
    std::fs::write(d.join("garbage.pem"), "not PEM at all").unwrap();
    std::fs::write(d.join("ca.pem"), &ca.pem).unwrap();
    let tls =
        |cert: &str, key: &str| format!("listen: 127.0.0.1:0\ntls: {{cert: {cert}, key: {key}}}\n");

    let error = build_error(d, &tls("tls/cert.pem", "other.key"));
    assert!(error.contains("tls.key: "), "{error}");
    assert!(
        error.contains("other.key does not match the certificate in"),
        "{error}"
    );
    assert!(error.contains("tls/cert.pem"), "{error}");

    let error = build_error(d, &tls("missing.pem", "tls/key.pem"));
    assert!(error.contains("tls.cert: cannot read"), "{error}");
    assert!(error.contains("missing.pem"), "{error}");

    let error = build_error(d, &tls("garbage.pem", "tls/key.pem"));
    assert!(error.contains("tls.cert: "), "{error}");
    assert!(
        error.contains("garbage.pem: no PEM CERTIFICATE in it"),
        "{error}"
    );

    let error = build_error(d, &tls("tls/cert.pem", "garbage.pem"));
    assert!(error.contains("tls.key: "), "{error}");
    assert!(
        error.contains("garbage.pem: no usable PEM private key"),
        "{error}"
    );

    let error = build_error(
        d,
        "listen: 127.0.0.1:0\ntls: {cert: tls/cert.pem, key: tls/key.pem, client_ca: garbage.pem}\n",
    );
    assert!(error.contains("tls.client_ca: "), "{error}");

    let error = build_error(
        d,
        "listen: 127.0.0.1:0\ntls: {cert: tls/cert.pem, key: tls/key.pem, ciphers: x}\n",
    );
    assert!(error.contains("unknown field `ciphers`"), "{error}");

    // Upstream settings.
    let route = |upstream: &str, extra: &str| {
        format!("routes:\n  - name: r\n    match: {{path_prefix: /}}\n    upstream: {upstream}\n{extra}")
    };
    let error = build_error(d, &route("http://127.0.0.1:1", "    ca: ca.pem\n"));
    assert!(
        error.contains("routes[0].ca: applies to https:// upstreams only"),
        "{error}"
    );
    let error = build_error(d, &route("https://localhost:1", "    ca: garbage.pem\n"));
    assert!(error.contains("routes[0].ca: "), "{error}");
    assert!(error.contains("garbage.pem"), "{error}");
    let error = build_error(d, &route("https://localhost:1", "    ca: absent.pem\n"));
    assert!(error.contains("routes[0].ca: cannot read"), "{error}");
    let error = build_error(d, &route("demo", "    http2: true\n"));
    assert!(error.contains("routes[0].http2: does not apply"), "{error}");
    let error = build_error(d, "limits: {tls_handshake_timeout: 0s}\n");
    assert!(
        error.contains("limits.tls_handshake_timeout: must be more than 0s"),
        "{error}"
    );
    let error = build_error(d, "limits: {h2_max_concurrent_streams: 0}\n");
    assert!(
        error.contains("limits.h2_max_concurrent_streams: must be at least 1"),
        "{error}"
    );

    // And the good ones load.
    let path = d.join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            "{}{}",
            tls("tls/cert.pem", "tls/key.pem"),
            route("https://localhost:1", "    ca: ca.pem\n    http2: true\n")
        ),
    )
    .unwrap();
    let snapshot = Snapshot::build(
        &ConfigSource::read(&path).unwrap(),
        &GeneratedKeys::default(),
        &JwksRegistry::default(),
    )
    .unwrap();
    assert!(snapshot.tls.is_some());
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_cut_off() {
    let ca = Ca::new("listener CA");
    let leaf = ca.server("gateway", p256());
    let gateway = https_gateway(
        &leaf,
        &[],
        &format!("{TLS_KEYS}limits: {{tls_handshake_timeout: 300ms}}\n"),
    )
    .await;
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, stream.read(&mut buffer))
        .await
        .expect("the connection was not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // The listener still serves.
    let mut client = TlsClient::h1(gateway.addr(), &ca.pem).await;
    client
        .get("/nowhere", &[])
        .await
        .assert_error(404, "not_found");
}

// ---------------------------------------------------------------------------
// mTLS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mtls_accepts_a_verified_client_certificate_and_refuses_others() {
    let ca = Ca::new("listener CA");
    let clients = Ca::new("client CA");
    let strangers = Ca::new("stranger CA");
    let leaf = ca.server("gateway", p256());
    let upstream = Upstream::start().await;
    let gateway = https_gateway(
        &leaf,
        &[("clients.pem", &clients.pem)],
        &format!(
            "tls: {{cert: tls/cert.pem, key: tls/key.pem, client_ca: clients.pem}}
routes:
  - name: open
    match: {{path_prefix: /}}
    upstream: {}
",
            upstream.url()
        ),
    )
    .await;

    let good = clients.client("billing", "Acme");
    for alpn in [&[&b"h2"[..]][..], &[&b"http/1.1"[..]][..]] {
        let mut client = TlsClient::connect(gateway.addr(), &ca.pem, Some(&good), alpn)
            .await
            .unwrap();
        let answer = client.get("/hello", &[]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, r#"{"upstream":"ok"}"#);
    }
    assert_eq!(upstream.count(), 2);

    // Without a certificate, or with one from another CA: no request gets
    // through (TLS 1.3 reports the refusal on the first read).
    let stranger = strangers.client("billing", "Acme");
    for identity in [None, Some(&stranger)] {
        let refused =
            match TlsClient::connect(gateway.addr(), &ca.pem, identity, &[b"http/1.1"]).await {
                Err(_) => true,
                Ok(mut client) => client.try_send("GET", "/hello", &[], b"").await.is_err(),
            };
        assert!(
            refused,
            "a client with {:?} was served",
            identity.map(|_| "a stranger's certificate")
        );
    }
    assert_eq!(upstream.count(), 2, "nothing more reached the upstream");
}

/// Log output collected in memory (JSON lines).
#[tokio::test]
async fn the_verified_client_subject_is_in_the_access_log() {
    let captured = CapturedLogs::default();
    let _guard = captured.install("jwtgate=info");
    let ca = Ca::new("listener CA");
    let clients = Ca::new("client CA");
    let gateway = https_gateway(
        &ca.server("gateway", p256()),
        &[("clients.pem", &clients.pem)],
        &format!(
            "tls: {{cert: tls/cert.pem, key: tls/key.pem, client_ca: clients.pem}}\n{TUTORIAL}"
        ),
    )
    .await;
    let good = clients.client("billing", "Acme");
    let mut client = TlsClient::connect(gateway.addr(), &ca.pem, Some(&good), &[b"h2"])
        .await
        .unwrap();
    replay_tutorial(&mut client, Version::HTTP_2).await;
    let access: Vec<Value> = captured
        .lines()
        .into_iter()
        .filter(|line| line["target"] == "jwtgate::access")
        .collect();
    assert_eq!(access.len(), 2, "{access:?}");
    for line in &access {
        assert_eq!(
            line["fields"]["client_subject"], "CN=billing,O=Acme",
            "{line}"
        );
    }
    assert_eq!(access[1]["fields"]["subject"], "my-client");
}

#[tokio::test]
async fn a_token_endpoint_in_clear_text_off_loopback_is_warned_about() {
    let captured = CapturedLogs::default();
    let _guard = captured.install("jwtgate=info");
    let ca = Ca::new("listener CA");
    let leaf = ca.server("gateway", p256());
    let endpoint = "token_endpoint: {path: /token, signing_key: gw, audience: a, clients: []}\n";
    let warnings = |captured: &CapturedLogs| {
        captured
            .lines()
            .iter()
            .filter(|l| l["level"] == "WARN")
            .filter_map(|l| l["fields"]["message"].as_str().map(str::to_owned))
            .filter(|m| m.contains("RFC 6749 §2.3.1"))
            .count()
    };
    for (listen, tls, warned) in [
        ("127.0.0.1:0", "", 0),
        ("0.0.0.0:0", TLS_KEYS, 0),
        ("0.0.0.0:0", "", 1),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_leaf(dir.path(), &leaf);
        write_keys(dir.path());
        let path = dir.path().join("gateway.yaml");
        std::fs::write(
            &path,
            format!(
                "listen: {listen}\nadmin: 127.0.0.1:0\n{tls}{endpoint}\
                 keys: [{{kid: gw, alg: RS256, private_key: keys/gw.pem}}]\n"
            ),
        )
        .unwrap();
        let before = warnings(&captured);
        let running = jwtgate::server::RunningGateway::start(ConfigSource::read(&path).unwrap())
            .await
            .unwrap();
        assert_eq!(
            warnings(&captured) - before,
            warned,
            "listen {listen} tls {tls:?}"
        );
        running.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// Certificate reload
// ---------------------------------------------------------------------------

/// New connections until one is served `wanted` (the reload is
/// asynchronous), within 3 s.
async fn wait_for_leaf(addr: SocketAddr, ca_pem: &str, wanted: &[u8]) -> TlsClient {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let client = TlsClient::h1(addr, ca_pem).await;
        if client.leaf == wanted {
            return client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_renewed_certificate_reaches_new_connections_while_old_ones_stay_up() {
    let ca = Ca::new("listener CA");
    let first = ca.server("first", p256());
    let renewed = ca.server("renewed", p256());
    let gateway = https_gateway(&first, &[], &format!("{TLS_KEYS}{TUTORIAL}")).await;

    let mut old = TlsClient::h1(gateway.addr(), &ca.pem).await;
    assert_eq!(old.leaf, first.der());
    replay_tutorial(&mut old, Version::HTTP_11).await;
    let mut old_h2 = TlsClient::h2(gateway.addr(), &ca.pem).await;

    // cert-manager / certbot: new key and certificate written to disk.
    write_leaf(gateway.dir.path(), &renewed);
    let mut new = wait_for_leaf(gateway.addr(), &ca.pem, &renewed.der()).await;
    replay_tutorial(&mut new, Version::HTTP_11).await;

    // The connections opened before the swap still serve, on the old
    // certificate.
    assert_eq!(old.leaf, first.der());
    replay_tutorial(&mut old, Version::HTTP_11).await;
    replay_tutorial(&mut old_h2, Version::HTTP_2).await;
    let stats = gateway.running.runtime.reload_stats();
    assert!(stats.success >= 1, "{stats:?}");
}

#[tokio::test]
async fn a_broken_certificate_is_refused_and_the_old_one_kept() {
    let ca = Ca::new("listener CA");
    let first = ca.server("first", p256());
    let mismatched = ca.server("mismatched", p256());
    let gateway = https_gateway(&first, &[], TLS_KEYS).await;
    let runtime = &gateway.running.runtime;
    let cert_path = gateway.dir.path().join("tls/cert.pem");

    // A truncated certificate, then one that does not match the key: each
    // reload fails and the first certificate is still served.
    for broken in [&first.cert_pem[..40], &mismatched.cert_pem[..]] {
        replace(&cert_path, broken);
        let outcome = tokio::task::spawn_blocking({
            let runtime = runtime.clone();
            move || runtime.reload(Trigger::Signal)
        })
        .await
        .unwrap();
        let jwtgate::reload::Outcome::Failed(error) = outcome else {
            panic!("a broken certificate was accepted: {outcome:?}")
        };
        assert!(error.to_string().contains("tls."), "{error}");
        let mut client = TlsClient::h1(gateway.addr(), &ca.pem).await;
        assert_eq!(client.leaf, first.der());
        client
            .get("/nowhere", &[])
            .await
            .assert_error(404, "not_found");
    }
    assert!(runtime.reload_stats().failure >= 2);
}

/// Reloads `config` with `yaml` (a SIGHUP-style reload, run off the
/// runtime's thread) and returns how it ended.
async fn reload_with(gateway: &Gateway, yaml: String) -> jwtgate::reload::Outcome {
    replace(&gateway.dir.path().join("gateway.yaml"), &yaml);
    let runtime = gateway.running.runtime.clone();
    tokio::task::spawn_blocking(move || runtime.reload(Trigger::Signal))
        .await
        .unwrap()
}

#[tokio::test]
async fn adding_or_removing_tls_needs_a_restart_and_the_listener_keeps_its_protocol() {
    let ca = Ca::new("listener CA");
    let leaf = ca.server("gateway", p256());
    let base = "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n\
                keys:\n  - {kid: gw, alg: RS256, private_key: keys/gw.pem}\n";

    // Started with TLS; a reload that drops `tls:` applies the rest, and
    // the listener keeps serving HTTPS with the certificate it had.
    let gateway = https_gateway(&leaf, &[], TLS_KEYS).await;
    let outcome = reload_with(&gateway, base.to_owned()).await;
    assert_eq!(outcome, jwtgate::reload::Outcome::Applied);
    assert!(gateway.running.runtime.snapshot().tls.is_none());
    let mut client = TlsClient::h2(gateway.addr(), &ca.pem).await;
    assert_eq!(client.leaf, leaf.der());
    client
        .get("/nowhere", &[])
        .await
        .assert_error(404, "not_found");

    // Started plain; a reload that adds `tls:` leaves it plain. The reload
    // runs on this thread before it first yields, so it lands before the
    // serving task's first poll: the listener's protocol must already have
    // been fixed when serving started (a CI run once caught it read late).
    let gateway = Gateway::start(base).await;
    write_leaf(gateway.dir.path(), &leaf);
    replace(
        &gateway.dir.path().join("gateway.yaml"),
        &format!("{base}{TLS_KEYS}"),
    );
    let outcome = gateway.running.runtime.reload(Trigger::Signal);
    assert_eq!(outcome, jwtgate::reload::Outcome::Applied);
    assert!(gateway.running.runtime.snapshot().tls.is_some());
    get(&gateway.url("/nowhere"), &[])
        .await
        .assert_error(404, "not_found");
}

// ---------------------------------------------------------------------------
// https upstreams
// ---------------------------------------------------------------------------

/// What the HTTPS upstream saw.
#[derive(Debug, Clone)]
struct Seen {
    version: Version,
    path: String,
    subject: Option<String>,
    host: Option<String>,
    /// The gateway's end of the connection the request came on.
    peer: SocketAddr,
}

/// An HTTPS upstream on 127.0.0.1:0 serving `leaf`, HTTP/1.1 or HTTP/2 by
/// ALPN; answers `{"tls":"ok"}`.
async fn https_upstream(leaf: &Leaf) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect(),
        PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let (acceptor, record) = (acceptor.clone(), record.clone());
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(stream).await {
                    serve_recording(stream, peer, record).await;
                }
            });
        }
    });
    (addr, seen)
}

/// A plain-HTTP upstream speaking HTTP/1.1 and prior-knowledge HTTP/2.
async fn h2c_upstream() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(serve_recording(stream, peer, record.clone()));
        }
    });
    (addr, seen)
}

/// Serves one upstream connection: records each request, answers
/// `{"tls":"ok"}`.
async fn serve_recording<S>(stream: S, peer: SocketAddr, record: Arc<Mutex<Vec<Seen>>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let record = record.clone();
        async move {
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            record.lock().unwrap().push(Seen {
                version: request.version(),
                path: request.uri().path().to_owned(),
                subject: header("x-auth-subject"),
                peer,
                host: header("host").or_else(|| request.uri().authority().map(|a| a.to_string())),
            });
            let response = Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(br#"{"tls":"ok"}"#)))
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

#[tokio::test]
async fn http2_true_on_a_plain_upstream_speaks_prior_knowledge_h2c() {
    let (addr, seen) = h2c_upstream().await;
    let gateway = Gateway::start(&format!(
        "listen: 127.0.0.1:0
routes:
  - name: h2c
    match: {{path_prefix: /h2c}}
    upstream: http://{addr}
    http2: true
  - name: h1
    match: {{path_prefix: /h1}}
    upstream: http://{addr}
"
    ))
    .await;
    for path in ["/h2c/a", "/h1/b", "/h2c/c"] {
        let answer = get(&gateway.url(path), &[]).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.body, r#"{"tls":"ok"}"#);
    }
    let seen = seen.lock().unwrap().clone();
    let versions: Vec<Version> = seen.iter().map(|s| s.version).collect();
    assert_eq!(
        versions,
        [Version::HTTP_2, Version::HTTP_11, Version::HTTP_2]
    );
    assert_eq!(seen[0].peer, seen[2].peer, "one pooled h2 connection");
}

#[tokio::test]
async fn an_https_upstream_with_a_private_ca_is_reached_over_http1_and_http2() {
    let listener_ca = Ca::new("listener CA");
    let upstream_ca = Ca::new("upstream CA");
    let (addr, seen) = https_upstream(&upstream_ca.server("upstream", p256())).await;
    let port = addr.port();
    let gateway = https_gateway(
        &listener_ca.server("gateway", p256()),
        &[("upstream-ca.pem", &upstream_ca.pem)],
        &format!(
            "{TLS_KEYS}routes:
  - name: h1
    match: {{path_prefix: /h1}}
    upstream: https://localhost:{port}/base
    ca: upstream-ca.pem
    policies: [{{jwt: {{audience: orders}}}}]
  - name: h2
    match: {{path_prefix: /h2}}
    upstream: https://localhost:{port}
    ca: upstream-ca.pem
    http2: true
    policies: [{{jwt: {{audience: orders}}}}]
"
        ),
    )
    .await;
    let bearer = format!("Bearer {}", gw_token(&claims(json!({}))));
    let mut client = TlsClient::h1(gateway.addr(), &listener_ca.pem).await;
    for _ in 0..3 {
        let answer = client.get("/h1/x", &[("authorization", &bearer)]).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.body, r#"{"tls":"ok"}"#);
        let answer = client.get("/h2/y", &[("authorization", &bearer)]).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 6);
    // Pooled: one connection per route (HTTP/1.1 keep-alive, one h2).
    let mut connections: Vec<SocketAddr> = seen.iter().map(|s| s.peer).collect();
    connections.sort();
    connections.dedup();
    assert_eq!(connections.len(), 2, "{seen:?}");
    let host = format!("localhost:{port}");
    for (i, request) in seen.iter().enumerate() {
        let (version, path) = if i % 2 == 0 {
            (Version::HTTP_11, "/base/h1/x")
        } else {
            (Version::HTTP_2, "/h2/y")
        };
        assert_eq!(request.version, version, "{request:?}");
        assert_eq!(request.path, path);
        assert_eq!(request.subject.as_deref(), Some("alice"));
        assert_eq!(request.host.as_deref(), Some(host.as_str()));
    }
}

/// The value of `name{labels…}` in a scrape (labels in any order).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |value| value.parse().unwrap())
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_is_a_502_counted_as_connect() {
    let listener_ca = Ca::new("listener CA");
    let upstream_ca = Ca::new("upstream CA");
    let other_ca = Ca::new("some other CA");
    let (addr, seen) = https_upstream(&upstream_ca.server("upstream", p256())).await;
    let port = addr.port();
    // A certificate from the right CA, for another name.
    let mut params = CertificateParams::new(vec!["elsewhere.test".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "elsewhere");
    let (misnamed, _) = https_upstream(&upstream_ca.sign(params, p256())).await;
    let misnamed = misnamed.port();
    let gateway = https_gateway(
        &listener_ca.server("gateway", p256()),
        &[
            ("upstream-ca.pem", &upstream_ca.pem),
            ("other-ca.pem", &other_ca.pem),
        ],
        &format!(
            "{TLS_KEYS}routes:
  - name: wrong-ca
    match: {{path_prefix: /wrong}}
    upstream: https://localhost:{port}
    ca: other-ca.pem
  - name: public-roots
    match: {{path_prefix: /public}}
    upstream: https://localhost:{port}
  - name: wrong-name
    match: {{path_prefix: /name}}
    upstream: https://localhost:{misnamed}
    ca: upstream-ca.pem
  - name: right
    match: {{path_prefix: /right}}
    upstream: https://127.0.0.1:{port}
    ca: upstream-ca.pem
"
        ),
    )
    .await;
    let mut client = TlsClient::h2(gateway.addr(), &listener_ca.pem).await;
    for (path, route) in [
        ("/wrong", "wrong-ca"),
        ("/public", "public-roots"),
        ("/name", "wrong-name"),
    ] {
        for _ in 0..2 {
            let answer = client.get(path, &[]).await;
            answer.assert_error(502, "bad_gateway");
            assert_eq!(answer.header("cache-control"), Some("no-store"));
        }
        let text = metrics(&gateway).await;
        let labels = [("route", route), ("kind", "connect")];
        assert_eq!(
            sample(&text, "jwtgate_upstream_errors_total", &labels),
            2.0,
            "{route}"
        );
        for kind in ["reset", "protocol", "timeout"] {
            let labels = [("route", route), ("kind", kind)];
            assert_eq!(
                sample(&text, "jwtgate_upstream_errors_total", &labels),
                0.0,
                "{route} {kind}"
            );
        }
    }
    assert!(seen.lock().unwrap().is_empty(), "no request got through");
    // The same upstream, trusted through its CA and reached by IP (the
    // certificate names 127.0.0.1 too).
    let answer = client.get("/right", &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(seen.lock().unwrap().len(), 1);

    // The route's `ca:` file is watched: once it holds the right CA, the
    // route reaches its upstream, without a restart.
    replace(&gateway.dir.path().join("other-ca.pem"), &upstream_ca.pem);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let answer = client.get("/wrong", &[]).await;
        if answer.status == 200 {
            break;
        }
        answer.assert_error(502, "bad_gateway");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new ca: was not used within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.lock().unwrap().len(), 2);
}

// ---------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------

/// Runs curl with `--http2 --cacert CA` against `localhost:PORT` (resolved
/// to 127.0.0.1); the body and `"HTTP_VERSION STATUS"`, or curl's error.
fn curl(ca_path: &Path, port: u16, args: &[String]) -> Result<(String, String), String> {
    let output = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--http2", "--max-time", "10"])
        .arg("--cacert")
        .arg(ca_path)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["--write-out", "\n%{http_version} %{http_code}"])
        .args(args)
        .output()
        .expect("curl is required for this test (.ci/run installs it)");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    Ok((body.to_owned(), status.to_owned()))
}

/// SPEC §1 with curl over HTTPS, asserting HTTP/2 was used.
fn curl_tutorial(ca_path: &Path, port: u16) -> Result<(), String> {
    let base = format!("https://localhost:{port}");
    let (body, status) = curl(
        ca_path,
        port,
        &[
            "-X".into(),
            "POST".into(),
            format!("{base}/demo/oauth2/token"),
            "-H".into(),
            "Content-Type: application/x-www-form-urlencoded".into(),
            "-u".into(),
            "my-client:my-secret".into(),
            "-d".into(),
            "grant_type=client_credentials".into(),
        ],
    )?;
    assert_eq!(status, "2 200", "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["scope"], "read write");
    let token = json["access_token"].as_str().unwrap();

    let (body, status) = curl(
        ca_path,
        port,
        &[
            "-H".into(),
            format!("Authorization: Bearer {token}"),
            format!("{base}/demo/resource"),
        ],
    )?;
    assert_eq!(status, "2 200", "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json, json!({"client": "my-client", "scopes": "read write"}));
    Ok(())
}

/// Whether curl can run. `.ci/run` installs it, and under CI (`CI` set) a
/// missing curl fails the test; on a developer machine without curl the
/// two curl tests say loudly that they did not run.
fn curl_available(test: &str) -> bool {
    let found = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "curl is required under CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED {test}: curl is not installed (.ci/run installs it and runs it)");
    }
    found
}

#[tokio::test]
async fn curl_replays_the_tutorial_over_https_with_http2() {
    if !curl_available("curl_replays_the_tutorial_over_https_with_http2") {
        return;
    }
    let ca = Ca::new("listener CA");
    let gateway = https_gateway(
        &ca.server("gateway", p256()),
        &[("ca.pem", &ca.pem)],
        &format!("{TLS_KEYS}{TUTORIAL}"),
    )
    .await;
    let port = gateway.addr().port();
    let ca_path = gateway.dir.path().join("ca.pem");
    tokio::task::spawn_blocking(move || curl_tutorial(&ca_path, port))
        .await
        .unwrap()
        .unwrap();
}

#[path = "common/process.rs"]
mod process;

/// The real binary, serving on two threads (each with its own accept loop
/// and TLS state): curl replays the tutorial, then a certificate from a new
/// CA written to disk is served to new connections without a restart.
#[test]
fn the_binary_serves_https_on_every_thread_and_picks_up_a_renewed_certificate() {
    if !curl_available("the_binary_serves_https_on_every_thread_and_picks_up_a_renewed_certificate")
    {
        return;
    }
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_leaf(d, &old_ca.server("gateway", p256()));
    write_keys(d);
    std::fs::write(d.join("old-ca.pem"), &old_ca.pem).unwrap();
    std::fs::write(d.join("new-ca.pem"), &new_ca.pem).unwrap();
    let config = d.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{TLS_KEYS}\
             keys:\n  - {{kid: gw, alg: RS256, private_key: keys/gw.pem}}\n{TUTORIAL}"
        ),
    )
    .unwrap();
    let mut command = process::jwtgate();
    command.args(["run", "-c", config.to_str().unwrap(), "--threads", "2"]);
    let mut server = process::Server::spawn(command);
    let addr = server
        .next_listening(std::time::Instant::now() + process::LISTEN_TIMEOUT)
        .expect("no `listening on` line");
    let port = addr.port();
    // Several connections, so both threads (very likely) serve some.
    for _ in 0..8 {
        curl_tutorial(&d.join("old-ca.pem"), port).unwrap();
    }
    assert!(curl_tutorial(&d.join("new-ca.pem"), port).is_err());

    write_leaf(d, &new_ca.server("gateway", p256()));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while curl_tutorial(&d.join("new-ca.pem"), port).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was not served within 3 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..8 {
        curl_tutorial(&d.join("new-ca.pem"), port).unwrap();
        let refused = curl_tutorial(&d.join("old-ca.pem"), port).unwrap_err();
        assert!(refused.contains("certificate"), "{refused}");
    }
}
