//! Disaster-recovery drills under real systemd: `gatewayctl drill` boots archives of the demo
//! domain (taken in the past with faketime) on a standby's image whose install dir is a mount
//! of its own and whose own config would break an instance if it leaked through.

use crate::harness::{run, Image};
use libtest_mimic::Failed;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DAY: i64 = 86_400;

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    match cond {
        true => Ok(()),
        false => Err(what().into()),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The demo domain as gw1.example.com has it: gateway.target enabled, edge node 1 started
/// through a script of the vendor's tree (which only the image has), every file dated
/// `old` but topology.json dated `newest`.
fn production_host(dir: &Path, old: i64, newest: i64) -> Result<PathBuf, Failed> {
    let root = dir.join("gw1");
    crate::common::copy_tree(&crate::common::repo().join("demo/domain"), &root)?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/gateway.target",
        wants.join("gateway.target"),
    )?;
    let mut config = fs::read_to_string(root.join("etc/gateway-systemd/gateway.toml"))?;
    config.push_str(
        "\n[instances.\"payments-eu/edge node 1\"]\nstart_command = [\"/opt/apigateway/posix/bin/run-gateway\"]\n",
    );
    fs::write(root.join("etc/gateway-systemd/gateway.toml"), config)?;
    fs::create_dir_all(root.join("proc/sys/kernel"))?;
    fs::write(root.join("proc/sys/kernel/hostname"), "gw1.example.com\n")?;
    run(Command::new("find")
        .arg(&root)
        .args(["-exec", "touch", "-h", "-d"])
        .arg(format!("@{old}"))
        .args(["{}", "+"]))?;
    run(Command::new("touch")
        .arg("-d")
        .arg(format!("@{newest}"))
        .arg(root.join("opt/apigateway/groups/topology.json")))?;
    Ok(root)
}

/// `gatewayctl backup` of `root` as if run at `at`.
fn backup_at(root: &Path, out: &Path, at: i64) -> Result<PathBuf, Failed> {
    let before: Vec<PathBuf> = fs::read_dir(out)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let stamp = Command::new("date")
        .args(["-u", "-d"])
        .arg(format!("@{at}"))
        .arg("+%Y-%m-%d %H:%M:%S")
        .output()?;
    let o = Command::new("faketime")
        .arg("-f")
        .arg(format!(
            "@{}",
            String::from_utf8_lossy(&stamp.stdout).trim()
        ))
        .env("TZ", "UTC")
        .arg(env!("CARGO_BIN_EXE_gatewayctl"))
        .args(["backup", "--to"])
        .arg(out)
        .env("GATEWAY_SYSTEMD_ROOT", root)
        .output()?;
    check(o.status.success(), || {
        format!("backup: {}", String::from_utf8_lossy(&o.stderr))
    })?;
    fs::read_dir(out)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "zst") && !before.contains(p))
        .ok_or_else(|| "no archive written".into())
}

/// Every path of a tree with its metadata, to see that nothing changed.
fn listing(root: &Path) -> Result<String, Failed> {
    let out = run(Command::new("find")
        .arg(root)
        .args(["-printf", "%P %y %m %s %T@\\n"]))?;
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    Ok(lines.join("\n"))
}

fn drill(args: &[&str]) -> Result<(i32, Value, String), Failed> {
    let o = Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
        .arg("drill")
        .args(args)
        .arg("--json")
        .output()?;
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "drill --json printed no JSON ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    })?;
    Ok((o.status.code().unwrap_or(-1), v, text))
}

fn mounts_of_drills() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("gateway-drill."))
        .map(str::to_string)
        .collect()
}

