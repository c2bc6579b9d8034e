//! The installation model: topology.json, the instance directories, nodemanager.xml and our
//! config, read once into typed structs. Everything that can go wrong is a [`Problem`] naming
//! the file and the fix; a bad instance is left out, never the whole installation.

pub mod autostart;
pub mod config;
pub mod props;
pub mod timespan;
pub mod topology;

use crate::units::name::{self, NameError};
pub use config::{Config, Origin, SettingsPatch};
pub use props::Ports;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
pub use timespan::TimeSpan;
pub use topology::{Group, Service, ServiceKind, Topology, TopologyHost};

/// Our main config file.
pub const CONFIG_FILE: &str = "/etc/gateway-systemd/gateway.toml";
/// Drop-in directory beside it; `*.toml` files are read in name order, later ones winning.
pub const CONFIG_DROPIN_DIR: &str = "/etc/gateway-systemd/gateway.toml.d";
/// Where the installation lives unless `install_dir` says otherwise.
pub const DEFAULT_INSTALL_DIR: &str = "/opt/apigateway";
/// The kernel's host name (readable at generator time, unlike anything behind D-Bus).
pub const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";
/// The account gateways run as unless `user`/`group` say otherwise (created by sysusers.d).
pub const DEFAULT_USER: &str = "gateway";
/// Where credentials named without a path are read from.
pub const CREDENTIALS_DIR: &str = "/etc/gateway-systemd/credentials";
/// Longest drain systemd will wait for.
pub const MAX_DRAIN_DELAY: TimeSpan = TimeSpan::secs(300);

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
    /// every instance is held.
    #[error("{}:{line}: {detail}; every instance is held (not started, legacy init scripts stay masked) until this is fixed", path.display())]
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
    fn error(error: InstallError) -> Self {
        Problem {
            severity: Severity::Error,
            error,
        }
    }
    fn warning(error: InstallError) -> Self {
        Problem {
            severity: Severity::Warning,
            error,
        }
    }
}

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

/// Write a file atomically: a temporary file beside it, fsync, rename, fsync of the
/// directory; a crash leaves the old content or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
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

/// A credential the launcher receives through systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The credential's name in `$CREDENTIALS_DIRECTORY`.
    pub name: String,
    /// The file systemd loads it from.
    pub path: PathBuf,
    /// Encrypted with `systemd-creds encrypt` (`LoadCredentialEncrypted=`).
    pub encrypted: bool,
}

/// Resolved settings of one instance (or the Node Manager).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSettings {
    /// Started by gateway.target.
    pub autostart: bool,
    /// Readiness and watchdog check URL.
    pub health_url: String,
    /// How long the LB health endpoint answers 503 before stop (0 = no drain).
    pub drain_delay: TimeSpan,
    /// Time the gateway has to exit after SIGTERM.
    pub stop_grace: TimeSpan,
    /// Watchdog interval (0 = off).
    pub watchdog: TimeSpan,
    /// Start timeout.
    pub start_timeout: TimeSpan,
    /// Unit to want and order after (Cassandra).
    pub cassandra: Option<String>,
    /// Credentials for the launcher.
    pub credentials: Vec<Credential>,
    /// The gateway's own start command, when configured (else the launcher's default).
    pub start_command: Option<Vec<String>>,
    /// Where the LB health endpoint listens, if anywhere.
    pub lb_health_listen: Option<std::net::SocketAddr>,
    /// Its path.
    pub lb_health_path: String,
    /// Ask for the passphrase at start.
    pub ask_passphrase: bool,
    /// Order after (and want) the Node Manager.
    pub after_nodemanager: bool,
    /// Still started by its legacy init script (never by gateway.target; not masked).
    pub legacy_initd: bool,
    /// Passing checks in a row the load balancers need to take the instance back.
    pub lb_rise: u32,
    /// Adaptive drain: end it once every poller got this many 503s in a row (None = fixed).
    pub adaptive_drain_fall: Option<u32>,
}

/// The longest a start may go without progress: systemd's `TimeoutStartSec=`, which the
/// launcher extends while the gateway makes progress, up to `start_timeout`. Half the start
/// timeout, at most 30 s, at least 1 s.
pub fn start_progress_window(start_timeout: std::time::Duration) -> std::time::Duration {
    (start_timeout / 2).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    )
}

