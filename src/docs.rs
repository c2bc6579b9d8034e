//! Man pages and shell completions, generated from the binaries' clap definitions (clap_mangen,
//! clap_complete), and gateway.toml(5) from the package's commented default config: what the
//! packages install under /usr/share. `gateway-docs OUTDIR` writes them (the packages' build
//! runs it); nothing here is read at run time.

use clap::{Arg, ArgAction, Command, CommandFactory};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// The package's commented default `/etc/gateway-systemd/gateway.toml` (every setting, its
/// default, what it does): the source of gateway.toml(5).
pub const DEFAULT_CONFIG: &str = include_str!("../packaging/gateway.toml");

/// The overview page, gateway-systemd(7) (hand-written roff).
const OVERVIEW: &str = include_str!("../packaging/man/gateway-systemd.7");

/// The vendor-compatible `startinstance`, as its man page and completions describe it (the
/// binary parses its arguments itself: the vendor's forms include `-h DIR`).
pub fn startinstance_command() -> Command {
    Command::new("startinstance")
        .about("Start, stop or test an API Gateway instance through systemd, as the vendor's startinstance did")
        .long_about(format!(
            "{}\n\n{}",
            crate::ctl::compat::STARTINSTANCE_USAGE,
            crate::ctl::compat::STARTINSTANCE_HELP
        ))
        .disable_help_flag(true)
        .arg(Arg::new("name").short('n').value_name("NAME").help("The instance's name (with -g)"))
        .arg(Arg::new("group").short('g').value_name("GROUP").help("The instance's group (with -n)"))
        .arg(Arg::new("dir").short('h').value_name("DIR").help("Name the instance by its directory"))
        .arg(Arg::new("start").short('d').action(ArgAction::SetTrue).help("Start; return when it answers its health check"))
        .arg(Arg::new("kill").short('k').action(ArgAction::SetTrue).help("Stop (draining first); return when it has exited"))
        .arg(Arg::new("status").short('s').action(ArgAction::SetTrue).help("Exit 0 if it runs, 1 if not"))
        .arg(Arg::new("prompt").short('P').action(ArgAction::SetTrue).help("Ask for the passphrase through systemd's password agents"))
        .arg(Arg::new("define").short('D').value_name("PROP[=VALUE]").action(ArgAction::Append).help("Passed to the gateway"))
        .arg(Arg::new("boot").short('b').value_name("FILE").help("Passed to the gateway"))
        .arg(Arg::new("quiet").short('q').action(ArgAction::SetTrue).help("Passed to the gateway"))
        .arg(Arg::new("verbose").short('v').action(ArgAction::SetTrue).help("Accepted (the gateway runs in its directory)"))
        .arg(Arg::new("extra").short('e').value_name("ARGS").num_args(1..).help("The rest is passed to the gateway"))
        .arg(Arg::new("help").long("help").action(ArgAction::Help).help("Print help"))
}

/// The vendor-compatible `nodemanager`.
pub fn nodemanager_command() -> Command {
    Command::new("nodemanager")
        .about("Start, stop or test this host's Node Manager through systemd (gateway-nodemanager.service)")
        .arg(Arg::new("start").short('d').action(ArgAction::SetTrue).help("Start; return when it is ready (the default)"))
        .arg(Arg::new("kill").short('k').action(ArgAction::SetTrue).help("Stop; return when it has exited"))
        .arg(Arg::new("status").short('s').action(ArgAction::SetTrue).help("Exit 0 if it runs, 1 if not"))
}

/// `gateway-launch`, the `ExecStart=` of the units.
pub fn launch_command() -> Command {
    Command::new("gateway-launch")
        .about("Run one API Gateway instance (or the Node Manager) under systemd")
        .long_about(
            "Runs one API Gateway instance (or, with --nodemanager, the Node Manager) under systemd:\n\
             started by gateway@<group>-<instance>.service with the environment its generated drop-in sets.\n\
             Reports READY=1 once the health check answers 200, feeds the watchdog while it does,\n\
             serves the load balancer health endpoint and the control socket of `gatewayctl drain`,\n\
             forwards signals and exits as the gateway did. Not meant to be run by hand.",
        )
        .arg(Arg::new("nodemanager").long("nodemanager").action(ArgAction::SetTrue).help("Run the Node Manager (gateway-nodemanager.service)"))
        .arg(Arg::new("ask-passphrase").long("ask-passphrase").action(ArgAction::SetTrue).help("ExecStartPre=+ of a unit with ask_passphrase = true: ask systemd's password agents"))
}

