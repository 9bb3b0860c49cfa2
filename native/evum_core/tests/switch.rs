//! The switch against real peers: a client speaking UML's daemon protocol
//! (checked against Debian's uml_switch too), bess connections, attached
//! ports, and real UML guests pinging each other through it.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{frame, mac, BessClient, TempDir, BROADCAST};

use crossbeam_channel::{unbounded, Receiver, Sender};
use evum_core::switch::daemon::{encode_request, RawUnixAddr, SOCKADDR_UN_LEN};
use evum_core::switch::{FrameSink, PortId, PortKind, Switch, SwitchConfig};

// ---------------------------------------------------------------- fixtures

fn start(dir: &TempDir, tune: impl FnOnce(&mut SwitchConfig)) -> Switch {
    let mut config = common::switch_config(&dir.0.join("switch"));
    tune(&mut config);
    Switch::start(config).expect("switch starts")
}

fn sockaddr(addr: &RawUnixAddr) -> libc::sockaddr_un {
    // SAFETY: plain old data; all zeroes is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = u16::from_ne_bytes([addr[0], addr[1]]);
    for (d, s) in sa.sun_path.iter_mut().zip(&addr[2..]) {
        *d = *s as libc::c_char;
    }
    sa
}

/// A datagram socket bound the way UML binds it: an abstract name of NUL,
/// pid, a counter, and (unlike UML's uninitialised bytes) a known filler,
/// with the full 110-byte length.
fn uml_like_datagram() -> (UnixDatagram, RawUnixAddr) {
    static N: AtomicU32 = AtomicU32::new(0);
    let mut addr = [0xa5u8; SOCKADDR_UN_LEN];
    addr[0..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    addr[2] = 0;
    addr[3..7].copy_from_slice(&std::process::id().to_ne_bytes());
    addr[7..11].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_ne_bytes());
    // SAFETY: no pointers; the fd is fresh and ours.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: see above.
    let sock = unsafe { UnixDatagram::from_raw_fd(fd) };
    let sa = sockaddr(&addr);
    // SAFETY: `sa` is a valid sockaddr_un of the length given.
    let rc = unsafe { libc::bind(fd, &sa as *const _ as *const libc::sockaddr, SOCKADDR_UN_LEN as u32) };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    (sock, addr)
}

/// A client of the daemon transport, as UML's daemon driver behaves.
struct DaemonClient {
    control: UnixStream,
    data: UnixDatagram,
    switch_addr: RawUnixAddr,
}

impl DaemonClient {
    fn connect(ctl: &Path) -> DaemonClient {
        let (data, addr) = uml_like_datagram();
        let mut control = UnixStream::connect(ctl).expect("connect to the control socket");
        control.write_all(&encode_request(&addr)).unwrap();
        control.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut switch_addr = [0u8; SOCKADDR_UN_LEN];
        control.read_exact(&mut switch_addr).expect("a 110-byte reply");
        data.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        DaemonClient {
            control,
            data,
            switch_addr,
        }
    }

    /// sendto with the full sockaddr_un length, as UML does.
    fn send(&self, frame: &[u8]) {
        let sent = try_send_raw(&self.data, &self.switch_addr, frame, 0);
        assert_eq!(sent.unwrap(), frame.len());
    }

    /// The same without waiting, as UML's driver sends: false when the
    /// switch's socket has no room (a frame UML would lose).
    fn send_nowait(&self, frame: &[u8]) -> bool {
        match try_send_raw(&self.data, &self.switch_addr, frame, libc::MSG_DONTWAIT) {
            Ok(n) => n == frame.len(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("sendto: {e}"),
        }
    }

    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        self.data.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    }

    /// Everything that arrives within the read timeout.
    fn drain(&self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.recv()).collect()
    }
}

