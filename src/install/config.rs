//! Our own config: `/etc/gateway-systemd/gateway.toml` plus `gateway.toml.d/*.toml` drop-ins,
//! later files winning field by field.

use super::timespan::TimeSpan;
use super::InstallError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Per-instance settings as written in one place of the config (all optional: unset = inherit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// Start with gateway.target (at boot).
    pub autostart: Option<bool>,
    /// URL the launcher polls for readiness and the watchdog; `{management_port}` and
    /// `{scheme}` are filled in from topology.json, `{traffic_port}` from envSettings.props at
    /// each start.
    pub health_url: Option<String>,
    /// How long the LB health endpoint answers 503 before the gateway stops (0 = no drain).
    pub drain_delay: Option<TimeSpan>,
    /// How long the gateway may take to exit after SIGTERM.
    pub stop_grace: Option<TimeSpan>,
    /// Watchdog interval (0 = off).
    pub watchdog: Option<TimeSpan>,
    /// How long a start may take before systemd gives up.
    pub start_timeout: Option<TimeSpan>,
    /// Unit the gateway needs running first (e.g. `cassandra.service`); empty = none.
    pub cassandra: Option<String>,
    /// Credentials handed to the launcher by `LoadCredential=`: `name` or `name:/path`.
    pub credentials: Option<Vec<String>>,
    /// Credentials handed over by `LoadCredentialEncrypted=`: `name` or `name:/path`.
    pub encrypted_credentials: Option<Vec<String>>,
    /// The gateway's own start command (argv), run in the foreground by the launcher.
    pub start_command: Option<Vec<String>>,
    /// Where the launcher serves the load balancer's health endpoint (`address:port`);
    /// empty = nowhere. Default: all addresses, port = management port + 10000.
    pub lb_health_listen: Option<String>,
    /// Path of that endpoint.
    pub lb_health_path: Option<String>,
    /// Ask for the passphrase with systemd-ask-password at start (like `startinstance -P`).
    pub ask_passphrase: Option<bool>,
    /// Start only after the Node Manager (Wants= and After= gateway-nodemanager.service).
    pub after_nodemanager: Option<bool>,
    /// Leave the instance to its `/etc/init.d/vshell-*` script: its legacy unit is not masked
    /// and gateway.target does not start it (`gatewayctl migrate-initd --rollback` sets this).
    pub legacy_initd: Option<bool>,
    /// How many passing checks in a row the load balancers need to take the instance back
    /// (HAProxy's `rise`): rolling-restart waits until each balancer that polled it saw as many.
    pub lb_rise: Option<u32>,
    /// `adaptive` (the default): the wait for the load balancers ends once every one polling
    /// the instance got `lb_fall` 503s in a row and, where its traffic can be told apart, sent
    /// no more requests (at most the drain delay; the whole delay when none polls). `fixed`:
    /// the LB endpoint answers 503 for the whole drain delay.
    pub drain_mode: Option<String>,
    /// How many failed checks in a row the load balancers need at least to take the instance
    /// out (HAProxy's `fall`), for the adaptive drain.
    pub lb_fall: Option<u32>,
    /// After the load balancers took the instance out, the longest the drain waits for the
    /// requests in flight to finish (0 = not at all).
    pub drain_timeout: Option<TimeSpan>,
}

/// The settings, written once: overlaying, listing what is set and showing values all follow
/// this list.
macro_rules! settings_fields {
    ($($f:ident),* $(,)?) => {
        impl SettingsPatch {
            /// Every setting's name, in the documented order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($f)),*];

            /// Apply `later` on top of `self`: every field `later` sets wins.
            pub fn overlay(&mut self, later: &SettingsPatch) {
                $( if later.$f.is_some() { self.$f = later.$f.clone(); } )*
            }

            /// The fields this patch sets, with their values as TOML would write them.
            pub fn set_fields(&self) -> Vec<(&'static str, String)> {
                let mut out = Vec::new();
                $( if let Some(v) = &self.$f { out.push((stringify!($f), v.shown())); } )*
                out
            }
        }
    };
}

