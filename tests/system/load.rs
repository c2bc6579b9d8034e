//! Zero-downtime under load, inside a booted container on loopback: group1's three demo
//! instances behind HAProxy (HTTP checks on their LB endpoints, `retries 0`), wrk sending
//! keep-alive traffic with 10% POSTs and a share of 2-5 s requests, while the instances are
//! restarted one at a time. Shared by the short CI run (`drain::zero_downtime_under_load`)
//! and `bench/zero-downtime`, which runs every scenario longer and prints the table.
#![allow(dead_code)] // the bench and the test use different parts

use crate::harness::Container;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The instances behind HAProxy, with their traffic and LB endpoint ports.
pub const SERVERS: [(&str, &str, u16, u16); 3] = [
    (
        "group1/server1",
        "gateway@group1-server1.service",
        8080,
        18085,
    ),
    (
        "group1/server2",
        "gateway@group1-server2.service",
        8081,
        18086,
    ),
    (
        "group1/server3",
        "gateway@group1-server3.service",
        8083,
        18088,
    ),
];

/// How HAProxy checks the servers.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    /// Check interval.
    pub inter_ms: u32,
    /// Failed checks that take a server out.
    pub fall: u32,
    /// Passing checks that take it back.
    pub rise: u32,
}

/// HAProxy's defaults: inter 2s fall 3 rise 2.
pub const HAPROXY_DEFAULT: Checks = Checks {
    inter_ms: 2000,
    fall: 3,
    rise: 2,
};

/// How the instances are restarted in a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// `gatewayctl rolling-restart` of the instances.
    Rolling,
    /// `systemctl restart` of the instances, all in one command (the units take turns).
    Systemctl,
    /// A shell command that restarts what it restarts (a package upgrade).
    Command(&'static str),
}

/// One scenario: our settings, HAProxy's, how and how often the instances are restarted.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name in the table.
    pub name: &'static str,
    /// A gateway.toml drop-in (`[defaults]` ...).
    pub config: &'static str,
    /// HAProxy's check timing.
    pub checks: Checks,
    /// How the instances are restarted.
    pub restart: Restart,
    /// Which instances each pass restarts (indexes into [`SERVERS`]).
    pub instances: &'static [usize],
    /// Passes.
    pub passes: u32,
    /// One request in this many is a 2-5 s one (0: none).
    pub long_every: u64,
}

/// What wrk and HAProxy saw during a scenario.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Requests completed.
    pub requests: u64,
    /// Answers other than 2xx/3xx.
    pub non_2xx: u64,
    /// Socket errors by kind.
    pub connect: u64,
    /// Read errors (connection closed or reset mid-request).
    pub read: u64,
    /// Write errors.
    pub write: u64,
    /// Requests wrk gave up on.
    pub timeout: u64,
    /// Latency percentiles of the ordinary (not long) requests and the maximum of all, in
    /// milliseconds, from HAProxy's log (accept to answer).
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// Long (2-5 s) requests sent.
    pub long_requests: u64,
    /// Seconds each pass took.
    pub pass_seconds: Vec<f64>,
    /// The most servers HAProxy had out of its pool at once.
    pub most_out: usize,
    /// Seconds the load ran.
    pub seconds: f64,
    /// What the restarts printed (for a failure's report).
    pub restart_output: String,
    /// HAProxy's log lines of the slowest ordinary requests and of failed ones (for a
    /// failure's report).
    pub slowest: Vec<String>,
}

impl Outcome {
    /// Every failed request: non-2xx answers and socket errors.
    pub fn failures(&self) -> u64 {
        self.non_2xx + self.connect + self.read + self.write + self.timeout
    }
}

fn haproxy_config(checks: Checks) -> String {
    let mut cfg = format!(
        "global
  maxconn 4096
  log stdout format raw local0 info
defaults
  mode http
  log global
  log-format \"%Ta %ST %HU %s %Tw/%Tc/%Tr\"
  retries 0
  option http-keep-alive
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend group1
  bind 127.0.0.1:8000
  default_backend group1
backend group1
  balance roundrobin
  option httpchk GET /healthchecklb
  default-server inter {}ms fall {} rise {}
",
        checks.inter_ms, checks.fall, checks.rise
    );
    for (k, (_, _, port, lb)) in SERVERS.iter().enumerate() {
        cfg.push_str(&format!(
            "  server server{} 127.0.0.1:{port} check port {lb}\n",
            k + 1
        ));
    }
    cfg.push_str("listen stats\n  bind 127.0.0.1:9000\n  stats enable\n  stats uri /stats\n");
    cfg
}

