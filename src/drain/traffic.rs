//! The gateway's traffic as its sockets show it: which connections have a request in flight,
//! and when each address last sent a request. The launcher samples the sockets
//! ([`super::sock_diag`]) every [`SAMPLE_EVERY`] and feeds each sample to a [`Traffic`].
//!
//! A request is in flight on a connection when data came in after the last data went out, as
//! far as the kernel's counters can tell:
//! - bytes wait in either queue (a request not yet read, an answer not yet acknowledged);
//! - data moved within the last [`MOVED_LATELY`] (an answer still streaming);
//! - data came in and none ever went out (a new connection's first request);
//! - the last data received is newer than the last data sent (kernel ticks: ties are common);
//! - since the sample that saw the last data go out, data came in; or, when that sample saw
//!   data come in too (which came last is then unknown), the gateway sent a pure ACK since.
//!   The ACK is the tie-breaker: a request answered quickly carries its ACK in the answer,
//!   while the kernel acknowledges a request that is not answered within its delayed ACK time
//!   (40 ms at least) on its own, after the sample that saw the previous answer. Pure ACKs
//!   after an unambiguous answer (keepalive probes, duplicate ACKs) do not count.

use super::sock_diag::{TcpCounters, TcpSocket};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How often the launcher samples the gateway's connections while any is busy or it drains:
/// shorter than the kernel's shortest delayed ACK (40 ms), so an ACK of a request is never in
/// the same sample as the answer before it.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(25);
/// How often while every connection is idle: a request arriving then is told by its data
/// coming in, which needs no such precision.
pub const SAMPLE_IDLE: Duration = Duration::from_secs(1);
/// Data that moved this recently means the connection is busy.
pub const MOVED_LATELY: Duration = Duration::from_millis(100);

/// What is remembered of one connection between samples.
#[derive(Debug, Clone)]
struct Track {
    peer: IpAddr,
    /// When data was first seen on it, until a second sample confirms it is a lasting
    /// connection's request.
    unconfirmed_request: Option<Instant>,
    last: TcpCounters,
    /// Data segments in and pure ACKs out as of the first sample after the last data went out.
    in_since_answer: u32,
    acks_since_answer: u32,
    /// The sample that saw the last answer go out saw data come in too.
    answer_ambiguous: bool,
    last_moved: Instant,
    busy: bool,
}

/// The traffic connections of an instance and who sends requests over them.
#[derive(Debug, Default)]
pub struct Traffic {
    ports: Vec<u16>,
    conns: HashMap<u64, Track>,
    last_request: HashMap<IpAddr, Instant>,
    sampled: Option<Instant>,
}

impl Traffic {
    /// Take in a sample: `sockets` with one of the gateway's `ports` at either end, and the
    /// launcher's own sockets (`own` inodes: its health checks are not traffic).
    pub fn update(&mut self, now: Instant, ports: &[u16], sockets: &[TcpSocket], own: &[u32]) {
        // Compared as IPv4 where they are: a dual-stack listener sees 127.0.0.1 as ::ffff:127.0.0.1.
        let end = |a: SocketAddr| SocketAddr::new(canonical(a.ip()), a.port());
        let own_ends: HashSet<SocketAddr> = sockets
            .iter()
            .filter(|s| own.contains(&s.inode))
            .map(|s| end(s.local))
            .collect();
        let mut seen = HashSet::new();
        for s in sockets {
            let (true, Some(c)) = (ports.contains(&s.local.port()), s.counters) else {
                continue;
            };
            if own_ends.contains(&end(s.peer)) {
                continue;
            }
            seen.insert(s.cookie);
            let peer = canonical(s.peer.ip());
            let is_new = !self.conns.contains_key(&s.cookie);
            let t = self.conns.entry(s.cookie).or_insert_with(|| Track {
                peer,
                // A connection new since the last sample got its data since then; it counts
                // as its peer's request once it is seen again (a connection that opens and
                // closes between two samples, like a one-shot probe, is nobody's traffic).
                unconfirmed_request: (c.data_segs_in > 0).then_some(now),
                last: c,
                in_since_answer: c.data_segs_in,
                acks_since_answer: c.pure_acks_out(),
                // Seen for the first time with data in: which came last is unknown.
                answer_ambiguous: c.data_segs_in > 0,
                last_moved: now - MOVED_LATELY,
                busy: false,
            });
            let (went_out, came_in) = (
                c.data_segs_out != t.last.data_segs_out,
                c.data_segs_in != t.last.data_segs_in,
            );
            if went_out {
                t.in_since_answer = c.data_segs_in;
                t.acks_since_answer = c.pure_acks_out();
                t.answer_ambiguous = came_in;
            }
            if !is_new {
                if let Some(at) = t.unconfirmed_request.take() {
                    self.last_request.insert(peer, at);
                }
            }
            if came_in {
                self.last_request.insert(peer, now);
            }
            if went_out || came_in {
                t.last_moved = now;
            }
            t.busy = s.recv_queue > 0
                || s.send_queue > 0
                || (c.data_segs_in > 0 && c.data_segs_out == 0)
                || now.duration_since(t.last_moved) < MOVED_LATELY
                || c.last_data_recv_ms < c.last_data_sent_ms
                || c.data_segs_in != t.in_since_answer
                || (t.answer_ambiguous && c.pure_acks_out() != t.acks_since_answer);
            t.last = c;
        }
        self.conns.retain(|cookie, _| seen.contains(cookie));
        // Addresses silent for long are forgotten (a port scan must not grow the launcher).
        self.last_request
            .retain(|_, at| now.duration_since(*at) < Duration::from_secs(600));
        self.sampled = Some(now);
        self.ports = ports.to_vec();
    }

