//! The switch's limits and checks against clients that break the rules, as
//! a guest's root may: sources that are not its own, more MACs than a port
//! may have, broadcast storms, frames over a port's rate, ARP and DHCP that
//! claim what is another's. Each is dropped and counted on the port it came
//! from, the tables stay within their limits, and the other ports keep
//! talking.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

mod common;

use common::{frame, mac, BessClient, TempDir, BROADCAST};

use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder};
use evum_core::gateway::{Gateway, GatewayConfig};
use evum_core::switch::{PortInfo, Switch, SwitchConfig};

// ---------------------------------------------------------------- fixtures

fn start(dir: &TempDir, tune: impl FnOnce(&mut SwitchConfig)) -> Switch {
    let mut config = common::switch_config(&dir.0.join("switch"));
    tune(&mut config);
    Switch::start(config).expect("switch starts")
}

/// A client whose end is named as an evum VM's is: its port is locked to
/// `mac(n)`.
fn vm_port(dir: &TempDir, switch: &Switch, n: u8) -> BessClient {
    let name = dir.0.join(evum_core::switch::vm_peer_name(&mac(n)));
    BessClient::connect_as(&switch.bess_socket(), &name)
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_ports(switch: &Switch, n: usize) -> Vec<PortInfo> {
    wait_until("the ports", || switch.ports().unwrap().len() == n);
    switch.ports().unwrap()
}

/// The port that has sent (or was locked to) `mac`.
fn port_of(switch: &Switch, mac: [u8; 6]) -> PortInfo {
    let ports = switch.ports().unwrap();
    ports
        .iter()
        .find(|p| p.mac == Some(mac))
        .cloned()
        .unwrap_or_else(|| panic!("no port has {mac:?}: {ports:?}"))
}

// ---------------------------------------------------------------- port security

#[test]
fn a_vm_port_sends_from_its_own_mac_only_and_no_one_else_may_use_it() {
    let dir = TempDir::new("locked");
    let switch = start(&dir, |_| {});
    let vm = vm_port(&dir, &switch, 1);
    let other = BessClient::connect(&switch.bess_socket());
    let thief = BessClient::connect(&switch.bess_socket());
    wait_for_ports(&switch, 3);
    // Locked from the start: the port has its MAC before it sent anything.
    let vm_id = port_of(&switch, mac(1)).id;
    let hello = frame(BROADCAST, mac(2), 1);
    other.send(&hello);
    assert_eq!(vm.recv().as_deref(), Some(&hello[..]));
    assert_eq!(thief.recv().as_deref(), Some(&hello[..]));
    // From its own MAC the VM talks as ever.
    let ok = frame(mac(2), mac(1), 2);
    vm.send(&ok);
    assert_eq!(other.recv().as_deref(), Some(&ok[..]));
    // From another it says nothing.
    vm.send(&frame(BROADCAST, mac(7), 3));
    assert!(other.drain().is_empty() && thief.drain().is_empty());
    // Another port taking the VM's MAC is refused too, and frames for the
    // VM still go to the VM.
    thief.send(&frame(BROADCAST, mac(1), 4));
    thief.send(&frame(mac(2), mac(1), 5));
    assert!(other.drain().is_empty(), "the thief's frames got through");
    let to_vm = frame(mac(1), mac(2), 6);
    other.send(&to_vm);
    assert_eq!(vm.recv().as_deref(), Some(&to_vm[..]));
    assert!(thief.drain().is_empty());
    let ports = switch.ports().unwrap();
    let vm_port = ports.iter().find(|p| p.id == vm_id).unwrap();
    assert_eq!(vm_port.counters.drops_spoofed, 1, "{ports:?}");
    let thief_port = ports.iter().find(|p| p.id != vm_id && p.mac != Some(mac(2))).unwrap();
    assert_eq!(thief_port.counters.drops_spoofed, 2, "{ports:?}");
    let table = switch.mac_table().unwrap();
    assert!(
        table.iter().any(|&(m, port, _)| m == mac(1) && port == vm_id),
        "{table:?}"
    );
}

#[test]
fn without_port_security_a_vm_port_is_open() {
    let dir = TempDir::new("unlocked");
    let switch = start(&dir, |c| c.port_security = false);
    let vm = vm_port(&dir, &switch, 1);
    let other = BessClient::connect(&switch.bess_socket());
    wait_for_ports(&switch, 2);
    let moved = frame(BROADCAST, mac(7), 1);
    vm.send(&moved);
    assert_eq!(other.recv().as_deref(), Some(&moved[..]));
}

// ---------------------------------------------------------------- MAC limits

#[test]
fn a_port_learns_at_most_max_macs_and_the_table_holds_at_most_its_size() {
    let dir = TempDir::new("macs");
    let switch = start(&dir, |c| {
        c.max_macs = 8;
        c.mac_table_size = 20;
    });
    let a = BessClient::connect(&switch.bess_socket());
    let b = BessClient::connect(&switch.bess_socket());
    let flooders: Vec<BessClient> = (0..3).map(|_| BessClient::connect(&switch.bess_socket())).collect();
    wait_for_ports(&switch, 5);
    a.send(&frame(BROADCAST, mac(1), 0));
    b.send(&frame(BROADCAST, mac(2), 0));
    let _ = (a.drain(), b.drain());
    // Each flooder sends from 1000 addresses of its own, to its first one
    // (so that, once learned, nothing is forwarded anywhere).
    const SOURCES: u16 = 1000;
    for (f, flooder) in flooders.iter().enumerate() {
        let own = [2, 1, f as u8, 0, 0, 0];
        for i in 0..SOURCES {
            let [hi, lo] = i.to_be_bytes();
            flooder.send(&frame(own, [2, 1, f as u8, 0, hi, lo], 1));
        }
    }
    let sent = 3 * u64::from(SOURCES);
    wait_until("every frame counted", || {
        let ports = switch.ports().unwrap();
        ports.iter().map(|p| p.counters.frames_in).sum::<u64>() == sent + 2
    });
    let table = switch.mac_table().unwrap();
    assert!(table.len() <= 20, "{} entries", table.len());
    let ports = switch.ports().unwrap();
    let mut learned_by_flooders = 0;
    let mut limit_drops = 0;
    for port in ports.iter().filter(|p| p.counters.frames_in > 1) {
        let learned = table.iter().filter(|&&(_, p, _)| p == port.id).count();
        assert!(learned <= 8, "port {:?} has {learned} MACs", port.id);
        learned_by_flooders += learned as u64;
        limit_drops += port.counters.drops_mac_limit;
    }
    // 3 x 8 would be 24, with A's and B's: the last flooder's sources went
    // unlearned (and its frames on). Every source is counted one way.
    let unlearned = switch.counters().unwrap().mac_table_full;
    assert!(unlearned > 0 && limit_drops >= 2 * (u64::from(SOURCES) - 8));
    assert_eq!(learned_by_flooders + limit_drops + unlearned, sent);
    // A and B were learned first and still talk.
    let ping = frame(mac(2), mac(1), 9);
    a.send(&ping);
    assert_eq!(b.recv().as_deref(), Some(&ping[..]));
    let pong = frame(mac(1), mac(2), 9);
    b.send(&pong);
    assert_eq!(a.recv().as_deref(), Some(&pong[..]));
}

// ---------------------------------------------------------------- rates

/// Sends `n` copies of `frame` on `client` as fast as it can while another
/// thread counts what `receiver` gets; returns (received, seconds sending).
fn blast(client: &BessClient, receiver: BessClient, frame: &[u8], n: usize) -> (usize, f64) {
    let counter = std::thread::spawn(move || receiver.drain().len());
    let started = Instant::now();
    for _ in 0..n {
        client.send(frame);
    }
    let secs = started.elapsed().as_secs_f64();
    (counter.join().unwrap(), secs)
}

#[test]
fn a_broadcast_storm_is_cut_to_the_limit_and_unicast_goes_on() {
    let dir = TempDir::new("storm");
    let switch = start(&dir, |c| c.storm_limit = Some(1000));
    let storm = BessClient::connect(&switch.bess_socket());
    let victim = BessClient::connect(&switch.bess_socket());
    wait_for_ports(&switch, 2);
    victim.send(&frame(BROADCAST, mac(2), 0));
    let _ = storm.drain();
    const N: usize = 20_000;
    let (received, secs) = blast(&storm, victim, &frame(BROADCAST, mac(1), 1), N);
    // The burst (a fifth of the rate) and the rate for the time it took.
    let most = 200 + (1000.0 * secs * 1.2) as usize + 20;
    assert!(
        received >= 200 && received <= most,
        "{received} of {N} in {secs:.3} s (at most {most})"
    );
    let port = port_of(&switch, mac(1));
    assert_eq!(port.counters.drops_storm as usize, N - received, "{port:?}");
    // Unicast is not a storm.
    wait_for_ports(&switch, 1);
    let victim = BessClient::connect(&switch.bess_socket());
    wait_for_ports(&switch, 2);
    victim.send(&frame(BROADCAST, mac(3), 0));
    let _ = storm.drain();
    let (received, _) = blast(&storm, victim, &frame(mac(3), mac(1), 2), 2000);
    assert_eq!(received, 2000);
}

#[test]
fn the_port_rate_holds_every_frame_to_the_limit() {
    let dir = TempDir::new("rate");
    let switch = start(&dir, |c| c.port_rate = Some(2000));
    let fast = BessClient::connect(&switch.bess_socket());
    let sink = BessClient::connect(&switch.bess_socket());
    wait_for_ports(&switch, 2);
    sink.send(&frame(BROADCAST, mac(2), 0));
    let _ = fast.drain();
    const N: usize = 20_000;
    let (received, secs) = blast(&fast, sink, &frame(mac(2), mac(1), 1), N);
    let most = 400 + (2000.0 * secs * 1.2) as usize + 20;
    assert!(
        received >= 400 && received <= most,
        "{received} of {N} in {secs:.3} s (at most {most})"
    );
    let port = port_of(&switch, mac(1));
    assert_eq!(port.counters.drops_rate as usize, N - received, "{port:?}");
}

// ---------------------------------------------------------------- ARP, DHCP

fn arp(src: [u8; 6], operation: ArpOperation, sender: ([u8; 6], [u8; 4]), target_ip: [u8; 4]) -> Vec<u8> {
    let packet = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        operation,
        &sender.0,
        &sender.1,
        &[0; 6],
        &target_ip,
    )
    .unwrap();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src, BROADCAST)
        .arp(packet)
        .write(&mut out)
        .unwrap();
    out
}

