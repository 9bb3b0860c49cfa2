//! The frames that say who is who on a network, ARP and DHCP, picked out of
//! the stream so that the switch can check them against the port they came
//! from (ARP guard, DHCP snooping). Everything else passes untouched after
//! a look at two or three header bytes.

use std::net::Ipv4Addr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use super::fdb::Mac;

const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
/// 802.1Q, 802.1ad and the older QinQ tag: what is inside is looked at too.
const ETHERTYPE_VLAN: [[u8; 2]; 3] = [[0x81, 0x00], [0x88, 0xa8], [0x91, 0x00]];
const IP_PROTO_UDP: u8 = 17;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
/// Where a BOOTP message's fields sit (RFC 2131, section 2).
const BOOTP_YIADDR: usize = 16;
const BOOTP_CHADDR: usize = 28;
const BOOTP_OPTIONS: usize = 240;
const DHCP_MAGIC: [u8; 4] = [99, 130, 83, 99];
const DHCP_OPT_MESSAGE_TYPE: u8 = 53;
const DHCP_OPT_END: u8 = 255;
const DHCP_OPT_PAD: u8 = 0;
const DHCPACK: u8 = 5;

/// What a frame claims about addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// An ARP packet (request or reply) of Ethernet and IPv4: its sender's
    /// addresses.
    Arp { sender_mac: Mac, sender_ip: Ipv4Addr },
    /// A DHCP client's message, for the client hardware address it names.
    DhcpClient { chaddr: Mac },
    /// A DHCP server's message; for an ACK, the address given and to whom.
    DhcpServer { ack: Option<(Mac, Ipv4Addr)> },
    /// Nothing of the above (or nothing that parses as it).
    None,
}

/// Picks ARP and DHCP out of a frame of at least an Ethernet header.
pub fn claim(frame: &[u8]) -> Claim {
    let ethertype = [frame[12], frame[13]];
    let worth_parsing = ethertype == ETHERTYPE_ARP
        || ETHERTYPE_VLAN.contains(&ethertype)
        || (ethertype == ETHERTYPE_IPV4 && frame.get(23) == Some(&IP_PROTO_UDP));
    if !worth_parsing {
        return Claim::None;
    }
    let Ok(packet) = SlicedPacket::from_ethernet(frame) else {
        return Claim::None;
    };
    match (&packet.net, &packet.transport) {
        (Some(NetSlice::Arp(arp)), _) => {
            let (Ok(sender_mac), Ok(sender_ip)) = (
                <Mac>::try_from(arp.sender_hw_addr()),
                <[u8; 4]>::try_from(arp.sender_protocol_addr()),
            ) else {
                return Claim::None;
            };
            Claim::Arp {
                sender_mac,
                sender_ip: sender_ip.into(),
            }
        }
        (Some(NetSlice::Ipv4(_)), Some(TransportSlice::Udp(udp))) => {
            match (udp.source_port(), udp.destination_port()) {
                (DHCP_CLIENT_PORT, DHCP_SERVER_PORT) => match chaddr(udp.payload()) {
                    Some(chaddr) => Claim::DhcpClient { chaddr },
                    None => Claim::None,
                },
                (DHCP_SERVER_PORT, DHCP_CLIENT_PORT) => Claim::DhcpServer {
                    ack: dhcp_ack(udp.payload()),
                },
                _ => Claim::None,
            }
        }
        _ => Claim::None,
    }
}

fn chaddr(bootp: &[u8]) -> Option<Mac> {
    bootp.get(BOOTP_CHADDR..BOOTP_CHADDR + 6)?.try_into().ok()
}

