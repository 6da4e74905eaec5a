//! Loopback networking for tests: free ports and a tiny blocking HTTP/1.1 GET, enough to probe
//! the demo app and the registry without pulling an HTTP stack into every assertion.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub use demokit::free_port;

use crate::error::{Error, IoContext, Result};

/// An HTTP reply: status code and body (decoded from chunked encoding if need be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header with this name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET url` (plain `http://host:port/path` only), the whole exchange bounded by `timeout`.
pub fn http_get(url: &str, timeout: Duration) -> Result<HttpResponse> {
    http_request("GET", url, &[], timeout)
}

/// One request with extra headers, e.g. `Accept` for the registry's manifest API.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<HttpResponse> {
    http_send(method, url, headers, None, timeout)
}

/// One request, with a body when `body` is given (its `Content-Length` set), e.g. JSON for
/// Caddy's admin API.
pub fn http_send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse> {
    let (host, path) = split_url(url)?;
    let deadline = Instant::now() + timeout;
    let addr: SocketAddr = host
        .to_socket_addrs()
        .ctx(|| format!("resolving {host}"))?
        .next()
        .ok_or_else(|| Error::Unexpected(format!("{host} resolves to no address")))?;
    let what = || format!("{method} {url}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ctx(what)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left)).ctx(what)?;
    stream.set_write_timeout(Some(left)).ctx(what)?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes).ctx(what)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ctx(what)?;
    parse_response(&raw).map_err(|why| Error::Unexpected(format!("{method} {url}: {why}")))
}

/// `http://127.0.0.1:5000/v2/` → (`127.0.0.1:5000`, `/v2/`).
fn split_url(url: &str) -> Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::Unexpected(format!("{url:?}: only http:// URLs are supported")))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() || !host.contains(':') {
        return Err(Error::Unexpected(format!(
            "{url:?}: expected http://host:port/path"
        )));
    }
    Ok((host, path))
}

fn parse_response(raw: &[u8]) -> std::result::Result<HttpResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete reply head in {} bytes", raw.len()))?;
    let head =
        std::str::from_utf8(&raw[..split]).map_err(|_| "reply head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(format!("not an HTTP/1 status line: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = &raw[split + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut body: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&body[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:5000/v2/").unwrap(),
            ("127.0.0.1:5000", "/v2/")
        );
        assert_eq!(
            split_url("http://127.0.0.1:80").unwrap(),
            ("127.0.0.1:80", "/")
        );
        for bad in [
            "https://x:1/",
            "127.0.0.1:5000/",
            "http://localhost/",
            "http:///x",
        ] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!(
            (r.status, r.body.as_str(), r.header("content-length")),
            (200, "ok", Some("2"))
        );
        let r = parse_response(b"HTTP/1.1 500 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (500, "abcde"));
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0 x\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
        ] {
            assert!(parse_response(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
                .is_err()
        );
    }
}
