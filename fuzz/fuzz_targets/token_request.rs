//! The token endpoint's request handling (method, query, Authorization,
//! Content-Type, form body, client authentication, scope selection) on any
//! input: never a panic, never a 5xx.
//!
//! Input layout: `query \n authorization \n content-type \n body`.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use http::{HeaderValue, Method, Request};
use jwtgate::body::full;
use jwtgate::config::ConfigSource;
use jwtgate::runtime::GeneratedKeys;
use jwtgate::snapshot::Snapshot;
use jwtgate::token::endpoint::Caller;
use jwtgate::token::throttle::Throttle;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = "
listen: 127.0.0.1:0
keys:
  - {kid: fuzz, alg: EdDSA, generate: true}
token_endpoint:
  path: /token
  signing_key: fuzz
  audience: orders
  throttle: {per_client: 1000000, per_address: 1000000}
  clients:
    - id: c1
      # sha256 of `s3cret`
      secret_hash: sha256:1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0
      scopes: [read, write]
";

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let source = ConfigSource {
            path: None,
            text: CONFIG.to_owned(),
        };
        Snapshot::build(&source, &GeneratedKeys::default()).expect("the fuzz config is valid")
    })
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let (query, authorization, content_type) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let body = parts.next().unwrap_or_default().to_vec();
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let Ok(uri) = format!("/token?{query}").parse::<http::Uri>() else {
        return;
    };
    let mut request = Request::new(full(body));
    *request.method_mut() = if query.len() % 5 == 4 { Method::GET } else { Method::POST };
    *request.uri_mut() = uri;
    for (name, value) in [("authorization", authorization), ("content-type", content_type)] {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            if !value.is_empty() {
                request.headers_mut().insert(name, value);
            }
        }
    }
    let endpoint = snapshot().token_endpoint.as_ref().expect("configured");
    let throttle = Throttle::default();
    let caller = Caller {
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        throttle: &throttle,
    };
    let result = RUNTIME.with(|rt| rt.block_on(endpoint.handle(request, 1_700_000_000, &caller)));
    match result {
        Ok(response) => assert_eq!(response.status(), 200),
        Err(error) => assert!(error.status().as_u16() < 500, "{error:?}"),
    }
});
