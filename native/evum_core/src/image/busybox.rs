//! evum's default root, built from the host's static busybox: an initramfs
//! with evum's init, scripts and busybox's applet links, and a read-only
//! disk holding the busybox binary itself.
//!
//! It needs no download and boots fast. The guest's root is a tmpfs that the
//! kernel fills from the archive, so whatever the guest writes lives in its
//! own memory and the cached files are never changed.
//!
//! Busybox (2 MB) is on a disk rather than in the archive because every byte
//! of an archive costs a guest twice: the kernel reads the archive into the
//! guest's memory, unpacks it into the tmpfs, and the freed archive pages
//! stay resident on the host. From the disk, a guest reads only the pages of
//! busybox it runs into its page cache, and the host's page cache holds one
//! copy of the file for all guests (measured: 2 MB less guest memory per idle
//! VM with the disk's read-ahead at 64 KB).

use std::collections::hash_map::DefaultHasher;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::vm::options::BootOption;

/// PID 1, built from `priv/guest/evum-init.c` and `evum-ctl.c` by build.rs;
/// also the command loop, run as `/sbin/evum-ctl`.
const INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/evum-init"));
const ROOTFS_INIT: &str = include_str!("../../../../priv/guest/evum-rootfs");
const UDHCPC_SCRIPT: &str = include_str!("../../../../priv/guest/udhcpc-script");
const PROFILE: &str = "export PS1='\\u@\\h:\\w\\$ '\n";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";
const GROUP: &str = "root:x:0:\n";
const FSTAB: &str =
    "proc /proc proc defaults 0 0\nsysfs /sys sysfs defaults 0 0\ndevtmpfs /dev devtmpfs defaults 0 0\n";
/// Bumped whenever the archive layout changes, so old cached archives are not reused.
const LAYOUT_VERSION: u32 = 4;

/// The UBD index of the busybox disk: `ubd15`, the guest's `/dev/ubdp`,
/// which `evum-init.c` mounts on [`DISK_MOUNT`]. The last of UML's 16 disks,
/// so that a user's disks keep their numbers from 0.
pub const DISK_INDEX: u32 = 15;
/// Where the busybox disk is mounted in the guest; `/bin/busybox` links there.
const DISK_MOUNT: &str = "/lib/busybox";
/// Room on the disk beyond busybox itself: ext2's superblock, bitmaps,
/// inode table and two directories take about ten 4 KB blocks.
const DISK_SLACK: u64 = 128 * 1024;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path} is not a statically linked busybox (install busybox-static): {why}")]
    Busybox { path: PathBuf, why: String },
    #[error("{tool} failed (install e2fsprogs): {why}")]
    Tool { tool: &'static str, why: String },
    #[error("image cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    /// The same error, a cache error naming `path`.
    fn naming(self, path: &Path) -> Self {
        match self {
            ImageError::Cache { source, .. } => ImageError::Cache {
                path: path.into(),
                source,
            },
            other => other,
        }
    }

    /// The host resource the build ran out of, if that is why it failed.
    pub fn exhausted(&self) -> Option<crate::limits::Exhausted> {
        match self {
            ImageError::Cache { path, .. } => crate::limits::exhausted(self, Some(path.clone())),
            ImageError::Busybox { .. } | ImageError::Tool { .. } => None,
        }
    }
}

/// evum's busybox image in a cache: its two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyboxImage {
    /// The initramfs: init, evum's scripts, `/etc`, the applet links.
    pub initramfs: PathBuf,
    /// The ext2 disk with `busybox`, attached read-only as [`DISK_INDEX`].
    pub disk: PathBuf,
}

impl BusyboxImage {
    /// What a VM boots this image with (evum_dist's busybox options). The
    /// root is a tmpfs: UML names a root when none is given, and with one
    /// named the kernel unpacks the initramfs into ramfs, a page per link.
    pub fn boot_options(&self) -> Vec<BootOption> {
        vec![
            BootOption::Initrd(self.initramfs.clone()),
            BootOption::RootFsType("tmpfs".into()),
            BootOption::ReadOnlyUbd(DISK_INDEX, self.disk.to_string_lossy().into_owned()),
            BootOption::Init("/init".into()),
        ]
    }
}

