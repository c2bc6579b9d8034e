//! The .deb packages on a host with the vendor's installation, under real systemd: install,
//! boot, start and stop, upgrade with traffic flowing through HAProxy, a changed conffile kept,
//! remove, purge. The packages come from `packaging/build-deb` (`GATEWAY_TEST_DEBS` names the
//! directory; .ci/run builds them first).

use crate::harness::{install_domain, Container};
use crate::load::{self, Restart, Scenario, HAPROXY_DEFAULT};
use crate::migrate::ctl;
use libtest_mimic::Failed;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where the tests find the .deb files.
pub const DEBS_ENV: &str = "GATEWAY_TEST_DEBS";

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    match cond {
        true => Ok(()),
        false => Err(what().into()),
    }
}

/// The product and demo packages in `GATEWAY_TEST_DEBS`.
pub fn debs() -> Result<(PathBuf, PathBuf), String> {
    let dir = std::env::var_os(DEBS_ENV).ok_or_else(|| {
        format!("{DEBS_ENV} is not set: build the packages with packaging/build-deb DIR and set {DEBS_ENV}=DIR")
    })?;
    let find = |prefix: &str| -> Result<PathBuf, String> {
        fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", Path::new(&dir).display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    n.to_string_lossy().starts_with(prefix) && n.to_string_lossy().ends_with(".deb")
                })
            })
            .ok_or_else(|| format!("no {prefix}*.deb in {}", Path::new(&dir).display()))
    };
    Ok((find("gateway-systemd_")?, find("gateway-systemd-demo_")?))
}

/// Repack `deb` as version `version`, its conffile with one more comment line: a rebuilt
/// higher version whose gateway.toml differs from the installed one.
fn repack(deb: &Path, version: &str, out: &Path) -> Result<PathBuf, Failed> {
    let tree = out.join(format!(
        "tree-{}",
        deb.file_name().unwrap().to_string_lossy()
    ));
    let _ = fs::remove_dir_all(&tree);
    crate::harness::run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    let control = tree.join("DEBIAN/control");
    let text = fs::read_to_string(&control)?;
    let text: String = text
        .lines()
        .map(|l| match l.strip_prefix("Version: ") {
            Some(_) => format!("Version: {version}\n"),
            None => match l.contains("(= 0.1.0)") {
                true => format!("{}\n", l.replace("(= 0.1.0)", &format!("(= {version})"))),
                false => format!("{l}\n"),
            },
        })
        .collect();
    fs::write(&control, text)?;
    let conf = tree.join("etc/gateway-systemd/gateway.toml");
    if conf.exists() {
        let mut c = fs::read_to_string(&conf)?;
        c.push_str("# (this line is new in the upgraded package)\n");
        fs::write(&conf, &c)?;
        // md5sums lists only non-conffiles; dpkg-deb -b checks nothing more.
    }
    let name = deb
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace("_0.1.0_", &format!("_{version}_"));
    let built = out.join(name);
    crate::harness::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-b"])
            .arg(&tree)
            .arg(&built),
    )?;
    Ok(built)
}

/// Every path of the container's root filesystem, but the ones that change by themselves
/// (journals, caches, dpkg's and systemd's own state).
fn file_list(c: &Container) -> Result<Vec<String>, Failed> {
    let out = c.ok(&[
        "sh",
        "-c",
        "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
         -o -path /var/tmp -o -path /var/log -o -path /var/cache -o -path /var/lib/dpkg \
         -o -path /var/lib/systemd -o -path /var/lib/apt -o -path /root \\) -prune -o -print",
    ])?;
    let mut paths: Vec<String> = out.lines().map(str::to_string).collect();
    paths.sort();
    Ok(paths)
}

/// What purge may leave: the backups (said so), and the gateway account (Debian leaves
/// system users in place).
fn allowed_after_purge(path: &str) -> bool {
    path == "/var/lib/gateway-systemd"
        || path.starts_with("/var/lib/gateway-systemd/backups")
        || [
            "/etc/passwd",
            "/etc/group",
            "/etc/shadow",
            "/etc/gshadow",
            "/etc/passwd-",
            "/etc/group-",
            "/etc/shadow-",
            "/etc/gshadow-",
        ]
        .contains(&path)
}

/// The upgrade under load: HAProxy in front of group1's three instances, wrk through it, the
/// upgrade (dpkg, its conffile prompt answered by policy: keep the local file) as the pass.
fn upgrade_scenario() -> Scenario {
    Scenario {
        name: "package upgrade",
        config: "[defaults]\nstart_command = [\"/usr/libexec/gateway-systemd/gateway-demo\", \"--stop-grace\", \"0s\"]\ndrain_mode = \"adaptive\"\ndrain_delay = \"10s\"\n",
        checks: HAPROXY_DEFAULT,
        restart: Restart::Command(
            "dpkg --force-confold -i /root/upgrade/gateway-systemd_0.1.1_amd64.deb /root/upgrade/gateway-systemd-demo_0.1.1_amd64.deb",
        ),
        instances: &[0, 1, 2],
        passes: 1,
        long_every: 5000,
    }
}

