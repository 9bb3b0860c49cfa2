//! Checks the mconsole client against a real UML guest, using Debian's
//! `uml_mconsole` (uml-utilities) as a reference peer for the same commands.
//!
//! The guest is booted directly with `std::process::Command` so this test
//! does not depend on the crate's process-management code.

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use evum_core::mconsole::{self, MconsoleError, Reply};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

const TIMEOUT: Duration = Duration::from_secs(5);
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

static NEXT: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temp dir removed on drop, so a failing assertion leaves nothing behind.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(unique("evum-test"));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A booted guest. Dropping it kills UML's whole process group (UML forks
/// helper and userspace processes) and reaps the main process.
struct Guest {
    child: Child,
    socket: PathBuf,
    reaped: bool,
}

impl Drop for Guest {
    fn drop(&mut self) {
        // The child was spawned with process_group(0): its pid is the pgid.
        // Kill the group even after the leader was reaped, in case helpers
        // outlived it.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        if !self.reaped {
            let _ = self.child.wait();
        }
    }
}

/// Builds a busybox initramfs whose init prints READY once /proc is mounted.
fn build_initrd(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir in initrd root");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy static /bin/busybox");
    let init = root.join("init");
    std::fs::write(
        &init,
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox echo READY\n\
         exec /bin/busybox sleep 1000\n",
    )
    .expect("write init");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).expect("chmod init");

    let cpio = dir.join("initrd.cpio");
    let out = std::fs::File::create(&cpio).expect("create cpio");
    let mut cmd = Command::new("busybox")
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("run busybox cpio");
    {
        use std::io::Write;
        let mut stdin = cmd.stdin.take().expect("cpio stdin");
        stdin
            .write_all(b".\nbin\nbin/busybox\ninit\nproc\nsys\ndev\ntmp\n")
            .expect("feed cpio file list");
    }
    assert!(cmd.wait().expect("wait cpio").success(), "busybox cpio failed");
    cpio
}