/// A DHCPDISCOVER from `src` naming `chaddr`, or the same with the ports of
/// a server's answer (`server`).
fn dhcp(src: [u8; 6], chaddr: [u8; 6], server: bool) -> Vec<u8> {
    dhcp_message(src, chaddr, server, &[53, 1, if server { 5 } else { 1 }, 255])
}

/// A DHCPREQUEST from `src` for its own MAC, asking the gateway for `address`.
fn dhcp_request(src: [u8; 6], address: [u8; 4]) -> Vec<u8> {
    let mut options = vec![53, 1, 3, 50, 4];
    options.extend_from_slice(&address);
    options.extend_from_slice(&[54, 4, 10, 0, 2, 2, 255]);
    dhcp_message(src, src, false, &options)
}

fn dhcp_message(src: [u8; 6], chaddr: [u8; 6], server: bool, options: &[u8]) -> Vec<u8> {
    let mut bootp = vec![0u8; 240];
    bootp[0] = if server { 2 } else { 1 }; // BOOTREPLY, BOOTREQUEST
    bootp[1] = 1; // Ethernet
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(&[1, 2, 3, 4]); // xid
    bootp[28..34].copy_from_slice(&chaddr);
    bootp[236..240].copy_from_slice(&[99, 130, 83, 99]);
    bootp.extend_from_slice(options);
    let (sport, dport) = if server { (67, 68) } else { (68, 67) };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src, BROADCAST)
        .ipv4([0, 0, 0, 0], [255; 4], 64)
        .udp(sport, dport)
        .write(&mut out, &bootp)
        .unwrap();
    out
}

