//! `gatewayctl backup`, `verify` and `restore`: arguments in, the backup module's work, the
//! outcome out (text or JSON) with sysexits-style statuses for verify.

use super::exit;
use crate::backup::{self, verify::ReadError, BackupOptions};
use crate::install::{self, Root};
use std::path::{Path, PathBuf};

/// The archive is damaged (sysexits EX_DATAERR).
pub const DAMAGED: i32 = 65;
/// The archive cannot be read (sysexits EX_NOINPUT).
pub const CANNOT_READ: i32 = 66;

/// The root the installation is read from: `/`, or `GATEWAY_SYSTEMD_ROOT` (a copy of a host's
/// files, as the generator and check-config accept).
fn root() -> Root {
    std::env::var_os(crate::generator::ROOT_ENV).map_or_else(|| Root::new("/"), Root::new)
}

/// `gatewayctl backup`.
pub fn backup_command(full: bool, to: Option<PathBuf>, json: bool) -> i32 {
    let root = root();
    let (config, inst, _) = install::load_with_config(&root);
    if let Some(e) = &config.broken_backup {
        eprintln!("gatewayctl: {e}");
        return exit::FAILED;
    }
    let to = to.map(|d| match d.is_absolute() {
        true => d,
        false => std::env::current_dir().unwrap_or_default().join(d),
    });
    let opts = BackupOptions {
        full,
        to,
        progress: !json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        extra_roots: config.backup.extra_roots.clone().unwrap_or_default(),
        configured_dir: config.backup.dir.clone(),
    };
    match backup::backup(&root, &inst, &opts) {
        Ok(s) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                for why in &s.skipped {
                    println!("skipped {why}");
                }
                for path in &s.changed {
                    println!("changed while it was read (taken as last read): {path}");
                }
                println!(
                    "wrote {} ({} files, {} directories, {} links; {} bytes in {} bytes, {:.1}x) in {:.1}s\n\
                     manifest sha256 {} in {}",
                    s.archive.display(),
                    s.files,
                    s.directories,
                    s.links,
                    s.bytes,
                    s.archive_bytes,
                    s.ratio,
                    s.seconds,
                    s.manifest_sha256,
                    backup::sidecar_of(&s.archive).display()
                );
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("gatewayctl: backup failed: {e}; no archive was written");
            exit::FAILED
        }
    }
}

/// `gatewayctl verify`.
pub fn verify_command(archive: &Path, json: bool) -> i32 {
    match backup::verify::verify(archive) {
        Ok(report) => {
            let intact = report.problems.is_empty();
            if json {
                let mut v = serde_json::to_value(&report).unwrap_or_default();
                v["intact"] = serde_json::Value::Bool(intact);
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                for p in &report.problems {
                    println!("{p}");
                }
                match intact {
                    true => println!(
                        "{}: intact: {} entries, {} bytes of {} taken {}",
                        archive.display(),
                        report.entries,
                        report.bytes,
                        report.host,
                        report.created
                    ),
                    false => println!(
                        "{}: DAMAGED: {} difference(s) from its manifest",
                        archive.display(),
                        report.problems.len()
                    ),
                }
            }
            if intact {
                exit::OK
            } else {
                DAMAGED
            }
        }
        Err(e) => {
            let (word, code) = match &e {
                ReadError::CannotRead(_) => ("cannot read", CANNOT_READ),
                ReadError::Damaged(_) => ("DAMAGED", DAMAGED),
            };
            if json {
                let v = serde_json::json!({
                    "archive": archive,
                    "intact": false,
                    "problems": match &e {
                        ReadError::CannotRead(w) => vec![w.clone()],
                        ReadError::Damaged(p) => p.clone(),
                    },
                    "error": word,
                });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                eprintln!("{}: {word}: {e}", archive.display());
            }
            code
        }
    }
}
