//! The gateway against real UML guests on a real switch: DHCP, forwards from
//! the host's 127.0.0.1, the host's loopback through the gateway address (or
//! not), flow limits under a flood while other guests keep talking, and
//! garbage from a raw port. All traffic stays on 127.0.0.1 and between our
//! own guests: DNS forwarding is off in every test (the host's resolver is
//! not ours to ask), and no guest ever addresses anything outside.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{boot, BessClient, Guest, TempDir};

use crossbeam_channel::{unbounded, Receiver};
use evum_core::gateway::{FlowOrigin, FlowProto, Forward, Gateway, GatewayConfig, GatewayError, Proto};
use evum_core::switch::Switch;
use evum_core::BootOption;

// ---------------------------------------------------------------- fixtures

/// A switch with a gateway on it.
struct Net {
    /// Removed with the net.
    _dir: TempDir,
    switch: Switch,
    gateway: Option<Gateway>,
}

impl Net {
    fn new(tag: &str, tune: impl FnOnce(&mut GatewayConfig)) -> Net {
        let dir = TempDir::new(tag);
        let switch = Switch::start(common::switch_config(&dir.0.join("switch"))).expect("switch starts");
        let mut config = GatewayConfig {
            dns_forwarding: false,
            ..Default::default()
        };
        tune(&mut config);
        let gateway = Gateway::start(config, &switch.bess_socket()).expect("gateway starts");
        Net {
            _dir: dir,
            switch,
            gateway: Some(gateway),
        }
    }

    fn gw(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    /// A guest on the switch over the bess transport, with MAC 02:..:0n.
    fn guest(&self, n: u8) -> Guest {
        // The guest's end is in its own runtime directory, the only place
        // a jailed UML process may bind a socket.
        boot(BootOption::Append(format!(
            "vec0:transport=bess,src={}/bess,dst={},mac=02:00:00:00:00:{n:02x}",
            evum_core::vm::options::RUNTIME_DIR,
            self.switch.bess_socket().display()
        )))
    }
}

/// Guests of the gateway tests configure eth0 (the vector driver's vec0, renamed by init) by DHCP.
trait Dhcp {
    fn dhcp(&mut self) -> String;
}

impl Dhcp for Guest {
    /// Configures eth0 by DHCP with the image's own udhcpc script.
    fn dhcp(&mut self) -> String {
        self.ok("ifconfig eth0 up && udhcpc -i eth0 -n -q -t 5 -T 1");
        self.ok("ifconfig eth0")
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

/// A TCP server on the host's 127.0.0.1 that keeps what each connection
/// sent, and closes it after the guest's FIN or, with `hold`, keeps it open
/// for a minute.
struct HostServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    received: Receiver<Vec<u8>>,
}

impl HostServer {
    fn start(hold: bool) -> HostServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, received) = unbounded();
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                std::thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let mut data = Vec::new();
                    let _ = conn.read_to_end(&mut data);
                    let _ = tx.send(data);
                    if hold {
                        std::thread::sleep(Duration::from_secs(60));
                    }
                });
            }
        });
        HostServer {
            port,
            accepted,
            received,
        }
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn a_guest_gets_its_address_by_dhcp_and_pings_the_gateway() {
    let net = Net::new("dhcp", |_| {});
    let mut guest = net.guest(1);
    let ifconfig = guest.dhcp();
    assert!(ifconfig.contains("inet addr:10.0.2.15"), "{ifconfig}");
    let routes = guest.ok("route -n");
    assert!(routes.contains("10.0.2.2"), "no default route: {routes}");
    let out = guest.ok("ping -c 3 -W 2 10.0.2.2");
    assert!(out.contains("3 packets received"), "{out}");
    // The DNS address answers ping too.
    let out = guest.ok("ping -c 1 -W 2 10.0.2.3");
    assert!(out.contains("1 packets received"), "{out}");
    let c = net.gw().counters().unwrap();
    assert!(c.dhcp_requests >= 2, "discover and request: {c:?}");
    // Echo to the gateway's own addresses is no NAT flow.
    assert_eq!(c.flows_opened, 0, "{c:?}");
    assert!(c.frames_to_switch >= 6, "{c:?}");
    assert_eq!(c.drops.malformed + c.drops.bad_source + c.drops.output_full, 0, "{c:?}");
}

