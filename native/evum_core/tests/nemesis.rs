//! Partitions and cuts between real bess clients of a switch: frames inside
//! a group pass, across it and along a cut they do not, from the first
//! frame after the call; counted on the sender's port; a sniffer sees all.

use std::time::{Duration, Instant};

mod common;

use common::{frame, mac, BessClient, TempDir, BROADCAST};

use crossbeam_channel::{unbounded, Sender};
use evum_core::switch::{Fault, FrameSink, PortId, PortKind, Switch};

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct ToChannel(Sender<Vec<u8>>);

impl FrameSink for ToChannel {
    fn frame(&mut self, _port: PortId, frame: &[u8]) -> bool {
        self.0.send(frame.to_vec()).is_ok()
    }
}

/// Three clients that have each announced their MAC (1, 2, 3), with their ports.
fn three(switch: &Switch) -> Vec<(BessClient, PortId)> {
    let clients: Vec<BessClient> = (0..3).map(|_| BessClient::connect(&switch.bess_socket())).collect();
    let bess = |switch: &Switch| {
        switch
            .ports()
            .unwrap()
            .iter()
            .filter(|p| p.kind == PortKind::Bess)
            .count()
    };
    wait_until("three ports", || bess(switch) == 3);
    for (i, c) in clients.iter().enumerate() {
        c.send(&frame(BROADCAST, mac(i as u8 + 1), 0));
    }
    for c in &clients {
        c.drain();
    }
    let ports = switch.ports().unwrap();
    clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let id = ports.iter().find(|p| p.mac == Some(mac(i as u8 + 1))).unwrap().id;
            (c, id)
        })
        .collect()
}

#[test]
fn a_partition_keeps_groups_apart_until_healed() {
    let dir = TempDir::new("partition");
    let switch = Switch::start(common::switch_config(&dir.0.join("switch"))).unwrap();
    let (tx, sniffed) = unbounded();
    switch.attach(None, true, Box::new(ToChannel(tx))).unwrap();
    let nodes = three(&switch);
    let [(a, pa), (b, pb), (c, pc)] = &nodes[..] else {
        unreachable!()
    };
    while sniffed.try_recv().is_ok() {}
    switch.fault(Fault::Partition(vec![vec![*pa], vec![*pb, *pc]])).unwrap();
    // Across: nothing, unicast or broadcast; inside: as ever.
    a.send(&frame(mac(2), mac(1), 1));
    a.send(&frame(BROADCAST, mac(1), 2));
    assert!(b.drain().is_empty() && c.drain().is_empty());
    let inside = frame(mac(3), mac(2), 3);
    b.send(&inside);
    assert_eq!(c.recv().as_deref(), Some(&inside[..]));
    assert!(a.drain().is_empty());
    // The sniffer saw every frame, the kept ones too.
    assert_eq!(sniffed.try_iter().count(), 3);
    let ports = switch.ports().unwrap();
    let a_port = ports.iter().find(|p| p.id == *pa).unwrap();
    assert_eq!(a_port.counters.drops_nemesis, 3, "one unicast, a broadcast to two");
    assert_eq!(switch.faults().unwrap(), (vec![vec![*pa], vec![*pb, *pc]], vec![]));
    switch.fault(Fault::Heal).unwrap();
    let healed = frame(mac(2), mac(1), 4);
    a.send(&healed);
    assert_eq!(b.recv().as_deref(), Some(&healed[..]));
}

#[test]
fn a_cut_is_one_way() {
    let dir = TempDir::new("cut");
    let switch = Switch::start(common::switch_config(&dir.0.join("switch"))).unwrap();
    let nodes = three(&switch);
    let [(a, pa), (b, pb), (c, _)] = &nodes[..] else {
        unreachable!()
    };
    switch.fault(Fault::Cut(*pa, *pb)).unwrap();
    a.send(&frame(mac(2), mac(1), 1));
    assert!(b.drain().is_empty());
    let back = frame(mac(1), mac(2), 2);
    b.send(&back);
    assert_eq!(a.recv().as_deref(), Some(&back[..]));
    // A broadcast from A reaches C, not B.
    let all = frame(BROADCAST, mac(1), 3);
    a.send(&all);
    assert_eq!(c.recv().as_deref(), Some(&all[..]));
    assert!(b.drain().is_empty());
    switch.fault(Fault::Restore(*pa, *pb)).unwrap();
    let again = frame(mac(2), mac(1), 4);
    a.send(&again);
    assert_eq!(b.recv().as_deref(), Some(&again[..]));
    assert_eq!(switch.faults().unwrap(), (vec![], vec![]));
}