fn try_send_raw(sock: &UnixDatagram, to: &RawUnixAddr, frame: &[u8], flags: libc::c_int) -> std::io::Result<usize> {
    let sa = sockaddr(to);
    // SAFETY: `frame` and `sa` are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
            flags,
            &sa as *const _ as *const libc::sockaddr,
            SOCKADDR_UN_LEN as u32,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// An attached port's sink that forwards frames to a channel.
struct ToChannel(Sender<(PortId, Vec<u8>)>);

impl FrameSink for ToChannel {
    fn frame(&mut self, port: PortId, frame: &[u8]) -> bool {
        self.0.send((port, frame.to_vec())).is_ok()
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a unix stream socket bound at `path` is listening: its line in
/// /proc/net/unix has the accept flag (__SO_ACCEPTCON, 0x10000) set. The
/// table is read as bytes: abstract names (ours among them) need not be UTF-8.
fn listening(path: &Path) -> bool {
    const ACCEPTING: u32 = 0x10000;
    let table = std::fs::read("/proc/net/unix").expect("/proc/net/unix");
    String::from_utf8_lossy(&table).lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() == 8
            && Path::new(fields[7]) == path
            && u32::from_str_radix(fields[3], 16).is_ok_and(|flags| flags & ACCEPTING != 0)
    })
}

/// The switching behaviour every faithful switch shows, driven through the
/// daemon protocol only.
fn switching_scenario(ctl: &Path) {
    let a = DaemonClient::connect(ctl);
    let b = DaemonClient::connect(ctl);
    let c = DaemonClient::connect(ctl);
    // A broadcast reaches everybody but its sender, and teaches the switch A.
    let hello = frame(BROADCAST, mac(1), 1);
    a.send(&hello);
    assert_eq!(b.recv().as_deref(), Some(&hello[..]));
    assert_eq!(c.recv().as_deref(), Some(&hello[..]));
    assert_eq!(a.recv(), None, "a broadcast came back to its sender");
    // B answers A: the switch knows A, so C does not see it.
    let answer = frame(mac(1), mac(2), 2);
    b.send(&answer);
    assert_eq!(a.recv().as_deref(), Some(&answer[..]));
    assert_eq!(c.recv(), None, "a learned unicast was flooded");
    // And A to B, now both are known.
    let back = frame(mac(2), mac(1), 3);
    a.send(&back);
    assert_eq!(b.recv().as_deref(), Some(&back[..]));
    assert_eq!(c.recv(), None);
    assert_eq!(b.recv(), None);
}

// ---------------------------------------------------------------- protocol

#[test]
fn daemon_clients_exchange_frames_like_a_switch() {
    let dir = TempDir::new("basic");
    let switch = start(&dir, |_| {});
    switching_scenario(&switch.control_socket());
    // The clients are gone now: their control streams closed.
    wait_until("the ports to go", || switch.ports().unwrap().is_empty());
    assert!(switch.mac_table().unwrap().is_empty());
    assert_eq!(switch.counters().unwrap(), Default::default());
}

#[test]
fn a_switch_that_never_polls_switches_alike() {
    let dir = TempDir::new("no-busy-poll");
    let switch = start(&dir, |config| config.busy_poll = Duration::ZERO);
    switching_scenario(&switch.control_socket());
}

#[test]
fn the_same_client_works_against_uml_switch() {
    let dir = TempDir::new("uml_switch");
    let ctl = dir.0.join("ctl");
    let child: Child = Command::new("uml_switch")
        .arg("-unix")
        .arg(&ctl)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("uml_switch (uml-utilities) is installed");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    // uml_switch binds its socket before it listens: the file appearing is
    // not enough, a connect in between is refused.
    wait_until("uml_switch to listen", || listening(&ctl));
    switching_scenario(&ctl);
}

#[test]
fn ports_and_the_mac_table_are_reported() {
    let dir = TempDir::new("inspect");
    let switch = start(&dir, |_| {});
    let a = DaemonClient::connect(&switch.control_socket());
    let b = DaemonClient::connect(&switch.control_socket());
    a.send(&frame(BROADCAST, mac(1), 1));
    assert!(b.recv().is_some());
    b.send(&frame(mac(1), mac(2), 2));
    assert!(a.recv().is_some());
    let ports = switch.ports().unwrap();
    assert_eq!(ports.len(), 2);
    assert!(ports.iter().all(|p| p.kind == PortKind::Daemon));
    let pa = ports.iter().find(|p| p.mac == Some(mac(1))).expect("A's port");
    let pb = ports.iter().find(|p| p.mac == Some(mac(2))).expect("B's port");
    assert_eq!(
        (
            pa.counters.frames_in,
            pa.counters.frames_out,
            pa.counters.bytes_in,
            pa.counters.bytes_out
        ),
        (1, 1, 60, 60)
    );
    assert_eq!((pb.counters.frames_in, pb.counters.frames_out), (1, 1));
    let table = switch.mac_table().unwrap();
    assert_eq!(table.len(), 2);
    assert!(table.iter().any(|e| e.0 == mac(1) && e.1 == pa.id));
    assert!(table.iter().any(|e| e.0 == mac(2) && e.1 == pb.id));
    assert!(table.iter().all(|e| e.2 < Duration::from_secs(5)));
    // EOF on A's control stream removes A's port and its MAC.
    drop(a.control);
    wait_until("A's port to go", || switch.ports().unwrap().len() == 1);
    assert_eq!(switch.mac_table().unwrap().len(), 1);
    // A's socket on the switch went with its port.
    let lost = try_send_raw(&a.data, &a.switch_addr, &frame(BROADCAST, mac(1), 9), 0);
    assert_eq!(lost.unwrap_err().raw_os_error(), Some(libc::ECONNREFUSED));
    // B's takes datagrams from B's address alone: the kernel refuses
    // anyone else's, A's included.
    let (stranger, _) = uml_like_datagram();
    for from in [&stranger, &a.data] {
        let refused = try_send_raw(from, &b.switch_addr, &frame(BROADCAST, mac(1), 9), 0);
        assert_eq!(refused.unwrap_err().raw_os_error(), Some(libc::EPERM));
    }
    b.send(&frame(BROADCAST, mac(2), 3));
    assert_eq!(b.recv(), None);
    assert_eq!(switch.ports().unwrap()[0].counters.frames_in, 2);
}

#[test]
fn garbage_requests_are_counted_while_good_ports_keep_forwarding() {
    let dir = TempDir::new("garbage");
    let switch = start(&dir, |c| c.request_timeout = Duration::from_millis(500));
    let ctl = switch.control_socket();
    let a = DaemonClient::connect(&ctl);
    let b = DaemonClient::connect(&ctl);
    let (_sock, addr) = uml_like_datagram();
    let good = encode_request(&addr);
    let mut bad_magic = good;
    bad_magic[0] ^= 0xff;
    let mut version2 = good;
    version2[4..8].copy_from_slice(&2u32.to_ne_bytes());
    let mut oversized = good.to_vec();
    oversized.extend_from_slice(&[0u8; 100]);
    let mut rejected = Vec::new();
    for bytes in [&bad_magic[..], &version2[..], &oversized[..]] {
        let mut s = UnixStream::connect(&ctl).unwrap();
        s.write_all(bytes).unwrap();
        rejected.push(s);
    }
    let mut short = UnixStream::connect(&ctl).unwrap();
    short.write_all(&good[..50]).unwrap();
    short.shutdown(std::net::Shutdown::Write).unwrap();
    let silent = UnixStream::connect(&ctl).unwrap();
    let mut half = UnixStream::connect(&ctl).unwrap();
    half.write_all(&good[..100]).unwrap();
    // Forwarding goes on meanwhile.
    for i in 0..20 {
        let f = frame(mac(2), mac(1), i);
        a.send(&f);
        let g = frame(mac(1), mac(2), i);
        b.send(&g);
        assert_eq!(b.recv().as_deref(), Some(&f[..]));
        assert_eq!(a.recv().as_deref(), Some(&g[..]));
    }
    wait_until("the rejects to be counted", || {
        let c = switch.counters().unwrap();
        c.bad_magic == 1
            && c.bad_version == 1
            && c.oversized_request == 1
            && c.short_request == 1
            && c.request_timeout == 2
    });
    // Each rejected connection was closed without a reply.
    for mut s in rejected.into_iter().chain([short, silent, half]) {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 200];
        assert_eq!(s.read(&mut buf).unwrap(), 0);
    }
    assert_eq!(switch.ports().unwrap().len(), 2);
    a.send(&frame(mac(2), mac(1), 99));
    assert!(b.recv().is_some());
}

