//! Idle keep-alive connections are parked without hyper's buffers
//! (`src/parking.rs`): what is parked is counted by
//! `jwtgate_open_connections{state}`, and parking never loses or reorders a
//! request or a response byte: a parked connection serves its next request,
//! pipelined requests are all answered, a head split across a pause, or a
//! request whose upstream is slow, is never parked, the header read timeout
//! still closes idle connections, and shutdown closes parked ones at once.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than the gateway's park delay (100 ms).
const PAUSE: Duration = Duration::from_millis(400);

fn config(upstream: &str, header_read_timeout: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: 127.0.0.1:0
limits: {{header_read_timeout: {header_read_timeout}, upstream_timeout: 10s}}
keys:
  - {{kid: gw, alg: RS256, public_key: keys/gw.pub.pem}}
routes:
  - name: orders
    match: {{path_prefix: /orders}}
    upstream: {upstream}
    policies:
      - jwt: {{audience: orders, scopes: [read]}}
  - name: slow
    match: {{path_prefix: /slow}}
    upstream: {upstream}
    policies: []
"#
    )
}

async fn setup(header_read_timeout: &str) -> (Gateway, Upstream) {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(&upstream.url(), header_read_timeout)).await;
    (gateway, upstream)
}

fn get_orders(path: &str, token: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n\r\n")
}

