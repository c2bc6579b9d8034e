//! `gatewayctl migrate-initd --apply` and `--rollback` under real systemd with
//! systemd-sysv-generator active: a legacy init script runs group1/server1 (through a stand-in
//! of the vendor's startinstance that starts the demo gateway outside any gateway unit), and a
//! watcher counts the processes serving that instance the whole time.

use crate::harness::Container;
use crate::launcher::http;
use libtest_mimic::Failed;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

const LEGACY: &str = "vshell-group1-server1.service";
const LEGACY2: &str = "vshell-group1-server2.service";
const UNIT: &str = "gateway@group1-server1.service";
const DIR: &str = "/opt/apigateway/groups/group-2/instance-1";
const ROLLBACK_CONFIG: &str = "etc/gateway-systemd/gateway.toml.d/90-migrate-initd.toml";
/// A drop-in that makes server2's unit fail to start.
const BREAK_SERVER2: &str = "etc/gateway-systemd/gateway.toml.d/50-break-server2.toml";

/// Stands in for the vendor's startinstance as the legacy scripts call it (`-d|-k|-s -h DIR`):
/// it runs the demo gateway in the instance directory, detached, as vshell would.
const STARTINSTANCE: &str = r#"#!/bin/sh
op=; dir=
while [ $# -gt 0 ]; do
  case "$1" in -d|-k|-s) op=$1 ;; -h) dir=$2; shift ;; esac
  shift
done
pidfile=/run/legacy-$(basename "$dir").pid
port=$(sed -n 's/^env.PORT.TRAFFIC=//p' "$dir/conf/envSettings.props")
case "$op" in
  -d) cd "$dir" || exit 1
      setsid /usr/libexec/gateway-systemd/gateway-demo -D started-by=legacy </dev/null >/dev/null 2>&1 &
      echo $! > "$pidfile"
      for i in $(seq 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$port/healthcheck" && exit 0
        sleep 0.1
      done
      exit 1 ;;
  -k) [ -f "$pidfile" ] || exit 0
      pid=$(cat "$pidfile"); kill "$pid" 2>/dev/null
      for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; exit 0; }; sleep 0.1; done
      exit 1 ;;
  -s) [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null ;;
esac
"#;

/// Counts, every 10 ms, the demo gateways whose working directory is server1's instance
/// directory, and logs the count whenever it changes.
const WATCHER: &str = r#"#!/bin/sh
last=x
while [ ! -e /run/watch.stop ]; do
  n=0
  for p in $(pgrep -x gateway-demo); do
    [ "$(readlink /proc/$p/cwd 2>/dev/null)" = "$1" ] && n=$((n+1))
  done
  [ "$n" != "$last" ] && echo "$n" >> /run/watch.log && last=$n
  sleep 0.01
done
echo done >> /run/watch.log
"#;

/// Samples, every 20 ms, the health checks on the traffic ports of group1's server1 and server2
/// (whoever runs them: script or unit), and logs the pair of HTTP codes whenever it changes.
const GROUP_SAMPLER: &str = r#"#!/bin/sh
last=x
while [ ! -e /run/sample.stop ]; do
  a=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 http://127.0.0.1:8080/healthcheck)
  b=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 http://127.0.0.1:8081/healthcheck)
  [ "$a $b" != "$last" ] && echo "$a $b" >> /run/sample.log && last="$a $b"
  sleep 0.02
done
echo done >> /run/sample.log
"#;

fn write_exec(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| e.to_string())
}