impl InstanceSettings {
    /// systemd's stop timeout: it bounds the drain (ExecStop) and, separately, the exit after
    /// SIGTERM, so it must exceed both.
    pub fn stop_timeout(&self) -> TimeSpan {
        self.drain_delay + self.stop_grace
    }
}

/// A gateway instance of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its group.
    pub group: Group,
    /// Directory name, e.g. `instance-1`.
    pub id: String,
    /// Operator-facing name, e.g. `server1`.
    pub name: String,
    /// `<install>/groups/<group id>/<instance id>` (the vendor's VINSTDIR).
    pub dir: PathBuf,
    /// Management port from topology.json.
    pub management_port: Option<u16>,
    /// Resolved settings.
    pub settings: InstanceSettings,
    /// The unit's instance string (`group1-server1`).
    pub instance_string: String,
    /// Held by a config error (where it was written): never started until it is fixed.
    pub held: Option<String>,
}

impl Instance {
    /// `gateway@<instance string>.service`.
    pub fn unit(&self) -> String {
        crate::units::name::unit_of_instance_string(&self.instance_string)
    }

    /// Hold the instance: not started by gateway.target nor by hand, and the longest stop
    /// timeout for a copy still running (its drain settings may be what the error hides).
    pub fn hold(&mut self, reason: String) {
        self.settings.autostart = false;
        self.settings.drain_delay = MAX_DRAIN_DELAY;
        self.held = Some(reason);
    }

    /// Its runtime directory below /run (`gateway/<group id>/<instance id>`), where the
    /// launcher keeps its control socket.
    pub fn runtime_dir(&self) -> String {
        crate::units::name::runtime_dir(&self.group.id, &self.id)
    }
}

/// The ports of an instance directory's `conf/envSettings.props` (None when it has none),
/// read when needed: the vendor's tools rewrite that file on deployments, so the launcher
/// reads it at each start rather than the generator once at boot.
pub fn read_ports(root: &Root, instance_dir: &Path) -> Result<Option<Ports>, InstallError> {
    Ok(root
        .read(&instance_dir.join(ENV_SETTINGS))?
        .map(|t| props::parse_ports(&t)))
}

/// The per-instance properties file of the vendor, relative to the instance directory.
pub const ENV_SETTINGS: &str = "conf/envSettings.props";
/// Placeholder in `health_url` for `env.PORT.TRAFFIC`, filled in by the launcher at each start.
pub const TRAFFIC_PORT_VAR: &str = "{traffic_port}";
/// Placeholder in `health_url` for the management port, filled in from topology.json.
pub const MANAGEMENT_PORT_VAR: &str = "{management_port}";

/// Fill the `{traffic_port}` of a health URL from the instance's current ports.
pub fn complete_health_url(url: &str, ports: Ports) -> Result<String, String> {
    if !url.contains(TRAFFIC_PORT_VAR) {
        return Ok(url.to_string());
    }
    match ports.traffic {
        Some(p) => Ok(url.replace(TRAFFIC_PORT_VAR, &p.to_string())),
        None => Err(format!(
            "health URL {url:?} needs {TRAFFIC_PORT_VAR}, but {ENV_SETTINGS} sets no env.PORT.TRAFFIC; add it, or set health_url for this instance"
        )),
    }
}

/// The Node Manager of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeManager {
    /// Its topology name.
    pub name: String,
    /// Management port from topology.json.
    pub management_port: Option<u16>,
    /// `system/conf/nodemanager.xml`, when present.
    pub config_file: Option<PathBuf>,
    /// Resolved settings.
    pub settings: InstanceSettings,
}

/// A service of the topology that runs on another host (kept so that an init script or a
/// config table naming it can be told apart from a typo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteInstance {
    /// Group name.
    pub group: String,
    /// Instance name.
    pub name: String,
    /// `<install>/groups/<group id>/<instance id>`.
    pub dir: PathBuf,
    /// The host it runs on.
    pub host: String,
}

/// The installation as this host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// The install dir (VDISTDIR), a logical path.
    pub install_dir: PathBuf,
    /// This host's name.
    pub host: String,
    /// Account the gateways run as.
    pub user: String,
    /// Group the gateways run as.
    pub group: String,
    /// This host's Node Manager, if the topology has one here.
    pub node_manager: Option<NodeManager>,
    /// This host's instances that can be run, in topology order.
    pub instances: Vec<Instance>,
    /// Instances of other hosts.
    pub remote_instances: Vec<RemoteInstance>,
    /// Local instances that were left out because of a problem (group name, instance name, dir).
    pub rejected_instances: Vec<(String, String, PathBuf)>,
}

