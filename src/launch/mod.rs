//! The launcher (`ExecStart=` of `gateway@.service`, Type=notify): runs the gateway in the
//! foreground as its subreaper, forwards SIGTERM/SIGINT/SIGHUP, and exits with its status.
//! It reports READY=1 only once the gateway's health check answers 200, feeds the watchdog only
//! while it keeps answering, serves the load balancer's health endpoint and the control socket
//! that `gatewayctl drain` uses.

pub mod config;
mod control;
mod lb;
pub mod state;

use crate::journal;
pub use config::{LaunchConfig, Passphrase, Role};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use sd_notify::NotifyState;
use state::{Phase, Shared};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Poll interval of the health check while starting: READY=1 follows the first 200 within it.
pub const START_POLL: Duration = Duration::from_millis(20);
/// How long one health check may take at most (less with a short watchdog, so that an
/// unhealthy gateway is reported before the watchdog fires).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Exit status for an unusable configuration (sysexits EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;
/// Exit status when another copy of the instance already holds its health check address
/// (`RestartPreventExitStatus=` in the unit: retrying cannot help until that copy stops).
pub const EXIT_ALREADY_RUNNING: i32 = 250;

enum Event {
    Exited(WaitStatus),
    Signal(Signal),
}

fn notify(states: &[NotifyState]) {
    // Outside systemd there is no NOTIFY_SOCKET; nothing to tell.
    let _ = sd_notify::notify(states);
}

/// Map a wait status to an exit status: signal deaths become 128+n, as shells do.
pub fn exit_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 1,
    }
}

/// CPU time (clock ticks) used by a process and its reaped children: a start that burns CPU is
/// a start that makes progress.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the ")": state is field 3, utime 14, stime 15, cutime 16, cstime 17 (1-based).
    fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum()
}

/// The host (IPv6 without its brackets) and port of an http(s) URL, the scheme's port when
/// none is written; None when it is no such URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let default = match uri.scheme_str()? {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host.to_string(), uri.port_u16().unwrap_or(default)))
}

/// Take the instance directory's exclusive lock (flock on the directory itself: one inode
/// whatever path or symlink reaches it), without close-on-exec so that the gateway inherits it.
/// Err carries the exit status and what to tell the operator.
pub fn lock_instance_dir(
    dir: &std::path::Path,
) -> Result<nix::fcntl::Flock<std::fs::File>, (i32, String)> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, Flock, FlockArg};
    let canonical = std::fs::canonicalize(dir).map_err(|e| {
        (
            EXIT_CONFIG,
            format!(
                "cannot check that no other copy runs: {}: {e}; the instance directory must exist and be readable by the unit's user",
                dir.display()
            ),
        )
    })?;
    let file = std::fs::File::open(&canonical).map_err(|e| {
        (
            EXIT_CONFIG,
            format!(
                "cannot check that no other copy runs: {}: {e}",
                canonical.display()
            ),
        )
    })?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            (
                EXIT_ALREADY_RUNNING,
                format!(
                    "another copy already runs from {} (it holds the directory's lock): another unit or launcher of the same instance, perhaps through a symlinked path; stop it first",
                    canonical.display()
                ),
            )
        } else {
            (
                EXIT_CONFIG,
                format!("cannot check that no other copy runs: flock {}: {errno}", canonical.display()),
            )
        }
    })?;
    fcntl(&*lock, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| {
        (
            EXIT_CONFIG,
            format!(
                "cannot hand the lock of {} to the gateway: {e}",
                canonical.display()
            ),
        )
    })?;
    Ok(lock)
}

