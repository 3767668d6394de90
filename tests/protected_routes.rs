//! Protected routes end to end: every row of the SPEC §3 table, header
//! stripping and injection, forwarding, routing, limits and upstream
//! failures — each against a recording upstream, asserting what it saw.

mod common;

use common::*;
use serde_json::json;

fn config(up: &str, closed: std::net::SocketAddr, reset: std::net::SocketAddr) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: 127.0.0.1:0
limits: {{max_body_bytes: 1024, upstream_timeout: 1s, max_header_bytes: 4096}}
keys:
  - {{kid: gw, alg: RS256, private_key: keys/gw.pem}}
  - {{kid: ec, alg: ES256, public_key: keys/ec.pub.pem}}
routes:
  - name: orders
    match: {{path_prefix: /orders, methods: [GET, POST]}}
    upstream: {up}
    policies:
      - jwt:
          audience: orders
          scopes: [read, write]
          inject: {{claims: {{tenant: X-Tenant}}}}
  - name: orders-delete
    match: {{path_prefix: /orders, methods: [DELETE]}}
    upstream: {up}
    policies:
      - jwt: {{audience: orders, scopes: [admin]}}
  - name: forward
    match: {{path_prefix: /forward}}
    upstream: {up}
    policies: [{{jwt: {{audience: orders, forward_token: true}}}}]
  - name: issuer
    match: {{path_prefix: /issuer}}
    upstream: {up}
    policies: [{{jwt: {{audience: [other, orders], issuer: "https://gw.example"}}}}]
  - name: custom
    match: {{path_prefix: /custom}}
    upstream: {up}
    policies: [{{jwt: {{audience: orders, scope_claim: permissions, scopes: ["orders:read"], typ: at+jwt, inject: {{subject: X-User, scopes: X-Perms}}}}}}]
  - name: svc
    match: {{path_prefix: /svc/}}
    upstream: {up}/api/v1/
    strip_prefix: true
    policies: []
  - name: hosted
    match: {{path_prefix: /hosted, host: API.example.com}}
    upstream: {up}
  - name: slow
    match: {{path_prefix: /slow}}
    upstream: {up}
  - name: down
    match: {{path_prefix: /down}}
    upstream: http://{closed}
  - name: reset
    match: {{path_prefix: /reset}}
    upstream: http://{reset}
  - name: public
    match: {{path_prefix: /public}}
    upstream: {up}
    policies: []
"#
    )
}

