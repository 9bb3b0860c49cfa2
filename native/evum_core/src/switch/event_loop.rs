//! The switch's thread: accepts ports, reads frames, forwards them.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::busy_poll::BusyPoll;
use super::capture::Capture;
use super::daemon::{self, RawUnixAddr, RequestError, REQUEST_LEN};
use super::fdb::{is_group, Fdb, Learned, Mac};
use super::guard::{self, Claim};
use super::impair::Impairments;
use super::nemesis::Nemesis;
use super::port::{Offer, Peer, Port, Role};
use super::rate::TokenBucket;
use super::{
    bess_path, control_path, port_data_name, sock, Command, Counters, EventSink, Fault, PortId, PortKind, SwitchConfig,
    SwitchError, SwitchEvent, MAX_FRAME, MAX_MOVE_EVENTS, MIN_FRAME,
};

pub const WAKER: Token = Token(usize::MAX);
const CONTROL_LISTENER: Token = Token(0);
const BESS_LISTENER: Token = Token(2);
/// Ids below this are the fixed tokens' (each id has two token slots).
pub const FIRST_ID: u64 = 16;
/// Slot of a port's (or pending connection's) stream or connection.
const MAIN: u64 = 0;
/// Slot of a daemon port's datagram socket.
const DATA: u64 = 1;
/// How often aged MACs are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Addresses bound to a MAC that the switch keeps: a gateway's DHCP gives
/// out 16, evum's networks 64.
const MAX_LEASES: usize = 4096;
/// DHCP leases the MACs of one port may hold (a VM's locked port has one
/// MAC, and so one lease).
const MAX_LEASES_PER_PORT: usize = 4;
/// Bytes a pending control connection may send before it is oversized.
const PENDING_LIMIT: usize = 4096;
/// Batches one socket may read in a turn of the loop: a sender that keeps
/// its socket full (a guest flooding its own MAC, say) still leaves the
/// other sockets their turn.
const TURN_BATCHES: usize = 8;

fn token(id: u64, slot: u64) -> Token {
    Token((id * 2 + slot) as usize)
}

/// A control connection that has not yet sent its whole request.
struct Pending {
    stream: UnixStream,
    /// The uid at the other end.
    peer: u32,
    bytes: Vec<u8>,
    deadline: Instant,
}

pub struct SwitchLoop {
    poll: Poll,
    rx: Receiver<Command>,
    config: SwitchConfig,
    next_id: Arc<AtomicU64>,
    control: UnixListener,
    bess: OwnedFd,
    ports: HashMap<u64, Port>,
    /// The VM addresses daemon ports serve: one port per address.
    daemon_addrs: HashSet<RawUnixAddr>,
    pending: HashMap<u64, Pending>,
    fdb: Fdb,
    counters: Counters,
    next_sweep: Instant,
    paths: Vec<PathBuf>,
    /// The frames of the batch being forwarded, as (destination port, index
    /// of the frame in its batch): filled as each frame is routed, then sent
    /// port by port, several frames per system call. Kept between batches
    /// so that forwarding does not allocate.
    staged: Vec<(u64, usize)>,
    /// How many attached ports are promiscuous: with none, a known unicast
    /// destination is looked up alone, without going through every port.
    promiscuous: usize,
    /// Flow control. While a port's output queue is above its congestion
    /// mark, the switch reads no input from the ports that sent frames to
    /// it (`held`): their frames wait in their own sockets (UML and the
    /// bess peers then hold back, or drop at their end once those are
    /// full) instead of being read only to be dropped here, and the
    /// receiver gets the CPU to catch up. The other ports go on. Held until
    /// the queues drain; a congested port whose peer takes nothing for
    /// `max_hold` is marked stuck (it then drops, and holds no one) so that
    /// a receiver that stopped cannot stop its senders for good. This is
    /// the next time that is checked: `max_hold` after the longest a
    /// congested port has gone without taking a frame.
    paused_until: Option<Instant>,
    /// The ports whose input waits while `paused_until` is set.
    held: Vec<u64>,
    /// When the current turn of the loop began: the time frames are learned
    /// at and deadlines are checked against, read once per turn rather
    /// than once per batch and per check.
    now: Instant,
    /// The ports above their congestion mark.
    congested: Vec<u64>,
    /// Ports whose input is left unread, while held or because their
    /// socket used up its turn (see [`TURN_BATCHES`]). Read again once
    /// they are not held, after the other sockets had theirs.
    deferred: Vec<u64>,
    /// How long to poll for events before sleeping.
    busy_poll: BusyPoll,
    /// The gateway's port, while it is connected.
    gateway: Option<u64>,
    /// Partitions and cuts made on purpose ([`super::Switch::fault`]).
    nemesis: Nemesis,
    /// Who hears the switch's events ([`super::Switch::events`]), and the
    /// MAC moves told in the current second.
    events: Option<Box<dyn EventSink>>,
    moves_told: (Instant, u32),
    /// Impaired links and the frames they hold ([`super::Switch::impair`]).
    impairments: Impairments,
    /// Captures under way, by id ([`super::Switch::capture`]).
    captures: HashMap<u64, Capture>,
    next_capture: u64,
    /// The gateway's own addresses ([`super::Switch::guard`]).
    guarded: Vec<Ipv4Addr>,
    /// Addresses with the MAC they belong to: given by the gateway's DHCP
    /// (DHCP snooping) or by evum ([`super::Switch::bind`]). ARP claiming
    /// one comes from that MAC alone. At most [`MAX_LEASES`].
    leases: HashMap<Ipv4Addr, Mac>,
    /// The loop keeps the waker's eventfd open: were the [`Switch`] to close
    /// it on drop, epoll would forget the fd and with it the wake-up that
    /// carries the stop.
    _waker: Arc<Waker>,
}

