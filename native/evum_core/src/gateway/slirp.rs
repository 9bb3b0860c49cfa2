//! A thin safe face over libslirp (through the `libslirp-sys` bindings): one
//! [`Stack`] per gateway, created, used and dropped on the gateway thread.
//!
//! libslirp calls back into us (frames to send, timers, the clock, the fds to
//! poll) with an opaque pointer: it points at an [`Io`] that the stack owns at
//! a fixed address and frees only after `slirp_cleanup`. Every callback runs
//! on the thread that called into libslirp, while that call is in progress,
//! and none of them may unwind into C: they only index with `get`, push onto
//! vectors, and never panic.

use std::ffi::{c_int, c_void};
use std::net::Ipv4Addr;
use std::ptr::NonNull;
use std::time::Instant;

use libslirp_sys as sys;

/// The SlirpConfig version we hand to libslirp. From version 4 on, libslirp
/// reads two SlirpCb fields (`init_completed`, `timer_new_opaque`) that
/// libslirp-sys's SlirpCb does not have, so it would read past our struct;
/// version 3 has all we use (`disable_dns` is its newest field).
const CONFIG_VERSION: u32 = 3;

/// libslirp's clock starts here rather than at 0, where its "no timer
/// pending" markers (time 0) would be ambiguous.
const CLOCK_OFFSET_NS: i64 = 3_600_000_000_000;

/// What a [`Stack`] is set up with.
#[derive(Debug, Clone)]
pub(super) struct StackConfig {
    pub network: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub host: Ipv4Addr,
    pub dhcp_start: Ipv4Addr,
    pub dns: Ipv4Addr,
    pub disable_dns: bool,
    pub disable_host_loopback: bool,
    pub mtu: usize,
}

/// A timer libslirp asked for: `cb(cb_opaque)` once `expire_ms` has passed.
struct Timer {
    cb: sys::SlirpTimerCb,
    cb_opaque: *mut c_void,
    expire_ms: Option<i64>,
}

/// The state libslirp's callbacks reach through their opaque pointer.
struct Io {
    /// Frames libslirp wants to send to the guests, in order.
    outbox: Vec<Vec<u8>>,
    /// The fds of the coming poll(2): the caller's first, then libslirp's.
    pollfds: Vec<libc::pollfd>,
    /// Timers handed out and not yet freed (each a `Box<Timer>` leaked to C).
    timers: Vec<*mut Timer>,
    /// Messages from libslirp about guest misbehaviour.
    guest_errors: u64,
    epoch: Instant,
}

impl Io {
    fn now_ns(&self) -> i64 {
        CLOCK_OFFSET_NS.saturating_add(i64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(i64::MAX / 2))
    }
}

/// One libslirp instance. Not `Send`: it lives on the thread that made it.
pub(super) struct Stack {
    raw: NonNull<sys::Slirp>,
    io: *mut Io,
}

static CALLBACKS: sys::SlirpCb = sys::SlirpCb {
    send_packet: Some(send_packet),
    guest_error: Some(guest_error),
    clock_get_ns: Some(clock_get_ns),
    timer_new: Some(timer_new),
    timer_free: Some(timer_free),
    timer_mod: Some(timer_mod),
    register_poll_fd: Some(register_poll_fd),
    unregister_poll_fd: Some(unregister_poll_fd),
    notify: Some(notify),
};