/// `gateway-generator`, run by systemd at boot and on every `daemon-reload`.
pub fn generator_command() -> Command {
    Command::new("gateway-generator")
        .about("systemd generator: units for this host's API Gateway instances")
        .long_about(
            "Run by systemd at boot and at every `systemctl daemon-reload` (see systemd.generator(7)).\n\
             Reads the installation (groups/topology.json, instance directories) and\n\
             /etc/gateway-systemd/gateway.toml, and writes into NORMAL_DIR a drop-in for each instance of\n\
             this host (gateway@<group>-<instance>.service.d/50-generated.conf), gateway.target.wants/\n\
             links of the autostart instances, masks of the legacy /etc/init.d/vshell-* units it replaces,\n\
             and the backup timers' drop-ins of [backup]. It never fails a boot: a bad entry is logged to\n\
             the kernel log and skipped, the rest generated.",
        )
        .arg(Arg::new("normal").value_name("NORMAL_DIR").help("Where units and drop-ins are written"))
        .arg(Arg::new("early").value_name("EARLY_DIR").help("Unused"))
        .arg(Arg::new("late").value_name("LATE_DIR").help("Unused"))
}

/// Every installed binary's definition, with its man section and whether an operator types
/// it (and so gets shell completions): systemd runs the launcher and the generator.
pub fn commands() -> Vec<(Command, &'static str, bool)> {
    vec![
        (crate::ctl::Cli::command().name("gatewayctl"), "8", true),
        (startinstance_command(), "8", true),
        (nodemanager_command(), "8", true),
        (launch_command(), "8", false),
        (generator_command(), "8", false),
    ]
}

/// The gateway.toml(5) page, from [`DEFAULT_CONFIG`]: each `#key = default` line with the
/// comment lines above it.
pub fn config_page() -> String {
    let mut out = String::new();
    out.push_str(".TH GATEWAY.TOML 5 \"\" \"gateway-systemd\" \"File Formats\"\n");
    out.push_str(".SH NAME\ngateway.toml \\- configuration of gateway-systemd\n");
    out.push_str(".SH SYNOPSIS\n/etc/gateway-systemd/gateway.toml, /etc/gateway-systemd/gateway.toml.d/*.toml, /etc/gateway-systemd/autostart.toml\n");
    out.push_str(".SH DESCRIPTION\n");
    let mut head = true;
    let mut pending: Vec<String> = Vec::new();
    for line in DEFAULT_CONFIG.lines() {
        let setting = line
            .strip_prefix('#')
            .filter(|r| r.starts_with(|c: char| c.is_ascii_lowercase()))
            .or_else(|| {
                line.starts_with(|c: char| c.is_ascii_lowercase())
                    .then_some(line)
            });
        if let Some(table) = line.trim_start_matches('#').strip_prefix('[') {
            head = false;
            pending.clear();
            let _ = writeln!(out, ".SS [{}", roff(table));
            continue;
        }
        match (setting, line.strip_prefix('#')) {
            (Some(s), _) => {
                head = false;
                let (key, value) = s.split_once('=').unwrap_or((s, ""));
                let _ = writeln!(
                    out,
                    ".TP\n\\fB{}\\fR = {}\n{}",
                    roff(key.trim()),
                    roff(value.trim()),
                    roff(&pending.join(" "))
                );
                pending.clear();
            }
            (None, Some(text)) => {
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                if head {
                    let _ = writeln!(out, "{}", roff(text));
                } else {
                    pending.push(text.to_string());
                }
            }
            (None, None) => {
                if head {
                    // The file's own introduction ends at its first blank line.
                    head = false;
                    out.push_str(".SH SETTINGS\n");
                }
                if !pending.is_empty() {
                    let _ = writeln!(out, ".PP\n{}", roff(&pending.join(" ")));
                    pending.clear();
                }
            }
        }
    }
    out.push_str(".SH SEE ALSO\n\\fBgateway-systemd\\fR(7), \\fBgatewayctl\\fR(8), \\fBsystemd.time\\fR(7)\n");
    out
}

/// Escape text for roff: backslashes, and a leading dot or quote.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    match t.starts_with(['.', '\'']) {
        true => format!("\\&{t}"),
        false => t,
    }
}

/// The shells completions are written for, with where each package puts them (under /usr).
pub const SHELLS: [(clap_complete::Shell, &str); 3] = [
    (
        clap_complete::Shell::Bash,
        "share/bash-completion/completions/{}",
    ),
    (
        clap_complete::Shell::Zsh,
        "share/zsh/vendor-completions/_{}",
    ),
    (
        clap_complete::Shell::Fish,
        "share/fish/vendor_completions.d/{}.fish",
    ),
];

