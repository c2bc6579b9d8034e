//! Zero-downtime stop: the drain protocol between `gatewayctl drain` (run by `ExecStop=`) and
//! the instance's launcher, over the launcher's control socket.
//!
//! The client writes `drain`; the launcher turns its LB health endpoint to 503 and answers
//! `draining <ms>`, then `drained` once the drain delay is over. The drain goes on even if
//! the client leaves (a plain `drain` without waiting).

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

/// How a drain request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// The launcher began draining for this long; we did not wait.
    Started(Duration),
    /// The drain delay is over.
    Drained(Duration),
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
    stream.write_all(b"drain\n").map_err(io_err)?;
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
    match next()?.as_str() {
        "drained" => Ok(DrainOutcome::Drained(delay)),
        // The launcher exits when the gateway does, closing the socket mid-drain.
        "gone" | "" => Ok(DrainOutcome::GatewayGone),
        other => Err(DrainError::Protocol {
            socket: socket.to_path_buf(),
            answer: other.to_string(),
        }),
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
}

/// A poller counts as one of the instance's load balancers if it polled this recently.
pub const RECENT_POLL: Duration = Duration::from_secs(30);

impl Poller {
    /// It polled within [`RECENT_POLL`]: one of the instance's load balancers.
    pub fn is_recent(&self) -> bool {
        Duration::from_millis(self.last_ms_ago) <= RECENT_POLL
    }

    /// Whether `now` (a later list of pollers) shows this balancer having got `code` at least
    /// `n` times in a row: `fall` 503s take an instance out, `rise` 200s bring it back.
    pub fn got_in_a_row(&self, now: &[Poller], code: u16, n: u32) -> bool {
        now.iter().any(|p| {
            p.address == self.address
                && p.agent == self.agent
                && p.streak_code == code
                && p.streak >= n
        })
    }
}

/// When nothing recorded which balancers an instance had before it went out (it ran from a
/// legacy script, or its launcher was already gone), how long after it serves again every
/// balancer gets to poll it before the ones that did count as all of them.
pub const FIRST_POLL_GRACE: Duration = Duration::from_secs(10);

/// Whether an instance that came back (restarted, migrated) is in its load balancers' pools
/// again: `Ok(how that was decided)`, or `Err(the balancers still missing)`.
///
/// `before` lists the balancers that polled it before it went out; each must have seen `rise`
/// 200s in a row since. With `None` (unknown), every balancer polling it after
/// [`FIRST_POLL_GRACE`] of serving must have; an instance nobody polls by then has none.
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
        Some(known) => match missing(&mut known.iter()).as_slice() {
            [] => Ok(format!(
                "each of its {} load balancer(s) saw {rise} passing checks",
                known.len()
            )),
            m => Err(m.join(", ")),
        },
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
}

/// Ask the launcher behind `socket` to extend systemd's stop timeout by `by` (EXTEND_TIMEOUT_USEC).
pub fn extend_stop_timeout(socket: &Path, by: Duration) -> Result<(), DrainError> {
    let io_err = |source: io::Error| DrainError::from_io(socket, source);
    let mut stream = UnixStream::connect(socket).map_err(io_err)?;
    stream
        .write_all(format!("extend {}\n", by.as_millis()).as_bytes())
        .map_err(io_err)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(io_err)?;
    match line.trim() {
        "extended" => Ok(()),
        other => Err(DrainError::Protocol {
            socket: socket.to_path_buf(),
            answer: other.to_string(),
        }),
    }
}

/// Ask the launcher behind `socket` for its status.
pub fn status(socket: &Path) -> Result<LauncherStatus, DrainError> {
    let io_err = |source: io::Error| DrainError::from_io(socket, source);
    let mut stream = UnixStream::connect(socket).map_err(io_err)?;
    stream.write_all(b"status\n").map_err(io_err)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(io_err)?;
    serde_json::from_str(&line).map_err(|_| DrainError::Protocol {
        socket: socket.to_path_buf(),
        answer: line.trim().to_string(),
    })
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
        }
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
