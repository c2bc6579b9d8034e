//! The kernel's view of TCP sockets (netlink `sock_diag`, as `ss` uses it): the gateway's
//! listening ports and its traffic connections with their queues and `tcp_info` counters.
//!
//! Written against the kernel ABI (linux/inet_diag.h, linux/tcp.h) rather than with a netlink
//! crate: the one crate for it cannot send the port filter (bytecode), and without it every
//! sample would copy every TCP socket of the host out of the kernel.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
const INET_DIAG_BC_D_EQ: u8 = 12;
const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LISTEN: u32 = 10;
/// Size of `struct inet_diag_msg`.
const DIAG_MSG_LEN: usize = 72;

/// What `tcp_info` says of a connection, the fields the drain reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Milliseconds since data was last sent (kernel ticks, so a few ms coarse).
    pub last_data_sent_ms: u32,
    /// Milliseconds since data was last received.
    pub last_data_recv_ms: u32,
    /// Segments sent, pure ACKs included.
    pub segs_out: u32,
    /// Segments received that carried data.
    pub data_segs_in: u32,
    /// Segments sent that carried data.
    pub data_segs_out: u32,
}

impl TcpCounters {
    /// Segments sent that carried no data: mostly ACKs of data received and not yet answered.
    pub fn pure_acks_out(&self) -> u32 {
        self.segs_out.wrapping_sub(self.data_segs_out)
    }

    /// Read the fields from a `struct tcp_info` (None when the kernel's is too old to have
    /// the segment counters: before Linux 4.6).
    fn parse(info: &[u8]) -> Option<Self> {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(info.get(at..at + 4)?.try_into().ok()?))
        };
        Some(TcpCounters {
            last_data_sent_ms: u32_at(44)?,
            last_data_recv_ms: u32_at(52)?,
            segs_out: u32_at(136)?,
            data_segs_in: u32_at(152)?,
            data_segs_out: u32_at(156)?,
        })
    }
}

/// One TCP socket as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    /// The kernel's unique id of the socket (stays the same while it lives).
    pub cookie: u64,
    /// Its own address.
    pub local: SocketAddr,
    /// The other end (unspecified for a listening socket).
    pub peer: SocketAddr,
    /// Bytes received and not yet read by the application.
    pub recv_queue: u32,
    /// Bytes sent and not yet acknowledged by the peer.
    pub send_queue: u32,
    /// Its inode (matches `socket:[N]` in /proc/PID/fd).
    pub inode: u32,
    /// Its counters (established sockets).
    pub counters: Option<TcpCounters>,
}

