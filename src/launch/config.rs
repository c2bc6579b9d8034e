//! What the launcher is told: the environment the generated drop-in sets, plus what systemd
//! adds (`RUNTIME_DIRECTORY`, `CREDENTIALS_DIRECTORY`, `WATCHDOG_USEC`), read once into a
//! typed config.

use crate::install::{self, Ports, Root, TimeSpan};
use crate::units::name;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Set by the generator for an instance a config error holds: the launcher refuses to start.
pub const HELD_VAR: &str = "GATEWAY_HELD";

/// What can be wrong with the launcher's environment.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable the generator always sets is missing: the unit has no generated drop-in.
    #[error("{var} is not set: {unit} has no generated drop-in. Is this instance in topology.json on this host? See `journalctl -b -k --grep gateway-generator`, then run `systemctl daemon-reload`")]
    Missing {
        /// The variable.
        var: &'static str,
        /// The unit.
        unit: String,
    },
    /// The generator held the instance: a config error reaches its settings.
    #[error("{unit} is held by {reason}. It starts again once that is fixed and `systemctl daemon-reload` has run; `gatewayctl check-config` says what holds it")]
    Held {
        /// The unit.
        unit: String,
        /// The error, with its file and line.
        reason: String,
    },
    /// A variable holds something unusable.
    #[error("{var}={value:?}: {why}")]
    Bad {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
    },
}

/// Whether the launcher runs an instance or the Node Manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A gateway instance.
    Instance {
        /// Group name.
        group: String,
        /// Instance name.
        instance: String,
    },
    /// The Node Manager.
    NodeManager,
}

/// Where the gateway's passphrase comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passphrase {
    /// No passphrase: stdin is /dev/null.
    None,
    /// A file in `$CREDENTIALS_DIRECTORY` (from `LoadCredential=`).
    Credential(PathBuf),
    /// Ask through `systemd-ask-password` (like `startinstance -P`).
    Ask,
}

/// The launcher's whole configuration.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// Instance or Node Manager.
    pub role: Role,
    /// The unit, e.g. `gateway@group1-server1.service`.
    pub unit: String,
    /// The installation (VDISTDIR).
    pub install_dir: PathBuf,
    /// Where the gateway runs (the instance dir, or the installation for the Node Manager).
    pub work_dir: PathBuf,
    /// Health check URL, complete.
    pub health_url: String,
    /// How long the LB endpoint answers 503 before stop.
    pub drain_delay: Duration,
    /// Adaptive drain: end it once every poller got this many 503s in a row.
    pub drain_fall: Option<u32>,
    /// The longest the drain waits for requests in flight after the balancers took it out.
    pub drain_timeout: Duration,
    /// Upper bound of a start that keeps making progress.
    pub start_timeout: Duration,
    /// Watchdog interval systemd expects pings in, if enabled.
    pub watchdog: Option<Duration>,
    /// Where the LB health endpoint listens, if anywhere.
    pub lb_listen: Option<SocketAddr>,
    /// Its path (`/healthchecklb`).
    pub lb_path: String,
    /// The gateway's command line.
    pub command: Vec<String>,
    /// `$RUNTIME_DIRECTORY`, for the control socket.
    pub runtime_dir: Option<PathBuf>,
    /// Passphrase source.
    pub passphrase: Passphrase,
}

/// Environment variable with extra arguments for the gateway (set by `startinstance`).
pub const EXTRA_ARGS_VAR: &str = "GATEWAY_EXTRA_ARGS";
/// Name of the credential that carries the passphrase.
pub const PASSPHRASE_CREDENTIAL: &str = "passphrase";
/// Default path of the LB health endpoint, as the vendor's Health Check LB policy uses.
pub const DEFAULT_LB_PATH: &str = "/healthchecklb";

