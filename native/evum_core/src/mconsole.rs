//! Client for the User-Mode Linux management console ("mconsole").
//!
//! A running UML guest listens on a `SOCK_DGRAM` Unix socket at
//! `<uml_dir>/<umid>/mconsole`. A request is one fixed-size datagram; the
//! reply comes back to the sender's address as one or more datagrams, so the
//! client has to bind an address of its own. The wire format (host byte
//! order, from the kernel's `arch/um/include/shared/mconsole.h`):
//!
//! ```text
//! request: u32 magic (0xcafebabe); u32 version (2); u32 len; char data[512]
//! reply:   u32 err;                u32 more;        u32 len; char data[512]
//! ```
//!
//! Requests are always sent whole (524 bytes). Replies are sent as
//! `12 + len` bytes, `len` counting a trailing NUL, and a long reply is split
//! into several datagrams with `more = 1` on all but the last.

use std::io;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `MCONSOLE_MAGIC` from the kernel: the first word of every request.
const MAGIC: u32 = 0xcafe_babe;
/// `MCONSOLE_VERSION`: the protocol version every current kernel speaks.
const VERSION: u32 = 2;
/// `MCONSOLE_MAX_DATA`: size of the data field in requests and replies.
const MAX_DATA: usize = 512;
/// Three `u32` words precede the data in both directions.
const HEADER_LEN: usize = 12;
/// A request is always sent as this many bytes (the kernel's struct size).
pub const REQUEST_LEN: usize = HEADER_LEN + MAX_DATA;
/// The longest command the guest accepts: it writes a NUL at `data[len]`
/// and so rejects `len >= 512` with "Request too large".
pub const MAX_COMMAND_LEN: usize = 511;

/// How many fresh abstract names to try if one is unexpectedly taken (only
/// possible when processes in different PID namespaces share a network
/// namespace and happen to have the same pid).
const BIND_ATTEMPTS: u32 = 8;

/// Makes every client socket name unique within this process.
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(0);

/// Why a request failed. A guest-side error (`err` set) is not one of
/// these: it is a successful exchange with `Reply::ok == false`.
#[derive(Debug, thiserror::Error)]
pub enum MconsoleError {
    #[error("command is {0} bytes, mconsole takes at most 511")]
    CommandTooLong(usize),
    /// The guest cuts a command at its first NUL, so a command containing
    /// one would silently run as something else.
    #[error("command contains a NUL byte at offset {0}")]
    NulInCommand(usize),
    #[error("mconsole socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no reply from mconsole within {0:?}")]
    Timeout(Duration),
    #[error("malformed mconsole reply: {0}")]
    BadReply(String),
}

/// A reply: `ok` is false when the guest set `err`; `text` is the
/// concatenated data with trailing NULs removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    pub text: String,
}

/// Builds the 524-byte request datagram for `command`.
///
/// The whole struct is sent (zero-padded) because that is what the guest's
/// `recvfrom` expects; `len` excludes any NUL since the guest adds its own.
pub fn encode_request(command: &str) -> Result<[u8; REQUEST_LEN], MconsoleError> {
    let bytes = command.as_bytes();
    if bytes.len() > MAX_COMMAND_LEN {
        return Err(MconsoleError::CommandTooLong(bytes.len()));
    }
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(MconsoleError::NulInCommand(at));
    }
    let mut buf = [0u8; REQUEST_LEN];
    buf[0..4].copy_from_slice(&MAGIC.to_ne_bytes());
    buf[4..8].copy_from_slice(&VERSION.to_ne_bytes());
    // Cannot truncate: the length was checked against 511 above.
    buf[8..12].copy_from_slice(&(bytes.len() as u32).to_ne_bytes());
    buf[HEADER_LEN..HEADER_LEN + bytes.len()].copy_from_slice(bytes);
    Ok(buf)
}

