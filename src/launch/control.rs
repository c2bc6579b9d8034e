//! The control socket in `$RUNTIME_DIRECTORY`: `gatewayctl drain` talks to it (see
//! [`crate::drain`]). Only root and the unit's own user may connect.

use super::state::{Phase, Shared};
use crate::journal;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a drain ends.
#[derive(Debug, Clone, Copy)]
pub struct DrainPolicy {
    /// The drain delay: the longest a drain lasts.
    pub delay: Duration,
    /// Adaptive drain: end it as soon as every load balancer polling the instance got this
    /// many 503s in a row (its `fall`). None: always the whole delay.
    pub fall: Option<u32>,
}

/// Listen on `path` (mode 0600) and answer requests in background threads.
pub fn serve(path: &Path, policy: DrainPolicy, shared: Arc<Shared>) -> std::io::Result<()> {
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
                    .spawn(move || handle(stream, policy, &shared));
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

/// Adaptive drain: wait until every balancer that polled recently when the drain began got
/// `fall` 503s in a row, then end the drain. Returns how many balancers took it out, or None
/// when the drain ran its full delay (none polled, one stayed silent, or the gateway stopped).
fn end_when_balancers_took_it_out(shared: &Shared, fall: u32) -> Option<usize> {
    let balancers: Vec<_> = shared
        .pollers()
        .into_iter()
        .filter(|p| p.is_recent())
        .collect();
    if balancers.is_empty() {
        return None;
    }
    loop {
        match shared.phase() {
            Phase::Draining { until } if Instant::now() < until => {}
            _ => return None,
        }
        let now = shared.pollers();
        let all_out = balancers.iter().all(|b| b.got_in_a_row(&now, 503, fall));
        if all_out {
            // The last 503 is still on its way to the balancer: let it arrive.
            std::thread::sleep(Duration::from_millis(100));
            shared.end_drain_now();
            return Some(balancers.len());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn handle(stream: UnixStream, policy: DrainPolicy, shared: &Shared) {
    let drain_delay = policy.delay;
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
            if first && left.is_zero() {
                tracing::info!(
                    message_id = journal::MSG_DRAIN_BEGIN,
                    "not serving yet (its LB health endpoint answered 503 all along): no drain needed"
                );
            } else if first {
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
            let began = Instant::now();
            let taken_out = match (first, policy.fall) {
                (true, Some(fall)) => {
                    end_when_balancers_took_it_out(shared, fall).map(|n| (n, fall))
                }
                _ => None,
            };
            if shared.wait_drained() {
                if let Some((n, fall)) = taken_out {
                    tracing::info!(
                        message_id = journal::MSG_DRAIN_END,
                        "drained after {:.1}s: the {n} load balancer(s) polling it got {fall} 503s in a row; the gateway may stop now",
                        began.elapsed().as_secs_f64()
                    );
                } else if first {
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
        // `gatewayctl drain --wait` waits for its turn in a group's restart: systemd's stop
        // timeout runs meanwhile, and only the main process may extend it.
        other if other.starts_with("extend ") => match other["extend ".len()..].parse::<u32>() {
            Ok(ms) => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::ExtendTimeoutUsec(
                    ms.saturating_mul(1000),
                )]);
                let _ = out.write_all(b"extended\n");
            }
            Err(_) => {
                let _ = out.write_all(format!("unknown request {other:?}\n").as_bytes());
            }
        },
        other => {
            let _ = out.write_all(format!("unknown request {other:?}\n").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_drain_ends_once_every_balancer_got_fall_503s() {
        let shared = Shared::default();
        shared.update(|_| Phase::Serving);
        // Nobody polls: the drain keeps its whole delay.
        shared.drain_until(Duration::from_secs(30)).unwrap();
        assert_eq!(end_when_balancers_took_it_out(&shared, 2), None);

        let shared = Shared::default();
        shared.update(|_| Phase::Serving);
        let (lb, curl): (std::net::IpAddr, std::net::IpAddr) =
            ("10.0.0.5".parse().unwrap(), "10.0.0.6".parse().unwrap());
        shared.record_poll(lb, "", 200);
        shared.record_poll(curl, "curl/7.88", 200);
        shared.drain_until(Duration::from_secs(30)).unwrap();
        let started = Instant::now();
        std::thread::scope(|t| {
            t.spawn(|| {
                for _ in 0..2 {
                    std::thread::sleep(Duration::from_millis(30));
                    shared.record_poll(lb, "", 503);
                }
                // Only one balancer has taken it out so far.
                std::thread::sleep(Duration::from_millis(100));
                assert!(
                    matches!(shared.phase(), Phase::Draining { until } if until > Instant::now())
                );
                for _ in 0..2 {
                    shared.record_poll(curl, "curl/7.88", 503);
                }
            });
            assert_eq!(end_when_balancers_took_it_out(&shared, 2), Some(2));
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(shared.wait_drained());
    }
}