/// Whether a health URL points at this host (the Node Manager's and gateways' own ports).
fn is_loopback(url: &str) -> bool {
    host_port(url).is_some_and(|(host, _)| {
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// Another copy of this instance, found before ours is started: something already accepts
/// connections at the health check's address (a legacy init script's copy, or one started by
/// hand). Only this host's own (loopback) addresses are probed.
pub fn already_running(url: &str) -> Option<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    if !is_loopback(url) {
        return None;
    }
    let (host, port) = host_port(url)?;
    (host.as_str(), port)
        .to_socket_addrs()
        .ok()?
        .find(|a| std::net::TcpStream::connect_timeout(a, Duration::from_millis(500)).is_ok())
}

fn health_agent(timeout: Duration, url: &str) -> ureq::Agent {
    // The vendor's management ports serve certificates of the domain's own CA, issued to host
    // names, never to 127.0.0.1: a check of our own loopback port verifies nothing a
    // certificate could add, so it does not verify. Remote URLs are verified as usual.
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .disable_verification(is_loopback(url))
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(tls)
        // Health answers are a few bytes; ureq's 128 KiB default buffers would be most of the
        // launcher's memory.
        .input_buffer_size(16 * 1024)
        .output_buffer_size(4 * 1024)
        .max_idle_connections(1)
        .build()
        .into()
}

/// One health check: the HTTP status, or why there was none.
fn check(agent: &ureq::Agent, url: &str) -> Result<u16, String> {
    match agent.get(url).call() {
        Ok(mut resp) => {
            // Read the (small) answer to its end so the connection is kept for the next check:
            // a new connection per check is churn for the gateway, and each would look like a
            // client's request to the drain's view of its sockets.
            let _ = resp.body_mut().with_config().limit(64 * 1024).read_to_vec();
            Ok(resp.status().as_u16())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Name of the file in `$RUNTIME_DIRECTORY` through which `--ask-passphrase` (run as root by
/// `ExecStartPre=+`) hands the answer to the launcher, which deletes it at once.
pub const ASKED_PASSPHRASE_FILE: &str = "passphrase";

fn read_passphrase(
    source: &Passphrase,
    runtime_dir: Option<&std::path::Path>,
) -> Result<Option<Vec<u8>>, String> {
    match source {
        Passphrase::None => Ok(None),
        Passphrase::Credential(path) => std::fs::read(path)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Passphrase::Ask => {
            let dir = runtime_dir.ok_or("RUNTIME_DIRECTORY is not set")?;
            let path = dir.join(ASKED_PASSPHRASE_FILE);
            let secret = std::fs::read(&path).map_err(|e| {
                format!(
                    "{}: {e} (is the ExecStartPre= that asks for it in place?)",
                    path.display()
                )
            })?;
            let _ = std::fs::remove_file(&path);
            Ok(Some(secret))
        }
    }
}

/// `gateway-launch --ask-passphrase`, run as root before the launcher (`ExecStartPre=+`, the
/// unit's user may not ask): ask with systemd-ask-password and leave the answer in
/// `$RUNTIME_DIRECTORY`, readable only by the directory's owner (the unit's user).
pub fn ask_passphrase() -> i32 {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY").map(std::path::PathBuf::from) else {
        eprintln!("gateway-launch --ask-passphrase: RUNTIME_DIRECTORY is not set; run it as ExecStartPre=+ of the unit");
        return 1;
    };
    let name = match (
        std::env::var("GATEWAY_GROUP"),
        std::env::var("GATEWAY_INSTANCE"),
    ) {
        (Ok(g), Ok(i)) => format!("{g}/{i}"),
        _ => "Node Manager".to_string(),
    };
    let out = match Command::new("systemd-ask-password")
        .arg(format!("--id=gateway:{name}"))
        .arg("--timeout=0")
        .arg(format!("Passphrase for API Gateway {name}:"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
    {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => {
            eprintln!(
                "systemd-ask-password failed ({}); answer with systemd-tty-ask-password-agent",
                o.status
            );
            return 1;
        }
        Err(e) => {
            eprintln!("cannot run systemd-ask-password: {e}");
            return 1;
        }
    };
    let owner = match std::fs::metadata(&dir) {
        Ok(m) => (m.uid(), m.gid()),
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            return 1;
        }
    };
    let (tmp, path) = (dir.join(".passphrase.tmp"), dir.join(ASKED_PASSPHRASE_FILE));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1))?;
            f.write_all(&out)
        })
        .and_then(|_| std::fs::rename(&tmp, &path));
    match written {
        Ok(()) => 0,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("{}: {e}", path.display());
            1
        }
    }
}

/// The whole launcher. Returns the process exit status.
pub fn main(node_manager: bool) -> i32 {
    // One malloc arena: the launcher's threads allocate little, and an arena per thread costs
    // more resident memory than the launcher needs in all.
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // Block the signals we handle before any thread exists, so that all threads inherit the
    // mask and only the signal thread receives them. (The gateway gets a clean mask: std
    // resets it in the child.)
    let mut handled = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        handled.add(s);
    }
    if let Err(e) = handled.thread_block() {
        eprintln!("gateway-launch: cannot block signals: {e}");
        return 1;
    }
    let config = match LaunchConfig::from_env(node_manager, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            journal::init("gateway-launch", &[]);
            tracing::error!("{e}");
            notify(&[NotifyState::Status(&format!("configuration error: {e}"))]);
            return EXIT_CONFIG;
        }
    };
    let mut fields = vec![("GATEWAY_UNIT", config.unit.clone())];
    if let Role::Instance { group, instance } = &config.role {
        fields.push(("GATEWAY_GROUP", group.clone()));
        fields.push(("GATEWAY_INSTANCE", instance.clone()));
    }
    journal::init("gateway-launch", &fields);
    // Half a restore is neither installation: nothing runs on it, whatever the units loaded
    // before it began say (the generator's hold needs a daemon-reload to reach them).
    if let Some(i) = crate::backup::restore::swapping(std::path::Path::new("/")) {
        let e = format!(
            "a restore of {} is unfinished (/{}): run `gatewayctl restore --recover` first",
            i.archive,
            crate::backup::restore::INTENT
        );
        tracing::error!("{e}");
        notify(&[NotifyState::Status(&format!("held: {e}"))]);
        return EXIT_CONFIG;
    }
    run(config, handled)
}

