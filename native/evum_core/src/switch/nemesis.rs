//! Faults the switch makes on purpose, to test distributed systems with, as
//! Jepsen's nemesis does: partitions (groups of ports that talk inside, not
//! across) and one-way cuts between two ports. Effective from the next
//! frame forwarded; with none set, forwarding pays one test of a flag.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::PortId;

/// The group of the ports a partition does not name: they talk to each
/// other and to no named group.
const OTHERS: u32 = 0;

#[derive(Debug, Default)]
pub struct Nemesis {
    /// Each port named by the partition, with its group (from 1).
    groups: HashMap<PortId, u32>,
    /// Directed pairs (from, to) whose frames are dropped.
    cuts: HashSet<(PortId, PortId)>,
}

impl Nemesis {
    /// Splits the switch into `groups` (and the group of every port not in
    /// them), replacing any partition before. A port named twice is in the
    /// last group naming it.
    pub fn partition(&mut self, groups: &[Vec<PortId>]) {
        self.groups.clear();
        for (index, group) in groups.iter().enumerate() {
            for port in group {
                self.groups.insert(*port, index as u32 + 1);
            }
        }
    }

    /// Ends the partition; cuts stay.
    pub fn heal(&mut self) {
        self.groups.clear();
    }

    /// Frames from `from` to `to` are dropped, the other way not.
    pub fn cut(&mut self, from: PortId, to: PortId) {
        self.cuts.insert((from, to));
    }

    pub fn restore(&mut self, from: PortId, to: PortId) {
        self.cuts.remove(&(from, to));
    }

    /// Whether nothing is set: forwarding then asks nothing more.
    pub fn is_idle(&self) -> bool {
        self.groups.is_empty() && self.cuts.is_empty()
    }

    /// Whether a frame from `from` may reach `to`.
    pub fn allows(&self, from: PortId, to: PortId) -> bool {
        let group = |port| self.groups.get(&port).copied().unwrap_or(OTHERS);
        group(from) == group(to) && !self.cuts.contains(&(from, to))
    }

    /// A port that has gone is in no group and no cut.
    pub fn forget_port(&mut self, port: PortId) {
        self.groups.remove(&port);
        self.cuts.retain(|(from, to)| *from != port && *to != port);
    }

    /// The partition's named groups, in order, each sorted (empty when
    /// there is none).
    pub fn partitions(&self) -> Vec<Vec<PortId>> {
        let mut by_group: BTreeMap<u32, BTreeSet<PortId>> = BTreeMap::new();
        for (port, group) in &self.groups {
            by_group.entry(*group).or_default().insert(*port);
        }
        by_group
            .into_values()
            .map(|ports| ports.into_iter().collect())
            .collect()
    }

    /// The cuts, sorted.
    pub fn cuts(&self) -> Vec<(PortId, PortId)> {
        let mut cuts: Vec<_> = self.cuts.iter().copied().collect();
        cuts.sort();
        cuts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PortId = PortId(1);
    const B: PortId = PortId(2);
    const C: PortId = PortId(3);
    const D: PortId = PortId(4);

    #[test]
    fn a_partition_keeps_groups_apart_and_the_unnamed_together() {
        let mut n = Nemesis::default();
        assert!(n.is_idle() && n.allows(A, B));
        n.partition(&[vec![A], vec![B, C]]);
        assert!(!n.allows(A, B) && !n.allows(B, A) && !n.allows(A, D));
        assert!(n.allows(B, C) && n.allows(C, B));
        // D was not named: it is with the other unnamed ports only.
        assert!(!n.allows(D, B) && n.allows(D, PortId(9)));
        assert_eq!(n.partitions(), vec![vec![A], vec![B, C]]);
        n.heal();
        assert!(n.allows(A, B) && n.is_idle());
    }

    #[test]
    fn a_cut_is_one_way_and_outlives_a_heal() {
        let mut n = Nemesis::default();
        n.cut(A, B);
        assert!(!n.allows(A, B) && n.allows(B, A));
        n.heal();
        assert!(!n.allows(A, B));
        assert_eq!(n.cuts(), vec![(A, B)]);
        n.restore(A, B);
        assert!(n.allows(A, B) && n.is_idle());
    }

    #[test]
    fn a_gone_port_leaves_no_trace() {
        let mut n = Nemesis::default();
        n.partition(&[vec![A, B]]);
        n.cut(C, A);
        n.forget_port(A);
        assert_eq!(n.partitions(), vec![vec![B]]);
        assert!(n.cuts().is_empty());
    }
}
