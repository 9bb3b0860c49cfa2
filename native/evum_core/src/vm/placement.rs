//! Which host CPUs a VM's processes may run on (the `cpu` option).
//!
//! A UML kernel is one host process, and every guest process is a host
//! process that the kernel traces: each guest system call hands control from
//! the traced process to the kernel and back. When the host scheduler puts
//! the two on different CPUs, each hand-over is a wake-up on another CPU,
//! which costs far more than a switch on the same one (most of all in a
//! virtual machine, where it is an inter-processor interrupt). Pinning a VM
//! to one CPU keeps every hand-over local: guest TCP between two guests on
//! two CPUs went from 580-740 to 780-950 Mbit/s on a 2-core machine, and a
//! boot to the prompt from 105-126 to 59-72 ms on an idle one. The price is
//! that a pinned VM waits for its CPU even when another is idle, and a
//! busy BEAM thread on the same CPU slows it (console throughput to a pid
//! fell by up to a third). So by default evum pins a VM to one CPU (the
//! next in turn) for its boot only, when nothing else runs, and lets the
//! host place its processes once the guest is up; `auto` pins it for good,
//! `any` never. A guest of several virtual CPUs is left unpinned.
//!
//! The set is applied in the child before exec, and every process UML
//! starts inherits it.

use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use crate::vm::options::{BootOption, OptionError};

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuChoice {
    /// Wherever the host scheduler puts it (the default for a guest of
    /// several virtual CPUs, and for any guest once it is up).
    Any,
    /// One CPU, evum's choice: the next of the CPUs evum may use, in turn,
    /// so that VMs started one after another spread over all of them (the
    /// default while a guest boots).
    Auto,
    /// These CPUs.
    List(Vec<usize>),
}

impl CpuChoice {
    /// Parses `any`, `auto`, or CPU numbers separated by commas (`0`, `1,3`).
    pub fn parse(text: &str) -> Result<CpuChoice, OptionError> {
        match text {
            "any" => Ok(CpuChoice::Any),
            "auto" => Ok(CpuChoice::Auto),
            _ => text
                .split(',')
                .map(|n| n.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|cpus| !cpus.is_empty())
                .map(CpuChoice::List)
                .ok_or_else(|| bad("expected any, auto, a CPU number or a list of them")),
        }
    }
}

fn bad(why: impl Into<String>) -> OptionError {
    OptionError::BadValue {
        name: "cpu".into(),
        why: why.into(),
    }
}

/// The CPU set a VM's process is to get from its options, or None to leave
/// it as evum's own.
pub fn cpu_set(options: &[BootOption]) -> Result<Option<CpuSet>, OptionError> {
    match options.iter().find_map(|o| match o {
        BootOption::Cpu(choice) => Some(choice),
        _ => None,
    }) {
        Some(choice) => choice_set(choice),
        None => choice_set(&default_choice(options)),
    }
}

/// True when the VM is pinned by default, not by its options: then only
/// for its boot, the time of the most hand-overs between its processes on
/// an otherwise idle host. Afterwards the host scheduler places them, and
/// moves them off a CPU that something else (the BEAM) keeps busy.
pub fn pinned_for_boot_only(options: &[BootOption]) -> bool {
    !options.iter().any(|o| matches!(o, BootOption::Cpu(_))) && default_choice(options) == CpuChoice::Auto
}

/// Lets every process of the VM whose UML process is `pid` (it, its
/// threads, and the processes it started, recursively) run on every CPU
/// evum may use. Best effort: a process that exits meanwhile is skipped.
pub fn release(pid: Pid) {
    // evum's own CPUs, as for `any`: the process's, not this thread's.
    let Ok(all) = sched_getaffinity(Pid::this()) else {
        return;
    };
    let mut pending = vec![pid.as_raw()];
    // A VM has a few dozen processes; the bound only guards against a loop.
    let mut left = 10_000;
    while let Some(process) = pending.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{process}/task")) else {
            continue;
        };
        for task in tasks.filter_map(Result::ok) {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else {
                continue;
            };
            let _ = sched_setaffinity(Pid::from_raw(tid), &all);
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            pending.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
        left -= 1;
        if left == 0 {
            break;
        }
    }
}

