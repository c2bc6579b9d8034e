//! Reading an archive back, trusting nothing it says that its manifest does not: the manifest
//! comes first and must hash to what `ARCHIVE.sha256` says; every later entry must be in it,
//! once, with the same type, mode, owner, time, size, link target and content hash. Verify
//! reports every difference by path; restore uses the same reader and refuses on the first.

use super::manifest::{self, Entry, Kind, Manifest, MANIFEST_PATH};
use super::sidecar_of;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The largest manifest and pax header this reader accepts.
const MANIFEST_MAX: u64 = 512 * 1024 * 1024;
const PAX_MAX: u64 = 64 * 1024;

/// Why an archive could not be verified.
#[derive(Debug)]
pub enum ReadError {
    /// It (or its `.sha256`) cannot be read at all: nothing is known about its state.
    CannotRead(String),
    /// It is not what its manifest and hash say: each difference, by path.
    Damaged(Vec<String>),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::CannotRead(why) => f.write_str(why),
            ReadError::Damaged(problems) => write!(f, "damaged: {}", problems.join("; ")),
        }
    }
}

/// What a verify found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The archive.
    pub archive: PathBuf,
    /// Its host and creation time, from the manifest.
    pub host: String,
    /// When it was made (UTC).
    pub created: String,
    /// Entries checked.
    pub entries: u64,
    /// Bytes of file content hashed.
    pub bytes: u64,
    /// Every difference, by path; empty when intact.
    pub problems: Vec<String>,
}

/// A reader that fails once more than `budget` bytes came through: a decompression bomb
/// (or a header that claims more than the manifest) ends there instead of filling the disk
/// or running for hours.
struct Budget<R> {
    inner: R,
    left: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 {
            return Err(io::Error::other(
                "the archive holds more data than its manifest lists (a decompression bomb?)",
            ));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

/// The archive's sha256 as `ARCHIVE.sha256` states it (`sha256sum` format).
fn expected_hash(archive: &Path) -> Result<String, ReadError> {
    let sidecar = sidecar_of(archive);
    let text = fs::read_to_string(&sidecar).map_err(|e| {
        ReadError::CannotRead(format!(
            "{}: {e}; it holds the archive's sha256 and travels with the archive (copy both)",
            sidecar.display()
        ))
    })?;
    match text.split_whitespace().next() {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(h.to_ascii_lowercase())
        }
        _ => Err(ReadError::Damaged(vec![format!(
            "{}: not a sha256 written by gatewayctl backup",
            sidecar.display()
        )])),
    }
}

/// What the decompressing thread sends: a piece of the tar stream, a failure, or, at the end
/// of the file, the sha256 of its raw bytes.
enum Piece {
    Data(Vec<u8>),
    Failed(String),
    End(String),
}

/// The tar stream, decompressed by a thread of its own (as `zstd -d | tar -x` are two
/// processes) which also hashes the file's raw bytes; the hash arrives once the whole file was
/// read.
struct Decompressed {
    rx: std::sync::mpsc::Receiver<Piece>,
    current: Vec<u8>,
    at: usize,
    raw_hash: std::rc::Rc<std::cell::RefCell<Option<String>>>,
    ended: bool,
}

/// The archive file's bytes as read, hashed on the way (by every reader of the file).
struct Hashed(fs::File, std::sync::Arc<std::sync::Mutex<Sha256>>);

impl Read for Hashed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(&buf[..n]);
        Ok(n)
    }
}