impl Installation {
    /// `groups/topology.json` of an install dir.
    pub fn topology_path(install_dir: &Path) -> PathBuf {
        install_dir.join("groups/topology.json")
    }
}

/// Does a topology host name denote this host? Case-insensitive; a short name matches the
/// first label of a fully qualified one (`gw1` ~ `gw1.example.com`).
pub fn host_matches(topology_name: &str, local: &str) -> bool {
    let (a, b) = (
        topology_name.to_ascii_lowercase(),
        local.to_ascii_lowercase(),
    );
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    let short = |s: &str| s.split('.').next().unwrap_or("").to_string();
    (!a.contains('.') || !b.contains('.')) && short(&a) == short(&b)
}

/// Read the config files (main file, then drop-ins in name order).
pub fn load_config(root: &Root) -> (Config, Vec<Problem>) {
    let mut config = Config::default();
    let mut problems = Vec::new();
    let mut files = vec![PathBuf::from(CONFIG_FILE)];
    if let Ok(entries) = fs::read_dir(root.real(Path::new(CONFIG_DROPIN_DIR))) {
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".toml") && !n.starts_with('.'))
            .collect();
        names.sort();
        files.extend(
            names
                .into_iter()
                .map(|n| Path::new(CONFIG_DROPIN_DIR).join(n)),
        );
    }
    // `gatewayctl enable/disable` choices win over every other file.
    files.push(PathBuf::from(autostart::AUTOSTART_FILE));
    for path in files {
        match root.read(&path) {
            Ok(Some(text)) => match config.merge_file(&text, &path) {
                Ok(found) => problems.extend(found.into_iter().map(Problem::error)),
                Err(e) => {
                    config.broken_files.push(e.clone());
                    problems.push(Problem::error(e));
                }
            },
            Ok(None) => {}
            Err(e) => {
                config.broken_files.push(e.clone());
                problems.push(Problem::error(e));
            }
        }
    }
    (config, problems)
}

/// Read the whole installation under `root`. Never fails: what cannot be read is a problem,
/// and the installation holds whatever could be trusted.
pub fn load(root: &Root) -> (Installation, Vec<Problem>) {
    let (_, inst, problems) = load_with_config(root);
    (inst, problems)
}

/// [`load`], with the merged config it read (for `gatewayctl check-config`, which shows where
/// each setting came from).
pub fn load_with_config(root: &Root) -> (Config, Installation, Vec<Problem>) {
    let (config, mut problems) = load_config(root);
    let install_dir = config
        .install_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_INSTALL_DIR));
    let host = match config.host.clone() {
        Some(h) => h,
        None => match root.read(Path::new(HOSTNAME_FILE)) {
            Ok(Some(h)) if !h.trim().is_empty() => h.trim().to_string(),
            Ok(_) => {
                problems.push(Problem::error(InstallError::NoHostName {
                    detail: format!("{HOSTNAME_FILE} is empty"),
                }));
                String::new()
            }
            Err(e) => {
                problems.push(Problem::error(InstallError::NoHostName {
                    detail: e.to_string(),
                }));
                String::new()
            }
        },
    };
    let mut inst = Installation {
        user: config
            .user
            .clone()
            .unwrap_or_else(|| DEFAULT_USER.to_string()),
        group: config
            .group
            .clone()
            .or_else(|| config.user.clone())
            .unwrap_or_else(|| DEFAULT_USER.to_string()),
        install_dir,
        host,
        node_manager: None,
        instances: Vec::new(),
        remote_instances: Vec::new(),
        rejected_instances: Vec::new(),
    };
    let topology_path = Installation::topology_path(&inst.install_dir);
    let topology = match root.read(&topology_path) {
        Ok(Some(text)) => match topology::parse(&text, &topology_path) {
            Ok((t, found)) => {
                problems.extend(found.into_iter().map(Problem::error));
                t
            }
            Err(e) => {
                problems.push(Problem::error(e));
                Topology::default()
            }
        },
        Ok(None) => {
            problems.push(Problem::error(InstallError::TopologyMissing {
                path: topology_path.clone(),
            }));
            Topology::default()
        }
        Err(e) => {
            problems.push(Problem::error(e));
            Topology::default()
        }
    };
    resolve(
        root,
        &config,
        &topology,
        &topology_path,
        &mut inst,
        &mut problems,
    );
    (config, inst, problems)
}

