//! `gatewayctl restore`: safe before anything is written, atomic where it lands.
//!
//! 1. The manifest (checked against `ARCHIVE.sha256`) is checked entry by entry: relative,
//!    normal paths only, each once, inside one of its scopes, under a directory it lists (never
//!    under a link), links that do not climb out of the target root. Anything else is refused,
//!    naming the entry, before a byte is written.
//! 2. Every scope is extracted into a staging directory (0700) beside it, on its filesystem,
//!    deciding each entry ourselves (never the tar crate's `unpack`), while every entry of the
//!    archive is checked against the manifest and every file's sha256 against it. Any
//!    difference removes the staging directories: nothing changed.
//! 3. An intent record lists every rename still to do, each with the inode it moves. The
//!    gateways are stopped (drained), each scope is swapped into place with
//!    `renameat2(RENAME_EXCHANGE)` (the previous tree lands in the staging directory: the
//!    rollback copy), systemd reloads and starts what the restored state enables. Killed at any
//!    point, `restore --recover` finishes the renames (a rename is done when its target holds
//!    the recorded inode); while the intent record exists the generator starts no instance.

use super::manifest::{Entry, Kind, Manifest, ScopeRecord, MANIFEST_PATH};
use super::BackupError;
use crate::install;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Where restore keeps its records, relative to the target root.
pub const RESTORE_DIR: &str = "var/lib/gateway-systemd/restore";
/// The intent record of a restore (or rollback) under way.
pub const INTENT: &str = "var/lib/gateway-systemd/restore/intent.json";
/// What the last restore did: what `--rollback` undoes.
pub const LAST: &str = "var/lib/gateway-systemd/restore/last.json";
/// The config drop-in a restore onto a standby writes: which host it stands in for.
pub const AS_HOST_DROPIN: &str = "etc/gateway-systemd/gateway.toml.d/95-restored-host.toml";
/// Staging directories are named `.gateway-restore.<id>`.
const STAGING_PREFIX: &str = ".gateway-restore.";

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The target root (`/` for this host).
    pub target: PathBuf,
    /// Check and plan only.
    pub dry_run: bool,
    /// Owners by the archive's ids, never by name.
    pub numeric_ids: bool,
    /// The production host this one stands in for (a cold standby).
    pub as_host: Option<String>,
}

/// What happens around the swap on a running system: stopping the gateways before, reloading
/// systemd and starting what the restored state enables after.
pub trait Services {
    /// Stop (drained) every gateway unit; the units that were running.
    fn stop_all(&self) -> Result<Vec<String>, String>;
    /// Reload systemd (the generator reads the restored installation) and start gateway.target.
    fn reload_and_start(&self) -> Result<(), String>;
}

/// One rename of the swap, with the inode it moves: it is done when `to` holds that inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// `exchange` (both paths exist) or `rename` (`to` does not exist).
    pub op: String,
    /// From (relative to the target root).
    pub from: String,
    /// To (relative to the target root).
    pub to: String,
    /// (device, inode) of what is at `from` when the step is planned.
    pub moves: (u64, u64),
}

/// The intent record: what a restore or rollback still has to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Intent {
    /// `staging` (extracting: undo removes the staging directories), `swapping` or
    /// `rolling-back` (finish the steps).
    pub phase: String,
    /// The archive.
    pub archive: String,
    /// The staging directories (relative to the target root).
    pub staging: Vec<String>,
    /// The renames, in order, one group per scope: the carries into the new tree, then the
    /// swap. A group whose last step (the swap) is done is done whole: the carries moved with
    /// their tree, so their own paths no longer say anything.
    pub steps: Vec<Vec<Step>>,
    /// The groups that undo `steps` (what `--rollback` does once the restore is done).
    pub undo: Vec<Vec<Step>>,
}

/// What a restore did, for the operator and `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreSummary {
    /// The archive.
    pub archive: PathBuf,
    /// The host it was taken on.
    pub host: String,
    /// When it was taken.
    pub created: String,
    /// Entries written.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Scopes swapped into place (or, with --dry-run, that would be).
    pub replaced: Vec<String>,
    /// Live paths the archive does not have, moved aside into the rollback copy.
    pub moved_aside: Vec<String>,
    /// Owner names that map to other ids here, and names unknown here.
    pub warnings: Vec<String>,
    /// Units stopped before the swap.
    pub stopped: Vec<String>,
    /// Seconds per phase: check, extract, stop, swap, start.
    pub seconds: Vec<(String, f64)>,
}

fn refused(archive: &Path, detail: String) -> BackupError {
    BackupError::Refused {
        archive: archive.to_path_buf(),
        detail,
    }
}

