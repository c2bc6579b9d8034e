//! `gatewayctl backup`: walk the scopes (never following a symbolic link), stream every entry
//! into a tar (pax) body cut into pieces that worker threads compress as zstd frames of their
//! own, written after room kept at the archive's start; then put the manifest's own zstd frame
//! into that room (a skippable frame fills the rest). One standard `.tar.zst`, manifest first,
//! each file read once unless it changed while read, and the hash in the manifest exactly that
//! of the bytes in the archive.

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
use std::time::{Duration, Instant, SystemTime};

/// Files up to this size are read whole into the current piece, so that one that changes while
/// being read can be read again before it is sent on; larger ones are streamed (and reported
/// when they change). Bounds a piece to twice [`PIECE`].
const BUFFERED_MAX: u64 = PIECE as u64;
/// How often a changing file is read again before it is taken as it is and reported.
const READ_ATTEMPTS: u32 = 3;
/// The zstd level of archives (zstd's own default).
pub const ZSTD_LEVEL: i32 = 3;

/// What the operator asked for.
#[derive(Clone, Default)]
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
    /// Encrypt to these (`[backup] recipients`): the archive is `.tar.zst.age`, and its
    /// plaintext never reaches the destination.
    pub recipients: Vec<age::x25519::Recipient>,
    /// `--quiesce`: take these instance directories cold, each stopped around its own copy.
    pub quiesce: Option<std::rc::Rc<dyn Quiesce>>,
}

/// What `--quiesce` does around the copy of one instance's directory: stop it (drained), and
/// once its directory is taken, start it and wait until it serves again and its balancers took
/// it back, before the next one goes out.
pub trait Quiesce {
    /// The directories to take cold (logical), each with the instance's name.
    fn dirs(&self) -> Vec<(PathBuf, String)>;
    /// Take the instance out and stop it: Ok(false) when it is not to be stopped now (not
    /// running, or the last of its group serving), and its directory is copied warm.
    fn stop(&self, name: &str) -> Result<bool, String>;
    /// Start it again; Ok once it serves and is back in its balancers' pools.
    fn start(&self, name: &str) -> Result<(), String>;
}

/// What the walk sends the reader: an entry, or an instance's directory to take cold (the
/// reader stops the instance, walks the directory itself, then starts it).
enum Walked {
    Entry(Found),
    Cold(Found, String),
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
    /// When, in seconds since the epoch.
    #[serde(skip)]
    pub created_unix: i64,
    /// Entries left out, and why (sockets, devices, names that are not UTF-8).
    pub skipped: Vec<String>,
    /// Files that kept changing while being read: taken as last read.
    pub changed: Vec<String>,
    /// The manifest's [`Manifest::fingerprint`]: what the archive holds.
    pub fingerprint: String,
}

/// One entry found by the walk.
struct Found {
    logical: PathBuf,
    path: String,
    meta: fs::Metadata,
}

/// Walk the scopes: every entry to take goes to `found`, in archive order, until it says to
/// stop (the backup failed); returns what was left out.
fn walk(
    root: &Root,
    scopes: &[Scope],
    never: &[PathBuf],
    found: &mut dyn FnMut(Found) -> bool,
) -> Vec<String> {
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
            if !walk_tree(root, &start, &never, found, &mut skipped) {
                return skipped;
            }
        }
    }
    skipped
}

/// Walk one tree in name order, never following a symbolic link; false when told to stop.
fn walk_tree(
    root: &Root,
    start: &Path,
    never: &[PathBuf],
    found: &mut dyn FnMut(Found) -> bool,
    skipped: &mut Vec<String>,
) -> bool {
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
        let more = found(Found {
            logical: p,
            path,
            meta,
        });
        if !more {
            return false;
        }
    }
    true
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

/// Zeros up to the next 512-byte block, as tar wants after a member's data.
fn pad(w: &mut impl Write, len: u64) -> io::Result<()> {
    let rest = (len.next_multiple_of(512) - len) as usize;
    w.write_all(&[0u8; 512][..rest])
}

/// The size a piece of the tar stream grows to before it is compressed as a zstd frame of its
/// own. A standard `.tar.zst` may be any number of frames in a row; independent pieces this
/// large compress as well as one stream and spare the work multi-threaded zstd spends on the
/// overlap between its jobs.
const PIECE: usize = 8 << 20;

/// A piece of the tar stream on its way to a worker.
struct Piece {
    seq: u64,
    bytes: Vec<u8>,
}

/// A piece compressed.
struct Packed {
    seq: u64,
    frame: Vec<u8>,
}

