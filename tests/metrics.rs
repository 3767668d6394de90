//! `/metrics` on the admin listener (SPEC §3): exact counter values after a
//! known mix of requests, series bounded whatever the paths, and the admin
//! endpoints' answers.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;

/// `hashlib.sha256(b"s3cret").hexdigest()`, computed outside this project.
const SHA256_S3CRET: &str = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0";
/// `base64("c1:s3cret")`.
const BASIC_C1: &str = "Basic YzE6czNjcmV0";
/// `base64("c1:wrong")`.
const BASIC_C1_WRONG: &str = "Basic YzE6d3Jvbmc=";

/// The samples of a Prometheus text exposition: name and label set → value.
#[derive(Debug)]
struct Scrape(BTreeMap<(String, BTreeMap<String, String>), f64>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            let old = samples.insert((name.to_owned(), labels), value);
            assert!(old.is_none(), "duplicate series {line}");
        }
        Scrape(samples)
    }

    /// The value of one series; `None` when it is not exported.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0.get(&(name.to_owned(), labels)).copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Every series of the `jwtgate_*` family `name`, as label maps.
    fn series_of(&self, name: &str) -> Vec<&BTreeMap<String, String>> {
        self.0
            .keys()
            .filter(|(n, _)| n == name)
            .map(|(_, labels)| labels)
            .collect()
    }
}