/// HAProxy's pool: whether each server is in it (UP, including "UP 1/3" while it counts
/// failures).
pub fn pool(c: &Container) -> Option<[bool; 3]> {
    let out = c.exec(&[
        "curl",
        "-s",
        "--max-time",
        "2",
        "http://127.0.0.1:9000/stats;csv",
    ]);
    let csv = String::from_utf8_lossy(&out.stdout);
    let mut pool = [None; 3];
    for line in csv.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() > 17 && f[0] == "group1" {
            if let Some(k) = ["server1", "server2", "server3"]
                .iter()
                .position(|s| *s == f[1])
            {
                pool[k] = Some(f[17].starts_with("UP"));
            }
        }
    }
    Some([pool[0]?, pool[1]?, pool[2]?])
}

/// wrk's script: 10% POSTs, one request in `long_every` a 2-5 s one, the rest GETs; at the
/// end one JSON line with the counts and latencies.
fn wrk_script(long_every: u64) -> String {
    // Never, in practice.
    let long_every = if long_every == 0 {
        u64::MAX / 2
    } else {
        long_every
    };
    format!(
        r#"local counter = 0
local long = 0
request = function()
  counter = counter + 1
  if counter % {long_every} == 0 then
    long = long + 1
    return wrk.format("GET", "/echo?long=1&delay_ms=" .. (2000 + (counter * 7919) % 3000))
  elseif counter % 10 == 0 then
    return wrk.format("POST", "/echo", {{["Content-Type"] = "text/plain"}}, "payload " .. counter)
  end
  return wrk.format("GET", "/echo?n=" .. counter)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {{"requests":%d,"non_2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,"p50":%d,"p99":%d,"p999":%d,"max":%d,"us":%d}}\n',
    summary.requests, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max, summary.duration))
end
"#
    )
}

/// Where HAProxy logs each request: `<ms from accept to answer> <status> <uri>`.
const HAPROXY_LOG: &str = "root/haproxy-load.log";

/// Latency percentiles (ms) of the requests in HAProxy's log that are not long ones, and the
/// longest of all: wrk's own figures count the time its connections spend in long requests
/// against the requests queued behind them.
fn latencies_from_haproxy_log(text: &str) -> Option<(f64, f64, f64, f64, u64)> {
    let mut short: Vec<u64> = Vec::new();
    let mut max = 0;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(ta), Some(_status), Some(uri)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(ta) = ta.parse::<u64>() else { continue };
        max = max.max(ta);
        if !uri.contains("long=1") {
            short.push(ta);
        }
    }
    if short.is_empty() {
        return None;
    }
    short.sort_unstable();
    let at = |p: f64| short[((short.len() - 1) as f64 * p).round() as usize] as f64;
    Some((at(0.5), at(0.99), at(0.999), max as f64, short.len() as u64))
}

/// The drop-in every scenario's config goes into.
const CONFIG: &str = "etc/gateway-systemd/gateway.toml.d/80-load.toml";