#[test]
fn a_connection_flood_is_bounded_and_counted() {
    let dir = TempDir::new("flood");
    let switch = start(&dir, |c| {
        c.request_timeout = Duration::from_millis(300);
        c.max_pending = 8;
    });
    let ctl = switch.control_socket();
    let flood: Vec<UnixStream> = (0..200).filter_map(|_| UnixStream::connect(&ctl).ok()).collect();
    assert!(flood.len() >= 100, "only {} connects succeeded", flood.len());
    wait_until("the flood to be refused", || {
        let c = switch.counters().unwrap();
        c.too_many_pending + c.request_timeout == flood.len() as u64
    });
    let c = switch.counters().unwrap();
    assert!(c.too_many_pending >= flood.len() as u64 - 8, "{c:?}");
    drop(flood);
    // Good clients get in once the flood has timed out.
    let a = DaemonClient::connect(&ctl);
    let b = DaemonClient::connect(&ctl);
    a.send(&frame(BROADCAST, mac(1), 1));
    assert!(b.recv().is_some());
}

#[test]
fn runt_and_oversized_datagrams_are_counted() {
    let dir = TempDir::new("runt");
    let switch = start(&dir, |_| {});
    let a = DaemonClient::connect(&switch.control_socket());
    let b = DaemonClient::connect(&switch.control_socket());
    a.send(&[1, 2, 3]);
    a.send(&[]);
    a.send(&[0xffu8; 13]);
    let mut big = frame(BROADCAST, mac(1), 7);
    big.resize(2000, 0);
    a.send(&big);
    let ok = frame(BROADCAST, mac(1), 8);
    a.send(&ok);
    assert_eq!(b.drain(), vec![ok]);
    let c = switch.counters().unwrap();
    assert_eq!((c.runt, c.oversized_frame), (3, 1));
}

