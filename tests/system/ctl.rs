//! gatewayctl against real systemd over D-Bus: start/stop/status, failure reports, exit codes,
//! non-root callers, the Node Manager, and a rolling restart watched through the load balancer
//! health endpoints.

use crate::harness::Container;
// HAProxy's own view of group1: whether each server is in its pool.
use crate::launcher::{http, SERVER1, SERVER2};
use crate::load::pool as haproxy_pool;
use libtest_mimic::Failed;
use std::fs;
use std::time::{Duration, Instant};

const SERVER3: &str = "gateway@group1-server3.service";

fn fail(msg: String) -> Failed {
    msg.into()
}

/// Run gatewayctl inside: (exit code, stdout, stderr).
fn ctl(c: &Container, args: &[&str]) -> (i32, String, String) {
    let mut full = vec!["gatewayctl"];
    full.extend_from_slice(args);
    run(c, &full)
}

fn status_json(c: &Container, instance: &str) -> Result<serde_json::Value, Failed> {
    let (code, out, err) = ctl(c, &["status", "--json", instance]);
    if code != 0 {
        return Err(fail(format!(
            "gatewayctl status --json {instance}: exit {code}: {err}"
        )));
    }
    let list: serde_json::Value = serde_json::from_str(&out)?;
    Ok(list[0].clone())
}

/// start waits for readiness, status reads the unit over D-Bus, stop drains first.
pub fn start_status_stop(c: &Container) -> Result<(), Failed> {
    let _ = ctl(c, &["stop", "group1/server1"]);
    let (code, out, err) = ctl(c, &["start", "group1/server1"]);
    if code != 0 || !out.contains("start group1/server1: done") {
        return Err(fail(format!("gatewayctl start: exit {code}\n{out}{err}")));
    }
    if http(c, "GET", "http://127.0.0.1:8080/healthcheck").0 != 200 {
        return Err(fail("start returned before the instance answered".into()));
    }
    let s = status_json(c, "group1/server1")?;
    if s["active_state"] != "active"
        || s["main_pid"].as_u64().unwrap_or(0) == 0
        || !s["status_text"]
            .as_str()
            .unwrap_or("")
            .starts_with("serving")
    {
        return Err(fail(format!("status after start: {s}")));
    }
    let started = Instant::now();
    let (code, _, err) = ctl(c, &["stop", "gateway@group1-server1.service"]);
    let took = started.elapsed();
    let s = status_json(c, "group1-server1")?;
    if code != 0 || s["active_state"] != "inactive" || took < Duration::from_millis(2900) {
        return Err(fail(format!(
            "gatewayctl stop: exit {code} after {took:?} (drain is 3 s), state {s}: {err}"
        )));
    }
    Ok(())
}

/// A start that fails exits non-zero and shows the status text and the journal.
pub fn failed_start_is_explained(c: &Container) -> Result<(), Failed> {
    let (code, out, err) = c.with_config(
        "70-ctl-test.toml",
        "[instances.\"group1/server2\"]\nstart_command = [\"/bin/false\"]\n",
        || Ok::<_, Failed>(ctl(c, &["start", "group1/server2"])),
    )?;
    let _ = c.exec(&["systemctl", "reset-failed", SERVER2]);
    if code != 1
        || !err.contains("job failed")
        || !err.contains("gateway stopped: exit status 1")
        || !err.contains("stopped: exit status 1")
    {
        return Err(fail(format!(
            "a failing start gave exit {code}:\n{out}{err}"
        )));
    }
    Ok(())
}

/// Unknown instances, non-root callers and `status` of all get clear answers.
pub fn exit_codes_and_messages(c: &Container) -> Result<(), Failed> {
    let (code, _, err) = ctl(c, &["start", "group1/nope"]);
    if code != 5 || !err.contains("no such instance") {
        return Err(fail(format!("unknown instance: exit {code}: {err}")));
    }
    let out = c.exec(&[
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "gatewayctl",
        "start",
        "group1/server1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(4)
        || !err.contains("permission denied; run as root")
        || err.contains("org.freedesktop")
    {
        return Err(fail(format!(
            "non-root start: {:?}: {err}",
            out.status.code()
        )));
    }
    let (code, out, err) = ctl(c, &["status", "--json"]);
    let all: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| fail(format!("{e}: {out}{err}")))?;
    let names: Vec<&str> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["instance"].as_str())
        .collect();
    if code != 0 || names != ["server1", "server2", "server3", "edge node 1"] {
        return Err(fail(format!(
            "status of all: exit {code}, instances {names:?}"
        )));
    }
    let (code, out, _) = ctl(c, &["list"]);
    if code != 0 || !out.contains(r"gateway@payments\x2deu-edge\x20node\x201.service") {
        return Err(fail(format!("list: exit {code}\n{out}")));
    }
    Ok(())
}

