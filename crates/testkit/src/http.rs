//! A tiny blocking HTTP/1.1 GET client that runs inside a namespace, for ztunnel's readiness,
//! metrics and admin endpoints. It is no general HTTP client: one request per connection,
//! `Connection: close`, body read to EOF (chunked bodies are decoded).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::Netns;

/// Per-request connect and read timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between readiness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// `GET path` to `addr` from inside `ns`; returns the status code and the body.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    ns.try_run(|| get_here(addr, path))?
        .with_context(|| format!("GET http://{addr}{path} from netns {ns}"))
}

/// Polls `GET path` on `addr` from inside `ns` until it answers 200, or fails after `timeout`
/// with the last status or error.
pub fn wait_for_http_ok(ns: &Netns, addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match ns.try_run(|| get_here(addr, path))? {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => format!("status {status}: {}", body.trim()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("http://{addr}{path} in netns {ns} not 200 after {timeout:?}; last answer: {last}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn get_here(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).context("connect")?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    // One write, so the request goes out as one segment.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ambit-testkit\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).context("send request")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).context("read response")?;
    parse_response(&raw)
}

/// Parses a complete `Connection: close` response.
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("response has no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line not terminated")?;
        let size_field = String::from_utf8_lossy(&data[..eol]);
        let size_hex = size_field.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).with_context(|| format!("bad chunk size {size_hex:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).context("chunk shorter than its size")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).context("chunk not followed by CRLF")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let (status, body) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nready").unwrap_or_default();
        assert_eq!((status, body.as_str()), (200, "ready"));
        let raw = b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nnot\r\n6\r\n ready\r\n0\r\n\r\n";
        let (status, body) = parse_response(raw).unwrap_or_default();
        assert_eq!((status, body.as_str()), (503, "not ready"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"nonsense").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"5\r\nab").is_err());
    }
}
