//! A scratch root booted under a throwaway systemd, for drills: an overlay whose lower layer is
//! an image (this host's `/`, or a standby's root) and whose upper layer is a tmpfs of its own,
//! booted with `systemd-nspawn` on a private network. Nothing is written outside the scratch
//! directory; dropping the [`Scratch`] powers the container off, unmounts and removes it.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Scratch directories are `<parent>/gateway-drill.<pid>`: a leftover whose process is gone
/// (killed with SIGKILL) is cleaned up by the next drill.
const PREFIX: &str = "gateway-drill.";

/// What went wrong preparing, booting or driving the scratch root.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// A file operation or mount failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A tool the drill needs is missing.
    #[error("{tool} cannot be run ({source}); install it (apt-get install systemd-container util-linux)")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The container did not boot.
    #[error("the scratch root did not boot: {0}")]
    Boot(String),
    /// The operator interrupted the drill.
    #[error("interrupted")]
    Interrupted,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ScratchError + 'a {
    move |source| ScratchError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A scratch root: prepared, then mounted, then booted.
pub struct Scratch {
    base: PathBuf,
    mounted: Vec<PathBuf>,
    nspawn: Option<Child>,
    pid1: u32,
}

impl Scratch {
    /// Make `<parent>/gateway-drill.<pid>` (0700) with a tmpfs for the upper layer. The upper
    /// layer cannot live on the image's own filesystem: overlayfs refuses layers that overlap.
    pub fn prepare(parent: &Path) -> Result<Scratch, ScratchError> {
        remove_stale(parent);
        let base = parent.join(format!("{PREFIX}{}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&base)
            .map_err(io("cannot create", &base))?;
        let mut s = Scratch {
            base,
            mounted: Vec::new(),
            nspawn: None,
            pid1: 0,
        };
        let layer = s.base.join("layer");
        fs::create_dir(&layer).map_err(io("cannot create", &layer))?;
        nix::mount::mount(
            Some("tmpfs"),
            &layer,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOSUID,
            Some("mode=0755"),
        )
        .map_err(|e| io("cannot mount a tmpfs on", &layer)(e.into()))?;
        s.mounted.push(layer.clone());
        for d in [s.upper(), layer.join("work"), s.root()] {
            fs::create_dir(&d).map_err(io("cannot create", &d))?;
        }
        Ok(s)
    }

    /// The upper layer: what is written here before [`Scratch::mount`] overlays the image.
    pub fn upper(&self) -> PathBuf {
        self.base.join("layer/upper")
    }

    /// The scratch root as seen from this host (the overlay, once mounted).
    pub fn root(&self) -> PathBuf {
        self.base.join("root")
    }

    /// Where systemd-nspawn's console output goes.
    pub fn console_file(&self) -> PathBuf {
        self.base.join("console")
    }

    /// Overlay the upper layer on `image`.
    pub fn mount(&mut self, image: &Path) -> Result<(), ScratchError> {
        let layer = self.base.join("layer");
        self.overlay(image, &self.upper(), &layer.join("work"), &self.root())
    }

    /// The upper layer of a tree on a mount of its own (`rel`, relative to `/`).
    pub fn sub_upper(&self, rel: &str) -> PathBuf {
        self.base.join("layer/sub").join(rel).join("upper")
    }

    /// Overlay [`Scratch::sub_upper`] on `lower` (the image's mount) at `rel` in the root.
    pub fn mount_sub(&mut self, lower: &Path, rel: &str) -> Result<(), ScratchError> {
        let work = self.base.join("layer/sub").join(rel).join("work");
        fs::create_dir_all(&work).map_err(io("cannot create", &work))?;
        let at = self.root().join(rel);
        self.overlay(lower, &self.sub_upper(rel), &work, &at)
    }

    fn overlay(
        &mut self,
        lower: &Path,
        upper: &Path,
        work: &Path,
        at: &Path,
    ) -> Result<(), ScratchError> {
        let mut opts = b"lowerdir=".to_vec();
        opts.extend_from_slice(&escape_layer(lower));
        opts.extend_from_slice(b",upperdir=");
        opts.extend_from_slice(&escape_layer(upper));
        opts.extend_from_slice(b",workdir=");
        opts.extend_from_slice(&escape_layer(work));
        nix::mount::mount(
            Some("overlay"),
            at,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(std::ffi::OsStr::from_bytes(&opts)),
        )
        .map_err(|e| io("cannot mount an overlay on", at)(e.into()))?;
        self.mounted.push(at.to_path_buf());
        Ok(())
    }

    /// Boot systemd in the scratch root (`args` go to its PID 1, e.g. `systemd.unit=`) and wait
    /// until boot is over; returns `systemctl is-system-running`'s final answer.
    pub fn boot(&mut self, args: &[&str], timeout: Duration) -> Result<String, ScratchError> {
        let console_path = self.console_file();
        let console =
            fs::File::create(&console_path).map_err(io("cannot create", &console_path))?;
        let console2 = console
            .try_clone()
            .map_err(io("cannot create", &console_path))?;
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args(["-q", "-D"])
            .arg(self.root())
            .args(["--register=no", "--private-network"])
            .arg(format!("--machine=gateway-drill-{}", std::process::id()));
        // Under a systemd host nspawn puts the container in a transient scope of its own; on a
        // host without one (a build container) it stays in ours.
        if !Path::new("/run/systemd/system").exists() {
            cmd.arg("--keep-unit");
        }
        cmd.arg("-b").args(args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console2)
            .spawn()
            .map_err(|source| ScratchError::Tool {
                tool: "systemd-nspawn",
                source,
            })?;
        let nspawn = child.id();
        self.nspawn = Some(child);
        let deadline = Instant::now() + timeout;
        while self.pid1 == 0 {
            interrupted()?;
            if let Some(Ok(Some(status))) = self.nspawn.as_mut().map(Child::try_wait) {
                return Err(ScratchError::Boot(format!(
                    "systemd-nspawn exited ({status}): {}",
                    self.console_tail()
                )));
            }
            if Instant::now() > deadline {
                return Err(ScratchError::Boot(format!(
                    "no systemd appeared in {timeout:?}: {}",
                    self.console_tail()
                )));
            }
            self.pid1 = child_named(nspawn, "systemd").unwrap_or(0);
            std::thread::sleep(Duration::from_millis(20));
        }
        // Right after PID 1 appears its bus may not answer yet: `--wait` alone can fail then.
        let mut state = String::new();
        while Instant::now() < deadline {
            interrupted()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if let Ok(out) = self.exec(&["systemctl", "is-system-running", "--wait"], left) {
                state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if matches!(state.as_str(), "running" | "degraded" | "maintenance") {
                    return Ok(state);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ScratchError::Boot(format!(
            "boot did not finish in {timeout:?} (state {state:?}): {}",
            self.console_tail()
        )))
    }

    /// The last lines of the console, for errors.
    fn console_tail(&self) -> String {
        let text = fs::read_to_string(self.console_file()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        match tail.is_empty() {
            true => "(no console output)".into(),
            false => format!("console:\n{tail}"),
        }
    }

    /// Run a command inside the booted container (all its namespaces), killed after `timeout`.
    pub fn exec(&self, args: &[&str], timeout: Duration) -> Result<Output, ScratchError> {
        self.alive()?;
        let mut child = Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ScratchError::Tool {
                tool: "nsenter",
                source,
            })?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline && !INTERRUPTED.load(SeqCst) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    break;
                }
            }
        }
        let out = child
            .wait_with_output()
            .map_err(|source| ScratchError::Tool {
                tool: "nsenter",
                source,
            })?;
        interrupted()?;
        Ok(out)
    }

    /// The container's network namespace (for checks of its LB endpoints from this process).
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid1))
    }

    fn power_off(&mut self) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        // SIGTERM to nspawn (our own child: its pid cannot be reused before we wait for it)
        // makes it shut the container down in order (--kill-signal's default under -b). The
        // scratch root has nothing to keep: what does not stop in 10 s is killed.
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
        self.pid1 = 0;
    }

    /// Err when the container is gone (its PID 1's pid may belong to another process now).
    fn alive(&self) -> Result<(), ScratchError> {
        // SAFETY: kill with signal 0 only checks; nspawn is our child and not yet waited for.
        let nspawn_alive = self
            .nspawn
            .as_ref()
            .is_some_and(|c| unsafe { libc::kill(c.id() as i32, 0) } == 0);
        let zombie = self.nspawn.as_ref().is_some_and(|c| {
            fs::read_to_string(format!("/proc/{}/stat", c.id())).is_ok_and(|st| {
                st.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        });
        match self.pid1 != 0 && nspawn_alive && !zombie {
            true => Ok(()),
            false => Err(ScratchError::Boot(format!(
                "the container is gone: {}",
                self.console_tail()
            ))),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.power_off();
        for m in self.mounted.iter().rev() {
            if nix::mount::umount(m).is_err() {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// overlayfs splits layer lists at `:` and options at `,`: both are escaped with `\`.
fn escape_layer(p: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        if matches!(b, b':' | b',' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// The pid of `parent`'s child process called `name`.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    let children =
        fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap_or_default();
    children.split_whitespace().find_map(|pid| {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == name).then(|| pid.parse().ok()).flatten()
    })
}

/// Remove what a killed drill left: its container is gone with its process (nspawn dies with
/// it), but its mounts and directory stay.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        for m in ["root", "layer"] {
            let _ = nix::mount::umount2(&e.path().join(m), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(e.path());
    }
}

/// Hide `rel` of the image in the upper layer: a whiteout (a 0/0 character device), as
/// overlayfs records a deletion.
pub fn whiteout(upper: &Path, rel: &str) -> Result<(), ScratchError> {
    let path = upper.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
    }
    nix::sys::stat::mknod(
        &path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .map_err(|e| io("cannot write a whiteout at", &path)(e.into()))
}

/// Make a directory of the upper layer opaque: the image's entries under it are hidden.
pub fn opaque(dir: &Path) -> Result<(), ScratchError> {
    nix::sys::stat::stat(dir).map_err(|e| io("cannot read", dir)(e.into()))?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io("cannot mark opaque", dir)(std::io::Error::other(e)))?;
    // SAFETY: both strings are NUL-terminated and outlive the call; the value is 1 byte.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io("cannot mark opaque", dir)(
            std::io::Error::last_os_error(),
        )),
    }
}

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

/// Set by SIGINT, SIGTERM or SIGHUP once [`catch_interrupts`] ran: every wait checks it, so the
/// scratch root is torn down instead of left mounted.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, SeqCst);
}

/// Give this process a mount namespace of its own whose mounts never propagate to the host's:
/// the drill's mounts are invisible to the host and vanish with the process, even when it is
/// killed with SIGKILL. Call before any thread starts.
pub fn private_mounts() -> Result<(), ScratchError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| {
        io(
            "cannot make a mount namespace of its own for",
            Path::new("/"),
        )(e.into())
    })?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| io("cannot stop mount propagation from", Path::new("/"))(e.into()))
}

/// Turn SIGINT, SIGTERM and SIGHUP into [`ScratchError::Interrupted`] at the next wait.
pub fn catch_interrupts() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(s, &action) };
    }
}

/// Err once an interrupt arrived.
pub fn interrupted() -> Result<(), ScratchError> {
    match INTERRUPTED.load(SeqCst) {
        true => Err(ScratchError::Interrupted),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_paths_are_escaped_for_overlayfs() {
        assert_eq!(
            escape_layer(Path::new("/var/tmp/a:b,c\\d")),
            b"/var/tmp/a\\:b\\,c\\\\d".to_vec()
        );
    }
}
