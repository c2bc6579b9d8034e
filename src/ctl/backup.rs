//! `gatewayctl backup`, `verify` and `restore`: arguments in, the backup module's work, the
//! outcome out (text or JSON) with sysexits-style statuses for verify.

use super::exit;
use crate::backup::{self, verify::ReadError, BackupOptions};
use crate::install::{self, Root};
use std::path::{Path, PathBuf};

/// The archive is damaged (sysexits EX_DATAERR).
pub const DAMAGED: i32 = 65;
/// The archive cannot be read (sysexits EX_NOINPUT).
pub const CANNOT_READ: i32 = 66;

/// The root the installation is read from: `/`, or `GATEWAY_SYSTEMD_ROOT` (a copy of a host's
/// files, as the generator and check-config accept).
fn root() -> Root {
    std::env::var_os(crate::generator::ROOT_ENV).map_or_else(|| Root::new("/"), Root::new)
}

/// What `gatewayctl backup` was asked.
pub struct BackupArgs {
    /// Take platform/ too.
    pub full: bool,
    /// Write there instead of `[backup] dir`.
    pub to: Option<PathBuf>,
    /// Print JSON.
    pub json: bool,
    /// Keep no archive identical to the newest.
    pub if_changed: bool,
    /// Apply retention after a verified backup.
    pub prune: bool,
    /// Copy each instance's directory cold (`--quiesce`).
    pub quiesce: bool,
}