pub fn deb_install_upgrade_remove_purge() -> Result<(), Failed> {
    let (product, demo) = debs()?;
    let work = tempfile::tempdir()?;
    let upgrade = [
        repack(&product, "0.1.1", work.path())?,
        repack(&demo, "0.1.1", work.path())?,
    ];
    let mut c = Container::boot(|root| {
        install_domain(root, &crate::common::repo().join("demo/domain"))?;
        // The operator's settings as a drop-in: the package brings gateway.toml.
        let etc = root.join("etc/gateway-systemd");
        fs::create_dir_all(etc.join("gateway.toml.d")).map_err(|e| e.to_string())?;
        fs::rename(
            etc.join("gateway.toml"),
            etc.join("gateway.toml.d/50-site.toml"),
        )
        .map_err(|e| e.to_string())?;
        fs::write(root.join("etc/hostname"), "gw1.example.com\n").map_err(|e| e.to_string())?;
        let upgrade_dir = root.join("root/upgrade");
        fs::create_dir_all(&upgrade_dir).map_err(|e| e.to_string())?;
        for f in [&product, &demo] {
            fs::copy(f, root.join("root").join(f.file_name().unwrap()))
                .map_err(|e| e.to_string())?;
        }
        for f in &upgrade {
            fs::copy(f, upgrade_dir.join(f.file_name().unwrap())).map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    c.wait_until_running(Duration::from_secs(60), "the first boot")?;
    let before = file_list(&c)?;

    // Install: the account, the state directories, gateway.target and the backup timer
    // enabled (the drill timer not), nothing started yet.
    let deb = |p: &Path| format!("/root/{}", p.file_name().unwrap().to_string_lossy());
    c.ok(&["dpkg", "-i", &deb(&product), &deb(&demo)])?;
    c.ok(&["id", "gateway"])?;
    let mode = c.ok(&["stat", "-c", "%a %U", "/var/lib/gateway-systemd/backups"])?;
    check(mode.trim() == "700 root", || {
        format!("/var/lib/gateway-systemd/backups is {mode}")
    })?;
    for (unit, want) in [
        ("gateway.target", "enabled"),
        ("gateway-backup.timer", "enabled"),
        ("gateway-drill.timer", "disabled"),
    ] {
        let got = String::from_utf8_lossy(&c.exec(&["systemctl", "is-enabled", unit]).stdout)
            .trim()
            .to_string();
        check(got == want, || format!("{unit} is {got} after install"))?;
    }
    check(
        c.property(crate::SERVER1, "ActiveState")? != "active",
        || "the install started an instance (one may still run from its init script)".into(),
    )?;
    // The man page renders, each shell's completion loads.
    man_and_completions(&c)?;

    // A boot starts the autostart instances.
    c.reboot()?;
    for unit in [crate::SERVER1, crate::EDGE, crate::NODE_MANAGER] {
        check(c.property(unit, "ActiveState")? == "active", || {
            format!("{unit} is not running after a boot with the package")
        })?;
    }
    let (code, out) = ctl(&c, &["start", "group1/server2"]);
    check(code == 0, || format!("gatewayctl start: {out}"))?;
    let (code, out) = ctl(&c, &["stop", "group1/server2"]);
    check(
        code == 0 && c.property(crate::SERVER2, "ActiveState")? == "inactive",
        || format!("gatewayctl stop: {out}"),
    )?;

    // The operator's change to the conffile survives an upgrade that changes it too.
    let conf = c.root().join("etc/gateway-systemd/gateway.toml");
    let mut text = fs::read_to_string(&conf)?;
    text.push_str("# the operator's own line\n");
    fs::write(&conf, &text)?;

    // The upgrade, with wrk's requests flowing through HAProxy: nothing fails, never more
    // than one server out.
    let o = load::run(&c, &upgrade_scenario(), 16, 0);
    let _ = fs::remove_file(c.root().join("etc/haproxy/load.cfg"));
    let o = o?;
    println!(
        "    {}\n    {}",
        load::HEADER.replace('\n', "\n    "),
        load::row("package upgrade", &o)
    );
    check(
        o.failures() == 0 && o.most_out <= 1 && o.requests > 0,
        || {
            format!(
                "the upgrade under load: {} of {} requests failed, at most {} out\n{}\n{}",
                o.failures(),
                o.requests,
                o.most_out,
                o.restart_output,
                o.slowest.join("\n")
            )
        },
    )?;
    check(o.restart_output.contains("serving again"), || {
        format!("the upgrade restarted no instance:\n{}", o.restart_output)
    })?;
    let version = c.ok(&["dpkg-query", "-W", "-f=${Version}", "gateway-systemd"])?;
    check(version == "0.1.1", || {
        format!("installed version {version}")
    })?;
    let kept = fs::read_to_string(&conf)?;
    check(
        kept.contains("the operator's own line")
            && c.root()
                .join("etc/gateway-systemd/gateway.toml.dpkg-dist")
                .exists(),
        || "the operator's gateway.toml was not kept (or the package's not put beside it)".into(),
    )?;

    // A backup to keep; then remove: the instances stop, drained.
    let (code, out) = ctl(&c, &["backup"]);
    check(code == 0, || format!("backup: {out}"))?;
    c.ok(&["systemctl", "start", crate::SERVER1])?;
    let since = c.ok(&["date", "+%s"])?;
    c.ok(&["dpkg", "-r", "gateway-systemd-demo", "gateway-systemd"])?;
    // Removal returns once the instances have stopped, drained, not while they drain.
    let state = c.property(crate::SERVER1, "ActiveState")?;
    check(state == "inactive", || {
        format!("server1 is {state} once the package is removed")
    })?;
    let log = c.ok(&[
        "journalctl",
        "-u",
        crate::SERVER1,
        "--since",
        &format!("@{}", since.trim()),
        "--no-pager",
        "-o",
        "cat",
    ])?;
    check(log.contains("drained after"), || {
        format!("server1 was not drained when the package was removed:\n{log}")
    })?;

    // Purge: our state goes, the backups stay (and it says so), the installation is untouched.
    let purged = c.ok(&["dpkg", "-P", "gateway-systemd-demo", "gateway-systemd"])?;
    check(
        purged.contains("kept /var/lib/gateway-systemd/backups"),
        || format!("purge did not say the backups are kept:\n{purged}"),
    )?;
    let after = file_list(&c)?;
    // deb-systemd-helper removes a .wants directory its purge left empty, even one that was
    // there (empty) before: the only thing purge may take that it did not bring.
    let emptied = |p: &String| {
        p.starts_with("/etc/systemd/system/")
            && p.ends_with(".wants")
            && !before.iter().any(|q| q.starts_with(&format!("{p}/")))
    };
    // Sets: the lists have a hundred thousand paths each.
    let (before_set, after_set): (HashSet<&String>, HashSet<&String>) =
        (before.iter().collect(), after.iter().collect());
    let gone: Vec<&String> = before
        .iter()
        .filter(|p| !after_set.contains(p) && !emptied(p))
        .collect();
    let added: Vec<&String> = after
        .iter()
        .filter(|p| !before_set.contains(p) && !allowed_after_purge(p))
        .collect();
    check(gone.is_empty() && added.is_empty(), || {
        format!("after purge, gone: {gone:?}\nleft: {added:?}")
    })
}

/// `man gatewayctl` renders (where the root has man-db), and bash, zsh and fish load the
/// completions (zsh and fish from the host, on the installed files).
fn man_and_completions(c: &Container) -> Result<(), Failed> {
    let page = c.root().join("usr/share/man/man8/gatewayctl.8.gz");
    let shown = match c.root().join("usr/bin/man").exists() {
        true => c.ok(&["sh", "-c", "MANWIDTH=80 man -P cat gatewayctl 2>&1"])?,
        false => {
            let out = Command::new("man")
                .arg("-l")
                .arg(&page)
                .env("MANWIDTH", "80")
                .env("MANPAGER", "cat")
                .output()?;
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    check(
        shown.contains("rolling-restart") && shown.contains("NAME"),
        || format!("man gatewayctl: {shown}"),
    )?;
    c.ok(&[
        "bash",
        "-c",
        ". /usr/share/bash-completion/completions/gatewayctl && complete -p gatewayctl",
    ])?;
    let zsh = c
        .root()
        .join("usr/share/zsh/vendor-completions/_gatewayctl");
    let out = Command::new("zsh")
        .arg("-fc")
        .arg("autoload -U compinit && compinit -u -D && source \"$1\" && whence -w _gatewayctl")
        .arg("zsh")
        .arg(&zsh)
        .output()?;
    check(out.status.success(), || {
        format!("zsh does not load {}: {out:?}", zsh.display())
    })?;
    let fish = c
        .root()
        .join("usr/share/fish/vendor_completions.d/gatewayctl.fish");
    let out = Command::new("fish")
        .arg("-c")
        .arg("source $argv[1]; and complete -C 'gatewayctl rolling-r'")
        .arg(&fish)
        .output()?;
    check(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("rolling-restart"),
        || format!("fish does not complete from {}: {out:?}", fish.display()),
    )
}