/// Is `p` a relative path of normal components only (no `.`, `..`, empty or absolute parts)?
fn is_normal(p: &str) -> bool {
    !p.is_empty()
        && p.len() < 4096
        && !p.contains('\0')
        && !p.starts_with('/')
        && !p.ends_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Where a link points, resolved lexically from its own directory; None when a relative target
/// climbs above the root. An absolute target is taken inside the root (as in a chroot).
fn link_stays_inside(link_path: &str, target: &str) -> bool {
    if target.is_empty() || target.contains('\0') {
        return false;
    }
    if target.starts_with('/') {
        return true;
    }
    let mut depth: i64 = link_path.split('/').count() as i64 - 1;
    for c in Path::new(target).components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// One place a scope lands: the live path, and what the archive has there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Landing {
    /// Relative to the target root.
    live: String,
    /// Paths under it carried over from the live tree (relative to `live`).
    carry: Vec<String>,
}

/// Check every entry of a manifest as restore would (paths, scopes, directories, links):
/// Err names the first entry refused and why. Verify reports the same as damage.
pub fn check_manifest(m: &Manifest) -> Result<(), String> {
    plan(m, None, None).map(|_| ())
}

/// Every scope must be one a backup of the manifest's installation takes, exactly (path, kind,
/// prefixes, exclusions): the manifest says what to replace, and it must not be able to name
/// anything else. Extra roots must be among `allowed` (the restoring host's `[backup]
/// extra_roots`), or any plain path when `allowed` is None (verify's structural check).
fn check_scopes(m: &Manifest, allowed: Option<&[String]>) -> Result<(), String> {
    if !is_normal(&m.install_dir) {
        return Err(format!(
            "install_dir {:?} is not a plain path",
            m.install_dir
        ));
    }
    let known: Vec<ScopeRecord> = super::scopes_of(&Path::new("/").join(&m.install_dir), true, &[])
        .iter()
        .map(super::write::scope_record)
        .collect();
    for s in &m.scopes {
        if known.contains(s) {
            continue;
        }
        let extra = s.name == "extra-root"
            && s.kind == "tree"
            && s.prefixes.is_empty()
            && s.exclude.is_empty()
            && is_normal(&s.path);
        let allowed_here = allowed.is_none_or(|a| a.contains(&s.path));
        match (extra, allowed_here) {
            (true, true) => {}
            (true, false) => {
                return Err(format!(
                    "extra root /{} is not in this host's [backup] extra_roots; add it there to restore it",
                    s.path
                ))
            }
            (false, _) => {
                return Err(format!(
                    "scope {} ({} {}) is not one a backup of /{} takes",
                    s.name, s.kind, s.path, m.install_dir
                ))
            }
        }
    }
    Ok(())
}

/// Check every entry of the manifest (step 1) and work out where each scope lands (with the
/// live entries of `target` its matching scopes would replace). Err names the first entry
/// refused and why.
fn plan(
    m: &Manifest,
    target: Option<&Path>,
    allowed_extra: Option<&[String]>,
) -> Result<Vec<Landing>, String> {
    check_scopes(m, allowed_extra)?;
    let mut seen = HashSet::new();
    let by_path: HashMap<&str, &Entry> = m.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut landings: Vec<Landing> = Vec::new();
    let mut landed: HashSet<String> = HashSet::new();
    let mut land = |live: String, scope: &ScopeRecord, landings: &mut Vec<Landing>| {
        if landed.insert(live.clone()) {
            let carry = scope
                .exclude
                .iter()
                .filter_map(|x| x.strip_prefix(&format!("{live}/")).map(str::to_string))
                .collect();
            landings.push(Landing { live, carry });
        }
    };
    for e in &m.entries {
        if !is_normal(&e.path) {
            return Err(format!("{:?}: not a relative path of plain names", e.path));
        }
        if e.path == MANIFEST_PATH {
            return Err(format!("{}: the manifest's own place", e.path));
        }
        if !seen.insert(e.path.as_str()) {
            return Err(format!("{}: listed twice", e.path));
        }
        // The scope it belongs to, and the path that lands with it.
        let landing = m.scopes.iter().find_map(|s| match s.kind.as_str() {
            "tree" | "file" if e.path == s.path => Some((s, s.path.clone())),
            "tree" if e.path.starts_with(&format!("{}/", s.path)) => Some((s, s.path.clone())),
            "matching" => {
                let rest = e.path.strip_prefix(&format!("{}/", s.path))?;
                let first = rest.split('/').next()?;
                s.prefixes
                    .iter()
                    .any(|p| first.starts_with(p.as_str()))
                    .then(|| (s, format!("{}/{first}", s.path)))
            }
            _ => None,
        });
        let Some((scope, live)) = landing else {
            return Err(format!("{}: outside every scope of the archive", e.path));
        };
        // A tree lands as a directory: never a link that later writes would follow.
        if scope.kind == "tree" && e.path == live && e.kind != Kind::Dir {
            return Err(format!(
                "{}: the top of scope {} is a {}, not a directory",
                e.path,
                scope.name,
                e.kind.word()
            ));
        }
        if scope
            .exclude
            .iter()
            .any(|x| e.path == *x || e.path.starts_with(&format!("{x}/")))
        {
            return Err(format!(
                "{}: inside {}, which a backup never takes",
                e.path, scope.name
            ));
        }
        // Below its landing point, only under directories the archive lists: never through
        // a link, never into a place it does not describe.
        if e.path != live {
            let parent = e.path.rsplit_once('/').map_or("", |(p, _)| p);
            match by_path.get(parent) {
                Some(p) if p.kind == Kind::Dir => {}
                Some(p) => {
                    return Err(format!(
                        "{}: below {}, which is a {} in the archive",
                        e.path,
                        parent,
                        p.kind.word()
                    ))
                }
                None => {
                    return Err(format!(
                        "{}: its directory {parent} is not in the archive",
                        e.path
                    ))
                }
            }
        }
        match e.kind {
            Kind::File if e.sha256.as_ref().is_none_or(|h| h.len() != 64) => {
                return Err(format!("{}: a file without a sha256", e.path))
            }
            Kind::Symlink => {
                let t = e.link.as_deref().unwrap_or("");
                if !link_stays_inside(&e.path, t) {
                    return Err(format!(
                        "{}: a link to {t:?}, outside the target root",
                        e.path
                    ));
                }
            }
            _ => {}
        }
        land(live, scope, &mut landings);
    }
    // What the archive does not have but the scope covers: live entries moved aside.
    for s in &m.scopes {
        match s.kind.as_str() {
            "tree" | "file" => land(s.path.clone(), s, &mut landings),
            "matching" => {
                let Some(target) = target else { continue };
                let dir = target.join(&s.path);
                let mut names: Vec<String> = fs::read_dir(&dir)
                    .map(|rd| {
                        rd.filter_map(Result::ok)
                            .filter_map(|e| e.file_name().into_string().ok())
                            .filter(|n| s.prefixes.iter().any(|p| n.starts_with(p.as_str())))
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                for n in names {
                    land(format!("{}/{n}", s.path), s, &mut landings);
                }
            }
            other => return Err(format!("scope {} is of an unknown kind {other:?}", s.name)),
        }
    }
    // A landing inside another would be swapped twice.
    for a in &landings {
        if landings
            .iter()
            .any(|b| b.live != a.live && a.live.starts_with(&format!("{}/", b.live)))
        {
            return Err(format!("scope {} lies inside another scope", a.live));
        }
    }
    Ok(landings)
}

/// Owner ids on the target for the archive's names: `/etc/passwd` and `/etc/group` of the
/// target root (and the name service when the target is this host).
struct Owners {
    users: HashMap<String, u32>,
    groups: HashMap<String, u32>,
    this_host: bool,
    numeric: bool,
    warned: BTreeSet<String>,
}

fn read_ids(path: &Path) -> HashMap<String, u32> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            Some((name.to_string(), id))
        })
        .collect()
}