#[test]
fn a_slow_receiver_loses_frames_without_stalling_the_others() {
    let dir = TempDir::new("slow");
    let switch = start(&dir, |c| c.queue_len = 16);
    let ctl = switch.control_socket();
    let a = DaemonClient::connect(&ctl);
    let slow = DaemonClient::connect(&ctl);
    let fast = DaemonClient::connect(&ctl);
    fast.data.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let reader = std::thread::spawn(move || {
        let mut n = 0;
        while let Some(f) = fast.recv() {
            n += 1;
            if f[14] == 0xee {
                break;
            }
        }
        n
    });
    for _ in 0..300 {
        a.send(&frame(BROADCAST, mac(1), 1));
    }
    a.send(&frame(BROADCAST, mac(1), 0xee));
    let got = reader.join().unwrap();
    assert!(got > 16, "the fast receiver got only {got}");
    let ports = switch.ports().unwrap();
    let slow_port = ports
        .iter()
        .find(|p| p.counters.drops_queue_full > 0)
        .expect("a port with drops");
    assert!(slow_port.queued <= 16);
    drop(slow);
}

/// Sends `frames` in turn from `a` to the port of MAC 2 (which does not
/// read) until that port's queue on the switch passes its congestion mark
/// (32, with a queue_len of 64), so that the switch holds `a`'s input;
/// returns how many were sent.
fn send_until_held(switch: &Switch, a: &DaemonClient, frames: &[Vec<u8>]) -> usize {
    let mut sent = 0;
    while !switch
        .ports()
        .unwrap()
        .iter()
        .any(|p| p.mac == Some(mac(2)) && p.queued >= 32)
    {
        assert!(sent < frames.len(), "the queue on the switch never passed its mark");
        a.send(&frames[sent]);
        sent += 1;
    }
    sent
}

#[test]
fn a_vm_burst_waits_in_its_own_socket_while_the_switch_holds_its_input() {
    let dir = TempDir::new("burst");
    let switch = start(&dir, |c| {
        c.queue_len = 64;
        c.max_hold = Duration::from_secs(5);
    });
    let a = DaemonClient::connect(&switch.control_socket());
    let b = DaemonClient::connect(&switch.control_socket());
    a.send(&frame(BROADCAST, mac(1), 1));
    b.send(&frame(BROADCAST, mac(2), 2));
    assert!(a.recv().is_some() && b.recv().is_some());
    // B does not read: its socket fills, then its queue on the switch goes
    // past the congestion mark (32 of 64), and the switch holds A's input.
    let frames: Vec<Vec<u8>> = (0..1200).map(|n| frame(mac(2), mac(1), n as u8)).collect();
    let sent = send_until_held(&switch, &a, &frames[..1000]);
    // A burst sent as UML sends (a send that would block is a lost frame)
    // waits whole in A's socket on the switch: it is A's peer, which the
    // kernel does not hold to max_dgram_qlen (10 by default).
    let frames = &frames[..sent + 100];
    for (n, f) in frames[sent..].iter().enumerate() {
        assert!(a.send_nowait(f), "frame {n} of the burst would block");
    }
    let got = b.drain();
    assert_eq!(got.len(), frames.len());
    assert!(got == frames, "B got the frames out of order");
}