impl Stack {
    /// A new libslirp instance, IPv4 only; `None` if libslirp refuses the
    /// configuration.
    pub fn new(config: &StackConfig) -> Option<Stack> {
        let io = Box::into_raw(Box::new(Io {
            outbox: Vec::new(),
            pollfds: Vec::new(),
            timers: Vec::new(),
            guest_errors: 0,
            epoch: Instant::now(),
        }));
        let cfg = sys::SlirpConfig {
            version: CONFIG_VERSION,
            restricted: 0,
            in_enabled: true,
            vnetwork: config.network.into(),
            vnetmask: config.netmask.into(),
            vhost: config.host.into(),
            in6_enabled: false,
            vprefix_addr6: sys::in6_addr { s6_addr: [0; 16] },
            vprefix_len: 0,
            vhost6: sys::in6_addr { s6_addr: [0; 16] },
            vhostname: std::ptr::null(),
            tftp_server_name: std::ptr::null(),
            tftp_path: std::ptr::null(),
            bootfile: std::ptr::null(),
            vdhcp_start: config.dhcp_start.into(),
            vnameserver: config.dns.into(),
            vnameserver6: sys::in6_addr { s6_addr: [0; 16] },
            vdnssearch: std::ptr::null_mut(),
            vdomainname: std::ptr::null(),
            if_mtu: config.mtu,
            if_mru: config.mtu,
            disable_host_loopback: config.disable_host_loopback,
            enable_emu: false,
            outbound_addr: std::ptr::null(),
            outbound_addr6: std::ptr::null(),
            disable_dns: config.disable_dns,
            disable_dhcp: false,
        };
        // SAFETY: `cfg` is a valid version-3 SlirpConfig (libslirp copies what
        // it keeps); CALLBACKS is static, so it outlives the instance as
        // libslirp requires; `io` stays valid until after slirp_cleanup.
        let raw = unsafe { sys::slirp_new(&cfg, &CALLBACKS, io as *mut c_void) };
        match NonNull::new(raw) {
            Some(raw) => Some(Stack { raw, io }),
            None => {
                // SAFETY: libslirp kept no reference to `io` since it failed.
                drop(unsafe { Box::from_raw(io) });
                None
            }
        }
    }

    fn io(&mut self) -> &mut Io {
        // SAFETY: `io` is valid for the stack's life, and no libslirp call
        // (whose callbacks would also reach it) is in progress while `&mut
        // self` is held here.
        unsafe { &mut *self.io }
    }

    /// The fds of the coming poll. The caller clears it and puts its own
    /// first; [`Stack::fill`] appends libslirp's.
    pub fn pollfds(&mut self) -> &mut Vec<libc::pollfd> {
        &mut self.io().pollfds
    }

    /// Adds libslirp's fds to [`Stack::pollfds`] and returns how long the poll
    /// may sleep (ms), at most `max_ms`.
    pub fn fill(&mut self, max_ms: u32) -> u32 {
        let mut timeout = max_ms;
        // SAFETY: `raw` is live; add_poll only pushes onto `io.pollfds`.
        unsafe { sys::slirp_pollfds_fill(self.raw.as_ptr(), &mut timeout, Some(add_poll), self.io as *mut c_void) };
        let io = self.io();
        let now_ms = io.now_ns() / 1_000_000;
        for &timer in &io.timers {
            // SAFETY: every pointer in `timers` is a live Box<Timer>.
            if let Some(expire) = unsafe { (*timer).expire_ms } {
                let wait = u32::try_from((expire - now_ms).max(0)).unwrap_or(u32::MAX);
                timeout = timeout.min(wait);
            }
        }
        timeout
    }

    /// Lets libslirp handle what the poll found (its revents are in
    /// [`Stack::pollfds`]) and its own timeouts.
    pub fn dispatch(&mut self, poll_failed: bool) {
        // SAFETY: `raw` is live; get_revents only reads `io.pollfds`.
        unsafe {
            sys::slirp_pollfds_poll(
                self.raw.as_ptr(),
                c_int::from(poll_failed),
                Some(get_revents),
                self.io as *mut c_void,
            )
        };
    }

    /// Runs the timers whose time has come.
    pub fn fire_timers(&mut self) {
        let now_ms = self.io().now_ns() / 1_000_000;
        let due: Vec<*mut Timer> = self
            .io()
            .timers
            .iter()
            .copied()
            // SAFETY: every pointer in `timers` is a live Box<Timer>.
            .filter(|&t| unsafe { (*t).expire_ms }.is_some_and(|e| e <= now_ms))
            .collect();
        for timer in due {
            // An earlier callback may have freed this timer.
            if !self.io().timers.contains(&timer) {
                continue;
            }
            // SAFETY: `timer` is still in `timers`, so still a live Box<Timer>;
            // the callback and its argument are libslirp's own.
            unsafe {
                (*timer).expire_ms = None;
                if let Some(cb) = (*timer).cb {
                    cb((*timer).cb_opaque);
                }
            }
        }
    }