impl LaunchConfig {
    /// Read the configuration from an environment (`get` returns a variable's value).
    pub fn from_env(
        node_manager: bool,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (role, unit) = if node_manager {
            (Role::NodeManager, name::NODE_MANAGER_UNIT.to_string())
        } else {
            let unit = "gateway@<group>-<instance>.service".to_string();
            let group = get("GATEWAY_GROUP").ok_or(ConfigError::Missing {
                var: "GATEWAY_GROUP",
                unit: unit.clone(),
            })?;
            let instance = get("GATEWAY_INSTANCE").ok_or(ConfigError::Missing {
                var: "GATEWAY_INSTANCE",
                unit: unit.clone(),
            })?;
            let unit = name::instance_unit(&group, &instance).map_err(|e| ConfigError::Bad {
                var: "GATEWAY_INSTANCE",
                value: instance.clone(),
                why: e.to_string(),
            })?;
            (Role::Instance { group, instance }, unit)
        };
        if let Some(reason) = get(HELD_VAR).filter(|v| !v.is_empty()) {
            return Err(ConfigError::Held { unit, reason });
        }
        let need = |var: &'static str| {
            get(var)
                .filter(|v| !v.is_empty())
                .ok_or(ConfigError::Missing {
                    var,
                    unit: unit.clone(),
                })
        };
        let span = |var: &'static str, default: TimeSpan| -> Result<Duration, ConfigError> {
            match get(var) {
                None => Ok(default.0),
                Some(v) => TimeSpan::parse(&v)
                    .map(|t| t.0)
                    .map_err(|why| ConfigError::Bad { var, value: v, why }),
            }
        };
        let install_dir = PathBuf::from(need("VDISTDIR")?);
        let work_dir = match role {
            Role::Instance { .. } => PathBuf::from(need("VINSTDIR")?),
            Role::NodeManager => install_dir.clone(),
        };
        let template = need("GATEWAY_HEALTH_URL")?;
        // The vendor's tools rewrite envSettings.props on deployments: read it at each start.
        let ports = if template.contains(install::TRAFFIC_PORT_VAR) {
            install::read_ports(&Root::new("/"), &work_dir)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    p.ok_or_else(|| {
                        format!(
                            "{} does not exist",
                            work_dir.join(install::ENV_SETTINGS).display()
                        )
                    })
                })
                .map_err(|why| ConfigError::Bad {
                    var: "VINSTDIR",
                    value: work_dir.display().to_string(),
                    why,
                })?
        } else {
            Ports::default()
        };
        let health_url =
            install::complete_health_url(&template, ports).map_err(|why| ConfigError::Bad {
                var: "GATEWAY_HEALTH_URL",
                value: template.clone(),
                why,
            })?;
        let lb_listen = match get("GATEWAY_LB_HEALTH").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| ConfigError::Bad {
                var: "GATEWAY_LB_HEALTH",
                value: v.clone(),
                why: "expected an address:port, e.g. 0.0.0.0:18085".into(),
            })?),
        };
        let mut command = match get("GATEWAY_START_COMMAND").filter(|v| !v.is_empty()) {
            Some(json) => serde_json::from_str::<Vec<String>>(&json)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or(ConfigError::Bad {
                    var: "GATEWAY_START_COMMAND",
                    value: json,
                    why: "expected a JSON list of strings".into(),
                })?,
            None => default_command(&role, &install_dir, &work_dir),
        };
        // Options given to `startinstance` (-D, -b, -q, after -e) reach the gateway this way.
        if let Some(json) = get(EXTRA_ARGS_VAR).filter(|v| !v.is_empty()) {
            let extra: Vec<String> = serde_json::from_str(&json).map_err(|_| ConfigError::Bad {
                var: EXTRA_ARGS_VAR,
                value: json.clone(),
                why: "expected a JSON list of strings".into(),
            })?;
            command.extend(extra);
        }
        let credentials = get("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let passphrase = match credentials.map(|d| d.join(PASSPHRASE_CREDENTIAL)) {
            Some(p) if p.exists() => Passphrase::Credential(p),
            _ if get("GATEWAY_ASK_PASSPHRASE")
                .is_some_and(|v| v == "1" || v == "yes" || v == "true") =>
            {
                Passphrase::Ask
            }
            _ => Passphrase::None,
        };
        let watchdog = get("WATCHDOG_USEC")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&us| {
                us > 0 && get("WATCHDOG_PID").is_none_or(|p| p == std::process::id().to_string())
            })
            .map(Duration::from_micros);
        Ok(LaunchConfig {
            role,
            unit: unit.clone(),
            install_dir,
            work_dir,
            health_url,
            drain_delay: span("GATEWAY_DRAIN_DELAY", TimeSpan::secs(10))?,
            drain_fall: get("GATEWAY_DRAIN_FALL")
                .and_then(|v| v.parse().ok())
                .filter(|&n: &u32| n >= 1),
            drain_timeout: span("GATEWAY_DRAIN_TIMEOUT", TimeSpan::secs(30))?,
            start_timeout: span("GATEWAY_START_TIMEOUT", TimeSpan::secs(300))?,
            watchdog,
            lb_listen,
            lb_path: get("GATEWAY_LB_HEALTH_PATH")
                .filter(|p| p.starts_with('/'))
                .unwrap_or_else(|| DEFAULT_LB_PATH.to_string()),
            command,
            runtime_dir: get("RUNTIME_DIRECTORY")
                .map(|d| PathBuf::from(d.split(':').next().unwrap_or(&d))),
            passphrase,
        })
    }

    /// The operator's name of what runs: `group1/server1` or `Node Manager`.
    pub fn display_name(&self) -> String {
        match &self.role {
            Role::Instance { group, instance } => format!("{group}/{instance}"),
            Role::NodeManager => "Node Manager".to_string(),
        }
    }
}