/// `gatewayctl backup`.
pub fn backup_command(args: BackupArgs) -> i32 {
    let root = root();
    let (config, inst, _) = install::load_with_config(&root);
    if let Some(i) = backup::restore::pending(&root.real(Path::new("/"))) {
        eprintln!("gatewayctl: a restore of {} is unfinished: its trees are half old, half new; run `gatewayctl restore --recover` first", i.archive);
        return exit::FAILED;
    }
    if let Some(e) = &config.broken_backup {
        eprintln!("gatewayctl: {e}");
        return exit::FAILED;
    }
    let hooks = Hooks::of(&root, &config.backup, &inst);
    // One backup of this host at a time, whatever its destination: the hook directory and
    // the instances --quiesce stops are the host's.
    let host_lock = root.real(Path::new(HOST_LOCK));
    let _host_lock = match std::fs::create_dir_all(host_lock.parent().unwrap_or(Path::new("/")))
        .and_then(|_| install::try_lock(&host_lock))
    {
        Ok(Some(l)) => l,
        Ok(None) => {
            hooks.on_error(&format!(
                "another backup of this host is running (it holds {}); no archive was written",
                host_lock.display()
            ));
            return exit::FAILED;
        }
        Err(e) => {
            hooks.on_error(&format!(
                "{}: {e}; no archive was written",
                host_lock.display()
            ));
            return exit::FAILED;
        }
    };
    // SIGINT, SIGTERM (systemctl stop gateway-backup) and SIGHUP end the backup in order: its
    // temporary files removed, a hook's process group killed, a quiesced instance started.
    backup::scratch::catch_interrupts();
    let to = args.to.map(|d| match d.is_absolute() {
        true => d,
        false => std::env::current_dir().unwrap_or_default().join(d),
    });
    let recipients = match backup::encryption::recipients(
        config.backup.recipients.as_deref().unwrap_or_default(),
    ) {
        Ok(r) => r,
        Err(e) => {
            hooks.on_error(&format!("{e}; no archive was written"));
            return exit::FAILED;
        }
    };
    let quiescer = match args.quiesce {
        false => None,
        true => match Quiescer::plan(&inst) {
            Ok(q) => Some(std::rc::Rc::new(q)),
            Err(e) => {
                hooks.on_error(&format!("--quiesce needs systemd to stop and start the instances: {e}; no archive was written"));
                return exit::FAILED;
            }
        },
    };
    for why in quiescer.iter().flat_map(|q| &q.warm) {
        eprintln!("quiesce: {why}");
    }
    let opts = BackupOptions {
        full: args.full,
        to,
        progress: !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        extra_roots: config.backup.extra_roots.clone().unwrap_or_default(),
        configured_dir: config.backup.dir.clone(),
        recipients,
        quiesce: quiescer
            .clone()
            .map(|q| q as std::rc::Rc<dyn backup::Quiesce>),
    };
    if let Err(e) = hooks.before() {
        hooks.on_error(&format!("{e}; no archive was written"));
        return exit::FAILED;
    }
    let s = match backup::backup(&root, &inst, &opts) {
        Ok(s) => s,
        Err(e) => {
            hooks.on_error(&format!("backup failed: {e}; no archive was written"));
            return exit::FAILED;
        }
    };
    let dir = s.archive.parent().unwrap_or(Path::new("/")).to_path_buf();
    // Deleting (an unchanged copy, pruned archives) happens under the directory's lock, as
    // writing does: a prune beside it could otherwise delete what this one keeps.
    let _lock = match (args.if_changed || args.prune).then(|| lock_dir(&dir)) {
        Some(Err(e)) => {
            hooks.on_error(&format!(
                "{e}; the new archive {} is kept",
                s.archive.display()
            ));
            return exit::FAILED;
        }
        Some(Ok(l)) => Some(l),
        None => None,
    };
    let mut newest = s.archive.clone();
    let mut unchanged_since = None;
    let mut sealed_to: Vec<String> = config.backup.recipients.clone().unwrap_or_default();
    sealed_to.iter_mut().for_each(|r| *r = r.trim().to_string());
    sealed_to.sort();
    if args.if_changed {
        match unchanged(&s, &dir, &inst.host, &sealed_to) {
            Ok(Some(previous)) => {
                for f in [backup::sidecar_of(&s.archive), s.archive.clone()] {
                    if let Err(e) = std::fs::remove_file(&f) {
                        hooks.on_error(&format!(
                            "{}: cannot delete the unchanged copy: {e}",
                            f.display()
                        ));
                        return exit::FAILED;
                    }
                }
                newest = previous.clone();
                unchanged_since = Some(previous);
            }
            Ok(None) => {}
            Err(e) => eprintln!("gatewayctl: --if-changed: {e}; the new archive is kept"),
        }
    }
    let mut code = exit::OK;
    // What the newest archive holds is the installation's state as of this run: a drill's
    // recovery point counts from here, not from the archive's (older) creation.
    if let Err(e) = record_state(
        &newest,
        &s.fingerprint,
        &sealed_to,
        &inst.host,
        s.created_unix,
    ) {
        // Only the next --if-changed of an encrypted archive and the drill's "current as of"
        // miss it: a copy is kept next time.
        eprintln!("gatewayctl: warning: {e}");
    }
    let mut pruned = Vec::new();
    if args.prune {
        match prune_after_backup(&config.backup, &dir, &inst.host, &newest) {
            Ok(gone) => pruned = gone,
            Err(e) => {
                hooks.on_error(&format!("prune: {e}"));
                code = exit::FAILED;
            }
        }
    }
    drop(_lock);
    // An off-site copy is of a new archive; an unchanged run has nothing new to send.
    if unchanged_since.is_none() {
        if let Err(e) = hooks.after(&s.archive) {
            hooks.on_error(&format!("{e}; the archive {} is kept", s.archive.display()));
            code = exit::FAILED;
        }
    }
    // Encrypted archives keep the hooks' output (a database dump) at rest only encrypted.
    if !sealed_to.is_empty() {
        if let Err(e) = backup::hooks::prepare_dir(&hooks.dir) {
            eprintln!(
                "gatewayctl: warning: {}: cannot empty it: {e}",
                hooks.dir.display()
            );
        }
    }
    if args.json {
        let mut v = serde_json::to_value(&s).unwrap_or_default();
        v["unchanged_since"] = serde_json::json!(unchanged_since);
        v["kept"] = serde_json::json!(unchanged_since.is_none());
        v["pruned"] = serde_json::json!(pruned);
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return code;
    }
    for why in &s.skipped {
        println!("skipped {why}");
    }
    for path in &s.changed {
        println!("changed while it was read (taken as last read): {path}");
    }
    match &unchanged_since {
        Some(previous) => println!(
            "unchanged since {}: nothing differs (entries, content, owners, modes, times); no new archive kept",
            previous.display()
        ),
        None => println!(
            "wrote {} ({} files, {} directories, {} links; {} bytes in {} bytes, {:.1}x) in {:.1}s\n\
             sha256 {} in {}",
            s.archive.display(),
            s.files,
            s.directories,
            s.links,
            s.bytes,
            s.archive_bytes,
            s.ratio,
            s.seconds,
            s.sha256,
            backup::sidecar_of(&s.archive).display()
        ),
    }
    for p in &pruned {
        println!("pruned {}", p.display());
    }
    code
}

/// Held while a backup of this host runs (its hooks, its quiesced instances).
const HOST_LOCK: &str = "/run/gateway-systemd/backup.lock";

