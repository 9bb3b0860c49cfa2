//! The gateway thread: one poll(2) loop over the switch connection, an
//! eventfd for commands, and libslirp's sockets.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{self, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use nix::unistd;

use super::flows::Flows;
use super::slirp::{Stack, StackConfig};
use super::{Command, Forward, GatewayConfig, GatewayError, Proto};

/// The longest a poll sleeps, so that flows expire on time.
const MAX_SLEEP_MS: u32 = 1000;
/// How often the flow table is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Frames read from the switch per turn of the loop, so that libslirp's
/// sockets and commands get their turn under a flood.
const READ_BATCH: usize = 256;
/// Room for one frame and a little more, to tell oversized ones.
const READ_BUFFER: usize = 16 * 1024;
/// The send buffer asked for on the switch connection: bursts from libslirp
/// wait there instead of being dropped.
const SEND_BUFFER: usize = 1 << 20;
/// Tries at finding a free port for a forward asked on port 0.
const PORT_TRIES: usize = 5;

/// A SOCK_SEQPACKET connection to the switch's bess socket, non-blocking.
pub(super) fn connect(path: &Path) -> Result<OwnedFd, GatewayError> {
    let err = |errno: Errno| GatewayError::Connect {
        path: path.to_path_buf(),
        source: io::Error::from(errno),
    };
    let addr = UnixAddr::new(path).map_err(err)?;
    let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(err)?;
    // Bound to the name that tells the switch this port is its gateway's
    // (the switch reads it as the peer's address; the file itself is not
    // needed once connected).
    let name = crate::switch::gateway_peer_path(path);
    let _ = std::fs::remove_file(&name);
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(&name).map_err(err)?).map_err(err)?;
    // Non-blocking only once connected: a switch with a full backlog makes
    // connect wait rather than fail with EAGAIN.
    let connected = socket::connect(fd.as_raw_fd(), &addr);
    let _ = std::fs::remove_file(&name);
    connected.map_err(err)?;
    // A smaller buffer than asked is fine.
    let _ = setsockopt(&fd, sockopt::SndBuf, &SEND_BUFFER);
    set_nonblocking(&fd).map_err(err)?;
    Ok(fd)
}

fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The eventfd that wakes the gateway thread for commands.
pub(super) fn eventfd() -> io::Result<OwnedFd> {
    let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
    Ok(fd.into())
}

pub(super) fn wake(fd: &OwnedFd) {
    // A full counter (EAGAIN) means a wake-up is pending anyway.
    let _ = unistd::write(fd, &1u64.to_ne_bytes());
}

fn drain_eventfd(fd: &OwnedFd) {
    let mut counter = [0u8; 8];
    let _ = unistd::read(fd.as_raw_fd(), &mut counter);
}

/// The thread's body: sets up libslirp, says so on `ready`, and loops until
/// told to stop or the switch goes away. A panic (none is expected) ends the
/// gateway as a stop would, libslirp's sockets closed by unwinding.
pub(super) fn run(
    config: GatewayConfig,
    link: OwnedFd,
    waker: Arc<OwnedFd>,
    rx: Receiver<Command>,
    ready: Sender<Result<(), GatewayError>>,
) {
    let outcome = catch_unwind(AssertUnwindSafe(move || {
        let stack = Stack::new(&StackConfig {
            network: config.network,
            netmask: config.netmask(),
            host: config.gateway,
            dhcp_start: config.dhcp_start,
            dns: config.dns,
            disable_dns: !config.dns_forwarding,
            disable_host_loopback: !config.host_loopback,
            mtu: config.mtu,
        });
        let Some(stack) = stack else {
            let _ = ready.send(Err(GatewayError::Slirp));
            return;
        };
        let _ = ready.send(Ok(()));
        GatewayLoop {
            flows: Flows::new(config),
            stack,
            link,
            waker,
            rx,
            buf: vec![0; READ_BUFFER],
        }
        .run();
    }));
    if outcome.is_err() {
        log::error!("the gateway thread panicked; the gateway has stopped");
    }
}

struct GatewayLoop {
    stack: Stack,
    flows: Flows,
    link: OwnedFd,
    waker: Arc<OwnedFd>,
    rx: Receiver<Command>,
    buf: Vec<u8>,
}

enum Next {
    Continue,
    Stop,
}

