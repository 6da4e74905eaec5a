//! The demo app that deployctl's demo and end-to-end tests deploy: a tiny HTTP/1.1 server over
//! `std::net`, built as a static binary and shipped in `FROM scratch` images.
//!
//! Subcommands (the first argument; none means `serve`):
//! - `serve`: answers `GET /healthz` (200 `ok`, or 500 when unhealthy), `GET /version` (the
//!   version baked into the image), `GET /slow?ms=N` (the version, after N ms, at most a minute:
//!   a request still in flight when a proxy switches versions), `GET /alloc?mb=N` (allocates
//!   and touches N MiB, at most a GiB, and keeps it until the process ends, as a leak does:
//!   under a memory limit, an OOM kill on demand) and `GET /` (a one-line
//!   description) on `0.0.0.0:$DEMO_PORT`. Each connection has a thread of its own, so a slow
//!   request never holds up a health probe.
//! - `worker`: the same server with role `worker`, so a worker service can be probed like a web
//!   one; only the startup line and `GET /` differ.
//! - `migrate`: appends `migrated <version> <unix time>` to `$DEMO_MIGRATION_FILE` and exits 0,
//!   or exits 1 when `DEMO_MIGRATE_FAIL=1`.
//! - `healthcheck`: GETs `http://127.0.0.1:$DEMO_PORT/healthz`, exit 0 on 200 else 1. Scratch
//!   images have no shell or curl, so the binary is its own `HEALTHCHECK`.
//! - `version`: prints the version. `exit N`: exits with code N. `wait-for PATH`: prints
//!   `waiting for PATH`, polls until PATH exists (at most a minute), prints `found PATH`. With
//!   no shell in the image, these are the one-off commands tests give `deployctl exec`.
//!
//! Environment, read once at start: `DEMO_VERSION` (default `dev`), `DEMO_MODE`
//! (`healthy` | `unhealthy` | `crash` | `crash-later`; crash prints a line and exits 3 shortly
//! after start; crash-later serves healthily for 0.3 s, then exits 1, as a release that turns
//! bad after it was deployed does),
//! `DEMO_CRASH_AFTER_MS` (crash-later's 0.3 s), `DEMO_PORT` (default 8080), `DEMO_MIGRATION_FILE` (default `/data/migrations.log`),
//! `DEMO_MIGRATE_FAIL` (`1` makes `migrate` fail).
//!
//! The server logs a startup line and one line per request to stdout, since tests read log
//! tails. It exits 0 on SIGTERM/SIGINT after in-flight requests finish (at most 2 s): as PID 1
//! of a container a process without a handler ignores SIGTERM and `docker stop` would wait for
//! its full timeout before killing it. The bound is short on purpose: a `/slow` request that
//! survives a version switch proves that whatever stopped the app waited for it to drain.
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Exit code of `DEMO_MODE=crash`, distinct from usage (2) and failure (1) so tests can tell.
const CRASH_EXIT: u8 = 3;
/// How long `DEMO_MODE=crash-later` serves before it dies, unless `DEMO_CRASH_AFTER_MS` says:
/// long enough to pass a health check with `healthy_for = "0s"`, short enough that the
/// engine's restarts become a crash loop. (A canary test sets seconds: a release that passes
/// its deploy's health gate and turns bad while it is watched.)
const CRASH_LATER_AFTER: Duration = Duration::from_millis(300);
/// Requests larger than this are refused: the app only serves tiny GETs.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `/slow` waits, so a typo cannot hold a connection (and a drain) for hours.
const SLOW_CAP: Duration = Duration::from_secs(60);
/// The most `/alloc` takes in one request, in MiB.
const ALLOC_CAP_MB: usize = 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Healthy,
    Unhealthy,
    Crash,
    CrashLater,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "" | "healthy" => Ok(Mode::Healthy),
            "unhealthy" => Ok(Mode::Unhealthy),
            "crash" => Ok(Mode::Crash),
            "crash-later" => Ok(Mode::CrashLater),
            other => Err(format!(
                "DEMO_MODE={other:?}: expected healthy, unhealthy, crash or crash-later"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Healthy => "healthy",
            Mode::Unhealthy => "unhealthy",
            Mode::Crash => "crash",
            Mode::CrashLater => "crash-later",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Web,
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Web => "web",
            Role::Worker => "worker",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    version: String,
    mode: Mode,
    port: u16,
    migration_file: PathBuf,
    migrate_fail: bool,
    crash_after: Duration,
}

impl Config {
    /// Builds the configuration from a variable lookup, so tests need not touch the process
    /// environment.
    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let port = match get("DEMO_PORT") {
            None => 8080,
            Some(p) => p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("DEMO_PORT={p:?}: expected a port number 1-65535"))?,
        };
        let migrate_fail = match get("DEMO_MIGRATE_FAIL").as_deref() {
            None | Some("") | Some("0") => false,
            Some("1") => true,
            Some(other) => return Err(format!("DEMO_MIGRATE_FAIL={other:?}: expected 0 or 1")),
        };
        let crash_after = match get("DEMO_CRASH_AFTER_MS") {
            None => CRASH_LATER_AFTER,
            Some(ms) => ms
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("DEMO_CRASH_AFTER_MS={ms:?}: expected milliseconds"))?,
        };
        Ok(Config {
            version: get("DEMO_VERSION")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "dev".into()),
            mode: Mode::parse(get("DEMO_MODE").as_deref().unwrap_or(""))?,
            port,
            migration_file: get("DEMO_MIGRATION_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/data/migrations.log")),
            migrate_fail,
            crash_after,
        })
    }
}

