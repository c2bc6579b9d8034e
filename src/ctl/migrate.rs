//! `gatewayctl migrate-initd --apply | --rollback`: hand each instance (and the Node Manager)
//! from its legacy `/etc/init.d/vshell-*` script to its unit, and back, never running two
//! copies of one instance. Apply keeps an exact copy of every script (content, mode, owner,
//! times) and its rc links in a backup directory with a manifest; rollback restores from it.
//!
//! Two copies are prevented three ways: each step stops the old service (and checks that its
//! health address is free) before starting the new one; every generated unit has `Conflicts=`
//! with its legacy unit, so systemd itself never runs both; and the launcher refuses to start
//! while another process holds the instance's health address.

use crate::initd::{self, Fate, Lookup, Target};
use crate::install::{self, Installation, Root};
use crate::systemd::{Systemd, SystemdError, Verb};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::exit;

/// Where apply keeps the scripts it moves, one timestamped directory per run.
pub const BACKUP_ROOT: &str = "/var/lib/gateway-systemd/initd-backup";
/// The config drop-in rollback writes: `legacy_initd = true` for what it gave back.
pub const ROLLBACK_CONFIG: &str = "/etc/gateway-systemd/gateway.toml.d/90-migrate-initd.toml";
/// The manifest in each backup directory.
pub const MANIFEST: &str = "manifest.json";

/// The runlevel directories whose links start and stop init scripts (Debian, Red Hat).
const RC_DIRS: [&str; 15] = [
    "/etc/rc0.d",
    "/etc/rc1.d",
    "/etc/rc2.d",
    "/etc/rc3.d",
    "/etc/rc4.d",
    "/etc/rc5.d",
    "/etc/rc6.d",
    "/etc/rcS.d",
    "/etc/rc.d/rc0.d",
    "/etc/rc.d/rc1.d",
    "/etc/rc.d/rc2.d",
    "/etc/rc.d/rc3.d",
    "/etc/rc.d/rc4.d",
    "/etc/rc.d/rc5.d",
    "/etc/rc.d/rc6.d",
];

/// What can go wrong moving scripts.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The manifest cannot be used.
    #[error("{}: {detail}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A copy differs from what it was copied from.
    #[error("{}: {detail}; nothing was removed", path.display())]
    Mismatch {
        /// The copy.
        path: PathBuf,
        /// How it differs.
        detail: String,
    },
    /// No backup to roll back from.
    #[error("no migration to roll back: {} holds no backup (`gatewayctl migrate-initd --apply` makes one)", dir.display())]
    NoBackup {
        /// Where backups are kept.
        dir: PathBuf,
    },
    /// The config drop-in migrate-initd keeps cannot be changed safely.
    #[error("{}: {detail}; fix it (or remove it: it holds only the legacy_initd settings migrate-initd wrote) and run again", path.display())]
    Config {
        /// The drop-in.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Another migrate-initd holds the lock.
    #[error("another `gatewayctl migrate-initd` is running (it holds {})", path.display())]
    Busy {
        /// The lock file.
        path: PathBuf,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MigrateError + 'a {
    move |source| MigrateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// An rc link, exactly as it was: its path and what it points to, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcLink {
    /// The link, e.g. `/etc/rc2.d/S01vshell-group1-server1`.
    pub path: PathBuf,
    /// Its target as written, e.g. `../init.d/vshell-group1-server1`.
    pub target: PathBuf,
    /// The link's owner.
    #[serde(default)]
    pub uid: u32,
    /// The link's group.
    #[serde(default)]
    pub gid: u32,
    /// The link's own modification time: seconds since the epoch.
    #[serde(default)]
    pub mtime: i64,
    /// The link's own modification time: nanoseconds.
    #[serde(default)]
    pub mtime_nsec: i64,
}

impl RcLink {
    /// A start link (`S..`): the script ran at boot.
    fn starts(&self) -> bool {
        self.path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('S'))
    }
}

/// A script as apply found it, and what replaced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedScript {
    /// Where it was (logical path, `/etc/init.d/...`).
    pub path: PathBuf,
    /// Its copy's file name in the backup directory.
    pub name: String,
    /// When the script itself was a symbolic link: its target.
    pub symlink: Option<PathBuf>,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time: seconds since the epoch.
    pub mtime: i64,
    /// Modification time: nanoseconds.
    pub mtime_nsec: i64,
    /// Size in bytes.
    pub size: u64,
    /// Its rc links.
    pub rc_links: Vec<RcLink>,
    /// The unit systemd-sysv-generator made of it.
    pub legacy_unit: String,
    /// The unit that replaces it.
    pub unit: String,
    /// What it starts, in the operator's words.
    pub what: String,
    /// `group/instance` for an instance; None for the Node Manager.
    pub instance: Option<String>,
    /// Its legacy unit was running when apply began.
    pub legacy_was_active: bool,
    /// Apply enabled `unit` (it was not enabled before).
    pub enabled_unit: bool,
    /// Before the apply `legacy_initd = true` left its instance to it.
    #[serde(default)]
    pub left_to_script: bool,
    /// Apply moved it away (and a rollback has not put it back yet).
    #[serde(default = "moved_by_default")]
    pub moved: bool,
}

/// Manifests from before apply went one script at a time moved every script.
fn moved_by_default() -> bool {
    true
}

/// What one apply did: enough for rollback to undo it exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// When apply ran (seconds since the epoch).
    pub created: u64,
    /// Apply enabled gateway.target (it was not enabled before).
    pub enabled_target: bool,
    /// The scripts, in the order they were found.
    pub scripts: Vec<SavedScript>,
}