#[test]
fn the_host_talks_to_a_guest_through_a_forward() {
    let net = Net::new("forward", |_| {});
    let mut guest = net.guest(1);
    guest.dhcp();
    guest.ok("nc -ll -p 7000 -e cat </dev/null >/dev/null 2>&1 &");
    let fwd = net
        .gw()
        .add_forward(Forward::new(Proto::Tcp, 0, GUEST_ADDR, 7000))
        .unwrap();
    assert_ne!(fwd.host_port, 0);
    assert_eq!(fwd.host_addr, Ipv4Addr::LOCALHOST);
    // The same port again is refused; so is a forward to nowhere.
    assert!(matches!(
        net.gw().add_forward(fwd),
        Err(GatewayError::ForwardExists(Proto::Tcp, _))
    ));
    assert!(matches!(
        net.gw()
            .add_forward(Forward::new(Proto::Tcp, 0, Ipv4Addr::new(10, 0, 3, 1), 1)),
        Err(GatewayError::InvalidForward(_))
    ));

    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mut echoed = Vec::new();
    // nc needs a moment to listen: retry until the echo comes.
    wait_until("an echo through the forward", || {
        let Ok(mut conn) = TcpStream::connect(fwd.host()) else {
            return false;
        };
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        conn.write_all(&payload).unwrap();
        echoed.clear();
        let mut buf = [0u8; 4096];
        while echoed.len() < payload.len() {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => echoed.extend_from_slice(&buf[..n]),
            }
        }
        echoed == payload
    });

    // Counted per forward and per flow: one connection, exact payload bytes
    // (the retry loop may have made earlier connections that got nothing).
    wait_until("the counters to settle", || {
        let f = &net.gw().forwards().unwrap()[0];
        f.bytes_to_guest >= payload.len() as u64 && f.bytes_from_guest >= payload.len() as u64
    });
    let forwards = net.gw().forwards().unwrap();
    assert_eq!(forwards.len(), 1);
    let f = &forwards[0];
    assert_eq!(f.forward, fwd);
    assert!(f.connections >= 1, "{f:?}");
    let flows = net.gw().flows().unwrap();
    let flow = flows
        .iter()
        .filter(|fl| fl.origin == FlowOrigin::Forward(Proto::Tcp, fwd.host()))
        .find(|fl| fl.bytes_to_guest > 0)
        .unwrap_or_else(|| panic!("no flow of the forward: {flows:?}"));
    assert_eq!(flow.proto, FlowProto::Tcp);
    assert_eq!(flow.guest, SocketAddrV4::new(GUEST_ADDR, 7000));
    assert_eq!(
        *flow.remote.ip(),
        Ipv4Addr::new(10, 0, 2, 2),
        "the host appears as the gateway"
    );
    assert_eq!(flow.bytes_to_guest, payload.len() as u64, "{flow:?}");
    assert_eq!(flow.bytes_from_guest, payload.len() as u64, "{flow:?}");
    assert!(flow.packets_to_guest >= 5 && flow.packets_from_guest >= 5, "{flow:?}");
    assert_eq!(
        f.bytes_to_guest,
        flows
            .iter()
            .filter(|fl| fl.origin == flow.origin)
            .map(|fl| fl.bytes_to_guest)
            .sum::<u64>()
    );

    // Removing the forward closes its port; stopping closes the rest.
    net.gw().remove_forward(Proto::Tcp, fwd.host()).unwrap();
    assert!(TcpStream::connect(fwd.host()).is_err(), "the forward still listens");
    assert!(matches!(
        net.gw().remove_forward(Proto::Tcp, fwd.host()),
        Err(GatewayError::NoSuchForward(..))
    ));
    let again = net
        .gw()
        .add_forward(Forward::new(Proto::Tcp, 0, GUEST_ADDR, 7000))
        .unwrap();
    assert!(TcpStream::connect(again.host()).is_ok());
    let mut net = net;
    net.gateway.take().unwrap().stop();
    assert!(
        TcpStream::connect(again.host()).is_err(),
        "a stopped gateway still listens"
    );
}

#[test]
fn a_guest_reaches_the_hosts_loopback_when_allowed() {
    let net = Net::new("loopback-on", |c| c.host_loopback = true);
    let server = HostServer::start(false);
    let mut guest = net.guest(1);
    guest.dhcp();
    guest.ok(&format!("echo hello-host | nc -w 5 10.0.2.2 {}", server.port));
    let got = server
        .received
        .recv_timeout(Duration::from_secs(10))
        .expect("the host server got data");
    assert_eq!(got, b"hello-host\n");
    let flows = net.gw().flows().unwrap();
    let flow = flows
        .iter()
        .find(|f| f.remote == SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), server.port))
        .unwrap_or_else(|| panic!("no flow to the host: {flows:?}"));
    assert_eq!((flow.proto, flow.origin), (FlowProto::Tcp, FlowOrigin::Guest));
    assert_eq!(*flow.guest.ip(), GUEST_ADDR);
    assert_eq!(flow.bytes_from_guest, 11, "{flow:?}");
    assert_eq!(net.gw().counters().unwrap().flows_opened, 1);
}