fn main() -> ExitCode {
    let config = match Config::from_lookup(|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demoapp: bad environment: {e}");
            return ExitCode::from(2);
        }
    };
    let command = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    match command.as_str() {
        "serve" => serve(&config, Role::Web),
        "worker" => serve(&config, Role::Worker),
        "migrate" => migrate(&config),
        "healthcheck" => healthcheck(config.port),
        "version" | "--version" => {
            println!("{}", config.version);
            ExitCode::SUCCESS
        }
        "exit" => match exit_code(std::env::args().nth(2).as_deref()) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("demoapp exit: {e}");
                ExitCode::from(2)
            }
        },
        "wait-for" => match std::env::args().nth(2) {
            Some(path) => wait_for(&PathBuf::from(path)),
            None => {
                eprintln!("demoapp wait-for: which path?");
                ExitCode::from(2)
            }
        },
        "help" | "--help" | "-h" => {
            println!("usage: demoapp {USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("demoapp: unknown command {other:?}; usage: demoapp {USAGE}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "[serve|worker|migrate|healthcheck|version|exit N|wait-for PATH]";
/// The longest `wait-for` waits.
const WAIT_FOR_LIMIT: Duration = Duration::from_secs(60);

/// `exit N`: N as an exit code.
fn exit_code(arg: Option<&str>) -> Result<u8, String> {
    let arg = arg.ok_or("which exit code?")?;
    arg.parse()
        .map_err(|_| format!("{arg:?} is not an exit code (0-255)"))
}

/// Says it waits, waits for `path` to exist, says it found it: a command whose first line
/// comes well before its last, so tests can see output stream.
fn wait_for(path: &std::path::Path) -> ExitCode {
    println!("waiting for {}", path.display());
    eprintln!("wait-for: polling every 50ms for at most {WAIT_FOR_LIMIT:?}");
    let deadline = Instant::now() + WAIT_FOR_LIMIT;
    while !path.exists() {
        if Instant::now() >= deadline {
            eprintln!("wait-for: gave up on {}", path.display());
            return ExitCode::FAILURE;
        }
        thread::sleep(Duration::from_millis(50));
    }
    println!("found {}", path.display());
    ExitCode::SUCCESS
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn serve(config: &Config, role: Role) -> ExitCode {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port));
    if config.mode == Mode::Crash {
        println!(
            "demoapp {} role={role} mode=crash: crashing at start as configured (exit {CRASH_EXIT})",
            config.version
        );
        // A moment alive, as a real app that dies during its init would be.
        thread::sleep(Duration::from_millis(300));
        return ExitCode::from(CRASH_EXIT);
    }
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demoapp: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let in_flight = Arc::new(AtomicUsize::new(0));
    if let Err(e) = spawn_signal_watcher(Arc::clone(&in_flight)) {
        eprintln!("demoapp: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "{:.3} demoapp {} role={role} mode={} listening on {addr}",
        unix_now(),
        config.version,
        config.mode
    );
    if config.mode == Mode::CrashLater {
        let version = config.version.clone();
        let after = config.crash_after;
        thread::spawn(move || {
            thread::sleep(after);
            println!("demoapp {version} mode=crash-later: dying as configured (exit 1)");
            std::process::exit(1);
        });
    }
    let state = Arc::new(State {
        version: config.version.clone(),
        mode: config.mode,
        role,
    });
    accept_loop(&listener, &state, &in_flight);
    ExitCode::SUCCESS
}

/// One thread per connection: a `/slow` request must not hold up the health probes behind it.
fn accept_loop(listener: &TcpListener, state: &Arc<State>, in_flight: &Arc<AtomicUsize>) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("demoapp: accept failed: {e}");
                continue;
            }
        };
        in_flight.fetch_add(1, Ordering::SeqCst);
        let state = Arc::clone(state);
        let in_flight = Arc::clone(in_flight);
        thread::spawn(move || {
            handle(stream, &state);
            in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// On SIGTERM/SIGINT: stop, letting requests already accepted finish first (bounded).
fn spawn_signal_watcher(in_flight: Arc<AtomicUsize>) -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
            println!("{:.3} demoapp received {name}, shutting down", unix_now());
            let start = Instant::now();
            while in_flight.load(Ordering::SeqCst) > 0 && start.elapsed() < DRAIN_TIMEOUT {
                thread::sleep(Duration::from_millis(10));
            }
            std::process::exit(0);
        }
    });
    Ok(())
}

