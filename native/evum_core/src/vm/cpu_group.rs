//! The VMs' share of the host's CPUs, where evum may make cgroups (as root).
//!
//! The host's scheduler shares the CPUs between groups, and each VM needs
//! a group of its own: a VM is a UML kernel process and a traced host
//! process per guest process, which hand the CPU to each other on every
//! guest system call, and within one group the one woken waits its turn
//! among all the group's runnable processes (1000 VMs in one group: 1000
//! commands at once all timed out). Without cgroups each VM is a session,
//! and so a group where the host groups by session (autogroup, see
//! [`super::priority`]). But then 1000 busy VMs are 1000 groups to the
//! BEAM's one, and the BEAM, with a sixteenth of the CPUs, waited up to
//! 470 ms for one.
//!
//! So where evum may write the host's `cpu` cgroup hierarchy, a BEAM's
//! VMs are a tree: one group `evum-<BEAM's pid>` at the root of the
//! hierarchy, weighted as a process at nice 19 is, so that together they
//! count as one program that lets the BEAM and everything else go first
//! (1000 VMs: the BEAM's worst delay 33 ms, the machine's own floor, and
//! every VM as fast as before); in it a group per VM, named by its umid,
//! weighted by the VM's own nice value among its siblings.
//!
//! Both cgroup versions: v2 (`cgroup.controllers` lists `cpu`; weights
//! through `cpu.weight.nice`) and v1 (a `cgroup` mount with the `cpu`
//! option; `cpu.shares`, the kernel's weight for the nice value). A VM's
//! process moves itself into its group between clone and exec. Anything
//! that does not work leaves the VM where it would be without cgroups:
//! cgroups are how evum shares the CPUs better, never a reason a VM does
//! not start.
//!
//! A VM's group is removed when its processes are gone (they take a few
//! milliseconds to exit after the SIGKILL, so a remover thread retries),
//! the BEAM's group by the watchdog when the BEAM is gone, and a group of
//! a BEAM that died with its watchdog by the next BEAM that makes one.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Sender};

/// The kernel's weight for each nice value from 0 to 19
/// (`sched_prio_to_weight`): cgroup v1's `cpu.shares` for a group that
/// should weigh as a process at that nice value does.
const NICE_WEIGHTS: [u64; 20] = [
    1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45, 36, 29, 23, 18, 15,
];

/// The nice value the group of all a BEAM's VMs weighs as.
const ALL_VMS_NICE: u8 = 19;

/// How long the remover tries to remove a VM's group: its processes exit
/// within milliseconds of the SIGKILL evum sends the whole VM.
const REMOVE_FOR: Duration = Duration::from_secs(10);
const REMOVE_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The BEAM's group of VMs.
#[derive(Debug)]
struct Parent {
    version: Version,
    dir: PathBuf,
}

/// A VM's group; removed (when its processes are gone) on drop.
#[derive(Debug)]
pub struct VmGroup {
    dir: PathBuf,
    /// The file of the group the VM's process writes "0" (itself) into.
    join: CString,
}

impl VmGroup {
    /// The file the VM's process writes "0" into to join the group, while
    /// it is one thread (between clone and exec).
    pub fn join_file(&self) -> &CString {
        &self.join
    }
}

impl Drop for VmGroup {
    fn drop(&mut self) {
        remove_later(self.dir.clone());
    }
}

/// Makes a group for a VM named `name` (its umid) at nice value `nice`;
/// None where evum makes no cgroups (not root, no `cpu` hierarchy) or the
/// group cannot be made.
pub fn for_vm(name: &str, nice: u8) -> Option<VmGroup> {
    let parent = parent()?;
    let dir = parent.dir.join(name);
    let made = fs::create_dir(&dir).and_then(|()| set_weight(parent.version, &dir, nice));
    if let Err(e) = made {
        log::warn!("evum: cannot make the cgroup {}: {e}", dir.display());
        let _ = fs::remove_dir(&dir);
        return None;
    }
    let join = CString::new(dir.join(join_file(parent.version)).as_os_str().as_bytes()).ok()?;
    Some(VmGroup { dir, join })
}

