//! Disaster-recovery drills: restore an archive into a scratch root, boot it under a throwaway
//! systemd as the host it stands in for, start every instance the archive enables, wait until
//! each is ready and its LB endpoint answers 200, tear everything down, and report how long
//! recovery took (RTO, per phase and per instance) and how much data a disaster would have cost
//! (RPO: the archive's age, its newest file, the largest gap between archives).

use super::manifest::{Kind, Manifest};
use super::restore::{self, RestoreOptions};
use super::scratch::{self, Scratch, ScratchError};
use crate::install::{self, Root};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// The archive; None: the newest of `host` in `dir`.
    pub archive: Option<PathBuf>,
    /// Where the archives are (the newest is drilled; gaps are measured between them).
    pub dir: PathBuf,
    /// Whose archives (None: this host's, or the only host's in `dir`).
    pub host: Option<String>,
    /// The root filesystem booted under the restored files: `/` (this host's system and
    /// vendor software) or a standby's image.
    pub image: PathBuf,
    /// Where the scratch root is made.
    pub scratch: PathBuf,
    /// The longest the boot, start and health phases may take together.
    pub timeout: Duration,
}

/// One phase of the drill and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// verify, extract, boot, start or healthy.
    pub name: &'static str,
    /// Seconds.
    pub seconds: f64,
}

/// One instance's recovery.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceResult {
    /// Its unit.
    pub unit: String,
    /// group/instance, or "Node Manager".
    pub name: String,
    /// Seconds from the drill's start until systemd had it active (READY=1).
    pub ready_seconds: Option<f64>,
    /// Seconds from the drill's start until it was ready and its LB endpoint answered 200
    /// (None: no endpoint, or it never did).
    pub serving_seconds: Option<f64>,
    /// Its LB health endpoint, as checked inside the scratch root.
    pub lb_endpoint: Option<String>,
    /// Ready, and serving where it has an endpoint.
    pub passed: bool,
    /// Why it failed.
    pub reason: Option<String>,
}

/// The newest file in an archive.
#[derive(Debug, Clone, Serialize)]
pub struct NewestFile {
    /// Its path (relative to `/`).
    pub path: String,
    /// Its modification time (UTC).
    pub mtime: String,
    /// Seconds since the epoch.
    pub mtime_unix: i64,
    /// Seconds from it to the drill's start: the age of the newest data a recovery brings back.
    pub age_seconds: i64,
}

/// The largest gap between consecutive archives.
#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    /// Seconds between them.
    pub seconds: i64,
    /// The older archive's file name.
    pub from: String,
    /// The newer one's.
    pub to: String,
}

/// Recovery point figures.
#[derive(Debug, Clone, Serialize)]
pub struct Rpo {
    /// When the archive was taken (UTC, from its manifest).
    pub created: String,
    /// Seconds since the epoch.
    pub created_unix: i64,
    /// Seconds from the archive's creation to the drill's start: what restoring it now loses.
    pub archive_age_seconds: i64,
    /// Its newest file.
    pub newest_file: Option<NewestFile>,
    /// Archives of this host in the directory.
    pub archives: usize,
    /// The largest gap between consecutive archives there: what a disaster at the worst
    /// moment would lose.
    pub largest_gap: Option<Gap>,
    /// Seconds from the newest archive there to the drill's start.
    pub since_newest_archive_seconds: Option<i64>,
    /// Seconds from the last backup run that found the newest archive still the installation's
    /// state (`--if-changed` kept no copy) to the drill's start: the exposure right now.
    pub since_newest_state_confirmed_seconds: Option<i64>,
}

