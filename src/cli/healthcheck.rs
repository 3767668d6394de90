//! `jwtgate healthcheck [--admin ADDR]`: exit 0 when the admin listener's
//! `/readyz` answers 200, else 1 — for container `HEALTHCHECK`s in images
//! without curl. One plain HTTP/1.1 request with short timeouts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// Connecting, sending and reading each get this long.
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The admin listener (`admin:` in the config); an unspecified address
    /// such as 0.0.0.0 is reached on loopback.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: String,
}

pub fn healthcheck(args: HealthcheckArgs) -> Result<ExitCode, String> {
    let addr = resolve(&args.admin)?;
    let status = readyz_status(addr).map_err(|e| format!("{addr}: /readyz: {e}"))?;
    if status == 200 {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(format!("{addr}: /readyz answered {status}"))
    }
}

fn resolve(text: &str) -> Result<SocketAddr, String> {
    let mut addr = text
        .to_socket_addrs()
        .map_err(|e| format!("--admin {text}: {e}"))?
        .next()
        .ok_or_else(|| format!("--admin {text}: no address"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr)
}

/// The status code of `GET /readyz`.
fn readyz_status(addr: SocketAddr) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    // The status line is all we need: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]).map_err(|e| e.to_string())? {
            0 => break,
            n => read += n,
        }
    }
    let line = std::str::from_utf8(&head[..read]).unwrap_or("");
    line.strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| "not an HTTP response".to_owned())
}
