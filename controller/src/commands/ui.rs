//! `deployctl ui [--env E] [--listen 127.0.0.1:PORT]`: the status board as a read-only web page
//! on loopback, updated live (README, "Watching"). A minimal HTTP/1.1 server: `/` (the page,
//! complete without script), `/events` (server-sent events: the rows on every change), `/state`
//! (the rows as JSON). The page itself is [`crate::ui`]'s.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::watch::{pick_envs, summary, verdicts};
use crate::config::DeployConfig;
use crate::live::{self, Board};
use crate::output::{Message, Output};
use crate::{Error, ExitClass};

/// The most of a request the server reads; a page request is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// An event stream says something at least this often, so a dead browser is noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub async fn ui(
    cfg: &DeployConfig,
    env: Option<&str>,
    listen: SocketAddr,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    if !listen.ip().is_loopback() {
        return Err(Error::Usage(format!(
            "--listen {listen}: the page shows your fleet, so it listens on loopback only; to look \
             from elsewhere, forward the port over SSH (ssh -L 8080:127.0.0.1:8080 …)"
        )));
    }
    let envs = pick_envs(cfg, env)?;
    let board = live::follow(cfg, &envs);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Refused(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Refused(format!("cannot listen on {listen}: {e}")))?;
    out.emit(&Message::Note {
        message: format!("serving http://{addr}/ (read-only; Ctrl-C ends)"),
    });
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve(stream, board.clone()));
                }
            }
            _ = &mut interrupted => break,
        }
    }
    let summary = summary(verdicts(cfg, &board.borrow()));
    let exit = summary.exit();
    out.emit(&Message::Summary(crate::output::Summary {
        command: "ui",
        ..summary
    }));
    Ok(exit)
}

/// One request: the page, the rows, or the event stream.
async fn serve(mut stream: TcpStream, mut board: watch::Receiver<Board>) {
    let Some(path) = read_request(&mut stream).await else {
        let _ = respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            "bad request\n",
        )
        .await;
        return;
    };
    let _ = match path.as_str() {
        "/" => {
            let page = crate::ui::page(&board.borrow());
            respond(&mut stream, "200 OK", "text/html; charset=utf-8", &page).await
        }
        "/state" => {
            let rows = crate::ui::rows_json(&board.borrow());
            respond(&mut stream, "200 OK", "application/json", &rows).await
        }
        "/events" => events(&mut stream, &mut board).await,
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
    };
}

/// The path of a `GET`, or None for anything else.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read).await.ok()??;
    let text = String::from_utf8_lossy(&buf);
    let mut parts = text.lines().next()?.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => Some(path.split('?').next().unwrap_or(path).to_string()),
        _ => None,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Server-sent events: the rows now and on every change, until the browser goes away.
async fn events(stream: &mut TcpStream, board: &mut watch::Receiver<Board>) -> std::io::Result<()> {
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
        .await?;
    loop {
        let rows = crate::ui::rows_json(&board.borrow_and_update());
        stream
            .write_all(format!("data: {rows}\n\n").as_bytes())
            .await?;
        loop {
            tokio::select! {
                changed = board.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    break;
                }
                () = tokio::time::sleep(KEEPALIVE) => stream.write_all(b": keepalive\n\n").await?,
            }
        }
    }
}
