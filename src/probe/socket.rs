//! ICMP echo sockets that never wake the runtime: non-blocking, not
//! registered with tokio's reactor, read only when the prober is awake
//! anyway ([`EchoSocket::drain`]).
//!
//! Replies wait in the socket's receive queue until then; the kernel stamps
//! each one as it arrives (`SO_TIMESTAMPNS`), so its round-trip time is
//! exact however late it is read. Those stamps are `CLOCK_REALTIME`, which
//! can step: the ledger turns each into monotonic time with the clocks'
//! offset at the read, and where a step between the send and the read
//! leaves the verdict in doubt, counts the reply only if it was read by its
//! deadline (see [`super::ledger`]).
//!
//! One socket per address family (and per bound source address): an
//! unprivileged ICMP datagram socket when the process's group is in
//! `net.ipv4.ping_group_range`, else a raw socket (CAP_NET_RAW). The two
//! see different things, which [`parse_reply`] and the ledger account for:
//! a datagram socket receives only the replies to its own echoes, with the
//! identifier rewritten by the kernel to the socket's port and no IP
//! header; a raw IPv4 socket receives every ICMP packet with its IP header
//! (our own requests too, on loopback), a raw IPv6 socket every ICMPv6
//! packet (neighbour discovery too).

use std::cell::Cell;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

use pnet_packet::icmp::echo_reply::EchoReplyPacket;
use pnet_packet::icmp::echo_request::MutableEchoRequestPacket;
use pnet_packet::icmp::{IcmpCode, IcmpPacket, IcmpTypes};
use pnet_packet::icmpv6::echo_reply::EchoReplyPacket as EchoReplyPacketV6;
use pnet_packet::icmpv6::echo_request::MutableEchoRequestPacket as MutableEchoRequestPacketV6;
use pnet_packet::icmpv6::{Icmpv6Code, Icmpv6Types};
use pnet_packet::ipv4::Ipv4Packet;
use pnet_packet::Packet;
use socket2::{Domain, MaybeUninitSlice, MsgHdrMut, Protocol, SockAddr, Socket, Type};

/// What every echo carries after its header.
pub const PAYLOAD: &[u8] = b"route-failover probe";

/// Room for one reply: an IP header with options, the ICMP header and the
/// payload, with room to spare for a peer that pads its reply.
const PACKET_ROOM: usize = 1500;
/// Room for the timestamp control message.
const CONTROL_ROOM: usize = 128;
/// What one queued reply costs of the receive buffer (measured here: 832
/// bytes for a small ICMP packet; the kernel charges the whole buffer the
/// driver allocated, which on some NICs is 2 KB or more), rounded up.
pub const BYTES_PER_QUEUED_PACKET: usize = 2048;
/// Never make the receive buffer smaller than the kernel's usual default.
const MIN_RECV_BUFFER: usize = 212_992;

/// Which ICMP the socket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() {
            Self::V4
        } else {
            Self::V6
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::V4 => "ICMPv4",
            Self::V6 => "ICMPv6",
        }
    }
}

/// Which kind of socket the kernel let us open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Unprivileged ICMP datagram socket: no IP header, identifier = port.
    Datagram,
    /// Raw socket (CAP_NET_RAW): every ICMP packet, IPv4 with its header.
    Raw,
}

/// One reply read from a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub source: IpAddr,
    /// The identifier it carries; `None` on a datagram socket, where the
    /// kernel has already matched it to the socket's own.
    pub ident: Option<u16>,
    pub seq: u16,
    /// When the kernel received it (`CLOCK_REALTIME`); `None` if the stamp
    /// was missing, which the caller treats as "now".
    pub received: Option<SystemTime>,
}