/// Run one scenario: apply its config, start the instances and HAProxy, let wrk run from
/// before the first pass until after the last (and at least `min_seconds`), restarting the
/// instances `passes` times; then stop everything.
pub fn run(
    c: &Container,
    s: &Scenario,
    connections: u32,
    min_seconds: u64,
) -> Result<Outcome, String> {
    let root = c.root();
    fs::create_dir_all(root.join("etc/gateway-systemd/gateway.toml.d"))
        .map_err(|e| e.to_string())?;
    fs::write(root.join(CONFIG), s.config).map_err(|e| e.to_string())?;
    fs::create_dir_all(root.join("etc/haproxy")).map_err(|e| e.to_string())?;
    fs::write(root.join("etc/haproxy/load.cfg"), haproxy_config(s.checks))
        .map_err(|e| e.to_string())?;
    fs::write(root.join("root/load.lua"), wrk_script(s.long_every)).map_err(|e| e.to_string())?;
    c.ok(&["systemctl", "daemon-reload"])?;
    let units: Vec<&str> = SERVERS.iter().map(|s| s.1).collect();
    let mut start = vec!["systemctl", "restart"];
    start.extend(&units);
    c.ok(&start)?;
    let _ = fs::remove_file(root.join(HAPROXY_LOG));
    c.ok(&[
        "systemd-run",
        "--unit=gateway-load-haproxy",
        &format!("--property=StandardOutput=append:/{HAPROXY_LOG}"),
        "haproxy",
        "-db",
        "-f",
        "/etc/haproxy/load.cfg",
    ])?;
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while pool(c) != Some([true; 3]) {
            if Instant::now() > deadline {
                return Err(format!("HAProxy's pool never became full: {:?}", pool(c)));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Every launcher sees HAProxy's checks and traffic before the first drain.
        let wrk = c.spawn(&[
            "wrk",
            "-t2",
            &format!("-c{connections}"),
            "-d3600s",
            "--timeout",
            "10s",
            "-s",
            "/root/load.lua",
            "http://127.0.0.1:8000",
        ]);
        let began = Instant::now();
        let sampling = AtomicBool::new(true);
        let most_out = Mutex::new(0usize);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while sampling.load(Ordering::SeqCst) {
                    if let Some(p) = pool(c) {
                        let out = p.iter().filter(|up| !**up).count();
                        let mut m = most_out.lock().unwrap_or_else(|e| e.into_inner());
                        *m = (*m).max(out);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let result = (|| {
                std::thread::sleep(Duration::from_secs(5));
                let mut outcome = Outcome::default();
                for pass in 0..s.passes {
                    let started = Instant::now();
                    let out = match s.restart {
                        Restart::Rolling => {
                            let mut cmd = vec!["gatewayctl", "rolling-restart"];
                            cmd.extend(s.instances.iter().map(|&k| SERVERS[k].0));
                            c.exec(&cmd)
                        }
                        Restart::Systemctl => {
                            let mut cmd = vec!["systemctl", "restart"];
                            cmd.extend(s.instances.iter().map(|&k| SERVERS[k].1));
                            c.exec(&cmd)
                        }
                        Restart::Command(script) => c.exec(&["sh", "-c", script]),
                    };
                    outcome.pass_seconds.push(started.elapsed().as_secs_f64());
                    outcome.restart_output.push_str(&format!(
                        "pass {}:\n{}{}",
                        pass + 1,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                    if !out.status.success() {
                        return Err(format!(
                            "pass {} failed:\n{}",
                            pass + 1,
                            outcome.restart_output
                        ));
                    }
                    // HAProxy takes the last one back before the next pass.
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while pool(c) != Some([true; 3]) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                while began.elapsed() < Duration::from_secs(min_seconds) {
                    std::thread::sleep(Duration::from_millis(200));
                }
                // Long requests in flight finish before wrk stops counting.
                std::thread::sleep(Duration::from_secs(6));
                Ok(outcome)
            })();
            let _ = c.exec(&["pkill", "-INT", "-x", "wrk"]);
            let output = wrk.wait_with_output().map_err(|e| e.to_string());
            sampling.store(false, Ordering::SeqCst);
            let mut outcome = result?;
            let output = output?;
            outcome.most_out = *most_out.lock().unwrap_or_else(|e| e.into_inner());
            let text = String::from_utf8_lossy(&output.stdout).to_string();
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("RESULT "))
                .ok_or_else(|| {
                    format!(
                        "wrk printed no result:\n{text}{}",
                        String::from_utf8_lossy(&output.stderr)
                    )
                })?;
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
            let n = |k: &str| v[k].as_u64().unwrap_or(0);
            outcome.requests = n("requests");
            outcome.non_2xx = n("non_2xx");
            outcome.connect = n("connect");
            outcome.read = n("read");
            outcome.write = n("write");
            outcome.timeout = n("timeout");
            outcome.p50_ms = n("p50") as f64 / 1000.0;
            outcome.p99_ms = n("p99") as f64 / 1000.0;
            outcome.p999_ms = n("p999") as f64 / 1000.0;
            outcome.max_ms = n("max") as f64 / 1000.0;
            outcome.seconds = n("us") as f64 / 1e6;
            // HAProxy's log has every request's time, ms: the percentiles of the ordinary ones.
            // (wrk's own percentiles count its connections' time in long requests against the
            // requests after them: 3.7 s at p99 where HAProxy's log and a plain client agree on
            // a few ms.)
            let log = fs::read_to_string(root.join(HAPROXY_LOG)).unwrap_or_default();
            let (p50, p99, p999, max, _) = latencies_from_haproxy_log(&log).ok_or_else(|| {
                format!(
                    "HAProxy's log /{HAPROXY_LOG} has no request: {:?}",
                    log.lines().take(3).collect::<Vec<_>>()
                )
            })?;
            (
                outcome.p50_ms,
                outcome.p99_ms,
                outcome.p999_ms,
                outcome.max_ms,
            ) = (p50, p99, p999, max);
            let mut notable: Vec<(u64, &str)> = log
                .lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    let ta = f.next()?.parse::<u64>().ok()?;
                    let status = f.next()?;
                    let uri = f.next()?;
                    let failed = !status.starts_with('2');
                    (failed || (ta > 1000 && !uri.contains("long=1"))).then_some((ta, l))
                })
                .collect();
            notable.sort_by_key(|n| std::cmp::Reverse(n.0));
            outcome.slowest = notable
                .iter()
                .take(10)
                .map(|(_, l)| l.to_string())
                .collect();
            outcome.long_requests = match s.long_every {
                0 => 0,
                n => outcome.requests / n,
            };
            Ok(outcome)
        })
    })();
    let _ = c.exec(&["pkill", "-KILL", "-x", "wrk"]);
    let _ = c.exec(&["systemctl", "stop", "gateway-load-haproxy"]);
    let mut stop = vec!["systemctl", "stop"];
    stop.extend(&units);
    let _ = c.exec(&stop);
    let _ = fs::remove_file(root.join(CONFIG));
    let _ = c.exec(&["systemctl", "daemon-reload"]);
    result
}

