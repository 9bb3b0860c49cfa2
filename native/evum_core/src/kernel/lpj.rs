//! The delay-loop constant (`lpj=`), measured once per host.
//!
//! A kernel that is not told `lpj=` spends a good part of its boot (60-80 ms
//! of 7.2's ~100) calibrating its delay loop. The figure depends on the
//! host's CPU and clock, so evum boots the kernel once, reads the figure
//! from the boot's own log, and keeps it under a key made of the CPU's model
//! and frequency.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{on, PathError};

/// How long a calibration boot may take to print its figure.
const CALIBRATION_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum LpjError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{kernel} printed no lpj= figure within {CALIBRATION_TIMEOUT:?}")]
    NoFigure { kernel: PathBuf },
}

/// The calibrated figure for this host, if one was measured.
pub fn cached(cache_dir: &Path) -> Option<u64> {
    fs::read_to_string(figure_file(cache_dir)).ok()?.trim().parse().ok()
}

/// Boots `kernel` far enough to calibrate, keeps the figure and returns it.
pub fn calibrate(kernel: &Path, cache_dir: &Path) -> Result<u64, LpjError> {
    let dir = cache_dir
        .join("kernel")
        .join(format!("calibrate-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(on("creating", &dir))?;
    let measured = boot_for_figure(kernel, &dir);
    let _ = fs::remove_dir_all(&dir);
    let lpj = measured?;
    let file = figure_file(cache_dir);
    let staged = file.with_extension("new");
    fs::write(&staged, format!("{lpj}\n"))
        .and_then(|()| fs::rename(&staged, &file))
        .map_err(on("writing", &file))?;
    Ok(lpj)
}

fn boot_for_figure(kernel: &Path, dir: &Path) -> Result<u64, LpjError> {
    let mut command = Command::new(kernel);
    command
        .args([
            "umid=evum-calibrate".to_string(),
            format!("uml_dir={}", dir.display()),
            "mem=64M".into(),
            "con0=fd:0,fd:1".into(),
            "con=null".into(),
            "ssl=null".into(),
            "ubd0r=/dev/null".into(),
            format!("hostfs={}", dir.display()),
            "loglevel=8".into(),
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // A group of its own, so that UML's helper processes go with it.
        .process_group(0);
    // SAFETY: the closure only makes one async-signal-safe system call.
    unsafe {
        command.pre_exec(|| {
            // Should this program die mid-calibration, so does the kernel.
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(on("running", kernel))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let figure = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| figure_in(&l));
        let _ = tx.send(figure);
    });
    let figure = rx.recv_timeout(CALIBRATION_TIMEOUT).ok().flatten();
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
    figure.ok_or_else(|| LpjError::NoFigure {
        kernel: kernel.to_path_buf(),
    })
}

/// `Calibrating delay loop... 2472.34 BogoMIPS (lpj=12361728)`
fn figure_in(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("Calibrating delay loop")?;
    let digits = rest.split("lpj=").nth(1)?;
    let digits: String = digits.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|&n| n > 0)
}

/// One file per CPU model and frequency (rounded to 100 MHz, which some
/// hosts vary by a little from one reading to the next).
fn figure_file(cache_dir: &Path) -> PathBuf {
    cache_dir.join("kernel").join(format!("lpj-{}", host_key()))
}

/// The host's CPU model and frequency, hashed: read once, since every VM
/// start asks and /proc/cpuinfo grows with the number of CPUs.
fn host_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find_map(|l| {
                    let (key, value) = l.split_once(':')?;
                    (key.trim() == name).then(|| value.trim().to_string())
                })
                .unwrap_or_default()
        };
        let mhz = field("cpu MHz")
            .parse::<f64>()
            .map(|m| (m / 100.0).round() as u64 * 100)
            .unwrap_or(0);
        let mut hasher = DefaultHasher::new();
        (field("model name"), mhz).hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figure_is_read_from_the_calibration_line() {
        assert_eq!(
            figure_in("Calibrating delay loop... 2472.34 BogoMIPS (lpj=12361728)"),
            Some(12361728)
        );
        assert_eq!(
            figure_in("Calibrating delay loop (skipped) preset value.. 4940.00 BogoMIPS (lpj=0)"),
            None
        );
        assert_eq!(figure_in("Kernel command line: lpj=5"), None);
    }
}
