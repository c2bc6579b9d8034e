//! Archives at rest: encrypted to the `age` recipients of `[backup] recipients`, so that a copy
//! off the host is useless without an identity, and `age -d -i KEY | zstd -d | tar -x` still
//! restores without us. Identities come from files only (`--identity FILE`), never from the
//! command line, where `ps` and shell histories would show them.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The identities this process decrypts with, and the file they came from.
static IDENTITIES: OnceLock<(PathBuf, Vec<age::x25519::Identity>)> = OnceLock::new();

/// Parse `[backup] recipients` (`age1...` public keys).
pub fn recipients(keys: &[String]) -> Result<Vec<age::x25519::Recipient>, String> {
    keys.iter()
        .map(|k| {
            k.trim().parse().map_err(|e| {
                format!("[backup] recipients: {k:?} is not an age X25519 public key: {e}")
            })
        })
        .collect()
}

/// Read the age identities (`AGE-SECRET-KEY-1...` lines, as `age-keygen` writes them) of
/// `path` and decrypt with them from now on. Says so when others may read the file.
pub fn use_identity_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{}: {e}; --identity takes the file age-keygen wrote",
            path.display()
        )
    })?;
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let id: age::x25519::Identity = line.parse().map_err(|_| {
            format!(
                "{}:{}: not an age identity (AGE-SECRET-KEY-1...); only X25519 identities as age-keygen writes them are read",
                path.display(),
                n + 1
            )
        })?;
        found.push(id);
    }
    if found.is_empty() {
        return Err(format!("{}: holds no age identity", path.display()));
    }
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        eprintln!(
            "gatewayctl: warning: {} can be read by others; it decrypts every archive: chmod 600 it",
            path.display()
        );
    }
    IDENTITIES
        .set((path.to_path_buf(), found))
        .map_err(|_| "an identity file was given twice".to_string())
}

/// Whether an identity file was given.
pub fn have_identity() -> bool {
    IDENTITIES.get().is_some()
}

/// Encrypt all of `plain` to `recipients` into `out`; returns `out`.
pub fn encrypt<W: Write>(
    plain: &mut dyn Read,
    out: W,
    recipients: &[age::x25519::Recipient],
) -> io::Result<W> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(io::Error::other)?;
    let mut w = encryptor.wrap_output(out)?;
    io::copy(plain, &mut w)?;
    w.finish()
}

/// The plaintext of an encrypted archive read from `input`, with the identities of
/// [`use_identity_file`]; Err says what the operator lacks.
pub(crate) fn decrypting<R: Read + Send + 'static>(input: R) -> io::Result<Box<dyn Read + Send>> {
    let Some((file, ids)) = IDENTITIES.get() else {
        return Err(io::Error::other(
            "the archive is encrypted (.age): give the identity whose public key is in [backup] recipients with --identity FILE",
        ));
    };
    let decryptor = age::Decryptor::new(input)
        .map_err(|e| io::Error::other(format!("not an age file: {e}")))?;
    match decryptor.decrypt(ids.iter().map(|i| i as &dyn age::Identity)) {
        Ok(r) => Ok(Box::new(r)),
        Err(age::DecryptError::NoMatchingKeys) => Err(io::Error::other(format!(
            "none of the identities in {} can decrypt it: it was encrypted to other recipients",
            file.display()
        ))),
        Err(e) => Err(io::Error::other(format!("cannot decrypt: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_bytes_come_back_only_with_the_identity() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let plain = b"conf/certs/server.key: -----BEGIN PRIVATE KEY-----".repeat(1000);
        let sealed = encrypt(&mut &plain[..], Vec::new(), &[id.to_public()]).unwrap();
        assert!(!sealed
            .windows(b"PRIVATE KEY".len())
            .any(|w| w == b"PRIVATE KEY"));
        let mut back = Vec::new();
        age::Decryptor::new(&sealed[..])
            .unwrap()
            .decrypt(std::iter::once(&id as &dyn age::Identity))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, plain);
        let refused = age::Decryptor::new(&sealed[..])
            .unwrap()
            .decrypt(std::iter::once(&other as &dyn age::Identity));
        assert!(matches!(refused, Err(age::DecryptError::NoMatchingKeys)));
    }

    #[test]
    fn recipients_that_are_not_public_keys_are_named() {
        let id = age::x25519::Identity::generate();
        let good = id.to_public().to_string();
        assert_eq!(recipients(std::slice::from_ref(&good)).unwrap().len(), 1);
        let e = recipients(&[good, "age1notakey".into()]).unwrap_err();
        assert!(e.contains("age1notakey"), "{e}");
    }
}
