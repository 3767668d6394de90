//! `jwtgate explain` and the admin token inspector: for each kind of token,
//! the step that decides, the answer, the CLI's exit code — and that the
//! verdict is always what a running gateway answers for the same token and
//! route. Then the admin UI's endpoints: `/api/status`, `/api/explain`
//! with its Host/Origin, content-type and size rules, the CSP, and
//! `admin_ui: false`.

mod common;

#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use jwtgate::explain::{self, Explanation, RouteQuery};
use jwtgate::runtime::Runtime;
use process::{jwtgate, run_with_timeout};
use serde_json::{json, Value};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

fn config(upstream: &str, admin_ui: bool) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: 127.0.0.1:0
admin_ui: {admin_ui}
keys:
  - {{kid: gw, alg: RS256, private_key: keys/gw.pem}}
  - {{kid: ec, alg: ES256, public_key: keys/ec.pub.pem}}
routes:
  - name: orders
    match: {{path_prefix: /orders, methods: [GET, POST]}}
    upstream: {upstream}
    policies:
      - jwt:
          audience: orders
          scopes: [read, write]
          inject: {{claims: {{tenant: X-Tenant}}}}
  - name: issuer
    match: {{path_prefix: /issuer}}
    upstream: {upstream}
    policies: [{{jwt: {{audience: orders, issuer: "https://gw.example"}}}}]
  - name: public
    match: {{path_prefix: /public}}
    upstream: {upstream}
"#
    )
}

async fn setup(admin_ui: bool) -> (Gateway, Upstream) {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(&upstream.url(), admin_ui)).await;
    (gateway, upstream)
}

/// One token, one route, and what explain must say about it.
struct Case {
    name: &'static str,
    token: String,
    route: &'static str,
    path: &'static str,
    /// The first failing step; `None` when accepted.
    failed_step: Option<&'static str>,
    /// `accepted` or the metrics reason.
    verdict: &'static str,
    status: u16,
}