/// Returns the busybox image in `cache_dir`, building it first if none for
/// this busybox binary and this version of evum's guest scripts exists yet.
/// Safe to call from several threads or VMs at once: each file appears
/// under its final name only when complete, the archive last.
pub fn busybox_image(busybox: &Path, cache_dir: &Path) -> Result<BusyboxImage, ImageError> {
    let meta = fs::metadata(busybox).map_err(|e| ImageError::Busybox {
        path: busybox.into(),
        why: e.to_string(),
    })?;
    let mut hasher = DefaultHasher::new();
    (
        LAYOUT_VERSION,
        meta.len(),
        meta.mtime(),
        meta.ino(),
        INIT,
        ROOTFS_INIT,
        UDHCPC_SCRIPT,
        PROFILE,
        FSTAB,
    )
        .hash(&mut hasher);
    let stem = format!("busybox-{:016x}", hasher.finish());
    let image = BusyboxImage {
        initramfs: cache_dir.join(format!("{stem}.cpio")),
        disk: cache_dir.join(format!("{stem}.ext2")),
    };
    if image.initramfs.exists() && image.disk.exists() {
        // Once per program: the ones this image replaced.
        static PRUNED: std::sync::Once = std::sync::Once::new();
        PRUNED.call_once(|| remove_other_images(cache_dir, &image));
        return Ok(image);
    }
    fs::create_dir_all(cache_dir).map_err(|source| ImageError::Cache {
        path: cache_dir.into(),
        source,
    })?;
    let applets = applets(busybox)?;
    // Unique per builder, so concurrent builders never write one file.
    static BUILDS: AtomicU64 = AtomicU64::new(0);
    let work = cache_dir.join(format!(
        ".busybox.{}.{}.partial",
        std::process::id(),
        BUILDS.fetch_add(1, Ordering::Relaxed)
    ));
    let built = build(busybox, &applets, &work, &image);
    let _ = fs::remove_dir_all(&work);
    built?;
    remove_other_images(cache_dir, &image);
    Ok(image)
}

/// Removes the images of other busybox binaries and other versions of
/// evum's guest files from the cache. A new image is made whenever either
/// changes (a busybox upgrade, a new evum), and the old ones would pile up
/// there, 2-3 MB each. A running VM keeps its disk open, so it does not
/// mind; a BEAM of another evum that needs its own image again makes it
/// again.
fn remove_other_images(cache_dir: &Path, keep: &BusyboxImage) {
    let Ok(entries) = fs::read_dir(cache_dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path != keep.initramfs && path != keep.disk && name.to_str().is_some_and(is_image_name) {
            let _ = fs::remove_file(&path);
        }
    }
}

/// `busybox-<16 hex digits>.cpio` or `.ext2`: a file [`busybox_image`] made.
fn is_image_name(name: &str) -> bool {
    let Some((stem, extension)) = name.strip_prefix("busybox-").and_then(|n| n.split_once('.')) else {
        return false;
    };
    stem.len() == 16 && stem.bytes().all(|b| b.is_ascii_hexdigit()) && matches!(extension, "cpio" | "ext2")
}

/// Builds both files in `work`, then moves each to its place.
fn build(busybox: &Path, applets: &[String], work: &Path, image: &BusyboxImage) -> Result<(), ImageError> {
    let cache_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Cache { path, source }
    };
    let tree = work.join("tree");
    fs::create_dir_all(&tree).map_err(cache_err(work))?;
    // busybox was read already (its metadata, its applets): what fails here
    // is writing into the cache, named as the file being made, not as the
    // work directory's.
    fs::copy(busybox, tree.join("busybox")).map_err(cache_err(&image.disk))?;
    let disk = work.join("disk");
    make_ext2(&tree, &disk).map_err(|e| e.naming(&image.disk))?;
    let archive = work.join("archive");
    write_archive(&archive, applets).map_err(cache_err(&image.initramfs))?;
    fs::rename(&disk, &image.disk).map_err(cache_err(&image.disk))?;
    fs::rename(&archive, &image.initramfs).map_err(cache_err(&image.initramfs))
}

