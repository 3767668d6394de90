//! The OAuth2 token endpoint and the SPEC §1 tutorial, end to end.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use jwtgate::token::client_auth::{argon2id_secret_hash, sha256_secret_hash};
use serde_json::json;

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

async fn setup() -> Gateway {
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
admin: 127.0.0.1:0
keys:
  - {{kid: gw, alg: RS256, private_key: keys/gw.pem}}
token_endpoint:
  path: /oauth2/token
  issuer: https://gw.example
  signing_key: gw
  ttl: 600s
  not_before_skew: 60s
  audience: orders
  clients:
    - id: svc
      secret_hash: "{svc}"
      scopes: [read, write]
    - id: "odd:id x"
      secret_hash: "{odd}"
      scopes: [read]
      audience: billing
    - id: human
      secret_hash: "{human}"
      scopes: [read]
routes:
  - name: orders
    match: {{path_prefix: /orders}}
    upstream: demo
    policies: [{{jwt: {{audience: orders, issuer: "https://gw.example", scopes: [read]}}}}]
"#,
        svc = sha256_secret_hash(b"svc-secret"),
        odd = sha256_secret_hash(b"p@ss:w rd+%"),
        human = argon2id_secret_hash(b"correct horse").unwrap(),
    );
    Gateway::start(&yaml).await
}

async fn token_request(gw: &Gateway, headers: &[(&str, &str)], body: &str) -> Answer {
    send("POST", &gw.url("/oauth2/token"), headers, body.as_bytes()).await
}

/// A plain client-credentials request authenticated with HTTP Basic.
async fn basic_grant(gw: &Gateway, id: &str, secret: &str) -> Answer {
    let auth = basic(id, secret);
    token_request(
        gw,
        &[FORM, ("authorization", &auth)],
        "grant_type=client_credentials",
    )
    .await
}

