//! `gatewayctl`: the operator's command line. It drives systemd over D-Bus (see
//! [`crate::systemd`]) and names instances the way operators do: `group/instance`.

mod backup;
pub mod compat;
pub mod migrate;

use crate::drain::{self, DrainError, DrainOutcome};
use crate::install::{self, Installation, Instance, Root};
use crate::systemd::{Systemd, SystemdError, UnitStatus, Verb};
use crate::units::name;
use clap::{Parser, Subcommand};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Control the API Gateway instances of this host through systemd.
#[derive(Debug, Parser)]
#[command(
    name = "gatewayctl",
    version,
    about,
    long_about = None,
    after_help = "INSTANCE is group/instance as the topology names it (\"payments-eu/edge node 1\"), the unit's\n\
instance string (group1-server1) or the unit name (gateway@group1-server1.service).\n\n\
With -H, status, start, stop, restart, rolling-restart and nodemanager run on another\n\
host through ssh and systemd-stdio-bridge there, as `systemctl -H` does; instances are then named by\n\
group/instance or unit alone (that host's topology is not read here).\n\n\
Exit status (LSB): 0 done, 1 a job failed, 2 usage, 4 not allowed (run as root), 5 no such instance."
)]
pub struct Cli {
    /// Operate on another host: [user@]host[:port], through ssh (like systemctl -H).
    #[arg(
        short = 'H',
        long = "host",
        global = true,
        value_name = "[USER@]HOST[:PORT]"
    )]
    pub host: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// gatewayctl's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the instances of this host (from topology.json) with their units and states.
    List,
    /// Show the state of instances (all when none are named).
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Instances.
        instances: Vec<String>,
    },
    /// Start instances; returns once each is ready (its health check answers 200).
    Start {
        /// Instances.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Stop instances; each drains first (its load balancers take it out, requests in flight
    /// finish), and the real drain time is shown.
    Stop {
        /// Instances.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Restart instances (drain, stop, start, ready), one after the other without waiting for
    /// the load balancers in between; see rolling-restart.
    Restart {
        /// Instances.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Restart one instance at a time: drain, restart, wait until ready and serving, then the
    /// next. Stops at the first failure and says where.
    RollingRestart {
        /// Count an instance as back once it serves, without waiting for the load balancers
        /// that polled it to take it back (needed with -H, where their records are out of reach).
        #[arg(long)]
        no_lb_wait: bool,
        /// Print per-instance times (drain, restart, serving, back in the pool) as JSON on
        /// stdout; progress goes to stderr.
        #[arg(long)]
        json: bool,
        /// Every instance that runs now (what a package upgrade restarts), instead of targets.
        #[arg(long, conflicts_with = "targets")]
        running: bool,
        /// Groups (every local instance of the group) or instances.
        #[arg(required_unless_present = "running")]
        targets: Vec<String>,
    },
    /// Start instances with gateway.target (at boot) from now on, whatever the config says
    /// (recorded in /etc/gateway-systemd/autostart.toml; survives reloads and reboots).
    Enable {
        /// Instances.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// No longer start instances with gateway.target (at boot), whatever made them autostart:
    /// the config, or a `systemctl enable` link. Running instances keep running.
    Disable {
        /// Instances.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Show an instance's journal (the launcher's entries and the gateway's own output).
    Logs {
        /// Follow new entries.
        #[arg(short, long)]
        follow: bool,
        /// How many lines.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: u32,
        /// The instance.
        instance: String,
    },
    /// Take an instance out of its load balancers' pool: its LB health endpoint answers 503
    /// while it keeps serving, until its balancers took it out (adaptive; at most the drain
    /// delay) and no request is in flight (at most drain_timeout). `ExecStop=` runs
    /// `gatewayctl drain --wait %i`, so every stop, restart and shutdown drains first.
    Drain {
        /// Return only when the drain is over, and say how long it took (what ExecStop= needs).
        #[arg(long)]
        wait: bool,
        /// The instance.
        instance: String,
    },
    /// Check the config as the generator reads it (like `nginx -t`): every problem with its
    /// file and line, then each instance's resolved settings and where each came from. Exit 1
    /// on any error.
    CheckConfig,
    /// Start, stop or show the Node Manager.
    Nodemanager {
        /// start, stop or status.
        #[arg(value_parser = ["start", "stop", "status"])]
        action: String,
    },
    /// Write one verified archive of the installation and our state (see --help).
    #[command(
        long_about = "Write one archive of the installation and of gateway-systemd's state: a standard\n\
tar (pax) compressed with zstd, paths relative to /, so that in an emergency\n\
`tar --zstd -C / -xpf ARCHIVE` restores it without this tool.\n\n\
It takes <install>/groups, <install>/conf (never conf/opsdb.d), system/conf/nodemanager.xml,\n\
ext/ (with --full also platform/), this host's /etc/init.d/vshell-* scripts, /etc/gateway-systemd,\n\
migrate-initd's backups, gateway.target's wants, our units' drop-ins and the masks of legacy\n\
units, and [backup] extra_roots. Symbolic links are taken as links, never followed; sockets,\n\
devices and fifos are skipped and listed. A file that changes while it is read is read again\n\
(files up to 64 MiB) or listed as changed.\n\n\
The archive's first member is var/lib/gateway-systemd/MANIFEST (every entry with type, mode,\n\
owner id and name, size, mtime, sha256, link target); ARCHIVE.sha256 beside it holds the\n\
archive's sha256 (`sha256sum -c` checks it). Both are written atomically, mode 0600, to [backup] dir in\n\
/etc/gateway-systemd/gateway.toml (default /var/lib/gateway-systemd/backups) or --to DIR, named\n\
<host>-<UTC time>.tar.zst.\n\n\
[backup] before, after and on_error are shell commands run around it (clean environment,\n\
hook_timeout each): what before hooks write into $BACKUP_HOOK_DIR\n\
(/var/lib/gateway-systemd/backup-hooks) is taken too (a database dump); a failing before hook\n\
fails the backup, nothing written. after hooks get $BACKUP_ARCHIVE (an off-site copy).\n\n\
With [backup] recipients (age public keys) the archive is <host>-<UTC time>.tar.zst.age,\n\
encrypted before it reaches the destination; `age -d -i KEY ARCHIVE | zstd -d | tar -x`\n\
restores it, and verify, restore and drill take --identity FILE.\n\n\
Exit status: 0 written, 1 failed."
    )]
    #[command(args_conflicts_with_subcommands = true)]
    Backup {
        /// Prune old archives instead of writing one.
        #[command(subcommand)]
        action: Option<BackupAction>,
        /// Take platform/ too (before a service pack or an update).
        #[arg(long)]
        full: bool,
        /// Keep no new archive when nothing changed since the newest one (same entries, same
        /// content): frequent schedules without a pile of copies.
        #[arg(long)]
        if_changed: bool,
        /// Once the archive is written and verified, delete what the [backup] keep_* settings
        /// do not keep (see `gatewayctl backup prune --help`).
        #[arg(long)]
        prune: bool,
        /// A cold copy of each instance's directory: drain and stop it, copy it, start it and
        /// wait until its balancers took it back, one at a time (never a group out at once:
        /// the only running instance of a group is copied while it serves, and said so).
        #[arg(long)]
        quiesce: bool,
        /// Write to DIR instead of [backup] dir.
        #[arg(long, value_name = "DIR")]
        to: Option<std::path::PathBuf>,
        /// Print a JSON summary (files, bytes, ratio, seconds, archive, sha256) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check an archive: every entry against its manifest, the whole file against ARCHIVE.sha256.
    #[command(
        long_about = "Check an archive written by `gatewayctl backup`: decompress everything, hash every file\n\
against the manifest, check the whole file against ARCHIVE.sha256 beside it, and report every\n\
difference by path (missing, extra, changed, wrong type, mode, owner or time).\n\n\
An encrypted archive (.tar.zst.age) is read with --identity FILE (age-keygen's file).\n\n\
Exit status: 0 intact, 65 damaged (the differences are listed), 66 cannot be read (missing\n\
file or ARCHIVE.sha256, no permission, an encrypted archive without its identity)."
    )]
    Verify {
        /// The archive (.tar.zst, or .tar.zst.age with --identity).
        archive: std::path::PathBuf,
        /// The age identity file (as age-keygen writes it) that decrypts an encrypted archive
        /// (.tar.zst.age); keys are read from files only, never from the command line.
        #[arg(long, value_name = "FILE")]
        identity: Option<std::path::PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore an archive: checked before anything is written, swapped into place atomically.
    #[command(
        long_about = "Restore an archive written by `gatewayctl backup` onto this host (or --target DIR).\n\n\
Nothing is written until every entry of the manifest passes:\n\
plain relative paths inside the archive's scopes, each once, under directories the archive\n\
lists, links that do not climb out of the target; hardlinks, devices, fifos and anything the\n\
manifest does not list are refused, naming the entry. Each scope is then extracted into a\n\
staging directory beside it (0700), every file's sha256 checked on the way and the whole\n\
archive against ARCHIVE.sha256 at the end; any difference removes them and changes nothing. Then the gateways are stopped (drained), an intent record is\n\
written, each scope is swapped into place (renameat2 RENAME_EXCHANGE; conf/opsdb.d is carried\n\
over; the previous tree stays beside it as the rollback copy), systemd reloads and\n\
gateway.target starts what the restored state enables.\n\n\
Killed at any point, `gatewayctl restore --recover` finishes it (or, interrupted while\n\
extracting, removes what was staged); until then the generator starts no instance.\n\
`gatewayctl restore --rollback` puts the previous trees back.\n\n\
Owners are mapped by user and group name (the target's /etc/passwd and /etc/group), falling\n\
back to the archived ids with a warning; --numeric-ids keeps the ids. Set-id bits are kept only\n\
where the owner is the archived one. Modes and mtimes are exact.\n\n\
On a cold standby with its own host name, --as-host NAME (the production host it stands in for)\n\
writes /etc/gateway-systemd/gateway.toml.d/95-restored-host.toml so that the generator produces\n\
that host's instances. Without it, restoring onto a host of another name is refused.\n\n\
Exit status: 0 restored, 1 failed (nothing changed unless it says so), 65 the archive is\n\
damaged or refused, 66 it cannot be read."
    )]
    Restore {
        /// The archive (.tar.zst); not with --recover or --rollback.
        #[arg(required_unless_present_any = ["recover", "rollback"], conflicts_with_all = ["recover", "rollback"])]
        archive: Option<std::path::PathBuf>,
        /// Restore under DIR instead of / (a standby's or a drill's root); systemd is left alone.
        #[arg(long, value_name = "DIR")]
        target: Option<std::path::PathBuf>,
        /// Check everything (every byte), print what would be replaced, change nothing.
        #[arg(long, conflicts_with_all = ["recover", "rollback"])]
        dry_run: bool,
        /// Owners by the archived ids, never by name.
        #[arg(long)]
        numeric_ids: bool,
        /// Stand in for this production host (a cold standby with another name).
        #[arg(long, value_name = "HOST")]
        as_host: Option<String>,
        /// Finish (or undo) a restore that was interrupted.
        #[arg(long, conflicts_with = "rollback")]
        recover: bool,
        /// Put back what the last restore replaced.
        #[arg(long)]
        rollback: bool,
        /// The age identity file (as age-keygen writes it) that decrypts an encrypted archive
        /// (.tar.zst.age); keys are read from files only, never from the command line.
        #[arg(long, value_name = "FILE")]
        identity: Option<std::path::PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rehearse a disaster recovery: restore an archive into a scratch root, boot it, start
    /// its instances, measure recovery time and point (see --help). The host is not touched.
    #[command(
        long_about = "Rehearse a disaster recovery and measure it, without touching this host.\n\n\
The archive (default: the newest of this host in [backup] dir, or --dir) is verified, restored\n\
into a scratch root under /var/tmp (an overlay of --image, default / : this host's system and\n\
vendor software, with the archive's scopes in place of the host's own) as a standby of the\n\
archived host, booted under a throwaway systemd in a container on a private network; gateway.target\n\
starts every instance the archive enables; each must become ready and its LB endpoint answer 200.\n\
Then everything is torn down (also when interrupted).\n\n\
Recovery time (RTO): seconds from the drill's start to every instance serving, per phase\n\
(verify, extract, boot, start, healthy) and per instance. Recovery point (RPO): when the archive\n\
was taken and its age, its newest file, the largest gap between consecutive archives of the host\n\
(what a disaster at the worst moment would lose) and the age of the newest one.\n\n\
The outcome is also recorded in the journal (MESSAGE_ID 5f0c6a1e2b7d4c0f9a8e3d2c1b0a9f08), so\n\
scheduled drills (gateway-drill.timer) show recovery times over weeks.\n\n\
Exit status: 0 every instance recovered, 1 the drill failed (the report says where and why),\n\
66 the --identity file cannot be read."
    )]
    Drill {
        /// The archive (.tar.zst); default: the newest in the backup directory.
        archive: Option<std::path::PathBuf>,
        /// Where the archives are (default: [backup] dir).
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
        /// Whose archives, when the directory holds several hosts' (default: this host's).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// The root filesystem booted under the restored files (a standby's image).
        #[arg(long, value_name = "DIR", default_value = "/")]
        image: std::path::PathBuf,
        /// The longest boot, start and health checks may take together (e.g. 10min).
        #[arg(long, value_name = "TIME", default_value = "10min", value_parser = parse_timespan)]
        timeout: std::time::Duration,
        /// The age identity file (as age-keygen writes it) that decrypts an encrypted archive
        /// (.tar.zst.age); keys are read from files only, never from the command line.
        #[arg(long, value_name = "FILE")]
        identity: Option<std::path::PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move from the legacy /etc/init.d/vshell-* scripts to units. Without options: show how
    /// each script maps to a unit (changes nothing).
    #[command(
        name = "migrate-initd",
        long_about = "Move from the legacy /etc/init.d/vshell-* scripts to units.\n\n\
Without options, print the plan: how each script maps to an instance or the Node Manager, and\n\
what happens to its legacy unit. Nothing is changed.\n\n\
--apply first copies every mapped script exactly (content, mode, owner, times) with its rc links\n\
into /var/lib/gateway-systemd/initd-backup/<UTC time>/ (manifest.json says what was done). Then,\n\
one script at a time (the Node Manager first): stop its running legacy service and check that\n\
nothing answers on the instance's health address any more, remove the script and its rc links\n\
from /etc, mask its legacy unit, enable the new unit when the script ran at boot, reload, start\n\
the new unit where the legacy service was running, and wait until it serves and every load\n\
balancer polling its LB endpoint has taken it back (lb_rise passing checks; with none polling\n\
within 10s, once it serves). Only then the next: a group never goes out at once. A failing step\n\
gives its instance back to its script and stops there; the output names what was migrated and\n\
what still runs from its script.\n\n\
--rollback undoes every apply that moved scripts, newest first (or only the one in --from DIR),\n\
one script at a time in reverse: restore the script and its rc links exactly, unmask its legacy\n\
unit, disable what apply enabled, reload. A script that ran its instance before the apply (or\n\
was left to it by legacy_initd = true) runs it again: its unit is stopped (drained) first, and\n\
legacy_initd = true for it is added to /etc/gateway-systemd/gateway.toml.d/90-migrate-initd.toml\n\
(keeping what the file says already). A script whose instance its unit ran stays inert beside\n\
it, as before. A script changed since the apply is never overwritten: it is left as it is (and\n\
its unit running), and the rollback says so and exits 1.\n\n\
Never two copies of one instance: the old service is stopped before the new one starts, every\n\
generated unit conflicts with its legacy unit, and the launcher refuses to start while another\n\
process holds the instance's health address."
    )]
    MigrateInitd {
        /// Do the migration (default: print the plan only).
        #[arg(long, conflicts_with = "rollback")]
        apply: bool,
        /// Undo the migration: every --apply that still has scripts moved, newest first.
        #[arg(long)]
        rollback: bool,
        /// With --rollback: the backup directory to restore from.
        #[arg(long, value_name = "DIR", requires = "rollback")]
        from: Option<std::path::PathBuf>,
    },
}

