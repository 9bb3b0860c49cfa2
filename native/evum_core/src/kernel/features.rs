//! What a UML kernel binary supports, found without running it.
//!
//! Booting a kernel to ask it would cost a host process and a third of a
//! second on every VM start. Reading it costs a few milliseconds, and the
//! answer is in the file: every command-line option a UML kernel knows is
//! registered with `__uml_setup()` or `__uml_help()`, which embed the
//! option's help text in the binary, and an option whose code is compiled
//! out leaves no text behind. So the text says what is there:
//!
//! | feature | text | from |
//! |---|---|---|
//! | seccomp | `seccomp=<on/auto/off>` | `arch/um/os-Linux/start_up.c` (7.2 has it, Debian's 6.1 not) |
//! | SMP | `ncpus=<# of desired CPUs>` | `arch/um/kernel/smp.c`, built with `CONFIG_SMP` (likewise) |
//! | vector driver | `vec[0-9]+:<option>=<value>` | `arch/um/drivers/vector_kern.c` (both) |
//! | daemon transport | `daemon backend (uml_switch version` | `arch/um/drivers/daemon_kern.c` (6.1; 7.2 has no legacy drivers) |
//!
//! The daemon transport registers no help text of its own (only
//! `eth[0-9]+=<transport>,<options>`, which every legacy transport shares),
//! so its mark is the line it prints when an interface opens.
//!
//! Results are cached per file (path, modification time and size), since
//! every VM start asks.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use memchr::memmem::Finder;

/// What a UML kernel supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// `seccomp=on`: guest processes under a seccomp filter instead of ptrace.
    pub seccomp: bool,
    /// `ncpus=N`: more than one virtual CPU.
    pub smp: bool,
    /// `ethN=daemon,...`: the uml_switch transport of the legacy drivers.
    pub daemon_net: bool,
    /// `vecN:transport=...`: the vector network driver (bess, tap, raw, ...).
    pub vector_net: bool,
}

/// Sets the field of one feature.
type Setter = fn(&mut Features);

/// Each feature's text in the binary, and the field it sets.
const MARKS: &[(&[u8], Setter)] = &[
    (b"seccomp=<on/auto/off>", |f| f.seccomp = true),
    (b"ncpus=<# of desired CPUs>", |f| f.smp = true),
    (b"vec[0-9]+:<option>=<value>", |f| f.vector_net = true),
    (b"daemon backend (uml_switch version", |f| f.daemon_net = true),
];

/// How much of the file is read at a time: kernels are 8-40 MB.
const CHUNK: usize = 1 << 20;

/// How many kernels' answers are kept: a BEAM uses one or two.
const CACHE_SIZE: usize = 8;

/// What `kernel` supports. A bare name (`linux`) is looked up on PATH, as
/// the VM's spawn does. The file is read, never run.
pub fn probe(kernel: &Path) -> io::Result<Features> {
    let path = resolve(kernel).ok_or_else(|| not_found(kernel))?;
    let key = Key::of(&path)?;
    if let Some(features) = cached(&key) {
        return Ok(features);
    }
    let features = scan(File::open(&key.path)?, CHUNK)?;
    remember(key, features);
    Ok(features)
}

/// The kernel binary as a path: as given if it has a slash, else the first
/// file of that name on PATH (what the VM's spawn runs).
pub fn resolve(kernel: &Path) -> Option<PathBuf> {
    if kernel.components().count() > 1 {
        return Some(kernel.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(kernel))
        .find(|p| p.is_file())
}

fn not_found(kernel: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("UML kernel {} not found on PATH", kernel.display()),
    )
}