/// What one [`EchoSocket::drain`] found besides the replies.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrainStats {
    /// Packets read that were not echo replies (other ICMP, our own
    /// requests on loopback, truncated packets).
    pub ignored: u32,
    /// Packets the kernel dropped on this socket since the previous drain
    /// (its receive buffer was full), read with `SO_MEMINFO` after the
    /// reads: on both kinds of socket, even when nothing was queued. While
    /// a raw socket's queue is full the kernel counts every ICMP packet it
    /// turns away, those its filter would have dropped too.
    pub dropped: u32,
    /// The first drain to see drops after one that saw none: when to warn.
    pub started_dropping: bool,
}

/// A non-blocking ICMP echo socket outside the reactor.
#[derive(Debug)]
pub struct EchoSocket {
    socket: Socket,
    family: Family,
    kind: Kind,
    recv_buffer: usize,
    /// The kernel's drop count at the previous drain.
    dropped_seen: Cell<u32>,
    /// The previous drain saw drops.
    dropping: Cell<bool>,
}

impl EchoSocket {
    /// Opens a socket for `family`, bound to `source` when given, with a
    /// receive buffer asked to hold `queued` replies (the kernel caps it at
    /// `net.core.rmem_max`; [`EchoSocket::capacity`] says what it got).
    pub fn open(family: Family, source: Option<IpAddr>, queued: usize) -> io::Result<Self> {
        let (domain, protocol) = match family {
            Family::V4 => (Domain::IPV4, Protocol::ICMPV4),
            Family::V6 => (Domain::IPV6, Protocol::ICMPV6),
        };
        let opened = Socket::new(domain, Type::DGRAM, Some(protocol))
            .map(|s| (s, Kind::Datagram))
            .or_else(|_| Socket::new(domain, Type::RAW, Some(protocol)).map(|s| (s, Kind::Raw)));
        let (socket, kind) = opened.map_err(|e| open_error(&e, family, None))?;
        let setup = || -> io::Result<()> {
            if let Some(source) = source {
                socket.bind(&SocketAddr::new(source, 0).into())?;
            }
            socket.set_nonblocking(true)?;
            if kind == Kind::Raw {
                socket.attach_filter(&echo_replies_only(family, None))?;
            }
            sys::set_flag(socket.as_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS)?;
            let want = queued.saturating_mul(BYTES_PER_QUEUED_PACKET);
            if want > MIN_RECV_BUFFER {
                socket.set_recv_buffer_size(want)?;
            }
            Ok(())
        };
        setup().map_err(|e| open_error(&e, family, source))?;
        let recv_buffer = socket.recv_buffer_size()?;
        let dropped = sys::drops(socket.as_fd()).unwrap_or(0);
        Ok(Self {
            socket,
            family,
            kind,
            recv_buffer,
            dropped_seen: Cell::new(dropped),
            dropping: Cell::new(false),
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// On a raw socket, queue only echo replies carrying `ident` from now
    /// on (a datagram socket's kernel already matches its own).
    pub fn only_ident(&self, ident: u16) -> io::Result<()> {
        if self.kind == Kind::Raw {
            self.socket
                .attach_filter(&echo_replies_only(self.family, Some(ident)))?;
        }
        Ok(())
    }

    /// How many replies the receive buffer holds before the kernel drops
    /// the next one.
    pub fn capacity(&self) -> usize {
        self.recv_buffer / BYTES_PER_QUEUED_PACKET
    }

    /// Sends echo `seq` to `target`; returns the realtime clock just before
    /// `sendto`, what the reply's kernel stamp is measured against. Before,
    /// not after: on loopback and veth the reply is received (and stamped)
    /// inside `sendto`.
    pub fn send(&self, target: IpAddr, ident: u16, seq: u16) -> io::Result<SystemTime> {
        let packet = echo_request(self.family, ident, seq, PAYLOAD);
        let addr = SockAddr::from(SocketAddr::new(target, 0));
        let sent = SystemTime::now();
        self.socket.send_to(&packet, &addr)?;
        Ok(sent)
    }

    /// Reads every packet waiting, without blocking, and appends the echo
    /// replies among them to `out`.
    pub fn drain(&self, out: &mut Vec<Reply>) -> DrainStats {
        let mut stats = DrainStats::default();
        let mut data = [MaybeUninit::<u8>::uninit(); PACKET_ROOM];
        let mut control = [MaybeUninit::<u8>::uninit(); CONTROL_ROOM];
        // A queue refilled as fast as it is read must not keep us here.
        for _ in 0..100_000 {
            // Room for either family: recvmsg writes the source's family
            // and address in, which is all as_socket() reads.
            let mut addr = SockAddr::from(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)));
            let mut bufs = [MaybeUninitSlice::new(&mut data)];
            let mut msg = MsgHdrMut::new()
                .with_addr(&mut addr)
                .with_buffers(&mut bufs)
                .with_control(&mut control);
            let n = match self.socket.recvmsg(&mut msg, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: the queue is empty. Anything else ends this
                // drain; the next reads on. ICMP errors (destination
                // unreachable and the like) never get here: an unconnected
                // socket without IP_RECVERR is not told of them, so such an
                // echo counts as lost at its deadline, as it always has.
                Err(_) => break,
            };
            let truncated = msg.flags().is_truncated();
            let control_len = msg.control_len();
            let meta = parse_control(sys::received(&control, control_len));
            let source = addr.as_socket().map(|a| a.ip());
            let packet = sys::received(&data, n);
            match (source, truncated) {
                (Some(source), false) => match parse_reply(self.family, self.kind, packet) {
                    Some((ident, seq)) => out.push(Reply {
                        source,
                        ident,
                        seq,
                        received: meta.stamp,
                    }),
                    None => stats.ignored += 1,
                },
                _ => stats.ignored += 1,
            }
        }
        // The kernel's count, not SO_RXQ_OVFL: that control message comes
        // only with a packet read (late), and ping sockets never attach it.
        if let Ok(total) = sys::drops(self.socket.as_fd()) {
            stats.dropped = total.wrapping_sub(self.dropped_seen.replace(total));
        }
        let dropping = stats.dropped > 0;
        stats.started_dropping = dropping && !self.dropping.replace(dropping);
        stats
    }
}

/// A socket filter (classic BPF) for a raw socket: only echo replies (with
/// identifier `ident`, when given) are queued. A raw socket otherwise queues every ICMP packet the host gets
/// (on loopback our own requests too), each to be read for nothing and
/// each taking room in the receive buffer. Everything else is still
/// checked by [`parse_reply`]; this only spares the work.
fn echo_replies_only(family: Family, ident: Option<u16>) -> Vec<socket2::SockFilter> {
    use socket2::SockFilter;
    // Classic BPF opcodes (linux/filter.h).
    const LDX_B_MSH: u16 = 0xb1; // X = 4 * (packet[k] & 0xf): the IPv4 header length
    const LD_B_IND: u16 = 0x50; // A = packet[X + k]
    const LD_B_ABS: u16 = 0x30; // A = packet[k]
    const LD_H_IND: u16 = 0x48; // A = packet[X + k .. + 2], network order
    const LD_H_ABS: u16 = 0x28; // A = packet[k .. k + 2], network order
    const JEQ_K: u16 = 0x15; // if A == k: skip jt, else skip jf
    const RET_K: u16 = 0x06; // accept k bytes (0: drop)
    let accept = SockFilter::new(RET_K, 0, 0, u32::MAX);
    let drop = SockFilter::new(RET_K, 0, 0, 0);
    // The identifier check (ICMP offset 4), when asked for: two more
    // instructions for a failed type check to jump over to the drop.
    let load_ident = match family {
        Family::V4 => LD_H_IND,
        Family::V6 => LD_H_ABS,
    };
    let ident_check: Vec<SockFilter> = ident
        .map(|ident| {
            vec![
                SockFilter::new(load_ident, 0, 0, 4),
                SockFilter::new(JEQ_K, 0, 1, u32::from(ident)),
            ]
        })
        .unwrap_or_default();
    let past_ident = 1 + u8::try_from(ident_check.len()).expect("2");
    let mut program = match family {
        // A raw IPv4 socket reads the IP header first: the ICMP header
        // follows it. Echo reply is type 0.
        Family::V4 => vec![
            SockFilter::new(LDX_B_MSH, 0, 0, 0),
            SockFilter::new(LD_B_IND, 0, 0, 0),
            SockFilter::new(JEQ_K, 0, past_ident, 0),
        ],
        // A raw IPv6 socket reads the ICMPv6 header first: echo reply is 129.
        Family::V6 => vec![
            SockFilter::new(LD_B_ABS, 0, 0, 0),
            SockFilter::new(JEQ_K, 0, past_ident, 129),
        ],
    };
    program.extend(ident_check);
    program.push(accept);
    program.push(drop);
    program
}

/// The error of a socket that could not be opened or set up, with what to do.
fn open_error(e: &io::Error, family: Family, source: Option<IpAddr>) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "cannot open an {} socket: {e}; {}",
            family.name(),
            open_hint(e, source)
        ),
    )
}

