//! The few AF_UNIX calls std and mio do not offer: SOCK_SEQPACKET, and
//! datagrams to and from raw 110-byte addresses (UML's abstract names carry
//! bytes std would not keep).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::daemon::{self, RawUnixAddr, SOCKADDR_UN_LEN};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn new_socket(kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; a non-negative result is a fresh
    // fd that nothing else owns, so OwnedFd may take it.
    let fd = check(unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(addr: &RawUnixAddr) -> libc::sockaddr_un {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = u16::from_ne_bytes([addr[0], addr[1]]);
    for (dst, src) in sa.sun_path.iter_mut().zip(&addr[2..]) {
        *dst = *src as libc::c_char;
    }
    sa
}

/// Binds or connects (`op`) `fd` to `addr` with the full 110-byte length
/// UML uses (for an abstract name the length is part of the name).
fn apply(
    fd: &OwnedFd,
    addr: &RawUnixAddr,
    op: unsafe extern "C" fn(libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::c_int,
) -> io::Result<()> {
    let sa = sockaddr(addr);
    // SAFETY: `op` is bind or connect; `sa` is a valid sockaddr_un that
    // outlives the call, and the length passed is its size.
    check(unsafe {
        op(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_un as *const libc::sockaddr,
            SOCKADDR_UN_LEN as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// A nonblocking SOCK_SEQPACKET listener bound at `path`.
pub fn seqpacket_listener(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let addr = daemon::path_address(path.as_os_str().as_bytes())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "socket path too long"))?;
    let fd = new_socket(libc::SOCK_SEQPACKET)?;
    apply(&fd, &addr, libc::bind)?;
    // SAFETY: no pointers.
    check(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
    Ok(fd)
}

/// Accepts one connection, nonblocking. `WouldBlock` when there is none.
pub fn accept(listener: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed when the peer address is
    // not wanted; the result is a fresh fd we own.
    let fd = check(unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Most frames one [`send_many`] call takes.
pub const SEND_BATCH: usize = 32;

/// Sends up to [`SEND_BATCH`] frames on a connected socket in one sendmmsg,
/// without blocking and without SIGPIPE. Returns how many went out (at least
/// one); `WouldBlock` when not even the first fitted. An error on a later
/// frame ends the call early with the count so far: the next call reports it.
pub fn send_many(fd: RawFd, frames: &[&[u8]]) -> io::Result<usize> {
    let n = frames.len().min(SEND_BATCH);
    if n == 1 {
        // The common case when traffic is light (a ping, an ACK): no
        // message vectors to set up.
        let frame = frames[0];
        // SAFETY: the frame is borrowed for the whole call and only read.
        let sent = unsafe {
            libc::send(
                fd,
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        return if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(1)
        };
    }
    // SAFETY: iovec and mmsghdr are plain old data; zeroes are valid.
    let mut iovs: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
    for (i, frame) in frames[..n].iter().enumerate() {
        iovs[i] = libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        };
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: each of the first `n` headers points at its own iovec, which
    // points at a frame borrowed for the whole call; the kernel only reads
    // them (and writes msg_len in the headers, which are ours).
    let sent = unsafe {
        libc::sendmmsg(
            fd,
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    check(sent).map(|sent| sent as usize)
}

/// A daemon port's own datagram socket, bound to `local` (the address the
/// switch gives the VM in its reply). [`connect`] then ties it to the VM.
pub fn bound_datagram(local: &RawUnixAddr) -> io::Result<OwnedFd> {
    let fd = new_socket(libc::SOCK_DGRAM)?;
    apply(&fd, local, libc::bind)?;
    Ok(fd)
}

/// The uid and pid of the process at the other end of a connected socket.
pub fn peer_cred(fd: RawFd) -> io::Result<(u32, i32)> {
    // SAFETY: ucred is plain old data; getsockopt writes at most `len` bytes
    // into it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok((cred.uid, cred.pid))
}

/// The file a connected socket's peer is bound to, if it is bound to one.
pub fn peer_path(fd: RawFd) -> Option<std::path::PathBuf> {
    let addr: nix::sys::socket::UnixAddr = nix::sys::socket::getpeername(fd).ok()?;
    addr.path().map(Path::to_path_buf)
}

/// Connects a port's datagram socket to `vm` as [`connect`] does, if `vm`
/// belongs to `owner`: an abstract name is taken as it is, but a socket
/// file must be `owner`'s own. The file is opened without following a last
/// symlink and checked, then connected to through that open file, so that
/// what is connected is what was checked: a client cannot point the switch
/// at another's socket (a VM's mconsole, a host service's).
pub fn connect_owned_by(fd: &OwnedFd, vm: &RawUnixAddr, owner: u32) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    if vm[2] == 0 {
        return connect(fd, vm);
    }
    let end = vm[2..].iter().position(|&b| b == 0).map_or(vm.len(), |n| n + 2);
    let path = std::ffi::OsStr::from_bytes(&vm[2..end]);
    let file = std::fs::OpenOptions::new()
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .read(true)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_socket() || meta.uid() != owner {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not a socket of the requester's own",
        ));
    }
    let through = format!("/proc/self/fd/{}", file.as_raw_fd());
    let addr = daemon::path_address(through.as_bytes()).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    connect(fd, &addr)
}

/// Connects a port's datagram socket to `vm`, the address the VM sends
/// frames from and receives them on. Being connected, the socket takes
/// datagrams from `vm` alone (the kernel refuses anyone else's with EPERM),
/// and polls writable only when the VM's receive queue has room, which an
/// unconnected socket cannot tell.
pub fn connect(fd: &OwnedFd, vm: &RawUnixAddr) -> io::Result<()> {
    apply(fd, vm, libc::connect)
}

/// Frames received many at a time (recvmmsg) on a connected socket (a
/// daemon port's datagram socket, a bess connection): one system call for
/// up to [`RecvBatch::SIZE`] frames, where recv takes one each.
pub struct RecvBatch {
    bufs: Box<[[u8; RecvBatch::BUF]]>,
    /// Only read through `msgs`, which point into it.
    _iovs: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub const SIZE: usize = 32;
    /// Room per frame: more than any frame the switch forwards, so that an
    /// oversized one shows by its length (MSG_TRUNC reports the whole).
    pub const BUF: usize = 2048;

    pub fn new() -> RecvBatch {
        let mut bufs = vec![[0u8; Self::BUF]; Self::SIZE].into_boxed_slice();
        let mut iovs: Box<[libc::iovec]> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: Self::BUF,
            })
            .collect();
        let msgs = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain old data; all zeroes is valid.
                let mut msg = unsafe { std::mem::zeroed::<libc::mmsghdr>() };
                msg.msg_hdr.msg_iov = iov as *mut libc::iovec;
                msg.msg_hdr.msg_iovlen = 1;
                msg
            })
            .collect();
        RecvBatch {
            bufs,
            _iovs: iovs,
            msgs,
        }
    }

    /// Receives what is waiting, up to SIZE frames; returns how many.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for msg in self.msgs.iter_mut() {
            msg.msg_len = 0;
        }
        // SAFETY: every mmsghdr points at its own iovec and buffer, heap
        // allocations owned by `self` that do not move while it lives.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                Self::SIZE as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        check(n).map(|n| n as usize)
    }

    /// Frame `i` of the last [`recv`](Self::recv): its full length (which
    /// may exceed the bytes kept) and its bytes.
    pub fn frame(&self, i: usize) -> (usize, &[u8]) {
        let len = self.msgs[i].msg_len as usize;
        (len, &self.bufs[i][..len.min(Self::BUF)])
    }
}
