//! An Ethernet switch for UML guests and in-process ports.
//!
//! One switch is one mio event loop thread ("evum-switch") that owns every
//! socket of the switch; other threads talk to it through [`Switch`], which
//! sends commands over a channel and wakes the loop with a mio [`Waker`].
//!
//! Ports come three ways, all on one switch at once:
//! - UML's "daemon" transport, as Debian's uml_switch speaks it
//!   (`ethN=daemon,<mac>,unix,<control_socket()>`): a request on the
//!   SOCK_STREAM control socket, answered with the address of a datagram
//!   socket of the port's own, the abstract name `<dir>/data-<port id>`
//!   (shown as `@<dir>/data-16`; no file); frames go both ways as datagrams
//!   on it ([`daemon`] has the wire format). The port lives while the
//!   control stream stays open.
//! - UML's vector transport in bess mode
//!   (`vecN:transport=bess,src=<path>,dst=<bess_socket()>`): one accepted
//!   SOCK_SEQPACKET connection per VM, one frame per message.
//! - Attached ports: a [`FrameSink`] in this process, fed on the loop thread,
//!   and frames injected with [`Switch::inject`].
//!
//! Who may connect: the socket files are open to evum's user and the
//! switch's group (its VMs' users join it), and each connection's peer
//! credentials (SO_PEERCRED) must be evum's or a VM's of this switch. A
//! daemon request's data address must be an abstract name or a socket file
//! of the requester's own; the switch, which may run as root, never sends to
//! anyone else's socket. Refusals are counted.
//!
//! Forwarding looks at the two MAC addresses (and at ARP and DHCP, for the
//! checks below, nothing else): the source is learned (with ageing; an
//! attached port's own MAC is known from the start and stays with it), a
//! known unicast destination gets the frame alone, group and unknown
//! destinations are flooded, and no frame goes back to the port it came
//! from. A hub floods everything; promiscuous attached ports see every
//! frame. Each socket port has a bounded output queue: a slow receiver loses
//! frames (counted), it never blocks the loop. While a queue is more than
//! half full the switch stops reading input from the ports that sent to it,
//! so that those senders wait (in their sockets) rather than have their
//! frames read only to be dropped, and the other ports go on; only a port
//! whose peer takes nothing at all for `max_hold` (50 ms) is given up on:
//! it drops until its queue has emptied. Bad input of any kind is rejected
//! and counted in [`Counters`], and forwarding goes on.
//!
//! Limits, each counted where it bites (see [`SwitchConfig`]): source MACs
//! per port and in all, an input rate per port, broadcast and multicast
//! storm control per port; a VM's port is locked to the VM's MAC, which no
//! other port may then use; on a switch with a gateway, ARP and DHCP are
//! checked against the port they come from ([`Switch::guard`]).
//!
//! Every socket port has a receive queue of its own (where uml_switch has
//! one data socket for all, whose few slots a single flooding VM keeps
//! full): a port that floods the switch fills its own queue and loses its
//! own frames, and the loop reads each port's socket in turn, so the
//! others' frames still go through. The socket is connected to its VM's
//! address, so the kernel refuses (EPERM) datagrams from anyone else, and
//! does not hold the VM's datagrams to the host's `max_dgram_qlen`.
//!
//! Frames are received in batches (recvmmsg, on each port's socket) and
//! sent in batches, one sendmmsg per destination port per batch received; a
//! known unicast destination is found without looking at the other ports.

mod busy_poll;
mod capture;
pub mod daemon;
mod event_loop;
pub mod fdb;
mod guard;
mod impair;
mod nemesis;
mod port;
mod rate;
mod sock;

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Sender};
use mio::{Poll, Waker};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

pub use capture::{CaptureStats, MAX_BYTES as MAX_CAPTURE_BYTES};
pub use fdb::Mac;
pub use impair::{Impairment, Link, LinkCounters, MAX_HELD as MAX_IMPAIRED_HELD};
pub use port::PortCounters;

/// How long an inspection waits for the loop's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A port of one switch. Ids are never reused within a switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    Daemon,
    Bess,
    Attached,
}

/// A port as [`Switch::ports`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub id: PortId,
    pub kind: PortKind,
    /// The MAC an attached port was given, or the last source MAC seen.
    pub mac: Option<Mac>,
    pub counters: PortCounters,
    /// Frames waiting in the output queue now.
    pub queued: usize,
}

/// One learned MAC: where it lives and how long ago it was last seen.
pub type MacEntry = (Mac, PortId, Duration);

