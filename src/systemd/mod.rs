//! A client of systemd's manager over the system bus (`org.freedesktop.systemd1`), never by
//! running `systemctl`: jobs are started with the JobRemoved stream already open, so their
//! real result is known; unit properties are read with one GetAll per interface.

use std::collections::HashMap;

use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// What EnableUnitFiles/DisableUnitFiles report: (change type, file, destination).
pub type UnitFileChanges = Vec<(String, String, String)>;

/// systemd's manager.
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_async = false,
    blocking_name = "ManagerProxy"
)]
pub trait Manager {
    /// Ask for job and unit signals.
    fn subscribe(&self) -> zbus::Result<()>;
    /// Enqueue a start job.
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Enqueue a stop job.
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Enqueue a restart job.
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Load a unit (or find it loaded) and return its object path.
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    /// Enable unit files (`systemctl enable`).
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, UnitFileChanges)>;
    /// Disable unit files (`systemctl disable`).
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    /// Mask unit files (`systemctl mask`).
    fn mask_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<UnitFileChanges>;
    /// Unmask unit files (`systemctl unmask`).
    fn unmask_unit_files(&self, files: &[&str], runtime: bool) -> zbus::Result<UnitFileChanges>;
    /// enabled, disabled, masked, static, generated, ... (`systemctl is-enabled`).
    fn get_unit_file_state(&self, file: &str) -> zbus::Result<String>;
    /// Reload unit files (`systemctl daemon-reload`).
    fn reload(&self) -> zbus::Result<()>;
    /// Every queued job: id, unit, type, state, job path, unit path.
    #[allow(clippy::type_complexity)]
    fn list_jobs(
        &self,
    ) -> zbus::Result<
        Vec<(
            u32,
            String,
            String,
            String,
            OwnedObjectPath,
            OwnedObjectPath,
        )>,
    >;
    /// Loaded units whose names match the patterns (`systemctl list-units PATTERN`).
    #[allow(clippy::type_complexity)]
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        )>,
    >;
    /// A job finished: id, job path, unit, result (done, failed, timeout, canceled, dependency, skipped).
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

/// What can go wrong talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// The caller may not do this (not root, and polkit said no).
    #[error("{action}: permission denied; run as root (sudo) or get polkit authorisation for systemd units")]
    Denied {
        /// What was attempted.
        action: String,
    },
    /// The system bus is not there.
    #[error("cannot reach systemd on the system bus ({0}); is this host running systemd?")]
    NoBus(String),
    /// The other host cannot be reached, or its bus not through ssh.
    #[error("cannot reach systemd on {host} over ssh ({detail}); check that `ssh {host} systemd-stdio-bridge --help` works without a password prompt")]
    Remote {
        /// `[user@]host[:port]` as given.
        host: String,
        /// What went wrong.
        detail: String,
    },
    /// Anything else systemd or the bus said.
    #[error("{action}: {detail}")]
    Call {
        /// What was attempted.
        action: String,
        /// What systemd answered.
        detail: String,
    },
}

fn call_error(action: &str, e: zbus::Error) -> SystemdError {
    if let zbus::Error::MethodError(name, msg, _) = &e {
        let name = name.as_str();
        if name.ends_with("AccessDenied") || name.ends_with("InteractiveAuthorizationRequired") {
            return SystemdError::Denied {
                action: action.to_string(),
            };
        }
        return SystemdError::Call {
            action: action.to_string(),
            detail: msg.clone().unwrap_or_else(|| name.to_string()),
        };
    }
    SystemdError::Call {
        action: action.to_string(),
        detail: e.to_string(),
    }
}

/// Which job to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// StartUnit.
    Start,
    /// StopUnit.
    Stop,
    /// RestartUnit.
    Restart,
}

impl Verb {
    /// The operator's word.
    pub fn word(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
        }
    }
}