/// What to do about a socket that could not be opened (or bound to `source`).
pub fn open_hint(e: &io::Error, source: Option<IpAddr>) -> String {
    match source {
        Some(source) if e.kind() == io::ErrorKind::AddrNotAvailable => {
            format!("backup.source {source} is not an address of this instance's interfaces")
        }
        _ => "run as root, grant CAP_NET_RAW, or allow the process's group in \
              net.ipv4.ping_group_range"
            .to_string(),
    }
}

/// An echo request. Over IPv4 we compute the checksum (a raw socket sends
/// what it is given; a datagram socket rewrites identifier and checksum);
/// over IPv6 the kernel computes it on both kinds (RFC 3542, 3.1).
pub fn echo_request(family: Family, ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + payload.len()];
    match family {
        Family::V4 => {
            let mut p = MutableEchoRequestPacket::new(&mut buf).expect("8 bytes of header");
            p.set_icmp_type(IcmpTypes::EchoRequest);
            p.set_icmp_code(IcmpCode(0));
            p.set_identifier(ident);
            p.set_sequence_number(seq);
            p.set_payload(payload);
            let sum = pnet_packet::icmp::checksum(&IcmpPacket::new(p.packet()).expect("header"));
            p.set_checksum(sum);
        }
        Family::V6 => {
            let mut p = MutableEchoRequestPacketV6::new(&mut buf).expect("8 bytes of header");
            p.set_icmpv6_type(Icmpv6Types::EchoRequest);
            p.set_icmpv6_code(Icmpv6Code(0));
            p.set_identifier(ident);
            p.set_sequence_number(seq);
            p.set_payload(payload);
        }
    }
    buf
}