#[test]
fn a_congested_port_holds_back_only_the_ports_that_send_to_it() {
    let dir = TempDir::new("held");
    let switch = start(&dir, |c| {
        c.queue_len = 64;
        c.max_hold = Duration::from_secs(5);
    });
    let ctl = switch.control_socket();
    let (a, b, c, d) = (
        DaemonClient::connect(&ctl),
        DaemonClient::connect(&ctl),
        DaemonClient::connect(&ctl),
        DaemonClient::connect(&ctl),
    );
    for (n, client) in [&a, &b, &c, &d].into_iter().enumerate() {
        client.send(&frame(BROADCAST, mac(n as u8 + 1), 0));
    }
    for client in [&a, &b, &c, &d] {
        client.drain();
    }
    // A sends to B, which does not read, until the switch holds A's input.
    let sent = send_until_held(&switch, &a, &vec![frame(mac(2), mac(1), 1); 1000]);
    // C and D are not held up meanwhile (each recv waits 300 ms at most,
    // the hold lasts up to 5 s).
    for round in 0..20u8 {
        let ping = frame(mac(4), mac(3), round);
        c.send(&ping);
        assert_eq!(d.recv().as_deref(), Some(&ping[..]), "round {round}");
        let pong = frame(mac(3), mac(4), round);
        d.send(&pong);
        assert_eq!(c.recv().as_deref(), Some(&pong[..]), "round {round}");
    }
    // B catches up and gets every frame A sent.
    assert_eq!(b.drain().len(), sent);
}

#[test]
fn a_receiver_that_keeps_reading_holds_the_sender_back_instead_of_losing_frames() {
    let dir = TempDir::new("flow");
    // Room for two received batches (32 frames each): the switch pauses
    // once half is taken, and one batch may already be in hand by then.
    // The hold is long enough for the reader's thread to be descheduled
    // for a while on a busy machine without counting as stopped.
    let switch = start(&dir, |c| {
        c.queue_len = 64;
        c.max_hold = Duration::from_millis(250);
    });
    let ctl = switch.control_socket();
    let a = DaemonClient::connect(&ctl);
    let b = DaemonClient::connect(&ctl);
    b.send(&frame(BROADCAST, mac(2), 0));
    assert!(a.recv().is_some());
    const FRAMES: usize = 3000;
    let reader = std::thread::spawn(move || {
        // Much slower than the sender: a pause every 20 frames.
        let mut n = 0;
        while let Some(f) = b.recv() {
            if f[14] != 0xee {
                continue;
            }
            n += 1;
            if n % 20 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            if n == FRAMES {
                break;
            }
        }
        n
    });
    // Blocking sends: A's full socket on the switch holds A back.
    for _ in 0..FRAMES {
        a.send(&frame(mac(2), mac(1), 0xee));
    }
    let ports = switch.ports().unwrap();
    let got = reader.join().unwrap();
    // Without flow control four in five frames are lost.
    assert!(got == FRAMES, "the receiver got only {got} of {FRAMES}: {ports:?}");
}

