//! Property tests of the gateway's frame filter and flow table: frames
//! built layer by layer (addresses, ports and protocols the filter cares
//! about, VLAN tags, fragments), then cut, flipped or padded, and streams of
//! them both ways. Whatever the filter passes keeps the rules the module
//! states; the counters add up; the flow table keeps its limits.

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::testing::config;
use etherparse::PacketBuilder;

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn gateway_config() -> impl Strategy<Value = GatewayConfig> {
    (any::<bool>(), any::<bool>(), 1..4usize, 1..8usize, 576..=1500usize).prop_map(
        |(dns_forwarding, host_loopback, max_flows_per_guest, max_flows, mtu)| GatewayConfig {
            dns_forwarding,
            host_loopback,
            max_flows_per_guest,
            max_flows,
            mtu,
            ..GatewayConfig::default()
        },
    )
}

/// Addresses the filter tells apart: guests, the gateway's own, the
/// network's and the broadcast, multicast, outside, unspecified.
fn address() -> impl Strategy<Value = Ipv4Addr> {
    let known = prop::sample::select(vec![
        GUEST,
        Ipv4Addr::new(10, 0, 2, 16),
        Ipv4Addr::new(10, 0, 2, 2),
        Ipv4Addr::new(10, 0, 2, 3),
        Ipv4Addr::new(10, 0, 2, 0),
        Ipv4Addr::new(10, 0, 2, 255),
        Ipv4Addr::BROADCAST,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(224, 0, 0, 251),
        Ipv4Addr::new(192, 0, 2, 1),
        Ipv4Addr::new(10, 0, 3, 1),
    ]);
    prop_oneof![4 => known, 1 => any::<u32>().prop_map(Ipv4Addr::from)]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![3 => prop::sample::select(vec![53u16, 67, 68, 80, 40000, 40001]), 1 => any::<u16>()]
}

/// An IPv4 packet: TCP with any flags, UDP, ICMP echo or error, or another
/// protocol.
fn ipv4() -> impl Strategy<Value = Vec<u8>> {
    let flags = any::<[bool; 4]>();
    (
        address(),
        address(),
        port(),
        port(),
        flags,
        0..6u8,
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..48),
    )
        .prop_map(
            |(src, dst, sport, dport, [syn, ack, fin, rst], kind, protocol, payload)| {
                let ip = PacketBuilder::ipv4(src.octets(), dst.octets(), 64);
                let mut out = Vec::new();
                let written = match kind {
                    0 => {
                        let mut tcp = ip.tcp(sport, dport, 1, 1000);
                        if syn {
                            tcp = tcp.syn();
                        }
                        if ack {
                            tcp = tcp.ack(1);
                        }
                        if fin {
                            tcp = tcp.fin();
                        }
                        if rst {
                            tcp = tcp.rst();
                        }
                        tcp.write(&mut out, &payload)
                    }
                    1 | 5 => ip.udp(sport, dport).write(&mut out, &payload),
                    2 => ip.icmpv4_echo_request(sport, dport).write(&mut out, &payload),
                    3 => ip.icmpv4_echo_reply(sport, dport).write(&mut out, &payload),
                    _ => ip
                        .icmpv4(Icmpv4Type::DestinationUnreachable(
                            etherparse::icmpv4::DestUnreachableHeader::Port,
                        ))
                        .write(&mut out, &payload),
                };
                written.unwrap();
                if kind == 5 {
                    // Another protocol behind a UDP-shaped payload.
                    out[9] = protocol;
                }
                out
            },
        )
}