/// The tar stream being cut into pieces: the builder writes headers into the current piece,
/// files are read straight into it (and hashed there, while they are in the CPU's cache).
struct Pieces {
    buf: Vec<u8>,
    seq: u64,
    to_workers: std::sync::mpsc::SyncSender<Piece>,
    /// Buffers of compressed pieces, back for reuse (fresh ones would be page-faulted in anew).
    spent: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl Write for Pieces {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Pieces {
    /// Send the current piece to be compressed once it is large enough (or whatever is left,
    /// at the end).
    fn ship(&mut self, last: bool) -> io::Result<()> {
        let ready = self.buf.len() >= PIECE || (last && !self.buf.is_empty());
        if !ready {
            return Ok(());
        }
        let next = self
            .spent
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PIECE + (1 << 20)));
        let piece = Piece {
            seq: self.seq,
            bytes: std::mem::replace(&mut self.buf, next),
        };
        self.seq += 1;
        self.to_workers
            .send(piece)
            .map_err(|_| io::Error::other("the compressing threads stopped"))
    }
}

/// A worker: compress each piece into a frame of its own.
fn pack(
    pieces: &std::sync::Mutex<std::sync::mpsc::Receiver<Piece>>,
    packed: std::sync::mpsc::SyncSender<Packed>,
    spent: std::sync::mpsc::Sender<Vec<u8>>,
) -> io::Result<()> {
    let mut zstd = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    zstd.include_checksum(true)?;
    loop {
        let next = pieces
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .recv();
        let Ok(piece) = next else {
            return Ok(());
        };
        let frame = zstd.compress(&piece.bytes)?;
        let mut bytes = piece.bytes;
        bytes.clear();
        let _ = spent.send(bytes);
        let out = Packed {
            seq: piece.seq,
            frame,
        };
        if packed.send(out).is_err() {
            return Ok(());
        }
    }
}

/// The writer: the frames in the order of their pieces, into the archive's file after the
/// manifest's `room` (known once the walk ended); returns the file, as the body it now holds,
/// and the room.
fn write_frames(
    packed: std::sync::mpsc::Receiver<Packed>,
    mut file: fs::File,
    room: impl FnOnce() -> io::Result<u64>,
) -> io::Result<(Body, u64)> {
    use std::io::Seek;
    let room = room()?;
    file.seek(io::SeekFrom::Start(room))?;
    let mut body = Body {
        file,
        at: room,
        kicked: room,
    };
    let mut next = 0;
    let mut waiting = std::collections::BTreeMap::new();
    for p in packed {
        waiting.insert(p.seq, p);
        while let Some(p) = waiting.remove(&next) {
            body.write_all(&p.frame)?;
            next += 1;
        }
    }
    if !waiting.is_empty() {
        return Err(io::Error::other("a compressing thread stopped early"));
    }
    Ok((body, room))
}

/// The coarsest step of the clock file times are taken from (a kernel tick is 1 to 10 ms).
const CLOCK_TICK: Duration = Duration::from_millis(20);

/// Whether a file was last modified while it was being read (from a tick before `started` to
/// a tick after `ended`). Equal sizes and times before and after a read then prove nothing: on
/// many filesystems a file's time moves once per clock tick, so a write during a short read may
/// leave it as it was and the bytes read torn.
fn written_while_read(meta: &fs::Metadata, started: SystemTime, ended: SystemTime) -> bool {
    match meta.modified() {
        Ok(mtime) => {
            mtime.checked_add(CLOCK_TICK).is_some_and(|m| m >= started)
                && ended.checked_add(CLOCK_TICK).is_some_and(|e| mtime <= e)
        }
        Err(_) => true,
    }
}

/// Whether a file was modified within a tick of now: reading it at once could not tell a
/// write during the read from the write just before it (see [`written_while_read`]).
fn modified_lately(meta: &fs::Metadata) -> bool {
    let now = SystemTime::now();
    written_while_read(meta, now, now)
}

/// The metadata of a file to read, after waiting out a write that happened just now (so that
/// a quiet file is never taken for one written while read).
fn settled_metadata(file: &fs::File) -> io::Result<fs::Metadata> {
    let meta = file.metadata()?;
    if !modified_lately(&meta) {
        return Ok(meta);
    }
    std::thread::sleep(CLOCK_TICK);
    file.metadata()
}

/// Give a file's entry the size, mode and time of the metadata its read is checked against.
fn stamp(e: &mut Entry, meta: &fs::Metadata) {
    e.size = meta.len();
    e.mode = meta.mode() & 0o7777;
    e.mtime = meta.mtime();
    e.mtime_nsec = meta.mtime_nsec() as u32;
}