struct State {
    version: String,
    mode: Mode,
    role: Role,
}

#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    body: String,
    /// How long to wait before answering: routing stays pure, the connection's thread sleeps.
    delay: Duration,
    /// MiB to allocate and keep before answering (`/alloc`), likewise.
    alloc_mb: usize,
}

impl Response {
    fn new(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            body: body.into(),
            delay: Duration::ZERO,
            alloc_mb: 0,
        }
    }

    fn allocating(mut self, mb: usize) -> Response {
        self.alloc_mb = mb;
        self
    }

    fn after(mut self, delay: Duration) -> Response {
        self.delay = delay;
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// What the app reads of a request line: `GET /slow?ms=5 HTTP/1.1` → `GET`, `/slow`, `ms=5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    /// After the first `?`, undecoded; empty when there is none.
    query: &'a str,
}

/// Parses `GET /path?query HTTP/1.1`.
fn parse_request_line(line: &str) -> Option<Request<'_>> {
    let mut parts = line.split(' ');
    let method = parts.next().filter(|m| !m.is_empty())?;
    let target = parts.next().filter(|t| t.starts_with('/'))?;
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some(Request {
        method,
        path,
        query,
    })
}

/// The value of the first `name=value` pair of a query string (no percent-decoding: the app's
/// parameters are numbers).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `/slow`'s wait: `ms=N`, capped at [`SLOW_CAP`].
fn slow_delay(query: &str) -> Result<Duration, String> {
    let ms = query_param(query, "ms").ok_or("/slow needs ?ms=N\n")?;
    let ms: u64 = ms
        .parse()
        .map_err(|_| format!("ms={ms:?}: expected milliseconds\n"))?;
    Ok(Duration::from_millis(ms).min(SLOW_CAP))
}

/// `/alloc`'s size: `mb=N`, at most [`ALLOC_CAP_MB`].
fn alloc_size(query: &str) -> Result<usize, String> {
    let mb = query_param(query, "mb").ok_or("/alloc needs ?mb=N\n")?;
    let n: usize = mb
        .parse()
        .map_err(|_| format!("mb={mb:?}: expected MiB\n"))?;
    if n > ALLOC_CAP_MB {
        return Err(format!("mb={n}: at most {ALLOC_CAP_MB}\n"));
    }
    Ok(n)
}