impl Decompressed {
    /// Decompress `raw` (the file, or its plaintext when encrypted) on a thread of its own;
    /// once it ended, what is left of the file after it (`rest`, the same open file) is
    /// hashed too, and the hash of every byte of the file is sent.
    fn start(
        raw: Box<dyn Read + Send>,
        rest: Hashed,
        raw_hash: std::rc::Rc<std::cell::RefCell<Option<String>>>,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        std::thread::spawn(move || {
            let mut decoder = match zstd::stream::read::Decoder::new(raw) {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Piece::Failed(e.to_string()));
                    return;
                }
            };
            loop {
                let mut buf = vec![0u8; 1 << 20];
                let mut filled = 0;
                // Whole pieces: fewer, larger messages.
                while filled < buf.len() {
                    match decoder.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.send(Piece::Failed(e.to_string()));
                            return;
                        }
                    }
                }
                if filled == 0 {
                    drop(decoder);
                    // An age stream may end before the file does; those bytes count too.
                    let mut rest = rest;
                    if let Err(e) = io::copy(&mut rest, &mut io::sink()) {
                        let _ = tx.send(Piece::Failed(e.to_string()));
                        return;
                    }
                    let hash = rest.1.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let _ = tx.send(Piece::End(manifest::hex(&hash.finalize())));
                    return;
                }
                buf.truncate(filled);
                // The reader stopped (it found what it needed, or a fault): stop too.
                if tx.send(Piece::Data(buf)).is_err() {
                    return;
                }
            }
        });
        Decompressed {
            rx,
            current: Vec::new(),
            at: 0,
            raw_hash,
            ended: false,
        }
    }
}

impl Read for Decompressed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Piece::Data(d)) => {
                    self.current = d;
                    self.at = 0;
                }
                Ok(Piece::End(hash)) => {
                    *self.raw_hash.borrow_mut() = Some(hash);
                    self.ended = true;
                }
                Ok(Piece::Failed(e)) => return Err(io::Error::other(e)),
                Err(_) => return Err(io::Error::other("the decompressing thread ended early")),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// One entry as the archive states it, after its pax records.
struct Stated {
    path: String,
    kind: Option<Kind>,
    type_name: String,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: (i64, u32),
    link: Option<String>,
    refused_pax: Option<String>,
}

fn stated(header: &tar::Header, size: u64, pax: Option<&[u8]>) -> Stated {
    let et = header.entry_type();
    let mut s = Stated {
        path: String::from_utf8_lossy(&header.path_bytes()).into_owned(),
        kind: match et {
            tar::EntryType::Regular => Some(Kind::File),
            tar::EntryType::Directory => Some(Kind::Dir),
            tar::EntryType::Symlink => Some(Kind::Symlink),
            _ => None,
        },
        type_name: format!("{et:?}"),
        mode: header.mode().unwrap_or(u32::MAX) & 0o7777,
        uid: header.uid().unwrap_or(u64::MAX),
        gid: header.gid().unwrap_or(u64::MAX),
        size,
        mtime: (header.mtime().map_or(-1, |t| t as i64), 0),
        link: header
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned()),
        refused_pax: None,
    };
    if s.kind == Some(Kind::Dir) {
        if let Some(p) = s.path.strip_suffix('/') {
            s.path = p.to_string();
        }
    }
    for ext in tar::PaxExtensions::new(pax.unwrap_or_default()) {
        let Ok(ext) = ext else {
            s.refused_pax = Some("a malformed pax record".into());
            break;
        };
        let value = String::from_utf8_lossy(ext.value_bytes()).into_owned();
        match ext.key() {
            Ok("path") => s.path = value,
            Ok("linkpath") => s.link = Some(value),
            Ok("mtime") => match super::write::parse_pax_time(&value) {
                Some(t) => s.mtime = t,
                None => s.refused_pax = Some(format!("a pax mtime {value:?}")),
            },
            Ok("uname") | Ok("gname") => {}
            // Anything else changes how the entry reads (size, sparse maps, ids): we never
            // write it, so it is refused rather than interpreted.
            Ok(other) => s.refused_pax = Some(format!("a pax {other:?} record")),
            Err(_) => s.refused_pax = Some("a pax record with a non-UTF-8 key".into()),
        }
    }
    s
}

