//! The resolved settings of an instance or the Node Manager: built-in defaults, the layered
//! config patch settled into checked values, health URLs and credentials.

use super::{Ports, SettingsPatch, TimeSpan, CREDENTIALS_DIR, MAX_DRAIN_DELAY};
use crate::units::name;
use std::path::{Path, PathBuf};

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
    /// The longest the drain waits for requests in flight once the balancers took it out.
    pub drain_timeout: TimeSpan,
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
    /// systemd's stop timeout: it bounds the drain (ExecStop: the wait for the balancers, then
    /// for the requests in flight) and, separately, the exit after SIGTERM, so it must exceed
    /// both.
    pub fn stop_timeout(&self) -> TimeSpan {
        self.drain_delay + self.drain_timeout + self.stop_grace
    }
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
        drain_mode: Some("adaptive".into()),
        lb_fall: Some(DEFAULT_LB_FALL),
        drain_timeout: Some(TimeSpan::secs(30)),
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

/// What a default health URL is made of for one instance or the Node Manager.
pub(super) struct UrlVars<'a> {
    /// Its management port from topology.json.
    pub(super) management_port: Option<u16>,
    /// http or https.
    pub(super) scheme: &'a str,
}

/// Turn a fully layered patch into settings, checking every value.
/// Err names the setting that is wrong and what is wrong with it.
pub(super) fn settle(
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
    let drain_timeout = patch.drain_timeout.unwrap_or_default();
    if drain_timeout > MAX_DRAIN_DELAY {
        return Err(("drain_timeout", format!("{key}: drain_timeout {drain_timeout} is longer than the maximum of {MAX_DRAIN_DELAY}; use 0 not to wait for requests in flight")));
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
    let adaptive_drain_fall = match patch.drain_mode.as_deref().unwrap_or("adaptive") {
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
        drain_timeout,
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