impl Owners {
    fn new(target: &Path, numeric: bool) -> Self {
        Owners {
            users: read_ids(&target.join("etc/passwd")),
            groups: read_ids(&target.join("etc/group")),
            this_host: target == Path::new("/"),
            numeric,
            warned: BTreeSet::new(),
        }
    }

    /// The owner ids here for an entry, and whether they are its archived owner (a name known
    /// here with the same id, or only an id): set-id bits are kept only then.
    fn resolve(&mut self, e: &Entry) -> (u32, u32, bool) {
        if self.numeric {
            return (e.uid, e.gid, true);
        }
        let (uid, user_kept) = self.one("user", e.user.as_deref(), e.uid);
        let (gid, group_kept) = self.one("group", e.group.as_deref(), e.gid);
        (uid, gid, user_kept && group_kept)
    }

    fn one(&mut self, what: &str, name: Option<&str>, archived: u32) -> (u32, bool) {
        let Some(name) = name else {
            return (archived, true);
        };
        let table = match what {
            "user" => &self.users,
            _ => &self.groups,
        };
        let local = table.get(name).copied().or_else(|| {
            if !self.this_host {
                return None;
            }
            match what {
                "user" => nix::unistd::User::from_name(name)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw()),
                _ => nix::unistd::Group::from_name(name)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw()),
            }
        });
        match local {
            Some(id) if id != archived => {
                self.warned.insert(format!(
                    "{what} {name} is {id} here and was {archived} on the archived host: files get {id}"
                ));
                (id, true)
            }
            Some(id) => (id, true),
            None => {
                self.warned.insert(format!(
                    "{what} {name} does not exist here: its files keep id {archived}, without set-id bits"
                ));
                (archived, false)
            }
        }
    }
}

fn ino_of(p: &Path) -> Option<(u64, u64)> {
    fs::symlink_metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Do one step unless it is done already.
fn perform(target: &Path, step: &Step) -> io::Result<()> {
    let (from, to) = (target.join(&step.from), target.join(&step.to));
    if ino_of(&to) == Some(step.moves) {
        return Ok(());
    }
    let flags = match step.op.as_str() {
        "exchange" => nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        _ => nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    };
    // A staging directory left empty by the restore was removed; a rollback recreates it.
    if let Some(parent) = to.parent().filter(|p| !p.exists()) {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &from,
        nix::fcntl::AT_FDCWD,
        &to,
        flags,
    )
    .map_err(|e| {
        io::Error::other(format!(
            "rename {} to {}: {e}",
            from.display(),
            to.display()
        ))
    })
}

/// Whether every rename of `groups` can be done: its source exists (unless its group is done
/// already), on the same filesystem as its destination, and is not a mount point.
fn precheck(target: &Path, groups: &[Vec<Step>]) -> Result<(), String> {
    for group in groups {
        let Some(swap) = group.last() else { continue };
        if ino_of(&target.join(&swap.to)) == Some(swap.moves) {
            continue;
        }
        for step in group {
            let from = target.join(&step.from);
            let to = target.join(&step.to);
            let here = fs::symlink_metadata(&from)
                .map_err(|e| format!("{} cannot be moved: {e}", from.display()))?;
            // Only directories are compared: on overlayfs a file's st_dev is its lower
            // filesystem's, not the mount's, while a directory's is the mount's.
            if !here.is_dir() {
                continue;
            }
            let dev_of = |p: Option<&Path>| p.and_then(|p| fs::metadata(p).ok()).map(|m| m.dev());
            if dev_of(from.parent()) != Some(here.dev()) {
                return Err(format!(
                    "{} is a mount point: restore cannot swap it; unmount it, or restore with --target into an image",
                    from.display()
                ));
            }
            let to_dev = dev_of(to.parent()).or_else(|| dev_of(to.parent().and_then(Path::parent)));
            if to_dev.is_some_and(|d| d != here.dev()) {
                return Err(format!(
                    "{} and {} are on different filesystems: they cannot be swapped",
                    from.display(),
                    to.display()
                ));
            }
        }
    }
    Ok(())
}

/// Make every rename of `steps` durable: each directory they touched, synced once (before the
/// intent record goes; until then recovery checks each rename by inode anyway).
fn sync_dirs(target: &Path, steps: &[Vec<Step>]) -> io::Result<()> {
    let mut dirs: Vec<PathBuf> = steps
        .iter()
        .flatten()
        .flat_map(|s| [&s.from, &s.to])
        .filter_map(|p| target.join(p).parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        if let Ok(f) = fs::File::open(&d) {
            f.sync_all()?;
        }
    }
    Ok(())
}

fn write_json<T: Serialize>(target: &Path, rel: &str, value: &T) -> Result<(), BackupError> {
    let path = target.join(rel);
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(BackupError::io("cannot create", dir))?;
    }
    let text = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    install::write_atomic(&path, text.as_bytes(), 0o600)
        .map_err(BackupError::io("cannot write", &path))
}

/// Hold the restore lock of a target (one restore, recovery or rollback at a time) for as long
/// as the returned lock lives.
pub fn lock(target: &Path) -> Result<nix::fcntl::Flock<fs::File>, BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = target.join(RESTORE_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(BackupError::io("cannot create", &dir))?;
    let path = dir.join(".lock");
    install::try_lock(&path)
        .map_err(BackupError::io("cannot open", &path))?
        .ok_or_else(|| {
            BackupError::Config(format!(
                "another restore, recovery or rollback is running on {} (it holds {})",
                target.display(),
                path.display()
            ))
        })
}

/// Whether an unfinished restore or rollback is renaming trees (what holds the gateways:
/// while it only extracts, nothing has changed yet).
pub fn swapping(target: &Path) -> Option<Intent> {
    pending(target).filter(|i| i.phase != "staging")
}