/// `auto`, but for a guest of several virtual CPUs: pinned to one host CPU
/// they could only take turns.
fn default_choice(options: &[BootOption]) -> CpuChoice {
    if options.iter().any(|o| matches!(o, BootOption::Cpus(n) if *n > 1)) {
        CpuChoice::Any
    } else {
        CpuChoice::Auto
    }
}

/// The CPU set a choice stands for, checked against the CPUs evum may use,
/// or None for `any` (evum's own). A VM's processes and a switch's thread
/// are placed alike.
pub fn choice_set(choice: &CpuChoice) -> Result<Option<CpuSet>, OptionError> {
    let allowed = || -> Result<Vec<usize>, OptionError> {
        let mine = sched_getaffinity(Pid::this()).map_err(|e| bad(format!("cannot read evum's own CPUs: {e}")))?;
        Ok((0..CpuSet::count())
            .filter(|&n| mine.is_set(n).unwrap_or(false))
            .collect())
    };
    let cpus = match choice {
        CpuChoice::Any => return Ok(None),
        CpuChoice::Auto => {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let allowed = allowed()?;
            if allowed.is_empty() {
                return Ok(None);
            }
            vec![allowed[NEXT.fetch_add(1, Ordering::Relaxed) % allowed.len()]]
        }
        CpuChoice::List(cpus) => {
            let allowed = allowed()?;
            if let Some(n) = cpus.iter().find(|n| !allowed.contains(n)) {
                return Err(bad(format!(
                    "CPU {n} is not one evum may run on (it may use {})",
                    ranges(&allowed)
                )));
            }
            cpus.clone()
        }
    };
    let mut set = CpuSet::new();
    for n in cpus {
        set.set(n).map_err(|_| bad(format!("CPU {n} is out of range")))?;
    }
    Ok(Some(set))
}

/// `0-3,6` for [0, 1, 2, 3, 6], as the kernel writes CPU lists.
fn ranges(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        parts.push(if cpus[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", cpus[i])
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        assert_eq!(CpuChoice::parse("any"), Ok(CpuChoice::Any));
        assert_eq!(CpuChoice::parse("auto"), Ok(CpuChoice::Auto));
        assert_eq!(CpuChoice::parse("1"), Ok(CpuChoice::List(vec![1])));
        assert_eq!(CpuChoice::parse("0, 2"), Ok(CpuChoice::List(vec![0, 2])));
        for bad in ["", "-1", "one", "0,", "1.5"] {
            assert!(CpuChoice::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpu_lists_are_written_as_ranges() {
        assert_eq!(ranges(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(ranges(&[1]), "1");
        assert_eq!(ranges(&[0, 2, 3]), "0,2-3");
    }

    #[test]
    fn a_cpu_evum_may_not_use_is_refused() {
        let options = [BootOption::Cpu(CpuChoice::List(vec![CpuSet::count() - 1]))];
        let err = cpu_set(&options).unwrap_err().to_string();
        assert!(err.contains("is not one evum may run on"), "{err}");
    }

    #[test]
    fn auto_takes_one_cpu_and_any_none() {
        let set = cpu_set(&[BootOption::Cpu(CpuChoice::Auto)]).unwrap().unwrap();
        let pinned = (0..CpuSet::count()).filter(|&n| set.is_set(n).unwrap()).count();
        assert_eq!(pinned, 1);
        assert!(cpu_set(&[BootOption::Cpu(CpuChoice::Any)]).unwrap().is_none());
    }

    #[test]
    fn only_a_default_pin_is_for_the_boot_alone() {
        assert!(pinned_for_boot_only(&[]));
        assert!(!pinned_for_boot_only(&[BootOption::Cpu(CpuChoice::Auto)]));
        assert!(!pinned_for_boot_only(&[BootOption::Cpu(CpuChoice::Any)]));
        assert!(!pinned_for_boot_only(&[BootOption::Cpus(2)]));
    }

    #[test]
    fn one_cpu_guests_are_pinned_by_default_and_smp_guests_not() {
        let count = |set: CpuSet| (0..CpuSet::count()).filter(|&n| set.is_set(n).unwrap()).count();
        assert_eq!(count(cpu_set(&[]).unwrap().unwrap()), 1);
        assert_eq!(count(cpu_set(&[BootOption::Cpus(1)]).unwrap().unwrap()), 1);
        assert!(cpu_set(&[BootOption::Cpus(2)]).unwrap().is_none());
    }
}