fn assert_oauth_error(answer: &Answer, status: u16, error: &str) {
    answer.assert_error(status, error);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn client_secret_basic_issues_a_token_with_the_documented_claims() {
    let gw = setup().await;
    let answer = basic_grant(&gw, "svc", "svc-secret").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let body = answer.json();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 600);
    assert_eq!(body["scope"], "read write");
    assert_eq!(body.as_object().unwrap().len(), 4);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(
        decode_segment(token, 0),
        json!({"typ": "JWT", "alg": "RS256", "kid": "gw"})
    );
    let claims = decode_segment(token, 1);
    assert_eq!(claims["sub"], "svc");
    assert_eq!(claims["aud"], "orders");
    assert_eq!(claims["scopes"], "read write");
    assert_eq!(claims["iss"], "https://gw.example");
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat.abs_diff(now()) <= 5);
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 600);
    assert_eq!(claims["nbf"].as_u64().unwrap(), iat - 60);
    assert_eq!(claims["jti"].as_str().map(str::len), Some(22));

    // The issued token opens the protected route.
    let resource = get(
        &gw.url("/orders"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(resource.status, 200);
    assert_eq!(
        resource.json(),
        json!({"client": "svc", "scopes": "read write"})
    );
}

#[tokio::test]
async fn client_secret_post_and_url_encoded_basic_credentials_work() {
    let gw = setup().await;
    let answer = token_request(
        &gw,
        &[FORM],
        "grant_type=client_credentials&client_id=svc&client_secret=svc-secret&scope=read",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["scope"], "read");
    let claims = decode_segment(answer.json()["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["scopes"], "read");

    // RFC 6749 §2.3.1: id and secret are form-url-encoded inside Basic.
    let auth = basic("odd%3Aid+x", "p%40ss%3Aw+rd%2B%25");
    let answer = token_request(
        &gw,
        &[
            (
                "content-type",
                "application/x-www-form-urlencoded;charset=UTF-8",
            ),
            ("authorization", &auth),
        ],
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let claims = decode_segment(answer.json()["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["sub"], "odd:id x");
    assert_eq!(
        claims["aud"], "billing",
        "a client's audience overrides the default"
    );

    // A body client_id equal to the Basic one is tolerated.
    let auth = basic("svc", "svc-secret");
    let answer = token_request(
        &gw,
        &[FORM, ("authorization", &auth)],
        "grant_type=client_credentials&client_id=svc",
    )
    .await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn argon2id_clients_authenticate() {
    let gw = setup().await;
    let answer = basic_grant(&gw, "human", "correct horse").await;
    assert_eq!(answer.status, 200);
    let answer = basic_grant(&gw, "human", "wrong horse").await;
    assert_oauth_error(&answer, 401, "invalid_client");
}

#[tokio::test]
async fn an_unknown_client_and_a_wrong_secret_get_the_same_answer() {
    let gw = setup().await;
    let wrong_secret = basic_grant(&gw, "svc", "nope").await;
    let unknown = basic_grant(&gw, "ghost", "svc-secret").await;
    for answer in [&wrong_secret, &unknown] {
        assert_oauth_error(answer, 401, "invalid_client");
        assert_eq!(
            answer.header("www-authenticate"),
            Some(r#"Basic realm="jwtgate""#)
        );
    }
    assert_eq!(wrong_secret.body, unknown.body);
    let post_wrong = token_request(
        &gw,
        &[FORM],
        "grant_type=client_credentials&client_id=svc&client_secret=x",
    )
    .await;
    let post_unknown = token_request(
        &gw,
        &[FORM],
        "grant_type=client_credentials&client_id=ghost&client_secret=x",
    )
    .await;
    assert_oauth_error(&post_wrong, 401, "invalid_client");
    assert_eq!(post_wrong.body, post_unknown.body);
}

/// A `client_secret_post` body whose id is longer than any valid one (256).
static OVERSIZE_ID_BODY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "grant_type=client_credentials&client_id={}&client_secret=x",
        "a".repeat(300)
    )
});
/// … and one whose secret is longer than any accepted (1024 bytes).
static OVERSIZE_SECRET_BODY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "grant_type=client_credentials&client_id=svc&client_secret={}",
        "s".repeat(2000)
    )
});

#[tokio::test]
async fn malformed_token_requests_get_rfc_6749_errors() {
    let gw = setup().await;
    let auth = basic("svc", "svc-secret");
    let with_basic = [FORM, ("authorization", auth.as_str())];
    // (case, headers, body, status, error)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no grant_type",
            with_basic.to_vec(),
            "scope=read",
            400,
            "invalid_request",
        ),
        (
            "password grant",
            with_basic.to_vec(),
            "grant_type=password",
            400,
            "unsupported_grant_type",
        ),
        (
            "repeated parameter",
            with_basic.to_vec(),
            "grant_type=client_credentials&grant_type=client_credentials",
            400,
            "invalid_request",
        ),
        (
            "json body",
            vec![
                ("content-type", "application/json"),
                ("authorization", &auth),
            ],
            r#"{"grant_type":"client_credentials"}"#,
            400,
            "invalid_request",
        ),
        (
            "no content type",
            vec![("authorization", &auth)],
            "grant_type=client_credentials",
            400,
            "invalid_request",
        ),
        (
            "no credentials",
            vec![FORM],
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "id without secret",
            vec![FORM],
            "grant_type=client_credentials&client_id=svc",
            401,
            "invalid_client",
        ),
        (
            "basic and body secret",
            with_basic.to_vec(),
            "grant_type=client_credentials&client_secret=svc-secret",
            400,
            "invalid_request",
        ),
        (
            "basic and other body id",
            with_basic.to_vec(),
            "grant_type=client_credentials&client_id=other",
            400,
            "invalid_request",
        ),
        (
            "malformed basic",
            vec![FORM, ("authorization", "Basic !!!")],
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "basic without a colon",
            vec![FORM, ("authorization", "Basic c3Zj")],
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "basic that is not UTF-8",
            vec![FORM, ("authorization", "Basic //46//4=")],
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "basic scheme alone",
            vec![FORM, ("authorization", "Basic")],
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "bearer instead of basic",
            vec![FORM, ("authorization", "Bearer abc")],
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "basic with a bad percent-escape",
            vec![FORM, ("authorization", "Basic c3ZjJXp6OnN2Yy1zZWNyZXQ=")],
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "oversize client id",
            vec![FORM],
            OVERSIZE_ID_BODY.as_str(),
            401,
            "invalid_client",
        ),
        (
            "oversize secret",
            vec![FORM],
            OVERSIZE_SECRET_BODY.as_str(),
            401,
            "invalid_client",
        ),
        (
            "client id with a line feed",
            vec![FORM],
            "grant_type=client_credentials&client_id=svc%0A&client_secret=svc-secret",
            401,
            "invalid_client",
        ),
        (
            "scope not allowed",
            with_basic.to_vec(),
            "grant_type=client_credentials&scope=read%20admin",
            400,
            "invalid_scope",
        ),
        (
            "empty scope",
            with_basic.to_vec(),
            "grant_type=client_credentials&scope=",
            400,
            "invalid_scope",
        ),
    ];
    for (case, headers, body, status, error) in cases {
        let answer = token_request(&gw, &headers, body).await;
        assert_eq!(answer.status.as_u16(), status, "{case}: {:?}", answer.body);
        assert_oauth_error(&answer, status, error);
    }

    // Credentials in the query string are refused even when the body is fine.
    let answer = send(
        "POST",
        &gw.url("/oauth2/token?client_id=svc&client_secret=svc-secret"),
        &[FORM],
        b"grant_type=client_credentials",
    )
    .await;
    assert_oauth_error(&answer, 400, "invalid_request");

    // Any other method: 405 with Allow, a JSON body and no-store.
    for method in ["GET", "PUT", "DELETE"] {
        let answer = send(method, &gw.url("/oauth2/token"), &[], b"").await;
        assert_oauth_error(&answer, 405, "invalid_request");
        assert_eq!(answer.header("allow"), Some("POST"));
    }

    // An oversized body is refused before any hashing.
    let big = format!("grant_type=client_credentials&pad={}", "a".repeat(20_000));
    let answer = token_request(&gw, &with_basic, &big).await;
    assert_oauth_error(&answer, 413, "payload_too_large");
}