/// A netlink `sock_diag` socket.
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl SockDiag {
    /// Open one (unprivileged: dumping sockets needs no capability).
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SockDiag {
            // SAFETY: fd was just returned by socket(2) and is ours alone.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Listening TCP sockets (IPv4 and IPv6).
    pub fn listening(&mut self) -> io::Result<Vec<TcpSocket>> {
        let mut all = self.dump(libc::AF_INET as u8, 1 << TCP_LISTEN, &[], false)?;
        all.extend(self.dump(libc::AF_INET6 as u8, 1 << TCP_LISTEN, &[], false)?);
        Ok(all)
    }

    /// Open TCP connections with `ports` at either end, with counters: established ones, and
    /// those the client half-closed after sending its request. IPv4 always; IPv6 with `ipv6`
    /// (each family's dump walks the kernel's whole table of connections: about a
    /// millisecond on a host with much memory, so the one nobody listens on is skipped).
    pub fn connections(&mut self, ports: &[u16], ipv6: bool) -> io::Result<Vec<TcpSocket>> {
        if ports.is_empty() {
            return Ok(Vec::new());
        }
        let filter = port_filter(ports);
        let states = (1 << TCP_ESTABLISHED) | (1 << TCP_CLOSE_WAIT);
        let mut all = self.dump(libc::AF_INET as u8, states, &filter, true)?;
        if ipv6 {
            all.extend(self.dump(libc::AF_INET6 as u8, states, &filter, true)?);
        }
        Ok(all)
    }

    fn dump(
        &mut self,
        family: u8,
        states: u32,
        bytecode: &[u8],
        info: bool,
    ) -> io::Result<Vec<TcpSocket>> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = Vec::with_capacity(16 + 56 + 4 + bytecode.len());
        let attr_len = if bytecode.is_empty() {
            0
        } else {
            4 + bytecode.len()
        };
        let total = 16 + 56 + attr_len;
        req.extend_from_slice(&(total as u32).to_ne_bytes());
        req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        // struct inet_diag_req_v2: family, protocol, extensions, pad, states, sockid (48).
        let ext: u8 = if info { 1 << (INET_DIAG_INFO - 1) } else { 0 };
        req.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, ext, 0]);
        req.extend_from_slice(&states.to_ne_bytes());
        req.extend_from_slice(&[0u8; 48]);
        if !bytecode.is_empty() {
            req.extend_from_slice(&(attr_len as u16).to_ne_bytes());
            req.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
            req.extend_from_slice(bytecode);
        }
        // SAFETY: an nl sockaddr of zeros (the kernel) and a buffer we own.
        let sent = unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut found = Vec::new();
        loop {
            // SAFETY: recv into our own buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut msgs = &self.buf[..n as usize];
            while msgs.len() >= 16 {
                let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(msgs[4..6].try_into().unwrap());
                let seq = u32::from_ne_bytes(msgs[8..12].try_into().unwrap());
                if len < 16 || len > msgs.len() {
                    return Err(io::Error::other("sock_diag: malformed netlink message"));
                }
                let body = &msgs[16..len];
                msgs = &msgs[align4(len).min(msgs.len())..];
                if seq != self.seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(found),
                    NLMSG_ERROR => {
                        let errno = body
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                            .unwrap_or(0);
                        if errno == 0 {
                            return Ok(found);
                        }
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        if let Some(s) = parse_socket(body) {
                            found.push(s);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parse one `struct inet_diag_msg` and its attributes.
fn parse_socket(body: &[u8]) -> Option<TcpSocket> {
    if body.len() < DIAG_MSG_LEN {
        return None;
    }
    let family = body[0];
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let addr = |at: usize| -> IpAddr {
        let b = &body[at..at + 16];
        if family == libc::AF_INET6 as u8 {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()))
        } else {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
    };
    let u32_at = |at: usize| u32::from_ne_bytes(body[at..at + 4].try_into().unwrap());
    let cookie = u64::from(u32_at(44)) | (u64::from(u32_at(48)) << 32);
    let mut counters = None;
    let mut attrs = &body[DIAG_MSG_LEN..];
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        if kind == INET_DIAG_INFO {
            counters = TcpCounters::parse(&attrs[4..len]);
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Some(TcpSocket {
        cookie,
        local: SocketAddr::new(addr(8), port(4)),
        peer: SocketAddr::new(addr(24), port(6)),
        recv_queue: u32_at(56),
        send_queue: u32_at(60),
        inode: u32_at(68),
        counters,
    })
}

/// The kernel's filter program (`struct inet_diag_bc_op`s) for "local or remote port is one
/// of `ports`", built as `ss` builds `sport = :A or dport = :A or ...`: each test jumps to
/// its `JMP` on a match (which jumps past the end: accept) and falls through to the next test
/// otherwise; the last test's miss jumps beyond the end: reject.
pub fn port_filter(ports: &[u16]) -> Vec<u8> {
    let op = |code: u8, yes: u8, no: u16| -> [u8; 4] {
        let n = no.to_ne_bytes();
        [code, yes, n[0], n[1]]
    };
    let tests: Vec<(u8, u16)> = ports
        .iter()
        .flat_map(|&p| [(INET_DIAG_BC_S_EQ, p), (INET_DIAG_BC_D_EQ, p)])
        .collect();
    let mut out = Vec::new();
    for (k, (code, port)) in tests.iter().enumerate() {
        let last = k + 1 == tests.len();
        // A test and its port take 8 bytes; a JMP 4.
        out.extend_from_slice(&op(*code, 8, 12));
        out.extend_from_slice(&op(0, 0, *port));
        if !last {
            let rest = (tests.len() - k - 1) * 12 - 4;
            // From the JMP: skip itself and every remaining test.
            out.extend_from_slice(&op(INET_DIAG_BC_JMP, 4, (4 + rest) as u16));
        }
    }
    out
}

/// Socket inodes of the processes in process group `pgid` (the gateway and what it started),
/// from /proc/PID/fd: which listening sockets are the gateway's.
pub fn socket_inodes_of_group(pgid: i32) -> std::collections::HashSet<u32> {
    let mut inodes = std::collections::HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return inodes;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let in_group = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // After the ")": state, ppid, pgrp.
                s.rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(2)?
                    .parse::<i32>()
                    .ok()
            })
            == Some(pgid);
        if in_group {
            inodes.extend(socket_inodes(&format!("/proc/{pid}/fd")));
        }
    }
    inodes
}

/// Socket inodes among the open files listed in `fd_dir` (e.g. /proc/self/fd).
pub fn socket_inodes(fd_dir: &str) -> Vec<u32> {
    let Ok(fds) = std::fs::read_dir(fd_dir) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn sees_a_connection_its_queues_and_counters() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        // An unread request, some ticks after the connection opened: it waits in the
        // server's receive queue and is newer than anything the server sent.
        std::thread::sleep(std::time::Duration::from_millis(50));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));

        let mut diag = SockDiag::open().unwrap();
        let ours = socket_inodes("/proc/self/fd");
        let listening = diag.listening().unwrap();
        assert!(listening
            .iter()
            .any(|s| s.local.port() == port && ours.contains(&s.inode)));
        let conns = diag.connections(&[port], true).unwrap();
        // Both ends are on this host: the server's side and the client's.
        assert_eq!(conns.len(), 2, "{conns:?}");
        let server_side = conns.iter().find(|s| s.local.port() == port).unwrap();
        assert_eq!(server_side.recv_queue, 18);
        let c = server_side.counters.unwrap();
        assert_eq!((c.data_segs_in, c.data_segs_out), (1, 0));
        assert!(c.last_data_recv_ms < c.last_data_sent_ms, "{c:?}");

        // Read and answer it: nothing queued, and the answer is the newest data.
        let mut buf = [0u8; 18];
        server.read_exact(&mut buf).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let conns = diag.connections(&[port], true).unwrap();
        let server_side = conns.iter().find(|s| s.local.port() == port).unwrap();
        let c = server_side.counters.unwrap();
        assert_eq!(server_side.recv_queue, 0);
        assert_eq!((c.data_segs_in, c.data_segs_out), (1, 1));
        assert!(c.last_data_sent_ms < c.last_data_recv_ms, "{c:?}");
        // Other ports are filtered out in the kernel.
        assert!(diag
            .connections(&[port.wrapping_add(1)], true)
            .unwrap()
            .is_empty());
        // Several ports in one filter.
        assert_eq!(diag.connections(&[1, port, 2], false).unwrap().len(), 2);
    }
}
