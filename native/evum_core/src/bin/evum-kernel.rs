//! `evum-kernel`: builds evum's UML kernel from the command line (`make deps`
//! runs it), or says where the built one is.
//!
//! ```text
//! evum-kernel build [CACHE_DIR]   build it unless it is built; print its path
//! evum-kernel path [CACHE_DIR]    print its path, or exit 1 if it is not built
//! ```
//!
//! CACHE_DIR defaults to evum's (`/var/cache/evum` for root, else
//! `~/.cache/evum`), the same as the Erlang side's `cache_dir` setting. The
//! source comes from the Debian mirror the machine's own apt sources name,
//! or `EVUM_KERNEL_MIRROR`.

use std::path::PathBuf;
use std::process::ExitCode;

use evum_core::kernel::{self, Progress};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cache_dir = args.get(1).map(PathBuf::from).unwrap_or_else(kernel::default_cache_dir);
    match args.first().map(String::as_str) {
        Some("build") => match kernel::ensure(&cache_dir, None, &mut Reporter::default().report()) {
            Ok(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("evum-kernel: {e}");
                ExitCode::FAILURE
            }
        },
        Some("path") => match kernel::cached(&cache_dir) {
            Some(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            None => {
                eprintln!(
                    "evum-kernel: not built in {}; run `evum-kernel build`",
                    cache_dir.display()
                );
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: evum-kernel build|path [CACHE_DIR]");
            ExitCode::from(2)
        }
    }
}

/// Progress on stderr, a line a step and one per tenth of the compile.
#[derive(Default)]
struct Reporter {
    last_tenth: u64,
    /// Flavours configured so far: the build configures `linux`, then
    /// `linux-smp`.
    configured: u32,
}

impl Reporter {
    fn report(mut self) -> impl FnMut(&Progress) {
        move |progress| {
            let line = match progress {
                Progress::Waiting => "waiting for another build of the same kernel".to_string(),
                Progress::Updating { suite } => format!("reading the package index of {suite}"),
                Progress::Downloading {
                    package,
                    version,
                    bytes,
                } => match bytes {
                    Some(b) => format!("downloading {package} {version} ({} MB)", b / 1_000_000),
                    None => format!("downloading {package} {version}"),
                },
                Progress::Unpacking { files } => format!("unpacking: {files} files"),
                Progress::Configuring => {
                    self.configured += 1;
                    match self.configured {
                        1 => "configuring linux (priv/kernel/evum.config)".to_string(),
                        _ => "configuring linux-smp (priv/kernel/evum.config, then evum-smp.config)".to_string(),
                    }
                }
                Progress::Compiling { done, total } => {
                    let tenth = done * 10 / total.max(&1);
                    if tenth == self.last_tenth {
                        return;
                    }
                    self.last_tenth = tenth;
                    format!("compiling: {done} of about {total} files")
                }
                Progress::Calibrating => "measuring this host's delay loop (lpj)".to_string(),
                Progress::Done { path } => format!("ready: {}", path.display()),
            };
            eprintln!("evum kernel: {line}");
        }
    }
}
