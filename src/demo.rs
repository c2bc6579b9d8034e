//! The demo gateway: a real HTTP service standing in for the vendor's gateway in tests and in
//! the README demo. It serves traffic (`/echo`, GET and POST, with an optional delay), answers
//! its own health check (`/healthcheck`), and can be told to start slowly, hang, crash, or
//! ignore SIGTERM for a while. On SIGTERM it stops as a real server does: it stops accepting
//! connections, finishes the requests in flight (at most `--stop-grace`), then exits.

use clap::Parser;
use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A small HTTP service that behaves like an API Gateway instance for tests and demos.
#[derive(Debug, Parser)]
#[command(name = "gateway-demo", version, about, long_about = None, after_help = "\
Endpoints:
  GET  /healthcheck              200 once started (503 during --start-delay)
  GET  /echo?x=1&delay_ms=N      echoes the query (after N ms)
  POST /echo?delay_ms=N          echoes the body
  GET  /demo/status              JSON: state, pid, passphrase length and digest, first healthy answer (µs since epoch)
  POST /demo/hang                stop answering anything (the process stays alive)
  POST /demo/crash               abort (SIGABRT)
  POST /demo/ignore-sigterm?secs=N  keep running N s after SIGTERM

On SIGTERM: no new connections; requests still arriving on open connections are answered with
\"Connection: close\"; requests in flight finish (at most --stop-grace); then exit 0.

The port defaults to env.PORT.TRAFFIC of ./conf/envSettings.props (the instance directory the
launcher runs it in), else 8080.")]
pub struct Options {
    /// Address to listen on; the port defaults to the instance's traffic port.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Answer the health check with 503 for this long after starting (e.g. 3s).
    #[arg(long, value_parser = parse_span, default_value = "0s")]
    pub start_delay: Duration,
    /// Read a passphrase line from stdin before starting; exit 2 without one.
    #[arg(long)]
    pub require_passphrase: bool,
    /// Keep running this long after SIGTERM before exiting.
    #[arg(long, value_parser = parse_span, default_value = "0s")]
    pub ignore_sigterm: Duration,
    /// On SIGTERM, wait at most this long for requests in flight; 0s exits at once, cutting
    /// them (as a gateway without a graceful stop would).
    #[arg(long, value_parser = parse_span, default_value = "30s")]
    pub stop_grace: Duration,
    /// A configuration property, as the vendor's gateway takes it (reported by /demo/status).
    #[arg(short = 'D', value_name = "PROP[=VALUE]")]
    pub properties: Vec<String>,
    /// Quiet mode, as the vendor's gateway takes it (reported by /demo/status).
    #[arg(short = 'q')]
    pub quiet: bool,
    /// Boot trace destination, as the vendor's gateway takes it (reported by /demo/status).
    #[arg(short = 'b', value_name = "FILE")]
    pub boot_trace: Option<String>,
}

/// What `/demo/status` reports of the passphrase the demo read (the line without its newline),
/// so that a test can tell it got exactly the secret without the secret being shown: its
/// SHA-256, in hex, as `sha256sum` prints it. (Unsalted: fine for a test's random secret, not a
/// way to publish a real passphrase.)
fn passphrase_digest(secret: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(secret)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_span(s: &str) -> Result<Duration, String> {
    crate::install::TimeSpan::parse(s).map(|t| t.0)
}

struct State {
    started: Instant,
    /// SIGTERM came: answer with "Connection: close".
    stopping: AtomicBool,
    /// Requests being served.
    in_flight: AtomicUsize,
    start_delay: Duration,
    hung: AtomicBool,
    ignore_sigterm_ms: AtomicU64,
    first_healthy_us: AtomicU64,
    passphrase_bytes: usize,
    passphrase_digest: Option<String>,
    options: serde_json::Value,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn query_param(url: &str, key: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    })
}

