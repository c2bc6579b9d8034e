//! `startinstance` and `nodemanager`: the vendor's command lines, mapped onto units so that
//! scripts and habits keep working.
//!
//! | option | what it does here |
//! |---|---|
//! | (none) | lists this host's instances; starts the only one if there is exactly one |
//! | `-n NAME -g GROUP`, `DIR`, `-h DIR` | names the instance (any order, quoted or not) |
//! | `-d` | starts the unit and returns when the gateway is ready (health check 200) |
//! | no `-d` | the same: the gateway runs under systemd; `gatewayctl logs -f` follows it |
//! | `-k` | stops the unit (draining first) and returns when the gateway has exited |
//! | `-s` | exit 0 if the unit is active, 1 otherwise |
//! | `-D prop[=value]`, `-b FILE`, `-q`, args after `-e` | passed to the gateway's command line, through a runtime drop-in (`GATEWAY_EXTRA_ARGS`, until reboot or the next start without them) |
//! | `-P` | asks for the passphrase through systemd's password agents (runtime drop-in) |
//! | `-v` | accepted; the gateway always runs in its instance directory |

use crate::install::{self, Installation, Instance, Root};
use crate::launch::config::EXTRA_ARGS_VAR;
use crate::systemd::{Systemd, Verb};
use crate::units::{self, name};
use std::path::{Path, PathBuf};

/// What `startinstance` was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Start (with or without -d).
    #[default]
    Start,
    /// -k.
    Kill,
    /// -s.
    Status,
}

/// A parsed `startinstance` command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartInstance {
    /// -n.
    pub name: Option<String>,
    /// -g.
    pub group: Option<String>,
    /// -h or the directory-location form.
    pub dir: Option<String>,
    /// Start, kill or status.
    pub action: Action,
    /// -P.
    pub prompt: bool,
    /// Arguments for the gateway itself (-D, -b, -q, after -e).
    pub gateway_args: Vec<String>,
}

/// The usage line, as the vendor prints it.
pub const STARTINSTANCE_USAGE: &str =
    "usage: startinstance [[-n instance-name -g group-name [instance-args]] | [directory-location [instance-args]]]";

/// What `startinstance --help` says after its usage line.
pub const STARTINSTANCE_HELP: &str = "\
Starts, stops or tests an API Gateway instance of this host, through systemd
(gateway@<group>-<instance>.service), the way the vendor's startinstance did.

  startinstance                      list the instances of this host (start the only one)
  startinstance -n NAME -g GROUP -d  start; returns when the instance answers its health check
  startinstance -n NAME -g GROUP -k  stop (drains first); returns when it has exited
  startinstance -n NAME -g GROUP -s  exit 0 if running, 1 if not
  startinstance DIR|-h DIR ...       name the instance by its directory

  -D prop[=value], -b FILE, -q and arguments after -e are passed to the gateway (a runtime
  drop-in, kept until reboot or the next start without them); -P asks for the passphrase
  through systemd's password agents; -v is accepted (the gateway runs in its directory).
  Everything else: gatewayctl --help.";

/// Parse `startinstance` arguments.
pub fn parse_startinstance(args: &[String]) -> Result<StartInstance, String> {
    let mut s = StartInstance::default();
    let mut i = 0;
    let value = |i: usize, opt: &str| -> Result<String, String> {
        args.get(i + 1)
            .cloned()
            .ok_or_else(|| format!("option {opt} needs a value\n{STARTINSTANCE_USAGE}"))
    };
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "-n" => (s.name, i) = (Some(value(i, a)?), i + 1),
            "-g" => (s.group, i) = (Some(value(i, a)?), i + 1),
            "-h" => (s.dir, i) = (Some(value(i, a)?), i + 1),
            "-b" => {
                s.gateway_args.extend(["-b".to_string(), value(i, a)?]);
                i += 1;
            }
            "-D" => {
                s.gateway_args.extend(["-D".to_string(), value(i, a)?]);
                i += 1;
            }
            "-d" => {
                s.action = if s.action == Action::Start {
                    Action::Start
                } else {
                    s.action
                }
            }
            "-k" => s.action = Action::Kill,
            "-s" => s.action = Action::Status,
            "-q" => s.gateway_args.push("-q".into()),
            "-P" => s.prompt = true,
            "-v" => {}
            "-e" => {
                s.gateway_args.extend(args[i + 1..].iter().cloned());
                break;
            }
            _ if a.starts_with("-D") && a.len() > 2 => s
                .gateway_args
                .extend(["-D".to_string(), a[2..].to_string()]),
            _ if a.starts_with("-n") && a.len() > 2 => s.name = Some(a[2..].to_string()),
            _ if a.starts_with("-g") && a.len() > 2 => s.group = Some(a[2..].to_string()),
            _ if !a.starts_with('-')
                && s.dir.is_none()
                && s.name.is_none()
                && s.group.is_none() =>
            {
                s.dir = Some(a.to_string())
            }
            _ => return Err(format!("unknown option {a:?}\n{STARTINSTANCE_USAGE}")),
        }
        i += 1;
    }
    if s.name.is_some() != s.group.is_some() {
        return Err(format!("-n and -g go together\n{STARTINSTANCE_USAGE}"));
    }
    Ok(s)
}