fn is_dhcp_answer(frame: &[u8]) -> bool {
    frame.len() > 42 && frame[12..14] == [8, 0] && frame[23] == 17 && frame[34..38] == [0, 67, 0, 68]
}

#[test]
fn arp_and_dhcp_are_checked_against_the_port_they_come_from() {
    let dir = TempDir::new("guard");
    let switch = start(&dir, |_| {});
    let config = GatewayConfig {
        dns_forwarding: false,
        ..Default::default()
    };
    let (gw_ip, dns_ip) = (config.gateway, config.dns);
    let gateway = Gateway::start(config, &switch.bess_socket()).expect("gateway starts");
    switch.guard(vec![gw_ip, dns_ip]).unwrap();
    let v1 = vm_port(&dir, &switch, 1);
    let v2 = vm_port(&dir, &switch, 2);
    wait_for_ports(&switch, 3);
    switch.bind(Ipv4Addr::new(10, 0, 2, 16), mac(2)).unwrap();
    let request = ArpOperation::REQUEST;
    let drops = |n: u8| port_of(&switch, mac(n)).counters.drops_guard;

    // v1 claims the gateway's address, then v2's, then names another MAC
    // in its ARP: v2 hears none of it.
    v1.send(&arp(mac(1), request, (mac(1), gw_ip.octets()), gw_ip.octets()));
    v1.send(&arp(mac(1), request, (mac(1), dns_ip.octets()), dns_ip.octets()));
    v1.send(&arp(mac(1), request, (mac(1), [10, 0, 2, 16]), [10, 0, 2, 16]));
    v1.send(&arp(mac(1), request, (mac(9), [10, 0, 2, 15]), [10, 0, 2, 2]));
    assert!(v2.drain().is_empty(), "a spoofed ARP got through");
    assert_eq!(drops(1), 4);
    // Its own address it may announce, and the gateway still answers it.
    let own = arp(mac(1), request, (mac(1), [10, 0, 2, 15]), gw_ip.octets());
    v1.send(&own);
    assert_eq!(v2.recv().as_deref(), Some(&own[..]));
    let reply = v1.drain();
    assert!(
        reply
            .iter()
            .any(|f| f[12..14] == [8, 6] && f[6..12] == [0x52, 0x55, 10, 0, 2, 2]),
        "no ARP reply from the gateway: {reply:?}"
    );
    // A DHCP request for another MAC is dropped; for its own it is answered.
    v1.send(&dhcp(mac(1), mac(5), false));
    assert!(
        !v1.drain().iter().any(|f| is_dhcp_answer(f)),
        "the gateway answered for mac 5"
    );
    assert_eq!(drops(1), 5);
    v1.send(&dhcp(mac(1), mac(1), false));
    assert!(v1.drain().iter().any(|f| is_dhcp_answer(f)), "no DHCP offer");
    // A VM answering DHCP is a rogue server.
    v2.send(&dhcp(mac(2), mac(1), true));
    assert!(
        !v1.drain().iter().any(|f| is_dhcp_answer(f)),
        "a rogue DHCP answer got through"
    );
    assert_eq!(drops(2), 1);
    gateway.stop();
}

#[test]
fn one_port_holds_at_most_four_leases() {
    let dir = TempDir::new("leases");
    let switch = start(&dir, |_| {});
    let config = GatewayConfig {
        dns_forwarding: false,
        ..Default::default()
    };
    let guarded = vec![config.gateway, config.dns];
    let gateway = Gateway::start(config, &switch.bess_socket()).expect("gateway starts");
    switch.guard(guarded).unwrap();
    // An open port (no lock) with a MAC per would-be lease.
    let greedy = BessClient::connect(&switch.bess_socket());
    wait_for_ports(&switch, 2);
    let acked: Vec<bool> = (0..6u8)
        .map(|i| {
            greedy.send(&dhcp_request(mac(10 + i), [10, 0, 2, 15 + i]));
            greedy.drain().iter().any(|f| is_dhcp_answer(f))
        })
        .collect();
    assert_eq!(acked, [true, true, true, true, false, false]);
    assert_eq!(port_of(&switch, mac(15)).counters.drops_guard, 2);
    // A MAC that has its lease may ask again.
    greedy.send(&dhcp_request(mac(10), [10, 0, 2, 15]));
    assert!(greedy.drain().iter().any(|f| is_dhcp_answer(f)));
    gateway.stop();
}
