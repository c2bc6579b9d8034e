//! Benchmark: `gatewayctl status --json` of 200 running instances (D-Bus, one GetAll per unit)
//! against a `systemctl show` loop over the same units (200 processes), in the same container,
//! same run. Target: gatewayctl in at most 1/5 of the loop's time.
//!
//! The loop pays 200 process starts and bus connections; the fair anchor is one
//! `systemctl show u1 … u200` (one process, one connection, the same properties), whose ratio
//! is printed too: it says what is left of the gain once process starts are not counted.
//!
//! `cargo bench --bench status` (root and systemd-nspawn needed); `-- --quick` runs fewer rounds.

#[path = "../tests/common/mod.rs"]
mod common;
mod fixtures;
#[path = "../tests/system/harness.rs"]
mod harness;

use std::fs;

const INSTANCES: usize = 200;

/// Wall time of a shell snippet inside the container, in ms (timed inside, no nsenter cost).
fn timed(c: &harness::Container, script: &str) -> f64 {
    let out = c
        .ok(&[
            "sh",
            "-c",
            &format!("s=$(date +%s%N); {script}; e=$(date +%s%N); echo $((e - s))"),
        ])
        .expect("timed command");
    out.trim().parse::<f64>().expect("nanoseconds") / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if let Some(why) = harness::missing_prerequisite() {
        eprintln!("status benchmark needs a container: {why}");
        std::process::exit(1);
    }
    let units: Vec<String> = (0..INSTANCES)
        .map(|i| {
            gateway_systemd::units::name::instance_unit(
                &format!("group {}", i / 10),
                &format!("server {i}"),
            )
            .expect("unit name")
        })
        .collect();
    let c = harness::Container::boot(|root| {
        common::install_package(root)?;
        fixtures::write_fixture(root, INSTANCES);
        // Running instances, as on a production host: the demo gateway, no LB endpoint (the
        // fixture gives every instance the same management port), no drain.
        fs::create_dir_all(root.join("etc/gateway-systemd/gateway.toml.d"))
            .map_err(|e| e.to_string())?;
        fs::write(
            root.join("etc/gateway-systemd/gateway.toml.d/90-bench.toml"),
            "[defaults]\nstart_command = [\"/usr/libexec/gateway-systemd/gateway-demo\"]\n\
             lb_health_listen = \"\"\ndrain_delay = 0\n",
        )
        .map_err(|e| e.to_string())?;
        fs::write(root.join("root/units.txt"), units.join("\n") + "\n").map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| {
        eprintln!("booting the container failed: {e}");
        std::process::exit(1);
    });
    c.ok(&["systemctl", "start", "gateway.target"])
        .expect("start all instances");
    let listed = c
        .ok(&["gatewayctl", "status", "--json"])
        .expect("gatewayctl status");
    let n = serde_json::from_str::<serde_json::Value>(&listed)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0);
    assert_eq!(
        n, INSTANCES,
        "gatewayctl status --json should list every instance"
    );
    let running = listed.matches("\"active_state\":\"active\"").count();
    println!("{running} of {INSTANCES} instances running");

    let rounds = if quick { 2 } else { 5 };
    let ours: Vec<f64> = (0..rounds)
        .map(|_| timed(&c, "gatewayctl status --json > /dev/null"))
        .collect();
    let theirs: Vec<f64> = (0..rounds)
        .map(|_| {
            timed(
                &c,
                "while read -r u; do systemctl show \"$u\" > /dev/null; done < /root/units.txt",
            )
        })
        .collect();
    // One process for all units: word splitting of the list (the escaped names hold no
    // spaces), no globbing (they hold backslashes).
    let one_process = "set -f; systemctl show $(cat /root/units.txt) > /dev/null";
    let shown = c
        .ok(&[
            "sh",
            "-c",
            "set -f; systemctl show -p Id $(cat /root/units.txt)",
        ])
        .expect("systemctl show of every unit");
    let ids = shown.lines().filter(|l| l.starts_with("Id=")).count();
    assert_eq!(ids, INSTANCES, "one systemctl show should show every unit");
    let single: Vec<f64> = (0..rounds).map(|_| timed(&c, one_process)).collect();
    let (o, t, s) = (median(ours), median(theirs), median(single));
    println!("status of {INSTANCES} instances, median of {rounds} rounds:");
    println!("  gatewayctl status --json     {o:>8.1} ms");
    println!("  systemctl show loop          {t:>8.1} ms  ({INSTANCES} processes)");
    println!("  systemctl show u1 ... u{INSTANCES}   {s:>8.1} ms  (1 process)");
    println!(
        "  ratio {:.3} (gatewayctl / loop; target <= 0.2: {})",
        o / t,
        if o / t <= 0.2 { "met" } else { "MISSED" }
    );
    println!("  ratio {:.3} (gatewayctl / one systemctl show)", o / s);
}