/// The rc links that point at the script `name`.
pub fn rc_links(root: &Root, name: &str) -> Vec<RcLink> {
    let mut links = Vec::new();
    for dir in RC_DIRS {
        let real = root.real(Path::new(dir));
        // Red Hat's /etc/rcN.d are links to /etc/rc.d/rcN.d: read each directory once.
        if fs::symlink_metadata(&real).is_ok_and(|m| m.file_type().is_symlink()) {
            continue;
        }
        let Ok(entries) = fs::read_dir(&real) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let (Ok(target), Ok(meta)) = (fs::read_link(e.path()), fs::symlink_metadata(e.path()))
            else {
                continue;
            };
            let points_here = target.file_name().is_some_and(|n| n == name)
                && target.parent().is_some_and(|p| p.ends_with("init.d"));
            if points_here {
                links.push(RcLink {
                    path: Path::new(dir).join(e.file_name()),
                    target,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    mtime: meta.mtime(),
                    mtime_nsec: meta.mtime_nsec(),
                });
            }
        }
    }
    links.sort_by(|a, b| a.path.cmp(&b.path));
    links
}

fn mtime_of(secs: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::new(0, nsec)
    }
}

/// Set a symbolic link's own owner and times (not its target's).
fn set_link_meta(path: &Path, uid: u32, gid: u32, mtime: (i64, i64)) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    let time = TimeSpec::new(mtime.0, mtime.1);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &time,
        &time,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Copy `from` to `to` exactly: content, mode, owner, modification time (a symlink as a
/// symlink); written atomically and synced.
fn copy_exact(from: &Path, to: &Path) -> Result<(), MigrateError> {
    let meta = fs::symlink_metadata(from).map_err(io_err("cannot read", from))?;
    let dir = to.parent().unwrap_or(Path::new("/"));
    if meta.file_type().is_symlink() {
        let target = fs::read_link(from).map_err(io_err("cannot read", from))?;
        let (tmp, ()) = install::create_beside(to, |tmp| std::os::unix::fs::symlink(&target, tmp))
            .map_err(io_err("cannot create a link beside", to))?;
        set_link_meta(
            &tmp,
            meta.uid(),
            meta.gid(),
            (meta.mtime(), meta.mtime_nsec()),
        )
        .map_err(io_err("cannot set the owner and times of", &tmp))?;
        fs::rename(&tmp, to).map_err(io_err("cannot rename into place", to))?;
    } else {
        let bytes = fs::read(from).map_err(io_err("cannot read", from))?;
        let (tmp, mut f) = install::create_beside(to, |t| fs::File::create_new(t))
            .map_err(io_err("cannot create a file beside", to))?;
        io::Write::write_all(&mut f, &bytes).map_err(io_err("cannot write", &tmp))?;
        // Owner before mode: chown clears set-id bits.
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))
            .map_err(io_err("cannot chown", &tmp))?;
        f.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err("cannot chmod", &tmp))?;
        let times = fs::FileTimes::new()
            .set_modified(mtime_of(meta.mtime(), meta.mtime_nsec()))
            .set_accessed(mtime_of(meta.atime(), meta.atime_nsec()));
        f.set_times(times)
            .map_err(io_err("cannot set the times of", &tmp))?;
        f.sync_all().map_err(io_err("cannot sync", &tmp))?;
        fs::rename(&tmp, to).map_err(io_err("cannot rename into place", to))?;
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// How `copy` differs from what `saved` recorded, if it does.
fn differs(copy: &Path, saved: &SavedScript, original: Option<&[u8]>) -> Option<String> {
    let meta = match fs::symlink_metadata(copy) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot read: {e}")),
    };
    if let Some(target) = &saved.symlink {
        return match fs::read_link(copy) {
            Ok(t) if t == *target => None,
            Ok(t) => Some(format!(
                "points to {} instead of {}",
                t.display(),
                target.display()
            )),
            Err(_) => Some("is not a symbolic link".into()),
        };
    }
    let checks = [
        ("mode", (meta.mode() & 0o7777) as i64, saved.mode as i64),
        ("owner", meta.uid() as i64, saved.uid as i64),
        ("group", meta.gid() as i64, saved.gid as i64),
        ("size", meta.size() as i64, saved.size as i64),
        ("mtime", meta.mtime(), saved.mtime),
        ("mtime ns", meta.mtime_nsec(), saved.mtime_nsec),
    ];
    for (what, is, was) in checks {
        if is != was {
            return Some(format!("{what} is {is}, was {was}"));
        }
    }
    if let Some(original) = original {
        match fs::read(copy) {
            Ok(bytes) if bytes == original => {}
            Ok(_) => return Some("content differs".into()),
            Err(e) => return Some(format!("cannot read: {e}")),
        }
    }
    None
}

/// Record a script and copy it into `backup` (nothing is removed yet).
pub fn save(
    root: &Root,
    backup: &Path,
    script: &Path,
    replaced_by: (&str, &str, Option<String>),
    legacy_unit: &str,
) -> Result<SavedScript, MigrateError> {
    let real = root.real(script);
    let meta = fs::symlink_metadata(&real).map_err(io_err("cannot read", &real))?;
    let name = script
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let symlink = match meta.file_type().is_symlink() {
        true => Some(fs::read_link(&real).map_err(io_err("cannot read", &real))?),
        false => None,
    };
    let (what, unit, instance) = replaced_by;
    let saved = SavedScript {
        path: script.to_path_buf(),
        rc_links: rc_links(root, &name),
        symlink,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        size: meta.size(),
        legacy_unit: legacy_unit.to_string(),
        unit: unit.to_string(),
        what: what.to_string(),
        instance,
        legacy_was_active: false,
        enabled_unit: false,
        moved: false,
        left_to_script: false,
        name,
    };
    let copy = backup.join(&saved.name);
    copy_exact(&real, &copy)?;
    let original = match saved.symlink {
        Some(_) => None,
        None => Some(fs::read(&real).map_err(io_err("cannot read", &real))?),
    };
    if let Some(detail) = differs(&copy, &saved, original.as_deref()) {
        return Err(MigrateError::Mismatch { path: copy, detail });
    }
    Ok(saved)
}