/// Input the switch rejected, by reason, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Control requests whose magic is not 0xfeedface.
    pub bad_magic: u64,
    /// Control requests of an unsupported version (2, or above 3).
    pub bad_version: u64,
    /// Control requests of a type other than REQ_NEW_CONTROL.
    pub bad_type: u64,
    /// Control requests whose address is not AF_UNIX, or cannot be reached.
    pub bad_address: u64,
    /// Control requests naming an address another port already has.
    pub duplicate_address: u64,
    /// Control connections closed before a whole request arrived.
    pub short_request: u64,
    /// Control connections that sent more than one request at once.
    pub oversized_request: u64,
    /// Connections (daemon control or bess) from a user that is neither
    /// evum's nor one of this switch's VMs'.
    pub foreign_peer: u64,
    /// Daemon requests naming a socket file that is not the requester's.
    pub foreign_address: u64,
    /// Control connections that did not complete a request in time.
    pub request_timeout: u64,
    /// Control connections refused because too many were pending.
    pub too_many_pending: u64,
    /// Daemon requests and bess connections refused because the switch had
    /// `max_ports` ports already.
    pub too_many_ports: u64,
    /// Bytes received on a port's control stream after its request.
    pub control_garbage: u64,
    /// Frames shorter than an Ethernet header (14 bytes).
    pub runt: u64,
    /// Frames longer than [`MAX_FRAME`].
    pub oversized_frame: u64,
    /// Source MACs left unlearned because the table was full.
    pub mac_table_full: u64,
    /// Events not told, over [`MAX_MOVE_EVENTS`] a second.
    pub events_dropped: u64,
}

/// The shortest frame forwarded: the Ethernet header.
pub const MIN_FRAME: usize = 14;
/// The longest frame forwarded: what UML itself sends at most (MTU 1500
/// plus its 26 bytes of header room).
pub const MAX_FRAME: usize = 1526;

/// What happens on a switch that a watcher may want to hear of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchEvent {
    PortUp {
        port: PortId,
        kind: PortKind,
        mac: Option<Mac>,
    },
    PortDown {
        port: PortId,
    },
    /// A source MAC seen on another port than before (at most
    /// [`MAX_MOVE_EVENTS`] a second are told; the rest are counted in
    /// `events_dropped`).
    MacMoved {
        mac: Mac,
        from: PortId,
        to: PortId,
    },
}

/// MAC moves told a second, at most: a guest sending from random MACs
/// must not flood the watcher.
pub const MAX_MOVE_EVENTS: u32 = 100;

/// Hears a switch's events. Called on the switch thread: it must not block.
pub trait EventSink: Send {
    fn event(&mut self, event: SwitchEvent);
}

/// Receives the frames for an attached port. Called on the switch thread:
/// it must not block.
pub trait FrameSink: Send {
    /// One frame for `port`. Returning false means the receiver is gone:
    /// the port is detached.
    fn frame(&mut self, port: PortId, frame: &[u8]) -> bool;
}

