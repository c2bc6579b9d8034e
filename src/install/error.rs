//! What can be wrong with an installation or our config: each problem names the file and
//! the fix, with how bad it is.

use super::{Origin, CONFIG_FILE};
use crate::units::name::NameError;
use std::path::PathBuf;

/// Everything that can be wrong with an installation or our config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// A file exists but cannot be read.
    #[error("{}: cannot read: {detail}; check its permissions", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        detail: String,
    },
    /// topology.json is missing.
    #[error("{}: not found; is install_dir right? set install_dir in {CONFIG_FILE} or restore groups/ from a backup", path.display())]
    TopologyMissing {
        /// Where it was expected.
        path: PathBuf,
    },
    /// topology.json is not JSON at all.
    #[error("{}:{line}:{column}: not valid JSON ({detail}); fix the file or restore it from a backup", path.display())]
    TopologySyntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        detail: String,
    },
    /// One host, group or service entry is malformed.
    #[error("{}: {at}: {detail}; this entry is skipped, fix it in the topology (managedomain)", path.display())]
    TopologyEntry {
        /// The file.
        path: PathBuf,
        /// JSON path of the entry, e.g. `groups[1].services[0] (id "instance-3")`.
        at: String,
        /// What is wrong.
        detail: String,
    },
    /// No topology host is this host.
    #[error("{}: no host is named {host:?} (this host); set host = \"<name in topology.json>\" in {CONFIG_FILE}", path.display())]
    HostNotInTopology {
        /// topology.json.
        path: PathBuf,
        /// The name we looked for.
        host: String,
    },
    /// The host name cannot be determined.
    #[error("cannot tell this host's name ({detail}); set host = \"<name in topology.json>\" in {CONFIG_FILE}")]
    NoHostName {
        /// Why.
        detail: String,
    },
    /// A config file does not parse (or sets a bad top-level value): it may set anything, so
    /// every instance and the Node Manager are held.
    #[error("{}:{line}: {detail}; every instance and the Node Manager are held (not started, legacy init scripts stay masked) until this is fixed", path.display())]
    ConfigSyntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// An `[instances."..."]` table does not parse; that instance is not generated.
    #[error(
        "{origin}: [instances.{key:?}]: {detail}; the instance is held (not started, its legacy init script stays masked) until this is fixed"
    )]
    ConfigInstance {
        /// Where the table is.
        origin: Origin,
        /// The table key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// The `[nodemanager]` table does not parse: the Node Manager is held.
    #[error(
        "{origin}: [nodemanager]: {detail}; the Node Manager is held (not started, its legacy init script stays masked) until this is fixed"
    )]
    ConfigNodeManager {
        /// Where the table is.
        origin: Origin,
        /// What is wrong.
        detail: String,
    },
    /// A restore was interrupted: every instance is held until it is finished.
    #[error("{}: a restore is unfinished; no instance starts until `gatewayctl restore --recover` finishes it", intent.display())]
    RestoreUnfinished {
        /// The intent record.
        intent: PathBuf,
    },
    /// A setting has a value out of range or of the wrong shape.
    #[error("{place}: {detail}")]
    BadSetting {
        /// Where the setting was written (file:line, or the section).
        place: String,
        /// What is wrong and what to write instead.
        detail: String,
    },
    /// A config table names an instance this host does not have.
    #[error(
        "{origin}: [instances.{key:?}] matches no instance of this host in topology.json; {hint}"
    )]
    UnknownInstanceKey {
        /// Where the table is.
        origin: Origin,
        /// The table key.
        key: String,
        /// What to do.
        hint: String,
    },
    /// A group or instance name cannot become a unit name.
    #[error("{}: {what} {name:?}: {source}; rename it in the topology", path.display())]
    BadName {
        /// topology.json.
        path: PathBuf,
        /// "group" or "instance".
        what: &'static str,
        /// The name.
        name: String,
        /// Why.
        source: NameError,
    },
    /// A group or instance id cannot be a directory name.
    #[error("{}: {what} {id:?} cannot be a directory name under groups/; fix the topology", path.display())]
    BadId {
        /// topology.json.
        path: PathBuf,
        /// "group id" or "instance id".
        what: &'static str,
        /// The id.
        id: String,
    },
    /// Two local instances would get the same unit (same names, or same directory).
    #[error("{}: instance {name:?} of group {group:?} clashes with {others}: same names or same directory; none of them is generated until the topology is fixed", path.display())]
    Duplicate {
        /// topology.json.
        path: PathBuf,
        /// Group name.
        group: String,
        /// Instance name.
        name: String,
        /// The other declarations, as `group/instance (group-id/instance-id)`.
        others: String,
    },
    /// An instance's directory is missing.
    #[error("{}: instance directory of {group}/{name} is missing; restore it from a backup or remove the instance from the topology", dir.display())]
    InstanceDirMissing {
        /// The directory.
        dir: PathBuf,
        /// Group name.
        group: String,
        /// Instance name.
        name: String,
    },
}

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Something was left out (an instance, a file).
    Error,
    /// Probably a mistake, but nothing was left out.
    Warning,
    /// Worth knowing.
    Notice,
}

/// A problem found while reading the installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// How bad.
    pub severity: Severity,
    /// What.
    pub error: InstallError,
}

impl Problem {
    pub(crate) fn error(error: InstallError) -> Self {
        Problem {
            severity: Severity::Error,
            error,
        }
    }
    pub(crate) fn warning(error: InstallError) -> Self {
        Problem {
            severity: Severity::Warning,
            error,
        }
    }
}