/// Take a file of at most [`BUFFERED_MAX`] bytes: its header and data straight into the
/// current piece, again while it changes (size or mtime differ before and after the read, or
/// it was written while read); one that never holds still is taken as last read. Returns
/// whether it never held still, or None when it has grown past [`BUFFERED_MAX`] (nothing of it
/// is in the piece then: it is to be streamed).
fn take_file(
    tar: &mut tar::Builder<Pieces>,
    e: &mut Entry,
    file: &mut fs::File,
) -> io::Result<Option<bool>> {
    use std::io::Seek;
    for attempt in 0..READ_ATTEMPTS {
        let before = settled_metadata(file)?;
        let started = SystemTime::now();
        if before.len() > BUFFERED_MAX {
            return Ok(None);
        }
        if attempt > 0 {
            file.seek(io::SeekFrom::Start(0))?;
        }
        stamp(e, &before);
        let mark = tar.get_mut().buf.len();
        append(tar, e, io::empty())?;
        let p = tar.get_mut();
        let start = p.buf.len();
        // One byte more than promised: a file that grew is caught by the length.
        p.buf.reserve(before.len() as usize + 64);
        (&mut *file)
            .take(before.len() + 1)
            .read_to_end(&mut p.buf)?;
        let n = (p.buf.len() - start) as u64;
        let after = file.metadata()?;
        let same = n == before.len()
            && after.len() == before.len()
            && (before.mtime(), before.mtime_nsec()) == (after.mtime(), after.mtime_nsec());
        let racy = written_while_read(&after, started, SystemTime::now());
        if same && !racy {
            e.sha256 = Some(manifest::sha256_hex(&p.buf[start..]));
            pad(p, n)?;
            return Ok(Some(false));
        }
        if attempt + 1 == READ_ATTEMPTS {
            let data = p.buf.split_off(start);
            p.buf.truncate(mark);
            e.size = data.len() as u64;
            e.mtime = after.mtime();
            e.mtime_nsec = after.mtime_nsec() as u32;
            append(tar, e, io::empty())?;
            let p = tar.get_mut();
            p.buf.extend_from_slice(&data);
            e.sha256 = Some(manifest::sha256_hex(&data));
            pad(p, e.size)?;
            return Ok(Some(true));
        }
        p.buf.truncate(mark);
    }
    unreachable!("the last attempt returns")
}

/// Take a file too large to hold in memory, read in pieces and hashed here as it goes: exactly
/// the `e.size` bytes its header promises (zeros after a short read). Returns its sha256 and
/// whether the file ended early.
fn take_large_file(
    tar: &mut tar::Builder<Pieces>,
    e: &Entry,
    file: &mut fs::File,
) -> io::Result<([u8; 32], bool)> {
    append(tar, e, io::empty())?;
    let mut hash = Sha256::new();
    let (mut left, mut short) = (e.size, false);
    while left > 0 {
        let p = tar.get_mut();
        let want = left.min(1 << 20);
        let start = p.buf.len();
        if !short {
            p.buf.reserve(want as usize);
            (&mut *file).take(want).read_to_end(&mut p.buf)?;
        }
        if p.buf.len() == start {
            short = true;
            p.buf.resize(start + want as usize, 0);
        }
        hash.update(&p.buf[start..]);
        left -= (p.buf.len() - start) as u64;
        p.ship(false)?;
    }
    pad(tar.get_mut(), e.size)?;
    Ok((hash.finalize().into(), short))
}

/// The magic number of a zstd skippable frame (every decoder, `zstd -d` too, passes over its
/// content).
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// How much of the body is written before the kernel is asked to start writing it back.
const WRITEBACK_STEP: u64 = 16 << 20;

/// The archive's file from the body's first byte on. It asks the kernel to start writing back
/// every few MiB, so the disk works while the CPU compresses and the final fsync waits for the
/// tail only.
struct Body {
    file: fs::File,
    at: u64,
    kicked: u64,
}

