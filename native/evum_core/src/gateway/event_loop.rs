//! The gateway thread: one poll(2) loop over the switch connection, an
//! eventfd for commands, and libslirp's sockets.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

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
const SEND_BUFFER: libc::c_int = 1 << 20;
/// Tries at finding a free port for a forward asked on port 0.
const PORT_TRIES: usize = 5;

/// A SOCK_SEQPACKET connection to the switch's bess socket, non-blocking.
pub(super) fn connect(path: &Path) -> Result<OwnedFd, GatewayError> {
    let err = |source: io::Error| GatewayError::Connect {
        path: path.to_path_buf(),
        source,
    };
    // SAFETY: plain old data; all zeroes is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(err(io::Error::from_raw_os_error(libc::ENAMETOOLONG)));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: no pointers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un of the size given.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: `SEND_BUFFER` is a valid int of the size given. A smaller
    // buffer than asked is fine.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &SEND_BUFFER as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    set_nonblocking(fd.as_raw_fd()).map_err(err)?;
    Ok(fd)
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn wake(fd: &OwnedFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a valid u64. A full counter (EAGAIN)
    // means a wake-up is pending anyway.
    unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
}

fn drain_eventfd(fd: &OwnedFd) {
    let mut n = 0u64;
    // SAFETY: reads 8 bytes into a valid u64.
    unsafe { libc::read(fd.as_raw_fd(), &mut n as *mut u64 as *mut libc::c_void, 8) };
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
            // SAFETY: `fds` is a valid array of pollfd of the length given.
            let rc = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    libc::c_int::try_from(timeout).unwrap_or(libc::c_int::MAX),
                )
            };
            let failed = rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR);
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
            // SAFETY: `buf` is valid for writes of its length. MSG_TRUNC makes
            // recv return a message's real length even when cut.
            let n = unsafe {
                libc::recv(
                    self.link.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if n == 0 {
                return false;
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) => true,
                    _ => {
                        log::warn!("gateway: reading from the switch failed: {e}");
                        false
                    }
                };
            }
            let n = n as usize;
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
            // SAFETY: `frame` is valid for its length.
            let n = unsafe {
                libc::send(
                    self.link.as_raw_fd(),
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                self.flows.sent(frame.len());
            } else {
                let full = matches!(
                    io::Error::last_os_error().raw_os_error(),
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS)
                );
                self.flows.output_dropped(full);
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
