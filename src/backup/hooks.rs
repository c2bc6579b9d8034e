//! `[backup] before`, `after` and `on_error`: the operator's shell commands around a backup
//! (a `mysqldump` of the metrics database before, an off-site copy after). Each runs under
//! `/bin/sh -c` in a clean environment, in a process group of its own, with a timeout; what
//! a `before` hook writes into [`HOOK_DIR`] is taken into the archive.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Our state directory (the hook directory's parent, where an encrypted archive is made).
pub const STATE_DIR: &str = "/var/lib/gateway-systemd";

/// Where `before` hooks put what the archive should hold (`$BACKUP_HOOK_DIR`); emptied before
/// they run, taken as the archive's `hook-output` scope, restored to the same place.
pub const HOOK_DIR: &str = "/var/lib/gateway-systemd/backup-hooks";

/// The PATH hooks get: the distribution's, nothing from the caller.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Lines of a failed hook's stderr quoted in the error.
const STDERR_LINES: usize = 20;
/// How long a hook that was sent SIGTERM at its timeout has before SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(5);
/// How long its output is read once it ended (what it started in another session may hold
/// its pipes open).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Before the copy; a failure fails the backup.
    Before,
    /// Once an archive was kept.
    After,
    /// When the backup or a hook failed.
    OnError,
}

impl Stage {
    /// Its name in `[backup]`.
    pub fn key(self) -> &'static str {
        match self {
            Stage::Before => "before",
            Stage::After => "after",
            Stage::OnError => "on_error",
        }
    }
}

/// A hook that failed, in words an operator acts on.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// It could not be started.
    #[error("[backup] {stage} hook {command:?} could not be started: {source}")]
    CannotStart {
        /// Its stage's key.
        stage: &'static str,
        /// The command as configured.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error(
        "[backup] {stage} hook {command:?} failed ({status}){}",
        quoted(stderr)
    )]
    Failed {
        /// Its stage's key.
        stage: &'static str,
        /// The command as configured.
        command: String,
        /// How it ended.
        status: String,
        /// The last lines it wrote to stderr.
        stderr: String,
    },
    /// The backup was interrupted while it ran; it was killed.
    #[error("[backup] {stage} hook {command:?} was killed: the backup was interrupted")]
    Interrupted {
        /// Its stage's key.
        stage: &'static str,
        /// The command as configured.
        command: String,
    },
    /// It ran past `hook_timeout` and was killed.
    #[error("[backup] {stage} hook {command:?} ran longer than hook_timeout ({}s) and was killed{}", timeout.as_secs(), quoted(stderr))]
    TimedOut {
        /// Its stage's key.
        stage: &'static str,
        /// The command as configured.
        command: String,
        /// The limit.
        timeout: Duration,
        /// The last lines it wrote to stderr.
        stderr: String,
    },
}

fn quoted(stderr: &str) -> String {
    match stderr.trim().is_empty() {
        true => String::new(),
        false => format!("; its stderr:\n{}", stderr.trim_end()),
    }
}

/// One hook that ran, for the operator.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookRun {
    /// Its stage.
    pub stage: Stage,
    /// The command as configured.
    pub command: String,
    /// How long it ran.
    pub seconds: f64,
}

