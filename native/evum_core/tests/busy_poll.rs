//! The switch's thread polls for frames while they flow densely and sleeps
//! when they stop, as its context switches and CPU time show. A test binary
//! of its own: the thread it watches must be the process's only switch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{BessClient, TempDir};
use evum_core::switch::{Switch, SwitchConfig};

/// What the kernel says of one thread.
#[derive(Debug, Clone, Copy)]
struct ThreadStats {
    /// Times it slept of its own accord (blocked in a system call).
    sleeps: u64,
    on_cpu: Duration,
}

/// /proc/self/task/<tid> of the process's only switch thread.
fn switch_thread() -> PathBuf {
    let threads: Vec<PathBuf> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .map(|entry| entry.expect("a task").path())
        .filter(|task| std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm == "evum-switch\n"))
        .collect();
    assert_eq!(threads.len(), 1, "one switch thread: {threads:?}");
    threads.into_iter().next().unwrap()
}

fn stats(task: &Path) -> ThreadStats {
    let status = std::fs::read_to_string(task.join("status")).expect("status");
    let sleeps = status
        .lines()
        .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("voluntary_ctxt_switches");
    // schedstat: nanoseconds on a CPU, waiting for one, time slices.
    let schedstat = std::fs::read_to_string(task.join("schedstat")).expect("schedstat");
    let on_cpu = schedstat
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("schedstat");
    ThreadStats {
        sleeps,
        on_cpu: Duration::from_nanos(on_cpu),
    }
}

const STREAM: Duration = Duration::from_millis(400);

/// Between two frames of the stream: shorter than the default polling
/// time, longer than the switch takes to forward a frame.
const GAP: Duration = Duration::from_micros(15);

/// A sends 64-byte frames to B over bess, one per [`GAP`], for [`STREAM`],
/// while B reads them. Returns the frames B got and how often the switch's
/// thread slept meanwhile.
fn stream(switch: &Switch) -> (u64, u64) {
    let a = BessClient::connect(&switch.bess_socket());
    let b = Arc::new(BessClient::connect(&switch.bess_socket()));
    let (mac_a, mac_b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let frame = |dst: [u8; 6], src: [u8; 6]| [&dst[..], &src[..], &[0x88, 0xb5], &[0x5a; 50]].concat();
    b.send(&frame([0xff; 6], mac_b));
    assert!(a.recv().is_some(), "B's announcement reaches A");
    let task = switch_thread();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let (b, stop, received) = (b.clone(), stop.clone(), received.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if b.recv().is_some() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let before = stats(&task);
    let to_b = frame(mac_b, mac_a);
    let started = Instant::now();
    while started.elapsed() < STREAM {
        a.send(&to_b);
        let sent = Instant::now();
        while sent.elapsed() < GAP {
            std::hint::spin_loop();
        }
    }
    let after = stats(&task);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    (received.load(Ordering::Relaxed), after.sleeps - before.sleeps)
}

#[test]
fn the_switch_polls_while_frames_flow_and_sleeps_when_they_stop() {
    let dir = TempDir::new("busy-poll");
    let sleeps_per_frame = |busy_poll: Duration| {
        let mut config = SwitchConfig::new(dir.0.join(format!("switch-{}", busy_poll.as_micros())));
        config.busy_poll = busy_poll;
        let switch = Switch::start(config).expect("switch starts");
        let (frames, sleeps) = stream(&switch);
        assert!(frames > 1000, "{frames} frames forwarded");
        (sleeps as f64 / frames as f64, switch)
    };

    let (never_polling, switch) = sleeps_per_frame(Duration::ZERO);
    switch.stop();
    let (polling, switch) = sleeps_per_frame(SwitchConfig::new("unused").busy_poll);
    assert!(
        polling < never_polling / 2.0,
        "the switch's thread slept {polling:.4} times per frame polling, {never_polling:.4} not polling"
    );

    // Once the frames stop, the thread sleeps: polling costs no CPU when
    // there is nothing to poll for.
    std::thread::sleep(Duration::from_millis(100));
    let task = switch_thread();
    let before = stats(&task);
    std::thread::sleep(Duration::from_millis(500));
    let idle_cpu = stats(&task).on_cpu - before.on_cpu;
    assert!(
        idle_cpu < Duration::from_millis(5),
        "an idle switch used {idle_cpu:?} of CPU in 500 ms"
    );
    switch.stop();
}