#[test]
fn a_guest_cannot_reach_the_hosts_loopback_by_default() {
    let net = Net::new("loopback-off", |_| {});
    let server = HostServer::start(false);
    let mut guest = net.guest(1);
    guest.dhcp();
    let (status, out) = guest.run(&format!("echo hello-host | nc -w 5 10.0.2.2 {}", server.port));
    assert_ne!(status, 0, "the guest got through: {out}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.accepted.load(Ordering::SeqCst), 0);
    assert!(server.received.try_recv().is_err());
    // The attempt was a flow, and it is closed.
    let flows = net.gw().flows().unwrap();
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert!(flows[0].closed, "{flows:?}");
}

#[test]
fn a_flooding_guest_hits_the_limit_while_others_keep_talking() {
    const LIMIT: usize = 8;
    const ATTEMPTS: usize = 30;
    let net = Net::new("flood", |c| {
        c.host_loopback = true;
        c.max_flows_per_guest = LIMIT;
    });
    let server = HostServer::start(true);
    let mut flooder = net.guest(1);
    let mut b = net.guest(2);
    let mut c = net.guest(3);
    flooder.dhcp();
    b.ok("ifconfig eth0 10.0.2.30 netmask 255.255.255.0 up");
    c.ok("ifconfig eth0 10.0.2.31 netmask 255.255.255.0 up");
    // Each nc holds its connection open: the server does not close.
    flooder.ok(&format!(
        "i=0; while [ $i -lt {ATTEMPTS} ]; do nc 10.0.2.2 {} </dev/null >/dev/null 2>&1 & i=$((i+1)); done",
        server.port
    ));
    let out = b.ok("ping -c 10 -i 0.2 -W 2 10.0.2.31");
    assert!(out.contains("10 packets received"), "{out}");
    wait_until("the flood to hit the limit", || {
        net.gw().counters().unwrap().drops.flow_limit_guest > 0 && server.accepted.load(Ordering::SeqCst) >= LIMIT
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        LIMIT,
        "the host saw more than the limit"
    );
    let counters = net.gw().counters().unwrap();
    assert_eq!(counters.flows_opened, LIMIT as u64, "{counters:?}");
    assert_eq!(counters.flows_active, LIMIT as u64, "{counters:?}");
    let flows = net.gw().flows().unwrap();
    assert_eq!(flows.len(), LIMIT);
    assert!(flows
        .iter()
        .all(|f| *f.guest.ip() == GUEST_ADDR && f.origin == FlowOrigin::Guest));
    // Guest-to-guest traffic never reached libslirp, and the pair still talks.
    let out = c.ok("ping -c 3 -W 2 10.0.2.30");
    assert!(out.contains("3 packets received"), "{out}");
    // The flooder's other traffic still gets through: the gateway answers ping.
    let out = flooder.ok("ping -c 2 -W 2 10.0.2.2");
    assert!(out.contains("2 packets received"), "{out}");
    eprintln!(
        "flood: {} SYNs dropped at the limit of {LIMIT}, {} frames not for the gateway",
        counters.drops.flow_limit_guest, counters.drops.not_for_gateway
    );
}

const RAW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x99];
const GW_MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];

fn ipv4_frame(
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    build: impl FnOnce(etherparse::PacketBuilderStep<etherparse::IpHeaders>) -> Vec<u8>,
) -> Vec<u8> {
    build(etherparse::PacketBuilder::ethernet2(RAW_MAC, dst_mac).ipv4(src, dst, 64))
}

