//! The gateway: DHCP, DNS, NAT and port forwarding for a switch, on libslirp,
//! like QEMU's user networking: no root, no host interface.
//!
//! A gateway is one thread ("evum-gateway") that connects to a switch's bess
//! socket as one more port, so the switch needs no change, and runs libslirp
//! ([`slirp`]) with its own poll(2) loop over libslirp's sockets, the switch
//! connection and an eventfd that wakes it for commands from other threads.
//! Frames from the switch go to libslirp one by one; libslirp's frames go
//! back as one message each, never blocking: when the switch connection is
//! full the frame is dropped and counted (TCP retransmits).
//!
//! The layout is QEMU's: network 10.0.2.0/24, the gateway (and the host as the
//! guests see it) at 10.0.2.2, DNS at 10.0.2.3, DHCP leases from 10.0.2.15.
//! libslirp answers ARP and ICMP echo for those addresses, serves DHCP,
//! forwards DNS to the host's resolver, NATs guest TCP and UDP through host
//! sockets (the gateway address is the host's 127.0.0.1 when
//! [`GatewayConfig::host_loopback`] allows it) and listens for port forwards.
//!
//! libslirp has no counters of its own and no limits: [`flows`] looks at every
//! frame on the gateway thread first. It drops what libslirp should not see
//! (malformed frames, frames for other guests, spoofed sources, new flows
//! beyond the limits), keeps a table of flows keyed by their 5-tuple with
//! packets and bytes each way, and expires closed and idle ones.

mod event_loop;
mod flows;
mod slirp;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{bounded, unbounded, Sender};

/// How long a caller waits for the gateway thread's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How a gateway is set up. [`GatewayConfig::default`] is QEMU's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The guests' network (10.0.2.0).
    pub network: Ipv4Addr,
    /// Its prefix length (24), 8 to 30.
    pub prefix_len: u8,
    /// The gateway's address (10.0.2.2); it stands for the host too.
    pub gateway: Ipv4Addr,
    /// The DNS forwarder's address (10.0.2.3).
    pub dns: Ipv4Addr,
    /// The first address DHCP hands out (10.0.2.15).
    pub dhcp_start: Ipv4Addr,
    /// Forward DNS queries to the host's resolver (true). When false, the
    /// DNS address answers ping only.
    pub dns_forwarding: bool,
    /// Let guests reach the host's 127.0.0.1 through the gateway address
    /// (false).
    pub host_loopback: bool,
    /// Flows a guest may open at once (256): TCP connections, UDP and ICMP
    /// echo exchanges, keyed by their addresses and ports.
    pub max_flows_per_guest: usize,
    /// Flows all guests together may open at once (1024).
    pub max_flows: usize,
    /// An established TCP flow without traffic is forgotten after this (1 h).
    pub tcp_idle_timeout: Duration,
    /// A UDP or ICMP flow without traffic is forgotten after this (240 s,
    /// libslirp's own expiry for UDP sockets).
    pub udp_idle_timeout: Duration,
    /// The interface MTU (1500).
    pub mtu: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            network: Ipv4Addr::new(10, 0, 2, 0),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            dhcp_start: Ipv4Addr::new(10, 0, 2, 15),
            dns_forwarding: true,
            host_loopback: false,
            max_flows_per_guest: 256,
            max_flows: 1024,
            tcp_idle_timeout: Duration::from_secs(3600),
            udp_idle_timeout: Duration::from_secs(240),
            mtu: 1500,
        }
    }
}

impl GatewayConfig {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_mask(self.prefix_len))
    }

    /// Whether `addr` is inside the guests' network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = prefix_mask(self.prefix_len);
        u32::from(addr) & mask == u32::from(self.network) & mask
    }

    fn validate(&self) -> Result<(), GatewayError> {
        let bad = |why: String| Err(GatewayError::Config(why));
        if !(8..=30).contains(&self.prefix_len) {
            return bad(format!("prefix length {} is not within 8..=30", self.prefix_len));
        }
        let mask = prefix_mask(self.prefix_len);
        if u32::from(self.network) & !mask != 0 {
            return bad(format!("{}/{} has host bits set", self.network, self.prefix_len));
        }
        for (name, addr) in [
            ("gateway", self.gateway),
            ("dns", self.dns),
            ("dhcp_start", self.dhcp_start),
        ] {
            let host = u32::from(addr) & !mask;
            if !self.contains(addr) || host == 0 || host == !mask {
                return bad(format!(
                    "{name} {addr} is not a host address of {}/{}",
                    self.network, self.prefix_len
                ));
            }
        }
        if self.gateway == self.dns || self.gateway == self.dhcp_start || self.dns == self.dhcp_start {
            return bad("gateway, dns and dhcp_start must differ".into());
        }
        if self.max_flows_per_guest == 0 || self.max_flows == 0 {
            return bad("flow limits must be above 0".into());
        }
        if !(576..=9000).contains(&self.mtu) {
            return bad(format!("mtu {} is not within 576..=9000", self.mtu));
        }
        Ok(())
    }
}

