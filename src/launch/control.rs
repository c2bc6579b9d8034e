//! The control socket in `$RUNTIME_DIRECTORY`: `gatewayctl drain` talks to it (see
//! [`crate::drain`]). Only root and the unit's own user may connect.

use super::state::{Phase, Shared};
use crate::drain::{traffic, DrainReport, TRAFFIC_QUIET};
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
    /// The drain delay: the longest the wait for the load balancers lasts.
    pub delay: Duration,
    /// Adaptive drain: end that wait as soon as every load balancer polling the instance got
    /// this many 503s in a row (its `fall`) and, where its traffic can be told apart, sent no
    /// more requests. None: always the whole delay.
    pub fall: Option<u32>,
    /// The longest the wait for requests in flight lasts afterwards.
    pub timeout: Duration,
}

/// Listen on `path` (mode 0600) and answer requests in background threads; `environment` is
/// the launcher's `GATEWAY_*` environment, for `status`.
pub fn serve(
    path: &Path,
    policy: DrainPolicy,
    environment: Vec<String>,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let environment = Arc::new(environment);
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let (shared, environment) = (shared.clone(), environment.clone());
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || handle(stream, policy, &environment, &shared));
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
/// `fall` 503s in a row and, where its address sends traffic no other poller's does, sent no
/// request for [`TRAFFIC_QUIET`]; then end the wait. Returns what decided it, or None when the
/// drain ran its full delay (none polled, one never took it out, or the gateway stopped).
fn end_when_balancers_took_it_out(shared: &Shared, fall: u32) -> Option<String> {
    let balancers: Vec<_> = shared
        .pollers()
        .into_iter()
        .filter(|p| p.is_recent())
        .collect();
    if balancers.is_empty() {
        return None;
    }
    let watched: Vec<bool> = balancers
        .iter()
        .map(|b| b.sends_traffic() && b.alone_at_its_address(&balancers))
        .collect();
    loop {
        match shared.phase() {
            Phase::Draining { until } if Instant::now() < until => {}
            _ => return None,
        }
        let now = shared.pollers();
        let all_out = balancers.iter().zip(&watched).all(|(b, &watched)| {
            b.got_in_a_row(&now, 503, fall)
                && (!watched
                    || b.find_in(&now).is_none_or(|p| {
                        p.traffic_ms_ago
                            .is_none_or(|ms| Duration::from_millis(ms) >= TRAFFIC_QUIET)
                    }))
        });
        if all_out {
            // The last 503 is still on its way to the balancer: let it arrive.
            std::thread::sleep(Duration::from_millis(100));
            shared.end_drain_now();
            let n = balancers.len();
            let w = watched.iter().filter(|&&w| w).count();
            return Some(match w {
                0 => format!("its {n} load balancer(s) took it out: each got {fall} 503s in a row (lb_fall; their traffic could not be told apart)"),
                w if w == n => format!("its {n} load balancer(s) took it out: each got {fall} 503s in a row and sent no request for {}s", TRAFFIC_QUIET.as_secs_f64()),
                w => format!("its {n} load balancer(s) took it out: each got {fall} 503s in a row, and the {w} whose traffic can be told apart sent no request for {}s", TRAFFIC_QUIET.as_secs_f64()),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until a sample taken after `since` shows no request in flight, at most `timeout`.
/// Returns what ended the wait, or None when the instance began stopping.
fn wait_for_requests_in_flight(shared: &Shared, timeout: Duration) -> Option<String> {
    let since = Instant::now();
    // drain_timeout = 0 (the Node Manager's default, which has no traffic sampler): no wait.
    if timeout.is_zero() {
        return Some("requests in flight were not waited for (drain_timeout is 0)".to_string());
    }
    if let Some(why) = shared
        .traffic_blind
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        return Some(format!("requests in flight were not waited for: {why}"));
    }
    let mut busy_at_first = None;
    loop {
        if shared.phase() == Phase::Stopping {
            return None;
        }
        let (sampled, (busy, open), no_ports) = {
            let t = shared.traffic.lock().unwrap_or_else(|e| e.into_inner());
            (t.sampled(), t.busy(), t.ports().is_empty())
        };
        if sampled.is_some_and(|at| at > since) {
            if no_ports {
                return Some("requests in flight were not waited for: no listening socket of the gateway was found (the launcher reads them from /proc/PID/fd of the gateway's processes, which run as its user)".to_string());
            }
            let first = *busy_at_first.get_or_insert(busy);
            if busy == 0 {
                return Some(match first {
                    0 => format!("no request was in flight ({open} open connection(s) idle)"),
                    n => format!(
                        "the {n} request(s) in flight finished in {:.1}s",
                        since.elapsed().as_secs_f64()
                    ),
                });
            }
            if since.elapsed() >= timeout {
                return Some(format!(
                    "drain_timeout ({}s) ended the wait with {busy} request(s) still in flight",
                    timeout.as_secs_f64()
                ));
            }
        } else if since.elapsed() >= timeout.max(Duration::from_secs(1)) {
            return Some("the gateway's connections were not sampled in time; not waiting for requests in flight".to_string());
        }
        std::thread::sleep(traffic::SAMPLE_EVERY);
    }
}

/// The whole drain, run by the request that began it: wait for the load balancers, then for
/// the requests in flight. None when the instance began stopping meanwhile.
fn drain(shared: &Shared, policy: DrainPolicy) -> Option<DrainReport> {
    let began = Instant::now();
    let out = match policy.fall {
        Some(fall) => end_when_balancers_took_it_out(shared, fall),
        None => None,
    };
    if !shared.wait_taken_out() {
        return None;
    }
    let taken_out = began.elapsed();
    let out = out.unwrap_or_else(|| match policy.fall {
        Some(_) if shared.pollers().iter().any(|p| p.is_recent()) => format!(
            "the drain delay ({}s) passed before every load balancer took it out",
            policy.delay.as_secs_f64()
        ),
        Some(_) => format!(
            "no load balancer polled it lately, so it waited the drain delay ({}s)",
            policy.delay.as_secs_f64()
        ),
        None => format!("the drain delay ({}s) passed", policy.delay.as_secs_f64()),
    });
    let in_flight_began = Instant::now();
    let quiet = wait_for_requests_in_flight(shared, policy.timeout)?;
    Some(DrainReport {
        total: began.elapsed(),
        taken_out,
        in_flight: in_flight_began.elapsed(),
        summary: format!("{out}; then {quiet}"),
    })
}

fn handle(stream: UnixStream, policy: DrainPolicy, environment: &[String], shared: &Shared) {
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
            let Some((until, began_from)) = shared.drain_until(policy.delay) else {
                let _ = out.write_all(b"gone\n");
                return;
            };
            let left = until.saturating_duration_since(Instant::now());
            let _ = out.write_all(format!("draining {}\n", left.as_millis()).as_bytes());
            match began_from {
                // Never ready: its LB endpoint has answered 503 all along, so no balancer has
                // it in its pool and no request reached it through one.
                Some(Phase::Starting) => {
                    tracing::info!(
                        message_id = journal::MSG_DRAIN_BEGIN,
                        "not serving yet (its LB health endpoint answered 503 all along): no drain needed"
                    );
                    shared.finish_drain(DrainReport {
                        total: Duration::ZERO,
                        taken_out: Duration::ZERO,
                        in_flight: Duration::ZERO,
                        summary: "it never served, so nothing was drained".into(),
                    });
                }
                Some(_) => {
                    tracing::info!(
                        message_id = journal::MSG_DRAIN_BEGIN,
                        "draining: LB health answers 503; waiting up to {}s for the load balancers to take it out{}, then up to {}s for requests in flight",
                        policy.delay.as_secs_f64(),
                        if policy.fall.is_some() { " (adaptive)" } else { "" },
                        policy.timeout.as_secs_f64()
                    );
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
                        "draining (at most {}s, then requests in flight)",
                        policy.delay.as_secs()
                    ))]);
                    if let Some(report) = drain(shared, policy) {
                        tracing::info!(
                            message_id = journal::MSG_DRAIN_END,
                            drain_seconds = report.total.as_secs_f64(),
                            drain_taken_out_seconds = report.taken_out.as_secs_f64(),
                            drain_in_flight_seconds = report.in_flight.as_secs_f64(),
                            "drained after {:.1}s: {}; the gateway may stop now",
                            report.total.as_secs_f64(),
                            report.summary
                        );
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
                            "drained after {:.1}s; waiting to be stopped",
                            report.total.as_secs_f64()
                        ))]);
                        shared.finish_drain(report);
                    }
                }
                None => {}
            }
            match shared.wait_drained() {
                Some(report) => {
                    let _ = out.write_all(report.line().as_bytes());
                }
                None => {
                    let _ = out.write_all(b"gone\n");
                }
            }
        }
        "undrain" => {
            if shared.undrain() {
                tracing::info!("drain undone: the stop that was to follow did not happen; LB health answers 200 again");
                let _ =
                    sd_notify::notify(&[sd_notify::NotifyState::Status("serving; drain undone")]);
                let _ = out.write_all(b"undrained\n");
            } else {
                let _ = out.write_all(b"not drained\n");
            }
        }
        "status" => {
            let status = crate::drain::LauncherStatus {
                state: shared.phase().word().to_string(),
                pollers: shared.pollers(),
                environment: environment.to_vec(),
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
            let how = end_when_balancers_took_it_out(&shared, 2).unwrap();
            assert!(how.contains("its 2 load balancer(s) took it out"), "{how}");
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(shared.wait_taken_out());
    }
}
