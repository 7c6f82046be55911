//! The HTTP/1.1 server of `GET /metrics`: a listener thread over std's
//! `TcpListener` ([`crate::accept`]: a bounded thread per client), strict
//! request-head parsing.

use super::render::{render_owned, CONTENT_TYPE};
use crate::accept::{self, Acceptor, Limits};
use crate::runtime::Snapshot;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest request head (request line and headers) read.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a client has to send its request (and to take the answer).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; more are closed at once.
const MAX_CLIENTS: usize = 16;

type Source = dyn Fn() -> Snapshot + Send + Sync;

/// The running endpoint; [`MetricsServer::stop`] (or dropping it) stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    acceptor: Acceptor,
}

impl MetricsServer {
    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and joins the accept thread. Clients being served
    /// finish on their own threads (within [`CLIENT_TIMEOUT`]).
    pub fn stop(self) {
        self.acceptor.stop();
    }
}

/// Serves `GET /metrics` on `addr` from a thread of its own, calling `source`
/// at each scrape. Each client gets a thread of its own, bounded in number
/// and in time, so a slow or silent client never holds up the next scrape.
pub fn serve(
    addr: SocketAddr,
    source: impl Fn() -> Snapshot + Send + Sync + 'static,
) -> io::Result<MetricsServer> {
    serve_with_timeout(addr, Arc::new(source), CLIENT_TIMEOUT)
}

fn serve_with_timeout(
    addr: SocketAddr,
    source: Arc<Source>,
    timeout: Duration,
) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let limits = Limits {
        name: "metrics",
        max_clients: MAX_CLIENTS,
        timeout,
    };
    let serve = move |stream: TcpStream| {
        let peer = stream.peer_addr();
        if let Err(e) = serve_client(stream, &*source, timeout) {
            log::debug!("metrics: {peer:?}: {e}");
        }
    };
    // More clients than MAX_CLIENTS are closed at once.
    let acceptor = accept::spawn(listener, limits, serve, drop)?;
    log::info!("metrics: serving http://{addr}/metrics");
    Ok(MetricsServer { addr, acceptor })
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Get { path: String, head: bool },
    OtherMethod,
}

/// Why a request head is refused.
#[derive(Debug, PartialEq, Eq)]
enum BadRequest {
    Malformed,
    TooLarge,
}

/// Reads the request head: through the empty line, at most
/// [`MAX_REQUEST_HEAD`] bytes, all within `timeout`. `Ok(None)`: the client
/// closed or timed out first.
fn read_head(
    stream: &mut TcpStream,
    timeout: Duration,
) -> io::Result<Option<Result<Vec<u8>, BadRequest>>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_REQUEST_HEAD];
    let mut len = 0;
    loop {
        if let Some(end) = head_end(&buf[..len]) {
            buf.truncate(end);
            return Ok(Some(Ok(buf)));
        }
        if len == buf.len() {
            return Ok(Some(Err(BadRequest::TooLarge)));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(None),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
    }
}

/// Length of the head through its blank line (CRLF CRLF, or bare LF LF).
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        let rest = &buf[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else if rest.starts_with(b"\n\r\n") {
            Some(i + 3)
        } else {
            None
        }
    })
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a request head (request line, then header lines).
fn parse_head(head: &[u8]) -> Result<Request, BadRequest> {
    let text = std::str::from_utf8(head).map_err(|_| BadRequest::Malformed)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().ok_or(BadRequest::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    if !is_token(method)
        || !target.starts_with('/')
        || target.bytes().any(|b| b.is_ascii_control())
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return Err(BadRequest::Malformed);
    }
    for header in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = header.split_once(':').ok_or(BadRequest::Malformed)?;
        if !is_token(name) || value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(BadRequest::Malformed);
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(match method {
        "GET" | "HEAD" => Request::Get {
            path: path.to_owned(),
            head: method == "HEAD",
        },
        _ => Request::OtherMethod,
    })
}

fn serve_client(mut stream: TcpStream, source: &Source, timeout: Duration) -> io::Result<()> {
    let response = match read_head(&mut stream, timeout)? {
        None => return Ok(()),
        Some(Err(BadRequest::TooLarge)) => text(431, "Request Header Fields Too Large", ""),
        Some(Err(BadRequest::Malformed)) => text(400, "Bad Request", ""),
        Some(Ok(head)) => match parse_head(&head) {
            Err(_) => text(400, "Bad Request", ""),
            Ok(Request::OtherMethod) => text(405, "Method Not Allowed", "Allow: GET, HEAD\r\n"),
            Ok(Request::Get { path, head }) => {
                let mut r = if path == "/metrics" {
                    scrape(source)
                } else {
                    text(404, "Not Found", "")
                };
                r.head_only = head;
                r
            }
        },
    };
    response.write_to(&mut stream)?;
    // Close gently: a client still sending would otherwise get a reset that
    // may destroy the answer before it reads it.
    stream.shutdown(Shutdown::Write)?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra_headers: &'static str,
    body: Vec<u8>,
    head_only: bool,
}