/// How an entry differs from the manifest's, if it does.
fn differs(s: &Stated, m: &Entry) -> Option<String> {
    if let Some(why) = &s.refused_pax {
        return Some(format!("carries {why}"));
    }
    let Some(kind) = s.kind else {
        return Some(format!(
            "is a {} entry, which no backup writes",
            s.type_name
        ));
    };
    let checks: [(&str, String, String); 7] = [
        ("type", kind.word().into(), m.kind.word().into()),
        ("mode", format!("{:o}", s.mode), format!("{:o}", m.mode)),
        ("owner id", s.uid.to_string(), m.uid.to_string()),
        ("group id", s.gid.to_string(), m.gid.to_string()),
        ("size", s.size.to_string(), m.size.to_string()),
        (
            "mtime",
            format!("{}.{:09}", s.mtime.0, s.mtime.1),
            format!("{}.{:09}", m.mtime, m.mtime_nsec),
        ),
        (
            "link target",
            s.link
                .clone()
                .filter(|_| kind == Kind::Symlink)
                .unwrap_or_default(),
            m.link.clone().unwrap_or_default(),
        ),
    ];
    checks
        .iter()
        .find(|(_, is, want)| is != want)
        .map(|(what, is, want)| format!("{what} is {is}, the manifest says {want}"))
}

/// Read the manifest member (the first). Whether it can be trusted is known once the whole
/// archive hashed to what `ARCHIVE.sha256` says; until then it only guides the read.
fn take_manifest<R: Read>(entries: &mut tar::Entries<'_, R>) -> Result<Manifest, ReadError> {
    let damaged = |what: String| ReadError::Damaged(vec![what]);
    let mut first = match entries.next() {
        Some(Ok(e)) => e,
        Some(Err(e)) => return Err(damaged(format!("cannot read its first entry: {e}"))),
        None => return Err(damaged("it is empty".into())),
    };
    if first.header().entry_type() != tar::EntryType::Regular
        || first.header().path_bytes().as_ref() != MANIFEST_PATH.as_bytes()
        || first.size() > MANIFEST_MAX
    {
        return Err(damaged(format!(
            "its first entry is not the manifest ({MANIFEST_PATH})"
        )));
    }
    let mut bytes = Vec::new();
    first
        .read_to_end(&mut bytes)
        .map_err(|e| damaged(format!("cannot read the manifest: {e}")))?;
    Manifest::from_bytes(&bytes).map_err(damaged)
}

/// An archive opened for reading: a tar reader over the decompressed stream (whose budget
/// starts at the manifest's bound), the running hash of the file's raw bytes, and what
/// `ARCHIVE.sha256` says it must come to.
struct Opened {
    tar: tar::Archive<Stream>,
    budget: std::rc::Rc<std::cell::Cell<u64>>,
    raw_hash: std::rc::Rc<std::cell::RefCell<Option<String>>>,
    want: String,
}

fn open(archive: &Path) -> Result<Opened, ReadError> {
    let want = expected_hash(archive)?;
    let cannot = |e: io::Error| ReadError::CannotRead(format!("{}: {e}", archive.display()));
    let file = fs::File::open(archive).map_err(cannot)?;
    // Two handles on one open file (one offset): the decoder's, and the one that reads what
    // it left.
    let hash = std::sync::Arc::new(std::sync::Mutex::new(Sha256::new()));
    let rest = Hashed(file.try_clone().map_err(cannot)?, hash.clone());
    let hashed = Hashed(file, hash);
    let raw: Box<dyn Read + Send> = match super::is_encrypted(archive) {
        true => super::encryption::decrypting(hashed).map_err(cannot)?,
        false => Box::new(hashed),
    };
    let raw_hash = std::rc::Rc::new(std::cell::RefCell::new(None));
    let decoder = Decompressed::start(raw, rest, raw_hash.clone());
    let budget = std::rc::Rc::new(std::cell::Cell::new(MANIFEST_MAX + 4096));
    let stream = Budget {
        inner: decoder,
        left: budget.clone(),
    };
    Ok(Opened {
        tar: tar::Archive::new(stream),
        budget,
        raw_hash,
        want,
    })
}

