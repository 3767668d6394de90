//! Hostile requests ("Security hardening"): request smuggling shapes,
//! malformed heads, header and body limits, slowloris, `Expect:
//! 100-continue`, Host confusion, paths not in normal form and identity
//! header spoofing — each written as raw bytes on a TCP socket (a client
//! library would refuse to send most of them) and each asserting the exact
//! answer, whether the connection was closed, and what the recording
//! upstream saw (nothing, unless the case is about what it sees).
//!
//! Two kinds of refusal exist. hyper refuses a head it cannot parse itself,
//! with a bare answer (`content-length: 0`, no JSON) and closes the
//! connection; the gateway never sees such a request. Everything hyper
//! accepts reaches `gateway::handle`, whose refusals are JSON.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response (or the connection's end) must come within this.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);
/// How long a connection that must be closed may stay open after answering.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);
/// `limits.header_read_timeout` of the gateways below.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);

fn config(up: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: 127.0.0.1:0
limits: {{max_headers: 20, max_header_bytes: 2048, max_body_bytes: 1024, header_read_timeout: 1s, upstream_timeout: 5s}}
keys:
  - {{kid: gw, alg: RS256, public_key: keys/gw.pub.pem}}
routes:
  - name: orders
    match: {{path_prefix: /orders}}
    upstream: {up}
    policies:
      - jwt: {{audience: orders, scopes: [read]}}
  - name: readonly
    match: {{path_prefix: /readonly, methods: [GET]}}
    upstream: {up}
    policies: []
  - name: public
    match: {{path_prefix: /public}}
    upstream: {up}
    policies: []
"#
    )
}

/// Routes that only answer for `api.example.com`: one protected, one public
/// (so a request routed by the wrong host would reach the upstream).
fn hosted_config(up: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: 127.0.0.1:0
keys:
  - {{kid: gw, alg: RS256, public_key: keys/gw.pub.pem}}
routes:
  - name: orders
    match: {{path_prefix: /orders, host: api.example.com}}
    upstream: {up}
    policies:
      - jwt: {{audience: orders, scopes: [read]}}
  - name: public
    match: {{path_prefix: /public, host: api.example.com}}
    upstream: {up}
    policies: []
"#
    )
}

async fn setup() -> (Gateway, Upstream) {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(&upstream.url())).await;
    (gateway, upstream)
}

fn token() -> String {
    gw_token(&claims(json!({})))
}

// ---------------------------------------------------------------------------
// The raw-socket client.

/// What came back on one raw connection.
struct Reply {
    /// Every byte read, in order.
    bytes: Vec<u8>,
    /// The first final (non-1xx) response, when a whole one arrived.
    response: Option<Answer>,
    /// The gateway ended the connection (EOF or reset) after answering, or
    /// without answering.
    closed: bool,
    /// From connecting until the last read.
    elapsed: Duration,
}

impl Reply {
    fn status(&self) -> Option<u16> {
        self.response.as_ref().map(|a| a.status.as_u16())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Writes `request` (from a separate task, so a gateway that stops reading
/// cannot stall the test) and reads until a final response has arrived and,
/// when `linger` is set, until the connection closes or `linger` passes.
/// Panics if neither a response nor the connection's end comes within
/// [`ANSWER_DEADLINE`].
async fn exchange(addr: SocketAddr, request: Vec<u8>, linger: Option<Duration>) -> Reply {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        // The gateway may close before it has read everything: ignore that.
        let _ = writer.write_all(&request).await;
        // Keep the write half (dropping it would send FIN).
        std::future::pending::<()>().await;
    });
    let mut bytes = Vec::new();
    let mut response = None;
    let mut closed = false;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut until = tokio::time::Instant::now() + ANSWER_DEADLINE;
    loop {
        match tokio::time::timeout_at(until, reader.read(&mut chunk)).await {
            Err(_elapsed) => {
                assert!(
                    response.is_some(),
                    "no response and no close within {ANSWER_DEADLINE:?}; read so far: {:?}",
                    String::from_utf8_lossy(&bytes)
                );
                break;
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                bytes.extend_from_slice(&chunk[..n]);
                if response.is_none() {
                    response = parse_final_response(&bytes, false);
                    if response.is_some() {
                        match linger {
                            None => break,
                            Some(linger) => until = tokio::time::Instant::now() + linger,
                        }
                    }
                }
            }
        }
    }
    if response.is_none() && closed {
        // A body delimited by the connection's end.
        response = parse_final_response(&bytes, true);
    }
    writing.abort();
    Reply {
        bytes,
        response,
        closed,
        elapsed: started.elapsed(),
    }
}

/// The first non-1xx response in `buffer`, once complete (`content-length`
/// or chunked body; a body without either ends with the connection).
fn parse_final_response(buffer: &[u8], at_eof: bool) -> Option<Answer> {
    let mut start = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head_len) = response.parse(&buffer[start..]).ok()? else {
            return None;
        };
        let status = StatusCode::from_u16(response.code?).ok()?;
        let mut map = HeaderMap::new();
        for h in response.headers.iter() {
            map.append(
                http::HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                http::HeaderValue::from_bytes(h.value).ok()?,
            );
        }
        let rest = &buffer[start + head_len..];
        if status.is_informational() {
            start += head_len;
            continue;
        }
        let body = if let Some(length) = map.get("content-length") {
            let length: usize = length.to_str().ok()?.parse().ok()?;
            Bytes::copy_from_slice(rest.get(..length)?)
        } else if map
            .get("transfer-encoding")
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"chunked"))
        {
            dechunk(rest)?
        } else if at_eof {
            Bytes::copy_from_slice(rest)
        } else {
            return None;
        };
        return Some(Answer {
            status,
            headers: map,
            body,
        });
    }
}

