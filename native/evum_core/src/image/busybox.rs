//! evum's default root: an initramfs built from the host's static busybox.
//!
//! It needs no download and boots fast. The guest's root is a tmpfs that the
//! kernel fills from the archive, so whatever the guest writes lives in its
//! own memory and the cached archive is never changed.

use std::collections::hash_map::DefaultHasher;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// PID 1, built from `priv/guest/evum-init.c` by build.rs.
const INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/evum-init"));
const ROOTFS_INIT: &str = include_str!("../../../../priv/guest/evum-rootfs");
const CONTROL_LOOP: &str = include_str!("../../../../priv/guest/evum-ctl");
const UDHCPC_SCRIPT: &str = include_str!("../../../../priv/guest/udhcpc-script");
const PROFILE: &str = "export PS1='\\u@\\h:\\w\\$ '\n";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";
const GROUP: &str = "root:x:0:\n";
const FSTAB: &str =
    "proc /proc proc defaults 0 0\nsysfs /sys sysfs defaults 0 0\ndevtmpfs /dev devtmpfs defaults 0 0\n";
/// Bumped whenever the archive layout changes, so old cached archives are not reused.
const LAYOUT_VERSION: u32 = 2;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path} is not a statically linked busybox (install busybox-static): {why}")]
    Busybox { path: PathBuf, why: String },
    #[error("image cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    /// The host resource the build ran out of, if that is why it failed.
    pub fn exhausted(&self) -> Option<crate::limits::Exhausted> {
        match self {
            ImageError::Cache { path, .. } => crate::limits::exhausted(self, Some(path.clone())),
            ImageError::Busybox { .. } => None,
        }
    }
}

/// Returns the busybox initramfs in `cache_dir`, building it first if no
/// archive for this busybox binary and this version of evum's guest scripts
/// exists yet. Safe to call from several threads or VMs at once: an archive
/// appears under its final name only when complete.
pub fn busybox_initramfs(busybox: &Path, cache_dir: &Path) -> Result<PathBuf, ImageError> {
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
        CONTROL_LOOP,
        UDHCPC_SCRIPT,
        PROFILE,
        FSTAB,
    )
        .hash(&mut hasher);
    let target = cache_dir.join(format!("busybox-{:016x}.cpio", hasher.finish()));
    if target.exists() {
        return Ok(target);
    }
    let cache_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Cache { path, source }
    };
    fs::create_dir_all(cache_dir).map_err(cache_err(cache_dir))?;
    let applets = applets(busybox)?;
    let binary = fs::read(busybox).map_err(|e| ImageError::Busybox {
        path: busybox.into(),
        why: e.to_string(),
    })?;
    // Unique per builder, so concurrent builders never write one file.
    static BUILDS: AtomicU64 = AtomicU64::new(0);
    let partial = cache_dir.join(format!(
        ".busybox.{}.{}.partial",
        std::process::id(),
        BUILDS.fetch_add(1, Ordering::Relaxed)
    ));
    let written = write_archive(&partial, &binary, &applets).and_then(|()| fs::rename(&partial, &target));
    if let Err(e) = written {
        let _ = fs::remove_file(&partial);
        return Err(ImageError::Cache {
            path: target,
            source: e,
        });
    }
    Ok(target)
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

fn write_archive(path: &Path, busybox: &[u8], applets: &[String]) -> io::Result<()> {
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
    entry("bin/busybox", S_IFREG | 0o755, busybox, None, &mut out)?;
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
    entry(
        "sbin/evum-ctl",
        S_IFREG | 0o755,
        CONTROL_LOOP.as_bytes(),
        None,
        &mut out,
    )?;
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
    fn builds_once_and_reuses_the_archive() {
        let dir = std::env::temp_dir().join(format!("evum-image-test-{}", std::process::id()));
        let first = busybox_initramfs(Path::new("/bin/busybox"), &dir).unwrap();
        let mtime = fs::metadata(&first).unwrap().modified().unwrap();
        let second = busybox_initramfs(Path::new("/bin/busybox"), &dir).unwrap();
        assert_eq!(first, second);
        assert_eq!(fs::metadata(&second).unwrap().modified().unwrap(), mtime);
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "only the archive, no partial file: {names:?}");
        let listing = Command::new("busybox")
            .args(["cpio", "-t", "-F"])
            .arg(&first)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        for want in [
            "init",
            "bin/sh",
            "sbin/evum-ctl",
            "sbin/evum-rootfs",
            "dev/console",
            // Where Debian's busybox looks for it.
            "etc/udhcpc/default.script",
        ] {
            assert!(listing.lines().any(|l| l == want), "{want} not in archive");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_busybox_is_a_clear_error() {
        let err = busybox_initramfs(Path::new("/nonexistent/busybox"), &std::env::temp_dir()).unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }
}
