//! What the gateway thread sees of every frame before libslirp does, and of
//! every frame libslirp sends: the filter that keeps libslirp to its own
//! traffic, the flow table with its counters and limits, and the counters of
//! the forwards.
//!
//! Frames from the switch are checked in order: size, destination MAC (a
//! gateway MAC or broadcast), parse, IPv4 source (inside the network), IPv4
//! destination (the gateway, the DNS address for DNS, DHCP, or outside the
//! network). Guest-to-guest traffic that reaches the gateway (flooded unknown
//! unicast, broadcasts) never reaches libslirp, which would otherwise NAT it
//! to the host. A guest's TCP SYN or first UDP datagram or ICMP echo opens a
//! flow, unless the guest or everybody is at the limit: then the frame is
//! dropped and counted. A SYN from libslirp to a guest opens a flow of the
//! forward that leads there.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime};

use etherparse::{Icmpv4Type, IpNumber, IpPayloadSlice, Ipv4HeaderSlice, NetSlice, SlicedPacket, TransportSlice};

use super::{Drops, FlowInfo, FlowOrigin, FlowProto, Forward, ForwardInfo, GatewayConfig, GatewayCounters, Proto};

/// How long a closed flow stays listed (and counted against the limits,
/// as libslirp keeps its state a while too).
const CLOSED_LINGER: Duration = Duration::from_secs(5);
/// How long a TCP flow may stay half open (libslirp's connect timeout).
const SYN_TIMEOUT: Duration = Duration::from_secs(75);
/// DNS exchanges expire fast, as libslirp's own DNS sockets do.
const DNS_TIMEOUT: Duration = Duration::from_secs(10);
/// Flows opened through forwards are tracked up to this many beyond
/// `max_flows`; more are passed on untracked.
const FORWARD_FLOW_ROOM: usize = 1024;
const ETHERNET_HEADER: usize = 14;
const DHCP_SERVER_PORT: u16 = 67;
const DNS_PORT: u16 = 53;

/// A flow's 5-tuple, from the guest's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    proto: FlowProto,
    guest: SocketAddrV4,
    remote: SocketAddrV4,
}

#[derive(Debug)]
struct Flow {
    origin: FlowOrigin,
    packets_from_guest: u64,
    bytes_from_guest: u64,
    packets_to_guest: u64,
    bytes_to_guest: u64,
    started: SystemTime,
    last_seen: Instant,
    /// TCP: a SYN-ACK (or any ACK) went back, the connection is up.
    established: bool,
    fin_from_guest: bool,
    fin_to_guest: bool,
    closed_at: Option<Instant>,
}

impl Flow {
    /// A flow just seen for the first time: no packets counted yet.
    fn opened(origin: FlowOrigin, now: Instant) -> Flow {
        Flow {
            origin,
            packets_from_guest: 0,
            bytes_from_guest: 0,
            packets_to_guest: 0,
            bytes_to_guest: 0,
            started: SystemTime::now(),
            last_seen: now,
            established: false,
            fin_from_guest: false,
            fin_to_guest: false,
            closed_at: None,
        }
    }
}

struct ForwardEntry {
    info: ForwardInfo,
}

/// One transport segment, as far as the flow table cares.
struct Segment<'a> {
    key: FlowKey,
    /// TCP flags; all false for UDP and ICMP.
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    payload: &'a [u8],
}

pub(super) struct Flows {
    config: GatewayConfig,
    mask: u32,
    gateway_mac: [u8; 6],
    dns_mac: [u8; 6],
    flows: HashMap<FlowKey, Flow>,
    /// Open guest-opened flows per guest address.
    per_guest: HashMap<Ipv4Addr, usize>,
    guest_flows: usize,
    forwards: Vec<ForwardEntry>,
    counters: GatewayCounters,
}

/// libslirp's MAC for one of its addresses: 52:55 and the address.
fn slirp_mac(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x52, 0x55, o[0], o[1], o[2], o[3]]
}

