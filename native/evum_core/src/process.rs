//! Starting the UML kernel as a host process that cannot outlive evum.
//!
//! Every VM is forked from one long-lived spawner thread. The child gets a
//! parent-death signal (SIGTERM, which UML turns into a clean exit of all its
//! helper processes; SIGKILL would leave two of them behind) and that signal
//! fires when the *thread* that forked it exits, not the process: forking from
//! a BEAM scheduler or a short-lived thread would kill VMs at random. The
//! child also gets its own session and process group (so the whole VM can be
//! signalled at once), a fixed address-space layout (UML's guest memory is
//! then predictable, see UML-NOTES) and a private umask.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crossbeam_channel::{bounded, unbounded, Sender};
use nix::fcntl::OFlag;
use nix::unistd::{pipe2, Pid};

/// What to run.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// The UML kernel binary (`linux` from Debian's user-mode-linux).
    pub kernel: PathBuf,
    /// The kernel command line.
    pub args: Vec<String>,
    /// Run as this uid and gid instead of evum's own (for the `host` dist
    /// when evum runs as root).
    pub run_as: Option<(u32, u32)>,
    /// Extra environment for the UML process (TMPDIR, for one).
    pub env: Vec<(OsString, OsString)>,
}

/// A started VM's process and the host ends of its channels.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    /// Becomes readable when the process exits; never confused by pid reuse.
    pub pidfd: OwnedFd,
    /// Written by evum, read by the guest console (the child's fd 0).
    pub console_in: OwnedFd,
    /// The console and the kernel's stderr (the child's fds 1 and 2).
    pub console_out: OwnedFd,
    /// The command channel, evum to guest (the child's fd 3).
    pub control_in: OwnedFd,
    /// The command channel, guest to evum (the child's fd 4).
    pub control_out: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("UML kernel {0} not found (install user-mode-linux, or give the kernel option)")]
    KernelNotFound(PathBuf),
    #[error("cannot start UML kernel {path}: {source}")]
    Exec {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] io::Error),
    #[error("the spawner thread is gone")]
    SpawnerGone,
}

type Reply = Sender<Result<Spawned, SpawnError>>;

/// Starts a VM process. Blocks the calling thread for the fork and exec only
/// (a few milliseconds), so call it from a dirty scheduler, not a normal one.
pub fn spawn(spec: SpawnSpec) -> Result<Spawned, SpawnError> {
    let (reply_tx, reply_rx) = bounded(1);
    spawner().send((spec, reply_tx)).map_err(|_| SpawnError::SpawnerGone)?;
    reply_rx.recv().map_err(|_| SpawnError::SpawnerGone)?
}

/// The spawner thread's inbox. The thread is started on first use and never
/// exits, so the parent-death signal of its children means "evum is gone".
fn spawner() -> &'static Sender<(SpawnSpec, Reply)> {
    static SPAWNER: OnceLock<Sender<(SpawnSpec, Reply)>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = unbounded::<(SpawnSpec, Reply)>();
        let started = std::thread::Builder::new().name("evum-spawner".into()).spawn(move || {
            for (spec, reply) in rx {
                let _ = reply.send(spawn_here(&spec));
            }
        });
        if let Err(e) = started {
            log::error!("evum: cannot start the spawner thread: {e}");
        }
        tx
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Sys("pipe2", e.into()))
}

fn spawn_here(spec: &SpawnSpec) -> Result<Spawned, SpawnError> {
    let (console_in_child, console_in) = pipe()?;
    let (console_out, console_out_child) = pipe()?;
    let (control_in_child, control_in) = pipe()?;
    let (control_out, control_out_child) = pipe()?;
    let stderr_child = console_out_child.try_clone().map_err(|e| SpawnError::Sys("dup", e))?;
    let parent = nix::unistd::getpid().as_raw();
    let control_fds = [control_in_child.as_raw_fd(), control_out_child.as_raw_fd()];

    let mut cmd = Command::new(&spec.kernel);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(console_in_child))
        .stdout(Stdio::from(console_out_child))
        .stderr(Stdio::from(stderr_child));
    if let Some((uid, gid)) = spec.run_as {
        // std drops supplementary groups too when it changes uid as root.
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setsid, prctl, getppid, personality, umask,
    // fcntl, dup2); it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || child_setup(parent, control_fds));
    }
    let child = cmd.spawn().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => SpawnError::KernelNotFound(spec.kernel.clone()),
        _ => SpawnError::Exec {
            path: spec.kernel.clone(),
            source,
        },
    })?;
    // The Command still holds the child's pipe ends; dropping it closes ours,
    // so that end-of-file on the console means every UML process is gone.
    drop(cmd);
    let pid = Pid::from_raw(child.id() as i32);
    let pidfd = pidfd_open(pid).map_err(|e| SpawnError::Sys("pidfd_open", e))?;
    Ok(Spawned {
        pid,
        pidfd,
        console_in,
        console_out,
        control_in,
        control_out,
    })
}

/// Runs in the child between fork and exec.
fn child_setup(parent: i32, control_fds: [RawFd; 2]) -> io::Result<()> {
    const ADDR_NO_RANDOMIZE: libc::c_ulong = 0x0040000;
    // SAFETY: plain system calls on this process with valid arguments.
    unsafe {
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        // The spawner may have died between fork and prctl.
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        let persona = libc::personality(0xffff_ffff);
        if persona >= 0 {
            libc::personality(persona as libc::c_ulong | ADDR_NO_RANDOMIZE);
        }
        libc::umask(0o077);
        // Move the command channel to fds 3 and 4. Copy to high numbers first
        // so that a source already sitting on 3 or 4 is not overwritten.
        let mut high = [0; 2];
        for (slot, fd) in high.iter_mut().zip(control_fds) {
            *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64);
            if *slot < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for (target, fd) in [3, 4].into_iter().zip(high) {
            if libc::dup2(fd, target) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