fn find_instance<'a>(inst: &'a Installation, s: &StartInstance) -> Result<&'a Instance, String> {
    if let Some(dir) = &s.dir {
        let dir = Path::new(dir.trim_end_matches('/'));
        return inst.instances.iter().find(|i| i.dir == dir).ok_or_else(|| {
            format!(
                "{}: not the directory of an instance of this host; `startinstance` lists them",
                dir.display()
            )
        });
    }
    let (Some(n), Some(g)) = (&s.name, &s.group) else {
        unreachable!("checked by the caller")
    };
    inst.instances
        .iter()
        .find(|i| &i.name == n && &i.group.name == g)
        .ok_or_else(|| {
            format!("no instance {n:?} in group {g:?} on this host; `startinstance` lists them")
        })
}

/// Directory of runtime drop-ins (gone at reboot).
const RUNTIME_UNIT_DIR: &str = "/run/systemd/system";
const RUNTIME_DROPIN: &str = "60-startinstance.conf";

/// The runtime drop-in for the options that reach the gateway, or None when there are none.
pub fn runtime_dropin(
    gateway_args: &[String],
    prompt: bool,
    start_timeout: install::TimeSpan,
) -> Option<String> {
    if gateway_args.is_empty() && !prompt {
        return None;
    }
    let mut c = String::from("# Written by startinstance for this boot only; the next start without options removes it.\n[Service]\n");
    if !gateway_args.is_empty() {
        let json = serde_json::to_string(gateway_args).unwrap_or_default();
        c.push_str(&format!(
            "Environment={}\n",
            units::quote(&format!("{EXTRA_ARGS_VAR}={json}"))
        ));
    }
    if prompt {
        c.push_str("Environment=GATEWAY_ASK_PASSPHRASE=1\n");
        c.push_str("ExecStartPre=+/usr/libexec/gateway-systemd/gateway-launch --ask-passphrase\n");
        c.push_str(&format!("TimeoutStartSec={start_timeout}\n"));
    }
    Some(c)
}

/// Whether a unit's runtime drop-in says something else than `content` (None: no drop-in).
fn dropin_differs(unit: &str, content: Option<&str>) -> bool {
    let path = PathBuf::from(RUNTIME_UNIT_DIR)
        .join(format!("{unit}.d"))
        .join(RUNTIME_DROPIN);
    std::fs::read_to_string(path).ok().as_deref() != content
}

/// Write (or remove) a unit's runtime drop-in atomically; true when anything changed.
fn apply_dropin(unit: &str, content: Option<&str>) -> std::io::Result<bool> {
    let dir = PathBuf::from(RUNTIME_UNIT_DIR).join(format!("{unit}.d"));
    let path = dir.join(RUNTIME_DROPIN);
    if !dropin_differs(unit, content) {
        return Ok(false);
    }
    match content {
        None => std::fs::remove_file(&path)?,
        Some(text) => {
            std::fs::create_dir_all(&dir)?;
            crate::install::write_atomic(&path, text.as_bytes(), 0o644)?;
        }
    }
    Ok(true)
}

fn list(inst: &Installation) {
    println!("{STARTINSTANCE_USAGE}\n");
    println!(
        "The API Gateway instances listed below are available to run on this machine as follows:\n"
    );
    for i in &inst.instances {
        println!("startinstance -n \"{}\" -g \"{}\"", i.name, i.group.name);
    }
}

/// Run a job on a unit, saying what happened in the vendor's spirit; returns the exit status.
fn job(systemd: &Systemd, verb: Verb, unit: &str, shown: &str, quiet: bool) -> i32 {
    match super::run_job_reported(systemd, verb, unit) {
        Ok(()) => {
            if !quiet {
                match verb {
                    Verb::Start => println!("{shown} is running (ready); `gatewayctl logs -f {shown}` follows its output"),
                    _ => println!("{shown} has stopped"),
                }
            }
            0
        }
        Err(code) => code,
    }
}