/// Splits one reply datagram into `(err, more, data)`, where `data` is the
/// `len` bytes the guest declared (its trailing NUL included).
///
/// The length is checked against both the protocol limit and the bytes
/// actually received, so a short or corrupt datagram is an error rather
/// than an out-of-bounds read.
pub fn decode_reply(datagram: &[u8]) -> Result<(bool, bool, &[u8]), MconsoleError> {
    let word = |i: usize| -> Result<u32, MconsoleError> {
        datagram
            .get(i * 4..i * 4 + 4)
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map(u32::from_ne_bytes)
            .ok_or_else(|| {
                MconsoleError::BadReply(format!(
                    "{} bytes is shorter than the {HEADER_LEN}-byte header",
                    datagram.len()
                ))
            })
    };
    let (err, more, len) = (word(0)?, word(1)?, word(2)?);
    // A full chunk is 511 bytes of text plus its NUL, so 512 is legal here
    // (unlike in requests).
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_DATA)
        .ok_or_else(|| MconsoleError::BadReply(format!("len {len} exceeds {MAX_DATA}")))?;
    let data = datagram.get(HEADER_LEN..HEADER_LEN + len).ok_or_else(|| {
        MconsoleError::BadReply(format!(
            "len {len} but only {} data bytes received",
            datagram.len() - HEADER_LEN
        ))
    })?;
    Ok((err != 0, more != 0, data))
}

/// Sends one command (e.g. "version", "sysrq s", "config eth0") to the
/// mconsole socket at `socket` (a filesystem path like
/// `<uml_dir>/<umid>/mconsole`) and waits for the whole reply.
///
/// `timeout` bounds the whole exchange, sending included: a stopped or hung
/// guest stops draining its socket, and a full datagram queue would
/// otherwise block the send forever. A fresh client socket per call means a
/// late reply to an earlier, timed-out request can never be mistaken for
/// this one's.
///
/// `halt` and `reboot` may get no reply if the guest dies first (this
/// returns `Timeout`, or `Io` if the socket is already gone); interpreting
/// that is left to the caller.
pub fn request(socket: &Path, command: &str, timeout: Duration) -> Result<Reply, MconsoleError> {
    // `None` only for absurd timeouts (near `Duration::MAX`) that would
    // overflow `Instant`: those are treated as "wait without a deadline".
    let deadline = Instant::now().checked_add(timeout);
    let packet = encode_request(command)?;
    let io_err = |source: io::Error| MconsoleError::Io {
        path: socket.to_path_buf(),
        source,
    };

    let client = bind_client().map_err(io_err)?;
    let call = Deadline {
        sock: &client,
        path: socket,
        at: deadline,
        timeout,
    };
    // Through an open file of the socket: the path may be longer than an
    // AF_UNIX address holds (a jailed VM's is under /proc/<pid>/root).
    let n = call.run(|c| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(socket)?;
        c.send_to(&packet, format!("/proc/self/fd/{}", file.as_raw_fd()))
    })?;
    if n != packet.len() {
        // Datagram sends are all-or-nothing; this is only defensive.
        return Err(io_err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {n} of {} request bytes", packet.len()),
        )));
    }

    let mut ok = true;
    let mut text = Vec::new();
    // One spare byte past the largest legal reply: a datagram that fills it
    // is oversized, and the truncation would otherwise go unnoticed.
    let mut buf = [0u8; REQUEST_LEN + 1];
    loop {
        let n = call.run(|c| c.recv(&mut buf))?;
        if n > REQUEST_LEN {
            return Err(MconsoleError::BadReply(format!(
                "datagram longer than {REQUEST_LEN} bytes"
            )));
        }
        let (err, more, data) = decode_reply(&buf[..n])?;
        // The guest only sets `err` on the first chunk; honour it anywhere.
        ok &= !err;
        text.extend_from_slice(trim_nuls(data));
        if !more {
            break;
        }
    }
    // Decode only after joining: the guest splits at byte 511 regardless
    // of UTF-8 boundaries. Lossy, because `proc` can return any bytes.
    let text = String::from_utf8_lossy(&text).into_owned();
    Ok(Reply { ok, text })
}