/// Read the intent record of an unfinished restore, if any.
pub fn pending(target: &Path) -> Option<Intent> {
    fs::read(target.join(INTENT))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Write the metadata of an extracted entry: owner, then mode (chown clears set-id bits),
/// then times; set-id bits only for the owner the archive names.
fn set_meta(path: &Path, e: &Entry, owner: (u32, u32), kept_owner: bool) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1))?;
    if e.kind != Kind::Symlink {
        let mode = match kept_owner {
            true => e.mode,
            false => e.mode & 0o1777,
        };
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    let t = TimeSpec::new(e.mtime, i64::from(e.mtime_nsec));
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// The mode an entry gets: set-id bits only for the owner the archive names.
fn mode_of(e: &Entry, kept_owner: bool) -> u32 {
    match kept_owner {
        true => e.mode,
        false => e.mode & 0o1777,
    }
}

/// Whether a piece of data is all zeros (a hole to keep), deciding on its first bytes when
/// they are not (the common case).
fn is_zeros(piece: &[u8]) -> bool {
    piece.iter().take(64).all(|b| *b == 0)
        && piece
            .chunks(4096)
            .all(|c| c.iter().fold(0u8, |acc, b| acc | b) == 0)
}

/// Write a piece of a file's data, keeping runs of zeros as holes (a sparse file stays
/// sparse). Returns whether the piece ended in a hole: the caller then extends the file to its
/// size with `ftruncate`, which only such a file gets (on ext4 a truncate of a new file makes
/// its close wait for the data, auto_da_alloc, which a restore of many files must not).
fn write_holes(file: &mut fs::File, data: &[u8]) -> io::Result<bool> {
    let mut ends_in_hole = false;
    let mut pending: Option<&[u8]> = None;
    for chunk in data.chunks(64 * 1024) {
        ends_in_hole = is_zeros(chunk);
        if ends_in_hole {
            if let Some(p) = pending.take() {
                file.write_all(p)?;
            }
            file.seek(io::SeekFrom::Current(chunk.len() as i64))?;
        } else {
            // Neighbouring chunks with data go out in one write.
            let start = pending.map_or(0, |p| p.len());
            let from = chunk.as_ptr() as usize - data.as_ptr() as usize - start;
            pending = Some(&data[from..from + start + chunk.len()]);
        }
    }
    if let Some(p) = pending {
        file.write_all(p)?;
    }
    Ok(ends_in_hole)
}

/// Write a file's data as it is read (see [`write_holes`]), through `buf`.
fn write_sparse(
    file: &mut fs::File,
    data: &mut dyn Read,
    size: u64,
    buf: &mut [u8],
) -> io::Result<()> {
    let (mut at, mut ends_in_hole) = (0u64, false);
    loop {
        let n = data.read(buf)?;
        if n == 0 {
            break;
        }
        ends_in_hole = write_holes(file, &buf[..n])?;
        at += n as u64;
    }
    if at != size {
        return Err(io::Error::other(format!("{at} bytes instead of {size}")));
    }
    if ends_in_hole {
        file.set_len(size)?;
    }
    Ok(())
}

/// A file's owner, mode and times, to set on it once written.
#[derive(Debug, Clone, Copy)]
struct FileMeta {
    owner: (u32, u32),
    mode: u32,
    mtime: i64,
    mtime_nsec: u32,
}

/// Create a file in staging that must not exist yet.
fn create_staged(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Finish a written file through its descriptor (no path lookups): owner, then mode (chown
/// clears set-id bits), then times.
fn finish_file(file: &fs::File, m: &FileMeta) -> io::Result<()> {
    std::os::unix::fs::fchown(file, Some(m.owner.0), Some(m.owner.1))?;
    file.set_permissions(fs::Permissions::from_mode(m.mode))?;
    let t = nix::sys::time::TimeSpec::new(m.mtime, i64::from(m.mtime_nsec));
    nix::sys::stat::futimens(file, &t, &t).map_err(io::Error::from)
}

/// How much the extraction writes between two syncs of the staging filesystems.
const FLUSH_STEP: u64 = 64 << 20;

/// Writes back what the extraction has written while it goes on, a batch at a time, so that
/// the disk works while the CPU extracts and the sync before the swap waits for the last batch
/// only. (A sync of each file as it is written costs more than it saves: many small writes,
/// and writers blocked on a full queue; the kernel's own writeback would start too late.)
struct Flusher {
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<Option<String>>>>,
}

impl Flusher {
    /// Start syncing the filesystems of `dirs` (each staging directory, opened before anything
    /// was written into it), one directory per filesystem.
    fn start(dirs: &[(PathBuf, fs::File)]) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        use std::sync::atomic::Ordering;
        let mut mine: Vec<(PathBuf, fs::File)> = Vec::new();
        let mut devices = BTreeSet::new();
        for (path, dir) in dirs {
            if devices.insert(dir.metadata()?.dev()) {
                mine.push((path.clone(), dir.try_clone()?));
            }
        }
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (w, d) = (written.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let mut synced = 0;
            while !d.load(Ordering::Relaxed) {
                let now = w.load(Ordering::Relaxed);
                if now - synced < FLUSH_STEP {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                // A failed writeback is reported once per open file (syncfs consumes it): it
                // is told here, or the sync before the swap would never hear of it.
                for (path, dir) in &mine {
                    if let Err(e) = nix::unistd::syncfs(dir) {
                        return Some(format!("{}: {e}", path.display()));
                    }
                }
                synced = now;
            }
            None
        });
        Ok(Flusher {
            written,
            done,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Count bytes written, towards the next sync.
    fn wrote(&self, bytes: u64) {
        self.written
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stop (the sync before the swap does the rest); a sync that failed, if any.
    fn stop(&self) -> Result<(), String> {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.thread.lock().ok().and_then(|mut t| t.take()) {
            Some(t) => match t.join() {
                Ok(None) => Ok(()),
                Ok(Some(failed)) => Err(failed),
                Err(_) => Err("the syncing thread panicked".into()),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // However the extraction ends, the thread ends with it.
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Files up to this size are read whole and handed to the writer threads; larger ones are
/// written as they are read. Bounds what is held in memory: at most three times as many files
/// as there are writers (two queued per writer, one each being written), of this size each.
const HANDED_MAX: u64 = 8 << 20;

/// A file for a writer thread: where it goes, its content, its metadata.
struct FileJob {
    path: PathBuf,
    data: Vec<u8>,
    size: u64,
    meta: FileMeta,
}

/// Write one handed-over file.
fn write_job(job: &FileJob, flusher: &Flusher) -> io::Result<()> {
    let mut f = create_staged(&job.path)?;
    if write_holes(&mut f, &job.data)? {
        f.set_len(job.size)?;
    }
    finish_file(&f, &job.meta)?;
    flusher.wrote(job.size);
    Ok(())
}

/// The threads that write handed-over files, as many as there are CPUs: creating and writing
/// many small files is the kernel's work, which one thread would do one file at a time.
struct Writers {
    jobs: std::sync::mpsc::SyncSender<FileJob>,
    threads: Vec<std::thread::JoinHandle<()>>,
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Writers {
    fn start(flusher: &std::sync::Arc<Flusher>) -> Self {
        // Four writers keep a disk busy; more only hold more files in memory.
        let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let (jobs, rx) = std::sync::mpsc::sync_channel::<FileJob>(2 * n);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let threads = (0..n)
            .map(|_| {
                let (rx, failed, flusher) = (rx.clone(), failed.clone(), flusher.clone());
                std::thread::spawn(move || loop {
                    let next = rx.lock().map(|rx| rx.recv());
                    let Ok(Ok(job)) = next else {
                        return;
                    };
                    if let Err(e) = write_job(&job, &flusher) {
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(format!("{}: {e}", job.path.display()));
                        }
                        return;
                    }
                })
            })
            .collect();
        Writers {
            jobs,
            threads,
            failed,
        }
    }

    /// Hand a file over; fails once a writer failed (the extraction stops there).
    fn send(&self, job: FileJob) -> io::Result<()> {
        let failed = self.failed.lock().ok().and_then(|f| f.clone());
        match failed {
            Some(why) => Err(io::Error::other(why)),
            None => self
                .jobs
                .send(job)
                .map_err(|_| io::Error::other("the writer threads stopped")),
        }
    }

    /// Wait for every handed-over file to be written; the first failure, if any.
    fn finish(self) -> Result<(), String> {
        drop(self.jobs);
        // Every one joined before staging may be removed: none is left writing into it.
        let joined: Vec<_> = self.threads.into_iter().map(|t| t.join()).collect();
        let panicked = joined.iter().any(Result::is_err);
        match self.failed.lock().ok().and_then(|f| f.clone()) {
            Some(why) => Err(why),
            None if panicked => Err("a writer thread panicked".into()),
            None => Ok(()),
        }
    }
}

/// The archive's side of an extraction: whether reading it failed (damage), as opposed to
/// writing the target (a full or read-only disk).
struct Watched<'a> {
    inner: &'a mut dyn Read,
    failed: bool,
}

impl Read for Watched<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| self.failed = true)
    }
}

/// A unique id for this restore's staging directories.
fn restore_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}-{}", now.as_secs(), std::process::id())
}

/// Remove staging directories (an aborted restore's).
fn remove_staging(target: &Path, staging: &[String]) {
    for s in staging {
        let dir = target.join(s);
        if let Ok(m) = fs::symlink_metadata(&dir) {
            remove_on_one_filesystem(&dir, m.dev());
        }
    }
}

/// Remove a tree, but never below a directory of another filesystem (a volume mounted in a
/// rollback copy stays, with the directories above it).
fn remove_on_one_filesystem(path: &Path, dev: u64) {
    let Ok(m) = fs::symlink_metadata(path) else {
        return;
    };
    if !m.is_dir() {
        let _ = fs::remove_file(path);
        return;
    }
    if m.dev() != dev {
        return;
    }
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            remove_on_one_filesystem(&e.path(), dev);
        }
    }
    let _ = fs::remove_dir(path);
}

/// `gatewayctl restore ARCHIVE`.
pub fn restore(
    archive: &Path,
    opts: &RestoreOptions,
    services: Option<&dyn Services>,
) -> Result<RestoreSummary, BackupError> {
    let target = &opts.target;
    let clock = std::time::Instant::now();
    let mut seconds = Vec::new();
    let lap = |name: &str, seconds: &mut Vec<(String, f64)>, since: &mut std::time::Instant| {
        seconds.push((name.to_string(), since.elapsed().as_secs_f64()));
        *since = std::time::Instant::now();
    };
    let mut since = clock;
    if let Some(i) = pending(target) {
        return Err(BackupError::Config(format!(
            "a restore of {} is unfinished ({}): run `gatewayctl restore --recover` first",
            i.archive,
            target.join(INTENT).display()
        )));
    }
    // 1. The manifest, checked before anything else.
    let manifest = super::verify::read_manifest_only(archive)?;
    let (config, _) = install::load_config(&install::Root::new(target));
    let install_dir = config
        .install_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(install::DEFAULT_INSTALL_DIR));
    let here = install_dir.strip_prefix("/").unwrap_or(&install_dir);
    if Path::new(&manifest.install_dir) != here {
        return Err(refused(
            archive,
            format!(
                "it holds an installation in /{}, and this host's is {} (install_dir in /etc/gateway-systemd/gateway.toml); set install_dir to /{} first to restore it there",
                manifest.install_dir,
                install_dir.display(),
                manifest.install_dir
            ),
        ));
    }
    let extra: Vec<String> = config
        .backup
        .extra_roots
        .iter()
        .flatten()
        .map(|p| p.strip_prefix("/").unwrap_or(p).display().to_string())
        .collect();
    let landings = plan(&manifest, Some(target), Some(&extra)).map_err(|d| refused(archive, d))?;
    // Under another root (a standby's image), a link on the way to a landing point would take
    // the rename outside it: refused. On this host its own links are its layout.
    if target != Path::new("/") {
        for l in &landings {
            let mut at = target.to_path_buf();
            for c in Path::new(&l.live)
                .parent()
                .unwrap_or(Path::new(""))
                .components()
            {
                at.push(c);
                if fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(refused(
                        archive,
                        format!(
                            "{} is a symbolic link under the target; restore does not follow it",
                            at.display()
                        ),
                    ));
                }
            }
        }
    }
    if let Some(host) = &opts.as_host {
        if host.is_empty()
            || host.contains(|c: char| c.is_control() || c.is_whitespace() || c == '"')
        {
            return Err(BackupError::Config(format!(
                "--as-host {host:?} is not a host name"
            )));
        }
    }
    lap("check", &mut seconds, &mut since);
    let mut summary = RestoreSummary {
        archive: archive.to_path_buf(),
        host: manifest.host.clone(),
        created: manifest.created.clone(),
        ..Default::default()
    };
    let archived: HashSet<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
    // A landing point with nothing on either side needs nothing, not even its directories.
    let landings: Vec<Landing> = landings
        .into_iter()
        .filter(|l| {
            archived.contains(l.live.as_str()) || fs::symlink_metadata(target.join(&l.live)).is_ok()
        })
        .collect();
    for l in &landings {
        let exists = fs::symlink_metadata(target.join(&l.live)).is_ok();
        match (archived.contains(l.live.as_str()), exists) {
            (true, _) => summary.replaced.push(l.live.clone()),
            (false, true) => summary.moved_aside.push(l.live.clone()),
            (false, false) => {}
        }
    }
    if opts.dry_run {
        // Every byte checked, nothing written.
        let (_, bytes, problems) =
            super::verify::read(archive, true, &mut |_, _| Ok(())).map_err(|e| match e {
                super::verify::ReadError::CannotRead(why) => BackupError::CannotRead(why),
                e => refused(archive, e.to_string()),
            })?;
        if let Some(p) = problems.first() {
            return Err(refused(archive, p.clone()));
        }
        summary.entries = manifest.entries.len() as u64;
        summary.bytes = bytes;
        lap("verify", &mut seconds, &mut since);
        summary.seconds = seconds;
        return Ok(summary);
    }

    // 2. Extract into staging directories beside each landing point.
    let id = restore_id();
    let staged_of = |live: &str| -> String {
        let (parent, name) = live.rsplit_once('/').unwrap_or(("", live));
        match parent {
            "" => format!("{STAGING_PREFIX}{id}/{name}"),
            p => format!("{p}/{STAGING_PREFIX}{id}/{name}"),
        }
    };
    let mut staging: Vec<String> = landings
        .iter()
        .map(|l| {
            let s = staged_of(&l.live);
            s.rsplit_once('/').map_or(s.clone(), |(d, _)| d.to_string())
        })
        .collect();
    staging.sort();
    staging.dedup();
    let mut intent = Intent {
        phase: "staging".into(),
        archive: archive.display().to_string(),
        staging: staging.clone(),
        steps: Vec::new(),
        undo: Vec::new(),
    };
    write_json(target, INTENT, &intent)?;
    let abort = |e: BackupError| -> BackupError {
        remove_staging(target, &staging);
        let _ = fs::remove_file(target.join(INTENT));
        e
    };
    // Each staging directory is opened once, before anything is written into it: a sync
    // through these hears of every writeback that failed since (the flusher's batches share
    // them and report what they hear; the sync before the swap hears the rest).
    let mut staged_dirs: Vec<(PathBuf, fs::File)> = Vec::new();
    for s in &staging {
        use std::os::unix::fs::DirBuilderExt;
        let dir = target.join(s);
        // The parents of a landing point the target lacks (a fresh standby) are made as root's
        // 0755 directories; the staging directory itself is private.
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent)
                .map_err(BackupError::io("cannot create", parent))
                .map_err(abort)?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(BackupError::io("cannot create", &dir))
            .map_err(abort)?;
        let fd = fs::File::open(&dir)
            .map_err(BackupError::io("cannot open", &dir))
            .map_err(abort)?;
        staged_dirs.push((dir, fd));
    }
    let landing_of = |path: &str| -> Option<&Landing> {
        landings
            .iter()
            .find(|l| path == l.live || path.starts_with(&format!("{}/", l.live)))
    };
    let mut owners = Owners::new(target, opts.numeric_ids);
    let mut dirs: Vec<(PathBuf, Entry, (u32, u32), bool)> = Vec::new();
    let mut written = 0u64;
    let mut write_failure: Option<String> = None;
    let mut buf = vec![0u8; 1 << 20];
    let flusher = std::sync::Arc::new(
        Flusher::start(&staged_dirs)
            .map_err(BackupError::io("cannot open", target))
            .map_err(abort)?,
    );
    let writers = Writers::start(&flusher);
    let read = super::verify::read(archive, true, &mut |e: &Entry, data: &mut dyn Read| {
        let l = landing_of(&e.path).ok_or_else(|| io::Error::other("outside every scope"))?;
        let rest = &e.path[l.live.len()..];
        let staged = target.join(format!("{}{rest}", staged_of(&l.live)));
        let (uid, gid, kept) = owners.resolve(e);
        let owner = (uid, gid);
        let mut from_archive = Watched {
            inner: data,
            failed: false,
        };
        let done = (|| -> io::Result<()> {
            match e.kind {
                Kind::Dir => {
                    use std::os::unix::fs::DirBuilderExt;
                    fs::DirBuilder::new().mode(0o700).create(&staged)?;
                    dirs.push((staged.clone(), e.clone(), owner, kept));
                }
                Kind::Symlink => {
                    std::os::unix::fs::symlink(e.link.as_deref().unwrap_or_default(), &staged)?;
                    set_meta(&staged, e, owner, kept)?;
                }
                Kind::File => {
                    let meta = FileMeta {
                        owner,
                        mode: mode_of(e, kept),
                        mtime: e.mtime,
                        mtime_nsec: e.mtime_nsec,
                    };
                    written += e.size;
                    if e.size <= HANDED_MAX {
                        let mut data = Vec::with_capacity(e.size as usize);
                        from_archive.read_to_end(&mut data)?;
                        let job = FileJob {
                            path: staged.clone(),
                            data,
                            size: e.size,
                            meta,
                        };
                        return writers.send(job);
                    }
                    let mut f = create_staged(&staged)?;
                    write_sparse(&mut f, &mut from_archive, e.size, &mut buf)?;
                    finish_file(&f, &meta)?;
                    flusher.wrote(e.size);
                }
            }
            Ok(())
        })();
        if let Err(err) = &done {
            if !from_archive.failed {
                write_failure = Some(format!("{}: {err}", staged.display()));
            }
        }
        done
    });
    // A writer's own failure is the cause of whatever the reading met after it.
    if let Err(failed) = writers.finish() {
        write_failure = Some(failed);
    }
    if let Err(failed) = flusher.stop() {
        write_failure.get_or_insert(failed);
    }
    let problems = match read {
        Ok((_, _, problems)) => problems,
        Err(super::verify::ReadError::CannotRead(why)) => {
            return Err(abort(BackupError::CannotRead(why)))
        }
        Err(e) => vec![e.to_string()],
    };
    if let Some(failed) = write_failure.take() {
        // The target could not take it (full, read-only, permissions): the archive is fine.
        return Err(abort(BackupError::Config(format!(
            "cannot write {failed}; nothing was changed"
        ))));
    }
    if let Some(p) = problems.first() {
        return Err(abort(refused(archive, p.clone())));
    }
    // Directories last, deepest first: creating their entries changed their times.
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (path, e, owner, kept) in &dirs {
        set_meta(path, e, *owner, *kept)
            .map_err(BackupError::io(
                "cannot set the owner, mode and times of",
                path,
            ))
            .map_err(abort)?;
    }
    // The host it stands in for travels with the restored config.
    if let Some(host) = &opts.as_host {
        let config_live = "etc/gateway-systemd";
        if landings.iter().any(|l| l.live == config_live) {
            let dropin = target.join(staged_of(config_live)).join("gateway.toml.d");
            let staged_config = target.join(staged_of(config_live));
            if !staged_config.exists() {
                fs::create_dir(&staged_config)
                    .map_err(BackupError::io("cannot create", &staged_config))
                    .map_err(abort)?;
                fs::set_permissions(&staged_config, fs::Permissions::from_mode(0o755))
                    .map_err(BackupError::io("cannot chmod", &staged_config))
                    .map_err(abort)?;
            }
            fs::create_dir_all(&dropin)
                .map_err(BackupError::io("cannot create", &dropin))
                .map_err(abort)?;
            let path = dropin.join("95-restored-host.toml");
            let text = format!(
                "# Written by `gatewayctl restore --as-host`: this host stands in for {host}\n\
                 # (restored from {}). Remove it once this host runs under its own name.\n\
                 host = {}\n",
                archive.display(),
                install::config::toml_string(host)
            );
            install::write_atomic(&path, text.as_bytes(), 0o644)
                .map_err(BackupError::io("cannot write", &path))
                .map_err(abort)?;
        }
    }
    summary.entries = manifest.entries.len() as u64;
    summary.bytes = written;
    summary.warnings = owners.warned.into_iter().collect();
    lap("extract", &mut seconds, &mut since);

    // Everything staged reaches the disk before anything is swapped: one syncfs per
    // filesystem instead of an fsync per file.
    for (dir, fd) in &staged_dirs {
        nix::unistd::syncfs(fd)
            .map_err(io::Error::from)
            .map_err(BackupError::io("cannot sync", dir))
            .map_err(abort)?;
    }
    // Only one restore can be rolled back: the previous one's rollback copies go once this
    // one is done (its record first, so that a crash in between never leaves a record of
    // half-deleted copies).
    let previous: Option<Intent> = fs::read(target.join(LAST))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());

    // 3. The renames, recorded before the first one.
    let mut steps = Vec::new();
    let mut undo = Vec::new();
    for l in &landings {
        let live = target.join(&l.live);
        let staged_rel = staged_of(&l.live);
        let staged = target.join(&staged_rel);
        let (live_ino, staged_ino) = (ino_of(&live), ino_of(&staged));
        let mut carries = Vec::new();
        if let (Some(_), Some(_)) = (live_ino, staged_ino) {
            for c in &l.carry {
                if let Some(ino) = ino_of(&live.join(c)) {
                    carries.push(Step {
                        op: "rename".into(),
                        from: format!("{}/{c}", l.live),
                        to: format!("{staged_rel}/{c}"),
                        moves: ino,
                    });
                }
            }
        }
        match (live_ino, staged_ino) {
            (Some(li), Some(si)) => {
                let mut group = carries.clone();
                group.push(Step {
                    op: "exchange".into(),
                    from: staged_rel.clone(),
                    to: l.live.clone(),
                    moves: si,
                });
                steps.push(group);
                // Undo: carry back into what will be the rollback copy, then exchange back.
                let mut u = carries.clone();
                u.push(Step {
                    op: "exchange".into(),
                    from: staged_rel.clone(),
                    to: l.live.clone(),
                    moves: li,
                });
                undo.push(u);
            }
            (None, Some(si)) => {
                steps.push(vec![Step {
                    op: "rename".into(),
                    from: staged_rel.clone(),
                    to: l.live.clone(),
                    moves: si,
                }]);
                undo.push(vec![Step {
                    op: "rename".into(),
                    from: l.live.clone(),
                    to: staged_rel.clone(),
                    moves: si,
                }]);
            }
            (Some(li), None) => {
                steps.push(vec![Step {
                    op: "rename".into(),
                    from: l.live.clone(),
                    to: staged_rel.clone(),
                    moves: li,
                }]);
                undo.push(vec![Step {
                    op: "rename".into(),
                    from: staged_rel.clone(),
                    to: l.live.clone(),
                    moves: li,
                }]);
            }
            (None, None) => {}
        }
    }
    undo.reverse();
    // Every rename must be possible before the first is done: a swap that cannot finish
    // could never be left.
    precheck(target, &steps)
        .map_err(|d| abort(BackupError::Config(format!("{d}; nothing was changed"))))?;
    // The gateways stop (drained) before the intent says "swapping": a recovery never swaps
    // under running gateways.
    if let Some(s) = services {
        summary.stopped = s.stop_all().map_err(|e| {
            abort(BackupError::Config(format!(
                "cannot stop the gateways: {e}; nothing was changed (start what was stopped with `systemctl start gateway.target`)"
            )))
        })?;
    }
    lap("stop", &mut seconds, &mut since);
    intent.phase = "swapping".into();
    intent.steps = steps;
    intent.undo = undo;
    write_json(target, INTENT, &intent).map_err(abort)?;
    finish(target, &intent, &manifest.to_bytes())?;
    if let Some(prev) = previous {
        remove_staging(target, &prev.staging);
    }
    lap("swap", &mut seconds, &mut since);
    if let Some(s) = services {
        s.reload_and_start()
            .map_err(|e| BackupError::Config(format!("restored, but {e}")))?;
    }
    lap("start", &mut seconds, &mut since);
    summary.seconds = seconds;
    Ok(summary)
}

