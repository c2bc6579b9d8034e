//! What a backup takes: the vendor's scopes of the installation (groups, conf without
//! opsdb.d, nodemanager.xml, ext, platform with --full), this host's remaining legacy init
//! scripts, and our own state (config, systemd links and drop-ins, migrate-initd's backups,
//! what the `before` hooks wrote).

use crate::install::Installation;
use std::path::{Path, PathBuf};

/// How a scope is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeKind {
    /// A directory and everything under it.
    Tree,
    /// One file (or link).
    File,
    /// The entries of a directory whose names start with one of these prefixes, each whole.
    Matching(Vec<&'static str>),
}

/// One tree or file a backup takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Its name in the operator's words.
    pub name: &'static str,
    /// Its logical path (absolute, on the host).
    pub path: PathBuf,
    /// How it is taken.
    pub kind: ScopeKind,
    /// Paths under it that are never taken (logical, absolute).
    pub exclude: Vec<PathBuf>,
}

impl Scope {
    fn tree(name: &'static str, path: PathBuf) -> Self {
        Scope {
            name,
            path,
            kind: ScopeKind::Tree,
            exclude: Vec::new(),
        }
    }
}

/// systemd's unit directory for the administrator's links and drop-ins.
const ETC_SYSTEMD: &str = "/etc/systemd/system";

/// The scopes of a backup of `inst`, in archive order.
pub fn scopes(inst: &Installation, full: bool, extra_roots: &[PathBuf]) -> Vec<Scope> {
    scopes_of(&inst.install_dir, full, extra_roots)
}

/// The scopes of a backup of the installation in `install` (logical, absolute).
pub fn scopes_of(install: &Path, full: bool, extra_roots: &[PathBuf]) -> Vec<Scope> {
    let mut s = vec![
        Scope::tree("groups", install.join("groups")),
        Scope {
            exclude: vec![install.join("conf/opsdb.d")],
            ..Scope::tree("conf", install.join("conf"))
        },
        Scope {
            name: "nodemanager.xml",
            path: install.join("system/conf/nodemanager.xml"),
            kind: ScopeKind::File,
            exclude: Vec::new(),
        },
        Scope::tree("ext", install.join("ext")),
    ];
    if full {
        s.push(Scope::tree("platform", install.join("platform")));
    }
    s.push(Scope {
        name: "init-scripts",
        path: PathBuf::from(crate::initd::INIT_DIR),
        kind: ScopeKind::Matching(vec![crate::initd::SCRIPT_PREFIX]),
        exclude: Vec::new(),
    });
    s.push(Scope::tree(
        "gateway-systemd-config",
        PathBuf::from("/etc/gateway-systemd"),
    ));
    s.push(Scope::tree(
        "migrate-initd-backups",
        PathBuf::from(crate::ctl::migrate::BACKUP_ROOT),
    ));
    // What the `before` hooks wrote (a database dump, say).
    s.push(Scope::tree(
        "hook-output",
        PathBuf::from(super::hooks::HOOK_DIR),
    ));
    // What is enabled and masked: gateway.target's wants, our units' drop-ins and links, the
    // masks of legacy units.
    s.push(Scope {
        name: "systemd-units",
        path: PathBuf::from(ETC_SYSTEMD),
        kind: ScopeKind::Matching(vec!["gateway", "vshell-"]),
        exclude: Vec::new(),
    });
    s.push(Scope {
        name: "systemd-enablement",
        path: Path::new(ETC_SYSTEMD).join("multi-user.target.wants/gateway.target"),
        kind: ScopeKind::File,
        exclude: Vec::new(),
    });
    for root in extra_roots {
        s.push(Scope::tree("extra-root", root.clone()));
    }
    s
}
