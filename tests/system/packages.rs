//! The .deb and .rpm packages on a host with the vendor's installation, under real systemd:
//! install, boot, start and stop, upgrade with traffic flowing through HAProxy, a changed
//! conffile kept, remove (and purge). The packages come from `packaging/build-deb` and
//! `packaging/build-rpm` (`GATEWAY_TEST_PACKAGES` names the directory; .ci/run builds them
//! first, and the next version's .rpm files into its `upgrade/`).

use crate::harness::{install_domain, Container};
use crate::load::{self, Restart, Scenario, HAPROXY_DEFAULT};
use crate::migrate::ctl;
use libtest_mimic::Failed;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where the tests find the packages.
pub const PACKAGES_ENV: &str = "GATEWAY_TEST_PACKAGES";

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    match cond {
        true => Ok(()),
        false => Err(what().into()),
    }
}

/// The version the packages are built as (Cargo.toml's).
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version the upgrade tests upgrade to: the next patch release.
fn next_version() -> String {
    next_patch(VERSION)
}

/// x.y.(z+1).
fn next_patch(version: &str) -> String {
    let (head, patch) = version.rsplit_once('.').expect("a x.y.z version");
    format!(
        "{head}.{}",
        patch.parse::<u32>().expect("a numeric patch") + 1
    )
}

/// The packages the tests install: product and demo, of each format.
pub struct Packages {
    /// gateway-systemd and gateway-systemd-demo .deb files.
    pub debs: (PathBuf, PathBuf),
    /// gateway-systemd and gateway-systemd-demo .rpm files.
    pub rpms: (PathBuf, PathBuf),
    /// The same, built as the next version (packaging/build-rpm --version).
    pub rpm_upgrade: (PathBuf, PathBuf),
}

/// The packages in `GATEWAY_TEST_PACKAGES`, or what is missing.
pub fn packages() -> Result<Packages, String> {
    let dir = std::env::var_os(PACKAGES_ENV).ok_or_else(|| {
        format!("{PACKAGES_ENV} is not set: build the packages with packaging/build-deb DIR, packaging/build-rpm DIR and packaging/build-rpm --version {} DIR/upgrade (from a checkout whose packaging/gateway.toml has one more line), and set {PACKAGES_ENV}=DIR", next_version())
    })?;
    let dir = PathBuf::from(dir);
    let find = |dir: &Path, prefix: &str, suffix: &str| -> Result<PathBuf, String> {
        fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(prefix) && n.ends_with(suffix)
                })
            })
            .ok_or_else(|| format!("no {prefix}*{suffix} in {}", dir.display()))
    };
    let upgrade = dir.join("upgrade");
    Ok(Packages {
        debs: (
            find(&dir, "gateway-systemd_", ".deb")?,
            find(&dir, "gateway-systemd-demo_", ".deb")?,
        ),
        rpms: (
            find(&dir, &format!("gateway-systemd-{VERSION}-"), ".rpm")?,
            find(&dir, &format!("gateway-systemd-demo-{VERSION}-"), ".rpm")?,
        ),
        rpm_upgrade: (
            find(
                &upgrade,
                &format!("gateway-systemd-{}-", next_version()),
                ".rpm",
            )?,
            find(
                &upgrade,
                &format!("gateway-systemd-demo-{}-", next_version()),
                ".rpm",
            )?,
        ),
    })
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
            None => match l.contains(&format!("(= {VERSION})")) {
                true => format!(
                    "{}\n",
                    l.replace(&format!("(= {VERSION})"), &format!("(= {version})"))
                ),
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
        .replace(&format!("_{VERSION}_"), &format!("_{version}_"));
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
/// (journals, caches, dpkg's, rpm's and systemd's own state).
fn file_list(c: &Container) -> Result<Vec<String>, Failed> {
    let out = c.ok(&[
        "sh",
        "-c",
        "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
         -o -path /var/tmp -o -path /var/log -o -path /var/cache -o -path /var/lib/dpkg \
         -o -path /var/lib/systemd -o -path /var/lib/apt -o -path /var/lib/rpm \
         -o -path /usr/lib/sysimage/rpm -o -path /root \\) -prune -o -print",
    ])?;
    let mut paths: Vec<String> = out.lines().map(str::to_string).collect();
    paths.sort();
    Ok(paths)
}