/// The archive's bytes against its `.sha256` (`sha256sum -c`), without reading what it holds:
/// all that can be checked of an encrypted archive without its identity.
pub fn check_sidecar(archive: &Path) -> Result<(), super::BackupError> {
    let want = expected_hash(archive).map_err(|e| match e {
        ReadError::CannotRead(why) => super::BackupError::CannotRead(why),
        ReadError::Damaged(p) => super::BackupError::Damaged {
            archive: archive.to_path_buf(),
            detail: p.join("; "),
        },
    })?;
    let hash = fs::File::open(archive)
        .and_then(|f| super::write::hash_file(&f))
        .map_err(super::BackupError::io("cannot read", archive))?;
    match manifest::hex(&hash) == want {
        true => Ok(()),
        false => Err(super::BackupError::Damaged {
            archive: archive.to_path_buf(),
            detail: format!(
                "its sha256 is not the one {} holds",
                sidecar_of(archive).display()
            ),
        }),
    }
}

/// The manifest of an archive, as its first member says (not yet checked against
/// `ARCHIVE.sha256`: that takes reading the whole archive).
pub fn read_manifest_only(archive: &Path) -> Result<Manifest, super::BackupError> {
    let to_err = |e: ReadError| match e {
        ReadError::CannotRead(why) => super::BackupError::CannotRead(why),
        ReadError::Damaged(problems) => super::BackupError::Damaged {
            archive: archive.to_path_buf(),
            detail: problems.join("; "),
        },
    };
    let mut opened = open(archive).map_err(to_err)?;
    let mut entries = opened
        .tar
        .entries()
        .map_err(|e| to_err(ReadError::Damaged(vec![format!("not a tar stream: {e}")])))?
        .raw(true);
    take_manifest(&mut entries).map_err(to_err)
}

/// The decompressed stream of an archive.
type Stream = Budget<Decompressed>;