pub fn drill_measures_recovery_time_and_point() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let t = now();
    let newest_file = t - DAY - 5 * 3600;
    let host = production_host(dir.path(), t - 30 * DAY, newest_file)?;
    let out = dir.path().join("backups");
    // Three archives: 4 and 3 days old, then (a 2-day gap) one 1 day old, the newest. The
    // middle one's server3 cannot start.
    backup_at(&host, &out, t - 4 * DAY)?;
    let config_path = host.join("etc/gateway-systemd/gateway.toml");
    let config = fs::read_to_string(&config_path)?;
    fs::write(
        &config_path,
        format!("{config}\n[instances.\"group1/server3\"]\nstart_command = [\"/bin/false\"]\n"),
    )?;
    let broken = backup_at(&host, &out, t - 3 * DAY)?;
    fs::write(&config_path, &config)?;
    run(Command::new("touch")
        .arg("-d")
        .arg(format!("@{}", t - 30 * DAY))
        .arg(&config_path))?;
    let newest = backup_at(&host, &out, t - DAY)?;

    // The standby's image: the package, the vendor's tree on a mount of its own, and a config
    // of its own that would break server1 if it leaked into the drill.
    let mut image = Image::prepare(|root| {
        crate::common::install_package(root)?;
        fs::write(root.join("etc/hostname"), "standby.example.com\n").map_err(|e| e.to_string())?;
        let dropins = root.join("etc/gateway-systemd/gateway.toml.d");
        fs::create_dir_all(&dropins).map_err(|e| e.to_string())?;
        fs::write(
            dropins.join("99-standby.toml"),
            "[instances.\"group1/server1\"]\nstart_command = [\"/bin/false\"]\n",
        )
        .map_err(|e| e.to_string())
    })?;
    let install = image.root().join("opt/apigateway");
    fs::create_dir_all(&install)?;
    image.mount(
        Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&install),
        &install,
    )?;
    fs::create_dir_all(install.join("posix/bin"))?;
    let script = install.join("posix/bin/run-gateway");
    fs::write(
        &script,
        "#!/bin/sh\nexec /usr/libexec/gateway-systemd/gateway-demo \"$@\"\n",
    )?;
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let before = listing(&image.upper())?;
    let image_root = image.root().display().to_string();

    // The newest archive, by default: every instance recovers.
    let (code, r, text) = drill(&["--dir", &out.display().to_string(), "--image", &image_root])?;
    check(code == 0 && r["passed"] == true, || {
        format!("the drill of the newest archive failed (exit {code}):\n{text}")
    })?;
    check(
        r["archive"].as_str() == Some(&*newest.display().to_string()),
        || format!("drilled {} instead of the newest archive", r["archive"]),
    )?;
    let mut names: Vec<&str> = r["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
        .collect();
    names.sort();
    check(
        names
            == [
                "Node Manager",
                "group1/server1",
                "group1/server3",
                "payments-eu/edge node 1",
            ],
        || format!("instances drilled: {names:?} (server2 is not autostart)\n{text}"),
    )?;
    let phases: Vec<(&str, f64)> = r["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or(""),
                p["seconds"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect();
    let names: Vec<&str> = phases.iter().map(|p| p.0).collect();
    check(
        names == ["verify", "extract", "boot", "start", "healthy"],
        || format!("phases {names:?}"),
    )?;
    let rto = r["rto_seconds"].as_f64().unwrap_or(-1.0);
    let sum: f64 = phases.iter().map(|p| p.1).sum();
    let latest = r["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            i["serving_seconds"]
                .as_f64()
                .or(i["ready_seconds"].as_f64())
        })
        .fold(0.0, f64::max);
    check(
        rto > 0.0 && rto == latest && rto <= sum && sum - rto < 1.0,
        || {
            format!("RTO {rto}: the last instance served at {latest}, the phases {phases:?} add up to {sum}")
        },
    )?;
    for i in r["instances"].as_array().into_iter().flatten() {
        let ready = i["ready_seconds"].as_f64().unwrap_or(-1.0);
        let serving = i["serving_seconds"].as_f64();
        let ok = i["passed"] == true
            && ready > 0.0
            && ready <= rto
            && serving.is_none_or(|s| s >= ready && s <= rto + 0.001);
        check(ok, || format!("instance {i} (RTO {rto})"))?;
        check(
            i["name"] == "Node Manager" || i["lb_endpoint"].is_string() && serving.is_some(),
            || format!("{} has no LB endpoint checked: {i}", i["name"]),
        )?;
    }
    let rpo = &r["rpo"];
    let age = rpo["archive_age_seconds"].as_i64().unwrap_or(0);
    check(
        rpo["created_unix"]
            .as_i64()
            .is_some_and(|c| (c - (t - DAY)).abs() <= 2)
            && (DAY - 2..DAY + 120).contains(&age),
        || format!("RPO of an archive taken a day ago: {rpo}"),
    )?;
    check(
        rpo["newest_file"]["path"] == "opt/apigateway/groups/topology.json"
            && rpo["newest_file"]["mtime_unix"].as_i64() == Some(newest_file),
        || format!("newest file: {}", rpo["newest_file"]),
    )?;
    check(
        rpo["archives"] == 3
            && rpo["largest_gap"]["seconds"]
                .as_i64()
                .is_some_and(|g| (g - 2 * DAY).abs() <= 2)
            && rpo["largest_gap"]["from"].as_str() == broken.file_name().and_then(|n| n.to_str())
            && rpo["largest_gap"]["to"].as_str() == newest.file_name().and_then(|n| n.to_str()),
        || format!("largest gap: {rpo}"),
    )?;

    // The broken archive: server3 fails with its reason, the others pass, exit 1.
    let (code, r, text) = drill(&[&broken.display().to_string(), "--image", &image_root])?;
    check(
        code == 1 && r["passed"] == false && r["rto_seconds"].is_null(),
        || format!("the drill of an archive whose server3 cannot start: exit {code}\n{text}"),
    )?;
    for i in r["instances"].as_array().into_iter().flatten() {
        let bad = i["name"] == "group1/server3";
        check(i["passed"] == !bad, || format!("{i}"))?;
        if bad {
            check(
                i["reason"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("not ready") && w.contains("result exit-code")),
                || format!("server3's reason: {i}"),
            )?;
        }
    }
    // The human report says the same.
    let o = Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
        .args([
            "drill",
            &broken.display().to_string(),
            "--image",
            &image_root,
        ])
        .output()?;
    let human = String::from_utf8_lossy(&o.stdout).to_string();
    check(
        o.status.code() == Some(1)
            && human.contains("group1/server3")
            && human.contains("FAIL: not ready")
            && (human.contains("largest gap     2d 0h")
                || human.contains("largest gap     47h 59m")),
        || format!("the human report:\n{human}"),
    )?;

    // An encrypted archive drills with its identity file, and not without.
    let key = dir.path().join("backup-key.txt");
    run(Command::new("age-keygen").arg("-o").arg(&key))?;
    let public = run(Command::new("age-keygen").arg("-y").arg(&key))?;
    fs::create_dir_all(host.join("etc/gateway-systemd/gateway.toml.d"))?;
    fs::write(
        host.join("etc/gateway-systemd/gateway.toml.d/60-encrypt.toml"),
        format!(
            "[backup]\nrecipients = [\"{}\"]\n",
            String::from_utf8_lossy(&public.stdout).trim()
        ),
    )?;
    let sealed_dir = dir.path().join("sealed");
    let o = Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
        .args(["backup", "--to"])
        .arg(&sealed_dir)
        .env("GATEWAY_SYSTEMD_ROOT", &host)
        .output()?;
    check(o.status.success(), || {
        format!("encrypted backup: {}", String::from_utf8_lossy(&o.stderr))
    })?;
    let sealed_dir = sealed_dir.display().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
        .args(["drill", "--dir", &sealed_dir, "--image", &image_root])
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    check(
        o.status.code() == Some(1) && said.contains("--identity"),
        || format!("a drill of an encrypted archive without its identity: {said}"),
    )?;
    let (code, r, text) = drill(&[
        "--dir",
        &sealed_dir,
        "--image",
        &image_root,
        "--identity",
        &key.display().to_string(),
    ])?;
    check(
        code == 0
            && r["passed"] == true
            && r["archive"]
                .as_str()
                .is_some_and(|a| a.ends_with(".tar.zst.age")),
        || format!("the drill of an encrypted archive (exit {code}):\n{text}"),
    )?;

    // Nothing left behind, nothing written into the image.
    check(mounts_of_drills().is_empty(), || {
        format!("drill mounts left: {:?}", mounts_of_drills())
    })?;
    check(
        !fs::read_dir("/var/tmp")?.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("gateway-drill.")
        }),
        || "a scratch directory was left in /var/tmp".into(),
    )?;
    check(listing(&image.upper())? == before, || {
        "the drill wrote into the standby's image".into()
    })?;
    check(fs::read_dir(&install)?.count() == 1, || {
        "the drill wrote into the image's install dir mount".into()
    })
}