/// `startinstance`; returns the exit status.
pub fn startinstance_main(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "--help") {
        println!("{STARTINSTANCE_USAGE}\n\n{STARTINSTANCE_HELP}");
        return 0;
    }
    let parsed = match parse_startinstance(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let (inst, _) = install::load(&Root::new("/"));
    let instance = if parsed.name.is_none() && parsed.dir.is_none() {
        match inst.instances.as_slice() {
            [only] => only,
            _ => {
                list(&inst);
                return 0;
            }
        }
    } else {
        match find_instance(&inst, &parsed) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("{e}");
                return if parsed.action == Action::Status {
                    1
                } else {
                    5
                };
            }
        }
    };
    let unit = instance.unit();
    let shown = format!("{}/{}", instance.group.name, instance.name);
    let systemd = match Systemd::system() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let quiet = parsed.gateway_args.iter().any(|a| a == "-q");
    match parsed.action {
        Action::Status => match systemd.status(&unit) {
            Ok(s) if s.active_state == "active" => 0,
            Ok(_) => 1,
            Err(e) => {
                eprintln!("{shown}: {e}");
                1
            }
        },
        Action::Kill => job(&systemd, Verb::Stop, &unit, &shown, quiet),
        Action::Start => {
            let dropin = runtime_dropin(
                &parsed.gateway_args,
                parsed.prompt,
                instance.settings.start_timeout,
            );
            // A running gateway keeps the command line it started with: starting it again
            // cannot apply other options, and writing them now would apply them silently at
            // some later restart.
            let running = systemd.status(&unit).is_ok_and(|s| {
                matches!(
                    s.active_state.as_str(),
                    "active" | "activating" | "reloading"
                )
            });
            if running && dropin_differs(&unit, dropin.as_deref()) {
                eprintln!(
                    "{shown} is already running, with other options than these; nothing was changed. \
                     To run it with them, stop it first (startinstance -n \"{}\" -g \"{}\" -k, which drains it), then start it again with them",
                    instance.name, instance.group.name
                );
                return 1;
            }
            match apply_dropin(&unit, dropin.as_deref()) {
                Ok(true) => {
                    if let Err(e) = systemd.reload() {
                        eprintln!("{shown}: {e}");
                        return 1;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    eprintln!("{shown}: cannot write the runtime drop-in under {RUNTIME_UNIT_DIR}: {e} (run as root)");
                    return 4;
                }
            }
            job(&systemd, Verb::Start, &unit, &shown, quiet)
        }
    }
}

/// `nodemanager [-d|-k|-s]`; returns the exit status.
pub fn nodemanager_main(args: &[String]) -> i32 {
    let mut action = Action::Start;
    for a in args {
        match a.as_str() {
            "-d" | "-v" | "-q" => {}
            "-k" => action = Action::Kill,
            "-s" => action = Action::Status,
            "--help" => {
                println!(
                    "usage: nodemanager [-d | -k | -s]\n\n\
                     Starts (returns when ready), stops (-k, returns when exited) or tests (-s: exit 0 if running)\n\
                     this host's Node Manager through systemd ({}).",
                    name::NODE_MANAGER_UNIT
                );
                return 0;
            }
            other => {
                eprintln!(
                    "nodemanager: unknown option {other:?}; usage: nodemanager [-d | -k | -s]"
                );
                return 2;
            }
        }
    }
    let systemd = match Systemd::system() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let unit = name::NODE_MANAGER_UNIT;
    match action {
        Action::Status => match systemd.status(unit) {
            Ok(s) if s.active_state == "active" => 0,
            _ => 1,
        },
        Action::Kill => job(&systemd, Verb::Stop, unit, "Node Manager", false),
        Action::Start => job(&systemd, Verb::Start, unit, "Node Manager", false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<StartInstance, String> {
        parse_startinstance(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_in_any_order() {
        let s = parse(&["-g", "payments-eu", "-k", "-n", "edge node 1"]).unwrap();
        assert_eq!(
            (s.name.as_deref(), s.group.as_deref(), s.action),
            (Some("edge node 1"), Some("payments-eu"), Action::Kill)
        );
        let s = parse(&["/opt/apigateway/groups/group-2/instance-1", "-s"]).unwrap();
        assert_eq!(
            (s.dir.as_deref(), s.action),
            (
                Some("/opt/apigateway/groups/group-2/instance-1"),
                Action::Status
            )
        );
        let s = parse(&[
            "-n",
            "s1",
            "-g",
            "g1",
            "-d",
            "-Dfoo=bar",
            "-D",
            "x",
            "-q",
            "-b",
            "/tmp/trace",
            "-e",
            "--raw",
            "-k",
        ])
        .unwrap();
        assert_eq!(s.action, Action::Start);
        assert_eq!(
            s.gateway_args,
            [
                "-D",
                "foo=bar",
                "-D",
                "x",
                "-q",
                "-b",
                "/tmp/trace",
                "--raw",
                "-k"
            ]
        );
        assert!(parse(&["-n", "only-name"]).is_err());
        assert!(parse(&["-x"]).is_err());
        assert!(parse(&["-n"]).is_err());
    }

    #[test]
    fn runtime_dropin_only_when_needed() {
        assert_eq!(
            runtime_dropin(&[], false, install::TimeSpan::secs(300)),
            None
        );
        let d = runtime_dropin(
            &["-D".into(), "a=b c".into()],
            true,
            install::TimeSpan::secs(300),
        )
        .unwrap();
        assert!(
            d.contains(r#"Environment="GATEWAY_EXTRA_ARGS=[\"-D\",\"a=b c\"]""#),
            "{d}"
        );
        assert!(d.contains(
            "ExecStartPre=+/usr/libexec/gateway-systemd/gateway-launch --ask-passphrase"
        ));
    }
}
