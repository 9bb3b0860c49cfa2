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

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crossbeam_channel::{bounded, unbounded, Sender};
use nix::fcntl::OFlag;
use nix::sched::CpuSet;
use nix::unistd::{pipe2, Pid};

/// What to run.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// The UML kernel binary (`linux` from Debian's user-mode-linux).
    pub kernel: PathBuf,
    /// The kernel command line.
    pub args: Vec<String>,
    /// Run as this user instead of evum's own (every VM's own, when evum
    /// runs as root: see [`crate::vm::jail`]).
    pub run_as: Option<RunAs>,
    /// The CPUs the process (and every process it starts) may run on;
    /// None leaves it evum's own.
    pub cpus: Option<CpuSet>,
    /// The nice value of the process (and every process it starts) and of
    /// its session's scheduling group (see [`crate::vm::priority`]).
    pub nice: u8,
    /// The file of the VM's cgroup the process writes itself into before
    /// exec (see [`super::cpu_group`]); None: no cgroup of evum's.
    pub cpu_group: Option<CString>,
    /// Run the VM in a mount namespace of its own in which every host
    /// filesystem is read-only, with a private tmpfs of its own on this
    /// directory (its runtime directory: see [`SpawnSpec::runtime_bytes`]),
    /// another on /dev/shm, and one in no directory at all for UML's memory
    /// file (see [`SpawnSpec::memory_bytes`]). Needs root or
    /// `user_namespace`; with `run_as`, that user owns them.
    pub read_only_host_but: Option<PathBuf>,
    /// The size of the private runtime directory.
    pub runtime_bytes: u64,
    /// The size of the guest's memory: the size of the tmpfs that holds
    /// UML's memory file in a sandbox.
    pub memory_bytes: u64,
    /// Enter an unprivileged user namespace of its own first (evum's uid
    /// and gid mapped to themselves), in which the mount namespace above
    /// can be made without root: how a VM is walled off when evum is not
    /// root.
    pub user_namespace: bool,
    /// Host files the VM writes (its disks), writable in its namespace.
    pub writable_files: Vec<PathBuf>,
    /// The most the UML process tree may write to any one file (the memory
    /// file is the largest it writes).
    pub max_file_bytes: u64,
}

/// A host user for the UML process: uid, gid and the supplementary groups
/// (a VM's switches').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Open files the UML process tree may have: UML's own descriptors (tens),
/// a few per guest device, one per guest address space in seccomp mode.
const MAX_OPEN_FILES: u64 = 16384;
/// Processes its uid may have: UML's helpers and one host process per guest
/// process. The uid is the VM's own, so this counts only the VM's.
const MAX_PROCESSES: u64 = 4096;

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
        keep_exit_statuses();
        let (tx, rx) = unbounded::<(SpawnSpec, Reply)>();
        let started = std::thread::Builder::new().name("evum-spawner".into()).spawn(move || {
            // Children share this thread's memory until they exec, so no
            // handler of the BEAM's may run in one: they start with every
            // signal blocked and set the handlers back to the default
            // before they unblock any.
            use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
            if let Err(e) = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None) {
                log::error!("evum: the spawner cannot block signals: {e}");
                return;
            }
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

/// The BEAM sets SIGCHLD to SIG_IGN (its own children are forked by
/// erl_child_setup, not by the emulator), and with SIGCHLD ignored the kernel
/// reaps children at once and throws their exit status away. evum must tell
/// an owner how its VM ended, so it restores the default disposition, under
/// which SIGCHLD is still not delivered to anyone but exited children stay
/// until evum's I/O loop reaps them (or, for the tools evum runs, such as
/// the kernel build's, `std::process` waits for them).
pub fn keep_exit_statuses() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installs no handler, only the default disposition.
    if let Err(e) = unsafe { sigaction(Signal::SIGCHLD, &default) } {
        log::error!("evum: cannot restore SIGCHLD: {e}; exit statuses will be unknown");
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Sys("pipe2", e.into()))
}

