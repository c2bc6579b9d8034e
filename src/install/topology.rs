//! `groups/topology.json`: the domain's groups, hosts and services, read leniently per entry so
//! that one malformed service never hides the others.

use super::InstallError;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// A host of the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyHost {
    /// Topology id, e.g. `host-1`.
    pub id: String,
    /// Host name, e.g. `gw1.example.com`.
    pub name: String,
}

/// A group: an id (its directory under `groups/`) and the name operators type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Directory name under `groups/`, e.g. `group-2`.
    pub id: String,
    /// Operator-facing name, e.g. `group1`.
    pub name: String,
}

/// What a topology service is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// An API Gateway instance.
    Gateway,
    /// A Node Manager (or Admin Node Manager).
    NodeManager,
    /// Anything else (API Manager portals, analytics); not ours to run.
    Other(String),
}

/// One service of a group, as topology.json declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The group it belongs to.
    pub group: Group,
    /// Directory name under the group, e.g. `instance-1`.
    pub id: String,
    /// Operator-facing name, e.g. `server1`.
    pub name: String,
    /// Gateway, Node Manager or other.
    pub kind: ServiceKind,
    /// Topology id of its host.
    pub host_id: String,
    /// Management port, when declared.
    pub management_port: Option<u16>,
    /// `http` or `https` for the management port.
    pub scheme: String,
    /// The domain's own enabled flag (defaults to true).
    pub enabled: bool,
}

/// The parsed topology: everything that could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// All hosts.
    pub hosts: Vec<TopologyHost>,
    /// All services of all groups (each carrying its group).
    pub services: Vec<Service>,
}

#[derive(Deserialize)]
struct RawTopology {
    #[serde(default)]
    hosts: Vec<Value>,
    #[serde(default)]
    groups: Vec<Value>,
}

#[derive(Deserialize)]
struct RawHost {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct RawGroup {
    id: String,
    name: String,
    #[serde(default)]
    services: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawService {
    id: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "hostID")]
    host_id: String,
    management_port: Option<u16>,
    scheme: Option<String>,
    enabled: Option<bool>,
}

/// Parse topology.json text. A syntax error is fatal (nothing can be trusted); a malformed
/// host, group or service is reported and skipped.
pub fn parse(text: &str, path: &Path) -> Result<(Topology, Vec<InstallError>), InstallError> {
    let raw: RawTopology =
        serde_json::from_str(text).map_err(|e| InstallError::TopologySyntax {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            detail: strip_position(&e.to_string()),
        })?;
    let mut problems = Vec::new();
    let mut topology = Topology::default();
    let entry_error =
        |at: String, value: &Value, e: serde_json::Error| InstallError::TopologyEntry {
            path: path.to_path_buf(),
            at: match value.get("id").and_then(Value::as_str) {
                Some(id) => format!("{at} (id {id:?})"),
                None => at,
            },
            detail: strip_position(&e.to_string()),
        };
    for (i, value) in raw.hosts.iter().enumerate() {
        match RawHost::deserialize(value) {
            Ok(h) => topology.hosts.push(TopologyHost {
                id: h.id,
                name: h.name,
            }),
            Err(e) => problems.push(entry_error(format!("hosts[{i}]"), value, e)),
        }
    }
    for (gi, value) in raw.groups.iter().enumerate() {
        let g = match RawGroup::deserialize(value) {
            Ok(g) => g,
            Err(e) => {
                problems.push(entry_error(format!("groups[{gi}]"), value, e));
                continue;
            }
        };
        let group = Group {
            id: g.id,
            name: g.name,
        };
        for (si, value) in g.services.iter().enumerate() {
            match RawService::deserialize(value) {
                Ok(s) => topology.services.push(Service {
                    group: group.clone(),
                    id: s.id,
                    name: s.name,
                    kind: match s.kind.as_str() {
                        "gateway" => ServiceKind::Gateway,
                        "nodemanager" => ServiceKind::NodeManager,
                        _ => ServiceKind::Other(s.kind),
                    },
                    host_id: s.host_id,
                    management_port: s.management_port.filter(|&p| p != 0),
                    scheme: s.scheme.unwrap_or_else(|| "https".to_string()),
                    enabled: s.enabled.unwrap_or(true),
                }),
                Err(e) => problems.push(entry_error(
                    format!("groups[{gi}].services[{si}]"),
                    value,
                    e,
                )),
            }
        }
    }
    Ok((topology, problems))
}

/// serde_json appends " at line X column Y"; for entries parsed from a Value it is meaningless.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}
