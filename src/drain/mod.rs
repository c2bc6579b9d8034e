//! Zero-downtime stop: the drain protocol between `gatewayctl drain` (run by `ExecStop=`) and
//! the instance's launcher, over the launcher's control socket.
//!
//! The client writes `drain`; the launcher turns its LB health endpoint to 503 and answers
//! `draining <ms>` (the longest it waits for the load balancers), then, once they took the
//! instance out and no request is in flight, `drained <total ms> <ms waiting for the
//! balancers> <ms waiting for requests in flight> <what happened>`. The drain goes on even if
//! the client leaves (a plain `drain` without waiting).

pub mod sock_diag;
pub mod traffic;

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where systemd makes runtime directories (`RuntimeDirectory=` is relative to it).
pub const RUNTIME_ROOT: &str = "/run";
/// The control socket's name inside the runtime directory.
pub const SOCKET_NAME: &str = "control";

/// The control socket of an instance, by its runtime directory
/// ([`crate::install::Instance::runtime_dir`]).
pub fn control_socket(runtime_dir: &str) -> PathBuf {
    Path::new(RUNTIME_ROOT).join(runtime_dir).join(SOCKET_NAME)
}

/// What can go wrong when asking a launcher to drain.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// No launcher listens: the instance is not running.
    #[error("{} does not exist: the instance is not running, so there is nothing to drain", socket.display())]
    NotRunning {
        /// The socket path.
        socket: PathBuf,
    },
    /// The socket refused us (wrong user).
    #[error("{}: permission denied; run as root or as the instance's user", socket.display())]
    Denied {
        /// The socket path.
        socket: PathBuf,
    },
    /// The launcher answered something unexpected.
    #[error("{}: unexpected answer {answer:?} from the launcher", socket.display())]
    Protocol {
        /// The socket path.
        socket: PathBuf,
        /// What it said.
        answer: String,
    },
    /// Any other I/O failure.
    #[error("{}: {source}", socket.display())]
    Io {
        /// The socket path.
        socket: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl DrainError {
    fn from_io(socket: &Path, source: io::Error) -> Self {
        let socket = socket.to_path_buf();
        match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                DrainError::NotRunning { socket }
            }
            io::ErrorKind::PermissionDenied => DrainError::Denied { socket },
            _ => DrainError::Io { socket, source },
        }
    }
}

/// How a drain went, as the launcher measured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// The whole drain.
    pub total: Duration,
    /// The wait for the load balancers to take the instance out (or the fixed delay).
    pub taken_out: Duration,
    /// The wait for the requests in flight after that.
    pub in_flight: Duration,
    /// What ended each wait, in the operator's words.
    pub summary: String,
}

impl DrainReport {
    /// The protocol's line: `drained <total> <taken out> <in flight> <summary>` (ms).
    pub fn line(&self) -> String {
        format!(
            "drained {} {} {} {}\n",
            self.total.as_millis(),
            self.taken_out.as_millis(),
            self.in_flight.as_millis(),
            self.summary.replace('\n', " ")
        )
    }

    /// Read a `drained ...` line; a bare `drained` (a launcher from before the report) gives
    /// `waited` as the total and no details.
    pub fn parse(line: &str, waited: Duration) -> Option<Self> {
        let rest = line.strip_prefix("drained")?;
        if rest.is_empty() {
            return Some(DrainReport {
                total: waited,
                taken_out: waited,
                in_flight: Duration::ZERO,
                summary: String::new(),
            });
        }
        let mut f = rest.strip_prefix(' ')?.splitn(4, ' ');
        let mut ms = || f.next()?.parse::<u64>().ok().map(Duration::from_millis);
        let (total, taken_out, in_flight) = (ms()?, ms()?, ms()?);
        Some(DrainReport {
            total,
            taken_out,
            in_flight,
            summary: f.next().unwrap_or("").to_string(),
        })
    }
}

/// How a drain request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainOutcome {
    /// The launcher began draining (waiting at most this long for the balancers); we did not
    /// wait.
    Started(Duration),
    /// The drain is over.
    Drained(DrainReport),
    /// The launcher ended the drain early because the gateway exited.
    GatewayGone,
}