impl SwitchLoop {
    /// Binds the three sockets (removing what it bound if a later one fails).
    pub fn new(
        poll: Poll,
        rx: Receiver<Command>,
        config: SwitchConfig,
        next_id: Arc<AtomicU64>,
        waker: Arc<Waker>,
    ) -> Result<Self, SwitchError> {
        let mut bound = Vec::new();
        let result = Self::bind(&poll, &config, &mut bound);
        let (control, bess) = match result {
            Ok(sockets) => sockets,
            Err(e) => {
                for path in &bound {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        };
        Ok(SwitchLoop {
            _waker: waker,
            staged: Vec::new(),
            promiscuous: 0,
            paused_until: None,
            held: Vec::new(),
            now: Instant::now(),
            congested: Vec::new(),
            deferred: Vec::new(),
            busy_poll: BusyPoll::new(config.busy_poll),
            poll,
            rx,
            fdb: Fdb::new(config.mac_ageing, config.max_macs, config.mac_table_size),
            gateway: None,
            nemesis: Nemesis::default(),
            captures: HashMap::new(),
            next_capture: 1,
            impairments: Impairments::new(config.seed),
            events: None,
            moves_told: (Instant::now(), 0),
            guarded: Vec::new(),
            leases: HashMap::new(),
            config,
            next_id,
            control,
            bess,
            ports: HashMap::new(),
            daemon_addrs: HashSet::new(),
            pending: HashMap::new(),
            counters: Counters::default(),
            next_sweep: Instant::now() + SWEEP_EVERY,
            paths: bound,
        })
    }

    fn bind(
        poll: &Poll,
        config: &SwitchConfig,
        bound: &mut Vec<PathBuf>,
    ) -> Result<(UnixListener, OwnedFd), SwitchError> {
        let bind_error = |path: &PathBuf| {
            let path = path.clone();
            move |source| SwitchError::Bind { path, source }
        };
        let ctl = control_path(&config.dir);
        let bess_file = bess_path(&config.dir);
        // Each daemon port's datagram socket gets an abstract name made
        // from the directory and the port's id: the longest must fit.
        let longest = port_data_name(&config.dir, u64::MAX);
        if daemon::abstract_address(longest.as_os_str().as_bytes()).is_none() {
            return Err(SwitchError::Bind {
                path: longest,
                source: io::Error::new(io::ErrorKind::InvalidInput, "path too long for AF_UNIX"),
            });
        }
        let control = UnixListener::bind(&ctl).map_err(bind_error(&ctl))?;
        bound.push(ctl.clone());
        control.set_nonblocking(true).map_err(bind_error(&ctl))?;
        let bess = sock::seqpacket_listener(&bess_file).map_err(bind_error(&bess_file))?;
        bound.push(bess_file);
        // Connecting to a unix socket takes write permission on its file:
        // the switch's group (its VMs) may, others may not.
        for path in bound.iter() {
            let mode = match config.group {
                Some(gid) => {
                    nix::unistd::chown(path, None, Some(gid.into())).map_err(|e| bind_error(path)(e.into()))?;
                    0o660
                }
                None => 0o600,
            };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_error(path))?;
        }
        let registry = poll.registry();
        registry
            .register(
                &mut SourceFd(&control.as_raw_fd()),
                CONTROL_LISTENER,
                Interest::READABLE,
            )
            .map_err(SwitchError::Poll)?;
        registry
            .register(&mut SourceFd(&bess.as_raw_fd()), BESS_LISTENER, Interest::READABLE)
            .map_err(SwitchError::Poll)?;
        Ok((control, bess))
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        // Made here: it holds pointers into itself and so stays on this thread.
        let mut batch = sock::RecvBatch::new();
        loop {
            let timeout = if self.deferred.iter().any(|&id| !self.is_held(id)) {
                Duration::ZERO
            } else {
                self.next_deadline().saturating_duration_since(Instant::now())
            };
            if let Err(e) = self.wait(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("evum switch: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            self.now = Instant::now();
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    WAKER => woken = true,
                    CONTROL_LISTENER => self.accept_control(),
                    BESS_LISTENER => self.accept_bess(),
                    Token(raw) => {
                        let (id, slot) = (raw as u64 / 2, raw as u64 % 2);
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.readable(id, slot, &mut batch);
                        }
                        if event.is_writable() {
                            self.writable(id);
                        }
                    }
                }
            }
            // Every command comes with a wake-up: the channel needs no look
            // on the far more frequent turns that only forward frames.
            if woken {
                while let Ok(command) = self.rx.try_recv() {
                    if !self.handle(command) {
                        self.shut_down();
                        return;
                    }
                }
            }
            if self.now >= self.next_deadline() {
                self.run_deadlines();
            }
            self.release_impaired();
            self.resume_input(&mut batch);
        }
    }