/// Select this host's services and resolve their settings.
fn resolve(
    root: &Root,
    config: &Config,
    topology: &Topology,
    topology_path: &Path,
    inst: &mut Installation,
    problems: &mut Vec<Problem>,
) {
    let local_ids: Vec<&str> = topology
        .hosts
        .iter()
        .filter(|h| host_matches(&h.name, &inst.host))
        .map(|h| h.id.as_str())
        .collect();
    if local_ids.is_empty() && !topology.hosts.is_empty() && !inst.host.is_empty() {
        problems.push(Problem::error(InstallError::HostNotInTopology {
            path: topology_path.to_path_buf(),
            host: inst.host.clone(),
        }));
    }
    let host_name = |id: &str| {
        topology
            .hosts
            .iter()
            .find(|h| h.id == id)
            .map_or_else(|| id.to_string(), |h| h.name.clone())
    };
    let gateways: Vec<&Service> = topology
        .services
        .iter()
        .filter(|s| s.kind == ServiceKind::Gateway)
        .collect();

    // Unit names (and directories) must be unique among this host's instances.
    let local: Vec<&Service> = gateways
        .iter()
        .copied()
        .filter(|s| local_ids.contains(&s.host_id.as_str()))
        .collect();
    let mut by_name: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    let mut by_dir: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (i, s) in local.iter().enumerate() {
        by_name.entry((&s.group.name, &s.name)).or_default().push(i);
        by_dir.entry((&s.group.id, &s.id)).or_default().push(i);
    }
    let mut seen_dup: HashSet<(&str, &str)> = HashSet::new();
    for s in &local {
        if seen_dup.contains(&(s.group.name.as_str(), s.name.as_str())) {
            continue;
        }
        let mut same: Vec<usize> = by_name[&(s.group.name.as_str(), s.name.as_str())].clone();
        same.extend(&by_dir[&(s.group.id.as_str(), s.id.as_str())]);
        same.sort_unstable();
        same.dedup();
        if same.len() > 1 {
            for &o in &same {
                seen_dup.insert((&local[o].group.name, &local[o].name));
            }
            problems.push(Problem::error(InstallError::Duplicate {
                path: topology_path.to_path_buf(),
                group: s.group.name.clone(),
                name: s.name.clone(),
                others: same
                    .iter()
                    .map(|&o| local[o])
                    .filter(|o| !std::ptr::eq(*o, *s))
                    .map(|o| format!("{}/{} ({}/{})", o.group.name, o.name, o.group.id, o.id))
                    .collect::<Vec<_>>()
                    .join(", "),
            }));
        }
    }

    let mut defaults = builtin_defaults();
    defaults.overlay(&config.defaults);
    let mut held_all_by_defaults: Option<String> = None;
    let mut reported: HashSet<String> = HashSet::new();
    let mut used_keys: HashSet<String> = HashSet::new();
    for s in &gateways {
        let dir = inst
            .install_dir
            .join("groups")
            .join(&s.group.id)
            .join(&s.id);
        if !local_ids.contains(&s.host_id.as_str()) {
            inst.remote_instances.push(RemoteInstance {
                group: s.group.name.clone(),
                name: s.name.clone(),
                dir,
                host: host_name(&s.host_id),
            });
            continue;
        }
        let key = format!("{}/{}", s.group.name, s.name);
        used_keys.insert(key.clone());
        if let Some((what, id)) = [("group id", &s.group.id), ("instance id", &s.id)]
            .into_iter()
            .find(|(_, id)| !is_dir_name(id))
        {
            problems.push(Problem::error(InstallError::BadId {
                path: topology_path.to_path_buf(),
                what,
                id: id.clone(),
            }));
            continue;
        }
        let reject = |inst: &mut Installation| {
            inst.rejected_instances
                .push((s.group.name.clone(), s.name.clone(), dir.clone()))
        };
        if seen_dup.contains(&(s.group.name.as_str(), s.name.as_str())) {
            reject(inst);
            continue;
        }
        let instance_string = match name::escape_name(&s.group.name)
            .map_err(|e| ("group", &s.group.name, e))
            .and_then(|_| name::escape_name(&s.name).map_err(|e| ("instance", &s.name, e)))
            .and_then(|_| {
                name::instance_string(&s.group.name, &s.name).map_err(|e| ("instance", &s.name, e))
            }) {
            Ok(i) => i,
            Err((what, bad, source)) => {
                problems.push(Problem::error(InstallError::BadName {
                    path: topology_path.to_path_buf(),
                    what,
                    name: bad.clone(),
                    source,
                }));
                reject(inst);
                continue;
            }
        };
        if !root.is_dir(&dir) {
            problems.push(Problem::error(InstallError::InstanceDirMissing {
                dir: dir.clone(),
                group: s.group.name.clone(),
                name: s.name.clone(),
            }));
            reject(inst);
            continue;
        }
        let mut patch = defaults.clone();
        if !s.enabled {
            patch.autostart = Some(false);
        }
        if let Some((p, _)) = config.instances.get(&key) {
            patch.overlay(p);
        }
        let vars = UrlVars {
            management_port: s.management_port,
            scheme: &s.scheme,
        };
        // The fail-safe rule: a config error never falls back to a default. What it reaches
        // is held: unit kept, never started, legacy script kept masked.
        let (settings, held) = match (
            config.broken_instances.get(&key),
            settle(&patch, &vars, &key),
        ) {
            (None, Ok(settings)) => (Some(settings), None),
            // Already reported when the config was read.
            (Some(e), _) => (None, Some(held_reason(e))),
            (None, Err((field, detail))) => {
                let detail = detail
                    .strip_prefix(&format!("{key}: "))
                    .unwrap_or(&detail)
                    .to_string();
                let own = config.instance_origins.get(&key).and_then(|o| o.get(field));
                let (place, detail, reason) = match (own, config.defaults_origins.get(field)) {
                    (Some(o), _) => (
                        o.to_string(),
                        format!("[instances.{key:?}] {detail}; the instance is held (not started, its legacy init script stays masked) until this is fixed"),
                        format!("{o}: {field}"),
                    ),
                    (None, Some(o)) => {
                        held_all_by_defaults.get_or_insert_with(|| format!("{o}: {field}"));
                        (
                            o.to_string(),
                            format!("[defaults] {detail}; every instance is held (not started, legacy init scripts stay masked) until this is fixed"),
                            format!("{o}: {field}"),
                        )
                    }
                    (None, None) => (
                        topology_path.display().to_string(),
                        format!("{key}: {detail}"),
                        format!("{key}: {field}"),
                    ),
                };
                if reported.insert(format!("{place}{detail}")) {
                    problems.push(Problem::error(InstallError::BadSetting { place, detail }));
                }
                (None, Some(reason))
            }
        };
        // A held instance still gets a unit, so that a running copy drains and stops as usual.
        let settings = match settings.map(Ok).unwrap_or_else(|| {
            let mut p = builtin_defaults();
            p.autostart = Some(false);
            settle(&p, &vars, &key)
        }) {
            Ok(settings) => settings,
            Err((_, detail)) => {
                problems.push(Problem::error(InstallError::BadSetting {
                    place: topology_path.display().to_string(),
                    detail,
                }));
                reject(inst);
                continue;
            }
        };
        inst.instances.push(Instance {
            group: s.group.clone(),
            id: s.id.clone(),
            name: s.name.clone(),
            dir,
            management_port: s.management_port,
            settings,
            instance_string,
            held: None,
        });
        if let (Some(reason), Some(i)) = (held, inst.instances.last_mut()) {
            i.hold(reason);
        }
    }
    if let Some(reason) = config
        .broken_files
        .first()
        .map(held_reason)
        .or(held_all_by_defaults)
    {
        for i in inst.instances.iter_mut().filter(|i| i.held.is_none()) {
            i.hold(reason.clone());
        }
    }

    if let Some(nm) = topology
        .services
        .iter()
        .find(|s| s.kind == ServiceKind::NodeManager && local_ids.contains(&s.host_id.as_str()))
    {
        let mut patch = builtin_defaults();
        patch.drain_delay = Some(TimeSpan::secs(0));
        patch.health_url = Some("{scheme}://127.0.0.1:{management_port}/healthcheck".into());
        patch.overlay(&config.nodemanager);
        if !nm.enabled {
            patch.autostart = Some(false);
        }
        let vars = UrlVars {
            management_port: nm.management_port,
            scheme: &nm.scheme,
        };
        let xml = inst.install_dir.join("system/conf/nodemanager.xml");
        match settle(&patch, &vars, "nodemanager") {
            Ok(settings) => {
                inst.node_manager = Some(NodeManager {
                    name: nm.name.clone(),
                    management_port: nm.management_port,
                    config_file: root.real(&xml).is_file().then_some(xml),
                    settings,
                })
            }
            Err((field, detail)) => problems.push(Problem::error(InstallError::BadSetting {
                place: config
                    .nodemanager_origins
                    .get(field)
                    .or(config.defaults_origins.get(field))
                    .map_or_else(
                        || "[nodemanager]".to_string(),
                        |o| format!("{o}: [nodemanager]"),
                    ),
                detail: detail
                    .strip_prefix("nodemanager: ")
                    .unwrap_or(&detail)
                    .to_string(),
            })),
        }
    }

    for (key, (_, origin)) in &config.instances {
        if used_keys.contains(key) {
            continue;
        }
        let remote = inst
            .remote_instances
            .iter()
            .find(|r| format!("{}/{}", r.group, r.name) == *key);
        let hint = match remote {
            Some(r) => format!("it runs on host {:?}; this table has no effect here", r.host),
            None => "write the group and instance names as the topology has them: [instances.\"<group>/<instance>\"]".to_string(),
        };
        let p = InstallError::UnknownInstanceKey {
            origin: origin.clone(),
            key: key.clone(),
            hint,
        };
        problems.push(if remote.is_some() {
            Problem {
                severity: Severity::Notice,
                error: p,
            }
        } else {
            Problem::warning(p)
        });
    }
}

