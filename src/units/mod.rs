//! From the installation to units: the per-instance drop-ins, the `gateway.target.wants/`
//! links and the masks of legacy init scripts. Pure: the generator does the writing.

pub mod name;

use crate::initd::Target;
use crate::install::{Credential, Installation, InstanceSettings, DEFAULT_USER};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where the package installs our unit files.
pub const UNIT_DIR: &str = "/usr/lib/systemd/system";
/// Name of the drop-in the generator writes for each unit.
pub const DROPIN_NAME: &str = "50-generated.conf";

/// One thing to create in the generator's output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file with this content.
    File {
        /// Path relative to the output directory.
        path: PathBuf,
        /// Content.
        content: String,
    },
    /// A symbolic link.
    Symlink {
        /// Path relative to the output directory.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
}

/// A legacy init script's unit and what it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyUnit {
    /// The unit systemd-sysv-generator makes, e.g. `vshell-group1-server1.service`.
    pub unit: String,
    /// What the script starts.
    pub target: Target,
    /// Mask it; false when the target is still left to its script (`legacy_initd`).
    pub mask: bool,
}

/// Quote a value for a unit file setting that unquotes and C-unescapes (`Environment=`,
/// paths): inside double quotes, `\` and `"` are escaped, and `%` is doubled because
/// specifiers are expanded first.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    quote_into(&mut out, &[value]);
    out
}

