//! Host resources that run out, named: a caller told "Invalid argument" or
//! "No space left on device" deep inside some message cannot tell which
//! limit it met or what to free. Errors that carry an [`io::Error`] say
//! here whether it was the host's open files or a file system's space.

use std::error::Error;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

/// A host resource an operation ran out of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exhausted {
    /// This process's open files (EMFILE, its RLIMIT_NOFILE) or the whole
    /// host's (ENFILE).
    OpenFiles,
    /// The file system of this path is full (ENOSPC) or its owner's quota
    /// is (EDQUOT).
    NoSpace(PathBuf),
}

/// The OS error number of the first [`io::Error`] in `err`'s chain of
/// sources, `err` itself included.
pub fn os_error(err: &(dyn Error + 'static)) -> Option<i32> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(errno) = e.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error) {
            return Some(errno);
        }
        next = e.source();
    }
    None
}

/// What `err` ran out of, if its chain holds such an OS error; `path` is
/// where it was writing (None when it does not say, and then a full file
/// system is not named).
pub fn exhausted(err: &(dyn Error + 'static), path: Option<PathBuf>) -> Option<Exhausted> {
    match os_error(err)? {
        libc::EMFILE | libc::ENFILE => Some(Exhausted::OpenFiles),
        libc::ENOSPC | libc::EDQUOT => path.map(Exhausted::NoSpace),
        _ => None,
    }
}

/// Whether this process can open `count` more files now: opens them and
/// closes them again. What a VM's start opens at once fails less clearly
/// deep inside it, and leaves less behind, when this is asked first. An
/// error other than EMFILE and ENFILE says nothing about the limit, so it
/// counts as room.
pub fn files_left(count: usize) -> bool {
    let first = match File::open("/dev/null") {
        Ok(file) => OwnedFd::from(file),
        Err(e) => return !matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)),
    };
    let mut held = Vec::with_capacity(count);
    for _ in 1..count {
        match first.as_fd().try_clone_to_owned() {
            Ok(fd) => held.push(fd),
            Err(e) => return !matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] io::Error);

    #[test]
    fn the_os_error_is_found_down_the_chain() {
        let full = Outer(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(os_error(&full), Some(libc::ENOSPC));
        assert_eq!(
            exhausted(&full, Some("/x".into())),
            Some(Exhausted::NoSpace("/x".into()))
        );
        assert_eq!(exhausted(&full, None), None);
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(exhausted(&emfile, None), Some(Exhausted::OpenFiles));
        let other = Outer(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(exhausted(&other, Some("/x".into())), None);
    }

    #[test]
    fn a_process_with_descriptors_to_spare_has_them() {
        assert!(files_left(16));
    }
}