#[test]
fn garbage_and_a_syn_flood_from_a_raw_port_are_counted_and_survived() {
    const LIMIT: usize = 16;
    const SYNS: u16 = 2000;
    let net = Net::new("garbage", |c| {
        c.host_loopback = true;
        c.max_flows_per_guest = LIMIT;
    });
    let server = HostServer::start(true);
    let raw = BessClient::connect(&net.switch.bess_socket());
    let mut b = net.guest(2);
    let mut c = net.guest(3);
    b.ok("ifconfig eth0 10.0.2.30 netmask 255.255.255.0 up");
    c.ok("ifconfig eth0 10.0.2.31 netmask 255.255.255.0 up");

    // Garbage of every kind, all to the gateway's MAC.
    let before = net.gw().counters().unwrap();
    let mut runt_ip = GW_MAC.to_vec();
    runt_ip.extend_from_slice(&RAW_MAC);
    runt_ip.extend_from_slice(&[0x08, 0x00, 0x45, 0x00]);
    raw.send(&runt_ip);
    let mut bad_ihl = runt_ip.clone();
    bad_ihl.extend_from_slice(&[0; 40]);
    bad_ihl[14] = 0x4f;
    raw.send(&bad_ihl);
    // DHCP garbage: a UDP datagram to port 67 that is no BOOTP message.
    raw.send(&ipv4_frame([0xff; 6], [0, 0, 0, 0], [255, 255, 255, 255], |b| {
        let mut out = Vec::new();
        b.udp(68, 67).write(&mut out, &[0xde, 0xad, 0xbe, 0xef]).unwrap();
        out
    }));
    // DNS garbage, refused with forwarding off.
    raw.send(&ipv4_frame(
        [0x52, 0x55, 10, 0, 2, 3],
        [10, 0, 2, 99],
        [10, 0, 2, 3],
        |b| {
            let mut out = Vec::new();
            b.udp(5353, 53).write(&mut out, &[0xff; 30]).unwrap();
            out
        },
    ));
    // A spoofed source, and an IPv6 frame.
    raw.send(&ipv4_frame(GW_MAC, [192, 0, 2, 1], [10, 0, 2, 2], |b| {
        let mut out = Vec::new();
        b.udp(1, 9).write(&mut out, b"x").unwrap();
        out
    }));
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(RAW_MAC, GW_MAC)
        .ipv6(
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            1,
        )
        .udp(1, 2)
        .write(&mut out, b"v6")
        .unwrap();
    raw.send(&out);
    wait_until("the garbage to be counted", || {
        let d = net.gw().counters().unwrap().drops;
        d.malformed >= before.drops.malformed + 2 && d.dns_refused >= 1 && d.bad_source >= 1 && d.unsupported >= 1
    });

    // A SYN flood from one spoofed guest address, while B pings C.
    let pinger = std::thread::spawn(move || {
        let out = b.ok("ping -c 10 -i 0.2 -W 2 10.0.2.31");
        (b, out)
    });
    for port in 0..SYNS {
        // Bursts the switch's queue to the gateway can hold.
        if port % 64 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        raw.send(&ipv4_frame(GW_MAC, [10, 0, 2, 99], [10, 0, 2, 2], |b| {
            let mut out = Vec::new();
            b.tcp(10_000 + port, server.port, 1, 1000)
                .syn()
                .write(&mut out, &[])
                .unwrap();
            out
        }));
    }
    let (_b, out) = pinger.join().unwrap();
    assert!(out.contains("10 packets received"), "{out}");
    let expected = u64::from(SYNS) - LIMIT as u64;
    wait_until("the flood to be counted", || {
        net.gw().counters().unwrap().drops.flow_limit_guest >= expected * 9 / 10
    });
    let counters = net.gw().counters().unwrap();
    assert!(counters.flows_opened <= SYNS as u64, "{counters:?}");
    let flows = net.gw().flows().unwrap();
    let from_spoofed = flows
        .iter()
        .filter(|f| *f.guest.ip() == Ipv4Addr::new(10, 0, 2, 99))
        .count();
    assert!(from_spoofed <= LIMIT, "{from_spoofed} flows");
    assert!(server.accepted.load(Ordering::SeqCst) <= LIMIT);
    // The gateway still serves: a real guest gets DHCP and pings it.
    let ifconfig = c.dhcp();
    assert!(ifconfig.contains("inet addr:10.0.2.1"), "{ifconfig}");
    let out = c.ok("ping -c 2 -W 2 10.0.2.2");
    assert!(out.contains("2 packets received"), "{out}");
    eprintln!("garbage test counters: {counters:?}");
}

#[test]
fn host_to_guest_throughput_over_a_forward() {
    const MB: usize = 32;
    let net = Net::new("throughput", |_| {});
    let mut guest = net.guest(1);
    guest.dhcp();
    guest.ok("nc -l -p 7100 -e dd of=/dev/null bs=64k </dev/null >/dev/null 2>&1 &");
    let fwd = net
        .gw()
        .add_forward(Forward::new(Proto::Tcp, 0, GUEST_ADDR, 7100))
        .unwrap();
    let mut conn = None;
    wait_until("the guest to listen", || {
        conn = TcpStream::connect(fwd.host()).ok().filter(|c| {
            c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            // A connection the guest refused is closed at once.
            !matches!(c.peek(&mut [0u8; 1]), Ok(0))
        });
        conn.is_some()
    });
    let mut conn = conn.unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let start = Instant::now();
    for _ in 0..MB * 16 {
        conn.write_all(&chunk).unwrap();
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = conn.read(&mut [0u8; 1]);
    let secs = start.elapsed().as_secs_f64();
    let f = &net.gw().forwards().unwrap()[0];
    assert!(f.bytes_to_guest >= (MB << 20) as u64, "{f:?}");
    let counters = net.gw().counters().unwrap();
    eprintln!(
        "host->guest over a forward: {MB} MB in {secs:.2} s = {:.1} MB/s ({} frames dropped at a full switch port)",
        MB as f64 / secs,
        counters.drops.output_full
    );
}