impl Write for Body {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let n = self.file.write(buf)?;
        self.at += n as u64;
        if self.at - self.kicked >= WRITEBACK_STEP {
            // SAFETY: a system call on a descriptor this struct owns, with no memory passed.
            // Its failure only means writeback starts later: the fsync at the end still waits.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.kicked as libc::off64_t,
                    (self.at - self.kicked) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            self.kicked = self.at;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Room to keep at the archive's start for the manifest's frame: the frame of a manifest like
/// the one the walk promises (with hashes as incompressible as real ones), and a margin for
/// what changes while the files are read. A manifest that outgrows it costs a copy of the body.
fn manifest_room(estimate: &Manifest) -> io::Result<u64> {
    let frame = manifest_frame(&estimate.to_bytes(), estimate.created_unix)?;
    let len = frame.len() as u64;
    Ok((len + len / 8 + 4096).next_multiple_of(4096))
}

/// The `k`th entry the walk found as the manifest will list it, give or take what changes
/// while it is read: with stand-ins for its hash or link target.
fn estimated_entry(k: usize, f: &Found, names: &mut Names) -> Entry {
    let mut e = entry_of(f, names);
    match e.kind {
        Kind::File => e.sha256 = Some(stand_in_hash(k as u64)),
        Kind::Symlink => e.link = Some(stand_in(k as u64, f.meta.len() as usize)),
        Kind::Dir => {}
    }
    e
}

/// A hash-like stand-in for the estimate: 64 hex digits that compress as badly as a sha256.
fn stand_in_hash(seed: u64) -> String {
    stand_in(seed, 64)
}

/// `len` pseudo-random hex digits: text that compresses as badly as a hash (or worse than a
/// link target: the room then errs on the large side).
fn stand_in(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out.truncate(len);
    out
}

/// Put the manifest's frame before the body, which starts at byte `room` of `written`: into the
/// room, with a skippable frame over the rest of it; or, when the frame outgrew the room, into
/// a new file beside `archive` followed by a copy of the body (the first file is removed).
/// Returns the file that now holds the whole archive.
fn place_manifest(
    archive: &Path,
    written: (PathBuf, fs::File),
    room: u64,
    frame: &[u8],
    unnamed: bool,
) -> io::Result<(PathBuf, fs::File)> {
    use std::io::Seek;
    use std::os::unix::fs::FileExt;
    let (path, file) = written;
    let len = frame.len() as u64;
    if let Some(skip) = room.checked_sub(len + 8) {
        let mut head = frame.to_vec();
        head.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        head.extend_from_slice(&u32::try_from(skip).map_err(io::Error::other)?.to_le_bytes());
        file.write_all_at(&head, 0)?;
        return Ok((path, file));
    }
    let (moved, mut out) = create_archive_file(archive)?;
    if unnamed {
        let _ = fs::remove_file(&moved);
    }
    let copied = (|| {
        out.write_all(frame)?;
        let mut body = &file;
        body.seek(io::SeekFrom::Start(room))?;
        io::copy(&mut body, &mut out)
    })();
    match copied {
        Ok(_) => {
            let _ = fs::remove_file(&path);
            Ok((moved, out))
        }
        Err(e) => {
            let _ = fs::remove_file(&moved);
            Err(e)
        }
    }
}

/// A new file for the archive beside where it will be, under a temporary name, private to
/// root (it holds private keys) until it is complete.
fn create_archive_file(archive: &Path) -> io::Result<(PathBuf, fs::File)> {
    install::create_beside(archive, |t| {
        fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(t)
    })
}

/// sha256 of a whole file, read from its start.
pub(crate) fn hash_file(file: &fs::File) -> io::Result<[u8; 32]> {
    use std::os::unix::fs::FileExt;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok(hash.finalize().into());
        }
        hash.update(&buf[..n]);
        at += n as u64;
    }
}

/// The manifest entry of what the walk found, as the walk saw it (a file's size, hash and
/// times are filled in when it is read; a link's target when it is written).
fn entry_of(f: &Found, names: &mut Names) -> Entry {
    let ft = f.meta.file_type();
    Entry {
        path: f.path.clone(),
        kind: if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            Kind::File
        },
        mode: f.meta.mode() & 0o7777,
        uid: f.meta.uid(),
        gid: f.meta.gid(),
        user: names.user(f.meta.uid()),
        group: names.group(f.meta.gid()),
        size: if ft.is_file() { f.meta.len() } else { 0 },
        mtime: f.meta.mtime(),
        mtime_nsec: f.meta.mtime_nsec() as u32,
        sha256: None,
        link: None,
    }
}

/// What the walk's entries became in the tar stream.
struct Taken {
    entries: Vec<Entry>,
    changed: Vec<String>,
    /// What the walk of cold directories left out.
    skipped: Vec<String>,
    files: u64,
    dirs: u64,
    links: u64,
    bytes: u64,
}

/// Write every entry the walk finds into the tar stream, reading each file once (again only
/// when it changed while read); a cold directory with its instance stopped around it.
fn take_all(
    root: &Root,
    found: std::sync::mpsc::Receiver<Walked>,
    names: &mut Names,
    pieces: Pieces,
    bar: &indicatif::ProgressBar,
    never: &[PathBuf],
    quiesce: Option<&dyn Quiesce>,
) -> Result<Taken, BackupError> {
    let mut tar = tar::Builder::new(pieces);
    let mut t = Taken {
        entries: Vec::new(),
        changed: Vec::new(),
        skipped: Vec::new(),
        files: 0,
        dirs: 0,
        links: 0,
        bytes: 0,
    };
    let stream_err = |e: io::Error| BackupError::CannotRead(format!("the archive's stream: {e}"));
    for walked in found {
        stop_if_interrupted()?;
        match walked {
            Walked::Entry(f) => take_one(root, f, names, &mut tar, &mut t, bar)?,
            Walked::Cold(f, name) => {
                // Started again however its copy ends (an error, an interrupt).
                let restart = match quiesce {
                    Some(q) => match q.stop(&name) {
                        Ok(stopped) => StartAgain(stopped.then_some((q, name.as_str()))),
                        Err(why) => {
                            // A stop job that failed may still have stopped it.
                            let back = q.start(&name).err().map_or(String::new(), |e| {
                                format!("; starting it again failed too: {e}")
                            });
                            return Err(BackupError::Config(format!(
                                "--quiesce: cannot stop {name}: {why}{back}; no archive was written"
                            )));
                        }
                    },
                    None => StartAgain(None),
                };
                let mut cold = Vec::new();
                let mut collect = |f: Found| {
                    cold.push(f);
                    true
                };
                walk_tree(root, &f.logical, never, &mut collect, &mut t.skipped);
                for f in cold {
                    stop_if_interrupted()?;
                    take_one(root, f, names, &mut tar, &mut t, bar)?;
                }
                restart.now().map_err(|why| {
                    BackupError::Config(format!(
                        "--quiesce: {name} was stopped for its copy and did not come back: {why}"
                    ))
                })?;
            }
        }
    }
    let mut pieces = tar.into_inner().map_err(stream_err)?;
    pieces.ship(true).map_err(stream_err)?;

    Ok(t)
}