/// Ask the launcher behind `socket` to drain; with `wait`, return when the drain is over.
/// `on_begin` is called with the drain delay as soon as the launcher confirms.
pub fn request(
    socket: &Path,
    wait: bool,
    on_begin: impl FnOnce(Duration),
) -> Result<DrainOutcome, DrainError> {
    let io_err = |source: io::Error| DrainError::from_io(socket, source);
    let mut stream = UnixStream::connect(socket).map_err(io_err)?;
    stream
        .set_read_timeout(Some(QUICK_ANSWER))
        .map_err(io_err)?;
    stream.write_all(b"drain\n").map_err(io_err)?;
    let waiting = stream.try_clone().map_err(io_err)?;
    let mut lines = BufReader::new(stream).lines();
    let mut next = || -> Result<String, DrainError> {
        match lines.next() {
            Some(line) => line.map_err(io_err),
            None => Ok(String::new()),
        }
    };
    let first = next()?;
    let delay = match first
        .strip_prefix("draining ")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        Some(ms) => Duration::from_millis(ms),
        None if first == "gone" => return Ok(DrainOutcome::GatewayGone),
        None => {
            return Err(DrainError::Protocol {
                socket: socket.to_path_buf(),
                answer: first,
            })
        }
    };
    on_begin(delay);
    if !wait {
        return Ok(DrainOutcome::Started(delay));
    }
    // The launcher bounds the drain by the drain delay and drain_timeout (at most 300 s).
    waiting
        .set_read_timeout(Some(delay + Duration::from_secs(300 + 60)))
        .map_err(io_err)?;
    let began = std::time::Instant::now();
    match next()?.as_str() {
        // The launcher exits when the gateway does, closing the socket mid-drain.
        "gone" | "" => Ok(DrainOutcome::GatewayGone),
        other => match DrainReport::parse(other, began.elapsed()) {
            Some(report) => Ok(DrainOutcome::Drained(report)),
            None => Err(DrainError::Protocol {
                socket: socket.to_path_buf(),
                answer: other.to_string(),
            }),
        },
    }
}

/// A load balancer polling the instance's LB health endpoint, as the launcher saw it: one per
/// source address and User-Agent (a balancer and a curl on one host stay apart).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Poller {
    /// Where its polls come from.
    pub address: std::net::IpAddr,
    /// Its User-Agent header ("" when it sends none, as HAProxy's httpchk).
    pub agent: String,
    /// The status the launcher answered its last polls with (200 or 503).
    pub streak_code: u16,
    /// How many polls in a row got that status.
    pub streak: u32,
    /// Polls since the launcher started.
    pub polls: u64,
    /// Milliseconds since its last poll.
    pub last_ms_ago: u64,
    /// Milliseconds since its streak began (its first poll answered `streak_code`).
    #[serde(default)]
    pub streak_ms: Option<u64>,
    /// Milliseconds since its address last sent a request to the gateway's traffic ports
    /// (within the last ten minutes); None when the launcher saw none or cannot see them.
    #[serde(default)]
    pub traffic_ms_ago: Option<u64>,
}

/// A poller counts as one of the instance's load balancers if it polled this recently.
pub const RECENT_POLL: Duration = Duration::from_secs(30);

impl Poller {
    /// It polled within [`RECENT_POLL`]: one of the instance's load balancers.
    pub fn is_recent(&self) -> bool {
        Duration::from_millis(self.last_ms_ago) <= RECENT_POLL
    }

    /// Its address sent requests to the gateway within [`RECENT_POLL`]: whether it routes to
    /// the instance can be seen from the traffic, not only assumed from the checks.
    pub fn sends_traffic(&self) -> bool {
        self.traffic_ms_ago
            .is_some_and(|ms| Duration::from_millis(ms) <= RECENT_POLL)
    }

    /// The same balancer in a later list of pollers.
    pub fn find_in<'a>(&self, now: &'a [Poller]) -> Option<&'a Poller> {
        now.iter()
            .find(|p| p.address == self.address && p.agent == self.agent)
    }

    /// Whether its address is its own among `pollers`: traffic from it is its traffic.
    pub fn alone_at_its_address(&self, pollers: &[Poller]) -> bool {
        pollers
            .iter()
            .filter(|p| p.address == self.address)
            .all(|p| p.agent == self.agent)
    }

    /// Whether `now` (a later list of pollers) shows this balancer having got `code` at least
    /// `n` times in a row: `fall` 503s take an instance out, `rise` 200s bring it back.
    pub fn got_in_a_row(&self, now: &[Poller], code: u16, n: u32) -> bool {
        self.find_in(now)
            .is_some_and(|p| p.streak_code == code && p.streak >= n)
    }

    /// Whether `now` shows this balancer routing requests again since its checks pass: its
    /// address sent a request after its streak of 200s began.
    pub fn routes_again(&self, now: &[Poller]) -> bool {
        self.find_in(now).is_some_and(|p| {
            p.streak_code == 200
                && matches!((p.traffic_ms_ago, p.streak_ms), (Some(t), Some(s)) if t < s)
        })
    }
}

