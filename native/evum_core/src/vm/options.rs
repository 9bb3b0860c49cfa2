//! The UML kernel command line, built from evum's boot options.
//!
//! The option names are the original evum's (`con`, `ssl`, `disk`, `eth`,
//! `init`, `initrd`, `mem`, `root`, `rootflags`, `rootfstype`, `ubd`, `umid`,
//! `uml_dir`, `verbose`/`quiet`, `write`) plus the few evum needs to keep a
//! guest fast and contained (`hostfs`, `append`, `env`), and those of newer
//! kernels (`seccomp`, `cpus`: see [`crate::kernel::features`] for which
//! kernel has them). The first console and
//! the first serial line belong to evum (they carry the console messages and
//! the command channel), so options may only configure the others.

use std::path::PathBuf;

use crate::vm::placement::CpuChoice;

/// One boot option, as a user gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOption {
    /// `conN=SPEC`, or `con=SPEC` for every console line but evum's.
    Con(Option<u32>, String),
    /// `sslN=SPEC`, or `ssl=SPEC` for every serial line but evum's.
    Ssl(Option<u32>, String),
    /// A disk image as `ubdN` (`disk` is the original's name for `ubd`).
    Ubd(u32, String),
    /// `ubdNr=FILE`: a disk the guest can read and not write (UML opens the
    /// file read-only).
    ReadOnlyUbd(u32, String),
    /// `ethN=SPEC`: a network device.
    Eth(u32, String),
    /// The program the kernel runs as PID 1.
    Init(String),
    /// An initramfs image.
    Initrd(PathBuf),
    /// Guest memory, as the kernel takes it (`64M`, `1G`).
    Mem(String),
    Root(String),
    RootFlags(String),
    RootFsType(String),
    /// Kernel messages on the console (`verbose`) or only warnings (`quiet`).
    Verbose(bool),
    /// Mount the root read-write (`write`) instead of read-only.
    Write(bool),
    /// The only host directory hostfs mounts may reach.
    Hostfs(PathBuf),
    /// `KEY=VALUE` for init's environment (the kernel passes unknown
    /// parameters on to PID 1).
    Env(String, String),
    /// A raw kernel parameter, for what has no option of its own.
    Append(String),
    /// The host CPUs the VM's processes may run on (not a kernel
    /// parameter: see [`crate::vm::placement`]).
    Cpu(CpuChoice),
    /// `seccomp=on`: the guest's processes run under a seccomp filter
    /// instead of being traced with ptrace. Faster system calls and page
    /// faults, but the kernel's own help says the filter does not yet keep
    /// a guest process from the VM's memory: for trusted guests only.
    /// `false` is ptrace, every UML kernel's default.
    Seccomp(bool),
    /// `ncpus=N`: the guest's virtual CPUs. UML starts SMP only in seccomp
    /// mode, so this implies `Seccomp(true)`.
    Cpus(u32),
    /// The nice value of the VM's processes (not a kernel parameter: see
    /// [`crate::vm::priority`]).
    Nice(u8),
}

/// Why a set of options cannot be turned into a command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("{0} is evum's own channel and cannot be configured")]
    Reserved(String),
    #[error("option {0} is given twice")]
    Duplicate(String),
    #[error("option {name}: {why}")]
    BadValue { name: String, why: String },
    #[error("option {0} cannot be combined with {1}")]
    Conflict(String, String),
    #[error(
        "the kernel's command line would be {0} bytes: UML takes {max} at most",
        max = COMMAND_LINE_SIZE - 1
    )]
    CommandLineTooLong(usize),
}

/// UML copies its arguments, each with a space, into a buffer of this many
/// bytes (its COMMAND_LINE_SIZE) and exits at boot ("add_arg: Too many
/// command line arguments!") when they do not fit. Counted over every
/// argument, though UML keeps some of its own out of that buffer: a
/// command line this allows always fits.
pub const COMMAND_LINE_SIZE: usize = 4096;

