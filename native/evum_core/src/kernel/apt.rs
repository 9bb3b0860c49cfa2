//! The kernel source package, fetched through apt with a configuration of
//! evum's own: its own sources list naming the suite that has the source,
//! its own package lists and cache, the system's keyring. The machine's apt
//! sources, pinning and state are read by nothing here and left as they are.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{on, PathError};

/// The suite whose `linux-source-7.*` has the fix evum needs (the FPU state
/// sized from the host). `EVUM_KERNEL_SUITE` names another.
pub const DEFAULT_SUITE: &str = "sid";

/// The mirror when the machine's sources name none.
pub const FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";

/// The key Debian signs its archive with (package debian-archive-keyring).
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The oldest kernel series evum can build: the first whose UML sizes the
/// FPU state from the host.
pub const MIN_SERIES: (u32, u32) = (7, 0);

#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{KEYRING} is missing: install debian-archive-keyring")]
    NoKeyring,
    #[error("`{command}` failed: {why}")]
    Command { command: String, why: String },
    #[error("the {suite} suite at {mirror} has no linux-source of {}.{} or later", MIN_SERIES.0, MIN_SERIES.1)]
    NoSource { suite: String, mirror: String },
}

/// A kernel source package that the index offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSource {
    /// `linux-source-7.2`
    pub package: String,
    /// `7.2.13-1`
    pub version: String,
    /// The .deb's size, when the index says.
    pub size: Option<u64>,
}

/// apt, pointed at private directories under `root`.
pub struct PrivateApt {
    root: PathBuf,
    suite: String,
    mirror: String,
}

impl PrivateApt {
    /// Lays out the private configuration under `root`, for `mirror` (a
    /// Debian archive's address; `EVUM_KERNEL_MIRROR`, else the one the
    /// machine's own sources use, when None).
    pub fn new(root: &Path, mirror: Option<&str>) -> Result<PrivateApt, AptError> {
        if !Path::new(KEYRING).exists() {
            return Err(AptError::NoKeyring);
        }
        let suite = std::env::var("EVUM_KERNEL_SUITE").unwrap_or_else(|_| DEFAULT_SUITE.into());
        let mirror = match mirror {
            Some(mirror) => mirror.to_string(),
            None => std::env::var("EVUM_KERNEL_MIRROR").unwrap_or_else(|_| system_mirror()),
        };
        for dir in [
            "sources.list.d",
            "preferences.d",
            "lists/partial",
            "cache/archives/partial",
        ] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).map_err(on("creating", &dir))?;
        }
        let list = root.join("sources.list");
        fs::write(&list, format!("deb [signed-by={KEYRING}] {mirror} {suite} main\n")).map_err(on("writing", &list))?;
        Ok(PrivateApt {
            root: root.to_path_buf(),
            suite,
            mirror,
        })
    }

    pub fn suite(&self) -> &str {
        &self.suite
    }

    /// `-o` settings that point every file apt reads or writes, but the
    /// keyring and dpkg's status, at the private tree.
    fn options(&self) -> Vec<String> {
        let at = |p: &str| self.root.join(p).display().to_string();
        let mut options = vec![
            format!("Dir::Etc::SourceList={}", at("sources.list")),
            format!("Dir::Etc::SourceParts={}", at("sources.list.d")),
            format!("Dir::Etc::Preferences={}", at("preferences")),
            format!("Dir::Etc::PreferencesParts={}", at("preferences.d")),
            format!("Dir::State::Lists={}", at("lists")),
            format!("Dir::Cache={}", at("cache")),
            "APT::Get::List-Cleanup=0".to_string(),
        ];
        // As root apt downloads as the `_apt` user, who may not enter evum's
        // cache; there the download runs as root instead (with a warning
        // otherwise).
        if nix::unistd::geteuid().is_root() {
            options.push("APT::Sandbox::User=root".to_string());
        }
        options
    }

    fn run(&self, tool: &str, args: &[&str], dir: Option<&Path>) -> Result<Output, AptError> {
        let mut command = Command::new(tool);
        for option in self.options() {
            command.arg("-o").arg(option);
        }
        command.args(args).env("LC_ALL", "C");
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let shown = format!("{tool} {}", args.join(" "));
        let output = command.output().map_err(|e| AptError::Command {
            command: shown.clone(),
            why: e.to_string(),
        })?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(AptError::Command {
                command: shown,
                why: last_lines(&output.stderr, 5),
            })
        }
    }

    /// Reads the suite's package index.
    pub fn update(&self) -> Result<(), AptError> {
        self.run("apt-get", &["-q", "update"], None).map(|_| ())
    }

    /// The newest `linux-source-X.Y` of [`MIN_SERIES`] or later in the index.
    pub fn newest_kernel_source(&self) -> Result<KernelSource, AptError> {
        let found = self.run(
            "apt-cache",
            &["search", "--names-only", "^linux-source-[0-9]+\\.[0-9]+$"],
            None,
        )?;
        let package = String::from_utf8_lossy(&found.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter_map(|name| Some((series(name)?, name.to_string())))
            .filter(|(series, _)| *series >= MIN_SERIES)
            .max()
            .map(|(_, name)| name)
            .ok_or_else(|| AptError::NoSource {
                suite: self.suite.clone(),
                mirror: self.mirror.clone(),
            })?;
        let shown = self.run("apt-cache", &["show", "--no-all-versions", &package], None)?;
        let record = String::from_utf8_lossy(&shown.stdout);
        let field = |name: &str| {
            record
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        let version = field("Version").ok_or_else(|| AptError::Command {
            command: format!("apt-cache show {package}"),
            why: "no Version field".into(),
        })?;
        Ok(KernelSource {
            size: field("Size").and_then(|s| s.parse().ok()),
            package,
            version,
        })
    }

    /// Downloads the package's .deb into `dir` and returns its path.
    pub fn download(&self, source: &KernelSource, dir: &Path) -> Result<PathBuf, AptError> {
        let wanted = format!("{}={}", source.package, source.version);
        self.run("apt-get", &["-q", "download", &wanted], Some(dir))?;
        let prefix = format!("{}_", source.package);
        let entries = fs::read_dir(dir).map_err(on("reading", dir))?;
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with(&prefix) && p.extension() == Some(OsStr::new("deb"))
            })
            .ok_or_else(|| AptError::Command {
                command: format!("apt-get download {wanted}"),
                why: format!("no {prefix}*.deb in {}", dir.display()),
            })
    }
}