/// `(active, idle)` from `jwtgate_open_connections{state}`.
async fn open_connections(gateway: &Gateway) -> (u64, u64) {
    let text =
        String::from_utf8(get(&gateway.admin_url("/metrics"), &[]).await.body.to_vec()).unwrap();
    let value = |state: &str| {
        let prefix = format!("jwtgate_open_connections{{state=\"{state}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
            .parse::<u64>()
            .unwrap()
    };
    (value("active"), value("idle"))
}

/// Polls the gauge until it reads `expected` (bounded by [`DEADLINE`]).
async fn wait_for_connections(gateway: &Gateway, expected: (u64, u64)) {
    let waited = tokio::time::timeout(DEADLINE, async {
        loop {
            if open_connections(gateway).await == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if waited.is_err() {
        panic!(
            "open connections (active, idle) stayed {:?}, expected {expected:?}",
            open_connections(gateway).await
        );
    }
}

/// One client connection, reading responses one at a time.
struct KeepAlive {
    stream: TcpStream,
    /// Bytes read past the last response.
    pending: Vec<u8>,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            stream: TcpStream::connect(addr).await.unwrap(),
            pending: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next whole response (content-length bodies only).
    async fn response(&mut self) -> Answer {
        let read = async {
            loop {
                if let Some((answer, used)) = parse_response(&self.pending) {
                    self.pending.drain(..used);
                    return answer;
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed mid-response: {:?}", self.text());
                self.pending.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(DEADLINE, read)
            .await
            .expect("no response in time")
    }

    async fn request(&mut self, bytes: &[u8]) -> Answer {
        self.send(bytes).await;
        self.response().await
    }

    /// Reads until the gateway closes the connection; what arrived first.
    async fn closed_within(&mut self, deadline: Duration) -> Vec<u8> {
        let read = async {
            let mut rest = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return rest,
                    Ok(n) => rest.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(deadline, read)
            .await
            .expect("the gateway did not close the connection in time")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

fn assert_proxied(answer: &Answer) {
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body, r#"{"upstream":"ok"}"#);
}

/// A connection that has served `GET /orders/1` and is parked (the only
/// connection of `gateway`).
async fn parked_client(gateway: &Gateway, token: &str) -> KeepAlive {
    let mut client = KeepAlive::open(gateway.addr()).await;
    assert_proxied(
        &client
            .request(get_orders("/orders/1", token).as_bytes())
            .await,
    );
    wait_for_connections(gateway, (0, 1)).await;
    client
}

#[tokio::test]
async fn an_idle_connection_is_parked_and_serves_its_next_requests() {
    let (gateway, upstream) = setup("5s").await;
    let token = gw_token(&claims(json!({})));
    wait_for_connections(&gateway, (0, 0)).await;

    let mut client = KeepAlive::open(gateway.addr()).await;
    // Connected, nothing sent yet: counted idle, no hyper connection yet.
    wait_for_connections(&gateway, (0, 1)).await;
    assert_proxied(
        &client
            .request(get_orders("/orders/1", &token).as_bytes())
            .await,
    );
    wait_for_connections(&gateway, (0, 1)).await;

    // The same socket, back from parking: a GET, then a POST with a body.
    assert_proxied(
        &client
            .request(get_orders("/orders/2", &token).as_bytes())
            .await,
    );
    wait_for_connections(&gateway, (0, 1)).await;
    let post = format!(
        "POST /orders/3 HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 11\r\n\r\nhello world"
    );
    assert_proxied(&client.request(post.as_bytes()).await);
    // The bytes read end inside a Content-Length body, where the wrapper
    // cannot tell hyper's buffer empty: the connection stays with hyper...
    tokio::time::sleep(PAUSE).await;
    assert_eq!(open_connections(&gateway).await, (1, 0));
    // ...until a request ending at its head: then it is parked again.
    assert_proxied(
        &client
            .request(get_orders("/orders/4", &token).as_bytes())
            .await,
    );
    wait_for_connections(&gateway, (0, 1)).await;

    let seen = upstream.requests();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        ["/orders/1", "/orders/2", "/orders/3", "/orders/4"]
    );
    assert_eq!(seen[2].body, "hello world");

    drop(client);
    wait_for_connections(&gateway, (0, 0)).await;
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let (gateway, upstream) = setup("5s").await;
    let token = gw_token(&claims(json!({})));
    let mut client = KeepAlive::open(gateway.addr()).await;

    let pipelined = format!(
        "{}{}{}",
        get_orders("/orders/a", &token),
        get_orders("/orders/b", &token),
        get_orders("/orders/c", "not-a-token"),
    );
    client.send(pipelined.as_bytes()).await;
    assert_proxied(&client.response().await);
    assert_proxied(&client.response().await);
    client.response().await.assert_error(401, "invalid_token");
    wait_for_connections(&gateway, (0, 1)).await;
    assert_proxied(
        &client
            .request(get_orders("/orders/d", &token).as_bytes())
            .await,
    );

    let targets: Vec<String> = upstream.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/orders/a", "/orders/b", "/orders/d"]);
}

#[tokio::test]
async fn a_request_head_split_across_a_pause_is_not_parked() {
    let (gateway, upstream) = setup("5s").await;
    let token = gw_token(&claims(json!({})));
    let request = get_orders("/orders/split", &token);
    let (first, second) = request.split_at(40);

    for reused in [false, true] {
        let mut client = KeepAlive::open(gateway.addr()).await;
        if reused {
            assert_proxied(
                &client
                    .request(get_orders("/orders/0", &token).as_bytes())
                    .await,
            );
            wait_for_connections(&gateway, (0, 1)).await;
        }
        client.send(first.as_bytes()).await;
        tokio::time::sleep(PAUSE).await;
        // Half a head is held by hyper, which keeps the connection.
        assert_eq!(open_connections(&gateway).await, (1, 0));
        client.send(second.as_bytes()).await;
        assert_proxied(&client.response().await);
    }
    let split = upstream
        .requests()
        .into_iter()
        .filter(|r| r.target == "/orders/split")
        .count();
    assert_eq!(split, 2);
}

#[tokio::test]
async fn a_request_waiting_for_a_slow_upstream_is_not_parked() {
    let (gateway, _upstream) = setup("5s").await;
    let mut client = KeepAlive::open(gateway.addr()).await;
    // The upstream takes 3 s to answer /slow: the socket is silent far
    // longer than the park delay while the request is in flight.
    client
        .send(b"GET /slow HTTP/1.1\r\nHost: api\r\n\r\n")
        .await;
    tokio::time::sleep(PAUSE).await;
    assert_eq!(open_connections(&gateway).await, (1, 0));
    assert_proxied(&client.response().await);
    wait_for_connections(&gateway, (0, 1)).await;
}

#[tokio::test]
async fn the_header_read_timeout_closes_a_parked_connection() {
    let (gateway, _upstream) = setup("1s").await;
    let token = gw_token(&claims(json!({})));
    let mut client = parked_client(&gateway, &token).await;
    // Closed without a byte (no 408 on an idle connection), within the
    // 1 s timeout plus scheduling slack.
    let after = client.closed_within(Duration::from_secs(3)).await;
    assert_eq!(String::from_utf8_lossy(&after), "");
    wait_for_connections(&gateway, (0, 0)).await;

    // A connection that never sends anything is closed the same way.
    let mut silent = KeepAlive::open(gateway.addr()).await;
    assert!(silent
        .closed_within(Duration::from_secs(3))
        .await
        .is_empty());
}

#[tokio::test]
async fn many_idle_connections_are_all_parked() {
    let (gateway, upstream) = setup("10s").await;
    let token = gw_token(&claims(json!({})));
    let mut clients = Vec::new();
    for i in 0..200 {
        let mut client = KeepAlive::open(gateway.addr()).await;
        let request = get_orders(&format!("/orders/{i}"), &token);
        assert_proxied(&client.request(request.as_bytes()).await);
        clients.push(client);
    }
    wait_for_connections(&gateway, (0, 200)).await;
    // Every one of them still answers.
    for client in &mut clients {
        assert_proxied(
            &client
                .request(get_orders("/orders/again", &token).as_bytes())
                .await,
        );
    }
    assert_eq!(upstream.count(), 400);
    wait_for_connections(&gateway, (0, 200)).await;
}

#[tokio::test]
async fn shutdown_closes_parked_connections_at_once() {
    let (gateway, _upstream) = setup("10s").await;
    let token = gw_token(&claims(json!({})));
    let mut client = parked_client(&gateway, &token).await;

    // The drain (30 s by default) does not wait for an idle connection.
    let Gateway { running, dir: _dir } = gateway;
    tokio::time::timeout(Duration::from_secs(5), running.shutdown())
        .await
        .expect("shutdown waited for a parked connection");
    assert!(client.closed_within(DEADLINE).await.is_empty());
}
