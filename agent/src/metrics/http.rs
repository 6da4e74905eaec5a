//! The `listen` side of `[metrics]`: plain HTTP/1.1 with one resource, `GET /metrics`, one
//! request per connection. Hand-written on tokio because that is all a Prometheus scrape needs,
//! and hyper's server half is not in the tree (bollard and reqwest use its client only).
//!
//! A TCP port is reachable by every local user (and, with `allow_remote`, by others), so the
//! listener is bounded like the socket: a few connections at a time, a request head of at most
//! [`MAX_HEAD`] bytes that must arrive within [`READ_TIMEOUT`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::exposition::CONTENT_TYPE;

/// Scrapes served at once; more connections wait in the listen backlog.
const MAX_CONCURRENT: usize = 4;
/// A request head larger than this is refused (Prometheus sends a few hundred bytes).
const MAX_HEAD: usize = 8 * 1024;
/// The whole request head must arrive within this.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a response may take to be written out.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// `GET /metrics` (`head`: a `HEAD`, answered without the body).
    Metrics {
        head: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request head (the bytes up to the blank line), pure.
pub(super) fn route(head: &[u8]) -> Route {
    let Some(line) = head
        .split(|&b| b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
    else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    if path == "/metrics" {
        Route::Metrics { head }
    } else {
        Route::NotFound
    }
}

/// The response's bytes: status line, headers, and the body unless `head_only`.
pub(super) fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Serves scrapes until the future is dropped; `render` makes the exposition of each.
pub(super) async fn serve<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send,
{
    let render = Arc::new(render);
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: try again shortly rather than spin.
                tracing::warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &*render).await {
                tracing::debug!("metrics listener: {e}");
            }
            drop(permit);
        });
    }
}

async fn answer<F, Fut>(mut stream: TcpStream, render: &F) -> std::io::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = String>,
{
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::other("no complete request head in time"))??;
    let text = "text/plain; charset=utf-8";
    let bytes = match head.as_deref().map(route) {
        Some(Route::Metrics { head }) => response("200 OK", CONTENT_TYPE, &render().await, head),
        Some(Route::NotFound) => {
            response("404 Not Found", text, "not found: try /metrics\n", false)
        }
        Some(Route::MethodNotAllowed) => {
            response("405 Method Not Allowed", text, "only GET and HEAD\n", false)
        }
        Some(Route::BadRequest) | None => {
            response("400 Bad Request", text, "not an HTTP/1 request\n", false)
        }
    };
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::other("the client did not read the response in time"))?
}

/// Reads up to the blank line ending the request head; `None` when it is larger than
/// [`MAX_HEAD`] or the peer closed first. Whatever follows (a body) is ignored.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed() {
        let cases: &[(&str, Route)] = &[
            (
                "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Route::Metrics { head: false },
            ),
            (
                "GET /metrics?x=1 HTTP/1.0\r\n\r\n",
                Route::Metrics { head: false },
            ),
            (
                "HEAD /metrics HTTP/1.1\r\n\r\n",
                Route::Metrics { head: true },
            ),
            ("GET / HTTP/1.1\r\n\r\n", Route::NotFound),
            ("GET /metrics/x HTTP/1.1\r\n\r\n", Route::NotFound),
            ("POST /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            ("GET /metrics HTTP/2\r\n\r\n", Route::BadRequest),
            ("GET /metrics\r\n\r\n", Route::BadRequest),
            ("GET metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            ("GET /metrics HTTP/1.1 extra\r\n\r\n", Route::BadRequest),
            ("\u{0}\u{1}", Route::BadRequest),
        ];
        for (head, want) in cases {
            assert_eq!(route(head.as_bytes()), *want, "{head:?}");
        }
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\n\xff\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(route(b"\xff /metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
    }

    #[test]
    fn responses_close_the_connection_and_head_has_no_body() {
        let r = String::from_utf8(response("200 OK", CONTENT_TYPE, "a 1\n", false)).unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: 4\r\nCache-Control: no-store\r\nConnection: close\r\n\r\na 1\n"
        );
        let r = String::from_utf8(response("200 OK", CONTENT_TYPE, "a 1\n", true)).unwrap();
        assert!(
            r.ends_with(
                "Content-Length: 4\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            ),
            "{r}"
        );
        let r =
            String::from_utf8(response("405 Method Not Allowed", "text/plain", "", false)).unwrap();
        assert!(r.contains("\r\nAllow: GET, HEAD\r\n"), "{r}");
    }
}