/// A time span as the config writes them (`90s`, `10min`).
fn parse_timespan(text: &str) -> Result<std::time::Duration, String> {
    crate::install::timespan::TimeSpan::parse(text).map(|t| t.0)
}

/// `gatewayctl backup` subcommands.
#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// Delete the archives the [backup] keep_* settings do not keep.
    #[command(
        long_about = "Delete this host's archives that the retention settings do not keep:\n\n\
  keep_last = N      the N newest\n\
  keep_daily = N     the newest of each of the N most recent days that have one (UTC)\n\
  keep_weekly = N    the same per ISO week\n\
  keep_monthly = N   the same per month\n\n\
An archive is kept when any rule keeps it. The newest archive that verifies is never deleted,\n\
whatever the rules say; with no keep_* setting nothing is deleted. Each archive goes with its\n\
.sha256. Other hosts' archives in the directory are never touched.\n\n\
Exit status: 0 done, 1 failed."
    )]
    Prune {
        /// Show what would be kept and deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// The archive directory (default: [backup] dir).
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
        /// Whose archives (default: this host's).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// Print the decisions as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Exit statuses, as LSB init scripts use them.
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// A job failed.
    pub const FAILED: i32 = 1;
    /// Not allowed.
    pub const DENIED: i32 = 4;
    /// No such instance.
    pub const UNKNOWN: i32 = 5;
}