/// The short form of a config error for a held instance: where it is.
fn held_reason(e: &InstallError) -> String {
    match e {
        InstallError::ConfigSyntax { path, line, .. } => format!("{}:{line}", path.display()),
        InstallError::ConfigInstance { origin, .. } => origin.to_string(),
        InstallError::Unreadable { path, .. } => format!("{} is unreadable", path.display()),
        other => other.to_string(),
    }
}

/// A single, ordinary path component (ids become directories; `..` must not escape).
fn is_dir_name(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && !id.contains('/')
        && !id.chars().any(char::is_control)
}

/// The documented defaults of every instance setting.
pub fn builtin_defaults() -> SettingsPatch {
    SettingsPatch {
        autostart: Some(true),
        health_url: Some("http://127.0.0.1:{traffic_port}/healthcheck".into()),
        drain_delay: Some(TimeSpan::secs(10)),
        stop_grace: Some(TimeSpan::secs(30)),
        watchdog: Some(TimeSpan::secs(30)),
        start_timeout: Some(TimeSpan::secs(300)),
        cassandra: Some(String::new()),
        credentials: Some(Vec::new()),
        encrypted_credentials: Some(Vec::new()),
        start_command: None,
        lb_health_listen: None,
        lb_health_path: Some(DEFAULT_LB_HEALTH_PATH.to_string()),
        ask_passphrase: Some(false),
        after_nodemanager: Some(false),
        legacy_initd: Some(false),
        lb_rise: Some(DEFAULT_LB_RISE),
        drain_mode: Some("fixed".into()),
        lb_fall: Some(DEFAULT_LB_FALL),
    }
}