/// The client and its address, if the message is a DHCPACK.
fn dhcp_ack(bootp: &[u8]) -> Option<(Mac, Ipv4Addr)> {
    if bootp.get(BOOTP_OPTIONS - 4..BOOTP_OPTIONS)? != DHCP_MAGIC {
        return None;
    }
    let mut options = &bootp[BOOTP_OPTIONS..];
    while let [code, rest @ ..] = options {
        match *code {
            DHCP_OPT_PAD => options = rest,
            DHCP_OPT_END => return None,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let value = rest.get(..usize::from(len))?;
                if *code == DHCP_OPT_MESSAGE_TYPE {
                    if value != [DHCPACK] {
                        return None;
                    }
                    let yiaddr: [u8; 4] = bootp.get(BOOTP_YIADDR..BOOTP_YIADDR + 4)?.try_into().ok()?;
                    return Some((chaddr(bootp)?, yiaddr.into()));
                }
                options = &rest[usize::from(len)..];
            }
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder};

    pub const VM: Mac = [2, 0xee, 0, 0, 0, 1];
    const GW: Mac = [0x52, 0x55, 10, 0, 2, 2];

    pub fn arp(src: Mac, sender_mac: Mac, sender_ip: [u8; 4]) -> Vec<u8> {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REPLY,
            &sender_mac,
            &sender_ip,
            &[0xff; 6],
            &[10, 0, 2, 15],
        )
        .unwrap();
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(src, [0xff; 6])
            .arp(arp)
            .write(&mut frame)
            .unwrap();
        frame
    }

    /// A BOOTP message with `chaddr` and, if given, a message type option.
    fn bootp(chaddr: Mac, yiaddr: [u8; 4], message_type: Option<u8>) -> Vec<u8> {
        let mut b = vec![0u8; BOOTP_OPTIONS];
        b[BOOTP_YIADDR..BOOTP_YIADDR + 4].copy_from_slice(&yiaddr);
        b[BOOTP_CHADDR..BOOTP_CHADDR + 6].copy_from_slice(&chaddr);
        b[BOOTP_OPTIONS - 4..].copy_from_slice(&DHCP_MAGIC);
        b.extend_from_slice(&[DHCP_OPT_PAD, 12, 2, b'v', b'm']);
        if let Some(t) = message_type {
            b.extend_from_slice(&[DHCP_OPT_MESSAGE_TYPE, 1, t]);
        }
        b.push(DHCP_OPT_END);
        b
    }

    pub fn dhcp(src: Mac, ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(src, [0xff; 6])
            .ipv4([0, 0, 0, 0], [255; 4], 64)
            .udp(ports.0, ports.1)
            .write(&mut frame, payload)
            .unwrap();
        frame
    }

    pub fn dhcp_request(src: Mac, chaddr: Mac) -> Vec<u8> {
        dhcp(src, (68, 67), &bootp(chaddr, [0; 4], Some(3)))
    }

    #[test]
    fn arp_names_its_sender() {
        assert_eq!(
            claim(&arp(VM, GW, [10, 0, 2, 2])),
            Claim::Arp {
                sender_mac: GW,
                sender_ip: Ipv4Addr::new(10, 0, 2, 2)
            }
        );
    }

    #[test]
    fn dhcp_is_told_apart_by_its_ports() {
        assert_eq!(claim(&dhcp_request(VM, GW)), Claim::DhcpClient { chaddr: GW });
        let ack = bootp(VM, [10, 0, 2, 15], Some(DHCPACK));
        assert_eq!(
            claim(&dhcp(GW, (67, 68), &ack)),
            Claim::DhcpServer {
                ack: Some((VM, Ipv4Addr::new(10, 0, 2, 15)))
            }
        );
        // An offer (2) binds nothing; neither does a message without a type.
        for t in [Some(2), None] {
            let offer = bootp(VM, [10, 0, 2, 15], t);
            assert_eq!(claim(&dhcp(GW, (67, 68), &offer)), Claim::DhcpServer { ack: None });
        }
        // Other UDP, and a truncated BOOTP message, claim nothing.
        assert_eq!(claim(&dhcp(VM, (68, 53), &bootp(GW, [0; 4], None))), Claim::None);
        assert_eq!(claim(&dhcp(VM, (68, 67), &[1, 2, 3])), Claim::None);
    }

    #[test]
    fn other_frames_are_not_parsed() {
        let mut frame = arp(VM, GW, [10, 0, 2, 2]);
        frame[12..14].copy_from_slice(&[0x88, 0xb5]);
        assert_eq!(claim(&frame), Claim::None);
        assert_eq!(claim(&[0u8; 14]), Claim::None);
    }
}
