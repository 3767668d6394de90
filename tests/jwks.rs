//! Remote JWK Sets (`jwks:`, SPEC §3–4): an in-process identity provider that
//! rotates its keys and can fail, hang or answer garbage, and gateways that
//! verify its tokens.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::{claims, generate, get, mint, wait_until, Gateway, KeyPair, DEADLINE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jwtgate::keys::{jwk, local, Algorithm};
use jwtgate::reload::{Outcome, Trigger};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// ES256 keys (quick to make) and one RSA key, once per test binary.
struct ProviderKeys {
    es: Vec<KeyPair>,
    rsa: KeyPair,
}

fn provider_keys() -> &'static ProviderKeys {
    static KEYS: OnceLock<ProviderKeys> = OnceLock::new();
    KEYS.get_or_init(|| ProviderKeys {
        es: (0..4).map(|_| generate(Algorithm::Es256)).collect(),
        rsa: generate(Algorithm::Rs256),
    })
}

/// The public JWK of `pair` under `kid`.
fn public_jwk(pair: &KeyPair, alg: Algorithm, kid: &str) -> Value {
    let der = local::parse_public_pem(&pair.public_pem, alg).unwrap();
    jwk::public_jwk(kid, alg, &der).unwrap()
}

fn es_jwk(index: usize, kid: &str) -> Value {
    public_jwk(&provider_keys().es[index], Algorithm::Es256, kid)
}

fn es_token(index: usize, kid: &str, issuer: &str) -> String {
    mint(
        &provider_keys().es[index],
        jsonwebtoken::Algorithm::ES256,
        Some(kid),
        &claims(json!({ "iss": issuer })),
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Serve,
    /// 500 with an HTML body.
    Fail,
    /// 200 with a body that is not a JWK Set.
    Garbage,
    /// Never answers (the gateway's 10 s fetch timeout applies).
    Hang,
}

#[derive(Default)]
struct ProviderState {
    keys: Mutex<Vec<Value>>,
    mode: Mutex<Option<Mode>>,
    /// Added before answering a key set request.
    delay: Mutex<Duration>,
    /// Served at `/.well-known/openid-configuration` when set.
    metadata: Mutex<Option<Value>>,
    /// Key set requests received.
    fetches: AtomicUsize,
}

/// An identity provider serving its JWK Set at `/certs`.
struct Provider {
    addr: SocketAddr,
    state: Arc<ProviderState>,
}

impl Provider {
    async fn start(keys: Vec<Value>) -> Provider {
        let state = Arc::new(ProviderState::default());
        *state.keys.lock().unwrap() = keys;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, request.uri().path()).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Provider { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/certs", self.addr)
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn set_keys(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = Some(mode);
    }
}

async fn answer(state: &ProviderState, path: &str) -> Response<Full<Bytes>> {
    let respond = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if path == "/.well-known/openid-configuration" {
        let metadata = state.metadata.lock().unwrap().clone();
        return match metadata {
            Some(metadata) => respond(StatusCode::OK, metadata.to_string()),
            None => respond(StatusCode::NOT_FOUND, String::new()),
        };
    }
    if path != "/certs" {
        return respond(StatusCode::NOT_FOUND, String::new());
    }
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let delay = *state.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let mode = state.mode.lock().unwrap().unwrap_or(Mode::Serve);
    match mode {
        Mode::Serve => {
            let keys = state.keys.lock().unwrap().clone();
            respond(StatusCode::OK, json!({ "keys": keys }).to_string())
        }
        Mode::Fail => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "<html>oops</html>".to_owned(),
        ),
        Mode::Garbage => respond(StatusCode::OK, "{\"keys\": \"not a list\"".to_owned()),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            respond(StatusCode::OK, String::new())
        }
    }
}

/// A gateway with no keys of its own, one route `/api` to the demo upstream
/// (which echoes the injected subject), and the given `jwks:` entries.
async fn gateway(jwks_entries: &str) -> Gateway {
    Gateway::start(&config_yaml(jwks_entries)).await
}

fn config_yaml(jwks_entries: &str) -> String {
    format!(
        "listen: 127.0.0.1:0
keys: []
jwks:
{jwks_entries}
routes:
  - name: api
    match: {{path_prefix: /api}}
    upstream: demo
    policies:
      - jwt: {{audience: orders, scopes: [read]}}
"
    )
}