impl Flows {
    pub fn new(config: GatewayConfig) -> Flows {
        Flows {
            mask: u32::from(config.netmask()),
            gateway_mac: slirp_mac(config.gateway),
            dns_mac: slirp_mac(config.dns),
            config,
            flows: HashMap::new(),
            per_guest: HashMap::new(),
            guest_flows: 0,
            forwards: Vec::new(),
            counters: GatewayCounters::default(),
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    fn drops(&mut self) -> &mut Drops {
        &mut self.counters.drops
    }

    fn is_broadcast(&self, addr: Ipv4Addr) -> bool {
        addr == Ipv4Addr::BROADCAST || u32::from(addr) & !self.mask == !self.mask && self.config.contains(addr)
    }

    /// A frame from the switch: true if libslirp should have it.
    pub fn guest_frame(&mut self, frame: &[u8], now: Instant) -> bool {
        self.counters.frames_from_switch += 1;
        self.counters.bytes_from_switch += frame.len() as u64;
        if frame.len() < ETHERNET_HEADER {
            self.drops().malformed += 1;
            return false;
        }
        if frame.len() > ETHERNET_HEADER + self.config.mtu {
            self.drops().oversized += 1;
            return false;
        }
        let dst_mac = &frame[0..6];
        if dst_mac != [0xff; 6] && dst_mac != self.gateway_mac && dst_mac != self.dns_mac {
            self.drops().not_for_gateway += 1;
            return false;
        }
        let packet = match SlicedPacket::from_ethernet(frame) {
            Ok(p) => p,
            Err(_) => {
                self.drops().malformed += 1;
                return false;
            }
        };
        if !packet.link_exts.is_empty() {
            self.drops().unsupported += 1;
            return false;
        }
        let ip = match &packet.net {
            Some(NetSlice::Arp(_)) => return true,
            Some(NetSlice::Ipv4(ip)) => ip,
            _ => {
                self.drops().unsupported += 1;
                return false;
            }
        };
        let header = ip.header();
        let (src, dst) = (header.source_addr(), header.destination_addr());
        let dhcp =
            matches!(&packet.transport, Some(TransportSlice::Udp(u)) if u.destination_port() == DHCP_SERVER_PORT);
        if dhcp && (dst == Ipv4Addr::BROADCAST || dst == self.config.gateway) {
            if src != Ipv4Addr::UNSPECIFIED && !self.valid_source(src) {
                self.drops().bad_source += 1;
                return false;
            }
            self.counters.dhcp_requests += 1;
            return true;
        }
        if !self.valid_source(src) {
            self.drops().bad_source += 1;
            return false;
        }
        if self.is_broadcast(dst) || dst.is_multicast() {
            self.drops().not_for_gateway += 1;
            return false;
        }
        if self.config.contains(dst) && dst != self.config.gateway && dst != self.config.dns {
            self.drops().not_for_gateway += 1;
            return false;
        }
        if ip.payload().fragmented {
            // The first fragment carries the transport header: to the DNS
            // address it must hold what a whole datagram must, or libslirp
            // would reassemble what the filter refuses. Later fragments are
            // nothing without it.
            let first = header.fragments_offset().value() == 0;
            if dst == self.config.dns && first && !self.dns_or_ping(ip.payload()) {
                self.drops().dns_refused += 1;
                return false;
            }
            self.counters.fragments += 1;
            return true;
        }
        let local = dst == self.config.gateway || dst == self.config.dns;
        let segment = match &packet.transport {
            Some(TransportSlice::Tcp(t)) => Segment {
                key: FlowKey {
                    proto: FlowProto::Tcp,
                    guest: SocketAddrV4::new(src, t.source_port()),
                    remote: SocketAddrV4::new(dst, t.destination_port()),
                },
                syn: t.syn(),
                ack: t.ack(),
                fin: t.fin(),
                rst: t.rst(),
                payload: t.payload(),
            },
            Some(TransportSlice::Udp(u)) => Segment {
                key: FlowKey {
                    proto: FlowProto::Udp,
                    guest: SocketAddrV4::new(src, u.source_port()),
                    remote: SocketAddrV4::new(dst, u.destination_port()),
                },
                syn: false,
                ack: false,
                fin: false,
                rst: false,
                payload: u.payload(),
            },
            Some(TransportSlice::Icmpv4(i)) => {
                // Echo to the gateway's own addresses is answered by libslirp
                // itself; errors and other types open nothing.
                return match i.icmp_type() {
                    Icmpv4Type::EchoRequest(echo) if !local => {
                        let segment = Segment {
                            key: FlowKey {
                                proto: FlowProto::Icmp,
                                guest: SocketAddrV4::new(src, echo.id),
                                remote: SocketAddrV4::new(dst, 0),
                            },
                            syn: false,
                            ack: false,
                            fin: false,
                            rst: false,
                            payload: i.payload(),
                        };
                        self.guest_segment(&segment, now)
                    }
                    _ => true,
                };
            }
            _ => {
                self.drops().unsupported += 1;
                return false;
            }
        };
        if dst == self.config.dns && (!self.config.dns_forwarding || segment.key.remote.port() != DNS_PORT) {
            self.drops().dns_refused += 1;
            return false;
        }
        self.guest_segment(&segment, now)
    }

    /// Whether a packet to the DNS address holds what that address serves:
    /// DNS while forwarding, and ping.
    fn dns_or_ping(&self, payload: &IpPayloadSlice) -> bool {
        let port = payload.payload.get(2..4).map(|p| u16::from_be_bytes([p[0], p[1]]));
        match payload.ip_number {
            IpNumber::ICMP => true,
            IpNumber::TCP | IpNumber::UDP => self.config.dns_forwarding && port == Some(DNS_PORT),
            _ => false,
        }
    }

    fn valid_source(&self, src: Ipv4Addr) -> bool {
        self.config.contains(src)
            && src != self.config.gateway
            && src != self.config.dns
            && src != self.config.network
            && !self.is_broadcast(src)
    }

    /// A TCP, UDP or ICMP echo segment from a guest: counts it, opens a flow
    /// if it may, and says whether it goes on.
    fn guest_segment(&mut self, s: &Segment, now: Instant) -> bool {
        if let Some(flow) = self.flows.get_mut(&s.key) {
            flow.packets_from_guest += 1;
            flow.bytes_from_guest += s.payload.len() as u64;
            flow.last_seen = now;
            if s.key.proto == FlowProto::Tcp {
                flow.established |= s.ack && !s.syn;
                flow.fin_from_guest |= s.fin;
                if s.rst || (flow.fin_from_guest && flow.fin_to_guest) {
                    flow.closed_at.get_or_insert(now);
                }
            }
            if let FlowOrigin::Forward(proto, host) = flow.origin {
                if let Some(f) = self.forward_mut(proto, host) {
                    f.info.bytes_from_guest += s.payload.len() as u64;
                }
            }
            return true;
        }
        let connecting = s.syn && !s.ack;
        if s.key.proto == FlowProto::Tcp && !connecting {
            // Not a connection attempt: libslirp answers it with a reset.
            self.counters.untracked += 1;
            return true;
        }
        let guest = *s.key.guest.ip();
        let count = self.per_guest.get(&guest).copied().unwrap_or(0);
        if count >= self.config.max_flows_per_guest {
            self.drops().flow_limit_guest += 1;
            return false;
        }
        if self.guest_flows >= self.config.max_flows {
            self.drops().flow_limit_total += 1;
            return false;
        }
        *self.per_guest.entry(guest).or_insert(0) += 1;
        self.guest_flows += 1;
        self.counters.flows_opened += 1;
        self.flows.insert(
            s.key,
            Flow {
                packets_from_guest: 1,
                bytes_from_guest: s.payload.len() as u64,
                ..Flow::opened(FlowOrigin::Guest, now)
            },
        );
        true
    }

    /// A frame libslirp sends to the switch: counted in its flow, and a SYN
    /// or datagram through a forward opens a flow of that forward.
    pub fn slirp_frame(&mut self, frame: &[u8], now: Instant) {
        let Ok(packet) = SlicedPacket::from_ethernet(frame) else {
            return;
        };
        let Some(NetSlice::Ipv4(ip)) = &packet.net else {
            return;
        };
        let header = ip.header();
        let (src, dst) = (header.source_addr(), header.destination_addr());
        let (key, syn, ack, fin, rst, payload) = match &packet.transport {
            Some(TransportSlice::Tcp(t)) => (
                FlowKey {
                    proto: FlowProto::Tcp,
                    guest: SocketAddrV4::new(dst, t.destination_port()),
                    remote: SocketAddrV4::new(src, t.source_port()),
                },
                t.syn(),
                t.ack(),
                t.fin(),
                t.rst(),
                t.payload(),
            ),
            Some(TransportSlice::Udp(u)) => (
                FlowKey {
                    proto: FlowProto::Udp,
                    guest: SocketAddrV4::new(dst, u.destination_port()),
                    remote: SocketAddrV4::new(src, u.source_port()),
                },
                false,
                false,
                false,
                false,
                u.payload(),
            ),
            Some(TransportSlice::Icmpv4(i)) => match i.icmp_type() {
                Icmpv4Type::EchoReply(echo) => (
                    FlowKey {
                        proto: FlowProto::Icmp,
                        guest: SocketAddrV4::new(dst, echo.id),
                        remote: SocketAddrV4::new(src, 0),
                    },
                    false,
                    false,
                    false,
                    false,
                    i.payload(),
                ),
                Icmpv4Type::DestinationUnreachable(_) => {
                    self.unreachable(i.payload(), now);
                    return;
                }
                _ => return,
            },
            _ => return,
        };
        if let Some(flow) = self.flows.get_mut(&key) {
            flow.packets_to_guest += 1;
            flow.bytes_to_guest += payload.len() as u64;
            flow.last_seen = now;
            if key.proto == FlowProto::Tcp {
                flow.established |= ack;
                flow.fin_to_guest |= fin;
                if rst || (flow.fin_from_guest && flow.fin_to_guest) {
                    flow.closed_at.get_or_insert(now);
                }
            }
            if let FlowOrigin::Forward(proto, host) = flow.origin {
                if let Some(f) = self.forward_mut(proto, host) {
                    f.info.bytes_to_guest += payload.len() as u64;
                }
            }
            return;
        }
        let proto = match key.proto {
            FlowProto::Tcp if syn && !ack => Proto::Tcp,
            FlowProto::Udp => Proto::Udp,
            _ => return,
        };
        let Some(at) = self
            .forwards
            .iter()
            .position(|f| f.info.forward.proto == proto && f.info.forward.guest() == key.guest)
        else {
            return;
        };
        if self.flows.len() >= self.config.max_flows + FORWARD_FLOW_ROOM {
            return;
        }
        let entry = &mut self.forwards[at];
        entry.info.connections += 1;
        entry.info.bytes_to_guest += payload.len() as u64;
        let host = entry.info.forward.host();
        self.counters.flows_opened += 1;
        self.flows.insert(
            key,
            Flow {
                packets_to_guest: 1,
                bytes_to_guest: payload.len() as u64,
                ..Flow::opened(FlowOrigin::Forward(proto, host), now)
            },
        );
    }

    /// libslirp refused a guest's connection or datagram with an ICMP error
    /// (as it does when the host's loopback is off): the flow it quotes is
    /// over.
    fn unreachable(&mut self, quoted: &[u8], now: Instant) {
        let Ok(header) = Ipv4HeaderSlice::from_slice(quoted) else {
            return;
        };
        let proto = match header.protocol() {
            IpNumber::TCP => FlowProto::Tcp,
            IpNumber::UDP => FlowProto::Udp,
            _ => return,
        };
        let Some(ports) = quoted.get(header.slice().len()..header.slice().len() + 4) else {
            return;
        };
        let key = FlowKey {
            proto,
            guest: SocketAddrV4::new(header.source_addr(), u16::from_be_bytes([ports[0], ports[1]])),
            remote: SocketAddrV4::new(header.destination_addr(), u16::from_be_bytes([ports[2], ports[3]])),
        };
        if let Some(flow) = self.flows.get_mut(&key) {
            flow.packets_to_guest += 1;
            flow.last_seen = now;
            flow.closed_at.get_or_insert(now);
        }
    }

    fn forward_mut(&mut self, proto: Proto, host: SocketAddrV4) -> Option<&mut ForwardEntry> {
        self.forwards
            .iter_mut()
            .find(|f| f.info.forward.proto == proto && f.info.forward.host() == host)
    }

    /// Forgets closed flows after a moment and idle ones after their timeout.
    pub fn expire(&mut self, now: Instant) {
        let config = &self.config;
        let mut gone = Vec::new();
        for (key, flow) in &self.flows {
            let idle = now.saturating_duration_since(flow.last_seen);
            let expired = match (key.proto, flow.closed_at) {
                (_, Some(at)) => now.saturating_duration_since(at) >= CLOSED_LINGER,
                (FlowProto::Tcp, None) if !flow.established => idle >= SYN_TIMEOUT,
                (FlowProto::Tcp, None) => idle >= config.tcp_idle_timeout,
                (FlowProto::Udp, _) if key.remote == SocketAddrV4::new(config.dns, DNS_PORT) => idle >= DNS_TIMEOUT,
                _ => idle >= config.udp_idle_timeout,
            };
            if expired {
                gone.push(*key);
            }
        }
        for key in gone {
            if let Some(flow) = self.flows.remove(&key) {
                if flow.origin == FlowOrigin::Guest {
                    self.release(*key.guest.ip());
                }
            }
        }
    }

    fn release(&mut self, guest: Ipv4Addr) {
        self.guest_flows = self.guest_flows.saturating_sub(1);
        if let Some(n) = self.per_guest.get_mut(&guest) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_guest.remove(&guest);
            }
        }
    }

