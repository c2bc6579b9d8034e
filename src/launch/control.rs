//! The control socket in `$RUNTIME_DIRECTORY`: `gatewayctl drain` talks to it (see
//! [`crate::drain`]). Only root and the unit's own user may connect.

use super::state::Shared;
use crate::journal;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Listen on `path` (mode 0600) and answer requests in background threads.
pub fn serve(path: &Path, drain_delay: Duration, shared: Arc<Shared>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || handle(stream, drain_delay, &shared));
            }
        })?;
    Ok(())
}

fn peer_allowed(stream: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(stream, PeerCredentials) {
        Ok(cred) => cred.uid() == 0 || cred.uid() == nix::unistd::geteuid().as_raw(),
        Err(_) => false,
    }
}

fn handle(stream: UnixStream, drain_delay: Duration, shared: &Shared) {
    if !peer_allowed(&stream) {
        let _ = (&stream).write_all(b"denied\n");
        return;
    }
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).is_err() {
        return;
    }
    let mut out = &stream;
    match line.trim() {
        "drain" => {
            let Some((until, first)) = shared.drain_until(drain_delay) else {
                let _ = out.write_all(b"gone\n");
                return;
            };
            let left = until.saturating_duration_since(Instant::now());
            if first {
                tracing::info!(
                    message_id = journal::MSG_DRAIN_BEGIN,
                    "draining: LB health answers 503 for {}ms",
                    drain_delay.as_millis()
                );
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
                    "draining for {}s",
                    drain_delay.as_secs()
                ))]);
            }
            let _ = out.write_all(format!("draining {}\n", left.as_millis()).as_bytes());
            if shared.wait_until(until) {
                if first {
                    tracing::info!(
                        message_id = journal::MSG_DRAIN_END,
                        "drained; the gateway may stop now"
                    );
                }
                let _ = out.write_all(b"drained\n");
            } else {
                let _ = out.write_all(b"gone\n");
            }
        }
        "status" => {
            let status = crate::drain::LauncherStatus {
                state: shared.phase().word().to_string(),
                pollers: shared.pollers(),
            };
            let text = serde_json::to_string(&status).unwrap_or_default();
            let _ = out.write_all(format!("{text}\n").as_bytes());
        }
        other => {
            let _ = out.write_all(format!("unknown request {other:?}\n").as_bytes());
        }
    }
}