/// The container as a host that still runs server1 from its init script: our package is
/// installed, but `legacy_initd = true` leaves server1 to its script (the state a rollback
/// leaves, and the state of a host whose operator has not migrated yet).
fn setup(root: &Path) -> Result<(), String> {
    crate::setup_host(root, &crate::common::repo().join("demo/domain"))?;
    write_exec(
        &root.join("opt/apigateway/posix/bin/startinstance"),
        STARTINSTANCE,
    )?;
    write_exec(&root.join("usr/local/sbin/watch-copies"), WATCHER)?;
    write_exec(&root.join("usr/local/sbin/sample-group1"), GROUP_SAMPLER)?;
    // server2 has its own script too, as managedomain makes them.
    let script1 = fs::read_to_string(root.join("etc/init.d/vshell-group1-server1"))
        .map_err(|e| e.to_string())?;
    write_exec(
        &root.join("etc/init.d/vshell-group1-server2"),
        &script1
            .replace("group1-server1", "group1-server2")
            .replace("server1 in group1", "server2 in group1")
            .replace("instance-1", "instance-2"),
    )?;
    fs::create_dir_all(root.join("etc/gateway-systemd/gateway.toml.d"))
        .map_err(|e| e.to_string())?;
    fs::write(
        root.join(ROLLBACK_CONFIG),
        "[instances.\"group1/server1\"]\nlegacy_initd = true\n\n[instances.\"group1/server2\"]\nlegacy_initd = true\n",
    )
    .map_err(|e| e.to_string())?;
    // The rc links update-rc.d makes from the LSB header (start in 2-5, stop in 0, 1, 6).
    for (dir, link) in [
        ("rc0.d", "K01vshell-group1-server1"),
        ("rc1.d", "K01vshell-group1-server1"),
        ("rc2.d", "S01vshell-group1-server1"),
        ("rc3.d", "S01vshell-group1-server1"),
        ("rc4.d", "S01vshell-group1-server1"),
        ("rc5.d", "S01vshell-group1-server1"),
        ("rc6.d", "K01vshell-group1-server1"),
    ] {
        let d = root.join("etc").join(dir);
        fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        for server in ["server1", "server2"] {
            let link = link.replace("server1", server);
            let _ = fs::remove_file(d.join(&link));
            std::os::unix::fs::symlink(format!("../init.d/vshell-group1-{server}"), d.join(link))
                .map_err(|e| e.to_string())?;
        }
    }
    // A distinct mode and an old time, so that an inexact restore shows.
    let script = root.join("etc/init.d/vshell-group1-server1");
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o750))
        .map_err(|e| e.to_string())?;
    let old = std::time::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    fs::File::options()
        .write(true)
        .open(&script)
        .and_then(|f| f.set_times(fs::FileTimes::new().set_modified(old)))
        .map_err(|e| e.to_string())
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(what().into())
    }
}

/// Every legacy script and rc link: type, mode, owner, size, mtime (ns), link target, and
/// a hash of the content.
fn snapshot(c: &Container) -> Result<String, Failed> {
    let listing = c.ok(&[
        "sh",
        "-c",
        "find /etc/init.d /etc/rc0.d /etc/rc1.d /etc/rc2.d /etc/rc3.d /etc/rc4.d /etc/rc5.d /etc/rc6.d \
         -name '*vshell-*' -printf '%p %y %m %U %G %s %T@ %l\\n' | sort; \
         sha256sum /etc/init.d/vshell-* 2>/dev/null | sort",
    ])?;
    Ok(listing)
}

/// systemd's "Starting <unit>" message.
const UNIT_STARTING: &str = "7d4958e842da4a758f6c1cdc7b36dcc5";
/// systemd's "Stopped <unit>" message.
const UNIT_STOPPED: &str = "9d1aaa27d60140bd96365438aad20286";

/// The journal time (monotonic µs) of PID 1's last `message_id` entry about `unit`: the journal
/// keeps systemd's own order of events even for units it has since unloaded.
fn last_event(c: &Container, unit: &str, message_id: &str) -> Result<u64, Failed> {
    let out = c.ok(&[
        "journalctl",
        "-o",
        "json",
        "--output-fields=MESSAGE_ID",
        "_PID=1",
        &format!("UNIT={unit}"),
        &format!("MESSAGE_ID={message_id}"),
    ])?;
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            v["__MONOTONIC_TIMESTAMP"]
                .as_str()
                .and_then(|s| s.parse().ok())
        })
        .max()
        .ok_or_else(|| {
            let shown = c
                .ok(&[
                    "journalctl",
                    "-o",
                    "verbose",
                    "--no-pager",
                    &format!("UNIT={unit}"),
                ])
                .unwrap_or_default();
            format!("no {message_id} entry of PID 1 for {unit} in the journal:\n{shown}").into()
        })
}