/// The identifier and sequence of an echo reply as `kind` delivers it, or
/// `None` for anything else: another ICMP type (our own requests, errors,
/// neighbour discovery), a nonzero code, a truncated packet. The
/// identifier is `None` on a datagram socket, where the kernel rewrote it.
pub fn parse_reply(family: Family, kind: Kind, packet: &[u8]) -> Option<(Option<u16>, u16)> {
    let icmp = match (family, kind) {
        (Family::V4, Kind::Raw) => {
            let ip = Ipv4Packet::new(packet)?;
            let header = usize::from(ip.get_header_length()) * 4;
            if ip.get_version() != 4 || header < 20 {
                return None;
            }
            packet.get(header..)?
        }
        _ => packet,
    };
    let (ident, seq) = match family {
        Family::V4 => {
            let p = EchoReplyPacket::new(icmp)?;
            if p.get_icmp_type() != IcmpTypes::EchoReply || p.get_icmp_code() != IcmpCode(0) {
                return None;
            }
            (p.get_identifier(), p.get_sequence_number())
        }
        Family::V6 => {
            let p = EchoReplyPacketV6::new(icmp)?;
            if p.get_icmpv6_type() != Icmpv6Types::EchoReply || p.get_icmpv6_code() != Icmpv6Code(0)
            {
                return None;
            }
            (p.get_identifier(), p.get_sequence_number())
        }
    };
    Some(((kind == Kind::Raw).then_some(ident), seq))
}

