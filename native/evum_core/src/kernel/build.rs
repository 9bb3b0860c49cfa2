//! One build of evum's kernel: the source tree out of Debian's
//! `linux-source-*` package, `make ARCH=um defconfig` plus evum's
//! configuration, then `make ARCH=um linux` on every core.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{on, PathError, Progress, BINARY, CONFIG};

/// The build's log, kept beside the kernel.
pub const LOG: &str = "build.log";

/// About how many files `make ARCH=um linux` compiles with evum's
/// configuration (911 C files for 7.2): the total a progress report shows.
pub const EXPECTED_FILES: u64 = 911;

/// Between two unpacking reports.
const UNPACK_REPORT_EVERY: u64 = 25_000;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{0} holds no linux-source-*.tar.xz")]
    NoTarball(PathBuf),
    #[error("`{command}` failed ({status}); the log is {log}: {tail}")]
    Command {
        command: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("the configured kernel lacks {0}, which evum's configuration turns on")]
    Missing(String),
    #[error("the configured kernel has {0}, which evum's configuration turns off")]
    Unwanted(String),
    #[error("running {0}: {1} (install build-essential, flex, bison, bc, libelf-dev)")]
    Tool(String, io::Error),
}

/// Builds the kernel of `deb` in `work` and puts the binary, its `.config`
/// and the build log into `out`.
pub fn build(deb: &Path, work: &Path, out: &Path, progress: &mut dyn FnMut(&Progress)) -> Result<(), BuildError> {
    let log_path = out.join(LOG);
    let mut log = File::create(&log_path).map_err(on("creating", &log_path))?;
    let tree = unpack(deb, &work.join("src"), progress)?;
    progress(&Progress::Configuring);
    configure(&tree, &mut log, &log_path)?;
    let mut done = 0;
    let compile = make(&tree, &[&format!("-j{}", cores()), BINARY]);
    run_logged(compile, &mut log, &log_path, &mut |line| {
        if is_compile_line(line) {
            done += 1;
            progress(&Progress::Compiling {
                done,
                total: EXPECTED_FILES.max(done),
            });
        }
    })?;
    for (from, to) in [(BINARY, BINARY), (".config", "config")] {
        let (from, to) = (tree.join(from), out.join(to));
        fs::copy(&from, &to).map_err(on("copying", &from))?;
    }
    File::open(out.join(BINARY))
        .and_then(|f| f.sync_all())
        .map_err(on("syncing", out))?;
    Ok(())
}

/// The kernel tree out of the package: the .deb's data holds the tree as
/// `usr/src/linux-source-X.Y.tar.xz`. Returns the tree's top directory.
fn unpack(deb: &Path, into: &Path, progress: &mut dyn FnMut(&Progress)) -> Result<PathBuf, BuildError> {
    fs::create_dir_all(into).map_err(on("creating", into))?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| BuildError::Tool("dpkg-deb".into(), e))?;
    let data = dpkg.stdout.take().expect("piped stdout");
    let unpacked = unpack_data(data, deb, into, progress);
    // Reading stopped at the tarball: the rest of dpkg-deb's output is not
    // needed, and it may be blocked writing it.
    let _ = dpkg.kill();
    let _ = dpkg.wait();
    unpacked?;
    let top = fs::read_dir(into)
        .map_err(on("reading", into))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("Makefile").is_file());
    top.ok_or_else(|| BuildError::NoTarball(deb.to_path_buf()))
}

