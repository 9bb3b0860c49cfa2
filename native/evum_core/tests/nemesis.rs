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