/// Searches a kernel image for every feature's text, a chunk at a time.
/// Each chunk starts with the end of the one before, as long as the
/// longest text but one byte, so a text cut by a chunk's end is still found.
fn scan(mut reader: impl Read, chunk: usize) -> io::Result<Features> {
    let finders: Vec<Finder> = MARKS.iter().map(|(text, _)| Finder::new(text)).collect();
    let overlap = MARKS.iter().map(|(text, _)| text.len()).max().unwrap_or(1) - 1;
    let mut found = vec![false; MARKS.len()];
    let mut buf = vec![0u8; overlap + chunk.max(1)];
    let mut carried = 0;
    loop {
        let read = match reader.read(&mut buf[carried..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let window = &buf[..carried + read];
        for (finder, seen) in finders.iter().zip(found.iter_mut()) {
            *seen = *seen || finder.find(window).is_some();
        }
        if found.iter().all(|&seen| seen) {
            break;
        }
        let keep_from = window.len().saturating_sub(overlap);
        carried = window.len() - keep_from;
        buf.copy_within(keep_from..keep_from + carried, 0);
    }
    let mut features = Features::default();
    for ((_, set), seen) in MARKS.iter().zip(found) {
        if seen {
            set(&mut features);
        }
    }
    Ok(features)
}

/// A kernel file as it is now: a rebuilt or replaced kernel is another key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    /// With symlinks resolved (`/usr/bin/linux` is an alternatives link).
    path: PathBuf,
    modified: SystemTime,
    size: u64,
}

impl Key {
    fn of(path: &Path) -> io::Result<Key> {
        let path = fs::canonicalize(path)?;
        let meta = fs::metadata(&path)?;
        Ok(Key {
            modified: meta.modified()?,
            size: meta.len(),
            path,
        })
    }
}

/// The latest answers, oldest first.
static CACHE: Mutex<VecDeque<(Key, Features)>> = Mutex::new(VecDeque::new());

fn cached(key: &Key) -> Option<Features> {
    let cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    cache.iter().find(|(k, _)| k == key).map(|(_, f)| *f)
}

fn remember(key: Key, features: Features) {
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    // An older version of the same file will not be asked about again.
    cache.retain(|(k, _)| k.path != key.path);
    if cache.len() >= CACHE_SIZE {
        cache.pop_front();
    }
    cache.push_back((key, features));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const DEBIAN_6_1: &str = "/usr/bin/linux";

    /// The real kernel at `path`, or None with the reason printed.
    fn real_kernel(path: &Path) -> Option<PathBuf> {
        if path.is_file() {
            Some(path.to_path_buf())
        } else {
            eprintln!("skipped: no kernel at {}", path.display());
            None
        }
    }

    /// evum's kernel, as `make deps` built it.
    fn evums_kernel() -> Option<PathBuf> {
        let built = crate::kernel::cached(&crate::kernel::default_cache_dir());
        real_kernel(&built.unwrap_or_else(|| PathBuf::from("evum's kernel (run make deps)")))
    }

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("evum-features-{}-{name}", std::process::id()));
        fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn debian_6_1_has_the_legacy_drivers_but_neither_seccomp_nor_smp() {
        let Some(kernel) = real_kernel(Path::new(DEBIAN_6_1)) else {
            return;
        };
        let want = Features {
            seccomp: false,
            smp: false,
            daemon_net: true,
            vector_net: true,
        };
        assert_eq!(probe(&kernel).unwrap(), want);
        // As the VM's spawn finds it: by its bare name, on PATH.
        if resolve(Path::new("linux")).as_deref() == Some(kernel.as_path()) {
            assert_eq!(probe(Path::new("linux")).unwrap(), want);
        }
    }

    #[test]
    fn evums_7_2_has_seccomp_and_vector_but_no_daemon_and_smp_in_its_flavour() {
        let Some(kernel) = evums_kernel() else { return };
        let want = Features {
            seccomp: true,
            smp: false,
            daemon_net: false,
            vector_net: true,
        };
        assert_eq!(probe(&kernel).unwrap(), want);
        let smp = Features { smp: true, ..want };
        assert_eq!(probe(&super::super::smp_flavour(&kernel)).unwrap(), smp);
    }

    #[test]
    fn texts_are_found_across_chunk_ends() {
        let mut image = vec![0u8; 100];
        image.extend_from_slice(b"\0seccomp=<on/auto/off>\n    Configure\0");
        image.extend_from_slice(&[0xff; 37]);
        image.extend_from_slice(b"vec[0-9]+:<option>=<value>,<option>=<value>\n");
        // Every chunk size cuts the texts somewhere else.
        for chunk in [1, 2, 7, 16, 33, 64, 4096] {
            let features = scan(&image[..], chunk).unwrap();
            assert_eq!(
                features,
                Features {
                    seccomp: true,
                    vector_net: true,
                    ..Features::default()
                },
                "chunk {chunk}"
            );
        }
        assert_eq!(scan(&b"ncpus=<# of desired"[..], 4).unwrap(), Features::default());
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let path = temp_file("changed", b"\0ncpus=<# of desired CPUs>\n\0");
        let first = probe(&path).unwrap();
        assert!(first.smp && !first.daemon_net);
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"daemon backend (uml_switch version %d) - %s:%s\0")
            .unwrap();
        drop(file);
        let second = probe(&path).unwrap();
        assert!(second.smp && second.daemon_net);
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_cache_stays_small() {
        let paths: Vec<PathBuf> = (0..CACHE_SIZE + 3)
            .map(|i| temp_file(&format!("many{i}"), b"seccomp=<on/auto/off>"))
            .collect();
        for path in &paths {
            assert!(probe(path).unwrap().seccomp);
        }
        assert!(CACHE.lock().unwrap().len() <= CACHE_SIZE);
        for path in &paths {
            fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn a_missing_kernel_is_not_found() {
        for kernel in ["/nonexistent/linux", "evum-no-such-kernel"] {
            let err = probe(Path::new(kernel)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{kernel}");
        }
    }
}