    /// One frame from a guest.
    pub fn input(&mut self, frame: &[u8]) {
        let Ok(len) = c_int::try_from(frame.len()) else {
            return;
        };
        // SAFETY: `frame` is valid for `len` bytes; libslirp copies it.
        unsafe { sys::slirp_input(self.raw.as_ptr(), frame.as_ptr(), len) };
    }

    /// The frames libslirp produced since the last call.
    pub fn take_outbox(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.io().outbox)
    }

    /// Messages about guest misbehaviour so far.
    pub fn guest_errors(&mut self) -> u64 {
        self.io().guest_errors
    }

    /// Listens on `host_addr:host_port` (a port of 0 is not resolved here)
    /// and forwards to `guest_addr:guest_port`. The error is the bind's.
    pub fn add_hostfwd(
        &mut self,
        udp: bool,
        host_addr: Ipv4Addr,
        host_port: u16,
        guest_addr: Ipv4Addr,
        guest_port: u16,
    ) -> std::io::Result<()> {
        // SAFETY: `raw` is live; plain values only.
        let rc = unsafe {
            sys::slirp_add_hostfwd(
                self.raw.as_ptr(),
                c_int::from(udp),
                host_addr.into(),
                c_int::from(host_port),
                guest_addr.into(),
                c_int::from(guest_port),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            // libslirp keeps the bind's errno across its clean-up.
            Err(std::io::Error::last_os_error())
        }
    }

    /// Closes the listening socket of a forward; false if there was none.
    pub fn remove_hostfwd(&mut self, udp: bool, host_addr: Ipv4Addr, host_port: u16) -> bool {
        // SAFETY: `raw` is live; plain values only.
        let rc = unsafe {
            sys::slirp_remove_hostfwd(
                self.raw.as_ptr(),
                c_int::from(udp),
                host_addr.into(),
                c_int::from(host_port),
            )
        };
        rc == 0
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: `raw` is live and dropped once; slirp_cleanup closes every
        // socket of the instance and may still call back into `io`, which is
        // freed only afterwards, with the timers libslirp did not free.
        unsafe {
            sys::slirp_cleanup(self.raw.as_ptr());
            let io = Box::from_raw(self.io);
            for timer in io.timers {
                drop(Box::from_raw(timer));
            }
        }
    }
}

fn to_poll_events(slirp: c_int) -> libc::c_short {
    let mut events = 0;
    for (s, p) in [
        (sys::SLIRP_POLL_IN, libc::POLLIN),
        (sys::SLIRP_POLL_OUT, libc::POLLOUT),
        (sys::SLIRP_POLL_PRI, libc::POLLPRI),
        (sys::SLIRP_POLL_ERR, libc::POLLERR),
        (sys::SLIRP_POLL_HUP, libc::POLLHUP),
    ] {
        if slirp & s != 0 {
            events |= p;
        }
    }
    events
}

fn from_poll_events(poll: libc::c_short) -> c_int {
    let mut events = 0;
    for (s, p) in [
        (sys::SLIRP_POLL_IN, libc::POLLIN),
        (sys::SLIRP_POLL_OUT, libc::POLLOUT),
        (sys::SLIRP_POLL_PRI, libc::POLLPRI),
        (sys::SLIRP_POLL_ERR, libc::POLLERR | libc::POLLNVAL),
        (sys::SLIRP_POLL_HUP, libc::POLLHUP),
    ] {
        if poll & p != 0 {
            events |= s;
        }
    }
    events
}

/// # Safety
/// `opaque` is the `Io` of a live stack, with no other reference in use.
unsafe fn io<'a>(opaque: *mut c_void) -> &'a mut Io {
    &mut *(opaque as *mut Io)
}