/// A frame as a guest might send it: Ethernet to the gateway, the DNS
/// address, everybody or someone else; IPv4 (perhaps tagged, perhaps a
/// fragment), ARP, IPv6 or anything; then cut, flipped or padded.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    let dst_mac = prop_oneof![
        Just([0xff; 6]),
        Just(slirp_mac(Ipv4Addr::new(10, 0, 2, 2))),
        Just(slirp_mac(Ipv4Addr::new(10, 0, 2, 3))),
        Just([2, 0, 0, 0, 0, 2]),
        any::<[u8; 6]>(),
    ];
    let arp = any::<[u8; 20]>().prop_map(|rest| [&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1][..], &rest].concat());
    let net = prop_oneof![
        6 => (ipv4(), prop::option::of((any::<bool>(), prop_oneof![Just(0), 1..8192u16]))).prop_map(|(mut ip, fragment)| {
            if let Some((more, offset)) = fragment {
                let flags = (u16::from(more) << 13) | offset;
                ip[6..8].copy_from_slice(&flags.to_be_bytes());
            }
            [&[0x08, 0x00][..], &ip].concat()
        }),
        1 => arp,
        1 => ipv4().prop_map(|ip| [&[0x81, 0x00, 0, 1, 0x08, 0x00][..], &ip].concat()),
        1 => prop::collection::vec(any::<u8>(), 40..80).prop_map(|v6| [&[0x86, 0xdd][..], &v6].concat()),
        1 => prop::collection::vec(any::<u8>(), 0..80),
    ];
    let damage = prop_oneof![
        6 => Just(None),
        1 => (any::<Index>(), any::<u8>(), any::<bool>()).prop_map(Some),
    ];
    (dst_mac, net, damage, prop::bool::weighted(0.05)).prop_map(|(dst_mac, net, damage, pad)| {
        let mut frame = [&dst_mac[..], &GUEST_MAC, &net].concat();
        if let Some((at, byte, cut)) = damage {
            let i = at.index(frame.len());
            if cut {
                frame.truncate(i);
            } else {
                frame[i] = byte;
            }
        }
        if pad {
            frame.resize(ETHERNET_HEADER + 1501, 0);
        }
        frame
    })
}

/// The filter's rules, as the module and [`GatewayConfig`] state them.
fn may_pass(config: &GatewayConfig, frame: &[u8]) -> Result<(), String> {
    if !(ETHERNET_HEADER..=ETHERNET_HEADER + config.mtu).contains(&frame.len()) {
        return Err(format!("{} bytes", frame.len()));
    }
    let ours = [[0xff; 6], slirp_mac(config.gateway), slirp_mac(config.dns)];
    if !ours.iter().any(|mac| frame[0..6] == mac[..]) {
        return Err("another MAC".into());
    }
    let packet = SlicedPacket::from_ethernet(frame).map_err(|e| e.to_string())?;
    if !packet.link_exts.is_empty() {
        return Err("a VLAN tag".into());
    }
    let ip = match &packet.net {
        Some(NetSlice::Arp(_)) => return Ok(()),
        Some(NetSlice::Ipv4(ip)) => ip,
        _ => return Err("neither ARP nor IPv4".into()),
    };
    let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
    let network_broadcast = Ipv4Addr::from(u32::from(config.network) | !u32::from(config.netmask()));
    let guest = |a: Ipv4Addr| {
        config.contains(a) && ![config.gateway, config.dns, config.network, network_broadcast].contains(&a)
    };
    let udp_to = |port: u16| matches!(&packet.transport, Some(TransportSlice::Udp(u)) if u.destination_port() == port);
    if udp_to(DHCP_SERVER_PORT) && (dst == Ipv4Addr::BROADCAST || dst == config.gateway) {
        return if src == Ipv4Addr::UNSPECIFIED || guest(src) {
            Ok(())
        } else {
            Err(format!("DHCP from {src}"))
        };
    }
    if !guest(src) {
        return Err(format!("from {src}"));
    }
    if dst.is_multicast() || dst == Ipv4Addr::BROADCAST || dst == network_broadcast {
        return Err(format!("to {dst}"));
    }
    if config.contains(dst) && dst != config.gateway && dst != config.dns {
        return Err(format!("to another guest, {dst}"));
    }
    // To the DNS address, DNS or ping: as far as a first fragment's header
    // shows too (later fragments are nothing without it).
    let first = ip.header().fragments_offset().value() == 0;
    if dst == config.dns && first {
        let payload = ip.payload();
        let port = payload.payload.get(2..4).map(|p| u16::from_be_bytes([p[0], p[1]]));
        let dns = config.dns_forwarding
            && matches!(payload.ip_number, IpNumber::TCP | IpNumber::UDP)
            && port == Some(DNS_PORT);
        let ping = payload.ip_number == IpNumber::ICMP;
        if !dns && !ping {
            return Err(format!("to the DNS address: {:?}", payload.ip_number));
        }
    }
    if ip.payload().fragmented {
        return Ok(());
    }
    match &packet.transport {
        Some(TransportSlice::Tcp(_) | TransportSlice::Udp(_) | TransportSlice::Icmpv4(_)) => Ok(()),
        other => Err(format!("transport {other:?}")),
    }
}