fn spawn_here(spec: &SpawnSpec) -> Result<Spawned, SpawnError> {
    let kernel = resolve(&spec.kernel).ok_or_else(|| SpawnError::KernelNotFound(spec.kernel.clone()))?;
    let exec = Exec::new(&kernel, spec)?;
    let (console_in_child, console_in) = pipe()?;
    let (console_out, console_out_child) = pipe()?;
    let (control_in_child, control_in) = pipe()?;
    let (control_out, control_out_child) = pipe()?;
    // The child reports a failed exec here; end-of-file means exec worked.
    let (exec_error, exec_error_low) = pipe()?;
    // Above every descriptor the child sets up, which would overwrite it.
    let exec_error_child = nix::fcntl::fcntl(
        exec_error_low.as_raw_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(MEMORY_DIR_FD + 1),
    )
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
    .map_err(|e| SpawnError::Sys("fcntl", e.into()))?;
    drop(exec_error_low);
    let parent = nix::unistd::getpid().as_raw();
    let child_fds = ChildFds {
        targets: [
            console_in_child.as_raw_fd(),
            console_out_child.as_raw_fd(),
            console_out_child.as_raw_fd(),
            control_in_child.as_raw_fd(),
            control_out_child.as_raw_fd(),
        ],
        exec_error: exec_error_child.as_raw_fd(),
    };
    let cpus = spec.cpus;
    let sandbox = match &spec.read_only_host_but {
        Some(dir) => Some(Sandbox::new(
            dir,
            spec.runtime_bytes,
            spec.memory_bytes,
            spec.run_as.as_ref(),
            &spec.writable_files,
        )?),
        None => None,
    };
    let walls = Walls {
        run_as: spec.run_as.clone(),
        user_namespace: if spec.user_namespace {
            Some(UserNamespace::new()?)
        } else {
            None
        },
        limits: Limits::new(spec.max_file_bytes, spec.run_as.is_some()),
        sandbox,
        nice: Nice::new(spec.nice),
        cpu_group: spec.cpu_group.clone(),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // The child shares this process's memory (CLONE_VM) until it execs, as
    // posix_spawn's does: a copy of the BEAM's page tables would cost a
    // millisecond or more per VM here, and a page fault in the BEAM for
    // every page it writes next. A VM of a BEAM that is not root enters
    // its user namespace at the clone (unshare refuses one to a process
    // that shares its memory).
    let mut flags = libc::CLONE_VM | libc::SIGCHLD;
    if walls.user_namespace.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    let child = Child {
        parent,
        fds: &child_fds,
        walls: &walls,
        cpus: cpus.as_ref(),
        exec: &exec,
    };
    // SAFETY: the child runs on `stack` in this process's memory, with this
    // thread's signals all blocked, until it execs or exits; this thread
    // keeps `stack` and `child`, with all it points to, alive until then
    // (exec_settled below, or the kill and wait). `child_main` makes only
    // async-signal-safe system calls on data prepared above: it allocates
    // nothing and takes no lock. (nix's clone keeps the child's closure in
    // its own frame, gone when it returns: no good with CLONE_VM.)
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        let top = top.sub(top as usize % 16);
        libc::clone(
            child_entry,
            top.cast(),
            flags,
            (&child as *const Child).cast_mut().cast(),
        )
    };
    if pid < 0 {
        return Err(SpawnError::Sys("clone", io::Error::last_os_error()));
    }
    let pid = Pid::from_raw(pid);
    drop((
        console_in_child,
        console_out_child,
        control_in_child,
        control_out_child,
        exec_error_child,
    ));
    // The pipe closes when the child execs (or dies), or carries its errno.
    // A child that does neither in time is stuck before exec: kill it rather
    // than leave the spawner, and every VM after it, waiting.
    if !exec_settled(&exec_error) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(SpawnError::Sys("exec", io::ErrorKind::TimedOut.into()));
    }
    let mut errno = [0u8; 4];
    let mut exec_error = std::fs::File::from(exec_error);
    let read = std::io::Read::read(&mut exec_error, &mut errno).unwrap_or(0);
    if read == errno.len() {
        // The child has exited; reap it so it leaves no zombie.
        let _ = nix::sys::wait::waitpid(pid, None);
        let source = io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
        return Err(match source.kind() {
            io::ErrorKind::NotFound => SpawnError::KernelNotFound(spec.kernel.clone()),
            _ => SpawnError::Exec { path: kernel, source },
        });
    }
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