/// What a drill found.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// The archive drilled.
    pub archive: PathBuf,
    /// The host it stands in for.
    pub host: String,
    /// When the drill started (UTC).
    pub started: String,
    /// Every instance came up ready and serving.
    pub passed: bool,
    /// Why the drill failed before its instances could be judged.
    pub failure: Option<String>,
    /// Seconds from the drill's start to every instance serving (None unless passed).
    pub rto_seconds: Option<f64>,
    /// The phases, in order; they add up to the time until the last instance served.
    pub phases: Vec<Phase>,
    /// Per instance.
    pub instances: Vec<InstanceResult>,
    /// Recovery point figures.
    pub rpo: Option<Rpo>,
    /// The systemd version that booted the scratch root.
    pub systemd: Option<String>,
    /// What the drill had to do differently from a real recovery, and what a real one would
    /// meet (nothing enabled at boot).
    pub notes: Vec<String>,
}

/// Units the drill masks: a private network never comes "online", and waiting for it would
/// count minutes of nothing into the RTO.
const WAIT_ONLINE: [&str; 2] = [
    "systemd-networkd-wait-online.service",
    "NetworkManager-wait-online.service",
];

/// Our timers would fire inside the scratch root (basic.target pulls in timers.target): a
/// drill takes no backups and starts no drills.
const OUR_TIMERS: [&str; 2] = ["gateway-backup.timer", "gateway-drill.timer"];

/// An archive in a destination directory, by its name `<host>-<UTC time>.tar.zst` (`.age`
/// after it when encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The file.
    pub path: PathBuf,
    /// Its host.
    pub host: String,
    /// Its time, seconds since the epoch.
    pub unix: i64,
}

/// Parse `20261123T213500Z`.
pub fn parse_stamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let date = time::Date::from_calendar_date(
        num(0..4)? as i32,
        time::Month::try_from(num(4..6)? as u8).ok()?,
        num(6..8)? as u8,
    )
    .ok()?;
    let t = time::Time::from_hms(num(9..11)? as u8, num(11..13)? as u8, num(13..15)? as u8).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// The archives in `dir` (by name; other files are ignored), oldest first.
pub fn list_archives(dir: &Path) -> std::io::Result<Vec<Listed>> {
    let mut found = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        let Some(stem) = name
            .strip_suffix(super::ENCRYPTED_SUFFIX)
            .or_else(|| name.strip_suffix(".tar.zst"))
        else {
            continue;
        };
        let Some((mut host, mut stamp)) = stem.rsplit_once('-') else {
            continue;
        };
        // A second archive in the same second is `<host>-<time>-2.tar.zst`.
        if stamp.bytes().all(|b| b.is_ascii_digit()) {
            if let Some((h, s)) = host.rsplit_once('-') {
                (host, stamp) = (h, s);
            }
        }
        if let Some(unix) = parse_stamp(stamp) {
            found.push(Listed {
                path: e.path(),
                host: host.to_string(),
                unix,
            });
        }
    }
    found.sort_by(|a, b| (a.unix, &a.path).cmp(&(b.unix, &b.path)));
    Ok(found)
}