fn entry(provider: &Provider, refresh: &str) -> String {
    format!(
        "  - {{url: \"{}\", issuer: \"{}\", refresh: {refresh}}}\n",
        provider.url(),
        provider.issuer()
    )
}

async fn call(gateway: &Gateway, token: &str) -> common::Answer {
    get(
        &gateway.url("/api"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

fn assert_accepted(answer: &common::Answer) {
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["client"], "alice");
}

fn assert_refused(answer: &common::Answer, description: &str) {
    answer.assert_error(401, "invalid_token");
    assert_eq!(answer.json()["error_description"], description);
}

/// The value of one sample of the gateway's `/metrics`, if present.
async fn metric(gateway: &Gateway, sample: &str) -> Option<f64> {
    let page = get(&gateway.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8(page.body.to_vec()).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

fn refreshes(issuer: &str, result: &str) -> String {
    format!("jwtgate_jwks_refreshes_total{{issuer=\"{issuer}\",result=\"{result}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_against_the_remote_set() {
    let keys = provider_keys();
    let provider = Provider::start(vec![
        es_jwk(0, "es-1"),
        public_jwk(&keys.rsa, Algorithm::Rs256, "rsa-1"),
    ])
    .await;
    let gw = gateway(&entry(&provider, "10m")).await;
    let issuer = provider.issuer();
    // The first fetch happened before the gateway started serving.
    assert_eq!(provider.fetches(), 1);
    let ready = get(&gw.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, StatusCode::OK);

    assert_accepted(&call(&gw, &es_token(0, "es-1", &issuer)).await);
    let rsa = mint(
        &keys.rsa,
        jsonwebtoken::Algorithm::RS256,
        Some("rsa-1"),
        &claims(json!({ "iss": issuer })),
    );
    assert_accepted(&call(&gw, &rsa).await);

    // Another key under a published kid: the signature fails.
    assert_refused(
        &call(&gw, &es_token(1, "es-1", &issuer)).await,
        "token signature is invalid",
    );
    // An RSA kid with an ES256 token: the key's algorithm wins.
    assert_refused(
        &call(&gw, &es_token(0, "rsa-1", &issuer)).await,
        "token algorithm does not match its key",
    );
    // Without `iss` (or another one) only `keys:` applies, and it is empty.
    let no_iss = mint(
        &keys.es[0],
        jsonwebtoken::Algorithm::ES256,
        Some("es-1"),
        &claims(json!({})),
    );
    assert_refused(&call(&gw, &no_iss).await, "token key id is unknown");
    assert_refused(
        &call(&gw, &es_token(0, "es-1", "https://other.example")).await,
        "token key id is unknown",
    );

    // No refresh was asked for: every kid named was in the set, and the
    // tokens of other issuers are checked against `keys:` only.
    assert_eq!(provider.fetches(), 1);
    assert_eq!(metric(&gw, &refreshes(&issuer, "success")).await, Some(1.0));
    assert_eq!(metric(&gw, &refreshes(&issuer, "failure")).await, Some(0.0));
    let age = metric(
        &gw,
        &format!("jwtgate_jwks_age_seconds{{issuer=\"{issuer}\"}}"),
    )
    .await
    .expect("age gauge");
    assert!((0.0..60.0).contains(&age), "age {age}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_kid_is_accepted_after_exactly_one_extra_fetch() {
    let provider = Provider::start(vec![es_jwk(0, "old")]).await;
    let gw = gateway(&entry(&provider, "1h")).await;
    let issuer = provider.issuer();
    assert_accepted(&call(&gw, &es_token(0, "old", &issuer)).await);
    assert_eq!(provider.fetches(), 1);

    // The provider rotates: a new key is published and used at once.
    provider.set_keys(vec![es_jwk(0, "old"), es_jwk(1, "new")]);
    assert_accepted(&call(&gw, &es_token(1, "new", &issuer)).await);
    assert_eq!(provider.fetches(), 2, "exactly one extra fetch");
    // Known from now on: no more fetches, and the old key still works.
    assert_accepted(&call(&gw, &es_token(1, "new", &issuer)).await);
    assert_accepted(&call(&gw, &es_token(0, "old", &issuer)).await);
    assert_eq!(provider.fetches(), 2);

    // The old key is withdrawn: after the next refresh (here: triggered by
    // another new kid) its tokens are refused.
    provider.set_keys(vec![es_jwk(1, "new"), es_jwk(2, "newer")]);
    tokio::time::sleep(jwtgate::keys::remote::KID_MISS_COOLDOWN).await;
    assert_accepted(&call(&gw, &es_token(2, "newer", &issuer)).await);
    assert_eq!(provider.fetches(), 3);
    assert_refused(
        &call(&gw, &es_token(0, "old", &issuer)).await,
        "token key id is unknown",
    );
    // Within the cooldown that miss did not fetch again.
    assert_eq!(provider.fetches(), 3);
}

/// Sends `count` requests at once, each with the token `token_of(i)`;
/// returns the statuses.
async fn concurrently(gw: &Gateway, count: usize, token_of: impl Fn(usize) -> String) -> Vec<u16> {
    let client = common::client();
    let url = gw.url("/api");
    let requests = (0..count).map(|i| {
        let request = Request::get(&url)
            .header("authorization", format!("Bearer {}", token_of(i)))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client = client.clone();
        tokio::spawn(async move {
            let response = tokio::time::timeout(DEADLINE * 2, client.request(request))
                .await
                .expect("request timed out")
                .expect("request failed");
            response.status().as_u16()
        })
    });
    let mut statuses = Vec::with_capacity(count);
    for handle in requests.collect::<Vec<_>>() {
        statuses.push(handle.await.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_with_a_new_kid_share_one_fetch() {
    let provider = Provider::start(vec![es_jwk(0, "old")]).await;
    let gw = gateway(&entry(&provider, "1h")).await;
    let issuer = provider.issuer();
    assert_eq!(provider.fetches(), 1);
    provider.set_keys(vec![es_jwk(0, "old"), es_jwk(1, "new")]);
    // A slow provider, so the requests pile up behind the one fetch.
    *provider.state.delay.lock().unwrap() = Duration::from_millis(300);
    let token = es_token(1, "new", &issuer);
    let statuses = concurrently(&gw, 1000, |_| token.clone()).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(provider.fetches(), 2, "one fetch for 1000 waiting requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_kids_causes_at_most_one_fetch() {
    let provider = Provider::start(vec![es_jwk(0, "real")]).await;
    let gw = gateway(&entry(&provider, "1h")).await;
    let issuer = provider.issuer();
    *provider.state.delay.lock().unwrap() = Duration::from_millis(100);
    let tokens: Vec<String> = (0..1000)
        .map(|i| es_token(0, &format!("random-{i}"), &issuer))
        .collect();
    let statuses = concurrently(&gw, 1000, |i| tokens[i].clone()).await;
    assert!(statuses.iter().all(|&s| s == 401), "{statuses:?}");
    assert_eq!(provider.fetches(), 2, "the start, and one for the flood");
    // Real tokens were never disturbed.
    assert_accepted(&call(&gw, &es_token(0, "real", &issuer)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_set_is_used_while_the_provider_fails() {
    let provider = Provider::start(vec![es_jwk(0, "k")]).await;
    let gw = gateway(&entry(&provider, "1s")).await;
    let issuer = provider.issuer();
    let token = es_token(0, "k", &issuer);
    assert_accepted(&call(&gw, &token).await);

    for mode in [Mode::Fail, Mode::Garbage, Mode::Hang] {
        let failures = metric(&gw, &refreshes(&issuer, "failure")).await.unwrap();
        provider.set_mode(mode);
        // A hanging provider takes the 10 s fetch timeout to count.
        wait_until(Duration::from_secs(15), "a failed refresh", || async {
            metric(&gw, &refreshes(&issuer, "failure")).await.unwrap() > failures
        })
        .await;
        assert_accepted(&call(&gw, &token).await);
        let ready = get(&gw.admin_url("/readyz"), &[]).await;
        assert_eq!(ready.status, StatusCode::OK, "{mode:?}: still ready");
    }
    // The provider recovers: refreshes succeed again and the age drops.
    provider.set_mode(Mode::Serve);
    let successes = metric(&gw, &refreshes(&issuer, "success")).await.unwrap();
    wait_until(Duration::from_secs(15), "a successful refresh", || async {
        metric(&gw, &refreshes(&issuer, "success")).await.unwrap() > successes
    })
    .await;
    assert_accepted(&call(&gw, &token).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_at_start_holds_readiness_until_it_answers() {
    let provider = Provider::start(vec![es_jwk(0, "k")]).await;
    provider.set_mode(Mode::Fail);
    let gw = gateway(&entry(&provider, "10m")).await;
    let issuer = provider.issuer();
    let token = es_token(0, "k", &issuer);

    let ready = get(&gw.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json(), json!({"status": "waiting_for_key_sets"}));
    // The issuer has no key set yet: refused, never forwarded.
    assert_refused(&call(&gw, &token).await, "token key id is unknown");

    provider.set_mode(Mode::Serve);
    // Retried with a backoff from 1 s.
    wait_until(Duration::from_secs(10), "readiness", || async {
        get(&gw.admin_url("/readyz"), &[]).await.status == StatusCode::OK
    })
    .await;
    assert_accepted(&call(&gw, &token).await);
    assert!(metric(&gw, &refreshes(&issuer, "failure")).await.unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_are_kept_apart_by_issuer() {
    // Both publish kid `k`, with different keys.
    let one = Provider::start(vec![es_jwk(0, "k")]).await;
    let two = Provider::start(vec![es_jwk(1, "k")]).await;
    let gw = gateway(&format!("{}{}", entry(&one, "10m"), entry(&two, "10m"))).await;
    assert_accepted(&call(&gw, &es_token(0, "k", &one.issuer())).await);
    assert_accepted(&call(&gw, &es_token(1, "k", &two.issuer())).await);
    // One issuer's key never verifies the other's tokens.
    assert_refused(
        &call(&gw, &es_token(1, "k", &one.issuer())).await,
        "token signature is invalid",
    );
    assert_refused(
        &call(&gw, &es_token(0, "k", &two.issuer())).await,
        "token signature is invalid",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_set_and_checks_the_issuer() {
    let provider = Provider::start(vec![es_jwk(0, "k")]).await;
    let issuer = provider.issuer();
    *provider.state.metadata.lock().unwrap() = Some(json!({
        "issuer": issuer,
        "jwks_uri": provider.url(),
    }));
    let entry = format!("  - {{issuer: \"{issuer}\", discovery: true}}\n");
    let gw = gateway(&entry).await;
    assert_accepted(&call(&gw, &es_token(0, "k", &issuer)).await);

    // Metadata naming another issuer is refused (RFC 8414 §3.3).
    let impostor = Provider::start(vec![es_jwk(0, "k")]).await;
    *impostor.state.metadata.lock().unwrap() = Some(json!({
        "issuer": "https://someone-else.example",
        "jwks_uri": impostor.url(),
    }));
    let entry = format!(
        "  - {{issuer: \"{}\", discovery: true}}\n",
        impostor.issuer()
    );
    let gw = gateway(&entry).await;
    assert_refused(
        &call(&gw, &es_token(0, "k", &impostor.issuer())).await,
        "token key id is unknown",
    );
    assert_eq!(impostor.fetches(), 0, "its key set was never fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_providers() {
    let provider = Provider::start(vec![es_jwk(0, "k")]).await;
    let issuer = provider.issuer();
    let token = es_token(0, "k", &issuer);
    let gw = Gateway::start(&format!("admin: 127.0.0.1:0\n{}", config_yaml("  []"))).await;
    assert_refused(&call(&gw, &token).await, "token key id is unknown");

    let reload = |yaml: String| {
        std::fs::write(gw.config_path(), format!("admin: 127.0.0.1:0\n{yaml}")).unwrap();
        let runtime = gw.running.runtime.clone();
        async move {
            tokio::task::spawn_blocking(move || runtime.reload(Trigger::Signal))
                .await
                .unwrap()
        }
    };
    assert!(matches!(
        reload(config_yaml(&entry(&provider, "10m"))).await,
        Outcome::Applied
    ));
    // Started by the reload, without holding readiness back.
    wait_until(DEADLINE, "the new provider's first fetch", || async {
        metric(&gw, &refreshes(&issuer, "success")).await == Some(1.0)
    })
    .await;
    assert_accepted(&call(&gw, &token).await);
    assert_eq!(metric(&gw, &refreshes(&issuer, "success")).await, Some(1.0));

    assert!(matches!(
        reload(config_yaml("  []")).await,
        Outcome::Applied
    ));
    assert_refused(&call(&gw, &token).await, "token key id is unknown");
    // Its series are gone with it.
    assert_eq!(metric(&gw, &refreshes(&issuer, "success")).await, None);

    // A broken entry is refused and the previous config kept.
    let broken = config_yaml("  - {url: \"http://idp.example.com/certs\", issuer: x}\n");
    let Outcome::Failed(error) = reload(broken).await else {
        panic!("an http URL to a remote host must be refused");
    };
    assert!(error.to_string().contains("jwks[0].url"), "{error}");
}

/// A private CA and a `localhost` certificate it signed: `(ca_pem,
/// server_config)`.
fn private_tls() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    (ca.pem(), Arc::new(config))
}

/// The provider's key set over HTTPS on `localhost`, with a certificate
/// from a private CA; returns its port.
async fn https_provider(keys: Vec<Value>, tls: Arc<rustls::ServerConfig>) -> u16 {
    let state = Arc::new(ProviderState::default());
    *state.keys.lock().unwrap() = keys;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |request: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, request.uri().path()).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_provider_is_trusted_through_its_ca_file_only() {
    let (ca_pem, tls) = private_tls();
    let port = https_provider(vec![es_jwk(0, "k")], tls).await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path().join("idp-ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let issuer = "https://idp.internal";
    let token = es_token(0, "k", issuer);

    let trusted = format!(
        "  - {{url: \"https://localhost:{port}/certs\", issuer: \"{issuer}\", ca: \"{}\"}}\n",
        ca_path.display()
    );
    let gw = gateway(&trusted).await;
    assert_accepted(&call(&gw, &token).await);

    // Without the CA file the certificate is not trusted: nothing fetched.
    let untrusted =
        format!("  - {{url: \"https://localhost:{port}/certs\", issuer: \"{issuer}\"}}\n");
    let gw = gateway(&untrusted).await;
    assert_refused(&call(&gw, &token).await, "token key id is unknown");
    assert_eq!(metric(&gw, &refreshes(issuer, "success")).await, Some(0.0));
    assert!(metric(&gw, &refreshes(issuer, "failure")).await.unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_remote_key_and_the_set_it_looked_in() {
    use jwtgate::explain::{explain, find_route, RouteQuery};
    let provider = Provider::start(vec![es_jwk(0, "k1"), es_jwk(1, "k2")]).await;
    let gw = gateway(&entry(&provider, "10m")).await;
    let issuer = provider.issuer();
    let snapshot = gw.running.runtime.snapshot();
    let route = find_route(&snapshot, &RouteQuery::Name("api")).unwrap();

    let accepted = explain(&snapshot, route, &es_token(1, "k2", &issuer), common::now());
    assert!(accepted.accepted, "{accepted:#?}");
    let key = accepted.key.expect("the key that verified it");
    assert_eq!((key.kid.as_str(), key.alg), ("k2", "ES256"));
    assert_eq!(
        key.source,
        format!("JWKS {} of issuer {issuer}", provider.url())
    );

    // An unknown kid: the report names the issuer's set and what it holds,
    // and the verdict is what the gateway answers.
    let refused = explain(&snapshot, route, &es_token(0, "k9", &issuer), common::now());
    assert_eq!(refused.failed_step, Some("key"), "{refused:#?}");
    let step = refused.steps.iter().find(|s| s.step == "key").unwrap();
    assert_eq!(
        step.detail,
        format!(
            "kid `k9`; the JWKS of issuer `{issuer}` ({}) holds `k1`, `k2`",
            provider.url()
        )
    );
    let refusal = refused.refusal.expect("a refusal");
    let answer = call(&gw, &es_token(0, "k9", &issuer)).await;
    assert_eq!(refusal.status, answer.status.as_u16());
    assert_eq!(
        refusal.www_authenticate.as_deref(),
        answer.header("www-authenticate")
    );
    assert_eq!(refusal.body, answer.json());

    // The status page's document lists the provider and its keys.
    let status = jwtgate::admin::ui::status(&gw.running.runtime, gw.running.admin_addr);
    let jwks = &status["jwks"][0];
    assert_eq!(jwks["issuer"], issuer);
    assert_eq!(jwks["url"], provider.url());
    assert_eq!(
        jwks["keys"],
        json!([{"kid": "k1", "alg": "ES256"}, {"kid": "k2", "alg": "ES256"}])
    );
    assert_eq!(jwks["last_refresh"]["result"], "success");
    assert_eq!(jwks["last_refresh"]["error"], Value::Null);
    assert!(
        jwks["age_secs"].as_u64().is_some_and(|age| age < 60),
        "{jwks}"
    );
}
