//! The access log: one JSON line per request with the documented fields,
//! and never the token. One test per binary: the subscriber is installed
//! for this (current-thread) runtime only.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn each_request_logs_one_json_line_with_its_fields_and_never_the_token() {
    let captured = CapturedLogs::default();
    let _guard = captured.install("jwtgate=debug");

    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&format!(
        "listen: 127.0.0.1:0
keys:
  - {{kid: gw, alg: RS256, public_key: keys/gw.pub.pem}}
routes:
  - name: orders
    match: {{path_prefix: /orders}}
    upstream: {}
    policies: [{{jwt: {{audience: orders, scopes: [read]}}}}]
",
        upstream.url()
    ))
    .await;
    let token = gw_token(&claims(json!({})));
    let expired = gw_token(&claims(json!({"exp": now() - 100, "iat": now() - 400})));

    let ok = get(
        &gateway.url("/orders/7?access_token=query-secret"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-request-id", "req-1"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    let refused = get(
        &gateway.url("/orders/8"),
        &[("authorization", &format!("Bearer {expired}"))],
    )
    .await;
    assert_eq!(refused.status, 401);
    let missing = get(&gateway.url("/missing"), &[]).await;
    assert_eq!(missing.status, 404);

    // The line is written when the body has been sent: wait for all three.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while captured.access_lines().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            captured.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let lines = captured.access_lines();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let fields: Vec<&Value> = lines.iter().map(|l| &l["fields"]).collect();

    let served = fields[0];
    assert_eq!(served["route"], "orders");
    assert_eq!(served["method"], "GET");
    assert_eq!(served["path"], "/orders/7", "never the query string");
    assert_eq!(served["status"], 200);
    assert_eq!(served["subject"], "alice");
    assert_eq!(served["bytes"], br#"{"upstream":"ok"}"#.len());
    assert_eq!(served["request_id"], "req-1");
    assert_eq!(served["completed"], true);
    assert!(served["reason"].is_null(), "{served}");
    assert!(served["duration_ms"].as_f64().unwrap() > 0.0);
    let upstream_ms = served["upstream_ms"].as_f64().unwrap();
    assert!(upstream_ms > 0.0 && upstream_ms <= served["duration_ms"].as_f64().unwrap());
    assert!(served["peer"].as_str().unwrap().starts_with("127.0.0.1:"));

    let refused = fields[1];
    assert_eq!(refused["route"], "orders");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["reason"], "expired");
    assert!(refused["subject"].is_null(), "{refused}");
    assert!(refused["upstream_ms"].is_null(), "{refused}");
    assert_eq!(refused["path"], "/orders/8");

    let unrouted = fields[2];
    assert_eq!(unrouted["route"], "none");
    assert_eq!(unrouted["status"], 404);
    assert_eq!(unrouted["path"], "/missing");

    // Nothing logged — access lines or the debug lines about refusals —
    // carries a token, a part of one, or the query string.
    let everything = captured.text();
    for secret in [
        token.as_str(),
        token.split('.').nth(2).unwrap(),
        expired.split('.').nth(1).unwrap(),
        "query-secret",
    ] {
        assert!(!everything.contains(secret), "a secret was logged");
    }
    assert!(
        everything.contains("request refused"),
        "debug lines were on"
    );
}
