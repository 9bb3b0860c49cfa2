//! One build of evum's kernel: the source tree out of Debian's
//! `linux-source-*` package with evum's patches, `make ARCH=um defconfig` plus evum's
//! configuration, then `make ARCH=um linux` on every core; then the SMP
//! flavour, the same tree configured again with SMP on top and compiled
//! again (most files depend on the configuration: nearly all of them).

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{on, PathError, Progress, BINARY, CONFIG, PATCHES, SMP_BINARY, SMP_CONFIG};

/// The build's log, kept beside the kernel.
pub const LOG: &str = "build.log";

/// About how many files `make ARCH=um linux` compiles with evum's
/// configuration (911 C files for 7.2), for each of the two flavours: the
/// total a progress report shows is twice this.
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
    #[error("running {0}: {1} (install build-essential, patch, flex, bison, bc, libelf-dev)")]
    Tool(String, io::Error),
}

/// Builds both flavours of the kernel of `deb` in `work` and puts the
/// binaries, their `.config`s and the build log into `out`.
pub fn build(deb: &Path, work: &Path, out: &Path, progress: &mut dyn FnMut(&Progress)) -> Result<(), BuildError> {
    let log_path = out.join(LOG);
    let mut log = File::create(&log_path).map_err(on("creating", &log_path))?;
    let tree = unpack(deb, &work.join("src"), progress)?;
    apply_patches(&tree, &work.join("patches"), &mut log, &log_path)?;
    let mut done = 0;
    let flavours = [
        (&[CONFIG][..], BINARY, "config"),
        (&[CONFIG, SMP_CONFIG][..], SMP_BINARY, "config-smp"),
    ];
    for (configs, binary, config_copy) in flavours {
        progress(&Progress::Configuring);
        configure(&tree, configs, &mut log, &log_path)?;
        let compile = make(&tree, &[&format!("-j{}", cores()), BINARY]);
        run_logged(compile, &mut log, &log_path, &mut |line| {
            if is_compile_line(line) {
                done += 1;
                progress(&Progress::Compiling {
                    done,
                    total: (2 * EXPECTED_FILES).max(done),
                });
            }
        })?;
        for (from, to) in [(BINARY, binary), (".config", config_copy)] {
            let (from, to) = (tree.join(from), out.join(to));
            fs::copy(&from, &to).map_err(on("copying", &from))?;
        }
        File::open(out.join(binary))
            .and_then(|f| f.sync_all())
            .map_err(on("syncing", out))?;
    }
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

/// evum's patches, in order; one that does not apply (a newer kernel
/// changed the lines it changes) fails the build, naming it.
fn apply_patches(tree: &Path, dir: &Path, log: &mut File, log_path: &Path) -> Result<(), BuildError> {
    fs::create_dir_all(dir).map_err(on("creating", dir))?;
    for (name, text) in PATCHES {
        let file = dir.join(name);
        fs::write(&file, text).map_err(on("writing", &file))?;
        let mut patch = Command::new("patch");
        patch
            .current_dir(tree)
            .args(["-p1", "--forward", "--batch", "-i"])
            .arg(&file);
        run_logged(patch, log, log_path, &mut |_| {})?;
    }
    Ok(())
}

/// `defconfig`, each of `configs`' changes in turn through `scripts/config`,
/// `olddefconfig`; then a check that each change took (an option may depend
/// on another, or be gone from a newer kernel).
fn configure(tree: &Path, configs: &[&str], log: &mut File, log_path: &Path) -> Result<(), BuildError> {
    run_logged(make(tree, &["defconfig"]), log, log_path, &mut |_| {})?;
    let args: Vec<String> = configs.iter().flat_map(|c| config_args(c)).collect();
    let mut change = Command::new(tree.join("scripts/config"));
    change.current_dir(tree).args(["--file", ".config"]).args(&args);
    run_logged(change, log, log_path, &mut |_| {})?;
    run_logged(make(tree, &["olddefconfig"]), log, log_path, &mut |_| {})?;
    let config_path = tree.join(".config");
    let config = fs::read_to_string(&config_path).map_err(on("reading", &config_path))?;
    check_config(&config, &args)
}

/// The `scripts/config` arguments of one of evum's configuration files.
pub fn config_args(config: &str) -> Vec<String> {
    config
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .flat_map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// Every `-e` option is on in the result, every `-d` option off, every
/// `--set-val` option set; where `args` name an option twice (a flavour's
/// change on top of the base), the later one counts.
fn check_config(config: &str, args: &[String]) -> Result<(), BuildError> {
    let mut wanted: Vec<(&str, Option<&str>)> = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let Some(name) = args.get(i + 1) else { break };
        let value = match arg.as_str() {
            "-e" => Some("y"),
            "-d" => None,
            "--set-val" => args.get(i + 2).map(String::as_str),
            _ => continue,
        };
        wanted.retain(|(n, _)| n != name);
        wanted.push((name, value));
    }
    let has = |line: String| config.lines().any(|l| l == line);
    for (name, value) in wanted {
        match value {
            None if has(format!("CONFIG_{name}=y")) => return Err(BuildError::Unwanted(name.to_string())),
            Some("y") if !has(format!("CONFIG_{name}=y")) => return Err(BuildError::Missing(name.to_string())),
            Some(value) if !has(format!("CONFIG_{name}={value}")) => {
                return Err(BuildError::Missing(format!("{name}={value}")))
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
        let args = config_args(CONFIG);
        assert!(args.windows(2).any(|w| w == ["-d", "MODULES"]));
        assert!(args.windows(2).any(|w| w == ["-d", "SMP"]));
        assert!(!args.iter().any(|a| a.starts_with('#')));
        let smp = config_args(SMP_CONFIG);
        assert!(smp.windows(3).any(|w| w == ["--set-val", "NR_CPUS", "8"]));
    }

    /// A `.config` with exactly what `args` ask for, the later of two
    /// answers for one option counting.
    fn config_of(args: &[String]) -> String {
        let mut lines: Vec<(String, String)> = Vec::new();
        for (i, arg) in args.iter().enumerate() {
            let line = match arg.as_str() {
                "-e" => format!("CONFIG_{}=y", args[i + 1]),
                "-d" => format!("# CONFIG_{} is not set", args[i + 1]),
                "--set-val" => format!("CONFIG_{}={}", args[i + 1], args[i + 2]),
                _ => continue,
            };
            lines.retain(|(name, _)| name != &args[i + 1]);
            lines.push((args[i + 1].clone(), line));
        }
        lines.into_iter().map(|(_, line)| line + "\n").collect()
    }

    #[test]
    fn a_config_that_did_not_take_is_refused() {
        let args = config_args(CONFIG);
        let good = config_of(&args);
        assert!(check_config(&good, &args).is_ok());
        let with_modules = format!("{good}CONFIG_MODULES=y\n");
        assert!(matches!(check_config(&with_modules, &args), Err(BuildError::Unwanted(n)) if n == "MODULES"));
        let without_hostfs = good.replace("CONFIG_HOSTFS=y\n", "");
        assert!(matches!(check_config(&without_hostfs, &args), Err(BuildError::Missing(n)) if n == "HOSTFS"));
    }

    #[test]
    fn the_smp_flavour_turns_on_what_the_base_turns_off() {
        let args: Vec<String> = [CONFIG, SMP_CONFIG].iter().flat_map(|c| config_args(c)).collect();
        let good = config_of(&args);
        assert!(good.contains("CONFIG_SMP=y\n"), "{good}");
        assert!(check_config(&good, &args).is_ok());
        let one_cpu = good.replace("CONFIG_NR_CPUS=8\n", "CONFIG_NR_CPUS=1\n");
        assert!(matches!(check_config(&one_cpu, &args), Err(BuildError::Missing(n)) if n == "NR_CPUS=8"));
        // The base config, checked against the SMP flavour's result, is not met.
        assert!(matches!(check_config(&good, &config_args(CONFIG)), Err(BuildError::Unwanted(n)) if n == "SMP"));
    }
}