/// Binds a datagram socket to a unique abstract address, which the kernel
/// frees with the socket, so no file is ever left behind.
fn bind_client() -> io::Result<UnixDatagram> {
    let mut last_err = None;
    for _ in 0..BIND_ATTEMPTS {
        let n = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
        let name = format!("evum-mconsole-{}-{n}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        match UnixDatagram::bind_addr(&addr) {
            Ok(sock) => return Ok(sock),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

/// Runs blocking socket calls against one overall deadline.
struct Deadline<'a> {
    sock: &'a UnixDatagram,
    /// The mconsole socket, for error messages.
    path: &'a Path,
    /// `None` when `timeout` is too large to add to `Instant::now()`.
    at: Option<Instant>,
    /// The caller's budget, reported in `Timeout`.
    timeout: Duration,
}

impl Deadline<'_> {
    /// Calls `f` with the socket's read and write timeouts set to whatever
    /// is left of the budget, retrying on `EINTR` (with the remaining time
    /// recomputed, so signals cannot stretch the total).
    fn run<T>(&self, mut f: impl FnMut(&UnixDatagram) -> io::Result<T>) -> Result<T, MconsoleError> {
        let io_err = |source| MconsoleError::Io {
            path: self.path.to_path_buf(),
            source,
        };
        loop {
            let left = self
                .at
                .map_or(self.timeout, |at| at.saturating_duration_since(Instant::now()));
            // To the OS a zero timeout means "block forever", so std
            // rejects it; an exhausted budget is simply a timeout.
            if left.is_zero() {
                return Err(MconsoleError::Timeout(self.timeout));
            }
            self.sock
                .set_read_timeout(Some(left))
                .and_then(|()| self.sock.set_write_timeout(Some(left)))
                .map_err(io_err)?;
            match f(self.sock) {
                Ok(v) => return Ok(v),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An expired socket timeout surfaces as EAGAIN, which std
                // maps to `WouldBlock`.
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(MconsoleError::Timeout(self.timeout))
                }
                Err(e) => return Err(io_err(e)),
            }
        }
    }
}

