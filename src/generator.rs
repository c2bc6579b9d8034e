//! The systemd generator: reads the installation and writes, into the generator's normal
//! output directory, one drop-in per local instance, `gateway.target.wants/` links for
//! autostart instances and masks for the legacy init scripts it replaces.
//!
//! It must never fail boot: whatever cannot be read is logged (to /dev/kmsg, or stderr in tests)
//! and skipped, and it exits 0. No network, no D-Bus, no subprocesses.

use crate::initd::{self, Fate};
use crate::install::{self, Installation, Problem, Root, Severity};
use crate::units::{self, Entry, LegacyUnit};
use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Environment variable naming a root prefix to read the installation from (tests, chroots).
/// When set, logging goes to stderr.
pub const ROOT_ENV: &str = "GATEWAY_SYSTEMD_ROOT";

/// Environment variable that, set to `kmsg`, sends messages to /dev/kmsg even with
/// [`ROOT_ENV`] set.
pub const LOG_ENV: &str = "GATEWAY_GENERATOR_LOG";

/// Usage text for people who run the generator by hand.
pub const USAGE: &str = "usage: gateway-generator NORMAL_DIR [EARLY_DIR LATE_DIR]\n\
\n\
systemd runs this at boot and on `systemctl daemon-reload`; it writes gateway@<group>-<instance>.service\n\
drop-ins, gateway.target.wants/ links and masks of /etc/init.d/vshell-* into NORMAL_DIR.\n\
To try it on a copy of a host's files: GATEWAY_SYSTEMD_ROOT=/path/to/tree gateway-generator /tmp/out\n";

/// Where log lines go.
pub enum Log {
    /// The kernel log (what systemd's own generators use).
    Kmsg,
    /// Standard error, plain lines.
    Stderr,
}

/// The kernel drops kmsg records beyond a burst of 10 per open file and 5 s; the file is opened
/// anew for each record, and at most this many are written, the last saying how many more
/// there are and which command lists them all.
pub const KMSG_MAX_RECORDS: usize = 40;

impl Log {
    /// /dev/kmsg when writable and `prefer_stderr` is false, else stderr.
    pub fn open(prefer_stderr: bool) -> Log {
        if !prefer_stderr && OpenOptions::new().write(true).open("/dev/kmsg").is_ok() {
            return Log::Kmsg;
        }
        Log::Stderr
    }

    /// Write one line at a severity.
    pub fn line(&mut self, severity: Severity, msg: &str) {
        let (prio, label) = match severity {
            Severity::Error => (3, "error"),
            Severity::Warning => (4, "warning"),
            Severity::Notice => (5, "notice"),
        };
        match self {
            // One write() is one kmsg record.
            Log::Kmsg => {
                if let Ok(mut f) = OpenOptions::new().write(true).open("/dev/kmsg") {
                    let _ = f.write_all(format!("<{prio}>gateway-generator: {msg}\n").as_bytes());
                }
            }
            Log::Stderr => eprintln!("gateway-generator: {label}: {msg}"),
        }
    }

    /// Write all `messages`; into the kernel log at most [`KMSG_MAX_RECORDS`], the errors and
    /// warnings first, then a line with the count of the rest and where to read them.
    pub fn all(&mut self, messages: &[(Severity, String)]) {
        let mut ordered: Vec<&(Severity, String)> = messages.iter().collect();
        if matches!(self, Log::Kmsg) && messages.len() > KMSG_MAX_RECORDS {
            // Stable: the summary (the last notice) stays after the other notices.
            ordered.sort_by_key(|(severity, _)| *severity);
            let shown = KMSG_MAX_RECORDS - 1;
            for (severity, msg) in &ordered[..shown] {
                self.line(*severity, msg);
            }
            let rest = &ordered[shown..];
            let errors = rest.iter().filter(|(s, _)| *s == Severity::Error).count();
            self.line(
                if errors > 0 { Severity::Error } else { Severity::Warning },
                &format!(
                    "{} more message(s) ({errors} error(s)) not shown here; `gatewayctl check-config` lists them all",
                    rest.len()
                ),
            );
            return;
        }
        for (severity, msg) in ordered {
            self.line(*severity, msg);
        }
    }
}