fn prefix_mask(prefix_len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix_len.min(32))).unwrap_or(0)
}

/// The transport of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A host port that leads to a guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Forward {
    pub proto: Proto,
    /// The only host address the forward listens on (usually 127.0.0.1).
    pub host_addr: Ipv4Addr,
    /// 0 asks for any free port; the answer names the one bound.
    pub host_port: u16,
    pub guest_addr: Ipv4Addr,
    pub guest_port: u16,
}

impl Forward {
    /// A forward from the host's 127.0.0.1:`host_port`.
    pub fn new(proto: Proto, host_port: u16, guest_addr: Ipv4Addr, guest_port: u16) -> Forward {
        Forward {
            proto,
            host_addr: Ipv4Addr::LOCALHOST,
            host_port,
            guest_addr,
            guest_port,
        }
    }

    pub fn host(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.host_addr, self.host_port)
    }
}

/// A forward with what went through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardInfo {
    pub forward: Forward,
    /// Connections (TCP) or new peers (UDP) that reached the guest.
    pub connections: u64,
    /// Payload bytes (TCP or UDP data) from the host side to the guest.
    pub bytes_to_guest: u64,
    /// Payload bytes from the guest to the host side.
    pub bytes_from_guest: u64,
}

/// The protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowProto {
    Tcp,
    Udp,
    /// ICMP echo; the ports are the echo identifier and 0.
    Icmp,
}

/// Who opened a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowOrigin {
    /// The guest (outbound NAT).
    Guest,
    /// The host, through the forward listening on this address and port.
    Forward(Proto, SocketAddrV4),
}

/// One flow as [`Gateway::flows`] reports it. Packets count frames, bytes
/// count transport payload (TCP or UDP data, ICMP echo data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowInfo {
    pub proto: FlowProto,
    pub guest: SocketAddrV4,
    /// The far end as the guest sees it (the gateway address for the host).
    pub remote: SocketAddrV4,
    pub origin: FlowOrigin,
    pub packets_from_guest: u64,
    pub bytes_from_guest: u64,
    pub packets_to_guest: u64,
    pub bytes_to_guest: u64,
    pub started: SystemTime,
    /// Time since the last frame of the flow.
    pub idle: Duration,
    /// TCP: both sides sent FIN, or one sent RST. Any: refused with an
    /// ICMP error (host loopback off, for one).
    pub closed: bool,
}

/// Frames the gateway did not pass on, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Frames that do not parse as Ethernet/ARP/IPv4 and their transport.
    pub malformed: u64,
    /// Frames longer than the MTU allows.
    pub oversized: u64,
    /// Frames of protocols the gateway does not serve (IPv6, VLAN, others).
    pub unsupported: u64,
    /// Frames for other guests: another MAC, another address of the
    /// network, or a broadcast other than DHCP.
    pub not_for_gateway: u64,
    /// IPv4 sources outside the network, or claiming a gateway address.
    pub bad_source: u64,
    /// Traffic to the DNS address other than DNS, or any while DNS
    /// forwarding is off.
    pub dns_refused: u64,
    /// New flows of a guest beyond [`GatewayConfig::max_flows_per_guest`].
    pub flow_limit_guest: u64,
    /// New flows beyond [`GatewayConfig::max_flows`].
    pub flow_limit_total: u64,
    /// Frames to the switch dropped because its connection was full.
    pub output_full: u64,
    /// Frames to the switch that failed otherwise.
    pub output_error: u64,
}

/// Totals since the gateway started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayCounters {
    pub frames_from_switch: u64,
    pub bytes_from_switch: u64,
    pub frames_to_switch: u64,
    pub bytes_to_switch: u64,
    /// Flows opened (by guests and through forwards) and open now.
    pub flows_opened: u64,
    pub flows_active: u64,
    /// DHCP requests passed to libslirp.
    pub dhcp_requests: u64,
    /// IPv4 fragments passed on untracked (libslirp reassembles them).
    pub fragments: u64,
    /// TCP segments of no known flow, passed on (libslirp resets them).
    pub untracked: u64,
    /// libslirp's complaints about guest misbehaviour.
    pub guest_errors: u64,
    pub drops: Drops,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("bad gateway configuration: {0}")]
    Config(String),
    #[error("cannot connect to the switch at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("cannot set up the gateway's event loop: {0}")]
    Setup(io::Error),
    #[error("libslirp refused the configuration")]
    Slirp,
    #[error("bad forward: {0}")]
    InvalidForward(String),
    #[error("a {0} forward from {1} exists already")]
    ForwardExists(Proto, SocketAddrV4),
    #[error("no {0} forward from {1}")]
    NoSuchForward(Proto, SocketAddrV4),
    #[error("cannot listen on {1} ({0}): {2}")]
    Bind(Proto, SocketAddrV4, io::Error),
    #[error("the gateway has stopped")]
    Stopped,
}

