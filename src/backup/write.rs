//! `gatewayctl backup`: walk the scopes (never following a symbolic link), stream every entry
//! into a tar (pax) body compressed with zstd while hashing it, then write the archive as the
//! manifest's own zstd frame followed by the body's: one standard `.tar.zst`, manifest first,
//! each file read once, and the hash in the manifest exactly that of the bytes in the archive.

use super::manifest::{self, Entry, Kind, Manifest, ScopeRecord, MANIFEST_PATH};
use super::scope::{Scope, ScopeKind};
use super::{archive_name, rfc3339, sidecar_of, BackupError};
use crate::install::{self, Installation, Root};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Files up to this size are read whole into memory, so that one that changes while being
/// read can be read again before anything is written.
const BUFFERED_MAX: u64 = 64 * 1024 * 1024;
/// How often a changing file is read again before it is taken as it is and reported.
const READ_ATTEMPTS: u32 = 3;
/// The zstd level of archives (zstd's own default).
pub const ZSTD_LEVEL: i32 = 3;

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Take `platform/` too.
    pub full: bool,
    /// Where to write (a real path; default `[backup] dir` under the root).
    pub to: Option<PathBuf>,
    /// Show a progress bar (on a terminal only).
    pub progress: bool,
    /// More trees to take whole (`[backup] extra_roots`).
    pub extra_roots: Vec<PathBuf>,
    /// The destination from the config (logical).
    pub configured_dir: Option<PathBuf>,
}

/// What a backup wrote, for the operator and `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupSummary {
    /// The archive (real path).
    pub archive: PathBuf,
    /// sha256 of the archive file (what `ARCHIVE.sha256` holds).
    pub sha256: String,
    /// sha256 of its manifest.
    pub manifest_sha256: String,
    /// Regular files taken.
    pub files: u64,
    /// Directories taken.
    pub directories: u64,
    /// Symbolic links taken.
    pub links: u64,
    /// Bytes of file content taken.
    pub bytes: u64,
    /// Size of the archive.
    pub archive_bytes: u64,
    /// bytes / archive_bytes.
    pub ratio: f64,
    /// Wall time.
    pub seconds: f64,
    /// When (UTC, RFC 3339).
    pub created: String,
    /// Entries left out, and why (sockets, devices, names that are not UTF-8).
    pub skipped: Vec<String>,
    /// Files that kept changing while being read: taken as last read.
    pub changed: Vec<String>,
}

/// One entry found by the walk.
struct Found {
    logical: PathBuf,
    path: String,
    meta: fs::Metadata,
}

/// Walk the scopes: every entry to take, in archive order, and what was left out.
fn walk(root: &Root, scopes: &[Scope], never: &[PathBuf]) -> (Vec<Found>, Vec<String>) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for scope in scopes {
        let mut never = never.to_vec();
        never.extend(scope.exclude.iter().cloned());
        let starts: Vec<PathBuf> = match &scope.kind {
            ScopeKind::Tree | ScopeKind::File => vec![scope.path.clone()],
            ScopeKind::Matching(prefixes) => {
                let mut names: Vec<String> = fs::read_dir(root.real(&scope.path))
                    .map(|rd| {
                        rd.filter_map(Result::ok)
                            .filter_map(|e| e.file_name().into_string().ok())
                            .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                names.into_iter().map(|n| scope.path.join(n)).collect()
            }
        };
        for start in starts {
            // A tree whose top is a link would be restored as a link, and nothing under it:
            // say so instead of writing an archive that silently lacks it.
            if scope.kind == ScopeKind::Tree
                && fs::symlink_metadata(root.real(&start)).is_ok_and(|m| m.file_type().is_symlink())
            {
                let to = fs::read_link(root.real(&start)).unwrap_or_default();
                skipped.push(format!(
                    "{}: a symbolic link to {}, not a directory: its contents are not taken; list {} in [backup] extra_roots to take them",
                    start.display(),
                    to.display(),
                    to.display()
                ));
                continue;
            }
            walk_tree(root, &start, &never, &mut found, &mut skipped);
        }
    }
    (found, skipped)
}

/// Walk one tree in name order, never following a symbolic link.
fn walk_tree(
    root: &Root,
    start: &Path,
    never: &[PathBuf],
    found: &mut Vec<Found>,
    skipped: &mut Vec<String>,
) {
    let mut stack = vec![start.to_path_buf()];
    while let Some(p) = stack.pop() {
        if never.iter().any(|n| p.starts_with(n)) {
            continue;
        }
        let real = root.real(&p);
        let meta = match fs::symlink_metadata(&real) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                skipped.push(format!("{}: cannot read: {e}", p.display()));
                continue;
            }
        };
        let Some(path) = p
            .strip_prefix("/")
            .ok()
            .and_then(|r| r.to_str())
            .map(str::to_string)
        else {
            skipped.push(format!("{}: its name is not UTF-8", p.display()));
            continue;
        };
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_dir() || ft.is_symlink()) {
            skipped.push(format!(
                "{}: a socket, device or fifo, which a backup does not take",
                p.display()
            ));
            continue;
        }
        if ft.is_dir() {
            let mut children: Vec<PathBuf> = match fs::read_dir(&real) {
                Ok(rd) => rd
                    .filter_map(Result::ok)
                    .map(|e| p.join(e.file_name()))
                    .collect(),
                Err(e) => {
                    skipped.push(format!("{}: cannot list: {e}", p.display()));
                    Vec::new()
                }
            };
            // Reversed for the stack: archive order is name order.
            children.sort();
            children.reverse();
            stack.extend(children);
        }
        found.push(Found {
            logical: p,
            path,
            meta,
        });
    }
}