/// Remove a saved script and its rc links from the system (its copy is in the backup).
pub fn remove_original(root: &Root, saved: &SavedScript) -> Result<(), MigrateError> {
    for link in &saved.rc_links {
        let real = root.real(&link.path);
        match fs::remove_file(&real) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("cannot remove", &real)(e))
            }
            _ => {}
        }
    }
    let real = root.real(&saved.path);
    fs::remove_file(&real).map_err(io_err("cannot remove", &real))?;
    if let Some(dir) = real.parent().and_then(|d| fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Put a saved script and its rc links back exactly as they were.
pub fn restore(root: &Root, backup: &Path, saved: &SavedScript) -> Result<(), MigrateError> {
    let copy = backup.join(&saved.name);
    let original = match saved.symlink {
        Some(_) => None,
        None => Some(fs::read(&copy).map_err(io_err("cannot read", &copy))?),
    };
    if let Some(detail) = differs(&copy, saved, original.as_deref()) {
        return Err(MigrateError::Mismatch {
            path: copy,
            detail: format!("the backup copy changed ({detail})"),
        });
    }
    let real = root.real(&saved.path);
    if let Some(parent) = real.parent() {
        fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
    }
    copy_exact(&copy, &real)?;
    if let Some(detail) = differs(&real, saved, original.as_deref()) {
        return Err(MigrateError::Mismatch { path: real, detail });
    }
    for link in &saved.rc_links {
        let real = root.real(&link.path);
        let create = match fs::read_link(&real) {
            Ok(t) if t == link.target => false,
            Ok(_) => {
                fs::remove_file(&real).map_err(io_err("cannot replace", &real))?;
                true
            }
            Err(_) => true,
        };
        if create {
            if let Some(parent) = real.parent() {
                fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
            }
            std::os::unix::fs::symlink(&link.target, &real)
                .map_err(io_err("cannot create", &real))?;
        }
        set_link_meta(&real, link.uid, link.gid, (link.mtime, link.mtime_nsec))
            .map_err(io_err("cannot set the owner and times of", &real))?;
    }
    Ok(())
}

/// Write the manifest atomically.
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), MigrateError> {
    let path = dir.join(MANIFEST);
    let text = serde_json::to_string_pretty(manifest).unwrap_or_default() + "\n";
    install::write_atomic(&path, text.as_bytes(), 0o600).map_err(io_err("cannot write", &path))
}

/// Read a backup directory's manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest, MigrateError> {
    let path = dir.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| MigrateError::Manifest {
        path: path.clone(),
        detail: format!("not a migrate-initd manifest ({e})"),
    })?;
    if m.version != 1 {
        return Err(MigrateError::Manifest {
            path,
            detail: format!("manifest version {} is not supported", m.version),
        });
    }
    Ok(m)
}

/// A UTC timestamp for directory names: `20261123T134553Z`.
fn timestamp(secs: u64) -> String {
    crate::backup::utc_stamp(i64::try_from(secs).unwrap_or(0))
}

/// Hold the migration lock for as long as the returned lock lives.
fn lock(root: &Root) -> Result<nix::fcntl::Flock<fs::File>, MigrateError> {
    use std::os::unix::fs::DirBuilderExt;
    let base = root.real(Path::new(BACKUP_ROOT));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&base)
        .map_err(io_err("cannot create", &base))?;
    let path = base.join(".lock");
    crate::install::try_lock(&path)
        .map_err(io_err("cannot create", &path))?
        .ok_or(MigrateError::Busy { path })
}

/// The instance's or Node Manager's health URL with its ports filled in.
fn health_url(inst: &Installation, root: &Root, target: Target) -> Option<String> {
    match target {
        Target::Instance(k) => {
            let i = &inst.instances[k];
            let ports = install::read_ports(root, &i.dir).ok().flatten()?;
            install::complete_health_url(&i.settings.health_url, ports).ok()
        }
        Target::NodeManager => inst
            .node_manager
            .as_ref()
            .map(|nm| nm.settings.health_url.clone()),
    }
}

fn is_running(state: &str) -> bool {
    matches!(
        state,
        "active" | "activating" | "reloading" | "deactivating"
    )
}

fn running(systemd: &Systemd, unit: &str) -> Result<bool, String> {
    systemd
        .status(unit)
        .map(|s| is_running(&s.active_state))
        .map_err(|e| e.to_string())
}

