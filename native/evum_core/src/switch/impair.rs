//! Link impairment, as netem and vde's wirefilter make it: loss (alone or
//! in bursts), delay with jitter, duplication, reordering, corruption and a
//! rate, on the frames to one port or from one port to another.
//!
//! Every frame for an impaired link is copied into a queue of frames held
//! until their time (a heap ordered by release time, then arrival); the
//! switch's loop sleeps no longer than the next release and sends what is
//! due. The random draws come from one generator per switch, seedable, so a
//! failing run can be replayed. Each link holds at most [`MAX_HELD`]
//! frames: past that a frame is dropped and counted (`overflow`). Clearing
//! a link drops what it holds: the link is clean at once. A frame released
//! goes to its port's output queue like any other, but its sender is not
//! held back for it (it has long been read): a receiver slower than the
//! link loses frames at its queue (`drops_queue_full`), as behind netem.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use super::PortId;

/// Frames one link may hold at once.
pub const MAX_HELD: usize = 4096;

/// What is wrong with a link. Probabilities are from 0 to 1.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    pub loss: f64,
    /// Bursts of loss: the chance that one starts at a frame, and the mean
    /// number of frames it takes (geometric).
    pub loss_burst: Option<(f64, f64)>,
    pub delay: Duration,
    /// Each frame's delay is `delay` plus or minus up to this, uniformly.
    pub jitter: Duration,
    pub duplicate: f64,
    /// The chance that a frame skips the delay, and so overtakes those held.
    pub reorder: f64,
    /// The chance that one bit of a frame is flipped.
    pub corrupt: f64,
    /// Bits a second the link carries; frames wait their turn.
    pub rate: Option<u64>,
}

/// Which frames an impairment takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Link {
    /// Every frame to the port.
    To(PortId),
    /// The frames from the first port to the second.
    Pair(PortId, PortId),
}

impl Link {
    /// The port the link's frames go to.
    pub fn to(&self) -> PortId {
        match *self {
            Link::To(to) | Link::Pair(_, to) => to,
        }
    }
}

/// What an impairment did, since it was set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub frames: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub reordered: u64,
    /// Dropped because the link held [`MAX_HELD`] frames already.
    pub overflow: u64,
    /// Held now.
    pub held: u64,
}

struct State {
    impairment: Impairment,
    counters: LinkCounters,
    /// Frames left in the loss burst under way.
    burst_left: u64,
    /// When the link is free to carry the next frame (rate).
    free_at: Option<Instant>,
}

struct Held {
    at: Instant,
    seq: u64,
    link: Link,
    to: PortId,
    frame: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

pub struct Impairments {
    links: HashMap<Link, State>,
    /// The ports some link leads to, each once: checked first for every
    /// frame, so that a frame to a clean port costs no lookup of the
    /// links (a handful of ports at most, where a hash costs more).
    destinations: Vec<PortId>,
    held: BinaryHeap<Reverse<Held>>,
    seq: u64,
    rng: fastrand::Rng,
}

impl Impairments {
    pub fn new(seed: Option<u64>) -> Self {
        Impairments {
            links: HashMap::new(),
            destinations: Vec::new(),
            held: BinaryHeap::new(),
            seq: 0,
            rng: seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
        }
    }

    pub fn is_idle(&self) -> bool {
        self.links.is_empty()
    }

    /// Sets (or replaces) a link's impairment; its counters start again.
    pub fn set(&mut self, link: Link, impairment: Impairment) {
        self.drop_held(link);
        self.links.insert(
            link,
            State {
                impairment,
                counters: LinkCounters::default(),
                burst_left: 0,
                free_at: None,
            },
        );
        self.note_destinations();
    }

    /// Makes the link clean: no impairment, nothing held.
    pub fn clear(&mut self, link: Link) {
        self.drop_held(link);
        self.links.remove(&link);
        self.note_destinations();
    }

    fn note_destinations(&mut self) {
        self.destinations = self.links.keys().map(Link::to).collect();
        self.destinations.sort();
        self.destinations.dedup();
    }

    /// A port that has gone: the links to and from it, and their frames.
    pub fn forget_port(&mut self, port: PortId) {
        let gone: Vec<Link> = self
            .links
            .keys()
            .filter(|l| {
                matches!(l, Link::To(p) if *p == port) || matches!(l, Link::Pair(a, b) if *a == port || *b == port)
            })
            .copied()
            .collect();
        for link in gone {
            self.clear(link);
        }
        self.held.retain(|Reverse(h)| h.to != port);
    }

    fn drop_held(&mut self, link: Link) {
        self.held.retain(|Reverse(h)| h.link != link);
    }

    /// Every impaired link, with what it does and did.
    pub fn list(&self) -> Vec<(Link, Impairment, LinkCounters)> {
        let mut out: Vec<_> = self.links.iter().map(|(l, s)| (*l, s.impairment, s.counters)).collect();
        out.sort_by_key(|(l, _, _)| *l);
        out
    }