    /// The gateway's listening ports in the last sample.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// When the last sample was taken.
    pub fn sampled(&self) -> Option<Instant> {
        self.sampled
    }

    /// How many connections have a request in flight, and how many there are.
    pub fn busy(&self) -> (usize, usize) {
        (
            self.conns.values().filter(|t| t.busy).count(),
            self.conns.len(),
        )
    }

    /// When `address` last sent request data, if within the last ten minutes.
    pub fn last_request_from(&self, address: IpAddr) -> Option<Instant> {
        self.last_request.get(&canonical(address)).copied()
    }

    /// Addresses with an open traffic connection.
    pub fn peers(&self) -> HashSet<IpAddr> {
        self.conns.values().map(|t| t.peer).collect()
    }
}

/// An IPv4 address as IPv4 even when it came through an IPv6 socket (::ffff:a.b.c.d).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: u16 = 8080;

    fn sock(cookie: u64, peer_port: u16, rq: u32, c: TcpCounters) -> TcpSocket {
        TcpSocket {
            cookie,
            local: SocketAddr::from(([127, 0, 0, 1], PORT)),
            peer: SocketAddr::from(([10, 0, 0, 9], peer_port)),
            recv_queue: rq,
            send_queue: 0,
            inode: cookie as u32,
            counters: Some(c),
        }
    }

    /// One sample of the one client connection to PORT.
    fn sample(t: &mut Traffic, at: Instant, c: TcpCounters) {
        t.update(at, &[PORT], &[sock(1, 5000, 0, c)], &[]);
    }

    fn counters(segs_out: u32, ins: u32, outs: u32, sent_ms: u32, recv_ms: u32) -> TcpCounters {
        TcpCounters {
            last_data_sent_ms: sent_ms,
            last_data_recv_ms: recv_ms,
            segs_out,
            data_segs_in: ins,
            data_segs_out: outs,
        }
    }

    #[test]
    fn a_request_answered_in_the_same_tick_as_it_came_is_not_in_flight() {
        let mut t = Traffic::default();
        let t0 = Instant::now();
        // 10 requests answered, the last answer in the same tick as its request.
        sample(&mut t, t0, counters(12, 10, 10, 0, 0));
        let later = t0 + Duration::from_millis(500);
        sample(&mut t, later, counters(12, 10, 10, 500, 500));
        assert_eq!(t.busy(), (0, 1));
    }

    #[test]
    fn a_request_in_the_same_tick_as_the_previous_answer_is_told_by_its_delayed_ack() {
        let mut t = Traffic::default();
        let t0 = Instant::now();
        sample(&mut t, t0, counters(12, 10, 10, 0, 0));
        // The 11th request came in the same tick as the 10th answer, and in the same sample:
        // the times tie and the sample saw both move.
        let t1 = t0 + SAMPLE_EVERY;
        sample(&mut t, t1, counters(13, 11, 11, 5, 5));
        // 40 ms later the kernel acknowledged it on its own: a pure ACK after the answer.
        let t2 = t1 + Duration::from_millis(300);
        sample(&mut t, t2, counters(14, 11, 11, 300, 300));
        assert_eq!(t.busy(), (1, 1));
        // Its answer goes out: no longer in flight once the data has settled.
        let t3 = t2 + Duration::from_secs(2);
        sample(&mut t, t3, counters(15, 11, 12, 0, 2300));
        assert_eq!(t.busy(), (1, 1), "the answer is still moving");
        let t4 = t3 + Duration::from_millis(200);
        sample(&mut t, t4, counters(15, 11, 12, 200, 2500));
        assert_eq!(t.busy(), (0, 1));
    }

    #[test]
    fn a_pure_ack_after_a_plain_answer_is_no_request() {
        let mut t = Traffic::default();
        let t0 = Instant::now();
        sample(&mut t, t0, counters(12, 10, 10, 0, 0));
        // The answer went out alone in its sample; nothing came in.
        let t1 = t0 + Duration::from_millis(500);
        sample(&mut t, t1, counters(13, 10, 11, 0, 500));
        // A keepalive probe's ACK, long after.
        let t2 = t1 + Duration::from_secs(5);
        sample(&mut t, t2, counters(14, 10, 11, 5000, 5500));
        assert_eq!(t.busy(), (0, 1));
    }

    #[test]
    fn own_checks_to_a_dual_stack_listener_are_not_traffic() {
        let mut t = Traffic::default();
        let server_end = TcpSocket {
            cookie: 1,
            local: "[::ffff:127.0.0.1]:8080".parse().unwrap(),
            peer: "[::ffff:127.0.0.1]:40000".parse().unwrap(),
            recv_queue: 0,
            send_queue: 0,
            inode: 1,
            counters: Some(counters(2, 1, 0, 5, 5)),
        };
        let our_end = TcpSocket {
            cookie: 2,
            local: SocketAddr::from(([127, 0, 0, 1], 40000)),
            peer: SocketAddr::from(([127, 0, 0, 1], PORT)),
            recv_queue: 0,
            send_queue: 0,
            inode: 77,
            counters: None,
        };
        let t0 = Instant::now();
        t.update(t0, &[PORT], &[server_end.clone(), our_end.clone()], &[77]);
        t.update(t0 + SAMPLE_EVERY, &[PORT], &[server_end, our_end], &[77]);
        assert_eq!(t.busy(), (0, 0));
        assert!(t.last_request_from("127.0.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn unread_bytes_newer_data_in_and_own_checks() {
        let mut t = Traffic::default();
        let t0 = Instant::now();
        let unread = sock(1, 5000, 40, counters(3, 1, 0, 900, 900));
        let newer_in = sock(2, 5001, 0, counters(9, 5, 4, 800, 20));
        // The launcher's own health check: its client end is one of our sockets.
        let mut check = sock(3, 5002, 0, counters(2, 1, 0, 900, 5));
        check.peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        let own_end = TcpSocket {
            cookie: 4,
            local: SocketAddr::from(([127, 0, 0, 1], 40000)),
            peer: SocketAddr::from(([127, 0, 0, 1], PORT)),
            recv_queue: 0,
            send_queue: 0,
            inode: 77,
            counters: None,
        };
        t.update(t0, &[PORT], &[unread, newer_in, check, own_end], &[77]);
        assert_eq!(t.busy(), (2, 2));
        // New connections with data: their requests came since the last sample, and count
        // once a second sample sees the connection still there.
        assert!(t.last_request_from("10.0.0.9".parse().unwrap()).is_none());
        // A new connection's first request, read, its ACK sent at once, in the tick the
        // connection opened: nothing was ever answered on it.
        let first = sock(5, 5003, 0, counters(2, 1, 0, 700, 700));
        let mut t2 = Traffic::default();
        t2.update(t0, &[PORT], std::slice::from_ref(&first), &[]);
        assert_eq!(t2.busy(), (1, 1));
        assert!(t2.last_request_from("10.0.0.9".parse().unwrap()).is_none());
        t2.update(t0 + SAMPLE_EVERY, &[PORT], &[first], &[]);
        assert_eq!(t2.last_request_from("10.0.0.9".parse().unwrap()), Some(t0));
        // Data coming in is a request from its address.
        let t1 = t0 + SAMPLE_EVERY;
        t.update(
            t1,
            &[PORT],
            &[sock(2, 5001, 0, counters(9, 6, 4, 825, 0))],
            &[],
        );
        assert_eq!(t.last_request_from("10.0.0.9".parse().unwrap()), Some(t1));
        assert_eq!(t.busy(), (1, 1), "closed connections are forgotten");
    }
}