impl GatewayLoop {
    fn run(mut self) {
        let mut last_sweep = Instant::now();
        loop {
            let fds = self.stack.pollfds();
            fds.clear();
            for fd in [self.link.as_raw_fd(), self.waker.as_raw_fd()] {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let timeout = self.stack.fill(MAX_SLEEP_MS);
            let fds = self.stack.pollfds();
            // Not nix's poll: it takes BorrowedFds, and libslirp's fds are raw
            // ones that it owns and closes as it likes.
            // SAFETY: `fds` is a valid array of pollfd of the length given.
            let rc = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    libc::c_int::try_from(timeout).unwrap_or(libc::c_int::MAX),
                )
            };
            let failed = rc < 0 && Errno::last() != Errno::EINTR;
            if rc < 0 {
                for fd in fds.iter_mut() {
                    fd.revents = 0;
                }
            }
            let (link_events, wake_events) = (fds[0].revents, fds[1].revents);
            self.stack.dispatch(failed);
            self.flush();
            if link_events != 0 && !self.read_link() {
                log::info!("the switch closed the gateway's port; the gateway stops");
                break;
            }
            if wake_events != 0 {
                drain_eventfd(&self.waker);
            }
            if let Next::Stop = self.commands() {
                break;
            }
            self.stack.fire_timers();
            self.flush();
            let now = Instant::now();
            if now.duration_since(last_sweep) >= SWEEP_EVERY {
                self.flows.expire(now);
                last_sweep = now;
            }
        }
        // Dropping the stack closes every libslirp socket and forward.
    }

    /// Reads a batch of frames from the switch into libslirp. False once the
    /// switch has closed the connection.
    fn read_link(&mut self) -> bool {
        for _ in 0..READ_BATCH {
            // MSG_TRUNC makes recv return a message's real length even when
            // cut.
            let n = match socket::recv(
                self.link.as_raw_fd(),
                &mut self.buf,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
            ) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(Errno::EAGAIN | Errno::EINTR) => return true,
                Err(e) => {
                    log::warn!("gateway: reading from the switch failed: {}", io::Error::from(e));
                    return false;
                }
            };
            let now = Instant::now();
            let frame = &self.buf[..n.min(self.buf.len())];
            if n <= self.buf.len() && self.flows.guest_frame(frame, now) {
                self.stack.input(frame);
                self.flush();
            } else if n > self.buf.len() {
                self.flows.guest_frame(&self.buf, now);
            }
        }
        true
    }

    /// Sends what libslirp produced, one message per frame, never waiting.
    fn flush(&mut self) {
        let out = self.stack.take_outbox();
        if out.is_empty() {
            return;
        }
        let now = Instant::now();
        for frame in out {
            self.flows.slirp_frame(&frame, now);
            match socket::send(
                self.link.as_raw_fd(),
                &frame,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(_) => self.flows.sent(frame.len()),
                Err(e) => self.flows.output_dropped(matches!(e, Errno::EAGAIN | Errno::ENOBUFS)),
            }
        }
    }

    fn commands(&mut self) -> Next {
        loop {
            let command = match self.rx.try_recv() {
                Ok(command) => command,
                Err(crossbeam_channel::TryRecvError::Empty) => return Next::Continue,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return Next::Stop,
            };
            match command {
                Command::AddForward(forward, reply) => {
                    let result = self.add_forward(forward);
                    let _ = reply.send(result);
                }
                Command::RemoveForward(proto, host, reply) => {
                    let result = if self.flows.remove_forward(proto, host) {
                        self.stack.remove_hostfwd(proto == Proto::Udp, *host.ip(), host.port());
                        Ok(())
                    } else {
                        Err(GatewayError::NoSuchForward(proto, host))
                    };
                    let _ = reply.send(result);
                }
                Command::Forwards(reply) => {
                    let _ = reply.send(self.flows.forwards());
                }
                Command::Flows(reply) => {
                    let _ = reply.send(self.flows.flows(Instant::now()));
                }
                Command::Counters(reply) => {
                    let errors = self.stack.guest_errors();
                    let _ = reply.send(self.flows.counters(errors));
                }
                Command::Stop => return Next::Stop,
            }
        }
    }

    fn add_forward(&mut self, mut forward: Forward) -> Result<Forward, GatewayError> {
        let config = self.flows.config().clone();
        let guest = forward.guest_addr;
        let host_part = u32::from(guest) & !u32::from(config.netmask());
        if !config.contains(guest)
            || guest == config.gateway
            || guest == config.dns
            || host_part == 0
            || host_part == !u32::from(config.netmask())
        {
            return Err(GatewayError::InvalidForward(format!(
                "{guest} is not a guest address of {}/{}",
                config.network, config.prefix_len
            )));
        }
        if forward.guest_port == 0 {
            return Err(GatewayError::InvalidForward("the guest port is 0".into()));
        }
        let udp = forward.proto == Proto::Udp;
        if forward.host_port != 0 {
            if self.flows.has_forward(forward.proto, forward.host()) {
                return Err(GatewayError::ForwardExists(forward.proto, forward.host()));
            }
            self.stack
                .add_hostfwd(udp, forward.host_addr, forward.host_port, guest, forward.guest_port)
                .map_err(|e| GatewayError::Bind(forward.proto, forward.host(), e))?;
        } else {
            // libslirp cannot tell which port it bound for port 0: find a free
            // one, let it go and have libslirp bind it, again if somebody
            // took it in between.
            let mut last = None;
            for _ in 0..PORT_TRIES {
                let port = free_port(forward.proto, forward.host_addr)
                    .map_err(|e| GatewayError::Bind(forward.proto, forward.host(), e))?;
                match self
                    .stack
                    .add_hostfwd(udp, forward.host_addr, port, guest, forward.guest_port)
                {
                    Ok(()) => {
                        forward.host_port = port;
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if let Some(e) = last {
                return Err(GatewayError::Bind(forward.proto, forward.host(), e));
            }
        }
        self.flows.add_forward(forward);
        Ok(forward)
    }
}

/// A port free now on `addr` for `proto`.
fn free_port(proto: Proto, addr: Ipv4Addr) -> io::Result<u16> {
    let any = SocketAddrV4::new(addr, 0);
    match proto {
        Proto::Tcp => TcpListener::bind(any)?.local_addr().map(|a| a.port()),
        Proto::Udp => UdpSocket::bind(any)?.local_addr().map(|a| a.port()),
    }
}