fn run(config: LaunchConfig, handled: SigSet) -> i32 {
    let name = config.display_name();
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(
            "cannot become the gateway's subreaper ({e}); orphaned helpers will be reaped by PID 1"
        );
    }
    let shared = Arc::new(Shared::default());
    match &config.runtime_dir {
        Some(dir) => {
            let policy = control::DrainPolicy {
                delay: config.drain_delay,
                fall: config.drain_fall,
                timeout: config.drain_timeout,
            };
            let environment: Vec<String> = std::env::vars()
                .filter(|(k, _)| k.starts_with("GATEWAY_"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if let Err(e) = control::serve(
                &dir.join(crate::drain::SOCKET_NAME),
                policy,
                environment,
                shared.clone(),
            ) {
                tracing::error!("cannot open the control socket in {}: {e}; `gatewayctl drain` will not reach this instance", dir.display());
            }
        }
        None => {
            tracing::warn!("RUNTIME_DIRECTORY is not set: no control socket, so stops cannot drain")
        }
    }
    if let Some(addr) = config.lb_listen {
        if let Err(e) = lb::serve(addr, config.lb_path.clone(), name.clone(), shared.clone()) {
            tracing::error!("cannot serve the LB health endpoint: {e}; set lb_health_listen for {name} in /etc/gateway-systemd/gateway.toml");
            notify(&[NotifyState::Status(&format!(
                "cannot serve the LB health endpoint: {e}"
            ))]);
            return 1;
        }
    }
    // Held (and inherited by the gateway) for the instance's whole life: a second launcher of
    // the same directory, through whatever path or unit, cannot start beside it, even at the
    // same moment. The probe below still catches a copy started outside our units.
    let lock = match lock_instance_dir(&config.work_dir) {
        Ok(lock) => lock,
        Err((code, why)) => {
            tracing::error!(message_id = journal::MSG_ALREADY_RUNNING, "{name}: {why}");
            notify(&[NotifyState::Status(&format!("not started: {why}"))]);
            return code;
        }
    };
    if let Some(addr) = already_running(&config.health_url) {
        tracing::error!(
            message_id = journal::MSG_ALREADY_RUNNING,
            "{name} is already running outside this unit: {addr}, its health check address, \
             accepts connections. Stop that copy first (its /etc/init.d/vshell-* script or the \
             vendor's startinstance -k), or let `gatewayctl migrate-initd --apply` do it; two \
             copies would fight over the instance's ports and files"
        );
        notify(&[NotifyState::Status(&format!(
            "not started: another copy of {name} already listens on {addr}"
        ))]);
        return EXIT_ALREADY_RUNNING;
    }
    let passphrase = match read_passphrase(&config.passphrase, config.runtime_dir.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("cannot get the passphrase: {e}");
            notify(&[NotifyState::Status("cannot get the passphrase")]);
            return 1;
        }
    };

    let mut cmd = Command::new(&config.command[0]);
    // Its own process group: signals reach a wrapper script and the JVM it started alike.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.args(&config.command[1..])
        .current_dir(&config.work_dir)
        .stdin(if passphrase.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        // The gateway must not talk to systemd in our name.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                "cannot start {:?} in {}: {e}",
                config.command[0],
                config.work_dir.display()
            );
            notify(&[NotifyState::Status(&format!(
                "cannot start {}: {e}",
                config.command[0]
            ))]);
            return 1;
        }
    };
    let pid = child.id();
    if let (Some(mut stdin), Some(mut secret)) = (child.stdin.take(), passphrase) {
        if !secret.ends_with(b"\n") {
            secret.push(b'\n');
        }
        // A gateway that never reads its stdin must not block the launcher.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&secret);
            secret.iter_mut().for_each(|b| *b = 0);
        });
    }
    tracing::info!(
        message_id = journal::MSG_STARTED,
        "started {name}: process {pid} ({})",
        config.command.join(" ")
    );
    notify(&[
        NotifyState::MainPid(std::process::id()),
        NotifyState::Status(&format!("starting; waiting for {}", config.health_url)),
    ]);

    let (tx, rx) = mpsc::channel();
    let gateway = Pid::from_raw(pid as i32);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let Ok(sig) = handled.wait() else { continue };
            if sig == Signal::SIGCHLD {
                // As subreaper we also reap orphaned descendants; only the gateway matters.
                while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    match status.pid() {
                        Some(p) if p == gateway => {
                            let _ = tx.send(Event::Exited(status));
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            } else {
                // The whole process group: a start_command wrapper that does not exec would
                // otherwise leave the JVM to systemd's SIGKILL.
                if nix::sys::signal::killpg(gateway, sig).is_err() {
                    let _ = kill(gateway, sig);
                }
                let _ = tx.send(Event::Signal(sig));
            }
        })
        .expect("spawn the signal thread");
    if config.role != Role::NodeManager {
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("traffic".into())
            .spawn(move || sample_traffic(&shared, pid as i32));
    }
    // std's Child would reap on wait(); the signal thread does that now.
    std::mem::forget(child);
    // Never unlocked by us: flock's unlock would release the gateway's inherited copy too.
    // The lock goes when the last of the launcher and the gateway exits.
    std::mem::forget(lock);

    supervise(&config, &shared, &rx, pid, &name)
}