/// In an `append` or `ubd` option, stands for the VM's runtime directory
/// (`<uml_dir>/<umid>`), which UML creates at boot and evum removes when the
/// VM is gone: the place for sockets a guest device binds, such as a bess
/// interface's own end.
pub const RUNTIME_DIR: &str = "{runtime_dir}";

/// The most virtual CPUs a guest may have: evum's kernel is built with
/// `NR_CPUS=8` (and UML quietly clamps a larger `ncpus` to it).
pub const MAX_CPUS: u32 = 8;

/// Memory when no `mem` option is given. Below 64M the guest can deadlock on
/// memory during boot (see UML-NOTES).
pub const DEFAULT_MEM: &str = "64M";

/// Kernel parameters that make boot fast. The RAID6 benchmark alone costs
/// 0.85 s of a 6.1 boot and zswap set-up more (evum's kernel has neither).
/// The slab allocator's sysfs directory (`slab_late_init` in 7.x,
/// `slab_sysfs_init` in 6.1) is half of a guest's sysfs, about 2500 nodes
/// and 0.4 MB of its memory, made at every boot for the slabinfo tool;
/// /proc/slabinfo has the same figures. Without it the allocator stays in
/// its early state, which it is designed to run in (caches made later get
/// no sysfs directory either).
pub const FAST_BOOT_ARGS: &[&str] = &[
    "initcall_blacklist=raid6_select_algo,init_zswap,slab_late_init,slab_sysfs_init",
    "pty.legacy_count=0",
];

/// A delay-loop figure for kernels not given this host's own (an `append`
/// of `lpj=`, which evum makes for its kernel): it skips the calibration,
/// 40-80 ms of a boot, and need only be plausible.
pub const PRESET_LPJ: &str = "lpj=4000000";

/// The VM's identity and runtime location, which evum chooses.
#[derive(Debug, Clone)]
pub struct Identity {
    pub umid: String,
    pub uml_dir: PathBuf,
}