fn text(status: u16, reason: &'static str, extra_headers: &'static str) -> Response {
    Response {
        status,
        reason,
        content_type: "text/plain; charset=utf-8",
        extra_headers,
        body: format!("{status} {reason}\n").into_bytes(),
        head_only: false,
    }
}

/// Renders a snapshot from `source`; a panicking source is a 500, not a
/// dead server.
fn scrape(source: &Source) -> Response {
    let rendered =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| render_owned(source())));
    match rendered {
        Ok(body) => Response {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            extra_headers: "",
            body: body.into_bytes(),
            head_only: false,
        },
        Err(_) => {
            log::warn!("metrics: the snapshot source panicked");
            text(500, "Internal Server Error", "")
        }
    }
}

impl Response {
    fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            self.extra_headers
        );
        let mut out = head.into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        w.write_all(&out)?;
        w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::testing::{parse, sample_snapshot};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Sends `request`, reads until the server closes; (status, headers, body).
    fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, HashMap<String, String>, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"));
        let status = parts.next().unwrap().parse().unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect::<HashMap<_, _>>();
        if let (Some(len), false) = (headers.get("content-length"), request.starts_with(b"HEAD")) {
            assert_eq!(len.parse::<usize>().unwrap(), body.len(), "content-length");
        }
        (status, headers, body.to_owned())
    }

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[test]
    fn http_serves_metrics_and_refuses_the_rest() {
        let server = serve(local(), sample_snapshot).unwrap();
        let addr = server.local_addr();

        let (status, headers, body) = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], CONTENT_TYPE);
        let exp = parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        assert!(exp.families.contains_key("vswitchd_port_rx_packets"));

        // A query string is fine; HTTP/1.0 and bare LFs too.
        let (status, _, body) = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\n\n");
        assert_eq!(status, 200);
        parse(&body).unwrap();
        // HEAD: the headers alone.
        let (status, headers, body) = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        assert!(body.is_empty());
        assert!(headers["content-length"].parse::<usize>().unwrap() > 0);

        for (request, want) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], 404),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", 404),
            (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
            (b"\x00\x01\x02garbage\r\n\r\n", 400),
            (b"GET /metrics\r\n\r\n", 400),
            (b"GET /metrics HTTP/2.0\r\n\r\n", 400),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
            (b"GET metrics HTTP/1.1\r\n\r\n", 400),
            (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
            (b"GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
            (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
        ] {
            let (status, _, _) = exchange(addr, request);
            assert_eq!(status, want, "{:?}", String::from_utf8_lossy(request));
        }

        // Headers past 8 KiB.
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while big.len() <= MAX_REQUEST_HEAD {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        big.extend_from_slice(b"\r\n");
        let (status, _, _) = exchange(addr, &big);
        assert_eq!(status, 431);

        // Still serving after all that.
        let (status, _, _) = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        server.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after stop"
        );
    }

    #[test]
    fn silent_client_neither_blocks_others_nor_stays() {
        let timeout = Duration::from_millis(500);
        let server = serve_with_timeout(local(), Arc::new(sample_snapshot), timeout).unwrap();
        let addr = server.local_addr();
        let mut silent = TcpStream::connect(addr).unwrap();
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"GET /metrics HTTP/1.1\r\nHost:").unwrap();

        let t = Instant::now();
        let (status, _, _) = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        assert!(t.elapsed() < timeout, "waited for the silent clients");

        // Both are closed once their time is up, without an answer.
        for s in [&mut silent, &mut half] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = Vec::new();
            let n = s.read_to_end(&mut buf).unwrap_or(0);
            assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf));
        }
        assert!(t.elapsed() >= timeout);
        server.stop();
    }

    #[test]
    fn panicking_source_is_a_500_and_the_server_lives() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let server = serve(local(), move || {
            if c.fetch_add(1, Ordering::Relaxed) == 0 {
                panic!("snapshot failed");
            }
            Snapshot::default()
        })
        .unwrap();
        let addr = server.local_addr();
        let (status, _, _) = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, 500);
        let (status, _, body) = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        assert_eq!(body, "# EOF\n");
        drop(server); // Drop stops it too.
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn head_parsing() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Request::Get {
                path: "/metrics".into(),
                head: false
            })
        );
        assert_eq!(
            parse_head(b"DELETE /metrics HTTP/1.1\r\n\r\n"),
            Ok(Request::OtherMethod)
        );
        assert_eq!(parse_head(b"\r\n\r\n"), Err(BadRequest::Malformed));
    }
}