/// What purge (or rpm's erase) may leave: the backups (said so), and the gateway account
/// (Debian and Fedora leave system users in place).
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
/// upgrade command (dpkg or rpm) as the pass.
fn upgrade_scenario(command: &'static str) -> Scenario {
    Scenario {
        name: "package upgrade",
        config: "[defaults]\nstart_command = [\"/usr/libexec/gateway-systemd/gateway-demo\", \"--stop-grace\", \"0s\"]\ndrain_mode = \"adaptive\"\ndrain_delay = \"10s\"\n",
        checks: HAPROXY_DEFAULT,
        restart: Restart::Command(command),
        instances: &[0, 1, 2],
        passes: 1,
        long_every: 5000,
    }
}

/// A container with the demo installation (the operator's settings as a drop-in: the package
/// brings gateway.toml) and `files` copied to /root/NAME (`(file, "")`) or /root/DIR/NAME.
fn boot_host(files: &[(&Path, &str)]) -> Result<Container, Failed> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(f, d)| (f.to_path_buf(), d.to_string()))
        .collect();
    let c = Container::boot(move |root| {
        install_domain(root, &crate::common::repo().join("demo/domain"))?;
        let etc = root.join("etc/gateway-systemd");
        fs::create_dir_all(etc.join("gateway.toml.d")).map_err(|e| e.to_string())?;
        fs::rename(
            etc.join("gateway.toml"),
            etc.join("gateway.toml.d/50-site.toml"),
        )
        .map_err(|e| e.to_string())?;
        fs::write(root.join("etc/hostname"), "gw1.example.com\n").map_err(|e| e.to_string())?;
        for (f, dir) in &files {
            let to = root.join("root").join(dir);
            fs::create_dir_all(&to).map_err(|e| e.to_string())?;
            fs::copy(f, to.join(f.file_name().unwrap())).map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    c.wait_until_running(Duration::from_secs(60), "the first boot")?;
    Ok(c)
}

/// What an install must have done: the account, the state directories, gateway.target and
/// the backup timer enabled (the drill timer not), nothing started yet; man pages and
/// completions that load.
fn check_installed(c: &Container, zsh_dir: &str) -> Result<(), Failed> {
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
    man_and_completions(c, zsh_dir)
}

/// A boot starts the autostart instances; gatewayctl starts and stops another.
fn boot_starts_the_instances(c: &mut Container) -> Result<(), Failed> {
    c.reboot()?;
    for unit in [crate::SERVER1, crate::EDGE, crate::NODE_MANAGER] {
        check(c.property(unit, "ActiveState")? == "active", || {
            format!("{unit} is not running after a boot with the package")
        })?;
    }
    let (code, out) = ctl(c, &["start", "group1/server2"]);
    check(code == 0, || format!("gatewayctl start: {out}"))?;
    let (code, out) = ctl(c, &["stop", "group1/server2"]);
    check(
        code == 0 && c.property(crate::SERVER2, "ActiveState")? == "inactive",
        || format!("gatewayctl stop: {out}"),
    )
}

/// The upgrade (`command`), with wrk's requests flowing through HAProxy: nothing fails,
/// never more than one server out; an instance running beside the load's (edge node 1) is
/// restarted too (a new main process), and no unit is left with stale unit files.
fn upgrade_under_load(c: &Container, command: &'static str) -> Result<(), Failed> {
    let edge_pid = c.property(crate::EDGE, "MainPID")?;
    let o = load::run(c, &upgrade_scenario(command), 16, 0);
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
    let (state, pid) = (
        c.property(crate::EDGE, "ActiveState")?,
        c.property(crate::EDGE, "MainPID")?,
    );
    check(state == "active" && pid != edge_pid, || {
        format!(
            "edge node 1 after the upgrade: {state}, main process {pid} (before: {edge_pid})\n{}",
            o.restart_output
        )
    })?;
    for unit in [crate::EDGE, crate::SERVER1, crate::NODE_MANAGER] {
        let stale = c.property(unit, "NeedDaemonReload")?;
        check(stale == "no", || {
            format!("{unit} has NeedDaemonReload={stale} after the upgrade")
        })?;
    }
    Ok(())
}

/// A backup to keep; the removal (`refused`) refused during an unfinished restore; then the
/// removal (`command`): it returns once the instances have stopped, drained, not while they
/// drain. Returns what the command printed.
/// `refused` removes the product package alone (with both named, dpkg and rpm remove the demo
/// package before the product's refusal).
fn remove_drains(c: &Container, refused: &[&str], command: &[&str]) -> Result<String, Failed> {
    let (code, out) = ctl(c, &["backup"]);
    check(code == 0, || format!("backup: {out}"))?;
    c.ok(&["systemctl", "start", crate::SERVER1])?;
    // While a restore is unfinished the removal is refused and stops nothing.
    let intent = c.root().join("var/lib/gateway-systemd/restore/intent.json");
    fs::create_dir_all(intent.parent().unwrap())?;
    fs::write(&intent, "{}")?;
    let out = c.exec(refused);
    fs::remove_dir_all(intent.parent().unwrap())?;
    check(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("a restore is unfinished")
            && c.property(crate::SERVER1, "ActiveState")? == "active",
        || format!("{refused:?} during an unfinished restore: {out:?}"),
    )?;
    let since = c.ok(&["date", "+%s"])?;
    let out = c.exec(command);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    check(out.status.success(), || {
        format!("{command:?} failed:\n{printed}")
    })?;
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
    Ok(printed)
}

/// After purge (rpm: erase), the container's files are what they were before the install,
/// but what the policy keeps; `printed` (what purge said) names the kept backups.
/// `unowned` are directories the package manager made for our files and left, which the
/// distribution's own packages own where the package is meant for.
fn only_the_backups_stay(
    c: &Container,
    before: &[String],
    printed: &str,
    unowned: &[&str],
) -> Result<(), Failed> {
    check(
        printed.contains("kept /var/lib/gateway-systemd/backups"),
        || format!("purge did not say the backups are kept:\n{printed}"),
    )?;
    let after = file_list(c)?;
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
        .filter(|p| {
            !before_set.contains(p) && !allowed_after_purge(p) && !unowned.contains(&p.as_str())
        })
        .collect();
    check(gone.is_empty() && added.is_empty(), || {
        format!("after purge, gone: {gone:?}\nleft: {added:?}")
    })
}

pub fn deb_install_upgrade_remove_purge() -> Result<(), Failed> {
    let (product, demo) = packages()?.debs;
    let work = tempfile::tempdir()?;
    let upgrade = [
        repack(&product, &next_version(), work.path())?,
        repack(&demo, &next_version(), work.path())?,
    ];
    let mut c = boot_host(&[
        (&product, ""),
        (&demo, ""),
        (&upgrade[0], "upgrade"),
        (&upgrade[1], "upgrade"),
    ])?;
    let before = file_list(&c)?;

    let deb = |p: &Path| format!("/root/{}", p.file_name().unwrap().to_string_lossy());
    c.ok(&["dpkg", "-i", &deb(&product), &deb(&demo)])?;
    check_installed(&c, "/usr/share/zsh/vendor-completions")?;
    // needrestart leaves the instances to the rolling restart (a conffile; purge removes it).
    c.ok(&["test", "-f", "/etc/needrestart/conf.d/gateway-systemd.conf"])?;
    boot_starts_the_instances(&mut c)?;

    // The operator's change to the conffile survives an upgrade that changes it too (dpkg's
    // prompt answered by policy: keep the local file).
    let conf = c.root().join("etc/gateway-systemd/gateway.toml");
    let mut text = fs::read_to_string(&conf)?;
    text.push_str("# the operator's own line\n");
    fs::write(&conf, &text)?;
    let names = upgrade
        .each_ref()
        .map(|p| p.file_name().unwrap().to_string_lossy());
    let command: &'static str = Box::leak(
        format!(
            "dpkg --force-confold -i /root/upgrade/{} /root/upgrade/{}",
            names[0], names[1]
        )
        .into_boxed_str(),
    );
    upgrade_under_load(&c, command)?;
    let version = c.ok(&["dpkg-query", "-W", "-f=${Version}", "gateway-systemd"])?;
    check(version == next_version(), || {
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

    // Where policy-rc.d forbids restarts (a chroot, an image build, an operator's freeze), an
    // upgrade restarts nothing and says how to finish.
    let third = next_patch(&next_version());
    let mut later = Vec::new();
    for p in [&product, &demo] {
        let built = repack(p, &third, work.path())?;
        let to = format!("/root/{}", built.file_name().unwrap().to_string_lossy());
        fs::copy(&built, c.root().join(to.trim_start_matches('/')))?;
        later.push(to);
    }
    let edge_pid = c.property(crate::EDGE, "MainPID")?;
    let policy = c.root().join("usr/sbin/policy-rc.d");
    fs::write(&policy, "#!/bin/sh\nexit 101\n")?;
    c.ok(&["chmod", "755", "/usr/sbin/policy-rc.d"])?;
    let out = c.exec(&["dpkg", "--force-confold", "-i", &later[0], &later[1]]);
    fs::remove_file(&policy)?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    check(
        out.status.success()
            && said.contains("running instances were not restarted")
            && c.property(crate::EDGE, "MainPID")? == edge_pid,
        || {
            format!(
                "an upgrade under policy-rc.d 101 restarted edge node 1 or did not say so:\n{said}"
            )
        },
    )?;

    remove_drains(
        &c,
        &["dpkg", "-r", "--force-depends", "gateway-systemd"],
        &["dpkg", "-r", "gateway-systemd-demo", "gateway-systemd"],
    )?;
    // Purge: our state goes, the backups stay (and it says so), the installation is untouched.
    let purged = c.ok(&["dpkg", "-P", "gateway-systemd-demo", "gateway-systemd"])?;
    only_the_backups_stay(&c, &before, &purged, &[])
}

/// The .rpm packages the same way, with rpm itself (--nodeps: this root's rpm database knows
/// none of the Debian packages they need): the %pre/%post/%preun/%postun scriptlets under real
/// systemd. rpm has no purge: erase removes our state and keeps the backups, saying so.
pub fn rpm_install_upgrade_erase() -> Result<(), Failed> {
    let p = packages()?;
    let (product, demo) = &p.rpms;
    let (next, next_demo) = &p.rpm_upgrade;
    let mut c = boot_host(&[
        (product, ""),
        (demo, ""),
        (next, "upgrade"),
        (next_demo, "upgrade"),
    ])?;
    let before = file_list(&c)?;

    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    c.ok(&[
        "rpm",
        "-i",
        "--nodeps",
        &format!("/root/{}", name(product)),
        &format!("/root/{}", name(demo)),
    ])?;
    check_installed(&c, "/usr/share/zsh/site-functions")?;
    boot_starts_the_instances(&mut c)?;

    // %config(noreplace): the operator's gateway.toml stays as it is, though the next
    // version's differs (CI builds it with one more line); rpm puts that one beside it.
    let conf = c.root().join("etc/gateway-systemd/gateway.toml");
    let mut text = fs::read_to_string(&conf)?;
    text.push_str("# the operator's own line\n");
    fs::write(&conf, &text)?;
    let command: &'static str = Box::leak(
        format!(
            "rpm -U --nodeps /root/upgrade/{} /root/upgrade/{}",
            name(next),
            name(next_demo)
        )
        .into_boxed_str(),
    );
    upgrade_under_load(&c, command)?;
    let version = c.ok(&["rpm", "-q", "--qf", "%{VERSION}", "gateway-systemd"])?;
    check(version == next_version(), || {
        format!("installed version {version}")
    })?;
    let rpmnew = c.root().join("etc/gateway-systemd/gateway.toml.rpmnew");
    check(
        fs::read_to_string(&conf)?.contains("the operator's own line") && rpmnew.exists(),
        || {
            "the operator's gateway.toml was replaced by the upgrade (or the package's not put beside it as .rpmnew)".into()
        },
    )?;
    fs::remove_file(&rpmnew)?;

    let printed = remove_drains(
        &c,
        &["rpm", "-e", "--nodeps", "gateway-systemd"],
        &["rpm", "-e", "gateway-systemd-demo", "gateway-systemd"],
    )?;
    // Erase leaves the changed config as .rpmsave, as rpm does with every changed %config.
    let saved = c.root().join("etc/gateway-systemd/gateway.toml.rpmsave");
    check(saved.exists(), || {
        "erase did not keep the operator's gateway.toml as gateway.toml.rpmsave".into()
    })?;
    fs::remove_file(&saved)?;
    let _ = fs::remove_dir(c.root().join("etc/gateway-systemd"));
    // rpm makes the parent directories of our files that no package owns here, and leaves
    // them; on Fedora and RHEL the filesystem package owns both.
    only_the_backups_stay(
        &c,
        &before,
        &printed,
        &["/usr/share/licenses", "/usr/share/zsh/site-functions"],
    )
}

/// `man gatewayctl` renders (where the root has man-db), and bash, zsh and fish load the
/// completions (zsh and fish from the host, on the installed files).
fn man_and_completions(c: &Container, zsh_dir: &str) -> Result<(), Failed> {
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
        .join(zsh_dir.trim_start_matches('/'))
        .join("_gatewayctl");
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
