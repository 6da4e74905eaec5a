//! A webhook receiver for the agent's `[[alerts]]`: plain HTTP/1.1 over a std `TcpListener` on
//! 127.0.0.1, recording every request (path, headers, body, when) and answering with a status
//! a test sets (503 plays a receiver that is up but failing). A receiver that is down is a port
//! nothing listens on yet: take one with [`crate::free_port`], give its [`url_for`] to the
//! agent, and [`WebhookReceiver::start`] on it later.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result};

/// The largest body recorded; an alert is far smaller.
const MAX_BODY: usize = 1 << 20;

/// The URL of a receiver on `port` (started or not).
pub fn url_for(port: u16) -> String {
    format!("http://127.0.0.1:{port}/hook")
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Received {
    /// The body as JSON (`Null` if it is none).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// A running receiver; stops when dropped.
pub struct WebhookReceiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    /// Seconds sent as `Retry-After` with every answer; 0: none.
    retry_after: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl WebhookReceiver {
    /// Listens on 127.0.0.1:`port` (0: any free port), answering 200.
    pub fn start(port: u16) -> Result<WebhookReceiver> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .ctx(|| format!("listening on 127.0.0.1:{port}"))?;
        let port = listener
            .local_addr()
            .ctx(|| "reading the receiver's address".into())?
            .port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let retry_after = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, status, retry_after, stop) = (
                received.clone(),
                status.clone(),
                retry_after.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = conn else { continue };
                    let (received, status, retry_after) =
                        (received.clone(), status.clone(), retry_after.clone());
                    std::thread::spawn(move || serve(stream, &received, &status, &retry_after));
                }
            })
        };
        Ok(WebhookReceiver {
            port,
            received,
            status,
            retry_after,
            stop,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        url_for(self.port)
    }

    /// The status every request is answered with from now on.
    pub fn answer(&self, status: u16) {
        self.retry_after.store(0, Ordering::SeqCst);
        self.status.store(status, Ordering::SeqCst);
    }

    /// [`WebhookReceiver::answer`] with `Retry-After: seconds`, as a rate-limited receiver says.
    pub fn answer_retry_after(&self, status: u16, seconds: u64) {
        self.retry_after.store(seconds, Ordering::SeqCst);
        self.status.store(status, Ordering::SeqCst);
    }

    /// Every request so far, in the order they arrived.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The JSON bodies of the requests so far whose `kind` is `kind` (the agent's `json` format).
    pub fn alerts_of(&self, kind: &str) -> Vec<serde_json::Value> {
        self.received()
            .iter()
            .map(Received::json)
            .filter(|a| a["kind"] == kind)
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (head, then `Content-Length` bytes), records it if it is complete, answers.
fn serve(
    stream: TcpStream,
    received: &Mutex<Vec<Received>>,
    status: &AtomicU16,
    retry_after: &AtomicU64,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return; // connected and closed: the drop's wake-up, or a port probe
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let code = status.load(Ordering::SeqCst);
    let retry_after = match retry_after.load(Ordering::SeqCst) {
        0 => String::new(),
        seconds => format!("Retry-After: {seconds}\r\n"),
    };
    if let Ok(mut r) = received.lock() {
        r.push(Received {
            at: Instant::now(),
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    let reply = format!(
        "HTTP/1.1 {code} {}\r\n{retry_after}Content-Length: 0\r\nConnection: close\r\n\r\n",
        if (200..300).contains(&code) {
            "OK"
        } else {
            "Unavailable"
        }
    );
    let _ = writer.write_all(reply.as_bytes());
    let _ = writer.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_posts_and_answers_the_status_it_is_told() {
        let r = WebhookReceiver::start(0).unwrap();
        let post = |body: &str| {
            let mut s = TcpStream::connect(("127.0.0.1", r.port())).unwrap();
            let req = format!(
                "POST /hook HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            reply
        };
        assert!(post("{\"kind\":\"unhealthy\"}").starts_with("HTTP/1.1 200"));
        r.answer(503);
        assert!(post("{}").starts_with("HTTP/1.1 503"));
        let got = r.received();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].header("Idempotency-Key"), Some("k1"));
        assert_eq!(
            (got[0].method.as_str(), got[0].path.as_str()),
            ("POST", "/hook")
        );
        assert_eq!(r.alerts_of("unhealthy").len(), 1);
    }
}
