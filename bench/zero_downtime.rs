//! Zero-downtime under load, in a booted container on loopback (see tests/system/load.rs):
//! three demo instances behind HAProxy with its default checks (inter 2s fall 3 rise 2) and
//! `retries 0`, wrk with keep-alive, 10% POSTs and one request in 5000 taking 2-5 s, while
//! the instances are restarted one at a time, three passes per scenario:
//! - baseline: no restart (the demo gateway's own latency, with and without long requests);
//! - naive: no drain at all;
//! - fixed: a fixed 10 s drain;
//! - adaptive: the default drain;
//! - systemctl: a plain `systemctl restart` of the three units (they take turns);
//! - adaptive behind HAProxy `rise 5 fall 2` (our lb_rise/lb_fall stay 2/3).
//!
//! The demo runs with `--stop-grace 0s`: SIGTERM cuts what is in flight, so only the drain
//! keeps requests whole and the table measures the product. Prints one Markdown table.
//!
//! `cargo bench --bench zero-downtime` (root and systemd-nspawn, haproxy and wrk needed);
//! `-- --quick` runs one pass per scenario and no minimum duration.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/system/harness.rs"]
mod harness;
#[path = "../tests/system/load.rs"]
mod load;

use harness::Container;
use load::{Checks, Restart, Scenario, HAPROXY_DEFAULT};
use std::fs;

const CUT: &str = "[defaults]\nstart_command = [\"/usr/libexec/gateway-systemd/gateway-demo\", \"--stop-grace\", \"0s\"]\n";

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if let Some(why) = harness::missing_prerequisite() {
        eprintln!("zero-downtime benchmark needs a container: {why}");
        std::process::exit(1);
    }
    let c = Container::boot(|root| {
        common::install_package(root)?;
        harness::install_domain(root, &common::repo().join("demo/domain"))?;
        fs::write(root.join("etc/hostname"), "gw1.example.com\n").map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| {
        eprintln!("booting the container failed: {e}");
        std::process::exit(1);
    });
    c.wait_until_booted(std::time::Duration::from_secs(60))
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1);
        });
    let passes = if quick { 1 } else { 3 };
    // Long enough for a million requests per drained scenario at this machine's ~10k req/s.
    let min_seconds = if quick { 0 } else { 110 };
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let all: &'static [usize] = &[0, 1, 2];
    let scenario = |name: &'static str,
                    extra: &str,
                    checks: Checks,
                    restart: Restart,
                    passes: u32,
                    long_every: u64| Scenario {
        name,
        config: leak(format!("{CUT}{extra}")),
        checks,
        restart,
        instances: all,
        passes,
        long_every,
    };
    let scenarios = vec![
        (
            scenario(
                "baseline, no long requests",
                "",
                HAPROXY_DEFAULT,
                Restart::Rolling,
                0,
                0,
            ),
            30,
        ),
        (
            scenario("baseline", "", HAPROXY_DEFAULT, Restart::Rolling, 0, 5000),
            30,
        ),
        (
            scenario(
                "naive (no drain)",
                "drain_mode = \"fixed\"\ndrain_delay = 0\ndrain_timeout = 0\n",
                HAPROXY_DEFAULT,
                Restart::Rolling,
                passes,
                5000,
            ),
            0,
        ),
        (
            scenario(
                "fixed 10 s",
                "drain_mode = \"fixed\"\ndrain_delay = \"10s\"\n",
                HAPROXY_DEFAULT,
                Restart::Rolling,
                passes,
                5000,
            ),
            min_seconds,
        ),
        (
            scenario(
                "adaptive",
                "",
                HAPROXY_DEFAULT,
                Restart::Rolling,
                passes,
                5000,
            ),
            min_seconds,
        ),
        (
            scenario(
                "systemctl restart",
                "",
                HAPROXY_DEFAULT,
                Restart::Systemctl,
                passes,
                5000,
            ),
            min_seconds,
        ),
        (
            scenario(
                "adaptive, HAProxy rise 5 fall 2",
                "",
                Checks {
                    inter_ms: 2000,
                    fall: 2,
                    rise: 5,
                },
                Restart::Rolling,
                passes,
                5000,
            ),
            min_seconds,
        ),
    ];
    println!("{}", load::HEADER);
    for (s, min) in scenarios {
        match load::run(&c, &s, 16, if quick { min.min(10) } else { min }) {
            Ok(o) => println!("{}", load::row(s.name, &o)),
            Err(e) => println!(
                "| {} | failed: {} |",
                s.name,
                e.lines().next().unwrap_or("")
            ),
        }
    }
}
