//! evum's own UML kernel, built once per machine from Debian's kernel source.
//!
//! Debian's packaged UML (6.1) saves a fixed-size FPU state: it cannot start
//! on hosts with AMX and corrupts guests' vector registers across signals on
//! any AVX-512 host. Linux 7.x sizes that state from the host, so evum
//! builds a trimmed 7.x UML of its own:
//!
//! - [`apt`]: the newest `linux-source-7.*` through a private apt
//!   configuration (the machine's sources and state are left alone).
//! - [`build`]: unpack, patch with `priv/kernel/patches/` (each file says
//!   why), configure with `priv/kernel/evum.config`, compile; then again
//!   with SMP on top (`priv/kernel/evum-smp.config`).
//! - [`lpj`]: the delay-loop constant, calibrated once per host and cached,
//!   so that boots skip the calibration.
//! - [`features`]: what a UML binary supports, read from the binary.
//!
//! The result lives in `<cache_dir>/kernel/<package>_<version>-<config
//! hash>/`: `linux`, the kernel every VM boots unless it asks for more than
//! one CPU, `linux-smp` for those, and the build log. It appears there whole or not
//! at all (built elsewhere, then renamed), and builds take a lock, so two
//! at once build once.

pub mod apt;
pub mod build;
pub mod features;
pub mod lpj;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

/// The changes evum makes to `make ARCH=um defconfig`: `scripts/config`
/// arguments, one option a line, with comments saying why.
pub const CONFIG: &str = include_str!("../../../../priv/kernel/evum.config");

/// The SMP flavour's changes on top of [`CONFIG`].
pub const SMP_CONFIG: &str = include_str!("../../../../priv/kernel/evum-smp.config");

/// evum's changes to the kernel's source, applied in order with `patch
/// -p1` before it is configured: (file name, text). Each file begins with
/// why.
pub const PATCHES: &[(&str, &str)] = &[(
    "vector-bess-rebind.patch",
    include_str!("../../../../priv/kernel/patches/vector-bess-rebind.patch"),
)];

/// The name of the kernel binary in a build's directory.
pub const BINARY: &str = "linux";

/// The name of the SMP flavour's binary, beside [`BINARY`].
pub const SMP_BINARY: &str = "linux-smp";

/// The SMP flavour of the kernel at `binary` (evum's, from [`cached`] or
/// [`ensure`]).
pub fn smp_flavour(binary: &Path) -> PathBuf {
    binary.with_file_name(SMP_BINARY)
}

/// A step of a build, for a progress report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Another program is building the same kernel; this one waits for it.
    Waiting,
    /// Reading the package index of the suite that has the source.
    Updating { suite: String },
    /// Downloading the source package (`bytes` is its size when known).
    Downloading {
        package: String,
        version: String,
        bytes: Option<u64>,
    },
    /// Unpacking the source tree: files so far.
    Unpacking { files: u64 },
    /// `defconfig`, then evum's changes.
    Configuring,
    /// Compiling: files done, and about how many there are in all.
    Compiling { done: u64, total: u64 },
    /// Booting the new kernel once to measure the host's delay loop.
    Calibrating,
    /// The kernel is ready at this path.
    Done { path: PathBuf },
}

/// An I/O failure on a path: what was being done, to what.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct PathError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// For `map_err`: an I/O error becomes a [`PathError`] doing `what` to `path`.
fn on(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PathError {
    let path = path.to_path_buf();
    move |source| PathError { what, path, source }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Apt(#[from] apt::AptError),
    #[error(transparent)]
    Build(#[from] build::BuildError),
}

/// Where evum keeps downloads and builds when not told otherwise:
/// `/var/cache/evum` for root, else `$XDG_CACHE_HOME/evum` or
/// `~/.cache/evum` (as the Erlang side's `cache_dir` default).
pub fn default_cache_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/cache/evum");
    }
    match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
        (Some(xdg), _) if !xdg.is_empty() => PathBuf::from(xdg).join("evum"),
        (_, Some(home)) => PathBuf::from(home).join(".cache/evum"),
        _ => std::env::temp_dir().join(format!("evum-cache-{}", nix::unistd::geteuid())),
    }
}

/// The first characters of the hash of evum's configuration and patches: a
/// build made with another configuration or other patches is another
/// kernel.
pub fn config_hash() -> String {
    let mut hash = Sha256::new()
        .chain_update(CONFIG.as_bytes())
        .chain_update(SMP_CONFIG.as_bytes());
    for (name, text) in PATCHES {
        hash.update(name.as_bytes());
        hash.update(text.as_bytes());
    }
    let digest = hash.finalize();
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn kernels_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("kernel")
}

/// The directory of a finished build of `package` at `version`.
fn build_dir(cache_dir: &Path, package: &str, version: &str) -> PathBuf {
    kernels_dir(cache_dir).join(format!("{package}_{version}-{}", config_hash()))
}