/// What one generator run decided, before anything is written.
pub struct Plan {
    /// The installation as read.
    pub installation: Installation,
    /// What to write.
    pub entries: Vec<Entry>,
    /// What to log, in order.
    pub messages: Vec<(Severity, String)>,
}

/// Read everything under `root` and decide what to generate (no writes).
pub fn plan(root: &Root) -> Plan {
    // The init scripts and the installation are independent reads: with many scripts, read
    // them beside the installation (a thread costs more than it saves for a few).
    const THREAD_FROM: usize = 64;
    let names = initd::list(root);
    let ((config, installation, problems), (scripts, unreadable)) = if names.len() >= THREAD_FROM {
        std::thread::scope(|s| {
            let scripts = s.spawn(|| initd::read(root, names));
            let installation = install::load_with_config(root);
            (installation, scripts.join().unwrap_or_default())
        })
    } else {
        (install::load_with_config(root), initd::read(root, names))
    };
    let mut messages: Vec<(Severity, String)> = problems
        .iter()
        .map(|Problem { severity, error }| (*severity, error.to_string()))
        .collect();

    for (path, why) in unreadable {
        messages.push((
            Severity::Warning,
            format!("{}: cannot read ({why}); left alone", path.display()),
        ));
    }
    let lookup = initd::Lookup::new(&installation);
    let mut legacy = Vec::new();
    let mut masked_summary = Vec::new();
    for script in &scripts {
        let fate = lookup.fate(script);
        let shown = script.path.display();
        match &fate {
            Fate::Replaced {
                target,
                legacy_unit,
                rule,
            } => {
                let (what, _) = target.describe(&installation);
                masked_summary.push(format!("{legacy_unit} ({what}, by {rule})"));
            }
            Fate::LeftToScript {
                target,
                legacy_unit,
                ..
            } => {
                let (what, _) = target.describe(&installation);
                messages.push((
                    Severity::Notice,
                    format!("{shown}: {what} is left to this script (legacy_initd = true); {legacy_unit} is not masked"),
                ));
            }
            Fate::Unnamable { target } => {
                let (what, _) = target.describe(&installation);
                messages.push((
                    Severity::Warning,
                    format!(
                        "{shown}: starts {what} but its name cannot be a unit name; left alone"
                    ),
                ));
            }
            Fate::LeftAlone { reason } => {
                messages.push((Severity::Warning, format!("{shown}: left alone: {reason}")))
            }
        }
        if let Some((target, unit)) = fate.mapped() {
            legacy.push(LegacyUnit {
                unit: unit.to_string(),
                target,
                mask: matches!(fate, Fate::Replaced { .. }),
            });
        }
    }
    let mut entries = units::render(&installation, &legacy);
    entries.extend(units::render_backup(&config.backup));
    let topology = Installation::topology_path(&installation.install_dir);
    if !root.real(&topology).exists() {
        messages.push((
            Severity::Notice,
            format!(
                "{}: not there yet; {} reloads systemd once {} is mounted (an installation on its own filesystem), then starts gateway.target",
                topology.display(),
                units::REGENERATE_UNIT,
                installation.install_dir.display()
            ),
        ));
        entries.extend(units::render_regenerate(&installation.install_dir));
    }

    let autostart = installation
        .instances
        .iter()
        .filter(|i| i.settings.autostart)
        .count();
    let held = installation
        .instances
        .iter()
        .filter(|i| i.held.is_some())
        .count();
    let mut summary = format!(
        "{} instance(s) of host {:?} from {} ({} autostart{}), Node Manager: {}",
        installation.instances.len(),
        installation.host,
        installation.install_dir.display(),
        autostart,
        if held > 0 {
            format!(", {held} held: `gatewayctl check-config` says why")
        } else {
            String::new()
        },
        if installation
            .node_manager
            .as_ref()
            .is_some_and(|nm| nm.held.is_some())
        {
            "held (`gatewayctl check-config` says why)"
        } else if installation.node_manager.is_some() {
            "yes"
        } else {
            "no"
        },
    );
    if !masked_summary.is_empty() {
        const SHOWN: usize = 8;
        let _ = write!(
            summary,
            "; masked {} legacy init script(s): {}",
            masked_summary.len(),
            masked_summary[..masked_summary.len().min(SHOWN)].join(", ")
        );
        if masked_summary.len() > SHOWN {
            let _ = write!(summary, " and {} more", masked_summary.len() - SHOWN);
        }
    }
    messages.push((Severity::Notice, summary));
    Plan {
        installation,
        entries,
        messages,
    }
}

