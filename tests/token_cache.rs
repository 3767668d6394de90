//! The verified-token cache: a hit skips only the signature; claims are
//! re-checked on every hit; removing a key invalidates its entries; the cache
//! is bounded in entries and token size.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// `jwtgate_token_cache_requests_total{result=…}` as `(miss, hit)`.
async fn cache_counts(gateway: &Gateway) -> (u64, u64) {
    let answer = get(&gateway.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    let count = |result: &str| {
        let prefix = format!("jwtgate_token_cache_requests_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap()
            .parse()
            .unwrap()
    };
    (count("miss"), count("hit"))
}

fn config(upstream: &str, cache: &str) -> String {
    format!(
        "listen: 127.0.0.1:0
{cache}
keys:
  - {{kid: gw, alg: RS256, public_key: keys/gw.pub.pem}}
routes:
  - name: read
    match: {{path_prefix: /read}}
    upstream: {upstream}
    policies: [{{jwt: {{audience: orders, scopes: [read], leeway: 0s}}}}]
  - name: admin
    match: {{path_prefix: /admin}}
    upstream: {upstream}
    policies: [{{jwt: {{audience: orders, scopes: [admin]}}}}]
  - name: billing
    match: {{path_prefix: /billing}}
    upstream: {upstream}
    policies: [{{jwt: {{audience: billing}}}}]
  - name: named
    match: {{path_prefix: /named}}
    upstream: {upstream}
    policies: [{{jwt: {{audience: orders, scopes: [read], inject: {{subject: x-user, scopes: x-granted}}}}}}]
"
    )
}

async fn call(gateway: &Gateway, path: &str, token: &str) -> Answer {
    get(
        &gateway.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

#[tokio::test]
async fn a_hit_skips_the_signature_but_never_the_claims() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(&upstream.url(), "")).await;
    let token = gw_token(&claims(json!({})));

    assert_eq!(call(&gateway, "/read/1", &token).await.status, 200);
    assert_eq!(cache_counts(&gateway).await, (1, 0));
    assert_eq!(call(&gateway, "/read/2", &token).await.status, 200);
    assert_eq!(cache_counts(&gateway).await, (1, 1));

    // The same cached token against other rules: refused by the claim checks.
    let answer = call(&gateway, "/admin/1", &token).await;
    answer.assert_error(403, "insufficient_scope");
    call(&gateway, "/billing/1", &token)
        .await
        .assert_error(401, "invalid_token");
    assert_eq!(cache_counts(&gateway).await, (1, 3));
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn a_cached_token_expires_on_time() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(&upstream.url(), "")).await;
    // `exp` one second ahead; the route has no leeway.
    let token = gw_token(&claims(json!({"exp": now() + 1})));
    assert_eq!(call(&gateway, "/read/1", &token).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let answer = call(&gateway, "/read/1", &token).await;
    answer.assert_error(401, "invalid_token");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(
            r#"Bearer realm="jwtgate", error="invalid_token", error_description="token has expired""#
        )
    );
    assert_eq!(
        cache_counts(&gateway).await,
        (1, 1),
        "refused from the cache"
    );
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn removing_a_key_refuses_its_cached_tokens_at_once() {
    let upstream = Upstream::start().await;
    let yaml = config(&upstream.url(), "");
    let gateway = Gateway::start(&yaml).await;
    let runtime = gateway.running.runtime.clone();
    let token = gw_token(&claims(json!({})));
    assert_eq!(call(&gateway, "/read/1", &token).await.status, 200);
    assert_eq!(runtime.token_cache.len(), 1);

    // Swap `gw` for another key under another kid, and reload.
    let rotated = yaml.replace(
        "{kid: gw, alg: RS256, public_key: keys/gw.pub.pem}",
        "{kid: ec, alg: ES256, public_key: keys/ec.pub.pem}",
    );
    std::fs::write(gateway.config_path(), rotated).unwrap();
    let reloading = runtime.clone();
    let outcome =
        tokio::task::spawn_blocking(move || reloading.reload(jwtgate::reload::Trigger::Signal))
            .await
            .unwrap();
    assert_eq!(outcome, jwtgate::reload::Outcome::Applied);
    assert!(runtime.token_cache.is_empty(), "a reload empties the cache");

    let answer = call(&gateway, "/read/1", &token).await;
    answer.assert_error(401, "invalid_token");
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn the_cache_is_bounded_in_entries_and_token_size() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(
        &upstream.url(),
        "token_cache: {max_entries: 32, max_token_bytes: 1024}",
    ))
    .await;
    let runtime = gateway.running.runtime.clone();
    for i in 0..100 {
        let token = gw_token(&claims(json!({"jti": format!("t{i}")})));
        assert_eq!(call(&gateway, "/read/1", &token).await.status, 200);
        assert!(runtime.token_cache.len() <= 32);
    }
    assert!(runtime.token_cache.len() >= 16, "it does cache");
    assert_eq!(cache_counts(&gateway).await, (100, 0));

    // A token over max_token_bytes is verified every time, never stored.
    let long = gw_token(&claims(json!({"pad": "x".repeat(1200)})));
    assert!(long.len() > 1024);
    for _ in 0..3 {
        assert_eq!(call(&gateway, "/read/1", &long).await.status, 200);
    }
    assert_eq!(cache_counts(&gateway).await, (103, 0));
}

#[tokio::test]
async fn max_entries_zero_turns_the_cache_off() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(&upstream.url(), "token_cache: {max_entries: 0}")).await;
    let token = gw_token(&claims(json!({})));
    for _ in 0..3 {
        assert_eq!(call(&gateway, "/read/1", &token).await.status, 200);
    }
    assert_eq!(cache_counts(&gateway).await, (3, 0));
    assert!(gateway.running.runtime.token_cache.is_empty());
}

#[tokio::test]
async fn a_remembered_verdict_is_reused_by_its_own_policy_alone() {
    // A cached token remembers the last policy's verdict (its identity
    // headers), and a hit on that policy re-checks only the time claims.
    // Alternating routes with other rules and other header names must each
    // get their own verdict, every time.
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(&upstream.url(), "")).await;
    let token = gw_token(&claims(json!({"sub": "svc-7", "scope": "read write"})));
    for round in 0..3 {
        for path in [format!("/read/{round}"), format!("/read/{round}b")] {
            assert_eq!(call(&gateway, &path, &token).await.status, 200, "{path}");
        }
        call(&gateway, "/admin/1", &token)
            .await
            .assert_error(403, "insufficient_scope");
        for path in [format!("/named/{round}"), format!("/named/{round}b")] {
            assert_eq!(call(&gateway, &path, &token).await.status, 200, "{path}");
        }
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 12);
    for request in &seen {
        let named = request.target.starts_with("/named");
        let (subject, scopes, absent) = if named {
            ("x-user", "x-granted", ["x-auth-subject", "x-auth-scopes"])
        } else {
            ("x-auth-subject", "x-auth-scopes", ["x-user", "x-granted"])
        };
        let target = &request.target;
        assert_eq!(header_values(request, subject), ["svc-7"], "{target}");
        assert_eq!(header_values(request, scopes), ["read write"], "{target}");
        for name in absent {
            assert!(
                header_values(request, name).is_empty(),
                "{name} on {target}"
            );
        }
    }
    assert_eq!(cache_counts(&gateway).await, (1, 14));
}