/// Where a build is put together before it is renamed into place.
fn partial(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// evum's kernel, if this cache holds a finished build of the current
/// configuration (the newest, should there be several).
pub fn cached(cache_dir: &Path) -> Option<PathBuf> {
    let suffix = format!("-{}", config_hash());
    let entries = fs::read_dir(kernels_dir(cache_dir)).ok()?;
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
        .map(|e| e.path().join(BINARY))
        .filter(|binary| smp_flavour(binary).is_file())
        .filter_map(|binary| Some((fs::metadata(&binary).ok()?.modified().ok()?, binary)))
        .max()
        .map(|(_, binary)| binary)
}

/// evum's kernel: the cached build, or a new one (minutes: a download of
/// about 160 MB from `mirror`, see [`apt::PrivateApt::new`], and a
/// compile). `progress` hears of every step.
pub fn ensure(
    cache_dir: &Path,
    mirror: Option<&str>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<PathBuf, KernelError> {
    // A build is judged by its tools' exit statuses, which the BEAM's
    // SIGCHLD disposition would throw away.
    crate::vm::process::keep_exit_statuses();
    ensure_with(cache_dir, progress, &mut |cache_dir, work, progress| {
        build_in(cache_dir, work, mirror, progress)
    })
}

/// How a kernel is built: into `cache_dir` with a work directory of its own.
type Builder<'a> = dyn FnMut(&Path, &Path, &mut dyn FnMut(&Progress)) -> Result<PathBuf, KernelError> + 'a;

/// [`ensure`] with the build itself given: the cache and its lock are what
/// is left, and they are the same.
fn ensure_with(
    cache_dir: &Path,
    progress: &mut dyn FnMut(&Progress),
    build: &mut Builder,
) -> Result<PathBuf, KernelError> {
    if let Some(binary) = cached(cache_dir) {
        return ready(cache_dir, binary, progress);
    }
    let dir = kernels_dir(cache_dir);
    fs::create_dir_all(&dir).map_err(on("creating", &dir))?;
    let _lock = lock(&dir, progress)?;
    // Whoever held the lock before may have built it.
    if let Some(binary) = cached(cache_dir) {
        return ready(cache_dir, binary, progress);
    }
    remove_leftovers(&dir);
    let work = dir.join(format!("work-{}", std::process::id()));
    let built = build(cache_dir, &work, progress);
    let _ = fs::remove_dir_all(&work);
    ready(cache_dir, built?, progress)
}

/// Calibrates the delay loop if this host has no figure yet, then reports
/// the kernel done.
fn ready(cache_dir: &Path, binary: PathBuf, progress: &mut dyn FnMut(&Progress)) -> Result<PathBuf, KernelError> {
    if lpj::cached(cache_dir).is_none() {
        progress(&Progress::Calibrating);
        // A kernel whose calibration fails still boots, only slower: say so
        // in the log and go on.
        if let Err(e) = lpj::calibrate(&binary, cache_dir) {
            log::warn!("evum: calibrating the delay loop with {} failed: {e}", binary.display());
        }
    }
    progress(&Progress::Done { path: binary.clone() });
    Ok(binary)
}

fn build_in(
    cache_dir: &Path,
    work: &Path,
    mirror: Option<&str>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<PathBuf, KernelError> {
    fs::create_dir_all(work).map_err(on("creating", work))?;
    let apt = apt::PrivateApt::new(&work.join("apt"), mirror)?;
    progress(&Progress::Updating {
        suite: apt.suite().to_string(),
    });
    apt.update()?;
    let source = apt.newest_kernel_source()?;
    let target = build_dir(cache_dir, &source.package, &source.version);
    progress(&Progress::Downloading {
        package: source.package.clone(),
        version: source.version.clone(),
        bytes: source.size,
    });
    let deb = apt.download(&source, work)?;
    let staging = partial(&target);
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(on("creating", &staging))?;
    let built = build::build(&deb, work, &staging, progress);
    match built {
        Ok(()) => {
            fs::write(
                staging.join("version"),
                format!("{} {}\n", source.package, source.version),
            )
            .map_err(on("writing", &staging))?;
            // VMs that run as another user (the `host` dist as root) must
            // reach and run the kernel, whatever this process's umask.
            for dir in [kernels_dir(cache_dir), staging.clone()] {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(on("opening up", &dir))?;
            }
            fs::rename(&staging, &target).map_err(on("installing", &target))?;
            remove_other_builds(&kernels_dir(cache_dir), &target);
            Ok(target.join(BINARY))
        }
        Err(e) => {
            // The log stays for a look at what failed; nothing looks built.
            let log = staging.join(build::LOG);
            let kept = kernels_dir(cache_dir).join("failed-build.log");
            let _ = fs::rename(&log, &kept);
            let _ = fs::remove_dir_all(&staging);
            Err(e.into())
        }
    }
}

/// Takes the build lock, waiting (and saying so) while another build holds it.
fn lock(dir: &Path, progress: &mut dyn FnMut(&Progress)) -> Result<Flock<File>, KernelError> {
    let path = dir.join(".build.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(on("opening", &path))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((file, _)) => {
            progress(&Progress::Waiting);
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, errno)| KernelError::from(on("locking", &path)(errno.into())))
        }
    }
}