/// Allocates `mb` MiB, writes to every page so the memory is really used, and never frees it.
fn leak(mb: usize) {
    let mut block = vec![0u8; mb * 1024 * 1024];
    for i in (0..block.len()).step_by(4096) {
        block[i] = 1;
    }
    // Else the optimizer sees memory nobody reads and drops the writes (and the allocation).
    std::hint::black_box(&block);
    std::mem::forget(block);
}

fn route(request: &Request<'_>, state: &State) -> Response {
    if request.method != "GET" && request.method != "HEAD" {
        return Response::new(405, "only GET and HEAD\n");
    }
    match request.path {
        "/healthz" => match state.mode {
            Mode::Unhealthy => Response::new(500, "unhealthy"),
            _ => Response::new(200, "ok"),
        },
        "/version" => Response::new(200, state.version.clone()),
        "/slow" => match slow_delay(request.query) {
            Ok(delay) => Response::new(200, state.version.clone()).after(delay),
            Err(why) => Response::new(400, why),
        },
        "/alloc" => match alloc_size(request.query) {
            Ok(mb) => Response::new(200, format!("allocated {mb} MiB\n")).allocating(mb),
            Err(why) => Response::new(400, why),
        },
        "/" => Response::new(
            200,
            format!(
                "demoapp {} role={} mode={}\n",
                state.version, state.role, state.mode
            ),
        ),
        _ => Response::new(404, "not found\n"),
    }
}

/// Reads up to the end of the request head; `Err` carries the status to answer with.
fn read_head(stream: &mut TcpStream) -> Result<String, u16> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Err(431);
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(400),
        }
    }
    String::from_utf8(buf).map_err(|_| 400)
}

fn handle(mut stream: TcpStream, state: &State) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let (line, method, response) = match read_head(&mut stream) {
        Err(status) => (
            String::new(),
            String::new(),
            Response::new(status, "bad request\n"),
        ),
        Ok(head) => {
            let line = head.lines().next().unwrap_or("").trim_end().to_string();
            match parse_request_line(&line) {
                Some(request) => (
                    line.clone(),
                    request.method.to_string(),
                    route(&request, state),
                ),
                None if line.is_empty() => return, // connection opened and closed: a port probe
                None => (
                    line.clone(),
                    String::new(),
                    Response::new(400, "bad request\n"),
                ),
            }
        }
    };
    if !response.delay.is_zero() {
        thread::sleep(response.delay);
    }
    if response.alloc_mb > 0 {
        leak(response.alloc_mb);
    }
    println!("{:.3} {peer} \"{line}\" {}", unix_now(), response.status);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    if method != "HEAD" {
        out.push_str(&response.body);
    }
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.flush();
}