async fn setup() -> (Gateway, Upstream) {
    let upstream = Upstream::start().await;
    let closed = closed_port().await;
    let reset = resetting_upstream().await;
    let gateway = Gateway::start(&config(&upstream.url(), closed, reset)).await;
    (gateway, upstream)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_valid_token_is_forwarded_with_the_identity_injected() {
    let (gw, up) = setup().await;
    let token = gw_token(&claims(json!({"tenant": "acme"})));
    let auth = bearer(&token);
    let answer = get(&gw.url("/orders/7?x=1&y=%20"), &[("authorization", &auth)]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, r#"{"upstream":"ok"}"#);
    assert_eq!(answer.header("x-upstream"), Some("yes"));
    // Hop-by-hop headers of the upstream response never reach the client.
    assert_eq!(answer.header("keep-alive"), None);
    assert_eq!(answer.header("x-upstream-private"), None);
    assert!(answer
        .header("x-request-id")
        .is_some_and(|id| id.len() == 22));

    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.target, "/orders/7?x=1&y=%20");
    assert_eq!(header_values(r, "x-auth-subject"), vec!["alice"]);
    assert_eq!(header_values(r, "x-auth-scopes"), vec!["read write"]);
    assert_eq!(header_values(r, "x-tenant"), vec!["acme"]);
    assert!(
        header_values(r, "authorization").is_empty(),
        "Authorization must be removed"
    );
    assert_eq!(
        header_values(r, "x-request-id"),
        vec![answer.header("x-request-id").unwrap()]
    );
    assert_eq!(header_values(r, "host"), vec![up.addr.to_string()]);
}

#[tokio::test]
async fn no_authorization_header_is_401_without_an_error_code() {
    let (gw, up) = setup().await;
    let token = gw_token(&claims(json!({})));
    let cookie = format!("access_token={token}");
    for (path, headers) in [
        ("/orders", vec![]),
        // A token anywhere but the Authorization header counts as none.
        (&*format!("/orders?access_token={token}"), vec![]),
        ("/orders", vec![("cookie", cookie.as_str())]),
    ] {
        let answer = get(&gw.url(path), &headers).await;
        answer.assert_error(401, "missing_token");
        assert_eq!(
            answer.header("www-authenticate"),
            Some(r#"Bearer realm="jwtgate""#)
        );
        assert_eq!(answer.header("cache-control"), Some("no-store"));
    }
    let form = format!("access_token={token}");
    let answer = send(
        "POST",
        &gw.url("/orders"),
        &[("content-type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .await;
    answer.assert_error(401, "missing_token");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn malformed_authorization_headers_are_400_invalid_request() {
    let (gw, up) = setup().await;
    let token = gw_token(&claims(json!({})));
    let cases: Vec<Vec<String>> = vec![
        vec![format!("Basic {token}")],
        vec!["Bearer".into()],
        vec!["Bearer    ".into()],
        vec![format!("Bearer{token}")],
        vec![format!("Bearer {token} extra")],
        vec![bearer(&token), bearer(&token)],
    ];
    for headers in cases {
        let list: Vec<(&str, &str)> = headers
            .iter()
            .map(|h| ("authorization", h.as_str()))
            .collect();
        let answer = get(&gw.url("/orders"), &list).await;
        answer.assert_error(400, "invalid_request");
        let challenge = answer.header("www-authenticate").unwrap();
        assert!(
            challenge.starts_with(
                r#"Bearer realm="jwtgate", error="invalid_request", error_description=""#
            ),
            "{challenge}"
        );
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_with_any_number_of_spaces() {
    let (gw, up) = setup().await;
    let token = gw_token(&claims(json!({})));
    for header in [format!("bearer {token}"), format!("BEARER   {token}")] {
        let answer = get(&gw.url("/orders"), &[("authorization", &header)]).await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn invalid_tokens_are_401_invalid_token() {
    let (gw, up) = setup().await;
    let k = keys();
    let now = now();
    let valid = claims(json!({}));
    let hs256 = {
        // Key confusion: an HMAC token keyed with the gateway's public key.
        let key = jsonwebtoken::EncodingKey::from_secret(k.rsa.public_pem.as_bytes());
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("gw".into());
        jsonwebtoken::encode(&header, &valid, &key).unwrap()
    };
    let good = gw_token(&valid);
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 5;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let payload = valid.to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        ("bad signature", flipped, "invalid_signature"),
        (
            "signed by another key",
            mint(
                &k.rogue_rsa,
                jsonwebtoken::Algorithm::RS256,
                Some("gw"),
                &valid,
            ),
            "invalid_signature",
        ),
        (
            "unknown kid",
            mint(
                &k.rogue_rsa,
                jsonwebtoken::Algorithm::RS256,
                Some("nope"),
                &valid,
            ),
            "unknown_key",
        ),
        (
            "no kid, two keys",
            mint(&k.rsa, jsonwebtoken::Algorithm::RS256, None, &valid),
            "unknown_key",
        ),
        (
            "alg none",
            raw_token(r#"{"alg":"none","kid":"gw"}"#, &payload, b""),
            "invalid_signature",
        ),
        (
            "alg none with signature",
            raw_token(r#"{"alg":"none","kid":"gw"}"#, &payload, b"x"),
            "algorithm_not_allowed",
        ),
        ("HS256 with the public key", hs256, "algorithm_not_allowed"),
        (
            "RS256 token for the ES256 key",
            mint(&k.rsa, jsonwebtoken::Algorithm::RS256, Some("ec"), &valid),
            "algorithm_not_allowed",
        ),
        (
            "expired",
            gw_token(&claims(json!({"exp": now - 31}))),
            "expired",
        ),
        (
            "not yet valid",
            gw_token(&claims(json!({"nbf": now + 60}))),
            "not_yet_valid",
        ),
        (
            "no exp",
            gw_token(&claims(json!({"exp": null}))),
            "invalid_claims",
        ),
        (
            "wrong audience",
            gw_token(&claims(json!({"aud": "billing"}))),
            "wrong_audience",
        ),
        ("garbage", "not-a-token".into(), "malformed"),
        (
            "two segments",
            "eyJhbGciOiJSUzI1NiJ9.e30".into(),
            "malformed",
        ),
    ];
    for (case, token, _reason) in cases {
        let answer = get(&gw.url("/orders"), &[("authorization", &bearer(&token))]).await;
        assert_eq!(answer.status, 401, "{case}: {:?}", answer.body);
        answer.assert_error(401, "invalid_token");
        let challenge = answer.header("www-authenticate").unwrap();
        assert!(
            challenge.starts_with(
                r#"Bearer realm="jwtgate", error="invalid_token", error_description=""#
            ),
            "{case}: {challenge}"
        );
        assert_eq!(
            answer.json()["error_description"]
                .as_str()
                .map(|d| challenge.contains(d)),
            Some(true),
            "{case}"
        );
    }
    // Wrong issuer on a route that requires one.
    let answer = get(
        &gw.url("/issuer"),
        &[(
            "authorization",
            &bearer(&gw_token(&claims(json!({"iss": "https://evil"})))),
        )],
    )
    .await;
    answer.assert_error(401, "invalid_token");
    assert_eq!(up.count(), 0, "no refused request may reach the upstream");
}

#[tokio::test]
async fn expiry_and_not_before_honour_the_leeway() {
    let (gw, up) = setup().await;
    let now = now();
    // Default leeway 30 s: expired 20 s ago and valid from 20 s ahead both pass.
    for extra in [json!({"exp": now - 20}), json!({"nbf": now + 20})] {
        let answer = get(
            &gw.url("/orders"),
            &[("authorization", &bearer(&gw_token(&claims(extra.clone()))))],
        )
        .await;
        assert_eq!(answer.status, 200, "{extra}");
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_token_lacking_a_required_scope_is_403_naming_all_required_scopes() {
    let (gw, up) = setup().await;
    let token = gw_token(&claims(json!({"scopes": "read"})));
    let answer = get(&gw.url("/orders"), &[("authorization", &bearer(&token))]).await;
    answer.assert_error(403, "insufficient_scope");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(
            r#"Bearer realm="jwtgate", error="insufficient_scope", error_description="the token lacks a required scope", scope="read write""#
        )
    );
    // Scopes as an array, and under `scp`, are read too.
    for extra in [
        json!({"scopes": ["write", "read"]}),
        json!({"scopes": null, "scp": "write read"}),
    ] {
        let answer = get(
            &gw.url("/orders"),
            &[("authorization", &bearer(&gw_token(&claims(extra))))],
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_route_may_read_scopes_from_another_claim_and_require_a_typ() {
    let (gw, up) = setup().await;
    let k = keys();
    let at_jwt = |claims: &serde_json::Value| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("gw".into());
        header.typ = Some("application/AT+JWT".into());
        mint_with_header(&k.rsa, header, claims)
    };
    let ok = at_jwt(&claims(json!({"permissions": ["orders:read", "x"]})));
    let answer = get(&gw.url("/custom"), &[("authorization", &bearer(&ok))]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let seen = up.requests();
    assert_eq!(header_values(&seen[0], "x-user"), vec!["alice"]);
    assert_eq!(header_values(&seen[0], "x-perms"), vec!["orders:read x"]);

    // `typ: JWT` is not `at+jwt`.
    let plain = gw_token(&claims(json!({"permissions": ["orders:read"]})));
    get(&gw.url("/custom"), &[("authorization", &bearer(&plain))])
        .await
        .assert_error(401, "invalid_token");
    // `scopes` is not read when the route names its scope claim.
    let wrong_claim = at_jwt(&claims(json!({"scopes": "orders:read"})));
    get(
        &gw.url("/custom"),
        &[("authorization", &bearer(&wrong_claim))],
    )
    .await
    .assert_error(403, "insufficient_scope");
    // A scope claim of the wrong type makes the token invalid.
    let wrong_type = at_jwt(&claims(json!({"permissions": 7})));
    get(
        &gw.url("/custom"),
        &[("authorization", &bearer(&wrong_type))],
    )
    .await
    .assert_error(401, "invalid_token");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn spoofed_identity_headers_are_stripped_on_every_route_and_connection_cannot_drop_injected_ones(
) {
    let (gw, up) = setup().await;
    let token = gw_token(&claims(json!({"tenant": "acme"})));
    let auth = bearer(&token);
    let spoof = [
        ("x-auth-subject", "root"),
        ("x_auth_subject", "root"),
        ("X-Auth-Scopes", "admin"),
        ("x-tenant", "evil"),
        ("x-user", "root"),
        (
            "connection",
            "x-auth-subject, x-auth-scopes, x-tenant, x-hop",
        ),
        ("x-hop", "1"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tracestate", "a=b"),
        ("x-request-id", "client-id-1"),
    ];
    let mut headers: Vec<(&str, &str)> = spoof.to_vec();
    headers.push(("authorization", &auth));
    let answer = get(&gw.url("/orders"), &headers).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-request-id"), Some("client-id-1"));
    // The same spoofing on a public route.
    let answer = get(&gw.url("/public/x"), &spoof).await;
    assert_eq!(answer.status, 200);

    let seen = up.requests();
    let protected = &seen[0];
    assert_eq!(header_values(protected, "x-auth-subject"), vec!["alice"]);
    assert_eq!(
        header_values(protected, "x-auth-scopes"),
        vec!["read write"]
    );
    assert_eq!(header_values(protected, "x-tenant"), vec!["acme"]);
    assert!(header_values(protected, "x_auth_subject").is_empty());
    assert!(
        header_values(protected, "x-user").is_empty(),
        "x-user is injected by another route"
    );
    assert!(header_values(protected, "x-hop").is_empty());
    assert!(header_values(protected, "connection").is_empty());
    assert_eq!(
        header_values(protected, "x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(header_values(protected, "x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        header_values(protected, "x-forwarded-host"),
        vec![gw.addr().to_string()]
    );
    assert_eq!(
        header_values(protected, "traceparent"),
        vec!["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
    );
    assert_eq!(header_values(protected, "tracestate"), vec!["a=b"]);
    assert_eq!(
        header_values(protected, "x-request-id"),
        vec!["client-id-1"]
    );

    let public = &seen[1];
    for name in [
        "x-auth-subject",
        "x_auth_subject",
        "x-auth-scopes",
        "x-tenant",
        "x-user",
    ] {
        assert!(
            header_values(public, name).is_empty(),
            "{name} reached a public upstream"
        );
    }
}

#[tokio::test]
async fn authorization_is_forwarded_only_when_the_route_asks() {
    let (gw, up) = setup().await;
    let auth = bearer(&gw_token(&claims(json!({}))));
    assert_eq!(
        get(&gw.url("/forward/a"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&gw.url("/orders"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&gw.url("/public"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    let seen = up.requests();
    assert_eq!(header_values(&seen[0], "authorization"), vec![auth.clone()]);
    assert!(header_values(&seen[1], "authorization").is_empty());
    assert!(header_values(&seen[2], "authorization").is_empty());
}

#[tokio::test]
async fn strip_prefix_and_base_paths_build_the_upstream_path() {
    let (gw, up) = setup().await;
    for path in ["/svc/items/3?q=a%2Fb&r", "/svc", "/svc/"] {
        assert_eq!(get(&gw.url(path), &[]).await.status, 200, "{path}");
    }
    let targets: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        vec!["/api/v1/items/3?q=a%2Fb&r", "/api/v1/", "/api/v1/"]
    );
}

#[tokio::test]
async fn routing_follows_hosts_methods_and_segment_boundaries() {
    let (gw, up) = setup().await;
    let auth = bearer(&gw_token(&claims(json!({}))));
    // /ordersx is not under /orders.
    get(&gw.url("/ordersx"), &[("authorization", &auth)])
        .await
        .assert_error(404, "not_found");
    // DELETE skips `orders` and matches `orders-delete`, which wants `admin`.
    let answer = send(
        "DELETE",
        &gw.url("/orders/1"),
        &[("authorization", &auth)],
        b"",
    )
    .await;
    answer.assert_error(403, "insufficient_scope");
    assert!(answer
        .header("www-authenticate")
        .unwrap()
        .ends_with(r#"scope="admin""#));
    // PUT matches no route at all.
    send(
        "PUT",
        &gw.url("/orders/1"),
        &[("authorization", &auth)],
        b"",
    )
    .await
    .assert_error(404, "not_found");
    // Host matches case-insensitively, port ignored.
    assert_eq!(
        get(&gw.url("/hosted"), &[("host", "api.EXAMPLE.com:8443")])
            .await
            .status,
        200
    );
    get(&gw.url("/hosted"), &[("host", "other.example.com")])
        .await
        .assert_error(404, "not_found");
    assert_eq!(up.count(), 1);
    let seen = up.requests();
    assert_eq!(
        header_values(&seen[0], "x-forwarded-host"),
        vec!["api.EXAMPLE.com:8443"]
    );
}

#[tokio::test]
async fn paths_not_in_normal_form_and_duplicate_hosts_are_400() {
    let (gw, up) = setup().await;
    let auth = bearer(&gw_token(&claims(json!({}))));
    for path in [
        "/public/../orders",
        "/public/%2e%2e/orders",
        "/public%2forders",
        "/public/a%5cb",
        "//public",
        "/public/./x",
        "/public/a\\b",
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
        );
        let answer = raw(gw.addr(), request.as_bytes()).await;
        answer.assert_error(400, "invalid_request");
    }
    let answer = raw(
        gw.addr(),
        b"GET /public HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    )
    .await;
    answer.assert_error(400, "invalid_request");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_smaller_ones_stream_through() {
    let (gw, up) = setup().await;
    let auth = bearer(&gw_token(&claims(json!({}))));
    let body = vec![b'x'; 1024];
    let answer = send(
        "POST",
        &gw.url("/orders"),
        &[("authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(up.requests()[0].body.len(), 1024);

    // A declared length over the limit is refused before forwarding.
    let big = vec![b'x'; 1025];
    let answer = send(
        "POST",
        &gw.url("/orders"),
        &[("authorization", &auth)],
        &big,
    )
    .await;
    answer.assert_error(413, "payload_too_large");
    assert_eq!(up.count(), 1);

    // A chunked body that grows past the limit is cut off and fails.
    let mut request = "POST /public/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".as_bytes().to_vec();
    for _ in 0..3 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'y'; 0x200]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(gw.addr(), &request).await;
    answer.assert_error(413, "payload_too_large");
    assert!(up.requests().iter().all(|r| r.body.len() <= 1024));
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let (gw, up) = setup().await;
    let filler = "a".repeat(5000);
    let answer = get(&gw.url("/public"), &[("x-filler", &filler)]).await;
    answer.assert_error(431, "request_header_fields_too_large");
    // A long request line counts towards the limit too.
    let answer = get(&gw.url(&format!("/public?q={}", "b".repeat(4096))), &[]).await;
    answer.assert_error(431, "request_header_fields_too_large");
    // More headers than `max_headers` (default 100), each small.
    let names: Vec<String> = (0..150).map(|i| format!("x-h{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let answer = get(&gw.url("/public"), &many).await;
    answer.assert_error(431, "request_header_fields_too_large");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    let (gw, up) = setup().await;
    get(&gw.url("/down"), &[])
        .await
        .assert_error(502, "bad_gateway");
    get(&gw.url("/reset"), &[])
        .await
        .assert_error(502, "bad_gateway");
    get(&gw.url("/slow"), &[])
        .await
        .assert_error(504, "gateway_timeout");
    assert_eq!(up.count(), 1, "the slow upstream saw the request");
}

#[tokio::test]
async fn the_discovery_documents_list_every_public_key() {
    let (gw, _up) = setup().await;
    let answer = get(&gw.url("/.well-known/jwks.json"), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let jwks = answer.json();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, vec!["gw", "ec"]);
    let ec = &jwks["keys"][1];
    assert_eq!(
        (
            ec["kty"].as_str(),
            ec["crv"].as_str(),
            ec["alg"].as_str(),
            ec["use"].as_str()
        ),
        (Some("EC"), Some("P-256"), Some("ES256"), Some("sig"))
    );
    assert!(jwks["keys"][0].get("d").is_none(), "no private parts");
    // No token endpoint, so no RFC 8414 document.
    get(&gw.url("/.well-known/oauth-authorization-server"), &[])
        .await
        .assert_error(404, "not_found");
    let answer = send("POST", &gw.url("/.well-known/jwks.json"), &[], b"").await;
    answer.assert_error(405, "method_not_allowed");
    assert_eq!(answer.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn tokens_verify_against_the_published_jwks_with_an_independent_library() {
    let (gw, _up) = setup().await;
    let jwks = get(&gw.url("/.well-known/jwks.json"), &[]).await.json();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let jwk = set.find("gw").unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let token = gw_token(&claims(json!({})));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["orders"]);
    assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).is_ok());
}

#[tokio::test]
async fn an_absolute_form_target_routes_by_its_authority() {
    let (gw, up) = setup().await;
    let request = b"GET http://api.example.com/hosted/x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n";
    let answer = raw(gw.addr(), request).await;
    assert_eq!(answer.status, 200);
    let seen = up.requests();
    assert_eq!(seen[0].target, "/hosted/x");
    assert_eq!(
        header_values(&seen[0], "x-forwarded-host"),
        vec!["api.example.com"]
    );
    assert_eq!(header_values(&seen[0], "host"), vec![up.addr.to_string()]);
}

/// Every single-character corruption of a valid token is refused with 400
/// or 401 — never a 5xx, never forwarded.
#[tokio::test]
async fn corrupted_tokens_are_refused_never_forwarded() {
    let (gw, up) = setup().await;
    let token = gw_token(&claims(json!({})));
    let replacements = [b'A', b'_', b'-', b'.', b'=', b'+', b'~'];
    let mut refused = 0;
    for (i, original) in token.bytes().enumerate().step_by(7) {
        for &replacement in &replacements {
            if replacement == original {
                continue;
            }
            let mut bytes = token.clone().into_bytes();
            bytes[i] = replacement;
            let corrupted = String::from_utf8(bytes).unwrap();
            let answer = get(
                &gw.url("/orders"),
                &[("authorization", &bearer(&corrupted))],
            )
            .await;
            assert!(
                answer.status == 401 || answer.status == 400,
                "position {i} -> {}: {} {:?}",
                replacement as char,
                answer.status,
                answer.body
            );
            refused += 1;
        }
    }
    assert!(refused > 300, "{refused}");
    assert_eq!(up.count(), 0);
}
