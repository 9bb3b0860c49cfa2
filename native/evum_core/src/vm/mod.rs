//! One VM: starting it (identity, private runtime directory, command line,
//! process, hand-over to the I/O loop) and the parts it is made of.
//!
//! - [`options`]: boot options to the kernel command line.
//! - [`placement`]: which host CPUs its processes run on.
//! - [`cpu_group`]: the cgroups that share the CPUs between VMs and the BEAM.
//! - [`process`]: the UML host process, spawned and contained.
//! - [`jail`]: the host user and groups it runs as.
//! - [`io_loop`]: the native thread that owns a running VM's descriptors.
//! - [`console`]: the console's bytes cut into lines.
//! - [`control`]: the command channel (`evum:cmd/2`) on the first serial line.
//! - [`watchdog`]: the process that cleans up when the BEAM dies.

pub mod console;
pub mod control;
pub mod cpu_group;
pub mod echo;
pub mod io_loop;
pub mod jail;
pub mod options;
pub mod placement;
pub mod priority;
pub mod process;
pub mod watchdog;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use io_loop::{VmEvents, VmHandle};
use jail::JailError;
use options::{BootOption, Identity, OptionError};
use process::{RunAs, SpawnError, SpawnSpec};

/// Everything needed to start one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The UML kernel binary.
    pub kernel: PathBuf,
    pub options: Vec<BootOption>,
    /// The umid; evum picks a unique one when none is given.
    pub umid: Option<String>,
    /// Where UML puts the VM's directory (pid file, mconsole socket). evum
    /// uses a private directory of its own when none is given.
    pub uml_dir: Option<PathBuf>,
    /// The groups of the switches the VM joins (see [`jail`]): their
    /// sockets are open to these groups only.
    pub groups: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Jail(#[from] JailError),
    #[error("runtime directory {path}: {source}")]
    RuntimeDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("umid {0:?} is not usable: use at most 63 letters, digits, '-', '_' or '.'")]
    BadUmid(String),
    #[error("UML kernel {} does not support the {option} option", kernel.display())]
    UnsupportedByKernel { kernel: PathBuf, option: &'static str },
    #[error("cannot read UML kernel {}: {source}", kernel.display())]
    KernelUnreadable {
        kernel: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StartError {
    /// The host resource the start ran out of, if that is why it failed: a
    /// full runtime directory is named by its path.
    pub fn exhausted(&self) -> Option<crate::limits::Exhausted> {
        let path = match self {
            StartError::RuntimeDir { path, .. } => Some(path.clone()),
            _ => None,
        };
        crate::limits::exhausted(self, path)
    }
}

/// Descriptors a VM's start opens in evum's own process at once: its id's
/// lock, five pipes (ten ends), its pidfd, and a few to spare.
pub const FILES_TO_START: usize = 16;

/// A running VM.
#[derive(Debug)]
pub struct Vm {
    pub handle: VmHandle,
    pub umid: String,
    /// The VM's own directory, removed when it has exited: UML's
    /// `<uml_dir>/<umid>` with its pid file and mconsole socket (or, for a VM
    /// run as another user, the private uml_dir that holds it).
    pub runtime_dir: PathBuf,
    mconsole: PathBuf,
}

impl Vm {
    pub fn mconsole_socket(&self) -> PathBuf {
        self.mconsole.clone()
    }
}

/// Starts a VM whose events go to `events`. Blocks for the fork and exec.
pub fn start(config: VmConfig, events: Box<dyn VmEvents>) -> Result<Vm, StartError> {
    let umid = match config.umid {
        Some(umid) => valid_umid(umid)?,
        None => fresh_umid(),
    };
    // Taken first and dropped last: while the VM's processes may still be
    // exiting, no other VM may have its uid.
    let jailed = jail::vm_identity(&config.groups)?;
    let run_as = jailed.as_ref().map(|identity| RunAs {
        uid: identity.uid(),
        gid: identity.gid(),
        groups: identity.groups.clone(),
    });
    // Not root: walls of the same kind in a user namespace, where the host
    // allows them.
    let user_namespace = run_as.is_none() && config.uml_dir.is_none() && jail::user_namespaces();
    let sandboxed = run_as.is_some() || user_namespace;
    // A jailed VM gets a directory of its own, the only host directory it
    // may write (a tmpfs of its own over it, in its namespace); others share
    // evum's runtime base.
    let owner = match &run_as {
        Some(user) => (user.uid, user.gid),
        None => (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()),
    };
    let (uml_dir, runtime_dir, shared_base) = match config.uml_dir {
        Some(dir) => (dir.clone(), dir.join(&umid), None),
        None => {
            let base = default_base();
            acquire_base(&base)?;
            let own = base.join(&umid);
            if !sandboxed {
                (base.clone(), own, Some(base))
            } else if let Err(e) = private_dir(&own, owner.0, owner.1, 0o700) {
                release_base(&base);
                return Err(e);
            } else {
                (own.clone(), own, Some(base))
            }
        }
    };
    // The disks the guest writes: writable in its namespace, and lent to
    // its user while it runs.
    let writable_files = if sandboxed {
        written_disks(&config.options)
    } else {
        Vec::new()
    };
    let lent = match &run_as {
        Some(user) => lend(&writable_files, user),
        None => Vec::new(),
    };
    // Where evum makes cgroups: the VM's own, in the BEAM's group of VMs.
    let nice = priority::nice(&config.options);
    let cpu_group = cpu_group::for_vm(&umid, nice);
    let cpu_group_join = cpu_group.as_ref().map(|group| group.join_file().clone());
    let release = move || {
        drop(cpu_group);
        if let Some(base) = &shared_base {
            release_base(base);
        }
        take_back(&lent);
        drop(jailed);
    };
    let identity = Identity {
        umid: umid.clone(),
        uml_dir: uml_dir.clone(),
    };
    // UML's memory file is as large as the guest's memory; a little more
    // for the other files UML and its helpers write.
    let memory_bytes = options::memory_bytes(&config.options).unwrap_or(0);
    let max_file_bytes = memory_bytes + (64 << 20);
    let spawned = options::kernel_args(&identity, &config.options)
        .and_then(|args| Ok((args, placement::cpu_set(&config.options)?)))
        .map_err(StartError::from)
        .and_then(|(args, cpus)| {
            check_kernel(&config.kernel, &config.options)?;
            let spec = SpawnSpec {
                kernel: config.kernel,
                args,
                cpus,
                run_as,
                nice,
                cpu_group: cpu_group_join,
                read_only_host_but: sandboxed.then(|| uml_dir.clone()),
                runtime_bytes: runtime_bytes(&config.options),
                memory_bytes,
                user_namespace,
                writable_files,
                max_file_bytes,
            };
            process::spawn(spec).map_err(StartError::from)
        });
    let spawned = match spawned {
        Ok(spawned) => spawned,
        Err(e) => {
            if sandboxed {
                let _ = fs::remove_dir_all(&runtime_dir);
            }
            release();
            return Err(e);
        }
    };
    let mut mconsole = uml_dir.join(&umid).join("mconsole");
    if sandboxed {
        // The runtime directory is a tmpfs in the VM's own mount namespace.
        let root = PathBuf::from(format!("/proc/{}/root", spawned.pid));
        mconsole = root.join(mconsole.strip_prefix("/").unwrap_or(&mconsole));
    }
    crate::vm::watchdog::watch(spawned.pid.as_raw(), &runtime_dir);
    let handle = io_loop::adopt(spawned, Some(runtime_dir.clone()), Box::new(release), events);
    Ok(Vm {
        handle,
        umid,
        runtime_dir,
        mconsole,
    })
}

/// The size of a jailed VM's runtime directory: room for UML's pid file
/// and sockets, and for the copy-on-write disk a VM without a label keeps
/// there, which may grow to the size of its backing file.
fn runtime_bytes(options: &[BootOption]) -> u64 {
    let cows: u64 = ubd_files(options)
        .filter(|(written, _)| written.contains(options::RUNTIME_DIR))
        .filter_map(|(_, backing)| fs::metadata(backing?).ok())
        .map(|m| m.len())
        .sum();
    (16 << 20) + cows
}

/// The disk file each `ubd` option writes (the first file of its spec,
/// `COW,BASE` or `FILE`) where it is a regular file of evum's user. Files in
/// the VM's runtime directory are its own already; a missing file is left
/// for UML to report.
fn written_disks(options: &[BootOption]) -> Vec<PathBuf> {
    let euid = nix::unistd::geteuid().as_raw();
    ubd_files(options)
        .filter(|(written, _)| !written.contains(options::RUNTIME_DIR))
        .map(|(written, _)| PathBuf::from(written))
        .filter(|path| fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.uid() == euid))
        .collect()
}

/// Each `ubd` option's files: the one the guest writes (the first of
/// `COW,BASE` or `FILE`) and the backing file of a copy-on-write disk.
fn ubd_files(options: &[BootOption]) -> impl Iterator<Item = (&str, Option<&str>)> {
    options.iter().filter_map(|o| match o {
        BootOption::Ubd(_, spec) => {
            let mut files = spec.split(',');
            Some((files.next().unwrap_or_default(), files.next()))
        }
        _ => None,
    })
}

/// Makes the disks the VM user's; those it could, to be given back.
fn lend(disks: &[PathBuf], user: &RunAs) -> Vec<PathBuf> {
    disks
        .iter()
        .filter(|path| nix::unistd::chown(path.as_path(), Some(user.uid.into()), Some(user.gid.into())).is_ok())
        .cloned()
        .collect()
}

/// Gives the lent disks back to evum's user once the VM is gone.
fn take_back(disks: &[PathBuf]) {
    let owner = (nix::unistd::geteuid(), nix::unistd::getegid());
    for path in disks {
        if let Err(e) = nix::unistd::fchownat(
            None,
            path,
            Some(owner.0),
            Some(owner.1),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            log::warn!("evum: cannot give disk {} back to evum's user: {e}", path.display());
        }
    }
}

/// Refuses options the kernel does not have, before anything is spawned: an
/// older kernel would not fail on them but pass them on to init, and boot
/// without what was asked for.
fn check_kernel(kernel: &Path, options: &[BootOption]) -> Result<(), StartError> {
    let cpus = options.iter().find_map(|o| match o {
        BootOption::Cpus(n) => Some(*n),
        _ => None,
    });
    if !options::wants_seccomp(options) {
        return Ok(());
    }
    let features = match crate::kernel::features::probe(kernel) {
        Ok(features) => features,
        // The spawn names a missing kernel as it always has.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StartError::KernelUnreadable {
                kernel: kernel.to_path_buf(),
                source,
            })
        }
    };
    let explicit_seccomp = options.contains(&BootOption::Seccomp(true));
    let missing = if !features.seccomp && explicit_seccomp {
        Some("seccomp")
    } else if !features.seccomp || (cpus.is_some_and(|n| n > 1) && !features.smp) {
        Some("cpus")
    } else {
        None
    };
    match missing {
        Some(option) => Err(StartError::UnsupportedByKernel {
            kernel: crate::kernel::features::resolve(kernel).unwrap_or_else(|| kernel.to_path_buf()),
            option,
        }),
        None => Ok(()),
    }
}

