//! The watchdog: a tiny shell process that outlives evum only to clean up.
//!
//! UML's parent-death signal (SIGTERM) normally takes a whole VM down when
//! the BEAM dies, but not always: a UML main process that dies before its
//! helpers leaves them running, holding memory, forever. So evum starts one
//! watchdog per program, in a session of its own, and tells it on a pipe
//! which process groups and runtime directories are live. When the pipe
//! closes (the program exited or was killed, however brutally), the watchdog
//! kills every group still listed, removes the directories, and exits.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

const SCRIPT: &str = r#"
trap '' INT HUP TERM PIPE
groups=
while IFS=' ' read -r verb group dir; do
    case $verb in
    add) eval "dir_$group=\$dir"; groups="$groups $group" ;;
    del) groups=$(printf '%s ' $groups | sed "s/\(^\| \)$group / /"); unset "dir_$group" ;;
    esac
done
for group in $groups; do kill -KILL -"$group" 2>/dev/null; done
sleep 0.2
for group in $groups; do
    eval "dir=\$dir_$group"
    rm -rf "$dir"
    rmdir "${dir%/*}" 2>/dev/null
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
            Ok(mut child) => child.stdin.take(),
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
            log::error!("evum: the watchdog is gone: {e}");
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