/// Turn what the operator typed into the unit's instance string.
pub fn instance_string(arg: &str) -> Result<String, String> {
    let arg = arg
        .strip_prefix("gateway@")
        .map(|a| a.strip_suffix(".service").unwrap_or(a))
        .unwrap_or(arg);
    if let Some((group, instance)) = arg.split_once('/') {
        return name::instance_string(group, instance).map_err(|e| format!("{arg:?}: {e}"));
    }
    name::parse_instance_string(arg)
        .map(|_| arg.to_string())
        .map_err(|_| {
            format!("{arg:?} is neither group/instance nor a unit instance like group1-server1")
        })
}

/// An instance as the operator names it, with its unit: from this host's topology, or from
/// the name alone (another host's, with -H).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// Group name.
    pub group: String,
    /// Instance name.
    pub instance: String,
    /// Its unit.
    pub unit: String,
}

impl From<&Instance> for Named {
    fn from(i: &Instance) -> Self {
        Named {
            group: i.group.name.clone(),
            instance: i.name.clone(),
            unit: i.unit(),
        }
    }
}

impl Named {
    /// Name an instance by what the operator typed alone (no topology).
    pub fn parse(arg: &str) -> Result<Named, String> {
        let s = instance_string(arg)?;
        let (group, instance) =
            name::parse_instance_string(&s).map_err(|e| format!("{arg:?}: {e}"))?;
        Ok(Named {
            group,
            instance,
            unit: name::unit_of_instance_string(&s),
        })
    }

    /// The unit's instance string (`group1-server1`).
    pub fn instance_string(&self) -> &str {
        self.unit
            .strip_prefix("gateway@")
            .and_then(|s| s.strip_suffix(".service"))
            .unwrap_or(&self.unit)
    }

    /// `group/instance`.
    pub fn shown(&self) -> String {
        format!("{}/{}", self.group, self.instance)
    }
}

/// Where the instances are: this host's topology, or another host's loaded units (-H).
enum Scope<'a> {
    Local(&'a Installation),
    Remote(&'a Systemd),
}

impl Scope<'_> {
    /// Every instance there.
    fn all(&self) -> Result<Vec<Named>, i32> {
        match self {
            Scope::Local(inst) => Ok(inst.instances.iter().map(Named::from).collect()),
            Scope::Remote(systemd) => systemd
                .gateway_units()
                .map(|units| units.iter().filter_map(|u| Named::parse(u).ok()).collect())
                .map_err(|e| {
                    eprintln!("gatewayctl: {e}");
                    denied_or_failed(&e)
                }),
        }
    }

    /// The local instance behind a name, when this host's installation is at hand.
    fn local(&self, named: &Named) -> Option<&Instance> {
        match self {
            Scope::Local(inst) => inst
                .instances
                .iter()
                .find(|i| i.instance_string == named.instance_string()),
            Scope::Remote(_) => None,
        }
    }

    /// The instances the arguments name.
    fn resolve(&self, args: &[String]) -> Result<Vec<Named>, i32> {
        args.iter()
            .map(|a| match self {
                Scope::Local(inst) => find(inst, a).map(Named::from),
                Scope::Remote(_) => Named::parse(a),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                eprintln!("gatewayctl: {e}");
                exit::UNKNOWN
            })
    }
}

/// Find the local instance an argument names.
pub fn find<'a>(inst: &'a Installation, arg: &str) -> Result<&'a Instance, String> {
    let wanted = instance_string(arg)?;
    inst.instances
        .iter()
        .find(|i| i.instance_string == wanted)
        .ok_or_else(|| {
            format!(
                "{arg}: no such instance on this host ({}); `gatewayctl list` shows them",
                inst.host
            )
        })
}

fn denied_or_failed(e: &SystemdError) -> i32 {
    match e {
        SystemdError::Denied { .. } => exit::DENIED,
        _ => exit::FAILED,
    }
}

