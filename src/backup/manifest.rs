//! The archive's `MANIFEST` member: what was taken, from where, and every entry with its type,
//! mode, owner (id and name), size, mtime, sha256 and link target. Verify and restore trust
//! nothing in the archive that the manifest does not say, and the manifest nothing that its
//! hash beside the archive (`ARCHIVE.sha256`) does not confirm.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format this build writes and reads.
pub const FORMAT: u32 = 1;

/// Where the manifest sits in the archive (paths are relative to `/`): a `tar -C / -x` in an
/// emergency leaves it there, a record of what the host was restored from.
pub const MANIFEST_PATH: &str = "var/lib/gateway-systemd/MANIFEST";

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

impl Kind {
    /// The operator's word for it.
    pub fn word(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symbolic link",
        }
    }
}

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its path relative to `/`, without a trailing slash (`opt/apigateway/groups`).
    pub path: String,
    /// File, directory or symbolic link.
    pub kind: Kind,
    /// Permission bits (with set-id and sticky bits).
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner name, when the id had one on the backed-up host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group name, when the id had one on the backed-up host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Size in bytes (0 for directories and links).
    pub size: u64,
    /// Modification time: seconds since the epoch.
    pub mtime: i64,
    /// Modification time: nanoseconds.
    pub mtime_nsec: u32,
    /// sha256 of a file's content, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A link's target, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// One tree or file the archive takes, in the operator's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeRecord {
    /// Its name (`groups`, `conf`, `init-scripts`, ...).
    pub name: String,
    /// Its path relative to `/`.
    pub path: String,
    /// `tree` (the path and all under it), `file`, or `matching` (the entries of the directory
    /// whose names start with one of `prefixes`, each whole).
    pub kind: String,
    /// For `matching`: the name prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    /// Paths under it never taken (relative to `/`): a restore carries them over from the
    /// tree it replaces (conf/opsdb.d).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The gateway-systemd version that wrote it.
    pub tool_version: String,
    /// The host it was taken on (its name in topology.json).
    pub host: String,
    /// When, UTC (`2026-11-23T21:35:00Z`).
    pub created: String,
    /// When, seconds since the epoch.
    pub created_unix: i64,
    /// The installation directory, relative to `/`.
    pub install_dir: String,
    /// What it takes.
    pub scopes: Vec<ScopeRecord>,
    /// Every entry, in archive order.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// What the archive holds, as one hash: host, install dir, scopes and every entry; not
    /// when it was taken, nor when the hooks' output was written (a dump made afresh with the
    /// same content is the same state). Two archives with one fingerprint restore the same.
    pub fn fingerprint(&self) -> String {
        let hook_dir = super::hooks::HOOK_DIR.trim_start_matches('/');
        let mut h = Sha256::new();
        let state = (&self.host, &self.install_dir, &self.scopes);
        h.update(serde_json::to_vec(&state).unwrap_or_default());
        for e in &self.entries {
            let mut e = e.clone();
            if e.path == hook_dir || e.path.starts_with(&format!("{hook_dir}/")) {
                (e.mtime, e.mtime_nsec) = (0, 0);
            }
            h.update(serde_json::to_vec(&e).unwrap_or_default());
            h.update(b"\n");
        }
        hex(&h.finalize())
    }

    /// The manifest as stored: a header, then one entry per line (readable with `zstdcat | less`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let head = Manifest {
            entries: Vec::new(),
            ..self.clone()
        };
        let mut text = serde_json::to_string(&head).unwrap_or_default();
        // Re-open the empty entries array and write one entry per line.
        text.truncate(text.len().saturating_sub(3));
        text.push_str("[\n");
        for (k, e) in self.entries.iter().enumerate() {
            if k > 0 {
                text.push_str(",\n");
            }
            text.push_str(&serde_json::to_string(e).unwrap_or_default());
        }
        text.push_str("\n]}\n");
        text.into_bytes()
    }

    /// Read a stored manifest.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a backup manifest ({e})"))?;
        if m.format != FORMAT {
            return Err(format!(
                "manifest format {} is not supported by this gateway-systemd (it reads format {FORMAT})",
                m.format
            ));
        }
        Ok(m)
    }
}

/// sha256 of bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_manifest_reads_back_the_same() {
        let m = Manifest {
            format: FORMAT,
            tool_version: "0.1.0".into(),
            host: "gw1".into(),
            created: "2026-11-23T21:35:00Z".into(),
            created_unix: 1_795_469_700,
            install_dir: "opt/apigateway".into(),
            scopes: vec![ScopeRecord {
                name: "groups".into(),
                path: "opt/apigateway/groups".into(),
                kind: "tree".into(),
                prefixes: vec![],
                exclude: vec![],
            }],
            entries: vec![
                Entry {
                    path: "opt/apigateway/groups".into(),
                    kind: Kind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    user: Some("root".into()),
                    group: None,
                    size: 0,
                    mtime: 1,
                    mtime_nsec: 2,
                    sha256: None,
                    link: None,
                },
                Entry {
                    path: "opt/apigateway/groups/a \"b\"\nc".into(),
                    kind: Kind::File,
                    mode: 0o4755,
                    uid: 1000,
                    gid: 1000,
                    user: None,
                    group: None,
                    size: 3,
                    mtime: -5,
                    mtime_nsec: 999_999_999,
                    sha256: Some(sha256_hex(b"abc")),
                    link: None,
                },
            ],
        };
        let bytes = m.to_bytes();
        assert_eq!(Manifest::from_bytes(&bytes).unwrap(), m);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let empty = Manifest {
            entries: vec![],
            ..m
        };
        assert_eq!(Manifest::from_bytes(&empty.to_bytes()).unwrap(), empty);
    }
}