/// Two daemon ports A and B exchange 50 frames each way while a third port
/// floods the switch with frames to its own MAC from three threads (which
/// keep its socket full). A and B send as UML's daemon driver does: a send
/// that would block is a lost frame.
fn exchanges_go_on_under_a_flood(switch: &Switch, flood: impl Fn(&[u8]) + Send + Sync + 'static) {
    let a = DaemonClient::connect(&switch.control_socket());
    let b = DaemonClient::connect(&switch.control_socket());
    wait_until("three ports", || switch.ports().unwrap().len() == 3);
    // Frames to itself are learned and dropped: nothing ever queues up to
    // pause the switch's input, so only its turns keep the others going.
    let own = frame(mac(9), mac(9), 9);
    flood(&own);
    a.send(&frame(BROADCAST, mac(1), 1));
    b.send(&frame(BROADCAST, mac(2), 2));
    while a.recv().is_some() || b.recv().is_some() {}
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = std::sync::Arc::new(flood);
    let floods: Vec<_> = (0..3)
        .map(|_| {
            let (stop, flood, own) = (stop.clone(), flood.clone(), own.clone());
            std::thread::spawn(move || {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    flood(&own);
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    for round in 0..50u8 {
        let ping = frame(mac(2), mac(1), round);
        assert!(a.send_nowait(&ping), "round {round}: A's send would block");
        assert_eq!(b.recv().as_deref(), Some(&ping[..]), "round {round}");
        let pong = frame(mac(1), mac(2), round);
        assert!(b.send_nowait(&pong), "round {round}: B's send would block");
        assert_eq!(a.recv().as_deref(), Some(&pong[..]), "round {round}");
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = floods.into_iter().map(|f| f.join().unwrap()).sum();
    assert!(sent > 10_000, "the flood was real: {sent} frames");
    assert!(
        took < Duration::from_secs(5),
        "50 exchanges took {took:?} under the flood"
    );
}

#[test]
fn a_bess_port_flooding_its_own_address_does_not_starve_the_others() {
    let dir = TempDir::new("flood-bess");
    let switch = start(&dir, |_| {});
    let flooder = BessClient::connect(&switch.bess_socket());
    exchanges_go_on_under_a_flood(&switch, move |f| flooder.send(f));
}

#[test]
fn a_daemon_port_flooding_its_own_address_does_not_starve_the_others() {
    let dir = TempDir::new("flood-daemon");
    let switch = start(&dir, |_| {});
    // Its own socket: with one data socket for every port, as uml_switch
    // has, the flood would keep that socket full and A's and B's sends
    // would find no room.
    let flooder = DaemonClient::connect(&switch.control_socket());
    exchanges_go_on_under_a_flood(&switch, move |f| flooder.send(f));
}

#[test]
fn ports_beyond_the_cap_are_refused_and_counted() {
    let dir = TempDir::new("cap");
    let switch = start(&dir, |c| c.max_ports = 2);
    let a = BessClient::connect(&switch.bess_socket());
    let _b = DaemonClient::connect(&switch.control_socket());
    wait_until("two ports", || switch.ports().unwrap().len() == 2);
    // A third bess connection is closed at once: its read sees the end.
    let refused = BessClient::connect(&switch.bess_socket());
    wait_until("the refusal", || switch.counters().unwrap().too_many_ports == 1);
    assert_eq!(refused.recv(), None);
    // A third daemon request gets no answer, only the end of the stream.
    let (_data, addr) = uml_like_datagram();
    let mut control = UnixStream::connect(switch.control_socket()).unwrap();
    control.write_all(&encode_request(&addr)).unwrap();
    control.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = Vec::new();
    assert_eq!(control.read_to_end(&mut reply).unwrap(), 0);
    assert_eq!(switch.counters().unwrap().too_many_ports, 2);
    // A port that goes makes room for another.
    drop(a);
    wait_until("one port", || switch.ports().unwrap().len() == 1);
    let _c = BessClient::connect(&switch.bess_socket());
    wait_until("two ports again", || switch.ports().unwrap().len() == 2);
}

#[test]
fn bess_and_daemon_ports_share_a_switch() {
    let dir = TempDir::new("bess");
    let switch = start(&dir, |_| {});
    let d = DaemonClient::connect(&switch.control_socket());
    let b = BessClient::connect(&switch.bess_socket());
    let hello = frame(BROADCAST, mac(1), 1);
    wait_until("the bess port", || switch.ports().unwrap().len() == 2);
    b.send(&hello);
    assert_eq!(d.recv().as_deref(), Some(&hello[..]));
    let answer = frame(mac(1), mac(2), 2);
    d.send(&answer);
    assert_eq!(b.recv().as_deref(), Some(&answer[..]));
    b.send(&[0u8; 5]);
    wait_until("the runt", || switch.counters().unwrap().runt == 1);
    let kinds: Vec<PortKind> = switch.ports().unwrap().iter().map(|p| p.kind).collect();
    assert!(kinds.contains(&PortKind::Bess) && kinds.contains(&PortKind::Daemon));
    drop(b);
    wait_until("the bess port to go", || switch.ports().unwrap().len() == 1);
}

#[test]
fn a_burst_over_bess_arrives_whole_and_in_order() {
    let dir = TempDir::new("burst");
    // Room for the whole burst: no frame may be lost however late B reads.
    let switch = start(&dir, |c| c.queue_len = 4096);
    let a = BessClient::connect(&switch.bess_socket());
    let b = BessClient::connect(&switch.bess_socket());
    wait_until("both bess ports", || switch.ports().unwrap().len() == 2);
    b.send(&frame(BROADCAST, mac(2), 0));
    assert!(a.recv().is_some());
    // Far more than one batch, as fast as A can: the switch reads and sends
    // them many at a time and keeps their order.
    const FRAMES: u16 = 2000;
    let reader = std::thread::spawn(move || std::iter::from_fn(|| b.recv()).collect::<Vec<_>>());
    for i in 0..FRAMES {
        let mut f = frame(mac(2), mac(1), 0);
        f[14..16].copy_from_slice(&i.to_be_bytes());
        a.send(&f);
    }
    let got: Vec<u16> = reader
        .join()
        .unwrap()
        .iter()
        .map(|f| u16::from_be_bytes([f[14], f[15]]))
        .collect();
    assert_eq!(got, (0..FRAMES).collect::<Vec<_>>());
}

#[test]
fn attached_ports_inject_and_receive() {
    let dir = TempDir::new("attach");
    let switch = start(&dir, |_| {});
    let (tx1, rx1) = unbounded();
    let (tx2, rx2) = unbounded();
    let (tx3, rx3) = unbounded();
    let p1 = switch.attach(Some(mac(1)), false, Box::new(ToChannel(tx1))).unwrap();
    let p2 = switch.attach(Some(mac(2)), false, Box::new(ToChannel(tx2))).unwrap();
    let sniffer = switch.attach(None, true, Box::new(ToChannel(tx3))).unwrap();
    let d = DaemonClient::connect(&switch.control_socket());
    let get = |rx: &Receiver<(PortId, Vec<u8>)>| rx.recv_timeout(Duration::from_millis(300)).ok();

    // An attached port's own MAC is known before it has sent anything: a
    // frame for it goes to it (and the promiscuous port), not to everyone.
    let e = DaemonClient::connect(&switch.control_socket());
    let early = frame(mac(1), mac(5), 0);
    d.send(&early);
    assert_eq!(get(&rx1), Some((p1, early.clone())));
    assert_eq!(get(&rx3), Some((sniffer, early.clone())));
    assert_eq!(get(&rx2), None);
    assert_eq!(e.recv(), None);
    assert!(switch.mac_table().unwrap().contains(&(mac(1), p1, Duration::ZERO)));
    drop(e);

    let hello = frame(BROADCAST, mac(1), 1);
    switch.inject(p1, hello.clone()).unwrap();
    assert_eq!(get(&rx2), Some((p2, hello.clone())));
    assert_eq!(get(&rx3), Some((sniffer, hello.clone())));
    assert_eq!(d.recv().as_deref(), Some(&hello[..]));
    assert_eq!(get(&rx1), None);

    // Unicast to a learned MAC: only its port, and the promiscuous one.
    let uni = frame(mac(1), mac(2), 2);
    switch.inject(p2, uni.clone()).unwrap();
    assert_eq!(get(&rx1), Some((p1, uni.clone())));
    assert_eq!(get(&rx3), Some((sniffer, uni.clone())));
    assert_eq!(d.recv(), None);

    let ports = switch.ports().unwrap();
    assert_eq!(ports.iter().find(|p| p.id == p1).unwrap().mac, Some(mac(1)));
    assert_eq!(ports.iter().find(|p| p.id == sniffer).unwrap().mac, None);

    // A sink whose receiver is gone detaches its port.
    drop(rx2);
    switch.inject(p1, frame(BROADCAST, mac(1), 3)).unwrap();
    wait_until("the dead sink's port to go", || {
        switch.ports().unwrap().iter().all(|p| p.id != p2)
    });
    switch.detach(sniffer).unwrap();
    wait_until("the detached port to go", || switch.ports().unwrap().len() == 2);
    // Runts from attached ports are counted too.
    switch.inject(p1, vec![1, 2]).unwrap();
    wait_until("the runt", || switch.counters().unwrap().runt == 1);
}

#[test]
fn a_hub_floods_known_unicast() {
    let dir = TempDir::new("hub");
    let switch = start(&dir, |c| c.hub = true);
    let a = DaemonClient::connect(&switch.control_socket());
    let b = DaemonClient::connect(&switch.control_socket());
    let c = DaemonClient::connect(&switch.control_socket());
    a.send(&frame(BROADCAST, mac(1), 1));
    assert!(b.recv().is_some() && c.recv().is_some());
    let uni = frame(mac(1), mac(2), 2);
    b.send(&uni);
    assert_eq!(a.recv().as_deref(), Some(&uni[..]));
    assert_eq!(c.recv().as_deref(), Some(&uni[..]));
    assert_eq!(b.recv(), None);
}

#[test]
fn stopping_closes_ports_and_removes_the_sockets() {
    let dir = TempDir::new("stop");
    let switch = start(&dir, |_| {});
    let ctl = switch.control_socket();
    let bess = switch.bess_socket();
    let mut a = DaemonClient::connect(&ctl);
    let b = DaemonClient::connect(&ctl);
    // A daemon port's socket is abstract: no file, but listed while it is
    // bound, under the name the switch answered with.
    let bound = |addr: &RawUnixAddr| {
        let name = &addr[3..];
        let name = String::from_utf8_lossy(&name[..name.iter().position(|&c| c == 0).unwrap()]).into_owned();
        assert!(name.starts_with(&format!("{}/data-", ctl.parent().unwrap().display())));
        String::from_utf8_lossy(&std::fs::read("/proc/net/unix").unwrap()).contains(&format!("@{name}"))
    };
    assert!(ctl.exists() && bess.exists() && bound(&a.switch_addr) && bound(&b.switch_addr));
    // A port that goes takes its socket along.
    drop(b.control);
    wait_until("B's socket to go", || !bound(&b.switch_addr));
    switch.stop();
    assert!(!ctl.exists() && !bess.exists() && !bound(&a.switch_addr));
    let mut buf = [0u8; 8];
    assert_eq!(a.control.read(&mut buf).unwrap(), 0);
    // A second switch may bind the same directory again.
    let again = start(&dir, |_| {});
    drop(again);
}

// ---------------------------------------------------------------- guests

mod guests {
    use super::*;
    use common::{boot, boot_on, debian_kernel, Guest};
    use evum_core::BootOption;

    /// Configures `a` as 10.0.0.1 on `if_a` and `b` as 10.0.0.2 on `if_b`,
    /// checks their ports are of the kinds given, and pings b from a.
    fn ping_pair(switch: &Switch, mut a: Guest, mut b: Guest, if_a: &str, if_b: &str, kinds: [PortKind; 2]) {
        let (s, out) = a.run(&format!("ifconfig {if_a} 10.0.0.1 netmask 255.255.255.0 up"));
        assert_eq!(s, 0, "{out}");
        let (s, out) = b.run(&format!("ifconfig {if_b} 10.0.0.2 netmask 255.255.255.0 up"));
        assert_eq!(s, 0, "{out}");
        let mut got: Vec<String> = switch
            .ports()
            .unwrap()
            .iter()
            .map(|p| format!("{:?}", p.kind))
            .collect();
        let mut want: Vec<String> = kinds.iter().map(|k| format!("{k:?}")).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        let (s, out) = a.run("ping -c 3 -W 2 10.0.0.2");
        assert_eq!(s, 0, "ping failed: {out}");
        assert!(out.contains("3 packets received"), "{out}");
        let table = switch.mac_table().unwrap();
        assert!(
            table.iter().any(|e| e.0 == mac(1)) && table.iter().any(|e| e.0 == mac(2)),
            "{table:?}"
        );
    }

    #[test]
    fn two_guests_ping_over_the_daemon_transport() {
        let Some(debian) = debian_kernel() else { return };
        let dir = TempDir::new("guests-daemon");
        let switch = start(&dir, |_| {});
        let ctl = switch.control_socket();
        let eth = |n: u8| BootOption::Eth(0, format!("daemon,02:00:00:00:00:0{n},unix,{}", ctl.display()));
        let a = boot_on(&debian, eth(1));
        let b = boot_on(&debian, eth(2));
        // A daemon port exists from boot on.
        assert_eq!(switch.ports().unwrap().len(), 2);
        ping_pair(&switch, a, b, "eth0", "eth0", [PortKind::Daemon; 2]);
        wait_until("the guests' ports to go", || switch.ports().unwrap().is_empty());
    }

    #[test]
    fn two_guests_ping_over_the_bess_transport() {
        let dir = TempDir::new("guests-bess");
        let switch = start(&dir, |_| {});
        let bess = switch.bess_socket();
        let vec = |n: u8| {
            BootOption::Append(format!(
                "vec0:transport=bess,src={}/bess,dst={},mac=02:00:00:00:00:0{n}",
                evum_core::vm::options::RUNTIME_DIR,
                bess.display()
            ))
        };
        let a = boot(vec(1));
        let b = boot(vec(2));
        // The vector driver connects when the interface is brought up;
        // evum's init names it eth0.
        ping_pair(&switch, a, b, "eth0", "eth0", [PortKind::Bess; 2]);
        wait_until("the guests' ports to go", || switch.ports().unwrap().is_empty());
    }

    #[test]
    fn a_daemon_guest_pings_a_bess_guest() {
        let Some(debian) = debian_kernel() else { return };
        let dir = TempDir::new("guests-mixed");
        let switch = start(&dir, |_| {});
        let a = boot_on(
            &debian,
            BootOption::Eth(
                0,
                format!("daemon,02:00:00:00:00:01,unix,{}", switch.control_socket().display()),
            ),
        );
        let b = boot(BootOption::Append(format!(
            "vec0:transport=bess,src={}/bess,dst={},mac=02:00:00:00:00:02",
            evum_core::vm::options::RUNTIME_DIR,
            switch.bess_socket().display()
        )));
        ping_pair(&switch, a, b, "eth0", "eth0", [PortKind::Daemon, PortKind::Bess]);
    }
}