/// `(7, 2)` for `linux-source-7.2`.
fn series(package: &str) -> Option<(u32, u32)> {
    let (major, minor) = package.strip_prefix("linux-source-")?.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The Debian mirror the machine's own sources use, so that the source
/// comes from where its other packages do.
fn system_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut parts: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        parts.sort();
        files.extend(parts);
    }
    files
        .iter()
        .filter(|p| {
            matches!(p.extension().and_then(OsStr::to_str), Some("list" | "sources")) || p.ends_with("sources.list")
        })
        .filter_map(|p| fs::read_to_string(p).ok())
        .find_map(|text| debian_mirror(&text))
        .unwrap_or_else(|| FALLBACK_MIRROR.to_string())
}

/// The first URI in a sources file (one-line or deb822) that serves Debian's
/// main archive: its path ends in `/debian`.
fn debian_mirror(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|line| {
            let uris: Vec<&str> = match line.strip_prefix("URIs:") {
                Some(rest) => rest.split_whitespace().collect(),
                None if line.starts_with("deb ") => line.split_whitespace().filter(|w| w.contains("://")).collect(),
                None => Vec::new(),
            };
            uris
        })
        .map(|uri| uri.trim_end_matches('/'))
        .find(|uri| uri.ends_with("/debian") && (uri.starts_with("http://") || uri.starts_with("https://")))
        .map(str::to_string)
}

fn last_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_read_from_package_names() {
        assert_eq!(series("linux-source-7.2"), Some((7, 2)));
        assert_eq!(series("linux-source-6.12"), Some((6, 12)));
        assert_eq!(series("linux-source"), None);
        assert!(series("linux-source-7.10").unwrap() > series("linux-source-7.9").unwrap());
    }

    #[test]
    fn the_debian_mirror_is_found_in_either_format() {
        let deb822 = "Types: deb\n# URIs: http://old/debian\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(debian_mirror(deb822).as_deref(), Some("http://deb.debian.org/debian"));
        let one_line = "deb [arch=amd64] https://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            debian_mirror(one_line).as_deref(),
            Some("https://mirror.example/debian")
        );
        assert_eq!(
            debian_mirror("deb http://deb.debian.org/debian-security bookworm-security main"),
            None
        );
        assert_eq!(
            debian_mirror("deb https://packages.cloud.google.com/apt cloud-sdk main"),
            None
        );
    }
}