/// Read an archive from start to end, checking everything against its manifest. `sink` gets
/// each entry the manifest lists, with its data (files only; what it leaves unread is read
/// and hashed after it); it may stop the read with an error. `stop_at_first` ends at the first
/// difference (restore); otherwise every difference is collected (verify).
pub(crate) fn read(
    archive: &Path,
    stop_at_first: bool,
    sink: &mut dyn FnMut(&Entry, &mut dyn Read) -> io::Result<()>,
) -> Result<(Manifest, u64, Vec<String>), ReadError> {
    let Opened {
        mut tar,
        budget: left,
        raw_hash,
        want,
    } = open(archive)?;
    let damaged = |what: String| ReadError::Damaged(vec![what]);
    let mut entries = tar
        .entries()
        .map_err(|e| damaged(format!("not a tar stream: {e}")))?
        .raw(true);

    // 1. The manifest, first, and nothing in it that restore would refuse.
    let manifest = take_manifest(&mut entries)?;
    super::restore::check_manifest(&manifest)
        .map_err(|why| damaged(format!("its manifest lists what no backup writes: {why}")))?;
    // From here on the archive may hold no more than the manifest lists, headers included.
    let data: u64 = manifest
        .entries
        .iter()
        .map(|e| e.size.next_multiple_of(512))
        .sum();
    let headers = (manifest.entries.len() as u64 + 2) * 512 * 3 + 2 * PAX_MAX;
    left.set(data + headers);

    // 2. Every other entry against it.
    let index: HashMap<&str, usize> = manifest
        .entries
        .iter()
        .enumerate()
        .map(|(k, e)| (e.path.as_str(), k))
        .collect();
    let mut seen = vec![false; manifest.entries.len()];
    let mut problems = Vec::new();
    let mut pax: Option<Vec<u8>> = None;
    let mut total = 0u64;
    let give_up = |problems: &mut Vec<String>, p: String| -> bool {
        problems.push(p);
        stop_at_first
    };
    for next in entries {
        let mut entry = match next {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("the tar stream breaks off: {e}"));
                break;
            }
        };
        let et = entry.header().entry_type();
        if et.is_pax_local_extensions() {
            if pax.is_some() || entry.size() > PAX_MAX {
                if give_up(
                    &mut problems,
                    "a pax header that is doubled or too large".into(),
                ) {
                    break;
                }
                continue;
            }
            let mut b = Vec::new();
            if let Err(e) = entry.read_to_end(&mut b) {
                problems.push(format!("the tar stream breaks off: {e}"));
                break;
            }
            pax = Some(b);
            continue;
        }
        let size = entry.size();
        let s = stated(entry.header(), size, pax.take().as_deref());
        let Some(&k) = index.get(s.path.as_str()) else {
            if give_up(
                &mut problems,
                format!(
                    "{}: in the archive but not in its manifest ({})",
                    s.path, s.type_name
                ),
            ) {
                break;
            }
            continue;
        };
        if std::mem::replace(&mut seen[k], true) {
            if give_up(&mut problems, format!("{}: in the archive twice", s.path)) {
                break;
            }
            continue;
        }
        let m = &manifest.entries[k];
        if let Some(d) = differs(&s, m) {
            if give_up(&mut problems, format!("{}: {d}", s.path)) {
                break;
            }
            continue;
        }
        if m.kind != Kind::File {
            if let Err(e) = sink(m, &mut io::empty()) {
                problems.push(format!("{}: {e}", m.path));
                break;
            }
            continue;
        }
        let mut hashing = Hashing {
            inner: &mut entry,
            hash: Sha256::new(),
            read: 0,
        };
        let result = sink(m, &mut hashing);
        // Whatever the sink left unread is hashed too: the content is checked either way.
        let rest = io::copy(&mut hashing, &mut io::sink());
        if let Err(e) = result.and(rest.map(|_| ())) {
            problems.push(format!("{}: {e}", m.path));
            break;
        }
        total += hashing.read;
        let got = manifest::hex(&hashing.hash.finalize());
        if Some(&got) != m.sha256.as_ref()
            && give_up(
                &mut problems,
                format!("{}: its content changed (sha256 {got})", m.path),
            )
        {
            break;
        }
    }
    // 3. After the end-of-archive blocks, only zeros up to the end of the file, and every
    // zstd frame whole (its checksum is checked only once it is read to its end).
    if problems.is_empty() || !stop_at_first {
        let mut rest = tar.into_inner();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rest.read(&mut buf) {
                Ok(0) => break,
                Ok(n) if buf[..n].iter().all(|b| *b == 0) => {}
                Ok(_) => {
                    problems.push("data after the end of the archive".into());
                    break;
                }
                Err(e) => {
                    problems.push(format!("the compressed stream is damaged: {e}"));
                    break;
                }
            }
        }
    }
    // 4. The whole file, to its last byte, against ARCHIVE.sha256: it covers the manifest, so
    // a rewritten archive with a rewritten manifest is caught too.
    if problems.is_empty() || !stop_at_first {
        let got = raw_hash
            .borrow()
            .clone()
            .unwrap_or_else(|| "(not read to its end)".to_string());
        if got != want {
            problems.insert(
                0,
                format!(
                    "the archive hashes to {got}, but {} says {want}: it was changed or replaced",
                    sidecar_of(archive).display()
                ),
            );
        }
    }
    if problems.is_empty() || !stop_at_first {
        for (k, e) in manifest.entries.iter().enumerate() {
            if !seen[k] {
                problems.push(format!(
                    "{}: in the manifest but missing from the archive",
                    e.path
                ));
                if stop_at_first {
                    break;
                }
            }
        }
    }
    Ok((manifest, total, problems))
}

/// A reader that hashes what it yields.
struct Hashing<'a, R> {
    inner: &'a mut R,
    hash: Sha256,
    read: u64,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// `gatewayctl verify`: the report, whose `problems` list every difference (none: intact);
/// Err when the archive cannot be read, or is damaged before its manifest could be trusted.
pub fn verify(archive: &Path) -> Result<Report, ReadError> {
    let (manifest, bytes, problems) = read(archive, false, &mut |_, _| Ok(()))?;
    Ok(Report {
        archive: archive.to_path_buf(),
        host: manifest.host,
        created: manifest.created,
        entries: manifest.entries.len() as u64,
        bytes,
        problems,
    })
}