/// Sample the gateway's traffic connections for as long as the launcher runs (every
/// [`traffic::SAMPLE_EVERY`] while any is busy or a drain runs, every
/// [`traffic::SAMPLE_IDLE`] otherwise): the drain reads from them which requests are in
/// flight and which load balancer still sends requests. `gateway` is the gateway's process
/// group.
fn sample_traffic(shared: &Shared, gateway: i32) {
    use crate::drain::sock_diag::{socket_inodes, socket_inodes_of_group, SockDiag};
    use crate::drain::traffic;
    let set_blind = |why: Option<String>| {
        let mut blind = shared
            .traffic_blind
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match (&*blind, &why) {
            (None, Some(w)) => {
                tracing::warn!("{w}; drains cannot wait for requests in flight until this is fixed")
            }
            (Some(_), None) => tracing::info!("the gateway's connections can be seen again"),
            _ => {}
        }
        *blind = why;
    };
    let (mut ports, mut own) = (Vec::<u16>::new(), Vec::new());
    let mut foreign = std::collections::HashSet::new();
    let mut ports_read: Option<Instant> = None;
    let mut ipv6 = false;
    let mut diag: Option<SockDiag> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        if shared.phase() == Phase::Stopping {
            return;
        }
        let now = Instant::now();
        let sampled = (|| -> Result<usize, String> {
            let d = match &mut diag {
                Some(d) => d,
                None => diag.insert(SockDiag::open().map_err(|e| format!("cannot open a sock_diag netlink socket to see the gateway's connections ({e}); the unit must allow AF_NETLINK in RestrictAddressFamilies="))?),
            };
            // The gateway opens its listeners while it starts, and may open more when it
            // deploys.
            let every = if ports.is_empty() { 250 } else { 2000 };
            if ports_read.is_none_or(|t| now - t >= Duration::from_millis(every)) {
                let inodes = socket_inodes_of_group(gateway);
                let listening = d
                    .listening()
                    .map_err(|e| format!("cannot list listening sockets (sock_diag): {e}"))?;
                let gateways: Vec<_> = listening
                    .iter()
                    .filter(|s| inodes.contains(&s.inode))
                    .collect();
                ipv6 = gateways.iter().any(|s| s.local.is_ipv6());
                let mut found: Vec<u16> = gateways.iter().map(|s| s.local.port()).collect();
                found.sort_unstable();
                found.dedup();
                ports = found;
                ports_read = Some(now);
            }
            let sockets = d
                .connections(&ports, ipv6)
                .map_err(|e| format!("cannot list the gateway's connections (sock_diag): {e}"))?;
            // Our own health checks reach the gateway too; they are not traffic. Client ends
            // on this host not seen before are looked up among our open files.
            let unknown = sockets.iter().any(|s| {
                !ports.contains(&s.local.port())
                    && !own.contains(&s.inode)
                    && !foreign.contains(&s.inode)
            });
            if unknown {
                own = socket_inodes("/proc/self/fd");
                foreign = sockets
                    .iter()
                    .filter(|s| !ports.contains(&s.local.port()) && !own.contains(&s.inode))
                    .map(|s| s.inode)
                    .collect();
            }
            let mut traffic = shared.traffic.lock().unwrap_or_else(|e| e.into_inner());
            traffic.update(now, &ports, &sockets, &own);
            Ok(traffic.busy().0)
        })();
        let pause = match sampled {
            Ok(busy) => {
                set_blind(None);
                backoff = Duration::from_secs(1);
                match (busy, shared.phase()) {
                    (0, Phase::Serving | Phase::Unhealthy | Phase::Starting) => {
                        traffic::SAMPLE_IDLE
                    }
                    _ => traffic::SAMPLE_EVERY,
                }
            }
            Err(why) => {
                set_blind(Some(why));
                diag = None;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                backoff
            }
        };
        std::thread::sleep(pause);
    }
}