// ---------------------------------------------------------------- impairment

use evum_core::switch::{Impairment, Link};

fn switch_with_seed(dir: &TempDir, seed: u64) -> Switch {
    let mut config = common::switch_config(&dir.0.join("switch"));
    config.seed = Some(seed);
    Switch::start(config).unwrap()
}

/// Impairs `link` on `switch`.
fn set_impairment(switch: &Switch, link: Link, impairment: Impairment) {
    switch.impair(link, Some(impairment)).unwrap();
}

/// Counts the frames `client` receives until none came for 300 ms.
fn count(client: &BessClient) -> usize {
    client.drain().len()
}

#[test]
fn loss_on_a_link_is_its_rate_and_clear_makes_it_clean() {
    let dir = TempDir::new("loss");
    let switch = switch_with_seed(&dir, 42);
    let nodes = three(&switch);
    let [(a, _), (b, pb), (c, _)] = &nodes[..] else {
        unreachable!()
    };
    set_impairment(
        &switch,
        Link::To(*pb),
        Impairment {
            loss: 0.2,
            ..Default::default()
        },
    );
    const N: usize = 5000;
    let receiver = {
        let b = b.clone_fd();
        std::thread::spawn(move || count(&b))
    };
    for n in 0..N {
        a.send(&frame(mac(2), mac(1), n as u8));
    }
    let got = receiver.join().unwrap() as u64;
    // The impairment's own draws: a fifth lost, give or take.
    let link = switch.impairments().unwrap()[0].2;
    assert_eq!(link.frames, N as u64);
    let lost = link.lost as f64 / N as f64;
    assert!((0.18..=0.22).contains(&lost), "lost {lost}");
    // Every frame is accounted for: received, lost on the link, or dropped
    // at B's queue (released frames are not held back for a slow reader,
    // as a busy host may make B's).
    let port = switch.ports().unwrap().into_iter().find(|p| p.id == *pb).unwrap();
    assert_eq!(
        got + link.lost + port.counters.drops_queue_full,
        N as u64,
        "{link:?} {port:?}"
    );
    // Other links are untouched.
    let to_c = frame(mac(3), mac(1), 0);
    a.send(&to_c);
    assert_eq!(c.recv().as_deref(), Some(&to_c[..]));
    switch.impair(Link::To(*pb), None).unwrap();
    assert!(switch.impairments().unwrap().is_empty());
    for n in 0..100u8 {
        a.send(&frame(mac(2), mac(1), n));
    }
    assert_eq!(count(b), 100);
}

#[test]
fn delay_jitter_and_rate_shape_a_link() {
    let dir = TempDir::new("delay");
    let switch = switch_with_seed(&dir, 1);
    let nodes = three(&switch);
    let [(a, pa), (b, pb), _] = &nodes[..] else {
        unreachable!()
    };
    let delay = Impairment {
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(10),
        ..Default::default()
    };
    switch.impair(Link::Pair(*pa, *pb), Some(delay)).unwrap();
    let mut waits = Vec::new();
    for n in 0..20u8 {
        let sent = Instant::now();
        a.send(&frame(mac(2), mac(1), n));
        assert!(b.recv().is_some());
        waits.push(sent.elapsed());
    }
    waits.sort();
    let median = waits[waits.len() / 2];
    // At least the delay less the jitter; a busy host may add to it.
    assert!(
        median >= Duration::from_millis(40) && median < Duration::from_millis(100),
        "{waits:?}"
    );
    assert!(waits[0] >= Duration::from_millis(39), "{waits:?}");
    // The other way is not delayed.
    let sent = Instant::now();
    b.send(&frame(mac(1), mac(2), 0));
    assert!(a.recv().is_some());
    assert!(sent.elapsed() < Duration::from_millis(39));
    // 1 Mbit/s: 50 frames of 1250 bytes take half a second.
    let big = {
        let mut f = frame(mac(2), mac(1), 0);
        f.resize(1250, 0);
        f
    };
    set_impairment(
        &switch,
        Link::Pair(*pa, *pb),
        Impairment {
            rate: Some(1_000_000),
            ..Default::default()
        },
    );
    let started = Instant::now();
    for _ in 0..50 {
        a.send(&big);
    }
    for _ in 0..50 {
        assert!(b.recv().is_some());
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(480) && took < Duration::from_millis(900),
        "{took:?}"
    );
}

