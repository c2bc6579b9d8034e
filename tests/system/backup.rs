//! A cold standby under real systemd: a host of another name, with the package but no
//! installation, restores the production host's archive and its instances come up ready.

use crate::harness::Container;
use crate::migrate::ctl;
use libtest_mimic::Failed;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SERVER1: &str = "gateway@group1-server1.service";
const EDGE: &str = r"gateway@payments\x2deu-edge\x20node\x201.service";

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    match cond {
        true => Ok(()),
        false => Err(what().into()),
    }
}

/// The production host's archive: the demo domain as gw1.example.com knows itself (its name
/// from the kernel, not from the config), taken with gatewayctl backup.
fn production_archive(dir: &Path) -> Result<std::path::PathBuf, Failed> {
    let root = dir.join("gw1");
    crate::common::copy_tree(&crate::common::repo().join("demo/domain"), &root)?;
    let config = root.join("etc/gateway-systemd/gateway.toml");
    let text = fs::read_to_string(&config)?;
    let without_host: String = text
        .lines()
        .filter(|l| !l.starts_with("host ="))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&config, without_host)?;
    fs::create_dir_all(root.join("proc/sys/kernel"))?;
    fs::write(root.join("proc/sys/kernel/hostname"), "gw1.example.com\n")?;
    let out = dir.join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
        .args(["backup", "--to"])
        .arg(&out)
        .env("GATEWAY_SYSTEMD_ROOT", &root)
        .output()?;
    check(run.status.success(), || {
        format!("backup: {}", String::from_utf8_lossy(&run.stderr))
    })?;
    let archive = fs::read_dir(&out)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "zst"))
        .ok_or("no archive written")?;
    Ok(archive)
}