    /// The impaired link a frame from `from` to `to` takes, if any: the
    /// pair's own first, else the port's.
    pub fn link(&self, from: PortId, to: PortId) -> Option<Link> {
        if !self.destinations.contains(&to) {
            return None;
        }
        [Link::Pair(from, to), Link::To(to)]
            .into_iter()
            .find(|l| self.links.contains_key(l))
    }

    /// Takes a frame for `to` over `link`: lost, or held (once, or twice
    /// when duplicated) until its time.
    pub fn take(&mut self, link: Link, to: PortId, frame: &[u8], now: Instant) {
        let Some(state) = self.links.get_mut(&link) else { return };
        let rng = &mut self.rng;
        let imp = state.impairment;
        state.counters.frames += 1;
        if lost(state, rng) {
            state.counters.lost += 1;
            return;
        }
        let copies = if rng.f64() < imp.duplicate { 2 } else { 1 };
        state.counters.duplicated += copies - 1;
        for _ in 0..copies {
            if state.counters.held as usize >= MAX_HELD {
                state.counters.overflow += 1;
                continue;
            }
            let mut copy = frame.to_vec();
            if rng.f64() < imp.corrupt && !copy.is_empty() {
                let bit = rng.usize(..copy.len() * 8);
                copy[bit / 8] ^= 1 << (bit % 8);
                state.counters.corrupted += 1;
            }
            // Its turn on the link (rate), then its delay.
            let mut at = now;
            if let Some(rate) = imp.rate.filter(|r| *r > 0) {
                let start = state.free_at.filter(|f| *f > now).unwrap_or(now);
                let wire = Duration::from_nanos((copy.len() as u64 * 8).saturating_mul(1_000_000_000) / rate);
                at = start + wire;
                state.free_at = Some(at);
            }
            if rng.f64() < imp.reorder {
                state.counters.reordered += 1;
            } else {
                at += jittered(imp.delay, imp.jitter, rng);
            }
            state.counters.held += 1;
            self.seq += 1;
            self.held.push(Reverse(Held {
                at,
                seq: self.seq,
                link,
                to,
                frame: copy,
            }));
        }
    }

    /// When the next held frame is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.peek().map(|Reverse(h)| h.at)
    }

    /// The frames due by `now`, in order, with their ports.
    pub fn due(&mut self, now: Instant, mut send: impl FnMut(PortId, &[u8])) {
        while self.held.peek().is_some_and(|Reverse(h)| h.at <= now) {
            let Some(Reverse(h)) = self.held.pop() else { break };
            if let Some(state) = self.links.get_mut(&h.link) {
                state.counters.held = state.counters.held.saturating_sub(1);
            }
            send(h.to, &h.frame);
        }
    }
}

/// Whether this frame is lost: in a burst under way, one that starts now,
/// or alone.
fn lost(state: &mut State, rng: &mut fastrand::Rng) -> bool {
    if state.burst_left > 0 {
        state.burst_left -= 1;
        return true;
    }
    if let Some((start, mean)) = state.impairment.loss_burst {
        if rng.f64() < start {
            // Geometric, mean `mean`: each further frame with 1 - 1/mean.
            let go_on = 1.0 - 1.0 / mean.max(1.0);
            let mut len = 1;
            while rng.f64() < go_on && len < 1_000_000 {
                len += 1;
            }
            state.burst_left = len - 1;
            return true;
        }
    }
    rng.f64() < state.impairment.loss
}