#[test]
fn a_capture_of_a_port_takes_frames_to_it_over_an_impaired_link() {
    let dir = TempDir::new("capture-impaired");
    let switch = switch_with_seed(&dir, 5);
    let nodes = three(&switch);
    let [(a, _), (b, pb), _] = &nodes[..] else {
        unreachable!()
    };
    let delayed = Impairment {
        delay: Duration::from_millis(20),
        ..Default::default()
    };
    switch.impair(Link::To(*pb), Some(delayed)).unwrap();
    let path = dir.0.join("b.pcap");
    let id = switch.capture(Some(*pb), &path, 1 << 20).unwrap().unwrap();
    for n in 0..5u8 {
        a.send(&frame(mac(2), mac(1), n));
    }
    assert_eq!(count(b), 5);
    let stats = switch.stop_capture(id).unwrap().unwrap();
    assert_eq!(stats.frames, 5, "{stats:?}");
}

/// The tag of each of `frames` (what `frame` repeats in its payload).
fn tags(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.iter().map(|f| f[14]).collect()
}

#[test]
fn a_capture_shows_what_an_impaired_link_did() {
    let dir = TempDir::new("capture-shows-impairment");
    let switch = switch_with_seed(&dir, 7);
    let nodes = three(&switch);
    let [(a, _), (b, pb), (c, _)] = &nodes[..] else {
        unreachable!()
    };
    let watch = |target| {
        let (tx, rx) = unbounded();
        let id = switch.capture_to(target, Box::new(ToChannel(tx)), 10_000).unwrap();
        (id, rx)
    };

    // Every frame twice: B gets each twice, and so does a capture of B.
    set_impairment(
        &switch,
        Link::To(*pb),
        Impairment {
            duplicate: 1.0,
            ..Default::default()
        },
    );
    let (id, captured) = watch(Some(*pb));
    for n in 0..10u8 {
        a.send(&frame(mac(2), mac(1), n));
    }
    let got = tags(&b.drain());
    switch.stop_capture(id).unwrap();
    let twice: Vec<u8> = (0..10u8).flat_map(|n| [n, n]).collect();
    assert_eq!(got, twice);
    assert_eq!(tags(&captured.try_iter().collect::<Vec<_>>()), twice);

    // Half the frames skip a 30 ms delay: B gets them out of order, and a
    // capture of everything has them in B's order, once each.
    set_impairment(
        &switch,
        Link::To(*pb),
        Impairment {
            delay: Duration::from_millis(30),
            reorder: 0.5,
            ..Default::default()
        },
    );
    let (id, captured) = watch(None);
    for n in 0..20u8 {
        a.send(&frame(mac(2), mac(1), n));
    }
    let got = tags(&b.drain());
    switch.stop_capture(id).unwrap();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, (0..20u8).collect::<Vec<_>>());
    assert_ne!(got, sorted, "no frame was reordered");
    assert_eq!(tags(&captured.try_iter().collect::<Vec<_>>()), got);

    // A lost frame is in no capture.
    set_impairment(
        &switch,
        Link::To(*pb),
        Impairment {
            loss: 1.0,
            ..Default::default()
        },
    );
    let (of_b, to_b) = watch(Some(*pb));
    let (all, everything) = watch(None);
    a.send(&frame(mac(2), mac(1), 100));
    assert!(b.drain().is_empty());
    switch.stop_capture(of_b).unwrap();
    switch.stop_capture(all).unwrap();
    assert_eq!(to_b.try_iter().count(), 0);
    assert_eq!(everything.try_iter().count(), 0);

    // A broadcast goes to C at once and to B late: a capture of everything
    // has it as forwarded, and B's copy once more as the link delivers it.
    set_impairment(
        &switch,
        Link::To(*pb),
        Impairment {
            delay: Duration::from_millis(10),
            ..Default::default()
        },
    );
    let (all, everything) = watch(None);
    a.send(&frame(BROADCAST, mac(1), 101));
    assert_eq!(tags(&c.drain()), [101]);
    assert_eq!(tags(&b.drain()), [101]);
    switch.stop_capture(all).unwrap();
    assert_eq!(tags(&everything.try_iter().collect::<Vec<_>>()), [101, 101]);
}
