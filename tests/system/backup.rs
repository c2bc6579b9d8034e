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