/// A unit's state, as `systemctl status` would show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnitStatus {
    /// Unit name.
    pub unit: String,
    /// loaded, not-found, masked, ...
    pub load_state: String,
    /// active, inactive, failed, activating, deactivating, ...
    pub active_state: String,
    /// running, dead, start, stop-post, ...
    pub sub_state: String,
    /// The main process (the launcher), 0 when none.
    pub main_pid: u32,
    /// Exit status of the last main process.
    pub exec_main_status: i32,
    /// The launcher's STATUS= text.
    pub status_text: String,
    /// How often systemd restarted it.
    pub n_restarts: u32,
    /// When it last became active (µs since the epoch; 0 = never).
    pub active_enter_timestamp: u64,
    /// success, exit-code, signal, timeout, watchdog, ...
    pub result: String,
    /// The `GATEWAY_*` variables of its `Environment=` as systemd loaded them last (after a
    /// daemon-reload: the generator's current settings), `NAME=value`.
    #[serde(skip)]
    pub gateway_environment: Vec<String>,
}

fn get<T: TryFrom<OwnedValue>>(map: &HashMap<String, OwnedValue>, key: &str) -> Option<T> {
    map.get(key)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| T::try_from(v).ok())
}

/// The D-Bus object path systemd gives a unit: every byte other than an ASCII letter or digit
/// (and a leading digit) becomes `_xx` (systemd's bus_label_escape).
pub fn unit_object_path(unit: &str) -> String {
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    if unit.is_empty() {
        path.push('_');
    }
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            path.push(b as char);
        } else {
            path.push_str(&format!("_{b:02x}"));
        }
    }
    path
}

