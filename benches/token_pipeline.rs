//! `cargo bench --bench token_pipeline`: the cost of the token pipeline's
//! hot steps, per algorithm, without the network; and the cost of client
//! authentication for a right secret, a wrong one and an unknown client id
//! (which must be the same: SPEC §3, "indistinguishable … in timing").
//!
//! A plain timing harness (no criterion yet): each measurement runs batches
//! of calls and reports the median batch's time per call, so one noisy batch
//! on a shared machine does not move the figure.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use jwtgate::config::ClientConfig;
use jwtgate::jws::{self, ClaimRules};
use jwtgate::keys::{local, Algorithm, KeySet};
use jwtgate::token::client_auth::{argon2id_secret_hash, sha256_secret_hash, ClientRegistry};
use jwtgate::token::mint::{self, AccessClaims};

const BATCHES: usize = 15;

fn median_ns_per_call(calls_per_batch: u32, mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls_per_batch {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(calls_per_batch)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[BATCHES / 2]
}

fn main() {
    let now = 1_800_000_000;
    let rules = ClaimRules {
        audiences: vec!["orders".into()],
        issuer: None,
        leeway_secs: 30,
        typ: None,
        scope_claim: None,
    };
    println!(
        "{:<8} {:>14} {:>14} {:>14}",
        "alg", "sign (µs)", "verify (µs)", "parse (µs)"
    );
    for alg in [
        Algorithm::Rs256,
        Algorithm::Ps256,
        Algorithm::Es256,
        Algorithm::EdDsa,
    ] {
        let key = Arc::new(local::generate("k", alg).expect("key generation"));
        let signer = key.signer.clone().expect("a generated key signs");
        let mut keys = KeySet::default();
        keys.insert(key).expect("one key");
        let claims = AccessClaims::new("svc", "orders", &["read".into()], None, now, 300, 120)
            .expect("claims");
        let token = mint::sign(&signer, &claims).expect("sign");
        assert!(jws::verify(&token, &keys, &rules, now, || {}).is_ok());

        let sign = median_ns_per_call(200, || {
            black_box(mint::sign(&signer, black_box(&claims)).ok());
        });
        let verify = median_ns_per_call(500, || {
            black_box(jws::verify(black_box(&token), &keys, &rules, now, || {}).ok());
        });
        let parse = median_ns_per_call(2000, || {
            black_box(jws::parse(black_box(&token)).ok());
        });
        println!(
            "{:<8} {:>14.1} {:>14.1} {:>14.1}",
            alg.name(),
            sign / 1e3,
            verify / 1e3,
            parse / 1e3
        );
    }
    client_authentication();
}

/// Median time of `authenticate` for the three cases, per hash kind. The
/// registry runs exactly one verification of the same kind whatever the
/// case (unknown ids are checked against a dummy), so the ratios should be
/// close to 1.
fn client_authentication() {
    println!(
        "\n{:<10} {:>16} {:>16} {:>16} {:>18}",
        "secrets", "right (µs)", "wrong (µs)", "unknown id (µs)", "unknown / wrong"
    );
    let secret = b"a-long-random-client-secret-0123";
    let kinds: [(&str, String, u32); 2] = [
        ("sha256", sha256_secret_hash(secret), 20_000),
        (
            "argon2id",
            argon2id_secret_hash(secret).expect("argon2id hash"),
            3,
        ),
    ];
    for (name, hash, calls) in kinds {
        let registry = ClientRegistry::build(&[ClientConfig {
            id: "svc".into(),
            secret_hash: hash,
            scopes: vec!["read".into()],
            audience: None,
        }])
        .expect("registry");
        assert!(registry.authenticate("svc", secret).is_some());
        let right = median_ns_per_call(calls, || {
            black_box(registry.authenticate(black_box("svc"), secret));
        });
        let wrong = median_ns_per_call(calls, || {
            black_box(registry.authenticate(black_box("svc"), b"not-the-secret-at-all-0123456789"));
        });
        let unknown = median_ns_per_call(calls, || {
            black_box(registry.authenticate(black_box("nobody"), secret));
        });
        println!(
            "{:<10} {:>16.2} {:>16.2} {:>16.2} {:>18.3}",
            name,
            right / 1e3,
            wrong / 1e3,
            unknown / 1e3,
            unknown / wrong
        );
    }
}