unsafe extern "C" fn send_packet(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize {
    // SAFETY: libslirp passes our opaque and a buffer valid for `len` bytes.
    let (io, frame) = unsafe { (io(opaque), std::slice::from_raw_parts(buf as *const u8, len)) };
    io.outbox.push(frame.to_vec());
    isize::try_from(len).unwrap_or(isize::MAX)
}

unsafe extern "C" fn guest_error(_msg: *const libc::c_char, opaque: *mut c_void) {
    // SAFETY: libslirp passes our opaque.
    let io = unsafe { io(opaque) };
    io.guest_errors += 1;
}

unsafe extern "C" fn clock_get_ns(opaque: *mut c_void) -> i64 {
    // SAFETY: libslirp passes our opaque.
    unsafe { io(opaque) }.now_ns()
}

unsafe extern "C" fn timer_new(cb: sys::SlirpTimerCb, cb_opaque: *mut c_void, opaque: *mut c_void) -> *mut c_void {
    // SAFETY: libslirp passes our opaque.
    let io = unsafe { io(opaque) };
    let timer = Box::into_raw(Box::new(Timer {
        cb,
        cb_opaque,
        expire_ms: None,
    }));
    io.timers.push(timer);
    timer as *mut c_void
}

unsafe extern "C" fn timer_free(timer: *mut c_void, opaque: *mut c_void) {
    // SAFETY: libslirp passes our opaque.
    let io = unsafe { io(opaque) };
    let timer = timer as *mut Timer;
    if let Some(at) = io.timers.iter().position(|&t| t == timer) {
        io.timers.swap_remove(at);
        // SAFETY: it was in `timers`, so it is a Box<Timer> we leaked, freed once.
        drop(unsafe { Box::from_raw(timer) });
    }
}

unsafe extern "C" fn timer_mod(timer: *mut c_void, expire_time: i64, opaque: *mut c_void) {
    // SAFETY: libslirp passes our opaque.
    let io = unsafe { io(opaque) };
    let timer = timer as *mut Timer;
    if io.timers.contains(&timer) {
        // SAFETY: it is in `timers`, so a live Box<Timer>.
        unsafe { (*timer).expire_ms = Some(expire_time) };
    }
}

/// The poll set is rebuilt before every poll: nothing to track.
unsafe extern "C" fn register_poll_fd(_fd: c_int, _opaque: *mut c_void) {}

unsafe extern "C" fn unregister_poll_fd(_fd: c_int, _opaque: *mut c_void) {}

/// The loop polls again right after every call into libslirp.
unsafe extern "C" fn notify(_opaque: *mut c_void) {}

unsafe extern "C" fn add_poll(fd: c_int, events: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: we pass our own opaque to slirp_pollfds_fill.
    let io = unsafe { io(opaque) };
    io.pollfds.push(libc::pollfd {
        fd,
        events: to_poll_events(events),
        revents: 0,
    });
    c_int::try_from(io.pollfds.len() - 1).unwrap_or(-1)
}

unsafe extern "C" fn get_revents(idx: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: we pass our own opaque to slirp_pollfds_poll.
    let io = unsafe { io(opaque) };
    usize::try_from(idx)
        .ok()
        .and_then(|i| io.pollfds.get(i))
        .map_or(0, |p| from_poll_events(p.revents))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StackConfig {
        StackConfig {
            network: Ipv4Addr::new(10, 0, 2, 0),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            host: Ipv4Addr::new(10, 0, 2, 2),
            dhcp_start: Ipv4Addr::new(10, 0, 2, 15),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            disable_dns: true,
            disable_host_loopback: true,
            mtu: 1500,
        }
    }

    #[test]
    fn answers_arp_for_the_gateway() {
        let mut stack = Stack::new(&config()).expect("libslirp starts");
        let mut arp = Vec::new();
        arp.extend_from_slice(&[0xff; 6]);
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 10, 0, 2, 15]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&[10, 0, 2, 2]);
        arp.resize(60, 0);
        stack.input(&arp);
        let out = stack.take_outbox();
        assert_eq!(out.len(), 1, "{out:?}");
        let reply = &out[0];
        assert_eq!(&reply[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&reply[12..14], &[0x08, 0x06]);
        assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
        assert_eq!(&reply[22..28], &[0x52, 0x55, 10, 0, 2, 2], "the gateway's MAC");
    }

    #[test]
    fn polls_nothing_while_idle_and_cleans_up() {
        let mut stack = Stack::new(&config()).expect("libslirp starts");
        stack.pollfds().clear();
        let timeout = stack.fill(1000);
        assert!(timeout <= 1000);
        assert!(stack.pollfds().is_empty());
        stack.dispatch(false);
        stack.fire_timers();
        assert!(stack.take_outbox().is_empty());
    }
}