/// How long a balancer that sent traffic before may pass its checks without sending a
/// request before it counts as back by `lb_rise` alone.
pub const TRAFFIC_WAIT: Duration = Duration::from_secs(20);

/// How long a balancer's address must send no request before the drain counts it as having
/// taken the instance out (after its `fall` 503s at least).
pub const TRAFFIC_QUIET: Duration = Duration::from_secs(1);

/// When nothing recorded which balancers an instance had before it went out (it ran from a
/// legacy script, or its launcher was already gone), how long after it serves again every
/// balancer gets to poll it before the ones that did count as all of them.
pub const FIRST_POLL_GRACE: Duration = Duration::from_secs(10);

/// Whether an instance that came back (restarted, migrated) is in its load balancers' pools
/// again: `Ok(how that was decided)`, or `Err(the balancers still missing)`.
///
/// `before` lists the balancers that polled it before it went out; each must have seen `rise`
/// 200s in a row since, and a balancer that sent it traffic before (from an address no other
/// poller shares) must send it traffic again: its own `rise` may be higher than ours. With
/// `None` (unknown), every balancer polling it after [`FIRST_POLL_GRACE`] of serving must have
/// seen `rise` 200s; an instance nobody polls by then has none.
pub fn back_in_pool(
    before: Option<&[Poller]>,
    now: &[Poller],
    rise: u32,
    serving_for: Duration,
) -> Result<String, String> {
    let shown = |b: &Poller| match b.agent.as_str() {
        "" => b.address.to_string(),
        agent => format!("{} ({agent})", b.address),
    };
    let missing = |balancers: &mut dyn Iterator<Item = &Poller>| -> Vec<String> {
        balancers
            .filter(|b| !b.got_in_a_row(now, 200, rise))
            .map(shown)
            .collect()
    };
    match before {
        Some([]) => Ok("no load balancer polled it before".to_string()),
        Some(known) => {
            let watched: Vec<&Poller> = known
                .iter()
                .filter(|b| b.sends_traffic() && b.alone_at_its_address(known))
                .collect();
            let mut m = missing(&mut known.iter());
            // A balancer passing its checks for long without sending a request (little
            // traffic, or traffic from other addresses) counts as back by the count alone.
            let (quiet, silent): (Vec<&&Poller>, Vec<&&Poller>) = watched
                .iter()
                .filter(|b| b.got_in_a_row(now, 200, rise) && !b.routes_again(now))
                .partition(|b| {
                    b.find_in(now)
                        .and_then(|p| p.streak_ms)
                        .is_some_and(|ms| Duration::from_millis(ms) >= TRAFFIC_WAIT)
                });
            m.extend(
                silent
                    .iter()
                    .map(|b| format!("{} (passes its checks, sends no traffic yet)", shown(b))),
            );
            if !m.is_empty() {
                return Err(m.join(", "));
            }
            let note = match quiet.as_slice() {
                [] => String::new(),
                q => format!(
                    "; {} passed its checks for {}s without sending a request and counts as back by lb_rise alone",
                    q.iter().map(|b| shown(b)).collect::<Vec<_>>().join(", "),
                    TRAFFIC_WAIT.as_secs()
                ),
            };
            let watched_len = watched.len() - quiet.len();
            let how = match (known.len(), watched_len) {
                (n, 0) => format!("each of its {n} load balancer(s) saw {rise} passing checks (its traffic could not be told apart, so its own rise is assumed to be lb_rise)"),
                (n, w) if w == n => format!("each of its {n} load balancer(s) saw {rise} passing checks and routes requests to it again"),
                (n, w) => format!("each of its {n} load balancer(s) saw {rise} passing checks; the {w} whose traffic can be told apart route requests to it again"),
            };
            Ok(how + &note)
        }
        None => {
            let recent: Vec<&Poller> = now.iter().filter(|p| p.is_recent()).collect();
            if serving_for < FIRST_POLL_GRACE {
                return Err(match recent.is_empty() {
                    true => format!("waiting {FIRST_POLL_GRACE:?} for its balancers' first polls"),
                    false => recent.into_iter().map(shown).collect::<Vec<_>>().join(", "),
                });
            }
            match (
                recent.len(),
                missing(&mut recent.iter().copied()).as_slice(),
            ) {
                (0, _) => Ok(format!(
                    "no load balancer polled it within {FIRST_POLL_GRACE:?} of serving"
                )),
                (n, []) => Ok(format!(
                    "each of the {n} load balancer(s) polling it saw {rise} passing checks"
                )),
                (_, m) => Err(m.join(", ")),
            }
        }
    }
}