/// How a switch is set up. [`SwitchConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// Where the socket files go (`ctl`, `bess`); created if missing. The
    /// daemon ports' datagram sockets are named after it (abstract names,
    /// this path and `/data-<port id>`).
    pub dir: PathBuf,
    /// Flood every frame to every port (for sniffing).
    pub hub: bool,
    /// Frames each socket port may have waiting (256).
    pub queue_len: usize,
    /// How long the peer of a congested port may take no frame at all
    /// before the switch stops holding back the input of the ports sending
    /// to it (50 ms): that port then loses frames until its queue has
    /// emptied. While the peer takes frames, however slowly, its senders
    /// wait. Longer is kinder to a receiver that a busy host deschedules
    /// now and then, and holds its senders up for as long when it stops
    /// reading.
    pub max_hold: Duration,
    /// The longest the switch's thread polls for events before it sleeps
    /// (32 µs, QEMU's `poll-max-ns`; zero: it never polls). The time adapts
    /// to the traffic: it grows while the switch's waits are short, as they
    /// are while frames flow, and falls to nothing when they are long.
    pub busy_poll: Duration,
    /// How long a learned MAC is kept without traffic (300 s).
    pub mac_ageing: Duration,
    /// Source MACs one port may have in the table (64): a frame from one
    /// more is dropped and counted (`drops_mac_limit`).
    pub max_macs: usize,
    /// Source MACs the table holds in all (8192): past that, new sources
    /// go unlearned (counted in `mac_table_full`), their frames forwarded.
    pub mac_table_size: usize,
    /// Broadcast and multicast frames a second one port may send, in
    /// bursts of up to a fifth of that (10 000; None: no limit): what is
    /// over is dropped and counted (`drops_storm`).
    pub storm_limit: Option<u32>,
    /// Frames a second one port may send, in bursts of up to a fifth of
    /// that (None, the default: no limit); over it, `drops_rate`.
    pub port_rate: Option<u32>,
    /// Locks a VM's port to its MAC (true). A bess peer whose socket is
    /// bound to a file named `bess-<MAC in 12 hex digits>` (as evum's VMs
    /// are) may send from that MAC only, and the MAC is the port's alone:
    /// other source MACs, from it or from any port, are dropped and counted
    /// (`drops_spoofed`). The gateway's port (its socket bound to
    /// `<dir>/gateway`, in this process) is the one whose addresses
    /// [`Switch::guard`] protects.
    pub port_security: bool,
    /// How long a control connection may take to send its request (5 s).
    pub request_timeout: Duration,
    /// Control connections allowed to be waiting for their request (64).
    pub max_pending: usize,
    /// Ports of every kind the switch takes (1024): each holds file
    /// descriptors of the process the switch runs in.
    pub max_ports: usize,
    /// The host CPUs the switch's thread may run on (None: wherever the
    /// thread that starts it may). Every frame crosses this thread: on the
    /// CPU of a pinned VM that receives a stream, the VM is woken where the
    /// switch already runs and the sender keeps its own CPU.
    pub cpus: Option<CpuSet>,
    /// The switch's group (see [`crate::vm::jail`]): its socket files are
    /// open to it, and connections are taken from evum's user and from the
    /// VMs that joined it, no one else. None: sockets open to evum's user
    /// only.
    pub group: Option<u32>,
    /// The seed of the random draws link impairment makes (None: from the
    /// system), so that a failing run can be replayed.
    pub seed: Option<u64>,
}

impl SwitchConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SwitchConfig {
            dir: dir.into(),
            hub: false,
            queue_len: 256,
            max_hold: Duration::from_millis(50),
            busy_poll: Duration::from_micros(32),
            mac_ageing: Duration::from_secs(300),
            max_macs: 64,
            mac_table_size: 8192,
            storm_limit: Some(10_000),
            port_rate: None,
            port_security: true,
            request_timeout: Duration::from_secs(5),
            max_pending: 64,
            max_ports: 1024,
            cpus: None,
            group: None,
            seed: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("cannot create the switch directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot set up the switch's event loop: {0}")]
    Poll(io::Error),
    #[error("the switch has stopped")]
    Stopped,
    #[error("cannot run the switch on the CPUs asked for: {0}")]
    Cpu(nix::Error),
}

/// A fault made on purpose (see [`Switch::partition`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Groups of ports that talk inside, not across (the ports not named
    /// are one more group); replaces a partition before.
    Partition(Vec<Vec<PortId>>),
    Heal,
    /// Frames from the first port to the second are dropped.
    Cut(PortId, PortId),
    Restore(PortId, PortId),
}

/// The partition's named groups and the cuts, as [`Switch::faults`] says.
pub type Faults = (Vec<Vec<PortId>>, Vec<(PortId, PortId)>);

enum Command {
    Attach {
        id: PortId,
        mac: Option<Mac>,
        promiscuous: bool,
        sink: Box<dyn FrameSink>,
    },
    Detach(PortId),
    Inject(PortId, Vec<u8>),
    Ports(Sender<Vec<PortInfo>>),
    MacTable(Sender<Vec<MacEntry>>),
    Counters(Sender<Counters>),
    Guard(Vec<Ipv4Addr>, Sender<()>),
    Bind(Ipv4Addr, Mac, Sender<()>),
    Fault(Fault, Sender<()>),
    Events(Box<dyn EventSink>),
    Capture {
        target: Option<PortId>,
        path: PathBuf,
        max_bytes: u64,
        reply: Sender<io::Result<u64>>,
    },
    CaptureTo {
        target: Option<PortId>,
        sink: Box<dyn FrameSink>,
        max_frames: u64,
        reply: Sender<u64>,
    },
    StopCapture(u64, Sender<Option<CaptureStats>>),
    Impair(Link, Option<Impairment>, Sender<()>),
    Impairments(Sender<Vec<(Link, Impairment, LinkCounters)>>),
    Faults(Sender<Faults>),
    Stop,
}