fn jittered(delay: Duration, jitter: Duration, rng: &mut fastrand::Rng) -> Duration {
    if jitter.is_zero() {
        return delay;
    }
    let spread = jitter.as_nanos() as f64 * (rng.f64() * 2.0 - 1.0);
    Duration::from_nanos((delay.as_nanos() as f64 + spread).max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PortId = PortId(1);
    const B: PortId = PortId(2);

    fn run(imp: Impairment, frames: usize, seed: u64) -> (Impairments, Vec<(Duration, Vec<u8>)>) {
        let mut i = Impairments::new(Some(seed));
        i.set(Link::To(B), imp);
        let t0 = Instant::now();
        let mut out = Vec::new();
        // Released every 1000 frames, well within what a link holds.
        for n in 0..frames {
            i.take(Link::To(B), B, &(n as u32).to_be_bytes(), t0);
            if n % 1000 == 999 {
                i.due(t0 + Duration::from_secs(3600), |_, f| out.push(f.to_vec()));
            }
        }
        i.due(t0 + Duration::from_secs(3600), |_, f| out.push(f.to_vec()));
        (i, out.into_iter().map(|f| (Duration::ZERO, f)).collect())
    }

    #[test]
    fn a_frame_takes_its_pairs_link_else_its_ports_and_a_clean_port_none() {
        let (a, b, c) = (PortId(1), PortId(2), PortId(3));
        let mut i = Impairments::new(Some(1));
        assert_eq!(i.link(a, b), None);
        i.set(Link::To(b), Impairment::default());
        i.set(Link::Pair(a, c), Impairment::default());
        assert_eq!(i.link(a, b), Some(Link::To(b)));
        assert_eq!(i.link(c, b), Some(Link::To(b)));
        assert_eq!(i.link(a, c), Some(Link::Pair(a, c)));
        assert_eq!(i.link(b, c), None);
        assert_eq!(i.link(b, a), None);
        i.set(Link::Pair(a, b), Impairment::default());
        assert_eq!(i.link(a, b), Some(Link::Pair(a, b)));
        i.clear(Link::To(b));
        assert_eq!(i.link(c, b), None);
        i.forget_port(c);
        assert_eq!(i.link(a, c), None);
        assert_eq!(i.link(a, b), Some(Link::Pair(a, b)));
        i.clear(Link::Pair(a, b));
        assert!(i.is_idle());
        assert_eq!(i.link(a, b), None);
    }

    #[test]
    fn loss_is_near_its_rate_and_the_seed_replays_it() {
        let imp = Impairment {
            loss: 0.2,
            ..Default::default()
        };
        let (i, out) = run(imp, 10_000, 7);
        let lost = 10_000 - out.len();
        assert!((1800..=2200).contains(&lost), "{lost}");
        assert_eq!(i.list()[0].2.lost as usize, lost);
        let (_, again) = run(imp, 10_000, 7);
        assert_eq!(out, again, "the same seed, the same run");
    }

    #[test]
    fn bursts_lose_frames_in_runs() {
        let imp = Impairment {
            loss_burst: Some((0.01, 10.0)),
            ..Default::default()
        };
        let (_, out) = run(imp, 20_000, 3);
        let kept: Vec<u32> = out
            .iter()
            .map(|(_, f)| u32::from_be_bytes(f[..4].try_into().unwrap()))
            .collect();
        let gaps: Vec<u32> = kept.windows(2).map(|w| w[1] - w[0] - 1).filter(|g| *g > 0).collect();
        let mean = gaps.iter().sum::<u32>() as f64 / gaps.len() as f64;
        assert!(
            (6.0..=14.0).contains(&mean),
            "mean burst {mean} over {} bursts",
            gaps.len()
        );
    }

    #[test]
    fn delay_holds_frames_until_their_time_and_clear_drops_them() {
        let mut i = Impairments::new(Some(1));
        i.set(
            Link::Pair(A, B),
            Impairment {
                delay: Duration::from_millis(50),
                ..Default::default()
            },
        );
        assert_eq!(i.link(A, B), Some(Link::Pair(A, B)));
        assert_eq!(i.link(B, A), None);
        let t0 = Instant::now();
        i.take(Link::Pair(A, B), B, b"x", t0);
        assert_eq!(i.next_due(), Some(t0 + Duration::from_millis(50)));
        let mut sent = 0;
        i.due(t0 + Duration::from_millis(49), |_, _| sent += 1);
        assert_eq!(sent, 0);
        i.due(t0 + Duration::from_millis(50), |_, _| sent += 1);
        assert_eq!(sent, 1);
        i.take(Link::Pair(A, B), B, b"y", t0);
        i.clear(Link::Pair(A, B));
        assert_eq!(i.next_due(), None);
        assert!(i.is_idle());
    }

    #[test]
    fn rate_spaces_frames_by_their_size() {
        let mut i = Impairments::new(Some(1));
        // 1 Mbit/s: 1250 bytes take 10 ms.
        i.set(
            Link::To(B),
            Impairment {
                rate: Some(1_000_000),
                ..Default::default()
            },
        );
        let t0 = Instant::now();
        for _ in 0..10 {
            i.take(Link::To(B), B, &[0u8; 1250], t0);
        }
        let mut times = Vec::new();
        while let Some(at) = i.next_due() {
            i.due(at, |_, _| {});
            times.push(at - t0);
        }
        assert_eq!(times.len(), 10);
        assert_eq!(times[9], Duration::from_millis(100));
    }

    #[test]
    fn duplicates_reorders_and_corruption_are_counted() {
        let imp = Impairment {
            duplicate: 0.1,
            reorder: 0.1,
            corrupt: 0.1,
            delay: Duration::from_millis(10),
            ..Default::default()
        };
        let (i, out) = run(imp, 5000, 11);
        let c = i.list()[0].2;
        assert_eq!(out.len() as u64, 5000 + c.duplicated);
        for (n, expect) in [(c.duplicated, 500.0), (c.reordered, 550.0), (c.corrupted, 550.0)] {
            assert!((n as f64 - expect).abs() < expect * 0.25, "{c:?}");
        }
        // Reordered frames overtake those held: the numbers go back at times.
        let numbers: Vec<u32> = out
            .iter()
            .map(|(_, f)| u32::from_be_bytes(f[..4].try_into().unwrap()))
            .collect();
        assert!(numbers.windows(2).filter(|w| w[0] > w[1]).count() > 100);
    }

    #[test]
    fn a_link_holds_at_most_max_held() {
        let imp = Impairment {
            delay: Duration::from_secs(1),
            ..Default::default()
        };
        let mut i = Impairments::new(Some(1));
        i.set(Link::To(B), imp);
        for _ in 0..MAX_HELD + 10 {
            i.take(Link::To(B), B, b"x", Instant::now());
        }
        let c = i.list()[0].2;
        assert_eq!((c.held, c.overflow), (MAX_HELD as u64, 10));
    }
}