/// Where a one-thread process joins a group. A move through `cgroup.procs`
/// takes the kernel's global thread-group lock for writing, which waits
/// for an RCU grace period unless another move came just before: 5-17 ms
/// a VM on this kind of host where boots come one by one (evm:create to
/// the prompt 35 ms against 26 for the same boot outside a group). v1's
/// `tasks` moves only the writing thread, which needs no such lock
/// (0.4 ms), and is the whole process while it has one thread. v2 has
/// `cgroup.procs` only (its `cgroup.threads` is for threaded groups).
fn join_file(version: Version) -> &'static str {
    match version {
        Version::V1 => "tasks",
        Version::V2 => "cgroup.procs",
    }
}

/// The BEAM's group, made on first use; None if it cannot be.
fn parent() -> Option<&'static Parent> {
    static PARENT: OnceLock<Option<Parent>> = OnceLock::new();
    PARENT
        .get_or_init(|| {
            let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
            let (root, version) = cpu_hierarchy(&mountinfo, |dir| {
                fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default()
            })?;
            remove_groups_of_dead_beams(&root);
            match make_parent(&root, version) {
                Ok(parent) => Some(parent),
                Err(e) => {
                    // Not root, most often: the host's own grouping it is.
                    log::debug!("evum: VMs in no cgroup of evum's ({}): {e}", root.display());
                    None
                }
            }
        })
        .as_ref()
}

fn make_parent(root: &Path, version: Version) -> io::Result<Parent> {
    let dir = root.join(format!("evum-{}", std::process::id()));
    if version == Version::V2 {
        // Groups below the root get the cpu controller only if the root
        // hands it down (systemd's hosts do).
        enable_cpu_below(root)?;
    }
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let made = set_weight(version, &dir, ALL_VMS_NICE).and_then(|()| {
        if version == Version::V2 {
            enable_cpu_below(&dir)
        } else {
            Ok(())
        }
    });
    if let Err(e) = made {
        let _ = fs::remove_dir(&dir);
        return Err(e);
    }
    crate::vm::watchdog::keep_cgroup(&dir);
    Ok(Parent { version, dir })
}

fn enable_cpu_below(dir: &Path) -> io::Result<()> {
    let control = dir.join("cgroup.subtree_control");
    if fs::read_to_string(&control)?.split_whitespace().any(|c| c == "cpu") {
        return Ok(());
    }
    fs::write(control, "+cpu")
}

fn set_weight(version: Version, dir: &Path, nice: u8) -> io::Result<()> {
    match version {
        Version::V1 => fs::write(dir.join("cpu.shares"), shares(nice).to_string()),
        Version::V2 => fs::write(dir.join("cpu.weight.nice"), nice.min(19).to_string()),
    }
}

/// cgroup v1's `cpu.shares` for a group that weighs as a process at
/// `nice` (0 to 19).
fn shares(nice: u8) -> u64 {
    NICE_WEIGHTS[usize::from(nice.min(19))]
}