fn fresh_umid() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("evum-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn valid_umid(umid: String) -> Result<String, StartError> {
    let ok = !umid.is_empty()
        && umid.len() < 64
        && !umid.starts_with('.')
        && umid.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(umid)
    } else {
        Err(StartError::BadUmid(umid))
    }
}

/// evum's runtime base: `/run/evum/vms` for root, else
/// `$XDG_RUNTIME_DIR/evum`, else `/tmp/evum-<uid>`.
pub fn default_base() -> PathBuf {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        return PathBuf::from("/run/evum/vms");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(xdg) if !xdg.is_empty() => PathBuf::from(xdg).join("evum"),
        _ => std::env::temp_dir().join(format!("evum-{euid}")),
    }
}

/// VMs using each runtime base. The last one out removes the directory, so
/// nothing of evum's stays in /tmp; creating and removing happen under one
/// lock so a VM starting never sees its base vanish.
static BASES: Mutex<Option<HashMap<PathBuf, usize>>> = Mutex::new(None);

fn acquire_base(base: &Path) -> Result<(), StartError> {
    let err = |source| StartError::RuntimeDir {
        path: base.to_path_buf(),
        source,
    };
    let mut bases = BASES.lock().unwrap_or_else(|p| p.into_inner());
    // Root's base is in /run, which only root may write; the parent is
    // made as root's own.
    if let Some(parent) = base.parent().filter(|_| nix::unistd::geteuid().is_root()) {
        fs::DirBuilder::new()
            .mode(0o755)
            .recursive(true)
            .create(parent)
            .map_err(err)?;
    }
    match fs::DirBuilder::new().mode(MODE_OF_BASE).create(base) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    // In a shared /tmp someone else may have made this path first: use it
    // only if it is a real directory owned by evum's user.
    let meta = fs::symlink_metadata(base).map_err(err)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not a directory owned by evum's user",
        )));
    }
    if meta.permissions().mode() & 0o777 != MODE_OF_BASE {
        fs::set_permissions(base, fs::Permissions::from_mode(MODE_OF_BASE)).map_err(err)?;
    }
    *bases
        .get_or_insert_with(HashMap::new)
        .entry(base.to_path_buf())
        .or_insert(0) += 1;
    Ok(())
}