/// `gatewayctl nodemanager start|status|stop`.
pub fn node_manager_commands(c: &Container) -> Result<(), Failed> {
    let (code, _, err) = ctl(c, &["nodemanager", "start"]);
    let (status_code, out, _) = ctl(c, &["nodemanager", "status"]);
    let (stop_code, _, _) = ctl(c, &["nodemanager", "stop"]);
    let (after, _, _) = ctl(c, &["nodemanager", "status"]);
    if code != 0
        || status_code != 0
        || !out.contains("active (running)")
        || stop_code != 0
        || after != 3
    {
        return Err(fail(format!("nodemanager: start {code} ({err}), status {status_code} ({out}), stop {stop_code}, status after {after}")));
    }
    Ok(())
}

/// A rolling restart of group1 (3 instances) with the LB endpoints polled all along: never
/// more than one instance out of the pool, each out exactly once, all serving at the end.
/// group1's three instances with their LB health ports.
pub const GROUP1_LBS: [(&str, u16); 3] = [(SERVER1, 18085), (SERVER2, 18086), (SERVER3, 18088)];

/// Start group1's three instances, run `args` inside, and sample every 50 ms which of them
/// their LB health endpoints put in the pool (200) until it exits; then stop them again.
pub fn sample_group1_while(
    c: &Container,
    args: &[&str],
) -> Result<(std::process::ExitStatus, String, Vec<[u16; 3]>), Failed> {
    for (unit, _) in GROUP1_LBS {
        c.ok(&["systemctl", "start", unit])?;
    }
    let sample = || {
        let mut codes = [0; 3];
        for (k, (_, port)) in GROUP1_LBS.iter().enumerate() {
            codes[k] = http(c, "GET", &format!("http://127.0.0.1:{port}/healthchecklb")).0;
        }
        codes
    };
    // The sampler is these instances' load balancer: it polls them before the restart
    // begins, so that each instance is waited for until the sampler saw it pass again (the
    // three endpoints are asked one after the other: without that wait, an instance that
    // just came back and the next one just drained can fall into one sample).
    let mut samples: Vec<[u16; 3]> = (0..3).map(|_| sample()).collect();
    let mut run = c.spawn(args);
    let deadline = Instant::now() + Duration::from_secs(120);
    while run.try_wait()?.is_none() && Instant::now() < deadline {
        samples.push(sample());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, out) = finish(run)?;
    for (unit, _) in GROUP1_LBS {
        let _ = c.exec(&["systemctl", "stop", unit]);
    }
    Ok((status, out, samples))
}

/// Never two of group1 out of the pool in one sample (each sample: the LB endpoints' answers,
/// 0 for none), and each out exactly once.
pub fn one_out_at_a_time(samples: &[[u16; 3]], out: &str) -> Result<(), Failed> {
    let lbs = GROUP1_LBS;
    let up = |s: &[u16; 3]| s.map(|code| code == 200);
    if let Some(k) = samples
        .iter()
        .position(|s| up(s).iter().filter(|up| !**up).count() > 1)
    {
        let around = &samples[k.saturating_sub(3)..(k + 3).min(samples.len())];
        return Err(fail(format!(
            "two instances out of the pool at once: sample {k} of {} is {:?}; around it {around:?}\n{out}",
            samples.len(),
            samples[k]
        )));
    }
    for (k, (unit, _)) in lbs.iter().enumerate() {
        let outs = samples
            .windows(2)
            .filter(|w| up(&w[0])[k] && !up(&w[1])[k])
            .count()
            + usize::from(!up(&samples[0])[k]);
        if outs != 1 {
            return Err(fail(format!(
                "{unit} left the pool {outs} times during the rolling restart ({} samples)\n{out}",
                samples.len()
            )));
        }
    }
    Ok(())
}

pub fn rolling_restart_takes_one_out_at_a_time(c: &Container) -> Result<(), Failed> {
    let (status, out, samples) =
        sample_group1_while(c, &["gatewayctl", "rolling-restart", "group1"])?;
    if !status.success() || !out.contains("[3/3] group1/server3: serving again") {
        return Err(fail(format!("rolling-restart: {status}\n{out}")));
    }
    one_out_at_a_time(&samples, &out)
}

