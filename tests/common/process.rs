//! Driving the real `jwtgate` binary from tests: a child process killed
//! and reaped on drop, its stderr read line by line, and the listener
//! addresses it logs. Shared by `tests/cli.rs` and `tests/scale_out.rs`
//! (included with `#[path]`, so other test binaries don't compile it).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_jwtgate");

/// The longest `run` may take to log `listening on` and answer.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process that is killed and reaped when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary with a clean, predictable environment.
pub fn jwtgate() -> Command {
    let mut command = Command::new(BIN);
    command
        .env_remove("JWTGATE_CONFIG")
        .env_remove("JWTGATE_THREADS")
        .env("RUST_LOG", "info");
    command
}

#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn drain<R: Read + Send + 'static>(mut reader: R) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `command` to completion with `stdin` as its input; panics (killing
/// the child) if it takes longer than `timeout`.
pub fn run_with_timeout(mut command: Command, stdin: &[u8], timeout: Duration) -> Output {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard(command.spawn().expect("spawn jwtgate"));
    let mut input = guard.0.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // Dropping `input` at the end of the thread closes stdin (EOF).
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let stdout = drain(guard.0.stdout.take().expect("stdout"));
    let stderr = drain(guard.0.stderr.take().expect("stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{command:?} did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Output {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Removes ANSI escape sequences (`ESC [ … letter`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address in a `listening on ADDR` log line, text or JSON.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let line = strip_ansi(line);
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// A running `jwtgate` whose stderr is read line by line on a thread.
pub struct Server {
    pub child: ChildGuard,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub seen: Vec<String>,
    /// Every address logged as `listening on ADDR` so far, in log order.
    listeners: Vec<SocketAddr>,
}

impl Server {
    /// `jwtgate run -c CONFIG`.
    pub fn run(config: &Path) -> Server {
        let mut command = jwtgate();
        command.args(["run", "-c", config.to_str().unwrap()]);
        Server::spawn(command)
    }

    pub fn spawn(mut command: Command) -> Server {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = ChildGuard(command.spawn().expect("spawn jwtgate"));
        let stderr = child.0.stderr.take().expect("stderr");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if send.send(text).is_err() {
                    break;
                }
                line.clear();
            }
        });
        Server {
            child,
            lines,
            seen: Vec::new(),
            listeners: Vec::new(),
        }
    }

    /// The next `listening on ADDR` before `deadline`; `None` on timeout or
    /// when the process closed stderr (exited).
    pub fn next_listening(&mut self, deadline: Instant) -> Option<SocketAddr> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            let addr = listening_addr(&line);
            self.seen.push(line);
            if let Some(addr) = addr {
                self.listeners.push(addr);
                return Some(addr);
            }
        }
    }

    /// The first logged listener address for which `accept` holds: among
    /// those already logged (so the public and the admin listener can be
    /// asked for in either order), then among those logged before `timeout`.
    pub fn listener_where(
        &mut self,
        timeout: Duration,
        mut accept: impl FnMut(SocketAddr) -> bool,
    ) -> SocketAddr {
        let deadline = Instant::now() + timeout;
        let mut tried = Vec::new();
        for addr in self.listeners.clone() {
            if accept(addr) {
                return addr;
            }
            tried.push(addr);
        }
        while let Some(addr) = self.next_listening(deadline) {
            if accept(addr) {
                return addr;
            }
            tried.push(addr);
        }
        let status = self.child.0.try_wait();
        panic!(
            "no suitable listener within {timeout:?} (tried {tried:?}; process status {status:?}); stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Waits (up to `timeout`) for a stderr line for which `wanted` holds,
    /// among the lines not yet seen; panics with the log when none comes.
    pub fn wait_for_line(&mut self, timeout: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            let line = strip_ansi(&line);
            self.seen.push(line.clone());
            if wanted(&line) {
                return line;
            }
        }
        let status = self.child.0.try_wait();
        panic!(
            "no such log line within {timeout:?} (process status {status:?}); stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Sends `SIGHUP` to the process.
    pub fn hang_up(&self) {
        self.signal("HUP");
    }

    /// The public listener: the one serving the JWKS (SPEC §3 Discovery).
    pub fn public_addr(&mut self) -> SocketAddr {
        self.listener_where(LISTEN_TIMEOUT, |addr| {
            probe(addr, "/.well-known/jwks.json").is_some_and(|(status, _)| status == 200)
        })
    }

    /// The admin listener: the one answering `/healthz` (SPEC §3 Admin
    /// listener; the public listener answers 404 there).
    pub fn admin_addr(&mut self) -> SocketAddr {
        self.listener_where(LISTEN_TIMEOUT, |addr| {
            probe(addr, "/healthz")
                .is_some_and(|(status, body)| status == 200 && body == br#"{"status":"alive"}"#)
        })
    }

    /// Sends `signal` (`"TERM"`, `"INT"`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// The last lines of the log so far, access log left out (for failure
    /// messages).
    pub fn log_tail(&mut self) -> String {
        self.seen
            .extend(self.lines.try_iter().map(|l| strip_ansi(&l)));
        let lines: Vec<&str> = self
            .seen
            .iter()
            .map(String::as_str)
            .filter(|l| !l.contains("jwtgate::access"))
            .collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits (up to `timeout`) for the process to exit; its exit code
    /// (`None` when a signal killed it). Panics with the log on timeout.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.0.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() >= deadline {
                self.seen
                    .extend(self.lines.try_iter().map(|l| strip_ansi(&l)));
                panic!(
                    "still running {timeout:?} later; stderr so far:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One `GET` with `Connection: close`: the status and the body (the
/// gateway's own answers carry a `Content-Length`). `None` on any failure.
pub fn probe(addr: SocketAddr, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, raw[split + 4..].to_vec()))
}
