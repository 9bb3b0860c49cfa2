//! The density1000 benchmark's peer for the BEAM's responsiveness (bench/run
//! compiles it with `rustc -O` into its temporary directory; std only): a
//! plain program that sleeps 1 ms again and again and keeps how late it
//! wakes. It runs in a session of its own at nice 0, as a BEAM does, so it
//! has what the BEAM has from the host's scheduler, and tells apart what the
//! BEAM makes of its share from what the machine does to every program (a
//! hypervisor taking the CPUs, the host kernel busy with something that
//! cannot be preempted).
//!
//! Usage: wake_ticker
//!   Ticks until a byte comes on its standard input (or it closes), then
//!   prints one line and exits:
//!   `ticks N late_over_5ms N worst_us N worst_at UNIX_SECONDS`.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

extern "C" {
    fn setsid() -> i32;
    fn getsid(pid: i32) -> i32;
}

#[derive(Default)]
struct Counts {
    ticks: AtomicU64,
    over_5ms: AtomicU64,
    worst_us: AtomicU64,
    /// When the worst one came, in ms since the Unix epoch.
    worst_at_ms: AtomicU64,
}

fn main() {
    // SAFETY: setsid and getsid take plain integers. setsid fails for a
    // process group leader, which its starter may have made it: that is
    // good enough if the group leads a session of its own too.
    if unsafe { setsid() } < 0 && unsafe { getsid(0) } != std::process::id() as i32 {
        eprintln!("wake_ticker: setsid failed: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let counts = Arc::new(Counts::default());
    let ticker = Arc::clone(&counts);
    std::thread::spawn(move || tick(&ticker));
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    println!(
        "ticks {} late_over_5ms {} worst_us {} worst_at {:.3}",
        counts.ticks.load(Ordering::Relaxed),
        counts.over_5ms.load(Ordering::Relaxed),
        counts.worst_us.load(Ordering::Relaxed),
        counts.worst_at_ms.load(Ordering::Relaxed) as f64 / 1000.0
    );
}

fn tick(counts: &Counts) {
    let period = Duration::from_millis(1);
    let mut last = Instant::now();
    loop {
        std::thread::sleep(period);
        let now = Instant::now();
        let late_us = now.duration_since(last).saturating_sub(period).as_micros() as u64;
        last = now;
        counts.ticks.fetch_add(1, Ordering::Relaxed);
        if late_us > 5000 {
            counts.over_5ms.fetch_add(1, Ordering::Relaxed);
        }
        if late_us > counts.worst_us.load(Ordering::Relaxed) {
            counts.worst_us.store(late_us, Ordering::Relaxed);
            let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            counts.worst_at_ms.store(at.as_millis() as u64, Ordering::Relaxed);
        }
    }
}
