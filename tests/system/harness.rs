//! A throwaway systemd in a container, booted as `shared/system-tests.md` describes: the host's
//! root as the lower layer of an overlay, a tmpfs upper layer, `systemd-nspawn -b`. The
//! package's files (per `packaging/layout`) and a domain are installed into the overlay before
//! boot, so the generator runs at boot exactly as on a real host. Dropping the [`Container`]
//! powers it off and unmounts everything, also when a test panics.
#![allow(dead_code)] // shared by the system tests and bench/launcher, which use different parts

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Environment variable naming another root filesystem to boot instead of the host's own
/// (e.g. the Debian 13 root `.ci/debian13-root` makes, for systemd 257).
pub const LOWER_ROOT_ENV: &str = "GATEWAY_TEST_LOWER_ROOT";

/// The overlay's lower layer: the host's root, or [`LOWER_ROOT_ENV`].
pub fn lower_root() -> PathBuf {
    std::env::var_os(LOWER_ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// The version of systemd in a root filesystem (`systemctl --version`, run on that root's
/// binary through its own loader), or "unknown".
pub fn systemd_version(root: &Path) -> String {
    let out = Command::new("chroot")
        .arg(root)
        .args(["systemctl", "--version"])
        .output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Why the system tests cannot run here, or None when they can.
pub fn missing_prerequisite() -> Option<String> {
    if !nix_is_root() {
        return Some("not running as root".into());
    }
    for tool in ["systemd-nspawn", "nsenter", "mount", "umount"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!(
                "{tool} is not installed (apt-get install systemd-container util-linux)"
            ));
        }
    }
    // gatewayctl -H is tested against the container's own sshd, rolling restarts under HAProxy:
    // both run inside, from the root the container boots.
    let lower = lower_root();
    if !lower.join("usr/lib/systemd/systemd").exists() {
        return Some(format!(
            "{} is not a root filesystem with systemd ({LOWER_ROOT_ENV}; .ci/debian13-root makes one)",
            lower.display()
        ));
    }
    if !lower.join("usr/sbin/sshd").exists() || !lower.join("usr/bin/ssh").exists() {
        return Some(format!(
            "ssh or sshd is not installed in {} (apt-get install openssh-server openssh-client)",
            lower.display()
        ));
    }
    if !lower.join("usr/sbin/haproxy").exists() {
        return Some(format!(
            "haproxy is not installed in {} (apt-get install haproxy)",
            lower.display()
        ));
    }
    // A backup hook dumps a real database, loaded back after a restore.
    if !lower.join("usr/bin/mariadb-dump").exists() || !lower.join("usr/sbin/mariadbd").exists() {
        return Some(format!(
            "MariaDB is not installed in {} (apt-get install mariadb-server mariadb-client)",
            lower.display()
        ));
    }
    // The .rpm packages are installed, upgraded and erased with rpm.
    if !lower.join("usr/bin/rpm").exists() {
        return Some(format!(
            "rpm is not installed in {} (apt-get install rpm)",
            lower.display()
        ));
    }
    // Drills are tested with archives taken in the past.
    if Command::new("faketime")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Some("faketime is not installed (apt-get install faketime)".into());
    }
    if !fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .contains("overlay")
    {
        return Some("the kernel has no overlay filesystem".into());
    }
    None
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Run a host command; its output, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A booted container.
pub struct Container {
    base: PathBuf,
    nspawn: Option<Child>,
    pid1: u32,
    mounted: Vec<PathBuf>,
}

impl Container {
    /// Prepare the overlay, let `setup` write into the container's root, and boot it.
    pub fn boot(setup: impl FnOnce(&Path) -> Result<(), String>) -> Result<Container, String> {
        remove_stale_containers();
        let name = format!(
            "gwsys-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let base = PathBuf::from("/var/tmp").join(&name);
        let mut c = Container {
            base: base.clone(),
            nspawn: None,
            pid1: 0,
            mounted: Vec::new(),
        };
        let (upper, root) = (base.join("upper"), base.join("root"));
        fs::create_dir_all(&upper)
            .and_then(|_| fs::create_dir_all(&root))
            .map_err(|e| format!("{}: {e}", base.display()))?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&upper))?;
        c.mounted.push(upper.clone());
        fs::create_dir_all(upper.join("u"))
            .and_then(|_| fs::create_dir_all(upper.join("w")))
            .map_err(|e| e.to_string())?;
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower_root().display(),
                upper.join("u").display(),
                upper.join("w").display()
            ))
            .arg(&root))?;
        c.mounted.push(root.clone());
        // A machine id of its own, written before boot: without one systemd treats the boot
        // as a first boot and applies presets, enabling everything the host merely installed.
        let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid").map_err(|e| e.to_string())?;
        fs::write(
            root.join("etc/machine-id"),
            format!("{}\n", uuid.trim().replace('-', "")),
        )
        .map_err(|e| e.to_string())?;
        // --private-network leaves only `lo`: nothing can come "online", so waiting for it
        // would hold network-online.target (which the gateway units want) for two minutes.
        let _ = std::os::unix::fs::symlink(
            "/dev/null",
            root.join("etc/systemd/system/systemd-networkd-wait-online.service"),
        );
        // Whatever the host enables would boot too; the tests need none of it.
        for wants in [
            "etc/systemd/system/multi-user.target.wants",
            "etc/systemd/system/timers.target.wants",
        ] {
            if let Ok(entries) = fs::read_dir(root.join(wants)) {
                for e in entries.flatten() {
                    let n = e.file_name().to_string_lossy().to_string();
                    if !["machines.target", "remote-fs.target"].contains(&n.as_str()) {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
        setup(&root)?;
        c.start()?;
        Ok(c)
    }

    /// Power the container off and boot the same root again (its writes kept), as a host
    /// reboots; returns once the new boot is over.
    pub fn reboot(&mut self) -> Result<(), String> {
        self.power_off();
        self.start()
    }

    /// Power off and wait for systemd-nspawn to exit (killing it after 10 s).
    fn power_off(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            if self.pid1 != 0 {
                let _ = self.exec(&["systemctl", "poweroff", "--no-block"]);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.pid1 = 0;
    }

    /// Boot systemd-nspawn on the prepared root and wait until boot is over.
    fn start(&mut self) -> Result<(), String> {
        let (base, root) = (self.base.clone(), self.root());
        let c = self;
        let console = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(base.with_extension("console"))
            .map_err(|e| e.to_string())?;
        let child = Command::new("systemd-nspawn")
            .args(["-q", "-D"])
            .arg(&root)
            .args([
                "--register=no",
                "--private-network",
                "--keep-unit",
                "-b",
                "systemd.firstboot=off",
            ])
            .stdin(Stdio::null())
            .stdout(console.try_clone().map_err(|e| e.to_string())?)
            .stderr(console)
            .spawn()
            .map_err(|e| format!("systemd-nspawn: {e}"))?;
        let nspawn_pid = child.id();
        c.nspawn = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.pid1 == 0 {
            if Instant::now() > deadline {
                return Err(format!(
                    "the container's systemd did not appear; console:\n{}",
                    c.console()
                ));
            }
            if let Ok(o) = Command::new("pgrep")
                .args(["-P", &nspawn_pid.to_string(), "-x", "systemd"])
                .output()
            {
                c.pid1 = String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0);
            }
            if let Some(Ok(Some(status))) = c.nspawn.as_mut().map(|n| n.try_wait()) {
                return Err(format!(
                    "systemd-nspawn exited ({status}); console:\n{}",
                    c.console()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let state = c.wait_until_booted(Duration::from_secs(60))?;
        if state != "running" && state != "degraded" {
            return Err(format!(
                "the container did not finish booting (state {state:?}); console:\n{}",
                c.console()
            ));
        }
        Ok(())
    }

    /// The container's root directory, as seen from the host.
    pub fn root(&self) -> PathBuf {
        self.base.join("root")
    }

    fn console(&self) -> String {
        fs::read_to_string(self.base.with_extension("console")).unwrap_or_default()
    }

    /// Run a command inside the container (all its namespaces).
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Start a command inside without waiting for it.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Child {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nsenter")
    }

    /// Run a command inside and return its stdout, failing when it fails.
    pub fn ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String, String> {
        let out = self.exec(args);
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().to_string())
            .collect();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        } else {
            Err(format!(
                "`{}` failed in the container ({}):\n{}{}",
                shown.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Run `f` with the config drop-in `name` of /etc/gateway-systemd/gateway.toml.d holding
    /// `text`, reloading systemd before and after so that the generator sees it and then not.
    pub fn with_config<T, E: From<String>>(
        &self,
        name: &str,
        text: &str,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let path = self
            .root()
            .join("etc/gateway-systemd/gateway.toml.d")
            .join(name);
        fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))
            .and_then(|_| fs::write(&path, text))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.ok(&["systemctl", "daemon-reload"])?;
        let result = f();
        let removed = fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()));
        self.ok(&["systemctl", "daemon-reload"])?;
        let value = result?;
        removed?;
        Ok(value)
    }

    /// One property of a unit (`systemctl show -P`).
    pub fn property(&self, unit: &str, property: &str) -> Result<String, String> {
        Ok(self
            .ok(&["systemctl", "show", "-P", property, unit])?
            .trim_end()
            .to_string())
    }

    /// Wait until boot is over and require the state "running": no unit failed (Err lists
    /// the failed units, prefixed with `when`).
    pub fn wait_until_running(&self, timeout: Duration, when: &str) -> Result<(), String> {
        let state = self.wait_until_booted(timeout)?;
        if state == "running" {
            return Ok(());
        }
        let failed = self.ok(&[
            "systemctl",
            "list-units",
            "--failed",
            "--no-legend",
            "--plain",
        ])?;
        Err(format!(
            "{when}: system state {state:?}; failed units:\n{failed}"
        ))
    }

    /// Poll `systemctl is-system-running` until boot is over; returns the final state.
    pub fn wait_until_booted(&self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut state = String::new();
        // Right after boot the bus may not answer yet; `--wait` alone can fail then.
        while Instant::now() < deadline {
            let out = self.exec(&["systemctl", "is-system-running", "--wait"]);
            state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if matches!(
                state.as_str(),
                "running" | "degraded" | "maintenance" | "stopping"
            ) {
                return Ok(state);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "boot did not finish in {timeout:?} (last state {state:?})"
        ))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.power_off();
        for m in self.mounted.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = fs::remove_dir_all(&self.base);
        let _ = fs::remove_file(self.base.with_extension("console"));
    }
}

/// Clean up after test runs that were killed before their destructors ran: a
/// `/var/tmp/gwsys-<pid>-<n>` whose process is gone still has its overlay mounted.
fn remove_stale_containers() {
    let Ok(entries) = fs::read_dir("/var/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("gwsys-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if !e.path().is_dir() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        for m in ["root", "upper"] {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(e.path().join(m))
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(e.path());
        let _ = fs::remove_file(e.path().with_extension("console"));
    }
}

/// A root filesystem made as a container's is (an overlay of the lower root, the package
/// installed by `setup`) but not booted: a standby's image for a drill to boot. Dropping it
/// unmounts everything.
pub struct Image {
    base: PathBuf,
    mounted: Vec<PathBuf>,
}

impl Image {
    /// Mount the overlay and let `setup` write into it.
    pub fn prepare(setup: impl FnOnce(&Path) -> Result<(), String>) -> Result<Image, String> {
        remove_stale_containers();
        let base = PathBuf::from("/var/tmp").join(format!(
            "gwsys-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let mut image = Image {
            base: base.clone(),
            mounted: Vec::new(),
        };
        let (upper, root) = (base.join("upper"), base.join("root"));
        fs::create_dir_all(&upper)
            .and_then(|_| fs::create_dir_all(&root))
            .map_err(|e| format!("{}: {e}", base.display()))?;
        image.mount(
            Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs"])
                .arg(&upper),
            &upper,
        )?;
        fs::create_dir_all(upper.join("u"))
            .and_then(|_| fs::create_dir_all(upper.join("w")))
            .map_err(|e| e.to_string())?;
        image.mount(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower_root().display(),
                    upper.join("u").display(),
                    upper.join("w").display()
                ))
                .arg(&root),
            &root,
        )?;
        setup(&root)?;
        Ok(image)
    }

    /// Run a mount command and remember to unmount `at`.
    pub fn mount(&mut self, cmd: &mut Command, at: &Path) -> Result<(), String> {
        run(cmd)?;
        self.mounted.push(at.to_path_buf());
        Ok(())
    }

    /// The image's root directory.
    pub fn root(&self) -> PathBuf {
        self.base.join("root")
    }

    /// Its upper layer: everything written into the image since the lower root.
    pub fn upper(&self) -> PathBuf {
        self.base.join("upper/u")
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        for m in self.mounted.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Copy a domain tree (`opt/`, `etc/`) into the container's root.
pub fn install_domain(root: &Path, domain: &Path) -> Result<(), String> {
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", domain.display()))
        .arg(root))
    .map(|_| ())
}