/// The `[backup]` hooks of this run, with what they are told.
struct Hooks {
    settings: crate::install::config::BackupSettings,
    timeout: std::time::Duration,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Hooks {
    fn of(
        root: &Root,
        settings: &crate::install::config::BackupSettings,
        inst: &install::Installation,
    ) -> Self {
        Hooks {
            settings: settings.clone(),
            timeout: settings
                .hook_timeout
                .unwrap_or(crate::install::config::DEFAULT_HOOK_TIMEOUT)
                .0,
            dir: root.real(Path::new(backup::hooks::HOOK_DIR)),
            env: vec![
                ("BACKUP_HOST", inst.host.clone()),
                ("BACKUP_INSTALL_DIR", inst.install_dir.display().to_string()),
            ],
        }
    }

    fn run(
        &self,
        stage: backup::hooks::Stage,
        commands: &Option<Vec<String>>,
        more: &[(&'static str, String)],
    ) -> Result<(), backup::hooks::HookError> {
        let Some(commands) = commands.as_deref().filter(|c| !c.is_empty()) else {
            return Ok(());
        };
        let mut env = self.env.clone();
        env.push(("BACKUP_HOOK_DIR", self.dir.display().to_string()));
        env.extend(more.iter().cloned());
        backup::hooks::run(stage, commands, self.timeout, &self.dir, &env).map(|_| ())
    }

    /// Empty the hook directory and run the `before` hooks: what they leave there is taken.
    fn before(&self) -> Result<(), String> {
        backup::hooks::prepare_dir(&self.dir).map_err(|e| {
            format!(
                "{}: cannot prepare the hook directory: {e}",
                self.dir.display()
            )
        })?;
        self.run(backup::hooks::Stage::Before, &self.settings.before, &[])
            .map_err(|e| e.to_string())
    }

    /// The `after` hooks, told the new archive and its `.sha256`.
    fn after(&self, archive: &Path) -> Result<(), String> {
        // The hook directory is their working directory; a restore or an operator may have
        // removed it since.
        backup::hooks::prepare_dir_if_missing(&self.dir)
            .map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let more = [
            ("BACKUP_ARCHIVE", archive.display().to_string()),
            (
                "BACKUP_SHA256_FILE",
                backup::sidecar_of(archive).display().to_string(),
            ),
        ];
        self.run(backup::hooks::Stage::After, &self.settings.after, &more)
            .map_err(|e| e.to_string())
    }

    /// Say what failed, then run the `on_error` hooks (whose own failure is only told).
    fn on_error(&self, error: &str) {
        eprintln!("gatewayctl: {error}");
        let _ = backup::hooks::prepare_dir_if_missing(&self.dir);
        if let Err(e) = self.run(
            backup::hooks::Stage::OnError,
            &self.settings.on_error,
            &[("BACKUP_ERROR", error.to_string())],
        ) {
            eprintln!("gatewayctl: {e}");
        }
    }
}

/// Hold the archive directory's lock (the one `backup` writes under), waiting up to a minute
/// for another backup or prune to finish.
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    let path = dir.join(".lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match install::try_lock(&path) {
            Ok(Some(l)) => return Ok(l),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200))
            }
            Ok(None) => {
                return Err(format!(
                    "another backup or prune holds {} for over a minute",
                    path.display()
                ))
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
}

/// Record what the archive holds, current as of `current_at`.
fn record_state(
    archive: &Path,
    fingerprint: &str,
    sealed_to: &[String],
    host: &str,
    current_at: i64,
) -> Result<(), String> {
    let dir = archive.parent().unwrap_or(Path::new("/"));
    let state = backup::last_state::LastState {
        archive: archive
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        fingerprint: fingerprint.to_string(),
        sealed_to: sealed_to.to_vec(),
        current_at,
    };
    backup::last_state::write(dir, host, &state)
        .map_err(|e| format!("{}: {e}", backup::last_state::path(dir, host).display()))
}

/// Whether an archive is intact: verified through (with an identity when encrypted), or, for
/// an encrypted archive without one, its bytes against its `.sha256` (age authenticates the
/// rest when it is decrypted).
fn intact(archive: &Path) -> Result<(), String> {
    if backup::is_encrypted(archive) && !backup::encryption::have_identity() {
        return backup::verify::check_sidecar(archive).map_err(|e| e.to_string());
    }
    let report = backup::verify::verify(archive).map_err(|e| e.to_string())?;
    match report.problems.is_empty() {
        true => Ok(()),
        false => Err(report.problems.join("; ")),
    }
}

/// The newest other archive of `host` in `dir`, when the new one (`s`) holds exactly what it
/// holds, sealed as it would be (not encrypted, or encrypted to the same recipients:
/// `sealed_to`, sorted), and it is intact.
fn unchanged(
    s: &backup::BackupSummary,
    dir: &Path,
    host: &str,
    sealed_to: &[String],
) -> Result<Option<PathBuf>, String> {
    let listed =
        backup::drill::list_archives(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let Some(previous) = listed
        .iter()
        .rev()
        .find(|l| l.host == host && l.path != s.archive)
    else {
        return Ok(None);
    };
    // Encryption added or recipients changed (a key rotated out): the new archive is kept.
    if backup::is_encrypted(&previous.path) != backup::is_encrypted(&s.archive) {
        return Ok(None);
    }
    let name = previous
        .path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let old = match backup::is_encrypted(&previous.path) {
        false => backup::verify::read_manifest_only(&previous.path)
            .map_err(|e| e.to_string())?
            .fingerprint(),
        // What an encrypted archive holds is known from the record only.
        true => match backup::last_state::read(dir, host).filter(|l| l.archive == name) {
            Some(last) if last.sealed_to == sealed_to => last.fingerprint,
            // Not the archive the last backup kept, or sealed to others: what it holds (and
            // who can read it) is not known to be the same.
            _ => return Ok(None),
        },
    };
    // Only an intact previous archive may stand for this state.
    Ok((old == s.fingerprint && intact(&previous.path).is_ok()).then(|| previous.path.clone()))
}

/// Retention after a backup: only once the newest archive verifies, and never that one.
fn prune_after_backup(
    settings: &crate::install::config::BackupSettings,
    dir: &Path,
    host: &str,
    newest: &Path,
) -> Result<Vec<PathBuf>, String> {
    let Some(policy) = backup::retention::Policy::of(settings) else {
        return Ok(Vec::new());
    };
    intact(newest).map_err(|why| {
        format!(
            "{} does not verify ({why}); nothing pruned",
            newest.display()
        )
    })?;
    let listed =
        backup::drill::list_archives(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let decisions = backup::retention::decide(&listed, host, policy, Some(newest));
    backup::retention::prune(&decisions).map_err(|e| e.to_string())
}

/// `gatewayctl backup prune`.
pub fn prune_command(dir: Option<PathBuf>, host: Option<String>, dry_run: bool, json: bool) -> i32 {
    let root = root();
    let (config, inst, _) = install::load_with_config(&root);
    if let Some(e) = &config.broken_backup {
        eprintln!("gatewayctl: {e}");
        return exit::FAILED;
    }
    let dir = dir.unwrap_or_else(|| {
        root.real(
            config
                .backup
                .dir
                .as_deref()
                .unwrap_or(Path::new(install::config::DEFAULT_BACKUP_DIR)),
        )
    });
    let Some(policy) = backup::retention::Policy::of(&config.backup) else {
        eprintln!("gatewayctl: no keep_last, keep_daily, keep_weekly or keep_monthly in [backup] of /etc/gateway-systemd/gateway.toml: every archive is kept, nothing pruned");
        return exit::OK;
    };
    let listed = match backup::drill::list_archives(&dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gatewayctl: {}: {e}", dir.display());
            return exit::FAILED;
        }
    };
    let host = host.unwrap_or(inst.host);
    let _lock = match lock_dir(&dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gatewayctl: {e}");
            return exit::FAILED;
        }
    };
    // The newest archive that verifies is never deleted: find it first.
    let protected = listed
        .iter()
        .rev()
        .filter(|l| l.host == host)
        .find(|l| intact(&l.path).is_ok())
        .map(|l| l.path.clone());
    let decisions = backup::retention::decide(&listed, &host, policy, protected.as_deref());
    let gone = match dry_run {
        true => Vec::new(),
        false => match backup::retention::prune(&decisions) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("gatewayctl: prune: {e}");
                return exit::FAILED;
            }
        },
    };
    if json {
        let v = serde_json::json!({
            "dir": dir,
            "host": host,
            "dry_run": dry_run,
            "newest_verified": protected,
            "decisions": decisions,
            "deleted": gone,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return exit::OK;
    }
    for d in &decisions {
        let name = d.archive.file_name().unwrap_or_default().to_string_lossy();
        match d.kept_by.is_empty() {
            true if dry_run => println!("would delete  {name}"),
            true => println!("deleted       {name}"),
            false => println!("keep          {name}  ({})", d.kept_by.join(", ")),
        }
    }
    let n = decisions.iter().filter(|d| d.kept_by.is_empty()).count();
    println!(
        "{} of {} archives of {host} in {} {}",
        n,
        decisions.len(),
        dir.display(),
        if dry_run {
            "would be deleted (dry run)"
        } else {
            "deleted"
        }
    );
    exit::OK
}

/// `gatewayctl verify`.
pub fn verify_command(archive: &Path, json: bool) -> i32 {
    match backup::verify::verify(archive) {
        Ok(report) => {
            let intact = report.problems.is_empty();
            if json {
                let mut v = serde_json::to_value(&report).unwrap_or_default();
                v["intact"] = serde_json::Value::Bool(intact);
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                for p in &report.problems {
                    println!("{p}");
                }
                match intact {
                    true => println!(
                        "{}: intact: {} entries, {} bytes of {} taken {}",
                        archive.display(),
                        report.entries,
                        report.bytes,
                        report.host,
                        report.created
                    ),
                    false => println!(
                        "{}: DAMAGED: {} difference(s) from its manifest",
                        archive.display(),
                        report.problems.len()
                    ),
                }
            }
            if intact {
                exit::OK
            } else {
                DAMAGED
            }
        }
        Err(e) => {
            let (word, code) = match &e {
                ReadError::CannotRead(_) => ("cannot read", CANNOT_READ),
                ReadError::Damaged(_) => ("DAMAGED", DAMAGED),
            };
            if json {
                let v = serde_json::json!({
                    "archive": archive,
                    "intact": false,
                    "problems": match &e {
                        ReadError::CannotRead(w) => vec![w.clone()],
                        ReadError::Damaged(p) => p.clone(),
                    },
                    "error": word,
                });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                eprintln!("{}: {word}: {e}", archive.display());
            }
            code
        }
    }
}

/// What `gatewayctl restore` was asked.
pub struct RestoreArgs {
    /// The archive (not with --recover / --rollback).
    pub archive: Option<PathBuf>,
    /// The target root (default /).
    pub target: Option<PathBuf>,
    /// Check only.
    pub dry_run: bool,
    /// Owners by id.
    pub numeric_ids: bool,
    /// The host this one stands in for.
    pub as_host: Option<String>,
    /// Finish an interrupted restore.
    pub recover: bool,
    /// Undo the last restore.
    pub rollback: bool,
    /// JSON output.
    pub json: bool,
}

/// The gateways of the running system, stopped and started around a restore's swap.
struct LiveServices(crate::systemd::Systemd);

impl backup::restore::Services for LiveServices {
    fn stop_all(&self) -> Result<Vec<String>, String> {
        // The instances and the Node Manager: both read what the restore replaces.
        let mut units = self.0.gateway_units().map_err(|e| e.to_string())?;
        units.push(crate::units::name::NODE_MANAGER_UNIT.to_string());
        let mut stopped = Vec::new();
        for u in units {
            let running = self.0.status(&u).is_ok_and(|s| {
                matches!(
                    s.active_state.as_str(),
                    "active" | "activating" | "reloading"
                )
            });
            if running {
                super::run_job_reported(&self.0, crate::systemd::Verb::Stop, &u)
                    .map_err(|_| format!("{u} did not stop"))?;
                stopped.push(u);
            }
        }
        Ok(stopped)
    }

    fn reload_and_start(&self) -> Result<(), String> {
        self.0.reload().map_err(|e| e.to_string())?;
        super::run_job_reported(
            &self.0,
            crate::systemd::Verb::Start,
            crate::units::name::GATEWAY_TARGET,
        )
        .map_err(|_| format!("{} did not start", crate::units::name::GATEWAY_TARGET))
    }
}

/// `gatewayctl restore`.
pub fn restore_command(args: RestoreArgs) -> i32 {
    let target = args.target.clone().unwrap_or_else(|| PathBuf::from("/"));
    let live = target == Path::new("/");
    let systemd = match live && !args.dry_run {
        true => match crate::systemd::Systemd::system() {
            Ok(s) => Some(LiveServices(s)),
            Err(e) => {
                eprintln!("gatewayctl: {e}");
                return exit::FAILED;
            }
        },
        false => None,
    };
    let services = systemd
        .as_ref()
        .map(|s| s as &dyn backup::restore::Services);
    // One restore, recovery or rollback at a time on a target.
    let _lock = match backup::restore::lock(&target) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gatewayctl: {e}");
            return exit::FAILED;
        }
    };
    if args.recover {
        return match backup::restore::recover(&target, services) {
            Ok(Some(done)) => {
                println!("{done}");
                exit::OK
            }
            Ok(None) => {
                println!("no unfinished restore under {}", target.display());
                exit::OK
            }
            Err(e) => {
                eprintln!("gatewayctl: {e}");
                exit::FAILED
            }
        };
    }
    if args.rollback {
        return match backup::restore::rollback(&target, services) {
            Ok(done) => {
                println!("{done}");
                exit::OK
            }
            Err(e) => {
                eprintln!("gatewayctl: {e}");
                exit::FAILED
            }
        };
    }
    let Some(archive) = args.archive else {
        eprintln!("gatewayctl: restore needs an archive");
        return 2;
    };
    // A host of another name would generate none of the archive's instances.
    if live && args.as_host.is_none() {
        if let Ok(m) = backup::verify::read_manifest_only(&archive) {
            // This host's name as the generator resolves it (config, else the kernel's).
            let (here_inst, _) = install::load(&Root::new("/"));
            let here = here_inst.host;
            if !install::host_matches(&m.host, &here) {
                eprintln!("gatewayctl: {} is a backup of {}, and this host is {here}: restored as it is, the generator would start none of its instances. If this host stands in for {} (a cold standby), add --as-host {}; nothing was changed", archive.display(), m.host, m.host, m.host);
                return 2;
            }
        }
    }
    let opts = backup::restore::RestoreOptions {
        target,
        dry_run: args.dry_run,
        numeric_ids: args.numeric_ids,
        as_host: args.as_host,
    };
    match backup::restore::restore(&archive, &opts, services) {
        Ok(s) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                for w in &s.warnings {
                    println!("warning: {w}");
                }
                let verb = if args.dry_run {
                    "would replace"
                } else {
                    "replaced"
                };
                for p in &s.replaced {
                    println!("{verb} /{p}");
                }
                let verb = if args.dry_run {
                    "would move aside"
                } else {
                    "moved aside"
                };
                for p in &s.moved_aside {
                    println!("{verb} /{p} (not in the archive)");
                }
                let times: Vec<String> = s
                    .seconds
                    .iter()
                    .map(|(p, t)| format!("{p} {t:.1}s"))
                    .collect();
                println!(
                    "{} {} of {} taken {}: {} entries, {} bytes ({})",
                    if args.dry_run { "checked" } else { "restored" },
                    archive.display(),
                    s.host,
                    s.created,
                    s.entries,
                    s.bytes,
                    times.join(", ")
                );
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("gatewayctl: {e}");
            match e {
                backup::BackupError::Damaged { .. } | backup::BackupError::Refused { .. } => {
                    DAMAGED
                }
                backup::BackupError::CannotRead(_) => CANNOT_READ,
                _ => exit::FAILED,
            }
        }
    }
}

