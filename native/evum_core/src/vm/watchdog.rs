//! The watchdog: a tiny shell process that outlives evum only to clean up.
//!
//! UML's parent-death signal (SIGTERM) normally takes a whole VM down when
//! the BEAM dies, but not always: a UML main process that dies before its
//! helpers leaves them running, holding memory, forever. So evum starts one
//! watchdog per program, in a session of its own, and tells it on a pipe
//! which process groups and runtime directories are live. When the pipe
//! closes (the program exited or was killed, however brutally), the watchdog
//! kills every group still listed, removes the directories and the BEAM's
//! cgroup of VMs (see [`super::cpu_group`]), and exits.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

// add GROUP DIR: a VM (kill the group, remove the dir); del GROUP: it is gone.
// keep ID DIR: a directory only (a switch's); drop ID: it is gone.
// cgroup ID DIR: the BEAM's cgroup of VMs, removed (with the VMs' groups
// in it) once their processes are gone.
// Each is a variable of its own (vm_GROUP, kept_ID), so the loop runs no
// command at all: a watchdog that forked for every line fell behind when
// 1000 VMs stopped at once, and a full pipe means evum gives it up. The
// ones left are listed once, when the pipe closes.
const SCRIPT: &str = r#"
trap '' INT HUP TERM PIPE
while IFS=' ' read -r verb id dir; do
    case $id in '' | *[!0-9]*) continue ;; esac
    case $verb in
    add) eval "vm_$id=\$dir" ;;
    del) unset "vm_$id" ;;
    keep) eval "kept_$id=\$dir" ;;
    cgroup) eval "cg_$id=\$dir" ;;
    drop) unset "kept_$id" ;;
    esac
done
left=$(set | sed -n -e 's/^\(vm_[0-9][0-9]*\)=.*/\1/p' -e 's/^\(kept_[0-9][0-9]*\)=.*/\1/p')
groups=$(set | sed -n -e 's/^\(cg_[0-9][0-9]*\)=.*/\1/p')
for name in $left; do
    case $name in vm_*) kill -KILL -"${name#vm_}" 2>/dev/null ;; esac
done
sleep 0.2
for name in $left; do
    eval "dir=\$$name"
    rm -rf "$dir"
    rmdir "${dir%/*}" 2>/dev/null
done
# A cgroup goes once its last process has exited: try for two seconds.
for name in $groups; do
    eval "dir=\$$name"
    tries=20
    while [ $tries -gt 0 ]; do
        for vm in "$dir"/*/; do [ -d "$vm" ] && rmdir "$vm" 2>/dev/null; done
        rmdir "$dir" 2>/dev/null && break
        tries=$((tries - 1))
        sleep 0.1
    done
done
"#;

fn pipe() -> &'static Mutex<Option<ChildStdin>> {
    static PIPE: OnceLock<Mutex<Option<ChildStdin>>> = OnceLock::new();
    PIPE.get_or_init(|| {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe. A session of its own keeps the
        // watchdog out of the terminal's signals (Ctrl-C in the shell).
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let stdin = match cmd.spawn() {
            Ok(mut child) => child.stdin.take().filter(|pipe| {
                // Never block a caller on a watchdog that stopped reading:
                // a full pipe means it is stuck, and is given up (see tell).
                use nix::fcntl::{fcntl, FcntlArg, OFlag};
                use std::os::fd::AsRawFd;
                let fd = pipe.as_raw_fd();
                let flags = fcntl(fd, FcntlArg::F_GETFL).map(OFlag::from_bits_truncate);
                flags
                    .and_then(|f| fcntl(fd, FcntlArg::F_SETFL(f | OFlag::O_NONBLOCK)))
                    .is_ok()
            }),
            Err(e) => {
                log::error!("evum: cannot start the watchdog: {e}");
                None
            }
        };
        Mutex::new(stdin)
    })
}

fn tell(line: String) {
    let mut pipe = pipe().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(file) = pipe.as_mut() {
        if let Err(e) = file.write_all(line.as_bytes()) {
            log::error!("evum: the watchdog is gone or stuck, VMs are no longer watched: {e}");
            *pipe = None;
        }
    }
}

/// Starts the watchdog if it is not running yet. Call before forking a VM so
/// that the VM does not inherit the watchdog's pipe.
pub fn start() {
    let _ = pipe();
}

/// A VM's process group and runtime directory are live.
pub fn watch(group: i32, runtime_dir: &Path) {
    // A newline in the path would split the line; such a VM is not watched
    // for its directory, only its group.
    let dir = runtime_dir.to_string_lossy().replace('\n', "");
    tell(format!("add {group} {dir}\n"));
}

/// The VM is gone and cleaned up.
pub fn forget(group: i32) {
    tell(format!("del {group}\n"));
}

/// A directory to remove if the program dies before it does; returns the
/// id to [`release`] it with.
pub fn keep(dir: &Path) -> u64 {
    tell_path("keep", dir)
}

/// The BEAM's cgroup of VMs: removed, with what is in it, when the
/// program dies.
pub fn keep_cgroup(dir: &Path) {
    tell_path("cgroup", dir);
}

/// Tells `verb ID DIR` with a new id, which it returns. (A newline in the
/// path would split the line: it is left out.)
fn tell_path(verb: &str, dir: &Path) -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tell(format!("{verb} {id} {}\n", dir.to_string_lossy().replace('\n', "")));
    id
}

/// The directory `keep` returned `id` for is gone.
pub fn release(id: u64) {
    tell(format!("drop {id}\n"));
}
