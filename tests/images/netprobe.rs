//! netprobe: a client inside a Docker network, for the start-first test. Every INTERVAL ms it
//! resolves NAME through the container's own DNS server (Docker's embedded one, from
//! /etc/resolv.conf — asked directly, so no libc resolver is needed in a `FROM scratch` image),
//! GETs http://<address>:PORT/PATH on a fresh connection (trying the addresses in order when one
//! cannot be connected to, as any client of a multi-address name does) and prints one line:
//! `ok <ip> <status> <milliseconds>ms <body>` or `fail <what went wrong>` (plus a `note` per skipped address).
//!
//! Built by the harness with plain `rustc` (std only, static) into a scratch image.
//! Usage: netprobe NAME PORT PATH INTERVAL_MS

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: netprobe NAME PORT PATH INTERVAL_MS");
        std::process::exit(2);
    }
    let name = &args[1];
    let port: u16 = args[2].parse().unwrap_or(80);
    let path = &args[3];
    let interval = Duration::from_millis(args[4].parse().unwrap_or(50));
    let server = nameserver().unwrap_or(Ipv4Addr::new(127, 0, 0, 11));
    let mut id: u16 = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7)
        & 0xffff) as u16;
    loop {
        id = id.wrapping_add(1);
        let line = match resolve(server, name, id) {
            Err(e) => format!("fail dns {name}: {e}"),
            Ok(addrs) if addrs.is_empty() => format!("fail dns {name}: no address"),
            // Like any client of a name with several addresses (curl, getaddrinfo users): an
            // address that cannot be reached is skipped for the next one.
            Ok(addrs) => {
                let mut line = String::new();
                for (i, addr) in addrs.iter().enumerate() {
                    let started = std::time::Instant::now();
                    line = match get(*addr, port, path) {
                        Ok((status, body)) if status == 200 => {
                            format!(
                                "ok {addr} {status} {}ms {}",
                                started.elapsed().as_millis(),
                                body.trim()
                            )
                        }
                        Ok((status, body)) => format!("fail {addr} http {status} {}", body.trim()),
                        Err(e) if e.starts_with("connect") && i + 1 < addrs.len() => {
                            println!("note {addr} unreachable ({e}); trying the next address");
                            continue;
                        }
                        Err(e) => format!("fail {addr} {e}"),
                    };
                    break;
                }
                line
            }
        };
        println!("{line}");
        let _ = std::io::stdout().flush();
        std::thread::sleep(interval);
    }
}

fn nameserver() -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("nameserver")?.trim().parse().ok())
}

fn resolve(server: Ipv4Addr, name: &str, id: u16) -> Result<Vec<Ipv4Addr>, String> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    sock.send_to(&q, (server, 53)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).map_err(|e| e.to_string())?;
    let r = &buf[..n];
    if r.len() < 12 || r[0..2] != id.to_be_bytes() {
        return Err("bad answer".into());
    }
    let rcode = r[3] & 0x0f;
    if rcode != 0 {
        return Err(format!("rcode {rcode}"));
    }
    let answers = u16::from_be_bytes([r[6], r[7]]);
    let mut i = skip_name(r, 12)? + 4;
    let mut out = Vec::new();
    for _ in 0..answers {
        i = skip_name(r, i)?;
        let field = r.get(i..i + 10).ok_or("short answer")?;
        let kind = u16::from_be_bytes([field[0], field[1]]);
        let len = u16::from_be_bytes([field[8], field[9]]) as usize;
        i += 10;
        let data = r.get(i..i + len).ok_or("short data")?;
        if kind == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += len;
    }
    Ok(out)
}

fn skip_name(r: &[u8], mut i: usize) -> Result<usize, String> {
    loop {
        let len = *r.get(i).ok_or("short name")? as usize;
        if len == 0 {
            return Ok(i + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Ok(i + 2);
        }
        i += len + 1;
    }
}

fn get(ip: Ipv4Addr, port: u16, path: &str) -> Result<(u16, String), String> {
    let addr = SocketAddr::from((ip, port));
    // Generous like a real client's: a SYN lost while Docker plumbs a fresh endpoint is
    // retransmitted after 1 s and must not count as a failure.
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