/// Run gatewayctl; returns the exit status.
pub fn main(cli: Cli) -> i32 {
    let local_only = match &cli.command {
        Command::List => Some("list"),
        Command::Logs { .. } => Some("logs"),
        Command::Drain { .. } => Some("drain"),
        Command::CheckConfig => Some("check-config"),
        Command::MigrateInitd { .. } => Some("migrate-initd"),
        Command::Backup { .. } => Some("backup"),
        Command::Verify { .. } => Some("verify"),
        Command::Restore { .. } => Some("restore"),
        Command::Drill { .. } => Some("drill"),
        // The choice is recorded in a file of that host, which D-Bus cannot write.
        Command::Enable { .. } => Some("enable"),
        Command::Disable { .. } => Some("disable"),
        _ => None,
    };
    if let (Some(host), Some(what)) = (&cli.host, local_only) {
        eprintln!("gatewayctl: {what} works on this host only (it reads local files); run it there: ssh {host} gatewayctl {what} ...");
        return 2;
    }
    if let Command::Drain { wait, instance } = &cli.command {
        return drain_command(instance, *wait);
    }
    match &cli.command {
        Command::Backup {
            action:
                Some(BackupAction::Prune {
                    dry_run,
                    dir,
                    host,
                    json,
                }),
            ..
        } => return backup::prune_command(dir.clone(), host.clone(), *dry_run, *json),
        Command::Backup {
            action: None,
            full,
            to,
            json,
            if_changed,
            prune,
            quiesce,
        } => {
            return backup::backup_command(backup::BackupArgs {
                quiesce: *quiesce,
                full: *full,
                to: to.clone(),
                json: *json,
                if_changed: *if_changed,
                prune: *prune,
            })
        }
        Command::Verify {
            identity: Some(identity),
            ..
        }
        | Command::Restore {
            identity: Some(identity),
            ..
        }
        | Command::Drill {
            identity: Some(identity),
            ..
        } => {
            if let Err(e) = crate::backup::encryption::use_identity_file(identity) {
                eprintln!("gatewayctl: {e}");
                return backup::CANNOT_READ;
            }
        }
        _ => {}
    }
    match &cli.command {
        Command::Verify { archive, json, .. } => return backup::verify_command(archive, *json),
        Command::Drill {
            archive,
            dir,
            host,
            image,
            timeout,
            json,
            ..
        } => {
            return backup::drill_command(backup::DrillArgs {
                archive: archive.clone(),
                dir: dir.clone(),
                host: host.clone(),
                image: image.clone(),
                timeout: *timeout,
                json: *json,
            })
        }
        Command::Restore {
            archive,
            target,
            dry_run,
            numeric_ids,
            as_host,
            recover,
            rollback,
            json,
            ..
        } => {
            return backup::restore_command(backup::RestoreArgs {
                archive: archive.clone(),
                target: target.clone(),
                dry_run: *dry_run,
                numeric_ids: *numeric_ids,
                as_host: as_host.clone(),
                recover: *recover,
                rollback: *rollback,
                json: *json,
            })
        }
        _ => {}
    }
    let (inst, _problems) = install::load(&Root::new("/"));
    if let Command::Logs {
        follow,
        lines,
        instance,
    } = &cli.command
    {
        return logs(&inst, instance, *follow, *lines);
    }
    if let Command::CheckConfig = &cli.command {
        // As the generator: a copy of a host's files can be checked too.
        let root =
            std::env::var_os(crate::generator::ROOT_ENV).map_or_else(|| Root::new("/"), Root::new);
        return check_config(&root);
    }
    if let Command::List = &cli.command {
        print_list(&inst);
        return exit::OK;
    }
    if let Command::MigrateInitd {
        apply: false,
        rollback: false,
        ..
    } = &cli.command
    {
        print_migration_plan(&inst, &Root::new("/"));
        return exit::OK;
    }
    let systemd = match cli.host.as_deref() {
        Some(host) => Systemd::over_ssh(host),
        None => Systemd::system(),
    };
    let systemd = match systemd {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gatewayctl: {e}");
            return exit::FAILED;
        }
    };
    let scope = match cli.host {
        Some(_) => Scope::Remote(&systemd),
        None => Scope::Local(&inst),
    };
    let resolve = |args: &[String]| scope.resolve(args);
    let outcome = match &cli.command {
        Command::Status { json, instances } => {
            let chosen = if instances.is_empty() {
                scope.all()
            } else {
                resolve(instances)
            };
            chosen.map(|c| status(&systemd, &scope, &c, *json))
        }
        Command::Start { instances } => {
            resolve(instances).map(|c| jobs(&systemd, &scope, Verb::Start, &c))
        }
        Command::Stop { instances } => {
            resolve(instances).map(|c| jobs(&systemd, &scope, Verb::Stop, &c))
        }
        Command::Restart { instances } => {
            resolve(instances).map(|c| jobs(&systemd, &scope, Verb::Restart, &c))
        }
        Command::RollingRestart {
            targets,
            no_lb_wait,
            json,
            running,
        } => match running {
            true => scope.all().map(|all| {
                let active: Vec<Named> = all
                    .into_iter()
                    .filter(|i| {
                        systemd
                            .status(&i.unit)
                            .is_ok_and(|s| s.active_state == "active")
                    })
                    .collect();
                if active.is_empty() {
                    eprintln!("gatewayctl: no instance runs: nothing to restart");
                }
                rolling_restart(&systemd, &scope, &active, *no_lb_wait, *json)
            }),
            false => rolling_targets(&scope, targets)
                .map(|c| rolling_restart(&systemd, &scope, &c, *no_lb_wait, *json)),
        },
        Command::Enable { instances } => {
            resolve(instances).map(|c| enable(&systemd, &inst, &c, true))
        }
        Command::Disable { instances } => {
            resolve(instances).map(|c| enable(&systemd, &inst, &c, false))
        }
        Command::Nodemanager { action } => Ok(nodemanager(&systemd, action)),
        Command::MigrateInitd {
            rollback: true,
            from,
            ..
        } => Ok(migrate::rollback(
            &systemd,
            &Root::new("/"),
            from.as_deref(),
        )),
        Command::MigrateInitd { .. } => Ok(migrate::apply(&systemd, &inst, &Root::new("/"))),
        Command::List
        | Command::Logs { .. }
        | Command::Drain { .. }
        | Command::CheckConfig
        | Command::Backup { .. }
        | Command::Verify { .. }
        | Command::Drill { .. }
        | Command::Restore { .. } => {
            unreachable!("handled above")
        }
    };
    outcome.unwrap_or_else(|code| code)
}

