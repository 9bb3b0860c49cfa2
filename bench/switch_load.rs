//! The load generator of the switch benchmark (bench/run compiles it with
//! `rustc -O` into its temporary directory; std only). It speaks to a switch
//! the way UML's network drivers do, so every switch under test sees exactly
//! the same client:
//!
//! - daemon transport (uml_switch, vde_switch, evum): a SOCK_STREAM
//!   connection to the control socket carrying `struct request_v3` (magic
//!   0xfeedface, version 3, type 0, the 110-byte `sockaddr_un` of the
//!   client's datagram socket, bound like UML to an abstract name of the full
//!   110-byte length); the 110-byte reply is the switch's data socket (on
//!   evum, one of the client's own); frames go out to that address, one
//!   frame per datagram.
//! - bess transport (evum only): a SOCK_SEQPACKET connection, one frame per
//!   message.
//!
//! Frames are sent and received in batches (sendmmsg, recvmmsg; up to 32 a
//! call), as UML's vector driver does, so that the generator's own system
//! calls do not cap the rate it measures; every switch gets the same load.
//!
//! Usage:
//!   switch_load daemon CTL SIZE SECS     two clients A and B: B announces its
//!   switch_load bess PATH SIZE SECS      MAC, then A sends SIZE-byte frames
//!                                        to B's MAC for SECS seconds while B
//!                                        counts what arrives
//!   switch_load overload CTL SIZE SECS   as daemon, but B takes one frame per
//!                                        recv(), as UML's daemon driver does:
//!                                        A overloads the switch
//!   switch_load inject CTL MAC SIZE SECS one client that sends SIZE-byte
//!                                        frames to MAC (12 hex digits) for
//!                                        SECS seconds
//!
//! Output: one `RESULT key=value ...` line on stdout (`inject` first prints
//! `START` when it begins sending); errors go to stderr with exit status 1.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const SOCKADDR_UN_LEN: usize = 110;
const AF_UNIX: u16 = 1;
const SOCK_SEQPACKET: i32 = 5;
const SOCK_CLOEXEC: i32 = 0o2000000;
const MAC_A: [u8; 6] = [2, 0xbe, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0xbe, 0, 0, 0, 0xb];
const BROADCAST: [u8; 6] = [0xff; 6];
/// How long the receiver waits for stragglers once the sender has stopped.
const DRAIN: Duration = Duration::from_millis(200);

/// Frames per sendmmsg/recvmmsg call: the generator moves frames in batches
/// so that it is not the bottleneck of the switch it measures.
const BATCH: usize = 32;
/// recvmmsg: return once one message has arrived.
const MSG_WAITFORONE: i32 = 0x10000;

/// `struct iovec` and `struct mmsghdr` (x86_64 and other LP64 Linux).
#[repr(C)]
struct IoVec {
    base: *mut u8,
    len: usize,
}

#[repr(C)]
struct MMsgHdr {
    name: *mut u8,
    namelen: u32,
    iov: *mut IoVec,
    iovlen: usize,
    control: *mut u8,
    controllen: usize,
    flags: i32,
    /// Where struct msghdr's padding ends and mmsghdr's msg_len begins.
    _pad: i32,
    len: u32,
}

const _: () = assert!(std::mem::size_of::<MMsgHdr>() == 64);

impl MMsgHdr {
    /// A header for one buffer, with an address (`name`) or none (null).
    fn new(iov: *mut IoVec, name: *mut u8, namelen: u32) -> MMsgHdr {
        MMsgHdr {
            name,
            namelen,
            iov,
            iovlen: 1,
            control: std::ptr::null_mut(),
            controllen: 0,
            flags: 0,
            _pad: 0,
            len: 0,
        }
    }
}

extern "C" {
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn connect(fd: i32, addr: *const u8, len: u32) -> i32;
    fn sendmmsg(fd: i32, msgs: *mut MMsgHdr, n: u32, flags: i32) -> i32;
    fn recvmmsg(fd: i32, msgs: *mut MMsgHdr, n: u32, flags: i32, timeout: *mut u8) -> i32;
}