/// What the control messages of one packet said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ControlData {
    pub stamp: Option<SystemTime>,
}

/// Reads `SCM_TIMESTAMPNS` out of a control buffer as
/// Linux lays it out: `cmsghdr { size_t len; int level; int type; }`, data
/// aligned to `size_t`, each message padded to that alignment.
pub fn parse_control(control: &[u8]) -> ControlData {
    const ALIGN: usize = std::mem::size_of::<usize>();
    let header = std::mem::size_of::<libc::cmsghdr>().next_multiple_of(ALIGN);
    let int = std::mem::size_of::<libc::c_int>();
    let mut out = ControlData::default();
    let mut at = 0;
    while let Some(head) = control.get(at..at + header) {
        let len = usize::from_ne_bytes(head[..ALIGN].try_into().expect("size_t"));
        let level = i32::from_ne_bytes(head[ALIGN..ALIGN + int].try_into().expect("int"));
        let kind = i32::from_ne_bytes(head[ALIGN + int..ALIGN + 2 * int].try_into().expect("int"));
        let Some(data) = (len >= header)
            .then(|| control.get(at + header..at + len))
            .flatten()
        else {
            break;
        };
        if level == libc::SOL_SOCKET && kind == libc::SCM_TIMESTAMPNS {
            out.stamp = timespec(data);
        }
        at += len.next_multiple_of(ALIGN);
    }
    out
}

/// A `struct timespec` (time_t seconds, long nanoseconds) as a wall-clock time.
fn timespec(data: &[u8]) -> Option<SystemTime> {
    let (sec, nsec) = match std::mem::size_of::<libc::time_t>() {
        8 => (
            i64::from_ne_bytes(data.get(..8)?.try_into().ok()?),
            i64::from_ne_bytes(data.get(8..16)?.try_into().ok()?),
        ),
        _ => (
            i64::from(i32::from_ne_bytes(data.get(..4)?.try_into().ok()?)),
            i64::from(i32::from_ne_bytes(data.get(4..8)?.try_into().ok()?)),
        ),
    };
    let nanos = u32::try_from(nsec).ok().filter(|n| *n < 1_000_000_000)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(u64::try_from(sec).ok()?, nanos))
}

