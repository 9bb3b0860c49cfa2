//! How a VM's processes share the host's CPUs with the BEAM (the `nice`
//! option).
//!
//! Each VM is a session of its own (its process group is what evum kills),
//! and where the host groups tasks by session for the scheduler
//! (`CONFIG_SCHED_AUTOGROUP`, on in Debian's kernels), each session counts
//! as one: 1000 busy VMs were 1000 shares of the CPUs to the BEAM's one,
//! and the BEAM waited seconds for a CPU (a 1 ms timer 6.3 s late, a
//! process held 5 s while 1000 VMs stopped at once). A VM therefore runs
//! at the lowest priority by default, nice 19 for its processes and for its
//! session's group: it still takes every cycle the BEAM leaves, but the
//! BEAM comes first (the same run: the timer 60 ms late at worst, no
//! process held over 118 ms). Nice 10 left the timer 690 ms late; VMs kept
//! in the BEAM's own session (no session each) left 1000 commands at once
//! unanswered for 120 s. `{nice, 0}` runs a VM as any program.
//!
//! Applied in the child before exec; every process UML starts inherits it.
//! As root, with a `cpu` cgroup hierarchy, the nice value also weighs the
//! VM's cgroup (see [`super::cpu_group`]), which then is what counts.

use crate::vm::options::BootOption;

/// A VM's nice value unless its options say otherwise.
pub const DEFAULT_NICE: u8 = 19;

/// The highest nice value (the lowest priority) Linux has.
pub const MAX_NICE: u8 = 19;

/// The nice value of a VM's processes and of its session's group.
pub fn nice(options: &[BootOption]) -> u8 {
    options
        .iter()
        .rev()
        .find_map(|o| match o {
            BootOption::Nice(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(DEFAULT_NICE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_nice_counts_and_none_is_the_lowest_priority() {
        assert_eq!(nice(&[]), DEFAULT_NICE);
        assert_eq!(nice(&[BootOption::Nice(0)]), 0);
        assert_eq!(nice(&[BootOption::Nice(5), BootOption::Nice(7)]), 7);
    }
}