/// HAProxy's default `rise`: passing checks in a row before a server is back in the pool.
pub const DEFAULT_LB_RISE: u32 = 2;
/// HAProxy's default `fall`: failed checks in a row before a server leaves the pool.
pub const DEFAULT_LB_FALL: u32 = 3;

/// The path of the vendor's Health Check LB policy, which load balancers already poll.
pub const DEFAULT_LB_HEALTH_PATH: &str = "/healthchecklb";
/// Without `lb_health_listen`, the LB health endpoint listens on the management port plus this.
pub const LB_HEALTH_PORT_OFFSET: u16 = 10000;

struct UrlVars<'a> {
    management_port: Option<u16>,
    scheme: &'a str,
}

/// Turn a fully layered patch into settings, checking every value.
/// Err names the setting that is wrong and what is wrong with it.
fn settle(
    patch: &SettingsPatch,
    vars: &UrlVars,
    key: &str,
) -> Result<InstanceSettings, (&'static str, String)> {
    let template = patch.health_url.clone().unwrap_or_default();
    let mut health_url = template.replace("{scheme}", vars.scheme);
    if health_url.contains(MANAGEMENT_PORT_VAR) {
        let port = vars.management_port.ok_or_else(|| {
            ("health_url", format!("{key}: health_url {template:?} needs {MANAGEMENT_PORT_VAR} but managementPort in topology.json is not set; set it, or set health_url"))
        })?;
        health_url = health_url.replace(MANAGEMENT_PORT_VAR, &port.to_string());
    }
    if !(health_url.starts_with("http://") || health_url.starts_with("https://")) {
        return Err((
            "health_url",
            format!("{key}: health_url {health_url:?} must start with http:// or https://"),
        ));
    }
    let drain_delay = patch.drain_delay.unwrap_or_default();
    if drain_delay > MAX_DRAIN_DELAY {
        return Err(("drain_delay", format!("{key}: drain_delay {drain_delay} is longer than the maximum of {MAX_DRAIN_DELAY}; use 0 to disable draining")));
    }
    let watchdog = patch.watchdog.unwrap_or_default();
    if !watchdog.is_zero() && watchdog < TimeSpan::secs(1) {
        return Err((
            "watchdog",
            format!("{key}: watchdog {watchdog} is too short; use at least 1s, or 0 to disable"),
        ));
    }
    let start_timeout = patch.start_timeout.unwrap_or_default();
    let stop_grace = patch.stop_grace.unwrap_or_default();
    for (what, span) in [("start_timeout", start_timeout), ("stop_grace", stop_grace)] {
        if span < TimeSpan::secs(1) {
            return Err((
                what,
                format!("{key}: {what} {span} is too short; use at least 1s"),
            ));
        }
    }
    let cassandra = match patch.cassandra.as_deref().unwrap_or("") {
        "" => None,
        unit if valid_unit_name(unit) => Some(unit.to_string()),
        unit => return Err(("cassandra", format!("{key}: cassandra {unit:?} is not a unit name; write e.g. \"cassandra.service\", or \"\" for none"))),
    };
    let mut credentials = Vec::new();
    for (list, encrypted) in [
        (&patch.credentials, false),
        (&patch.encrypted_credentials, true),
    ] {
        for entry in list.iter().flatten() {
            credentials.push(parse_credential(entry, encrypted).map_err(|d| {
                (
                    if encrypted {
                        "encrypted_credentials"
                    } else {
                        "credentials"
                    },
                    format!("{key}: {d}"),
                )
            })?);
        }
    }
    if let Some(cmd) = &patch.start_command {
        if cmd.first().is_none_or(|c| !c.starts_with('/')) {
            return Err(("start_command", format!("{key}: start_command must be a list whose first element is an absolute path, e.g. [\"/opt/apigateway/posix/bin/startinstance\", \"-h\", \"...\"]")));
        }
    }
    let lb_health_listen = match patch.lb_health_listen.as_deref() {
        Some("") => None,
        Some(text) => Some(text.parse().map_err(|_| {
            ("lb_health_listen", format!("{key}: lb_health_listen {text:?} is not address:port; write e.g. \"0.0.0.0:18085\", or \"\" for none"))
        })?),
        None => vars
            .management_port
            .and_then(|p| p.checked_add(LB_HEALTH_PORT_OFFSET))
            .map(|p| std::net::SocketAddr::from(([0, 0, 0, 0], p))),
    };
    let lb_health_path = patch
        .lb_health_path
        .clone()
        .unwrap_or_else(|| DEFAULT_LB_HEALTH_PATH.to_string());
    if !lb_health_path.starts_with('/') || lb_health_path.contains(char::is_whitespace) {
        return Err((
            "lb_health_path",
            format!(
            "{key}: lb_health_path {lb_health_path:?} must be a URL path like \"/healthchecklb\""
        ),
        ));
    }
    let legacy_initd = patch.legacy_initd.unwrap_or(false);
    let lb_rise = patch.lb_rise.unwrap_or(DEFAULT_LB_RISE);
    let lb_fall = patch.lb_fall.unwrap_or(DEFAULT_LB_FALL);
    for (what, count) in [("lb_rise", lb_rise), ("lb_fall", lb_fall)] {
        if !(1..=100).contains(&count) {
            return Err((
                what,
                format!(
                    "{key}: {what} {count} must be between 1 and 100 (your load balancer's count)"
                ),
            ));
        }
    }
    let adaptive_drain_fall = match patch.drain_mode.as_deref().unwrap_or("fixed") {
        "fixed" => None,
        "adaptive" => Some(lb_fall),
        other => {
            return Err((
                "drain_mode",
                format!("{key}: drain_mode {other:?} is neither \"fixed\" nor \"adaptive\""),
            ))
        }
    };
    Ok(InstanceSettings {
        lb_health_listen,
        lb_health_path,
        ask_passphrase: patch.ask_passphrase.unwrap_or(false),
        after_nodemanager: patch.after_nodemanager.unwrap_or(false),
        // An instance its init script still starts must not be started by gateway.target too.
        autostart: patch.autostart.unwrap_or(true) && !legacy_initd,
        legacy_initd,
        lb_rise,
        adaptive_drain_fall,
        health_url,
        drain_delay,
        stop_grace,
        watchdog,
        start_timeout,
        cassandra,
        credentials,
        start_command: patch.start_command.clone(),
    })
}