settings_fields!(
    autostart,
    health_url,
    drain_delay,
    stop_grace,
    watchdog,
    start_timeout,
    cassandra,
    credentials,
    encrypted_credentials,
    start_command,
    lb_health_listen,
    lb_health_path,
    ask_passphrase,
    after_nodemanager,
    legacy_initd,
    lb_rise,
    drain_mode,
    lb_fall,
    drain_timeout,
);

/// A setting's value as TOML would write it.
trait Shown {
    fn shown(&self) -> String;
}
impl Shown for bool {
    fn shown(&self) -> String {
        self.to_string()
    }
}
impl Shown for u32 {
    fn shown(&self) -> String {
        self.to_string()
    }
}
impl Shown for String {
    fn shown(&self) -> String {
        format!("{self:?}")
    }
}
impl Shown for TimeSpan {
    fn shown(&self) -> String {
        format!("\"{self}\"")
    }
}
impl Shown for Vec<String> {
    fn shown(&self) -> String {
        format!("{self:?}")
    }
}

/// Where one piece of config was written: file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The config file (logical path).
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// The merged config of all files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// `install_dir`: the installation (VDISTDIR).
    pub install_dir: Option<PathBuf>,
    /// `host`: this host's name in topology.json.
    pub host: Option<String>,
    /// `user`: the account the gateways run as.
    pub user: Option<String>,
    /// `group`: the group the gateways run as.
    pub group: Option<String>,
    /// `[defaults]`: settings for every instance.
    pub defaults: SettingsPatch,
    /// `[nodemanager]`: settings for the Node Manager.
    pub nodemanager: SettingsPatch,
    /// Where each `[defaults]` setting was last written.
    pub defaults_origins: BTreeMap<&'static str, Origin>,
    /// Where each `[nodemanager]` setting was last written.
    pub nodemanager_origins: BTreeMap<&'static str, Origin>,
    /// `[instances."group/instance"]`: per-instance settings, with where they were written.
    pub instances: BTreeMap<String, (SettingsPatch, Origin)>,
    /// Per instance table, where each of its settings was last written.
    pub instance_origins: BTreeMap<String, BTreeMap<&'static str, Origin>>,
    /// Instance tables that could not be read: the instance must not run on guessed settings.
    pub broken_instances: BTreeMap<String, InstallError>,
    /// The `[nodemanager]` table could not be read: the Node Manager must not run on guessed
    /// settings.
    pub broken_nodemanager: Option<InstallError>,
    /// `[backup]`, merged field by field.
    pub backup: BackupSettings,
    /// The `[backup]` table could not be read: backups refuse to guess where to write.
    pub broken_backup: Option<InstallError>,
    /// Files that could not be read or parsed, or hold a bad top-level value: they may set
    /// anything, so every instance is held.
    pub broken_files: Vec<InstallError>,
}

/// A TOML basic string holding `s` (for the files we write: keys and values alike).
pub fn toml_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The 1-based line where `key` is set inside table `table` (`defaults`,
/// `instances."g/i"`) of a TOML text; quotes and spaces in table headers do not matter.
pub fn key_line(text: &str, table: &str, key: &str) -> Option<usize> {
    let norm = |h: &str| -> String {
        h.chars()
            .filter(|c| !c.is_whitespace() && *c != '"' && *c != '\'')
            .collect()
    };
    let want = norm(table);
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix('[') {
            current = norm(rest.split(']').next().unwrap_or(""));
            continue;
        }
        if current == want {
            let bare = t.strip_prefix(key).map(str::trim_start);
            let quoted = t.strip_prefix(&format!("\"{key}\"")).map(str::trim_start);
            if bare.or(quoted).is_some_and(|r| r.starts_with('=')) {
                return Some(i + 1);
            }
        }
    }
    None
}

