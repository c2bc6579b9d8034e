//! The filesystem the installation is read from, and the file helpers every writer shares.

use super::InstallError;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The filesystem root everything is read from: `/` on a host, a fixture tree in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root(PathBuf);

impl Root {
    /// A root at `prefix` (`/` for the real system).
    pub fn new(prefix: impl Into<PathBuf>) -> Self {
        Root(prefix.into())
    }

    /// The real path of a logical (absolute, in-system) path.
    pub fn real(&self, logical: &Path) -> PathBuf {
        self.0.join(logical.strip_prefix("/").unwrap_or(logical))
    }

    /// The logical path of a real one, when it lies under this root.
    pub fn logical(&self, real: &Path) -> Option<PathBuf> {
        real.strip_prefix(&self.0)
            .ok()
            .map(|rest| Path::new("/").join(rest))
    }

    /// Read a file by its logical path; `Ok(None)` when it does not exist.
    pub fn read(&self, logical: &Path) -> Result<Option<String>, InstallError> {
        match read_small_file(&self.real(logical)) {
            Ok(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| InstallError::Unreadable {
                    path: logical.to_path_buf(),
                    detail: "not UTF-8 text".to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(InstallError::Unreadable {
                path: logical.to_path_buf(),
                detail: e.to_string(),
            }),
        }
    }

    /// Whether a logical path is a directory.
    pub fn is_dir(&self, logical: &Path) -> bool {
        self.real(logical).is_dir()
    }
}

/// A name for a temporary file beside `path` that no other writer uses: hidden, with this
/// process's id and a counter (`.gateway.toml.4242.0.tmp`).
fn temp_name_beside(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Create something new beside `path` under a temporary name of its own (see
/// [`temp_name_beside`]); `create` fails with `AlreadyExists` when a crashed writer with a
/// recycled pid left that name behind, and the next name is tried.
pub fn create_beside<T>(
    path: &Path,
    mut create: impl FnMut(&Path) -> io::Result<T>,
) -> io::Result<(PathBuf, T)> {
    let mut last = None;
    for _ in 0..64 {
        let tmp = temp_name_beside(path);
        match create(&tmp) {
            Ok(made) => return Ok((tmp, made)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}

/// Write a file atomically: a temporary file of its own beside it, fsync, rename, fsync of the
/// directory; a crash leaves the old content or the new one, never a mix, and two writers
/// never write into one temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let (tmp, mut f) = create_beside(path, |tmp| {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(tmp)
    })?;
    let result = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Take the lock file at `path` (created 0600 if missing, never truncated) for as long as the
/// returned lock lives; None when another process holds it.
pub fn try_lock(path: &Path) -> io::Result<Option<nix::fcntl::Flock<fs::File>>> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(errno.into()),
    }
}

/// Read a whole regular file with as few system calls as possible: no fstat for a size hint
/// (unlike `fs::read`), and a read that returns less than it was asked for ends the file, which
/// holds for regular files on Linux. The generator reads thousands of small files at boot.
pub fn read_small_file(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    const CHUNK: usize = 16 * 1024;
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(n) => {
                len += n;
                if len < buf.len() {
                    buf.truncate(len);
                    return Ok(buf);
                }
                buf.resize(buf.len() * 2, 0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_held_once_until_dropped_and_its_file_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let held = try_lock(&path).unwrap().expect("a free lock is taken");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(try_lock(&path).unwrap().is_none(), "held: not taken twice");
        drop(held);
        fs::write(&path, "pid 1\n").unwrap();
        let again = try_lock(&path).unwrap();
        assert!(again.is_some(), "free again once dropped");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "pid 1\n",
            "never truncated"
        );
        assert!(try_lock(&dir.path().join("missing/.lock")).is_err());
    }

    #[test]
    fn concurrent_writers_each_land_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("autostart.toml");
        let writers: Vec<_> = (0..8u8)
            .map(|k| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let text = vec![b'a' + k; 64 * 1024];
                    for _ in 0..20 {
                        write_atomic(&path, &text, 0o644).unwrap();
                        let now = fs::read(&path).unwrap();
                        // Whatever writer won last, its content is whole.
                        assert!(now.len() == 64 * 1024 && now.iter().all(|b| *b == now[0]));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "temporary files were left behind");
    }

    #[test]
    fn a_taken_temporary_name_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut tried = Vec::new();
        // The first name is taken (a crashed writer whose pid was recycled left it).
        let (tmp, _) = create_beside(&path, |t| {
            tried.push(t.to_path_buf());
            match tried.len() {
                1 => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
                _ => fs::File::create_new(t),
            }
        })
        .unwrap();
        assert_eq!(tried.len(), 2);
        assert_ne!(tried[0], tried[1]);
        assert_eq!(tmp, tried[1]);
    }
}