enum Command {
    AddForward(Forward, Sender<Result<Forward, GatewayError>>),
    RemoveForward(Proto, SocketAddrV4, Sender<Result<(), GatewayError>>),
    Forwards(Sender<Vec<ForwardInfo>>),
    Flows(Sender<Vec<FlowInfo>>),
    Counters(Sender<GatewayCounters>),
    Stop,
}

/// A running gateway. Dropping it stops the thread, which closes every
/// socket and forward; [`Gateway::stop`] also waits for that.
pub struct Gateway {
    tx: Sender<Command>,
    waker: Arc<OwnedFd>,
    config: GatewayConfig,
    thread: Option<JoinHandle<()>>,
}

impl Gateway {
    /// Connects to the switch's bess socket (`Switch::bess_socket()`) as one
    /// more port and starts the gateway's thread.
    pub fn start(config: GatewayConfig, bess_socket: &Path) -> Result<Gateway, GatewayError> {
        config.validate()?;
        let link = event_loop::connect(bess_socket)?;
        let waker = Arc::new(event_loop::eventfd().map_err(GatewayError::Setup)?);
        let (tx, rx) = unbounded();
        let (ready_tx, ready_rx) = bounded(1);
        let thread_config = config.clone();
        let thread_waker = waker.clone();
        let thread = std::thread::Builder::new()
            .name("evum-gateway".into())
            .spawn(move || event_loop::run(thread_config, link, thread_waker, rx, ready_tx))
            .map_err(GatewayError::Setup)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Gateway {
                tx,
                waker,
                config,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(GatewayError::Stopped)
            }
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Listens on the forward's host address and port (any free port if 0)
    /// and returns the forward with the port bound.
    pub fn add_forward(&self, forward: Forward) -> Result<Forward, GatewayError> {
        self.ask(|tx| Command::AddForward(forward, tx))?
    }

    /// Closes a forward's listening socket; connections already made go on.
    pub fn remove_forward(&self, proto: Proto, host: SocketAddrV4) -> Result<(), GatewayError> {
        self.ask(|tx| Command::RemoveForward(proto, host, tx))?
    }

    /// The forwards with their counters.
    pub fn forwards(&self) -> Result<Vec<ForwardInfo>, GatewayError> {
        self.ask(Command::Forwards)
    }

    /// The flows known now (open ones and ones closed moments ago).
    pub fn flows(&self) -> Result<Vec<FlowInfo>, GatewayError> {
        self.ask(Command::Flows)
    }

    pub fn counters(&self) -> Result<GatewayCounters, GatewayError> {
        self.ask(Command::Counters)
    }

    /// Stops the thread and waits until every socket is closed.
    pub fn stop(mut self) {
        let _ = self.command(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn command(&self, command: Command) -> Result<(), GatewayError> {
        self.tx.send(command).map_err(|_| GatewayError::Stopped)?;
        event_loop::wake(&self.waker);
        Ok(())
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, GatewayError> {
        let (tx, rx) = bounded(1);
        self.command(make(tx))?;
        rx.recv_timeout(ANSWER_TIMEOUT).map_err(|_| GatewayError::Stopped)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Only signal: the thread cleans up on its own.
        if self.thread.is_some() {
            let _ = self.command(Command::Stop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_qemus_layout_and_valid() {
        let c = GatewayConfig::default();
        c.validate().unwrap();
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(c.contains(Ipv4Addr::new(10, 0, 2, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 0, 3, 1)));
    }

    #[test]
    fn bad_configurations_are_refused() {
        let bad = [
            GatewayConfig {
                prefix_len: 31,
                ..Default::default()
            },
            GatewayConfig {
                network: Ipv4Addr::new(10, 0, 2, 1),
                ..Default::default()
            },
            GatewayConfig {
                gateway: Ipv4Addr::new(10, 0, 3, 2),
                ..Default::default()
            },
            GatewayConfig {
                dns: Ipv4Addr::new(10, 0, 2, 2),
                ..Default::default()
            },
            GatewayConfig {
                dhcp_start: Ipv4Addr::new(10, 0, 2, 255),
                ..Default::default()
            },
            GatewayConfig {
                max_flows: 0,
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(matches!(config.validate(), Err(GatewayError::Config(_))), "{config:?}");
        }
    }

    #[test]
    fn a_missing_switch_is_a_connect_error() {
        let err = Gateway::start(GatewayConfig::default(), Path::new("/nonexistent/bess"))
            .err()
            .unwrap();
        assert!(matches!(err, GatewayError::Connect { .. }), "{err}");
    }
}