/// Sends up to BATCH copies of `frame` in one sendmmsg, to `to` (a raw
/// sockaddr_un) or, when it is empty, on a connected socket. Blocking: each
/// message waits for room as a single send would. Returns how many went out.
fn send_batch(fd: RawFd, to: &[u8], frame: &[u8], n: usize) -> std::io::Result<usize> {
    let n = n.min(BATCH);
    let mut iovs: Vec<IoVec> = (0..n)
        .map(|_| IoVec {
            base: frame.as_ptr() as *mut u8,
            len: frame.len(),
        })
        .collect();
    let mut msgs: Vec<MMsgHdr> = iovs
        .iter_mut()
        .map(|iov| {
            let name = if to.is_empty() {
                std::ptr::null_mut()
            } else {
                to.as_ptr() as *mut u8
            };
            MMsgHdr::new(iov, name, to.len() as u32)
        })
        .collect();
    // SAFETY: every header points at an iovec and address that outlive the
    // call; the kernel only reads the frame and the address.
    let r = unsafe { sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Buffers for receiving up to BATCH messages in one recvmmsg.
struct RecvBatch {
    bufs: Vec<[u8; 2048]>,
    iovs: Vec<IoVec>,
    msgs: Vec<MMsgHdr>,
}

impl RecvBatch {
    fn new() -> RecvBatch {
        let mut bufs = vec![[0u8; 2048]; BATCH];
        let mut iovs: Vec<IoVec> = bufs
            .iter_mut()
            .map(|b| IoVec {
                base: b.as_mut_ptr(),
                len: b.len(),
            })
            .collect();
        let msgs = iovs
            .iter_mut()
            .map(|iov| MMsgHdr::new(iov, std::ptr::null_mut(), 0))
            .collect();
        RecvBatch { bufs, iovs, msgs }
    }

    /// Waits (up to the socket's receive timeout) for at least one message
    /// and takes whatever else is already there; returns how many.
    fn recv(&mut self, fd: RawFd) -> std::io::Result<usize> {
        let _ = &self.iovs;
        // SAFETY: the headers point at our own iovecs and buffers, which
        // neither move nor are otherwise borrowed during the call.
        let r = unsafe {
            recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as u32,
                MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }

    /// Takes one message with a plain recv(), into the first buffer;
    /// returns 1.
    fn recv_one(&mut self, end: &dyn End) -> std::io::Result<usize> {
        let len = end.recv(&mut self.bufs[0])?;
        self.msgs[0].len = len as u32;
        Ok(1)
    }

    fn get(&self, i: usize) -> &[u8] {
        &self.bufs[i][..(self.msgs[i].len as usize).min(2048)]
    }
}

fn die(what: impl std::fmt::Display) -> ! {
    eprintln!("switch_load: {what}");
    std::process::exit(1)
}

fn frame(dst: [u8; 6], src: [u8; 6], size: usize, tag: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(size);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f.resize(size, tag);
    f
}

/// An address from the 110 bytes of a `struct sockaddr_un`: abstract names
/// are kept whole (UML and uml_switch bind with the full length), paths end
/// at their NUL.
fn address(raw: &[u8]) -> SocketAddr {
    if raw.len() != SOCKADDR_UN_LEN || u16::from_ne_bytes([raw[0], raw[1]]) != AF_UNIX {
        die(format!("the switch's reply is not a sockaddr_un: {raw:?}"));
    }
    let path = &raw[2..];
    let result = if path[0] == 0 {
        SocketAddr::from_abstract_name(&path[1..])
    } else {
        let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
        SocketAddr::from_pathname(std::str::from_utf8(&path[..end]).unwrap_or_else(|_| die("non-UTF-8 path")))
    };
    result.unwrap_or_else(|e| die(format!("bad address from the switch: {e}")))
}

/// A daemon-transport client: the control stream (kept open: closing it
/// removes the port), the datagram socket, the switch's data address.
struct Daemon {
    _control: UnixStream,
    data: UnixDatagram,
    switch: SocketAddr,
    /// The switch's data address as it sent it, for sendmmsg.
    switch_raw: [u8; SOCKADDR_UN_LEN],
}

impl Daemon {
    fn connect(ctl: &str) -> Daemon {
        static N: AtomicU32 = AtomicU32::new(0);
        // An abstract name of 107 bytes, so that its address is the full
        // 110 bytes, as UML's (NUL, pid, a counter, then zeroes).
        let mut name = vec![0u8; SOCKADDR_UN_LEN - 3];
        name[..4].copy_from_slice(b"evb-");
        name[4..8].copy_from_slice(&std::process::id().to_ne_bytes());
        name[8..12].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_ne_bytes());
        let addr = SocketAddr::from_abstract_name(&name).unwrap_or_else(|e| die(e));
        let data = UnixDatagram::bind_addr(&addr).unwrap_or_else(|e| die(format!("bind: {e}")));
        let mut request = Vec::with_capacity(124);
        request.extend_from_slice(&0xfeed_faceu32.to_ne_bytes());
        request.extend_from_slice(&3u32.to_ne_bytes());
        request.extend_from_slice(&0u32.to_ne_bytes());
        request.extend_from_slice(&AF_UNIX.to_ne_bytes());
        request.push(0);
        request.extend_from_slice(&name);
        request.resize(124, 0);
        let mut control = UnixStream::connect(ctl).unwrap_or_else(|e| die(format!("connect to {ctl}: {e}")));
        control
            .write_all(&request)
            .unwrap_or_else(|e| die(format!("request: {e}")));
        control.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reply = [0u8; SOCKADDR_UN_LEN];
        control
            .read_exact(&mut reply)
            .unwrap_or_else(|e| die(format!("no 110-byte reply from {ctl}: {e}")));
        Daemon {
            _control: control,
            data,
            switch: address(&reply),
            switch_raw: reply,
        }
    }
}

/// One end of the load: sends or receives frames.
trait End: Send + Sync {
    fn send(&self, frame: &[u8]) -> std::io::Result<usize>;
    /// Up to `n` (at most BATCH) copies of `frame` in one system call.
    fn send_many(&self, frame: &[u8], n: usize) -> std::io::Result<usize>;
    fn fd(&self) -> RawFd;
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn set_timeout(&self, t: Duration);
}

impl End for Daemon {
    fn send(&self, frame: &[u8]) -> std::io::Result<usize> {
        self.data.send_to_addr(frame, &self.switch)
    }
    fn send_many(&self, frame: &[u8], n: usize) -> std::io::Result<usize> {
        send_batch(self.data.as_raw_fd(), &self.switch_raw, frame, n)
    }
    fn fd(&self) -> RawFd {
        self.data.as_raw_fd()
    }
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.data.recv(buf)
    }
    fn set_timeout(&self, t: Duration) {
        self.data.set_read_timeout(Some(t)).unwrap();
    }
}

/// A bess client; std's UnixStream reads and writes one message at a time
/// on a SOCK_SEQPACKET socket.
struct Bess(UnixStream);

impl Bess {
    fn connect(path: &str) -> Bess {
        let mut sa = [0u8; SOCKADDR_UN_LEN];
        sa[0..2].copy_from_slice(&AF_UNIX.to_ne_bytes());
        if path.len() >= SOCKADDR_UN_LEN - 2 {
            die("bess path too long");
        }
        sa[2..2 + path.len()].copy_from_slice(path.as_bytes());
        // SAFETY: no pointers; a non-negative result is a fresh fd.
        let fd: RawFd = unsafe { socket(AF_UNIX as i32, SOCK_SEQPACKET | SOCK_CLOEXEC, 0) };
        if fd < 0 {
            die(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: the fd is ours alone.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        // SAFETY: `sa` is a sockaddr_un of the length given.
        if unsafe { connect(fd, sa.as_ptr(), SOCKADDR_UN_LEN as u32) } != 0 {
            die(format!("connect to {path}: {}", std::io::Error::last_os_error()));
        }
        Bess(stream)
    }
}

impl End for Bess {
    fn send(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&self.0).write(frame)
    }
    fn send_many(&self, frame: &[u8], n: usize) -> std::io::Result<usize> {
        send_batch(self.0.as_raw_fd(), &[], frame, n)
    }
    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.0).read(buf)
    }
    fn set_timeout(&self, t: Duration) {
        self.0.set_read_timeout(Some(t)).unwrap();
    }
}

