//! Who a VM is on the host.
//!
//! A guest is not trusted, and neither is the UML process that runs it: a
//! kernel bug the guest finds runs code as that process. So when evum runs
//! as root, every VM's UML process runs as a user and group of its own that
//! own nothing else on the host, as Firecracker's jailer runs each VM:
//! [`vm_identity`] takes a fresh id from [`IdRange`] (a range no system
//! user has) for both its uid and its gid. Each switch takes a group from
//! the same range ([`take_id`]), and a VM joins the groups of its switches
//! and no others, so it can reach its own switches' sockets and nothing of
//! another VM's.
//!
//! An id is held by a lock (flock) on a file named after it in
//! [`LOCK_DIR`], for as long as its VM or switch lives: two BEAMs on one
//! host never hand out the same id, and one that dies releases its ids with
//! its file descriptors. The lock files stay (removing one would race with
//! a BEAM taking it); they are empty files in a tmpfs.
//!
//! When evum does not run as root there is no other uid to take: VMs run as
//! the BEAM's own user, each in an unprivileged user namespace of its own
//! (where the host allows them: [`user_namespaces`]) with the same mount
//! walls; without, evum says once in a logged warning that VMs run
//! unwalled.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Where the id locks live (a root-owned directory, mode 0700).
pub const LOCK_DIR: &str = "/run/evum/ids";

/// The ids evum hands out: `count` ids from `first`. The default, 65536
/// ids from 0x70000000 (1879048192), is far above the ids Debian gives
/// users, system users, systemd's dynamic users and the usual subordinate
/// ranges of user namespaces (/etc/subuid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub first: u32,
    pub count: u32,
}

impl Default for IdRange {
    fn default() -> Self {
        IdRange {
            first: 0x7000_0000,
            count: 65536,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("every id of the range {} (+{}) is taken (the setting vm_ids)", .0.first, .0.count)]
    Exhausted(IdRange),
    #[error("the id range {0:?} is not usable: it must be inside 1..4294967294")]
    BadRange(IdRange),
    #[error("{path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

static RANGE: Mutex<Option<IdRange>> = Mutex::new(None);

/// Sets the range later ids come from (ids already held stay held).
pub fn set_range(range: IdRange) -> Result<(), JailError> {
    let last = u64::from(range.first) + u64::from(range.count);
    if range.first == 0 || range.count == 0 || last > u64::from(u32::MAX - 1) {
        return Err(JailError::BadRange(range));
    }
    *RANGE.lock().unwrap_or_else(|p| p.into_inner()) = Some(range);
    Ok(())
}

fn range() -> IdRange {
    RANGE.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or_default()
}

/// True when VMs get ids of their own: evum runs as root.
pub fn jailed() -> bool {
    nix::unistd::geteuid().is_root()
}

/// An id of the range, held until this is dropped.
#[derive(Debug)]
pub struct HeldId {
    pub id: u32,
    _lock: File,
}

/// Takes a free id: one no user or group of the host's databases has, and
/// no other holder on this host holds.
pub fn take_id() -> Result<HeldId, JailError> {
    take_id_in(range(), Path::new(LOCK_DIR))
}

fn take_id_in(range: IdRange, lock_dir: &Path) -> Result<HeldId, JailError> {
    lock_directory(lock_dir)?;
    // Start after the last id this process took, so that a VM's id is not
    // at once someone else's again: what an id's previous holder left
    // (processes being reaped, a file it owned) meets a new holder later.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = NEXT.load(Ordering::Relaxed);
    for step in 0..range.count {
        let offset = (start.wrapping_add(step)) % range.count;
        let id = range.first + offset;
        if known_to_the_host(id) {
            continue;
        }
        let path = lock_dir.join(id.to_string());
        let lock_err = |source| JailError::Lock {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(lock_err)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            NEXT.store(offset.wrapping_add(1) % range.count, Ordering::Relaxed);
            return Ok(HeldId { id, _lock: file });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(lock_err(e));
        }
    }
    Err(JailError::Exhausted(range))
}

/// The lock directory, made if missing: a real directory owned by evum's
/// user and closed to everyone else (a path someone else made first is
/// refused, not used).
fn lock_directory(dir: &Path) -> Result<(), JailError> {
    let err = |source| JailError::Lock {
        path: dir.to_path_buf(),
        source,
    };
    // The parent (/run/evum) also holds the runtime base the VMs' users
    // must traverse.
    if let Some(parent) = dir.parent() {
        fs::DirBuilder::new()
            .mode(0o755)
            .recursive(true)
            .create(parent)
            .map_err(err)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(err)?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != euid || meta.mode() & 0o077 != 0 {
        return Err(err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not a directory of evum's user with mode 0700",
        )));
    }
    Ok(())
}

/// An id a user or group of the host has (in /etc/passwd, /etc/group or
/// any other source NSS knows) is never handed out: a VM as that user
/// would own what that user owns.
fn known_to_the_host(id: u32) -> bool {
    use nix::unistd::{Gid, Group, Uid, User};
    !matches!(User::from_uid(Uid::from_raw(id)), Ok(None)) || !matches!(Group::from_gid(Gid::from_raw(id)), Ok(None))
}

/// A VM's host identity: its own uid and gid, and the switch groups it
/// joins. While it lives, the switches of those groups know the uid as
/// theirs ([`is_member`]).
#[derive(Debug)]
pub struct VmIdentity {
    held: HeldId,
    pub groups: Vec<u32>,
}

impl VmIdentity {
    pub fn uid(&self) -> u32 {
        self.held.id
    }