/// mke2fs lives in sbin, which a user's PATH may lack.
fn mke2fs() -> PathBuf {
    ["/usr/sbin/mke2fs", "/sbin/mke2fs"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("mke2fs"))
}

/// An ext2 file system of `tree`'s files, as small as they allow: ext2, as
/// a read-only disk needs no journal, and 4 KB blocks, as the page cache
/// reads them.
fn make_ext2(tree: &Path, disk: &Path) -> Result<(), ImageError> {
    let err = |why: String| ImageError::Tool { tool: "mke2fs", why };
    let files: u64 = fs::read_dir(tree)
        .and_then(|entries| entries.map(|e| e?.metadata().map(|m| m.len())).sum())
        .map_err(|e| err(e.to_string()))?;
    let size_kb = (files + DISK_SLACK).div_ceil(4096) * 4;
    // The disk's space is taken before mke2fs writes it, so that a full
    // cache is this call's ENOSPC (`no_space` to the caller), not a line
    // of mke2fs's output.
    let file = File::create(disk).map_err(|source| ImageError::Cache {
        path: disk.into(),
        source,
    })?;
    nix::fcntl::posix_fallocate(file.as_raw_fd(), 0, (size_kb * 1024) as i64).map_err(|errno| ImageError::Cache {
        path: disk.into(),
        source: errno.into(),
    })?;
    drop(file);
    // Judged by its exit status, which the BEAM's SIGCHLD disposition would
    // throw away.
    crate::vm::process::keep_exit_statuses();
    let output = Command::new(mke2fs())
        .args(["-q", "-F", "-t", "ext2", "-b", "4096", "-N", "16", "-m", "0"])
        .args(["-O", "^resize_inode,^dir_index,^ext_attr", "-E", "root_owner=0:0", "-d"])
        .arg(tree)
        .arg(disk)
        .arg(format!("{size_kb}k"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !output.status.success() {
        return Err(err(String::from_utf8_lossy(&output.stderr).trim().to_string()));
    }
    // Readable by the host users jailed VMs run as.
    fs::set_permissions(disk, fs::Permissions::from_mode(0o644)).map_err(|source| ImageError::Cache {
        path: disk.into(),
        source,
    })
}

/// The applet paths (`bin/ls`, `usr/sbin/chroot`, ...) this busybox provides.
fn applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let err = |why: String| ImageError::Busybox {
        path: busybox.into(),
        why,
    };
    // Read the output to its end instead of waiting for the exit status: in
    // the BEAM, SIGCHLD is ignored and the kernel reaps children at once.
    let mut child = Command::new(busybox)
        .arg("--list-full")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    let mut stdout = Vec::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_end(&mut stdout).map_err(|e| err(e.to_string()))?;
    }
    let _ = child.wait();
    let list = String::from_utf8_lossy(&stdout);
    let applets: Vec<String> = list
        .lines()
        .map(|l| l.trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if !applets.iter().any(|a| a == "bin/sh") {
        return Err(err("it has no sh applet".into()));
    }
    Ok(applets)
}

fn write_archive(path: &Path, applets: &[String]) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    let mut ino = 0u32;
    let mut entry =
        |name: &str, mode: u32, body: &[u8], rdev: Option<(u32, u32)>, w: &mut BufWriter<File>| -> io::Result<()> {
            ino += 1;
            let mut builder = cpio::newc::Builder::new(name).ino(ino).mode(mode).nlink(1);
            if let Some((major, minor)) = rdev {
                builder = builder.rdev_major(major).rdev_minor(minor);
            }
            let size = u32::try_from(body.len()).map_err(|_| io::Error::other("file too large for cpio"))?;
            let mut writer = builder.write(w, size);
            writer.write_all(body)?;
            writer.finish()?;
            Ok(())
        };
    let dirs = [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "lib",
        "lib/busybox",
        "etc",
        "etc/udhcpc",
        "proc",
        "sys",
        "dev",
        "root",
        "mnt",
        "run",
        "var",
        "tmp",
    ];
    for dir in dirs {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        entry(dir, S_IFDIR | mode, b"", None, &mut out)?;
    }
    // The kernel opens /dev/console for init before anything is mounted.
    entry("dev/console", S_IFCHR | 0o600, b"", Some((5, 1)), &mut out)?;
    let on_disk = format!("{DISK_MOUNT}/busybox");
    entry("bin/busybox", S_IFLNK | 0o777, on_disk.as_bytes(), None, &mut out)?;
    for applet in applets.iter().filter(|a| a.as_str() != "bin/busybox") {
        entry(applet, S_IFLNK | 0o777, b"/bin/busybox", None, &mut out)?;
    }
    entry("init", S_IFREG | 0o755, INIT, None, &mut out)?;
    entry(
        "sbin/evum-rootfs",
        S_IFREG | 0o755,
        ROOTFS_INIT.as_bytes(),
        None,
        &mut out,
    )?;
    entry("sbin/evum-ctl", S_IFLNK | 0o777, b"/init", None, &mut out)?;
    entry(
        // Where Debian's busybox looks for it.
        "etc/udhcpc/default.script",
        S_IFREG | 0o755,
        UDHCPC_SCRIPT.as_bytes(),
        None,
        &mut out,
    )?;
    entry("etc/profile", S_IFREG | 0o644, PROFILE.as_bytes(), None, &mut out)?;
    entry("etc/passwd", S_IFREG | 0o644, PASSWD.as_bytes(), None, &mut out)?;
    entry("etc/group", S_IFREG | 0o644, GROUP.as_bytes(), None, &mut out)?;
    entry("etc/fstab", S_IFREG | 0o644, FSTAB.as_bytes(), None, &mut out)?;
    let mut file = cpio::newc::trailer(out)?.into_inner().map_err(|e| e.into_error())?;
    file.flush()?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_once_and_reuses_the_image() {
        let dir = std::env::temp_dir().join(format!("evum-image-test-{}", std::process::id()));
        let first = busybox_image(Path::new("/bin/busybox"), &dir).unwrap();
        let mtime = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
        let (archive_mtime, disk_mtime) = (mtime(&first.initramfs), mtime(&first.disk));
        let second = busybox_image(Path::new("/bin/busybox"), &dir).unwrap();
        assert_eq!(first, second);
        assert_eq!(mtime(&second.initramfs), archive_mtime);
        assert_eq!(mtime(&second.disk), disk_mtime);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names.len(),
            2,
            "only the archive and the disk, nothing partial: {names:?}"
        );
        let listing = Command::new("busybox")
            .args(["cpio", "-t", "-F"])
            .arg(&first.initramfs)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        for want in [
            "init",
            "bin/sh",
            "bin/busybox",
            "lib/busybox",
            "sbin/evum-ctl",
            "sbin/evum-rootfs",
            "dev/console",
            // Where Debian's busybox looks for it.
            "etc/udhcpc/default.script",
        ] {
            assert!(listing.lines().any(|l| l == want), "{want} not in archive");
        }
        // The disk holds busybox itself, byte for byte (debugfs reads ext2
        // without mounting it).
        let dumped = dir.join("dumped");
        let debugfs = Command::new(mke2fs().with_file_name("debugfs"))
            .arg("-R")
            .arg(format!("dump /busybox {}", dumped.display()))
            .arg(&first.disk)
            .output()
            .unwrap();
        assert!(debugfs.status.success(), "{debugfs:?}");
        assert_eq!(fs::read(&dumped).unwrap(), fs::read("/bin/busybox").unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_image_removes_the_old_ones_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("evum-image-prune-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let old = ["busybox-0123456789abcdef.cpio", "busybox-0123456789abcdef.ext2"];
        let others = [
            "busybox-notes.txt",
            "busybox-0123456789abcdef.cpio.bak",
            "debian-bookworm.ext4",
        ];
        for name in old.iter().chain(&others) {
            fs::write(dir.join(name), b"x").unwrap();
        }
        let image = busybox_image(Path::new("/bin/busybox"), &dir).unwrap();
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = others.iter().map(|n| n.to_string()).collect();
        for kept in [&image.initramfs, &image.disk] {
            want.push(kept.file_name().unwrap().to_string_lossy().into_owned());
        }
        want.sort();
        assert_eq!(names, want);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_busybox_is_a_clear_error() {
        let err = busybox_image(Path::new("/nonexistent/busybox"), &std::env::temp_dir()).unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }
}