/// What the launcher says of itself: its state word (`starting`, `serving`, `unhealthy`,
/// `draining`, `stopping`) and who polls its LB endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LauncherStatus {
    /// The state word.
    pub state: String,
    /// The load balancers polling it.
    #[serde(default)]
    pub pollers: Vec<Poller>,
    /// The `GATEWAY_*` environment it started with (`NAME=value`): its settings.
    #[serde(default)]
    pub environment: Vec<String>,
}

/// The settings that differ between what a launcher started with and what its unit has now
/// (`GATEWAY_*` variables, `NAME=value`), as `setting: old -> new`: a restart applies them.
pub fn settings_changed(started: &[String], now: &[String]) -> Vec<String> {
    let split = |v: &[String]| -> std::collections::BTreeMap<String, String> {
        v.iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (before, after) = (split(started), split(now));
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| {
            let name = k.trim_start_matches("GATEWAY_").to_lowercase();
            let shown = |v: Option<&String>| v.map_or("(unset)".to_string(), |v| v.clone());
            format!("{name} {} -> {}", shown(before.get(k)), shown(after.get(k)))
        })
        .collect()
}

/// Ask the launcher behind `socket` to extend systemd's stop timeout by `by` (EXTEND_TIMEOUT_USEC).
pub fn extend_stop_timeout(socket: &Path, by: Duration) -> Result<(), DrainError> {
    match ask(socket, &format!("extend {}", by.as_millis()))?.as_str() {
        "extended" => Ok(()),
        other => Err(unexpected(socket, other.to_string())),
    }
}

/// How long a launcher may take to answer a request that does not wait for anything.
pub const QUICK_ANSWER: Duration = Duration::from_secs(5);

/// Put a drained instance back into its load balancers' pools (its LB endpoint answers 200
/// again): for a stop that was drained first and then did not happen. Ok(false) when it was
/// not drained (still draining, or serving).
pub fn undrain(socket: &Path) -> Result<bool, DrainError> {
    match ask(socket, "undrain")?.as_str() {
        "undrained" => Ok(true),
        "not drained" => Ok(false),
        other => Err(unexpected(socket, other.to_string())),
    }
}

/// Ask the launcher behind `socket` for its status.
pub fn status(socket: &Path) -> Result<LauncherStatus, DrainError> {
    let line = ask(socket, "status")?;
    serde_json::from_str(&line).map_err(|_| unexpected(socket, line))
}

/// Send one request line to the launcher behind `socket` and read its one-line answer
/// (trimmed), waiting at most [`QUICK_ANSWER`].
fn ask(socket: &Path, request: &str) -> Result<String, DrainError> {
    let io_err = |source: io::Error| DrainError::from_io(socket, source);
    let mut stream = UnixStream::connect(socket).map_err(io_err)?;
    stream
        .set_read_timeout(Some(QUICK_ANSWER))
        .map_err(io_err)?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(io_err)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(io_err)?;
    Ok(line.trim().to_string())
}