fn boot(dir: &Path) -> Guest {
    let cpio = build_initrd(dir);
    let umid = unique("evum-mc");
    let mut child = Command::new(common::kernel())
        .args([
            "mem=64M".to_string(),
            format!("initrd={}", cpio.display()),
            "init=/init".to_string(),
            "quiet".to_string(),
            format!("umid={umid}"),
            format!("uml_dir={}", dir.display()),
            "con0=null,fd:1".to_string(),
            "con=null".to_string(),
            "lpj=4000000".to_string(),
            format!("hostfs={}/none", dir.display()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn linux (UML)");
    let stdout = child.stdout.take().expect("piped stdout");
    let guest = Guest {
        child,
        socket: dir.join(&umid).join("mconsole"),
        reaped: false,
    };

    // Keep draining stdout after READY so the guest never blocks on a full
    // pipe; the thread ends at EOF when UML exits.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) if l.trim_end() == "READY" => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    rx.recv_timeout(BOOT_TIMEOUT)
        .expect("guest did not print READY in time");
    assert!(
        guest.socket.exists(),
        "no mconsole socket at {}",
        guest.socket.display()
    );
    guest
}

/// Runs Debian's uml_mconsole against the same socket; returns its stdout
/// and whether it exited successfully.
fn peer(socket: &Path, command: &str) -> (String, bool) {
    let out = Command::new("uml_mconsole")
        .arg(socket)
        .args(command.split(' '))
        .stdin(Stdio::null())
        .output()
        .expect("run /usr/bin/uml_mconsole");
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.success())
}

/// What uml_mconsole prints for a reply: "OK "/"ERR ", the data, "\n".
fn as_peer_prints(r: &Reply) -> String {
    format!("{} {}\n", if r.ok { "OK" } else { "ERR" }, r.text)
}

#[test]
fn against_real_guest() {
    let dir = TempDir::new();
    let mut guest = boot(&dir.0);
    let sock = guest.socket.clone();

    // version: parity with the reference client.
    let version = mconsole::request(&sock, "version", TIMEOUT).expect("version");
    assert!(version.ok, "{version:?}");
    // `Linux (none) 7.2.13 #1 SMP ... x86_64`, as uname -a prints it.
    assert!(
        version.text.starts_with("Linux ") && version.text.ends_with("x86_64"),
        "{version:?}"
    );
    let (printed, ok) = peer(&sock, "version");
    assert!(ok);
    assert_eq!(as_peer_prints(&version), printed);

    // help spans several datagrams: reassembly must match the peer's.
    let help = mconsole::request(&sock, "help", TIMEOUT).expect("help");
    assert!(help.ok);
    assert!(
        help.text.len() > 511,
        "help fits one datagram? {} bytes",
        help.text.len()
    );
    assert!(help.text.contains("sysrq") && help.text.contains("proc"), "{help:?}");
    assert!(!help.text.contains('\0'));
    // uml_mconsole then appends help for its own local commands.
    let printed = peer(&sock, "help").0;
    let local = printed
        .strip_prefix(&as_peer_prints(&help))
        .unwrap_or_else(|| panic!("peer printed {printed:?}, we got {help:?}"));
    assert!(local.starts_with("Additional local mconsole commands:"), "{local:?}");

    // proc meminfo: several chunks, values change between calls.
    let meminfo = mconsole::request(&sock, "proc meminfo", TIMEOUT).expect("proc meminfo");
    assert!(meminfo.ok);
    assert!(meminfo.text.contains("MemTotal:"), "{meminfo:?}");
    assert!(meminfo.text.contains("Percpu:"), "lost the tail: {meminfo:?}");

    // Unknown command: err set, and the peer agrees.
    let bogus = mconsole::request(&sock, "no-such-command", TIMEOUT).expect("bogus");
    assert!(!bogus.ok, "{bogus:?}");
    assert_eq!(bogus.text, "Unknown command");
    let (printed, ok) = peer(&sock, "no-such-command");
    assert!(!ok);
    assert_eq!(as_peer_prints(&bogus), printed);

    // stop/go: a stopped guest still serves mconsole (inline, from the
    // stop handler's own loop) until it gets `go`.
    let stop = mconsole::request(&sock, "stop", TIMEOUT).expect("stop");
    assert_eq!(
        stop,
        Reply {
            ok: true,
            text: "stopped".into()
        }
    );
    let again = mconsole::request(&sock, "stop", TIMEOUT).expect("stop again");
    assert_eq!(
        again,
        Reply {
            ok: false,
            text: "Already stopped".into()
        }
    );
    assert_eq!(
        mconsole::request(&sock, "version", TIMEOUT).expect("version while stopped"),
        version
    );
    let go = mconsole::request(&sock, "go", TIMEOUT).expect("go");
    assert!(go.ok, "{go:?}");

    // Too long: refused locally, never sent.
    assert!(matches!(
        mconsole::request(&sock, &"x".repeat(600), TIMEOUT),
        Err(MconsoleError::CommandTooLong(600))
    ));

    // Concurrent clients each get their own reply.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || mconsole::request(&sock, "version", TIMEOUT))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().expect("thread").expect("concurrent version"), version);
    }

    // halt: the reply (if any) is the caller's business; the process must
    // exit and be reaped promptly.
    let start = Instant::now();
    let halt = mconsole::request(&sock, "halt", TIMEOUT);
    eprintln!("halt replied {halt:?} after {:?}", start.elapsed());
    match &halt {
        Ok(r) => assert!(r.ok, "{r:?}"),
        Err(MconsoleError::Timeout(_)) | Err(MconsoleError::Io { .. }) => {}
        Err(e) => panic!("unexpected halt error: {e}"),
    }
    let status = loop {
        if let Some(status) = guest.child.try_wait().expect("try_wait") {
            guest.reaped = true;
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "guest still running 5 s after halt"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "guest exited after {:?}: code {:?} signal {:?}",
        start.elapsed(),
        status.code(),
        status.signal()
    );
    // UML removes its umid directory (socket and pid file) on a clean halt.
    assert!(!sock.exists(), "mconsole socket left after halt");
    drop(guest);

    // The client binds abstract addresses, so only our own files remain.
    let mut left: Vec<_> = std::fs::read_dir(&dir.0)
        .expect("read temp dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    left.sort();
    assert_eq!(left, ["initrd.cpio", "root"]);
}

#[test]
fn missing_socket_is_io_error() {
    let dir = TempDir::new();
    let path = dir.0.join("no-such-umid").join("mconsole");
    match mconsole::request(&path, "version", TIMEOUT) {
        Err(MconsoleError::Io { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected Io error, got {other:?}"),
    }
}