async fn scrape(gateway: &Gateway) -> Scrape {
    let answer = get(&gateway.admin_url("/metrics"), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Scrape::parse(std::str::from_utf8(&answer.body).unwrap())
}

fn config(upstream: &str, closed: std::net::SocketAddr) -> String {
    format!(
        "listen: 127.0.0.1:0
admin: 127.0.0.1:0
keys:
  - {{kid: gw, alg: RS256, private_key: keys/gw.pem}}
token_endpoint:
  path: /oauth2/token
  signing_key: gw
  audience: orders
  clients:
    - id: c1
      secret_hash: \"sha256:{SHA256_S3CRET}\"
      scopes: [read]
routes:
  - name: orders
    match: {{path_prefix: /orders}}
    upstream: {upstream}
    policies: [{{jwt: {{audience: orders, scopes: [read]}}}}]
  - name: admin-api
    match: {{path_prefix: /admin-api}}
    upstream: {upstream}
    policies: [{{jwt: {{audience: orders, scopes: [admin]}}}}]
  - name: down
    match: {{path_prefix: /down}}
    upstream: http://{closed}
    policies: []
"
    )
}

async fn token_request(gateway: &Gateway, authorization: &str, body: &str) -> u16 {
    send(
        "POST",
        &gateway.url("/oauth2/token"),
        &[
            ("authorization", authorization),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    )
    .await
    .status
    .as_u16()
}

async fn orders(gateway: &Gateway, method: &str, authorization: Option<&str>) -> u16 {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    send(method, &gateway.url("/orders/7"), &headers, b"")
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn counters_match_a_known_mix_of_requests_exactly() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(&upstream.url(), closed_port().await)).await;

    // Before any request: every counter with known labels is exported at 0.
    let before = scrape(&gateway).await;
    for result in [
        "issued",
        "invalid_request",
        "invalid_client",
        "invalid_scope",
        "unsupported_grant_type",
        "throttled",
    ] {
        assert_eq!(
            before.get("jwtgate_token_requests_total", &[("result", result)]),
            Some(0.0),
            "{result}"
        );
    }
    for reason in [
        "missing_token",
        "malformed",
        "invalid_signature",
        "unknown_key",
        "algorithm_not_allowed",
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "insufficient_scope",
        "invalid_claims",
    ] {
        for route in ["orders", "admin-api"] {
            assert_eq!(
                before.get(
                    "jwtgate_auth_failures_total",
                    &[("route", route), ("reason", reason)]
                ),
                Some(0.0),
                "{route} {reason}"
            );
        }
    }
    for kind in ["connect", "timeout", "reset", "protocol"] {
        assert_eq!(
            before.get(
                "jwtgate_upstream_errors_total",
                &[("route", "down"), ("kind", kind)]
            ),
            Some(0.0)
        );
    }
    for (name, result) in [
        ("jwtgate_config_reloads_total", "success"),
        ("jwtgate_config_reloads_total", "failure"),
        ("jwtgate_token_cache_requests_total", "hit"),
        ("jwtgate_token_cache_requests_total", "miss"),
    ] {
        assert_eq!(before.get(name, &[("result", result)]), Some(0.0));
    }
    assert!(before.series_of("jwtgate_requests_total").is_empty());
    assert!(
        before.value("jwtgate_config_last_reload_success_timestamp_seconds", &[])
            > (now() - 60) as f64
    );

    // The token endpoint: 2 issued and one of each refusal.
    assert_eq!(
        token_request(&gateway, BASIC_C1, "grant_type=client_credentials").await,
        200
    );
    assert_eq!(
        token_request(&gateway, BASIC_C1, "grant_type=client_credentials").await,
        200
    );
    assert_eq!(
        token_request(&gateway, BASIC_C1_WRONG, "grant_type=client_credentials").await,
        401
    );
    assert_eq!(
        token_request(&gateway, BASIC_C1, "grant_type=password").await,
        400
    );
    assert_eq!(
        token_request(
            &gateway,
            BASIC_C1,
            "grant_type=client_credentials&scope=admin"
        )
        .await,
        400
    );
    assert_eq!(token_request(&gateway, BASIC_C1, "scope=read").await, 400);

    // A protected route: 4 accepted, 6 refused for 6 reasons.
    let good = format!("Bearer {}", gw_token(&claims(json!({}))));
    let expired = format!(
        "Bearer {}",
        gw_token(&claims(json!({"exp": now() - 120, "iat": now() - 400})))
    );
    let wrong_audience = format!("Bearer {}", gw_token(&claims(json!({"aud": "billing"}))));
    let bad_signature = format!(
        "Bearer {}",
        mint(
            &keys().rogue_rsa,
            jsonwebtoken::Algorithm::RS256,
            Some("gw"),
            &claims(json!({}))
        )
    );
    let unknown_key = format!(
        "Bearer {}",
        mint(
            &keys().rsa,
            jsonwebtoken::Algorithm::RS256,
            Some("nope"),
            &claims(json!({}))
        )
    );
    for _ in 0..3 {
        assert_eq!(orders(&gateway, "GET", Some(&good)).await, 200);
    }
    assert_eq!(orders(&gateway, "POST", Some(&good)).await, 200);
    assert_eq!(orders(&gateway, "GET", None).await, 401);
    assert_eq!(orders(&gateway, "GET", Some("Basic YTpi")).await, 400);
    assert_eq!(orders(&gateway, "GET", Some(&expired)).await, 401);
    assert_eq!(orders(&gateway, "GET", Some(&wrong_audience)).await, 401);
    assert_eq!(orders(&gateway, "GET", Some(&bad_signature)).await, 401);
    assert_eq!(orders(&gateway, "GET", Some(&unknown_key)).await, 401);
    // A valid token without the `admin` scope.
    let answer = get(&gateway.url("/admin-api/x"), &[("authorization", &good)]).await;
    assert_eq!(answer.status, 403);
    // An upstream that is down, twice; a path no route matches.
    for _ in 0..2 {
        assert_eq!(get(&gateway.url("/down/x"), &[]).await.status, 502);
    }
    assert_eq!(get(&gateway.url("/nope"), &[]).await.status, 404);

    let after = scrape(&gateway).await;
    let requests = |route: &str, method: &str, status: &str| {
        after.get(
            "jwtgate_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    let expected_requests = [
        ("token", "POST", "200", 2.0),
        ("token", "POST", "401", 1.0),
        ("token", "POST", "400", 3.0),
        ("orders", "GET", "200", 3.0),
        ("orders", "POST", "200", 1.0),
        ("orders", "GET", "401", 5.0),
        ("orders", "GET", "400", 1.0),
        ("admin-api", "GET", "403", 1.0),
        ("down", "GET", "502", 2.0),
        ("none", "GET", "404", 1.0),
    ];
    for (route, method, status, count) in expected_requests {
        assert_eq!(
            requests(route, method, status),
            Some(count),
            "{route} {method} {status}"
        );
    }
    assert_eq!(
        after.series_of("jwtgate_requests_total").len(),
        expected_requests.len(),
        "no other request series: {:?}",
        after.series_of("jwtgate_requests_total")
    );

    let token_results = [
        ("issued", 2.0),
        ("invalid_client", 1.0),
        ("unsupported_grant_type", 1.0),
        ("invalid_scope", 1.0),
        ("invalid_request", 1.0),
        ("throttled", 0.0),
    ];
    for (result, count) in token_results {
        assert_eq!(
            after.get("jwtgate_token_requests_total", &[("result", result)]),
            Some(count),
            "{result}"
        );
    }

    let failures = |route: &str, reason: &str| {
        after.value(
            "jwtgate_auth_failures_total",
            &[("route", route), ("reason", reason)],
        )
    };
    for (reason, count) in [
        ("missing_token", 1.0),
        ("malformed", 1.0),
        ("expired", 1.0),
        ("wrong_audience", 1.0),
        ("invalid_signature", 1.0),
        ("unknown_key", 1.0),
        ("not_yet_valid", 0.0),
        ("wrong_issuer", 0.0),
        ("algorithm_not_allowed", 0.0),
        ("insufficient_scope", 0.0),
        ("invalid_claims", 0.0),
    ] {
        assert_eq!(failures("orders", reason), count, "orders {reason}");
    }
    assert_eq!(failures("admin-api", "insufficient_scope"), 1.0);
    assert_eq!(failures("admin-api", "missing_token"), 0.0);

    assert_eq!(
        after.value(
            "jwtgate_upstream_errors_total",
            &[("route", "down"), ("kind", "connect")]
        ),
        2.0
    );
    assert_eq!(
        after.value(
            "jwtgate_upstream_errors_total",
            &[("route", "down"), ("kind", "timeout")]
        ),
        0.0
    );

    // Verifications that reached the signature: the good token 5 times (4
    // on orders, 1 on admin-api: one check, then 4 cache hits — the claims
    // are re-checked on each), the expired and the wrong-audience tokens
    // (claims come after the signature: checked, and cached), the bad
    // signature (checked, never cached). Not the missing, malformed and
    // unknown-key ones.
    assert_eq!(
        after.value("jwtgate_token_cache_requests_total", &[("result", "miss")]),
        4.0
    );
    assert_eq!(
        after.value("jwtgate_token_cache_requests_total", &[("result", "hit")]),
        4.0
    );

    // Histograms: one observation per answered request on its route; the
    // upstream histogram only where an upstream was called.
    let count = |name: &str, route: &str| after.get(name, &[("route", route)]);
    assert_eq!(
        count("jwtgate_request_duration_seconds_count", "orders"),
        Some(10.0)
    );
    assert_eq!(
        count("jwtgate_request_duration_seconds_count", "token"),
        Some(6.0)
    );
    assert_eq!(
        count("jwtgate_upstream_duration_seconds_count", "orders"),
        Some(4.0)
    );
    assert_eq!(
        count("jwtgate_upstream_duration_seconds_count", "down"),
        Some(2.0)
    );
    assert_eq!(
        count("jwtgate_upstream_duration_seconds_count", "admin-api"),
        None
    );
    // Sub-millisecond buckets exist.
    assert!(after
        .get(
            "jwtgate_request_duration_seconds_bucket",
            &[("route", "orders"), ("le", "0.0001")]
        )
        .is_some());
    assert_eq!(
        after.value(
            "jwtgate_request_duration_seconds_bucket",
            &[("route", "orders"), ("le", "+Inf")]
        ),
        10.0
    );

    // The standard process metrics.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(after.value(name, &[]) > 0.0, "{name}");
    }
}

#[tokio::test]
async fn a_flood_of_random_paths_adds_no_series() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(&upstream.url(), closed_port().await)).await;
    let token = format!("Bearer {}", gw_token(&claims(json!({}))));
    let client = client();
    let get_path = |path: String, authorization: Option<&str>| {
        let mut request = Request::get(gateway.url(&path));
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let request = request.body(Full::new(Bytes::new())).unwrap();
        let client = &client;
        async move {
            let response = tokio::time::timeout(DEADLINE, client.request(request))
                .await
                .expect("timely")
                .expect("answered");
            let status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            status
        }
    };
    // One of each kind first, so the series they need exist.
    assert_eq!(get_path("/nope".into(), None).await, 404);
    assert_eq!(get_path("/orders/x".into(), Some(&token)).await, 200);
    let first = scrape(&gateway).await;

    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..1_000 {
        // xorshift: different paths every request, no dependency needed.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let (status, wanted) = if i % 2 == 0 {
            (get_path(format!("/r{seed:x}/{i}"), None).await, 404)
        } else {
            // Random paths under a route reach it with its route label.
            (
                get_path(format!("/orders/{seed:x}"), Some(&token)).await,
                200,
            )
        };
        assert_eq!(status, wanted, "request {i}");
    }

    let last = scrape(&gateway).await;
    assert_eq!(
        last.len(),
        first.len(),
        "series before and after 1,000 random paths"
    );
    assert_eq!(
        last.value(
            "jwtgate_requests_total",
            &[("route", "none"), ("method", "GET"), ("status", "404")]
        ),
        501.0
    );
    assert_eq!(
        last.value(
            "jwtgate_requests_total",
            &[("route", "orders"), ("method", "GET"), ("status", "200")]
        ),
        501.0
    );
}