    pub fn add_forward(&mut self, forward: Forward) {
        self.forwards.push(ForwardEntry {
            info: ForwardInfo {
                forward,
                connections: 0,
                bytes_to_guest: 0,
                bytes_from_guest: 0,
            },
        });
    }

    pub fn has_forward(&self, proto: Proto, host: SocketAddrV4) -> bool {
        self.forwards
            .iter()
            .any(|f| f.info.forward.proto == proto && f.info.forward.host() == host)
    }

    pub fn remove_forward(&mut self, proto: Proto, host: SocketAddrV4) -> bool {
        let before = self.forwards.len();
        self.forwards
            .retain(|f| !(f.info.forward.proto == proto && f.info.forward.host() == host));
        before != self.forwards.len()
    }

    pub fn forwards(&self) -> Vec<ForwardInfo> {
        self.forwards.iter().map(|f| f.info.clone()).collect()
    }

    pub fn flows(&self, now: Instant) -> Vec<FlowInfo> {
        let mut out: Vec<FlowInfo> = self
            .flows
            .iter()
            .map(|(key, flow)| FlowInfo {
                proto: key.proto,
                guest: key.guest,
                remote: key.remote,
                origin: flow.origin,
                packets_from_guest: flow.packets_from_guest,
                bytes_from_guest: flow.bytes_from_guest,
                packets_to_guest: flow.packets_to_guest,
                bytes_to_guest: flow.bytes_to_guest,
                started: flow.started,
                idle: now.saturating_duration_since(flow.last_seen),
                closed: flow.closed_at.is_some(),
            })
            .collect();
        out.sort_by_key(|f| f.started);
        out
    }

