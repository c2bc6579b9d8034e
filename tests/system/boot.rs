//! A host as an operator has it: the package and the installation in place before boot, the
//! installation on its own filesystem (/etc/fstab), and reboots (power off, boot the same
//! root again) in between `gatewayctl enable/disable`; and the generator's messages in the
//! kernel log.

use crate::harness::Container;
use crate::{check, setup_host, units, EDGE, NODE_MANAGER, SERVER1, SERVER2};
use libtest_mimic::Failed;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const SERVER3: &str = "gateway@group1-server3.service";

fn active(c: &Container, unit: &str) -> Result<String, Failed> {
    Ok(c.property(unit, "ActiveState")?)
}

/// Every autostart instance is active (and serving), every other one is not.
fn expect_running(c: &Container, up: &[&str], down: &[&str], when: &str) -> Result<(), Failed> {
    for unit in up {
        let state = active(c, unit)?;
        let status = c.property(unit, "StatusText")?;
        check(state == "active" && status.starts_with("serving"), || {
            let why = c.exec(&[
                "sh",
                "-c",
                "systemctl status --no-pager -n 5 gateway.target gateway-regenerate.service opt-apigateway.mount; \
                 journalctl -b --no-pager -o short-monotonic | grep -i -e gateway -e apigateway | tail -n 40",
            ]);
            format!(
                "{when}: {unit} is {state} ({status:?}); it should have been started at boot\n{}",
                String::from_utf8_lossy(&why.stdout)
            )
        })?;
    }
    for unit in down {
        let state = active(c, unit)?;
        check(state == "inactive", || {
            format!("{when}: {unit} is {state}; it must not start at boot")
        })?;
    }
    Ok(())
}

/// The installation lives on /srv/apigateway-fs, bind-mounted onto /opt/apigateway by
/// /etc/fstab: at boot the generator runs before it is mounted.
fn separate_install_mount(root: &Path) -> Result<(), String> {
    let opt = root.join("opt/apigateway");
    let fs_dir = root.join("srv/apigateway-fs");
    fs::create_dir_all(root.join("srv")).map_err(|e| e.to_string())?;
    fs::rename(&opt, &fs_dir).map_err(|e| format!("{}: {e}", opt.display()))?;
    fs::create_dir(&opt).map_err(|e| e.to_string())?;
    let fstab = root.join("etc/fstab");
    let mut text = fs::read_to_string(&fstab).unwrap_or_default();
    text.push_str("/srv/apigateway-fs /opt/apigateway none bind 0 0\n");
    fs::write(&fstab, text).map_err(|e| e.to_string())
}