/// User and group names by id, looked up once each.
#[derive(Default)]
struct Names {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }
    fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }
}

/// The tar header (and pax records) of an entry; pax carries what ustar cannot hold exactly:
/// long or non-ASCII paths and link targets, nanosecond mtimes, long owner names.
pub(crate) fn header_of(e: &Entry) -> (tar::Header, Vec<(&'static str, Vec<u8>)>) {
    let mut pax: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(match e.kind {
        Kind::File => tar::EntryType::Regular,
        Kind::Dir => tar::EntryType::Directory,
        Kind::Symlink => tar::EntryType::Symlink,
    });
    h.set_mode(e.mode);
    h.set_uid(u64::from(e.uid));
    h.set_gid(u64::from(e.gid));
    h.set_mtime(u64::try_from(e.mtime).unwrap_or(0));
    h.set_size(if e.kind == Kind::File { e.size } else { 0 });
    let shown = match e.kind {
        Kind::Dir => format!("{}/", e.path),
        _ => e.path.clone(),
    };
    if !shown.is_ascii() || h.set_path(&shown).is_err() {
        pax.push(("path", e.path.as_bytes().to_vec()));
        // What a reader without pax sees: a short stand-in.
        let _ = h.set_path(format!(
            "pax-long-name/{}",
            &manifest::sha256_hex(e.path.as_bytes())[..16]
        ));
    }
    if let Some(link) = &e.link {
        if !link.is_ascii() || h.set_link_name(link).is_err() {
            pax.push(("linkpath", link.as_bytes().to_vec()));
            let _ = h.set_link_name("pax-long-link");
        }
    }
    pax.push(("mtime", pax_time(e.mtime, e.mtime_nsec).into_bytes()));
    for (key, name, set) in [
        (
            "uname",
            &e.user,
            tar::Header::set_username as fn(&mut tar::Header, &str) -> io::Result<()>,
        ),
        ("gname", &e.group, tar::Header::set_groupname),
    ] {
        if let Some(n) = name {
            if set(&mut h, n).is_err() {
                pax.push((key, n.as_bytes().to_vec()));
            }
        }
    }
    h.set_cksum();
    (h, pax)
}

/// A time as pax writes it: a decimal number of seconds (`-1.5` is 1.5 s before the epoch,
/// which the (seconds, nanoseconds) pair says as (-2, 500000000)).
pub(crate) fn pax_time(secs: i64, nsec: u32) -> String {
    match (secs < 0, nsec) {
        (true, n) if n > 0 => format!("-{}.{:09}", -(secs + 1), 1_000_000_000 - n),
        _ => format!("{secs}.{nsec:09}"),
    }
}

/// Read a pax time back into (seconds, nanoseconds); None when it is not one.
pub(crate) fn parse_pax_time(value: &str) -> Option<(i64, u32)> {
    let (neg, digits) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(frac) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    Some(match (neg, nanos) {
        (false, n) => (secs, n),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

/// Append one entry with its data.
fn append<W: Write>(b: &mut tar::Builder<W>, e: &Entry, data: impl Read) -> io::Result<()> {
    let (h, pax) = header_of(e);
    if !pax.is_empty() {
        b.append_pax_extensions(pax.iter().map(|(k, v)| (*k, v.as_slice())))?;
    }
    b.append(&h, data)
}

/// Read a file whole, again while it changes (size or mtime differ before and after); the
/// bytes, the metadata they match, and whether it never held still.
fn read_stable(file: &mut fs::File, path: &Path) -> io::Result<(Vec<u8>, fs::Metadata, bool)> {
    use std::io::Seek;
    let mut last = None;
    for _ in 0..READ_ATTEMPTS {
        let before = file.metadata()?;
        file.seek(io::SeekFrom::Start(0))?;
        let mut bytes = Vec::with_capacity(before.len() as usize);
        file.read_to_end(&mut bytes)?;
        let after = file.metadata()?;
        let same = before.len() == after.len()
            && bytes.len() as u64 == after.len()
            && (before.mtime(), before.mtime_nsec()) == (after.mtime(), after.mtime_nsec());
        if same {
            return Ok((bytes, after, false));
        }
        last = Some((bytes, after));
    }
    let (bytes, meta) =
        last.ok_or_else(|| io::Error::other(format!("{}: unreadable", path.display())))?;
    Ok((bytes, meta, true))
}

/// A reader of exactly `len` bytes of `inner` (zeros after a short read), hashing what it
/// yields; `short` says whether the file ended early.
struct Exact<R> {
    inner: R,
    left: u64,
    hash: Sha256,
    short: bool,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = match self.short {
            false => self.inner.read(&mut buf[..want])?,
            true => 0,
        };
        let n = if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.hash.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// `gatewayctl backup`.
pub fn backup(
    root: &Root,
    inst: &Installation,
    opts: &BackupOptions,
) -> Result<BackupSummary, BackupError> {
    let started = Instant::now();
    let dest = opts.to.clone().unwrap_or_else(|| {
        root.real(
            opts.configured_dir
                .as_deref()
                .unwrap_or(Path::new(install::config::DEFAULT_BACKUP_DIR)),
        )
    });
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dest)
            .map_err(BackupError::io("cannot create", &dest))?;
    }
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // One backup at a time per destination (a timer's and an operator's may meet).
    let lock_path = dest.join(".lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(BackupError::io("cannot open", &lock_path))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| {
            BackupError::Config(format!(
                "another backup is writing to {} (it holds {}); wait for it",
                dest.display(),
                lock_path.display()
            ))
        })?;
    // Two backups in one second get names of their own.
    let name = archive_name(&inst.host, created_unix);
    let mut archive = dest.join(&name);
    let mut n = 1;
    while archive.exists() {
        n += 1;
        let stem = name.trim_end_matches(".tar.zst");
        archive = dest.join(format!("{stem}-{n}.tar.zst"));
    }
    let scopes = super::scopes(inst, opts.full, &opts.extra_roots);
    // The destination is never taken (it may sit inside a scope), nor is the manifest's place.
    let mut never = vec![Path::new("/").join(MANIFEST_PATH)];
    never.extend(root.logical(&dest));
    let (found, skipped) = walk(root, &scopes, &never);
    let total: u64 = found
        .iter()
        .filter(|f| f.meta.is_file())
        .map(|f| f.meta.len())
        .sum();
    let bar = match opts.progress {
        true => indicatif::ProgressBar::new(total),
        false => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );

    // 1. The body: every entry, compressed as it is read.
    let (body_path, body_file) = install::create_beside(&archive, |t| {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(t)
    })
    .map_err(BackupError::io("cannot create a file in", &dest))?;
    let cleanup = TempFiles(vec![body_path.clone()]);
    let mut encoder = zstd::stream::write::Encoder::new(body_file, ZSTD_LEVEL)
        .map_err(BackupError::io("cannot start compressing into", &body_path))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let _ = encoder.multithread(threads);
    let _ = encoder.include_checksum(true);
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, encoder));
    let mut names = Names::default();
    let mut entries = Vec::with_capacity(found.len());
    let mut changed = Vec::new();
    let (mut files, mut dirs, mut links, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let write_err = BackupError::io;
    for f in &found {
        let real = root.real(&f.logical);
        let ft = f.meta.file_type();
        let mut e = Entry {
            path: f.path.clone(),
            kind: Kind::Dir,
            mode: f.meta.mode() & 0o7777,
            uid: f.meta.uid(),
            gid: f.meta.gid(),
            user: names.user(f.meta.uid()),
            group: names.group(f.meta.gid()),
            size: 0,
            mtime: f.meta.mtime(),
            mtime_nsec: f.meta.mtime_nsec() as u32,
            sha256: None,
            link: None,
        };
        if ft.is_dir() {
            dirs += 1;
            append(&mut tar, &e, io::empty()).map_err(write_err("cannot write", &body_path))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&real).map_err(BackupError::io("cannot read", &real))?;
            let Some(target) = target.to_str() else {
                continue;
            };
            e.kind = Kind::Symlink;
            e.link = Some(target.to_string());
            links += 1;
            append(&mut tar, &e, io::empty()).map_err(write_err("cannot write", &body_path))?;
        } else {
            e.kind = Kind::File;
            // Never through a link swapped in since the walk.
            let mut file = match fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&real)
            {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BackupError::io("cannot read", &real)(e)),
            };
            let meta = file
                .metadata()
                .map_err(BackupError::io("cannot read", &real))?;
            if !meta.is_file() {
                continue;
            }
            if meta.len() <= BUFFERED_MAX {
                let (data, meta, unstable) =
                    read_stable(&mut file, &real).map_err(BackupError::io("cannot read", &real))?;
                if unstable {
                    changed.push(f.logical.display().to_string());
                }
                e.size = data.len() as u64;
                e.mode = meta.mode() & 0o7777;
                e.mtime = meta.mtime();
                e.mtime_nsec = meta.mtime_nsec() as u32;
                e.sha256 = Some(manifest::sha256_hex(&data));
                append(&mut tar, &e, data.as_slice())
                    .map_err(write_err("cannot write", &body_path))?;
            } else {
                e.size = meta.len();
                e.mtime = meta.mtime();
                e.mtime_nsec = meta.mtime_nsec() as u32;
                let mut reader = Exact {
                    inner: io::BufReader::with_capacity(1 << 20, &file),
                    left: meta.len(),
                    hash: Sha256::new(),
                    short: false,
                };
                let (h, pax) = header_of(&e);
                if !pax.is_empty() {
                    tar.append_pax_extensions(pax.iter().map(|(k, v)| (*k, v.as_slice())))
                        .map_err(write_err("cannot write", &body_path))?;
                }
                tar.append(&h, &mut reader)
                    .map_err(write_err("cannot write", &body_path))?;
                let short = reader.short;
                let hash = reader.hash.finalize();
                let after = file
                    .metadata()
                    .map_err(BackupError::io("cannot read", &real))?;
                let still = after.len() == meta.len()
                    && (after.mtime(), after.mtime_nsec()) == (meta.mtime(), meta.mtime_nsec());
                if short || !still {
                    changed.push(f.logical.display().to_string());
                }
                e.sha256 = Some(manifest::hex(&hash));
            }
            files += 1;
            bytes += e.size;
            bar.inc(e.size);
        }
        entries.push(e);
    }
    let buffered = tar
        .into_inner()
        .map_err(write_err("cannot write", &body_path))?;
    let encoder = buffered
        .into_inner()
        .map_err(|e| write_err("cannot write", &body_path)(e.into_error()))?;
    let body_file = encoder
        .finish()
        .map_err(write_err("cannot finish compressing", &body_path))?;
    drop(body_file);

    // 2. The manifest, its own zstd frame first, then the body's frames.
    let manifest = Manifest {
        format: manifest::FORMAT,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        host: inst.host.clone(),
        created: rfc3339(created_unix),
        created_unix,
        install_dir: inst
            .install_dir
            .strip_prefix("/")
            .unwrap_or(&inst.install_dir)
            .display()
            .to_string(),
        scopes: scopes.iter().map(scope_record).collect(),
        entries,
    };
    // Never an archive that restore would refuse (overlapping extra roots, say).
    super::restore::check_manifest(&manifest).map_err(|why| {
        BackupError::Config(format!(
            "the archive could not be restored ({why}); check [backup] extra_roots"
        ))
    })?;
    let manifest_bytes = manifest.to_bytes();
    let manifest_sha = manifest::sha256_hex(&manifest_bytes);
    let frame = manifest_frame(&manifest_bytes, created_unix)
        .map_err(write_err("cannot compress the manifest for", &archive))?;
    let (final_tmp, mut out) = install::create_beside(&archive, |t| {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(t)
    })
    .map_err(BackupError::io("cannot create a file in", &dest))?;
    let mut cleanup = cleanup;
    cleanup.0.push(final_tmp.clone());
    let mut whole = Sha256::new();
    out.write_all(&frame)
        .map_err(write_err("cannot write", &final_tmp))?;
    whole.update(&frame);
    let mut body =
        fs::File::open(&body_path).map_err(BackupError::io("cannot read", &body_path))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = body
            .read(&mut buf)
            .map_err(BackupError::io("cannot read", &body_path))?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(write_err("cannot write", &final_tmp))?;
    }
    out.sync_all()
        .map_err(write_err("cannot sync", &final_tmp))?;
    let archive_bytes = out
        .metadata()
        .map_err(BackupError::io("cannot read", &final_tmp))?
        .len();
    drop(out);

    // 3. The archive's hash beside it (sha256sum's format: `sha256sum -c` checks it in that
    // directory), then the archive under its name.
    let archive_sha = manifest::hex(&whole.finalize());
    let sidecar = sidecar_of(&archive);
    let name = archive
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    install::write_atomic(
        &sidecar,
        format!("{archive_sha}  {name}\n").as_bytes(),
        0o600,
    )
    .map_err(write_err("cannot write", &sidecar))?;
    fs::rename(&final_tmp, &archive).map_err(write_err("cannot rename into place", &archive))?;
    fs::File::open(&dest)
        .and_then(|d| d.sync_all())
        .map_err(write_err("cannot sync", &dest))?;
    drop(cleanup);
    bar.finish_and_clear();
    Ok(BackupSummary {
        archive,
        sha256: archive_sha,
        manifest_sha256: manifest_sha,
        files,
        directories: dirs,
        links,
        bytes,
        archive_bytes,
        ratio: if archive_bytes > 0 {
            bytes as f64 / archive_bytes as f64
        } else {
            0.0
        },
        seconds: started.elapsed().as_secs_f64(),
        created: rfc3339(created_unix),
        skipped,
        changed,
    })
}