/// `name` or `name:/absolute/path`.
fn parse_credential(entry: &str, encrypted: bool) -> Result<Credential, String> {
    let (name, path) = match entry.split_once(':') {
        Some((n, p)) => (n, PathBuf::from(p)),
        None => (
            entry,
            Path::new(CREDENTIALS_DIR).join(if encrypted {
                format!("{entry}.cred")
            } else {
                entry.to_string()
            }),
        ),
    };
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name != "."
        && name != "..";
    if !name_ok {
        return Err(format!(
            "credential {entry:?}: the name may hold only letters, digits, '_', '.' and '-'"
        ));
    }
    if !path.is_absolute()
        || path
            .to_str()
            .is_none_or(|p| p.contains(char::is_whitespace))
    {
        return Err(format!(
            "credential {entry:?}: the path must be absolute and without spaces"
        ));
    }
    Ok(Credential {
        name: name.to_string(),
        path,
        encrypted,
    })
}

/// A unit name we are willing to write into `Wants=`/`After=`.
fn valid_unit_name(s: &str) -> bool {
    let suffix_ok = [
        ".service", ".target", ".socket", ".mount", ".path", ".timer",
    ]
    .iter()
    .any(|x| s.ends_with(x));
    suffix_ok
        && s.len() <= name::UNIT_NAME_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.@\\".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_match_short_and_long() {
        assert!(host_matches("gw1.example.com", "gw1.example.com"));
        assert!(host_matches("gw1.example.com", "GW1"));
        assert!(host_matches("gw1", "gw1.example.com"));
        assert!(!host_matches("gw1.example.com", "gw1.other.com"));
        assert!(!host_matches("gw10", "gw1"));
        assert!(!host_matches("", ""));
    }

    #[test]
    fn traffic_port_is_filled_in_at_start() {
        let url = "http://127.0.0.1:{traffic_port}/healthcheck";
        let ports = Ports {
            traffic: Some(8080),
            management: None,
        };
        assert_eq!(
            complete_health_url(url, ports).unwrap(),
            "http://127.0.0.1:8080/healthcheck"
        );
        assert!(complete_health_url(url, Ports::default())
            .unwrap_err()
            .contains("env.PORT.TRAFFIC"));
        assert_eq!(
            complete_health_url("http://x/", Ports::default()).unwrap(),
            "http://x/"
        );
    }

    #[test]
    fn credentials_default_to_our_directory() {
        let c = parse_credential("passphrase", false).unwrap();
        assert_eq!(
            c.path,
            Path::new("/etc/gateway-systemd/credentials/passphrase")
        );
        let c = parse_credential("passphrase", true).unwrap();
        assert_eq!(
            c.path,
            Path::new("/etc/gateway-systemd/credentials/passphrase.cred")
        );
        assert!(parse_credential("pass phrase", false).is_err());
        assert!(parse_credential("p:relative", false).is_err());
    }
}