/// A real boot: autostart after boot with the installation on its own mount, and
/// enable/disable across a reboot.
pub fn boot_autostart_separate_mount_enable_disable_reboot() -> Result<(), Failed> {
    let mut c = Container::boot(|root| {
        setup_host(root, &crate::common::repo().join("demo/domain"))?;
        separate_install_mount(root)
    })?;
    c.wait_until_running(std::time::Duration::from_secs(90), "first boot")?;
    let mounted = c.ok(&["findmnt", "-n", "-o", "TARGET", "/opt/apigateway"])?;
    check(mounted.trim() == "/opt/apigateway", || {
        format!("/opt/apigateway is not a mount point: {mounted}")
    })?;
    expect_running(
        &c,
        &[SERVER1, SERVER3, EDGE, NODE_MANAGER],
        &[SERVER2],
        "first boot",
    )?;
    // Every instance unit waits for the installation's filesystem.
    for unit in [SERVER1, SERVER2, NODE_MANAGER] {
        let mounts = c.property(unit, "RequiresMountsFor")?;
        check(
            mounts.split_whitespace().any(|m| m == "/opt/apigateway"),
            || format!("{unit}: RequiresMountsFor={mounts}"),
        )?;
    }
    // The operator's choice wins over the config and over a `systemctl enable` link.
    c.ok(&["systemctl", "enable", SERVER1])?;
    c.ok(&["gatewayctl", "disable", "group1/server1"])?;
    // enable says what it does: with gateway.target itself disabled, nothing starts at boot.
    c.ok(&["systemctl", "disable", "gateway.target"])?;
    let said = c.ok(&["gatewayctl", "enable", "group1/server2"])?;
    check(
        said.contains("gateway.target itself is not enabled"),
        || format!("gatewayctl enable with gateway.target disabled said: {said}"),
    )?;
    c.ok(&["systemctl", "enable", "gateway.target"])?;
    let said = c.ok(&["gatewayctl", "enable", "group1/server2"])?;
    check(said.contains("it will start with gateway.target"), || {
        format!("gatewayctl enable said: {said}")
    })?;
    c.ok(&["systemctl", "daemon-reload"])?;
    let list = c.ok(&["gatewayctl", "list"])?;
    let row = |name: &str| {
        list.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .map(|l| l.split_whitespace().nth(2).unwrap_or("").to_string())
    };
    check(
        row("server1").as_deref() == Some("no") && row("server2").as_deref() == Some("yes"),
        || format!("gatewayctl list after disable server1, enable server2:\n{list}"),
    )?;
    let status = c.ok(&["gatewayctl", "status", "group1/server1", "group1/server2"])?;
    check(
        status.lines().any(|l| {
            l.starts_with("group1")
                && l.contains("server1")
                && l.split_whitespace().nth(2) == Some("no")
        }),
        || format!("gatewayctl status does not show server1 disabled:\n{status}"),
    )?;
    let wants = units(&c.property("gateway.target", "Wants")?);
    check(
        !wants.iter().any(|u| u == SERVER1) && wants.iter().any(|u| u == SERVER2),
        || format!("gateway.target wants after disable/enable: {wants:?}"),
    )?;
    c.ok(&["systemctl", "stop", SERVER1])?;
    c.ok(&["systemctl", "start", "gateway.target"])?;
    expect_running(
        &c,
        &[SERVER2, SERVER3, EDGE],
        &[SERVER1],
        "systemctl start gateway.target after disable/enable",
    )?;

    c.reboot()?;
    c.wait_until_running(std::time::Duration::from_secs(90), "second boot")?;
    expect_running(
        &c,
        &[SERVER2, SERVER3, EDGE, NODE_MANAGER],
        &[SERVER1],
        "after a reboot",
    )?;
    Ok(())
}

/// Config tables naming instances this host does not have: one generator message each.
const GHOSTS: usize = 30;

/// The generator's messages all reach the kernel log, whatever the kernel's limit of 10
/// records per 5 s for one open /dev/kmsg (before: the 11th message on was dropped). The
/// containers have no /dev/kmsg, so this runs the generator on the host's kernel.
pub fn generator_messages_all_reach_the_kernel_log() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let tag = format!(
        "k{}x{}",
        std::process::id(),
        dir.path().display().to_string().len()
    );
    let root = dir.path().join("root");
    crate::common::copy_tree(&crate::common::repo().join("demo/domain"), &root)?;
    let ghosts: String = (1..=GHOSTS)
        .map(|n| format!("[instances.\"group1/{tag}-{n:02}\"]\nautostart = true\n"))
        .collect();
    let dropin = root.join("etc/gateway-systemd/gateway.toml.d/40-ghosts.toml");
    fs::create_dir_all(dropin.parent().unwrap_or(Path::new("/")))?;
    fs::write(&dropin, ghosts)?;
    let out = dir.path().join("out");
    let run = std::process::Command::new(crate::common::generator_bin())
        .arg(&out)
        .env("GATEWAY_SYSTEMD_ROOT", &root)
        .env("GATEWAY_GENERATOR_LOG", "kmsg")
        .output()?;
    check(run.status.success(), || format!("generator: {run:?}"))?;
    // /dev/kmsg read from the start of the ring buffer, without blocking at its end.
    let mut kmsg = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    let mut seen = String::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match std::io::Read::read(&mut kmsg, &mut buf) {
            Ok(0) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // A record overwritten while reading: go on with the next.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let missing: Vec<String> = (1..=GHOSTS)
        .map(|n| format!("group1/{tag}-{n:02}"))
        .filter(|g| !seen.contains(g.as_str()))
        .collect();
    let summary = seen
        .lines()
        .any(|l| l.contains("gateway-generator") && l.contains("instance(s) of host"));
    check(missing.is_empty() && summary, || {
        format!(
            "the kernel log lacks {} of the generator's {GHOSTS} messages ({missing:?}) or its summary ({summary})",
            missing.len()
        )
    })
}