/// How the manifest records a scope.
pub(crate) fn scope_record(s: &Scope) -> ScopeRecord {
    let rel = |p: &Path| p.strip_prefix("/").unwrap_or(p).display().to_string();
    ScopeRecord {
        name: s.name.to_string(),
        path: rel(&s.path),
        kind: match &s.kind {
            ScopeKind::Tree => "tree",
            ScopeKind::File => "file",
            ScopeKind::Matching(_) => "matching",
        }
        .to_string(),
        prefixes: match &s.kind {
            ScopeKind::Matching(p) => p.iter().map(|p| p.to_string()).collect(),
            _ => Vec::new(),
        },
        exclude: s.exclude.iter().map(|p| rel(p)).collect(),
    }
}

/// The manifest as a tar member (header, data, padding; no end-of-archive blocks) in a zstd
/// frame of its own.
fn manifest_frame(bytes: &[u8], created: i64) -> io::Result<Vec<u8>> {
    let e = Entry {
        path: MANIFEST_PATH.to_string(),
        kind: Kind::File,
        mode: 0o600,
        uid: 0,
        gid: 0,
        user: Some("root".into()),
        group: Some("root".into()),
        size: bytes.len() as u64,
        mtime: created,
        mtime_nsec: 0,
        sha256: None,
        link: None,
    };
    // A short ASCII path and a whole-second time: the ustar header says it all.
    let (h, _) = header_of(&e);
    let mut member = Vec::with_capacity(bytes.len() + 1024);
    member.extend_from_slice(h.as_bytes());
    member.extend_from_slice(bytes);
    member.resize(member.len().next_multiple_of(512), 0);
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
    enc.include_checksum(true)?;
    enc.write_all(&member)?;
    enc.finish()
}

/// Temporary files removed however the backup ends (none are left once it succeeded: they
/// were renamed or are no longer needed).
struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_round_trip_before_and_after_the_epoch() {
        for (secs, nsec) in [
            (0, 0),
            (1_700_000_000, 123_456_789),
            (-1, 500_000_000),
            (-5, 0),
            (-6, 1),
        ] {
            let text = pax_time(secs, nsec);
            assert_eq!(parse_pax_time(&text), Some((secs, nsec)), "{text}");
        }
        assert_eq!(pax_time(-2, 500_000_000), "-1.500000000");
        assert_eq!(parse_pax_time("12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time("x"), None);
        assert_eq!(parse_pax_time("1e5"), None);
    }
}
