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

/// What [`Fdb::learn`] made of a source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Known (now) on that port; group addresses, never learned, too.
    Yes,
    /// Known now on that port, and until now on this other one.
    Moved(PortId),
    /// The address was given to another port: the frame is a spoof.
    Taken,
    /// A new address on a port that has its `max_per_port` already: the
    /// frame is dropped, as a switch's port security does.
    PortFull,
    /// The table holds `max_total` addresses: the frame goes on, its
    /// source unlearned (frames to it are flooded).
    TableFull,
}

/// Learned MAC addresses, forgotten after `ageing` without a frame from them,
/// at most `max_per_port` per port and `max_total` in all.
pub struct Fdb {
    ageing: Duration,
    max_per_port: usize,
    max_total: usize,
    entries: HashMap<Mac, (PortId, Instant)>,
    /// How many of `entries` each port has.
    per_port: HashMap<PortId, usize>,
    /// Addresses given to a port (an attached port's own MAC, a VM's locked
    /// one), like a bridge's permanent entries: known before the port has
    /// sent anything, never aged, and not moved by frames from other ports.
    fixed: HashMap<Mac, PortId>,
    /// The entry written last, as written.
    last: Option<(Mac, PortId, Instant)>,
}

impl Fdb {
    pub fn new(ageing: Duration, max_per_port: usize, max_total: usize) -> Self {
        Fdb {
            ageing,
            max_per_port,
            max_total,
            entries: HashMap::new(),
            per_port: HashMap::new(),
            fixed: HashMap::new(),
            last: None,
        }
    }

    /// Records that `mac` sent from `port` (a move if it was elsewhere),
    /// within the limits. Group addresses are never learned.
    pub fn learn(&mut self, mac: Mac, port: PortId, now: Instant) -> Learned {
        if is_group(&mac) {
            return Learned::Yes;
        }
        if let Some((m, p, at)) = self.last {
            if m == mac && p == port && now.saturating_duration_since(at) < REFRESH {
                return Learned::Yes;
            }
        }
        if let Some(owner) = self.fixed.get(&mac) {
            return if *owner == port { Learned::Yes } else { Learned::Taken };
        }
        let old = self.entries.get(&mac).map(|(p, _)| *p);
        if old != Some(port) {
            if self.per_port.get(&port).copied().unwrap_or(0) >= self.max_per_port {
                return Learned::PortFull;
            }
            if old.is_none() && self.entries.len() >= self.max_total {
                return Learned::TableFull;
            }
            if let Some(old) = old {
                self.uncount(old);
            }
            *self.per_port.entry(port).or_insert(0) += 1;
        }
        self.entries.insert(mac, (port, now));
        self.last = Some((mac, port, now));
        match old {
            Some(old) if old != port => Learned::Moved(old),
            _ => Learned::Yes,
        }
    }

    fn uncount(&mut self, port: PortId) {
        if let Some(n) = self.per_port.get_mut(&port) {
            *n -= 1;
            if *n == 0 {
                self.per_port.remove(&port);
            }
        }
    }

    /// Gives `mac` to `port` until the port goes (see [`forget_port`](Self::forget_port)).
    /// Group addresses are never given.
    pub fn fix(&mut self, mac: Mac, port: PortId) {
        if is_group(&mac) {
            return;
        }
        if let Some((old, _)) = self.entries.remove(&mac) {
            self.uncount(old);
        }
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
        self.per_port.remove(&port);
        self.fixed.retain(|_, p| *p != port);
    }

    /// Drops aged entries.
    pub fn expire(&mut self, now: Instant) {
        let ageing = self.ageing;
        self.last = None;
        let per_port = &mut self.per_port;
        self.entries.retain(|_, (port, seen)| {
            let keep = now.saturating_duration_since(*seen) < ageing;
            if !keep {
                if let Some(n) = per_port.get_mut(port) {
                    *n -= 1;
                }
            }
            keep
        });
        self.per_port.retain(|_, n| *n > 0);
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
        let mut fdb = Fdb::new(Duration::from_secs(300), 64, 1024);
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
        let mut fdb = Fdb::new(Duration::from_secs(300), 64, 1024);
        fdb.learn([0xff; 6], PortId(1), t0);
        fdb.learn([0x01, 0, 0x5e, 0, 0, 1], PortId(1), t0);
        assert!(fdb.entries(t0).is_empty());
        assert!(is_group(&[0xff; 6]) && !is_group(&A));
    }

    #[test]
    fn a_given_address_stays_with_its_port_until_the_port_goes() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(Duration::from_secs(300), 64, 1024);
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
    fn each_port_and_the_table_have_a_limit() {
        let t0 = Instant::now();
        let mac = |i: u8| [2, 0, 0, 0, 1, i];
        let mut fdb = Fdb::new(Duration::from_secs(300), 2, 3);
        assert_eq!(fdb.learn(mac(1), PortId(1), t0), Learned::Yes);
        assert_eq!(fdb.learn(mac(2), PortId(1), t0), Learned::Yes);
        // A third address on port 1 is refused; known ones still pass.
        assert_eq!(fdb.learn(mac(3), PortId(1), t0), Learned::PortFull);
        assert_eq!(fdb.learn(mac(1), PortId(1), t0 + REFRESH), Learned::Yes);
        assert_eq!(fdb.learn(mac(3), PortId(2), t0), Learned::Yes);
        // The table is full: a new address goes unlearned.
        assert_eq!(fdb.learn(mac(4), PortId(2), t0), Learned::TableFull);
        assert_eq!(fdb.lookup(&mac(4), t0), None);
        // A move counts against the port moved to, and frees the old one.
        assert_eq!(fdb.learn(mac(2), PortId(2), t0), Learned::Moved(PortId(1)));
        assert_eq!(fdb.learn(mac(5), PortId(1), t0), Learned::TableFull);
        // Ageing frees room.
        let late = t0 + Duration::from_secs(301);
        fdb.expire(late);
        assert_eq!(fdb.learn(mac(5), PortId(1), late), Learned::Yes);
        assert_eq!(fdb.learn(mac(6), PortId(1), late), Learned::Yes);
        assert_eq!(fdb.learn(mac(7), PortId(1), late), Learned::PortFull);
        // A given address is the port's own: others are refused it.
        fdb.fix(mac(9), PortId(3));
        assert_eq!(fdb.learn(mac(9), PortId(1), late), Learned::Taken);
        assert_eq!(fdb.learn(mac(9), PortId(3), late), Learned::Yes);
        fdb.forget_port(PortId(1));
        assert_eq!(fdb.learn(mac(7), PortId(1), late), Learned::Yes);
    }

    #[test]
    fn a_gone_port_is_forgotten() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(Duration::from_secs(300), 64, 1024);
        fdb.learn(A, PortId(1), t0);
        fdb.learn([2, 0, 0, 0, 0, 2], PortId(2), t0);
        fdb.forget_port(PortId(1));
        assert_eq!(fdb.entries(t0).len(), 1);
        assert_eq!(fdb.lookup(&A, t0), None);
    }
}