fn supervise(
    config: &LaunchConfig,
    shared: &Shared,
    rx: &mpsc::Receiver<Event>,
    pid: u32,
    name: &str,
) -> i32 {
    // With a watchdog of W, check every W/4 and give each check at most W/3: a hang is then
    // seen, logged and shown to the load balancers before systemd's W runs out.
    let serving_interval = config.watchdog.map_or(Duration::from_secs(2), |w| {
        (w / 4).clamp(Duration::from_millis(250), Duration::from_secs(2))
    });
    let timeout = config.watchdog.map_or(HEALTH_TIMEOUT, |w| {
        (w / 3).clamp(Duration::from_millis(500), HEALTH_TIMEOUT)
    });
    let agent = health_agent(timeout, &config.health_url);
    let started = Instant::now();
    let mut ready = false;
    let mut last_progress_check = Instant::now();
    let mut last_cpu = cpu_ticks(pid);
    let mut answered_since_check = false;
    loop {
        let interval = if ready { serving_interval } else { START_POLL };
        match rx.recv_timeout(interval) {
            Ok(Event::Exited(status)) => {
                shared.update(|_| Phase::Stopping);
                let code = exit_code(status);
                let how = match status {
                    WaitStatus::Signaled(_, sig, _) => format!("killed by {sig:?}"),
                    _ => format!("exit status {code}"),
                };
                tracing::info!(
                    message_id = journal::MSG_STOPPED,
                    exit_status = code,
                    "{name} stopped: {how}"
                );
                notify(&[
                    NotifyState::Stopping,
                    NotifyState::Status(&format!("gateway stopped: {how}")),
                ]);
                return code;
            }
            Ok(Event::Signal(sig)) => {
                if sig != Signal::SIGHUP {
                    shared.update(|_| Phase::Stopping);
                    notify(&[
                        NotifyState::Stopping,
                        NotifyState::Status(&format!("stopping: {sig:?} forwarded to the gateway")),
                    ]);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return 1,
        }
        if shared.phase() == Phase::Stopping {
            continue;
        }
        let result = check(&agent, &config.health_url);
        if !ready {
            if result == Ok(200) {
                ready = true;
                shared.update(|p| {
                    if p == Phase::Starting {
                        Phase::Serving
                    } else {
                        p
                    }
                });
                notify(&[
                    NotifyState::Ready,
                    NotifyState::Status(&format!("serving; {} answers 200", config.health_url)),
                ]);
                if config.watchdog.is_some() {
                    notify(&[NotifyState::Watchdog]);
                }
                tracing::info!(
                    message_id = journal::MSG_READY,
                    "{name} is ready after {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                continue;
            }
            answered_since_check |= result.is_ok();
            if last_progress_check.elapsed() >= Duration::from_secs(1) {
                let cpu = cpu_ticks(pid);
                let progress = answered_since_check || (cpu.is_some() && cpu > last_cpu);
                let remaining = config.start_timeout.saturating_sub(started.elapsed());
                let waiting = match &result {
                    Ok(code) => format!("{} answers {code}", config.health_url),
                    Err(e) => format!("{}: {e}", config.health_url),
                };
                if progress && !remaining.is_zero() {
                    let extend =
                        crate::install::start_progress_window(config.start_timeout).min(remaining);
                    notify(&[NotifyState::ExtendTimeoutUsec(
                        extend.as_micros().min(u32::MAX as u128) as u32,
                    )]);
                }
                notify(&[NotifyState::Status(&format!(
                    "starting for {}s; waiting for 200: {waiting}",
                    started.elapsed().as_secs()
                ))]);
                last_cpu = cpu;
                answered_since_check = false;
                last_progress_check = Instant::now();
            }
            continue;
        }
        match result {
            Ok(200) => {
                if config.watchdog.is_some() {
                    notify(&[NotifyState::Watchdog]);
                }
                if shared.phase() == Phase::Unhealthy {
                    shared.update(|p| {
                        if p == Phase::Unhealthy {
                            Phase::Serving
                        } else {
                            p
                        }
                    });
                    tracing::info!("{name} answers its health check again");
                    notify(&[NotifyState::Status(&format!(
                        "serving; {} answers 200",
                        config.health_url
                    ))]);
                }
            }
            other => {
                let why = match other {
                    Ok(code) => format!("answers {code}"),
                    Err(e) => e,
                };
                let before = shared.phase();
                shared.update(|p| {
                    if p == Phase::Serving {
                        Phase::Unhealthy
                    } else {
                        p
                    }
                });
                if before == Phase::Serving {
                    tracing::warn!(
                        message_id = journal::MSG_UNHEALTHY,
                        "{name} is unhealthy: {} {why}; the watchdog is no longer fed",
                        config.health_url
                    );
                }
                notify(&[NotifyState::Status(&format!(
                    "unhealthy: {} {why}",
                    config.health_url
                ))]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_recognised() {
        assert!(is_loopback("https://127.0.0.1:8090/healthcheck"));
        assert!(is_loopback("https://localhost/x"));
        assert!(is_loopback("https://[::1]:8090/"));
        assert!(!is_loopback("https://gw1.example.com:8090/healthcheck"));
        assert!(!is_loopback("https://127.example.com/"));
        let hp = host_port;
        assert_eq!(hp("https://[::1]/x"), Some(("::1".into(), 443)));
        assert_eq!(
            hp("http://127.0.0.1:8080/h?x=1"),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(hp("http://localhost"), Some(("localhost".into(), 80)));
        assert_eq!(hp("ftp://localhost/"), None);
        assert_eq!(hp("127.0.0.1:8080"), None);
    }

    #[test]
    fn signal_deaths_map_to_128_plus_n() {
        let pid = Pid::from_raw(1);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 3)), 3);
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGABRT, false)),
            134
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGTERM, false)),
            143
        );
    }
}