/// [`ROLLBACK_CONFIG`] as a table (empty when absent); Err when it cannot be changed safely.
fn read_rollback_config(root: &Root) -> Result<toml::Table, MigrateError> {
    let path = root.real(Path::new(ROLLBACK_CONFIG));
    match fs::read_to_string(&path) {
        Ok(text) => text
            .parse::<toml::Table>()
            .map_err(|e| MigrateError::Config {
                path,
                detail: format!(
                    "not valid TOML ({}), so it cannot be changed safely",
                    e.message()
                ),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(toml::Table::new()),
        Err(e) => Err(io_err("cannot read", &path)(e)),
    }
}

/// Leave what `saved` starts to its script (`legacy_initd = true` in [`ROLLBACK_CONFIG`]) or
/// take that setting away, keeping everything else the file says: it is read whole, changed
/// and written back whole (atomically), or removed once it says nothing.
pub fn set_left_to_script(
    root: &Root,
    saved: &SavedScript,
    left: bool,
) -> Result<(), MigrateError> {
    let path = root.real(Path::new(ROLLBACK_CONFIG));
    let bad = |detail: String| MigrateError::Config {
        path: path.clone(),
        detail,
    };
    let mut table = read_rollback_config(root)?;
    let (outer, key) = match &saved.instance {
        Some(key) => ("instances", Some(key.as_str())),
        None => ("nodemanager", None),
    };
    let mut section = &mut table;
    for name in std::iter::once(outer).chain(key) {
        section = section
            .entry(name)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| bad(format!("{name} is not a table")))?;
    }
    match left {
        true => section.insert("legacy_initd".into(), toml::Value::Boolean(true)),
        false => section.remove("legacy_initd"),
    };
    // Drop the tables this left empty, innermost first.
    if let (Some(key), Some(toml::Value::Table(instances))) = (key, table.get_mut(outer)) {
        if instances
            .get(key)
            .is_some_and(|t| t.as_table().is_some_and(|t| t.is_empty()))
        {
            instances.remove(key);
        }
    }
    if table
        .get(outer)
        .is_some_and(|t| t.as_table().is_some_and(|t| t.is_empty()))
    {
        table.remove(outer);
    }
    if table.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("cannot remove", &path)(e)),
            _ => Ok(()),
        };
    }
    let text = format!(
        "# Written by `gatewayctl migrate-initd`: `--rollback` leaves what it gives back to its\n\
         # /etc/init.d/vshell-* script (legacy_initd = true), `--apply` takes that away again.\n\n{}",
        toml::to_string(&table).map_err(|e| bad(e.to_string()))?
    );
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
    }
    install::write_atomic(&path, text.as_bytes(), 0o644).map_err(io_err("cannot write", &path))
}

/// Everything one migration step works with.
struct Migration<'a> {
    systemd: &'a Systemd,
    root: &'a Root,
    backup: PathBuf,
    manifest: Manifest,
}