/// Where each setting `patch` sets was written in `text`, table `table` starting at `fallback`.
fn origins_of(
    patch: &SettingsPatch,
    text: &str,
    path: &Path,
    table: &str,
    fallback: usize,
) -> Vec<(&'static str, Origin)> {
    patch
        .set_fields()
        .into_iter()
        .map(|(field, _)| {
            let line = key_line(text, table, field).unwrap_or(fallback);
            (
                field,
                Origin {
                    path: path.to_path_buf(),
                    line,
                },
            )
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    install_dir: Option<PathBuf>,
    host: Option<String>,
    user: Option<String>,
    group: Option<String>,
    #[serde(default)]
    defaults: SettingsPatch,
    nodemanager: Option<toml::Spanned<toml::Value>>,
    #[serde(default)]
    instances: BTreeMap<String, toml::Spanned<toml::Value>>,
    backup: Option<toml::Spanned<toml::Value>>,
}

/// The `[backup]` table: where `gatewayctl backup` writes and what else it takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    /// Where archives are written (default [`DEFAULT_BACKUP_DIR`]).
    pub dir: Option<PathBuf>,
    /// More trees to take whole, e.g. an Analytics installation (`/opt/analytics`).
    pub extra_roots: Option<Vec<PathBuf>>,
    /// Retention: keep this many newest archives of this host.
    pub keep_last: Option<u32>,
    /// Retention: keep the newest archive of each of this many most recent days (UTC).
    pub keep_daily: Option<u32>,
    /// Retention: the newest of each of this many most recent ISO weeks.
    pub keep_weekly: Option<u32>,
    /// Retention: the newest of each of this many most recent months.
    pub keep_monthly: Option<u32>,
    /// Shell commands run before the copy (a database dump into `$BACKUP_HOOK_DIR`, say); one
    /// failing fails the backup.
    pub before: Option<Vec<String>>,
    /// Shell commands run once an archive was kept (an off-site copy of `$BACKUP_ARCHIVE`).
    pub after: Option<Vec<String>>,
    /// Shell commands run when the backup or a hook failed (`$BACKUP_ERROR` says why).
    pub on_error: Option<Vec<String>>,
    /// How long each hook may run before it is killed (default [`DEFAULT_HOOK_TIMEOUT`]).
    pub hook_timeout: Option<TimeSpan>,
    /// age recipients (`age1...` public keys) the archive is encrypted to; none: not encrypted.
    pub recipients: Option<Vec<String>>,
    /// When gateway-backup.timer fires (a systemd calendar spec, `OnCalendar=`; default daily).
    pub schedule: Option<String>,
    /// When gateway-drill.timer fires, once enabled (default weekly).
    pub drill_schedule: Option<String>,
}

/// How long a backup hook may run unless `[backup] hook_timeout` says otherwise.
pub const DEFAULT_HOOK_TIMEOUT: TimeSpan = TimeSpan::secs(600);

/// Where archives go unless `[backup] dir` says otherwise.
pub const DEFAULT_BACKUP_DIR: &str = "/var/lib/gateway-systemd/backups";

impl BackupSettings {
    fn overlay(&mut self, later: BackupSettings) {
        if later.dir.is_some() {
            self.dir = later.dir;
        }
        if later.extra_roots.is_some() {
            self.extra_roots = later.extra_roots;
        }
        for (mine, theirs) in [
            (&mut self.before, later.before),
            (&mut self.after, later.after),
            (&mut self.on_error, later.on_error),
            (&mut self.recipients, later.recipients),
        ] {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
        for (mine, theirs) in [
            (&mut self.schedule, later.schedule),
            (&mut self.drill_schedule, later.drill_schedule),
        ] {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
        if later.hook_timeout.is_some() {
            self.hook_timeout = later.hook_timeout;
        }
        for (mine, theirs) in [
            (&mut self.keep_last, later.keep_last),
            (&mut self.keep_daily, later.keep_daily),
            (&mut self.keep_weekly, later.keep_weekly),
            (&mut self.keep_monthly, later.keep_monthly),
        ] {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
    }

    fn check(&self) -> Result<(), String> {
        for (key, spec) in [
            ("schedule", &self.schedule),
            ("drill_schedule", &self.drill_schedule),
        ] {
            if let Some(spec) = spec {
                if spec.trim().is_empty() || spec.chars().any(char::is_control) {
                    return Err(format!(
                        "{key} {spec:?} is not a calendar spec; write e.g. \"daily\" or \"*-*-* 00/4:00:00\" (`systemd-analyze calendar SPEC` checks one)"
                    ));
                }
            }
        }
        for r in self.recipients.iter().flatten() {
            if r.trim().parse::<age::x25519::Recipient>().is_err() {
                return Err(format!(
                    "recipient {r:?} is not an age X25519 public key (age1...); `age-keygen -y IDENTITY_FILE` prints the one of an identity"
                ));
            }
        }
        let paths = self.dir.iter().chain(self.extra_roots.iter().flatten());
        for p in paths {
            if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(format!(
                    "{:?} must be an absolute path without \"..\"",
                    p.display().to_string()
                ));
            }
        }
        Ok(())
    }
}

/// Where a settings table that does not parse went wrong: the line of the first key whose
/// value alone does not parse (the error names the key), else the table's own line.
fn at_bad_key(
    table: &toml::Value,
    text: &str,
    table_name: &str,
    origin: Origin,
    message: &str,
) -> (Origin, String) {
    let message = message.trim().to_string();
    let bad = table.as_table().and_then(|t| {
        t.iter().find_map(|(k, v)| {
            let one = toml::Table::from_iter([(k.clone(), v.clone())]);
            toml::Value::Table(one)
                .try_into::<SettingsPatch>()
                .err()
                .map(|e| (k.clone(), e.message().trim().to_string()))
        })
    });
    match bad {
        Some((key, detail)) => {
            let line = key_line(text, table_name, &key).unwrap_or(origin.line);
            (Origin { line, ..origin }, format!("{key}: {detail}"))
        }
        None => (origin, message),
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    /// Merge one file's text into this config. A file that does not parse is skipped whole
    /// (returned as the error); an instance table that does not parse marks that instance broken.
    pub fn merge_file(
        &mut self,
        text: &str,
        path: &Path,
    ) -> Result<Vec<InstallError>, InstallError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| InstallError::ConfigSyntax {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            detail: e.message().trim().to_string(),
        })?;
        let bad = |key: &str, detail: String| InstallError::ConfigSyntax {
            path: path.to_path_buf(),
            line: text
                .lines()
                .position(|l| l.trim_start().starts_with(key))
                .map_or(1, |i| i + 1),
            detail,
        };
        if let Some(dir) = file.install_dir {
            let shown = dir.to_string_lossy();
            if !dir.is_absolute()
                || shown.contains(|c: char| c.is_control() || c == '"' || c == '\\')
            {
                return Err(bad("install_dir", format!("install_dir {shown:?} must be an absolute path without quotes, backslashes or control characters")));
            }
            self.install_dir = Some(dir);
        }
        for (key, value) in [("user", &file.user), ("group", &file.group)] {
            if let Some(v) = value {
                let ok = v
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                    && v.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })
                    && v.len() <= 31;
                if !ok {
                    return Err(bad(key, format!("{key} {v:?} is not a valid account name (lower-case letters, digits, '_', '-')")));
                }
            }
        }
        if file.host.as_deref().is_some_and(|h| {
            h.is_empty() || h.contains(|c: char| c.is_control() || c.is_whitespace())
        }) {
            return Err(bad(
                "host",
                "host must be a host name as topology.json writes it, without spaces".to_string(),
            ));
        }
        self.host = file.host.or(self.host.take());
        self.user = file.user.or(self.user.take());
        self.group = file.group.or(self.group.take());
        let table_line = |name: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(&format!("[{name}")))
                .map_or(1, |i| i + 1)
        };
        self.defaults_origins.extend(origins_of(
            &file.defaults,
            text,
            path,
            "defaults",
            table_line("defaults"),
        ));
        self.defaults.overlay(&file.defaults);
        let mut problems = Vec::new();
        if let Some(spanned) = file.nodemanager {
            let origin = Origin {
                path: path.to_path_buf(),
                line: table_line("nodemanager"),
            };
            let value = spanned.into_inner();
            match value.clone().try_into::<SettingsPatch>() {
                Ok(patch) => {
                    self.broken_nodemanager = None;
                    self.nodemanager_origins.extend(origins_of(
                        &patch,
                        text,
                        path,
                        "nodemanager",
                        origin.line,
                    ));
                    self.nodemanager.overlay(&patch);
                }
                Err(e) => {
                    let (origin, detail) =
                        at_bad_key(&value, text, "nodemanager", origin, e.message());
                    let err = InstallError::ConfigNodeManager { origin, detail };
                    problems.push(err.clone());
                    self.broken_nodemanager = Some(err);
                }
            }
        }
        if let Some(spanned) = file.backup {
            let origin = Origin {
                path: path.to_path_buf(),
                line: table_line("backup"),
            };
            let parsed = spanned
                .into_inner()
                .try_into::<BackupSettings>()
                .map_err(|e| e.message().trim().to_string())
                .and_then(|b| b.check().map(|_| b));
            match parsed {
                Ok(b) => {
                    self.broken_backup = None;
                    self.backup.overlay(b);
                }
                Err(detail) => {
                    let err = InstallError::BadSetting {
                        place: format!("{origin}: [backup]"),
                        detail: format!(
                            "{detail}; `gatewayctl backup` refuses to run until this is fixed"
                        ),
                    };
                    problems.push(err.clone());
                    self.broken_backup = Some(err);
                }
            }
        }
        for (key, spanned) in file.instances {
            let origin = Origin {
                path: path.to_path_buf(),
                line: line_of(text, spanned.span().start),
            };
            let value = spanned.into_inner();
            match value.clone().try_into::<SettingsPatch>() {
                Ok(patch) => {
                    self.broken_instances.remove(&key);
                    self.instance_origins
                        .entry(key.clone())
                        .or_default()
                        .extend(origins_of(
                            &patch,
                            text,
                            path,
                            &format!("instances.\"{key}\""),
                            origin.line,
                        ));
                    let entry = self
                        .instances
                        .entry(key)
                        .or_insert_with(|| (SettingsPatch::default(), origin.clone()));
                    entry.0.overlay(&patch);
                    entry.1 = origin;
                }
                Err(e) => {
                    let table = format!("instances.\"{key}\"");
                    let (origin, detail) = at_bad_key(&value, text, &table, origin, e.message());
                    let err = InstallError::ConfigInstance {
                        origin,
                        key: key.clone(),
                        detail,
                    };
                    problems.push(err.clone());
                    self.broken_instances.insert(key, err);
                }
            }
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_files_win_field_by_field() {
        let mut c = Config::default();
        c.merge_file(
            "host = \"a\"\n[defaults]\ndrain_delay = 5\nwatchdog = \"20s\"\n[instances.\"g/i\"]\nautostart = false\n",
            Path::new("/etc/one.toml"),
        )
        .unwrap();
        c.merge_file(
            "[defaults]\ndrain_delay = \"7s\"\n[instances.\"g/i\"]\nhealth_url = \"http://x\"\n",
            Path::new("/etc/two.toml"),
        )
        .unwrap();
        assert_eq!(c.host.as_deref(), Some("a"));
        assert_eq!(c.defaults.drain_delay, Some(TimeSpan::secs(7)));
        assert_eq!(c.defaults.watchdog, Some(TimeSpan::secs(20)));
        let (patch, origin) = &c.instances["g/i"];
        assert_eq!(patch.autostart, Some(false));
        assert_eq!(patch.health_url.as_deref(), Some("http://x"));
        assert_eq!(origin.to_string(), "/etc/two.toml:3");
    }

    #[test]
    fn errors_name_file_and_line() {
        let mut c = Config::default();
        let err = c
            .merge_file(
                "host = \"a\"\n\nautostrat = true\n",
                Path::new("/etc/x.toml"),
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/x.toml:3: "), "{msg}");
        assert!(msg.contains("autostrat"), "{msg}");
        let problems = c
            .merge_file("[instances.\"g/a\"]\ndrain_delay = \"soon\"\n[instances.\"g/b\"]\nautostart = false\n", Path::new("/etc/y.toml"))
            .unwrap();
        assert_eq!(problems.len(), 1);
        assert!(c.broken_instances.contains_key("g/a"));
        assert!(c.instances.contains_key("g/b"));
        assert!(problems[0].to_string().contains("soon"), "{}", problems[0]);
    }

    /// The package's commented /etc/gateway-systemd/gateway.toml: as shipped it parses; with
    /// every `#key = value` line uncommented it still parses, names every setting, and each
    /// default it states is the built-in one.
    #[test]
    fn the_packaged_config_shows_every_setting_with_its_default() {
        let shipped = include_str!("../../packaging/gateway.toml");
        let mut c = Config::default();
        let problems = c.merge_file(shipped, Path::new("gateway.toml")).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let all: String = shipped
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|ch: char| ch.is_ascii_lowercase() || ch == '[') => {
                    format!("{rest}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let mut c = Config::default();
        let problems = c.merge_file(&all, Path::new("gateway.toml")).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let shown: BTreeMap<&str, String> = c.defaults.set_fields().into_iter().collect();
        for field in SettingsPatch::FIELDS {
            assert!(shown.contains_key(field), "[defaults] {field} is not shown");
        }
        for (field, value) in crate::install::builtin_defaults().set_fields() {
            assert_eq!(shown[field], value, "[defaults] {field}");
        }
        // Every [backup] key (this literal stops compiling when one is added).
        let BackupSettings {
            dir,
            extra_roots,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            before,
            after,
            on_error,
            hook_timeout,
            recipients,
            schedule,
            drill_schedule,
        } = c.backup.clone();
        assert_eq!(dir.as_deref(), Some(Path::new(DEFAULT_BACKUP_DIR)));
        assert_eq!(hook_timeout, Some(DEFAULT_HOOK_TIMEOUT));
        assert_eq!(schedule.as_deref(), Some("daily"));
        assert_eq!(drill_schedule.as_deref(), Some("weekly"));
        for set in [
            extra_roots.is_some(),
            keep_last.is_some(),
            keep_daily.is_some(),
            keep_weekly.is_some(),
            keep_monthly.is_some(),
            before.is_some(),
            after.is_some(),
            on_error.is_some(),
            recipients.is_some(),
        ] {
            assert!(set, "a [backup] key is not shown: {:?}", c.backup);
        }
    }

    #[test]
    fn backup_hooks_and_recipients_overlay_and_bad_keys_are_named() {
        let key = age::x25519::Identity::generate().to_public().to_string();
        let mut c = Config::default();
        c.merge_file(
            &format!("[backup]\nbefore = [\"dump\"]\nafter = [\"copy\"]\nhook_timeout = \"2min\"\nrecipients = [\"{key}\"]\n"),
            Path::new("/etc/one.toml"),
        )
        .unwrap();
        c.merge_file(
            "[backup]\nbefore = [\"dump2\"]\n",
            Path::new("/etc/two.toml"),
        )
        .unwrap();
        assert_eq!(c.backup.before, Some(vec!["dump2".to_string()]));
        assert_eq!(c.backup.after, Some(vec!["copy".to_string()]));
        assert_eq!(c.backup.hook_timeout, Some(TimeSpan::secs(120)));
        assert_eq!(c.backup.recipients, Some(vec![key]));
        let problems = c
            .merge_file(
                "[backup]\nrecipients = [\"age1typo\"]\n",
                Path::new("/etc/three.toml"),
            )
            .unwrap();
        let shown = problems[0].to_string();
        assert!(
            shown.starts_with("/etc/three.toml:1") && shown.contains("age1typo"),
            "{shown}"
        );
        assert!(c.broken_backup.is_some());
    }
}