/// A new directory for a switch's sockets in evum's runtime base, open to
/// `group` (the switch's: its VMs join it) if given, else to evum only.
/// [`remove_switch_dir`] takes it away again.
pub fn switch_dir(group: Option<u32>) -> Result<PathBuf, StartError> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let base = default_base();
    acquire_base(&base)?;
    let dir = base.join(format!(
        "switch-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let euid = nix::unistd::geteuid().as_raw();
    let made = match group {
        Some(gid) => private_dir(&dir, euid, gid, 0o750),
        None => private_dir(&dir, euid, nix::unistd::getegid().as_raw(), 0o700),
    };
    match made {
        Ok(()) => Ok(dir),
        Err(e) => {
            release_base(&base);
            Err(e)
        }
    }
}

/// Removes a switch's directory once its sockets are gone, and with the
/// last user evum's runtime base (a directory elsewhere is only removed).
pub fn remove_switch_dir(dir: &Path) {
    let _ = fs::remove_dir(dir);
    if let Some(base) = dir.parent() {
        release_base(base);
    }
}

/// evum's runtime base may be entered by the VMs' users (to reach their
/// own directories and their switches') but not listed: each directory in
/// it is closed to all but its own users.
const MODE_OF_BASE: u32 = 0o711;

/// Makes `dir` (which must not exist: a path someone else made first is an
/// error, never used) with the owner, group and mode given. The directory
/// is made closed (0700) and opened up only once it has its owner.
fn private_dir(dir: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), StartError> {
    let err = |source| StartError::RuntimeDir {
        path: dir.to_path_buf(),
        source,
    };
    fs::DirBuilder::new().mode(0o700).create(dir).map_err(err)?;
    nix::unistd::chown(dir, Some(uid.into()), Some(gid.into())).map_err(|e| err(e.into()))?;
    if mode != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    Ok(())
}

fn release_base(base: &Path) {
    let mut bases = BASES.lock().unwrap_or_else(|p| p.into_inner());
    let users = bases.get_or_insert_with(HashMap::new);
    if let Some(count) = users.get_mut(base) {
        *count -= 1;
        if *count == 0 {
            users.remove(base);
            // Root's base in /run stays: another BEAM may be about to make
            // a VM's directory in it. Elsewhere it goes with the last VM
            // (failing harmlessly while another program's VMs still use it).
            if !nix::unistd::geteuid().is_root() {
                let _ = fs::remove_dir(base);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that reads as a kernel with seccomp (and with SMP, if asked).
    fn fake_kernel(name: &str, smp: bool) -> PathBuf {
        let path = std::env::temp_dir().join(format!("evum-vm-{}-{name}", std::process::id()));
        let mut text = b"\0seccomp=<on/auto/off>\n\0".to_vec();
        if smp {
            text.extend_from_slice(b"ncpus=<# of desired CPUs>\n\0");
        }
        fs::write(&path, text).unwrap();
        path
    }

    fn unsupported(kernel: &Path, options: &[BootOption]) -> Option<&'static str> {
        match check_kernel(kernel, options) {
            Ok(()) => None,
            Err(StartError::UnsupportedByKernel { option, .. }) => Some(option),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn options_the_kernel_lacks_are_refused_by_name() {
        let old = std::env::temp_dir().join(format!("evum-vm-{}-old", std::process::id()));
        fs::write(&old, b"an old kernel").unwrap();
        let up = fake_kernel("up", false);
        let smp = fake_kernel("smp", true);
        use BootOption::{Cpus, Seccomp};
        assert_eq!(unsupported(&old, &[]), None);
        assert_eq!(unsupported(&old, &[Seccomp(false)]), None);
        assert_eq!(unsupported(&old, &[Seccomp(true)]), Some("seccomp"));
        assert_eq!(unsupported(&old, &[Cpus(1)]), Some("cpus"));
        assert_eq!(unsupported(&old, &[Seccomp(true), Cpus(2)]), Some("seccomp"));
        assert_eq!(unsupported(&up, &[Seccomp(true), Cpus(1)]), None);
        assert_eq!(unsupported(&up, &[Cpus(2)]), Some("cpus"));
        assert_eq!(unsupported(&smp, &[Seccomp(true), Cpus(2)]), None);
        // A kernel that is not there is the spawn's to report.
        assert_eq!(
            unsupported(Path::new("/nonexistent/linux"), &[BootOption::Cpus(2)]),
            None
        );
        for path in [old, up, smp] {
            fs::remove_file(path).unwrap();
        }
    }
}