fn default_listen() -> SocketAddr {
    let port = std::fs::read_to_string("conf/envSettings.props")
        .ok()
        .and_then(|t| crate::install::props::parse_ports(&t).traffic)
        .unwrap_or(8080);
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// Run the demo gateway; returns the exit status.
pub fn main(opts: Options) -> i32 {
    // SIGTERM is handled by a thread of ours (to honour --ignore-sigterm).
    let mut term = nix::sys::signal::SigSet::empty();
    term.add(nix::sys::signal::Signal::SIGTERM);
    let _ = term.thread_block();

    let (mut passphrase_bytes, mut passphrase_digest) = (0, None);
    if opts.require_passphrase {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        let secret = line.trim_end_matches('\n');
        if secret.is_empty() {
            eprintln!("gateway-demo: no passphrase on stdin; refusing to start");
            return 2;
        }
        passphrase_bytes = secret.len();
        passphrase_digest = Some(self::passphrase_digest(secret.as_bytes()));
        println!("gateway-demo: passphrase received ({passphrase_bytes} bytes)");
    }
    let listen = opts.listen.unwrap_or_else(default_listen);
    let listener = match std::net::TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gateway-demo: cannot listen on {listen}: {e}");
            return 1;
        }
    };
    let accepting = match listener.try_clone() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gateway-demo: {e}");
            return 1;
        }
    };
    let state = Arc::new(State {
        started: Instant::now(),
        stopping: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        start_delay: opts.start_delay,
        hung: AtomicBool::new(false),
        ignore_sigterm_ms: AtomicU64::new(opts.ignore_sigterm.as_millis() as u64),
        first_healthy_us: AtomicU64::new(0),
        passphrase_bytes,
        passphrase_digest,
        options: serde_json::json!({"properties": opts.properties, "quiet": opts.quiet, "boot_trace": opts.boot_trace}),
    });
    println!(
        "gateway-demo: pid {} listening on {listen} (healthy after {:?})",
        std::process::id(),
        opts.start_delay
    );

    let sig_state = state.clone();
    let stop_grace = opts.stop_grace;
    std::thread::spawn(move || {
        if term.wait().is_ok() {
            let ms = sig_state.ignore_sigterm_ms.load(Ordering::SeqCst);
            if ms > 0 {
                println!("gateway-demo: SIGTERM received; ignoring it for {ms} ms");
                std::thread::sleep(Duration::from_millis(ms));
            }
            sig_state.stopping.store(true, Ordering::SeqCst);
            // No new connections from here on: the listening socket refuses them.
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&accepting),
                nix::sys::socket::Shutdown::Read,
            );
            let began = Instant::now();
            let in_flight = sig_state.in_flight.load(Ordering::SeqCst);
            println!(
                "gateway-demo: stopping on SIGTERM; {in_flight} request(s) in flight, waiting at most {stop_grace:?}"
            );
            // Quiet twice in a row: a request between a connection's read and a worker's pick
            // is not counted yet.
            let mut quiet = 0;
            while began.elapsed() < stop_grace && quiet < 2 {
                std::thread::sleep(Duration::from_millis(20));
                quiet = match sig_state.in_flight.load(Ordering::SeqCst) {
                    0 => quiet + 1,
                    _ => 0,
                };
            }
            let left = sig_state.in_flight.load(Ordering::SeqCst);
            match left {
                0 => println!(
                    "gateway-demo: stopped on SIGTERM after {:.1}s; no request cut",
                    began.elapsed().as_secs_f64()
                ),
                n => println!(
                    "gateway-demo: stopped on SIGTERM after {:.1}s; {n} request(s) cut",
                    began.elapsed().as_secs_f64()
                ),
            }
            std::process::exit(0);
        }
    });

    // A thread per connection: a slow request holds its own connection and nothing else.
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let state = state.clone();
                let _ = std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || connection(stream, &state));
            }
            // The listener was shut down by SIGTERM: the open connections finish meanwhile.
            Err(_) if state.stopping.load(Ordering::SeqCst) => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    0
}

/// One parsed request.
struct Request {
    method: String,
    url: String,
    body: Vec<u8>,
    close: bool,
}