    /// The VM's own group has the number of its uid.
    pub fn gid(&self) -> u32 {
        self.held.id
    }
}

/// A fresh identity for a VM that joins the switches of `groups`, or None
/// when evum is not root (see the module's comment).
pub fn vm_identity(groups: &[u32]) -> Result<Option<VmIdentity>, JailError> {
    if !jailed() {
        return Ok(None);
    }
    let held = take_id()?;
    let identity = VmIdentity {
        held,
        groups: groups.to_vec(),
    };
    let mut members = MEMBERS.lock().unwrap_or_else(|p| p.into_inner());
    let members = members.get_or_insert_with(HashMap::new);
    for gid in &identity.groups {
        members.entry(*gid).or_default().insert(identity.uid());
    }
    Ok(Some(identity))
}

impl Drop for VmIdentity {
    fn drop(&mut self) {
        let mut members = MEMBERS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(members) = members.as_mut() {
            for gid in &self.groups {
                if let Some(uids) = members.get_mut(gid) {
                    uids.remove(&self.held.id);
                    if uids.is_empty() {
                        members.remove(gid);
                    }
                }
            }
        }
    }
}

/// Whether this host lets an unprivileged process make a user namespace
/// (checked once; a warning says so when it does not).
pub fn user_namespaces() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| {
        let read = |path: &str| fs::read_to_string(path).ok().map(|s| s.trim().to_string());
        let allowed = read("/proc/sys/user/max_user_namespaces").is_some_and(|n| n != "0")
            && read("/proc/sys/kernel/unprivileged_userns_clone").is_none_or(|v| v == "1")
            && read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").is_none_or(|v| v == "0");
        if !allowed {
            log::warn!(
                "evum: not running as root and user namespaces are off here, so VMs run as evum's own user \
                 without walls: a guest that breaks out of its UML kernel is that user"
            );
        }
        allowed
    })
}

/// The uids of the running VMs of each switch group.
static MEMBERS: Mutex<Option<HashMap<u32, HashSet<u32>>>> = Mutex::new(None);

/// Whether `uid` is a running VM that joined switch group `gid`.
pub fn is_member(gid: u32, uid: u32) -> bool {
    MEMBERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|members| members.get(&gid).is_some_and(|uids| uids.contains(&uid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("evum-jail-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn ids_are_held_until_dropped_and_never_shared() {
        let dir = lock_dir("held");
        let range = IdRange {
            first: 0x7100_0000,
            count: 3,
        };
        let a = take_id_in(range, &dir).unwrap();
        let b = take_id_in(range, &dir).unwrap();
        let c = take_id_in(range, &dir).unwrap();
        let ids: HashSet<u32> = [a.id, b.id, c.id].into();
        assert_eq!(ids.len(), 3);
        assert!(matches!(take_id_in(range, &dir), Err(JailError::Exhausted(_))));
        let freed = b.id;
        drop(b);
        assert_eq!(take_id_in(range, &dir).unwrap().id, freed);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_the_host_knows_are_skipped() {
        let dir = lock_dir("known");
        // Every host has root (0) and, on Debian, nobody (65534).
        let held = take_id_in(IdRange { first: 65534, count: 2 }, &dir).unwrap();
        assert_eq!(held.id, 65535);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_directory_open_to_others_is_refused() {
        let dir = lock_dir("open");
        fs::DirBuilder::new().mode(0o777).create(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        assert!(matches!(
            take_id_in(IdRange::default(), &dir),
            Err(JailError::Lock { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(set_range(IdRange { first: 0, count: 10 }).is_err());
        assert!(set_range(IdRange { first: 10, count: 0 }).is_err());
        assert!(set_range(IdRange {
            first: u32::MAX - 5,
            count: 10
        })
        .is_err());
    }
}