/// Do the steps of an intent record (each unless done), then record what `--rollback` undoes
/// and drop the intent.
fn finish(target: &Path, intent: &Intent, manifest: &[u8]) -> Result<(), BackupError> {
    for group in &intent.steps {
        let Some(swap) = group.last() else { continue };
        if ino_of(&target.join(&swap.to)) == Some(swap.moves) {
            continue;
        }
        for step in group {
            perform(target, step).map_err(BackupError::io(
                "cannot swap into place",
                target.join(&step.to),
            ))?;
        }
    }
    sync_dirs(target, &intent.steps).map_err(BackupError::io("cannot sync", target))?;
    if intent.phase == "swapping" {
        let last = Intent {
            phase: "done".into(),
            ..intent.clone()
        };
        write_json(target, LAST, &last)?;
        let record = target.join(MANIFEST_PATH);
        install::write_atomic(&record, manifest, 0o600)
            .map_err(BackupError::io("cannot write", &record))?;
    } else {
        let _ = fs::remove_file(target.join(LAST));
    }
    // Staging directories left empty hold no rollback copy.
    for s in &intent.staging {
        let _ = fs::remove_dir(target.join(s));
    }
    let intent_path = target.join(INTENT);
    fs::remove_file(&intent_path).map_err(BackupError::io("cannot remove", &intent_path))?;
    fs::File::open(target.join(RESTORE_DIR))
        .and_then(|d| d.sync_all())
        .map_err(BackupError::io("cannot sync", target.join(RESTORE_DIR)))
}