/// `systemctl restart gateway.target` restarts group1's instances one at a time, each
/// serving again before the next one drains (before: PartOf= restarted all three at once).
pub fn restarting_gateway_target_rolls_each_group(c: &Container) -> Result<(), Failed> {
    let pids = |c: &Container| -> Result<Vec<String>, Failed> {
        GROUP1_LBS
            .iter()
            .map(|(u, _)| c.property(u, "MainPID").map_err(Failed::from))
            .collect()
    };
    for (unit, _) in GROUP1_LBS {
        c.ok(&["systemctl", "start", unit])?;
    }
    let before = pids(c)?;
    let (status, out, samples) =
        sample_group1_while(c, &["sh", "-c", "systemctl restart gateway.target && systemctl show -P MainPID gateway@group1-server1.service gateway@group1-server2.service gateway@group1-server3.service"])?;
    let _ = c.exec(&["systemctl", "stop", "gateway.target"]);
    if !status.success() {
        return Err(fail(format!(
            "systemctl restart gateway.target: {status}\n{out}"
        )));
    }
    let after: Vec<&str> = out.split_whitespace().collect();
    if after.len() != 3 || after.iter().zip(&before).any(|(a, b)| a == b || *a == "0") {
        return Err(fail(format!(
            "not every instance of group1 was restarted: main PIDs {before:?} before, {after:?} after"
        )));
    }
    one_out_at_a_time(&samples, &out)
}

/// Wait for a spawned command; its exit status and its stdout followed by its stderr.
fn finish(mut run: std::process::Child) -> Result<(std::process::ExitStatus, String), Failed> {
    let status = run.wait()?;
    let mut out = String::new();
    if let Some(mut o) = run.stdout.take() {
        std::io::Read::read_to_string(&mut o, &mut out)?;
    }
    if let Some(mut e) = run.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut out)?;
    }
    Ok((status, out))
}

