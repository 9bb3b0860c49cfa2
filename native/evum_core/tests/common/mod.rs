//! Real busybox guests for the integration tests: boot one with a network
//! option, run commands through its command channel, kill it when dropped.

#![allow(dead_code)] // each test crate uses what it needs

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use std::os::fd::{AsRawFd, OwnedFd};

use crossbeam_channel::{unbounded, Receiver, Sender};
use evum_core::{image, vm::control, BootOption, ControlEvent, Exit, Vm, VmConfig, VmEvents};
use nix::sys::socket::{
    connect, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::time::{TimeVal, TimeValLike};

/// The UML kernel the tests boot: `EVUM_KERNEL` if set, else evum's own
/// from the default cache (`make deps` builds it).
pub fn kernel() -> PathBuf {
    if let Some(kernel) = std::env::var_os("EVUM_KERNEL") {
        return kernel.into();
    }
    let cache = evum_core::kernel::default_cache_dir();
    evum_core::kernel::cached(&cache)
        .unwrap_or_else(|| panic!("evum's kernel is not built in {}: run `make deps`", cache.display()))
}

/// The switch group the tests' switches and guests share when the tests run
/// as root (guests then run as users of their own, see vm::jail), held for
/// the whole test binary.
pub fn switch_group() -> Option<u32> {
    static GROUP: std::sync::OnceLock<Option<evum_core::vm::jail::HeldId>> = std::sync::OnceLock::new();
    GROUP
        .get_or_init(|| evum_core::vm::jail::jailed().then(|| evum_core::vm::jail::take_id().expect("a switch group")))
        .as_ref()
        .map(|held| held.id)
}

/// A switch's configuration as evum makes it: in `dir`, open to the tests'
/// switch group.
pub fn switch_config(dir: &Path) -> evum_core::switch::SwitchConfig {
    let mut config = evum_core::switch::SwitchConfig::new(dir);
    config.group = switch_group();
    config
}

/// A fresh directory under cargo's test directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Events(Sender<ControlEvent>);

impl VmEvents for Events {
    fn console_line(&mut self, _line: &[u8]) {}
    fn control(&mut self, event: ControlEvent) {
        let _ = self.0.send(event);
    }
    fn exited(&mut self, _exit: Exit) {}
}

pub struct Guest {
    vm: Vm,
    rx: Receiver<ControlEvent>,
    next: u64,
}

/// Debian's UML 6.1, where it can run: it has the daemon transport that
/// evum's kernel lacks, but its fixed-size FPU state does not fit an AMX
/// host's XSAVE area, where it dies at the first guest process.
pub fn debian_kernel() -> Option<PathBuf> {
    let kernel = PathBuf::from("/usr/bin/linux");
    let amx = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" amx_tile"));
    let reason = if !kernel.exists() {
        "it is not installed"
    } else if amx {
        "this host has AMX"
    } else {
        return Some(kernel);
    };
    eprintln!("skipped: Debian's 6.1 UML cannot run here ({reason})");
    None
}

/// Boots evum's busybox image on evum's kernel with `net` and waits until
/// it is up.
pub fn boot(net: BootOption) -> Guest {
    boot_on(&kernel(), net)
}

/// Boots evum's busybox image on `kernel` with `net`.
pub fn boot_on(kernel: &Path, net: BootOption) -> Guest {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("image-cache");
    let image = image::busybox_image(Path::new("/bin/busybox"), &cache).expect("image");
    let (tx, rx) = unbounded();
    let config = VmConfig {
        kernel: kernel.to_path_buf(),
        options: image.boot_options().into_iter().chain([net]).collect(),
        umid: None,
        uml_dir: None,
        groups: switch_group().into_iter().collect(),
    };
    let vm = evum_core::start(config, Box::new(Events(tx))).expect("start");
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(ControlEvent::Ready) => break,
            Ok(_) => {}
            Err(_) => panic!("the guest did not come up"),
        }
    }
    Guest { vm, rx, next: 1 }
}

impl Guest {
    /// Runs a shell command in the guest: its exit status and output.
    pub fn run(&mut self, cmd: &str) -> (i32, String) {
        let id = self.next;
        self.next += 1;
        self.vm
            .handle
            .write_control(control::run_request(id, cmd.as_bytes()))
            .unwrap();
        loop {
            match self.rx.recv_timeout(Duration::from_secs(30)) {
                Ok(ControlEvent::Result { id: i, status, output }) if i == id => {
                    return (status, String::from_utf8_lossy(&output).into_owned())
                }
                Ok(_) => {}
                Err(_) => panic!("no result for {cmd}"),
            }
        }
    }

    /// Runs a command that must succeed; its output.
    pub fn ok(&mut self, cmd: &str) -> String {
        let (status, out) = self.run(cmd);
        assert_eq!(status, 0, "{cmd}: {out}");
        out
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.vm.handle.signal(evum_core::vm::io_loop::Signal::SIGKILL, true);
    }
}

pub const BROADCAST: [u8; 6] = [0xff; 6];

/// A test MAC: 02:00:00:00:00:nn.
pub fn mac(n: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, n]
}

/// A 60-byte frame of the local experimental ethertype 0x88b5, its payload
/// `tag` repeated.
pub fn frame(dst: [u8; 6], src: [u8; 6], tag: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend(std::iter::repeat_n(tag, 46));
    f
}

/// A raw client of a switch's bess socket, as UML's vector driver is one:
/// a SOCK_SEQPACKET connection, one frame per message. Receives time out
/// after 300 ms.
pub struct BessClient(OwnedFd);

impl BessClient {
    pub fn connect(path: &Path) -> BessClient {
        Self::connect_from(path, None)
    }

    /// Connects from a socket bound at `name`, as a VM's vector driver
    /// binds its end (`src=`): evum's VMs name theirs after their MAC.
    pub fn connect_as(path: &Path, name: &Path) -> BessClient {
        Self::connect_from(path, Some(name))
    }

    fn connect_from(path: &Path, name: Option<&Path>) -> BessClient {
        let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).expect("socket");
        if let Some(name) = name {
            nix::sys::socket::bind(fd.as_raw_fd(), &UnixAddr::new(name).expect("name")).expect("bind");
        }
        connect(fd.as_raw_fd(), &UnixAddr::new(path).expect("path")).expect("connect");
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::milliseconds(300)).expect("SO_RCVTIMEO");
        BessClient(fd)
    }

    pub fn send(&self, frame: &[u8]) {
        let n = send(self.0.as_raw_fd(), frame, MsgFlags::empty()).expect("send");
        assert_eq!(n, frame.len());
    }

    /// The same connection, for another thread.
    pub fn clone_fd(&self) -> BessClient {
        BessClient(self.0.try_clone().expect("dup"))
    }

    /// Sends without waiting: false when the switch's socket has no room.
    pub fn send_nowait(&self, frame: &[u8]) -> bool {
        send(self.0.as_raw_fd(), frame, MsgFlags::MSG_DONTWAIT).is_ok()
    }

    /// Every frame that arrives until the timeout.
    pub fn drain(&self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.recv()).collect()
    }

    /// The next frame, or None after the timeout.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        match recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) if n > 0 => Some(buf[..n].to_vec()),
            _ => None,
        }
    }
}