/// `[user@]host[:port]` -> (`[user@]host`, port); `[v6]:port` works too. None when empty or
/// when it would read as an ssh option.
pub fn split_ssh_target(target: &str) -> Option<(&str, Option<&str>)> {
    if target.is_empty() || target.starts_with('-') {
        return None;
    }
    let host_start = target.find('@').map_or(0, |i| i + 1);
    let host = &target[host_start..];
    let split = match host.strip_prefix('[') {
        // [v6] or [v6]:port: the brackets stay for ssh to strip.
        Some(rest) => rest.find(']').map(|end| host_start + 1 + end + 1),
        None if host.matches(':').count() == 1 => target.rfind(':'),
        None => None,
    };
    match split {
        Some(at) if target[at..].starts_with(':') => {
            let port = &target[at + 1..];
            (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
                .then(|| (&target[..at], Some(port)))
        }
        _ => Some((target, None)),
    }
}

/// How many D-Bus calls [`Systemd::status_many`] keeps in flight.
const MAX_PENDING_CALLS: usize = 64;

/// A connection to systemd's manager.
pub struct Systemd {
    connection: Connection,
    manager: ManagerProxy<'static>,
    subscribed: std::cell::Cell<bool>,
}

impl Systemd {
    /// Connect to the local system bus.
    pub fn system() -> Result<Self, SystemdError> {
        let connection = Connection::system().map_err(|e| SystemdError::NoBus(e.to_string()))?;
        Self::over(connection)
    }

    /// Connect to systemd on another host as `systemctl -H` does: D-Bus through
    /// `ssh -xT [-p PORT] -- [USER@]HOST systemd-stdio-bridge`, with ssh's own authentication
    /// (keys, agent, known_hosts).
    pub fn over_ssh(target: &str) -> Result<Self, SystemdError> {
        let remote = |detail: String| SystemdError::Remote {
            host: target.to_string(),
            detail,
        };
        let (userhost, port) = split_ssh_target(target)
            .ok_or_else(|| remote("write [user@]host[:port]".to_string()))?;
        let mut args = vec!["-xT"];
        if let Some(port) = port {
            args.extend(["-p", port]);
        }
        args.extend(["--", userhost, "systemd-stdio-bridge"]);
        // Built, not parsed from text: zbus does not unescape unixexec arguments.
        let transport = zbus::address::transport::Unixexec::new(
            "ssh".into(),
            None,
            args.iter().map(Into::into).collect(),
        );
        let address = zbus::Address::from(zbus::address::Transport::Unixexec(transport));
        let connection = zbus::blocking::connection::Builder::address(address)
            .and_then(|b| b.build())
            .map_err(|e| remote(e.to_string()))?;
        Self::over(connection)
    }

    /// The names of the loaded `gateway@*.service` units.
    pub fn gateway_units(&self) -> Result<Vec<String>, SystemdError> {
        let mut units: Vec<String> = self
            .manager
            .list_units_by_patterns(&[], &["gateway@*.service"])
            .map_err(|e| call_error("list gateway@*.service", e))?
            .into_iter()
            .map(|u| u.0)
            .collect();
        units.sort();
        Ok(units)
    }

    /// Use an established bus connection (e.g. one tunnelled to another host).
    pub fn over(connection: Connection) -> Result<Self, SystemdError> {
        // No property cache: it would fetch and watch every manager property up front.
        let manager = ManagerProxy::builder(&connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .map_err(|e| SystemdError::NoBus(e.to_string()))?;
        Ok(Systemd {
            connection,
            manager,
            subscribed: std::cell::Cell::new(false),
        })
    }

    /// Run a job and wait until systemd removes it; returns its result word ("done" on success).
    /// The JobRemoved stream is opened before the job is enqueued, so no result can be missed.
    pub fn run_job(&self, verb: Verb, unit: &str) -> Result<String, SystemdError> {
        let action = format!("{} {unit}", verb.word());
        // systemd only sends JobRemoved to subscribed clients; once per connection, and only
        // when jobs are run (a subscriber also gets every unit's change signals).
        if !self.subscribed.get() {
            self.manager
                .subscribe()
                .map_err(|e| call_error(&action, e))?;
            self.subscribed.set(true);
        }
        let mut removed = self
            .manager
            .receive_job_removed()
            .map_err(|e| call_error(&action, e))?;
        let job = match verb {
            Verb::Start => self.manager.start_unit(unit, "replace"),
            Verb::Stop => self.manager.stop_unit(unit, "replace"),
            Verb::Restart => self.manager.restart_unit(unit, "replace"),
        }
        .map_err(|e| call_error(&action, e))?;
        for signal in &mut removed {
            let args = signal.args().map_err(|e| call_error(&action, e))?;
            if args.job == job {
                return Ok(args.result);
            }
        }
        Err(SystemdError::Call {
            action,
            detail: "the bus connection closed before the job finished".into(),
        })
    }

    /// The state of a unit (loading it if needed).
    pub fn status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        self.status_many(&[unit.to_string()])
            .pop()
            .unwrap_or_else(|| Err(SystemdError::NoBus("no answer".into())))
    }

    /// The states of many units at once. One GetAll per unit, like `systemctl show`: the
    /// object path follows from the name (systemd loads the unit on access) and an empty
    /// interface name returns the properties of all its interfaces. Up to 64 calls are in
    /// flight at once, so their round trips overlap instead of adding up.
    pub fn status_many(&self, units: &[String]) -> Vec<Result<UnitStatus, SystemdError>> {
        let connection = self.connection.inner();
        use futures_util::StreamExt;
        // The bus daemon allows a connection a limited number of pending calls (128 on
        // Debian's system bus); stay well below it.
        let calls = futures_util::stream::iter(units.iter().map(|u| unit_status(connection, u)))
            .buffered(MAX_PENDING_CALLS);
        zbus::block_on(calls.collect())
    }

    /// Every queued job as (unit, type: start/stop/restart/...).
    pub fn jobs(&self) -> Result<Vec<(String, String)>, SystemdError> {
        self.manager
            .list_jobs()
            .map(|jobs| {
                jobs.into_iter()
                    .map(|(_, unit, kind, _, _, _)| (unit, kind))
                    .collect()
            })
            .map_err(|e| call_error("list jobs", e))
    }

    /// Reload unit files (what `systemctl daemon-reload` does; reruns the generators).
    pub fn reload(&self) -> Result<(), SystemdError> {
        self.manager
            .reload()
            .map_err(|e| call_error("reload systemd", e))
    }

    /// Enable or disable unit files, then reload.
    pub fn set_enabled(&self, units: &[&str], enable: bool) -> Result<(), SystemdError> {
        self.enable_files(units, enable)?;
        self.reload()
    }

    /// Enable or disable unit files (in /etc; no reload).
    pub fn enable_files(&self, units: &[&str], enable: bool) -> Result<(), SystemdError> {
        let action = format!(
            "{} {}",
            if enable { "enable" } else { "disable" },
            units.join(" ")
        );
        if enable {
            self.manager
                .enable_unit_files(units, false, false)
                .map(|_| ())
        } else {
            self.manager.disable_unit_files(units, false).map(|_| ())
        }
        .map_err(|e| call_error(&action, e))
    }

    /// Mask or unmask unit files persistently (links to /dev/null in /etc; no reload).
    pub fn mask_files(&self, units: &[&str], mask: bool) -> Result<(), SystemdError> {
        let action = format!(
            "{} {}",
            if mask { "mask" } else { "unmask" },
            units.join(" ")
        );
        if mask {
            // force: replace a link an earlier tool left there.
            self.manager.mask_unit_files(units, false, true)
        } else {
            self.manager.unmask_unit_files(units, false)
        }
        .map(|_| ())
        .map_err(|e| call_error(&action, e))
    }

    /// A unit file's enablement state (enabled, disabled, static, generated, masked, ...).
    pub fn unit_file_state(&self, unit: &str) -> Result<String, SystemdError> {
        self.manager
            .get_unit_file_state(unit)
            .map_err(|e| call_error(&format!("is-enabled {unit}"), e))
    }
}

/// One unit's state over an async connection (see [`Systemd::status_many`]).
async fn unit_status(
    connection: &zbus::Connection,
    unit: &str,
) -> Result<UnitStatus, SystemdError> {
    let action = format!("status of {unit}");
    let props = zbus::fdo::PropertiesProxy::builder(connection)
        .destination("org.freedesktop.systemd1")
        .and_then(|b| b.path(unit_object_path(unit)))
        .map(|b| b.cache_properties(zbus::proxy::CacheProperties::No))
        .map_err(|e| call_error(&action, e))?
        .build()
        .await
        .map_err(|e| call_error(&action, e))?;
    let all = props
        .get_all(zbus::names::InterfaceName::from_static_str_unchecked(""))
        .await
        .map_err(|e| call_error(&action, e.into()))?;
    Ok(UnitStatus {
        unit: unit.to_string(),
        load_state: get(&all, "LoadState").unwrap_or_default(),
        active_state: get(&all, "ActiveState").unwrap_or_default(),
        sub_state: get(&all, "SubState").unwrap_or_default(),
        active_enter_timestamp: get(&all, "ActiveEnterTimestamp").unwrap_or_default(),
        main_pid: get(&all, "MainPID").unwrap_or_default(),
        exec_main_status: get(&all, "ExecMainStatus").unwrap_or_default(),
        status_text: get(&all, "StatusText").unwrap_or_default(),
        n_restarts: get(&all, "NRestarts").unwrap_or_default(),
        result: get(&all, "Result").unwrap_or_default(),
        gateway_environment: get::<Vec<String>>(&all, "Environment")
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.starts_with("GATEWAY_"))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_targets_split_like_systemctl() {
        assert_eq!(split_ssh_target("gw2"), Some(("gw2", None)));
        assert_eq!(
            split_ssh_target("root@gw2.example.com:2222"),
            Some(("root@gw2.example.com", Some("2222")))
        );
        assert_eq!(
            split_ssh_target("ops@[::1]:22"),
            Some(("ops@[::1]", Some("22")))
        );
        assert_eq!(split_ssh_target("[fe80::1]"), Some(("[fe80::1]", None)));
        assert_eq!(split_ssh_target("fe80::1"), Some(("fe80::1", None)));
        assert_eq!(split_ssh_target("-oProxyCommand=x"), None);
        assert_eq!(split_ssh_target("gw2:x"), None);
    }

    #[test]
    fn object_paths_match_systemd() {
        // As `busctl call ... GetUnit s dbus.service` answers.
        assert_eq!(
            unit_object_path("dbus.service"),
            "/org/freedesktop/systemd1/unit/dbus_2eservice"
        );
        assert_eq!(
            unit_object_path(r"gateway@group1-server1.service"),
            "/org/freedesktop/systemd1/unit/gateway_40group1_2dserver1_2eservice"
        );
        assert_eq!(
            unit_object_path("1x"),
            "/org/freedesktop/systemd1/unit/_31x"
        );
    }
}