/// `check-config`: the generator's view of the config, with where each setting came from.
pub fn check_config(root: &Root) -> i32 {
    let (config, inst, problems) = install::load_with_config(root);
    let mut errors = 0;
    for p in &problems {
        let label = match p.severity {
            install::Severity::Error => {
                errors += 1;
                "error"
            }
            install::Severity::Warning => "warning",
            install::Severity::Notice => "notice",
        };
        println!("{label}: {}", p.error);
    }
    if !problems.is_empty() {
        println!();
    }
    let defaults = install::builtin_defaults();
    for i in &inst.instances {
        let key = format!("{}/{}", i.group.name, i.name);
        let state = match &i.held {
            Some(reason) => {
                format!("HELD by {reason}: not started until that is fixed")
            }
            None if i.settings.autostart => "ok, autostart".to_string(),
            None => "ok, not autostart".to_string(),
        };
        println!("{key} ({}): {state}", i.unit());
        let mut merged = defaults.clone();
        merged.overlay(&config.defaults);
        let own = config.instances.get(&key);
        if let Some((p, _)) = own {
            merged.overlay(p);
        }
        let values: std::collections::HashMap<&str, String> =
            merged.set_fields().into_iter().collect();
        for field in install::SettingsPatch::FIELDS {
            let Some(value) = values.get(field) else {
                continue;
            };
            let from = match (
                config.instance_origins.get(&key).and_then(|o| o.get(field)),
                config.defaults_origins.get(field),
            ) {
                (Some(o), _) => format!("{o} [instances.{key:?}]"),
                (None, Some(o)) => format!("{o} [defaults]"),
                (None, None) => "built-in default".to_string(),
            };
            println!("  {field:<22} = {value:<40} # {from}");
        }
    }
    if let Some(nm) = &inst.node_manager {
        let state = match &nm.held {
            Some(reason) => {
                format!("HELD by {reason}: not started until that is fixed")
            }
            None if nm.settings.autostart => "ok, autostart".to_string(),
            None => "ok, not autostart".to_string(),
        };
        println!("the Node Manager ({}): {state}", name::NODE_MANAGER_UNIT);
        for (field, value) in config.nodemanager.set_fields() {
            if let Some(o) = config.nodemanager_origins.get(field) {
                println!("  {field:<22} = {value:<40} # {o} [nodemanager]");
            }
        }
    }
    // A calendar spec systemd cannot parse leaves the timer without a schedule: no backups.
    for (key, spec) in [
        ("schedule", &config.backup.schedule),
        ("drill_schedule", &config.backup.drill_schedule),
    ] {
        let Some(spec) = spec else { continue };
        match std::process::Command::new("systemd-analyze")
            .args(["calendar", spec.trim()])
            .output()
        {
            Ok(o) if o.status.success() => {
                let next = String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Next elapse: "))
                    .map(str::to_string)
                    .unwrap_or_default();
                println!("[backup] {key} = {spec:?}: next {next}");
            }
            Ok(o) => {
                errors += 1;
                println!(
                    "error: [backup] {key} = {spec:?} is not a calendar spec systemd accepts ({}); the timer would have no schedule",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            // Without systemd-analyze (a copy of a host's files elsewhere) it cannot be checked.
            Err(_) => println!("[backup] {key} = {spec:?}: not checked (no systemd-analyze)"),
        }
    }
    if inst.instances.is_empty() {
        println!(
            "no instance of host {:?} in {}",
            inst.host,
            install::Installation::topology_path(&inst.install_dir).display()
        );
    }
    if errors > 0 {
        println!("\n{errors} error(s): fix them, then `systemctl daemon-reload`");
        1
    } else {
        println!("\nconfig ok");
        0
    }
}

fn print_list(inst: &Installation) {
    println!("{:<16} {:<20} {:<9} UNIT", "GROUP", "INSTANCE", "AUTOSTART");
    for i in &inst.instances {
        println!(
            "{:<16} {:<20} {:<9} {}",
            i.group.name,
            i.name,
            if i.settings.autostart { "yes" } else { "no" },
            i.unit()
        );
    }
    if let Some(nm) = &inst.node_manager {
        println!(
            "{:<16} {:<20} {:<9} {}",
            "-",
            nm.name,
            if nm.settings.autostart { "yes" } else { "no" },
            name::NODE_MANAGER_UNIT
        );
    }
}

/// `migrate-initd` (plan): every legacy script, what it starts, and its unit's fate, decided
/// by the same mapping the generator uses.
fn print_migration_plan(inst: &Installation, root: &Root) {
    let (scripts, unreadable) = crate::initd::scan(root);
    let lookup = crate::initd::Lookup::new(inst);
    use crate::initd::Fate;
    if scripts.is_empty() && unreadable.is_empty() {
        println!(
            "no {}/{}* scripts: nothing to migrate",
            crate::initd::INIT_DIR,
            crate::initd::SCRIPT_PREFIX
        );
        return;
    }
    for script in &scripts {
        let shown = script.path.display();
        match lookup.fate(script) {
            Fate::Replaced {
                target,
                legacy_unit,
                rule,
            } => {
                let (who, unit) = target.describe(inst);
                println!("{shown}: {who} -> {unit} (by {rule}); {legacy_unit} is masked; --apply moves it");
            }
            Fate::LeftToScript {
                target,
                legacy_unit,
                rule,
            } => {
                let (who, unit) = target.describe(inst);
                println!("{shown}: {who} -> {unit} (by {rule}); {legacy_unit} stays usable (legacy_initd = true); --apply moves it");
            }
            Fate::Unnamable { target } => {
                let (who, unit) = target.describe(inst);
                println!("{shown}: {who} -> {unit}; its name cannot be a unit name, so it is left alone; rename it to vshell-<group>-<instance>");
            }
            Fate::LeftAlone { reason } => {
                let legacy = script.sysv_unit();
                let unit = legacy.as_deref().unwrap_or("its legacy unit");
                println!("{shown}: left alone ({unit} stays usable): {reason}");
            }
        }
    }
    for (path, why) in unreadable {
        println!("{}: left alone: cannot read: {why}", path.display());
    }
    println!(
        "\nThis is the plan only; nothing was changed. `gatewayctl migrate-initd --apply` does it."
    );
}

/// `status`: one GetAll per interface and unit; a table or JSON.
fn status(systemd: &Systemd, scope: &Scope, chosen: &[Named], json: bool) -> i32 {
    let units: Vec<String> = chosen.iter().map(|i| i.unit.clone()).collect();
    let mut rows = Vec::new();
    for (i, result) in chosen.iter().zip(systemd.status_many(&units)) {
        match result {
            Ok(s) => rows.push((i, s)),
            Err(e) => {
                eprintln!("gatewayctl: {e}");
                return denied_or_failed(&e);
            }
        }
    }
    // Settings changed since a running instance started (config edited, daemon-reload run):
    // they apply at its next restart.
    let launchers: Vec<Option<drain::LauncherStatus>> = rows
        .iter()
        .map(|(i, s)| match (scope.local(i), s.main_pid) {
            (Some(l), pid) if pid != 0 => {
                drain::status(&drain::control_socket(&l.runtime_dir())).ok()
            }
            _ => None,
        })
        .collect();
    let pending: Vec<Vec<String>> = rows
        .iter()
        .zip(&launchers)
        .map(|((_, s), launcher)| match launcher {
            Some(ls) if !ls.environment.is_empty() => {
                drain::settings_changed(&ls.environment, &s.gateway_environment)
            }
            _ => Vec::new(),
        })
        .collect();
    if json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .zip(pending.iter().zip(&launchers))
            .map(|((i, s), (pending, launcher))| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["group"] = i.group.clone().into();
                v["instance"] = i.instance.clone().into();
                if let Some(l) = scope.local(i) {
                    v["autostart"] = l.settings.autostart.into();
                }
                v["restart_pending"] = serde_json::json!(pending);
                if let Some(l) = launcher {
                    v["load_balancers"] = serde_json::json!(l.pollers);
                }
                v
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        println!(
            "{:<16} {:<20} {:<9} {:<10} {:<8} {:>7} {:>8}  STATUS",
            "GROUP", "INSTANCE", "AUTOSTART", "STATE", "SUB", "PID", "RESTARTS"
        );
        for (i, s) in &rows {
            let autostart = match scope.local(i).map(|l| l.settings.autostart) {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            println!(
                "{:<16} {:<20} {:<9} {:<10} {:<8} {:>7} {:>8}  {}",
                i.group,
                i.instance,
                autostart,
                s.active_state,
                s.sub_state,
                s.main_pid,
                s.n_restarts,
                s.status_text
            );
        }
        for ((i, _), pending) in rows.iter().zip(&pending) {
            if !pending.is_empty() {
                println!(
                    "{}: restart pending: {} (changed since it started; `gatewayctl rolling-restart {}` applies it)",
                    i.shown(),
                    pending.join(", "),
                    i.group
                );
            }
        }
    }
    exit::OK
}

/// Print why a job failed: the launcher's last STATUS= and the unit's last journal lines.
fn explain_failure(systemd: &Systemd, unit: &str, result: &str) {
    let s = systemd.status(unit).unwrap_or_default();
    eprintln!(
        "{unit}: job {result}; the unit is {} ({}), result {}",
        s.active_state, s.sub_state, s.result
    );
    if !s.status_text.is_empty() {
        eprintln!("  status: {}", s.status_text);
    }
    // Reading the journal needs no D-Bus; journalctl is the journal's own reader.
    if let Ok(out) = std::process::Command::new("journalctl")
        .args(["-u", unit, "-n", "10", "--no-pager", "-o", "short-iso"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            eprintln!("  {line}");
        }
    }
}

/// Run a job and wait for its result: Ok when done; otherwise the failure is explained (the
/// launcher's STATUS= and the journal) and the exit status returned.
pub(crate) fn run_job_reported(systemd: &Systemd, verb: Verb, unit: &str) -> Result<(), i32> {
    match systemd.run_job(verb, unit) {
        Ok(result) if result == "done" => Ok(()),
        Ok(result) => {
            explain_failure(systemd, unit, &result);
            Err(exit::FAILED)
        }
        Err(e) => {
            eprintln!("gatewayctl: {e}");
            Err(denied_or_failed(&e))
        }
    }
}

/// Drain a local instance through its launcher and wait, so that the drain's real time is
/// known (the `ExecStop=` drain that follows joins the finished one). None when it is not
/// running here or cannot be asked: the stop then drains as usual, unreported.
fn drain_before_stop(
    scope: &Scope,
    i: &Named,
    progress: &dyn Fn(String),
) -> Option<drain::DrainReport> {
    let local = scope.local(i)?;
    let socket = drain::control_socket(&local.runtime_dir());
    if !socket.exists() {
        return None;
    }
    match drain::request(&socket, true, |delay| {
        progress(format!(
            "{}: draining (waiting up to {:.0}s for its load balancers, then up to {} for requests in flight)",
            i.shown(),
            delay.as_secs_f64(),
            local.settings.drain_timeout
        ))
    }) {
        Ok(DrainOutcome::Drained(report)) => {
            progress(format!("{}: {}", i.shown(), drained_line(&report)));
            Some(report)
        }
        _ => None,
    }
}

/// A drain done for a stop that then failed (denied, or the job failed with the gateway still
/// running): put the instance back into its balancers' pools and say so.
fn undo_drain(scope: &Scope, i: &Named) {
    let Some(local) = scope.local(i) else { return };
    match drain::undrain(&drain::control_socket(&local.runtime_dir())) {
        Ok(true) => eprintln!(
            "{}: the stop did not happen, so its drain was undone: its LB health endpoint answers 200 again",
            i.shown()
        ),
        Ok(false) | Err(DrainError::NotRunning { .. }) => {}
        Err(e) => eprintln!(
            "{}: the stop did not happen and its drain could not be undone ({e}); it stays out of its balancers' pools until it is restarted",
            i.shown()
        ),
    }
}

/// "drained in 6.3s (...): summary", as every command prints a drain.
fn drained_line(r: &drain::DrainReport) -> String {
    if r.summary.is_empty() {
        return format!("drained in {:.1}s", r.total.as_secs_f64());
    }
    format!(
        "drained in {:.1}s ({:.1}s until its load balancers took it out, {:.1}s for requests in flight): {}",
        r.total.as_secs_f64(),
        r.taken_out.as_secs_f64(),
        r.in_flight.as_secs_f64(),
        r.summary
    )
}

/// start/stop/restart: one job per instance, each waited for; before a stop or restart the
/// instance is drained (its real drain time shown).
fn jobs(systemd: &Systemd, scope: &Scope, verb: Verb, chosen: &[Named]) -> i32 {
    let mut code = exit::OK;
    for i in chosen {
        let started = Instant::now();
        let drained = verb != Verb::Start
            && drain_before_stop(scope, i, &|line| println!("{line}")).is_some();
        let result = run_job_reported(systemd, verb, &i.unit);
        if drained && result.is_err() {
            undo_drain(scope, i);
        }
        match result {
            Ok(()) => println!(
                "{} {}: done in {:.1}s",
                verb.word(),
                i.shown(),
                started.elapsed().as_secs_f64()
            ),
            Err(exit::DENIED) => return exit::DENIED,
            Err(c) => code = c,
        }
    }
    code
}

/// `enable`/`disable`: the choice is recorded in [`install::autostart::AUTOSTART_FILE`], which
/// the generator reads last, so it holds whatever else made the instance autostart (the
/// config, or a `systemctl enable` link in /etc, which `disable` removes too); then reload.
fn enable(systemd: &Systemd, inst: &Installation, chosen: &[Named], on: bool) -> i32 {
    if on {
        if let Some(i) = chosen
            .iter()
            .filter_map(|n| inst.instances.iter().find(|i| i.unit() == n.unit))
            .find(|i| i.settings.legacy_initd)
        {
            eprintln!("gatewayctl: {}/{} is left to its init script (legacy_initd = true in /etc/gateway-systemd); `gatewayctl migrate-initd --apply` moves it to its unit, or set legacy_initd = false", i.group.name, i.name);
            return exit::FAILED;
        }
    }
    let changes: Vec<(String, bool)> = chosen.iter().map(|i| (i.shown(), on)).collect();
    if let Err(e) = install::autostart::record(&Root::new("/"), &changes) {
        eprintln!("gatewayctl: {e}");
        return if e.contains("ermission denied") {
            exit::DENIED
        } else {
            exit::FAILED
        };
    }
    let refs: Vec<&str> = chosen.iter().map(|i| i.unit.as_str()).collect();
    let result = match on {
        true => systemd.reload(),
        false => systemd.set_enabled(&refs, false),
    };
    match result {
        Ok(()) => {
            // What the choice does depends on more than the choice: say it.
            let target_off = on
                && systemd
                    .unit_file_state(name::GATEWAY_TARGET)
                    .is_ok_and(|s| s != "enabled" && s != "static");
            for i in chosen {
                let held = inst
                    .instances
                    .iter()
                    .find(|l| l.unit() == i.unit)
                    .and_then(|l| l.held.as_deref());
                let effect = match (on, held, target_off) {
                    (false, _, _) => "it will not start with gateway.target (at boot)".to_string(),
                    (true, Some(reason), _) => format!("but it is held by {reason}: it starts with gateway.target once that is fixed (`gatewayctl check-config`)"),
                    (true, None, true) => format!("but {} itself is not enabled, so nothing starts at boot: `systemctl enable {}`", name::GATEWAY_TARGET, name::GATEWAY_TARGET),
                    (true, None, false) => "it will start with gateway.target (at boot)".to_string(),
                };
                println!(
                    "{} {}: {effect}; recorded in {}",
                    if on { "enabled" } else { "disabled" },
                    i.shown(),
                    install::autostart::AUTOSTART_FILE
                );
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("gatewayctl: {e}");
            denied_or_failed(&e)
        }
    }
}

fn logs(inst: &Installation, arg: &str, follow: bool, lines: u32) -> i32 {
    let unit = match find(inst, arg) {
        Ok(i) => i.unit(),
        Err(e) => {
            eprintln!("gatewayctl: {e}");
            return exit::UNKNOWN;
        }
    };
    let mut cmd = std::process::Command::new("journalctl");
    cmd.args(["-u", &unit, "-n", &lines.to_string(), "--no-pager"]);
    if follow {
        cmd.arg("-f");
    }
    match cmd.status() {
        Ok(s) => s.code().unwrap_or(exit::FAILED),
        Err(e) => {
            eprintln!("gatewayctl: journalctl: {e}");
            exit::FAILED
        }
    }
}

/// Groups expand to their instances (in topology order here; by unit name with -H).
fn rolling_targets(scope: &Scope, targets: &[String]) -> Result<Vec<Named>, i32> {
    let all = scope.all()?;
    let mut chosen: Vec<Named> = Vec::new();
    for t in targets {
        let group: Vec<Named> = all.iter().filter(|i| i.group == *t).cloned().collect();
        let found = if group.is_empty() {
            scope.resolve(std::slice::from_ref(t)).map_err(|_| ())
        } else {
            Ok(group)
        };
        match found {
            Ok(list) => {
                for i in list {
                    if !chosen.contains(&i) {
                        chosen.push(i);
                    }
                }
            }
            Err(()) => {
                eprintln!("gatewayctl: {t}: neither a group nor an instance; `gatewayctl status` shows them");
                return Err(exit::UNKNOWN);
            }
        }
    }
    Ok(chosen)
}

/// How long a restarted instance may take to be serving again (its start already waited for
/// the health check; this covers the launcher's state catching up).
const SERVING_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the balancers may take to put a restarted instance back into their pools.
const LB_RISE_TIMEOUT: Duration = Duration::from_secs(60);

/// The balancers that polled an instance recently, from its launcher; Err explains why they
/// cannot be known. An instance that is not running has none.
fn recent_balancers(socket: &std::path::Path) -> Result<Vec<drain::Poller>, String> {
    match drain::status(socket) {
        Ok(s) => Ok(s
            .pollers
            .into_iter()
            .filter(drain::Poller::is_recent)
            .collect()),
        Err(DrainError::NotRunning { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

/// What a rolling restart did to one instance, in seconds.
#[derive(Debug, Default, serde::Serialize)]
struct RollingStep {
    instance: String,
    unit: String,
    /// The drain (None when it was not running or could not be asked).
    drain_seconds: Option<f64>,
    drain_taken_out_seconds: Option<f64>,
    drain_in_flight_seconds: Option<f64>,
    drain: Option<String>,
    /// systemd's restart job: stop, start, ready.
    restart_seconds: f64,
    /// From the job's end until its launcher says it serves.
    serving_seconds: f64,
    /// From serving until its load balancers took it back (None: not waited for).
    readmitted_seconds: Option<f64>,
    readmitted: Option<String>,
    total_seconds: f64,
}

fn rolling_restart(
    systemd: &Systemd,
    scope: &Scope,
    chosen: &[Named],
    no_lb_wait: bool,
    json: bool,
) -> i32 {
    let n = chosen.len();
    if matches!(scope, Scope::Remote(_)) && !no_lb_wait {
        eprintln!("gatewayctl: with -H the launchers' load balancer records are out of reach, so rolling-restart cannot wait for the balancers to take each instance back; run it on the host itself, or add --no-lb-wait to count an instance as back once it serves");
        return 2;
    }
    // With --json, stdout carries the JSON document alone.
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let mut steps: Vec<RollingStep> = Vec::new();
    let code = (|| {
        for (k, i) in chosen.iter().enumerate() {
            let unit = &i.unit;
            let who = format!("[{}/{n}] {}", k + 1, i.shown());
            // The balancers that poll it now must take it back before the next one goes out;
            // the restarted launcher starts with no record of them.
            let local = scope.local(i);
            let socket = local.map(|l| drain::control_socket(&l.runtime_dir()));
            let rise = local.map(|l| l.settings.lb_rise);
            let balancers: Vec<drain::Poller> = match (&socket, no_lb_wait) {
                (Some(socket), false) => match recent_balancers(socket) {
                    Ok(b) => b,
                    Err(why) => {
                        eprintln!("{who}: cannot read which load balancers poll it ({why}); without that rolling-restart cannot wait for them to take it back. Run as root (or as the gateway user), or add --no-lb-wait to count an instance as back once it serves. Nothing was restarted from here on.");
                        return exit::DENIED;
                    }
                },
                _ => Vec::new(),
            };
            let mut step = RollingStep {
                instance: i.shown(),
                unit: unit.clone(),
                ..RollingStep::default()
            };
            let started = Instant::now();
            let prefixed = |line: String| {
                say(format!("[{}/{n}] {line}", k + 1));
            };
            if let Some(r) = drain_before_stop(scope, i, &prefixed) {
                step.drain_seconds = Some(r.total.as_secs_f64());
                step.drain_taken_out_seconds = Some(r.taken_out.as_secs_f64());
                step.drain_in_flight_seconds = Some(r.in_flight.as_secs_f64());
                step.drain = Some(r.summary);
            }
            say(format!("{who}: restarting"));
            let job = Instant::now();
            if let Err(code) = run_job_reported(systemd, Verb::Restart, unit) {
                if step.drain_seconds.is_some() {
                    undo_drain(scope, i);
                }
                eprintln!(
                    "rolling restart stopped at {who}; {} instance(s) not restarted",
                    n - k - 1
                );
                return code;
            }
            step.restart_seconds = job.elapsed().as_secs_f64();
            let done = Instant::now();
            if let Err(state) = wait_serving(systemd, unit, started) {
                eprintln!("{who}: restarted but not serving after {SERVING_TIMEOUT:?} ({state}); rolling restart stopped here");
                return exit::FAILED;
            }
            step.serving_seconds = done.elapsed().as_secs_f64();
            say(format!(
                "{who}: serving again after {:.1}s (restart {:.1}s)",
                started.elapsed().as_secs_f64(),
                step.restart_seconds
            ));
            let serving_since = Instant::now();
            if let (Some(rise), Some(socket), false) = (rise, &socket, balancers.is_empty()) {
                match wait_for_pool(socket, Some(&balancers), rise, serving_since) {
                    Ok(how) => {
                        step.readmitted_seconds = Some(serving_since.elapsed().as_secs_f64());
                        say(format!(
                            "{who}: back in the pool of {} load balancer(s) after {:.1}s: {how}",
                            balancers.len(),
                            started.elapsed().as_secs_f64()
                        ));
                        step.readmitted = Some(how);
                    }
                    Err(missing) => {
                        eprintln!("{who}: after {LB_RISE_TIMEOUT:?} these load balancers have not taken it back: {missing}; rolling restart stopped here (check them, or lb_rise in /etc/gateway-systemd/gateway.toml)");
                        return exit::FAILED;
                    }
                }
            }
            step.total_seconds = started.elapsed().as_secs_f64();
            steps.push(step);
        }
        exit::OK
    })();
    if json {
        let doc = serde_json::json!({"ok": code == exit::OK, "instances": steps});
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else if !steps.is_empty() {
        let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}s"));
        let width = steps
            .iter()
            .map(|s| s.instance.chars().count())
            .max()
            .unwrap_or(8)
            .max(8);
        println!(
            "{:<width$}  {:>7}  {:>7}  {:>7}  {:>11}  {:>7}",
            "instance", "drain", "restart", "serving", "re-admitted", "total"
        );
        for s in &steps {
            println!(
                "{:<width$}  {:>7}  {:>7}  {:>7}  {:>11}  {:>7}",
                s.instance,
                secs(s.drain_seconds),
                secs(Some(s.restart_seconds)),
                secs(Some(s.serving_seconds)),
                secs(s.readmitted_seconds),
                secs(Some(s.total_seconds))
            );
        }
    }
    code
}

/// Wait until a started unit's launcher says it serves: its STATUS= says "serving" once its
/// health check passed and its LB endpoint answers 200 (read over D-Bus, so this works with -H
/// too). Err: its state after [`SERVING_TIMEOUT`] from `since`.
pub(crate) fn wait_serving(systemd: &Systemd, unit: &str, since: Instant) -> Result<(), String> {
    loop {
        match systemd.status(unit) {
            Ok(s) if s.active_state == "active" && s.status_text.starts_with("serving") => {
                return Ok(())
            }
            _ if since.elapsed() > SERVING_TIMEOUT => {
                let s: UnitStatus = systemd.status(unit).unwrap_or_default();
                return Err(format!("{}, {}", s.active_state, s.status_text));
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Wait until an instance that came back is in its balancers' pools again (see
/// [`drain::back_in_pool`]): Ok says how that was decided; Err lists the balancers still
/// missing after [`LB_RISE_TIMEOUT`].
pub(crate) fn wait_for_pool(
    socket: &std::path::Path,
    before: Option<&[drain::Poller]>,
    rise: u32,
    serving_since: Instant,
) -> Result<String, String> {
    loop {
        let now = drain::status(socket).map(|s| s.pollers).unwrap_or_default();
        match drain::back_in_pool(before, &now, rise, serving_since.elapsed()) {
            Ok(how) => return Ok(how),
            Err(missing) if serving_since.elapsed() > LB_RISE_TIMEOUT => return Err(missing),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn nodemanager(systemd: &Systemd, action: &str) -> i32 {
    let unit = name::NODE_MANAGER_UNIT;
    let verb = match action {
        "start" => Verb::Start,
        "stop" => Verb::Stop,
        _ => {
            return match systemd.status(unit) {
                Ok(s) => {
                    println!(
                        "{unit}: {} ({}) {}",
                        s.active_state, s.sub_state, s.status_text
                    );
                    if s.active_state == "active" {
                        exit::OK
                    } else {
                        3
                    }
                }
                Err(e) => {
                    eprintln!("gatewayctl: {e}");
                    denied_or_failed(&e)
                }
            };
        }
    };
    run_job_reported(systemd, verb, unit)
        .err()
        .unwrap_or(exit::OK)
}

/// What an instance restarting with its group sees of one other instance of the group.
struct Sibling<'a> {
    /// Its pending systemd job (restart, start, stop), if any.
    job: Option<&'a str>,
    /// Still in the life it had when this restart began (active, or deactivating while its
    /// own ExecStop= waits its turn or drains).
    in_old_life: bool,
    /// It runs under another launcher than first seen: it went out and came back.
    came_back: bool,
    /// Its launcher says it serves.
    serving: bool,
    /// It comes before this one in the topology.
    goes_first: bool,
}

impl Sibling<'_> {
    /// Whether this instance must wait before draining: the sibling is out of its balancers'
    /// pool and coming back. Two instances never wait for each other: among those still in
    /// their old lives only the one first in the topology goes, whatever their health.
    fn keeps_me_waiting(&self, back_in_pool: impl FnOnce() -> bool) -> bool {
        match self.job {
            // Out of the pool until it serves again.
            Some("restart") | Some("start") if !self.in_old_life || self.came_back => true,
            // Restarting with this one: the one first in the topology goes first.
            Some("restart") => self.goes_first,
            // Back from its restart: out until its balancers took it again. One that is not
            // serving (failed, unhealthy) is out of the pool whatever we wait for.
            _ if self.came_back && self.serving => !back_in_pool(),
            _ => false,
        }
    }
}

/// Now, in µs since the epoch (as systemd's timestamps).
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The longest a restarting instance waits for the other instances of its group.
const TURN_TIMEOUT: Duration = Duration::from_secs(900);

/// Under `ExecStop=` of a restart: wait until no other instance of the same group on this host
/// is out of its load balancers' pool, and until those of the group restarting with it that
/// come first in the topology are back. `systemctl restart gateway.target` (PartOf=) or a
/// restart of several instances at once thus rolls through each group instead of draining
/// all of it together. A stop (or shutdown) does not wait: it takes the instance away anyway.
fn wait_for_turn(inst: &Installation, instance: &str, shown: &str, socket: &std::path::Path) {
    let Some(my_index) = inst
        .instances
        .iter()
        .position(|i| i.instance_string == instance)
    else {
        eprintln!("{shown}: not an instance of this host's installation as this user reads it; draining without waiting for the rest of its group");
        return;
    };
    let me = &inst.instances[my_index];
    let siblings: Vec<(usize, &Instance)> = inst
        .instances
        .iter()
        .enumerate()
        .filter(|(k, i)| i.group.id == me.group.id && *k != my_index)
        .collect();
    if siblings.is_empty() {
        return;
    }
    let systemd = match Systemd::system() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{shown}: cannot see the other instances of group {} ({e}); draining without waiting for them", me.group.name);
            return;
        }
    };
    let unit = me.unit();
    let started = Instant::now();
    let mut said = String::new();
    let mut extended = Instant::now() - Duration::from_secs(60);
    // Each sibling's launcher as first seen (main PID) and the balancers polling it then: once
    // it runs under another PID it went out and came back, and those balancers must take it
    // back. None: first seen already gone, so which balancers it had is unknown.
    let mut first_seen: HashMap<usize, (u32, Option<Vec<drain::Poller>>)> = HashMap::new();
    loop {
        let jobs = match systemd.jobs() {
            Ok(j) => j,
            Err(e) => {
                eprintln!("{shown}: cannot list systemd's jobs ({e}); draining without waiting for the rest of group {}", me.group.name);
                return;
            }
        };
        let job_of = |u: &str| jobs.iter().find(|(n, _)| n == u).map(|(_, t)| t.as_str());
        if job_of(&unit) != Some("restart") {
            return;
        }
        if me.settings.after_nodemanager && job_of(name::NODE_MANAGER_UNIT) == Some("restart") {
            // Our starts wait for the Node Manager's, which waits for every instance to stop:
            // waiting here for a sibling to come back would wait for ever.
            eprintln!("{shown}: the Node Manager restarts too and the instances of group {} start after it (after_nodemanager = true), so they cannot take turns; draining now. `gatewayctl rolling-restart` restarts them one at a time", me.group.name);
            return;
        }
        let units: Vec<String> = siblings.iter().map(|(_, s)| s.unit()).collect();
        let statuses = systemd.status_many(&units);
        let mut waiting_for = None;
        for ((index, sibling), status) in siblings.iter().zip(statuses) {
            let Ok(status) = status else { continue };
            let job = job_of(&status.unit);
            let socket = drain::control_socket(&sibling.runtime_dir());
            let pollers = || -> Vec<drain::Poller> {
                drain::status(&socket)
                    .map(|s| s.pollers)
                    .unwrap_or_default()
            };
            // Still in the life it had when this restart began (its ExecStop= may be waiting its
            // turn too, or draining): "deactivating" counts.
            let in_old_life = matches!(status.active_state.as_str(), "active" | "deactivating");
            let (first_pid, before) = first_seen.entry(*index).or_insert_with(|| {
                match in_old_life && status.main_pid != 0 {
                    true => (
                        status.main_pid,
                        Some(
                            pollers()
                                .into_iter()
                                .filter(drain::Poller::is_recent)
                                .collect(),
                        ),
                    ),
                    false => (0, None),
                }
            });
            let came_back = status.main_pid != *first_pid;
            let serving =
                status.active_state == "active" && status.status_text.starts_with("serving");
            let view = Sibling {
                job,
                in_old_life,
                came_back,
                serving,
                goes_first: *index < my_index,
            };
            let waiting = view.keeps_me_waiting(|| {
                let serving_for = Duration::from_micros(
                    now_micros().saturating_sub(status.active_enter_timestamp),
                );
                drain::back_in_pool(
                    before.as_deref(),
                    &pollers(),
                    sibling.settings.lb_rise,
                    serving_for,
                )
                .is_ok()
            });
            if waiting {
                waiting_for = Some(format!("{}/{}", sibling.group.name, sibling.name));
                break;
            }
        }
        let Some(who) = waiting_for else {
            if !said.is_empty() {
                // The wait used up the stop timeout systemd started with: cover the drain and
                // the exit after it again.
                let _ = drain::extend_stop_timeout(socket, me.settings.stop_timeout().0);
            }
            return;
        };
        if started.elapsed() > TURN_TIMEOUT {
            eprintln!("{shown}: {who} is still not back in its balancers' pool after {TURN_TIMEOUT:?}; draining anyway");
            return;
        }
        if who != said {
            eprintln!("{shown}: restarting with other instances of group {}: waiting until {who} is serving and back in its load balancers' pool before draining", me.group.name);
            said = who;
        }
        if extended.elapsed() > Duration::from_secs(5) {
            // The stop timeout runs while we wait; keep it ahead of us.
            let _ = drain::extend_stop_timeout(socket, Duration::from_secs(30));
            extended = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn drain_command(arg: &str, wait: bool) -> i32 {
    let instance = match instance_string(arg) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("gatewayctl: {e}");
            return exit::UNKNOWN;
        }
    };
    let shown = name::parse_instance_string(&instance)
        .map(|(g, i)| format!("{g}/{i}"))
        .unwrap_or(instance.clone());
    // Under ExecStop=, systemd sets $MAINPID only while the main process lives.
    if std::env::var_os("INVOCATION_ID").is_some() && std::env::var_os("MAINPID").is_none() {
        eprintln!("{shown}: the gateway has already exited; nothing to drain");
        return exit::OK;
    }
    let (inst, _) = install::load(&Root::new("/"));
    // systemd gives ExecStop= the unit's runtime directory; by hand, the installation names it.
    let socket = match std::env::var_os("RUNTIME_DIRECTORY") {
        Some(dir) if std::env::var_os("INVOCATION_ID").is_some() => {
            let socket = std::path::PathBuf::from(dir).join(drain::SOCKET_NAME);
            wait_for_turn(&inst, &instance, &shown, &socket);
            socket
        }
        _ => {
            match inst
                .instances
                .iter()
                .find(|i| i.instance_string == instance)
            {
                Some(i) => drain::control_socket(&i.runtime_dir()),
                None => {
                    eprintln!("gatewayctl: {shown}: no such instance on this host ({}); `gatewayctl list` shows them", inst.host);
                    return exit::UNKNOWN;
                }
            }
        }
    };
    let result = drain::request(&socket, wait, |delay| {
        eprintln!(
            "draining {shown}: its LB health endpoint answers 503; waiting up to {:.0}s for its load balancers to take it out, then for requests in flight",
            delay.as_secs_f64()
        );
    });
    match result {
        Ok(DrainOutcome::Started(_)) => exit::OK,
        Ok(DrainOutcome::Drained(report)) => {
            eprintln!("{shown}: {}", drained_line(&report));
            exit::OK
        }
        Ok(DrainOutcome::GatewayGone) => {
            eprintln!("{shown}: the gateway exited while draining");
            exit::OK
        }
        Err(e @ DrainError::NotRunning { .. }) => {
            eprintln!("{shown}: {e}");
            exit::OK
        }
        Err(e @ DrainError::Denied { .. }) => {
            eprintln!("gatewayctl: drain {shown}: {e}");
            exit::DENIED
        }
        Err(e) => {
            eprintln!("gatewayctl: drain {shown}: {e}");
            exit::FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_restarting_together_never_wait_for_each_other() {
        // Both unhealthy (not serving), both restarting, both still in their old lives: the
        // first in the topology goes, the second waits for it (before: each waited for the
        // other until the 900 s turn timeout).
        let other = |goes_first| Sibling {
            job: Some("restart"),
            in_old_life: true,
            came_back: false,
            serving: false,
            goes_first,
        };
        let never = || panic!("no pool to check");
        assert!(!other(false).keeps_me_waiting(never));
        assert!(other(true).keeps_me_waiting(never));
        // Once it went out (stopped, starting again) everyone waits for it.
        let out = Sibling {
            in_old_life: false,
            ..other(false)
        };
        assert!(out.keeps_me_waiting(never));
        // Back and serving: waiting until its balancers took it back.
        let back = Sibling {
            job: None,
            in_old_life: true,
            came_back: true,
            serving: true,
            goes_first: true,
        };
        assert!(back.keeps_me_waiting(|| false));
        assert!(!back.keeps_me_waiting(|| true));
        // Failed to come back: out of the pool whatever we wait for.
        let failed = Sibling {
            serving: false,
            in_old_life: false,
            ..back
        };
        assert!(!failed.keeps_me_waiting(never));
    }

    #[test]
    fn instances_are_named_three_ways() {
        assert_eq!(instance_string("group1/server1").unwrap(), "group1-server1");
        assert_eq!(
            instance_string("payments-eu/edge node 1").unwrap(),
            r"payments\x2deu-edge\x20node\x201"
        );
        assert_eq!(
            instance_string(r"payments\x2deu-edge\x20node\x201").unwrap(),
            r"payments\x2deu-edge\x20node\x201"
        );
        assert_eq!(
            instance_string("gateway@group1-server1.service").unwrap(),
            "group1-server1"
        );
        assert!(instance_string("payments-eu-edge").is_err());
    }
}