/// The flow table's own bookkeeping agrees with its flows, within limits.
fn consistent(f: &Flows) -> Result<(), String> {
    let guests = f.flows.values().filter(|flow| flow.origin == FlowOrigin::Guest).count();
    let per_guest: usize = f.per_guest.values().sum();
    if guests != f.guest_flows || per_guest != f.guest_flows {
        return Err(format!(
            "{guests} guest flows, counted {} and {per_guest}",
            f.guest_flows
        ));
    }
    if f.guest_flows > f.config.max_flows
        || f.per_guest
            .values()
            .any(|&n| n == 0 || n > f.config.max_flows_per_guest)
    {
        return Err(format!("over the limits: {:?}", f.per_guest));
    }
    if f.flows.len() > f.config.max_flows + FORWARD_FLOW_ROOM {
        return Err(format!("{} flows", f.flows.len()));
    }
    Ok(())
}

fn dropped(d: &Drops) -> u64 {
    let Drops {
        malformed,
        oversized,
        unsupported,
        not_for_gateway,
        bad_source,
        dns_refused,
        flow_limit_guest,
        flow_limit_total,
        output_full: _,
        output_error: _,
    } = *d;
    malformed
        + oversized
        + unsupported
        + not_for_gateway
        + bad_source
        + dns_refused
        + flow_limit_guest
        + flow_limit_total
}

/// What happens on the gateway thread: a frame from the switch, one from
/// libslirp, or time passing.
#[derive(Debug, Clone)]
enum Step {
    FromGuest(Vec<u8>),
    FromSlirp(Vec<u8>),
    Wait(Duration),
}

/// libslirp's frames: guests' frames turned around (replies, forwards'
/// SYNs, refusals quoting them), or anything.
fn slirp_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        frame().prop_map(|mut frame| {
            // Addresses, and ports behind a header without options.
            if let Some(ip) = frame.get_mut(ETHERNET_HEADER..ETHERNET_HEADER + 24) {
                let (addrs, ports) = ip.split_at_mut(20);
                let (src, dst) = addrs.split_at_mut(16);
                src[12..16].swap_with_slice(dst);
                let (sport, dport) = ports.split_at_mut(2);
                sport.swap_with_slice(dport);
            }
            frame
        }),
        ipv4().prop_map(|quoted| {
            let mut out = Vec::new();
            PacketBuilder::ethernet2([0x52, 0x55, 10, 0, 2, 2], GUEST_MAC)
                .ipv4([10, 0, 2, 2], GUEST.octets(), 64)
                .icmpv4(Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::Host,
                ))
                .write(&mut out, &quoted[..quoted.len().min(28)])
                .unwrap();
            out
        }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => frame().prop_map(Step::FromGuest),
        3 => slirp_frame().prop_map(Step::FromSlirp),
        1 => prop::sample::select(vec![1u64, 6, 11, 76, 241, 3601]).prop_map(|s| Step::Wait(Duration::from_secs(s))),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn what_the_filter_passes_keeps_its_rules(config in gateway_config(), frames in prop::collection::vec(frame(), 1..16)) {
        let mut f = Flows::new(config.clone());
        let now = Instant::now();
        let mut passed = 0;
        for frame in &frames {
            if f.guest_frame(frame, now) {
                passed += 1;
                let rules = may_pass(&config, frame);
                prop_assert!(rules.is_ok(), "{:?}: {:02x?}", rules, frame);
            }
        }
        // Every frame is passed or counted as dropped once.
        let c = f.counters(0);
        prop_assert_eq!(c.frames_from_switch, frames.len() as u64);
        prop_assert_eq!(c.bytes_from_switch, frames.iter().map(|f| f.len() as u64).sum::<u64>());
        prop_assert_eq!(c.frames_from_switch, passed + dropped(&c.drops));
    }

    #[test]
    fn the_flow_table_keeps_its_limits(
        config in gateway_config(),
        forward in prop::option::of((port(), port())),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let mut f = Flows::new(config);
        if let Some((host_port, guest_port)) = forward {
            f.add_forward(Forward::new(Proto::Tcp, host_port, GUEST, guest_port));
            f.add_forward(Forward::new(Proto::Udp, host_port, GUEST, guest_port));
        }
        let mut now = Instant::now();
        for step in steps {
            match step {
                Step::FromGuest(frame) => {
                    f.guest_frame(&frame, now);
                }
                Step::FromSlirp(frame) => f.slirp_frame(&frame, now),
                Step::Wait(d) => {
                    now += d;
                    f.expire(now);
                }
            }
            let checked = consistent(&f);
            prop_assert!(checked.is_ok(), "{:?}", checked);
        }
        let c = f.counters(0);
        prop_assert!(c.flows_active as usize <= f.flows.len());
        prop_assert_eq!(f.flows(now).len(), f.flows.len());
    }
}