/// Builds of other versions or configurations are not used again: a new
/// build replaces them, so the cache holds one kernel. (VMs running one of
/// them keep their binary until they exit.)
fn remove_other_builds(dir: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path != keep && path.join(BINARY).exists() {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// An interrupted build leaves its work tree and a `.partial` directory;
/// with the lock held, nobody else is using them.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("work-") || name.ends_with(".partial") {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_turns_modules_off_and_the_vector_driver_on() {
        let lines: Vec<&str> = CONFIG.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(lines.contains(&"-d MODULES"));
        assert!(lines.contains(&"-e UML_NET_VECTOR"));
        assert_eq!(config_hash().len(), 12);
    }

    #[test]
    fn every_patch_says_why_before_its_first_file() {
        for (name, text) in PATCHES {
            let (why, diff) = text
                .split_once("\n--- a/")
                .unwrap_or_else(|| panic!("{name} changes no file"));
            assert!(why.split_whitespace().count() >= 10, "{name} does not say why");
            assert!(diff.contains("\n+++ b/"), "{name} is not a unified diff");
        }
    }

    /// A build that takes a while and counts itself, as a real one would
    /// put its result in place.
    fn slow_build(count: &std::sync::atomic::AtomicUsize) -> Box<Builder<'_>> {
        Box::new(move |cache_dir, work, _| {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            fs::create_dir_all(work).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            let target = build_dir(cache_dir, "linux-source-7.2", "7.2.13-1");
            let staging = partial(&target);
            fs::create_dir_all(&staging).unwrap();
            for binary in [BINARY, SMP_BINARY] {
                fs::write(staging.join(binary), b"").unwrap();
            }
            fs::rename(&staging, &target).unwrap();
            Ok(target.join(BINARY))
        })
    }

    fn temp_cache(tag: &str) -> PathBuf {
        let cache = std::env::temp_dir().join(format!("evum-kernel-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&cache);
        cache
    }

    #[test]
    fn two_builds_at_once_build_once() {
        let cache = temp_cache("twice");
        let count = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<_> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..2)
                .map(|_| s.spawn(|| ensure_with(&cache, &mut |_| {}, &mut *slow_build(&count)).unwrap()))
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(results[0], results[1]);
        assert_eq!(cached(&cache), Some(results[0].clone()));
        fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn an_interrupted_build_leaves_nothing_that_looks_built() {
        let cache = temp_cache("interrupted");
        let failed = ensure_with(&cache, &mut |_| {}, &mut |cache_dir, work, _| {
            fs::create_dir_all(work).unwrap();
            let staging = partial(&build_dir(cache_dir, "linux-source-7.2", "7.2.13-1"));
            fs::create_dir_all(&staging).unwrap();
            fs::write(staging.join(BINARY), b"half").unwrap();
            Err(on("compiling", work)(io::Error::other("killed")).into())
        });
        assert!(failed.is_err());
        assert_eq!(cached(&cache), None);
        // The next build clears what the first left and builds.
        let count = std::sync::atomic::AtomicUsize::new(0);
        let built = ensure_with(&cache, &mut |_| {}, &mut *slow_build(&count)).unwrap();
        let left: Vec<String> = fs::read_dir(kernels_dir(&cache))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("work-") || n.ends_with(".partial"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(cached(&cache), Some(built));
        fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn a_new_build_replaces_the_others() {
        let cache = temp_cache("replaces");
        let old = kernels_dir(&cache).join("linux-source-7.2_7.2.12-1-000000000000");
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join(BINARY), b"").unwrap();
        let count = std::sync::atomic::AtomicUsize::new(0);
        let built = ensure_with(&cache, &mut |_| {}, &mut *slow_build(&count)).unwrap();
        remove_other_builds(&kernels_dir(&cache), built.parent().unwrap());
        assert!(!old.exists());
        assert!(built.exists());
        fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn only_a_finished_build_of_this_config_is_cached() {
        let cache = std::env::temp_dir().join(format!("evum-kernel-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&cache);
        assert_eq!(cached(&cache), None);
        let other = kernels_dir(&cache).join("linux-source-7.2_7.2.13-1-000000000000");
        let unfinished = partial(&build_dir(&cache, "linux-source-7.2", "7.2.14-1"));
        for dir in [&other, &unfinished] {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join(BINARY), b"").unwrap();
            fs::write(dir.join(SMP_BINARY), b"").unwrap();
        }
        assert_eq!(cached(&cache), None);
        // A build of the old layout, with no SMP flavour, is not one.
        let done = build_dir(&cache, "linux-source-7.2", "7.2.13-1");
        fs::create_dir_all(&done).unwrap();
        fs::write(done.join(BINARY), b"").unwrap();
        assert_eq!(cached(&cache), None);
        fs::write(done.join(SMP_BINARY), b"").unwrap();
        assert_eq!(cached(&cache), Some(done.join(BINARY)));
        assert_eq!(smp_flavour(&done.join(BINARY)), done.join(SMP_BINARY));
        fs::remove_dir_all(&cache).unwrap();
    }
}
