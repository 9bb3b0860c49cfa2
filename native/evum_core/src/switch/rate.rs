//! Token buckets: the switch's per-port input rate limit and storm control.

use std::time::Instant;

/// Credit is kept in frames times this, so that refills of less than a
/// frame are not lost to rounding.
const SCALE: u64 = 1_000_000_000;

/// Lets `rate` frames a second through, with bursts of up to `burst`
/// frames; what is over is refused (the switch drops and counts it).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    credit: u64,
    refilled: Instant,
}

impl TokenBucket {
    /// A bucket that starts full.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = u64::from(burst.max(1)) * SCALE;
        TokenBucket {
            rate: u64::from(rate),
            burst,
            credit: burst,
            refilled: now,
        }
    }

    /// Adds the credit earned since the last refill (the switch calls this
    /// once per batch of frames, not per frame).
    pub fn refill(&mut self, now: Instant) {
        let nanos = now.saturating_duration_since(self.refilled).as_nanos();
        if nanos == 0 {
            return;
        }
        // frames = rate * seconds; credit = frames * SCALE = rate * nanos.
        let earned = u64::try_from(nanos).unwrap_or(u64::MAX).saturating_mul(self.rate);
        self.credit = self.credit.saturating_add(earned).min(self.burst);
        self.refilled = now;
    }

    /// Takes one frame's credit, or says there is none.
    pub fn take(&mut self) -> bool {
        if self.credit >= SCALE {
            self.credit -= SCALE;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn passes_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1000, 10, t0);
        assert_eq!((0..100).filter(|_| bucket.take()).count(), 10);
        // 1000 a second: one frame per millisecond, half a frame is none.
        bucket.refill(t0 + Duration::from_micros(500));
        assert!(!bucket.take());
        bucket.refill(t0 + Duration::from_micros(1000));
        assert!(bucket.take());
        assert!(!bucket.take());
        // A long quiet time refills no more than the burst.
        bucket.refill(t0 + Duration::from_secs(60));
        assert_eq!((0..100).filter(|_| bucket.take()).count(), 10);
    }

    #[test]
    fn a_second_passes_the_rate_and_the_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(5000, 500, t0);
        let mut passed = 0;
        for ms in 0..=1000 {
            bucket.refill(t0 + Duration::from_millis(ms));
            passed += (0..100).filter(|_| bucket.take()).count();
        }
        assert_eq!(passed, 5000 + 500);
    }
}
