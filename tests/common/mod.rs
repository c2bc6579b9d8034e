//! Helpers shared by the integration tests: running the real generator binary and checking its
//! output with the real `systemd-analyze verify`.
#![allow(dead_code)]

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The crate root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The built generator.
pub fn generator_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gateway-generator"))
}

/// Run the generator on a fixture root, writing into `out/{normal,early,late}`.
pub fn run_generator(root: &Path, out: &Path) -> Output {
    for d in ["normal", "early", "late"] {
        fs::create_dir_all(out.join(d)).unwrap();
    }
    Command::new(generator_bin())
        .args([out.join("normal"), out.join("early"), out.join("late")])
        .env("GATEWAY_SYSTEMD_ROOT", root)
        .env_remove("CI")
        .output()
        .expect("run gateway-generator")
}

/// Copy a tree, keeping symlinks as symlinks.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
        } else if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Executables our units name that a later issue of the project builds (the launcher and
/// gatewayctl). Until they exist, `systemd-analyze verify` reports exactly these as missing;
/// any other line it prints fails the check.
pub const PENDING_EXECUTABLES: [&str; 2] = [
    "/usr/libexec/gateway-systemd/gateway-launch",
    "/usr/bin/gatewayctl",
];

/// Core units the templates depend on, copied from the host into the verify root.
const CORE_UNITS: [&str; 7] = [
    "sysinit.target",
    "basic.target",
    "shutdown.target",
    "network-online.target",
    "network.target",
    "multi-user.target",
    "local-fs.target",
];

/// Whether `systemd-analyze` is available here.
pub fn have_systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Verify every unit the generator wrote into `normal` (drop-ins combined with our templates)
/// with `systemd-analyze verify --root`, and check that each service's exposure
/// (`systemd-analyze security`) stays at most 1.5. Returns the offending output, if any.
pub fn verify_generated(normal: &Path, scratch: &Path) -> Result<(), String> {
    let root = scratch.join("verify-root");
    let _ = fs::remove_dir_all(&root);
    let unit_dir = root.join("usr/lib/systemd/system");
    fs::create_dir_all(&unit_dir).unwrap();
    for entry in fs::read_dir(repo().join("units")).unwrap() {
        let p = entry.unwrap().path();
        fs::copy(&p, unit_dir.join(p.file_name().unwrap())).unwrap();
    }
    for u in CORE_UNITS {
        let host = Path::new("/usr/lib/systemd/system").join(u);
        if host.exists() {
            fs::copy(&host, unit_dir.join(u)).unwrap();
        }
    }
    // Generator directories are not searched under --root; /etc/systemd/system is, with the
    // same drop-in and .wants semantics.
    copy_tree(normal, &root.join("etc/systemd/system")).unwrap();
    let mut units: Vec<String> = fs::read_dir(normal)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".d").map(str::to_string))
        .filter(|n| n.starts_with("gateway"))
        .collect();
    units.sort();
    units.push("gateway.target".into());
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(format!("--root={}", root.display()))
        .args(&units)
        .output()
        .expect("run systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| {
            !PENDING_EXECUTABLES.iter().any(|p| {
                l.ends_with(&format!(
                    "Command {p} is not executable: No such file or directory"
                ))
            })
        })
        .collect();
    let only_pending = !out.status.success() && bad.is_empty() && !text.is_empty();
    if !((out.status.success() || only_pending) && bad.is_empty()) {
        return Err(format!(
            "systemd-analyze verify {} failed ({}):\n{}",
            units.join(" "),
            out.status,
            bad.join("\n")
        ));
    }
    // Every generated service keeps the hardening of its template: exposure at most 1.5.
    let services: Vec<&String> = units.iter().filter(|u| u.ends_with(".service")).collect();
    if services.is_empty() {
        return Ok(());
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=15"])
        .arg(format!("--root={}", root.display()))
        .args(&services)
        .output()
        .expect("run systemd-analyze security");
    if out.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out.stdout);
        let overall: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Overall exposure"))
            .collect();
        Err(format!(
            "an exposure level is above 1.5:\n{}",
            overall.join("\n")
        ))
    }
}