pub fn restore_onto_a_cold_standby_of_another_name() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let archive = production_archive(dir.path())?;
    let name = archive.file_name().unwrap().to_string_lossy().to_string();
    let c = Container::boot(|root| {
        crate::common::install_package(root)?;
        fs::write(root.join("etc/hostname"), "standby.example.com\n").map_err(|e| e.to_string())?;
        for f in [
            archive.clone(),
            gateway_systemd::backup::sidecar_of(&archive),
        ] {
            fs::copy(&f, root.join("root").join(f.file_name().unwrap()))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    c.wait_until_running(Duration::from_secs(60), "the standby's boot")?;
    let path = format!("/root/{name}");
    let (code, out) = ctl(&c, &["verify", &path]);
    check(code == 0, || {
        format!("verify on the standby: exit {code}\n{out}")
    })?;
    // Restored as it is, none of gw1's instances would be this host's: refused, nothing changed.
    let (code, out) = ctl(&c, &["restore", &path]);
    check(
        code == 2 && out.contains("--as-host gw1.example.com"),
        || format!("restore without --as-host: exit {code}\n{out}"),
    )?;
    check(!c.root().join("opt/apigateway/groups").exists(), || {
        "the refused restore wrote the installation".into()
    })?;
    let (code, out) = ctl(&c, &["restore", &path, "--as-host", "gw1.example.com"]);
    check(code == 0, || {
        format!("restore --as-host: exit {code}\n{out}")
    })?;
    // gateway.target started what the restored state enables, and each serves.
    for unit in [SERVER1, EDGE] {
        let state = c.property(unit, "ActiveState")?;
        let text = c.property(unit, "StatusText")?;
        check(state == "active" && text.starts_with("serving"), || {
            format!("{unit} after the restore: {state}, {text:?}\n{out}")
        })?;
    }
    let dropin = fs::read_to_string(
        c.root()
            .join("etc/gateway-systemd/gateway.toml.d/95-restored-host.toml"),
    )?;
    check(dropin.contains("host = \"gw1.example.com\""), || {
        format!("the standby's host drop-in: {dropin}")
    })?;
    // And back: the previous (empty) state, nothing running.
    let (code, out) = ctl(&c, &["restore", "--rollback"]);
    check(code == 0, || {
        format!("restore --rollback: exit {code}\n{out}")
    })?;
    check(!c.root().join("opt/apigateway/groups").exists(), || {
        "after --rollback the restored installation is still there".into()
    })?;
    check(c.property(SERVER1, "ActiveState")? != "active", || {
        format!("{SERVER1} still runs after --rollback")
    })
}

/// The names in the container's backup directory (archives only), sorted.
fn archives_in(c: &Container) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(c.root().join("var/lib/gateway-systemd/backups"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with(".tar.zst"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Wait until gateway-backup.service ran once more after `after` (its start, monotonic µs)
/// and finished; returns its start.
fn next_backup_run(c: &Container, after: u64) -> Result<u64, Failed> {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let started: u64 = c
            .property("gateway-backup.service", "ExecMainStartTimestampMonotonic")?
            .parse()
            .unwrap_or(0);
        let state = c.property("gateway-backup.service", "ActiveState")?;
        if started > after && state != "activating" {
            let result = c.property("gateway-backup.service", "Result")?;
            check(result == "success", || {
                let log = c
                    .ok(&[
                        "journalctl",
                        "-u",
                        "gateway-backup.service",
                        "-n",
                        "20",
                        "--no-pager",
                    ])
                    .unwrap_or_default();
                format!("gateway-backup.service: {state}, result {result}\n{log}")
            })?;
            return Ok(started);
        }
        check(std::time::Instant::now() < deadline, || {
            "gateway-backup.timer did not start the backup within 40s".into()
        })?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stamp_days_ago(days: i64) -> Result<String, Failed> {
    let out = Command::new("date")
        .args(["-u", "-d"])
        .arg(format!("{days} days ago 12:00"))
        .arg("+%Y%m%dT%H%M%SZ")
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The preset enables scheduled backups (not drills); the timer fires the service, which
/// writes an archive only when something changed and then keeps exactly what [backup] keep_*
/// says of a generated series of archives.
pub fn timer_backs_up_when_changed_and_keeps_what_the_policy_says(
    c: &Container,
) -> Result<(), Failed> {
    for (timer, want) in [
        ("gateway-backup.timer", "enabled"),
        ("gateway-drill.timer", "disabled"),
    ] {
        let out = c.exec(&["systemctl", "is-enabled", timer]);
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        check(got == want, || {
            format!("{timer} is {got:?} after the preset")
        })?;
    }
    let dir = c.root().join("var/lib/gateway-systemd/backups");
    fs::create_dir_all(&dir)?;
    // Sixty days of (fake) archives at noon, older than anything the timer writes: retention
    // decides by name and time, and deletes them with their .sha256.
    for days in 1..=60 {
        let name = format!("gw1.example.com-{}.tar.zst", stamp_days_ago(days)?);
        fs::write(dir.join(&name), "old")?;
        fs::write(dir.join(format!("{name}.sha256")), "old")?;
    }
    let timer_dropin = c.root().join("etc/systemd/system/gateway-backup.timer.d");
    fs::create_dir_all(&timer_dropin)?;
    fs::write(
        timer_dropin.join("every-10s.conf"),
        "[Timer]\nOnCalendar=\nOnCalendar=*:*:0/10\nRandomizedDelaySec=0\nAccuracySec=1s\n",
    )?;
    let policy = "[backup]\nkeep_last = 1\nkeep_daily = 3\nkeep_monthly = 2\n";
    let result = c.with_config("90-retention.toml", policy, || -> Result<(), Failed> {
        c.ok(&["systemctl", "restart", "gateway-backup.timer"])?;
        let first = next_backup_run(c, 0)?;
        let after_first = archives_in(c);
        let today: Vec<&String> = after_first
            .iter()
            .filter(|n| !n.contains("T120000Z"))
            .collect();
        check(today.len() == 1, || {
            format!("after the first run: {after_first:?}")
        })?;
        // Kept: today's (last, daily, monthly), 1 and 2 days ago (daily), and the newest of last
        // month (monthly): its last day at noon.
        let last_month = Command::new("date")
            .args(["-u", "-d"])
            .arg(format!(
                "{} -1 day 12:00",
                String::from_utf8_lossy(
                    &Command::new("date")
                        .args(["-u", "+%Y-%m-01"])
                        .output()?
                        .stdout
                )
                .trim()
            ))
            .arg("+%Y%m%dT%H%M%SZ")
            .output()?;
        let mut want = vec![
            today[0].clone(),
            format!("gw1.example.com-{}.tar.zst", stamp_days_ago(1)?),
            format!("gw1.example.com-{}.tar.zst", stamp_days_ago(2)?),
            format!(
                "gw1.example.com-{}.tar.zst",
                String::from_utf8_lossy(&last_month.stdout).trim()
            ),
        ];
        want.sort();
        want.dedup();
        check(after_first == want, || {
            format!("kept after the first scheduled backup:\n{after_first:?}\nwanted:\n{want:?}")
        })?;
        // Nothing changed: the next run keeps no new archive.
        let second = next_backup_run(c, first)?;
        check(archives_in(c) == want, || {
            format!(
                "an unchanged installation got a new archive: {:?}",
                archives_in(c)
            )
        })?;
        let log = c.ok(&[
            "journalctl",
            "-u",
            "gateway-backup.service",
            "--no-pager",
            "-o",
            "cat",
        ])?;
        check(log.contains("unchanged since"), || {
            format!("the unchanged run did not say so:\n{log}")
        })?;
        // The unchanged run confirmed today's archive as the current state, later than it
        // was taken: a drill's recovery point counts from the run.
        let record = fs::read_to_string(dir.join(".last-state-gw1.example.com"))?;
        let record: serde_json::Value = serde_json::from_str(&record)?;
        let taken = gateway_systemd::backup::drill::parse_stamp(
            today[0]
                .trim_start_matches("gw1.example.com-")
                .trim_end_matches(".tar.zst"),
        )
        .unwrap_or(i64::MAX);
        check(
            record["archive"] == today[0].as_str()
                && record["current_at"].as_i64().is_some_and(|at| at > taken),
            || {
                format!(
                    "after the unchanged run, the record is {record} (archive taken at {taken})"
                )
            },
        )?;
        // A change: a new archive, and today's older one goes (daily keeps a day's newest).
        fs::write(
            c.root().join("opt/apigateway/conf/certs/server.key"),
            "rotated key\n",
        )?;
        next_backup_run(c, second)?;
        let after_change = archives_in(c);
        let new: Vec<&String> = after_change.iter().filter(|n| !want.contains(n)).collect();
        check(
            new.len() == 1 && !after_change.contains(today[0]) && after_change.len() == want.len(),
            || format!("after a change: {after_change:?} (before: {want:?})"),
        )?;
        Ok(())
    });
    let _ = fs::remove_dir_all(&timer_dropin);
    let _ = c.ok(&["systemctl", "stop", "gateway-backup.timer"]);
    let _ = c.ok(&["systemctl", "daemon-reload"]);
    let _ = fs::remove_dir_all(&dir);
    result
}

/// Run a shell command inside; its stdout, failing with its output when it fails.
fn sh(c: &Container, script: &str) -> Result<String, Failed> {
    Ok(c.ok(&["sh", "-c", script])?)
}

/// The files in a directory of the container, sorted (temporary files included).
fn files_in(c: &Container, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(c.root().join(dir.trim_start_matches('/')))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `[backup]` hooks around a real database: a `before` hook dumps MariaDB's metrics database
/// into the hook directory, the archive takes the dump, an `after` hook copies the archive
/// off-site; an unchanged dump keeps no new archive; after the database is lost, the restored
/// dump loads back and answers the same query. A failing `before` hook fails the backup with
/// its stderr shown, runs `on_error`, and leaves no archive and no temporary file.
pub fn hooks_dump_a_database_into_the_archive() -> Result<(), Failed> {
    let c = Container::boot(|root| {
        crate::setup_host(root, &crate::common::repo().join("demo/domain"))?;
        crate::harness::run(
            Command::new("systemctl")
                .arg(format!("--root={}", root.display()))
                .args(["disable", "gateway.target"]),
        )
        .map(|_| ())
    })?;
    c.wait_until_running(Duration::from_secs(60), "boot")?;
    c.ok(&["systemctl", "start", "mariadb.service"])?;
    sh(
        &c,
        "mariadb -e \"CREATE DATABASE metrics; CREATE TABLE metrics.samples (id INT PRIMARY KEY, api VARCHAR(64), value BIGINT); \
         INSERT INTO metrics.samples VALUES (1, 'payments', 1200), (2, 'orders', 345), (3, 'edge node 1', 6789);\"",
    )?;
    // mysqldump; Debian 13's MariaDB 11 ships it as mariadb-dump only (the old name is in
    // mariadb-client-compat).
    let config = "[backup]\n\
        before = [\"$(command -v mysqldump || echo mariadb-dump) --databases metrics --skip-dump-date > \\\"$BACKUP_HOOK_DIR/metrics.sql\\\"\"]\n\
        after = [\"mkdir -p /srv/offsite && cp \\\"$BACKUP_ARCHIVE\\\" \\\"$BACKUP_SHA256_FILE\\\" /srv/offsite/\"]\n\
        on_error = [\"printf '%s\\\\n' \\\"$BACKUP_ERROR\\\" > /root/backup-error\"]\n\
        hook_timeout = \"1min\"\n";
    fs::create_dir_all(c.root().join("etc/gateway-systemd/gateway.toml.d"))?;
    fs::write(
        c.root()
            .join("etc/gateway-systemd/gateway.toml.d/80-hooks.toml"),
        config,
    )?;
    let backups = "/var/lib/gateway-systemd/backups";
    let (code, out) = ctl(&c, &["backup", "--if-changed"]);
    check(code == 0, || {
        format!("backup with hooks: exit {code}\n{out}")
    })?;
    let archives: Vec<String> = archives_in(&c);
    check(archives.len() == 1, || {
        format!("archives after the first backup: {archives:?}\n{out}")
    })?;
    let archive = format!("{backups}/{}", archives[0]);
    let listed = tar_list(&c.root().join(archive.trim_start_matches('/')))?;
    check(
        listed
            .lines()
            .any(|l| l == "var/lib/gateway-systemd/backup-hooks/metrics.sql"),
        || format!("the archive lacks the dump:\n{listed}"),
    )?;
    // The after hook's off-site copy checks out where it landed.
    sh(&c, "cd /srv/offsite && sha256sum -c --quiet *.sha256")?;
    // The same data dumped again is the same state: no new archive, no new off-site copy.
    let (code, out) = ctl(&c, &["backup", "--if-changed"]);
    check(code == 0 && out.contains("unchanged since"), || {
        format!("a second backup of the same data: exit {code}\n{out}")
    })?;
    check(archives_in(&c) == archives, || {
        format!(
            "an unchanged dump kept a new archive: {:?}",
            archives_in(&c)
        )
    })?;
    check(files_in(&c, "/srv/offsite").len() == 2, || {
        format!(
            "the after hook ran for an unchanged backup: {:?}",
            files_in(&c, "/srv/offsite")
        )
    })?;

    // The database is lost; the restore brings the dump back, which loads and answers.
    sh(
        &c,
        "mariadb -e 'DROP DATABASE metrics' && rm -rf /var/lib/gateway-systemd/backup-hooks",
    )?;
    let (code, out) = ctl(&c, &["restore", &archive]);
    check(code == 0, || format!("restore: exit {code}\n{out}"))?;
    sh(
        &c,
        "mariadb < /var/lib/gateway-systemd/backup-hooks/metrics.sql",
    )?;
    let rows = sh(
        &c,
        "mariadb -N -e 'SELECT COUNT(*), SUM(value), MAX(api) FROM metrics.samples'",
    )?;
    check(rows.trim() == "3\t8334\tpayments", || {
        format!("the restored database answers {rows:?}")
    })?;

    // A before hook that fails: the backup fails with its stderr, on_error runs, and nothing
    // is left in the backup directory.
    let before = files_in(&c, backups);
    fs::write(
        c.root().join("etc/gateway-systemd/gateway.toml.d/81-failing.toml"),
        "[backup]\nbefore = [\"echo 'mysqldump: Got error: 28: No space left on device' >&2; exit 3\"]\n",
    )?;
    let (code, out) = ctl(&c, &["backup"]);
    check(
        code == 1
            && out.contains("No space left on device")
            && out.contains("exit status 3")
            && out.contains("no archive was written"),
        || format!("a failing before hook: exit {code}\n{out}"),
    )?;
    check(files_in(&c, backups) == before, || {
        format!(
            "the failed backup changed {backups}: {:?} (before: {before:?})",
            files_in(&c, backups)
        )
    })?;
    let told = fs::read_to_string(c.root().join("root/backup-error")).unwrap_or_default();
    check(
        told.contains("before hook") && told.contains("No space left"),
        || format!("on_error was told {told:?}"),
    )?;
    c.ok(&["systemctl", "stop", "mariadb.service"])?;
    Ok(())
}

/// `backup --quiesce`: each running instance of a group is drained, stopped, copied and
/// started again one at a time, so that the group always has an instance serving; the only
/// running instance of its group is copied while it serves. Sampled every 50 ms inside.
pub fn quiesce_takes_one_instance_out_at_a_time(c: &Container) -> Result<(), Failed> {
    const SERVER3: &str = "gateway@group1-server3.service";
    // Each group1 instance leaves a mark in its directory when it stops (as root: `+`, the
    // directory is not the gateway user's here): found in the archive, it proves the
    // directory was read after the stop.
    let marker = "[Service]\nExecStopPost=+/bin/sh -c 'date +%%s.%%N > \"$VINSTDIR/stopped-at\"'\n";
    let dropins: Vec<std::path::PathBuf> = [SERVER1, SERVER3]
        .iter()
        .map(|u| c.root().join(format!("etc/systemd/system/{u}.d")))
        .collect();
    for d in &dropins {
        fs::create_dir_all(d)?;
        fs::write(d.join("90-stop-marker.conf"), marker)?;
    }
    c.ok(&["systemctl", "daemon-reload"])?;
    c.ok(&["systemctl", "start", SERVER1, SERVER3, EDGE])?;
    c.ok(&["sh", "-c", "rm -f /opt/apigateway/groups/*/*/stopped-at"])?;
    let edge_since = c.property(EDGE, "ActiveEnterTimestampMonotonic")?;
    let sampler = c.spawn(&[
        "sh",
        "-c",
        &format!(
            "rm -f /root/samples; while :; do echo \"$(systemctl is-active {SERVER1}) $(systemctl is-active {SERVER3}) $(systemctl is-active '{EDGE}')\" >> /root/samples; sleep 0.05; done"
        ),
    ]);
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let sampler = Stop(sampler);
    let (code, out) = ctl(c, &["backup", "--quiesce", "--to", "/root/quiesced"]);
    // The sampler runs in its own namespace entry: stop it inside too.
    let _ = c.exec(&["pkill", "-f", "/root/samples"]);
    drop(sampler);
    let result = (|| -> Result<(), Failed> {
        check(code == 0, || {
            format!("backup --quiesce: exit {code}\n{out}")
        })?;
        for shown in ["group1/server1", "group1/server3"] {
            check(
                out.contains(&format!("quiesce: {shown}: copied cold")),
                || format!("{shown} was not copied cold:\n{out}"),
            )?;
        }
        check(
            out.contains("payments-eu/edge node 1: the only running instance of group payments-eu"),
            || format!("the lone instance was not said to be copied warm:\n{out}"),
        )?;
        // server3 goes out only once server1 is back.
        let back = out.find("quiesce: group1/server1: copied cold");
        let next = out.find("quiesce: group1/server3: draining");
        check(back.is_some() && next > back, || {
            format!("server3 was stopped before server1 was back:\n{out}")
        })?;
        let samples = fs::read_to_string(c.root().join("root/samples"))?;
        let rows: Vec<Vec<&str>> = samples
            .lines()
            .map(|l| l.split_whitespace().collect())
            .filter(|r: &Vec<&str>| r.len() == 3)
            .collect();
        let out_of = |k: usize| rows.iter().filter(|r| r[k] != "active").count();
        check(rows.len() > 20 && out_of(0) > 0 && out_of(1) > 0, || {
            format!("server1 and server3 were not both seen stopped in turn:\n{samples}")
        })?;
        check(
            !rows.iter().any(|r| r[0] != "active" && r[1] != "active"),
            || format!("group1 was out at once:\n{samples}"),
        )?;
        check(out_of(2) == 0, || {
            format!("edge node 1 went out:\n{samples}")
        })?;
        check(
            c.property(EDGE, "ActiveEnterTimestampMonotonic")? == edge_since,
            || "edge node 1 was restarted".into(),
        )?;
        for unit in [SERVER1, SERVER3, EDGE] {
            check(c.property(unit, "ActiveState")? == "active", || {
                format!("{unit} is not running after the backup")
            })?;
        }
        let name = fs::read_dir(c.root().join("root/quiesced"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .find(|n| n.ends_with(".tar.zst"))
            .ok_or("no archive written")?;
        let (code, verified) = ctl(c, &["verify", &format!("/root/quiesced/{name}")]);
        check(code == 0, || {
            format!("the quiesced archive: exit {code}\n{verified}")
        })?;
        let listed = tar_list(&c.root().join("root/quiesced").join(&name))?;
        let marks = listed
            .lines()
            .filter(|l| l.ends_with("/stopped-at"))
            .count();
        check(marks == 2, || {
            format!(
                "{marks} stop marks in the archive, expected server1's and server3's:\n{listed}"
            )
        })?;
        interrupted_quiesce_starts_the_instance_again(c)
    })();
    for d in &dropins {
        let _ = fs::remove_dir_all(d);
    }
    let _ = c.ok(&["systemctl", "daemon-reload"]);
    let _ = c.ok(&["sh", "-c", "rm -f /opt/apigateway/groups/*/*/stopped-at"]);
    let _ = c.ok(&["systemctl", "stop", SERVER1, SERVER3, EDGE]);
    let _ = fs::remove_dir_all(c.root().join("root/quiesced"));
    result
}

/// SIGTERM (`systemctl stop gateway-backup`, say) while an instance is stopped for its cold
/// copy: the backup ends without an archive or a temporary file, and the instance runs again.
fn interrupted_quiesce_starts_the_instance_again(c: &Container) -> Result<(), Failed> {
    use std::io::BufRead;
    let dir = "/root/interrupted";
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut backup = Reaped(c.spawn(&["gatewayctl", "backup", "--quiesce", "--to", dir]));
    let stderr = backup.0.stderr.take().ok_or("no stderr")?;
    let mut seen = String::new();
    let mut lines = std::io::BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line?;
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("group1/server1: draining and stopping") {
            break;
        }
    }
    c.ok(&["pkill", "-TERM", "-f", "gatewayctl backup --quiesce"])?;
    for line in lines {
        seen.push_str(&line?);
        seen.push('\n');
    }
    let status = backup.0.wait()?;
    check(
        status.code() == Some(1) && seen.contains("interrupted"),
        || format!("backup --quiesce, interrupted: {status}\n{seen}"),
    )?;
    check(c.property(SERVER1, "ActiveState")? == "active", || {
        format!("server1 is not running after the interrupted backup:\n{seen}")
    })?;
    let left = files_in(c, dir);
    check(left.iter().all(|n| n == ".lock"), || {
        format!("the interrupted backup left {left:?}")
    })
}

/// The members of an archive, as GNU tar on the host lists them (the Debian 13 root has no
/// zstd).
fn tar_list(archive: &Path) -> Result<String, Failed> {
    let out = Command::new("tar")
        .arg("--zstd")
        .arg("-tf")
        .arg(archive)
        .output()?;
    check(out.status.success(), || {
        format!(
            "tar -tf {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