/// [`quote`] the concatenation of `parts` onto `out` (no temporary string).
fn quote_into(out: &mut String, parts: &[&str]) {
    out.push('"');
    for c in parts.iter().flat_map(|p| p.chars()) {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Make free text safe for settings that only expand specifiers (`Description=`, comments):
/// `%` doubled, and control characters (which would end the line) shown as `?`.
fn plain(value: &str) -> String {
    value
        .replace('%', "%%")
        .replace(|c: char| c.is_control(), "?")
}

/// Installation directories under these are hidden by `ProtectHome=yes`.
const HOME_DIRS: [&str; 3] = ["/home", "/root", "/run/user"];

fn env(out: &mut String, key: &str, value: &str) {
    out.push_str("Environment=");
    quote_into(out, &[key, "=", value]);
    out.push('\n');
}

fn credential_lines(out: &mut String, credentials: &[Credential]) {
    for c in credentials {
        let key = if c.encrypted {
            "LoadCredentialEncrypted"
        } else {
            "LoadCredential"
        };
        let _ = writeln!(out, "{key}={}:{}", c.name, plain(&c.path.to_string_lossy()));
    }
}

fn common_service_lines(out: &mut String, inst: &Installation, s: &InstanceSettings) {
    env(out, "GATEWAY_HEALTH_URL", &s.health_url);
    env(out, "GATEWAY_DRAIN_DELAY", &s.drain_delay.to_string());
    if let Some(fall) = s.adaptive_drain_fall {
        env(out, "GATEWAY_DRAIN_FALL", &fall.to_string());
    }
    env(out, "GATEWAY_DRAIN_TIMEOUT", &s.drain_timeout.to_string());
    env(out, "GATEWAY_START_TIMEOUT", &s.start_timeout.to_string());
    if let Some(cmd) = &s.start_command {
        env(
            out,
            "GATEWAY_START_COMMAND",
            &serde_json::to_string(cmd).unwrap_or_default(),
        );
    }
    if let Some(addr) = s.lb_health_listen {
        env(out, "GATEWAY_LB_HEALTH", &addr.to_string());
        env(out, "GATEWAY_LB_HEALTH_PATH", &s.lb_health_path);
    }
    if s.ask_passphrase {
        env(out, "GATEWAY_ASK_PASSPHRASE", "1");
        // Only root may ask (the '+' runs it outside User= and the sandbox); the answer
        // reaches the launcher through the runtime directory.
        out.push_str(
            "ExecStartPre=+/usr/libexec/gateway-systemd/gateway-launch --ask-passphrase\n",
        );
    }
    if inst.user != DEFAULT_USER || inst.group != DEFAULT_USER {
        let _ = writeln!(
            out,
            "User={}\nGroup={}",
            plain(&inst.user),
            plain(&inst.group)
        );
    }
    if HOME_DIRS.iter().any(|h| inst.install_dir.starts_with(h)) {
        out.push_str("# The installation is under a home directory, which ProtectHome=yes would hide.\nProtectHome=no\n");
    }
    let _ = writeln!(out, "WatchdogSec={}", s.watchdog);
    // systemd gives up on a start that shows no progress for this long; the launcher extends it
    // while the gateway makes progress, up to start_timeout.
    // A person answering the passphrase prompt gets the whole start timeout.
    let window = match s.ask_passphrase {
        true => s.start_timeout,
        false => crate::install::TimeSpan(crate::install::start_progress_window(s.start_timeout.0)),
    };
    let _ = writeln!(out, "TimeoutStartSec={window}");
    let _ = writeln!(out, "TimeoutStopSec={}", s.stop_timeout());
    credential_lines(out, &s.credentials);
}

fn unit_section(
    out: &mut String,
    description: &str,
    s: &InstanceSettings,
    after_nodemanager: bool,
    legacy: &[&str],
) {
    let _ = writeln!(out, "[Unit]\nDescription={}", plain(description));
    if !legacy.is_empty() {
        // Never beside the legacy script's service: starting either stops the other first
        // (systemd orders stop jobs before start jobs of units ordered either way).
        out.push_str("# The legacy init script of the same instance.\n");
        for unit in legacy {
            let _ = writeln!(out, "Conflicts={unit}\nAfter={unit}");
        }
    }
    if let Some(c) = &s.cassandra {
        let _ = writeln!(out, "Wants={c}\nAfter={c}");
    }
    if after_nodemanager {
        let _ = writeln!(out, "Wants={0}\nAfter={0}", name::NODE_MANAGER_UNIT);
    }
}

/// Everything the generator writes for an installation: drop-ins, autostart links, masks.
pub fn render(inst: &Installation, legacy: &[LegacyUnit]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let legacy_of = |target: Target| -> Vec<&str> {
        legacy
            .iter()
            .filter(|l| l.target == target)
            .map(|l| l.unit.as_str())
            .collect()
    };
    let dist = inst.install_dir.to_string_lossy();
    let wants = Path::new("gateway.target.wants");
    let mounts = quote(&dist);
    for (k, i) in inst.instances.iter().enumerate() {
        let unit = i.unit();
        let s = &i.settings;
        let mut c = String::with_capacity(1536);
        let _ = writeln!(
            c,
            "# Generated by gateway-generator for {}/{} ({}/{}) of {dist}.\n\
             # Change /etc/gateway-systemd/gateway.toml and run `systemctl daemon-reload` instead of editing this file.\n",
            plain(&i.group.name),
            plain(&i.name),
            plain(&i.group.id),
            plain(&i.id)
        );
        // Only a Node Manager of this host can be waited for.
        let after_nm = s.after_nodemanager && inst.node_manager.is_some();
        unit_section(
            &mut c,
            &format!("API Gateway instance {} in group {}", i.name, i.group.name),
            s,
            after_nm,
            &legacy_of(Target::Instance(k)),
        );
        // The installation may be its own filesystem (/opt often is), mounted after boot began.
        let _ = writeln!(c, "RequiresMountsFor={mounts}");
        c.push_str("\n[Service]\n");
        if let Some(reason) = &i.held {
            // The fail-safe rule: the launcher refuses to start it; a running copy still
            // drains and stops through this unit.
            c.push_str("# Held by a config error: not started until it is fixed (gatewayctl check-config).\n");
            env(&mut c, crate::launch::config::HELD_VAR, reason);
        }
        env(&mut c, "VDISTDIR", &dist);
        env(&mut c, "VINSTDIR", &i.dir.to_string_lossy());
        env(&mut c, "GATEWAY_GROUP", &i.group.name);
        env(&mut c, "GATEWAY_INSTANCE", &i.name);
        env(&mut c, "GATEWAY_GROUP_ID", &i.group.id);
        env(&mut c, "GATEWAY_INSTANCE_ID", &i.id);
        if let Some(p) = i.management_port {
            env(&mut c, "GATEWAY_MANAGEMENT_PORT", &p.to_string());
        }
        common_service_lines(&mut c, inst, s);
        let _ = writeln!(c, "RuntimeDirectory={}", i.runtime_dir());
        let _ = writeln!(c, "ReadWritePaths={}", quote(&i.dir.to_string_lossy()));
        entries.push(Entry::File {
            path: PathBuf::from(format!("{unit}.d/{DROPIN_NAME}")),
            content: c,
        });
        if s.autostart {
            entries.push(Entry::Symlink {
                path: wants.join(&unit),
                target: Path::new(UNIT_DIR).join(name::INSTANCE_TEMPLATE),
            });
        }
    }
    if let Some(nm) = &inst.node_manager {
        let s = &nm.settings;
        let mut c = String::new();
        let _ = writeln!(
            c,
            "# Generated by gateway-generator for the Node Manager ({}) of {dist}.\n\
             # Change /etc/gateway-systemd/gateway.toml and run `systemctl daemon-reload` instead of editing this file.\n",
            plain(&nm.name)
        );
        unit_section(
            &mut c,
            &format!("API Gateway {}", nm.name),
            s,
            false,
            &legacy_of(Target::NodeManager),
        );
        let _ = writeln!(c, "RequiresMountsFor={mounts}");
        c.push_str("\n[Service]\n");
        if let Some(reason) = &nm.held {
            c.push_str("# Held by a config error: not started until it is fixed (gatewayctl check-config).\n");
            env(&mut c, crate::launch::config::HELD_VAR, reason);
        }
        env(&mut c, "VDISTDIR", &dist);
        if let Some(p) = nm.management_port {
            env(&mut c, "GATEWAY_MANAGEMENT_PORT", &p.to_string());
        }
        common_service_lines(&mut c, inst, s);
        // The Node Manager keeps its state beside the domain config; a '-' tolerates a
        // directory that this installation does not have.
        let rw: Vec<String> = ["conf", "logs", "trace", "events"]
            .iter()
            .map(|d| quote(&format!("-{}", inst.install_dir.join(d).to_string_lossy())))
            .collect();
        let _ = writeln!(c, "ReadWritePaths={}", rw.join(" "));
        entries.push(Entry::File {
            path: PathBuf::from(format!("{}.d/{DROPIN_NAME}", name::NODE_MANAGER_UNIT)),
            content: c,
        });
        if s.autostart {
            entries.push(Entry::Symlink {
                path: wants.join(name::NODE_MANAGER_UNIT),
                target: Path::new(UNIT_DIR).join(name::NODE_MANAGER_UNIT),
            });
        }
    }
    for m in legacy.iter().filter(|l| l.mask) {
        entries.push(Entry::Symlink {
            path: PathBuf::from(&m.unit),
            target: PathBuf::from("/dev/null"),
        });
    }
    entries
}

/// Drop-ins of the backup and drill units from `[backup]`: the schedules, and the backup
/// directory's mount (a `[backup] dir` on a filesystem of its own, an NFS share often, must be
/// mounted before a scheduled backup writes into it).
pub fn render_backup(b: &crate::install::config::BackupSettings) -> Vec<Entry> {
    let header = "# Generated by gateway-generator from [backup] in /etc/gateway-systemd/gateway.toml.\n\
                  # Change it there and run `systemctl daemon-reload` instead of editing this file.\n";
    let mut entries = Vec::new();
    if let Some(dir) = &b.dir {
        entries.push(Entry::File {
            path: PathBuf::from(format!("gateway-backup.service.d/{DROPIN_NAME}")),
            content: format!(
                "{header}\n[Unit]\nRequiresMountsFor={}\n",
                quote(&dir.to_string_lossy())
            ),
        });
    }
    for (timer, spec) in [
        ("gateway-backup.timer", &b.schedule),
        ("gateway-drill.timer", &b.drill_schedule),
    ] {
        if let Some(spec) = spec {
            // An empty OnCalendar= first: the drop-in replaces the unit's schedule.
            entries.push(Entry::File {
                path: PathBuf::from(format!("{timer}.d/{DROPIN_NAME}")),
                content: format!(
                    "{header}\n[Timer]\nOnCalendar=\nOnCalendar={}\n",
                    spec.trim()
                ),
            });
        }
    }
    entries
}

/// The unit that finishes the job once the installation is mounted: written when topology.json
/// was not there when the generator ran (an install dir on its own filesystem is mounted after
/// generators run at boot). It waits for the mount, reloads systemd (so this generator runs
/// again and finds the instances) and starts gateway.target again, which then starts the
/// autostart instances the first run could not know.
pub const REGENERATE_UNIT: &str = "gateway-regenerate.service";

/// [`REGENERATE_UNIT`] and its `gateway.target.wants/` link, for an installation at `install_dir`.
pub fn render_regenerate(install_dir: &Path) -> Vec<Entry> {
    let dir = install_dir.to_string_lossy();
    let content = format!(
        "# Generated by gateway-generator: {topology} was not there when it ran (an installation\n\
         # on a filesystem mounted later). Once {shown} is mounted, reload so that the generator\n\
         # sees the instances, then start gateway.target again for its autostart instances.\n\
         [Unit]\n\
         Description=API Gateway units of {shown_plain}, once it is mounted\n\
         Documentation=https://github.com/gateway-systemd/gateway-systemd\n\
         RequiresMountsFor={shown}\n\
         # No installation there even once mounted: nothing to reload for.\n\
         ConditionPathExists={topology_path}\n\
         Before=gateway.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         # Active until the next boot: the reload may regenerate this unit, which must not run again.\n\
         RemainAfterExit=yes\n\
         # One command: the reload removes this unit's file once the instances are found, and\n\
         # systemd runs no further ExecStart= of a unit whose file changed.\n\
         ExecStart=/bin/sh -c \"/usr/bin/systemctl daemon-reload && exec /usr/bin/systemctl start --no-block gateway.target\"\n",
        topology = plain(&crate::install::Installation::topology_path(install_dir).to_string_lossy()),
        shown = quote(&dir),
        topology_path = plain(&crate::install::Installation::topology_path(install_dir).to_string_lossy()),
        shown_plain = plain(&dir),
    );
    vec![
        Entry::File {
            path: PathBuf::from(REGENERATE_UNIT),
            content,
        },
        Entry::Symlink {
            path: Path::new("gateway.target.wants").join(REGENERATE_UNIT),
            target: PathBuf::from(format!("../{REGENERATE_UNIT}")),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_systemd_parsing_rules() {
        assert_eq!(quote(r#"A=b "c" \d 100%"#), r#""A=b \"c\" \\d 100%%""#);
        assert_eq!(quote("a\nb\u{1}"), r#""a\nb\x01""#);
        assert_eq!(plain("100% a\nb"), "100%% a?b");
    }
}