    /// Waits up to `timeout` for events: polls for them for as long as
    /// [`BusyPoll`] says, then sleeps; how long the wait took adapts the
    /// polling. The polling yields the CPU between looks, so that it costs
    /// only time no other thread of that CPU wanted: without that, TCP
    /// between two guests on a 2-core machine lost up to 8% to it.
    fn wait(&mut self, events: &mut Events, timeout: Duration) -> io::Result<()> {
        if timeout.is_zero() {
            return self.poll.poll(events, Some(timeout));
        }
        let started = Instant::now();
        let polling = self.busy_poll.time().min(timeout);
        // Those of the last turn, when there is no polling to replace them.
        events.clear();
        if !polling.is_zero() {
            loop {
                self.poll.poll(events, Some(Duration::ZERO))?;
                if !events.is_empty() || started.elapsed() >= polling {
                    break;
                }
                // Another runnable thread of this CPU (a guest) goes first.
                let _ = nix::sched::sched_yield();
            }
        }
        if events.is_empty() {
            let rest = timeout.saturating_sub(started.elapsed());
            self.poll.poll(events, Some(rest))?;
        }
        self.busy_poll.record(started.elapsed());
        Ok(())
    }

    fn next_deadline(&self) -> Instant {
        self.pending
            .values()
            .map(|p| p.deadline)
            .chain([self.next_sweep])
            .chain(self.paused_until)
            .chain(self.impairments.next_due())
            .min()
            .unwrap_or(self.next_sweep)
    }

    /// Sends the frames impaired links held that are due now.
    fn release_impaired(&mut self) {
        if self.impairments.next_due().is_none_or(|at| at > self.now) {
            return;
        }
        let mut due = Vec::new();
        self.impairments
            .due(self.now, |to, frame| due.push((to, frame.to_vec())));
        for (to, frame) in due {
            let Some(port) = self.ports.get_mut(&to.0) else {
                continue;
            };
            // As the link delivers it: late, twice, out of order, changed.
            for capture in self.captures.values_mut() {
                if capture.wants_released(to) {
                    capture.take(&frame);
                }
            }
            match port.offer_many(&[&frame]) {
                Offer::Sent | Offer::Dropped => {}
                Offer::Queued => self.set_writable_interest(to.0, true),
                Offer::Gone => self.remove_port(to),
            }
        }
    }

    /// Whether port `id`'s input waits for a congested port to drain.
    fn is_held(&self, id: u64) -> bool {
        self.paused_until.is_some() && self.held.contains(&id)
    }

    /// Ends the hold once no port is congested any more, and reads the
    /// input left waiting that is not held.
    fn resume_input(&mut self, batch: &mut sock::RecvBatch) {
        if self.paused_until.is_some() && self.congested.is_empty() {
            self.paused_until = None;
            self.held.clear();
        }
        // Each may hold input again, deferring those after it anew; a held
        // port defers itself.
        let mut deferred = std::mem::take(&mut self.deferred);
        for id in deferred.drain(..) {
            self.read_input(id, batch);
        }
        if self.deferred.is_empty() {
            self.deferred = deferred;
        }
    }