/// The vendor's own foreground start: `startinstance -h <dir>`, `nodemanager`.
fn default_command(
    role: &Role,
    install_dir: &std::path::Path,
    work_dir: &std::path::Path,
) -> Vec<String> {
    let bin = install_dir.join("posix/bin");
    match role {
        Role::Instance { .. } => {
            vec![
                bin.join("startinstance").display().to_string(),
                "-h".into(),
                work_dir.display().to_string(),
            ]
        }
        Role::NodeManager => vec![bin.join("nodemanager").display().to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn reads_the_generated_environment() {
        let c = LaunchConfig::from_env(
            false,
            env(&[
                ("GATEWAY_GROUP", "payments-eu"),
                ("GATEWAY_INSTANCE", "edge node 1"),
                ("VDISTDIR", "/opt/apigateway"),
                ("VINSTDIR", "/opt/apigateway/groups/group-3/instance-3"),
                ("GATEWAY_HEALTH_URL", "http://127.0.0.1:8087/healthcheck"),
                ("GATEWAY_DRAIN_DELAY", "5s"),
                ("GATEWAY_DRAIN_FALL", "2"),
                ("GATEWAY_LB_HEALTH", "0.0.0.0:18087"),
                ("GATEWAY_START_COMMAND", r#"["/bin/gw","-x"]"#),
                ("WATCHDOG_USEC", "30000000"),
            ]),
        )
        .unwrap();
        assert_eq!(c.unit, r"gateway@payments\x2deu-edge\x20node\x201.service");
        assert_eq!(c.drain_delay, Duration::from_secs(5));
        assert_eq!(c.drain_fall, Some(2));
        assert_eq!(c.watchdog, Some(Duration::from_secs(30)));
        assert_eq!(c.command, ["/bin/gw", "-x"]);
        assert_eq!(c.lb_path, "/healthchecklb");
        assert_eq!(c.display_name(), "payments-eu/edge node 1");
    }

    #[test]
    fn missing_drop_in_is_explained() {
        let err = LaunchConfig::from_env(
            false,
            env(&[("GATEWAY_GROUP", "g"), ("GATEWAY_INSTANCE", "i")]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("VDISTDIR is not set: gateway@g-i.service has no generated drop-in"),
            "{err}"
        );
    }
}