/// Where the `cpu` controller's hierarchy is mounted, and which version it
/// is, from /proc/self/mountinfo; v2 if it has the controller (asked
/// through `controllers`, the text of a directory's `cgroup.controllers`).
fn cpu_hierarchy(mountinfo: &str, controllers: impl Fn(&Path) -> String) -> Option<(PathBuf, Version)> {
    let mut v1 = None;
    for line in mountinfo.lines() {
        let Some((mount, fs_part)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = mount.split(' ').nth(4) else { continue };
        let point = PathBuf::from(unescape(point));
        let mut fs_fields = fs_part.split(' ');
        let fs_type = fs_fields.next().unwrap_or("");
        let options = fs_fields.nth(1).unwrap_or("");
        match fs_type {
            "cgroup2" if controllers(&point).split_whitespace().any(|c| c == "cpu") => {
                return Some((point, Version::V2));
            }
            "cgroup" if v1.is_none() && options.split(',').any(|o| o == "cpu") => {
                v1 = Some((point, Version::V1));
            }
            _ => {}
        }
    }
    v1
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Groups `evum-<pid>` of BEAMs that are gone (killed with their
/// watchdog): their VMs' groups, then theirs, as far as they are empty.
fn remove_groups_of_dead_beams(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("evum-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(vms) = fs::read_dir(entry.path()) {
            for vm in vms.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
                let _ = fs::remove_dir(vm.path());
            }
        }
        let _ = fs::remove_dir(entry.path());
    }
}

/// Removes a VM's group once its processes are gone: at once if they are,
/// else by the remover thread, which tries again for a while.
fn remove_later(dir: PathBuf) {
    if try_remove(&dir) {
        return;
    }
    static REMOVER: OnceLock<Option<Sender<PathBuf>>> = OnceLock::new();
    let remover = REMOVER.get_or_init(|| {
        let (tx, rx) = unbounded::<PathBuf>();
        let started = std::thread::Builder::new().name("evum-cgroups".into()).spawn(move || {
            let mut pending: Vec<(PathBuf, Instant)> = Vec::new();
            loop {
                let wait = if pending.is_empty() {
                    Duration::from_secs(3600)
                } else {
                    REMOVE_EVERY
                };
                match rx.recv_timeout(wait) {
                    Ok(dir) => pending.push((dir, Instant::now() + REMOVE_FOR)),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
                let now = Instant::now();
                pending.retain(|(dir, until)| {
                    if try_remove(dir) {
                        return false;
                    }
                    if now >= *until {
                        log::warn!("evum: cgroup {} still busy after {REMOVE_FOR:?}; left", dir.display());
                        return false;
                    }
                    true
                });
            }
        });
        started.ok().map(|_| tx)
    });
    if let Some(tx) = remover {
        let _ = tx.send(dir);
    }
}

/// True when `dir` is gone (removed now, or before).
fn try_remove(dir: &Path) -> bool {
    match fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_HOST: &str = "\
22 1 0:21 / / rw,relatime - ext4 /dev/vda rw
31 25 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
32 25 0:28 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";

    const V2_HOST: &str = "\
22 1 0:21 / / rw,relatime - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn the_cpu_hierarchy_is_v2_where_it_has_the_controller_else_the_v1_mount_with_cpu() {
        let none = |_: &Path| String::new();
        let cpu = |_: &Path| "cpuset cpu io memory pids\n".to_string();
        assert_eq!(
            cpu_hierarchy(V1_HOST, none),
            Some((PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"), Version::V1))
        );
        assert_eq!(
            cpu_hierarchy(V2_HOST, cpu),
            Some((PathBuf::from("/sys/fs/cgroup"), Version::V2))
        );
        assert_eq!(cpu_hierarchy(V2_HOST, none), None);
        assert_eq!(cpu_hierarchy("", cpu), None);
    }

    #[test]
    fn mount_points_with_escapes_are_read_as_paths() {
        let info = "33 25 0:29 / /sys/fs/cgroup/my\\040cpu rw - cgroup cgroup rw,cpu\n";
        let (root, _) = cpu_hierarchy(info, |_| String::new()).unwrap();
        assert_eq!(root, PathBuf::from("/sys/fs/cgroup/my cpu"));
    }

    #[test]
    fn shares_are_the_kernels_weights_for_the_nice_value() {
        assert_eq!(shares(0), 1024);
        assert_eq!(shares(19), 15);
        assert_eq!(shares(200), 15);
        assert!(NICE_WEIGHTS.windows(2).all(|w| w[0] > w[1]));
    }
}