/// Builds the kernel command line (without the kernel binary itself).
///
/// evum's own channels come first: `con0` on the process's stdin/stdout (the
/// console), `ssl0` on fds 3 and 4 (the command channel), every other line
/// null unless an option says otherwise.
pub fn kernel_args(id: &Identity, options: &[BootOption]) -> Result<Vec<String>, OptionError> {
    check_duplicates(options)?;
    let cpus = valid_cpus(options)?;
    let mut args = vec![
        format!("umid={}", id.umid),
        format!("uml_dir={}", id.uml_dir.display()),
        "con0=fd:0,fd:1".to_string(),
        "ssl0=fd:3,fd:4".to_string(),
    ];
    let mut mem = DEFAULT_MEM.to_string();
    let mut verbose = false;
    let mut write = false;
    let mut con_default = "null".to_string();
    let mut ssl_default = "null".to_string();
    let runtime_dir = id.uml_dir.join(&id.umid);
    let mut hostfs = runtime_dir.join("no-hostfs");
    let runtime_dir = runtime_dir.to_string_lossy();
    let mut tail = Vec::new();
    for option in options {
        match option {
            BootOption::Con(None, spec) => con_default = spec.clone(),
            BootOption::Ssl(None, spec) => ssl_default = spec.clone(),
            BootOption::Con(Some(0), _) => return Err(OptionError::Reserved("con0".into())),
            BootOption::Ssl(Some(0), _) => return Err(OptionError::Reserved("ssl0".into())),
            BootOption::Con(Some(n), spec) => tail.push(format!("con{n}={spec}")),
            BootOption::Ssl(Some(n), spec) => tail.push(format!("ssl{n}={spec}")),
            BootOption::Ubd(n, spec) => tail.push(format!("ubd{n}={}", spec.replace(RUNTIME_DIR, &runtime_dir))),
            BootOption::ReadOnlyUbd(n, file) => tail.push(format!("ubd{n}r={file}")),
            BootOption::Eth(n, spec) => tail.push(format!("eth{n}={spec}")),
            BootOption::Init(path) => tail.push(format!("init={path}")),
            BootOption::Initrd(path) => tail.push(format!("initrd={}", path.display())),
            BootOption::Mem(m) => mem = valid_mem(m)?,
            BootOption::Root(r) => tail.push(format!("root={r}")),
            BootOption::RootFlags(f) => tail.push(format!("rootflags={f}")),
            BootOption::RootFsType(t) => tail.push(format!("rootfstype={t}")),
            BootOption::Verbose(v) => verbose = *v,
            BootOption::Write(w) => write = *w,
            BootOption::Hostfs(dir) => hostfs = dir.clone(),
            BootOption::Env(k, v) => tail.push(valid_env(k, v)?),
            // Several parameters may be given in one, space-separated;
            // each is checked on its own below.
            BootOption::Append(a) => {
                // Checked as the kernel gets it: the runtime dir put in.
                for parameter in a.split(' ').filter(|p| !p.is_empty()) {
                    let parameter = parameter.replace(RUNTIME_DIR, &runtime_dir);
                    reserved_parameter(&parameter)?;
                    tail.push(parameter);
                }
            }
            // Applied to the process, not passed to the kernel.
            BootOption::Cpu(_) | BootOption::Nice(_) => {}
            // Rendered once below: `cpus` implies seccomp too.
            BootOption::Seccomp(_) | BootOption::Cpus(_) => {}
        }
    }
    // Without a ubd0, UML opens a file named `root_fs` in its working
    // directory as the guest's first disk, read-write: whatever file of that
    // name is lying there would be the guest's to change.
    if !options
        .iter()
        .any(|o| matches!(o, BootOption::Ubd(0, _) | BootOption::ReadOnlyUbd(0, _)))
    {
        args.push("ubd0r=/dev/null".to_string());
    }
    args.push(format!("con={con_default}"));
    args.push(format!("ssl={ssl_default}"));
    args.push(format!("mem={mem}"));
    // hostfs= confines every hostfs mount the guest makes to this directory.
    args.push(format!("hostfs={}", hostfs.display()));
    args.push(if write { "rw" } else { "ro" }.to_string());
    if !verbose {
        args.push("quiet".to_string());
    }
    args.extend(FAST_BOOT_ARGS.iter().map(|s| s.to_string()));
    if !tail.iter().any(|a| a.starts_with("lpj=")) {
        args.push(PRESET_LPJ.to_string());
    }
    // Nothing for ptrace: it is the default, and a kernel without seccomp
    // mode would pass an unknown `seccomp=off` on to init's environment.
    if wants_seccomp(options) {
        args.push("seccomp=on".to_string());
    }
    if let Some(n) = cpus {
        args.push(format!("ncpus={n}"));
    }
    args.extend(tail);
    for arg in &args {
        one_parameter(arg)?;
    }
    let length: usize = args.iter().map(|a| a.len() + 1).sum();
    if length >= COMMAND_LINE_SIZE {
        return Err(OptionError::CommandLineTooLong(length));
    }
    Ok(args)
}

/// Parameters only evum sets: an `append` may not give them.
const RESERVED_PARAMETERS: [&str; 10] = [
    "umid", "uml_dir", "con", "con0", "ssl", "ssl0", "hostfs", "mem", "seccomp", "ncpus",
];