fn cases() -> Vec<Case> {
    let k = keys();
    let now = now();
    let valid = claims(json!({"tenant": "acme"}));
    let good = gw_token(&valid);
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 5;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let payload = valid.to_string();
    let case = |name, token, route, failed_step, verdict, status| Case {
        name,
        token,
        route,
        path: match route {
            "issuer" => "/issuer/1",
            "public" => "/public/1",
            _ => "/orders/7",
        },
        failed_step,
        verdict,
        status,
    };
    vec![
        case("valid", good.clone(), "orders", None, "accepted", 200),
        case(
            "expired just outside the leeway",
            gw_token(&claims(json!({"exp": now - 31}))),
            "orders",
            Some("exp"),
            "expired",
            401,
        ),
        case(
            "expired inside the leeway",
            gw_token(&claims(json!({"exp": now - 20}))),
            "orders",
            None,
            "accepted",
            200,
        ),
        case(
            "not yet valid",
            gw_token(&claims(json!({"nbf": now + 60}))),
            "orders",
            Some("nbf"),
            "not_yet_valid",
            401,
        ),
        case(
            "wrong audience",
            gw_token(&claims(json!({"aud": "billing"}))),
            "orders",
            Some("aud"),
            "wrong_audience",
            401,
        ),
        case(
            "wrong issuer",
            gw_token(&claims(json!({"iss": "https://evil.example"}))),
            "issuer",
            Some("iss"),
            "wrong_issuer",
            401,
        ),
        case(
            "a missing scope",
            gw_token(&claims(json!({"scopes": "read"}))),
            "orders",
            Some("scope"),
            "insufficient_scope",
            403,
        ),
        case(
            "an unknown kid",
            mint(
                &k.rogue_rsa,
                jsonwebtoken::Algorithm::RS256,
                Some("nope"),
                &valid,
            ),
            "orders",
            Some("key"),
            "unknown_key",
            401,
        ),
        case(
            "a bad signature",
            String::from_utf8(flipped).unwrap(),
            "orders",
            Some("signature"),
            "invalid_signature",
            401,
        ),
        case(
            "signed by another key under our kid",
            mint(
                &k.rogue_rsa,
                jsonwebtoken::Algorithm::RS256,
                Some("gw"),
                &valid,
            ),
            "orders",
            Some("signature"),
            "invalid_signature",
            401,
        ),
        case(
            "alg none without a signature",
            raw_token(r#"{"alg":"none","kid":"gw"}"#, &payload, b""),
            "orders",
            Some("syntax"),
            "invalid_signature",
            401,
        ),
        case(
            "alg none with a signature",
            raw_token(r#"{"alg":"none","kid":"gw"}"#, &payload, b"x"),
            "orders",
            Some("algorithm"),
            "algorithm_not_allowed",
            401,
        ),
        case(
            "RS256 token for the ES256 key",
            mint(&k.rsa, jsonwebtoken::Algorithm::RS256, Some("ec"), &valid),
            "orders",
            Some("algorithm"),
            "algorithm_not_allowed",
            401,
        ),
        case(
            "a malformed token",
            "not-a-token".to_owned(),
            "orders",
            Some("syntax"),
            "malformed",
            401,
        ),
        case(
            "a valid token with trailing whitespace (HTTP drops it)",
            format!("{good} \t"),
            "orders",
            None,
            "accepted",
            200,
        ),
        case(
            "a token with a space",
            format!("{good} x"),
            "orders",
            Some("authorization"),
            "malformed",
            400,
        ),
        case(
            "no exp",
            gw_token(&claims(json!({"exp": null}))),
            "orders",
            Some("time_claims"),
            "invalid_claims",
            401,
        ),
        case(
            "any token on a public route",
            "not-a-token".to_owned(),
            "public",
            None,
            "accepted",
            200,
        ),
    ]
}

fn explain_on(runtime: &Runtime, route: &str, token: &str) -> Explanation {
    let snapshot = runtime.snapshot();
    let route = explain::find_route(&snapshot, &RouteQuery::Name(route)).unwrap();
    explain::explain(&snapshot, route, token, now())
}

/// The auth-related metric lines and the cache size: what explain must
/// never change.
fn observable_state(runtime: &Runtime) -> (Vec<String>, usize) {
    let text = String::from_utf8(runtime.metrics.render()).unwrap();
    let lines = text
        .lines()
        .filter(|l| {
            l.starts_with("jwtgate_auth_failures_total")
                || l.starts_with("jwtgate_requests_total")
                || l.starts_with("jwtgate_token_cache_requests_total")
        })
        .map(str::to_owned)
        .collect();
    (lines, runtime.token_cache.len())
}

#[tokio::test]
async fn each_case_names_its_failing_step_and_matches_the_running_gateway() {
    let (gw, up) = setup(false).await;
    let runtime = gw.running.runtime.clone();
    for case in cases() {
        let name = case.name;
        let before = observable_state(&runtime);
        let explained = explain_on(&runtime, case.route, &case.token);
        assert_eq!(
            observable_state(&runtime),
            before,
            "{name}: explain changed metrics or the token cache"
        );

        assert_eq!(
            explained.failed_step, case.failed_step,
            "{name}: {explained:#?}"
        );
        assert_eq!(explained.verdict, case.verdict, "{name}");
        assert_eq!(explained.accepted, case.failed_step.is_none(), "{name}");
        // The failing step is the last one run: everything after it is
        // marked not reached, nothing after it passed or failed.
        if let Some(step) = case.failed_step {
            let at = explained
                .steps
                .iter()
                .position(|s| s.result == "fail")
                .unwrap();
            assert_eq!(explained.steps[at].step, step, "{name}");
            assert_eq!(explained.steps[at].reason, Some(case.verdict), "{name}");
            assert!(
                explained.steps[at + 1..]
                    .iter()
                    .all(|s| s.result == "not_reached"),
                "{name}: {:#?}",
                explained.steps
            );
        } else {
            assert!(
                explained.steps.iter().all(|s| s.result == "pass"),
                "{name}: {:#?}",
                explained.steps
            );
        }

        // The gateway, for the same token and route.
        let seen_before = up.count();
        let auth = format!("Bearer {}", case.token);
        let answer = get(&gw.url(case.path), &[("authorization", &auth)]).await;
        assert_eq!(
            answer.status.as_u16(),
            case.status,
            "{name}: {:?}",
            answer.body
        );
        match &explained.refusal {
            Some(refusal) => {
                assert_eq!(refusal.status, answer.status.as_u16(), "{name}");
                assert_eq!(
                    refusal.www_authenticate.as_deref(),
                    answer.header("www-authenticate"),
                    "{name}"
                );
                assert_eq!(refusal.body, answer.json(), "{name}");
                assert_eq!(up.count(), seen_before, "{name}: refused but forwarded");
            }
            None => {
                assert_eq!(answer.body, r#"{"upstream":"ok"}"#, "{name}");
                let seen = up.requests();
                let forwarded = seen.last().unwrap();
                for header in &explained.upstream_headers {
                    assert_eq!(
                        header_values(forwarded, &header.name),
                        vec![header.value.clone()],
                        "{name}: {}",
                        header.name
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn a_valid_token_is_explained_with_its_key_claims_and_upstream_headers() {
    let (gw, _up) = setup(false).await;
    let token = gw_token(&claims(json!({"tenant": "acme"})));
    let x = explain_on(&gw.running.runtime, "orders", &token);
    assert!(x.accepted);
    assert_eq!(x.header.as_ref().unwrap()["kid"], "gw");
    assert_eq!(x.claims.as_ref().unwrap()["sub"], "alice");
    let key = x.key.as_ref().unwrap();
    assert_eq!((key.kid.as_str(), key.alg), ("gw", "RS256"));
    assert!(key.source.starts_with("private_key "), "{}", key.source);
    assert!(key.source.ends_with("keys/gw.pem"), "{}", key.source);
    let headers: Vec<(&str, &str)> = x
        .upstream_headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(
        headers,
        vec![
            ("x-auth-subject", "alice"),
            ("x-auth-scopes", "read write"),
            ("x-tenant", "acme")
        ]
    );
    assert!(!x.forward_authorization);
    let steps: Vec<&str> = x.steps.iter().map(|s| s.step).collect();
    assert_eq!(
        steps,
        vec![
            "authorization",
            "syntax",
            "key",
            "algorithm",
            "signature",
            "time_claims",
            "exp",
            "nbf",
            "iss",
            "aud",
            "sub",
            "scopes",
            "scope",
            "scope",
            "inject"
        ]
    );
    // Times are given relative to now, with the leeway.
    let exp = x.steps.iter().find(|s| s.step == "exp").unwrap();
    assert!(
        exp.detail.contains("(in 4m") || exp.detail.contains("(in 5m"),
        "{}",
        exp.detail
    );
    assert!(exp.detail.contains("leeway 30s"), "{}", exp.detail);
}

#[tokio::test]
async fn an_expired_token_reports_how_long_ago_and_the_unknown_kid_the_keys_held() {
    let (gw, _up) = setup(false).await;
    let runtime = &gw.running.runtime;
    let expired = explain_on(
        runtime,
        "orders",
        &gw_token(&claims(json!({"exp": now() - 100}))),
    );
    let step = expired.steps.iter().find(|s| s.step == "exp").unwrap();
    assert_eq!(step.result, "fail");
    assert!(
        step.detail.contains("1m 40s ago") || step.detail.contains("1m 41s ago"),
        "{}",
        step.detail
    );
    assert_eq!(step.description, Some("token has expired"));

    let unknown = explain_on(
        runtime,
        "orders",
        &mint(
            &keys().rogue_rsa,
            jsonwebtoken::Algorithm::RS256,
            Some("nope"),
            &claims(json!({})),
        ),
    );
    assert!(unknown.key.is_none());
    let problem = unknown.key_problem.unwrap();
    assert!(problem.contains("kid `nope`"), "{problem}");
    assert!(problem.contains("`gw`, `ec`"), "{problem}");
}

// ---------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------

fn cli(config: &std::path::Path, args: &[&str], stdin: &[u8]) -> process::Output {
    let mut command = jwtgate();
    command
        .args(["explain", "-c", config.to_str().unwrap()])
        .args(args);
    run_with_timeout(command, stdin, COMMAND_TIMEOUT)
}

#[tokio::test]
async fn the_cli_exits_0_when_accepted_1_when_refused_like_the_gateway() {
    let (gw, _up) = setup(false).await;
    let config = gw.config_path();
    let wanted = [
        "valid",
        "expired just outside the leeway",
        "expired inside the leeway",
        "wrong issuer",
        "a missing scope",
        "an unknown kid",
        "a bad signature",
        "alg none without a signature",
        "a malformed token",
    ];
    for case in cases().into_iter().filter(|c| wanted.contains(&c.name)) {
        let name = case.name;
        let output = cli(&config, &["--route", case.route, &case.token], b"");
        let expected = if case.failed_step.is_none() { 0 } else { 1 };
        assert_eq!(output.code, Some(expected), "{name}: {output:?}");
        match case.failed_step {
            Some(step) => {
                assert!(
                    output
                        .stdout
                        .lines()
                        .any(|l| l.contains("✗ FAIL") && l.contains(&format!(" {step} "))),
                    "{name}: {}",
                    output.stdout
                );
                assert!(
                    output
                        .stdout
                        .contains(&format!("REFUSED ({})", case.verdict)),
                    "{name}: {}",
                    output.stdout
                );
                assert!(
                    output.stdout.contains(&format!("status   {}", case.status)),
                    "{name}: {}",
                    output.stdout
                );
            }
            None => assert!(output.stdout.contains("verdict  ACCEPTED"), "{name}"),
        }
        // The JSON form says the same, and the gateway agrees with it.
        let json_out = cli(
            &config,
            &["--json", "--route", case.route, &case.token],
            b"",
        );
        assert_eq!(json_out.code, Some(expected), "{name}");
        let x: Value = serde_json::from_str(&json_out.stdout).unwrap();
        assert_eq!(x["verdict"], case.verdict, "{name}");
        let auth = format!("Bearer {}", case.token);
        let answer = get(&gw.url(case.path), &[("authorization", &auth)]).await;
        if case.failed_step.is_some() {
            assert_eq!(x["refusal"]["status"], answer.status.as_u16(), "{name}");
            assert_eq!(
                x["refusal"]["www_authenticate"].as_str(),
                answer.header("www-authenticate"),
                "{name}"
            );
        } else {
            assert_eq!(answer.status, 200, "{name}");
        }
    }
}

#[tokio::test]
async fn the_cli_reads_the_token_from_stdin_and_routes_by_method_path_and_host() {
    let (gw, _up) = setup(false).await;
    let config = gw.config_path();
    let expired = gw_token(&claims(json!({"exp": now() - 31})));
    let stdin = format!("{expired}\n");
    let output = cli(
        &config,
        &["--method", "GET", "--path", "/orders/7"],
        stdin.as_bytes(),
    );
    assert_eq!(output.code, Some(1), "{output:?}");
    assert!(
        output.stdout.starts_with("route    orders "),
        "{}",
        output.stdout
    );
    assert!(output.stdout.contains("REFUSED (expired) at step `exp`"));
    assert!(output.stdout.contains(
        r#"WWW-Authenticate: Bearer realm="jwtgate", error="invalid_token", error_description="token has expired""#
    ));
    // DELETE is not a method of `orders`, and nothing else matches.
    let output = cli(
        &config,
        &["--method", "DELETE", "--path", "/orders/7", &expired],
        b"",
    );
    assert_eq!(output.code, Some(2), "{output:?}");
    assert!(
        output.stderr.contains("no route matches DELETE /orders/7"),
        "{}",
        output.stderr
    );
    // The token itself is never printed.
    let valid = gw_token(&claims(json!({})));
    let output = cli(
        &config,
        &["--path", "/orders", "--host", "any.example"],
        valid.as_bytes(),
    );
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(!output.stdout.contains(&valid));
    assert!(!output.stderr.contains(&valid));
}

#[tokio::test]
async fn the_cli_exits_2_on_config_and_usage_errors() {
    let (gw, _up) = setup(false).await;
    let token = gw_token(&claims(json!({})));
    let missing_route = cli(&gw.config_path(), &["--route", "nope", &token], b"");
    assert_eq!(missing_route.code, Some(2), "{missing_route:?}");
    assert!(missing_route.stderr.contains("no route named `nope`"));

    let broken = gw.dir.path().join("broken.yaml");
    std::fs::write(&broken, "routes: [").unwrap();
    let bad_config = cli(&broken, &["--route", "orders", &token], b"");
    assert_eq!(bad_config.code, Some(2), "{bad_config:?}");
    assert!(
        bad_config.stderr.contains("broken.yaml"),
        "{}",
        bad_config.stderr
    );

    let absent = cli(
        &gw.dir.path().join("absent.yaml"),
        &["--route", "orders", &token],
        b"",
    );
    assert_eq!(absent.code, Some(2), "{absent:?}");

    let no_route_arg = cli(&gw.config_path(), &[&token], b"");
    assert_eq!(no_route_arg.code, Some(2), "{no_route_arg:?}");
    let both = cli(
        &gw.config_path(),
        &["--route", "orders", "--path", "/x", &token],
        b"",
    );
    assert_eq!(both.code, Some(2), "{both:?}");
}

// ---------------------------------------------------------------------------
// The admin UI
// ---------------------------------------------------------------------------

async fn admin(
    runtime: &Runtime,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, http::HeaderMap, Bytes) {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let response = jwtgate::admin::handle_request(runtime, addr, request).await;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, body)
}

#[tokio::test]
async fn api_status_shows_routes_keys_jwks_reload_and_live_counters() {
    let (gw, _up) = setup(true).await;
    let runtime = gw.running.runtime.clone();
    let addr = gw.running.admin_addr;
    // One refused request, counted.
    let expired = gw_token(&claims(json!({"exp": now() - 100})));
    let auth = format!("Bearer {expired}");
    get(&gw.url("/orders"), &[("authorization", &auth)])
        .await
        .assert_error(401, "invalid_token");

    let host = addr.to_string();
    let (status, headers, body) = admin(
        &runtime,
        addr,
        Method::GET,
        "/api/status",
        &[("host", &host)],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-store");
    let doc: Value = serde_json::from_slice(&body).unwrap();
    let routes: Vec<&str> = doc["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(routes, vec!["orders", "issuer", "public"]);
    assert_eq!(
        doc["routes"][0]["policies"][0]["scopes"],
        json!(["read", "write"])
    );
    assert_eq!(doc["routes"][0]["upstream"], format!("http://{}", _up.addr));
    assert_eq!(doc["routes"][2]["policies"], json!([]));
    let kids: Vec<(&str, &str, bool)> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap(),
                k["alg"].as_str().unwrap(),
                k["signing"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(kids, vec![("gw", "RS256", true), ("ec", "ES256", false)]);
    assert!(doc["keys"][1]["source"]
        .as_str()
        .unwrap()
        .starts_with("public_key "));
    assert!(doc["keys"][0]["age_secs"].is_u64());
    assert_eq!(doc["jwks"], json!([]));
    assert_eq!(doc["reload"]["result"], "initial");
    assert!(doc["reload"]["at"].as_u64().unwrap() > 1_700_000_000);
    let orders = doc["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["route"] == "orders")
        .unwrap();
    assert_eq!(orders["requests"], 1);
    assert_eq!(orders["auth_failures"]["expired"], 1);
    assert_eq!(orders["auth_failures"]["wrong_audience"], 0);
    // Nothing secret: no key material.
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("\"n\":"),
        "{text}"
    );

    // A failed reload shows, with its reason; the config shown is the one
    // still serving.
    std::fs::write(gw.config_path(), "routes: [").unwrap();
    let outcome = tokio::task::spawn_blocking({
        let runtime = runtime.clone();
        move || runtime.reload(jwtgate::reload::Trigger::Signal)
    })
    .await
    .unwrap();
    assert!(matches!(outcome, jwtgate::reload::Outcome::Failed(_)));
    let (_, _, body) = admin(
        &runtime,
        addr,
        Method::GET,
        "/api/status",
        &[("host", &host)],
        b"",
    )
    .await;
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["reload"]["result"], "failure");
    // (The file watcher may have seen the write first: one or two.)
    assert!(doc["reload"]["failures"].as_u64().unwrap() >= 1);
    assert!(doc["reload"]["error"]
        .as_str()
        .unwrap()
        .contains("gateway.yaml"));
    assert_eq!(doc["routes"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn api_explain_answers_the_same_explanation_for_the_admin_origin_only() {
    let (gw, _up) = setup(true).await;
    let runtime = gw.running.runtime.clone();
    let addr = gw.running.admin_addr;
    let host = addr.to_string();
    let localhost = format!("localhost:{}", addr.port());
    let origin = format!("http://{host}");
    let expired = gw_token(&claims(json!({"exp": now() - 31})));
    let body = json!({"token": expired, "route": "orders"}).to_string();
    let json_type = ("content-type", "application/json");

    for headers in [
        vec![("host", host.as_str()), json_type],
        vec![
            ("host", host.as_str()),
            json_type,
            ("origin", origin.as_str()),
        ],
        vec![("host", localhost.as_str()), json_type],
        vec![
            ("host", host.as_str()),
            ("content-type", "application/json; charset=utf-8"),
        ],
    ] {
        let (status, response_headers, answer) = admin(
            &runtime,
            addr,
            Method::POST,
            "/api/explain",
            &headers,
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{headers:?}: {answer:?}");
        assert_eq!(response_headers["cache-control"], "no-store");
        let x: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(x["verdict"], "expired");
        assert_eq!(x["failed_step"], "exp");
        assert_eq!(x["refusal"]["status"], 401);
        // Exactly what the library (and so the CLI) says.
        let direct = serde_json::to_value(explain_on(&runtime, "orders", &expired)).unwrap();
        assert_eq!(x["steps"], direct["steps"]);
    }

    let refused = |status: u16, answer: &Bytes, error: &str| {
        let json: Value = serde_json::from_slice(answer).unwrap();
        assert_eq!(json["error"], error, "{json}");
        status
    };
    // DNS rebinding: a foreign Host.
    for bad_host in ["evil.example", "evil.example:80", "127.0.0.2:1"] {
        let (status, _, answer) = admin(
            &runtime,
            addr,
            Method::POST,
            "/api/explain",
            &[("host", bad_host), json_type],
            body.as_bytes(),
        )
        .await;
        assert_eq!(refused(status, &answer, "forbidden"), 403, "{bad_host}");
    }
    // Cross-site POST: a foreign Origin (or `null`).
    for bad_origin in ["http://evil.example", "null", "https://127.0.0.1"] {
        let (status, _, answer) = admin(
            &runtime,
            addr,
            Method::POST,
            "/api/explain",
            &[("host", &host), json_type, ("origin", bad_origin)],
            body.as_bytes(),
        )
        .await;
        assert_eq!(refused(status, &answer, "forbidden"), 403, "{bad_origin}");
    }
    // Only JSON (a form post cannot be made to look like one without CORS).
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let (status, _, answer) = admin(
            &runtime,
            addr,
            Method::POST,
            "/api/explain",
            &[("host", &host), ("content-type", content_type)],
            body.as_bytes(),
        )
        .await;
        assert_eq!(
            refused(status, &answer, "unsupported_media_type"),
            415,
            "{content_type}"
        );
    }
    let big = json!({"token": "a".repeat(17 * 1024), "route": "orders"}).to_string();
    let (status, _, answer) = admin(
        &runtime,
        addr,
        Method::POST,
        "/api/explain",
        &[("host", &host), json_type],
        big.as_bytes(),
    )
    .await;
    assert_eq!(refused(status, &answer, "payload_too_large"), 413);
    let (status, _, answer) = admin(
        &runtime,
        addr,
        Method::POST,
        "/api/explain",
        &[("host", &host), json_type],
        br#"{"token":"x","route":"nope"}"#,
    )
    .await;
    assert_eq!(refused(status, &answer, "unknown_route"), 404);
    let (status, _, answer) = admin(
        &runtime,
        addr,
        Method::POST,
        "/api/explain",
        &[("host", &host), json_type],
        b"{not json",
    )
    .await;
    assert_eq!(refused(status, &answer, "invalid_request"), 400);
    let (status, headers, _) = admin(
        &runtime,
        addr,
        Method::GET,
        "/api/explain",
        &[("host", &host)],
        b"",
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");
    // The other admin endpoints keep GET/HEAD only.
    let (status, headers, _) = admin(
        &runtime,
        addr,
        Method::POST,
        "/metrics",
        &[("host", &host)],
        b"",
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, HEAD");
}

#[tokio::test]
async fn the_page_is_served_from_the_binary_under_a_strict_csp() {
    let (gw, _up) = setup(true).await;
    let host = gw.running.admin_addr.to_string();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/ui.js", "text/javascript; charset=utf-8"),
        ("/ui.css", "text/css; charset=utf-8"),
    ] {
        // Over the real admin listener.
        let answer = get(&gw.admin_url(path), &[("host", &host)]).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.header("content-type"), Some(content_type), "{path}");
        let csp = answer.header("content-security-policy").unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(answer.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        // Nothing from another origin.
        let text = String::from_utf8_lossy(&answer.body);
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{path}"
        );
    }
    let page = get(&gw.admin_url("/"), &[("host", &host)]).await;
    let html = String::from_utf8_lossy(&page.body);
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "no inline code"
    );
    assert!(html.contains(r#"<script src="/ui.js" defer></script>"#));
    // A foreign Host is refused on the page too.
    let rebound = get(&gw.admin_url("/"), &[("host", "evil.example:9901")]).await;
    rebound.assert_error(403, "forbidden");
}

#[tokio::test]
async fn without_admin_ui_the_page_and_api_are_404() {
    let (gw, _up) = setup(false).await;
    let runtime = gw.running.runtime.clone();
    let addr = gw.running.admin_addr;
    let host = addr.to_string();
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/ui.js"),
        (Method::GET, "/api/status"),
        (Method::POST, "/api/explain"),
    ] {
        let (status, _, _) = admin(
            &runtime,
            addr,
            method,
            path,
            &[("host", &host), ("content-type", "application/json")],
            br#"{"token":"x","route":"orders"}"#,
        )
        .await;
        assert_eq!(status, 404, "{path}");
    }
    // The metrics and probes are unchanged.
    let (status, _, _) = admin(&runtime, addr, Method::GET, "/healthz", &[], b"").await;
    assert_eq!(status, 200);
}

#[test]
fn the_demo_config_turns_the_page_on_and_other_configs_leave_it_off() {
    let demo = jwtgate::config::ConfigSource::demo().parse().unwrap();
    assert!(demo.admin_ui);
    let plain = jwtgate::config::ConfigSource {
        path: None,
        text: "listen: 127.0.0.1:0\n".to_owned(),
    }
    .parse()
    .unwrap();
    assert!(!plain.admin_ui);
}