fn dechunk(mut rest: &[u8]) -> Option<Bytes> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(Bytes::from(body));
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------
// The table.

/// What a hostile request must get back.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// hyper's own answer to a head it cannot parse: this status,
    /// `connection: close`, an empty body (`content-length: 0`), no JSON.
    Bare(u16),
    /// A gateway error: this status, JSON with this `error`, no challenge.
    Json(u16, &'static str),
    /// A Bearer refusal: this status and JSON `error`; the challenge is
    /// exactly `Bearer realm="jwtgate"` for `missing_token`, else carries
    /// `error="<same code>"`.
    Bearer(u16, &'static str),
    /// The connection is closed without a byte.
    Silence,
}

/// What must become of the connection after the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    /// Closed (the framing of what follows cannot be trusted).
    Closed,
    /// Either (nothing requires a close).
    Either,
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    expect: Expect,
    after: After,
}

fn case(name: &'static str, request: impl AsRef<[u8]>, expect: Expect, after: After) -> Case {
    Case {
        name,
        request: request.as_ref().to_vec(),
        expect,
        after,
    }
}

fn check(expect: Expect, reply: &Reply) -> Result<(), String> {
    if let Expect::Silence = expect {
        return if reply.bytes.is_empty() && reply.closed {
            Ok(())
        } else {
            Err(format!(
                "expected the connection closed without an answer, got {:?} (closed: {})",
                reply.text(),
                reply.closed
            ))
        };
    }
    let Some(answer) = &reply.response else {
        return Err(format!(
            "expected {expect:?}, got no response: {:?} (closed: {})",
            reply.text(),
            reply.closed
        ));
    };
    let status = answer.status.as_u16();
    let body = String::from_utf8_lossy(&answer.body);
    let (want_status, code) = match expect {
        Expect::Bare(want) => {
            if status != want
                || !answer.body.is_empty()
                || answer.header("content-length") != Some("0")
                || answer.header("connection") != Some("close")
                || answer.header("content-type").is_some()
            {
                return Err(format!(
                    "expected hyper's bare {want}, got {status} {:?} {body:?}",
                    answer.headers
                ));
            }
            return Ok(());
        }
        Expect::Json(want, code) | Expect::Bearer(want, code) => (want, code),
        Expect::Silence => unreachable!(),
    };
    if status != want_status {
        return Err(format!(
            "expected {want_status} {code}, got {status} {body:?}"
        ));
    }
    if answer.header("content-type") != Some("application/json") {
        return Err(format!("not JSON: {:?} {body:?}", answer.headers));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&answer.body).map_err(|e| format!("{e}: {body:?}"))?;
    if json["error"] != code || !json["error_description"].is_string() {
        return Err(format!("expected error {code}, got {json}"));
    }
    let challenge = answer.header("www-authenticate");
    match expect {
        Expect::Json(..) if challenge.is_some() => {
            Err(format!("unexpected challenge {challenge:?}"))
        }
        Expect::Bearer(_, "missing_token") if challenge != Some(r#"Bearer realm="jwtgate""#) => {
            Err(format!("challenge {challenge:?}"))
        }
        Expect::Bearer(_, code)
            if code != "missing_token"
                && !challenge.is_some_and(|c| {
                    c.starts_with(r#"Bearer realm="jwtgate""#)
                        && c.contains(&format!(r#"error="{code}""#))
                }) =>
        {
            Err(format!("challenge {challenge:?}"))
        }
        _ => Ok(()),
    }
}

/// Runs every case on a fresh connection; collects every mismatch (so one
/// bug does not hide the others) and fails with all of them.
async fn run_table(addr: SocketAddr, upstream: &Upstream, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in cases {
        let linger = (case.after == After::Closed).then_some(CLOSE_DEADLINE);
        let reply = exchange(addr, case.request.clone(), linger).await;
        if let Err(why) = check(case.expect, &reply) {
            failures.push(format!("{}: {why}", case.name));
        }
        if case.after == After::Closed && !reply.closed {
            failures.push(format!(
                "{}: the connection stayed open after {:?}",
                case.name,
                reply.response.as_ref().map(|a| a.status)
            ));
        }
        let seen = upstream.requests();
        if !seen.is_empty() {
            failures.push(format!(
                "{}: the upstream saw {:?}",
                case.name,
                seen.iter()
                    .map(|r| format!("{} {} body {:?}", r.method, r.target, r.body))
                    .collect::<Vec<_>>()
            ));
            upstream.seen.lock().unwrap().clear();
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `GET <target>` with `Host` and the extra header lines (each `\r\n`-ended).
fn get_with(target: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: gw.test\r\n{extra}\r\n")
}

/// `n` distinct `X-Hn: v` header lines.
fn header_lines(n: usize) -> String {
    (0..n).map(|i| format!("X-H{i}: v\r\n")).collect()
}

/// A `GET /orders` head whose request line and header lines (as counted by
/// `max_header_bytes`: the blank line excluded) are exactly `total` bytes.
fn head_of_size(total: usize) -> String {
    let fixed = "GET /orders HTTP/1.1\r\nHost: gw.test\r\nX-Pad: \r\n".len();
    format!(
        "GET /orders HTTP/1.1\r\nHost: gw.test\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(total - fixed)
    )
}

#[tokio::test]
async fn malformed_and_smuggling_shaped_requests_never_reach_the_upstream() {
    use After::*;
    use Expect::*;
    let (gw, up) = setup().await;
    let post = |headers: &str, body: &str| {
        format!("POST /orders HTTP/1.1\r\nHost: gw.test\r\n{headers}\r\n{body}")
    };
    let chunked = "Transfer-Encoding: chunked\r\n";
    let cases =
        vec![
        // RFC 9112 §6.1: Transfer-Encoding overrides Content-Length and the
        // connection must be closed after the answer. hyper drops the
        // Content-Length, so the gateway cannot tell; it never lets both
        // reach the upstream (see `content_length_with_transfer_encoding_cannot_desync`).
        case(
            "Content-Length then Transfer-Encoding",
            post(&format!("Content-Length: 4\r\n{chunked}"), "0\r\n\r\n"),
            Bearer(401, "missing_token"),
            Closed,
        ),
        case(
            "Transfer-Encoding then Content-Length",
            post(&format!("{chunked}Content-Length: 4\r\n"), "0\r\n\r\n"),
            Bearer(401, "missing_token"),
            Closed,
        ),
        case(
            "two different Content-Length headers",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            Bare(400),
            Closed,
        ),
        case(
            "Content-Length not a number",
            post("Content-Length: abc\r\n", ""),
            Bare(400),
            Closed,
        ),
        case(
            "Content-Length negative",
            post("Content-Length: -1\r\n", ""),
            Bare(400),
            Closed,
        ),
        case(
            "Content-Length with a plus sign",
            post("Content-Length: +5\r\n", "hello"),
            Bare(400),
            Closed,
        ),
        case(
            "Content-Length list 1, 2",
            post("Content-Length: 1, 2\r\n", "xx"),
            Bare(400),
            Closed,
        ),
        case(
            "Content-Length overflowing u64",
            post("Content-Length: 99999999999999999999\r\n", ""),
            Bare(400),
            Closed,
        ),
        case(
            "Transfer-Encoding chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
            Bare(400),
            Closed,
        ),
        case(
            "Transfer-Encoding xchunked",
            post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
            Bare(400),
            Closed,
        ),
        case(
            "Transfer-Encoding identity",
            post("Transfer-Encoding: identity\r\nContent-Length: 0\r\n", ""),
            Bare(400),
            Closed,
        ),
        case(
            "Transfer-Encoding chunked then a second identity line",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                "0\r\n\r\n",
            ),
            Bare(400),
            Closed,
        ),
        case(
            "Transfer-Encoding on HTTP/1.0",
            "POST /orders HTTP/1.0\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Bare(400),
            Closed,
        ),
        case(
            "Transfer-Encoding chunked with a vertical tab",
            post("Transfer-Encoding: chunked\x0b\r\n", "0\r\n\r\n"),
            Bare(400),
            Closed,
        ),
        // Valid spellings (transfer-coding names are case-insensitive, and
        // trailing whitespace is not part of a field value): the head is
        // accepted and the route refuses the missing token.
        case(
            "Transfer-Encoding CHUNKED (valid)",
            post("Transfer-Encoding: CHUNKED\r\n", "0\r\n\r\n"),
            Bearer(401, "missing_token"),
            Either,
        ),
        case(
            "Transfer-Encoding 'chunked ' (valid)",
            post("Transfer-Encoding: chunked \r\n", "0\r\n\r\n"),
            Bearer(401, "missing_token"),
            Either,
        ),
        case(
            "obs-fold with a space",
            get_with("/orders", "X-A: b\r\n c\r\n"),
            Bare(400),
            Closed,
        ),
        case(
            "obs-fold with a tab",
            get_with("/orders", "X-A: b\r\n\tc\r\n"),
            Bare(400),
            Closed,
        ),
        case(
            "obs-fold as the first header line",
            "GET /orders HTTP/1.1\r\n Host: gw.test\r\n\r\n",
            Bare(400),
            Closed,
        ),
        // Bad chunk framing is found only when the body is read; on a route
        // that refuses the head the body is never read, and the connection
        // must not be reused.
        case(
            "chunk size not hex",
            post(chunked, "zz\r\nhello\r\n0\r\n\r\n"),
            Bearer(401, "missing_token"),
            Closed,
        ),
        case(
            "chunk size overflowing",
            post(chunked, "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            Bearer(401, "missing_token"),
            Closed,
        ),
        case(
            "chunk data without its CRLF",
            post(chunked, "5\r\nhelloXX0\r\n\r\n"),
            Bearer(401, "missing_token"),
            Closed,
        ),
        case(
            "space before the colon",
            get_with("/orders", "X-A : b\r\n"),
            Bare(400),
            Closed,
        ),
        case(
            "space before the colon of Host",
            "GET /orders HTTP/1.1\r\nHost : gw.test\r\n\r\n",
            Bare(400),
            Closed,
        ),
        case(
            "NUL in a header value",
            get_with("/orders", "X-A: a\0b\r\n"),
            Bare(400),
            Closed,
        ),
        case(
            "CR in a header value",
            get_with("/orders", "X-A: a\rb\r\n"),
            Bare(400),
            Closed,
        ),
        case(
            "bare LF in a header value",
            get_with("/orders", "X-A: a\nb\r\n"),
            Bare(400),
            Closed,
        ),
        case(
            "HTTP/1.2",
            "GET /orders HTTP/1.2\r\nHost: gw.test\r\n\r\n",
            Bare(400),
            Closed,
        ),
        case(
            "HTTP/2.0 request line over h1",
            "GET /orders HTTP/2.0\r\nHost: gw.test\r\n\r\n",
            Bare(400),
            Closed,
        ),
        case(
            "h2 prior-knowledge preface on the h1 listener",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            Silence,
            Closed,
        ),
        // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request
        // without Host, or with a Host that is not a valid uri-host[:port].
        case(
            "HTTP/1.1 without Host",
            "GET /public/x HTTP/1.1\r\n\r\n",
            Json(400, "invalid_request"),
            Either,
        ),
        case(
            "Host with a space",
            "GET /public/x HTTP/1.1\r\nHost: gw test\r\n\r\n",
            Json(400, "invalid_request"),
            Either,
        ),
        case(
            "Host with userinfo",
            "GET /public/x HTTP/1.1\r\nHost: user@gw.test\r\n\r\n",
            Json(400, "invalid_request"),
            Either,
        ),
        case(
            "lowercase method (a distinct, valid token)",
            "get /orders HTTP/1.1\r\nHost: gw.test\r\n\r\n",
            Bearer(401, "missing_token"),
            Either,
        ),
        case(
            "lowercase method on a GET-only route",
            "get /readonly HTTP/1.1\r\nHost: gw.test\r\n\r\n",
            Json(404, "not_found"),
            Either,
        ),
        case(
            "method with a delimiter in it",
            "GE(T /orders HTTP/1.1\r\nHost: gw.test\r\n\r\n",
            Bare(400),
            Closed,
        ),
        case(
            "1000-byte method",
            format!("{} /orders HTTP/1.1\r\nHost: gw.test\r\n\r\n", "A".repeat(1000)),
            Bearer(401, "missing_token"),
            Either,
        ),
        case(
            "10000-byte method",
            format!("{} /orders HTTP/1.1\r\nHost: gw.test\r\n\r\n", "A".repeat(10_000)),
            Bare(431),
            Closed,
        ),
        case(
            "CONNECT",
            "CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n",
            Json(400, "invalid_request"),
            Either,
        ),
    ];
    assert!(cases.len() >= 25);
    run_table(gw.addr(), &up, cases).await;
}

#[tokio::test]
async fn paths_not_in_normal_form_are_400_and_never_forwarded() {
    use After::*;
    use Expect::*;
    let (gw, up) = setup().await;
    let mut cases: Vec<Case> = [
        "/orders/../admin",
        "/orders/%2e%2e/admin",
        "/orders/%2E%2e/x",
        "/orders%2Fx",
        "/orders%2fx",
        "/orders%5cx",
        "/orders/%00",
        "/orders//x",
        "/./orders",
        "/orders/.",
        "/orders/%2e",
        "/orders/%zz",
        // A public route: a path refused too late would reach the upstream.
        "/public/../orders",
        "/public/%2e%2e/orders",
        "/public%2F..%2Forders",
        "//public",
        "/public/x/%2E%2E",
        // hyper (and the `http` crate) accept `\` in a request target.
        "/orders\\x",
        "/public\\..\\orders",
    ]
    .into_iter()
    .map(|path| {
        case(
            path,
            get_with(path, ""),
            Json(400, "invalid_request"),
            Either,
        )
    })
    .collect();
    cases.push(case(
        "raw NUL in the path",
        get_with("/public/\0", ""),
        Bare(400),
        Closed,
    ));
    run_table(gw.addr(), &up, cases).await;
}

#[tokio::test]
async fn header_limits_answer_431() {
    use After::*;
    use Expect::*;
    let (gw, up) = setup().await;
    let cases = vec![
        // `max_headers: 20` counts the client's header lines, Host included.
        case(
            "exactly max_headers headers",
            get_with("/orders", &header_lines(19)),
            Bearer(401, "missing_token"),
            Either,
        ),
        case(
            "max_headers + 1 headers",
            get_with("/orders", &header_lines(20)),
            Json(431, "request_header_fields_too_large"),
            Either,
        ),
        case(
            "max_headers + 1 headers on a public route",
            get_with("/public", &header_lines(20)),
            Json(431, "request_header_fields_too_large"),
            Either,
        ),
        // Past twice the limit hyper stops parsing and answers itself.
        case(
            "more than 2 × max_headers headers",
            get_with("/public", &header_lines(45)),
            Bare(431),
            Closed,
        ),
        // `max_header_bytes: 2048`: request line and header lines.
        case(
            "exactly max_header_bytes",
            head_of_size(2048),
            Bearer(401, "missing_token"),
            Either,
        ),
        case(
            "max_header_bytes + 1",
            head_of_size(2049),
            Json(431, "request_header_fields_too_large"),
            Either,
        ),
        case(
            "one 3000-byte header on a public route",
            get_with("/public", &format!("X-Big: {}\r\n", "b".repeat(3000))),
            Json(431, "request_header_fields_too_large"),
            Either,
        ),
        case(
            "a 3000-byte request target on a public route",
            get_with(&format!("/public/{}", "t".repeat(3000)), ""),
            Json(431, "request_header_fields_too_large"),
            Either,
        ),
        case(
            "more than 2 × max_header_bytes",
            get_with("/public", &format!("X-Big: {}\r\n", "b".repeat(5000))),
            Bare(431),
            Closed,
        ),
        case(
            "one 64 KiB header line",
            get_with("/public", &format!("X-Big: {}\r\n", "b".repeat(64 * 1024))),
            Bare(431),
            Closed,
        ),
        case(
            "a 64 KiB header name",
            get_with("/public", &format!("X-{}: b\r\n", "n".repeat(64 * 1024))),
            Bare(431),
            Closed,
        ),
    ];
    run_table(gw.addr(), &up, cases).await;
}

#[tokio::test]
async fn host_confusion_is_refused_or_routed_by_the_request_target() {
    use After::*;
    use Expect::*;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&hosted_config(&upstream.url())).await;
    let cases = vec![
        case(
            "two Host headers",
            "GET /public/1 HTTP/1.1\r\nHost: api.example.com\r\nHost: other.example\r\n\r\n",
            Json(400, "invalid_request"),
            Either,
        ),
        case(
            "two identical Host headers",
            "GET /public/1 HTTP/1.1\r\nHost: api.example.com\r\nhost: api.example.com\r\n\r\n",
            Json(400, "invalid_request"),
            Either,
        ),
        // RFC 9112 §3.2.2: the absolute-form authority replaces Host.
        case(
            "absolute-form naming another host (protected route)",
            "GET http://other.example/orders/1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            Json(404, "not_found"),
            Either,
        ),
        case(
            "absolute-form naming another host (public route)",
            "GET http://other.example/public/1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            Json(404, "not_found"),
            Either,
        ),
        case(
            "absolute-form with a dot-segment",
            "GET http://api.example.com/public/../orders HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            Json(400, "invalid_request"),
            Either,
        ),
    ];
    run_table(gw.addr(), &upstream, cases).await;

    // The same routes do answer for their host, whichever way it is named.
    let plain = exchange(
        gw.addr(),
        b"GET /public/1 HTTP/1.1\r\nHost: API.Example.com:8080\r\n\r\n".to_vec(),
        None,
    )
    .await;
    assert_eq!(plain.status(), Some(200), "{}", plain.text());
    let absolute = exchange(
        gw.addr(),
        b"GET http://api.example.com/public/2 HTTP/1.1\r\nHost: other.example\r\n\r\n".to_vec(),
        None,
    )
    .await;
    assert_eq!(absolute.status(), Some(200), "{}", absolute.text());
    let seen = upstream.requests();
    assert_eq!(
        seen.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(),
        vec!["/public/1", "/public/2"]
    );
    assert_eq!(
        header_values(&seen[1], "x-forwarded-host"),
        vec!["api.example.com"]
    );
}

// ---------------------------------------------------------------------------
// Transfer-Encoding: what reaches the upstream when a request is forwarded.

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_desync() {
    let (gw, up) = setup().await;
    // A CL.TE smuggling attempt: a front end trusting Content-Length would
    // take "0\r\n\r\nGET /public/smuggled…" as this request's body; one
    // trusting Transfer-Encoding ends the body at "0\r\n\r\n" and reads a
    // second request.
    for (label, framing) in [
        (
            "CL first",
            "Content-Length: 47\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "TE first",
            "Transfer-Encoding: chunked\r\nContent-Length: 47\r\n",
        ),
    ] {
        up.seen.lock().unwrap().clear();
        let request = format!(
            "POST /public/first HTTP/1.1\r\nHost: gw.test\r\n{framing}\r\n\
             5\r\nhello\r\n0\r\n\r\n\
             GET /public/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        );
        let reply = exchange(gw.addr(), request.into_bytes(), Some(CLOSE_DEADLINE)).await;
        let answer = reply.response.as_ref().expect("an answer");
        assert_eq!(answer.status, 200, "{label}: {}", reply.text());
        // RFC 9112 §6.1: the connection is closed after such a request, so
        // the bytes after the chunked body are never read as a request.
        assert!(reply.closed, "{label}: connection kept open");
        assert_eq!(
            reply.bytes.windows(9).filter(|w| w == b"HTTP/1.1 ").count(),
            1,
            "{label}: {}",
            reply.text()
        );
        let seen = up.requests();
        assert_eq!(seen.len(), 1, "{label}: {seen:?}");
        let r = &seen[0];
        assert_eq!(r.target, "/public/first", "{label}");
        assert_eq!(r.body, "hello", "{label}");
        // Re-framed by the gateway: never both framings, never the
        // client's Content-Length.
        let cl = header_values(r, "content-length");
        let te = header_values(r, "transfer-encoding");
        assert!(
            (cl == vec!["5"] && te.is_empty()) || (cl.is_empty() && te == vec!["chunked"]),
            "{label}: content-length {cl:?}, transfer-encoding {te:?}"
        );
    }
}

#[tokio::test]
async fn valid_transfer_encoding_spellings_are_decoded_and_reframed() {
    let (gw, up) = setup().await;
    for te in ["CHUNKED", "Chunked", "chunked ", "gzip, chunked"] {
        up.seen.lock().unwrap().clear();
        let request = format!(
            "POST /public/te HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: {te}\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
        );
        let reply = exchange(gw.addr(), request.into_bytes(), None).await;
        assert_eq!(
            reply.response.as_ref().map(|a| a.status),
            Some(StatusCode::OK),
            "{te:?}: {}",
            reply.text()
        );
        let seen = up.requests();
        assert_eq!(seen.len(), 1, "{te:?}");
        assert_eq!(seen[0].body, "hello", "{te:?}");
        assert!(
            header_values(&seen[0], "transfer-encoding")
                .iter()
                .all(|v| v == "chunked"),
            "{te:?}: the client's Transfer-Encoding is hop-by-hop"
        );
    }
}

/// Lets an aborted upstream request land in the recorder before looking.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The bodies of the requests to `target` that the upstream read to the
/// end (the recorder keeps a body that failed half-way as empty).
fn completed_bodies(upstream: &Upstream, target: &str) -> Vec<usize> {
    upstream
        .requests()
        .iter()
        .filter(|r| r.target == target && !r.body.is_empty())
        .map(|r| r.body.len())
        .collect()
}

#[tokio::test]
async fn a_broken_chunked_body_on_a_forwarded_request_is_a_client_error() {
    let (gw, up) = setup().await;
    let auth = format!("Authorization: Bearer {}\r\n", token());
    let mut failures = Vec::new();
    for (label, path, auth, body) in [
        (
            "non-hex size, public",
            "/public/b1",
            "",
            "zz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "overflowing size after a good chunk, public",
            "/public/b2",
            "",
            "5\r\nhello\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        ),
        (
            "chunk data without its CRLF, with a token",
            "/orders/b3",
            auth.as_str(),
            "5\r\nhelloXX0\r\n\r\n",
        ),
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: gw.test\r\n{auth}Transfer-Encoding: chunked\r\n\r\n{body}"
        );
        let reply = exchange(gw.addr(), request.into_bytes(), Some(CLOSE_DEADLINE)).await;
        // The client broke the framing: 400 (a 502 would blame the
        // upstream), and the connection closed.
        if let Err(why) = check(Expect::Json(400, "invalid_request"), &reply) {
            failures.push(format!("{label}: {why}"));
        }
        if !reply.closed {
            failures.push(format!("{label}: connection kept open"));
        }
        // The upstream may have seen the head, never a complete request.
        settle().await;
        let completed = completed_bodies(&up, path);
        if !completed.is_empty() {
            failures.push(format!("{label}: the upstream read bodies {completed:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// Body limit and Expect: 100-continue.

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_forwarding() {
    let (gw, up) = setup().await;
    let auth = format!("Authorization: Bearer {}\r\n", token());
    let over = format!(
        "POST /orders/big HTTP/1.1\r\nHost: gw.test\r\n{auth}Content-Length: 2000\r\n\r\n{}",
        "b".repeat(2000)
    );
    let reply = exchange(gw.addr(), over.into_bytes(), None).await;
    assert_eq!(
        check(Expect::Json(413, "payload_too_large"), &reply),
        Ok(())
    );
    assert_eq!(up.count(), 0);

    // Also on a public route, and with the body not even sent.
    let head_only = "POST /public/big HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1025\r\n\r\n";
    let reply = exchange(gw.addr(), head_only.as_bytes().to_vec(), None).await;
    assert_eq!(
        check(Expect::Json(413, "payload_too_large"), &reply),
        Ok(())
    );
    assert_eq!(up.count(), 0);

    // The limit itself is allowed.
    let at_limit = format!(
        "POST /orders/ok HTTP/1.1\r\nHost: gw.test\r\n{auth}Content-Length: 1024\r\n\r\n{}",
        "b".repeat(1024)
    );
    let reply = exchange(gw.addr(), at_limit.into_bytes(), None).await;
    assert_eq!(reply.status(), Some(200));
    assert_eq!(up.requests()[0].body.len(), 1024);
}

#[tokio::test]
async fn a_chunked_body_growing_past_the_limit_is_cut_off() {
    let (gw, up) = setup().await;
    let auth = format!("Authorization: Bearer {}\r\n", token());
    let chunk = "c".repeat(600);
    let request = format!(
        "POST /orders/grow HTTP/1.1\r\nHost: gw.test\r\n{auth}Transfer-Encoding: chunked\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let reply = exchange(gw.addr(), request.into_bytes(), Some(CLOSE_DEADLINE)).await;
    assert_eq!(
        check(Expect::Json(413, "payload_too_large"), &reply),
        Ok(()),
        "{}",
        reply.text()
    );
    // The upstream may have seen the head and part of the body, never the
    // end of it.
    settle().await;
    assert_eq!(completed_bodies(&up, "/orders/grow"), Vec::<usize>::new());

    // At exactly the limit the whole body goes through.
    let chunk = "c".repeat(512);
    let request = format!(
        "POST /orders/fits HTTP/1.1\r\nHost: gw.test\r\n{auth}Transfer-Encoding: chunked\r\n\r\n\
         200\r\n{chunk}\r\n200\r\n{chunk}\r\n0\r\n\r\n"
    );
    let reply = exchange(gw.addr(), request.into_bytes(), None).await;
    assert_eq!(reply.status(), Some(200));
    assert_eq!(completed_bodies(&up, "/orders/fits"), vec![1024]);
}

/// Reads until the end of one response head; returns every byte read.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut buffer = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !buffer.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => buffer.push(byte[0]),
                _ => break,
            }
        }
    };
    tokio::time::timeout(ANSWER_DEADLINE, read)
        .await
        .expect("no response head in time");
    buffer
}

#[tokio::test]
async fn expect_100_continue_is_only_granted_to_requests_that_pass() {
    let (gw, up) = setup().await;
    let expecting = |auth: &str, length: usize| {
        format!(
            "POST /orders/e HTTP/1.1\r\nHost: gw.test\r\n{auth}Expect: 100-continue\r\n\
             Content-Length: {length}\r\n\r\n"
        )
    };

    // No token: the refusal comes first; no 100 invites the body.
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    stream.write_all(expecting("", 5).as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    let text = String::from_utf8_lossy(&head);
    assert!(text.starts_with("HTTP/1.1 401 "), "{text}");
    assert!(text
        .to_ascii_lowercase()
        .contains("www-authenticate: bearer realm=\"jwtgate\"\r\n"));

    // A valid token but a declared body over the limit: 413, no 100.
    let auth = format!("Authorization: Bearer {}\r\n", token());
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    stream
        .write_all(expecting(&auth, 2000).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    let text = String::from_utf8_lossy(&head);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert_eq!(up.count(), 0);

    // A valid token: 100 Continue, then the body, then the upstream's 200.
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    stream
        .write_all(expecting(&auth, 5).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert_eq!(
        String::from_utf8_lossy(&head),
        "HTTP/1.1 100 Continue\r\n\r\n"
    );
    stream.write_all(b"hello").await.unwrap();
    let head = read_head(&mut stream).await;
    let text = String::from_utf8_lossy(&head);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, "hello");
}

// ---------------------------------------------------------------------------
// Slowloris.

#[tokio::test]
async fn a_stalled_request_head_is_closed_by_the_header_read_timeout() {
    let (gw, up) = setup().await;
    let reply = exchange(
        gw.addr(),
        b"GET /public/slow HTTP/1.1\r\nHost: gw.test\r\n".to_vec(),
        None,
    )
    .await;
    assert!(reply.closed, "{}", reply.text());
    assert!(
        reply.elapsed >= HEADER_READ_TIMEOUT - Duration::from_millis(100)
            && reply.elapsed <= Duration::from_secs(4),
        "closed after {:?}",
        reply.elapsed
    );
    // hyper closes without an answer (no 408).
    assert_eq!(reply.text(), "");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_trickled_request_head_is_closed_by_the_header_read_timeout() {
    let (gw, up) = setup().await;
    let started = Instant::now();
    let stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One byte every 300 ms: each read is quick, the head never completes.
    let head = b"GET /public/trickle HTTP/1.1\r\nHost: gw.test\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n";
    let trickle = tokio::spawn(async move {
        let mut sent = 0;
        for byte in head {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        (sent, writer)
    });
    let mut received = Vec::new();
    let closed = tokio::time::timeout(ANSWER_DEADLINE, async {
        let mut chunk = [0u8; 1024];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    assert!(closed.is_ok(), "still open after {ANSWER_DEADLINE:?}");
    assert!(
        elapsed <= Duration::from_secs(4),
        "closed only after {elapsed:?}"
    );
    trickle.abort();
    assert_eq!(String::from_utf8_lossy(&received), "");
    assert_eq!(up.count(), 0);
}

// ---------------------------------------------------------------------------
// Identity and X-Forwarded-* spoofing (these reach the upstream by design).

const SPOOFED: &str = "X-Auth-Subject: admin\r\n\
                       x_auth_subject: admin\r\n\
                       X-AUTH-SCOPES: all\r\n\
                       x-auth_scopes: all\r\n\
                       X-A: a\nX-Auth-Subject: lf-admin\r\n\
                       Connection: X-Auth-Subject, x-auth-scopes\r\n";

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let (gw, up) = setup().await;
    let public = format!("GET /public/me HTTP/1.1\r\nHost: gw.test\r\n{SPOOFED}\r\n");
    let reply = exchange(gw.addr(), public.into_bytes(), None).await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());

    let auth = format!("Authorization: Bearer {}\r\n", token());
    let protected = format!("GET /orders/me HTTP/1.1\r\nHost: gw.test\r\n{auth}{SPOOFED}\r\n");
    let reply = exchange(gw.addr(), protected.into_bytes(), None).await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());

    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    let spoofable = [
        "x-auth-subject",
        "x_auth_subject",
        "x-auth-scopes",
        "x-auth_scopes",
    ];
    for name in spoofable {
        assert!(
            header_values(&seen[0], name).is_empty(),
            "public route: {name} reached the upstream: {:?}",
            seen[0].headers
        );
    }
    // The protected route sees exactly the gateway's own values, despite
    // `Connection` naming them.
    assert_eq!(header_values(&seen[1], "x-auth-subject"), vec!["alice"]);
    assert_eq!(header_values(&seen[1], "x-auth-scopes"), vec!["read write"]);
    assert!(header_values(&seen[1], "x_auth_subject").is_empty());
    assert!(header_values(&seen[1], "x-auth_scopes").is_empty());
    for r in &seen {
        assert!(header_values(r, "connection").is_empty());
        assert_eq!(header_values(r, "x-a"), vec!["a"]);
    }
}

#[tokio::test]
async fn client_sent_x_forwarded_headers_are_extended_or_replaced() {
    let (gw, up) = setup().await;
    let auth = format!("Authorization: Bearer {}\r\n", token());
    for (path, auth) in [("/public/xff", ""), ("/orders/xff", auth.as_str())] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: api.example.com:8443\r\n{auth}\
             X-Forwarded-For: 203.0.113.7\r\n\
             X-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: evil.example\r\n\r\n"
        );
        let reply = exchange(gw.addr(), request.into_bytes(), None).await;
        assert_eq!(reply.status(), Some(200), "{path}");
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(
            header_values(r, "x-forwarded-for"),
            vec!["203.0.113.7, 127.0.0.1"],
            "{}",
            r.target
        );
        assert_eq!(header_values(r, "x-forwarded-proto"), vec!["http"]);
        assert_eq!(
            header_values(r, "x-forwarded-host"),
            vec!["api.example.com:8443"]
        );
    }
}
