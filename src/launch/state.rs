//! The instance's serving state, shared by the health loop, the LB endpoint and the control
//! socket.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where the instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started, not yet answering its health check.
    Starting,
    /// Ready and healthy.
    Serving,
    /// Was ready, now fails its health check.
    Unhealthy,
    /// Taken out of the load balancers' pool until `until`.
    Draining {
        /// When the drain delay is over.
        until: Instant,
    },
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
            Phase::Stopping => "stopping",
        }
    }

    /// Only a serving instance gets traffic.
    pub fn takes_traffic(self) -> bool {
        self == Phase::Serving
    }
}

/// The shared state: a phase and a condition variable for those waiting on it.
pub struct Shared {
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            phase: Mutex::new(Phase::Starting),
            changed: Condvar::new(),
        }
    }
}

impl Shared {
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

    /// Start draining for `delay`, or join a drain in progress: when it ends, and whether this
    /// call began it. None when the instance is already stopping.
    pub fn drain_until(&self, delay: Duration) -> Option<(Instant, bool)> {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        match *p {
            Phase::Draining { until } => Some((until, false)),
            Phase::Stopping => None,
            _ => {
                let until = Instant::now() + delay;
                *p = Phase::Draining { until };
                self.changed.notify_all();
                Some((until, true))
            }
        }
    }

    /// Block until `deadline`, or earlier if the instance starts stopping. True when the
    /// deadline was reached.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *p == Phase::Stopping {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            p = self
                .changed
                .wait_timeout(p, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_drain_joins_the_first() {
        let s = Shared::default();
        s.update(|_| Phase::Serving);
        let (until, began) = s.drain_until(Duration::from_secs(10)).unwrap();
        assert!(began && !s.phase().takes_traffic());
        let (again, began_again) = s.drain_until(Duration::from_secs(99)).unwrap();
        assert_eq!((again, began_again), (until, false));
        s.update(|_| Phase::Stopping);
        assert!(s.drain_until(Duration::from_secs(1)).is_none());
        assert!(
            !s.wait_until(until),
            "a stopping instance ends the wait early"
        );
    }
}
