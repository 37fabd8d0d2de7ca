//! The metrics endpoint (`--metrics`, `daemon.metrics`): a minimal HTTP/1.x server on a
//! thread of its own that answers `GET /metrics` with the statistics in the Prometheus text
//! format, 404 for any other path and 405 for any other method, and closes the connection
//! after each answer. A client gets 5 s to send a request head of at most 8 KiB; at most 4
//! are served at once (others get 503). Nothing a client does reaches the request path:
//! a scrape reads the counters with relaxed loads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::metrics::{render, CONTENT_TYPE};
use crate::lun::LiveLuns;

/// Longest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 * 1024;

/// How long a client may take to send its request head, or to read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Clients served at once.
const MAX_CLIENTS: usize = 4;

/// Binds `addr` and serves the metrics on a thread; returns the address bound (the port
/// chosen when `addr`'s is 0). `vm` names the VM in the metrics.
pub fn start(addr: SocketAddr, luns: Arc<LiveLuns>, vm: String) -> Result<SocketAddr, String> {
    let listener =
        TcpListener::bind(addr).map_err(|e| format!("metrics: cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    if !bound.ip().is_loopback() {
        tracing::warn!(
            metrics = %bound,
            "metrics served on a non-loopback address: whoever reaches it reads the LUN statistics"
        );
    }
    crate::sandbox::spawn(crate::sandbox::ThreadKind::Metrics, "metrics", move || {
        accept_loop(&listener, &luns, &vm)
    })
    .map_err(|e| format!("metrics: cannot start its thread: {e}"))?;
    tracing::info!(metrics = %bound, "metrics listening (GET /metrics)");
    Ok(bound)
}

fn accept_loop(listener: &TcpListener, luns: &Arc<LiveLuns>, vm: &str) {
    let clients = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
        let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
        if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::AcqRel);
            let _ = answer(&mut stream, "503 Service Unavailable", "busy\n", "");
            continue;
        }
        let (luns, count, vm) = (luns.clone(), clients.clone(), vm.to_string());
        let spawned = crate::sandbox::spawn(
            crate::sandbox::ThreadKind::Metrics,
            "metrics-client",
            move || {
                serve(stream, &luns, &vm);
                count.fetch_sub(1, Ordering::AcqRel);
            },
        );
        if spawned.is_err() {
            clients.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Metrics,
    NotFound,
    BadMethod,
    Malformed,
}

/// Reads the request head: None when the client sent none in time or closed early,
/// Err(()) when it is longer than [`MAX_HEAD`].
fn read_head(stream: &mut impl Read) -> Option<Result<Vec<u8>, ()>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return Some(Err(()));
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Some(Ok(head));
        }
    }
}

/// Decides from the request line.
fn parse_head(head: &[u8]) -> Ask {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Ask::Malformed;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ask::Malformed;
    };
    if !version.starts_with("HTTP/1.") {
        return Ask::Malformed;
    }
    if method != "GET" {
        return Ask::BadMethod;
    }
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        Ask::Metrics
    } else {
        Ask::NotFound
    }
}

fn serve(mut stream: TcpStream, luns: &LiveLuns, vm: &str) {
    let head = match read_head(&mut stream) {
        None => return,
        Some(Err(())) => {
            let _ = answer(
                &mut stream,
                "431 Request Header Fields Too Large",
                "request head too long\n",
                "",
            );
            return;
        }
        Some(Ok(h)) => h,
    };
    let _ = match parse_head(&head) {
        Ask::Metrics => {
            answer_with_type(&mut stream, "200 OK", &render(luns, vm), CONTENT_TYPE, "")
        }
        Ask::NotFound => answer(&mut stream, "404 Not Found", "only /metrics is here\n", ""),
        Ask::BadMethod => answer(
            &mut stream,
            "405 Method Not Allowed",
            "only GET\n",
            "Allow: GET\r\n",
        ),
        Ask::Malformed => answer(&mut stream, "400 Bad Request", "bad request line\n", ""),
    };
}

fn answer(stream: &mut TcpStream, status: &str, body: &str, extra: &str) -> std::io::Result<()> {
    answer_with_type(stream, status, body, "text/plain; charset=utf-8", extra)
}

fn answer_with_type(
    stream: &mut TcpStream,
    status: &str,
    body: &str,
    content_type: &str,
    extra: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ask::Metrics
        );
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Ask::Metrics
        );
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\r\n"), Ask::NotFound);
        assert_eq!(parse_head(b"GET /metricsx HTTP/1.1\r\n\r\n"), Ask::NotFound);
        assert_eq!(
            parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Ask::BadMethod
        );
        assert_eq!(parse_head(b"GET /metrics\r\n\r\n"), Ask::Malformed);
        assert_eq!(parse_head(b"GET /metrics SPDY/3\r\n\r\n"), Ask::Malformed);
        assert_eq!(
            parse_head(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"),
            Ask::Malformed
        );
    }

    #[test]
    fn heads_are_bounded() {
        let ok = b"GET /metrics HTTP/1.1\r\n\r\n";
        assert_eq!(read_head(&mut &ok[..]), Some(Ok(ok.to_vec())));
        assert_eq!(read_head(&mut &b"GET /metrics HTTP/1.1\r\n"[..]), None);
        let long = vec![b'a'; MAX_HEAD + 2048];
        assert_eq!(read_head(&mut &long[..]), Some(Err(())));
    }
}