    fn run_deadlines(&mut self) {
        let now = self.now;
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.counters.request_timeout += 1;
            self.drop_pending(id);
        }
        if self.paused_until.is_some_and(|until| until <= now) {
            self.give_up_on_stalled(now);
        }
        if now >= self.next_sweep {
            self.fdb.expire(now);
            self.next_sweep = now + SWEEP_EVERY;
        }
    }

    /// Marks stuck the congested ports whose peers took nothing for
    /// `max_hold`: their senders go on. The others keep their senders held
    /// until the next check.
    fn give_up_on_stalled(&mut self, now: Instant) {
        let max_hold = self.config.max_hold;
        let ports = &mut self.ports;
        self.congested.retain(|id| {
            let Some(port) = ports.get_mut(id) else { return false };
            let since = port.progress_at.unwrap_or(now);
            if now.saturating_duration_since(since) >= max_hold {
                port.stuck = true;
                false
            } else {
                true
            }
        });
        self.paused_until = self
            .congested
            .iter()
            .filter_map(|id| self.ports.get(id)?.progress_at)
            .min()
            .map(|since| since + max_hold);
        if self.paused_until.is_none() {
            self.held.clear();
        }
    }

    /// Handles a command; false means stop.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Attach {
                id,
                mac,
                promiscuous,
                sink,
            } => {
                let peer = Peer::Attached { sink, promiscuous };
                if let Some(old) = self.ports.insert(id.0, Port::new(id, peer, mac, self.config.queue_len)) {
                    self.promiscuous -= usize::from(old.is_promiscuous());
                }
                self.promiscuous += usize::from(promiscuous);
                // Its own address is known at once: frames for a port that
                // only listens are not flooded to every VM.
                if let Some(mac) = mac {
                    self.fdb.fix(mac, id);
                }
                self.tell(SwitchEvent::PortUp {
                    port: id,
                    kind: PortKind::Attached,
                    mac,
                });
            }
            Command::Detach(id) => self.remove_port(id),
            Command::Inject(id, frame) => {
                if self.ports.contains_key(&id.0) && self.frame_ok(frame.len()) {
                    self.route(id, &frame, 0, Instant::now());
                    self.deliver(id, |_| &frame[..]);
                }
            }
            Command::Ports(reply) => {
                let mut ports: Vec<_> = self.ports.values().map(Port::info).collect();
                ports.sort_by_key(|p| p.id);
                let _ = reply.send(ports);
            }
            Command::MacTable(reply) => {
                let _ = reply.send(self.fdb.entries(Instant::now()));
            }
            Command::Counters(reply) => {
                let _ = reply.send(self.counters);
            }
            Command::Guard(addresses, done) => {
                self.guarded = addresses;
                let _ = done.send(());
            }
            Command::Bind(address, mac, done) => {
                self.lease(address, mac);
                let _ = done.send(());
            }
            Command::Events(sink) => self.events = Some(sink),
            Command::Fault(fault, done) => {
                match fault {
                    Fault::Partition(groups) => self.nemesis.partition(&groups),
                    Fault::Heal => self.nemesis.heal(),
                    Fault::Cut(from, to) => self.nemesis.cut(from, to),
                    Fault::Restore(from, to) => self.nemesis.restore(from, to),
                }
                let _ = done.send(());
            }
            Command::Capture {
                target,
                path,
                max_bytes,
                reply,
            } => {
                let started = Capture::create(&path, target, max_bytes).map(|capture| {
                    let id = self.next_capture;
                    self.next_capture += 1;
                    self.captures.insert(id, capture);
                    id
                });
                let _ = reply.send(started);
            }
            Command::Impair(link, impairment, done) => {
                match impairment {
                    Some(impairment) => self.impairments.set(link, impairment),
                    None => self.impairments.clear(link),
                }
                let _ = done.send(());
            }
            Command::Impairments(reply) => {
                let _ = reply.send(self.impairments.list());
            }
            Command::CaptureTo {
                target,
                sink,
                max_frames,
                reply,
            } => {
                let id = self.next_capture;
                self.next_capture += 1;
                self.captures.insert(id, Capture::to_sink(target, sink, max_frames));
                let _ = reply.send(id);
            }
            Command::StopCapture(id, reply) => {
                let _ = reply.send(self.captures.remove(&id).map(Capture::finish));
            }
            Command::Faults(reply) => {
                let _ = reply.send((self.nemesis.partitions(), self.nemesis.cuts()));
            }
            Command::Stop => return false,
        }
        true
    }

    fn shut_down(&mut self) {
        // A capture's file is complete even when the switch stops first.
        for (_, capture) in self.captures.drain() {
            capture.finish();
        }
        let ids: Vec<u64> = self.ports.keys().copied().collect();
        for id in ids {
            self.remove_port(PortId(id));
        }
        let pending: Vec<u64> = self.pending.keys().copied().collect();
        for id in pending {
            self.drop_pending(id);
        }
        for path in &self.paths {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("evum switch: cannot remove {}: {e}", path.display());
            }
        }
        // The directory too, and evum's runtime base with its last user.
        if let Some(dir) = self.paths.first().and_then(|p| p.parent()) {
            crate::vm::remove_switch_dir(dir);
        }
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The uid at the other end of a new connection if it may use the
    /// switch: evum's own, or a VM's of this switch. Else None, counted;
    /// the caller drops the connection.
    fn admit_peer(&mut self, fd: RawFd) -> Option<u32> {
        let allowed = |uid: u32| {
            uid == nix::unistd::geteuid().as_raw()
                || self
                    .config
                    .group
                    .is_some_and(|gid| crate::vm::jail::is_member(gid, uid))
        };
        match sock::peer_cred(fd) {
            Ok((uid, _)) if allowed(uid) => Some(uid),
            _ => {
                self.counters.foreign_peer += 1;
                None
            }
        }
    }

    // ---- the daemon transport

    fn accept_control(&mut self) {
        loop {
            match self.control.accept() {
                Ok((stream, _)) => {
                    let Some(peer) = self.admit_peer(stream.as_raw_fd()) else {
                        continue;
                    };
                    if self.pending.len() >= self.config.max_pending {
                        self.counters.too_many_pending += 1;
                        continue;
                    }
                    let id = self.new_id();
                    let watched = stream.set_nonblocking(true).and_then(|()| {
                        self.poll.registry().register(
                            &mut SourceFd(&stream.as_raw_fd()),
                            token(id, MAIN),
                            Interest::READABLE,
                        )
                    });
                    if let Err(e) = watched {
                        log::error!("evum switch: cannot watch a control connection: {e}");
                        continue;
                    }
                    let deadline = self.now + self.config.request_timeout;
                    self.pending.insert(
                        id,
                        Pending {
                            stream,
                            peer,
                            bytes: Vec::new(),
                            deadline,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("evum switch: accept on the control socket: {e}");
                    return;
                }
            }
        }
    }

    fn drop_pending(&mut self, id: u64) {
        if let Some(pending) = self.pending.remove(&id) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pending.stream.as_raw_fd()));
        }
    }

    fn read_pending(&mut self, id: u64) {
        let Some(pending) = self.pending.get_mut(&id) else {
            return;
        };
        let mut chunk = [0u8; 512];
        let eof = loop {
            match pending.stream.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => {
                    pending.bytes.extend_from_slice(&chunk[..n]);
                    if pending.bytes.len() > PENDING_LIMIT {
                        break false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        let len = pending.bytes.len();
        if len > REQUEST_LEN {
            self.counters.oversized_request += 1;
            self.drop_pending(id);
        } else if len == REQUEST_LEN {
            self.new_daemon_port(id);
        } else if eof {
            self.counters.short_request += 1;
            self.drop_pending(id);
        }
    }

    fn new_daemon_port(&mut self, id: u64) {
        let Some((key, data)) = self.admit_request(id) else {
            // Refused and counted: closing the connection tells the VM.
            self.drop_pending(id);
            return;
        };
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        self.daemon_addrs.insert(key);
        let peer = Peer::Daemon {
            control: pending.stream,
            data,
            addr: key,
        };
        let port = self.socket_port(id, peer, Role::Open);
        self.ports.insert(id, port);
        self.tell(SwitchEvent::PortUp {
            port: PortId(id),
            kind: PortKind::Daemon,
            mac: None,
        });
    }

    /// A port for a VM's socket, with the limits of the switch's settings
    /// (the gateway's, which is part of evum, has none).
    fn socket_port(&self, id: u64, peer: Peer, role: Role) -> Port {
        let mut port = Port::new(PortId(id), peer, None, self.config.queue_len);
        port.role = role;
        if role != Role::Gateway {
            let bucket = |rate: u32| TokenBucket::new(rate, (rate / 5).max(1), self.now);
            port.rate = self.config.port_rate.map(bucket);
            port.storm = self.config.storm_limit.map(bucket);
        }
        if let Role::Locked(mac) = role {
            port.mac = Some(mac);
        }
        port
    }

    /// What the name a bess peer bound its socket to says it is: a VM's
    /// port to lock to its MAC, the gateway (in this process), or neither.
    fn bess_role(&self, fd: RawFd) -> Role {
        let Some(path) = sock::peer_path(fd) else {
            return Role::Open;
        };
        let ours = || sock::peer_cred(fd).is_ok_and(|(_, pid)| pid == std::process::id() as i32);
        if path == super::gateway_peer_path(&bess_path(&self.config.dir)) && ours() {
            return Role::Gateway;
        }
        if !self.config.port_security {
            return Role::Open;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match name.strip_prefix("bess-").and_then(parse_mac) {
            Some(mac) if !is_group(&mac) => Role::Locked(mac),
            _ => Role::Open,
        }
    }

    /// Checks the complete request on pending connection `id` and answers
    /// it: the VM's address key and the port's datagram socket (watched for
    /// input), or None (counted by reason) when the switch refuses it.
    fn admit_request(&mut self, id: u64) -> Option<(RawUnixAddr, OwnedFd)> {
        let pending = self.pending.get_mut(&id)?;
        let request = match daemon::decode_request(&pending.bytes) {
            Ok(request) => request,
            Err(e) => {
                let c = &mut self.counters;
                match e {
                    RequestError::Short(_) => c.short_request += 1,
                    RequestError::Oversized(_) => c.oversized_request += 1,
                    RequestError::BadMagic(_) => c.bad_magic += 1,
                    RequestError::BadVersion(_) => c.bad_version += 1,
                    RequestError::BadType(_) => c.bad_type += 1,
                    RequestError::BadAddress => c.bad_address += 1,
                }
                return None;
            }
        };
        let key = daemon::address_key(&request.addr);
        if self.ports.len() >= self.config.max_ports {
            self.counters.too_many_ports += 1;
            return None;
        }
        if self.daemon_addrs.contains(&key) {
            self.counters.duplicate_address += 1;
            return None;
        }
        // The port's socket is abstract, as uml_switch's data socket is:
        // UML looks the address up on every frame it sends, and an abstract
        // name is a hash lookup where a path is a walk of the filesystem
        // (measured: a third more datagrams per second). Anyone may send to
        // an abstract socket, but this one is connected to the VM's address,
        // and the kernel refuses (EPERM) datagrams from any other. Being the
        // VM's peer also spares it max_dgram_qlen: the kernel holds a
        // receiver to that limit only against senders it is not connected
        // to, so the VM's frames queue up to the VM's send buffer (278
        // 64-byte frames, against 10), and UML, which drops a frame rather
        // than wait, loses far fewer.
        let local = port_data_name(&self.config.dir, id);
        let local = daemon::abstract_address(local.as_os_str().as_bytes())?; // fits: see bind
        let data = match sock::bound_datagram(&local) {
            Ok(data) => data,
            Err(e) => {
                log::error!("evum switch: cannot bind a port's socket: {e}");
                return None;
            }
        };
        if let Err(e) = sock::connect_owned_by(&data, &request.addr, pending.peer) {
            if e.kind() == io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::ELOOP) {
                self.counters.foreign_address += 1;
            } else {
                log::info!("evum switch: a VM's data address is unreachable: {e}");
                self.counters.bad_address += 1;
            }
            return None;
        }
        let registry = self.poll.registry();
        if let Err(e) = registry.register(&mut SourceFd(&data.as_raw_fd()), token(id, DATA), Interest::READABLE) {
            log::error!("evum switch: cannot watch a daemon port's socket: {e}");
            return None;
        }
        // The reply: the port's socket's address, exactly 110 bytes.
        let written = pending.stream.write(&local).map(|n| n == local.len());
        if !matches!(written, Ok(true)) {
            log::info!("evum switch: cannot answer a control request: {written:?}");
            let _ = registry.deregister(&mut SourceFd(&data.as_raw_fd()));
            return None;
        }
        Some((key, data))
    }

    // ---- the bess transport

    fn accept_bess(&mut self) {
        loop {
            match sock::accept(self.bess.as_raw_fd()) {
                Ok(conn) => {
                    if self.admit_peer(conn.as_raw_fd()).is_none() {
                        continue;
                    }
                    if self.ports.len() >= self.config.max_ports {
                        // Dropping the connection closes it.
                        self.counters.too_many_ports += 1;
                        continue;
                    }
                    let id = self.new_id();
                    if let Err(e) = self.poll.registry().register(
                        &mut SourceFd(&conn.as_raw_fd()),
                        token(id, MAIN),
                        Interest::READABLE,
                    ) {
                        log::error!("evum switch: cannot watch a bess connection: {e}");
                        continue;
                    }
                    let role = self.bess_role(conn.as_raw_fd());
                    match role {
                        Role::Gateway => self.gateway = Some(id),
                        // Its MAC is its alone from the start.
                        Role::Locked(mac) => self.fdb.fix(mac, PortId(id)),
                        Role::Open => {}
                    }
                    let port = self.socket_port(id, Peer::Bess { conn }, role);
                    let mac = port.mac;
                    self.ports.insert(id, port);
                    self.tell(SwitchEvent::PortUp {
                        port: PortId(id),
                        kind: PortKind::Bess,
                        mac,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("evum switch: accept on the bess socket: {e}");
                    return;
                }
            }
        }
    }

    // ---- ports

    fn readable(&mut self, id: u64, slot: u64, batch: &mut sock::RecvBatch) {
        if slot == DATA {
            self.read_input(id, batch);
            return;
        }
        if self.pending.contains_key(&id) {
            self.read_pending(id);
            return;
        }
        let Some(port) = self.ports.get_mut(&id) else { return };
        match &mut port.peer {
            Peer::Daemon { control, .. } => {
                let mut chunk = [0u8; 512];
                let gone = loop {
                    match control.read(&mut chunk) {
                        Ok(0) => break true,
                        Ok(n) => self.counters.control_garbage += n as u64,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break true,
                    }
                };
                if gone {
                    self.remove_port(PortId(id));
                }
            }
            Peer::Bess { .. } => self.read_input(id, batch),
            Peer::Attached { .. } => {}
        }
    }

    /// Reads and forwards the frames waiting on port `id`'s socket (a daemon
    /// port's datagram socket, a bess connection), a few batches' worth,
    /// unless its input is held.
    fn read_input(&mut self, id: u64, batch: &mut sock::RecvBatch) {
        if self.is_held(id) {
            self.defer_input(id);
            return;
        }
        let Some(port) = self.ports.get(&id) else { return };
        let (fd, is_bess) = match &port.peer {
            Peer::Daemon { data, .. } => (data.as_raw_fd(), false),
            Peer::Bess { conn } => (conn.as_raw_fd(), true),
            Peer::Attached { .. } => return,
        };
        for _ in 0..TURN_BATCHES {
            let count = match batch.recv(fd) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if is_bess => return self.remove_port(PortId(id)),
                // A datagram socket's error (its VM's socket went away, say)
                // is reported once; the control stream says when the port
                // is gone.
                Err(e) => {
                    log::debug!("evum switch: reading port {id}'s socket: {e}");
                    return;
                }
            };
            // On a bess connection a message of no bytes is the end of the
            // connection (recvmmsg reports EOF as such messages); on a
            // datagram socket it is a runt.
            let frames = if is_bess {
                (0..count).take_while(|&i| batch.frame(i).0 > 0).count()
            } else {
                count
            };
            let now = self.now;
            for i in 0..frames {
                let (len, frame) = batch.frame(i);
                if self.frame_ok(len) {
                    self.route(PortId(id), frame, i, now);
                }
            }
            self.deliver(PortId(id), |i| batch.frame(i).1);
            if frames < count {
                return self.remove_port(PortId(id));
            }
            if self.is_held(id) {
                return self.defer_input(id);
            }
            if count < sock::RecvBatch::SIZE {
                return;
            }
        }
        self.defer_input(id);
    }

    /// Leaves port `id`'s input for [`resume_input`](Self::resume_input).
    fn defer_input(&mut self, id: u64) {
        if !self.deferred.contains(&id) {
            self.deferred.push(id);
        }
    }

    fn writable(&mut self, id: u64) {
        let Some(port) = self.ports.get_mut(&id) else { return };
        let sent_before = port.counters.frames_out;
        let more = port.flush();
        if port.counters.frames_out > sent_before {
            port.progress_at = Some(self.now);
        }
        if !more {
            port.stuck = false;
        }
        if port.queue.len() < port.congestion_mark() / 2 {
            self.congested.retain(|&c| c != id);
        }
        self.set_writable_interest(id, more);
    }

    /// Watches (or stops watching) a port's socket for room to write.
    fn set_writable_interest(&mut self, id: u64, want: bool) {
        let Some(port) = self.ports.get_mut(&id) else { return };
        if port.wants_writable == want {
            return;
        }
        let registry = self.poll.registry();
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let result = match &port.peer {
            Peer::Daemon { data, .. } => {
                registry.reregister(&mut SourceFd(&data.as_raw_fd()), token(id, DATA), interest)
            }
            Peer::Bess { conn } => registry.reregister(&mut SourceFd(&conn.as_raw_fd()), token(id, MAIN), interest),
            Peer::Attached { .. } => Ok(()),
        };
        match result {
            Ok(()) => port.wants_writable = want,
            Err(e) => log::error!("evum switch: cannot watch port {id} for writing: {e}"),
        }
    }

    fn remove_port(&mut self, id: PortId) {
        let Some(mut port) = self.ports.remove(&id.0) else {
            return;
        };
        self.promiscuous -= usize::from(port.is_promiscuous());
        self.congested.retain(|&c| c != id.0);
        self.held.retain(|&c| c != id.0);
        self.deferred.retain(|&c| c != id.0);
        if self.gateway == Some(id.0) {
            self.gateway = None;
        }
        let registry = self.poll.registry();
        match &mut port.peer {
            Peer::Daemon { control, data, addr } => {
                let _ = registry.deregister(&mut SourceFd(&control.as_raw_fd()));
                let _ = registry.deregister(&mut SourceFd(&data.as_raw_fd()));
                self.daemon_addrs.remove(addr);
            }
            Peer::Bess { conn } => {
                let _ = registry.deregister(&mut SourceFd(&conn.as_raw_fd()));
            }
            Peer::Attached { .. } => {}
        }
        self.fdb.forget_port(id);
        self.nemesis.forget_port(id);
        self.impairments.forget_port(id);
        self.tell(SwitchEvent::PortDown { port: id });
    }

    // ---- forwarding

    fn frame_ok(&mut self, len: usize) -> bool {
        if len < MIN_FRAME {
            self.counters.runt += 1;
            false
        } else if len > MAX_FRAME {
            self.counters.oversized_frame += 1;
            false
        } else {
            true
        }
    }

    /// Decides where a frame of at least [`MIN_FRAME`] bytes that came in
    /// on `src` goes, learning its source, unless the port's limits or
    /// checks drop it; the frame is the `index`th of its batch, which
    /// [`deliver`](Self::deliver) then sends.
    fn route(&mut self, src: PortId, frame: &[u8], index: usize, now: Instant) {
        let mut dst: Mac = [0; 6];
        dst.copy_from_slice(&frame[0..6]);
        let mut from: Mac = [0; 6];
        from.copy_from_slice(&frame[6..12]);
        let Some(port) = self.ports.get_mut(&src.0) else { return };
        port.count_in(frame.len());
        if !self.admit(src, &dst, &from, frame, now) {
            return;
        }
        let target = if self.config.hub || is_group(&dst) {
            None
        } else {
            self.fdb.lookup(&dst, now)
        };
        let first_staged = self.staged.len();
        let impairing = !self.impairments.is_idle();
        let nemesis = (!self.nemesis.is_idle()).then_some(&self.nemesis);
        // What the nemesis keeps from each port (promiscuous ports, which
        // watch the network, see everything).
        let stopped = |to: &Port| nemesis.is_some_and(|n| !to.is_promiscuous() && !n.allows(src, to.id));
        let mut held_back = 0;
        match target {
            // Known unicast: that port alone, unless someone listens to all.
            Some(t) if self.promiscuous == 0 => {
                if let Some(to) = self.ports.get(&t.0).filter(|_| t != src) {
                    if stopped(to) {
                        held_back += 1;
                    } else {
                        self.staged.push((t.0, index));
                    }
                }
            }
            _ => {
                let staged = &mut self.staged;
                for p in self.ports.values() {
                    let wanted = match target {
                        None => true,
                        Some(t) => p.id == t || p.is_promiscuous(),
                    };
                    if p.id != src && wanted {
                        if stopped(p) {
                            held_back += 1;
                        } else {
                            staged.push((p.id.0, index));
                        }
                    }
                }
            }
        }
        if held_back > 0 {
            if let Some(port) = self.ports.get_mut(&src.0) {
                port.counters.drops_nemesis += held_back;
            }
        }
        // Impaired links take their copies out of the staged ports first:
        // a capture records what each link delivers, so those are captured
        // as the link releases them (see release_impaired).
        let impaired = if impairing {
            self.impair_staged(src, frame, first_staged, now)
        } else {
            0
        };
        if !self.captures.is_empty() {
            let to = &self.staged[first_staged..];
            for capture in self.captures.values_mut() {
                if capture.wants(src, to.iter().map(|&(port, _)| PortId(port)), impaired > 0) {
                    capture.take(frame);
                }
            }
        }
    }

    /// Tells the watcher a MAC moved, within [`MAX_MOVE_EVENTS`] a second.
    fn moved(&mut self, mac: Mac, from: PortId, to: PortId, now: Instant) {
        let Some(sink) = self.events.as_mut() else { return };
        let (since, told) = &mut self.moves_told;
        if now.saturating_duration_since(*since) >= Duration::from_secs(1) {
            *since = now;
            *told = 0;
        }
        if *told >= MAX_MOVE_EVENTS {
            self.counters.events_dropped += 1;
            return;
        }
        *told += 1;
        sink.event(SwitchEvent::MacMoved { mac, from, to });
    }

    /// Tells the watcher, if any.
    fn tell(&mut self, event: SwitchEvent) {
        if let Some(sink) = self.events.as_mut() {
            sink.event(event);
        }
    }

    /// Takes out of the frames just staged (from `first`) those for impaired
    /// links, which then hold them (promiscuous ports, watching, get theirs
    /// as they are); returns how many it took.
    fn impair_staged(&mut self, src: PortId, frame: &[u8], first: usize, now: Instant) -> usize {
        let mut taken = 0;
        let mut i = first;
        while i < self.staged.len() {
            let to = PortId(self.staged[i].0);
            // The link first: it rules out a clean port without a lookup.
            let link = self.impairments.link(src, to);
            let watching = || self.ports.get(&to.0).is_some_and(Port::is_promiscuous);
            match link.filter(|_| !watching()) {
                Some(link) => {
                    self.impairments.take(link, to, frame, now);
                    self.staged.swap_remove(i);
                    taken += 1;
                }
                None => i += 1,
            }
        }
        taken
    }

    /// Whether a frame in from `src` passes the port's limits and checks;
    /// if not, it is counted on the port by reason. Learns its source.
    fn admit(&mut self, src: PortId, dst: &Mac, from: &Mac, frame: &[u8], now: Instant) -> bool {
        let Some(port) = self.ports.get_mut(&src.0) else {
            return false;
        };
        let counters = &mut port.counters;
        if let Some(rate) = &mut port.rate {
            rate.refill(now);
            if !rate.take() {
                counters.drops_rate += 1;
                return false;
            }
        }
        if matches!(port.role, Role::Locked(mac) if mac != *from) {
            counters.drops_spoofed += 1;
            return false;
        }
        let mut moved = None;
        if !is_group(from) {
            match self.fdb.learn(*from, src, now) {
                Learned::Yes => {}
                Learned::Moved(old) => moved = Some(old),
                Learned::Taken => {
                    counters.drops_spoofed += 1;
                    return false;
                }
                Learned::PortFull => {
                    counters.drops_mac_limit += 1;
                    return false;
                }
                Learned::TableFull => self.counters.mac_table_full += 1,
            }
            if port.kind() != PortKind::Attached || port.mac.is_none() {
                port.mac = Some(*from);
            }
        }
        if is_group(dst) {
            if let Some(storm) = &mut port.storm {
                storm.refill(now);
                if !storm.take() {
                    port.counters.drops_storm += 1;
                    return false;
                }
            }
        }
        if let Some(old) = moved {
            self.moved(*from, old, src, now);
        }
        let guarding = self.gateway.is_some() || !self.leases.is_empty();
        if guarding && !self.guard_allows(src.0, from, frame) {
            if let Some(port) = self.ports.get_mut(&src.0) {
                port.counters.drops_guard += 1;
            }
            return false;
        }
        true
    }

    /// ARP guard and DHCP snooping, on a switch with a gateway or bound
    /// addresses: ARP must name the MAC it comes from and no address that
    /// is another's (the gateway's own, one bound to another MAC). With a
    /// gateway, DHCP answers come from it alone, and a client asks for the
    /// MAC it comes from, so that one port cannot take every lease; an ACK
    /// from the gateway binds the address to the client's MAC.
    fn guard_allows(&mut self, src: u64, from: &Mac, frame: &[u8]) -> bool {
        let from_gateway = self.gateway == Some(src);
        match guard::claim(frame) {
            Claim::None => true,
            Claim::Arp { sender_mac, sender_ip } => {
                from_gateway
                    || (sender_mac == *from
                        && !self.guarded.contains(&sender_ip)
                        && self.leases.get(&sender_ip).is_none_or(|owner| owner == from))
            }
            Claim::DhcpClient { chaddr } => {
                self.gateway.is_none() || from_gateway || (chaddr == *from && self.may_lease(src, &chaddr))
            }
            Claim::DhcpServer { ack } => {
                if self.gateway.is_none() {
                    return true;
                }
                if !from_gateway {
                    return false;
                }
                if let Some((client, address)) = ack {
                    self.lease(address, client);
                }
                true
            }
        }
    }

    /// Whether a DHCP client on port `src` may ask for a lease for `mac`:
    /// one it has, or a new one while the MACs on the port hold fewer than
    /// [`MAX_LEASES_PER_PORT`].
    fn may_lease(&self, src: u64, mac: &Mac) -> bool {
        let mut held = 0;
        for owner in self.leases.values() {
            if owner == mac {
                return true;
            }
            if self.fdb.lookup(owner, self.now) == Some(PortId(src)) {
                held += 1;
            }
        }
        held < MAX_LEASES_PER_PORT
    }

    /// Binds `address` to `mac`, unless the table is full.
    fn lease(&mut self, address: Ipv4Addr, mac: Mac) {
        if self.leases.len() < MAX_LEASES || self.leases.contains_key(&address) {
            self.leases.insert(address, mac);
        }
    }

    /// Sends the frames [`route`](Self::route) staged, port by port, as many
    /// per system call as the port takes; `frame(i)` is the batch's `i`th,
    /// which came in on `src`.
    fn deliver<'a>(&mut self, src: PortId, frame: impl Fn(usize) -> &'a [u8]) {
        let mut staged = std::mem::take(&mut self.staged);
        // Stable: each port gets its frames in the order they came.
        staged.sort_by_key(|&(port, _)| port);
        let mut rest = &staged[..];
        while let Some(&(id, _)) = rest.first() {
            let mut frames: [&[u8]; sock::SEND_BATCH] = [&[]; sock::SEND_BATCH];
            let mut n = 0;
            while n < sock::SEND_BATCH && rest.get(n).is_some_and(|&(p, _)| p == id) {
                frames[n] = frame(rest[n].1);
                n += 1;
            }
            rest = &rest[n..];
            let Some(port) = self.ports.get_mut(&id) else { continue };
            match port.offer_many(&frames[..n]) {
                Offer::Sent | Offer::Dropped => {}
                Offer::Queued => {
                    if !port.stuck && port.queue.len() >= port.congestion_mark() {
                        if !self.congested.contains(&id) {
                            port.progress_at = Some(self.now);
                            self.congested.push(id);
                            self.paused_until.get_or_insert(self.now + self.config.max_hold);
                        }
                        if !self.held.contains(&src.0) {
                            self.held.push(src.0);
                        }
                    }
                    self.set_writable_interest(id, true);
                }
                Offer::Gone => self.remove_port(PortId(id)),
            }
        }
        staged.clear();
        self.staged = staged;
    }
}

/// A MAC from its 12 hex digits.
fn parse_mac(hex: &str) -> Option<Mac> {
    if hex.len() != 12 || !hex.is_ascii() {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, byte) in mac.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(mac)
}