#[tokio::test]
async fn the_metadata_document_describes_the_endpoint() {
    let gw = setup().await;
    let answer = get(&gw.url("/.well-known/oauth-authorization-server"), &[]).await;
    assert_eq!(answer.status, 200);
    let doc = answer.json();
    assert_eq!(doc["issuer"], "https://gw.example");
    assert_eq!(doc["token_endpoint"], "https://gw.example/oauth2/token");
    assert_eq!(doc["jwks_uri"], "https://gw.example/.well-known/jwks.json");
    assert_eq!(doc["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
}

/// SPEC §1, replayed against the embedded demo config on a free port.
#[tokio::test]
async fn the_demo_tutorial_gives_the_documented_responses() {
    let yaml = jwtgate::config::DEMO_YAML.replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:0");
    assert_ne!(yaml, jwtgate::config::DEMO_YAML);
    let gw = Gateway::start(&yaml).await;
    let answer = send(
        "POST",
        &gw.url("/demo/oauth2/token"),
        &[FORM, ("authorization", &basic("my-client", "my-secret"))],
        b"grant_type=client_credentials",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let body = answer.json();
    assert_eq!(
        (&body["token_type"], &body["expires_in"], &body["scope"]),
        (&json!("bearer"), &json!(300), &json!("read write"))
    );
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        decode_segment(&token, 0),
        json!({"typ": "JWT", "alg": "RS256", "kid": "demo"})
    );
    let claims = decode_segment(&token, 1);
    assert_eq!(
        (&claims["sub"], &claims["aud"], &claims["scopes"]),
        (
            &json!("my-client"),
            &json!("demo-resource"),
            &json!("read write")
        )
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["nbf"].as_u64().unwrap(),
        420
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    assert_eq!(claims["iss"], "http://127.0.0.1:8080");

    // The token verifies against the published JWKS with an independent library.
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(get(&gw.url("/.well-known/jwks.json"), &[]).await.json()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find("demo").unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["demo-resource"]);
    validation.set_issuer(&["http://127.0.0.1:8080"]);
    jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap();

    let answer = get(
        &gw.url("/demo/resource"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        r#"{"client":"my-client","scopes":"read write"}"#
    );

    // The demo upstream shows what was injected, never what the client sent.
    let answer = get(
        &gw.url("/demo/resource"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-auth-subject", "root"),
        ],
    )
    .await;
    assert_eq!(answer.json()["client"], "my-client");
}
