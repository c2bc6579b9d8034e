//! Benchmark of the launcher under real systemd (a container, as the system tests boot it):
//! - readiness latency: from the demo gateway's first 200 to `systemctl start` returning,
//!   over 20 starts (target <= 50 ms, never negative);
//! - the launcher's RSS and CPU use while idle-serving for 60 s (target <= 3 MiB, ~0 %);
//! - hang to healthy: a gateway that stops answering, until it answers again after the
//!   watchdog (3 s) killed and systemd restarted it.
//!
//! `cargo bench --bench launcher` (root and systemd-nspawn needed); `-- --quick` is shorter.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/system/harness.rs"]
mod harness;
#[path = "../tests/system/launcher.rs"]
mod launcher;

use harness::Container;
use launcher::http as curl;
use std::fs;
use std::time::{Duration, Instant};

const SERVER1: &str = "gateway@group1-server1.service";
const SERVER2: &str = "gateway@group1-server2.service";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ticks(c: &Container, pid: &str) -> u64 {
    let stat = c
        .ok(&["cat", &format!("/proc/{pid}/stat")])
        .unwrap_or_default();
    let fields: Vec<u64> = stat.rsplit_once(')').map_or(vec![], |r| {
        r.1.split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect()
    });
    // utime and stime are the 14th and 15th fields; after the ")" and the state letter they
    // are at indexes 10 and 11 of the numeric fields.
    fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if let Some(why) = harness::missing_prerequisite() {
        eprintln!("launcher benchmark needs a container: {why}");
        std::process::exit(1);
    }
    let c = Container::boot(|root| {
        common::install_package(root)?;
        harness::install_domain(root, &common::repo().join("demo/domain"))?;
        fs::write(root.join("etc/hostname"), "gw1.example.com\n").map_err(|e| e.to_string())?;
        // server2 becomes healthy 1 s after starting and stops without a drain; server1 has a
        // 3 s watchdog.
        fs::create_dir_all(root.join("etc/gateway-systemd/gateway.toml.d")).map_err(|e| e.to_string())?;
        fs::write(
            root.join("etc/gateway-systemd/gateway.toml.d/90-bench.toml"),
            "[instances.\"group1/server2\"]\ndrain_delay = 0\n\
             start_command = [\"/usr/libexec/gateway-systemd/gateway-demo\", \"--start-delay\", \"1s\"]\n\
             [instances.\"group1/server1\"]\ndrain_delay = 0\nwatchdog = \"3s\"\n",
        )
        .map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| {
        eprintln!("booting the container failed: {e}");
        std::process::exit(1);
    });

    // Readiness latency.
    let starts = if quick { 5 } else { 20 };
    let mut latencies = Vec::new();
    for _ in 0..starts {
        let out = c
            .ok(&[
                "sh",
                "-c",
                &format!("systemctl start {SERVER2}; date +%s%6N"),
            ])
            .expect("start server2");
        let returned: u64 = out.trim().parse().expect("date");
        let (_, status) = curl(&c, "GET", "http://127.0.0.1:8081/demo/status");
        let v: serde_json::Value = serde_json::from_str(&status).expect("demo status");
        let first = v["first_healthy_us"].as_u64().expect("first_healthy_us");
        latencies.push((returned as f64 - first as f64) / 1000.0);
        c.ok(&["systemctl", "stop", SERVER2]).expect("stop server2");
    }
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    println!("readiness latency (first 200 of the health check -> systemctl start returns), {starts} starts:");
    println!(
        "  min {:.1} ms, median {:.1} ms, p95 {:.1} ms, max {:.1} ms (target <= 50 ms, never negative: {})",
        sorted[0],
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.95),
        sorted[sorted.len() - 1],
        if sorted[0] >= 0.0 && percentile(&sorted, 0.5) <= 50.0 { "met" } else { "MISSED" }
    );

    // RSS and idle CPU.
    c.ok(&["systemctl", "start", SERVER1])
        .expect("start server1");
    let pid = c.property(SERVER1, "MainPID").expect("MainPID");
    let idle = Duration::from_secs(if quick { 10 } else { 60 });
    let t0 = ticks(&c, &pid);
    let started = Instant::now();
    std::thread::sleep(idle);
    let used = ticks(&c, &pid) - t0;
    let hz = 100.0; // USER_HZ on Linux
    let cpu = used as f64 / hz / started.elapsed().as_secs_f64() * 100.0;
    let rollup = c
        .ok(&["cat", &format!("/proc/{pid}/smaps_rollup")])
        .unwrap_or_default();
    let kib = |key: &str| -> u64 {
        rollup
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (rss_kib, pss_kib, anon_kib) = (kib("Rss:"), kib("Pss:"), kib("Anonymous:"));
    println!(
        "launcher while serving (health check every 750 ms, watchdog 3 s), {}s:",
        idle.as_secs()
    );
    println!(
        "  RSS {:.2} MiB (target <= 3 MiB: {}): private anonymous {:.2} MiB, the rest shared file\n  \
         pages of libc and the launcher's code; PSS {:.2} MiB. CPU {:.2} % ({} ticks)",
        rss_kib as f64 / 1024.0,
        if rss_kib <= 3 * 1024 { "met" } else { "MISSED" },
        anon_kib as f64 / 1024.0,
        pss_kib as f64 / 1024.0,
        cpu,
        used
    );

    // Hang to healthy.
    let rounds = if quick { 2 } else { 5 };
    let mut times = Vec::new();
    for _ in 0..rounds {
        let restarts: u32 = c
            .property(SERVER1, "NRestarts")
            .expect("NRestarts")
            .parse()
            .unwrap_or(0);
        curl(&c, "POST", "http://127.0.0.1:8080/demo/hang");
        let took = launcher::restarted_and_healthy(
            &c,
            SERVER1,
            restarts,
            "http://127.0.0.1:8080/healthcheck",
        )
        .expect("recovery");
        times.push(took.as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!("hang to healthy (WatchdogSec=3s, RestartSec=2s), {rounds} hangs:");
    println!("  min {:.2} s, median {:.2} s, max {:.2} s (bound: watchdog 3 s + restart delay 2 s + start)", times[0], percentile(&times, 0.5), times[times.len() - 1]);
}
