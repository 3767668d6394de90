//! `cargo bench --bench micro`: criterion microbenchmarks of the request
//! path's pieces — token verification through the verified-token cache (hit
//! and miss), the `jwt:` policy on a cached token (with and without its
//! remembered verdict), token signing, and routing.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method};
use jwtgate::config::{ConfigSource, JwtPolicyConfig, TokenCacheConfig};
use jwtgate::jws::{self, ClaimRules};
use jwtgate::keys::remote::JwksRegistry;
use jwtgate::keys::{local, Algorithm, KeySet};
use jwtgate::metrics::Metrics;
use jwtgate::policy::jwt::JwtPolicy;
use jwtgate::policy::{PolicyInput, Verdict};
use jwtgate::router;
use jwtgate::runtime::GeneratedKeys;
use jwtgate::snapshot::Snapshot;
use jwtgate::token::mint::{self, AccessClaims};
use jwtgate::token_cache::TokenCache;

const NOW: u64 = 1_800_000_000;

fn rules() -> ClaimRules {
    ClaimRules {
        audiences: vec!["orders".into()],
        issuer: None,
        leeway_secs: 30,
        typ: None,
        scope_claim: None,
    }
}

fn verification(c: &mut Criterion) {
    let metrics = Metrics::new().expect("metrics");
    for alg in [Algorithm::Rs256, Algorithm::Es256, Algorithm::EdDsa] {
        let key = Arc::new(local::generate("k", alg).expect("key"));
        let signer = key.signer.clone().expect("signer");
        let mut keys = KeySet::default();
        keys.insert(key).expect("key set");
        let claims = AccessClaims::new("svc", "orders", &["read".into()], None, NOW, 300, 120)
            .expect("claims");
        let token = mint::sign(&signer, &claims).expect("token");

        // A miss: the cache is off, so every call parses and checks the
        // signature, then the claims — the whole path of a new token.
        let off = TokenCache::new(&TokenCacheConfig {
            max_entries: 0,
            ..TokenCacheConfig::default()
        });
        c.bench_function(&format!("verify/{}/miss", alg.name()), |b| {
            b.iter(|| {
                let verified = off
                    .verify(black_box(&token), &keys, &metrics)
                    .expect("valid");
                jws::check_claim_set(verified.typ.as_deref(), &verified.claims, &rules(), NOW)
                    .expect("claims")
            })
        });
        // A hit: lookup plus the claim checks every hit repeats.
        let on = TokenCache::new(&TokenCacheConfig::default());
        on.verify(&token, &keys, &metrics).expect("valid");
        c.bench_function(&format!("verify/{}/hit", alg.name()), |b| {
            b.iter(|| {
                let verified = on
                    .verify(black_box(&token), &keys, &metrics)
                    .expect("valid");
                jws::check_claim_set(verified.typ.as_deref(), &verified.claims, &rules(), NOW)
                    .expect("claims")
            })
        });
        c.bench_function(&format!("sign/{}", alg.name()), |b| {
            b.iter(|| mint::sign(&signer, black_box(&claims)).expect("token"))
        });
    }
}

/// The whole `jwt:` policy step on a cached token: bearer extraction,
/// cache lookup, then either every claim check and the identity headers
/// (the verdict forgotten before each call) or the remembered verdict with
/// only `exp` and `nbf` re-checked.
fn policy(c: &mut Criterion) {
    let metrics = Metrics::new().expect("metrics");
    let key = Arc::new(local::generate("k", Algorithm::Rs256).expect("key"));
    let signer = key.signer.clone().expect("signer");
    let mut keys = KeySet::default();
    keys.insert(key).expect("key set");
    let claims =
        AccessClaims::new("svc", "orders", &["read".into()], None, NOW, 300, 120).expect("claims");
    let token = mint::sign(&signer, &claims).expect("token");
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let config: JwtPolicyConfig =
        serde_yaml::from_str("{audience: orders, scopes: [read]}").expect("config");
    let policy = JwtPolicy::build(&config).expect("policy");
    let cache = TokenCache::new(&TokenCacheConfig::default());
    let cached = cache.verify(&token, &keys, &metrics).expect("valid");
    let input = PolicyInput {
        headers: &headers,
        keys: &keys,
        now: NOW,
        metrics: &metrics,
        token_cache: &cache,
        client_subject: None,
    };
    c.bench_function("policy/cached token, every claim check", |b| {
        b.iter(|| {
            cached.authorized.store(None);
            let mut verdict = Verdict::default();
            policy
                .apply(black_box(&input), &mut verdict)
                .expect("allowed");
            verdict
        })
    });
    c.bench_function("policy/cached token, remembered verdict", |b| {
        b.iter(|| {
            let mut verdict = Verdict::default();
            policy
                .apply(black_box(&input), &mut verdict)
                .expect("allowed");
            verdict
        })
    });
}

fn routing(c: &mut Criterion) {
    // 50 routes; the request matches the last one (the worst case of the
    // first-match scan).
    let mut yaml = String::from("listen: 127.0.0.1:0\nroutes:\n");
    for i in 0..50 {
        yaml.push_str(&format!(
            "  - name: r{i}\n    match: {{path_prefix: /api/v{i}/orders, methods: [GET, POST]}}\n    upstream: http://127.0.0.1:9\n    policies: []\n"
        ));
    }
    let source = ConfigSource {
        path: None,
        text: yaml,
    };
    let snapshot = Snapshot::build(&source, &GeneratedKeys::default(), &JwksRegistry::default())
        .expect("snapshot");
    c.bench_function("route/50 routes, last matches", |b| {
        b.iter(|| {
            router::find(
                &snapshot.routes,
                None,
                &Method::GET,
                black_box("/api/v49/orders/7"),
            )
            .expect("a route")
        })
    });
    c.bench_function("route/path normal-form check", |b| {
        b.iter(|| router::check_normal_form(black_box("/api/v49/orders/7/items?x=1")))
    });
}

criterion_group!(benches, verification, policy, routing);
criterion_main!(benches);