/// The table's header.
pub const HEADER: &str = "| scenario | requests | non-2xx | socket errors (connect/read/write/timeout) | p50 | p99 | p99.9 | max (long ones included) | long requests | passes (s) | most out |\n|---|---|---|---|---|---|---|---|---|---|---|";

/// One row of the table.
pub fn row(name: &str, o: &Outcome) -> String {
    let passes: Vec<String> = o.pass_seconds.iter().map(|s| format!("{s:.1}")).collect();
    format!(
        "| {name} | {} | {} | {}/{}/{}/{} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | ~{} | {} | {} |",
        o.requests,
        o.non_2xx,
        o.connect,
        o.read,
        o.write,
        o.timeout,
        o.p50_ms,
        o.p99_ms,
        o.p999_ms,
        o.max_ms,
        o.long_requests,
        passes.join(", "),
        o.most_out
    )
}

/// The demo gateway as a gateway without a graceful stop (SIGTERM cuts what is in flight), so
/// that only the drain keeps requests whole: the runs measure the product, not the demo.
pub const CUTTING_DEMO: &str =
    "start_command = [\"/usr/libexec/gateway-systemd/gateway-demo\", \"--stop-grace\", \"0s\"]\n";

/// The scenarios of the short run in CI: server1 and server3 restarted one at a time under a
/// fixed 10 s drain, then under the adaptive drain, behind HAProxy with its default checks.
pub fn short_scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "fixed 10 s",
            config: "[defaults]\nstart_command = [\"/usr/libexec/gateway-systemd/gateway-demo\", \"--stop-grace\", \"0s\"]\ndrain_mode = \"fixed\"\ndrain_delay = \"10s\"\n",
            checks: HAPROXY_DEFAULT,
            restart: Restart::Rolling,
            instances: &[0, 2],
            passes: 1,
            long_every: 5000,
        },
        Scenario {
            name: "adaptive",
            config: "[defaults]\nstart_command = [\"/usr/libexec/gateway-systemd/gateway-demo\", \"--stop-grace\", \"0s\"]\ndrain_mode = \"adaptive\"\ndrain_delay = \"10s\"\n",
            checks: HAPROXY_DEFAULT,
            restart: Restart::Rolling,
            instances: &[0, 2],
            passes: 1,
            long_every: 5000,
        },
    ]
}

/// CI's short zero-downtime run: under keep-alive load with 10% POSTs and 2-5 s requests,
/// two restarts under each of the fixed and the adaptive drain lose no request, HAProxy never
/// has two servers out, and at least 50,000 requests were served in all.
pub fn zero_downtime_under_load(c: &Container) -> Result<(), libtest_mimic::Failed> {
    let mut total = 0;
    let mut table = vec![HEADER.to_string()];
    for s in short_scenarios() {
        let o = run(c, &s, 16, 0)?;
        table.push(row(s.name, &o));
        if o.failures() > 0 || o.most_out > 1 || o.requests == 0 {
            return Err(format!(
                "{}: {} of {} requests failed, at most {} servers out:\n{}\n{}\nHAProxy's log (ms, status, uri, server, Tw/Tc/Tr), failed and slow ordinary requests:\n{}",
                s.name,
                o.failures(),
                o.requests,
                o.most_out,
                table.join("\n"),
                o.restart_output,
                o.slowest.join("\n")
            )
            .into());
        }
        total += o.requests;
    }
    if total < 50_000 {
        return Err(format!(
            "only {total} requests in all (at least 50,000 wanted):\n{}",
            table.join("\n")
        )
        .into());
    }
    for line in &table {
        println!("    {line}");
    }
    Ok(())
}
