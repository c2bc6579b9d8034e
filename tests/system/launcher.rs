//! The launcher under real systemd: readiness, watchdog, crash restarts, drains on stop and
//! restart, the passphrase, journal fields and catalog.
#![allow(dead_code)] // bench/launcher uses its helpers only

use crate::harness::Container;
use libtest_mimic::Failed;
use std::fs;
use std::time::{Duration, Instant};

pub const SERVER1: &str = "gateway@group1-server1.service";
pub const SERVER2: &str = "gateway@group1-server2.service";
pub const EDGE: &str = r"gateway@payments\x2deu-edge\x20node\x201.service";
/// MESSAGE_IDs (see src/journal.rs).
const MSG_READY: &str = "5f0c6a1e2b7d4c0f9a8e3d2c1b0a9f02";
const MSG_UNHEALTHY: &str = "5f0c6a1e2b7d4c0f9a8e3d2c1b0a9f03";
const MSG_DRAIN_BEGIN: &str = "5f0c6a1e2b7d4c0f9a8e3d2c1b0a9f04";
const MSG_DRAIN_END: &str = "5f0c6a1e2b7d4c0f9a8e3d2c1b0a9f05";

fn fail(msg: String) -> Failed {
    msg.into()
}

/// An HTTP request from inside the container: (status, body); status 0 when nothing answered.
pub fn http(c: &Container, method: &str, url: &str) -> (u16, String) {
    let out = c.exec(&[
        "curl",
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "3",
        "-X",
        method,
        url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Poll `f` every 100 ms until it holds; the time it took, or an error naming `what`.
pub fn wait_for(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
) -> Result<Duration, Failed> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(fail(format!(
        "timed out after {timeout:?} waiting for {what}"
    )))
}

fn now_us(c: &Container) -> Result<u64, Failed> {
    Ok(c.ok(&["date", "+%s%6N"])?.trim().parse::<u64>()?)
}

/// Run `f` with an extra config drop-in in force (daemon-reload before and after).
fn with_config(
    c: &Container,
    toml: &str,
    f: impl FnOnce() -> Result<(), Failed>,
) -> Result<(), Failed> {
    let path = c
        .root()
        .join("etc/gateway-systemd/gateway.toml.d/60-launcher-test.toml");
    fs::create_dir_all(path.parent().unwrap())?;
    fs::write(&path, toml)?;
    c.ok(&["systemctl", "daemon-reload"])?;
    let result = f();
    fs::remove_file(&path)?;
    c.ok(&["systemctl", "daemon-reload"])?;
    result
}

fn stop(c: &Container, unit: &str) {
    let _ = c.exec(&["systemctl", "stop", unit]);
    let _ = c.exec(&["systemctl", "reset-failed", unit]);
}

fn journal(c: &Container, unit: &str, since_us: u64) -> Result<String, Failed> {
    Ok(c.ok(&[
        "journalctl",
        "-u",
        unit,
        "--no-pager",
        "-o",
        "verbose",
        &format!("--since=@{}", since_us / 1_000_000),
    ])?)
}

/// `systemctl start` returns only after the gateway's health check answers 200: server2 is
/// told to answer 503 for 3 s.
pub fn start_waits_for_the_health_check(c: &Container) -> Result<(), Failed> {
    stop(c, SERVER2);
    let out = c.ok(&[
        "sh",
        "-c",
        &format!("s=$(date +%s%6N); systemctl start {SERVER2}; e=$(date +%s%6N); echo $s $e"),
    ])?;
    let result = (|| {
        let (s, e) = out
            .trim()
            .split_once(' ')
            .ok_or_else(|| fail(format!("unexpected output {out:?}")))?;
        let (s, e): (u64, u64) = (s.parse()?, e.parse()?);
        let took = Duration::from_micros(e - s);
        if took < Duration::from_millis(2900) {
            return Err(fail(format!(
                "systemctl start returned after {took:?}, before the 3 s start delay was over"
            )));
        }
        let (code, status) = http(c, "GET", "http://127.0.0.1:8081/demo/status");
        let v: serde_json::Value =
            serde_json::from_str(&status).map_err(|e| fail(format!("{code} {status:?}: {e}")))?;
        let first = v["first_healthy_us"].as_u64().unwrap_or(0);
        if first == 0 || first > e {
            return Err(fail(format!(
                "READY before the first 200: start returned at {e} us, first 200 at {first} us"
            )));
        }
        let state = c.property(SERVER2, "ActiveState")?;
        let text = c.property(SERVER2, "StatusText")?;
        if state != "active" || !text.starts_with("serving") {
            return Err(fail(format!("{SERVER2}: {state}, status {text:?}")));
        }
        let (lb, body) = http(c, "GET", "http://127.0.0.1:18086/healthchecklb");
        if lb != 200 || !body.contains("\"serving\"") {
            return Err(fail(format!(
                "LB endpoint answers {lb} {body:?} while serving"
            )));
        }
        Ok(())
    })();
    stop(c, SERVER2);
    result
}

/// Wait until systemd restarted `unit` (NRestarts above `restarts`) and `health` answers 200.
pub fn restarted_and_healthy(
    c: &Container,
    unit: &str,
    restarts: u32,
    health: &str,
) -> Result<Duration, Failed> {
    wait_for(
        Duration::from_secs(40),
        &format!("{unit} to be restarted and healthy"),
        || {
            let n: u32 = c
                .property(unit, "NRestarts")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            n > restarts && http(c, "GET", health).0 == 200
        },
    )
}

/// A gateway that stops answering (process alive) is killed by the watchdog and restarted.
pub fn hung_gateway_is_restarted_by_the_watchdog(c: &Container) -> Result<(), Failed> {
    with_config(
        c,
        "[instances.\"group1/server1\"]\nwatchdog = \"3s\"\n",
        || {
            stop(c, SERVER1);
            let since = now_us(c)?;
            c.ok(&["systemctl", "start", SERVER1])?;
            let result = (|| {
                let restarts: u32 = c.property(SERVER1, "NRestarts")?.parse()?;
                let (code, _) = http(c, "POST", "http://127.0.0.1:8080/demo/hang");
                if code != 200 {
                    return Err(fail(format!("POST /demo/hang answered {code}")));
                }
                let hung_at = Instant::now();
                restarted_and_healthy(c, SERVER1, restarts, "http://127.0.0.1:8080/healthcheck")?;
                let took = hung_at.elapsed();
                // Bound: WatchdogSec (3 s) + RestartSec (2 s) + a start, with slack for this machine.
                if took > Duration::from_secs(15) {
                    return Err(fail(format!("hang to healthy took {took:?}")));
                }
                let log = journal(c, SERVER1, since)?;
                if !log.contains("Watchdog timeout") || !log.contains(MSG_UNHEALTHY) {
                    return Err(fail(format!("the journal of {SERVER1} shows no watchdog timeout / unhealthy entry:\n{log}")));
                }
                eprintln!("    hang to healthy: {took:?}");
                Ok(())
            })();
            stop(c, SERVER1);
            result
        },
    )
}

/// A crash (SIGABRT) restarts the instance, and the launcher reports how the gateway died.
pub fn crashed_gateway_is_restarted(c: &Container) -> Result<(), Failed> {
    stop(c, EDGE);
    let since = now_us(c)?;
    c.ok(&["systemctl", "start", EDGE])?;
    let result = (|| {
        let restarts: u32 = c.property(EDGE, "NRestarts")?.parse()?;
        http(c, "POST", "http://127.0.0.1:8082/demo/crash");
        restarted_and_healthy(c, EDGE, restarts, "http://127.0.0.1:8082/healthcheck")?;
        let log = journal(c, EDGE, since)?;
        if !log.contains("killed by SIGABRT") {
            return Err(fail(format!(
                "the launcher did not report the crash:\n{log}"
            )));
        }
        Ok(())
    })();
    stop(c, EDGE);
    result
}

/// Watch a stop or restart: during the drain the LB endpoint answers 503 while traffic still
/// succeeds. Returns how long the systemctl command took.
fn observe_drain(
    c: &Container,
    verb: &str,
    unit: &str,
    traffic: &str,
    lb: &str,
) -> Result<Duration, Failed> {
    let started = Instant::now();
    let mut child = c.spawn(&["systemctl", verb, unit]);
    let mut saw_503_with_traffic = false;
    while child.try_wait()?.is_none() {
        let (lb_code, body) = http(c, "GET", lb);
        if lb_code == 503 && body.contains("draining") {
            let (code, echo) = http(c, "GET", &format!("{traffic}/echo?during=drain"));
            if code == 200 && echo.contains("during=drain") {
                saw_503_with_traffic = true;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = started.elapsed();
    let status = child.wait()?;
    if !status.success() {
        return Err(fail(format!("systemctl {verb} {unit} failed: {status}")));
    }
    if !saw_503_with_traffic {
        return Err(fail(format!(
            "during `systemctl {verb}` the LB endpoint never answered 503 while traffic succeeded"
        )));
    }
    if took < Duration::from_millis(2900) {
        return Err(fail(format!(
            "systemctl {verb} took {took:?}, shorter than the 3 s drain"
        )));
    }
    Ok(took)
}

/// `systemctl stop` drains: LB health 503 for the drain delay while traffic is still served,
/// then the gateway exits and the unit is inactive (not failed).
pub fn stop_drains_then_stops(c: &Container) -> Result<(), Failed> {
    stop(c, EDGE);
    let since = now_us(c)?;
    c.ok(&["systemctl", "start", EDGE])?;
    let took = observe_drain(
        c,
        "stop",
        EDGE,
        "http://127.0.0.1:8082",
        "http://127.0.0.1:18087/healthchecklb",
    )?;
    let state = c.property(EDGE, "ActiveState")?;
    let result = c.property(EDGE, "Result")?;
    if state != "inactive" || result != "success" {
        return Err(fail(format!(
            "after stop {EDGE} is {state} (result {result})"
        )));
    }
    if http(c, "GET", "http://127.0.0.1:8082/healthcheck").0 != 0 {
        return Err(fail("the gateway still answers after stop".into()));
    }
    let log = journal(c, EDGE, since)?;
    if !log.contains(MSG_DRAIN_BEGIN) || !log.contains(MSG_DRAIN_END) {
        return Err(fail(format!(
            "no drain-begin/drain-end entries in the journal:\n{log}"
        )));
    }
    eprintln!("    stop with a 3 s drain took {took:?}");
    Ok(())
}

/// `systemctl restart` drains too, and the instance is serving again afterwards.
pub fn restart_drains(c: &Container) -> Result<(), Failed> {
    stop(c, EDGE);
    c.ok(&["systemctl", "start", EDGE])?;
    let result = (|| {
        let before = c.property(EDGE, "MainPID")?;
        observe_drain(
            c,
            "restart",
            EDGE,
            "http://127.0.0.1:8082",
            "http://127.0.0.1:18087/healthchecklb",
        )?;
        let after = c.property(EDGE, "MainPID")?;
        let (lb, _) = http(c, "GET", "http://127.0.0.1:18087/healthchecklb");
        if before == after || lb != 200 {
            return Err(fail(format!(
                "after restart: MainPID {before} -> {after}, LB endpoint {lb}"
            )));
        }
        Ok(())
    })();
    stop(c, EDGE);
    result
}

/// Where the passphrase tests keep the secret inside the container: grep reads its pattern from
/// this file, so that no command line of ours holds the secret.
const SECRET_PATTERN: &str = "/root/secret-pattern";

/// A shell script (`sh -c PROC_SCAN sh <pattern file>`) that greps every process's command line
/// and environment for the pattern file's text one file at a time, so that grep's exit status is
/// known for each: `MATCH <file>` (exit 0), `CLEAN <file>` (exit 1), `GONE <file>` (an error, but
/// the process exited meanwhile), `ERROR ...` (an error on a file that is still there, twice;
/// or a missing or empty pattern file, with which grep -f would find nothing and pass).
pub const PROC_SCAN: &str = r#"
pat="$1"
[ -s "$pat" ] || { echo "ERROR the pattern file $pat is missing or empty"; exit 0; }
for f in /proc/[0-9]*/cmdline /proc/[0-9]*/environ; do
  for try in 1 2; do
    err=$(grep -q -a -F -f "$pat" -- "$f" 2>&1); rc=$?
    [ "$rc" -le 1 ] && break
  done
  case $rc in
    0) echo "MATCH $f" ;;
    1) echo "CLEAN $f" ;;
    *) if [ -e "$f" ]; then echo "ERROR $f: grep exited $rc: $err"; else echo "GONE $f"; fi ;;
  esac
done
"#;

/// What [`PROC_SCAN`] read, and which of those files hold the secret.
#[derive(Debug, Default)]
pub struct ProcScan {
    /// Files whose grep exited 0.
    pub matched: std::collections::BTreeSet<String>,
    /// Files grep read (exit 0 or 1).
    pub read: std::collections::BTreeSet<String>,
}

/// Parse [`PROC_SCAN`]'s output; any grep error (or a scan that did not run) is an Err, never
/// "not found".
pub fn parse_proc_scan(out: &std::process::Output) -> Result<ProcScan, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the /proc scan failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut scan = ProcScan::default();
    for line in text.lines().filter(|l| !l.is_empty()) {
        match line.split_once(' ') {
            Some(("MATCH", f)) => {
                scan.matched.insert(f.to_string());
                scan.read.insert(f.to_string());
            }
            Some(("CLEAN", f)) => {
                scan.read.insert(f.to_string());
            }
            Some(("GONE", _)) => {}
            _ => return Err(format!("the /proc scan failed: {line}")),
        }
    }
    Ok(scan)
}

/// The secret is in no process's command line or environment but the control's: the scan
/// found it in `/proc/<control>/environ` (where it was put, so the scan can find it at all) and
/// nowhere else, and it read the command line and environment of every process in `must_read`
/// (the launcher and the gateway, which held the secret).
pub fn judge_proc_scan(scan: &ProcScan, control: u32, must_read: &[u32]) -> Result<(), String> {
    let control_file = format!("/proc/{control}/environ");
    if !scan.matched.contains(&control_file) {
        return Err(format!(
            "the /proc scan did not find the secret in {control_file}, where the control process holds it: the scan cannot see it anywhere (read {} files)",
            scan.read.len()
        ));
    }
    let leaks: Vec<&String> = scan
        .matched
        .iter()
        .filter(|f| **f != control_file)
        .collect();
    if !leaks.is_empty() {
        return Err(format!("the passphrase is visible in {leaks:?}"));
    }
    for pid in must_read {
        for file in ["cmdline", "environ"] {
            let f = format!("/proc/{pid}/{file}");
            if !scan.read.contains(&f) {
                return Err(format!("the /proc scan did not read {f}"));
            }
        }
    }
    Ok(())
}

/// grep's verdict from its exit status: Ok(true) on a match (0), Ok(false) on none (1), Err
/// when grep failed (2: a file or the pattern file unreadable), which must not pass as "none".
pub fn grep_found(out: &std::process::Output, what: &str) -> Result<bool, String> {
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(format!(
            "grep over {what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// Scan every process of the container for the secret of [`SECRET_PATTERN`] (see
/// [`judge_proc_scan`]), with a control process holding it in its environment meanwhile.
fn secret_in_no_process(c: &Container, must_read: &[u32]) -> Result<(), String> {
    let pid_file = c.root().join("root/leak-control.pid");
    let _ = fs::remove_file(&pid_file);
    // The control takes the secret from the file too: it is in its environment only.
    let mut control = c.spawn(&[
        "sh",
        "-c",
        "GATEWAY_LEAK_CONTROL=$(cat \"$1\"); export GATEWAY_LEAK_CONTROL; echo $$ > /root/leak-control.pid.tmp; mv /root/leak-control.pid.tmp /root/leak-control.pid; exec sleep 60",
        "sh",
        SECRET_PATTERN,
    ]);
    let result = (|| {
        let mut pid = 0u32;
        wait_for(Duration::from_secs(5), "the control process", || {
            pid = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            pid != 0
                && c.ok(&["cat", &format!("/proc/{pid}/comm")])
                    .is_ok_and(|comm| comm.trim() == "sleep")
        })
        .map_err(|e| e.message().unwrap_or("timed out").to_string())?;
        let scan = parse_proc_scan(&c.exec(&["sh", "-c", PROC_SCAN, "sh", SECRET_PATTERN]))?;
        judge_proc_scan(&scan, pid, must_read)
    })();
    if let Ok(pid) = fs::read_to_string(&pid_file) {
        let _ = c.exec(&["kill", pid.trim()]);
    }
    let _ = control.kill();
    let _ = control.wait();
    let _ = fs::remove_file(&pid_file);
    result
}

/// The secret of [`SECRET_PATTERN`] is in no journal entry. Controls: the export holds the
/// gateway's own `listening` line (it covers the gateway's output), and the same grep finds the
/// secret in the pattern file itself.
fn secret_in_no_journal_entry(c: &Container, gateway_pid: u64) -> Result<(), String> {
    let export = "/root/journal.export";
    let listening = format!("gateway-demo: pid {gateway_pid} listening");
    let result = (|| {
        let mut covered = Ok(false);
        let _ = wait_for(
            Duration::from_secs(5),
            "the gateway's journal entry",
            || {
                covered = c
                    .ok(&[
                        "sh",
                        "-c",
                        &format!("journalctl -o export --no-pager > {export}"),
                    ])
                    .and_then(|_| {
                        grep_found(
                            &c.exec(&["grep", "-q", "-a", "-F", "-e", &listening, export]),
                            "the journal export",
                        )
                    });
                !matches!(covered, Ok(false))
            },
        );
        if !covered? {
            return Err(format!(
                "the journal export lacks the gateway's {listening:?}: it cannot show a leak either"
            ));
        }
        let grep_secret = |file: &str| {
            let out = c.exec(&["grep", "-c", "-a", "-F", "-f", SECRET_PATTERN, file]);
            grep_found(&out, file).map(|found| {
                (
                    found,
                    String::from_utf8_lossy(&out.stdout).trim().to_string(),
                )
            })
        };
        if !grep_secret(SECRET_PATTERN)?.0 {
            return Err(format!(
                "grep -f {SECRET_PATTERN} does not find the secret in {SECRET_PATTERN} itself"
            ));
        }
        match grep_secret(export)? {
            (false, _) => Ok(()),
            (true, count) => Err(format!("the passphrase is in {count} journal export lines")),
        }
    })();
    let _ = c.exec(&["rm", "-f", export]);
    result
}

/// server1's demo gateway got exactly `secret` (its length and digest, the secret itself is not
/// in the status), and the secret (held in [`SECRET_PATTERN`], so that no command line of ours
/// holds it) is in no process's command line or environment and in no journal entry.
fn passphrase_delivered_without_trace(c: &Container, secret: &str) -> Result<(), Failed> {
    let pattern = fs::read_to_string(c.root().join(SECRET_PATTERN.trim_start_matches('/')))?;
    if pattern != secret {
        return Err(fail(format!(
            "{SECRET_PATTERN} does not hold the secret: the leak checks would look for something else"
        )));
    }
    let (_, status) = http(c, "GET", "http://127.0.0.1:8080/demo/status");
    if status.contains(secret) {
        return Err(fail(
            "the demo gateway's status shows the passphrase".into(),
        ));
    }
    let v: serde_json::Value = serde_json::from_str(&status)?;
    // The SHA-256 of what the demo read, against sha256sum's of the secret.
    let digest = c.ok(&["sha256sum", SECRET_PATTERN])?;
    let digest = digest.split_whitespace().next().unwrap_or_default();
    if v["passphrase_bytes"].as_u64() != Some(secret.len() as u64)
        || v["passphrase_digest"].as_str() != Some(digest)
    {
        return Err(fail(format!(
            "the gateway did not get the passphrase ({} bytes, digest {digest}): {status}",
            secret.len()
        )));
    }
    let gateway_pid = v["pid"]
        .as_u64()
        .ok_or_else(|| fail(format!("no pid in the status: {status}")))?;
    let launcher_pid: u64 = c.property(SERVER1, "MainPID")?.parse()?;
    if launcher_pid == 0 {
        return Err(fail(format!("{SERVER1} has no MainPID")));
    }
    secret_in_no_process(c, &[launcher_pid as u32, gateway_pid as u32])?;
    secret_in_no_journal_entry(c, gateway_pid)?;
    Ok(())
}

/// The passphrase reaches the gateway on stdin from LoadCredential=, and appears in no
/// command line, no environment and no journal entry.
pub fn passphrase_is_delivered_and_never_exposed(c: &Container) -> Result<(), Failed> {
    let secret = format!("S3cret-{}-Passphrase", std::process::id());
    let cred = c.root().join("etc/gateway-systemd/credentials/passphrase");
    fs::create_dir_all(cred.parent().unwrap())?;
    fs::write(&cred, &secret)?;
    std::os::unix::fs::PermissionsExt::set_mode(&mut fs::metadata(&cred)?.permissions(), 0o600);
    fs::set_permissions(&cred, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    // grep reads the secret from a file, so that no command line of ours holds it either.
    let pattern = c.root().join(SECRET_PATTERN.trim_start_matches('/'));
    fs::write(&pattern, &secret)?;
    let result = with_config(
        c,
        "[instances.\"group1/server1\"]\ncredentials = [\"passphrase\"]\n\
         start_command = [\"/usr/libexec/gateway-systemd/gateway-demo\", \"--require-passphrase\"]\n",
        || {
            stop(c, SERVER1);
            c.ok(&["systemctl", "start", SERVER1])?;
            let r = passphrase_delivered_without_trace(c, &secret);
            stop(c, SERVER1);
            r
        },
    );
    fs::remove_file(&cred)?;
    fs::remove_file(&pattern)?;
    result
}

/// The launcher's entries carry GATEWAY_GROUP/INSTANCE/UNIT, and `journalctl -x` explains
/// them with the catalog.
pub fn journal_fields_and_catalog(c: &Container) -> Result<(), Failed> {
    stop(c, SERVER1);
    c.ok(&["systemctl", "start", SERVER1])?;
    let result = (|| {
        let json = c.ok(&[
            "journalctl",
            "GATEWAY_INSTANCE=server1",
            "-o",
            "json",
            "--no-pager",
        ])?;
        let ready = json
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["MESSAGE_ID"] == MSG_READY)
            .ok_or_else(|| {
                fail(format!(
                    "no ready entry with GATEWAY_INSTANCE=server1:\n{json}"
                ))
            })?;
        if ready["GATEWAY_GROUP"] != "group1"
            || ready["GATEWAY_UNIT"] != SERVER1
            || ready["_SYSTEMD_UNIT"] != SERVER1
        {
            return Err(fail(format!("fields of the ready entry: {ready}")));
        }
        let explained = c.ok(&[
            "journalctl",
            "-x",
            "--no-pager",
            &format!("MESSAGE_ID={MSG_READY}"),
            "GATEWAY_INSTANCE=server1",
        ])?;
        if !explained.contains("API Gateway instance group1/server1 is ready")
            || !explained.contains("answered its health check with 200")
        {
            return Err(fail(format!(
                "journalctl -x shows no catalog text:\n{explained}"
            )));
        }
        // The gateway's own output lands under the same unit.
        let own = c.ok(&["journalctl", "-u", SERVER1, "--no-pager", "-o", "cat"])?;
        if !own.contains("gateway-demo: pid") {
            return Err(fail(format!(
                "the gateway's own output is not in the unit's journal:\n{own}"
            )));
        }
        Ok(())
    })();
    stop(c, SERVER1);
    result
}

/// A slow start that keeps making progress outlives `TimeoutStartSec=` (half of start_timeout)
/// because the launcher extends it, but never outlives `start_timeout`.
pub fn slow_start_is_extended_but_bounded(c: &Container) -> Result<(), Failed> {
    let config = |delay: &str| {
        format!(
            "[instances.\"group1/server2\"]\nstart_timeout = \"6s\"\ndrain_delay = 0\n\
             start_command = [\"/usr/libexec/gateway-systemd/gateway-demo\", \"--start-delay\", \"{delay}\"]\n"
        )
    };
    with_config(c, &config("4500ms"), || {
        stop(c, SERVER2);
        let window = c.property(SERVER2, "TimeoutStartUSec")?;
        if window != "3s" {
            return Err(fail(format!(
                "TimeoutStartUSec is {window}, expected half of start_timeout 6s"
            )));
        }
        let started = Instant::now();
        c.ok(&["systemctl", "start", SERVER2])?;
        let took = started.elapsed();
        stop(c, SERVER2);
        if took < Duration::from_millis(4400) {
            return Err(fail(format!(
                "start returned after {took:?}, before the 4.5 s start delay"
            )));
        }
        Ok(())
    })?;
    with_config(c, &config("60s"), || {
        stop(c, SERVER2);
        let started = Instant::now();
        let out = c.exec(&["systemctl", "start", SERVER2]);
        let took = started.elapsed();
        let result = c.property(SERVER2, "Result")?;
        stop(c, SERVER2);
        if out.status.success() || result != "timeout" {
            return Err(fail(format!(
                "a start that never gets healthy ended with {} (result {result})",
                out.status
            )));
        }
        if took < Duration::from_millis(5500) || took > Duration::from_secs(12) {
            return Err(fail(format!(
                "the endless start was stopped after {took:?}; start_timeout is 6 s"
            )));
        }
        Ok(())
    })
}

/// The Node Manager runs under the same launcher (`gateway-launch --nodemanager`).
pub fn node_manager_starts_and_stops(c: &Container) -> Result<(), Failed> {
    let unit = "gateway-nodemanager.service";
    stop(c, unit);
    c.ok(&["systemctl", "start", unit])?;
    let state = c.property(unit, "ActiveState")?;
    let (code, _) = http(c, "GET", "http://127.0.0.1:8090/healthcheck");
    stop(c, unit);
    if state != "active" || code != 200 {
        return Err(fail(format!("{unit}: {state}, health {code}")));
    }
    let result = c.property(unit, "Result")?;
    if result != "success" {
        return Err(fail(format!("{unit} stopped with result {result}")));
    }
    Ok(())
}

/// With `ask_passphrase = true` the passphrase is asked through systemd's password agent
/// protocol (answered here like an agent would), reaches the gateway, and leaves no trace.
pub fn asked_passphrase_reaches_the_gateway(c: &Container) -> Result<(), Failed> {
    let secret = format!("Asked-{}-Secret", std::process::id());
    let pattern = c.root().join("root/secret-pattern");
    fs::write(&pattern, &secret)?;
    // A password agent: answer the first question whose Id is ours through its socket.
    let agent = c.root().join("root/answer-agent.py");
    fs::write(
        &agent,
        r#"import glob, socket, time, configparser
secret = open('/root/secret-pattern').read()
deadline = time.time() + 30
while time.time() < deadline:
    for ask in glob.glob('/run/systemd/ask-password/ask.*'):
        cp = configparser.ConfigParser(interpolation=None)
        cp.read(ask)
        if cp['Ask'].get('Id', '').startswith('gateway:'):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.sendto(b'+' + secret.encode(), cp['Ask']['Socket'])
            raise SystemExit(0)
    time.sleep(0.05)
raise SystemExit('no question from gateway-launch --ask-passphrase')
"#,
    )?;
    let result = with_config(
        c,
        "[instances.\"group1/server1\"]\nask_passphrase = true\n\
         start_command = [\"/usr/libexec/gateway-systemd/gateway-demo\", \"--require-passphrase\"]\n",
        || {
            stop(c, SERVER1);
            let mut starting = c.spawn(&["systemctl", "start", SERVER1]);
            let answered = c.exec(&["/usr/bin/python3", "/root/answer-agent.py"]);
            let started = starting.wait()?;
            let r = (|| {
                if !answered.status.success() {
                    return Err(fail(format!("the agent got no question: {}", String::from_utf8_lossy(&answered.stderr))));
                }
                if !started.success() {
                    return Err(fail(format!("systemctl start {SERVER1} failed: {started}")));
                }
                let left = c.exec(&["sh", "-c", "ls -A /run/gateway/group-2/instance-1/"]);
                let listing = String::from_utf8_lossy(&left.stdout).to_string();
                if listing.contains("passphrase") {
                    return Err(fail(format!("the handed-over passphrase file is still there: {listing}")));
                }
                passphrase_delivered_without_trace(c, &secret)
            })();
            stop(c, SERVER1);
            r
        },
    );
    fs::remove_file(&pattern)?;
    fs::remove_file(&agent)?;
    result
}

/// Two launchers of one instance directory started at the same moment, the second through a
/// symlinked install path and on other ports (so no port probe can see the first): exactly one
/// runs, the other exits 250 naming the directory's lock. Before the lock both ran.
pub fn never_two_copies_even_at_the_same_moment(c: &Container) -> Result<(), Failed> {
    stop(c, SERVER1);
    c.ok(&["ln", "-sfn", "/opt/apigateway", "/opt/apigateway-link"])?;
    let copy = "gateway-copy-test";
    let _ = c.exec(&["systemctl", "reset-failed", &format!("{copy}.service")]);
    let transient = [
        "systemd-run",
        "--quiet",
        &format!("--unit={copy}"),
        "-p",
        "Type=notify",
        "-p",
        "RuntimeDirectory=gateway-copy-test",
        "-p",
        "TimeoutStartSec=20s",
        "-E",
        "VDISTDIR=/opt/apigateway-link",
        "-E",
        "VINSTDIR=/opt/apigateway-link/groups/group-2/instance-1",
        "-E",
        "GATEWAY_GROUP=group1",
        "-E",
        "GATEWAY_INSTANCE=server1",
        "-E",
        "GATEWAY_HEALTH_URL=http://127.0.0.1:18999/healthcheck",
        "-E",
        "GATEWAY_LB_HEALTH=",
        "-E",
        r#"GATEWAY_START_COMMAND=["/usr/libexec/gateway-systemd/gateway-demo","--listen","127.0.0.1:18999"]"#,
        "/usr/libexec/gateway-systemd/gateway-launch",
    ];
    let second = c.spawn(&transient);
    let first = c.exec(&["systemctl", "start", SERVER1]);
    let second = second.wait_with_output()?;
    let copy_result = c.property(&format!("{copy}.service"), "ExecMainStatus")?;
    let unit_state = c.property(SERVER1, "ActiveState")?;
    let unit_status = c.property(SERVER1, "ExecMainStatus")?;
    let copy_log = c
        .ok(&[
            "journalctl",
            "--no-pager",
            "-o",
            "cat",
            "-u",
            &format!("{copy}.service"),
        ])
        .unwrap_or_default();
    let unit_log = journal(c, SERVER1, 0).unwrap_or_default();
    let _ = c.exec(&["systemctl", "stop", &format!("{copy}.service")]);
    let _ = c.exec(&["systemctl", "reset-failed", &format!("{copy}.service")]);
    stop(c, SERVER1);
    let _ = c.exec(&["rm", "-f", "/opt/apigateway-link"]);
    let unit_ran = first.status.success() && unit_state == "active";
    let copy_ran = second.status.success();
    let refused_by_lock = |log: &str| log.contains("holds the directory's lock");
    if unit_ran == copy_ran {
        return Err(fail(format!(
            "unit ran: {unit_ran} ({unit_state}, status {unit_status}), copy ran: {copy_ran} (status {copy_result}); exactly one may\ncopy's journal:\n{copy_log}"
        )));
    }
    if !(refused_by_lock(&copy_log) || refused_by_lock(&unit_log)) {
        return Err(fail(format!(
            "the refused copy does not name the lock:\n{copy_log}\n{unit_log}"
        )));
    }
    Ok(())
}