/// The launcher answered something else than `request` expects.
fn unexpected(socket: &Path, answer: String) -> DrainError {
    DrainError::Protocol {
        socket: socket.to_path_buf(),
        answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poller(last: u8, code: u16, streak: u32) -> Poller {
        Poller {
            address: std::net::IpAddr::from([10, 0, 0, last]),
            agent: String::new(),
            streak_code: code,
            streak,
            polls: u64::from(streak),
            last_ms_ago: 100,
            streak_ms: Some(u64::from(streak) * 2000),
            traffic_ms_ago: None,
        }
    }

    #[test]
    fn a_balancer_that_sent_traffic_is_back_when_it_sends_traffic_again() {
        let mut lb = poller(1, 200, 50);
        lb.traffic_ms_ago = Some(3);
        let before = [lb];
        let s = Duration::from_secs(60);
        // Our rise is 2; HAProxy's is 5: two passing checks, and no traffic yet.
        let checks_only = [poller(1, 200, 2)];
        let e = back_in_pool(Some(&before), &checks_only, 2, s).unwrap_err();
        assert!(e.contains("sends no traffic yet"), "{e}");
        // Traffic from before its streak began does not count.
        let mut stale = poller(1, 200, 3);
        stale.traffic_ms_ago = Some(9000);
        assert!(back_in_pool(Some(&before), &[stale], 2, s).is_err());
        let mut routed = poller(1, 200, 5);
        routed.traffic_ms_ago = Some(40);
        let how = back_in_pool(Some(&before), &[routed], 2, s).unwrap();
        assert!(how.contains("routes requests to it again"), "{how}");
        // Passing its checks for 20 s and still no request: back by the count alone.
        let mut silent = poller(1, 200, 10);
        silent.streak_ms = Some(20_000);
        let how = back_in_pool(Some(&before), &[silent], 2, s).unwrap();
        assert!(how.contains("counts as back by lb_rise alone"), "{how}");
        // Two pollers at one address: its traffic cannot be told apart; the count decides.
        let mut curl = poller(1, 200, 50);
        curl.agent = "curl/8".into();
        let shared = [before[0].clone(), curl.clone()];
        let mut curl_now = poller(1, 200, 2);
        curl_now.agent = "curl/8".into();
        let how = back_in_pool(Some(&shared), &[poller(1, 200, 2), curl_now], 2, s).unwrap();
        assert!(how.contains("could not be told apart"), "{how}");
    }

    #[test]
    fn changed_settings_are_named_with_old_and_new_values() {
        let started = [
            "GATEWAY_DRAIN_DELAY=10s".to_string(),
            "GATEWAY_DRAIN_FALL=3".into(),
            "GATEWAY_GROUP=g".into(),
        ];
        let now = [
            "GATEWAY_DRAIN_DELAY=5s".to_string(),
            "GATEWAY_GROUP=g".into(),
            "GATEWAY_DRAIN_TIMEOUT=9s".into(),
        ];
        assert_eq!(
            settings_changed(&started, &now),
            [
                "drain_delay 10s -> 5s",
                "drain_fall 3 -> (unset)",
                "drain_timeout (unset) -> 9s"
            ]
        );
        assert!(settings_changed(&started, &started).is_empty());
    }

    #[test]
    fn drain_reports_cross_the_socket_whole() {
        let r = DrainReport {
            total: Duration::from_millis(6300),
            taken_out: Duration::from_millis(4200),
            in_flight: Duration::from_millis(2100),
            summary: "taken out by 1 load balancer; 2 requests finished".into(),
        };
        let line = r.line();
        assert_eq!(DrainReport::parse(line.trim_end(), Duration::ZERO), Some(r));
        // A launcher from before the report says only "drained".
        let old = DrainReport::parse("drained", Duration::from_secs(10)).unwrap();
        assert_eq!(
            (old.total, old.summary.as_str()),
            (Duration::from_secs(10), "")
        );
        assert_eq!(DrainReport::parse("drainedx", Duration::ZERO), None);
    }

    #[test]
    fn known_balancers_must_each_see_rise_passing_checks() {
        let before = [poller(1, 200, 50), poller(2, 200, 50)];
        let one_back = [poller(1, 200, 2), poller(2, 200, 1)];
        let s = Duration::from_secs(60);
        assert_eq!(
            back_in_pool(Some(&before), &one_back, 2, s),
            Err("10.0.0.2".to_string())
        );
        let both = [poller(1, 200, 2), poller(2, 200, 3)];
        assert!(back_in_pool(Some(&before), &both, 2, s).is_ok());
        // A fresh launcher that nobody polled yet is not back for balancers that were there.
        assert!(back_in_pool(Some(&before), &[], 2, s).is_err());
        assert!(back_in_pool(Some(&[]), &[], 2, Duration::ZERO).is_ok());
    }

    #[test]
    fn unknown_balancers_get_a_grace_to_poll_then_all_must_pass() {
        let rising = [poller(1, 200, 5)];
        // Within the grace a balancer that has not polled yet may still come.
        assert!(back_in_pool(None, &rising, 2, Duration::from_secs(3)).is_err());
        assert!(back_in_pool(None, &[], 2, Duration::from_secs(3)).is_err());
        let late = Duration::from_secs(11);
        assert!(back_in_pool(None, &rising, 2, late).is_ok());
        assert_eq!(
            back_in_pool(None, &[poller(1, 200, 5), poller(3, 503, 4)], 2, late),
            Err("10.0.0.3".to_string())
        );
        // Nobody polls it: it has no balancer to wait for.
        assert!(back_in_pool(None, &[], 2, late)
            .is_ok_and(|how| how.contains("no load balancer polled it")));
    }
}
