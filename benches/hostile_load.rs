//! `cargo bench --bench hostile_load`: resident memory of an in-process
//! gateway under a long stream of hostile traffic, round by round.
//!
//! Every request is different — garbage tokens, validly signed tokens for
//! the wrong audience (a signature check each), `alg: none`, unknown kids,
//! and token-endpoint guesses with random client ids from random forwarded
//! addresses — so any per-token or per-client state would show as growth.
//! The only such state is the throttle's failure tables, bounded at 65,536
//! keys each: memory should rise until they fill, then stay flat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jwtgate::config::ConfigSource;
use jwtgate::keys::{local, Algorithm};
use jwtgate::server::RunningGateway;
use jwtgate::token::mint::{self, AccessClaims};

const ROUNDS: u64 = 28;
const REQUESTS_PER_ROUND: u64 = 12_000;
const TASKS: u64 = 8;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = local::keygen(Algorithm::EdDsa, "gw", dir.path()).expect("keygen");
    let signer = local::load_private("gw", Algorithm::EdDsa, &key.private_path)
        .expect("key")
        .signer
        .expect("signer");
    let config = dir.path().join("gw.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0
admin: 127.0.0.1:0
trusted_proxies: [127.0.0.1]
keys:
  - {{kid: gw, alg: EdDSA, public_key: {}}}
token_endpoint:
  path: /oauth2/token
  signing_key: gw
  audience: orders
  clients: []
routes:
  - name: orders
    match: {{path_prefix: /orders}}
    upstream: demo
    policies: [{{jwt: {{audience: orders, scopes: [read]}}}}]
",
            key.public_path.display()
        ),
    )
    .expect("config");
    // The token endpoint needs a signing key: the same one, by private path.
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("public_key", "private_key")
        .replace(
            &key.public_path.display().to_string(),
            &key.private_path.display().to_string(),
        );
    std::fs::write(&config, text).expect("config");
    let gateway = RunningGateway::start(ConfigSource::read(&config).expect("read"))
        .await
        .expect("start");
    let base = format!("http://{}", gateway.addr);
    let signer = Arc::new(signer);
    let counter = Arc::new(AtomicU64::new(0));

    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>22}",
        "round", "requests", "RSS (MiB)", "req/s", "throttle keys (id, ip)"
    );
    println!("{:>6} {:>10} {:>10.1}", 0, 0, rss_mib());
    for round in 1..=ROUNDS {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (base, signer, counter) = (base.clone(), signer.clone(), counter.clone());
            tasks.push(tokio::spawn(async move {
                let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                for _ in 0..REQUESTS_PER_ROUND / TASKS {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let request = hostile_request(&base, n, &signer);
                    let response = client.request(request).await.expect("answered");
                    let status = response.status().as_u16();
                    assert!(status < 500, "request {n}: {status}");
                    let _ = response.into_body().collect().await;
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let rate = REQUESTS_PER_ROUND as f64 / started.elapsed().as_secs_f64();
        println!(
            "{:>6} {:>10} {:>10.1} {:>10.0} {:>22}",
            round,
            round * REQUESTS_PER_ROUND,
            rss_mib(),
            rate,
            format!("{:?}", gateway.runtime.throttle.tracked())
        );
    }
    gateway.shutdown().await;
}

/// Request `n` of the hostile mix: never the same twice.
fn hostile_request(base: &str, n: u64, signer: &jwtgate::keys::Signer) -> Request<Full<Bytes>> {
    let bearer = |token: String| {
        Request::get(format!("{base}/orders/{n}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    match n % 10 {
        // Signed, wrong audience: costs a signature check.
        0..=3 => {
            let claims = AccessClaims::new(
                &format!("sub-{n}"),
                "billing",
                &["read".into()],
                None,
                1_800_000_000,
                300,
                120,
            )
            .expect("claims");
            bearer(mint::sign(signer, &claims).expect("sign"))
        }
        4 => bearer(format!(
            "garbage-{n:x}.{}.x",
            "A".repeat((n % 300) as usize)
        )),
        5 => bearer(format!(
            "eyJhbGciOiJub25lIn0.{}.",
            base64_url(&format!(r#"{{"sub":"{n}","exp":9999999999}}"#))
        )),
        6 => bearer(format!(
            "{}.{}.AAAA",
            base64_url(&format!(r#"{{"alg":"EdDSA","kid":"k{n}"}}"#)),
            base64_url(r#"{"exp":9999999999}"#)
        )),
        // A token-endpoint guess: random id, random forwarded address.
        _ => Request::post(format!("{base}/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "x-forwarded-for",
                format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255),
            )
            .body(Full::new(Bytes::from(format!(
                "grant_type=client_credentials&client_id=guess-{n}&client_secret=x"
            ))))
            .expect("request"),
    }
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// Resident set size of this process (gateway, client and all).
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}
