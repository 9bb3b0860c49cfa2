//! How long the event loop polls for events before it sleeps.
//!
//! While frames flow, the loop's waits are short: a receiver whose socket
//! holds 11 datagrams (`max_dgram_qlen` 10) makes room a few tens of
//! microseconds after the switch filled it. Sleeping through such a wait
//! costs a context switch each way and, on a virtual machine whose idle
//! CPUs halt, an exit to the hypervisor and an interrupt to wake up; polling
//! for a few microseconds costs neither. When traffic is sparse, polling
//! would only burn a CPU, so the time adapts as QEMU's iothread polling does
//! (`poll-max-ns`, util/aio-posix.c): it grows while the waits it would
//! have covered are short, shrinks when they are longer than the maximum,
//! and stays while the polling itself ends the waits.

use std::time::Duration;

/// The first polling time once waits turn short (QEMU's).
const START: Duration = Duration::from_micros(4);

/// The adaptive polling time of one event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    /// How long to poll before the next sleep (zero: sleep at once).
    current: Duration,
    /// The longest it may grow to (zero: never poll).
    max: Duration,
}

impl BusyPoll {
    pub fn new(max: Duration) -> Self {
        BusyPoll {
            current: Duration::ZERO,
            max,
        }
    }

    /// How long to poll before sleeping.
    pub fn time(&self) -> Duration {
        self.current
    }

    /// Adapts to a wait (polling and sleeping together) that lasted `waited`.
    pub fn record(&mut self, waited: Duration) {
        if waited <= self.current {
            // Polling covered it: the sweet spot.
        } else if waited > self.max {
            // Polling could not have covered it: poll less.
            self.current /= 2;
            if self.current < START {
                self.current = Duration::ZERO;
            }
        } else if self.current < self.max {
            // A short wait that was slept through: poll longer.
            self.current = (self.current * 2).clamp(START, self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(32);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn short_waits_grow_the_time_up_to_the_maximum() {
        let mut poll = BusyPoll::new(MAX);
        assert_eq!(poll.time(), Duration::ZERO);
        let mut times = Vec::new();
        for _ in 0..6 {
            poll.record(us(30));
            times.push(poll.time());
        }
        assert_eq!(times, [us(4), us(8), us(16), us(32), us(32), us(32)]);
    }

    #[test]
    fn waits_the_polling_covers_leave_it_alone() {
        let mut poll = BusyPoll::new(MAX);
        poll.record(us(10));
        poll.record(us(10));
        assert_eq!(poll.time(), us(8));
        poll.record(us(8));
        poll.record(us(3));
        assert_eq!(poll.time(), us(8));
    }

    #[test]
    fn long_waits_shrink_it_to_nothing() {
        let mut poll = BusyPoll::new(MAX);
        for _ in 0..4 {
            poll.record(us(20));
        }
        assert_eq!(poll.time(), MAX);
        let mut times = Vec::new();
        for _ in 0..4 {
            poll.record(Duration::from_millis(50));
            times.push(poll.time());
        }
        assert_eq!(times, [us(16), us(8), us(4), Duration::ZERO]);
    }

    #[test]
    fn a_zero_maximum_never_polls() {
        let mut poll = BusyPoll::new(Duration::ZERO);
        for waited in [us(1), us(20), Duration::from_millis(5), Duration::ZERO] {
            poll.record(waited);
            assert_eq!(poll.time(), Duration::ZERO);
        }
    }
}