fn run(c: &Container, args: &[&str]) -> (i32, String, String) {
    let out = c.exec(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn demo_options(c: &Container, port: u16) -> Result<serde_json::Value, Failed> {
    let (_, status) = http(c, "GET", &format!("http://127.0.0.1:{port}/demo/status"));
    let v: serde_json::Value =
        serde_json::from_str(&status).map_err(|e| fail(format!("{e}: {status:?}")))?;
    Ok(v["options"].clone())
}

/// The vendor's `startinstance` command lines work: listing, -d/-s/-k with exit codes, names
/// with spaces in any order, directories, and -D/-q/-b reaching the gateway for one start.
pub fn startinstance_compatible(c: &Container) -> Result<(), Failed> {
    let (code, out, _) = run(c, &["startinstance"]);
    if code != 0
        || !out.contains("usage: startinstance")
        || !out.contains(r#"startinstance -n "edge node 1" -g "payments-eu""#)
    {
        return Err(fail(format!(
            "startinstance without arguments: exit {code}\n{out}"
        )));
    }
    let steps: [(&[&str], i32); 5] = [
        (
            &[
                "startinstance",
                "-g",
                "payments-eu",
                "-n",
                "edge node 1",
                "-d",
            ],
            0,
        ),
        (
            &[
                "startinstance",
                "-s",
                "-n",
                "edge node 1",
                "-g",
                "payments-eu",
            ],
            0,
        ),
        (
            &[
                "startinstance",
                "/opt/apigateway/groups/group-3/instance-3",
                "-k",
            ],
            0,
        ),
        (
            &[
                "startinstance",
                "-h",
                "/opt/apigateway/groups/group-3/instance-3/",
                "-s",
            ],
            1,
        ),
        (&["startinstance", "-n", "ghost", "-g", "group1", "-d"], 5),
    ];
    for (args, want) in steps {
        let (code, out, err) = run(c, args);
        if code != want {
            return Err(fail(format!(
                "{args:?}: exit {code}, expected {want}\n{out}{err}"
            )));
        }
    }
    let (code, _, err) = run(
        c,
        &[
            "startinstance",
            "-n",
            "server1",
            "-g",
            "group1",
            "-d",
            "-Dfoo=bar",
            "-q",
            "-b",
            "/tmp/trace",
        ],
    );
    let with = demo_options(c, 8080)?;
    // Other options for a running instance cannot reach it: refused, and nothing changes.
    let (code3, out3, err3) = run(
        c,
        &[
            "startinstance",
            "-n",
            "server1",
            "-g",
            "group1",
            "-d",
            "-Dother=1",
        ],
    );
    let still = demo_options(c, 8080)?;
    if code3 != 1 || !err3.contains("already running, with other options") || still != with {
        return Err(fail(format!(
            "-D on a running instance: exit {code3} ({out3}{err3}), the gateway now has {still}"
        )));
    }
    // The same options again: it runs with them already.
    let (code4, _, err4) = run(
        c,
        &[
            "startinstance",
            "-n",
            "server1",
            "-g",
            "group1",
            "-d",
            "-Dfoo=bar",
            "-q",
            "-b",
            "/tmp/trace",
        ],
    );
    if code4 != 0 {
        return Err(fail(format!(
            "the same options on a running instance: exit {code4} ({err4})"
        )));
    }
    let _ = run(c, &["startinstance", "-n", "server1", "-g", "group1", "-k"]);
    let (code2, _, err2) = run(c, &["startinstance", "-n", "server1", "-g", "group1", "-d"]);
    let without = demo_options(c, 8080)?;
    let _ = run(c, &["startinstance", "-n", "server1", "-g", "group1", "-k"]);
    if code != 0
        || with
            != serde_json::json!({"properties": ["foo=bar"], "quiet": true, "boot_trace": "/tmp/trace"})
    {
        return Err(fail(format!(
            "-D/-q/-b: exit {code} ({err}), the gateway got {with}"
        )));
    }
    if code2 != 0
        || without != serde_json::json!({"properties": [], "quiet": false, "boot_trace": null})
    {
        return Err(fail(format!(
            "a later start without options: exit {code2} ({err2}), the gateway got {without}"
        )));
    }
    Ok(())
}

/// `nodemanager`, `nodemanager -s`, `nodemanager -k`.
pub fn nodemanager_compatible(c: &Container) -> Result<(), Failed> {
    let codes: Vec<i32> = [
        &["nodemanager"][..],
        &["nodemanager", "-s"],
        &["nodemanager", "-k"],
        &["nodemanager", "-s"],
    ]
    .iter()
    .map(|a| run(c, a).0)
    .collect();
    if codes != [0, 0, 0, 1] {
        return Err(fail(format!(
            "nodemanager, -s, -k, -s gave {codes:?}, expected [0, 0, 0, 1]"
        )));
    }
    Ok(())
}

/// `gatewayctl migrate-initd` shows the mapping the generator acts on.
pub fn migrate_initd_plan(c: &Container) -> Result<(), Failed> {
    let (code, out, err) = run(c, &["gatewayctl", "migrate-initd"]);
    let want = [
        "/etc/init.d/vshell-group1-server1: group1/server1 -> gateway@group1-server1.service (by its VINSTDIR); vshell-group1-server1.service is masked",
        r"/etc/init.d/vshell-payments-eu-edge-node-1: payments-eu/edge node 1 -> gateway@payments\x2deu-edge\x20node\x201.service (by its startinstance arguments)",
        "/etc/init.d/vshell-Node-Manager-on-gw1: the Node Manager -> gateway-nodemanager.service (by its nodemanager call)",
        "/etc/init.d/vshell-unrelated: left alone (vshell-unrelated.service stays usable)",
    ];
    if code != 0 || want.iter().any(|w| !out.contains(w)) {
        return Err(fail(format!("migrate-initd: exit {code}\n{out}{err}")));
    }
    Ok(())
}

/// `-H user@host[:port]`: the same D-Bus calls on another host through ssh and that host's
/// systemd-stdio-bridge (here the container's own sshd, reached over its loopback).
pub fn remote_host_over_ssh(c: &Container) -> Result<(), Failed> {
    c.ok(&[
        "sh",
        "-c",
        "mkdir -p -m 700 /root/.ssh && rm -f /root/.ssh/id_ed25519* && \
         ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519 && \
         cp /root/.ssh/id_ed25519.pub /root/.ssh/authorized_keys && \
         printf 'Host *\\n  StrictHostKeyChecking accept-new\\n  BatchMode yes\\n' > /root/.ssh/config",
    ])?;
    c.ok(&["systemctl", "start", "ssh.service"])?;
    let _ = ctl(c, &["stop", "group1/server1"]);

    let (code, out, err) = ctl(c, &["-H", "root@127.0.0.1:22", "start", "group1/server1"]);
    if code != 0 || !out.contains("start group1/server1: done") {
        return Err(fail(format!(
            "gatewayctl -H start: exit {code}\n{out}{err}"
        )));
    }
    if c.property(SERVER1, "ActiveState")? != "active" {
        return Err(fail("-H start returned but the unit is not active".into()));
    }
    // Status of all: the other host's loaded gateway units, named from their unit names.
    let (code, out, err) = ctl(c, &["--host", "root@localhost", "status", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| fail(format!("-H status --json: exit {code}: {e}\n{out}{err}")))?;
    let server1 = list
        .as_array()
        .and_then(|l| l.iter().find(|s| s["unit"] == SERVER1))
        .ok_or_else(|| fail(format!("-H status lacks {SERVER1}: {out}")))?;
    let local_pid = c.property(SERVER1, "MainPID")?;
    if server1["group"] != "group1"
        || server1["instance"] != "server1"
        || server1["main_pid"].as_u64().map(|p| p.to_string()) != Some(local_pid.clone())
    {
        return Err(fail(format!(
            "-H status of server1 {server1} does not match MainPID {local_pid}"
        )));
    }
    let started = Instant::now();
    let (code, out, err) = ctl(
        c,
        &["-H", "root@localhost", "stop", "gateway@group1-server1"],
    );
    if code != 0 || started.elapsed() < Duration::from_millis(2900) {
        return Err(fail(format!(
            "-H stop: exit {code} after {:?} (the drain is 3 s)\n{out}{err}",
            started.elapsed()
        )));
    }
    // Local-only commands say so instead of reading this host's files.
    let (code, _, err) = ctl(c, &["-H", "root@localhost", "list"]);
    if code != 2 || !err.contains("works on this host only") {
        return Err(fail(format!("-H list: exit {code}: {err}")));
    }
    // An unreachable host is one clear line, not a stack of D-Bus errors.
    let (code, _, err) = ctl(c, &["-H", "nobody@127.0.0.1:1", "status"]);
    if code != 1 || !err.contains("cannot reach systemd on nobody@127.0.0.1:1 over ssh") {
        return Err(fail(format!("-H to a closed port: exit {code}: {err}")));
    }
    Ok(())
}

/// HAProxy checking group1's LB endpoints: slow to take a server back (rise 5), quick to drop
/// it (fall 2), as the DESIGN's warning case.
const HAPROXY_CFG: &str = "\
global
  log stdout format raw local0 notice
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
frontend group1
  bind 127.0.0.1:8000
  default_backend group1
backend group1
  option httpchk GET /healthchecklb
  default-server inter 200ms fall 2 rise 5
  server server1 127.0.0.1:8080 check port 18085
  server server2 127.0.0.1:8081 check port 18086
  server server3 127.0.0.1:8083 check port 18088
listen stats
  bind 127.0.0.1:9000
  stats enable
  stats uri /stats
";

/// Run a rolling restart of group1 while sampling HAProxy's pool; returns (exit status,
/// output, samples).
fn rolling_restart_under_haproxy(c: &Container) -> Result<(bool, String, Vec<[bool; 3]>), Failed> {
    let mut run = c.spawn(&["gatewayctl", "rolling-restart", "group1"]);
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while run.try_wait()?.is_none() && Instant::now() < deadline {
        if let Some(p) = haproxy_pool(c) {
            samples.push(p);
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    // Let HAProxy settle on the last one too.
    let settle = Instant::now() + Duration::from_secs(5);
    while Instant::now() < settle {
        match haproxy_pool(c) {
            Some(p) if p == [true; 3] => break,
            Some(p) => samples.push(p),
            None => {}
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    let (status, out) = finish(run)?;
    Ok((status.success(), out, samples))
}

fn most_out_at_once(samples: &[[bool; 3]]) -> usize {
    samples
        .iter()
        .map(|s| s.iter().filter(|up| !**up).count())
        .max()
        .unwrap_or(0)
}

/// The DESIGN's case: systemd says an instance is up before a slow-rising balancer routes to
/// it again. With lb_rise matching HAProxy's rise, rolling-restart waits, and HAProxy itself
/// never has two servers out; with lb_rise too low (1), the same run shows two out at once.
pub fn rolling_restart_waits_for_the_load_balancer(c: &Container) -> Result<(), Failed> {
    let config = c
        .root()
        .join("etc/gateway-systemd/gateway.toml.d/70-lb-rise.toml");
    fs::create_dir_all(config.parent().unwrap())?;
    let result = with_haproxy(c, &[SERVER1, SERVER2, SERVER3], [true; 3], || {
        fs::write(&config, "[defaults]\nlb_rise = 5\n")?;
        let (ok, out, samples) = rolling_restart_under_haproxy(c)?;
        if !ok || !out.contains("[3/3] group1/server3: back in the pool of 1 load balancer(s)") {
            return Err(fail(format!("rolling-restart with lb_rise = 5:\n{out}")));
        }
        let most = most_out_at_once(&samples);
        if most > 1 {
            return Err(fail(format!(
                "HAProxy had {most} servers out at once although lb_rise matches its rise:\n{out}"
            )));
        }
        for k in 0..3 {
            if samples.iter().all(|s| s[k]) {
                return Err(fail(format!(
                    "HAProxy never took server{} out: the test saw nothing ({} samples)",
                    k + 1,
                    samples.len()
                )));
            }
        }

        // The control: a balancer slower than gatewayctl assumes gets two out at once.
        fs::write(&config, "[defaults]\nlb_rise = 1\n")?;
        let (ok, out, samples) = rolling_restart_under_haproxy(c)?;
        if !ok {
            return Err(fail(format!("rolling-restart with lb_rise = 1:\n{out}")));
        }
        let most = most_out_at_once(&samples);
        if most < 2 {
            return Err(fail(format!(
                "with lb_rise = 1 (HAProxy needs 5) two servers should have been out at once, \
                 but at most {most} was: the sampling cannot see what this test claims"
            )));
        }
        Ok(())
    });
    let _ = fs::remove_file(&config);
    result
}

/// Start `units` and HAProxy, wait until HAProxy's pool is `pool`, run `f`, then stop them.
fn with_haproxy(
    c: &Container,
    units: &[&str],
    pool: [bool; 3],
    f: impl FnOnce() -> Result<(), Failed>,
) -> Result<(), Failed> {
    let cfg = c.root().join("etc/haproxy/gateway-test.cfg");
    fs::create_dir_all(cfg.parent().unwrap())?;
    fs::write(&cfg, HAPROXY_CFG)?;
    for unit in units {
        c.ok(&["systemctl", "start", unit])?;
    }
    c.ok(&[
        "systemd-run",
        "--unit=haproxy-gateway-test",
        "haproxy",
        "-db",
        "-f",
        "/etc/haproxy/gateway-test.cfg",
    ])?;
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while haproxy_pool(c) != Some(pool) {
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "HAProxy's pool never became {pool:?}: {:?}",
                    haproxy_pool(c)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        f()
    })();
    let _ = c.exec(&["systemctl", "stop", "haproxy-gateway-test"]);
    for unit in units {
        let _ = c.exec(&["systemctl", "stop", unit]);
    }
    result
}

/// Adaptive drain under HAProxy (fall 2, 200 ms checks) with a 20 s drain delay: the stop
/// ends soon after HAProxy took server1 out, HAProxy takes it out while it still serves, and
/// it never stops serving while HAProxy still routes to it.
pub fn adaptive_drain_ends_when_the_balancer_took_it_out(c: &Container) -> Result<(), Failed> {
    c.with_config(
        "70-adaptive.toml",
        "[instances.\"group1/server1\"]\ndrain_mode = \"adaptive\"\nlb_fall = 2\ndrain_delay = \"20s\"\n",
        || adaptive_drain_under_haproxy(c),
    )
}

fn adaptive_drain_under_haproxy(c: &Container) -> Result<(), Failed> {
    with_haproxy(c, &[SERVER1], [true, false, false], || {
        let since = c.ok(&["date", "+%Y-%m-%d %H:%M:%S"])?;
        let started = Instant::now();
        let mut stop = c.spawn(&["systemctl", "stop", SERVER1]);
        // (HAProxy routes to server1, server1 serves traffic)
        let mut samples: Vec<(bool, bool)> = Vec::new();
        while stop.try_wait()?.is_none() && started.elapsed() < Duration::from_secs(40) {
            let routed = haproxy_pool(c).is_some_and(|p| p[0]);
            let serving = http(c, "GET", "http://127.0.0.1:8080/healthcheck").0 == 200;
            samples.push((routed, serving));
        }
        let took = started.elapsed();
        let status = stop.wait()?;
        if !status.success() || took > Duration::from_secs(10) {
            return Err(fail(format!(
                "stop with an adaptive drain took {took:?} ({status}); the 20 s delay should have been cut short"
            )));
        }
        if !samples.iter().any(|&(routed, serving)| !routed && serving) {
            return Err(fail(format!(
                "HAProxy never had server1 out while it still served: {samples:?}"
            )));
        }
        if let Some(k) = samples
            .iter()
            .position(|&(routed, serving)| routed && !serving)
        {
            return Err(fail(format!(
                "server1 stopped serving while HAProxy still routed to it (sample {k} of {samples:?})"
            )));
        }
        let journal = c.ok(&[
            "journalctl",
            "-u",
            SERVER1,
            "--since",
            since.trim(),
            "--no-pager",
        ])?;
        if !journal.contains("took it out: each got 2 503s in a row") {
            return Err(fail(format!(
                "the journal does not say why the drain ended:\n{journal}"
            )));
        }
        println!("    adaptive drain: stop took {took:?} with a 20 s drain delay");
        Ok(())
    })
}

/// The demo gateway as a gateway without a graceful stop: SIGTERM cuts what is in flight, so
/// only the drain can save a long request.
const DEMO_CUTTING: &str =
    "start_command = [\"/usr/libexec/gateway-systemd/gateway-demo\", \"--stop-grace\", \"0s\"]\n";

/// Start a long request to `url` (inside the container), stop server1 with `stop` while it
/// runs: (the request's HTTP status, the stop's output, how long the stop took).
fn long_request_during_stop(
    c: &Container,
    url: &str,
    stop: &[&str],
) -> Result<(String, String, Duration), Failed> {
    let curl = c.spawn(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "30",
        url,
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (_, out, err) = run(c, stop);
    let took = started.elapsed();
    let (_, code) = finish(curl)?;
    Ok((code.trim().to_string(), format!("{out}{err}"), took))
}

/// A 4 s request is in flight when server1 is stopped (fixed 1 s drain): the drain waits for
/// it, it completes with 200, and `gatewayctl stop` reports the real drain time. The control:
/// with drain_timeout = 1s the same request is cut, and the report says so.
pub fn requests_in_flight_finish_before_the_gateway_stops(c: &Container) -> Result<(), Failed> {
    let config = format!(
        "[instances.\"group1/server1\"]\n{DEMO_CUTTING}drain_mode = \"fixed\"\ndrain_delay = \"1s\"\n"
    );
    c.with_config("70-in-flight.toml", &config, || {
        c.ok(&["systemctl", "start", SERVER1])?;
        let (code, out, took) = long_request_during_stop(
            c,
            "http://127.0.0.1:8080/echo?delay_ms=4000",
            &["gatewayctl", "stop", "group1/server1"],
        )?;
        if code != "200"
            || !out.contains("group1/server1: drained in")
            || !out.contains("the 1 request(s) in flight finished")
            || took < Duration::from_millis(3000)
        {
            return Err(fail(format!(
                "a 4 s request during a stop got {code:?}; the stop took {took:?}:\n{out}"
            )));
        }
        println!("    a 4 s request survived a stop with a 1 s drain; the stop took {took:?}");
        c.with_config("71-short-timeout.toml", "[instances.\"group1/server1\"]\ndrain_timeout = \"1s\"\n", || {
            c.ok(&["systemctl", "start", SERVER1])?;
            let (code, out, _) = long_request_during_stop(
                c,
                "http://127.0.0.1:8080/echo?delay_ms=6000",
                &["gatewayctl", "stop", "group1/server1"],
            )?;
            if code == "200"
                || !out.contains("drain_timeout (1s) ended the wait with 1 request(s) still in flight")
            {
                return Err(fail(format!(
                    "with drain_timeout = 1s a 6 s request should have been cut, and said so; it got {code:?}:\n{out}"
                )));
            }
            Ok::<(), Failed>(())
        })
    })
}

/// Adaptive drain behind HAProxy (fall 2, 200 ms checks; the only server up is server1): a
/// 3 s request through HAProxy is in flight when server1 stops. HAProxy takes it out within
/// half a second, and the drain still waits for the request, which completes with 200.
pub fn adaptive_drain_waits_for_a_long_request_through_haproxy(
    c: &Container,
) -> Result<(), Failed> {
    let config = format!(
        "[instances.\"group1/server1\"]\n{DEMO_CUTTING}drain_mode = \"adaptive\"\nlb_fall = 2\ndrain_delay = \"20s\"\n"
    );
    c.with_config("70-adaptive-long.toml", &config, || {
        with_haproxy(c, &[SERVER1], [true, false, false], || {
            let since = c.ok(&["date", "+%Y-%m-%d %H:%M:%S"])?;
            let (code, out, took) = long_request_during_stop(
                c,
                "http://127.0.0.1:8000/echo?delay_ms=3000",
                &["systemctl", "stop", SERVER1],
            )?;
            let journal = c.ok(&[
                "journalctl", "-u", SERVER1, "--since", since.trim(), "--no-pager",
            ])?;
            if code != "200"
                || !journal.contains("took it out: each got 2 503s in a row")
                || !journal.contains("the 1 request(s) in flight finished")
                || took > Duration::from_secs(10)
            {
                return Err(fail(format!(
                    "a 3 s request through HAProxy during an adaptive drain got {code:?}; the stop took {took:?}:\n{out}\n{journal}"
                )));
            }
            println!("    adaptive drain: a 3 s request through HAProxy survived; the stop took {took:?}");
            Ok(())
        })
    })
}

/// Behind HAProxy with rise 5 while we assume lb_rise = 1, and with traffic flowing through
/// it: rolling-restart waits until HAProxy routes requests to each restarted instance again,
/// so HAProxy never has two servers out. (The same run without traffic has two out at once:
/// `rolling_restart_waits_for_the_load_balancer`.)
pub fn rolling_restart_watches_the_balancers_traffic(c: &Container) -> Result<(), Failed> {
    c.with_config(
        "70-low-rise.toml",
        "[defaults]\ndrain_mode = \"adaptive\"\nlb_rise = 1\nlb_fall = 1\n",
        || {
            with_haproxy(c, &[SERVER1, SERVER2, SERVER3], [true; 3], || {
                c.ok(&[
                    "systemd-run",
                    "--unit=gateway-test-traffic",
                    "sh",
                    "-c",
                    "while :; do curl -s -o /dev/null --max-time 2 http://127.0.0.1:8000/echo; done",
                ])?;
                // Every launcher has seen HAProxy's traffic before the first drain (a new
                // connection's request counts once a second sample, up to 1 s later while
                // the connections are idle, sees it still open).
                let deadline = Instant::now() + Duration::from_secs(10);
                let seen = loop {
                    let seen = status_json(c, "group1/server1")?;
                    let haproxy = seen["load_balancers"]
                        .as_array()
                        .and_then(|l| l.iter().find(|p| p["agent"] == ""))
                        .cloned()
                        .unwrap_or_default();
                    if haproxy["traffic_ms_ago"].as_u64().is_some_and(|ms| ms <= 3000)
                        || Instant::now() > deadline
                    {
                        break (seen, haproxy);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                };
                let (seen, haproxy) = seen;
                if haproxy["traffic_ms_ago"].as_u64().is_none_or(|ms| ms > 3000) {
                    let ss = c.exec(&["ss", "-tnie", "sport = :8080"]);
                    let gen = c.exec(&["systemctl", "status", "gateway-test-traffic"]);
                    return Err(fail(format!(
                        "server1's launcher did not see HAProxy's traffic: {seen}\n{}\n{}",
                        String::from_utf8_lossy(&ss.stdout),
                        String::from_utf8_lossy(&gen.stdout)
                    )));
                }
                let result = rolling_restart_under_haproxy(c);
                let _ = c.exec(&["systemctl", "stop", "gateway-test-traffic"]);
                let (ok, out, samples) = result?;
                if !ok || !out.contains("routes requests to it again") {
                    return Err(fail(format!("rolling-restart with traffic:\n{out}")));
                }
                let most = most_out_at_once(&samples);
                if most > 1 {
                    return Err(fail(format!(
                        "HAProxy had {most} servers out at once although its traffic showed when it took each back:\n{out}"
                    )));
                }
                if !out.contains("sent no request for 1s") {
                    return Err(fail(format!(
                        "the drains did not watch HAProxy's traffic stop:\n{out}"
                    )));
                }
                println!("    rolling restart with traffic, lb_rise 1 against HAProxy's rise 5: at most {most} out");
                Ok(())
            })
        },
    )
}

/// A drain setting changed while an instance runs takes effect at its next restart, and
/// `gatewayctl status` says so until then.
pub fn status_shows_a_restart_pending(c: &Container) -> Result<(), Failed> {
    c.ok(&["systemctl", "start", SERVER1])?;
    let result = c.with_config(
        "70-pending.toml",
        "[instances.\"group1/server1\"]\ndrain_delay = \"7s\"\n",
        || {
            let (_, out, err) = ctl(c, &["status", "group1/server1"]);
            if !out.contains("group1/server1: restart pending: drain_delay 3s -> 7s") {
                return Err(fail(format!(
                    "status after a drain_delay change:\n{out}{err}"
                )));
            }
            let json = status_json(c, "group1/server1")?;
            if json["restart_pending"]
                .as_array()
                .is_none_or(|a| a.is_empty())
            {
                return Err(fail(format!("status --json lacks restart_pending: {json}")));
            }
            c.ok(&["systemctl", "restart", SERVER1])?;
            let (_, out, _) = ctl(c, &["status", "group1/server1"]);
            if out.contains("restart pending") {
                return Err(fail(format!("still pending after a restart:\n{out}")));
            }
            Ok(())
        },
    );
    let _ = c.exec(&["systemctl", "stop", SERVER1]);
    result
}