impl Migration<'_> {
    fn save_manifest(&self) -> Result<(), String> {
        write_manifest(&self.backup, &self.manifest).map_err(|e| e.to_string())
    }

    /// Hand script `k` to its unit: stop its legacy service, check nothing else serves the
    /// instance, move the script away and mask its legacy unit, enable the unit if the script
    /// started at boot, reload, and start the unit where the script ran until it serves and its
    /// balancers took it back. A failure once the script is moved gives it back to the script.
    fn hand_to_unit(
        &mut self,
        inst: &Installation,
        k: usize,
        target: Target,
        who: &str,
    ) -> Result<(), String> {
        let saved = self.manifest.scripts[k].clone();
        let (systemd, root) = (self.systemd, self.root);
        let restart_legacy = |why: String| -> String {
            if saved.legacy_was_active
                && super::run_job_reported(systemd, Verb::Start, &saved.legacy_unit).is_ok()
            {
                return format!("{why}; {} runs it again", saved.legacy_unit);
            }
            why
        };
        if saved.legacy_was_active {
            super::run_job_reported(systemd, Verb::Stop, &saved.legacy_unit).map_err(|_| {
                format!(
                    "{} did not stop, so it was left to its script",
                    saved.legacy_unit
                )
            })?;
            println!("{who}: stopped {}", saved.legacy_unit);
        }
        // Our own unit may already serve it (gateway.target started it at boot, its legacy unit
        // being masked): that copy is not outside systemd.
        if !running(systemd, &saved.unit)? {
            let Some(url) = health_url(inst, root, target) else {
                return Err(restart_legacy(
                    "cannot check that no copy of it runs outside systemd: its health URL cannot be completed (see `gatewayctl check-config` and its conf/envSettings.props)".to_string(),
                ));
            };
            if let Some(addr) = crate::launch::already_running(&url) {
                return Err(restart_legacy(format!(
                    "it still answers on {addr} with {} stopped: a copy runs outside systemd. Stop it with the vendor's tools (startinstance -k), then run `gatewayctl migrate-initd --apply` again",
                    saved.legacy_unit
                )));
            }
        }

        // Recorded as moved before it is: a crash in between leaves a script that rollback
        // finds identical to its copy and puts back harmlessly.
        self.manifest.scripts[k].moved = true;
        self.save_manifest().map_err(&restart_legacy)?;
        remove_original(root, &saved).map_err(|e| restart_legacy(e.to_string()))?;
        let moved = Ok(())
            .and_then(|_| {
                systemd
                    .mask_files(&[&saved.legacy_unit], true)
                    .map_err(|e| e.to_string())
            })
            .and_then(|_| set_left_to_script(root, &saved, false).map_err(|e| e.to_string()))
            .and_then(|_| self.enable_if_it_started_at_boot(k));
        let moved =
            moved.and_then(|enabled| systemd.reload().map(|_| enabled).map_err(|e| e.to_string()));
        let enabled = match moved {
            Ok(e) => e,
            Err(why) => return Err(self.give_back_after(k, who, why)),
        };
        println!(
            "{who}: moved {} to {}, masked {}{enabled}",
            saved.path.display(),
            self.backup.display(),
            saved.legacy_unit
        );
        if !saved.legacy_was_active {
            return Ok(());
        }

        let started = Instant::now();
        if super::run_job_reported(systemd, Verb::Start, &saved.unit).is_err() {
            return Err(self.give_back_after(k, who, format!("{} did not start", saved.unit)));
        }
        if let Err(state) = super::wait_serving(systemd, &saved.unit, started) {
            return Err(self.give_back_after(
                k,
                who,
                format!("{} started but does not serve ({state})", saved.unit),
            ));
        }
        println!(
            "{who}: started {} ({}): serving after {:.1}s",
            saved.unit,
            saved.what,
            started.elapsed().as_secs_f64()
        );
        // Under its script no launcher recorded its balancers: each one polling it now must
        // take it back before the next instance goes out.
        if let Some((socket, rise)) = target_socket(inst, target) {
            let serving_since = Instant::now();
            match super::wait_for_pool(&socket, None, rise, serving_since) {
                Ok(how) => println!("{who}: back in its balancers' pool: {how}"),
                Err(missing) => {
                    return Err(format!(
                        "it serves from {} but these load balancers have not seen it pass {rise} checks in a row: {missing}; check them before going on",
                        saved.unit
                    ))
                }
            }
        }
        Ok(())
    }

    /// Enable the unit (and gateway.target) when the script started at boot; says what it did.
    fn enable_if_it_started_at_boot(&mut self, k: usize) -> Result<String, String> {
        let saved = &self.manifest.scripts[k];
        if !saved.rc_links.iter().any(RcLink::starts) {
            return Ok(String::new());
        }
        let state = |u: &str| self.systemd.unit_file_state(u).map_err(|e| e.to_string());
        let mut to_enable = Vec::new();
        let unit_enabled = state(&saved.unit)? == "enabled";
        if !unit_enabled {
            to_enable.push(saved.unit.clone());
        }
        let target_enabled = state(crate::units::name::GATEWAY_TARGET)? == "enabled";
        if !target_enabled {
            to_enable.push(crate::units::name::GATEWAY_TARGET.to_string());
        }
        if to_enable.is_empty() {
            return Ok(String::new());
        }
        let refs: Vec<&str> = to_enable.iter().map(String::as_str).collect();
        self.systemd
            .enable_files(&refs, true)
            .map_err(|e| e.to_string())?;
        self.manifest.scripts[k].enabled_unit |= !unit_enabled;
        self.manifest.enabled_target |= !target_enabled;
        self.save_manifest()?;
        Ok(format!(
            ", enabled {} (the script started at boot)",
            to_enable.join(" ")
        ))
    }

    /// A step failed after its script was moved: give it back, and say both.
    fn give_back_after(&mut self, k: usize, who: &str, why: String) -> String {
        match self.give_back(k, who) {
            Ok(()) => format!("{why}; it was given back to its script"),
            Err(also) => format!("{why}; giving it back to its script failed too: {also}"),
        }
    }

    /// Hand script `k` back: never over a script changed since the apply; stop the unit
    /// (drained), restore the script and its rc links exactly, leave it to its script in
    /// [`ROLLBACK_CONFIG`], unmask its legacy unit, disable what apply enabled, reload, and
    /// start the legacy service if it ran before the apply or the unit ran until now.
    fn give_back(&mut self, k: usize, who: &str) -> Result<(), GiveBackError> {
        let saved = self.manifest.scripts[k].clone();
        let (systemd, root) = (self.systemd, self.root);
        let real = root.real(&saved.path);
        if fs::symlink_metadata(&real).is_ok() {
            let copy = self.backup.join(&saved.name);
            let original = match saved.symlink {
                Some(_) => None,
                None => Some(
                    fs::read(&copy).map_err(|e| format!("cannot read {}: {e}", copy.display()))?,
                ),
            };
            if let Some(how) = differs(&real, &saved, original.as_deref()) {
                return Err(GiveBackError::Changed(format!(
                    "{} was changed since the apply ({how}), so it was left as it is and {} keeps running {}; compare it with {}, put the one you want in place, and run --rollback again",
                    saved.path.display(),
                    saved.unit,
                    saved.what,
                    copy.display()
                )));
            }
        }
        // Back to how it was: a script that ran its instance, or was left to run it, runs it
        // again; one whose instance its unit ran stays inert beside the unit (masked again by
        // the generator).
        let to_script = saved.legacy_was_active || saved.left_to_script;
        let unit_ran = running(systemd, &saved.unit)?;
        if to_script && unit_ran {
            super::run_job_reported(systemd, Verb::Stop, &saved.unit)
                .map_err(|_| format!("{} did not stop", saved.unit))?;
            println!("{who}: stopped {} (drained)", saved.unit);
        }
        restore(root, &self.backup, &saved).map_err(|e| e.to_string())?;
        if to_script {
            set_left_to_script(root, &saved, true).map_err(|e| e.to_string())?;
        }
        systemd
            .mask_files(&[&saved.legacy_unit], false)
            .map_err(|e| e.to_string())?;
        if saved.enabled_unit {
            systemd
                .enable_files(&[&saved.unit], false)
                .map_err(|e| e.to_string())?;
        }
        let step = &mut self.manifest.scripts[k];
        step.moved = false;
        step.enabled_unit = false;
        self.save_manifest()?;
        systemd.reload().map_err(|e| e.to_string())?;
        println!(
            "{who}: restored {} and {} rc link(s); {}",
            saved.path.display(),
            saved.rc_links.len(),
            match to_script {
                true => format!("{ROLLBACK_CONFIG} leaves {} to it", saved.what),
                false => format!("{} runs {} as before the apply", saved.unit, saved.what),
            }
        );
        if to_script && (saved.legacy_was_active || unit_ran) {
            super::run_job_reported(systemd, Verb::Start, &saved.legacy_unit)
                .map_err(|_| format!("{} did not start", saved.legacy_unit))?;
            println!("{who}: started {} ({})", saved.legacy_unit, saved.what);
        }
        Ok(())
    }
}

/// Why a script was not given back.
#[derive(Debug)]
enum GiveBackError {
    /// It was changed since the apply, so it was left as it is.
    Changed(String),
    /// Something else failed.
    Failed(String),
}

impl From<String> for GiveBackError {
    fn from(why: String) -> Self {
        GiveBackError::Failed(why)
    }
}