fn reserved_parameter(parameter: &str) -> Result<(), OptionError> {
    let key = parameter.split('=').next().unwrap_or_default();
    if RESERVED_PARAMETERS.contains(&key) {
        return Err(OptionError::Reserved(key.to_string()));
    }
    // The kernel reads the number of `conN` and `sslN` with strtoul, in any
    // base and wrapping to an unsigned int: `con00`, `con0x0` and
    // `con4294967296` are all con0. Other lines are named in plain decimal,
    // as the Con and Ssl options write them.
    for line in ["con", "ssl"] {
        let Some(number) = key
            .strip_prefix(line)
            .filter(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        else {
            continue;
        };
        if number.parse::<u32>().map(|n| n.to_string()).as_deref() != Ok(number) {
            return Err(OptionError::BadValue {
                name: key.to_string(),
                why: format!(
                    "name a {line} line by its number in plain decimal: the kernel may read this one as {line}0"
                ),
            });
        }
    }
    Ok(())
}

/// Checks that `arg` reaches the kernel as the one parameter it is. The
/// kernel splits its command line at every byte its `isspace()` takes
/// (tab to carriage return, space, and 0xa0, which a UTF-8 `à` or
/// no-break space carries) and treats `"` as a quote, so a value with any
/// of them would become parameters of its choosing (`ubd2r=/etc/shadow`).
/// Only printable ASCII but `"` passes; nothing evum builds needs more.
fn one_parameter(arg: &str) -> Result<(), OptionError> {
    match arg.bytes().find(|&b| !(0x21..=0x7e).contains(&b) || b == b'"') {
        None => Ok(()),
        Some(byte) => Err(OptionError::BadValue {
            name: arg.split('=').next().unwrap_or_default().to_string(),
            why: format!(
                "byte {byte:#04x} would split or quote the kernel's command line: only printable ASCII \
                 without spaces or quotes"
            ),
        }),
    }
}

/// The option's name as the user wrote it, for error messages.
fn option_key(option: &BootOption) -> Option<String> {
    Some(match option {
        BootOption::Con(n, _) => format!("con{}", n.map(|n| n.to_string()).unwrap_or_default()),
        BootOption::Ssl(n, _) => format!("ssl{}", n.map(|n| n.to_string()).unwrap_or_default()),
        BootOption::Ubd(n, _) | BootOption::ReadOnlyUbd(n, _) => format!("ubd{n}"),
        BootOption::Eth(n, _) => format!("eth{n}"),
        BootOption::Init(_) => "init".into(),
        BootOption::Initrd(_) => "initrd".into(),
        BootOption::Mem(_) => "mem".into(),
        BootOption::Root(_) => "root".into(),
        BootOption::RootFlags(_) => "rootflags".into(),
        BootOption::RootFsType(_) => "rootfstype".into(),
        BootOption::Verbose(_) => "verbose".into(),
        BootOption::Write(_) => "write".into(),
        BootOption::Hostfs(_) => "hostfs".into(),
        BootOption::Env(k, _) => format!("env {k}"),
        BootOption::Cpu(_) => "cpu".into(),
        BootOption::Seccomp(_) => "seccomp".into(),
        BootOption::Cpus(_) => "cpus".into(),
        BootOption::Nice(_) => "nice".into(),
        BootOption::Append(_) => return None,
    })
}

fn check_duplicates(options: &[BootOption]) -> Result<(), OptionError> {
    let mut seen = std::collections::HashSet::new();
    for key in options.iter().filter_map(option_key) {
        if !seen.insert(key.clone()) {
            return Err(OptionError::Duplicate(key));
        }
    }
    Ok(())
}

/// Whether the guest runs in seccomp mode: asked for, or implied by `cpus`.
pub fn wants_seccomp(options: &[BootOption]) -> bool {
    options
        .iter()
        .any(|o| matches!(o, BootOption::Seccomp(true) | BootOption::Cpus(_)))
}

/// The `cpus` option, checked: 1 to [`MAX_CPUS`], and not with ptrace.
fn valid_cpus(options: &[BootOption]) -> Result<Option<u32>, OptionError> {
    let Some(n) = options.iter().find_map(|o| match o {
        BootOption::Cpus(n) => Some(*n),
        _ => None,
    }) else {
        return Ok(None);
    };
    if !(1..=MAX_CPUS).contains(&n) {
        return Err(OptionError::BadValue {
            name: "cpus".into(),
            why: format!("expected 1 to {MAX_CPUS} virtual CPUs"),
        });
    }
    // An SMP UML refuses to start in ptrace mode.
    if options.contains(&BootOption::Seccomp(false)) {
        return Err(OptionError::Conflict("cpus".into(), "seccomp false".into()));
    }
    Ok(Some(n))
}

fn valid_mem(m: &str) -> Result<String, OptionError> {
    let digits = m.trim_end_matches(['K', 'M', 'G', 'k', 'm', 'g']);
    let bad = |why: &str| OptionError::BadValue {
        name: "mem".into(),
        why: why.into(),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || m.len() - digits.len() > 1 {
        return Err(bad("expected a size such as 64M or 1G"));
    }
    Ok(m.to_string())
}

/// The guest's memory in bytes, as the options give it (the default if
/// they do not; None for a value [`kernel_args`] refuses). Without a suffix
/// the kernel reads bytes.
pub fn memory_bytes(options: &[BootOption]) -> Option<u64> {
    let mem = options
        .iter()
        .rev()
        .find_map(|o| match o {
            BootOption::Mem(m) => Some(m.as_str()),
            _ => None,
        })
        .unwrap_or(DEFAULT_MEM);
    let valid = valid_mem(mem).ok()?;
    let digits = valid.trim_end_matches(['K', 'M', 'G', 'k', 'm', 'g']);
    let shift = match valid[digits.len()..].to_ascii_uppercase().as_str() {
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => 0,
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn valid_env(k: &str, v: &str) -> Result<String, OptionError> {
    // The kernel hands `KEY=VALUE` to init only for names it does not know
    // itself and that contain no dot; spaces would split the parameter.
    let ok_key = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !ok_key || v.bytes().any(|b| b.is_ascii_whitespace() || b == b'"') {
        return Err(OptionError::BadValue {
            name: format!("env {k}"),
            why: "names are A-Z, 0-9 and _, values have no spaces or quotes".into(),
        });
    }
    Ok(format!("{k}={v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_value_splits_or_quotes_the_command_line() {
        let id = Identity {
            umid: "u".into(),
            uml_dir: "/run/x".into(),
        };
        // Every byte the kernel's isspace() takes, a quote, control bytes
        // and non-ASCII, in every kind of value.
        for bad in [
            "\u{b}", "\u{c}", "\t", "\r", "\n", " ", "\"", "\u{a0}", "à", "\u{1}", "\u{7f}",
        ] {
            let injected = format!("evm{bad}ubd2r=/etc/shadow");
            for option in [
                BootOption::Env("EVUM_HOSTNAME".into(), injected.clone()),
                BootOption::RootFlags(injected.clone()),
                BootOption::Init(injected.clone()),
                BootOption::Ubd(1, injected.clone()),
                BootOption::Eth(0, injected.clone()),
            ] {
                assert!(
                    kernel_args(&id, std::slice::from_ref(&option)).is_err(),
                    "{option:?} passed"
                );
            }
        }
        // An append is split at spaces, and each parameter checked.
        assert_eq!(
            kernel_args(&id, &[BootOption::Append("panic=0 mem=4G".into())]),
            Err(OptionError::Reserved("mem".into()))
        );
        assert!(kernel_args(&id, &[BootOption::Append("panic=0\u{b}ubd1=/etc/shadow".into())]).is_err());
        let args = kernel_args(&id, &[BootOption::Append("panic=0  oops=panic".into())]).unwrap();
        assert!(args.ends_with(&["panic=0".to_string(), "oops=panic".to_string()]));
    }

    #[test]
    fn a_command_line_longer_than_uml_takes_is_refused() {
        let env = |n: usize| [BootOption::Env("FOO".into(), "x".repeat(n))];
        let fits = kernel_args(&id(), &env(3000)).unwrap();
        let length: usize = fits.iter().map(|a| a.len() + 1).sum();
        assert!(length < COMMAND_LINE_SIZE, "{length}");
        let room = COMMAND_LINE_SIZE - length;
        assert!(kernel_args(&id(), &env(3000 + room - 1)).is_ok());
        assert_eq!(
            kernel_args(&id(), &env(3000 + room)),
            Err(OptionError::CommandLineTooLong(COMMAND_LINE_SIZE))
        );
    }

    #[test]
    fn memory_in_bytes() {
        assert_eq!(memory_bytes(&[]), Some(64 << 20));
        assert_eq!(memory_bytes(&[BootOption::Mem("1G".into())]), Some(1 << 30));
        assert_eq!(memory_bytes(&[BootOption::Mem("512k".into())]), Some(512 << 10));
        assert_eq!(memory_bytes(&[BootOption::Mem("4096".into())]), Some(4096));
        assert_eq!(memory_bytes(&[BootOption::Mem("lots".into())]), None);
        assert_eq!(memory_bytes(&[BootOption::Mem("99999999999999G".into())]), None);
    }

    fn id() -> Identity {
        Identity {
            umid: "vm1".into(),
            uml_dir: "/run/evum".into(),
        }
    }

    #[test]
    fn defaults_are_fast_quiet_read_only_and_confined() {
        let args = kernel_args(&id(), &[]).unwrap();
        for want in [
            "umid=vm1",
            "uml_dir=/run/evum",
            "con0=fd:0,fd:1",
            "ssl0=fd:3,fd:4",
            "con=null",
            "ssl=null",
            "mem=64M",
            "hostfs=/run/evum/vm1/no-hostfs",
            "ro",
            "quiet",
            "initcall_blacklist=raid6_select_algo,init_zswap,slab_late_init,slab_sysfs_init",
            "ubd0r=/dev/null",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
        }
    }

    #[test]
    fn original_options_render_as_kernel_parameters() {
        let opts = [
            BootOption::Ubd(0, "cow,base.img".into()),
            BootOption::Eth(0, "daemon,,unix,/tmp/ctl".into()),
            BootOption::Init("/bin/sh".into()),
            BootOption::Mem("128M".into()),
            BootOption::Root("/dev/ubda".into()),
            BootOption::Write(true),
            BootOption::Verbose(true),
            BootOption::Con(Some(1), "pty".into()),
        ];
        let args = kernel_args(&id(), &opts).unwrap();
        for want in [
            "ubd0=cow,base.img",
            "eth0=daemon,,unix,/tmp/ctl",
            "init=/bin/sh",
            "mem=128M",
            "root=/dev/ubda",
            "rw",
            "con1=pty",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
        }
        assert!(!args
            .iter()
            .any(|a| a == "quiet" || a == "ro" || a == "mem=64M" || a.starts_with("ubd0r=")));
    }

    #[test]
    fn a_given_lpj_replaces_the_preset() {
        let preset = kernel_args(&id(), &[]).unwrap();
        assert!(preset.iter().any(|a| a == PRESET_LPJ), "{preset:?}");
        let own = kernel_args(&id(), &[BootOption::Append("lpj=12361728".into())]).unwrap();
        let lpjs: Vec<&String> = own.iter().filter(|a| a.starts_with("lpj=")).collect();
        assert_eq!(lpjs, ["lpj=12361728"]);
    }

    #[test]
    fn append_can_name_the_runtime_dir() {
        let opts = [BootOption::Append(
            "vec0:transport=bess,src={runtime_dir}/bess,dst=/s".into(),
        )];
        let args = kernel_args(&id(), &opts).unwrap();
        assert!(
            args.iter()
                .any(|a| a == "vec0:transport=bess,src=/run/evum/vm1/bess,dst=/s"),
            "{args:?}"
        );
    }

    #[test]
    fn evum_channels_cannot_be_taken() {
        assert_eq!(
            kernel_args(&id(), &[BootOption::Con(Some(0), "pty".into())]),
            Err(OptionError::Reserved("con0".into()))
        );
    }

    #[test]
    fn an_append_cannot_spell_evums_lines_another_way() {
        // The kernel reads all of these as con0 or ssl0, or con1 in octal.
        for taken in ["con00=pty", "ssl0x0=pty", "con4294967296=pty", "con01=pty"] {
            assert!(
                kernel_args(&id(), &[BootOption::Append(taken.into())]).is_err(),
                "{taken}"
            );
        }
        assert!(kernel_args(&id(), &[BootOption::Append("con1=pty ssl12=null console=x".into())]).is_ok());
        // Checked with the runtime dir put in, as the kernel gets it.
        let bare = Identity {
            umid: "umid".into(),
            uml_dir: "".into(),
        };
        assert_eq!(
            kernel_args(&bare, &[BootOption::Append("{runtime_dir}=x".into())]),
            Err(OptionError::Reserved("umid".into()))
        );
    }

    #[test]
    fn duplicates_and_bad_values_are_named() {
        let twice = [BootOption::Mem("64M".into()), BootOption::Mem("128M".into())];
        assert_eq!(kernel_args(&id(), &twice), Err(OptionError::Duplicate("mem".into())));
        assert!(matches!(
            kernel_args(&id(), &[BootOption::Mem("lots".into())]),
            Err(OptionError::BadValue { name, .. }) if name == "mem"
        ));
        assert!(kernel_args(&id(), &[BootOption::Env("A B".into(), "x".into())]).is_err());
    }

    fn count(args: &[String], want: &str) -> usize {
        args.iter().filter(|a| *a == want).count()
    }

    #[test]
    fn seccomp_is_on_only_when_asked_for() {
        let args = kernel_args(&id(), &[BootOption::Seccomp(true)]).unwrap();
        assert_eq!(count(&args, "seccomp=on"), 1, "{args:?}");
        assert!(!args.iter().any(|a| a.starts_with("ncpus=")), "{args:?}");
        // ptrace is every kernel's default: nothing to say.
        for opts in [&[][..], &[BootOption::Seccomp(false)][..]] {
            let args = kernel_args(&id(), opts).unwrap();
            assert!(!args.iter().any(|a| a.starts_with("seccomp")), "{args:?}");
        }
    }

    #[test]
    fn cpus_render_ncpus_and_imply_seccomp() {
        for opts in [
            &[BootOption::Cpus(2)][..],
            &[BootOption::Cpus(2), BootOption::Seccomp(true)][..],
        ] {
            let args = kernel_args(&id(), opts).unwrap();
            assert_eq!(count(&args, "ncpus=2"), 1, "{args:?}");
            assert_eq!(count(&args, "seccomp=on"), 1, "{args:?}");
        }
        let args = kernel_args(&id(), &[BootOption::Cpus(MAX_CPUS)]).unwrap();
        assert_eq!(count(&args, "ncpus=8"), 1, "{args:?}");
    }

    #[test]
    fn cpus_and_seccomp_errors_are_named() {
        for n in [0, MAX_CPUS + 1, u32::MAX] {
            assert!(matches!(
                kernel_args(&id(), &[BootOption::Cpus(n)]),
                Err(OptionError::BadValue { name, .. }) if name == "cpus"
            ));
        }
        assert_eq!(
            kernel_args(&id(), &[BootOption::Cpus(2), BootOption::Seccomp(false)]),
            Err(OptionError::Conflict("cpus".into(), "seccomp false".into()))
        );
        assert_eq!(
            kernel_args(&id(), &[BootOption::Cpus(2), BootOption::Cpus(4)]),
            Err(OptionError::Duplicate("cpus".into()))
        );
        assert_eq!(
            kernel_args(&id(), &[BootOption::Seccomp(true), BootOption::Seccomp(false)]),
            Err(OptionError::Duplicate("seccomp".into()))
        );
    }
}

#[cfg(test)]
#[path = "options_props.rs"]
mod props;