/// Stop the gateways before renames under them (the interrupted run may not have).
fn stop(services: Option<&dyn Services>) -> Result<(), BackupError> {
    match services {
        Some(s) => s
            .stop_all()
            .map(|_| ())
            .map_err(|e| BackupError::Config(format!("cannot stop the gateways: {e}"))),
        None => Ok(()),
    }
}

/// `gatewayctl restore --recover`: finish an interrupted restore or rollback (its renames are
/// all planned and their trees complete), or, interrupted while extracting, remove what it
/// staged. Ok(what was done), or Ok(None) when nothing was pending.
pub fn recover(
    target: &Path,
    services: Option<&dyn Services>,
) -> Result<Option<String>, BackupError> {
    let Some(intent) = pending(target) else {
        return Ok(None);
    };
    let done = match intent.phase.as_str() {
        "staging" => {
            remove_staging(target, &intent.staging);
            let p = target.join(INTENT);
            fs::remove_file(&p).map_err(BackupError::io("cannot remove", &p))?;
            format!(
                "the restore of {} was interrupted while extracting: its staging directories were removed; nothing had changed",
                intent.archive
            )
        }
        "swapping" => {
            stop(services)?;
            let manifest = fs::read(target.join(MANIFEST_PATH)).unwrap_or_default();
            let manifest = match super::verify::read_manifest_only(Path::new(&intent.archive)) {
                Ok(m) => m.to_bytes(),
                Err(_) => manifest,
            };
            finish(target, &intent, &manifest)?;
            format!("the restore of {} was finished", intent.archive)
        }
        _ => {
            stop(services)?;
            finish(target, &intent, &[])?;
            format!(
                "the rollback of the restore of {} was finished",
                intent.archive
            )
        }
    };
    if let Some(s) = services {
        s.reload_and_start().map_err(BackupError::Config)?;
    }
    Ok(Some(done))
}