const CHILD_STACK: usize = 64 * 1024;

/// The highest signal number on Linux.
const SIGRTMAX: libc::c_int = 64;

/// How long a child may take from clone to exec.
const EXEC_TIMEOUT_MS: u16 = 10_000;

/// Waits until the exec error pipe is readable (closed by the exec, or
/// holding an errno); false if that took longer than [`EXEC_TIMEOUT_MS`].
fn exec_settled(pipe: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(EXEC_TIMEOUT_MS.into());
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let left_ms = u16::try_from(left.as_millis()).unwrap_or(EXEC_TIMEOUT_MS);
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(left_ms)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            // Cannot wait: let the read decide, as before.
            Err(_) => return true,
        }
    }
}

/// The kernel binary as a path: as given if it has a slash, else found on PATH.
fn resolve(kernel: &Path) -> Option<PathBuf> {
    if kernel.components().count() > 1 {
        return kernel.exists().then(|| kernel.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(kernel))
        .find(|p| p.is_file())
}

/// execve's arguments, made before the fork because the child may not allocate.
struct Exec {
    path: CString,
    _args: Vec<CString>,
    _env: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl Exec {
    fn new(kernel: &Path, spec: &SpawnSpec) -> Result<Exec, SpawnError> {
        let c = |s: &[u8]| CString::new(s).map_err(|_| SpawnError::Sys("argument", io::ErrorKind::InvalidInput.into()));
        let path = c(kernel.as_os_str().as_bytes())?;
        let mut args = vec![path.clone()];
        for arg in &spec.args {
            args.push(c(arg.as_bytes())?);
        }
        // In a sandbox, UML makes its memory file in the tmpfs the sandbox
        // leaves open for it.
        let tmpdir = spec
            .read_only_host_but
            .is_some()
            .then(|| OsString::from(format!("/proc/self/fd/{MEMORY_DIR_FD}")));
        let sandboxed = tmpdir.is_some();
        let mut env = Vec::new();
        for (key, value) in std::env::vars_os()
            .filter(|(k, _)| k != "TMPDIR" || !sandboxed)
            .chain(tmpdir.map(|dir| (OsString::from("TMPDIR"), dir)))
        {
            env.push(c(&[key.as_bytes(), b"=", value.as_bytes()].concat())?);
        }
        let argv = args
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp = env
            .iter()
            .map(|e| e.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        Ok(Exec {
            path,
            _args: args,
            _env: env,
            argv,
            envp,
        })
    }
}

/// A mount namespace in which the host is read-only. hostfs reads and writes
/// the host as the UML process, so this, not the guest's own mount flags, is
/// what keeps a guest root that remounts its hostfs root read-write from
/// writing host files (world-writable ones included, which an unprivileged
/// user could still write). What it may write are tmpfs of its own, each
/// with a size limit: its runtime directory (hidden from the host, which
/// reaches it as /proc/<pid>/root/<dir>), /dev/shm, and the one that holds
/// UML's memory file.
///
/// That last one is mounted in no directory: UML reaches it through a
/// descriptor ([`MEMORY_DIR_FD`], named in TMPDIR) and the guest, whose
/// hostfs sees only paths, does not. A guest that filled a tmpfs its memory
/// file shared (its /dev/shm, through hostfs) would have its VM killed
/// with SIGBUS on the next page of guest memory the host had to find.
struct Sandbox {
    root: CString,
    writable: CString,
    shm: CString,
    tmpfs: CString,
    /// The private /dev/shm's options: its size limit.
    shm_options: CString,
    /// The memory file's tmpfs's options (key, value): size, owner, mode.
    memory_options: Vec<(CString, CString)>,
    /// The private runtime directory's: size, owner, mode.
    runtime_options: CString,
    /// Files bound writable over the read-only host.
    files: Vec<CString>,
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

/// The descriptor a sandboxed UML process finds its memory file's tmpfs
/// on: the first after its console and command channel (0 to 4).
const MEMORY_DIR_FD: RawFd = 5;

/// A sandbox's memory tmpfs is the guest's memory and this much more.
const MEMORY_SLACK_BYTES: u64 = 16 << 20;

/// A sandbox's /dev/shm: what a guest may leave there through hostfs.
const SHM_BYTES: u64 = 64 << 20;

impl Sandbox {
    fn new(
        writable: &Path,
        runtime_bytes: u64,
        memory_bytes: u64,
        owner: Option<&RunAs>,
        files: &[PathBuf],
    ) -> Result<Sandbox, SpawnError> {
        let (uid, gid) = owner.map_or_else(
            || (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()),
            |user| (user.uid, user.gid),
        );
        let c = |s: &[u8]| CString::new(s).map_err(|_| SpawnError::Sys("path", io::ErrorKind::InvalidInput.into()));
        Ok(Sandbox {
            root: c(b"/")?,
            writable: c(writable.as_os_str().as_bytes())?,
            shm: c(b"/dev/shm")?,
            tmpfs: c(b"tmpfs")?,
            shm_options: c(format!("size={SHM_BYTES},mode=1777").as_bytes())?,
            memory_options: [
                ("size", (memory_bytes + MEMORY_SLACK_BYTES).to_string()),
                ("uid", uid.to_string()),
                ("gid", gid.to_string()),
                ("mode", "0700".to_string()),
            ]
            .iter()
            .map(|(key, value)| Ok((c(key.as_bytes())?, c(value.as_bytes())?)))
            .collect::<Result<_, _>>()?,
            runtime_options: c(format!("size={runtime_bytes},uid={uid},gid={gid},mode=0700").as_bytes())?,
            files: files
                .iter()
                .map(|f| c(f.as_os_str().as_bytes()))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Runs in the child: only system calls, no allocation.
    fn enter(&self) -> Result<(), ()> {
        let check = |r: libc::c_long| if r < 0 { Err(()) } else { Ok(()) };
        let set_attr = |path: &CString, flags: libc::c_uint, attr: MountAttr| {
            // SAFETY: mount_setattr with a valid path and a live, correctly
            // sized struct mount_attr.
            check(unsafe {
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    flags,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                )
            })
        };
        let none = std::ptr::null::<libc::c_char>();
        // SAFETY: unshare and mount with valid C strings or null pointers.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS) as libc::c_long)?;
            // Nothing done here may propagate back to the host's mounts.
            check(libc::mount(
                none,
                self.root.as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) as libc::c_long)?;
        }
        set_attr(
            &self.root,
            AT_RECURSIVE,
            MountAttr {
                attr_set: MOUNT_ATTR_RDONLY,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            },
        )?;
        // SAFETY: as above.
        unsafe {
            check(libc::mount(
                self.tmpfs.as_ptr(),
                self.shm.as_ptr(),
                self.tmpfs.as_ptr(),
                // Not noexec: UML maps its memory file executable.
                (libc::MS_NOSUID | libc::MS_NODEV) as libc::c_ulong,
                self.shm_options.as_ptr().cast(),
            ) as libc::c_long)?;
            check(libc::mount(
                self.tmpfs.as_ptr(),
                self.writable.as_ptr(),
                self.tmpfs.as_ptr(),
                (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as libc::c_ulong,
                self.runtime_options.as_ptr().cast(),
            ) as libc::c_long)?;
        }
        self.mount_memory_dir()?;
        for file in &self.files {
            // SAFETY: as above.
            check(unsafe {
                libc::mount(file.as_ptr(), file.as_ptr(), none, libc::MS_BIND, std::ptr::null()) as libc::c_long
            })?;
            set_attr(
                file,
                0,
                MountAttr {
                    attr_set: 0,
                    attr_clr: MOUNT_ATTR_RDONLY,
                    propagation: 0,
                    userns_fd: 0,
                },
            )?;
        }
        Ok(())
    }

    /// Makes the memory file's tmpfs, attached to no directory, and leaves
    /// it open on [`MEMORY_DIR_FD`] (dup2's copy survives exec). Runs in
    /// the child, in the sandbox's namespaces.
    fn mount_memory_dir(&self) -> Result<(), ()> {
        let check = |r: libc::c_long| if r < 0 { Err(()) } else { Ok(r as RawFd) };
        // SAFETY: the new mount API's calls, with valid C strings and the
        // descriptors they return; each descriptor is closed on every path.
        unsafe {
            let context = check(libc::syscall(libc::SYS_fsopen, self.tmpfs.as_ptr(), FSOPEN_CLOEXEC))?;
            let configured = self
                .memory_options
                .iter()
                .map(|(key, value)| {
                    libc::syscall(
                        libc::SYS_fsconfig,
                        context,
                        FSCONFIG_SET_STRING,
                        key.as_ptr(),
                        value.as_ptr(),
                        0,
                    )
                })
                .chain(std::iter::once_with(|| {
                    libc::syscall(
                        libc::SYS_fsconfig,
                        context,
                        FSCONFIG_CMD_CREATE,
                        std::ptr::null::<libc::c_char>(),
                        std::ptr::null::<libc::c_void>(),
                        0,
                    )
                }))
                .try_for_each(|r| check(r).map(drop));
            let mount = configured.and_then(|()| {
                check(libc::syscall(
                    libc::SYS_fsmount,
                    context,
                    FSMOUNT_CLOEXEC,
                    MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                ))
            });
            libc::close(context);
            let mount = mount?;
            let moved = libc::dup2(mount, MEMORY_DIR_FD);
            libc::close(mount);
            check(moved as libc::c_long).map(drop)
        }
    }
}

/// What walls the child in, made before the fork: the user it becomes, the
/// namespaces it enters, its limits, its priority.
struct Walls {
    nice: Nice,
    /// The cgroup file the child writes itself into.
    cpu_group: Option<CString>,
    run_as: Option<RunAs>,
    user_namespace: Option<UserNamespace>,
    limits: Limits,
    sandbox: Option<Sandbox>,
}

/// Resource limits of a jailed UML process tree, made before the fork.
struct Limits {
    /// Each limit as `(resource, wanted, fallback)`: the fallback is the
    /// wanted value held to the hard limit evum has now, for a host that
    /// does not let evum raise it (no CAP_SYS_RESOURCE, as in many
    /// containers, or a user namespace): lowering a limit never fails.
    all: Vec<(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t)>,
}

impl Limits {
    /// `own_uid`: whether the uid is the VM's own: RLIMIT_NPROC counts
    /// every process of the uid, so it is only for a uid no one else has.
    fn new(file_bytes: u64, own_uid: bool) -> Limits {
        let wanted = [(libc::RLIMIT_FSIZE, file_bytes), (libc::RLIMIT_NOFILE, MAX_OPEN_FILES)]
            .into_iter()
            .chain(own_uid.then_some((libc::RLIMIT_NPROC, MAX_PROCESSES)));
        Limits {
            all: wanted
                .map(|(resource, limit)| (resource, limit, limit.min(hard_limit(resource))))
                .collect(),
        }
    }

    fn all(&self) -> impl Iterator<Item = (libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t)> + '_ {
        self.all.iter().copied()
    }
}

/// evum's own hard limit of `resource` (infinity when it cannot be read).
fn hard_limit(resource: libc::__rlimit_resource_t) -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(resource, &mut limit) } < 0 {
        return libc::RLIM_INFINITY;
    }
    limit.rlim_max
}

/// An unprivileged user namespace in which evum's own uid and gid are
/// mapped to themselves: inside it the child may make its mount namespace;
/// outside, its processes are evum's user, with no privilege over anything.
struct UserNamespace {
    setgroups: CString,
    uid_map_file: CString,
    gid_map_file: CString,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

impl UserNamespace {
    fn new() -> Result<UserNamespace, SpawnError> {
        let c = |s: &str| CString::new(s).map_err(|_| SpawnError::Sys("path", io::ErrorKind::InvalidInput.into()));
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        Ok(UserNamespace {
            setgroups: c("/proc/self/setgroups")?,
            uid_map_file: c("/proc/self/uid_map")?,
            gid_map_file: c("/proc/self/gid_map")?,
            uid_map: format!("{uid} {uid} 1\n").into_bytes(),
            gid_map: format!("{gid} {gid} 1\n").into_bytes(),
        })
    }

    /// Runs in the child, cloned into a new user namespace: maps evum's
    /// ids into it. Only system calls, no allocation.
    fn map_ids(&self) -> Result<(), ()> {
        // An unprivileged process may map only its own ids, and a gid only
        // once setgroups is denied.
        write_file(&self.setgroups, b"deny")?;
        write_file(&self.uid_map_file, &self.uid_map)?;
        write_file(&self.gid_map_file, &self.gid_map)
    }
}

/// Writes `bytes` to the existing file `path` in one write: for the
/// child's /proc and cgroup files, so only system calls, no allocation.
fn write_file(path: &CStr, bytes: &[u8]) -> Result<(), ()> {
    // SAFETY: open, write and close on a valid path and buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(());
        }
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        if written == bytes.len() as isize {
            Ok(())
        } else {
            Err(())
        }
    }
}

/// A VM's priority: its processes' nice value, and its session's
/// scheduling group's where the host groups by session (autogroup).
struct Nice {
    value: libc::c_int,
    /// The value as /proc/self/autogroup takes it.
    text: Vec<u8>,
}

impl Nice {
    fn new(value: u8) -> Nice {
        Nice {
            value: value.into(),
            text: value.to_string().into_bytes(),
        }
    }

    /// Runs in the child, after setsid made its session: only system
    /// calls. Raising one's own nice needs no privilege; a host without
    /// autogroup has no file to write, and the nice value alone counts.
    fn apply(&self) {
        // SAFETY: setpriority with valid arguments.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, self.value) };
        let _ = write_file(c"/proc/self/autogroup", &self.text);
    }
}

/// The child's fds: `targets[n]` becomes fd n (stdin, stdout, stderr, and
/// the command channel on 3 and 4).
struct ChildFds {
    targets: [RawFd; 5],
    exec_error: RawFd,
}

/// What the child reads, kept by the spawner until the child has exec'd.
struct Child<'a> {
    parent: i32,
    fds: &'a ChildFds,
    walls: &'a Walls,
    cpus: Option<&'a CpuSet>,
    exec: &'a Exec,
}

extern "C" fn child_entry(child: *mut libc::c_void) -> libc::c_int {
    // SAFETY: the pointer clone passes is the spawner's `Child`, alive
    // until this process execs or exits.
    let child = unsafe { &*(child as *const Child) };
    child_main(child) as libc::c_int
}

/// Runs in the child between clone and exec. Returns only on failure, after
/// writing the errno to the exec error pipe.
fn child_main(child: &Child) -> isize {
    let Child {
        parent,
        fds,
        walls,
        cpus,
        exec,
    } = *child;
    let sandbox = walls.sandbox.as_ref();
    const ADDR_NO_RANDOMIZE: libc::c_ulong = 0x0040000;
    let fail = |fds: &ChildFds| -> isize {
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
            .to_ne_bytes();
        // SAFETY: writing 4 bytes from a live buffer to a pipe we own.
        unsafe { libc::write(fds.exec_error, errno.as_ptr().cast(), errno.len()) };
        127
    };
    // SAFETY: plain system calls on this child (which shares the spawner's
    // memory: it writes only its own stack) with valid arguments; the
    // pointers come from `Exec`, alive for the whole call.
    unsafe {
        if let Some(namespace) = &walls.user_namespace {
            if namespace.map_ids().is_err() {
                return fail(fds);
            }
        }
        if libc::setsid() < 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) < 0 {
            return fail(fds);
        }
        walls.nice.apply();
        // Before the sandbox, which makes the host's files (cgroupfs too)
        // read-only. Best effort: a VM outside its group still runs.
        if let Some(join) = &walls.cpu_group {
            let _ = write_file(join, b"0");
        }
        // The spawner may have died between clone and prctl.
        if libc::getppid() != parent {
            return 127;
        }
        let persona = libc::personality(0xffff_ffff);
        if persona >= 0 {
            libc::personality(persona as libc::c_ulong | ADDR_NO_RANDOMIZE);
        }
        libc::umask(0o077);
        if let Some(cpus) = cpus {
            if nix::sched::sched_setaffinity(Pid::from_raw(0), cpus).is_err() {
                return fail(fds);
            }
        }
        // The BEAM's handlers would run on its memory: back to the default,
        // as exec would, before any signal is unblocked.
        for signal in 1..=SIGRTMAX {
            let mut action: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut action) == 0
                && action.sa_sigaction != libc::SIG_DFL
                && action.sa_sigaction != libc::SIG_IGN
            {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        // The BEAM ignores or blocks signals (SIGPIPE, SIGHUP, SIGCHLD), and
        // both ignored dispositions and the blocked mask survive exec: give
        // UML the defaults a program expects.
        for signal in [libc::SIGPIPE, libc::SIGHUP, libc::SIGCHLD, libc::SIGINT, libc::SIGTERM] {
            libc::signal(signal, libc::SIG_DFL);
        }
        // A write past RLIMIT_FSIZE (a guest filling a host file through
        // hostfs) is then an error the guest sees, not a signal that kills
        // the VM.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Copy every source above the targets first, so that no dup2 can
        // overwrite a source still to be moved. Just above them, not at some
        // round number: a floor at or over the open-files limit is EINVAL
        // (every start failed so under `ulimit -n 64`), and a copy that finds
        // no free descriptor is EMFILE, which the caller names.
        let mut high = [0; 5];
        for (slot, fd) in high.iter_mut().zip(fds.targets) {
            *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, fds.targets.len() as libc::c_int);
            if *slot < 0 {
                return fail(fds);
            }
        }
        for (target, fd) in high.into_iter().enumerate() {
            if libc::dup2(fd, target as RawFd) < 0 {
                return fail(fds);
            }
        }
        if let Some(sandbox) = sandbox {
            if sandbox.enter().is_err() {
                return fail(fds);
            }
        }
        if sandbox.is_some() {
            // Limits first: RLIMIT_NPROC counts the new uid's processes.
            for (resource, wanted, fallback) in walls.limits.all() {
                let limit = |value| libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                if libc::setrlimit(resource, &limit(wanted)) < 0 && libc::setrlimit(resource, &limit(fallback)) < 0 {
                    return fail(fds);
                }
            }
        }
        if let Some(user) = &walls.run_as {
            // From root to another uid: every capability is dropped. Raw
            // system calls, not glibc's setuid family: in a process with
            // threads glibc makes every thread it knows of change too,
            // under a lock that another thread of evum's may have held at
            // the clone, and the child, which has no other threads, would
            // wait for it for ever.
            if libc::syscall(libc::SYS_setgroups, user.groups.len(), user.groups.as_ptr()) < 0
                || libc::syscall(libc::SYS_setresgid, user.gid, user.gid, user.gid) < 0
                || libc::syscall(libc::SYS_setresuid, user.uid, user.uid, user.uid) < 0
            {
                return fail(fds);
            }
        }
        // With no_new_privs no set-uid program or file capability can give
        // a capability back. (In a user namespace, exec as a non-zero uid
        // drops the namespace's capabilities.)
        if sandbox.is_some() && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return fail(fds);
        }
        libc::execve(exec.path.as_ptr(), exec.argv.as_ptr(), exec.envp.as_ptr());
    }
    fail(fds)
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