/// Write every man page (`man/NAME.SECTION`, gatewayctl's subcommands as `gatewayctl-SUB.8`)
/// and completion (`completions/...` as [`SHELLS`] place them) under `out`; returns the files.
pub fn generate(out: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut put = |rel: String, bytes: Vec<u8>| -> io::Result<()> {
        let path = out.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)?;
        written.push(path);
        Ok(())
    };
    for (cmd, section, typed) in commands() {
        let name = cmd.get_name().to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .section(section)
            .source("gateway-systemd")
            .manual("API Gateway under systemd")
            .render(&mut page)?;
        put(format!("man/{name}.{section}"), page)?;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            // clap names are 'static; a one-shot tool can leak a few.
            let sub_name: &'static str =
                Box::leak(format!("{name}-{}", sub.get_name()).into_boxed_str());
            let mut page = Vec::new();
            clap_mangen::Man::new(sub.clone().name(sub_name))
                .section(section)
                .source("gateway-systemd")
                .manual("API Gateway under systemd")
                .render(&mut page)?;
            put(format!("man/{sub_name}.{section}"), page)?;
        }
        for (shell, place) in SHELLS.iter().filter(|_| typed) {
            let mut cmd = cmd.clone();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, name.clone(), &mut script);
            put(
                format!("completions/{}", place.replace("{}", &name)),
                script,
            )?;
        }
    }
    put("man/gateway.toml.5".into(), config_page().into_bytes())?;
    put("man/gateway-systemd.7".into(), OVERVIEW.as_bytes().to_vec())?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_definition_is_consistent() {
        for (cmd, _, _) in commands() {
            cmd.debug_assert();
        }
    }

    #[test]
    fn the_config_page_names_every_setting() {
        let page = config_page();
        for key in crate::install::SettingsPatch::FIELDS {
            let shown = format!("\\fB{}\\fR", key.replace('-', "\\-"));
            assert!(page.contains(&shown), "{key} is not in gateway.toml(5)");
        }
        for key in ["keep_daily", "recipients", "schedule", "hook_timeout"] {
            assert!(page.contains(&format!("\\fB{key}\\fR")), "{key}");
        }
    }

    /// The version the packages say (debian/changelog, rpm/gateway-systemd.spec) is the
    /// crate's: a release bumps all three.
    #[test]
    fn the_packages_carry_the_crate_version() {
        let crate_version = env!("CARGO_PKG_VERSION");
        let changelog = include_str!("../debian/changelog");
        let deb = changelog
            .lines()
            .next()
            .and_then(|l| l.split(['(', ')']).nth(1))
            .expect("debian/changelog's first line names a version");
        assert_eq!(deb, crate_version, "debian/changelog");
        let spec = include_str!("../rpm/gateway-systemd.spec");
        let rpm = spec
            .lines()
            .find_map(|l| l.strip_prefix("%{!?gw_version: %global gw_version "))
            .and_then(|v| v.strip_suffix('}'))
            .expect("the spec's default gw_version");
        assert_eq!(rpm, crate_version, "rpm/gateway-systemd.spec");
        assert!(
            spec.contains(&format!("> - {crate_version}-1")),
            "the spec's %changelog has no entry for {crate_version}"
        );
    }

    /// needrestart (perl, as it reads its conf.d) leaves every instance to the rolling
    /// restart, and nothing else.
    #[test]
    fn needrestart_does_not_restart_the_instances() {
        let conf = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/packaging/needrestart/gateway-systemd.conf"
        );
        let script = r#"
            our %nrconf;
            defined(do $ARGV[0]) or die "$ARGV[0]: " . ($@ || $!);
            for my $unit (@ARGV[1..$#ARGV]) {
                my @hits = grep { $unit =~ $_ } keys %{$nrconf{override_rc}};
                my $off = @hits && !grep { $nrconf{override_rc}{$_} } @hits;
                print "$unit ", ($off ? "left" : "restarted"), "
";
            }
        "#;
        let out = std::process::Command::new("perl")
            .args(["-e", script, conf])
            .args([
                "gateway@group1-server1.service",
                r"gateway@payments\x2deu-edge\x20node\x201.service",
                "gateway-nodemanager.service",
                "ssh.service",
            ])
            .output()
            .expect("perl runs");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "gateway@group1-server1.service left\n\
             gateway@payments\\x2deu-edge\\x20node\\x201.service left\n\
             gateway-nodemanager.service restarted\n\
             ssh.service restarted\n"
        );
    }
}
