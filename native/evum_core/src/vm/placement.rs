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
//! that a pinned VM waits for its CPU even when another is idle; but a
//! guest of one virtual CPU runs one thing at a time anyway (the kernel or
//! one of its processes), so evum pins by default (`auto`: one CPU each,
//! in turn), and leaves a guest of several virtual CPUs unpinned.
//!
//! The set is applied in the child before exec, and every process UML
//! starts inherits it.

use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{sched_getaffinity, CpuSet};
use nix::unistd::Pid;

use crate::vm::options::{BootOption, OptionError};

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuChoice {
    /// Wherever the host scheduler puts it (the default for a guest of
    /// several virtual CPUs).
    Any,
    /// One CPU, evum's choice: the next of the CPUs evum may use, in turn,
    /// so that VMs started one after another spread over all of them (the
    /// default).
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
    fn one_cpu_guests_are_pinned_by_default_and_smp_guests_not() {
        let count = |set: CpuSet| (0..CpuSet::count()).filter(|&n| set.is_set(n).unwrap()).count();
        assert_eq!(count(cpu_set(&[]).unwrap().unwrap()), 1);
        assert_eq!(count(cpu_set(&[BootOption::Cpus(1)]).unwrap().unwrap()), 1);
        assert!(cpu_set(&[BootOption::Cpus(2)]).unwrap().is_none());
    }
}