/// A running switch. Dropping it stops the loop, which closes every port
/// and removes the socket files; [`Switch::stop`] also waits for that.
pub struct Switch {
    tx: Sender<Command>,
    waker: Arc<Waker>,
    next_id: Arc<AtomicU64>,
    dir: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl Switch {
    /// Binds the switch's sockets in `config.dir` and starts its thread.
    pub fn start(config: SwitchConfig) -> Result<Switch, SwitchError> {
        std::fs::create_dir_all(&config.dir).map_err(|source| SwitchError::Dir {
            path: config.dir.clone(),
            source,
        })?;
        let poll = Poll::new().map_err(SwitchError::Poll)?;
        let waker = Arc::new(Waker::new(poll.registry(), event_loop::WAKER).map_err(SwitchError::Poll)?);
        let (tx, rx) = unbounded();
        let next_id = Arc::new(AtomicU64::new(event_loop::FIRST_ID));
        let dir = config.dir.clone();
        let cpus = config.cpus;
        let switch_loop = event_loop::SwitchLoop::new(poll, rx, config, next_id.clone(), waker.clone())?;
        // The thread places itself before it forwards anything, and says
        // how that went; on failure it still runs, to be stopped below, so
        // that its loop removes the sockets as on any stop.
        let (placed_tx, placed_rx) = bounded(1);
        let thread = std::thread::Builder::new()
            .name("evum-switch".into())
            .spawn(move || {
                let placed = cpus.map_or(Ok(()), |set| sched_setaffinity(Pid::from_raw(0), &set));
                let _ = placed_tx.send(placed);
                switch_loop.run()
            })
            .map_err(SwitchError::Poll)?;
        let switch = Switch {
            tx,
            waker,
            next_id,
            dir,
            thread: Some(thread),
        };
        match placed_rx.recv() {
            Ok(Ok(())) => Ok(switch),
            Ok(Err(e)) => {
                switch.stop();
                Err(SwitchError::Cpu(e))
            }
            Err(_) => {
                switch.stop();
                Err(SwitchError::Stopped)
            }
        }
    }

    /// The daemon transport's control socket (for `ethN=daemon,MAC,unix,PATH`).
    pub fn control_socket(&self) -> PathBuf {
        control_path(&self.dir)
    }

    /// The bess transport's socket (for `vecN:transport=bess,...,dst=PATH`).
    pub fn bess_socket(&self) -> PathBuf {
        bess_path(&self.dir)
    }

    /// Adds a port whose frames go to `sink`. A promiscuous port gets every
    /// frame the switch sees (but its own).
    pub fn attach(&self, mac: Option<Mac>, promiscuous: bool, sink: Box<dyn FrameSink>) -> Result<PortId, SwitchError> {
        let id = PortId(self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.command(Command::Attach {
            id,
            mac,
            promiscuous,
            sink,
        })?;
        Ok(id)
    }

    /// Removes a port of any kind (a VM's connection is closed).
    pub fn detach(&self, port: PortId) -> Result<(), SwitchError> {
        self.command(Command::Detach(port))
    }

    /// A frame entering the switch from `port`.
    pub fn inject(&self, port: PortId, frame: Vec<u8>) -> Result<(), SwitchError> {
        self.command(Command::Inject(port, frame))
    }

    /// Every port with its counters.
    pub fn ports(&self) -> Result<Vec<PortInfo>, SwitchError> {
        self.ask(Command::Ports)
    }

    /// The learned MAC addresses.
    pub fn mac_table(&self) -> Result<Vec<MacEntry>, SwitchError> {
        self.ask(Command::MacTable)
    }

    /// Gives `addresses` to the gateway's port: on this switch, ARP for
    /// them comes from the gateway alone, and so do DHCP answers; a DHCP
    /// client's request must name the MAC it comes from, the MACs of one
    /// port hold at most 4 leases, and the address the gateway gives is
    /// that MAC's (an ARP from another MAC claiming it is dropped). Counted
    /// in the ports' `drops_guard`.
    /// In force for every frame after it returns.
    pub fn guard(&self, addresses: Vec<Ipv4Addr>) -> Result<(), SwitchError> {
        self.ask(|done| Command::Guard(addresses, done))
    }

    /// Binds `address` to `mac` (evum gave it to the VM of that MAC): ARP
    /// claiming it from another MAC is dropped (`drops_guard`).
    /// In force for every frame after it returns.
    pub fn bind(&self, address: Ipv4Addr, mac: Mac) -> Result<(), SwitchError> {
        self.ask(|done| Command::Bind(address, mac, done))
    }

    /// Makes a fault (a partition, a cut) or ends one, in force for every
    /// frame forwarded after it returns. Frames it keeps from a port are
    /// counted on their sender's port (`drops_nemesis`); promiscuous
    /// attached ports, which watch the switch, still see them.
    pub fn fault(&self, fault: Fault) -> Result<(), SwitchError> {
        self.ask(|done| Command::Fault(fault, done))
    }

    /// Writes the frames the switch forwards from and to `target` (every
    /// frame: None) to a new pcap file at `path`, until stop_capture or
    /// `max_bytes`; returns the capture's id. The frames a partition or a
    /// cut keeps from a port are not in it as forwarded to that port (they
    /// are counted in the sender's `drops_nemesis`). Frames to an impaired
    /// link are in it as the link releases them: delayed, duplicated,
    /// reordered or corrupted as they arrive, and lost ones not at all (a
    /// frame sent on to clean ports too is in it once more as the impaired
    /// link releases it, in a capture of everything).
    pub fn capture(&self, target: Option<PortId>, path: &Path, max_bytes: u64) -> Result<io::Result<u64>, SwitchError> {
        self.ask(|reply| Command::Capture {
            target,
            path: path.to_path_buf(),
            max_bytes,
            reply,
        })
    }

    /// As [`capture`](Self::capture), the frames handed to `sink` (on the
    /// switch's thread), at most `max_frames` of them.
    pub fn capture_to(
        &self,
        target: Option<PortId>,
        sink: Box<dyn FrameSink>,
        max_frames: u64,
    ) -> Result<u64, SwitchError> {
        self.ask(|reply| Command::CaptureTo {
            target,
            sink,
            max_frames,
            reply,
        })
    }

    /// Ends a capture, its file complete: what it took, or None for no
    /// such capture.
    pub fn stop_capture(&self, id: u64) -> Result<Option<CaptureStats>, SwitchError> {
        self.ask(|reply| Command::StopCapture(id, reply))
    }

    /// Tells `sink` of the switch's events from now on (ports up and down,
    /// MAC moves), instead of any sink before.
    pub fn events(&self, sink: Box<dyn EventSink>) -> Result<(), SwitchError> {
        self.command(Command::Events(sink))
    }

    /// Impairs a link (`Some`) or makes it clean again (`None`: nothing held
    /// stays); in force for every frame after it returns.
    pub fn impair(&self, link: Link, impairment: Option<Impairment>) -> Result<(), SwitchError> {
        self.ask(|done| Command::Impair(link, impairment, done))
    }

    /// Every impaired link, what it does and what it did.
    pub fn impairments(&self) -> Result<Vec<(Link, Impairment, LinkCounters)>, SwitchError> {
        self.ask(Command::Impairments)
    }

    /// The partition and the cuts in force.
    pub fn faults(&self) -> Result<Faults, SwitchError> {
        self.ask(Command::Faults)
    }

    /// Rejected input, by reason.
    pub fn counters(&self) -> Result<Counters, SwitchError> {
        self.ask(Command::Counters)
    }

    /// Stops the loop and waits until every port is closed and the socket
    /// files are gone.
    pub fn stop(mut self) {
        let _ = self.command(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn command(&self, command: Command) -> Result<(), SwitchError> {
        self.tx.send(command).map_err(|_| SwitchError::Stopped)?;
        self.waker.wake().map_err(|_| SwitchError::Stopped)
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, SwitchError> {
        let (tx, rx) = bounded(1);
        self.command(make(tx))?;
        rx.recv_timeout(ANSWER_TIMEOUT).map_err(|_| SwitchError::Stopped)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        // Only signal: the loop cleans up on its own thread.
        if self.thread.is_some() {
            let _ = self.command(Command::Stop);
        }
    }
}

/// Where the gateway's end of its bess connection is bound: the name that
/// tells the switch the port is its gateway's.
pub fn gateway_peer_path(bess_socket: &Path) -> PathBuf {
    bess_socket.with_file_name("gateway")
}

/// The name a VM's end of its bess connection is bound to, in the VM's own
/// directory, which locks its port to `mac` (see
/// [`SwitchConfig::port_security`]).
pub fn vm_peer_name(mac: &Mac) -> String {
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("bess-{hex}")
}

fn control_path(dir: &Path) -> PathBuf {
    dir.join("ctl")
}

/// The abstract name of daemon port `id`'s datagram socket (not a file: see
/// `SwitchLoop::admit_request`).
fn port_data_name(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("data-{id}"))
}

fn bess_path(dir: &Path) -> PathBuf {
    dir.join("bess")
}