/// Drops the NUL(s) the guest appends to each chunk.
fn trim_nuls(data: &[u8]) -> &[u8] {
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &data[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(err: u32, more: u32, len: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&err.to_ne_bytes());
        v.extend_from_slice(&more.to_ne_bytes());
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn request_header_bytes() {
        let buf = encode_request("version").expect("valid command");
        assert_eq!(buf.len(), 524);
        assert_eq!(&buf[0..4], &0xcafe_babe_u32.to_ne_bytes());
        assert_eq!(&buf[4..8], &2u32.to_ne_bytes());
        assert_eq!(&buf[8..12], &7u32.to_ne_bytes());
        assert_eq!(&buf[12..19], b"version");
        assert!(buf[19..].iter().all(|&b| b == 0));
        #[cfg(target_endian = "little")]
        assert_eq!(&buf[0..12], &[0xbe, 0xba, 0xfe, 0xca, 2, 0, 0, 0, 7, 0, 0, 0]);
    }

    #[test]
    fn request_length_limits() {
        let max = "x".repeat(MAX_COMMAND_LEN);
        let buf = encode_request(&max).expect("511 bytes fits");
        assert_eq!(&buf[8..12], &511u32.to_ne_bytes());
        assert_eq!(buf[523], 0, "the last byte stays free for the guest's NUL");
        assert!(matches!(
            encode_request(&"x".repeat(512)),
            Err(MconsoleError::CommandTooLong(512))
        ));
        // Bytes, not chars, are what count.
        assert!(matches!(
            encode_request(&"é".repeat(256)),
            Err(MconsoleError::CommandTooLong(512))
        ));
        assert!(encode_request("").is_ok());
    }

    #[test]
    fn request_rejects_nul() {
        assert!(matches!(encode_request("halt\0x"), Err(MconsoleError::NulInCommand(4))));
    }

    #[test]
    fn reply_decodes() {
        let d = reply(0, 0, 3, b"hi\0");
        assert_eq!(decode_reply(&d).expect("valid"), (false, false, &b"hi\0"[..]));
        let d = reply(1, 1, 1, b"\0");
        assert_eq!(decode_reply(&d).expect("valid"), (true, true, &b"\0"[..]));
        // Trailing bytes beyond `len` are ignored, as the kernel's struct
        // may be sent whole by other implementations.
        let d = reply(0, 0, 2, &[b'a', 0, 0xff, 0xff]);
        assert_eq!(decode_reply(&d).expect("valid").2, b"a\0");
    }

    #[test]
    fn reply_full_chunk_is_legal() {
        let data = [b'a'; 512];
        let d = reply(0, 1, 512, &data);
        assert_eq!(decode_reply(&d).expect("valid").2.len(), 512);
    }

    #[test]
    fn reply_too_short() {
        assert!(matches!(decode_reply(&[]), Err(MconsoleError::BadReply(_))));
        assert!(matches!(decode_reply(&[0; 11]), Err(MconsoleError::BadReply(_))));
    }

    #[test]
    fn reply_len_beyond_datagram() {
        let d = reply(0, 0, 10, b"short\0");
        assert!(matches!(decode_reply(&d), Err(MconsoleError::BadReply(_))));
    }

    #[test]
    fn reply_len_beyond_protocol() {
        let d = reply(0, 0, 513, &[0; 513]);
        assert!(matches!(decode_reply(&d), Err(MconsoleError::BadReply(_))));
        let d = reply(0, 0, u32::MAX, &[]);
        assert!(matches!(decode_reply(&d), Err(MconsoleError::BadReply(_))));
    }

    #[test]
    fn nul_trimming() {
        assert_eq!(trim_nuls(b"abc\0"), b"abc");
        assert_eq!(trim_nuls(b"abc\0\0"), b"abc");
        assert_eq!(trim_nuls(b"\0"), b"");
        assert_eq!(trim_nuls(b""), b"");
        assert_eq!(trim_nuls(b"a\0b"), b"a\0b");
    }

    #[test]
    fn too_long_command_fails_before_any_io() {
        let r = request(
            Path::new("/nonexistent/mconsole"),
            &"x".repeat(600),
            Duration::from_secs(1),
        );
        assert!(matches!(r, Err(MconsoleError::CommandTooLong(600))));
    }

    #[test]
    fn huge_timeout_does_not_overflow() {
        let r = request(Path::new("/nonexistent/mconsole"), "version", Duration::MAX);
        assert!(matches!(r, Err(MconsoleError::Io { .. })), "got {r:?}");
    }

    #[test]
    fn zero_timeout_is_a_timeout() {
        let r = request(Path::new("/nonexistent/mconsole"), "version", Duration::ZERO);
        assert!(matches!(r, Err(MconsoleError::Timeout(_))), "got {r:?}");
    }

    #[test]
    fn missing_socket_is_io_error() {
        let path = Path::new("/nonexistent/evum/mconsole");
        match request(path, "version", Duration::from_secs(1)) {
            Err(MconsoleError::Io { path: p, source }) => {
                assert_eq!(p, path);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected Io error, got {other:?}"),
        }
    }

    /// A fake guest that answers in two chunks, splitting a UTF-8 character,
    /// checks reassembly and the `err` flag without booting UML.
    #[test]
    fn multi_chunk_reply_from_fake_guest() {
        let dir = std::env::temp_dir().join(format!("evum-mconsole-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("mconsole");
        let server = UnixDatagram::bind(&path).expect("bind fake guest");
        let guest = std::thread::spawn(move || {
            let mut buf = [0u8; 600];
            let (n, from) = server.recv_from(&mut buf).expect("request");
            assert_eq!(n, 524);
            assert!(from.as_abstract_name().is_some(), "client binds an abstract name");
            let send = |d: Vec<u8>| server.send_to_addr(&d, &from).expect("send");
            // "é" is 0xc3 0xa9: split it across the chunks.
            send(reply(1, 1, 3, &[b'a', 0xc3, 0]));
            send(reply(0, 0, 3, &[0xa9, b'b', 0]));
        });
        let r = request(&path, "whatever", Duration::from_secs(5));
        guest.join().expect("fake guest thread");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            r.expect("reply"),
            Reply {
                ok: false,
                text: "aéb".to_string()
            }
        );
    }

    #[test]
    fn silent_peer_times_out() {
        let dir = std::env::temp_dir().join(format!("evum-mconsole-silent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("mconsole");
        let _server = UnixDatagram::bind(&path).expect("bind silent peer");
        let start = Instant::now();
        let r = request(&path, "version", Duration::from_millis(200));
        let took = start.elapsed();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(r, Err(MconsoleError::Timeout(_))), "got {r:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
}
