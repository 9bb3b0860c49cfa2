//! Starting a VM: identity, private runtime directory, command line, process,
//! and hand-over to the I/O loop.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::io_loop::{self, VmEvents, VmHandle};
use crate::options::{self, BootOption, Identity, OptionError};
use crate::placement;
use crate::process::{self, SpawnError, SpawnSpec};

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
    /// Run the UML process as this uid and gid.
    pub run_as: Option<(u32, u32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("runtime directory {path}: {source}")]
    RuntimeDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("umid {0:?} is not usable: use at most 63 letters, digits, '-', '_' or '.'")]
    BadUmid(String),
}

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
    // A VM that runs as another user gets a directory of its own, the only
    // host directory it may write; others share evum's runtime base.
    let (uml_dir, runtime_dir, shared_base) = match (config.uml_dir, config.run_as) {
        (Some(dir), _) => (dir.clone(), dir.join(&umid), None),
        (None, None) => {
            let base = default_base(None);
            acquire_base(&base, None)?;
            (base.clone(), base.join(&umid), Some(base))
        }
        (None, Some(ids)) => {
            let base = default_base(Some(ids));
            acquire_base(&base, Some(ids))?;
            let own = base.join(&umid);
            if let Err(e) = private_dir(&own, ids) {
                release_base(&base);
                return Err(e);
            }
            (own.clone(), own, Some(base))
        }
    };
    let release = move || {
        if let Some(base) = &shared_base {
            release_base(base);
        }
    };
    let identity = Identity {
        umid: umid.clone(),
        uml_dir: uml_dir.clone(),
    };
    let sandboxed = config.run_as.is_some();
    let spawned = options::kernel_args(&identity, &config.options)
        .and_then(|args| Ok((args, placement::cpu_set(&config.options)?)))
        .map_err(StartError::from)
        .and_then(|(args, cpus)| {
            let spec = SpawnSpec {
                kernel: config.kernel,
                args,
                cpus,
                run_as: config.run_as,
                env: if sandboxed {
                    vec![("TMPDIR".into(), "/dev/shm".into())]
                } else {
                    Vec::new()
                },
                read_only_host_but: sandboxed.then(|| uml_dir.clone()),
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
    let mconsole = uml_dir.join(&umid).join("mconsole");
    crate::watchdog::watch(spawned.pid.as_raw(), &runtime_dir);
    let handle = io_loop::adopt(spawned, Some(runtime_dir.clone()), Box::new(release), events);
    Ok(Vm {
        handle,
        umid,
        runtime_dir,
        mconsole,
    })
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

/// evum's runtime base: `$XDG_RUNTIME_DIR/evum`, else `/tmp/evum-<uid>`
/// (with the target uid appended when VMs run as another user).
pub fn default_base(run_as: Option<(u32, u32)>) -> PathBuf {
    let euid = nix::unistd::geteuid().as_raw();
    match (run_as, std::env::var_os("XDG_RUNTIME_DIR")) {
        (None, Some(xdg)) if !xdg.is_empty() => PathBuf::from(xdg).join("evum"),
        (None, _) => std::env::temp_dir().join(format!("evum-{euid}")),
        (Some((uid, _)), _) => std::env::temp_dir().join(format!("evum-{euid}-as-{uid}")),
    }
}

/// VMs using each runtime base. The last one out removes the directory, so
/// nothing of evum's stays in /tmp; creating and removing happen under one
/// lock so a VM starting never sees its base vanish.
static BASES: Mutex<Option<HashMap<PathBuf, usize>>> = Mutex::new(None);

fn acquire_base(base: &Path, run_as: Option<(u32, u32)>) -> Result<(), StartError> {
    let err = |source| StartError::RuntimeDir {
        path: base.to_path_buf(),
        source,
    };
    let mut bases = BASES.lock().unwrap_or_else(|p| p.into_inner());
    match fs::DirBuilder::new().mode(0o700).create(base) {
        Ok(()) => {
            if let Some((uid, gid)) = run_as {
                nix::unistd::chown(base, Some(uid.into()), Some(gid.into())).map_err(|e| err(e.into()))?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    // In a shared /tmp someone else may have made this path first: use it
    // only if it is a real directory owned by whoever runs the VMs.
    let meta = fs::symlink_metadata(base).map_err(err)?;
    let owner = run_as
        .map(|(uid, _)| uid)
        .unwrap_or_else(|| nix::unistd::geteuid().as_raw());
    if !meta.is_dir() || meta.uid() != owner {
        return Err(err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not a directory owned by the VM's user",
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(base, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    *bases
        .get_or_insert_with(HashMap::new)
        .entry(base.to_path_buf())
        .or_insert(0) += 1;
    Ok(())
}

/// A new private directory for a switch's sockets, under the runtime base
/// of VMs that run as `run_as` (so that they may enter it) or of evum's own.
/// [`remove_switch_dir`] takes it away again.
pub fn switch_dir(run_as: Option<(u32, u32)>) -> Result<PathBuf, StartError> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let base = default_base(run_as);
    acquire_base(&base, run_as)?;
    let dir = base.join(format!(
        "switch-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let made = match run_as {
        Some(ids) => private_dir(&dir, ids),
        None => fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StartError::RuntimeDir {
                path: dir.clone(),
                source,
            }),
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

fn private_dir(dir: &Path, (uid, gid): (u32, u32)) -> Result<(), StartError> {
    let err = |source| StartError::RuntimeDir {
        path: dir.to_path_buf(),
        source,
    };
    fs::DirBuilder::new().mode(0o700).create(dir).map_err(err)?;
    nix::unistd::chown(dir, Some(uid.into()), Some(gid.into())).map_err(|e| err(e.into()))
}

fn release_base(base: &Path) {
    let mut bases = BASES.lock().unwrap_or_else(|p| p.into_inner());
    let users = bases.get_or_insert_with(HashMap::new);
    if let Some(count) = users.get_mut(base) {
        *count -= 1;
        if *count == 0 {
            users.remove(base);
            // Fails harmlessly while another program's VMs still use it.
            let _ = fs::remove_dir(base);
        }
    }
}