/// The host whose archives a drill (or prune) means: the one named, this host when it has
/// archives there, or the only host that has.
pub fn choose_host(
    listed: &[Listed],
    named: Option<&str>,
    this_host: &str,
) -> Result<String, String> {
    if let Some(h) = named {
        return Ok(h.to_string());
    }
    let hosts: std::collections::BTreeSet<&str> = listed.iter().map(|l| l.host.as_str()).collect();
    if hosts.contains(this_host) || hosts.is_empty() {
        return Ok(this_host.to_string());
    }
    match hosts.len() {
        1 => Ok(hosts.into_iter().next().unwrap_or_default().to_string()),
        _ => Err(format!(
            "archives of several hosts are there ({}); say which with --host",
            hosts.into_iter().collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The largest gap between consecutive archives (oldest first).
fn largest_gap(of_host: &[&Listed]) -> Option<Gap> {
    of_host
        .windows(2)
        .map(|w| (w[1].unix - w[0].unix, w[0], w[1]))
        .max_by_key(|(gap, _, _)| *gap)
        .map(|(seconds, a, b)| Gap {
            seconds,
            from: file_name(&a.path),
            to: file_name(&b.path),
        })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// Recovery point figures for `manifest`, drilled at `now`, among the archives in `dir`.
pub fn rpo(manifest: &Manifest, listed: &[Listed], now: i64) -> Rpo {
    let newest_file = manifest
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .max_by_key(|e| (e.mtime, e.mtime_nsec))
        .map(|e| NewestFile {
            path: e.path.clone(),
            mtime: super::rfc3339(e.mtime),
            mtime_unix: e.mtime,
            age_seconds: now - e.mtime,
        });
    let of_host: Vec<&Listed> = listed.iter().filter(|l| l.host == manifest.host).collect();
    Rpo {
        created: manifest.created.clone(),
        created_unix: manifest.created_unix,
        archive_age_seconds: now - manifest.created_unix,
        newest_file,
        archives: of_host.len(),
        largest_gap: largest_gap(&of_host),
        since_newest_archive_seconds: of_host.last().map(|l| now - l.unix),
        since_newest_state_confirmed_seconds: of_host
            .last()
            .and_then(|l| super::last_state::current_at(&l.path, &manifest.host))
            .map(|at| now - at),
    }
}

/// The host's CLOCK_MONOTONIC in microseconds: the container shares it, so systemd's
/// `*TimestampMonotonic` properties inside compare with it directly.
fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Phases measured on one clock, back to back, so that they add up.
struct Clock {
    start_us: u64,
    last_us: u64,
    phases: Vec<Phase>,
}

impl Clock {
    fn new() -> Clock {
        let now = monotonic_us();
        Clock {
            start_us: now,
            last_us: now,
            phases: Vec::new(),
        }
    }

    fn lap(&mut self, name: &'static str) {
        let now = monotonic_us();
        self.phases.push(Phase {
            name,
            seconds: (now - self.last_us) as f64 / 1e6,
        });
        self.last_us = now;
    }

    /// Seconds from the drill's start to a monotonic time.
    fn since_start(&self, us: u64) -> f64 {
        us.saturating_sub(self.start_us) as f64 / 1e6
    }
}

/// Run a drill. Never touches the host: everything is written under the scratch directory,
/// removed at the end (also on failure or interruption).
pub fn drill(opts: &DrillOptions) -> DrillReport {
    let started_unix = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut clock = Clock::new();
    let mut report = DrillReport {
        archive: opts.archive.clone().unwrap_or_default(),
        host: String::new(),
        started: super::rfc3339(started_unix),
        passed: false,
        failure: None,
        rto_seconds: None,
        phases: Vec::new(),
        instances: Vec::new(),
        rpo: None,
        systemd: None,
        notes: Vec::new(),
    };
    if let Err(why) = run(opts, started_unix, &mut clock, &mut report) {
        report.failure = Some(why);
    }
    report.phases = clock.phases;
    report.passed = report.failure.is_none() && report.instances.iter().all(|i| i.passed);
    if report.passed {
        // The last instance's first 200 (or readiness, without an LB endpoint): the phases
        // end a poll later.
        report.rto_seconds = report
            .instances
            .iter()
            .filter_map(|i| i.serving_seconds.or(i.ready_seconds))
            .reduce(f64::max);
    }
    report
}

fn run(
    opts: &DrillOptions,
    now: i64,
    clock: &mut Clock,
    report: &mut DrillReport,
) -> Result<(), String> {
    let listed = list_archives(&opts.dir).unwrap_or_default();
    let archive = match &opts.archive {
        Some(a) => a.clone(),
        None => {
            let this_host = install::load(&Root::new("/")).0.host;
            let host = choose_host(&listed, opts.host.as_deref(), &this_host)?;
            listed
                .iter()
                .rfind(|l| l.host == host)
                .map(|l| l.path.clone())
                .ok_or_else(|| {
                    format!(
                        "no archive of {host} in {}; take one with `gatewayctl backup`, or name one",
                        opts.dir.display()
                    )
                })?
        }
    };
    report.archive = archive.clone();
    scratch::interrupted().map_err(|e| e.to_string())?;

    // verify: every byte, before anything is extracted.
    let verified = super::verify::verify(&archive).map_err(|e| format!("verify: {e}"))?;
    if !verified.problems.is_empty() {
        return Err(format!(
            "verify: {} is damaged: {}",
            archive.display(),
            verified.problems.join("; ")
        ));
    }
    let manifest = super::verify::read_manifest_only(&archive).map_err(|e| e.to_string())?;
    report.host = manifest.host.clone();
    // Gaps are measured among the archives beside the one drilled.
    let beside = archive.parent().map(list_archives).and_then(Result::ok);
    report.rpo = Some(rpo(&manifest, beside.as_deref().unwrap_or(&listed), now));
    clock.lap("verify");

    // extract: restore into the scratch root's upper layer, as onto a standby of that host.
    let mut s = Scratch::prepare(&opts.scratch).map_err(|e| e.to_string())?;
    extract(&archive, &manifest, opts, &mut s, report)?;
    clock.lap("extract");

    // boot: the scratch root's own systemd, up to basic.target (nothing else the image enables).
    let deadline = std::time::Instant::now() + opts.timeout;
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    let state = s
        .boot(
            &["systemd.unit=basic.target", "systemd.firstboot=off"],
            left(),
        )
        .map_err(|e| e.to_string())?;
    if state != "running" {
        report.notes.push(format!(
            "the scratch root booted {state}: {}",
            failed_units(&s)
        ));
    }
    report.systemd = s
        .exec(&["systemctl", "--version"], Duration::from_secs(10))
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .map(str::to_string)
        });
    clock.lap("boot");

    // start: what gateway.target wants (the instances the archive enables), as at boot.
    let wants = show(&s, "gateway.target", "Wants")?;
    let units: Vec<String> = wants
        .split_whitespace()
        .map(|u| u.trim_matches('"').replace("\\\\", "\\"))
        .filter(|u| u.starts_with("gateway"))
        .collect();
    if units.is_empty() {
        return Err(format!(
            "the archive enables no instance: gateway.target wants nothing in the restored state of {}",
            manifest.host
        ));
    }
    let endpoints = endpoints(&s, &units);
    let checker = HealthChecker::start(s.netns(), endpoints.clone());
    let out = s
        .exec(&["systemctl", "start", "gateway.target"], left())
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        report.notes.push(format!(
            "systemctl start gateway.target: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    clock.lap("start");

    // healthy: every LB endpoint answered 200 (checked from inside, since the drill started).
    let served = checker.wait(&units, &s, left());
    clock.lap("healthy");
    for unit in &units {
        report.instances.push(judge(
            &s,
            unit,
            endpoints.get(unit),
            served.get(unit),
            clock,
        ));
    }
    Ok(())
}

/// Restore the archive into the upper layer, hide the image's own copies of every scope, and
/// mount the overlay.
fn extract(
    archive: &Path,
    manifest: &Manifest,
    opts: &DrillOptions,
    s: &mut Scratch,
    report: &mut DrillReport,
) -> Result<(), String> {
    let upper = s.upper();
    let image = &opts.image;
    // Owners are mapped by name as on the image; restore reads the target's files.
    fs::create_dir_all(upper.join("etc/gateway-systemd")).map_err(|e| e.to_string())?;
    for f in ["etc/passwd", "etc/group"] {
        if image.join(f).exists() {
            fs::copy(image.join(f), upper.join(f)).map_err(|e| format!("{f}: {e}"))?;
        }
    }
    // Restore accepts the archive's install_dir and extra roots only where the target's config
    // names them; the drill's target is made for this archive.
    let extra: Vec<String> = manifest
        .scopes
        .iter()
        .filter(|sc| sc.name == "extra-root")
        .map(|sc| format!("{:?}", format!("/{}", sc.path)))
        .collect();
    let seed = format!(
        "install_dir = {:?}\n[backup]\nextra_roots = [{}]\n",
        format!("/{}", manifest.install_dir),
        extra.join(", ")
    );
    fs::write(upper.join("etc/gateway-systemd/gateway.toml"), seed).map_err(|e| e.to_string())?;
    let restored = restore::restore(
        archive,
        &RestoreOptions {
            target: upper.clone(),
            dry_run: false,
            numeric_ids: false,
            as_host: Some(manifest.host.clone()),
        },
        None,
    )
    .map_err(|e| format!("extract: {e}"))?;
    report.notes.extend(restored.warnings);
    // The rollback copies (the seed above) are not part of the restored host.
    if let Ok(bytes) = fs::read(upper.join(restore::LAST)) {
        if let Ok(last) = serde_json::from_slice::<restore::Intent>(&bytes) {
            for st in &last.staging {
                let _ = fs::remove_dir_all(upper.join(st));
            }
        }
    }
    hide_image_copies(manifest, image, &upper).map_err(|e| e.to_string())?;
    like_the_image(manifest, image, &upper)?;
    // The host's own state (its backups, a restore of its own) is not the archived host's.
    let state = upper.join("var/lib/gateway-systemd");
    fs::create_dir_all(&state).map_err(|e| e.to_string())?;
    scratch::opaque(&state).map_err(|e| e.to_string())?;
    // A machine id of its own: without one systemd takes the boot for a first boot and
    // applies presets to everything installed.
    let id = fs::read_to_string("/proc/sys/kernel/random/uuid").map_err(|e| e.to_string())?;
    fs::write(
        upper.join("etc/machine-id"),
        format!("{}\n", id.trim().replace('-', "")),
    )
    .map_err(|e| e.to_string())?;
    let units = upper.join("etc/systemd/system");
    fs::create_dir_all(&units).map_err(|e| e.to_string())?;
    for u in WAIT_ONLINE.iter().chain(&OUR_TIMERS) {
        let _ = fs::remove_file(units.join(u));
        std::os::unix::fs::symlink("/dev/null", units.join(u)).map_err(|e| e.to_string())?;
    }
    report.notes.push(
        "the scratch root has a private network: network-online waits are masked, load balancers are not reached"
            .into(),
    );
    // Trees on mounts of their own (an install dir on its own filesystem) are not in the
    // image's root layer: each gets an overlay of its own over the image's mount.
    let subs = submounts(manifest, image);
    let mut moved = Vec::new();
    for rel in &subs {
        let (from, to) = (upper.join(rel), s.sub_upper(rel));
        fs::create_dir_all(&from).map_err(|e| e.to_string())?;
        fs::create_dir_all(to.parent().unwrap_or(Path::new("/"))).map_err(|e| e.to_string())?;
        fs::rename(&from, &to).map_err(|e| format!("{}: {e}", from.display()))?;
        fs::create_dir(&from).map_err(|e| e.to_string())?;
        moved.push(rel.clone());
    }
    s.mount(image).map_err(|e| e.to_string())?;
    for rel in moved {
        s.mount_sub(&image.join(&rel), &rel)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Directories of the upper layer that the archive does not list (the way down to each scope,
/// made by restore) take the image's owner and mode: overlayfs shows the upper directory's, and
/// a root-owned 0700 `/opt` would lock the gateway's user out in the drill only.
fn like_the_image(manifest: &Manifest, image: &Path, upper: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let archived: std::collections::HashSet<&str> =
        manifest.entries.iter().map(|e| e.path.as_str()).collect();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let up = upper.join(&rel);
        let rel_text = rel.display().to_string();
        if archived.contains(rel_text.as_str()) {
            continue;
        }
        if let Ok(m) = fs::metadata(image.join(&rel)) {
            if m.is_dir() {
                std::os::unix::fs::lchown(&up, Some(m.uid()), Some(m.gid()))
                    .and_then(|_| {
                        fs::set_permissions(&up, fs::Permissions::from_mode(m.mode() & 0o7777))
                    })
                    .map_err(|e| format!("{}: {e}", up.display()))?;
            }
        }
        for e in fs::read_dir(&up)
            .map_err(|e| format!("{}: {e}", up.display()))?
            .flatten()
        {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(rel.join(e.file_name()));
            }
        }
    }
    Ok(())
}

/// Where a scope lies on a filesystem other than the image root's: the topmost such directory
/// on the way to each tree scope (relative to `/`).
fn submounts(manifest: &Manifest, image: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(root_dev) = fs::metadata(image).map(|m| m.dev()) else {
        return Vec::new();
    };
    let mut found: Vec<String> = Vec::new();
    for sc in &manifest.scopes {
        let mut at = PathBuf::new();
        for c in Path::new(&sc.path).components() {
            at.push(c);
            let Ok(m) = fs::metadata(image.join(&at)) else {
                break;
            };
            if m.dev() != root_dev {
                let rel = at.display().to_string();
                if !found.contains(&rel) {
                    found.push(rel);
                }
                break;
            }
        }
    }
    found
}

/// In the upper layer: every restored directory scope opaque (the image's files under it
/// hidden), every scope entry the image has and the archive lacks whited out. Then the
/// scratch root holds exactly the archive's scopes over the image's system and software.
fn hide_image_copies(manifest: &Manifest, image: &Path, upper: &Path) -> Result<(), ScratchError> {
    let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
    let is_dir = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    for sc in &manifest.scopes {
        match sc.kind.as_str() {
            "tree" | "file" => {
                let up = upper.join(&sc.path);
                if is_dir(&up) {
                    scratch::opaque(&up)?;
                } else if !exists(&up) && exists(&image.join(&sc.path)) {
                    scratch::whiteout(upper, &sc.path)?;
                }
            }
            _ => {
                let matches = |n: &str| sc.prefixes.iter().any(|p| n.starts_with(p.as_str()));
                let names = |dir: &Path| -> Vec<String> {
                    fs::read_dir(dir)
                        .map(|rd| {
                            rd.flatten()
                                .map(|e| e.file_name().to_string_lossy().to_string())
                                .filter(|n| matches(n))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                for n in names(&upper.join(&sc.path)) {
                    let up = upper.join(&sc.path).join(&n);
                    if is_dir(&up) {
                        scratch::opaque(&up)?;
                    }
                }
                for n in names(&image.join(&sc.path)) {
                    if !exists(&upper.join(&sc.path).join(&n)) {
                        scratch::whiteout(upper, &format!("{}/{n}", sc.path))?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn show(s: &Scratch, unit: &str, property: &str) -> Result<String, String> {
    let out = s
        .exec(
            &["systemctl", "show", "-P", property, unit],
            Duration::from_secs(30),
        )
        .map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string()),
        false => Err(format!(
            "systemctl show {unit} in the scratch root: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn failed_units(s: &Scratch) -> String {
    s.exec(
        &[
            "systemctl",
            "list-units",
            "--failed",
            "--no-legend",
            "--plain",
        ],
        Duration::from_secs(10),
    )
    .map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect::<Vec<_>>()
            .join(", ")
    })
    .unwrap_or_default()
}

/// Each unit's LB health URL, from the restored installation as its generator reads it.
fn endpoints(s: &Scratch, units: &[String]) -> BTreeMap<String, String> {
    let (inst, _) = install::load(&Root::new(s.root()));
    let mut urls = BTreeMap::new();
    for i in &inst.instances {
        let unit = i.unit();
        if !units.contains(&unit) {
            continue;
        }
        if let Some(addr) = i.settings.lb_health_listen {
            let ip = match addr.ip() {
                std::net::IpAddr::V4(v) if v.is_unspecified() => "127.0.0.1".to_string(),
                std::net::IpAddr::V6(v) if v.is_unspecified() => "[::1]".to_string(),
                std::net::IpAddr::V6(v) => format!("[{v}]"),
                ip => ip.to_string(),
            };
            urls.insert(
                unit,
                format!("http://{ip}:{}{}", addr.port(), i.settings.lb_health_path),
            );
        }
    }
    urls
}

/// Polls every LB endpoint from inside the scratch root's network namespace, from the moment
/// the start job is sent: the first 200 of each, on the host's monotonic clock.
struct HealthChecker {
    served: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Result<u64, String>>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    urls: BTreeMap<String, String>,
}

impl HealthChecker {
    fn start(netns: PathBuf, urls: BTreeMap<String, String>) -> HealthChecker {
        use std::sync::{atomic::AtomicBool, Arc, Mutex};
        let served = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2, polled) = (served.clone(), stop.clone(), urls.clone());
        let thread = std::thread::spawn(move || {
            let entered = fs::File::open(&netns)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    // Only this thread moves: the namespace is per thread.
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| e.to_string())
                });
            let mut last: BTreeMap<String, String> = BTreeMap::new();
            if let Err(e) = entered {
                let mut m = s2.lock().unwrap_or_else(|e| e.into_inner());
                for unit in urls.keys() {
                    m.insert(
                        unit.clone(),
                        Err(format!("cannot enter the scratch root's network: {e}")),
                    );
                }
                return;
            }
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(2)))
                .http_status_as_error(false)
                .max_redirects(0)
                .build()
                .into();
            while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
                let mut all = true;
                for (unit, url) in &urls {
                    if matches!(
                        s2.lock().unwrap_or_else(|e| e.into_inner()).get(unit),
                        Some(Ok(_))
                    ) {
                        continue;
                    }
                    all = false;
                    let answer = match agent.get(url).call() {
                        Ok(mut r) => {
                            let _ = r.body_mut().with_config().limit(64 * 1024).read_to_vec();
                            Ok(r.status().as_u16())
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    match answer {
                        Ok(200) => {
                            s2.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(unit.clone(), Ok(monotonic_us()));
                        }
                        Ok(code) => {
                            last.insert(unit.clone(), format!("{url} answered {code}"));
                        }
                        Err(e) => {
                            last.insert(unit.clone(), format!("{url}: {e}"));
                        }
                    }
                }
                if all {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut m = s2.lock().unwrap_or_else(|e| e.into_inner());
            for (unit, why) in last {
                m.entry(unit).or_insert(Err(why));
            }
        });
        HealthChecker {
            served,
            stop,
            thread: Some(thread),
            urls: polled,
        }
    }

    /// Wait until every active unit's endpoint answered 200 (a unit that is not active will
    /// not serve: no point waiting for it) or the time is up; each unit's first 200 or why not.
    fn wait(
        mut self,
        units: &[String],
        s: &Scratch,
        timeout: Duration,
    ) -> BTreeMap<String, Result<u64, String>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let served: Vec<String> = {
                let m = self.served.lock().unwrap_or_else(|e| e.into_inner());
                m.iter()
                    .filter(|(_, v)| v.is_ok())
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            let waiting = units.iter().any(|u| {
                self.urls.contains_key(u)
                    && !served.contains(u)
                    && show(s, u, "ActiveState").is_ok_and(|st| st == "active")
            });
            let finished = self.thread.as_ref().is_none_or(|t| t.is_finished());
            if !waiting
                || finished
                || std::time::Instant::now() > deadline
                || scratch::interrupted().is_err()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let m = self.served.lock().unwrap_or_else(|e| e.into_inner());
        m.clone()
    }
}

/// Whether one unit recovered, and when.
fn judge(
    s: &Scratch,
    unit: &str,
    endpoint: Option<&String>,
    served: Option<&Result<u64, String>>,
    clock: &Clock,
) -> InstanceResult {
    let name = unit
        .strip_prefix("gateway@")
        .and_then(|u| u.strip_suffix(".service"))
        .and_then(|i| crate::units::name::parse_instance_string(i).ok())
        .map_or_else(|| "Node Manager".to_string(), |(g, i)| format!("{g}/{i}"));
    let state = show(s, unit, "ActiveState").unwrap_or_default();
    let entered: u64 = show(s, unit, "ActiveEnterTimestampMonotonic")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let ready_seconds = (state == "active" && entered > 0).then(|| clock.since_start(entered));
    // Serving means ready and answering the balancer. The launcher opens the
    // balancer's check a moment before systemd records READY, so a first 200
    // can precede the ready time by microseconds; the later of the two counts.
    let serving_seconds = match served {
        Some(Ok(us)) => {
            Some(ready_seconds.map_or(clock.since_start(*us), |r| r.max(clock.since_start(*us))))
        }
        _ => None,
    };
    let reason = if state != "active" {
        let sub = show(s, unit, "SubState").unwrap_or_default();
        let result = show(s, unit, "Result").unwrap_or_default();
        let text = show(s, unit, "StatusText").unwrap_or_default();
        Some(format!(
            "not ready ({state}/{sub}, result {result}){}",
            match text.is_empty() {
                true => String::new(),
                false => format!(": {text}"),
            }
        ))
    } else {
        match (endpoint, served) {
            (Some(_), Some(Ok(_))) | (None, _) => None,
            (Some(_), Some(Err(why))) => Some(format!("ready, but not serving: {why}")),
            (Some(url), None) => Some(format!("ready, but {url} never answered 200")),
        }
    };
    InstanceResult {
        unit: unit.to_string(),
        name,
        ready_seconds,
        serving_seconds,
        lb_endpoint: endpoint.cloned(),
        passed: reason.is_none(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_listed_by_the_time_in_their_names() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "gw1.example.com-20261123T213500Z.tar.zst",
            "gw1.example.com-20261123T213500Z-2.tar.zst",
            "gw1.example.com-20261120T000000Z.tar.zst",
            "gw1.example.com-20261120T000000Z.tar.zst.sha256",
            "my-host-20261121T000000Z.tar.zst",
            "my-host-20261122T000000Z.tar.zst.age",
            "my-host-20261122T000000Z.tar.zst.age.sha256",
            "notes.txt",
            "gw1-2026.tar.zst",
        ] {
            fs::write(dir.path().join(n), "").unwrap();
        }
        let l = list_archives(dir.path()).unwrap();
        let shown: Vec<(String, i64)> = l.iter().map(|l| (l.host.clone(), l.unix)).collect();
        assert_eq!(
            shown,
            vec![
                ("gw1.example.com".into(), 1_795_132_800),
                ("my-host".into(), 1_795_219_200),
                ("my-host".into(), 1_795_305_600),
                ("gw1.example.com".into(), 1_795_469_700),
                ("gw1.example.com".into(), 1_795_469_700),
            ]
        );
        assert_eq!(parse_stamp("20261123T213500Z"), Some(1_795_469_700));
        assert_eq!(parse_stamp("20261323T213500Z"), None);
        assert_eq!(choose_host(&l, None, "standby"), Err("archives of several hosts are there (gw1.example.com, my-host); say which with --host".into()));
        assert_eq!(choose_host(&l, None, "my-host"), Ok("my-host".into()));
    }

    #[test]
    fn the_largest_gap_is_between_consecutive_archives() {
        let l: Vec<Listed> = [0, 100, 400, 450]
            .iter()
            .map(|&t| Listed {
                path: PathBuf::from(format!("/b/h-{t}")),
                host: "h".into(),
                unix: t,
            })
            .collect();
        let refs: Vec<&Listed> = l.iter().collect();
        let g = largest_gap(&refs).unwrap();
        assert_eq!(
            (g.seconds, g.from.as_str(), g.to.as_str()),
            (300, "h-100", "h-400")
        );
    }
}