/// Serve the requests of one connection, in order, until it closes (or asks to).
fn connection(mut stream: std::net::TcpStream, state: &State) {
    use std::io::Write;
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let Some(request) = read_request(&mut stream, &mut buf, state) else {
            return;
        };
        let (code, body) = serve(&request, state);
        let close = request.close || state.stopping.load(Ordering::SeqCst);
        let response = format!(
            "HTTP/1.1 {code} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}\r\n",
            reason(code),
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        let written = stream
            .write_all(response.as_bytes())
            .and_then(|_| stream.write_all(body.as_bytes()));
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
        if written.is_err() || close {
            return;
        }
    }
}

/// Read the next request (headers and a Content-Length body) from `stream`, keeping what
/// follows it in `buf`. None when the connection closed or sent something unusable. A request
/// counts as in flight from its first byte.
fn read_request(
    stream: &mut std::net::TcpStream,
    buf: &mut Vec<u8>,
    state: &State,
) -> Option<Request> {
    let mut counted = false;
    let count = |counted: &mut bool| {
        if !*counted {
            state.in_flight.fetch_add(1, Ordering::SeqCst);
            *counted = true;
        }
    };
    let uncount = |counted: bool| {
        if counted {
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    };
    let mut chunk = [0u8; 8192];
    let (header_len, method, url, length, close) = loop {
        if !buf.is_empty() {
            count(&mut counted);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let header = |name: &str| {
                        req.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
                    };
                    let length = header("content-length")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let close = header("connection").is_some_and(|v| v.contains("close"))
                        || req.version == Some(0);
                    break (
                        n,
                        req.method.unwrap_or("GET").to_string(),
                        req.path.unwrap_or("/").to_string(),
                        length.min(1 << 20),
                        close,
                    );
                }
                Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
                _ => {
                    uncount(counted);
                    return None;
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                uncount(counted);
                return None;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    while buf.len() < header_len + length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                uncount(counted);
                return None;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[header_len..header_len + length].to_vec();
    buf.drain(..header_len + length);
    Some(Request {
        method,
        url,
        body,
        close,
    })
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Answer one request: its status and body.
fn serve(request: &Request, state: &State) -> (u16, String) {
    if state.hung.load(Ordering::SeqCst) {
        // Hung: hold the connection and never answer, like a deadlocked gateway.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let url = request.url.as_str();
    let path = url.split('?').next().unwrap_or("");
    match (request.method.as_str(), path) {
        ("GET", "/healthcheck") => {
            if state.started.elapsed() >= state.start_delay {
                if state.first_healthy_us.load(Ordering::SeqCst) == 0 {
                    let us = now_us();
                    if state
                        .first_healthy_us
                        .compare_exchange(0, us, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        println!("gateway-demo: first healthy answer at {us} us");
                    }
                }
                (200, "ok\n".to_string())
            } else {
                (503, "starting\n".to_string())
            }
        }
        (method, "/echo") => {
            if let Some(ms) = query_param(url, "delay_ms").and_then(|v| v.parse::<u64>().ok()) {
                std::thread::sleep(Duration::from_millis(ms.min(60_000)));
            }
            let body = match method {
                "POST" => String::from_utf8_lossy(&request.body).to_string(),
                _ => url.split_once('?').map_or("", |q| q.1).to_string() + "\n",
            };
            (200, body)
        }
        ("GET", "/demo/status") => (
            200,
            serde_json::json!({
                "state": if state.started.elapsed() >= state.start_delay { "started" } else { "starting" },
                "pid": std::process::id(),
                "passphrase_bytes": state.passphrase_bytes,
                "passphrase_digest": state.passphrase_digest,
                "first_healthy_us": state.first_healthy_us.load(Ordering::SeqCst),
                "options": state.options,
            })
            .to_string()
                + "\n",
        ),
        ("POST", "/demo/hang") => {
            println!("gateway-demo: told to hang; no more answers");
            state.hung.store(true, Ordering::SeqCst);
            (200, "hanging\n".to_string())
        }
        ("POST", "/demo/crash") => {
            println!("gateway-demo: told to crash");
            std::process::abort();
        }
        ("POST", "/demo/ignore-sigterm") => {
            let secs = query_param(url, "secs")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            state.ignore_sigterm_ms.store(secs * 1000, Ordering::SeqCst);
            (200, format!("ignoring SIGTERM for {secs}s\n"))
        }
        _ => (404, "not found\n".to_string()),
    }
}
