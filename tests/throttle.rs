//! Throttling of failed client authentications at the token endpoint
//! (SPEC §3): per (client id, address) and per address, `429 slow_down` with
//! `Retry-After`, and never a lock-out of a client from an address that has
//! not failed.

mod common;

use common::*;

/// `hashlib.sha256(b"s3cret").hexdigest()`, computed outside this project.
const SHA256_S3CRET: &str = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0";

fn config(throttle: &str, trusted_proxies: &str) -> String {
    format!(
        "listen: 127.0.0.1:0
{trusted_proxies}
keys:
  - {{kid: gw, alg: RS256, private_key: keys/gw.pem}}
token_endpoint:
  path: /oauth2/token
  signing_key: gw
  audience: orders
  {throttle}
  clients:
    - {{id: c1, secret_hash: \"sha256:{SHA256_S3CRET}\", scopes: [read]}}
    - {{id: c2, secret_hash: \"sha256:{SHA256_S3CRET}\", scopes: [read]}}
"
    )
}

/// A client-credentials request as `id:secret` (Basic), from the address
/// `forwarded_for` claims when given.
async fn grant(gateway: &Gateway, id: &str, secret: &str, forwarded_for: Option<&str>) -> Answer {
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    );
    let mut headers = vec![
        ("authorization", basic.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    if let Some(addr) = forwarded_for {
        headers.push(("x-forwarded-for", addr));
    }
    send(
        "POST",
        &gateway.url("/oauth2/token"),
        &headers,
        b"grant_type=client_credentials",
    )
    .await
}

fn assert_throttled(answer: &Answer, window_secs: u64) {
    answer.assert_error(429, "slow_down");
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let retry_after: u64 = answer
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("delay-seconds");
    assert!((1..=window_secs).contains(&retry_after), "{retry_after}");
}

async fn throttled_count(gateway: &Gateway) -> String {
    let metrics = get(&gateway.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    text.lines()
        .find(|l| l.starts_with("jwtgate_token_requests_total{result=\"throttled\"}"))
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_defaults_allow_ten_failures_per_client_and_address_then_429() {
    let gateway = Gateway::start(&config("", "")).await;
    for attempt in 1..=10 {
        let answer = grant(&gateway, "c1", "wrong", None).await;
        answer.assert_error(401, "invalid_client");
        assert_eq!(
            answer.header("www-authenticate"),
            Some("Basic realm=\"jwtgate\""),
            "attempt {attempt}"
        );
    }
    // Throttled now, even with the right secret: a guess that happens to be
    // right is refused too, before any hashing.
    assert_throttled(&grant(&gateway, "c1", "s3cret", None).await, 60);
    assert_throttled(&grant(&gateway, "c1", "wrong", None).await, 60);
    // Another client from the same address is not (its own count is 0 and
    // the address has 10 of its 30).
    assert_eq!(grant(&gateway, "c2", "s3cret", None).await.status, 200);
    assert_eq!(
        throttled_count(&gateway).await,
        "jwtgate_token_requests_total{result=\"throttled\"} 2"
    );
}

#[tokio::test]
async fn an_attacker_cannot_lock_a_client_out_from_another_address() {
    let gateway = Gateway::start(&config(
        "throttle: {per_client: 3, per_address: 5, window: 1m}",
        "trusted_proxies: [127.0.0.1/32]",
    ))
    .await;
    let attacker = Some("203.0.113.66");
    for _ in 0..3 {
        grant(&gateway, "c1", "guess", attacker)
            .await
            .assert_error(401, "invalid_client");
    }
    assert_throttled(&grant(&gateway, "c1", "s3cret", attacker).await, 60);
    // The real client, from its own address, is never refused.
    let owner = grant(&gateway, "c1", "s3cret", Some("198.51.100.10")).await;
    assert_eq!(owner.status, 200, "{:?}", owner.body);
    assert!(owner.json()["access_token"].is_string());
}

#[tokio::test]
async fn an_address_spraying_client_ids_is_throttled_for_every_client() {
    let gateway = Gateway::start(&config(
        "throttle: {per_client: 3, per_address: 5, window: 1m}",
        "trusted_proxies: [127.0.0.0/8]",
    ))
    .await;
    let sprayer = Some("192.0.2.1, 203.0.113.7");
    for i in 0..5 {
        // Unknown ids, malformed credentials: all failures of this address.
        let answer = if i == 4 {
            send(
                "POST",
                &gateway.url("/oauth2/token"),
                &[
                    ("authorization", "Basic !!!not-base64"),
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("x-forwarded-for", "203.0.113.7"),
                ],
                b"grant_type=client_credentials",
            )
            .await
        } else {
            grant(&gateway, &format!("nobody-{i}"), "x", sprayer).await
        };
        answer.assert_error(401, "invalid_client");
    }
    // The address (the nearest hop the trusted proxy vouches for) is now
    // throttled whatever the client, correct credentials included.
    assert_throttled(&grant(&gateway, "c2", "s3cret", sprayer).await, 60);
    // The left hop was written by the client: it does not count.
    assert_eq!(
        grant(&gateway, "c2", "s3cret", Some("192.0.2.1"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    let gateway = Gateway::start(&config(
        "throttle: {per_client: 2, per_address: 50, window: 1m}",
        "",
    ))
    .await;
    // Each attempt claims a new address; the peer (127.0.0.1) is what counts.
    for i in 0..2 {
        grant(&gateway, "c1", "wrong", Some(&format!("192.0.2.{i}")))
            .await
            .assert_error(401, "invalid_client");
    }
    assert_throttled(
        &grant(&gateway, "c1", "s3cret", Some("192.0.2.99")).await,
        60,
    );
}

#[tokio::test]
async fn a_successful_login_forgives_that_clients_earlier_typos() {
    let gateway = Gateway::start(&config(
        "throttle: {per_client: 3, per_address: 50, window: 1m}",
        "",
    ))
    .await;
    for _ in 0..2 {
        grant(&gateway, "c1", "typo", None)
            .await
            .assert_error(401, "invalid_client");
    }
    assert_eq!(grant(&gateway, "c1", "s3cret", None).await.status, 200);
    for _ in 0..2 {
        grant(&gateway, "c1", "typo", None)
            .await
            .assert_error(401, "invalid_client");
    }
    assert_eq!(grant(&gateway, "c1", "s3cret", None).await.status, 200);
}

#[tokio::test]
async fn throttle_settings_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    write_keys(dir.path());
    for (throttle, field) in [
        (
            "throttle: {per_client: 0}",
            "token_endpoint.throttle.per_client",
        ),
        (
            "throttle: {per_address: 0}",
            "token_endpoint.throttle.per_address",
        ),
        ("throttle: {window: 0s}", "token_endpoint.throttle.window"),
    ] {
        let path = dir.path().join("gw.yaml");
        std::fs::write(&path, config(throttle, "admin: 127.0.0.1:0")).unwrap();
        let source = jwtgate::config::ConfigSource::read(&path).unwrap();
        let error = jwtgate::server::RunningGateway::start(source)
            .await
            .err()
            .expect("refused");
        assert!(
            error.starts_with(&format!("{}: {field}: ", path.display())),
            "{error}"
        );
    }
    let path = dir.path().join("gw.yaml");
    std::fs::write(
        &path,
        config("", "admin: 127.0.0.1:0\ntrusted_proxies: [10.0.0.0/33]"),
    )
    .unwrap();
    let source = jwtgate::config::ConfigSource::read(&path).unwrap();
    let error = jwtgate::server::RunningGateway::start(source)
        .await
        .err()
        .expect("refused");
    assert!(error.contains(": trusted_proxies[0]: "), "{error}");
}