impl std::fmt::Display for GiveBackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GiveBackError::Changed(why) | GiveBackError::Failed(why) => f.write_str(why),
        }
    }
}

/// The launcher's control socket and the `lb_rise` of an instance (the Node Manager has no
/// load balancers).
fn target_socket(inst: &Installation, target: Target) -> Option<(PathBuf, u32)> {
    match target {
        Target::Instance(k) => inst.instances.get(k).map(|i| {
            (
                crate::drain::control_socket(&i.runtime_dir()),
                i.settings.lb_rise,
            )
        }),
        Target::NodeManager => None,
    }
}
fn report(e: &SystemdError) -> i32 {
    eprintln!("gatewayctl: {e}");
    match e {
        SystemdError::Denied { .. } => exit::DENIED,
        _ => exit::FAILED,
    }
}

/// Refuse while a restore is unfinished: its trees are half old, half new.
fn restore_unfinished(root: &Root) -> bool {
    match crate::backup::restore::pending(&root.real(Path::new("/"))) {
        Some(i) => {
            eprintln!("gatewayctl: a restore of {} is unfinished: run `gatewayctl restore --recover` first; nothing was changed", i.archive);
            true
        }
        None => false,
    }
}

/// `migrate-initd --apply`: one script at a time, the Node Manager first, each instance
/// serving from its unit and back in its balancers' pool before the next one goes out.
pub fn apply(systemd: &Systemd, inst: &Installation, root: &Root) -> i32 {
    let _lock = match lock(root) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gatewayctl: {e}");
            return exit::FAILED;
        }
    };
    if restore_unfinished(root) {
        return exit::FAILED;
    }
    // The drop-in each step edits must be readable before the first legacy service stops: a
    // step that cannot record its instance's fate must not begin.
    if let Err(e) = read_rollback_config(root) {
        eprintln!("gatewayctl: {e}");
        return exit::FAILED;
    }
    let (scripts, unreadable) = initd::scan(root);
    for (path, why) in unreadable {
        println!("{}: left alone: cannot read: {why}", path.display());
    }
    let lookup = Lookup::new(inst);
    let mut steps: Vec<(PathBuf, Target, String, bool)> = Vec::new();
    for script in &scripts {
        let fate = lookup.fate(script);
        match (&fate, fate.mapped()) {
            (_, Some((target, legacy_unit))) => steps.push((
                script.path.clone(),
                target,
                legacy_unit.to_string(),
                matches!(fate, Fate::LeftToScript { .. }),
            )),
            (Fate::Unnamable { target }, None) => println!(
                "{}: left alone: it starts {} but its name cannot be a unit name; rename it to vshell-<group>-<instance> and run again",
                script.path.display(),
                target.describe(inst).0
            ),
            (Fate::LeftAlone { reason }, None) => {
                println!("{}: left alone: {reason}", script.path.display())
            }
            _ => {}
        }
    }
    if steps.is_empty() {
        println!("nothing to migrate: no legacy script starts an instance or the Node Manager of this host");
        return exit::OK;
    }
    // The Node Manager first: instances may be ordered after it.
    steps.sort_by_key(|(_, target, _, _)| !matches!(target, Target::NodeManager));

    // 1. Copy every script (and record its rc links) before anything changes.
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let backup = root.real(&Path::new(BACKUP_ROOT).join(timestamp(created)));
    if let Err(e) = fs::create_dir(&backup) {
        eprintln!("gatewayctl: cannot create {}: {e}", backup.display());
        return exit::FAILED;
    }
    let mut manifest = Manifest {
        version: 1,
        created,
        enabled_target: false,
        scripts: Vec::new(),
    };
    let legacy_units: Vec<String> = steps.iter().map(|(_, _, l, _)| l.clone()).collect();
    let legacy_states = systemd.status_many(&legacy_units);
    for ((script, target, legacy_unit, left_to_script), state) in steps.iter().zip(legacy_states) {
        let (what, unit) = target.describe(inst);
        let instance = match target {
            Target::Instance(_) => Some(what.clone()),
            Target::NodeManager => None,
        };
        let mut saved = match save(root, &backup, script, (&what, &unit, instance), legacy_unit) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("gatewayctl: {e}; nothing was changed");
                return exit::FAILED;
            }
        };
        saved.left_to_script = *left_to_script;
        saved.legacy_was_active = match state {
            Ok(s) => is_running(&s.active_state),
            Err(e) => return report(&e),
        };
        manifest.scripts.push(saved);
    }
    if let Err(e) = write_manifest(&backup, &manifest) {
        eprintln!("gatewayctl: {e}; nothing was changed");
        return exit::FAILED;
    }
    println!(
        "saved {} script(s) and their rc links in {}",
        manifest.scripts.len(),
        backup.display()
    );

    // 2. One at a time.
    let mut m = Migration {
        systemd,
        root,
        backup,
        manifest,
    };
    let n = steps.len();
    for (k, (_, target, _, _)) in steps.iter().enumerate() {
        let who = format!("[{}/{n}] {}", k + 1, m.manifest.scripts[k].what);
        if let Err(why) = m.hand_to_unit(inst, k, *target, &who) {
            eprintln!("{who}: {why}");
            let names = |moved: bool| -> String {
                let v: Vec<&str> = m
                    .manifest
                    .scripts
                    .iter()
                    .enumerate()
                    .filter(|(j, s)| *j != k && s.moved == moved)
                    .map(|(_, s)| s.what.as_str())
                    .collect();
                match v.is_empty() {
                    true => "none".to_string(),
                    false => v.join(", "),
                }
            };
            eprintln!(
                "migration stopped at {}: migrated (run by their units): {}; not migrated (run by their scripts as before): {}. \
                 Once the cause is fixed, `gatewayctl migrate-initd --apply` migrates the rest; `--rollback` gives the migrated ones back to their scripts",
                m.manifest.scripts[k].what,
                names(true),
                names(false)
            );
            return exit::FAILED;
        }
    }
    println!(
        "migrated {n} script(s) one at a time; `gatewayctl migrate-initd --rollback` gives them back"
    );
    exit::OK
}