/// Everything that arrives within the timeout already set.
fn drain(end: &dyn End) -> u64 {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while end.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// Sends `f` for `secs` seconds as fast as the socket takes it, BATCH
/// frames per sendmmsg (blocking sends: a full switch queue holds the sender
/// back). Returns (sent, send errors, seconds).
fn blast(end: &dyn End, f: &[u8], secs: f64) -> (u64, u64, f64) {
    let t0 = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let (mut sent, mut errors) = (0u64, 0u64);
    loop {
        let mut left = 2 * BATCH;
        while left > 0 {
            match end.send_many(f, left) {
                Ok(0) | Err(_) => {
                    errors += 1;
                    left -= 1;
                }
                Ok(n) => {
                    sent += n as u64;
                    left -= n;
                }
            }
        }
        if t0.elapsed() >= limit {
            break;
        }
    }
    (sent, errors, t0.elapsed().as_secs_f64())
}

/// How the receiver of a pair takes its frames.
#[derive(Clone, Copy)]
enum Reader {
    /// Up to BATCH a call (recvmmsg), as UML's vector driver.
    Batched,
    /// One frame per recv(), as UML's daemon driver.
    Plain,
}

fn pair(a: Arc<dyn End>, b: Arc<dyn End>, size: usize, secs: f64, reader: Reader) {
    // Both announce themselves so the switch learns both MACs.
    b.send(&frame(BROADCAST, MAC_B, 60, 0))
        .unwrap_or_else(|e| die(format!("send: {e}")));
    a.send(&frame(BROADCAST, MAC_A, 60, 0))
        .unwrap_or_else(|e| die(format!("send: {e}")));
    a.set_timeout(Duration::from_millis(100));
    b.set_timeout(Duration::from_millis(100));
    let learned_a = drain(&*a);
    let learned_b = drain(&*b);
    if learned_a == 0 || learned_b == 0 {
        die(format!(
            "the announcements did not cross the switch (A got {learned_a}, B got {learned_b})"
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let receiver = {
        let (b, stop) = (b.clone(), stop.clone());
        b.set_timeout(Duration::from_millis(20));
        thread::spawn(move || {
            let mut batch = RecvBatch::new();
            let (mut n, mut bytes, mut wrong) = (0u64, 0u64, 0u64);
            let mut last = t0;
            let mut stopped_at: Option<Instant> = None;
            loop {
                let received = match reader {
                    Reader::Batched => batch.recv(b.fd()),
                    Reader::Plain => batch.recv_one(&*b),
                };
                match received {
                    Ok(count) => {
                        for i in 0..count {
                            let buf = batch.get(i);
                            if buf.len() == size && buf[0..6] == MAC_B && buf[6..12] == MAC_A {
                                n += 1;
                                bytes += buf.len() as u64;
                            } else {
                                wrong += 1;
                            }
                        }
                        last = Instant::now();
                    }
                    Err(_) => {
                        if stop.load(Ordering::Relaxed) {
                            let at = *stopped_at.get_or_insert_with(Instant::now);
                            if at.elapsed() >= DRAIN {
                                break;
                            }
                        }
                    }
                }
            }
            (n, bytes, wrong, last)
        })
    };
    let f = frame(MAC_B, MAC_A, size, 0x5a);
    let (sent, errors, send_secs) = blast(&*a, &f, secs);
    stop.store(true, Ordering::Relaxed);
    let (received, bytes, wrong, last) = receiver.join().unwrap();
    let recv_secs = last.duration_since(t0).as_secs_f64().max(1e-9);
    let fps = received as f64 / recv_secs.max(send_secs);
    println!(
        "RESULT size={size} sent={sent} send_errors={errors} send_secs={send_secs:.4} received={received} \
         wrong={wrong} recv_secs={recv_secs:.4} offered_fps={:.0} fps={fps:.0} mbps={:.1} drops={}",
        sent as f64 / send_secs,
        fps * size as f64 * 8.0 / 1e6,
        sent.saturating_sub(received)
    );
    let _ = bytes;
}

fn parse_mac(s: &str) -> [u8; 6] {
    let s = s.replace(':', "");
    if s.len() != 12 {
        die(format!("bad MAC {s}"));
    }
    let mut mac = [0u8; 6];
    for (i, m) in mac.iter_mut().enumerate() {
        *m = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or_else(|_| die(format!("bad MAC {s}")));
    }
    mac
}

fn num<T: std::str::FromStr>(s: &str) -> T {
    s.parse().unwrap_or_else(|_| die(format!("not a number: {s}")))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args[..] {
        ["daemon", ctl, size, secs] => {
            let a = Arc::new(Daemon::connect(ctl));
            let b = Arc::new(Daemon::connect(ctl));
            pair(a, b, num(size), num(secs), Reader::Batched);
        }
        ["overload", ctl, size, secs] => {
            let a = Arc::new(Daemon::connect(ctl));
            let b = Arc::new(Daemon::connect(ctl));
            pair(a, b, num(size), num(secs), Reader::Plain);
        }
        ["bess", path, size, secs] => {
            let a = Arc::new(Bess::connect(path));
            let b = Arc::new(Bess::connect(path));
            pair(a, b, num(size), num(secs), Reader::Batched);
        }
        ["inject", ctl, mac, size, secs] => {
            let a = Daemon::connect(ctl);
            // Let the switch register the port before the first frame.
            thread::sleep(Duration::from_millis(50));
            let f = frame(parse_mac(mac), MAC_A, num(size), 0x5a);
            println!("START");
            let _ = std::io::stdout().flush();
            let (sent, errors, secs) = blast(&a, &f, num(secs));
            println!(
                "RESULT sent={sent} send_errors={errors} send_secs={secs:.4} offered_fps={:.0}",
                sent as f64 / secs
            );
            let _ = std::io::stdout().flush();
            // Keep the port until the frames sent have been counted.
            thread::sleep(Duration::from_millis(300));
        }
        _ => die("usage: switch_load daemon CTL SIZE SECS | overload CTL SIZE SECS | bess PATH SIZE SECS | inject CTL MAC SIZE SECS"),
    }
}