fn unpack_data(
    data: impl io::Read,
    deb: &Path,
    into: &Path,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(), BuildError> {
    let mut outer = tar::Archive::new(data);
    for entry in outer.entries().map_err(on("reading", deb))? {
        let entry = entry.map_err(on("reading", deb))?;
        let path = entry.path().map_err(on("reading", deb))?.into_owned();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name.starts_with("linux-source-") && name.ends_with(".tar.xz") {
            let xz = liblzma::read::XzDecoder::new_multi_decoder(entry);
            let mut inner = tar::Archive::new(xz);
            let mut files = 0;
            for file in inner.entries().map_err(on("unpacking", &path))? {
                let mut file = file.map_err(on("unpacking", &path))?;
                file.unpack_in(into).map_err(on("unpacking into", into))?;
                files += 1;
                if files % UNPACK_REPORT_EVERY == 0 {
                    progress(&Progress::Unpacking { files });
                }
            }
            progress(&Progress::Unpacking { files });
            return Ok(());
        }
    }
    Err(BuildError::NoTarball(deb.to_path_buf()))
}

/// `defconfig`, evum's changes through `scripts/config`, `olddefconfig`;
/// then a check that each change took (an option may depend on another, or
/// be gone from a newer kernel).
fn configure(tree: &Path, log: &mut File, log_path: &Path) -> Result<(), BuildError> {
    run_logged(make(tree, &["defconfig"]), log, log_path, &mut |_| {})?;
    let mut change = Command::new(tree.join("scripts/config"));
    change.current_dir(tree).args(["--file", ".config"]).args(config_args());
    run_logged(change, log, log_path, &mut |_| {})?;
    run_logged(make(tree, &["olddefconfig"]), log, log_path, &mut |_| {})?;
    let config_path = tree.join(".config");
    let config = fs::read_to_string(&config_path).map_err(on("reading", &config_path))?;
    check_config(&config)
}

/// The `scripts/config` arguments of evum's configuration.
pub fn config_args() -> Vec<String> {
    CONFIG
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .flat_map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// Every `-e` option is on in the result, every `-d` option off, every
/// `--set-val` option set.
fn check_config(config: &str) -> Result<(), BuildError> {
    let args = config_args();
    let has = |line: String| config.lines().any(|l| l == line);
    for (i, arg) in args.iter().enumerate() {
        let Some(name) = args.get(i + 1) else { break };
        match arg.as_str() {
            "-e" if !has(format!("CONFIG_{name}=y")) => return Err(BuildError::Missing(name.clone())),
            "-d" if has(format!("CONFIG_{name}=y")) => return Err(BuildError::Unwanted(name.clone())),
            "--set-val" => {
                let value = args.get(i + 2).map(String::as_str).unwrap_or_default();
                if !has(format!("CONFIG_{name}={value}")) {
                    return Err(BuildError::Missing(format!("{name}={value}")));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn make(tree: &Path, args: &[&str]) -> Command {
    let mut make = Command::new("make");
    make.current_dir(tree)
        .arg("ARCH=um")
        .args(args)
        // The same source and configuration give the same banner.
        .env("KBUILD_BUILD_USER", "evum")
        .env("KBUILD_BUILD_HOST", "evum")
        .env("LC_ALL", "C");
    make
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `  CC      fs/ext4/inode.o`: one more file compiled.
fn is_compile_line(line: &str) -> bool {
    line.starts_with("  CC ")
}

/// Runs `command` with its output (both streams) going to the log, line by
/// line through `each_line`.
fn run_logged(
    mut command: Command,
    log: &mut File,
    log_path: &Path,
    each_line: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    let shown = format!("{command:?}");
    let (reader, writer) = io::pipe().map_err(on("piping", log_path))?;
    let writer2 = writer.try_clone().map_err(on("piping", log_path))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .spawn()
        .map_err(|e| BuildError::Tool(shown.clone(), e))?;
    // The Command holds the pipe's write ends: without it, reading ends
    // when the command (and whatever it started) has exited.
    drop(command);
    let mut tail = std::collections::VecDeque::with_capacity(8);
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        each_line(&line);
        if tail.len() == 8 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().map_err(on("waiting for", log_path))?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Command {
            command: shown,
            status: status.to_string(),
            log: log_path.to_path_buf(),
            tail: tail.into_iter().collect::<Vec<_>>().join(" / "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines_become_script_arguments() {
        let args = config_args();
        assert!(args.windows(2).any(|w| w == ["-d", "MODULES"]));
        assert!(args.windows(3).any(|w| w == ["--set-val", "NR_CPUS", "8"]));
        assert!(!args.iter().any(|a| a.starts_with('#')));
    }

    #[test]
    fn a_config_that_did_not_take_is_refused() {
        let args = config_args();
        let on = args
            .windows(2)
            .filter(|w| w[0] == "-e")
            .map(|w| format!("CONFIG_{}=y\n", w[1]));
        let set = args
            .windows(3)
            .filter(|w| w[0] == "--set-val")
            .map(|w| format!("CONFIG_{}={}\n", w[1], w[2]));
        let good: String = on.chain(set).collect();
        assert!(check_config(&good).is_ok());
        let with_modules = format!("{good}CONFIG_MODULES=y\n");
        assert!(matches!(check_config(&with_modules), Err(BuildError::Unwanted(n)) if n == "MODULES"));
        let without_hostfs = good.replace("CONFIG_HOSTFS=y\n", "");
        assert!(matches!(check_config(&without_hostfs), Err(BuildError::Missing(n)) if n == "HOSTFS"));
        let eight_cpus = good.replace("CONFIG_NR_CPUS=8\n", "CONFIG_NR_CPUS=1\n");
        assert!(matches!(check_config(&eight_cpus), Err(BuildError::Missing(n)) if n == "NR_CPUS=8"));
    }
}
