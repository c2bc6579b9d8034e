//! The instance's serving state, shared by the health loop, the LB endpoint and the control
//! socket.

use crate::drain::traffic::Traffic;
use crate::drain::Poller;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How many distinct pollers are remembered; beyond it the longest silent one is forgotten
/// (a port scan must not grow the launcher).
const MAX_POLLERS: usize = 64;

/// One poller's record.
struct PollRecord {
    streak_code: u16,
    streak: u32,
    streak_began: Instant,
    polls: u64,
    last: Instant,
}

/// Where the instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started, not yet answering its health check.
    Starting,
    /// Ready and healthy.
    Serving,
    /// Was ready, now fails its health check.
    Unhealthy,
    /// Taken out of the load balancers' pool: waiting until `until` at most for them to stop
    /// routing to it, then for the requests in flight.
    Draining {
        /// When the drain delay is over.
        until: Instant,
    },
    /// Drained: out of every pool, nothing in flight; waiting to be stopped.
    Drained,
    /// Stopping (SIGTERM received or the gateway exited).
    Stopping,
}

impl Phase {
    /// The word the LB endpoint and `STATUS=` use.
    pub fn word(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::Unhealthy => "unhealthy",
            Phase::Draining { .. } => "draining",
            Phase::Drained => "drained",
            Phase::Stopping => "stopping",
        }
    }

    /// Only a serving instance gets traffic.
    pub fn takes_traffic(self) -> bool {
        self == Phase::Serving
    }
}

/// The shared state: a phase and a condition variable for those waiting on it, and the load
/// balancers seen polling.
pub struct Shared {
    phase: Mutex<Phase>,
    changed: Condvar,
    pollers: Mutex<HashMap<(IpAddr, String), PollRecord>>,
    /// The gateway's traffic connections, sampled by the launcher.
    pub traffic: Mutex<Traffic>,
    /// Why the traffic cannot be sampled, when it cannot.
    pub traffic_blind: Mutex<Option<String>>,
    /// How the drain went, once it is over.
    report: Mutex<Option<crate::drain::DrainReport>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            phase: Mutex::new(Phase::Starting),
            changed: Condvar::new(),
            pollers: Mutex::new(HashMap::new()),
            traffic: Mutex::new(Traffic::default()),
            traffic_blind: Mutex::new(None),
            report: Mutex::new(None),
        }
    }
}

impl Shared {
    /// Note that `address` (with User-Agent `agent`) polled the LB endpoint and got `code`.
    pub fn record_poll(&self, address: IpAddr, agent: &str, code: u16) {
        let mut pollers = self.pollers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let key = (address, agent.chars().take(64).collect::<String>());
        if !pollers.contains_key(&key) && pollers.len() >= MAX_POLLERS {
            if let Some(oldest) = pollers
                .iter()
                .min_by_key(|(_, r)| r.last)
                .map(|(k, _)| k.clone())
            {
                pollers.remove(&oldest);
            }
        }
        let r = pollers.entry(key).or_insert(PollRecord {
            streak_code: code,
            streak: 0,
            streak_began: now,
            polls: 0,
            last: now,
        });
        if r.streak_code != code {
            r.streak_code = code;
            r.streak = 0;
            r.streak_began = now;
        }
        r.streak = r.streak.saturating_add(1);
        r.polls += 1;
        r.last = now;
    }