#[tokio::test]
async fn admin_endpoints_answer_json_and_only_on_the_admin_listener() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(&upstream.url(), closed_port().await)).await;

    let health = get(&gateway.admin_url("/healthz"), &[]).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.header("content-type"), Some("application/json"));
    assert_eq!(health.json(), json!({"status": "alive"}));
    let ready = get(&gateway.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json(), json!({"status": "ready"}));

    get(&gateway.admin_url("/other"), &[])
        .await
        .assert_error(404, "not_found");
    let post = send("POST", &gateway.admin_url("/metrics"), &[], b"").await;
    post.assert_error(405, "method_not_allowed");
    assert_eq!(post.header("allow"), Some("GET, HEAD"));

    // The public listener serves none of them.
    for path in ["/metrics", "/healthz", "/readyz"] {
        get(&gateway.url(path), &[])
            .await
            .assert_error(404, "not_found");
    }
    assert_eq!(upstream.count(), 0);

    // Shutting down: not ready while draining.
    let runtime = gateway.running.runtime.clone();
    runtime.start_draining();
    let draining = jwtgate::admin::handle(&runtime, &http::Method::GET, "/readyz");
    assert_eq!(draining.status(), 503);
    let body = draining.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"status":"draining"}"#);
    let alive = jwtgate::admin::handle(&runtime, &http::Method::GET, "/healthz");
    assert_eq!(alive.status(), 200);
}