/// What `gatewayctl drill` was asked.
pub struct DrillArgs {
    /// The archive (None: the newest in the backup directory).
    pub archive: Option<PathBuf>,
    /// Where the archives are (None: `[backup] dir`).
    pub dir: Option<PathBuf>,
    /// Whose archives.
    pub host: Option<String>,
    /// The root filesystem to boot under the restored files.
    pub image: PathBuf,
    /// The longest boot, start and health checks may take.
    pub timeout: std::time::Duration,
    /// Print the report as JSON.
    pub json: bool,
}

/// `gatewayctl drill`: exit 0 when every instance recovered, 1 otherwise.
pub fn drill_command(args: DrillArgs) -> i32 {
    let (config, _) = install::load_config(&Root::new("/"));
    let dir = args.dir.clone().unwrap_or_else(|| {
        config
            .backup
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(install::config::DEFAULT_BACKUP_DIR))
    });
    // Files the drill creates are not the operator's umask's business: the scratch root's
    // directories must read like the image's.
    // SAFETY: umask only sets the process's file mode mask.
    unsafe { libc::umask(0o022) };
    if let Err(e) = backup::scratch::private_mounts() {
        eprintln!("gatewayctl: drill: {e}; run it as root");
        return exit::FAILED;
    }
    backup::scratch::catch_interrupts();
    let report = backup::drill::drill(&backup::drill::DrillOptions {
        archive: args.archive,
        dir,
        host: args.host,
        image: args.image,
        scratch: PathBuf::from("/var/tmp"),
        timeout: args.timeout,
    });
    crate::journal::drill_done(&report);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", drill_text(&report));
    }
    match report.passed {
        true => exit::OK,
        false => exit::FAILED,
    }
}