    /// A frame to the switch was sent (or dropped: `drop` says why).
    pub fn sent(&mut self, bytes: usize) {
        self.counters.frames_to_switch += 1;
        self.counters.bytes_to_switch += bytes as u64;
    }

    pub fn output_dropped(&mut self, full: bool) {
        if full {
            self.drops().output_full += 1;
        } else {
            self.drops().output_error += 1;
        }
    }

    pub fn counters(&self, guest_errors: u64) -> GatewayCounters {
        GatewayCounters {
            flows_active: self.flows.values().filter(|f| f.closed_at.is_none()).count() as u64,
            guest_errors,
            ..self.counters
        }
    }
}

impl Forward {
    fn guest(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.guest_addr, self.guest_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const GW: [u8; 4] = [10, 0, 2, 2];
    const GUEST: [u8; 4] = [10, 0, 2, 15];

    fn flows(tune: impl FnOnce(&mut GatewayConfig)) -> Flows {
        let mut config = GatewayConfig::default();
        tune(&mut config);
        Flows::new(config)
    }

    fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn: bool, ack: bool, payload: &[u8]) -> Vec<u8> {
        tcp_frame(
            (GUEST_MAC, slirp_mac(GW.into())),
            (src, dst),
            (sport, dport),
            syn,
            ack,
            payload,
        )
    }