/// An instance stopped for its cold copy, started again when this goes (its copy failed) or
/// when told to ([`StartAgain::now`]).
struct StartAgain<'a>(Option<(&'a dyn Quiesce, &'a str)>);

impl StartAgain<'_> {
    fn now(mut self) -> Result<(), String> {
        self.0.take().map_or(Ok(()), |(q, name)| q.start(name))
    }
}

impl Drop for StartAgain<'_> {
    fn drop(&mut self) {
        if let Some((q, name)) = self.0.take() {
            if let Err(e) = q.start(name) {
                eprintln!("gatewayctl: --quiesce: {name} was stopped for its copy and did not come back: {e}");
            }
        }
    }
}

/// The backup ends (its temporary files removed, a stopped instance started again) when
/// SIGINT, SIGTERM or SIGHUP arrived.
fn stop_if_interrupted() -> Result<(), BackupError> {
    super::scratch::interrupted().map_err(|_| {
        BackupError::Config(
            "interrupted (SIGINT, SIGTERM or SIGHUP); no archive was written".into(),
        )
    })
}

/// Write one entry into the tar stream and the manifest.
fn take_one(
    root: &Root,
    f: Found,
    names: &mut Names,
    tar: &mut tar::Builder<Pieces>,
    t: &mut Taken,
    bar: &indicatif::ProgressBar,
) -> Result<(), BackupError> {
    let stream_err = |e: io::Error| BackupError::CannotRead(format!("the archive's stream: {e}"));
    let real = root.real(&f.logical);
    let mut e = entry_of(&f, names);
    match e.kind {
        Kind::Dir => {
            t.dirs += 1;
            append(tar, &e, io::empty()).map_err(stream_err)?;
        }
        Kind::Symlink => {
            let target = fs::read_link(&real).map_err(BackupError::io("cannot read", &real))?;
            let Some(target) = target.to_str() else {
                return Ok(());
            };
            e.link = Some(target.to_string());
            t.links += 1;
            append(tar, &e, io::empty()).map_err(stream_err)?;
        }
        Kind::File => {
            // Never through a link swapped in since the walk.
            let mut file = match fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&real)
            {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(BackupError::io("cannot read", &real)(e)),
            };
            let meta = file
                .metadata()
                .map_err(BackupError::io("cannot read", &real))?;
            if !meta.is_file() {
                return Ok(());
            }
            let buffered = match meta.len() <= BUFFERED_MAX {
                true => take_file(tar, &mut e, &mut file)
                    .map_err(BackupError::io("cannot read", &real))?,
                false => None,
            };
            let unstable = match buffered {
                Some(unstable) => unstable,
                None => {
                    use std::io::Seek;
                    let read_err = BackupError::io("cannot read", &real);
                    file.seek(io::SeekFrom::Start(0)).map_err(read_err)?;
                    let meta =
                        settled_metadata(&file).map_err(BackupError::io("cannot read", &real))?;
                    stamp(&mut e, &meta);
                    let started = SystemTime::now();
                    let (hash, short) = take_large_file(tar, &e, &mut file)
                        .map_err(BackupError::io("cannot read", &real))?;
                    let after = file
                        .metadata()
                        .map_err(BackupError::io("cannot read", &real))?;
                    e.sha256 = Some(manifest::hex(&hash));
                    short
                        || after.len() != meta.len()
                        || (after.mtime(), after.mtime_nsec()) != (meta.mtime(), meta.mtime_nsec())
                        || written_while_read(&after, started, SystemTime::now())
                }
            };
            if unstable {
                t.changed.push(f.logical.display().to_string());
            }
            t.files += 1;
            t.bytes += e.size;
            bar.inc(e.size);
        }
    }
    t.entries.push(e);
    tar.get_mut().ship(false).map_err(stream_err)
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
    let _lock = install::try_lock(&lock_path)
        .map_err(BackupError::io("cannot open", &lock_path))?
        .ok_or_else(|| {
            BackupError::Config(format!(
                "another backup is writing to {} (it holds {}); wait for it",
                dest.display(),
                lock_path.display()
            ))
        })?;
    // Two backups in one second get names of their own.
    let encrypted = !opts.recipients.is_empty();
    let suffix = match encrypted {
        true => super::ENCRYPTED_SUFFIX,
        false => ".tar.zst",
    };
    let stem = archive_name(&inst.host, created_unix)
        .trim_end_matches(".tar.zst")
        .to_string();
    let mut archive = dest.join(format!("{stem}{suffix}"));
    let mut n = 1;
    while archive.exists() {
        n += 1;
        archive = dest.join(format!("{stem}-{n}{suffix}"));
    }
    // An encrypted archive's plaintext is made in our state directory, never beside it: the
    // destination may be a mount of another host's.
    let staging = match encrypted {
        true => {
            let work = root.real(Path::new(super::hooks::STATE_DIR));
            fs::create_dir_all(&work).map_err(BackupError::io("cannot create", &work))?;
            work.join(format!("{stem}.tar.zst"))
        }
        false => archive.clone(),
    };
    let scopes = super::scopes(inst, opts.full, &opts.extra_roots);
    // The destination is never taken (it may sit inside a scope), nor is the manifest's place.
    let mut never = vec![Path::new("/").join(MANIFEST_PATH)];
    never.extend(root.logical(&dest));
    let bar = match opts.progress {
        true => indicatif::ProgressBar::new(0),
        false => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );

    let manifest_of = |entries: Vec<Entry>| Manifest {
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
    // 1. The body: every entry, cut into pieces that worker threads compress, the frames
    // written in order after the manifest's room.
    let staging_dir = staging.parent().unwrap_or(&dest).to_path_buf();
    let (body_path, body_file) = create_archive_file(&staging)
        .map_err(BackupError::io("cannot create a file in", &staging_dir))?;
    if encrypted {
        // The plaintext lives on through its open file only: nothing of it outlives the
        // backup, not even a SIGKILL or a power cut.
        let _ = fs::remove_file(&body_path);
    }
    let mut cleanup = TempFiles(vec![body_path.clone()]);
    let mut names = Names::default();
    // At most four compressing threads: a backup runs beside serving gateways, and each thread
    // adds pieces in flight (at most three per thread, up to twice PIECE each).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let cold = opts.quiesce.as_ref().map(|q| q.dirs()).unwrap_or_default();
    let (taken, written, walked) = std::thread::scope(|s| {
        use std::sync::mpsc;
        // Bounded both ways: a destination slower than compression holds the reading back
        // instead of filling memory with frames.
        let (to_writer, packed) = mpsc::sync_channel::<Packed>(workers);
        let (give_back, spent) = mpsc::channel::<Vec<u8>>();
        // The workers share the pieces' receiver, which goes when the last of them ends (a
        // failed write ends them): the reader's next send then fails instead of waiting forever.
        let (to_workers, pieces) = mpsc::sync_channel::<Piece>(workers);
        let pieces = std::sync::Arc::new(std::sync::Mutex::new(pieces));
        // The walk runs ahead of the reading, and works out the manifest's room once it knows
        // every entry, while the first pieces are compressed. Its channel is unbounded: the
        // writer waits for the room before it takes a frame, so a walk that waited for the
        // reader would wait for itself.
        let (to_reader, found) = mpsc::channel::<Walked>();
        let (to_writer_room, room) = mpsc::sync_channel::<io::Result<u64>>(1);
        let (scopes, never, bar, manifest_of) = (&scopes, &never, &bar, &manifest_of);
        let cold = &cold;
        let walker = s.spawn(move || {
            let (mut estimate, mut names) = (Vec::new(), Names::default());
            let skipped = walk(root, scopes, never, &mut |f| {
                bar.inc_length(if f.meta.is_file() { f.meta.len() } else { 0 });
                estimate.push(estimated_entry(estimate.len(), &f, &mut names));
                // A cold directory is walked again by the reader once its instance stopped;
                // this walk only counts it (for the manifest's room and the progress bar).
                let walked = match cold.iter().find(|(d, _)| f.logical.starts_with(d)) {
                    Some((d, name)) if *d == f.logical => Walked::Cold(f, name.clone()),
                    Some(_) => return true,
                    None => Walked::Entry(f),
                };
                // The reader stopped (the backup failed): so does the walk.
                to_reader.send(walked).is_ok()
            });
            drop(to_reader);
            let _ = to_writer_room.send(manifest_room(&manifest_of(estimate)));
            skipped
        });
        let room = move || {
            room.recv()
                .unwrap_or_else(|_| Err(io::Error::other("the walk stopped")))
        };
        let writer = s.spawn(move || write_frames(packed, body_file, room));
        let packers: Vec<_> = (0..workers)
            .map(|_| {
                let (to_writer, give_back, pieces) =
                    (to_writer.clone(), give_back.clone(), pieces.clone());
                s.spawn(move || pack(&pieces, to_writer, give_back))
            })
            .collect();
        drop((to_writer, give_back, pieces));
        let pieces = Pieces {
            buf: Vec::with_capacity(PIECE + (1 << 20)),
            seq: 0,
            to_workers,
            spent,
        };
        let quiesce = opts.quiesce.as_deref();
        let taken = take_all(root, found, &mut names, pieces, bar, never, quiesce);
        let walked = walker.join();
        // The workers end when the pieces do (the sender went with `take_all`); each is
        // joined, and a worker's own failure is told before the writer's that follows from it.
        let joined: Vec<io::Result<()>> = packers
            .into_iter()
            .map(|p| {
                p.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a compressing thread panicked")))
            })
            .collect();
        let packed: io::Result<()> = joined.into_iter().collect();
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the writing thread panicked")));
        (taken, packed.and(written), walked)
    });
    let mut skipped = walked.map_err(|_| {
        BackupError::Config(
            "the walk of the scopes stopped unexpectedly (a bug: please report it); no archive was written".into(),
        )
    })?;
    // A failed write stops the workers and then the reading: the write's error is the one to
    // tell.
    let (body, room) = written.map_err(BackupError::io("cannot write", &body_path))?;
    let Taken {
        entries,
        changed,
        skipped: skipped_cold,
        files,
        dirs,
        links,
        bytes,
    } = taken?;
    skipped.extend(skipped_cold);

    // 2. The manifest, its own zstd frame before the body's frames.
    let manifest = manifest_of(entries);
    // Never an archive that restore would refuse (overlapping extra roots, say).
    super::restore::check_manifest(&manifest).map_err(|why| {
        BackupError::Config(format!(
            "the archive could not be restored ({why}); check [backup] extra_roots"
        ))
    })?;
    let fingerprint = manifest.fingerprint();
    let manifest_bytes = manifest.to_bytes();
    let manifest_sha = manifest::sha256_hex(&manifest_bytes);
    let frame = manifest_frame(&manifest_bytes, created_unix).map_err(BackupError::io(
        "cannot compress the manifest for",
        &archive,
    ))?;
    let (plain_tmp, plain) = place_manifest(
        &staging,
        (body_path.clone(), body.file),
        room,
        &frame,
        encrypted,
    )
    .map_err(BackupError::io("cannot write the archive in", &staging_dir))?;
    cleanup.0.push(plain_tmp.clone());
    let (final_tmp, out) = match encrypted {
        false => (plain_tmp, plain),
        true => {
            let (sealed_tmp, sealed) = create_archive_file(&archive)
                .map_err(BackupError::io("cannot create a file in", &dest))?;
            cleanup.0.push(sealed_tmp.clone());
            let mut from = io::BufReader::with_capacity(1 << 20, &plain);
            {
                use std::io::Seek;
                from.seek(io::SeekFrom::Start(0))
                    .map_err(BackupError::io("cannot read", &plain_tmp))?;
            }
            let written = super::encryption::encrypt(
                &mut from,
                io::BufWriter::with_capacity(1 << 20, &sealed),
                &opts.recipients,
            )
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()).map(|_| ()));
            written.map_err(BackupError::io("cannot write", &sealed_tmp))?;
            // Its file has no name: closing it frees it.
            drop(plain);
            (sealed_tmp, sealed)
        }
    };

    // 3. The archive on disk and its hash read back from it, at once; then the hash beside it
    // (sha256sum's format: `sha256sum -c` checks it in that directory), then the archive under
    // its name.
    let (hashed, synced) = std::thread::scope(|s| {
        let synced = s.spawn(|| out.sync_all());
        (hash_file(&out), synced.join())
    });
    let hash = hashed.map_err(BackupError::io("cannot read", &final_tmp))?;
    synced
        .unwrap_or_else(|_| Err(io::Error::other("the fsync thread panicked")))
        .map_err(BackupError::io("cannot sync", &final_tmp))?;
    let archive_bytes = out
        .metadata()
        .map_err(BackupError::io("cannot read", &final_tmp))?
        .len();
    drop(out);
    let archive_sha = manifest::hex(&hash);
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
    .map_err(BackupError::io("cannot write", &sidecar))?;
    fs::rename(&final_tmp, &archive)
        .map_err(BackupError::io("cannot rename into place", &archive))?;
    fs::File::open(&dest)
        .and_then(|d| d.sync_all())
        .map_err(BackupError::io("cannot sync", &dest))?;
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
        created_unix,
        skipped,
        changed,
        fingerprint,
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

    /// A body of zstd frames written from `room` on, as the backup writes it.
    fn body_at(dir: &Path, room: u64, content: &[u8]) -> (PathBuf, fs::File) {
        use std::io::Seek;
        let path = dir.join("body");
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        f.seek(io::SeekFrom::Start(room)).unwrap();
        for half in content.chunks(content.len() / 2 + 1) {
            f.write_all(&zstd::bulk::compress(half, 3).unwrap())
                .unwrap();
        }
        (path, f)
    }

    #[test]
    fn the_manifest_goes_into_its_room_or_the_body_moves_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = b"the manifest member".repeat(40);
        let frame = zstd::bulk::compress(&manifest, 3).unwrap();
        let body = b"the body's tar stream ".repeat(5000);
        let archive = dir.path().join("a.tar.zst");
        // Room to spare: the frame, a skippable frame over the rest, the body untouched.
        let room = frame.len() as u64 + 100;
        let place = |room: u64| {
            place_manifest(
                &archive,
                body_at(dir.path(), room, &body),
                room,
                &frame,
                false,
            )
            .unwrap()
        };
        let (path, file) = place(room);
        assert_eq!(path, dir.path().join("body"), "written in place");
        drop(file);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(&bytes[..frame.len()], &frame[..]);
        let mut whole = Vec::new();
        zstd::stream::copy_decode(bytes.as_slice(), &mut whole).unwrap();
        assert_eq!(whole, [manifest.as_slice(), body.as_slice()].concat());
        fs::remove_file(&path).unwrap();

        // Exactly the frame and a skippable header: still in place; one byte less: moved.
        for (room, moved) in [
            (frame.len() as u64 + 8, false),
            (frame.len() as u64 + 7, true),
        ] {
            let (path, file) = place(room);
            drop(file);
            assert_eq!(path != dir.path().join("body"), moved, "room {room}");
            assert_eq!(
                dir.path().join("body").exists(),
                !moved,
                "the first file goes"
            );
            let mut whole = Vec::new();
            zstd::stream::copy_decode(fs::read(&path).unwrap().as_slice(), &mut whole).unwrap();
            assert_eq!(whole, [manifest.as_slice(), body.as_slice()].concat());
            fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn the_room_holds_the_manifest_the_walk_promised() {
        // Stand-in hashes compress as badly as real ones: a manifest of real hashes fits.
        let entry = |k: usize, sha: String| Entry {
            path: format!("opt/apigateway/groups/group-1/conf/fed/entity-{k}.xml"),
            kind: Kind::File,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            user: Some("gateway".into()),
            group: Some("gateway".into()),
            size: 4096 + k as u64,
            mtime: 1_795_000_000 + k as i64,
            mtime_nsec: 123_456_789,
            sha256: Some(sha),
            link: None,
        };
        let manifest = |hash: &dyn Fn(usize) -> String| Manifest {
            format: manifest::FORMAT,
            tool_version: "test".into(),
            host: "gw1.example.com".into(),
            created: "2026-11-23T00:00:00Z".into(),
            created_unix: 1_795_000_000,
            install_dir: "opt/apigateway".into(),
            scopes: Vec::new(),
            entries: (0..5000).map(|k| entry(k, hash(k))).collect(),
        };
        let room = manifest_room(&manifest(&|k| stand_in_hash(k as u64))).unwrap();
        let real = manifest(&|k| manifest::sha256_hex(format!("content {k}").as_bytes()));
        let frame = manifest_frame(&real.to_bytes(), real.created_unix).unwrap();
        assert!(frame.len() as u64 + 8 <= room, "{} in {room}", frame.len());
        // And not wastefully more.
        assert!(
            room < frame.len() as u64 * 3 / 2 + 8192,
            "{} in {room}",
            frame.len()
        );
    }

    #[test]
    fn a_file_is_racy_only_when_written_within_a_tick_of_its_read() {
        use nix::sys::time::TimeSpec;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"x").unwrap();
        let set = |secs: i64| {
            let t = TimeSpec::new(secs, 0);
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &path,
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
            fs::metadata(&path).unwrap()
        };
        // Just written: racy now, and not once a tick has passed (what settled_metadata waits).
        let fresh = fs::metadata(&path).unwrap();
        assert!(modified_lately(&fresh));
        let settled = settled_metadata(&fs::File::open(&path).unwrap()).unwrap();
        let now = SystemTime::now();
        assert!(!written_while_read(&settled, now, now));
        // Long ago, in the future (a skewed clock), at the end of time: never racy, no panic.
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        for secs in [1_000_000_000, now_secs + 3600, i64::MAX / 2_000_000_000] {
            let meta = set(secs);
            assert!(!modified_lately(&meta), "{secs}");
        }
        // Written during the read window (a tick before its start to a tick after its end).
        let meta = set(now_secs);
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs as u64);
        assert!(written_while_read(&meta, started, started));
        assert!(written_while_read(
            &meta,
            started + Duration::from_millis(15),
            started + Duration::from_secs(1)
        ));
        assert!(!written_while_read(
            &meta,
            started + Duration::from_millis(25),
            started + Duration::from_secs(1)
        ));
    }

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