/// Write the plan's entries under `dir`. Plain writes: systemd empties the generator
/// directories before each run and reads nothing until we exit, so there is no reader to
/// protect with a rename. Returns the failures (path, error); the rest is still written.
pub fn write_entries(dir: &Path, entries: &[Entry]) -> Vec<(PathBuf, String)> {
    // Creating thousands of inodes is kernel work that two threads share well; below a few
    // hundred entries a thread costs more than it saves.
    const PARALLEL_FROM: usize = 256;
    if entries.len() < PARALLEL_FROM {
        return write_serially(dir, entries);
    }
    let (first, second) = entries.split_at(entries.len() / 2);
    std::thread::scope(|s| {
        let other = s.spawn(|| write_serially(dir, second));
        let mut failures = write_serially(dir, first);
        failures.extend(other.join().unwrap_or_default());
        failures
    })
}

fn write_serially(dir: &Path, entries: &[Entry]) -> Vec<(PathBuf, String)> {
    let mut failures = Vec::new();
    // Each parent directory is made once: at 1,000 instances, repeated create_dir_all calls
    // would be thousands of wasted system calls.
    let mut made: HashSet<PathBuf> = HashSet::new();
    for entry in entries {
        let (path, result) = match entry {
            Entry::File { path, content } => {
                let full = dir.join(path);
                let r = ensure_parent(&full, &mut made).and_then(|_| fs::write(&full, content));
                (full, r)
            }
            Entry::Symlink { path, target } => {
                let full = dir.join(path);
                let r = ensure_parent(&full, &mut made)
                    .and_then(|_| std::os::unix::fs::symlink(target, &full));
                (full, r)
            }
        };
        if let Err(e) = result {
            failures.push((path, e.to_string()));
        }
    }
    failures
}

fn ensure_parent(path: &Path, made: &mut HashSet<PathBuf>) -> std::io::Result<()> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    if made.contains(parent) {
        return Ok(());
    }
    match fs::create_dir(parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir_all(parent)?,
        Err(e) => return Err(e),
    }
    made.insert(parent.to_path_buf());
    Ok(())
}

/// The whole generator: arguments as systemd passes them (without argv\[0\]) and the value of
/// [`ROOT_ENV`]. Returns the exit status: 0 whenever it was invoked as a generator.
pub fn main(args: &[OsString], root_env: Option<OsString>) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return 0;
    }
    if args.len() != 1 && args.len() != 3 {
        eprint!(
            "gateway-generator: expected 1 or 3 output directories, got {}\n{USAGE}",
            args.len()
        );
        return 2;
    }
    let normal = PathBuf::from(&args[0]);
    // Tests of the kernel log's behaviour ask for it with a fixture root.
    let kmsg = std::env::var_os(LOG_ENV).is_some_and(|v| v == "kmsg");
    let mut log = Log::open(root_env.is_some() && !kmsg);
    let root = Root::new(
        root_env
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/")),
    );
    let plan = plan(&root);
    log.all(&plan.messages);
    for (path, why) in write_entries(&normal, &plan.entries) {
        log.line(
            Severity::Error,
            &format!("{}: cannot write: {why}", path.display()),
        );
    }
    0
}
