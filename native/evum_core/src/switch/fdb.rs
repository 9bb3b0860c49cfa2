//! The forwarding database: which port each source MAC was last seen on,
//! and the addresses that belong to a port for as long as it lives.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::PortId;

pub type Mac = [u8; 6];

/// True for broadcast and multicast destinations (the group bit).
pub fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

/// How stale a learned entry's time may be: a MAC that keeps sending from
/// the same port is written to the table at most this often, not per frame.
const REFRESH: Duration = Duration::from_millis(100);

/// Learned MAC addresses, forgotten after `ageing` without a frame from them.
pub struct Fdb {
    ageing: Duration,
    entries: HashMap<Mac, (PortId, Instant)>,
    /// Addresses given to a port (an attached port's own MAC), like a
    /// bridge's permanent entries: known before the port has sent anything,
    /// never aged, and not moved by frames from other ports.
    fixed: HashMap<Mac, PortId>,
    /// The entry written last, as written.
    last: Option<(Mac, PortId, Instant)>,
}

impl Fdb {
    pub fn new(ageing: Duration) -> Self {
        Fdb {
            ageing,
            entries: HashMap::new(),
            fixed: HashMap::new(),
            last: None,
        }
    }

    /// Records that `mac` sent from `port` (a move if it was elsewhere).
    /// Group addresses are never learned.
    pub fn learn(&mut self, mac: Mac, port: PortId, now: Instant) {
        if is_group(&mac) {
            return;
        }
        if let Some((m, p, at)) = self.last {
            if m == mac && p == port && now.saturating_duration_since(at) < REFRESH {
                return;
            }
        }
        if self.fixed.contains_key(&mac) {
            return;
        }
        self.entries.insert(mac, (port, now));
        self.last = Some((mac, port, now));
    }

    /// Gives `mac` to `port` until the port goes (see [`forget_port`](Self::forget_port)).
    /// Group addresses are never given.
    pub fn fix(&mut self, mac: Mac, port: PortId) {
        if is_group(&mac) {
            return;
        }
        self.entries.remove(&mac);
        self.last = None;
        self.fixed.insert(mac, port);
    }

    /// The port `mac` was given to, or else the one it was seen on within
    /// the ageing time.
    pub fn lookup(&self, mac: &Mac, now: Instant) -> Option<PortId> {
        if let Some(port) = self.fixed.get(mac) {
            return Some(*port);
        }
        self.entries
            .get(mac)
            .filter(|(_, seen)| now.saturating_duration_since(*seen) < self.ageing)
            .map(|(port, _)| *port)
    }

    /// Forgets every MAC of a port that has gone, given or learned.
    pub fn forget_port(&mut self, port: PortId) {
        self.last = None;
        self.entries.retain(|_, (p, _)| *p != port);
        self.fixed.retain(|_, p| *p != port);
    }

    /// Drops aged entries.
    pub fn expire(&mut self, now: Instant) {
        let ageing = self.ageing;
        self.last = None;
        self.entries
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < ageing);
    }

    /// Every live entry with its age (zero for a given address).
    pub fn entries(&self, now: Instant) -> Vec<(Mac, PortId, Duration)> {
        let mut out: Vec<_> = self
            .entries
            .iter()
            .map(|(mac, (port, seen))| (*mac, *port, now.saturating_duration_since(*seen)))
            .filter(|(_, _, age)| *age < self.ageing)
            .chain(self.fixed.iter().map(|(mac, port)| (*mac, *port, Duration::ZERO)))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 1];

    #[test]
    fn learns_moves_and_ages() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(Duration::from_secs(300));
        assert_eq!(fdb.lookup(&A, t0), None);
        fdb.learn(A, PortId(1), t0);
        assert_eq!(fdb.lookup(&A, t0), Some(PortId(1)));
        fdb.learn(A, PortId(2), t0 + Duration::from_secs(1));
        assert_eq!(fdb.lookup(&A, t0), Some(PortId(2)));
        // A repeat within the refresh time keeps the entry as it was.
        fdb.learn(A, PortId(2), t0 + Duration::from_millis(1001));
        assert_eq!(fdb.entries(t0 + Duration::from_secs(2))[0].2, Duration::from_secs(1));
        let late = t0 + Duration::from_secs(302);
        assert_eq!(fdb.lookup(&A, late), None);
        assert!(fdb.entries(late).is_empty());
        fdb.expire(late);
        assert!(fdb.entries.is_empty());
    }

    #[test]
    fn group_addresses_are_not_learned() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(Duration::from_secs(300));
        fdb.learn([0xff; 6], PortId(1), t0);
        fdb.learn([0x01, 0, 0x5e, 0, 0, 1], PortId(1), t0);
        assert!(fdb.entries(t0).is_empty());
        assert!(is_group(&[0xff; 6]) && !is_group(&A));
    }

    #[test]
    fn a_given_address_stays_with_its_port_until_the_port_goes() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(Duration::from_secs(300));
        fdb.learn(A, PortId(2), t0);
        fdb.fix(A, PortId(1));
        assert_eq!(fdb.lookup(&A, t0), Some(PortId(1)));
        // Frames from elsewhere do not move it, and it does not age.
        fdb.learn(A, PortId(2), t0 + Duration::from_secs(1));
        let late = t0 + Duration::from_secs(1000);
        fdb.expire(late);
        assert_eq!(fdb.lookup(&A, late), Some(PortId(1)));
        assert_eq!(fdb.entries(late), vec![(A, PortId(1), Duration::ZERO)]);
        fdb.forget_port(PortId(1));
        assert_eq!(fdb.lookup(&A, late), None);
        // Then it is learned like any other.
        fdb.learn(A, PortId(2), late);
        assert_eq!(fdb.lookup(&A, late), Some(PortId(2)));
        fdb.fix([0xff; 6], PortId(3));
        assert_eq!(fdb.lookup(&[0xff; 6], late), None);
    }

    #[test]
    fn a_gone_port_is_forgotten() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(Duration::from_secs(300));
        fdb.learn(A, PortId(1), t0);
        fdb.learn([2, 0, 0, 0, 0, 2], PortId(2), t0);
        fdb.forget_port(PortId(1));
        assert_eq!(fdb.entries(t0).len(), 1);
        assert_eq!(fdb.lookup(&A, t0), None);
    }
}