/// The three things socket2 and rustix have no safe call for.
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::mem::MaybeUninit;
    use std::os::fd::{AsRawFd, BorrowedFd};

    /// `setsockopt(level, name, 1)`: `SO_TIMESTAMPNS` has no wrapper in
    /// socket2 0.6 or rustix 1.
    pub fn set_flag(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
        let one: libc::c_int = 1;
        // SAFETY: optval points to a live c_int and optlen is its size; the
        // kernel only reads it. The fd is borrowed, so open for the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&raw const one).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).expect("small"),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The socket's drop count (`SO_MEMINFO`, `SK_MEMINFO_DROPS`): packets
    /// the kernel dropped for want of room in its receive buffer.
    pub fn drops(fd: BorrowedFd<'_>) -> io::Result<u32> {
        // Room for more fields than today's kernels report; the kernel
        // copies what fits and says how much.
        let mut info = [0u32; 16];
        let mut len = libc::socklen_t::try_from(std::mem::size_of_val(&info)).expect("small");
        // SAFETY: optval points to a live, writable array of `len` bytes
        // and optlen to its size; the kernel writes at most that much and
        // updates len. The fd is borrowed, so open for the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                (&raw mut info).cast(),
                &raw mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let at = usize::try_from(libc::SK_MEMINFO_DROPS).expect("small");
        let filled = usize::try_from(len).unwrap_or(0) / std::mem::size_of::<u32>();
        if at < filled {
            Ok(info[at])
        } else {
            Err(io::Error::other("SO_MEMINFO has no drop count"))
        }
    }

    /// The first `len` bytes of a buffer `recvmsg` wrote into (socket2
    /// reads into uninitialised memory and returns how much it filled).
    pub fn received(buf: &[MaybeUninit<u8>], len: usize) -> &[u8] {
        let len = len.min(buf.len());
        // SAFETY: recvmsg initialised the first `len` bytes (its return
        // value for the data, msg_controllen for the control buffer), and
        // `len` is clamped to the buffer; MaybeUninit<u8> has u8's layout.
        unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_v4(ident: u16, seq: u16) -> Vec<u8> {
        let mut p = echo_request(Family::V4, ident, seq, PAYLOAD);
        p[0] = 0; // echo reply
        p
    }

    fn reply_v6(ident: u16, seq: u16) -> Vec<u8> {
        let mut p = echo_request(Family::V6, ident, seq, PAYLOAD);
        p[0] = 129;
        p
    }

    /// An IPv4 header (IHL words long) in front of `icmp`, as a raw socket reads it.
    fn with_ip_header(ihl: u8, icmp: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; usize::from(ihl) * 4];
        p[0] = 0x40 | ihl;
        p[9] = 1; // ICMP
        p[12..16].copy_from_slice(&[198, 18, 0, 2]);
        p.extend_from_slice(icmp);
        p
    }

    #[test]
    fn a_datagram_reply_has_no_ip_header_and_no_identifier_to_check() {
        let got = parse_reply(Family::V4, Kind::Datagram, &reply_v4(7, 42));
        assert_eq!(got, Some((None, 42)));
        let got = parse_reply(Family::V6, Kind::Datagram, &reply_v6(7, 43));
        assert_eq!(got, Some((None, 43)));
    }

    #[test]
    fn a_raw_v4_reply_is_read_past_its_ip_header_options_included() {
        let got = parse_reply(Family::V4, Kind::Raw, &with_ip_header(5, &reply_v4(7, 42)));
        assert_eq!(got, Some((Some(7), 42)));
        let got = parse_reply(Family::V4, Kind::Raw, &with_ip_header(6, &reply_v4(8, 9)));
        assert_eq!(got, Some((Some(8), 9)));
        // The same bytes without the header are not a reply to a raw socket.
        assert_eq!(parse_reply(Family::V4, Kind::Raw, &reply_v4(7, 42)), None);
        // A raw v6 socket gets no IP header.
        assert_eq!(
            parse_reply(Family::V6, Kind::Raw, &reply_v6(7, 42)),
            Some((Some(7), 42))
        );
    }

    #[test]
    fn other_icmp_is_not_a_reply() {
        // Our own request, seen by a raw socket on loopback.
        let request = echo_request(Family::V4, 7, 42, PAYLOAD);
        assert_eq!(
            parse_reply(Family::V4, Kind::Raw, &with_ip_header(5, &request)),
            None
        );
        assert_eq!(parse_reply(Family::V4, Kind::Datagram, &request), None);
        // Destination unreachable.
        let mut unreachable = reply_v4(7, 42);
        unreachable[0] = 3;
        assert_eq!(parse_reply(Family::V4, Kind::Datagram, &unreachable), None);
        // A reply with a nonzero code.
        let mut odd = reply_v4(7, 42);
        odd[1] = 1;
        assert_eq!(parse_reply(Family::V4, Kind::Datagram, &odd), None);
        // IPv6: our request, and a neighbour solicitation.
        let request = echo_request(Family::V6, 7, 42, PAYLOAD);
        assert_eq!(parse_reply(Family::V6, Kind::Raw, &request), None);
        let mut solicitation = reply_v6(7, 42);
        solicitation[0] = 135;
        assert_eq!(parse_reply(Family::V6, Kind::Raw, &solicitation), None);
        // An ICMPv4 echo reply type number on a v6 socket is not one.
        assert_eq!(
            parse_reply(Family::V6, Kind::Datagram, &reply_v4(7, 42)),
            None
        );
    }

    #[test]
    fn truncated_packets_are_not_replies() {
        let full = reply_v4(7, 42);
        for len in 0..8 {
            assert_eq!(
                parse_reply(Family::V4, Kind::Datagram, &full[..len]),
                None,
                "{len} bytes"
            );
            assert_eq!(
                parse_reply(Family::V6, Kind::Datagram, &reply_v6(7, 42)[..len]),
                None
            );
        }
        // The IP header claims more than there is.
        let raw = with_ip_header(5, &full);
        for len in [0, 10, 19, 20, 27] {
            assert_eq!(
                parse_reply(Family::V4, Kind::Raw, &raw[..len]),
                None,
                "{len}"
            );
        }
        assert_eq!(
            parse_reply(Family::V4, Kind::Raw, &raw[..28]),
            Some((Some(7), 42))
        );
        // An IHL below the minimum header is not IPv4.
        assert_eq!(
            parse_reply(Family::V4, Kind::Raw, &with_ip_header(4, &full)),
            None
        );
    }

    #[test]
    fn the_v4_request_checksums_to_zero() {
        let p = echo_request(Family::V4, 0x1234, 0xbeef, PAYLOAD);
        assert_eq!((p[0], p[1]), (8, 0));
        assert_eq!(&p[4..8], &[0x12, 0x34, 0xbe, 0xef]);
        assert_eq!(&p[8..], PAYLOAD);
        let sum: u32 = p
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!(folded + (folded >> 16), 0xffff);
    }

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let align = std::mem::size_of::<usize>();
        let header = std::mem::size_of::<libc::cmsghdr>();
        let mut m = Vec::new();
        m.extend_from_slice(&(header + data.len()).to_ne_bytes());
        m.extend_from_slice(&level.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.resize(header, 0);
        m.extend_from_slice(data);
        m.resize(m.len().next_multiple_of(align), 0);
        m
    }

    fn timespec_bytes(sec: i64, nsec: i64) -> Vec<u8> {
        let mut b = Vec::new();
        if std::mem::size_of::<libc::time_t>() == 8 {
            b.extend_from_slice(&sec.to_ne_bytes());
            b.extend_from_slice(&nsec.to_ne_bytes());
        } else {
            b.extend_from_slice(&(sec as i32).to_ne_bytes());
            b.extend_from_slice(&(nsec as i32).to_ne_bytes());
        }
        b
    }

    #[test]
    fn the_kernel_stamp_is_read_from_control_messages() {
        let control = cmsg(
            libc::SOL_SOCKET,
            libc::SCM_TIMESTAMPNS,
            &timespec_bytes(1_700_000_000, 123_456_789),
        );
        // Another message before it does not hide it.
        let mut control = [
            cmsg(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &5u32.to_ne_bytes()),
            control,
        ]
        .concat();
        let got = parse_control(&control);
        assert_eq!(
            got.stamp,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))
        );
        // Another level's message of the same type number is not a stamp.
        let other = cmsg(
            libc::IPPROTO_IP,
            libc::SCM_TIMESTAMPNS,
            &timespec_bytes(1, 0),
        );
        assert_eq!(parse_control(&other), ControlData::default());
        // Nothing, a cut-off message, or a bad nanosecond field: no stamp.
        assert_eq!(parse_control(&[]), ControlData::default());
        control.truncate(20);
        assert_eq!(parse_control(&control), ControlData::default());
        let bad = cmsg(
            libc::SOL_SOCKET,
            libc::SCM_TIMESTAMPNS,
            &timespec_bytes(1, 1_000_000_000),
        );
        assert_eq!(parse_control(&bad).stamp, None);
    }
}
