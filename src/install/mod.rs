//! The installation model: topology.json, the instance directories, nodemanager.xml and our
//! config, read once into typed structs. Everything that can go wrong is a [`Problem`] naming
//! the file and the fix; a bad instance is left out, never the whole installation.

pub mod autostart;
pub mod config;
mod error;
mod files;
pub mod props;
mod settings;
pub mod timespan;
pub mod topology;

use crate::units::name;
pub use config::{Config, Origin, SettingsPatch};
pub use error::{InstallError, Problem, Severity};
pub use files::{create_beside, read_small_file, try_lock, write_atomic, Root};
pub use props::Ports;
pub use settings::*;
use settings::{settle, UrlVars};
use std::collections::{HashMap, HashSet};
use std::fs;
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
        self.settings.drain_timeout = MAX_DRAIN_DELAY;
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
    /// Held by a config error (where it was written): never started until it is fixed.
    pub held: Option<String>,
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
    // Half a restore is neither the old installation nor the new one: nothing starts on it.
    let intent = Path::new("/").join(crate::backup::restore::INTENT);
    if crate::backup::restore::swapping(&root.real(Path::new("/"))).is_some() {
        let reason = format!("{} (a restore is unfinished)", intent.display());
        problems.push(Problem::error(InstallError::RestoreUnfinished { intent }));
        for i in &mut inst.instances {
            i.hold(reason.clone());
        }
        if let Some(nm) = &mut inst.node_manager {
            nm.settings.autostart = false;
            nm.held = Some(reason);
        }
    }
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
        // No load balancer routes to the Node Manager: nothing to drain.
        patch.drain_delay = Some(TimeSpan::secs(0));
        patch.drain_timeout = Some(TimeSpan::secs(0));
        patch.drain_mode = Some("fixed".into());
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
        // The fail-safe rule, as for instances: a bad [nodemanager] value or a config file that
        // cannot be read (it may hold [nodemanager]) holds the Node Manager.
        let mut held = config
            .broken_nodemanager
            .iter()
            .chain(config.broken_files.first())
            .next()
            .map(held_reason);
        let settings = match settle(&patch, &vars, "nodemanager") {
            Ok(settings) => Some(settings),
            Err((field, detail)) => {
                let origin = config
                    .nodemanager_origins
                    .get(field)
                    .or(config.defaults_origins.get(field));
                held = Some(origin.map_or_else(
                    || format!("[nodemanager]: {field}"),
                    |o| format!("{o}: {field}"),
                ));
                problems.push(Problem::error(InstallError::BadSetting {
                    place: origin.map_or_else(
                        || "[nodemanager]".to_string(),
                        |o| format!("{o}: [nodemanager]"),
                    ),
                    detail: format!(
                        "{}; the Node Manager is held (not started, its legacy init script stays masked) until this is fixed",
                        detail.strip_prefix("nodemanager: ").unwrap_or(&detail)
                    ),
                }));
                None
            }
        };
        // A held Node Manager still gets its unit, so that a running copy stops as usual.
        let settings = settings.or_else(|| {
            let mut p = builtin_defaults();
            p.drain_delay = Some(TimeSpan::secs(0));
            p.drain_timeout = Some(TimeSpan::secs(0));
            p.drain_mode = Some("fixed".into());
            p.health_url = Some("{scheme}://127.0.0.1:{management_port}/healthcheck".into());
            settle(&p, &vars, "nodemanager").ok()
        });
        if let Some(settings) = settings {
            let mut nm = NodeManager {
                name: nm.name.clone(),
                management_port: nm.management_port,
                config_file: root.real(&xml).is_file().then_some(xml),
                settings,
                held: None,
            };
            if let Some(reason) = held {
                nm.settings.autostart = false;
                nm.held = Some(reason);
            }
            inst.node_manager = Some(nm);
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
        InstallError::ConfigInstance { origin, .. }
        | InstallError::ConfigNodeManager { origin, .. } => origin.to_string(),
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
}