/// Run gatewayctl in the container: its exit status and stdout followed by stderr.
pub(crate) fn ctl(c: &Container, args: &[&str]) -> (i32, String) {
    let mut full = vec!["gatewayctl"];
    full.extend_from_slice(args);
    let out = c.exec(&full);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Who answers on a traffic port (8080 server1, 8081 server2): the demo's options say
/// whether the legacy stand-in started it.
fn served_by_legacy_on(c: &Container, port: u16) -> Result<bool, Failed> {
    let (code, body) = http(c, "GET", &format!("http://127.0.0.1:{port}/demo/status"));
    check(code == 200, || {
        format!("nothing serves port {port}: {code} {body}")
    })?;
    Ok(body.contains("started-by=legacy"))
}

fn served_by_legacy(c: &Container) -> Result<bool, Failed> {
    served_by_legacy_on(c, 8080)
}

/// The group sampler, stopped and reaped however the test ends.
struct Sampler(std::process::Child);

impl Drop for Sampler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Sampler {
    fn start(c: &Container) -> Self {
        let s = Sampler(c.spawn(&["/usr/local/sbin/sample-group1"]));
        std::thread::sleep(Duration::from_millis(300));
        s
    }

    /// Stop it; the pairs of codes it saw, in order.
    fn stop(self, c: &Container) -> Result<Vec<String>, Failed> {
        c.ok(&["touch", "/run/sample.stop"])?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log =
                String::from_utf8_lossy(&c.exec(&["cat", "/run/sample.log"]).stdout).to_string();
            if log.lines().last() == Some("done") || Instant::now() > deadline {
                drop(self);
                let _ = c.exec(&["rm", "-f", "/run/sample.stop", "/run/sample.log"]);
                return Ok(log.lines().map(str::to_string).collect());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// At every sample server1 or server2 answered its health check: the group was never down.
fn group_never_down(seen: &[String], during: &str) -> Result<(), Failed> {
    let pairs: Vec<&String> = seen.iter().filter(|l| *l != "done").collect();
    check(
        pairs.iter().all(|l| l.split(' ').any(|code| code == "200")),
        || {
            format!(
                "group1 was down (server1 and server2 both out) during {during}: codes {seen:?}"
            )
        },
    )?;
    check(pairs.len() >= 3, || {
        format!("the sampler saw no change during {during}: {seen:?}")
    })
}

/// The watcher's log: the counts it saw, in order.
/// The watcher process, killed and reaped however the test ends.
struct Watcher(std::process::Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stop_watcher(c: &Container, watcher: Watcher) -> Result<Vec<String>, Failed> {
    c.ok(&["touch", "/run/watch.stop"])?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // /run is the container's own tmpfs: read it from inside.
        let log = String::from_utf8_lossy(&c.exec(&["cat", "/run/watch.log"]).stdout).to_string();
        if log.lines().last() == Some("done") || Instant::now() > deadline {
            drop(watcher);
            let _ = c.exec(&["rm", "-f", "/run/watch.stop", "/run/watch.log"]);
            return Ok(log.lines().map(str::to_string).collect());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn at_most_one_copy(seen: &[String], during: &str) -> Result<(), Failed> {
    check(
        seen.iter()
            .all(|n| n == "done" || n.parse::<u32>().is_ok_and(|n| n <= 1)),
        || format!("two copies of group1/server1 ran during {during}: counts {seen:?}"),
    )?;
    check(seen.len() >= 3, || {
        format!("the watcher saw no change during {during}: {seen:?}")
    })
}

/// Run `migrate-initd STEP` while the watcher counts copies: it must succeed and start `to`,
/// at most one copy may run at any moment, and systemd must have stopped `from` before it
/// began starting `to`. Returns the command's output.
fn hand_over(c: &Container, step: &str, from: &str, to: &str) -> Result<String, Failed> {
    let watcher = Watcher(c.spawn(&["/usr/local/sbin/watch-copies", DIR]));
    std::thread::sleep(Duration::from_millis(300));
    let (code, out) = ctl(c, &["migrate-initd", step]);
    check(code == 0 && out.contains(&format!("started {to}")), || {
        format!("migrate-initd {step}: exit {code}\n{out}")
    })?;
    let seen = stop_watcher(c, watcher)?;
    at_most_one_copy(&seen, step)?;
    let stopped = last_event(c, from, UNIT_STOPPED)?;
    let started = last_event(c, to, UNIT_STARTING)?;
    check(stopped < started, || {
        format!("{to} began starting (journal µs {started}) before {from} stopped (µs {stopped})")
    })?;
    Ok(out)
}

/// apply: legacy service stopped before the unit starts, scripts moved and masked, the unit
/// serves; a copy outside systemd is refused; rollback: everything back exactly.
pub fn apply_and_rollback_never_run_two_copies() -> Result<(), Failed> {
    let c = Container::boot(setup)?;
    // The legacy service, as systemd-sysv-generator made it from the script.
    let source = c.property(LEGACY, "SourcePath")?;
    check(source == "/etc/init.d/vshell-group1-server1", || {
        format!("{LEGACY} comes from {source:?}; the sysv generator should make it")
    })?;
    c.ok(&["systemctl", "start", LEGACY])?;
    c.ok(&["systemctl", "start", LEGACY2])?;
    check(served_by_legacy(&c)?, || {
        "the legacy service does not serve server1".into()
    })?;
    let before = snapshot(&c)?;

    // A second copy is never started: the unit conflicts with the legacy unit...
    let conflicts = c.property(UNIT, "Conflicts")?;
    check(conflicts.contains(LEGACY), || {
        format!("{UNIT} does not conflict with {LEGACY}: {conflicts:?}")
    })?;
    // ...and the launcher refuses while any other process serves the instance.
    c.ok(&["systemctl", "stop", LEGACY])?;
    c.ok(&["/opt/apigateway/posix/bin/startinstance", "-d", "-h", DIR])?;
    let start = c.exec(&["systemctl", "start", UNIT]);
    let status = c.property(UNIT, "ExecMainStatus")?;
    let text = c.property(UNIT, "StatusText")?;
    check(
        !start.status.success() && status == "250" && text.contains("another copy"),
        || format!("{UNIT} started beside a running copy: exit {status}, status {text:?}"),
    )?;
    check(c.property(UNIT, "NRestarts")? == "0", || {
        "systemd retried a start that cannot succeed".into()
    })?;
    c.ok(&["/opt/apigateway/posix/bin/startinstance", "-k", "-h", DIR])?;
    c.ok(&["systemctl", "reset-failed", UNIT])?;
    c.ok(&["systemctl", "start", LEGACY])?;

    // The package's daemon-reload without legacy_initd: the running legacy unit gets masked.
    fs::remove_file(c.root().join(ROLLBACK_CONFIG))?;
    c.ok(&["systemctl", "daemon-reload"])?;
    let (load, active) = (
        c.property(LEGACY, "LoadState")?,
        c.property(LEGACY, "ActiveState")?,
    );
    check(load == "masked" && active == "active", || {
        format!("{LEGACY} is {load}/{active}, expected masked while still active")
    })?;

    // A step that fails (server2's unit cannot start) gives that one instance back to its
    // script and stops there: server1 serves from its unit, server2 from its script again, the
    // rest is untouched, and group1 was never down at once.
    fs::write(
        c.root().join(BREAK_SERVER2),
        "[instances.\"group1/server2\"]\nstart_command = [\"/bin/false\"]\n",
    )?;
    c.ok(&["systemctl", "daemon-reload"])?;
    let watcher = Watcher(c.spawn(&["/usr/local/sbin/watch-copies", DIR]));
    let sampler = Sampler::start(&c);
    let (code, out) = ctl(&c, &["migrate-initd", "--apply"]);
    let group = sampler.stop(&c)?;
    let copies = stop_watcher(&c, watcher)?;
    check(
        code == 1
            && out.contains("migration stopped at group1/server2")
            && out.contains("given back to its script")
            && out.contains(&format!("started {UNIT}")),
        || format!("apply with server2 broken: exit {code}\n{out}"),
    )?;
    group_never_down(&group, "an apply that failed at server2")?;
    at_most_one_copy(&copies, "--apply")?;
    let stopped = last_event(&c, LEGACY, UNIT_STOPPED)?;
    let starting = last_event(&c, UNIT, UNIT_STARTING)?;
    check(stopped < starting, || {
        format!(
            "{UNIT} began starting (journal µs {starting}) before {LEGACY} stopped (µs {stopped})"
        )
    })?;
    check(out.contains(&format!("stopped {LEGACY}")), || {
        format!("apply did not say it stopped {LEGACY}:\n{out}")
    })?;
    check(served_by_legacy_on(&c, 8081)?, || {
        format!("server2 was not given back to its script:\n{out}")
    })?;
    let listing = c.ok(&["ls", "/etc/init.d"])?;
    check(
        listing.contains("vshell-group1-server2")
            && listing.contains("vshell-payments-eu-edge-node-1")
            && !listing.contains("vshell-group1-server1"),
        || format!("after the failed step /etc/init.d holds:\n{listing}\n{out}"),
    )?;
    let left = fs::read_to_string(c.root().join(ROLLBACK_CONFIG)).unwrap_or_default();
    check(
        left.contains("group1/server2") && !left.contains("group1/server1"),
        || format!("{ROLLBACK_CONFIG} does not leave exactly server2 to its script:\n{left}"),
    )?;

    // Fixed, apply again: the rest is migrated, one at a time.
    fs::remove_file(c.root().join(BREAK_SERVER2))?;
    c.ok(&["systemctl", "daemon-reload"])?;
    let sampler = Sampler::start(&c);
    let (code, out) = ctl(&c, &["migrate-initd", "--apply"]);
    let group = sampler.stop(&c)?;
    check(
        code == 0 && out.contains("started gateway@group1-server2.service"),
        || format!("second apply: exit {code}\n{out}"),
    )?;
    group_never_down(&group, "the second apply")?;
    check(!served_by_legacy_on(&c, 8081)?, || {
        "after the second apply server2 is still served by its script".into()
    })?;
    check(!served_by_legacy(&c)?, || {
        "after apply server1 is still served by the legacy copy".into()
    })?;
    check(c.property(UNIT, "ActiveState")? == "active", || {
        format!("{UNIT} is not active after apply")
    })?;
    let listing = c.ok(&["sh", "-c", "ls /etc/init.d /etc/rc2.d /etc/rc0.d"])?;
    check(!listing.contains("vshell-group1-server1"), || {
        format!("the script or its rc links are still in /etc:\n{listing}")
    })?;
    check(
        c.property(LEGACY, "LoadState")? == "masked"
            && c.ok(&[
                "readlink",
                "/etc/systemd/system/vshell-group1-server1.service",
            ])?
            .trim()
                == "/dev/null",
        || format!("{LEGACY} is not masked in /etc after apply"),
    )?;
    let enabled = c.exec(&["systemctl", "is-enabled", UNIT]);
    check(enabled.status.success(), || {
        format!("{UNIT} was not enabled although its script started at boot")
    })?;
    // Starting the legacy name now is refused.
    check(
        !c.exec(&["systemctl", "start", LEGACY]).status.success(),
        || format!("{LEGACY} could be started after apply"),
    )?;

    // Both applies are rolled back, newest first, one instance at a time.
    let sampler = Sampler::start(&c);
    hand_over(&c, "--rollback", UNIT, LEGACY)?;
    group_never_down(&sampler.stop(&c)?, "--rollback")?;
    let after = snapshot(&c)?;
    check(after == before, || {
        format!("rollback did not restore the scripts exactly:\nbefore:\n{before}\nafter:\n{after}")
    })?;
    check(served_by_legacy(&c)?, || {
        "after rollback server1 is not served by the legacy script".into()
    })?;
    check(
        c.property(LEGACY, "LoadState")? == "loaded"
            && c.property(UNIT, "ActiveState")? == "inactive",
        || format!("after rollback {LEGACY} is not loaded or {UNIT} still runs"),
    )?;
    check(
        !c.exec(&["systemctl", "is-enabled", UNIT]).status.success(),
        || format!("{UNIT} is still enabled after rollback"),
    )?;
    // The generator leaves the script's unit usable from now on.
    c.ok(&["systemctl", "daemon-reload"])?;
    check(c.property(LEGACY, "LoadState")? == "loaded", || {
        format!("{LEGACY} is masked again after daemon-reload following rollback")
    })?;
    let wants = c.property("gateway.target", "Wants")?;
    check(!wants.contains("group1-server1"), || {
        format!("gateway.target still wants server1, which its script starts now: {wants}")
    })
}