/// A span of seconds as an operator reads it: `42s`, `3m 5s`, `2d 4h`.
pub fn span(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let sign = if seconds < 0 { "-" } else { "" };
    match s {
        0..=119 => format!("{sign}{s}s"),
        120..=7199 => format!("{sign}{}m {}s", s / 60, s % 60),
        7200..=172_799 => format!("{sign}{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{sign}{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// The drill report as text.
pub fn drill_text(r: &backup::drill::DrillReport) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "drill of {} ({}), started {}{}",
        r.archive.display(),
        if r.host.is_empty() { "?" } else { &r.host },
        r.started,
        r.systemd
            .as_ref()
            .map(|v| format!(", systemd {v}"))
            .unwrap_or_default()
    );
    let _ = writeln!(t, "\nrecovery time");
    for p in &r.phases {
        let _ = writeln!(t, "  {:<10} {:>7.2}s", p.name, p.seconds);
    }
    match r.rto_seconds {
        Some(rto) => {
            let _ = writeln!(
                t,
                "  {:<10} {:>7.2}s  from the drill's start to every instance serving",
                "RTO", rto
            );
        }
        None => {
            let _ = writeln!(t, "  RTO        none: not every instance recovered");
        }
    }
    if !r.instances.is_empty() {
        let width = r
            .instances
            .iter()
            .map(|i| i.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(8);
        let _ = writeln!(
            t,
            "\n  {:<width$}  {:>8}  {:>8}  result",
            "instance", "ready", "serving"
        );
        let secs = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |s| format!("{s:.2}s"));
        for i in &r.instances {
            let _ = writeln!(
                t,
                "  {:<width$}  {:>8}  {:>8}  {}",
                i.name,
                secs(i.ready_seconds),
                secs(i.serving_seconds),
                match &i.reason {
                    None => "pass".to_string(),
                    Some(why) => format!("FAIL: {why}"),
                }
            );
        }
    }
    if let Some(p) = &r.rpo {
        let _ = writeln!(t, "\nrecovery point");
        let _ = writeln!(
            t,
            "  archive taken   {} ({} before the drill)",
            p.created,
            span(p.archive_age_seconds)
        );
        if let Some(f) = &p.newest_file {
            let _ = writeln!(
                t,
                "  newest file     {} ({} old): /{}",
                f.mtime,
                span(f.age_seconds),
                f.path
            );
        }
        match &p.largest_gap {
            Some(g) => {
                let _ = writeln!(
                    t,
                    "  largest gap     {} between {} and {} ({} archives)",
                    span(g.seconds),
                    g.from,
                    g.to,
                    p.archives
                );
            }
            None => {
                let _ = writeln!(t, "  largest gap     none ({} archive)", p.archives);
            }
        }
        if let Some(s) = p.since_newest_archive_seconds {
            let confirmed = match p.since_newest_state_confirmed_seconds {
                Some(c) if c < s => format!(
                    " (still the installation's state {} ago: a backup run found nothing changed)",
                    span(c)
                ),
                _ => String::new(),
            };
            let _ = writeln!(t, "  newest archive  {} ago{confirmed}", span(s));
        }
    }
    for n in &r.notes {
        let _ = writeln!(t, "\nnote: {n}");
    }
    match (&r.failure, r.passed) {
        (Some(why), _) => {
            let _ = writeln!(t, "\nFAILED: {why}");
        }
        (None, true) => {
            let _ = writeln!(
                t,
                "\npassed: {} of {} instances serving",
                r.instances.len(),
                r.instances.len()
            );
        }
        (None, false) => {
            let bad = r.instances.iter().filter(|i| !i.passed).count();
            let _ = writeln!(
                t,
                "\nFAILED: {bad} of {} instances did not recover",
                r.instances.len()
            );
        }
    }
    t
}

/// One instance `--quiesce` takes cold.
struct ColdInstance {
    /// `group/instance`.
    shown: String,
    /// Its unit.
    unit: String,
    /// Its launcher's control socket and lb_rise (the balancers must take it back).
    socket: PathBuf,
    rise: u32,
    /// The units of the other instances of its group.
    peers: Vec<String>,
}

/// `--quiesce` through systemd: each running instance stopped (its `ExecStop=` drains it)
/// around the copy of its own directory and started again; the next goes out only once it
/// serves and its balancers took it back. The only running instance of a group is copied warm
/// (a cold copy would take the group out of its balancers).
pub(crate) struct Quiescer {
    systemd: crate::systemd::Systemd,
    cold: Vec<(PathBuf, ColdInstance)>,
    /// Who polled each instance before it stopped, by unit.
    balancers: std::sync::Mutex<std::collections::HashMap<String, Vec<crate::drain::Poller>>>,
    /// Instances copied while serving, and why.
    pub warm: Vec<String>,
}

impl Quiescer {
    /// Plan from what runs now.
    pub(crate) fn plan(inst: &install::Installation) -> Result<Quiescer, String> {
        let systemd = crate::systemd::Systemd::system().map_err(|e| e.to_string())?;
        let running: Vec<&install::Instance> = inst
            .instances
            .iter()
            .filter(|i| {
                systemd
                    .status(&i.unit())
                    .is_ok_and(|s| s.active_state == "active")
            })
            .collect();
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for i in &running {
            let shown = format!("{}/{}", i.group.name, i.name);
            let peers = running
                .iter()
                .filter(|o| o.group.name == i.group.name)
                .count();
            if peers < 2 {
                warm.push(format!("{shown}: the only running instance of group {}: copied while it serves (stopping it would take the group out of its balancers)", i.group.name));
                continue;
            }
            cold.push((
                i.dir.clone(),
                ColdInstance {
                    shown,
                    unit: i.unit(),
                    socket: crate::drain::control_socket(&i.runtime_dir()),
                    rise: i.settings.lb_rise,
                    peers: inst
                        .instances
                        .iter()
                        .filter(|o| o.group.name == i.group.name && o.unit() != i.unit())
                        .map(|o| o.unit())
                        .collect(),
                },
            ));
        }
        Ok(Quiescer {
            systemd,
            cold,
            balancers: Default::default(),
            warm,
        })
    }

    fn named(&self, name: &str) -> Result<&ColdInstance, String> {
        self.cold
            .iter()
            .map(|(_, c)| c)
            .find(|c| c.shown == name)
            .ok_or_else(|| format!("{name} is not an instance --quiesce planned for"))
    }
}

impl backup::Quiesce for Quiescer {
    fn dirs(&self) -> Vec<(PathBuf, String)> {
        self.cold
            .iter()
            .map(|(d, c)| (d.clone(), c.shown.clone()))
            .collect()
    }

    fn stop(&self, name: &str) -> Result<bool, String> {
        let c = self.named(name)?;
        // What runs now, not what ran when the backup began (its hooks may have taken long).
        let active = |unit: &str| {
            self.systemd
                .status(unit)
                .is_ok_and(|s| s.active_state == "active" && s.status_text.starts_with("serving"))
        };
        if !self
            .systemd
            .status(&c.unit)
            .is_ok_and(|s| s.active_state == "active")
        {
            eprintln!("quiesce: {}: not running now: copied as it is", c.shown);
            return Ok(false);
        }
        if !c.peers.iter().any(|p| active(p)) {
            eprintln!("quiesce: {}: no other instance of its group serves now: copied while it serves (stopping it would take the group out of its balancers)", c.shown);
            return Ok(false);
        }
        let polled = super::recent_balancers(&c.socket)?;
        self.balancers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(c.unit.clone(), polled);
        eprintln!("quiesce: {}: draining and stopping", c.shown);
        super::run_job_reported(&self.systemd, crate::systemd::Verb::Stop, &c.unit)
            .map_err(|_| format!("the stop job of {} failed", c.unit))?;
        Ok(true)
    }

    fn start(&self, name: &str) -> Result<(), String> {
        let c = self.named(name)?;
        let started = std::time::Instant::now();
        super::run_job_reported(&self.systemd, crate::systemd::Verb::Start, &c.unit)
            .map_err(|_| format!("the start job of {} failed", c.unit))?;
        super::wait_serving(&self.systemd, &c.unit, started)
            .map_err(|state| format!("started but not serving ({state})"))?;
        let serving_since = std::time::Instant::now();
        let polled = self
            .balancers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c.unit)
            .unwrap_or_default();
        if !polled.is_empty() {
            let how = super::wait_for_pool(&c.socket, Some(&polled), c.rise, serving_since)
                .map_err(|missing| {
                    format!("these load balancers have not taken it back: {missing}")
                })?;
            eprintln!("quiesce: {}: back in the pool ({how})", c.shown);
        }
        eprintln!(
            "quiesce: {}: copied cold, serving again after {:.1}s",
            c.shown,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