/// `gatewayctl restore --rollback`: put back what the last restore replaced (its rollback
/// copies), the same way: renames recorded first, each checked by inode.
pub fn rollback(target: &Path, services: Option<&dyn Services>) -> Result<String, BackupError> {
    if let Some(i) = pending(target) {
        return Err(BackupError::Config(format!(
            "a restore of {} is unfinished: run `gatewayctl restore --recover` first",
            i.archive
        )));
    }
    let last: Intent = fs::read(target.join(LAST))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            BackupError::Config(format!(
                "no restore to roll back ({} is missing)",
                target.join(LAST).display()
            ))
        })?;
    let intent = Intent {
        phase: "rolling-back".into(),
        steps: last.undo.clone(),
        undo: Vec::new(),
        ..last.clone()
    };
    precheck(target, &intent.steps)
        .map_err(|d| BackupError::Config(format!("cannot roll back: {d}; nothing was changed")))?;
    if let Some(s) = services {
        s.stop_all().map_err(|e| {
            BackupError::Config(format!(
                "cannot stop the gateways: {e}; nothing was rolled back (start what was stopped with `systemctl start gateway.target`)"
            ))
        })?;
    }
    write_json(target, INTENT, &intent)?;
    finish(target, &intent, &[])?;
    if let Some(s) = services {
        s.reload_and_start().map_err(BackupError::Config)?;
    }
    Ok(format!(
        "rolled back the restore of {}: the previous trees are in place again",
        last.archive
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_tree_stops_at_other_filesystems_and_never_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        let dev = fs::metadata(&tree).unwrap().dev();
        // A directory that looks like another filesystem is left, with what holds it.
        remove_on_one_filesystem(&tree, dev + 1);
        assert!(tree.exists());
        remove_on_one_filesystem(&tree, dev);
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn paths_must_be_plain_and_links_stay_inside() {
        assert!(is_normal("opt/apigateway/groups"));
        for bad in ["", "/etc", "a/../b", "a/./b", "a//b", "a/", ".."] {
            assert!(!is_normal(bad), "{bad:?}");
        }
        assert!(link_stays_inside("opt/a/b", "../c"));
        assert!(link_stays_inside("opt/a/b", "../../x"));
        assert!(!link_stays_inside("opt/a/b", "../../../x"));
        assert!(link_stays_inside(
            "etc/systemd/system/vshell-x.service",
            "/dev/null"
        ));
        assert!(!link_stays_inside("a", "../b"));
        assert!(!link_stays_inside("a", ""));
    }
}