    fn tcp_frame(
        macs: ([u8; 6], [u8; 6]),
        addrs: ([u8; 4], [u8; 4]),
        (sport, dport): (u16, u16),
        syn: bool,
        ack: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2(macs.0, macs.1)
            .ipv4(addrs.0, addrs.1, 64)
            .tcp(sport, dport, 1, 1000);
        if syn {
            b = b.syn();
        }
        if ack {
            b = b.ack(1);
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(GUEST_MAC, slirp_mac(GW.into()))
            .ipv4(src, dst, 64)
            .udp(sport, dport)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    /// The same frame as libslirp would send it back: addresses swapped.
    fn reply_tcp(dport: u16, sport: u16, syn: bool, ack: bool, payload: &[u8]) -> Vec<u8> {
        tcp_frame(
            (slirp_mac(GW.into()), GUEST_MAC),
            (GW, GUEST),
            (sport, dport),
            syn,
            ack,
            payload,
        )
    }

    #[test]
    fn syns_beyond_the_guest_limit_are_dropped() {
        let mut f = flows(|c| c.max_flows_per_guest = 3);
        let now = Instant::now();
        for port in 0..5 {
            let pass = f.guest_frame(&tcp(GUEST, GW, 40000 + port, 80, true, false, b""), now);
            assert_eq!(pass, port < 3, "port {port}");
        }
        // Another guest still has room; the first one's open flows go on.
        assert!(f.guest_frame(&tcp([10, 0, 2, 16], GW, 40000, 80, true, false, b""), now));
        assert!(f.guest_frame(&tcp(GUEST, GW, 40000, 80, false, true, b"data"), now));
        let c = f.counters(0);
        assert_eq!(c.drops.flow_limit_guest, 2);
        assert_eq!(c.flows_opened, 4);
        assert_eq!(c.flows_active, 4);
    }

    #[test]
    fn the_total_limit_holds_across_guests() {
        let mut f = flows(|c| c.max_flows = 2);
        let now = Instant::now();
        assert!(f.guest_frame(&udp(GUEST, GW, 1000, 9, b"x"), now));
        assert!(f.guest_frame(&udp([10, 0, 2, 16], GW, 1000, 9, b"x"), now));
        assert!(!f.guest_frame(&udp([10, 0, 2, 17], GW, 1000, 9, b"x"), now));
        assert_eq!(f.counters(0).drops.flow_limit_total, 1);
        // Idle UDP flows expire and make room.
        f.expire(now + Duration::from_secs(241));
        assert!(f.guest_frame(&udp([10, 0, 2, 17], GW, 1000, 9, b"x"), now));
    }

    #[test]
    fn closed_tcp_flows_make_room_after_a_moment() {
        let mut f = flows(|c| c.max_flows_per_guest = 1);
        let now = Instant::now();
        assert!(f.guest_frame(&tcp(GUEST, GW, 40000, 80, true, false, b""), now));
        f.slirp_frame(&reply_tcp(40000, 80, true, true, b""), now);
        let mut rst = tcp(GUEST, GW, 40000, 80, false, true, b"");
        rst[14 + 20 + 13] |= 0x04; // RST (the checksum does not matter here)
        assert!(f.guest_frame(&rst, now));
        assert!(!f.guest_frame(&tcp(GUEST, GW, 40001, 80, true, false, b""), now));
        f.expire(now + CLOSED_LINGER);
        assert!(f.guest_frame(&tcp(GUEST, GW, 40001, 80, true, false, b""), now));
    }

    #[test]
    fn counts_bytes_each_way_and_per_forward() {
        let mut f = flows(|_| {});
        let fwd = Forward::new(Proto::Tcp, 2222, GUEST.into(), 22);
        f.add_forward(fwd);
        let now = Instant::now();
        // libslirp opens the connection to the guest for the host.
        f.slirp_frame(&reply_tcp(22, 50000, true, false, b""), now);
        // Guest's answer, then data both ways.
        assert!(f.guest_frame(&tcp(GUEST, GW, 22, 50000, true, true, b""), now));
        f.slirp_frame(&reply_tcp(22, 50000, false, true, b"hello"), now);
        assert!(f.guest_frame(&tcp(GUEST, GW, 22, 50000, false, true, b"hello back"), now));
        let fw = &f.forwards()[0];
        assert_eq!((fw.connections, fw.bytes_to_guest, fw.bytes_from_guest), (1, 5, 10));
        let flows = f.flows(now);
        assert_eq!(flows.len(), 1);
        let flow = &flows[0];
        assert_eq!(flow.origin, FlowOrigin::Forward(Proto::Tcp, fwd.host()));
        assert_eq!((flow.packets_to_guest, flow.bytes_to_guest), (2, 5));
        assert_eq!((flow.packets_from_guest, flow.bytes_from_guest), (2, 10));
        assert_eq!(flow.guest, SocketAddrV4::new(GUEST.into(), 22));
    }

    #[test]
    fn an_icmp_refusal_closes_the_flow_it_quotes() {
        let mut f = flows(|_| {});
        let now = Instant::now();
        let syn = tcp(GUEST, GW, 40000, 80, true, false, b"");
        assert!(f.guest_frame(&syn, now));
        // libslirp's "host unreachable", quoting the SYN's IP header and ports.
        let mut refusal = Vec::new();
        PacketBuilder::ethernet2(slirp_mac(GW.into()), GUEST_MAC)
            .ipv4(GW, GUEST, 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Host,
            ))
            .write(&mut refusal, &syn[14..14 + 28])
            .unwrap();
        f.slirp_frame(&refusal, now);
        let flows = f.flows(now);
        assert!(flows[0].closed, "{flows:?}");
        f.expire(now + CLOSED_LINGER);
        assert!(f.flows(now).is_empty());
        assert_eq!(f.counters(0).flows_active, 0);
    }

    #[test]
    fn a_first_fragment_to_the_dns_address_must_be_dns() {
        let mut f = flows(|_| {});
        let now = Instant::now();
        let first_fragment = |dport| {
            let mut frame = udp(GUEST, [10, 0, 2, 3], 1000, dport, b"x");
            frame[14 + 6] = 0x20; // more fragments, offset 0
            frame
        };
        assert!(!f.guest_frame(&first_fragment(1234), now));
        assert!(f.guest_frame(&first_fragment(DNS_PORT), now));
        assert_eq!(f.counters(0).drops.dns_refused, 1);
        assert_eq!(f.counters(0).fragments, 1);
    }

    #[test]
    fn garbage_and_other_guests_traffic_stay_out() {
        let mut f = flows(|c| c.dns_forwarding = false);
        let now = Instant::now();
        // Runt, garbage IPv4, truncated TCP.
        assert!(!f.guest_frame(&[0u8; 10], now));
        let mut garbage = tcp(GUEST, GW, 1, 2, true, false, b"");
        garbage[14] = 0x4f; // an IHL beyond the packet
        assert!(!f.guest_frame(&garbage, now));
        let truncated = tcp(GUEST, GW, 1, 2, true, false, b"");
        assert!(!f.guest_frame(&truncated[..14 + 20 + 8], now));
        // To another guest, from outside the network, to the DNS address.
        assert!(!f.guest_frame(&tcp(GUEST, [10, 0, 2, 16], 1, 2, true, false, b""), now));
        assert!(!f.guest_frame(&tcp([192, 0, 2, 1], GW, 1, 2, true, false, b""), now));
        assert!(!f.guest_frame(&udp(GUEST, [10, 0, 2, 3], 1000, 53, b"junk"), now));
        assert!(!f.guest_frame(&udp(GUEST, [10, 0, 2, 255], 1000, 9, b"x"), now));
        // Another MAC entirely.
        let mut other = udp(GUEST, GW, 1000, 9, b"x");
        other[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        assert!(!f.guest_frame(&other, now));
        // DHCP from 0.0.0.0 to broadcast is fine, and opens no flow.
        assert!(f.guest_frame(&udp([0, 0, 0, 0], [255, 255, 255, 255], 68, 67, b"discover"), now));
        let d = f.counters(0).drops;
        assert_eq!(d.malformed, 3, "{d:?}");
        assert_eq!(d.not_for_gateway, 3, "{d:?}");
        assert_eq!(d.bad_source, 1, "{d:?}");
        assert_eq!(d.dns_refused, 1, "{d:?}");
        assert_eq!(f.counters(0).flows_opened, 0);
        assert_eq!(f.counters(0).dhcp_requests, 1);
    }
}

#[cfg(test)]
#[path = "flows_props.rs"]
mod props;