/// Empty [`HOOK_DIR`] (under `real_dir`, the real path) and make it 0700: nothing a previous
/// run left is taken as this run's output.
pub fn prepare_dir(real_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_dir_all(real_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    prepare_dir_if_missing(real_dir)?;
    // The umask may have narrowed the mode it was made with; 0700 either way.
    std::fs::set_permissions(real_dir, std::fs::Permissions::from_mode(0o700))
}

/// Make [`HOOK_DIR`] (0700) unless it exists, keeping what it holds.
pub fn prepare_dir_if_missing(real_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match real_dir.is_dir() {
        true => Ok(()),
        false => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(real_dir),
    }
}

/// Run each command of a stage in order, each in `dir` with only `env` (plus PATH, HOME,
/// LANG and BACKUP_STAGE), stopping at the first that fails. Their output goes to our stderr,
/// each line prefixed with the stage.
pub fn run(
    stage: Stage,
    commands: &[String],
    timeout: Duration,
    dir: &Path,
    env: &[(&str, String)],
) -> Result<Vec<HookRun>, HookError> {
    let mut ran = Vec::new();
    for command in commands {
        let started = Instant::now();
        run_one(stage, command, timeout, dir, env)?;
        ran.push(HookRun {
            stage,
            command: command.clone(),
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(ran)
}

/// The invoking user's home directory (a hook's `mysqldump` finds its `~/.my.cnf` there).
fn home() -> PathBuf {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map_or_else(|| PathBuf::from("/"), |u| u.dir)
}

fn run_one(
    stage: Stage,
    command: &str,
    timeout: Duration,
    dir: &Path,
    env: &[(&str, String)],
) -> Result<(), HookError> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", home())
        .env("LANG", "C.UTF-8")
        .env("BACKUP_STAGE", stage.key())
        .envs(env.iter().map(|(k, v)| (k, v)))
        // A database password from the unit's LoadCredential= reaches the hooks.
        .envs(std::env::var_os("CREDENTIALS_DIRECTORY").map(|d| ("CREDENTIALS_DIRECTORY", d)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a timeout kills what it started too.
        .process_group(0)
        .spawn()
        .map_err(|source| HookError::CannotStart {
            stage: stage.key(),
            command: command.to_string(),
            source,
        })?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let prefix = format!("[backup {} hook] ", stage.key());
    // Each reader sends what it kept once its pipe closed; a descendant that left the group
    // but kept the pipe open cannot hold the backup beyond PIPE_GRACE.
    let forward = |r: Box<dyn Read + Send>, keep: bool, prefix: String| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tail = std::collections::VecDeque::new();
            for line in BufReader::new(r).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).into_owned();
                eprintln!("{prefix}{line}");
                if keep {
                    tail.push_back(line);
                    if tail.len() > STDERR_LINES {
                        tail.pop_front();
                    }
                }
            }
            let _ = tx.send(Vec::from(tail).join("\n"));
        });
        rx
    };
    let out = child
        .stdout
        .take()
        .map(|o| forward(Box::new(o), false, prefix.clone()));
    let err = child
        .stderr
        .take()
        .map(|e| forward(Box::new(e), true, prefix.clone()));
    let deadline = Instant::now() + timeout;
    let mut killed_at = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(_) => break None,
        }
        let now = Instant::now();
        let interrupted = super::scratch::interrupted().is_err();
        match killed_at {
            None if now >= deadline || interrupted => {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
                killed_at = Some(now);
            }
            Some(at) if now >= at + KILL_AFTER => {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // What it left running in its group would hold the pipes open (and outlive the backup).
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let until = Instant::now() + PIPE_GRACE;
    let wait = |rx: std::sync::mpsc::Receiver<String>| {
        rx.recv_timeout(until.saturating_duration_since(Instant::now()))
            .ok()
    };
    let _ = out.map(wait);
    let stderr = err.and_then(wait).unwrap_or_default();
    let (stage, command) = (stage.key(), command.to_string());
    if super::scratch::interrupted().is_err() {
        return Err(HookError::Interrupted { stage, command });
    }
    if killed_at.is_some() {
        return Err(HookError::TimedOut {
            stage,
            command,
            timeout,
            stderr,
        });
    }
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(HookError::Failed {
            stage,
            command,
            status: describe(s),
            stderr,
        }),
        None => Err(HookError::Failed {
            stage,
            command,
            status: "its status could not be read".into(),
            stderr,
        }),
    }
}

fn describe(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!(
            "killed by {}",
            nix::sys::signal::Signal::try_from(sig)
                .map_or_else(|_| sig.to_string(), |s| s.to_string())
        ),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(&'static str, String)> {
        vec![("BACKUP_HOST", "gw1".to_string())]
    }

    #[test]
    fn runs_in_a_clean_environment_in_the_hook_dir() {
        let d = tempfile::tempdir().unwrap();
        // This test process has plenty of variables (cargo's): none may reach the hook.
        let cmd = "env | sort > seen; pwd > where".to_string();
        let ran = run(
            Stage::Before,
            &[cmd],
            Duration::from_secs(10),
            d.path(),
            &env(),
        )
        .unwrap();
        assert_eq!(ran.len(), 1);
        let seen = std::fs::read_to_string(d.path().join("seen")).unwrap();
        let names: Vec<&str> = seen
            .lines()
            .filter_map(|l| l.split('=').next())
            .filter(|n| !["PWD", "SHLVL", "_", "OLDPWD"].contains(n))
            .collect();
        assert_eq!(
            names,
            ["BACKUP_HOST", "BACKUP_STAGE", "HOME", "LANG", "PATH"],
            "{seen}"
        );
        assert!(seen.contains("BACKUP_STAGE=before\n"));
        let at = std::fs::read_to_string(d.path().join("where")).unwrap();
        assert_eq!(Path::new(at.trim()), d.path().canonicalize().unwrap());
    }

    #[test]
    fn a_failure_stops_the_stage_and_quotes_its_stderr() {
        let d = tempfile::tempdir().unwrap();
        let cmds = [
            "echo first >> order".to_string(),
            "echo 'mysqldump: Got error: 1045: Access denied' >&2; exit 2".to_string(),
            "echo third >> order".to_string(),
        ];
        let e = run(
            Stage::Before,
            &cmds,
            Duration::from_secs(10),
            d.path(),
            &env(),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("before hook"), "{text}");
        assert!(text.contains("exit status 2"), "{text}");
        assert!(text.contains("Access denied"), "{text}");
        assert_eq!(
            std::fs::read_to_string(d.path().join("order")).unwrap(),
            "first\n"
        );
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_with_what_it_started() {
        let d = tempfile::tempdir().unwrap();
        // The background sleep holds stdout open: only killing the group ends the read.
        let cmd = "sleep 30 & echo started >&2; sleep 30".to_string();
        let started = Instant::now();
        let e = run(
            Stage::After,
            &[cmd],
            Duration::from_millis(300),
            d.path(),
            &env(),
        )
        .unwrap_err();
        assert!(matches!(e, HookError::TimedOut { .. }), "{e}");
        assert!(e.to_string().contains("started"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn prepare_dir_leaves_nothing_of_the_last_run() {
        let d = tempfile::tempdir().unwrap();
        let hooks = d.path().join("backup-hooks");
        std::fs::create_dir_all(hooks.join("old")).unwrap();
        std::fs::write(hooks.join("old/dump.sql"), "stale").unwrap();
        prepare_dir(&hooks).unwrap();
        assert_eq!(std::fs::read_dir(&hooks).unwrap().count(), 0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&hooks).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }
}