/// `migrate-initd --rollback`: every apply that still has scripts moved, newest first (an
/// apply stopped halfway and run again made two), or only the one in `from`.
pub fn rollback(systemd: &Systemd, root: &Root, from: Option<&Path>) -> i32 {
    let _lock = match lock(root) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gatewayctl: {e}");
            return exit::FAILED;
        }
    };
    if restore_unfinished(root) {
        return exit::FAILED;
    }
    let backups = match from {
        Some(dir) => vec![dir.to_path_buf()],
        None => match backups_with_moved_scripts(root) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("gatewayctl: {e}");
                return exit::FAILED;
            }
        },
    };
    let mut left = Vec::new();
    for backup in backups {
        if let Err(code) = rollback_one(systemd, backup, root, &mut left) {
            return code;
        }
    }
    if !left.is_empty() {
        eprintln!(
            "rolled back all but {}: their scripts were changed since the apply (see above)",
            left.join(", ")
        );
        return exit::FAILED;
    }
    println!("rolled back: the scripts are in /etc/init.d again and {ROLLBACK_CONFIG} leaves them to their scripts");
    exit::OK
}

/// The backup directories whose manifest still has a moved script, newest first.
fn backups_with_moved_scripts(root: &Root) -> Result<Vec<PathBuf>, MigrateError> {
    let base = root.real(Path::new(BACKUP_ROOT));
    let mut dirs: Vec<PathBuf> = fs::read_dir(&base)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join(MANIFEST).is_file())
                .collect()
        })
        .unwrap_or_default();
    // Names are UTC timestamps: the greatest is the newest.
    dirs.sort();
    dirs.reverse();
    let mut with_moved = Vec::new();
    for dir in dirs {
        if read_manifest(&dir)?.scripts.iter().any(|s| s.moved) {
            with_moved.push(dir);
        }
    }
    match with_moved.is_empty() {
        true => Err(MigrateError::NoBackup { dir: base }),
        false => Ok(with_moved),
    }
}

