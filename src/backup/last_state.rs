//! What the newest archive of a host in a directory holds, and when a backup run last found
//! it still current: `.last-state-<host>` beside the archives. `--if-changed` reads it to know
//! an encrypted archive's state without its identity; a drill reads it to tell a recovery point
//! that unchanged runs kept current from one that is merely old.

use std::path::{Path, PathBuf};

/// One host's record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastState {
    /// The archive's file name.
    pub archive: String,
    /// Its [`super::Manifest::fingerprint`].
    pub fingerprint: String,
    /// The age recipients it is encrypted to, sorted (none: not encrypted).
    #[serde(default)]
    pub sealed_to: Vec<String>,
    /// When a backup run last found the installation in exactly that state (seconds since the
    /// epoch): its creation, or a later `--if-changed` run that kept no new archive.
    pub current_at: i64,
}

/// The record's path for `host` in `dir`.
pub fn path(dir: &Path, host: &str) -> PathBuf {
    dir.join(format!(".last-state-{}", host.replace(['/', '\0'], "_")))
}

/// The record of `host` in `dir`, if there is a readable one.
pub fn read(dir: &Path, host: &str) -> Option<LastState> {
    let bytes = std::fs::read(path(dir, host)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Write the record (atomically, 0600).
pub fn write(dir: &Path, host: &str, state: &LastState) -> std::io::Result<()> {
    crate::install::write_atomic(
        &path(dir, host),
        &serde_json::to_vec(state).unwrap_or_default(),
        0o600,
    )
}

/// When a run last found `archive` (of `host`, in its directory) current, if the record is
/// about it.
pub fn current_at(archive: &Path, host: &str) -> Option<i64> {
    let dir = archive.parent()?;
    let name = archive.file_name()?.to_string_lossy();
    read(dir, host)
        .filter(|s| s.archive == name)
        .map(|s| s.current_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_per_host_and_about_one_archive() {
        let d = tempfile::tempdir().unwrap();
        let s = LastState {
            archive: "gw1-20261124T020000Z.tar.zst.age".into(),
            fingerprint: "ab".into(),
            sealed_to: vec!["age1x".into()],
            current_at: 1_795_500_000,
        };
        write(d.path(), "gw1", &s).unwrap();
        assert_eq!(read(d.path(), "gw1"), Some(s.clone()));
        assert_eq!(read(d.path(), "gw2"), None);
        assert_eq!(
            current_at(&d.path().join(&s.archive), "gw1"),
            Some(1_795_500_000)
        );
        assert_eq!(
            current_at(&d.path().join("gw1-20261123T020000Z.tar.zst"), "gw1"),
            None
        );
    }
}