fn migrate(config: &Config) -> ExitCode {
    if config.migrate_fail {
        eprintln!(
            "migrate {}: failing as configured (DEMO_MIGRATE_FAIL=1)",
            config.version
        );
        return ExitCode::FAILURE;
    }
    let line = format!("migrated {} {}\n", config.version, unix_now() as u64);
    let file = &config.migration_file;
    let result = (|| -> io::Result<()> {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = OpenOptions::new().create(true).append(true).open(file)?;
        f.write_all(line.as_bytes())?;
        f.sync_all()
    })();
    match result {
        Ok(()) => {
            println!("migrate {}: appended to {}", config.version, file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "migrate {}: cannot append to {}: {e}",
                config.version,
                file.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Exit 0 when the local server answers 200 on `/healthz`.
fn healthcheck(port: u16) -> ExitCode {
    match probe(port) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("healthcheck: /healthz answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(port: u16) -> io::Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    parse_status(&reply)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP reply"))
}

fn parse_status(reply: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(reply.get(..reply.len().min(64))?).ok()?;
    let mut parts = text.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| {
            owned
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn config_defaults_and_overrides() {
        let c = Config::from_lookup(env(&[])).unwrap();
        assert_eq!(
            c,
            Config {
                version: "dev".into(),
                mode: Mode::Healthy,
                port: 8080,
                migration_file: "/data/migrations.log".into(),
                migrate_fail: false,
                crash_after: CRASH_LATER_AFTER,
            }
        );
        let c = Config::from_lookup(env(&[
            ("DEMO_VERSION", "v3"),
            ("DEMO_MODE", "unhealthy"),
            ("DEMO_PORT", "9000"),
            ("DEMO_MIGRATION_FILE", "/m/log"),
            ("DEMO_MIGRATE_FAIL", "1"),
            ("DEMO_CRASH_AFTER_MS", "3000"),
        ]))
        .unwrap();
        assert_eq!(c.crash_after, Duration::from_secs(3));
        assert_eq!(
            (c.version.as_str(), c.mode, c.port, c.migrate_fail),
            ("v3", Mode::Unhealthy, 9000, true)
        );
        assert_eq!(c.migration_file, PathBuf::from("/m/log"));
    }

    #[test]
    fn config_rejects_bad_values() {
        for (key, value) in [
            ("DEMO_MODE", "sick"),
            ("DEMO_PORT", "0"),
            ("DEMO_PORT", "70000"),
            ("DEMO_PORT", "http"),
            ("DEMO_MIGRATE_FAIL", "yes"),
            ("DEMO_CRASH_AFTER_MS", "soon"),
        ] {
            let err = Config::from_lookup(env(&[(key, value)])).unwrap_err();
            assert!(err.contains(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn request_lines() {
        let req = |method, path, query| {
            Some(Request {
                method,
                path,
                query,
            })
        };
        let cases: &[(&str, Option<Request>)] = &[
            ("GET /healthz HTTP/1.1", req("GET", "/healthz", "")),
            ("HEAD /version?x=1 HTTP/1.0", req("HEAD", "/version", "x=1")),
            ("GET /slow?ms=5&x HTTP/1.1", req("GET", "/slow", "ms=5&x")),
            ("GET /slow? HTTP/1.1", req("GET", "/slow", "")),
            ("GET /a?b?c HTTP/1.1", req("GET", "/a", "b?c")),
            ("GET / HTTP/1.1", req("GET", "/", "")),
            ("GET healthz HTTP/1.1", None),
            ("GET /healthz", None),
            ("GET /healthz HTTP/2 extra", None),
            ("GET /healthz SPDY", None),
            ("", None),
            (" / HTTP/1.1", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_request_line(line), *want, "{line:?}");
        }
    }

    #[test]
    fn query_params() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("ms=5", "ms", Some("5")),
            ("a=1&ms=5&ms=6", "ms", Some("5")),
            ("ms", "ms", Some("")),
            ("ms=", "ms", Some("")),
            ("xms=5", "ms", None),
            ("", "ms", None),
            ("a=ms", "ms", None),
        ];
        for (query, name, want) in cases {
            assert_eq!(query_param(query, name), *want, "{query:?} {name}");
        }
    }

    #[test]
    fn routes() {
        let healthy = State {
            version: "v1".into(),
            mode: Mode::Healthy,
            role: Role::Web,
        };
        let sick = State {
            version: "v3".into(),
            mode: Mode::Unhealthy,
            role: Role::Worker,
        };
        // (state, method, target, status, body, delay in ms)
        let cases: &[(&State, &str, &str, u16, &str, u64)] = &[
            (&healthy, "GET", "/healthz", 200, "ok", 0),
            (&sick, "GET", "/healthz", 500, "unhealthy", 0),
            (&healthy, "GET", "/version", 200, "v1", 0),
            (&sick, "GET", "/version?ms=9", 200, "v3", 0),
            (
                &sick,
                "GET",
                "/",
                200,
                "demoapp v3 role=worker mode=unhealthy\n",
                0,
            ),
            (&healthy, "HEAD", "/healthz", 200, "ok", 0),
            (&healthy, "POST", "/healthz", 405, "only GET and HEAD\n", 0),
            (&healthy, "GET", "/nope", 404, "not found\n", 0),
            (&healthy, "GET", "/slow?ms=5000", 200, "v1", 5000),
            (&sick, "GET", "/slow?x=1&ms=0", 200, "v3", 0),
            (&healthy, "GET", "/slow?ms=3600000", 200, "v1", 60_000),
            (&healthy, "GET", "/slow", 400, "/slow needs ?ms=N\n", 0),
            (&healthy, "GET", "/alloc", 400, "/alloc needs ?mb=N\n", 0),
            (
                &healthy,
                "GET",
                "/alloc?mb=x",
                400,
                "mb=\"x\": expected MiB\n",
                0,
            ),
            (
                &healthy,
                "GET",
                "/alloc?mb=2048",
                400,
                "mb=2048: at most 1024\n",
                0,
            ),
            (
                &healthy,
                "GET",
                "/slow?ms=-1",
                400,
                "ms=\"-1\": expected milliseconds\n",
                0,
            ),
            (
                &healthy,
                "POST",
                "/slow?ms=5",
                405,
                "only GET and HEAD\n",
                0,
            ),
        ];
        for (state, method, target, status, body, delay) in cases {
            let line = format!("{method} {target} HTTP/1.1");
            let request = parse_request_line(&line).unwrap();
            assert_eq!(
                route(&request, state),
                Response::new(*status, *body).after(Duration::from_millis(*delay)),
                "{method} {target}"
            );
        }
        let line = "GET /alloc?mb=64 HTTP/1.1";
        assert_eq!(
            route(&parse_request_line(line).unwrap(), &healthy),
            Response::new(200, "allocated 64 MiB\n").allocating(64)
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n\r\nok"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 500 Internal Server Error\r\n"),
            Some(500)
        );
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status(b""), None);
        assert_eq!(parse_status(&[0xff, 0xfe]), None);
    }

    #[test]
    fn serves_and_probes_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            version: "v9".into(),
            mode: Mode::Unhealthy,
            role: Role::Web,
        });
        let server = thread::spawn(move || {
            for _ in 0..2 {
                let (stream, _) = listener.accept().unwrap();
                handle(stream, &state);
            }
        });
        assert_eq!(probe(port).unwrap(), 500);
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\nv9"), "{reply}");
        server.join().unwrap();
    }

    #[test]
    fn a_slow_request_does_not_hold_up_the_probes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            version: "v9".into(),
            mode: Mode::Healthy,
            role: Role::Web,
        });
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&in_flight);
        // The accept loop never returns; the thread ends with the test process.
        thread::spawn(move || accept_loop(&listener, &state, &counter));
        let slow = thread::spawn(move || {
            let started = Instant::now();
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            (reply, started.elapsed())
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while in_flight.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the slow request never arrived");
            thread::sleep(Duration::from_millis(5));
        }
        let probed = Instant::now();
        assert_eq!(probe(port).unwrap(), 200);
        assert!(
            probed.elapsed() < Duration::from_millis(1000),
            "a probe waited {:?} behind a slow request",
            probed.elapsed()
        );
        let (reply, took) = slow.join().unwrap();
        assert!(reply.ends_with("\r\n\r\nv9"), "{reply}");
        assert!(took >= Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn exit_codes_parse() {
        let cases = [
            (Some("7"), Ok(7)),
            (Some("0"), Ok(0)),
            (Some("255"), Ok(255)),
            (
                Some("256"),
                Err("\"256\" is not an exit code (0-255)".to_string()),
            ),
            (None, Err("which exit code?".to_string())),
        ];
        for (arg, want) in cases {
            assert_eq!(exit_code(arg), want, "{arg:?}");
        }
    }

    #[test]
    fn wait_for_returns_once_the_path_exists() {
        let dir = std::env::temp_dir().join(format!("demoapp-wait-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let flag = dir.join("flag");
        std::fs::write(&flag, "").unwrap();
        assert_eq!(wait_for(&flag), ExitCode::SUCCESS);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn migrate_appends_one_line_per_run() {
        let dir = std::env::temp_dir().join(format!("demoapp-test-{}", std::process::id()));
        let file = dir.join("sub/migrations.log");
        let mut config = Config::from_lookup(env(&[("DEMO_VERSION", "v2")])).unwrap();
        config.migration_file = file.clone();
        assert_eq!(migrate(&config), ExitCode::SUCCESS);
        assert_eq!(migrate(&config), ExitCode::SUCCESS);
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines.iter().all(|l| l.starts_with("migrated v2 ")),
            "{text}"
        );
        config.migrate_fail = true;
        assert_eq!(migrate(&config), ExitCode::FAILURE);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
