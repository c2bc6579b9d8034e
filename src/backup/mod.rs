//! Backup, verify and restore of the installation: one standard tar (pax) archive compressed
//! with zstd, paths relative to `/` (so that `tar --zstd -C / -xpf` restores it in an emergency),
//! a `MANIFEST` member first, and the archive's sha256 beside it.

pub mod drill;
pub mod encryption;
pub mod hooks;
pub mod last_state;
pub mod manifest;
pub mod restore;
pub mod retention;
mod scope;
pub mod scratch;
pub mod verify;
mod write;

pub use manifest::{Entry, Kind, Manifest, MANIFEST_PATH};
pub use scope::{scopes, scopes_of, Scope, ScopeKind};
pub use write::{backup, BackupOptions, BackupSummary, Quiesce};

use std::path::PathBuf;

/// What can go wrong taking, reading or restoring an archive.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file or directory cannot be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config's `[backup]` table is broken.
    #[error("{0}")]
    Config(String),
    /// The archive (or its `.sha256`) cannot be read.
    #[error("{0}")]
    CannotRead(String),
    /// The archive is not what its manifest and hash say.
    #[error("{}: damaged: {detail}", archive.display())]
    Damaged {
        /// The archive.
        archive: PathBuf,
        /// What is wrong, by path.
        detail: String,
    },
    /// The archive holds something restore never writes.
    #[error("{}: refused: {detail}; nothing was changed", archive.display())]
    Refused {
        /// The archive.
        archive: PathBuf,
        /// The entry and why.
        detail: String,
    },
}

impl BackupError {
    /// An I/O error constructor for `map_err`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| BackupError::Io { what, path, source }
    }
}

/// The sidecar file beside an archive: the archive's sha256 in `sha256sum` format (it covers
/// the manifest inside, so a rewritten archive with a rewritten manifest is caught).
pub fn sidecar_of(archive: &std::path::Path) -> PathBuf {
    let mut s = archive.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// The name's end of an archive encrypted to `[backup] recipients`.
pub const ENCRYPTED_SUFFIX: &str = ".tar.zst.age";

/// Whether an archive is encrypted (by its name, as `age -d` users know it).
pub fn is_encrypted(archive: &std::path::Path) -> bool {
    archive
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(ENCRYPTED_SUFFIX))
}

/// The archive file name for a host and a time: `gw1.example.com-20261123T213500Z.tar.zst`.
pub fn archive_name(host: &str, unix: i64) -> String {
    format!(
        "{}-{}.tar.zst",
        host.replace(['/', '\0'], "_"),
        utc_stamp(unix)
    )
}

/// A UTC time's calendar fields: (year, month, day, hour, minute, second).
fn utc_fields(unix: i64) -> (i32, u8, u8, u8, u8, u8) {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    (
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    )
}

/// A UTC time for file and directory names: `20261123T213500Z` (names sort by time).
pub fn utc_stamp(unix: i64) -> String {
    let (y, mo, d, h, mi, s) = utc_fields(unix);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// A UTC time as RFC 3339 (`2026-11-23T21:35:00Z`).
pub fn rfc3339(unix: i64) -> String {
    let (y, mo, d, h, mi, s) = utc_fields(unix);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}