    /// The pollers seen, most recent first, with when their address last sent traffic.
    pub fn pollers(&self) -> Vec<Poller> {
        let now = Instant::now();
        let ms = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
        let traffic = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        let pollers = self.pollers.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<Poller> = pollers
            .iter()
            .map(|((address, agent), r)| Poller {
                address: *address,
                agent: agent.clone(),
                streak_code: r.streak_code,
                streak: r.streak,
                polls: r.polls,
                last_ms_ago: ms(r.last),
                streak_ms: Some(ms(r.streak_began)),
                traffic_ms_ago: traffic.last_request_from(*address).map(ms),
            })
            .collect();
        list.sort_by_key(|p| p.last_ms_ago);
        list
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the phase with `f` (which sees the current one) and wake waiters.
    pub fn update(&self, f: impl FnOnce(Phase) -> Phase) -> Phase {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        *p = f(*p);
        self.changed.notify_all();
        *p
    }

    /// Start draining (waiting at most `delay` for the load balancers), or join a drain in
    /// progress: when that wait ends, and the phase this call began the drain from (None when
    /// it joined one). None when the instance is already stopping.
    pub fn drain_until(&self, delay: Duration) -> Option<(Instant, Option<Phase>)> {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        match *p {
            Phase::Draining { until } => Some((until, None)),
            Phase::Drained => Some((Instant::now(), None)),
            Phase::Stopping => None,
            phase => {
                // Never ready: its LB endpoint has answered 503 all along, so no balancer has
                // it in its pool and there is nothing to wait for.
                let delay = match phase {
                    Phase::Starting => Duration::ZERO,
                    _ => delay,
                };
                let until = Instant::now() + delay;
                *p = Phase::Draining { until };
                self.changed.notify_all();
                Some((until, Some(phase)))
            }
        }
    }

    /// End the wait for the load balancers now: every one has taken the instance out.
    pub fn end_drain_now(&self) {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Phase::Draining { .. } = *p {
            *p = Phase::Draining {
                until: Instant::now(),
            };
            self.changed.notify_all();
        }
    }

    /// Block until the wait for the load balancers is over (its end may move earlier:
    /// adaptive drain), or until the instance starts stopping. True when it ran its course.
    pub fn wait_taken_out(&self) -> bool {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let until = match *p {
                Phase::Stopping => return false,
                Phase::Draining { until } => until,
                _ => return true,
            };
            let now = Instant::now();
            if now >= until {
                return true;
            }
            p = self
                .changed
                .wait_timeout(p, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The drain is over: remember how it went and release every waiter.
    pub fn finish_drain(&self, report: crate::drain::DrainReport) {
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Phase::Draining { .. } = *p {
            *p = Phase::Drained;
        }
        self.changed.notify_all();
    }

    /// Serve again after a finished drain whose stop did not follow: true when it was
    /// drained.
    pub fn undrain(&self) -> bool {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if *p != Phase::Drained {
            return false;
        }
        *p = Phase::Serving;
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.changed.notify_all();
        true
    }

    /// Block until the drain is over: its report, or None when the instance began stopping
    /// first.
    pub fn wait_drained(&self) -> Option<crate::drain::DrainReport> {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match *p {
                Phase::Stopping => return None,
                Phase::Drained => break,
                _ => {}
            }
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        drop(p);
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_that_never_served_drains_at_once() {
        let shared = Shared::default();
        let (until, from) = shared.drain_until(Duration::from_secs(30)).unwrap();
        assert!(from == Some(Phase::Starting) && until <= Instant::now());
        assert!(shared.wait_taken_out());
    }

    #[test]
    fn pollers_keep_streaks_per_address_and_agent() {
        let s = Shared::default();
        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        for code in [503, 503, 200, 200, 200] {
            s.record_poll(lb, "", code);
        }
        s.record_poll(lb, "curl/7.88", 503);
        let list = s.pollers();
        let haproxy = list.iter().find(|p| p.agent.is_empty()).unwrap();
        assert_eq!(
            (haproxy.streak_code, haproxy.streak, haproxy.polls),
            (200, 3, 5)
        );
        let curl = list.iter().find(|p| p.agent == "curl/7.88").unwrap();
        assert_eq!((curl.streak_code, curl.streak), (503, 1));
        for i in 0..200u8 {
            s.record_poll(IpAddr::from([10, 1, 0, i]), "", 200);
        }
        assert_eq!(s.pollers().len(), MAX_POLLERS);
    }

    #[test]
    fn a_second_drain_joins_the_first() {
        let s = Shared::default();
        s.update(|_| Phase::Serving);
        let (until, from) = s.drain_until(Duration::from_secs(10)).unwrap();
        assert!(from == Some(Phase::Serving) && !s.phase().takes_traffic());
        let (again, from_again) = s.drain_until(Duration::from_secs(99)).unwrap();
        assert_eq!((again, from_again), (until, None));
        // An adaptive drain that ends early releases every waiter at once.
        let started = Instant::now();
        let report = crate::drain::DrainReport {
            total: Duration::from_secs(1),
            taken_out: Duration::from_secs(1),
            in_flight: Duration::ZERO,
            summary: "done".into(),
        };
        std::thread::scope(|t| {
            t.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                s.end_drain_now();
                assert!(s.wait_taken_out());
                s.finish_drain(report.clone());
            });
            assert_eq!(s.wait_drained(), Some(report.clone()));
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!s.phase().takes_traffic(), "a drained instance stays out");
        // A drain asked for after it is over joins it at once.
        assert_eq!(s.drain_until(Duration::from_secs(5)).unwrap().1, None);
        assert_eq!(s.wait_drained(), Some(report));
        // A stop that did not follow: it serves again, and a new drain starts afresh.
        assert!(s.undrain() && s.phase().takes_traffic());
        assert!(!s.undrain());
        assert_eq!(
            s.drain_until(Duration::from_secs(5)).unwrap().1,
            Some(Phase::Serving)
        );
        s.update(|_| Phase::Stopping);
        assert!(s.drain_until(Duration::from_secs(1)).is_none());
        assert!(
            s.wait_drained().is_none(),
            "a stopping instance ends the wait early"
        );
    }
}