/// Give back what one apply moved, one script at a time in reverse; scripts changed since
/// the apply are left (named in `left`); any other failure stops the rollback.
fn rollback_one(
    systemd: &Systemd,
    backup: PathBuf,
    root: &Root,
    left: &mut Vec<String>,
) -> Result<(), i32> {
    let manifest = read_manifest(&backup).map_err(|e| {
        eprintln!("gatewayctl: {e}");
        exit::FAILED
    })?;
    let moved: Vec<usize> = (0..manifest.scripts.len())
        .rev()
        .filter(|k| manifest.scripts[*k].moved)
        .collect();
    println!(
        "rolling back the migration saved in {} ({} of its {} script(s) moved)",
        backup.display(),
        moved.len(),
        manifest.scripts.len()
    );
    let mut m = Migration {
        systemd,
        root,
        backup,
        manifest,
    };
    let n = moved.len();
    for (step, k) in moved.into_iter().enumerate() {
        let who = format!("[{}/{n}] {}", step + 1, m.manifest.scripts[k].what);
        match m.give_back(k, &who) {
            Ok(()) => {}
            Err(GiveBackError::Changed(why)) => {
                eprintln!("{who}: {why}");
                left.push(m.manifest.scripts[k].what.clone());
            }
            Err(GiveBackError::Failed(why)) => {
                eprintln!("{who}: {why}");
                eprintln!(
                    "rollback stopped at {}; run it again once the cause is fixed",
                    m.manifest.scripts[k].what
                );
                return Err(exit::FAILED);
            }
        }
    }
    // gateway.target goes back to disabled only once nothing this apply moved runs from a unit.
    if m.manifest.enabled_target && m.manifest.scripts.iter().all(|s| !s.moved) {
        if let Err(e) = systemd.set_enabled(&[crate::units::name::GATEWAY_TARGET], false) {
            return Err(report(&e));
        }
        m.manifest.enabled_target = false;
        m.save_manifest().map_err(|e| {
            eprintln!("gatewayctl: {e}");
            exit::FAILED
        })?;
        println!("disabled {}", crate::units::name::GATEWAY_TARGET);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), "19700101T000000Z");
        assert_eq!(timestamp(1_795_441_553), "20261123T134553Z");
        assert_eq!(timestamp(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn save_remove_restore_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let init = dir.path().join("etc/init.d");
        let rc2 = dir.path().join("etc/rc2.d");
        let rc0 = dir.path().join("etc/rc0.d");
        for d in [&init, &rc2, &rc0] {
            fs::create_dir_all(d).unwrap();
        }
        let script = init.join("vshell-g-i");
        fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o750)).unwrap();
        let old = mtime_of(1_600_000_000, 123_456_789);
        fs::File::options()
            .write(true)
            .open(&script)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(old))
            .unwrap();
        std::os::unix::fs::symlink("../init.d/vshell-g-i", rc2.join("S20vshell-g-i")).unwrap();
        std::os::unix::fs::symlink("/etc/init.d/vshell-g-i", rc0.join("K01vshell-g-i")).unwrap();
        std::os::unix::fs::symlink("../init.d/other", rc2.join("S20other")).unwrap();
        // Red Hat's layout: /etc/rc3.d -> rc.d/rc3.d; the link is one link, not two.
        let rc3 = dir.path().join("etc/rc.d/rc3.d");
        fs::create_dir_all(&rc3).unwrap();
        std::os::unix::fs::symlink("rc.d/rc3.d", dir.path().join("etc/rc3.d")).unwrap();
        std::os::unix::fs::symlink("../init.d/vshell-g-i", rc3.join("S20vshell-g-i")).unwrap();
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        set_link_meta(&rc2.join("S20vshell-g-i"), uid, gid, (1_500_000_000, 5)).unwrap();
        let backup = dir.path().join("backup");
        fs::create_dir(&backup).unwrap();

        let logical = Path::new("/etc/init.d/vshell-g-i");
        let saved = save(
            &root,
            &backup,
            logical,
            ("g/i", "gateway@g-i.service", Some("g/i".into())),
            "vshell-g-i.service",
        )
        .unwrap();
        assert_eq!(saved.mode, 0o750);
        assert_eq!(
            (saved.mtime, saved.mtime_nsec),
            (1_600_000_000, 123_456_789)
        );
        let links: Vec<(&str, &str)> = saved
            .rc_links
            .iter()
            .map(|l| (l.path.to_str().unwrap(), l.target.to_str().unwrap()))
            .collect();
        assert_eq!(
            links,
            [
                ("/etc/rc.d/rc3.d/S20vshell-g-i", "../init.d/vshell-g-i"),
                ("/etc/rc0.d/K01vshell-g-i", "/etc/init.d/vshell-g-i"),
                ("/etc/rc2.d/S20vshell-g-i", "../init.d/vshell-g-i")
            ]
        );
        let link_mtime = fs::symlink_metadata(rc2.join("S20vshell-g-i"))
            .unwrap()
            .mtime();
        assert_eq!(link_mtime, 1_500_000_000);
        assert!(saved.rc_links.iter().any(RcLink::starts));

        remove_original(&root, &saved).unwrap();
        assert!(!script.exists() && fs::symlink_metadata(rc2.join("S20vshell-g-i")).is_err());
        assert!(fs::symlink_metadata(rc2.join("S20other")).is_ok());

        restore(&root, &backup, &saved).unwrap();
        assert_eq!(fs::read_to_string(&script).unwrap(), "#!/bin/sh\necho hi\n");
        let meta = fs::metadata(&script).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o750);
        assert_eq!(meta.modified().unwrap(), old);
        assert_eq!(
            fs::read_link(rc2.join("S20vshell-g-i")).unwrap(),
            Path::new("../init.d/vshell-g-i")
        );
        let restored = fs::symlink_metadata(rc2.join("S20vshell-g-i")).unwrap();
        assert_eq!((restored.mtime(), restored.mtime_nsec()), (link_mtime, 5));
        // A changed backup copy is refused, not restored.
        fs::write(backup.join("vshell-g-i"), "#!/bin/sh\nrm -rf /\n").unwrap();
        assert!(matches!(
            restore(&root, &backup, &saved),
            Err(MigrateError::Mismatch { .. })
        ));
    }

    fn saved_instance(key: Option<&str>) -> SavedScript {
        SavedScript {
            path: "/etc/init.d/x".into(),
            name: "x".into(),
            symlink: None,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            rc_links: vec![],
            legacy_unit: "x.service".into(),
            unit: "gateway@a-b.service".into(),
            what: key.unwrap_or("the Node Manager").into(),
            instance: key.map(str::to_string),
            legacy_was_active: true,
            enabled_unit: false,
            moved: true,
            left_to_script: true,
        }
    }

    #[test]
    fn left_to_script_settings_are_added_and_taken_away_keeping_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let path = root.real(Path::new(ROLLBACK_CONFIG));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        // What an earlier rollback left, and a setting an operator added by hand.
        fs::write(
            &path,
            "[instances.\"group1/server1\"]\nlegacy_initd = true\n\n[instances.\"group1/server2\"]\nautostart = false\n",
        )
        .unwrap();
        let edge = saved_instance(Some("pay \"eu\"/edge node 1"));
        set_left_to_script(&root, &edge, true).unwrap();
        set_left_to_script(&root, &saved_instance(None), true).unwrap();
        let read = || {
            let mut c = crate::install::config::Config::default();
            c.merge_file(&fs::read_to_string(&path).unwrap(), &path)
                .unwrap();
            c
        };
        let c = read();
        assert_eq!(
            c.instances["pay \"eu\"/edge node 1"].0.legacy_initd,
            Some(true)
        );
        assert_eq!(c.instances["group1/server1"].0.legacy_initd, Some(true));
        assert_eq!(c.instances["group1/server2"].0.autostart, Some(false));
        assert_eq!(c.nodemanager.legacy_initd, Some(true));

        set_left_to_script(&root, &saved_instance(Some("group1/server1")), false).unwrap();
        set_left_to_script(&root, &saved_instance(None), false).unwrap();
        let c = read();
        assert!(!c.instances.contains_key("group1/server1"));
        assert_eq!(c.nodemanager.legacy_initd, None);
        assert_eq!(c.instances["group1/server2"].0.autostart, Some(false));

        // Nothing left to say: the file goes.
        set_left_to_script(&root, &edge, false).unwrap();
        fs::write(&path, "[instances.\"g/i\"]\nlegacy_initd = true\n").unwrap();
        set_left_to_script(&root, &saved_instance(Some("g/i")), false).unwrap();
        assert!(!path.exists());

        // A file that does not parse is never overwritten.
        fs::write(&path, "[instances.\"g/i\"\nlegacy_initd = true\n").unwrap();
        assert!(matches!(
            set_left_to_script(&root, &edge, true),
            Err(MigrateError::Config { .. })
        ));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "[instances.\"g/i\"\nlegacy_initd = true\n"
        );
    }
}
