//! Keep-alive connections to plain-HTTP/1.1 upstreams
//! (`src/upstream_pool.rs`): reused while the upstream keeps them open,
//! never handed to the next request with a byte of the last answer unread,
//! replaced when the upstream closes them, and closed when the client
//! abandons a response half-way.
//!
//! The upstream here is a raw socket server, so each test controls exactly
//! what goes on the wire and counts the connections it accepted.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted upstream does after writing its answer.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Waits for the next request on the same connection.
    KeepOpen,
    /// Closes the connection at once.
    Close,
    /// Closes the connection after this long without a request.
    CloseIdleAfter(Duration),
    /// Writes nothing more and keeps the connection until the peer closes it.
    Stall,
}

type Script = dyn Fn(&str, &str, &[u8]) -> (Vec<u8>, Then) + Send + Sync;

/// A raw HTTP/1.1 upstream on 127.0.0.1:0 answering each request (method,
/// target, body) as `script` says, counting the connections it accepted
/// and the ones whose peer closed them.
struct ScriptedUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed_by_peer: Arc<AtomicUsize>,
    targets: Arc<Mutex<Vec<String>>>,
}

impl ScriptedUpstream {
    async fn start(
        script: impl Fn(&str, &str, &[u8]) -> (Vec<u8>, Then) + Send + Sync + 'static,
    ) -> Self {
        let script: Arc<Script> = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_peer = Arc::new(AtomicUsize::new(0));
        let targets: Arc<Mutex<Vec<String>>> = Arc::default();
        let (counter, closed, seen) = (accepted.clone(), closed_by_peer.clone(), targets.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (script, closed, seen) = (script.clone(), closed.clone(), seen.clone());
                tokio::spawn(serve_scripted(stream, script, closed, seen));
            }
        });
        ScriptedUpstream {
            addr,
            accepted,
            closed_by_peer,
            targets,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve_scripted(
    mut stream: TcpStream,
    script: Arc<Script>,
    closed_by_peer: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut idle_limit = None;
    loop {
        // One request: its head, then a Content-Length body.
        let request = loop {
            if let Some(parsed) = parse_request(&buffer) {
                break parsed;
            }
            let read = match idle_limit {
                Some(limit) => match tokio::time::timeout(limit, stream.read(&mut chunk)).await {
                    Ok(read) => read,
                    Err(_) => return,
                },
                None => stream.read(&mut chunk).await,
            };
            match read {
                Ok(0) | Err(_) => {
                    closed_by_peer.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let (method, target, body, used) = request;
        buffer.drain(..used);
        seen.lock().unwrap().push(target.clone());
        let (answer, then) = script(&method, &target, &body);
        if stream.write_all(&answer).await.is_err() {
            return;
        }
        match then {
            Then::KeepOpen => idle_limit = None,
            Then::Close => return,
            Then::CloseIdleAfter(limit) => idle_limit = Some(limit),
            Then::Stall => {
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
                closed_by_peer.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// `(method, target, body, bytes used)` of the first whole request.
fn parse_request(buffer: &[u8]) -> Option<(String, String, Vec<u8>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = request.parse(buffer).ok()? else {
        return None;
    };
    let length = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |h| {
            std::str::from_utf8(h.value)
                .unwrap()
                .parse::<usize>()
                .unwrap()
        });
    if buffer.len() < head + length {
        return None;
    }
    Some((
        request.method.unwrap().to_owned(),
        request.path.unwrap().to_owned(),
        buffer[head..head + length].to_vec(),
        head + length,
    ))
}

/// `200` with `body` and a Content-Length.
fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn gateway_for(upstream: &ScriptedUpstream) -> Gateway {
    Gateway::start(&format!(
        r#"
listen: 127.0.0.1:0
limits: {{upstream_timeout: 5s}}
keys:
  - {{kid: gw, alg: RS256, public_key: keys/gw.pub.pem}}
routes:
  - name: open
    match: {{path_prefix: /}}
    upstream: {}
    policies: []
"#,
        upstream.url()
    ))
    .await
}

/// GETs `path` through the gateway and checks that the answer is the
/// scripted upstream's `200` echoing this very path.
async fn assert_echoed(gateway: &Gateway, path: &str) -> Answer {
    let answer = get(&gateway.url(path), &[]).await;
    assert_eq!(answer.status, 200, "{path}");
    assert_eq!(answer.body, path);
    answer
}

#[tokio::test]
async fn one_upstream_connection_carries_every_kind_of_answer_in_turn() {
    // Content-Length, chunked, empty 204, HEAD and 304 answers, each with
    // its own request's target in it, over one upstream connection.
    let upstream = ScriptedUpstream::start(|method, target, _| {
        let answer = match (method, target) {
            (_, "/chunked") => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n/chu\r\n4\r\nnked\r\n0\r\n\r\n".to_vec(),
            (_, "/empty") => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            ("HEAD", _) => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(),
            (_, "/unchanged") => b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec(),
            _ => ok(target),
        };
        (answer, Then::KeepOpen)
    })
    .await;
    let gateway = gateway_for(&upstream).await;
    for round in 0..3 {
        assert_echoed(&gateway, &format!("/first/{round}")).await;
        assert_echoed(&gateway, "/chunked").await;
        let answer = get(&gateway.url("/empty"), &[]).await;
        assert_eq!(answer.status, 204);
        assert_eq!(answer.body, "");
        let answer = send("HEAD", &gateway.url("/head"), &[], b"").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("content-length"), Some("5"));
        assert_eq!(answer.body, "");
        let answer = get(&gateway.url("/unchanged"), &[]).await;
        assert_eq!(answer.status, 304);
        assert_eq!(answer.body, "");
        let answer = send("POST", &gateway.url("/posted"), &[], b"payload").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "/posted");
    }
    assert_eq!(
        upstream.accepted(),
        1,
        "every request reused the first connection"
    );
    assert_eq!(upstream.targets.lock().unwrap().len(), 18);
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_answer() {
    let upstream = ScriptedUpstream::start(|_, target, _| (ok(target), Then::KeepOpen)).await;
    let gateway = gateway_for(&upstream).await;
    for _ in 0..3 {
        let requests: Vec<_> = (0..40)
            .map(|i| {
                let url = gateway.url(&format!("/item/{i}"));
                tokio::spawn(async move { (i, get(&url, &[]).await) })
            })
            .collect();
        for request in requests {
            let (i, answer) = request.await.unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body, format!("/item/{i}"));
        }
    }
    // At most one connection per request in flight; the later rounds
    // reuse the first round's.
    let accepted = upstream.accepted();
    assert!((1..=40).contains(&accepted), "{accepted} connections");
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
    // The upstream closes each connection 50 ms after answering (a short
    // keep-alive timeout); the next request, later, must not fail on it.
    let upstream = ScriptedUpstream::start(|_, target, _| {
        (ok(target), Then::CloseIdleAfter(Duration::from_millis(50)))
    })
    .await;
    let gateway = gateway_for(&upstream).await;
    for i in 0..4 {
        assert_echoed(&gateway, &format!("/later/{i}")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(upstream.accepted(), 4);
}

#[tokio::test]
async fn an_answer_with_connection_close_is_not_reused() {
    let upstream = ScriptedUpstream::start(|_, target, _| {
        let answer = format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{target}",
            target.len()
        );
        (answer.into_bytes(), Then::Close)
    })
    .await;
    let gateway = gateway_for(&upstream).await;
    for i in 0..3 {
        let answer = assert_echoed(&gateway, &format!("/once/{i}")).await;
        assert_eq!(answer.header("connection"), None);
    }
    assert_eq!(upstream.accepted(), 3);
}

#[tokio::test]
async fn a_response_abandoned_half_way_closes_its_upstream_connection() {
    // `/big` announces 100,000 bytes and sends 10; the client reads the head
    // and hangs up. The half-read connection must be closed, never reused:
    // the next request gets its own answer on a new connection.
    let upstream = ScriptedUpstream::start(|_, target, _| match target {
        "/big" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789".to_vec(),
            Then::Stall,
        ),
        _ => (ok(target), Then::KeepOpen),
    })
    .await;
    let gateway = gateway_for(&upstream).await;

    let mut client = TcpStream::connect(gateway.addr()).await.unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = client.read(&mut chunk).await.unwrap();
            assert_ne!(n, 0, "the gateway closed before the head");
            head.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("no head for /big");
    assert!(
        head.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    drop(client);
    let upstream_ref = &upstream;
    wait_until(
        DEADLINE,
        "the upstream connection of /big to close",
        move || async move { upstream_ref.closed_by_peer.load(Ordering::SeqCst) == 1 },
    )
    .await;

    assert_echoed(&gateway, "/small").await;
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn an_upstream_named_by_host_name_is_reached_and_reused() {
    let upstream = ScriptedUpstream::start(|_, target, _| (ok(target), Then::KeepOpen)).await;
    let gateway = Gateway::start(&format!(
        r#"
listen: 127.0.0.1:0
keys:
  - {{kid: gw, alg: RS256, public_key: keys/gw.pub.pem}}
routes:
  - name: open
    match: {{path_prefix: /}}
    upstream: http://localhost:{}/base
    policies: []
"#,
        upstream.addr.port()
    ))
    .await;
    for i in 0..3 {
        let answer = get(&gateway.url(&format!("/n/{i}?q=1")), &[]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, format!("/base/n/{i}?q=1"));
    }
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn an_upstream_that_answers_garbage_gives_502_and_the_next_request_a_new_connection() {
    let upstream = ScriptedUpstream::start(|_, target, _| match target {
        "/garbage" => (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), Then::KeepOpen),
        _ => (ok(target), Then::KeepOpen),
    })
    .await;
    let gateway = gateway_for(&upstream).await;
    let answer = get(&gateway.url("/fine"), &[]).await;
    assert_eq!(answer.body, "/fine");
    let answer = get(&gateway.url("/garbage"), &[]).await;
    answer.assert_error(502, "bad_gateway");
    assert_eq!(
        answer.json()["error_description"],
        "the upstream sent an invalid response"
    );
    assert_echoed(&gateway, "/fine-again").await;
    assert_eq!(
        upstream.accepted(),
        2,
        "the broken connection was not reused"
    );
}
